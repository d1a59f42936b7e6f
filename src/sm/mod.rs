//! The session manager of the ejabberd guide, one per shard: it owns the session table entries of the
//! accounts whose home is this shard and every decision about delivery to them. So far it holds the
//! delivery rules of RFC 6121 §8.5 ([`deliver`]); the table itself arrives with the shard.

pub mod deliver;
pub mod table;

//! The session manager of the ejabberd guide, one per shard: it owns the session table entries of the
//! accounts whose home is this shard ([`table`]) and every decision about delivery to them: the pure
//! RFC 6121 §8.5 rules ([`deliver`]) and the work on the home shard — bind, unbind, conflict, presence
//! state and broadcast, session hooks, delivery ([`session`]).

pub mod deliver;
pub mod session;
pub mod table;

#[cfg(test)]
mod tests;

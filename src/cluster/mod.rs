//! The cluster of rjabberd hosts (docs/cluster-protocol.md), the parts with I/O: the membership
//! registry in PostgreSQL ([`membership`]: who is a member, at which epoch, and who is fenced), and in
//! time the links and routing across hosts. The frames and the handshake are sans-IO and live in
//! `crate::proto::cluster`; placement over the members is `crate::placement`. This module sits beside
//! the router, the session manager and the store: it may use `storage` and `proto`, and nothing here
//! runs on a shard reactor (a registry call blocks on the database).

pub mod membership;

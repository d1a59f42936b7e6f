//! The cluster: rjabberd hosts serving the same domains as one server (docs/cluster-protocol.md). This
//! layer holds the sockets and state under the sans-IO protocol of [`crate::proto::cluster`]: the links
//! between hosts ([`transport`]). Routing, sessions and membership across hosts build on it.

pub mod transport;

//! The cluster protocol between rjabberd hosts (docs/cluster-protocol.md), sans-IO: the frames and their
//! codec ([`wire`]) and the link handshake ([`handshake`]). The links, membership and routing that
//! drive them live above, with the sockets.

pub mod handshake;
pub mod link;
pub mod wire;

//! The cluster of rjabberd hosts (docs/cluster-protocol.md), the parts with I/O: the links between
//! hosts over glommio TCP ([`transport`]: authenticated, acknowledged, resumed after a reconnect; they
//! run on the shards' reactors and never block), and the membership registry in PostgreSQL
//! ([`membership`]: who is a member, at which epoch, and who is fenced; its calls block on the
//! database, so they run on a thread of their own, never on a reactor), and TLS on the links
//! ([`tls`]: the cluster's CA, this host's certificate, rustls driven by hand). The frames, the handshake and a
//! link's bookkeeping are sans-IO and live in `crate::proto::cluster`; placement over the members is
//! `crate::placement`. This module sits beside the router, the session manager and the store: it may
//! use `storage` and `proto`.

pub mod membership;
pub mod node;
pub mod presence_ledger;
pub mod requests;
pub mod routing;
pub mod state;
pub mod tls;
pub mod transport;
pub mod tunnel;

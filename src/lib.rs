//! rjabberd: an XMPP server built as one small "ejabberd node" per core.
//!
//! This crate is the server library; `main` only parses arguments, loads the configuration and starts the
//! shards. A stanza's path, and the layers it crosses (DESIGN.md §3; dependencies point down):
//!
//! ```text
//!  socket ─► net::driver (TLS, StreamParser) ─► c2s / component glue (the stream machines' actions)
//!                                                   │ Stanza (Bytes + header)
//!                                                   ▼
//!                          router::route ── RouteTable: Local │ Service │ Component │ (cluster, s2s)
//!                           │ server JID              │ account
//!                           ▼                         ▼ Shard::send_home(placement::home(bare))
//!                     router::local ─► modules::iq    mesh (local fast path, or one hop, overflow policy)
//!                                                     ▼
//!                                  sm::session::deliver_local (RFC 6121 §8.5) ─► sink ─► net::driver
//!                                         (the recipient's queue: stanzas stay stanzas until written)
//! ```
//!
//! | layer (top to bottom) | module | owns |
//! | --- | --- | --- |
//! | start-up | [`shard::pool`] | the shard pool, listeners, accept loops, the mesh consumers, housekeeping; installs the [`shard::Wiring`] |
//! | operators | [`admin`] | served by shard 0: the Prometheus endpoint and the `rjabberd ctl` control socket and commands, reaching the other shards only by jobs over the mesh |
//! | stream glue | [`c2s`], [`component`] | what a client's or a component's stream means: carrying out its machine's actions |
//! | router | [`router`] | the one routing entry point; [`router::local`] for the server's own JID |
//! | session manager | [`sm::session`] | bind, unbind, conflict, presence, session hooks, delivery ([`sm::deliver`]: the RFC 6121 §8.5 rules) |
//! | state | [`shard`] | one core's mutable state (the session, route and module tables), `send_home` with the local fast path, the router's entry as wired |
//! | | [`mesh`] | messages between shards and their overflow policy |
//! | cluster | [`cluster`] | the hosts of a cluster: the links between them (glommio TCP, on the shards) and the membership registry in PostgreSQL (members, epochs, leases, fencing; on its own thread, never a shard's) |
//! | modules | [`modules`] | gen_mod, gen_iq_handler, the open hook registry, [`modules::ctx::ModuleCtx`] (the trait the shard implements), one file per module |
//! | below | [`sink`], [`storage`], [`auth`], [`net`] | a connection's output queue by generational id; the store behind traits on worker threads (and XEP-0227 import/export over them); the extauth pool; the only sockets: the generic stream driver, TLS |
//! | ground | [`placement`], [`config`], [`logging`], [`probe`] | where an account lives (a specified hash); the configuration; the log output and its per-source rate limit; test probes |
//! | sans-IO | [`proto`] | bytes and `now` in, events and actions out: XML, JIDs, SASL, c2s and component machines, errors |
//!
//! The full map, with who owns what and the journeys of a message, a login and an IQ, is
//! `docs/architecture.md`.
//!
//! `tests/layering.rs` turns the arrows into rules.

pub mod admin;
pub mod auth;
pub mod c2s;
pub mod cluster;
pub mod component;
pub mod config;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod modules;
pub mod net;
pub mod placement;
pub mod probe;
pub mod proto;
pub mod router;
pub mod shard;
pub mod sink;
pub mod sm;
pub mod storage;

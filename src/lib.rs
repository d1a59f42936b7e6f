//! rjabberd: an XMPP server built as one small "ejabberd node" per core.
//!
//! This crate is the server library; `main` (written with the thread-per-core node) only parses arguments,
//! loads the configuration and starts the shards. The layers, dependencies pointing down, are those of
//! `DESIGN.md` §3:
//!
//! ```text
//!   socket bytes ──► net (TLS, buffers) ──► proto::xml::StreamParser ──► Event::Stanza (Bytes + header)
//!                                                                            │
//!   main / cli ─► shard (one per core) ─► router ─► sm / s2s / modules ◄─────┘
//!                                           │
//!                 recipient's write queue ◄─┴─ Stanza::write_to (original bytes, `from` stamped)
//! ```
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the typed configuration, its embedded defaults and its checks (file:line:column errors) |
//! | [`proto`] | sans-IO protocol code: bytes and `now` in, events and actions out; no sockets, no clock |
//! | [`proto::xml`] | the stanza engine: resumable checking parser, zero-copy views, forwarding writer, owned tree |
//! | [`proto::c2s`] | the client stream state machine: headers, features, STARTTLS, SASL, bind |
//! | [`proto::sasl`], [`proto::jid`] | SASL mechanisms and stored SCRAM credentials; PRECIS-prepared JIDs |
//! | [`proto::errors`] | stream and stanza error conditions; error replies from a stanza's header |
//! | [`shard`] | one glommio executor per core, its state, the mesh and its overflow policy, `home()` |
//! | [`net`] | sockets and TLS: the connection driver, certificates and SNI |
//! | [`router`] | the router, local router and session manager's delivery, as functions over a shard |
//! | [`sm`] | the session table and the RFC 6121 §8.5 delivery rules |
//! | [`modules`] | gen_mod, gen_iq_handler (no_queue / one_queue / parallel), hooks, and the built-in modules |
//! | [`auth`] | external authentication: ejabberd's extauth program protocol, on worker threads |
//! | [`storage`] | the embedded store (SQLite: accounts, module data) and the worker threads that query it |

pub mod auth;
pub mod config;
pub mod modules;
pub mod net;
pub mod proto;
pub mod router;
pub mod shard;
pub mod sm;
pub mod storage;

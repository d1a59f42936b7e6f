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
//! | [`proto::errors`] | stream and stanza error conditions; error replies from a stanza's header |
//! | [`proto::xml`] | the stanza engine: resumable checking parser, zero-copy views, forwarding writer, owned tree |
//! | [`sm`] | the session manager: RFC 6121 §8.5 delivery rules (the table comes with the shard) |
//!
//! The shard, router, session manager, network shell and module framework arrive with the issues that build
//! them; the map of what they will own is `../shared/DESIGN.md`.

pub mod config;
pub mod net;
pub mod proto;
pub mod router;
pub mod shard;
pub mod sm;
pub mod storage;

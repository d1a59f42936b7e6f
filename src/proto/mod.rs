//! Sans-IO protocol code. Nothing under `proto` opens a socket, spawns a task or reads the clock (the
//! `tests/layering.rs` test enforces it): every parser and state machine takes bytes (and, where time
//! matters, a `now` passed in) and returns what should happen, so it can be tested against an in-memory
//! peer, fuzzed, and moved to another runtime unchanged.

pub mod blocking;
pub mod c2s;
pub mod carbons;
pub mod cluster;
pub mod component;
pub mod csi;
pub mod errors;
pub mod jid;
pub mod roster;
pub mod sasl;
pub mod subscription;
pub mod xml;

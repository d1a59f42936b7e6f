//! Probes for tests that measure the server from inside: which shard a thread runs, and whether it is on
//! the stanza hot path (from the parser's buffer to a recipient's output queue). The allocation test
//! (`tests/forwarding_alloc.rs`) counts allocations only inside that span. Two thread-local cells; reading
//! them costs a load.

use std::cell::Cell;

thread_local! {
    /// The shard running on this thread, if any: lets probes attribute work.
    pub static CURRENT_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    /// True while this thread runs the stanza path from the parser's buffer to a recipient's output
    /// queue (parsing, the stream machine, routing, the mesh hop, delivery), and not socket or TLS work.
    pub static HOT_PATH: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` marked as the stanza hot path (see [`HOT_PATH`]).
pub fn hot_path<T>(f: impl FnOnce() -> T) -> T {
    let was = HOT_PATH.with(|h| h.replace(true));
    let out = f();
    HOT_PATH.with(|h| h.set(was));
    out
}

//! A shard's own counters and latency histograms, and the snapshot of them that the exporter and
//! `rjabberd ctl` gather over the mesh. One thread runs one shard, so the figures live in a thread-local
//! [`ShardMetrics`]: the leaf sites that count (the stream driver's reads and writes, a sink's queue, a
//! store query, the IQ dispatcher) reach their shard's figures without a handle threaded through every
//! layer, and add to them with a plain load and store (`Cell`), never an atomic or a lock. Nothing reads
//! them from another thread: a reader sends a job to the shard, which copies them into a [`Snapshot`] (a
//! `Send` value) and sends that back. Per-stage latency ([`latency`]) follows a sample of stanzas from
//! the socket read that completed them to the write that put them on a recipient's socket.

pub mod exposition;
pub mod latency;

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;
use std::time::Instant;

use crate::proto::xml::{StanzaKind, Trace};
pub use latency::{Stage, StageHistograms};

/// Kinds of connection a shard serves (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    C2s,
    Component,
}

impl ConnKind {
    pub const ALL: [ConnKind; 2] = [ConnKind::C2s, ConnKind::Component];

    pub fn label(self) -> &'static str {
        match self {
            ConnKind::C2s => "c2s",
            ConnKind::Component => "component",
        }
    }
}

/// The stanza kinds as labels, indexed like [`kind_index`].
pub const STANZA_KINDS: [&str; 4] = ["message", "presence", "iq", "other"];

fn kind_index(kind: StanzaKind) -> usize {
    match kind {
        StanzaKind::Message => 0,
        StanzaKind::Presence => 1,
        StanzaKind::Iq => 2,
        StanzaKind::Other => 3,
    }
}

/// Outcomes of SASL by mechanism: `(mechanism, succeeded, failed)`.
pub type LoginCounts = Vec<(&'static str, u64, u64)>;

/// One shard's figures. Counters only grow; gauges are read from the shard's tables at snapshot time.
#[derive(Default)]
pub struct ShardMetrics {
    accepted: [Cell<u64>; 2],
    /// Connections open on this shard by kind: up at accept or adoption, down at close or move.
    open: [Cell<i64>; 2],
    refused_at_cap: Cell<u64>,
    stanzas_in: [Cell<u64>; 4],
    stanzas_out: [Cell<u64>; 4],
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    logins: RefCell<LoginCounts>,
    /// Mesh messages this shard took off each peer's channel, by peer.
    mesh_received: RefCell<Vec<u64>>,
    store_queries: Cell<u64>,
    store_errors: Cell<u64>,
    /// IQ requests handled by a module, by namespace: `(namespace, handled, answered with an error)`.
    iqs: RefCell<Vec<(Box<str>, u64, u64)>>,
    latency: RefCell<StageHistograms>,
    /// Sample one stanza in this many (0: off). Set once at shard start.
    sample_every: Cell<u32>,
    /// Stanzas until the next sample.
    sample_countdown: Cell<u32>,
}

thread_local! {
    static LOCAL: ShardMetrics = ShardMetrics::default();
}

/// Runs `f` on this thread's (this shard's) figures.
pub fn with<T>(f: impl FnOnce(&ShardMetrics) -> T) -> T {
    LOCAL.with(f)
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

/// Nanoseconds on the monotonic clock since the first call in this process: one clock for every shard,
/// so a stanza's timestamps compare across threads. Never 0 (0 means "not sampled").
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    (epoch.elapsed().as_nanos() as u64).max(1)
}

/// A sampled stanza passes a stage boundary: the time since its last mark goes into `stage`'s histogram
/// of this shard, and the mark moves. Nothing happens for a stanza that is not sampled.
pub fn stage(trace: &mut Trace, stage: Stage) {
    if trace.sampled() {
        let now = now_ns();
        with(|m| m.record(stage, now.saturating_sub(trace.mark)));
        trace.mark = now;
    }
}

/// Sampled stanzas are on a recipient's socket: their deliver and total stages end now.
pub fn written(traces: &[Trace]) {
    let now = now_ns();
    with(|m| {
        for t in traces {
            m.record(Stage::Deliver, now.saturating_sub(t.mark));
            m.record(Stage::Total, now.saturating_sub(t.read));
        }
    });
}

impl ShardMetrics {
    /// Sets this shard's sampling: one stanza in `every` (0: off).
    pub fn set_sampling(&self, every: u32) {
        self.sample_every.set(every);
        self.sample_countdown.set(every.min(1));
    }

    /// Whether latency sampling is on at all (the driver then stamps each read).
    pub fn sampling(&self) -> bool {
        self.sample_every.get() != 0
    }

    /// Whether the next stanza is to be followed.
    pub fn take_sample(&self) -> bool {
        let every = self.sample_every.get();
        if every == 0 {
            return false;
        }
        let left = self.sample_countdown.get();
        if left <= 1 {
            self.sample_countdown.set(every);
            true
        } else {
            self.sample_countdown.set(left - 1);
            false
        }
    }

    pub fn accepted(&self, kind: ConnKind) {
        add(&self.accepted[kind as usize], 1);
    }

    pub fn opened(&self, kind: ConnKind) {
        let c = &self.open[kind as usize];
        c.set(c.get() + 1);
    }

    pub fn closed(&self, kind: ConnKind) {
        let c = &self.open[kind as usize];
        c.set(c.get() - 1);
    }

    pub fn refused_at_cap(&self) {
        add(&self.refused_at_cap, 1);
    }

    pub fn stanza_in(&self, kind: StanzaKind) {
        add(&self.stanzas_in[kind_index(kind)], 1);
    }

    pub fn stanza_out(&self, kind: StanzaKind) {
        add(&self.stanzas_out[kind_index(kind)], 1);
    }

    pub fn bytes_in(&self, n: usize) {
        add(&self.bytes_in, n as u64);
    }

    pub fn bytes_out(&self, n: usize) {
        add(&self.bytes_out, n as u64);
    }

    /// A SASL exchange ended with `mechanism`.
    pub fn login(&self, mechanism: &'static str, ok: bool) {
        let mut logins = self.logins.borrow_mut();
        let i = match logins.iter().position(|(m, ..)| *m == mechanism) {
            Some(i) => i,
            None => {
                logins.push((mechanism, 0, 0));
                logins.len() - 1
            }
        };
        if ok {
            logins[i].1 += 1;
        } else {
            logins[i].2 += 1;
        }
    }

    /// A mesh message from `peer` was taken off its channel.
    pub fn mesh_received(&self, peer: usize) {
        let mut r = self.mesh_received.borrow_mut();
        if r.len() <= peer {
            r.resize(peer + 1, 0);
        }
        r[peer] += 1;
    }

    /// A store query answered after `ns` nanoseconds, of which a worker spent `exec_ns` on it (the
    /// rest waited in the queue for a worker).
    pub fn store_query(&self, ns: u64, exec_ns: u64, ok: bool) {
        add(&self.store_queries, 1);
        if !ok {
            add(&self.store_errors, 1);
        }
        let mut latency = self.latency.borrow_mut();
        latency.record(Stage::Store, ns);
        if exec_ns > 0 {
            latency.record(Stage::StoreExec, exec_ns);
        }
    }

    /// A module handled an IQ request of `namespace`; `error` when it answered with an error.
    pub fn iq(&self, namespace: &str, error: bool) {
        let mut iqs = self.iqs.borrow_mut();
        let i = match iqs.iter().position(|(n, ..)| &**n == namespace) {
            Some(i) => i,
            // Namespaces are those of registered handlers: a bounded set.
            None => {
                iqs.push((namespace.into(), 0, 0));
                iqs.len() - 1
            }
        };
        iqs[i].1 += 1;
        if error {
            iqs[i].2 += 1;
        }
    }

    /// Records that a sampled stanza spent `ns` in `stage`.
    pub fn record(&self, stage: Stage, ns: u64) {
        self.latency.borrow_mut().record(stage, ns);
    }

    /// A copy of the figures this shard keeps itself; the caller adds what its tables know.
    pub fn snapshot(&self, shard: usize) -> Snapshot {
        let get = |c: &[Cell<u64>; 4]| [c[0].get(), c[1].get(), c[2].get(), c[3].get()];
        Snapshot {
            shard,
            accepted: [self.accepted[0].get(), self.accepted[1].get()],
            open: [self.open[0].get(), self.open[1].get()],
            refused_at_cap: self.refused_at_cap.get(),
            stanzas_in: get(&self.stanzas_in),
            stanzas_out: get(&self.stanzas_out),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            logins: self.logins.borrow().clone(),
            mesh_received: self.mesh_received.borrow().clone(),
            store_queries: self.store_queries.get(),
            store_errors: self.store_errors.get(),
            iqs: self
                .iqs
                .borrow()
                .iter()
                .map(|(n, h, e)| (n.to_string(), *h, *e))
                .collect(),
            latency: self.latency.borrow().clone(),
            sample_every: self.sample_every.get(),
            ..Snapshot::default()
        }
    }
}

/// One shard's figures at one moment, sent to whoever asked.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub shard: usize,
    pub accepted: [u64; 2],
    pub open: [i64; 2],
    pub refused_at_cap: u64,
    pub stanzas_in: [u64; 4],
    pub stanzas_out: [u64; 4],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub logins: LoginCounts,
    pub mesh_received: Vec<u64>,
    /// Mesh messages this shard handed to each peer's channel.
    pub mesh_sent: Vec<u64>,
    /// Messages waiting in this shard's spill queue for each peer.
    pub mesh_spill_waiting: Vec<u64>,
    /// Messages that had to wait in a spill queue, and those refused at its cap (bounced).
    pub mesh_spilled: u64,
    pub mesh_refused: u64,
    pub store_queries: u64,
    pub store_errors: u64,
    pub iqs: Vec<(String, u64, u64)>,
    pub latency: StageHistograms,
    pub sample_every: u32,
    /// Bound client sessions (resources) whose account lives here.
    pub sessions: u64,
    /// Accounts with at least one session here.
    pub accounts: u64,
    /// External components whose connection is on this shard.
    pub components: u64,
    /// The cluster as this shard sees it; `None` on a host that is not in one.
    pub cluster: Option<ClusterFigures>,
}

/// A shard's view of the cluster (docs/cluster-protocol.md): what an operator watches to see that the
/// hosts agree and that the links keep up.
#[derive(Debug, Clone, Default)]
pub struct ClusterFigures {
    pub epoch: u64,
    pub members: u64,
    /// Whether the host serves as a member now (false while it is out: fenced, cut off, leaving).
    pub serving: bool,
    /// Presences from other hosts' sessions this shard's accounts are owed news of (§9.2).
    pub ledger_entries: u64,
    /// Per peer host this shard links to: node, whether the link is up, data frames sent and
    /// acknowledged.
    pub links: Vec<(String, bool, u64, u64)>,
}

/// What the whole process reports besides its shards.
#[derive(Debug, Clone, Default)]
pub struct ProcessFigures {
    pub uptime_secs: f64,
    pub resident_bytes: u64,
    /// The allocator's committed and peak committed memory (mimalloc), when it reports them.
    pub allocator_committed_bytes: Option<u64>,
    pub allocator_peak_committed_bytes: Option<u64>,
    /// Store queries waiting for a worker (one queue for every shard).
    pub store_queue_depth: u64,
    pub shards: usize,
}

impl ProcessFigures {
    /// Reads what the kernel and the allocator say now.
    pub fn read(uptime_secs: f64, store_queue_depth: usize, shards: usize) -> ProcessFigures {
        let (committed, peak) = allocator_figures();
        ProcessFigures {
            uptime_secs,
            resident_bytes: resident_bytes().unwrap_or(0),
            allocator_committed_bytes: committed,
            allocator_peak_committed_bytes: peak,
            store_queue_depth: store_queue_depth as u64,
            shards,
        }
    }
}

/// The resident set size, from `/proc/self/statm` (pages × page size).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

#[cfg(not(feature = "system-allocator"))]
fn allocator_figures() -> (Option<u64>, Option<u64>) {
    let (mut elapsed, mut user, mut system) = (0usize, 0usize, 0usize);
    let (mut rss, mut peak_rss, mut commit, mut peak_commit, mut faults) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    // SAFETY: mi_process_info writes each figure through the pointer it is given, all valid here.
    unsafe {
        libmimalloc_sys::mi_process_info(
            &mut elapsed,
            &mut user,
            &mut system,
            &mut rss,
            &mut peak_rss,
            &mut commit,
            &mut peak_commit,
            &mut faults,
        )
    };
    (Some(commit as u64), Some(peak_commit as u64))
}

#[cfg(feature = "system-allocator")]
fn allocator_figures() -> (Option<u64>, Option<u64>) {
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_takes_one_in_n_and_none_when_off() {
        let m = ShardMetrics::default();
        assert!(!m.take_sample(), "off by default");
        m.set_sampling(3);
        let taken: Vec<bool> = (0..7).map(|_| m.take_sample()).collect();
        assert_eq!(
            taken,
            [true, false, false, true, false, false, true],
            "the first stanza and every third after it"
        );
        m.set_sampling(1);
        assert!((0..5).all(|_| m.take_sample()));
        m.set_sampling(0);
        assert!(!m.sampling() && !m.take_sample());
    }

    #[test]
    fn counters_land_in_the_snapshot() {
        let m = ShardMetrics::default();
        m.stanza_in(StanzaKind::Message);
        m.stanza_in(StanzaKind::Message);
        m.stanza_out(StanzaKind::Iq);
        m.login("SCRAM-SHA-1", true);
        m.login("SCRAM-SHA-1", false);
        m.login("PLAIN", false);
        m.iq("jabber:iq:roster", false);
        m.iq("jabber:iq:roster", true);
        m.mesh_received(2);
        m.opened(ConnKind::C2s);
        m.opened(ConnKind::C2s);
        m.closed(ConnKind::C2s);
        let s = m.snapshot(4);
        assert_eq!(s.shard, 4);
        assert_eq!(s.stanzas_in, [2, 0, 0, 0]);
        assert_eq!(s.stanzas_out, [0, 0, 1, 0]);
        assert_eq!(s.logins, vec![("SCRAM-SHA-1", 1, 1), ("PLAIN", 0, 1)]);
        assert_eq!(s.iqs, vec![("jabber:iq:roster".to_string(), 2, 1)]);
        assert_eq!(s.mesh_received, vec![0, 0, 1]);
        assert_eq!(s.open, [1, 0]);
    }

    #[test]
    fn the_clock_is_never_zero_and_does_not_go_back() {
        let a = now_ns();
        let b = now_ns();
        assert!(a >= 1 && b >= a);
    }
}

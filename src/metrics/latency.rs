//! Per-stage latency: where the time of a stanza goes inside the server. A sampled stanza carries two
//! timestamps ([`crate::proto::xml::Trace`]): when the socket read that completed it returned, and the
//! last stage boundary it passed. Each boundary records the time since the previous one in this shard's
//! histogram for that stage and moves the mark: parse (read → parsed, on the sender's shard), route
//! (parsed → handed to the recipient's home: hooks, addressing, the route table), mesh (handed over →
//! taken off the channel on the home shard; only for stanzas that cross shards), deliver (taken off →
//! written to the recipient's socket: the session lookup, the §8.5 rules, the sink's queue, the
//! connection task's wake-up and the write) and total (read → written). Store queries have two
//! histograms of their own: the whole wait as the shard sees it, and the worker's time on the query
//! (the difference is the wait for a free worker). Histograms are `hdrhistogram`s in nanoseconds with two significant
//! digits (1 % resolution) up to a minute: about 30 KiB each.

use hdrhistogram::Histogram;

/// The stages a sampled stanza passes, and store queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Parse,
    Route,
    Mesh,
    Deliver,
    Total,
    Store,
    StoreExec,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Parse,
        Stage::Route,
        Stage::Mesh,
        Stage::Deliver,
        Stage::Total,
        Stage::Store,
        Stage::StoreExec,
    ];

    /// The stages of a stanza's journey (the others time store queries).
    pub fn of_stanzas(self) -> bool {
        !matches!(self, Stage::Store | Stage::StoreExec)
    }

    pub fn label(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Route => "route",
            Stage::Mesh => "mesh",
            Stage::Deliver => "deliver",
            Stage::Total => "total",
            Stage::Store => "store",
            Stage::StoreExec => "store_exec",
        }
    }
}

/// The largest value a histogram holds; longer ones are recorded as this (and show as `max`).
const HIGHEST_NS: u64 = 60_000_000_000;

/// One histogram per [`Stage`], and the exact sum of each (Prometheus wants a sum; the histogram's own
/// mean is only as exact as its buckets).
#[derive(Debug, Clone)]
pub struct StageHistograms {
    histograms: Vec<Histogram<u64>>,
    sums_ns: Vec<u128>,
}

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms {
            histograms: Stage::ALL
                .iter()
                .map(|_| Histogram::new_with_bounds(1, HIGHEST_NS, 2).expect("valid bounds"))
                .collect(),
            sums_ns: vec![0; Stage::ALL.len()],
        }
    }
}

impl StageHistograms {
    pub fn record(&mut self, stage: Stage, ns: u64) {
        let ns = ns.clamp(1, HIGHEST_NS);
        self.histograms[stage as usize].saturating_record(ns);
        self.sums_ns[stage as usize] += u128::from(ns);
    }

    pub fn get(&self, stage: Stage) -> &Histogram<u64> {
        &self.histograms[stage as usize]
    }

    pub fn sum_ns(&self, stage: Stage) -> u128 {
        self.sums_ns[stage as usize]
    }

    /// Adds another shard's (or another moment's) histograms to these.
    pub fn add(&mut self, other: &StageHistograms) {
        for (i, h) in other.histograms.iter().enumerate() {
            // Both have the same bounds, so adding cannot fail.
            let _ = self.histograms[i].add(h);
            self.sums_ns[i] += other.sums_ns[i];
        }
    }

    /// What was recorded since `earlier` (a snapshot of these histograms taken before).
    pub fn since(&self, earlier: &StageHistograms) -> StageHistograms {
        let mut out = self.clone();
        for (i, h) in earlier.histograms.iter().enumerate() {
            // Counts only grow, so `earlier` is contained in `self`; a failure means a reset in between,
            // and then everything since the reset is what happened since.
            if out.histograms[i].subtract(h).is_err() {
                out.histograms[i] = self.histograms[i].clone();
            } else {
                out.sums_ns[i] = out.sums_ns[i].saturating_sub(earlier.sums_ns[i]);
            }
        }
        out
    }

    /// p50, p90, p99, p99.9 and max of `stage` in nanoseconds, with the count; `None` when empty.
    pub fn summary(&self, stage: Stage) -> Option<Summary> {
        let h = self.get(stage);
        if h.is_empty() {
            return None;
        }
        Some(Summary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

/// A stage's distribution in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_one_percent_and_max_exact_to_the_bucket() {
        let mut h = StageHistograms::default();
        for v in 1..=1000u64 {
            h.record(Stage::Deliver, v * 1000);
        }
        let s = h.summary(Stage::Deliver).unwrap();
        assert_eq!(s.count, 1000);
        for (got, want) in [(s.p50, 500_000), (s.p99, 990_000), (s.max, 1_000_000)] {
            assert!(got.abs_diff(want) * 100 <= want, "{got} vs {want}");
        }
        assert!(h.summary(Stage::Mesh).is_none());
        assert_eq!(h.sum_ns(Stage::Deliver), 500_500_000);
    }

    #[test]
    fn since_subtracts_an_earlier_snapshot_and_add_merges_shards() {
        let mut h = StageHistograms::default();
        h.record(Stage::Parse, 10);
        let before = h.clone();
        h.record(Stage::Parse, 5_000_000);
        let d = h.since(&before);
        let s = d.summary(Stage::Parse).unwrap();
        assert_eq!(s.count, 1);
        assert!(s.p50 > 4_900_000, "{s:?}");
        assert_eq!(d.sum_ns(Stage::Parse), 5_000_000);
        let mut all = StageHistograms::default();
        all.add(&h);
        all.add(&before);
        assert_eq!(all.summary(Stage::Parse).unwrap().count, 3);
    }

    #[test]
    fn values_past_a_minute_are_kept_as_a_minute() {
        let mut h = StageHistograms::default();
        h.record(Stage::Total, u64::MAX);
        h.record(Stage::Total, 0);
        let s = h.summary(Stage::Total).unwrap();
        assert_eq!(s.count, 2);
        assert!(s.max >= HIGHEST_NS - HIGHEST_NS / 100);
    }
}

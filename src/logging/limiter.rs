//! The rate limit on log lines about peers: a token bucket per source address (an IPv4 address, or an
//! IPv6 /64, which one subscriber usually holds whole), a cap on how many sources are tracked, and one
//! bucket for the whole shard, so that neither one address nor many can fill the disk. It counts what it
//! holds back, per source, for the next line of that source that passes or for the periodic report, so
//! every suppressed line is counted exactly once. Pure: time comes in as `now`; one instance per shard
//! thread, so there is no lock.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Where lines come from, as the limiter groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address: one site or subscriber gets a /64 and can use all of it.
    V6([u8; 8]),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut prefix = [0; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Source::V6(prefix)
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(o) => write!(f, "{}.{}.{}.{}", o[0], o[1], o[2], o[3]),
            Source::V6(p) => {
                let mut o = [0; 16];
                o[..8].copy_from_slice(p);
                write!(f, "{}/64", Ipv6Addr::from(o))
            }
        }
    }
}

/// The limiter's settings (`[log]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Lines per second per source once the burst is spent.
    pub rate_per_source: f64,
    pub burst: u32,
    /// Sources tracked at most.
    pub max_sources: usize,
    /// Lines per second for the whole shard (also its burst).
    pub rate_per_shard: u32,
    /// How often [`Limiter::report`] gives the counts.
    pub report_every: Duration,
}

/// How often, at most, a full table is swept for sources that went quiet: the sweep reads every entry,
/// and a flood from many addresses would otherwise pay it per line.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: capacity,
            at: now,
        }
    }

    fn level(&self, rate: f64, capacity: f64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(capacity)
    }

    fn refill(&mut self, rate: f64, capacity: f64, now: Instant) {
        self.tokens = self.level(rate, capacity, now);
        self.at = now;
    }

    fn take(&mut self, rate: f64, capacity: f64, now: Instant) -> bool {
        self.refill(rate, capacity, now);
        self.tokens >= 1.0 && {
            self.tokens -= 1.0;
            true
        }
    }
}

struct Tracked {
    bucket: Bucket,
    /// Lines held back since this source's last line that passed or the last report.
    suppressed: u64,
}

/// What to do with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed` lines of its source were held back since the last count given.
    Pass {
        suppressed: u64,
    },
    Drop,
}

/// A count of held-back lines in a report; `source` is `None` for the sources there was no room to
/// track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    pub source: Option<Source>,
    pub count: u64,
}

pub struct Limiter {
    limits: Limits,
    sources: HashMap<Source, Tracked>,
    shard: Bucket,
    /// Held back from sources that could not be tracked (the table was full).
    untracked: u64,
    last_sweep: Instant,
    last_report: Instant,
}

impl Limiter {
    pub fn new(limits: Limits, now: Instant) -> Limiter {
        Limiter {
            limits,
            sources: HashMap::new(),
            shard: Bucket::full(f64::from(limits.rate_per_shard), now),
            untracked: 0,
            last_sweep: now,
            last_report: now,
        }
    }

    /// Decides on one line from `source`.
    pub fn admit(&mut self, source: Source, now: Instant) -> Verdict {
        let l = self.limits;
        let (rate, burst) = (l.rate_per_source, f64::from(l.burst));
        let shard_rate = f64::from(l.rate_per_shard);
        if !self.sources.contains_key(&source) && self.sources.len() >= l.max_sources {
            self.sweep(now);
        }
        if !self.sources.contains_key(&source) && self.sources.len() >= l.max_sources {
            // No room: such a line still has the shard's cap to pass, which bounds a flood from
            // more addresses than the table holds.
            return if self.shard.take(shard_rate, shard_rate, now) {
                Verdict::Pass { suppressed: 0 }
            } else {
                self.untracked += 1;
                Verdict::Drop
            };
        }
        let tracked = self.sources.entry(source).or_insert_with(|| Tracked {
            bucket: Bucket::full(burst, now),
            suppressed: 0,
        });
        // A line spends a token of each bucket or of neither: one that the shard's cap holds back
        // must not eat its source's allowance, nor a source's flood the shard's.
        tracked.bucket.refill(rate, burst, now);
        self.shard.refill(shard_rate, shard_rate, now);
        if tracked.bucket.tokens >= 1.0 && self.shard.tokens >= 1.0 {
            tracked.bucket.tokens -= 1.0;
            self.shard.tokens -= 1.0;
            Verdict::Pass {
                suppressed: std::mem::take(&mut tracked.suppressed),
            }
        } else {
            tracked.suppressed += 1;
            Verdict::Drop
        }
    }

    /// Once every `report_every`: the counts held back since the last report (or since the last line
    /// that passed, per source), which are then reset; empty at other times and when nothing was held.
    pub fn report(&mut self, now: Instant) -> Vec<Suppressed> {
        if now.saturating_duration_since(self.last_report) < self.limits.report_every {
            return Vec::new();
        }
        self.drain(now)
    }

    /// Every count not given yet, now (at shutdown).
    pub fn drain(&mut self, now: Instant) -> Vec<Suppressed> {
        self.last_report = now;
        let mut out: Vec<Suppressed> = self
            .sources
            .iter_mut()
            .filter(|(_, t)| t.suppressed > 0)
            .map(|(s, t)| Suppressed {
                source: Some(*s),
                count: std::mem::take(&mut t.suppressed),
            })
            .collect();
        out.sort_by_key(|s| s.source);
        if self.untracked > 0 {
            out.push(Suppressed {
                source: None,
                count: std::mem::take(&mut self.untracked),
            });
        }
        self.last_sweep = now;
        self.forget_quiet(now);
        out
    }

    /// How many sources are tracked (the limiter's memory).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            self.forget_quiet(now);
        }
    }

    /// Drops the sources whose buckets have filled up again with nothing left to report: a new entry
    /// would be the same.
    fn forget_quiet(&mut self, now: Instant) {
        let (rate, burst) = (self.limits.rate_per_source, f64::from(self.limits.burst));
        self.sources
            .retain(|_, t| t.suppressed > 0 || t.bucket.level(rate, burst, now) < burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            rate_per_source: 1.0,
            burst: 2,
            max_sources: 3,
            rate_per_shard: 1000,
            report_every: Duration::from_secs(10),
        }
    }

    fn ip(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    const PASS: Verdict = Verdict::Pass { suppressed: 0 };
    const DROP: Verdict = Verdict::Drop;
    const fn pass(suppressed: u64) -> Verdict {
        Verdict::Pass { suppressed }
    }

    /// Runs `(milliseconds since start, source, expected verdict)` rows against a virtual clock.
    fn run(limits: Limits, rows: &[(u64, &str, Verdict)]) -> Limiter {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits, t0);
        for (i, (ms, source, want)) in rows.iter().enumerate() {
            let got = l.admit(ip(source), t0 + Duration::from_millis(*ms));
            assert_eq!(got, *want, "row {i}: {ms} ms {source}");
        }
        l
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate() {
        run(
            limits(),
            &[
                (0, "192.0.2.1", PASS),
                (0, "192.0.2.1", PASS),
                (0, "192.0.2.1", DROP),
                (10, "192.0.2.1", DROP),
                (500, "192.0.2.1", DROP),
                // A token a second; the line that passes carries the count held back before it.
                (1000, "192.0.2.1", pass(3)),
                (1001, "192.0.2.1", DROP),
                (2000, "192.0.2.1", pass(1)),
                // Quiet for long: the burst is back, not more.
                (60_000, "192.0.2.1", PASS),
                (60_000, "192.0.2.1", PASS),
                (60_000, "192.0.2.1", DROP),
            ],
        );
    }

    #[test]
    fn sources_are_counted_apart_and_ipv6_by_its_64() {
        run(
            limits(),
            &[
                (0, "192.0.2.1", PASS),
                (0, "192.0.2.1", PASS),
                (0, "192.0.2.1", DROP),
                (0, "192.0.2.2", PASS),
                (0, "2001:db8:1:2::1", PASS),
                (0, "2001:db8:1:2:ffff::9", PASS),
                (0, "2001:db8:1:2::77", DROP),
                // A /64 is one source; the next /64 is another.
                (0, "2001:db8:1:3::1", PASS),
                // An IPv4-mapped address is its IPv4 address.
                (0, "::ffff:192.0.2.2", PASS),
                (0, "::ffff:192.0.2.2", DROP),
            ],
        );
        assert_eq!(ip("2001:db8:1:2:3:4:5:6").to_string(), "2001:db8:1:2::/64");
        assert_eq!(ip("::ffff:10.0.0.1").to_string(), "10.0.0.1");
    }

    #[test]
    fn the_shard_cap_holds_many_sources_and_the_table_stays_bounded() {
        let limits = Limits {
            rate_per_shard: 4,
            max_sources: 3,
            ..limits()
        };
        let mut l = run(
            limits,
            &[
                (0, "10.0.0.1", PASS),
                (0, "10.0.0.2", PASS),
                (0, "10.0.0.3", PASS),
                // The table is full: a fourth source has the shard's cap only.
                (0, "10.0.0.4", PASS),
                (0, "10.0.0.5", DROP),
                // Tracked sources too are held by the shard's cap, and their count is kept.
                (0, "10.0.0.1", DROP),
                (250, "10.0.0.1", pass(1)),
                // Two seconds on, the sources' buckets are full again: the sweep makes room.
                (2000, "10.0.0.6", PASS),
            ],
        );
        assert!(l.tracked() <= 3);
        let t = Instant::now() + Duration::from_secs(30);
        let report = l.report(t);
        assert_eq!(
            report,
            [Suppressed {
                source: None,
                count: 1
            }]
        );
    }

    #[test]
    fn reports_come_at_their_interval_and_count_each_line_once() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits(), t0);
        let at = |s: u64| t0 + Duration::from_millis(s);
        let mut passed = 0;
        let mut counted = 0;
        for i in 0..100 {
            match l.admit(ip("198.51.100.7"), at(i * 10)) {
                Verdict::Pass { suppressed } => {
                    passed += 1;
                    counted += suppressed;
                }
                Verdict::Drop => {}
            }
        }
        // 2 of burst at 0 ms, then one a second for 990 ms: none.
        assert_eq!(passed, 2);
        assert!(l.report(at(5_000)).is_empty(), "not due before 10 s");
        let report = l.report(at(10_000));
        assert_eq!(
            report,
            [Suppressed {
                source: Some(ip("198.51.100.7")),
                count: 98
            }]
        );
        counted += report[0].count;
        assert_eq!(passed + counted, 100);
        assert!(l.report(at(20_000)).is_empty(), "counted once");
        // The quiet source is forgotten after a report: memory goes back.
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn every_line_is_passed_or_counted_under_any_traffic() {
        // A deterministic pseudo-random mix of sources and times.
        let t0 = Instant::now();
        let mut l = Limiter::new(
            Limits {
                max_sources: 8,
                rate_per_shard: 20,
                ..limits()
            },
            t0,
        );
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let (mut lines, mut passed, mut counted) = (0u64, 0u64, 0u64);
        let mut ms = 0;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ms += x % 7;
            let source = Source::V4([10, 0, (x >> 8) as u8 % 4, (x >> 16) as u8 % 32]);
            lines += 1;
            let now = t0 + Duration::from_millis(ms);
            if let Verdict::Pass { suppressed } = l.admit(source, now) {
                passed += 1;
                counted += suppressed;
            }
            counted += l.report(now).iter().map(|s| s.count).sum::<u64>();
            assert!(l.tracked() <= 8);
        }
        counted += l
            .drain(t0 + Duration::from_millis(ms))
            .iter()
            .map(|s| s.count)
            .sum::<u64>();
        assert_eq!(passed + counted, lines);
        // The shard's cap: its burst plus its rate over the time that passed.
        assert!(passed as f64 <= 20.0 + 20.0 * ms as f64 / 1000.0 + 1.0);
    }
}

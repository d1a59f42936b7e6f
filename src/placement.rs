//! Placement: the one function that says where an account lives (DESIGN.md §2). A bare JID hashes to one of
//! [`SLOTS`] slots with SipHash-1-3 under fixed keys over the JID's UTF-8 bytes — a specified function,
//! unlike `std`'s `DefaultHasher`, whose algorithm Rust may change between releases — and a slot table maps
//! each slot to its owner `(host, shard)`. Every build, every restart and (once clusters exist) every host
//! computes the same owner; a membership change rewrites only the rows of the hosts that come or go, so
//! only their share of the accounts moves. The wire-level statement of this function belongs in
//! `docs/cluster-protocol.md` when the cluster arrives; until then this paragraph is its specification:
//!
//! `slot(jid) = siphash13(k0 = 0x726a_6162_6265_7264, k1 = 0x706c_6163_656d_656e, bytes(jid)) mod 4096`
//! and, on one host with `S` shards, `home(jid) = (0, slot(jid) mod S)`.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// Slots of the placement table: enough that the accounts spread evenly over many hosts and shards, few
/// enough that the table is a few KiB.
pub const SLOTS: usize = 4096;

/// The fixed SipHash keys ("rjabberd", "placemen" in ASCII). Never change them: every account would move.
const K0: u64 = 0x726a_6162_6265_7264;
const K1: u64 = 0x706c_6163_656d_656e;

/// Where an account lives: a host of the cluster (0 until clusters exist) and a shard (core) of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Home {
    pub host: usize,
    pub shard: usize,
}

impl Home {
    pub fn shard(self) -> usize {
        self.shard
    }
}

/// The slot of a bare JID (as prepared: the caller passes the canonical form).
pub fn slot(bare_jid: &str) -> usize {
    let mut h = SipHasher13::new_with_keys(K0, K1);
    h.write(bare_jid.as_bytes());
    (h.finish() % SLOTS as u64) as usize
}

/// The slot table: who owns each slot.
#[derive(Debug, Clone)]
pub struct Placement {
    owners: Box<[Home]>,
    shards: usize,
}

impl Placement {
    /// One host with `shards` shards: slot `i` belongs to shard `i mod shards`.
    pub fn single_host(shards: usize) -> Placement {
        let shards = shards.max(1);
        Placement {
            owners: (0..SLOTS)
                .map(|i| Home {
                    host: 0,
                    shard: i % shards,
                })
                .collect(),
            shards,
        }
    }

    /// The home of a bare JID.
    pub fn home(&self, bare_jid: &str) -> Home {
        self.owners[slot(bare_jid)]
    }

    /// Shards per host.
    pub fn shards(&self) -> usize {
        self.shards
    }
}

/// The home of a bare JID on one host with `shards` shards (for tools and tests that have no table).
pub fn home(bare_jid: &str, shards: usize) -> Home {
    let shards = shards.max(1);
    Home {
        host: 0,
        shard: slot(bare_jid) % shards,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: if this test fails, placement changed and every deployed account would move.
    #[test]
    fn slots_are_stable() {
        let golden = [
            ("alice@localhost", GOLDEN[0]),
            ("bob@example.org", GOLDEN[1]),
            ("juliet@capulet.lit", GOLDEN[2]),
            ("", GOLDEN[3]),
            ("ünïcödé@example.org", GOLDEN[4]),
        ];
        for (jid, want) in golden {
            assert_eq!(slot(jid), want, "slot of {jid:?}");
        }
    }

    /// Computed by an independent implementation of SipHash-1-3 (a Python transcription of the reference
    /// algorithm, checked against the reference SipHash-2-4 test vectors), not by this code.
    const GOLDEN: [usize; 5] = [3798, 976, 462, 53, 243];

    #[test]
    fn the_table_agrees_with_home_and_spreads_evenly() {
        for shards in [1, 2, 3, 8] {
            let p = Placement::single_host(shards);
            let mut per_shard = vec![0usize; shards];
            for i in 0..10_000 {
                let jid = format!("user{i}@example.org");
                let h = p.home(&jid);
                assert_eq!(h, home(&jid, shards));
                assert_eq!(h.host, 0);
                per_shard[h.shard()] += 1;
            }
            let expect = 10_000 / shards;
            for n in per_shard {
                assert!(
                    n.abs_diff(expect) < expect / 10 + 50,
                    "{shards} shards: {n} vs {expect}"
                );
            }
        }
    }
}

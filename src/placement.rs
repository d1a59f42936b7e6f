//! Placement: the one function that says where an account lives (DESIGN.md §2). A bare JID hashes to one of
//! [`SLOTS`] slots with SipHash-1-3 under fixed keys over the JID's UTF-8 bytes — a specified function,
//! unlike `std`'s `DefaultHasher`, whose algorithm Rust may change between releases — and a slot table maps
//! each slot to its owner `(host, shard)`. Every build, every restart and (once clusters exist) every host
//! computes the same owner; a membership change rewrites only the rows of the hosts that come or go, so
//! only their share of the accounts moves. The wire-level statement of this function belongs in
//! `docs/cluster-protocol.md` when the cluster arrives; until then this paragraph is its specification:
//!
//! `slot(jid) = siphash13(k0 = 0x726a_6162_6265_7264, k1 = 0x706c_6163_656d_656e, bytes(jid)) mod 4096`
//! and, on one host with `S` shards, `home(jid) = (0, slot(jid) mod S)`. In a cluster
//! (docs/cluster-protocol.md §5) a slot belongs to the (member, shard) with the highest rendezvous
//! score `siphash13(k0, k1, node ‖ 0x00 ‖ shard u16 BE ‖ slot u16 BE)` ([`Placement::cluster`]).

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// Slots of the placement table: enough that the accounts spread evenly over many hosts and shards, few
/// enough that the table is a few KiB.
pub const SLOTS: usize = 4096;

/// The fixed SipHash keys ("rjabberd", "placemen" in ASCII). Never change them: every account would move.
const K0: u64 = 0x726a_6162_6265_7264;
const K1: u64 = 0x706c_6163_656d_656e;

/// Where an account lives: a host of the cluster (0 on a single host; in a cluster, the index of the
/// member in [`Placement::members`]) and a shard (core) of it.
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
    /// A cluster's members by node name, sorted (what [`Home::host`] indexes); empty on a single host.
    members: Vec<(String, usize)>,
}

/// A slot's rendezvous score for one (member, shard) (docs/cluster-protocol.md §5).
fn score(node: &str, shard: u16, slot: u16) -> u64 {
    let mut h = SipHasher13::new_with_keys(K0, K1);
    h.write(node.as_bytes());
    h.write(&[0]);
    h.write(&shard.to_be_bytes());
    h.write(&slot.to_be_bytes());
    h.finish()
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
            members: Vec::new(),
        }
    }

    /// The placement of a cluster whose members are `(node, shards)` (any order; a node named twice
    /// counts once, with its last shard count). Each slot goes to the (member, shard) with the highest
    /// score, ties to the greater node name, then the greater shard, so every host computes the same
    /// table from the same members, and a member's arrival or departure moves only the slots it wins
    /// or held. `shards` of the result is `this_host`'s shard count when it is a member.
    pub fn cluster(members: &[(&str, usize)], this_host: &str) -> Placement {
        let mut sorted: Vec<(String, usize)> = Vec::with_capacity(members.len());
        for (node, shards) in members {
            match sorted.iter_mut().find(|(n, _)| n == node) {
                Some(m) => m.1 = (*shards).clamp(1, u16::MAX as usize),
                None => sorted.push((node.to_string(), (*shards).clamp(1, u16::MAX as usize))),
            }
        }
        sorted.sort();
        let owners = (0..SLOTS as u16)
            .map(|slot| {
                let mut best: Option<(u64, usize, usize)> = None;
                for (host, (node, shards)) in sorted.iter().enumerate() {
                    for shard in 0..*shards {
                        let sc = score(node, shard as u16, slot);
                        // Members are sorted by name and shards visited upwards, so `>=` keeps
                        // the greater name, then the greater shard, on equal scores.
                        if best.is_none_or(|(b, _, _)| sc >= b) {
                            best = Some((sc, host, shard));
                        }
                    }
                }
                let (_, host, shard) = best.unwrap_or((0, 0, 0));
                Home { host, shard }
            })
            .collect();
        let shards = sorted
            .iter()
            .find(|(n, _)| n == this_host)
            .map_or(1, |(_, s)| *s);
        Placement {
            owners,
            shards,
            members: sorted,
        }
    }

    /// The cluster's members as placed, `(node, shards)` sorted by node; empty on a single host.
    pub fn members(&self) -> &[(String, usize)] {
        &self.members
    }

    /// The owner of a slot.
    pub fn owner_of_slot(&self, slot: usize) -> Home {
        self.owners[slot % SLOTS]
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

    /// Owners in the cluster n1 (1 shard), n2 (2), n3 (4), and after n2 leaves, as `(node, shard)`:
    /// computed by the same independent Python SipHash-1-3 (with the scores of §5), not by this code.
    #[test]
    fn cluster_owners_are_stable() {
        let three = Placement::cluster(&[("n3", 4), ("n1", 1), ("n2", 2)], "n1");
        let two = Placement::cluster(&[("n1", 1), ("n3", 4)], "n1");
        let named = |p: &Placement, h: Home| (p.members()[h.host].0.clone(), h.shard);
        let golden = [
            ("alice@localhost", ("n2", 0), ("n1", 0)),
            ("bob@example.org", ("n2", 1), ("n3", 0)),
            ("juliet@capulet.lit", ("n2", 0), ("n1", 0)),
            ("", ("n1", 0), ("n1", 0)),
            ("ünïcödé@example.org", ("n3", 1), ("n3", 1)),
        ];
        for (jid, with_n2, without) in golden {
            assert_eq!(
                named(&three, three.home(jid)),
                (with_n2.0.into(), with_n2.1),
                "{jid:?}"
            );
            assert_eq!(
                named(&two, two.home(jid)),
                (without.0.into(), without.1),
                "{jid:?}"
            );
        }
        for (slot, want) in [(0, ("n3", 0)), (1, ("n3", 2)), (4095, ("n3", 1))] {
            assert_eq!(
                named(&three, three.owner_of_slot(slot)),
                (want.0.into(), want.1),
                "slot {slot}"
            );
        }
    }

    #[test]
    fn a_departure_moves_only_the_departed_members_slots_and_an_arrival_only_what_it_wins() {
        let before = Placement::cluster(&[("a", 2), ("b", 2), ("c", 2), ("d", 2)], "a");
        let after = Placement::cluster(&[("a", 2), ("b", 2), ("d", 2)], "a");
        let node = |p: &Placement, slot| p.members()[p.owner_of_slot(slot).host].0.clone();
        let mut moved = 0;
        for slot in 0..SLOTS {
            let (was, is) = (node(&before, slot), node(&after, slot));
            if was != "c" {
                assert_eq!(
                    (was.as_str(), before.owner_of_slot(slot).shard),
                    (is.as_str(), after.owner_of_slot(slot).shard),
                    "slot {slot} moved though its owner stayed"
                );
            } else {
                moved += 1;
            }
        }
        // c held about a quarter.
        assert!((SLOTS / 4).abs_diff(moved) < SLOTS / 20, "{moved}");
        // Back again: exactly the slots c had.
        let back = Placement::cluster(&[("d", 2), ("c", 2), ("b", 2), ("a", 2)], "c");
        for slot in 0..SLOTS {
            assert_eq!(node(&back, slot), node(&before, slot));
        }
        assert_eq!(back.shards(), 2);
    }

    #[test]
    fn shares_follow_shard_counts() {
        let p = Placement::cluster(&[("small", 1), ("big", 3)], "small");
        let big = (0..SLOTS)
            .filter(|&s| p.members()[p.owner_of_slot(s).host].0 == "big")
            .count();
        assert!((SLOTS * 3 / 4).abs_diff(big) < SLOTS / 25, "{big}");
        let mut per_shard = [0usize; 3];
        for s in 0..SLOTS {
            let h = p.owner_of_slot(s);
            if p.members()[h.host].0 == "big" {
                per_shard[h.shard] += 1;
            }
        }
        for n in per_shard {
            assert!((SLOTS / 4).abs_diff(n) < SLOTS / 25, "{per_shard:?}");
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

//! The membership registry of docs/cluster-protocol.md §6 and the fencing of §9.4: the rows of
//! `cluster_members`, `cluster_epochs` and `cluster_suspicions` in the PostgreSQL database every host of
//! a cluster shares, and the operations a host runs on them — [`Registry::join`] (a new incarnation and
//! a new epoch), [`Registry::renew`] (the lease, and the view that follows it), [`Registry::leave`],
//! [`Registry::suspect`] / [`Registry::unsuspect`] — each a short transaction on the database's clock
//! (`now()`), never a host's, so clock skew between hosts changes nothing. Reading the view
//! ([`Registry::view`]) is also where members are put out: a lapsed lease turns a row `fenced`, and
//! enough suspicion for long enough ([`arbitrate`]) turns it `evicting` (its slots kept until its
//! lease is out, then `fenced`), each change bumping the epoch with a compare-and-swap, so that hosts
//! reading at once change it once. A [`Registry`] owns one synchronous connection and blocks on
//! it: it belongs on a store worker or a thread of its own, never on a shard reactor.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, IsolationLevel};

use crate::proto::cluster::wire::{MAJOR, Member, MemberState};
use crate::storage::StoreError;
use crate::storage::postgres::{Target, connect_bounded};

pub type Result<T> = std::result::Result<T, StoreError>;

/// This host as it registers itself (docs/cluster-protocol.md §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub node: String,
    /// Non-zero; a fresh one at every start.
    pub incarnation: u64,
    /// Where the other hosts connect to this one (host:port).
    pub address: String,
    pub shards: u16,
}

/// The registry's clocks, counted by the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a member stays one without renewing (`cluster.lease_ms`).
    pub lease: Duration,
    /// How long a suspicion must stand before it counts (§9.4).
    pub evict_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease: Duration::from_millis(5_000),
            evict_after: Duration::from_secs(10),
        }
    }
}

/// The members of one epoch, sorted by node name (bytewise): every host that reads the same epoch
/// reads the same list, which is what placement (§5) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub epoch: u64,
    pub members: Vec<Member>,
}

impl View {
    pub fn member(&self, node: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node == node)
    }

    /// Whether this incarnation of `me` is a member.
    /// Whether this incarnation of `me` is a member that may serve: an evicting one (§9.4) still
    /// holds its slots in everyone's placement, but must stop.
    pub fn includes(&self, me: &MemberSpec) -> bool {
        self.member(&me.node)
            .is_some_and(|m| m.incarnation == me.incarnation && m.state == MemberState::Up)
    }
}

/// The registry's rows as they are (`rjabberd cluster status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub epoch: u64,
    /// By node name.
    pub rows: Vec<StatusRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub node: String,
    pub incarnation: u64,
    pub address: String,
    pub shards: u32,
    /// `up`, `evicting`, `leaving` or `fenced`, as stored.
    pub state: String,
    pub sessions: u64,
    /// Until the lease runs out, on the database's clock; negative when it has.
    pub lease_left_ms: i64,
}

impl StatusRow {
    /// A member now: `up` (or `evicting`, which keeps its slots) with a live lease.
    pub fn is_member(&self) -> bool {
        (self.state == "up" || self.state == "evicting") && self.lease_left_ms > 0
    }
}

/// What a renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The lease runs on; the current view (which includes this host).
    Live(View),
    /// This incarnation is out (its lease lapsed, it was fenced by suspicion, or it left): it must stop
    /// serving and join again as a new incarnation (§9.4).
    Fenced,
    /// Another incarnation of this node has joined since (the node was started twice, or restarted
    /// while this process still ran).
    Replaced { incarnation: u64 },
}

/// How often [`Registry::view`] tries again after losing a race to another host before it gives up:
/// each loss means the other host changed the epoch, so more than a few in a row is not contention.
const SETTLE_ATTEMPTS: usize = 16;

/// One host's handle on the registry of one cluster, over its own connection.
pub struct Registry {
    target: Target,
    cluster: String,
    timing: Timing,
    // A registry runs on one thread and its operations take `&self`: a RefCell, not a lock.
    client: RefCell<Option<Client>>,
}

impl Registry {
    /// A registry of `cluster` on the database `target` names (the store's), connected once now so that
    /// a bad URL fails the start. The schema must be migrated (`crate::storage::postgres::migrate`).
    pub fn open(target: Target, cluster: &str, timing: Timing) -> Result<Registry> {
        let registry = Registry {
            target,
            cluster: cluster.to_string(),
            timing,
            client: RefCell::new(None),
        };
        registry.with(|_| Ok(()))?;
        Ok(registry)
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Runs `f` on the connection, opening one when there is none. A failure that is not the server's
    /// answer drops the connection, so the next call (the next renewal) connects afresh; there is no
    /// retry here because the caller's clock (the lease) decides what an outage means (§9.4).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut slot = self.client.borrow_mut();
        if slot.as_ref().is_some_and(|c| c.is_closed()) {
            *slot = None;
        }
        if slot.is_none() {
            // An answer later than the lease is worthless (the lease lapsed meanwhile), and a stuck
            // statement would hold the thread that should notice it; a second at least, so a short
            // lease on a busy database does not fail every statement.
            let limit = self.timing.lease.max(Duration::from_secs(1));
            *slot = Some(connect_bounded(&self.target, limit)?);
        }
        let client = slot.as_mut().expect("connected above");
        let result = f(client);
        if let Err(e) = &result
            && (e.as_db_error().is_none() || client.is_closed())
        {
            log::warn!(error:% = e; "cluster registry: PostgreSQL connection lost; reconnecting on the next call");
            *slot = None;
        }
        result.map_err(StoreError::from)
    }

    /// Registers this incarnation as `up` with a fresh lease and a new epoch, in one transaction, and
    /// returns the view after it. Suspicions by and of this node are dropped: they were about an
    /// incarnation that is gone, and a stale `since` would fence the new one the moment it joins.
    pub fn join(&self, me: &MemberSpec) -> Result<View> {
        if me.incarnation == 0 {
            return Err(StoreError("cluster: an incarnation is never 0".into()));
        }
        let cluster = &self.cluster;
        let lease = millis(self.timing.lease);
        self.with(|c| {
            let mut tx = c.transaction()?;
            // The epoch row first, in every transaction that changes membership: one lock order, so
            // a join and a host fencing others never deadlock.
            tx.execute(
                "INSERT INTO cluster_epochs (cluster, epoch) VALUES ($1, 1)
                 ON CONFLICT (cluster) DO UPDATE SET epoch = cluster_epochs.epoch + 1",
                &[cluster],
            )?;
            tx.execute(
                "INSERT INTO cluster_members
                     (cluster, node, incarnation, address, shards, proto_major, state, lease_until,
                      sessions)
                 VALUES ($1, $2, $3, $4, $5, $6, 'up', now() + $7::float8 * interval '1 millisecond',
                         0)
                 ON CONFLICT (cluster, node) DO UPDATE SET incarnation = EXCLUDED.incarnation,
                     address = EXCLUDED.address, shards = EXCLUDED.shards,
                     proto_major = EXCLUDED.proto_major, state = 'up',
                     lease_until = EXCLUDED.lease_until, sessions = 0",
                &[
                    cluster,
                    &me.node,
                    &to_db(me.incarnation),
                    &me.address,
                    &i32::from(me.shards),
                    &i32::from(MAJOR),
                    &lease,
                ],
            )?;
            tx.execute(
                "DELETE FROM cluster_suspicions
                 WHERE cluster = $1 AND (reporter = $2 OR suspect = $2)",
                &[cluster, &me.node],
            )?;
            tx.commit()
        })?;
        self.view()
    }

    /// Extends this incarnation's lease and records its session count, then reads the view. A lease
    /// that has already lapsed is not extended, even when no host has fenced it yet: whoever read the
    /// view after it lapsed may already have moved its accounts, so it is fenced now instead.
    pub fn renew(&self, me: &MemberSpec, sessions: u64) -> Result<Renewal> {
        let cluster = &self.cluster;
        let lease = millis(self.timing.lease);
        let renewed = self.with(|c| {
            c.execute(
                "UPDATE cluster_members
                 SET lease_until = now() + $5::float8 * interval '1 millisecond', sessions = $4
                 WHERE cluster = $1 AND node = $2 AND incarnation = $3 AND state = 'up'
                   AND lease_until > now()",
                &[
                    cluster,
                    &me.node,
                    &to_db(me.incarnation),
                    &(sessions.min(i64::MAX as u64) as i64),
                    &lease,
                ],
            )
        })?;
        if renewed == 1 {
            let view = self.view()?;
            // The view may have fenced this host for suspicion (§9.4) after its lease was extended.
            return Ok(if view.includes(me) {
                Renewal::Live(view)
            } else {
                Renewal::Fenced
            });
        }
        let row = self.with(|c| {
            c.query_opt(
                "SELECT incarnation, state FROM cluster_members WHERE cluster = $1 AND node = $2",
                &[cluster, &me.node],
            )
        })?;
        match row.map(|r| (from_db(r.get(0)), r.get::<_, String>(1))) {
            Some((incarnation, _)) if incarnation != me.incarnation => {
                Ok(Renewal::Replaced { incarnation })
            }
            Some((_, state)) if state == "up" => {
                // Lapsed and not yet fenced: the view does it (and bumps the epoch) for everyone.
                self.view()?;
                Ok(Renewal::Fenced)
            }
            _ => Ok(Renewal::Fenced),
        }
    }

    /// Marks this incarnation `leaving` and bumps the epoch (§6.5); false when it was no longer a member
    /// (then nothing changes).
    pub fn leave(&self, me: &MemberSpec) -> Result<bool> {
        let cluster = &self.cluster;
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE cluster_epochs SET epoch = epoch + 1 WHERE cluster = $1",
                &[cluster],
            )?;
            let left = tx.execute(
                "UPDATE cluster_members SET state = 'leaving'
                 WHERE cluster = $1 AND node = $2 AND incarnation = $3 AND state = 'up'",
                &[cluster, &me.node, &to_db(me.incarnation)],
            )?;
            if left == 0 {
                // Dropping the transaction rolls the epoch back: nothing changed.
                return Ok(false);
            }
            tx.execute(
                "DELETE FROM cluster_suspicions
                 WHERE cluster = $1 AND (reporter = $2 OR suspect = $2)",
                &[cluster, &me.node],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    /// Records that `me` suspects `suspect` (§9.1), since now, or keeps the earlier `since` when it
    /// already does. Only a live incarnation's report is written: a host that was replaced or fenced
    /// must not speak for its node.
    pub fn suspect(&self, me: &MemberSpec, suspect: &str) -> Result<()> {
        let cluster = &self.cluster;
        self.with(|c| {
            c.execute(
                "INSERT INTO cluster_suspicions (cluster, reporter, suspect, since)
                 SELECT $1::text, $2::text, $4::text, now()
                 WHERE $2::text <> $4::text AND EXISTS (
                     SELECT 1 FROM cluster_members WHERE cluster = $1 AND node = $2
                         AND incarnation = $3 AND state = 'up')
                 ON CONFLICT (cluster, reporter, suspect) DO NOTHING",
                &[cluster, &me.node, &to_db(me.incarnation), &suspect],
            )
        })?;
        Ok(())
    }

    /// Withdraws `me`'s suspicion of `suspect` (its link is healthy again).
    pub fn unsuspect(&self, me: &MemberSpec, suspect: &str) -> Result<()> {
        let cluster = &self.cluster;
        self.with(|c| {
            c.execute(
                "DELETE FROM cluster_suspicions WHERE cluster = $1 AND reporter = $2 AND suspect = $3",
                &[cluster, &me.node, &suspect],
            )
        })?;
        Ok(())
    }

    /// The current view, after putting out whoever must go: rows whose lease lapsed and members fenced
    /// by suspicion ([`arbitrate`]), marked `fenced` with one epoch bump. Any host may call it; a
    /// host that is not a member (an operator's `cluster status`) reads the same view.
    /// Every row of the cluster as the table holds it now, fenced and lapsed ones included, and the
    /// epoch: what `rjabberd cluster status` shows. Read-only (unlike [`Registry::view`], it fences
    /// nobody), in one snapshot.
    pub fn status(&self) -> Result<Status> {
        let cluster = &self.cluster;
        self.with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let epoch = tx
                .query_opt(
                    "SELECT epoch FROM cluster_epochs WHERE cluster = $1",
                    &[cluster],
                )?
                .map_or(0, |r| r.get::<_, i64>(0) as u64);
            let rows = tx.query(
                "SELECT node, incarnation, address, shards, state, sessions, \
                        (EXTRACT(EPOCH FROM (lease_until - now())) * 1000)::bigint \
                 FROM cluster_members WHERE cluster = $1 ORDER BY node",
                &[cluster],
            )?;
            tx.commit()?;
            Ok(Status {
                epoch,
                rows: rows
                    .iter()
                    .map(|r| StatusRow {
                        node: r.get(0),
                        incarnation: from_db(r.get(1)),
                        address: r.get(2),
                        shards: r.get::<_, i32>(3).max(0) as u32,
                        state: r.get(4),
                        sessions: r.get::<_, i64>(5).max(0) as u64,
                        lease_left_ms: r.get(6),
                    })
                    .collect(),
            })
        })
    }

    pub fn view(&self) -> Result<View> {
        let cluster = &self.cluster;
        let evict_after = millis(self.timing.evict_after);
        let settled = self.with(|c| {
            for _ in 0..SETTLE_ATTEMPTS {
                match settle(c, cluster, evict_after) {
                    Ok(Some(view)) => return Ok(Some(view)),
                    Ok(None) => {}
                    Err(e) if lost_a_race(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(None)
        })?;
        settled.ok_or_else(|| {
            StoreError(format!(
                "cluster {cluster}: the epoch kept changing under {SETTLE_ATTEMPTS} reads of the view"
            ))
        })
    }
}

/// One attempt at reading the view and applying what it calls for; `None` when another host changed
/// the epoch first (then the caller reads again).
///
/// REPEATABLE READ makes the three reads one snapshot, and makes the writes fail (serialization
/// failure, [`lost_a_race`]) when a row they touch changed after it: a member that renewed in between is
/// not fenced on the strength of its old lease. Every membership change bumps the epoch row, so the
/// compare-and-swap on it both detects a concurrent change and takes the lock that orders this one
/// after it.
fn settle(
    c: &mut Client,
    cluster: &str,
    evict_after: f64,
) -> std::result::Result<Option<View>, postgres::Error> {
    let mut tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()?;
    let epoch = tx
        .query_opt(
            "SELECT epoch FROM cluster_epochs WHERE cluster = $1",
            &[&cluster],
        )?
        .map_or(0, |r| r.get::<_, i64>(0) as u64);
    let rows = tx.query(
        "SELECT node, incarnation, address, shards, sessions, lease_until > now(), state
         FROM cluster_members WHERE cluster = $1 AND state IN ('up', 'evicting') ORDER BY node",
        &[&cluster],
    )?;
    let mut suspicions: Vec<(String, String)> = Vec::new();
    let mut reported: Vec<(String, String)> = Vec::new();
    for r in tx.query(
        "SELECT reporter, suspect, since <= now() - $2::float8 * interval '1 millisecond'
         FROM cluster_suspicions WHERE cluster = $1",
        &[&cluster, &evict_after],
    )? {
        let pair: (String, String) = (r.get(0), r.get(1));
        if r.get::<_, bool>(2) {
            suspicions.push(pair.clone());
        }
        reported.push(pair);
    }
    let mut live = Vec::with_capacity(rows.len());
    let mut lapsed = Vec::new();
    for r in &rows {
        let member = Member {
            node: r.get(0),
            incarnation: from_db(r.get(1)),
            address: r.get(2),
            shards: r.get::<_, i32>(3) as u16,
            state: if r.get::<_, String>(6) == "evicting" {
                MemberState::Evicting
            } else {
                MemberState::Up
            },
            sessions: r.get::<_, i64>(4) as u64,
        };
        if r.get::<_, bool>(5) {
            live.push(member);
        } else {
            lapsed.push(member.node);
        }
    }
    // Only members that serve are weighed: an evicting one is already on its way out.
    let names: Vec<String> = live
        .iter()
        .filter(|m| m.state == MemberState::Up)
        .map(|m| m.node.clone())
        .collect();
    let evicted = arbitrate(&names, &suspicions, &reported);
    if lapsed.is_empty() && evicted.is_empty() {
        tx.commit()?;
        return Ok(Some(View {
            epoch,
            members: live,
        }));
    }
    let won = tx.execute(
        "UPDATE cluster_epochs SET epoch = epoch + 1 WHERE cluster = $1 AND epoch = $2",
        &[&cluster, &(epoch as i64)],
    )?;
    if won == 0 {
        return Ok(None);
    }
    // A lapsed lease frees the slots at once: its holder stopped serving at three quarters of it. A
    // member fenced by suspicion may not know yet (it learns at its next renewal, or stops when its
    // lease is three-quarters gone without one), so it keeps its slots, `evicting`, until its lease
    // is out: only then may another host bind its accounts (§9.4).
    tx.execute(
        "UPDATE cluster_members SET state = 'fenced'
         WHERE cluster = $1 AND node = ANY($2) AND state IN ('up', 'evicting')",
        &[&cluster, &lapsed],
    )?;
    tx.execute(
        "UPDATE cluster_members SET state = 'evicting'
         WHERE cluster = $1 AND node = ANY($2) AND state = 'up'",
        &[&cluster, &evicted],
    )?;
    tx.commit()?;
    for m in &mut live {
        if evicted.contains(&m.node) {
            m.state = MemberState::Evicting;
        }
    }
    Ok(Some(View {
        epoch: epoch + 1,
        members: live,
    }))
}

/// Fencing by suspicion (§9.4): which of the `live` members to put out, given the suspicions that
/// have stood for `evict_after` as `(reporter, suspect)`. A member is a candidate when at least half of
/// the other live members (and at least one) suspect it. Candidates go one at a time — the one with the
/// most reporters, ties to the greater node name bytewise — and each one fenced stops counting, both as
/// a reporter and in "the others": so of two members that suspect each other only the greater goes, and
/// of a partition into sides every member suspects across, the smaller side goes (the side with the
/// greater names, between equal sides) and the other stays whole. A pure function of the snapshot, so
/// whichever host wins the compare-and-swap fences the same members.
pub fn arbitrate(
    live: &[String],
    suspicions: &[(String, String)],
    reported: &[(String, String)],
) -> Vec<String> {
    let mut alive: BTreeSet<&str> = live.iter().map(String::as_str).collect();
    let mut fenced = Vec::new();
    let reporters = |of: &[(String, String)], suspect: &str, alive: &BTreeSet<&str>| {
        of.iter()
            .filter(|(r, s)| s == suspect && r != suspect && alive.contains(r.as_str()))
            .map(|(r, _)| r.as_str())
            .collect::<BTreeSet<&str>>()
            .len()
    };
    loop {
        let others = alive.len().saturating_sub(1);
        // The most suspected by every standing report, so that a host cut off from the others, whose
        // reports may stand for `evict_after` a moment before theirs about it, does not put out the
        // first healthy host it names; then fenced only once its own reports have stood long enough.
        let first = alive
            .iter()
            .map(|&suspect| (reporters(reported, suspect, &alive), suspect))
            .filter(|(n, _)| *n > 0)
            .max();
        let Some((_, suspect)) = first else {
            return fenced;
        };
        let n = reporters(suspicions, suspect, &alive);
        if n == 0 || 2 * n < others {
            return fenced;
        }
        alive.remove(suspect);
        fenced.push(suspect.to_string());
    }
}

/// Another host's transaction got there first: read again.
fn lost_a_race(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE) | Some(&SqlState::T_R_DEADLOCK_DETECTED)
    )
}

/// A duration as the `float8` milliseconds the SQL multiplies an interval by.
fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

/// An incarnation in a `bigint` column: the same 64 bits, read as two's complement (PostgreSQL has no
/// unsigned type); only equality is asked of it.
fn to_db(incarnation: u64) -> i64 {
    incarnation as i64
}

fn from_db(incarnation: i64) -> u64 {
    incarnation as u64
}

#[cfg(test)]
mod tests;

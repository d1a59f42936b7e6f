//! The registry against a real PostgreSQL (one throw-away server for the test binary, a database per
//! test), several hosts as several registries, and [`arbitrate`] on its own. Leases that must not lapse
//! during a test are a minute long; the ones that must lapse are short, and the tests wait several times
//! their length before looking, so a loaded machine makes them slower, not flaky.

use std::sync::{Arc, Barrier};
use std::thread::sleep;
use std::time::Duration;

use super::*;
use crate::storage::postgres::migrate;
use crate::storage::throwaway_pg::PgInstance;

const LONG: Duration = Duration::from_secs(60);

fn database(name: &str) -> Option<Target> {
    let pg = PgInstance::shared()?;
    let target = Target::new(&pg.create_db(&format!("cluster_{name}")), None).unwrap();
    migrate(&target).unwrap();
    Some(target)
}

fn host(name: &str, incarnation: u64) -> MemberSpec {
    MemberSpec {
        node: name.into(),
        incarnation,
        address: format!("{name}.example:7470"),
        shards: 2,
    }
}

fn registry(target: &Target, lease: Duration, evict_after: Duration) -> Registry {
    Registry::open(target.clone(), "test", Timing { lease, evict_after }).unwrap()
}

fn names(view: &View) -> Vec<&str> {
    view.members.iter().map(|m| m.node.as_str()).collect()
}

/// The members that may serve (not those evicted for suspicion whose lease still runs).
fn serving(view: &View) -> Vec<&str> {
    view.members
        .iter()
        .filter(|m| m.state == MemberState::Up)
        .map(|m| m.node.as_str())
        .collect()
}

fn live(renewal: Renewal) -> View {
    match renewal {
        Renewal::Live(view) => view,
        other => panic!("expected a live renewal, got {other:?}"),
    }
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn three_hosts_join_and_every_view_lists_them_sorted_bytewise() {
    let Some(db) = database("join") else {
        return;
    };
    // Bytewise, "N1" < "n10" < "n9": a locale's order would differ, and hosts must agree.
    let (n9, n10, big) = (host("n9", 9), host("n10", 10), host("N1", 1));
    let (r9, r10, rbig) = (
        registry(&db, LONG, LONG),
        registry(&db, LONG, LONG),
        registry(&db, LONG, LONG),
    );
    let v = r9.join(&n9).unwrap();
    assert_eq!((v.epoch, names(&v)), (1, vec!["n9"]));
    let v = r10.join(&n10).unwrap();
    assert_eq!((v.epoch, names(&v)), (2, vec!["n10", "n9"]));
    let v = rbig.join(&big).unwrap();
    assert_eq!((v.epoch, names(&v)), (3, vec!["N1", "n10", "n9"]));

    // Renewals are not membership changes: the epoch stays, the session counts travel.
    live(r9.renew(&n9, 7).unwrap());
    live(r10.renew(&n10, 0).unwrap());
    let v = live(rbig.renew(&big, 3).unwrap());
    assert_eq!(v.epoch, 3);
    assert_eq!(
        v.member("n9").unwrap(),
        &Member {
            node: "n9".into(),
            incarnation: 9,
            address: "n9.example:7470".into(),
            shards: 2,
            state: MemberState::Up,
            sessions: 7,
        }
    );
    assert_eq!(v.member("N1").unwrap().sessions, 3);
    assert_eq!(r10.view().unwrap(), v, "every host reads the same view");
    // An incarnation beyond i64::MAX survives the bigint column.
    let high = host("zz", u64::MAX - 1);
    let v = r10.join(&high).unwrap();
    assert_eq!(v.epoch, 4);
    assert_eq!(v.member("zz").unwrap().incarnation, u64::MAX - 1);
    live(r10.renew(&high, 0).unwrap());
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn a_host_that_stops_renewing_is_fenced_once_and_may_join_again() {
    let Some(db) = database("lease") else {
        return;
    };
    let short = Duration::from_millis(800);
    let (a, b, c) = (host("a", 1), host("b", 1), host("c", 1));
    let (ra, rb, rc) = (
        registry(&db, LONG, LONG),
        registry(&db, LONG, LONG),
        registry(&db, short, LONG),
    );
    ra.join(&a).unwrap();
    rb.join(&b).unwrap();
    assert_eq!(names(&rc.join(&c).unwrap()), ["a", "b", "c"]);
    sleep(short * 3);

    // Several hosts notice at once; the compare-and-swap lets one of them bump the epoch.
    let readers = 6;
    let barrier = Arc::new(Barrier::new(readers));
    let views: Vec<View> = (0..readers)
        .map(|_| {
            let (db, barrier) = (db.clone(), barrier.clone());
            std::thread::spawn(move || {
                let r = registry(&db, LONG, LONG);
                barrier.wait();
                r.view().unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for v in &views {
        assert_eq!((v.epoch, names(v)), (4, vec!["a", "b"]));
    }
    assert_eq!(rc.renew(&c, 0).unwrap(), Renewal::Fenced);
    assert_eq!(
        ra.view().unwrap().epoch,
        4,
        "a fenced renewal changes nothing"
    );

    // Fenced stays fenced until a new incarnation joins (a restarted process: a registry of its own,
    // with a lease that cannot lapse while the test looks).
    let c2 = host("c", 2);
    let rc2 = registry(&db, LONG, LONG);
    let v = rc2.join(&c2).unwrap();
    assert_eq!((v.epoch, names(&v)), (5, vec!["a", "b", "c"]));
    assert!(v.includes(&c2));
    assert_eq!(
        rc.renew(&c, 0).unwrap(),
        Renewal::Replaced { incarnation: 2 }
    );
    assert!(live(rc2.renew(&c2, 0).unwrap()).includes(&c2));
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn a_lapsed_lease_is_not_revived_by_a_late_renewal() {
    let Some(db) = database("late") else {
        return;
    };
    let short = Duration::from_millis(500);
    let (a, b) = (host("a", 1), host("b", 1));
    let (ra, rb) = (registry(&db, LONG, LONG), registry(&db, short, LONG));
    ra.join(&a).unwrap();
    assert_eq!(rb.join(&b).unwrap().epoch, 2);
    sleep(short * 5);
    // Nobody read the view since b's lease ran out: b itself finds it, and is put out for all.
    assert_eq!(rb.renew(&b, 0).unwrap(), Renewal::Fenced);
    let v = ra.view().unwrap();
    assert_eq!((v.epoch, names(&v)), (3, vec!["a"]));
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn leaving_takes_a_host_out_of_the_view() {
    let Some(db) = database("leave") else {
        return;
    };
    let (a, b, c) = (host("a", 1), host("b", 1), host("c", 1));
    let (ra, rb, rc) = (
        registry(&db, LONG, LONG),
        registry(&db, LONG, LONG),
        registry(&db, LONG, LONG),
    );
    ra.join(&a).unwrap();
    rb.join(&b).unwrap();
    rc.join(&c).unwrap();
    assert!(rb.leave(&b).unwrap());
    let v = ra.view().unwrap();
    assert_eq!((v.epoch, names(&v)), (4, vec!["a", "c"]));
    assert_eq!(rb.renew(&b, 0).unwrap(), Renewal::Fenced);
    assert!(!rb.leave(&b).unwrap(), "a second leave is no change");
    assert_eq!(rc.view().unwrap().epoch, 4);
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn a_host_suspected_by_the_others_is_fenced_after_evict_after() {
    let Some(db) = database("suspected") else {
        return;
    };
    let evict = Duration::from_secs(2);
    // c's lease outlives the suspicion's wait, so that it is fenced for suspicion, not for a lapse.
    let c_lease = Duration::from_secs(5);
    let (a, b, c) = (host("a", 1), host("b", 1), host("c", 1));
    let (ra, rb, rc) = (
        registry(&db, LONG, evict),
        registry(&db, LONG, evict),
        registry(&db, c_lease, evict),
    );
    ra.join(&a).unwrap();
    rb.join(&b).unwrap();
    rc.join(&c).unwrap();
    let c_joined = std::time::Instant::now();
    ra.suspect(&a, "c").unwrap();
    rb.suspect(&b, "c").unwrap();
    // A report does not fence by itself; it has to stand for evict_after.
    assert_eq!(names(&ra.view().unwrap()), ["a", "b", "c"]);
    sleep(evict + Duration::from_secs(1));
    // Evicting: c may no longer serve, but keeps its slots in everyone's placement while its lease
    // runs, since it may not have noticed yet.
    let v = ra.view().unwrap();
    assert_eq!((v.epoch, names(&v)), (4, vec!["a", "b", "c"]));
    assert_eq!(v.member("c").unwrap().state, MemberState::Evicting);
    assert!(!v.includes(&c), "an evicting member is not one that serves");
    assert_eq!(rc.renew(&c, 0).unwrap(), Renewal::Fenced);
    assert!(live(rb.renew(&b, 0).unwrap()).includes(&b));
    let status = ra.status().unwrap();
    let row = status.rows.iter().find(|r| r.node == "c").unwrap();
    assert_eq!(row.state, "evicting");
    assert!(row.is_member());
    // Once its lease is out, its slots go to the others: one more epoch.
    sleep((c_lease + Duration::from_millis(300)).saturating_sub(c_joined.elapsed()));
    let v = ra.view().unwrap();
    assert_eq!((v.epoch, names(&v)), (5, vec!["a", "b"]));
    assert_eq!(rb.view().unwrap().epoch, 5, "put out once");

    // A new incarnation starts with a clean slate: the reports against the old one are gone, so
    // their old `since` cannot fence it at once.
    let c2 = host("c", 2);
    rc.join(&c2).unwrap();
    sleep(Duration::from_millis(200));
    let v = rb.view().unwrap();
    assert_eq!((v.epoch, names(&v)), (6, vec!["a", "b", "c"]));
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn fewer_than_half_of_the_others_fence_nobody() {
    let Some(db) = database("quorum") else {
        return;
    };
    let evict = Duration::from_millis(500);
    let hosts: Vec<MemberSpec> = ["a", "b", "c", "d"].iter().map(|n| host(n, 1)).collect();
    let regs: Vec<Registry> = hosts.iter().map(|_| registry(&db, LONG, evict)).collect();
    for (r, h) in regs.iter().zip(&hosts) {
        r.join(h).unwrap();
    }
    // One of d's three peers is not half of them.
    regs[0].suspect(&hosts[0], "d").unwrap();
    sleep(evict * 3);
    let v = regs[1].view().unwrap();
    assert_eq!((v.epoch, serving(&v)), (4, vec!["a", "b", "c", "d"]));
    // Two are.
    regs[1].suspect(&hosts[1], "d").unwrap();
    sleep(evict * 3);
    let v = regs[2].view().unwrap();
    assert_eq!((v.epoch, serving(&v)), (5, vec!["a", "b", "c"]));
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn of_two_hosts_that_suspect_each_other_the_greater_name_is_fenced() {
    let Some(db) = database("mutual") else {
        return;
    };
    let evict = Duration::from_millis(500);
    // Bytewise "n9" > "n10".
    let (n9, n10) = (host("n9", 1), host("n10", 1));
    let (r9, r10) = (registry(&db, LONG, evict), registry(&db, LONG, evict));
    r9.join(&n9).unwrap();
    r10.join(&n10).unwrap();
    r9.suspect(&n9, "n10").unwrap();
    r10.suspect(&n10, "n9").unwrap();
    // Reporting again keeps the first `since`: each wait alone is shorter than evict_after, both
    // together are longer. (A slow machine stretches the waits and makes this check weaker, never
    // wrong.)
    sleep(evict * 4 / 5);
    r9.suspect(&n9, "n10").unwrap();
    r10.suspect(&n10, "n9").unwrap();
    sleep(evict * 4 / 5);
    assert_eq!(r9.renew(&n9, 0).unwrap(), Renewal::Fenced);
    let v = live(r10.renew(&n10, 0).unwrap());
    assert_eq!((v.epoch, serving(&v)), (3, vec!["n10"]));
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn a_suspicion_withdrawn_in_time_fences_nobody() {
    let Some(db) = database("withdrawn") else {
        return;
    };
    let evict = Duration::from_millis(500);
    let (a, b, c) = (host("a", 1), host("b", 1), host("c", 1));
    let (ra, rb, rc) = (
        registry(&db, LONG, evict),
        registry(&db, LONG, evict),
        registry(&db, LONG, evict),
    );
    ra.join(&a).unwrap();
    rb.join(&b).unwrap();
    rc.join(&c).unwrap();
    ra.suspect(&a, "c").unwrap();
    rb.suspect(&b, "c").unwrap();
    // Nothing reads the view in between, so only the withdrawal decides.
    ra.unsuspect(&a, "c").unwrap();
    rb.unsuspect(&b, "c").unwrap();
    sleep(evict * 3);
    let v = live(rc.renew(&c, 0).unwrap());
    assert_eq!((v.epoch, names(&v)), (3, vec!["a", "b", "c"]));
    // A stale incarnation cannot report for its node: counted, a's report would be half of c's peers.
    ra.suspect(&host("a", 99), "c").unwrap();
    sleep(evict * 3);
    let v = rc.view().unwrap();
    assert_eq!((v.epoch, names(&v)), (3, vec!["a", "b", "c"]));
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn a_restarted_host_replaces_its_old_incarnation() {
    let Some(db) = database("restart") else {
        return;
    };
    let (a1, a2, b) = (host("a", 1), host("a", 2), host("b", 1));
    let (old, new, rb) = (
        registry(&db, LONG, LONG),
        registry(&db, LONG, LONG),
        registry(&db, LONG, LONG),
    );
    old.join(&a1).unwrap();
    rb.join(&b).unwrap();
    let v = new.join(&a2).unwrap();
    assert_eq!((v.epoch, names(&v)), (3, vec!["a", "b"]));
    assert_eq!(v.member("a").unwrap().incarnation, 2);
    assert_eq!(
        old.renew(&a1, 5).unwrap(),
        Renewal::Replaced { incarnation: 2 }
    );
    assert!(
        !old.leave(&a1).unwrap(),
        "the old incarnation cannot take the new one out"
    );
    let v = live(new.renew(&a2, 1).unwrap());
    assert_eq!((v.epoch, v.member("a").unwrap().sessions), (3, 1));
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn reports(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(r, s)| (r.to_string(), s.to_string()))
        .collect()
}

#[test]
fn arbitration_keeps_the_larger_side_of_a_partition() {
    let five = strings(&["a", "b", "c", "d", "e"]);
    let mut across = Vec::new();
    for (left, right) in [(&["a", "b", "c"][..], &["d", "e"][..])] {
        for l in left {
            for r in right {
                across.push((*l, *r));
                across.push((*r, *l));
            }
        }
    }
    // Every member is suspected by at least half of its peers, yet only the smaller side goes.
    assert_eq!(
        arbitrate(&five, &reports(&across), &reports(&across)),
        ["e", "d"]
    );
    // Equal sides: the side with the greater names goes.
    let four = strings(&["a", "b", "c", "d"]);
    let split = reports(&[
        ("a", "c"),
        ("a", "d"),
        ("b", "c"),
        ("b", "d"),
        ("c", "a"),
        ("c", "b"),
        ("d", "a"),
        ("d", "b"),
    ]);
    assert_eq!(arbitrate(&four, &split, &split), ["d", "c"]);
}

#[test]
fn arbitration_counts_only_live_reporters_and_at_least_half() {
    let three = strings(&["a", "b", "c"]);
    assert!(arbitrate(&three, &[], &[]).is_empty());
    // One of two peers is half.
    assert_eq!(
        arbitrate(&three, &reports(&[("a", "c")]), &reports(&[("a", "c")])),
        ["c"]
    );
    // A reporter that is not live counts for nothing.
    assert!(
        arbitrate(
            &three,
            &reports(&[("x", "c"), ("x", "b")]),
            &reports(&[("x", "c"), ("x", "b")])
        )
        .is_empty()
    );
    // Mutual suspicion inside a larger group: the greater goes, the other's report dies with it.
    assert_eq!(
        arbitrate(
            &three,
            &reports(&[("a", "c"), ("c", "a")]),
            &reports(&[("a", "c"), ("c", "a")])
        ),
        ["c"]
    );
    // Of two, the greater bytewise.
    let two = strings(&["n10", "n9"]);
    assert_eq!(
        arbitrate(
            &two,
            &reports(&[("n10", "n9"), ("n9", "n10")]),
            &reports(&[("n10", "n9"), ("n9", "n10")])
        ),
        ["n9"]
    );
    // A host cut off from the other two reports both; its report about a stands for evict_after
    // before theirs about it do: a is not fenced for it, nobody is until the reports about the most
    // suspected stand too, and then only that one goes.
    let cut_off = reports(&[("b", "a"), ("b", "c"), ("a", "b"), ("c", "b")]);
    assert!(arbitrate(&three, &reports(&[("b", "a")]), &cut_off).is_empty());
    assert_eq!(
        arbitrate(&three, &reports(&[("b", "a"), ("a", "b")]), &cut_off),
        ["b"]
    );
    // One of three peers is not half.
    let four = strings(&["a", "b", "c", "d"]);
    assert!(arbitrate(&four, &reports(&[("a", "d")]), &reports(&[("a", "d")])).is_empty());
}

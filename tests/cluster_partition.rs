//! Partitions between the hosts of a cluster (issue 13, docs/cluster-protocol.md §9.4): three
//! `rjabberd` processes in a network namespace of the test's own, where nftables drops every packet
//! between one host's address and the others' (the links connect from each host's listen address, so
//! a rule by address pair cuts exactly one pair). The database (a Unix socket) and the clients (on
//! 127.0.0.1) stay reachable, as when a switch between the XMPP hosts fails. Checked after the cut and
//! after the heal: the time to detect, the cut-off host's users seen going unavailable, no full JID
//! bound twice, no accepted message lost or reordered, and every host agreeing on the view again with
//! no operator step. Each test runs with three hosts of one shard and three of two shards. Built as
//! ignored without PostgreSQL, without root, or without `nft` and `ip` (build.rs).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Client;
use common::cluster::{PASSWORD, TestCluster};
use common::cluster_steps::*;

crate::both_layouts!(
    [
        #[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
        #[cfg_attr(rjabberd_no_netns, ignore = "needs root, nft and ip (see build.rs)")]
    ];
    host_cut_off_then_healed,
);

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
#[cfg_attr(rjabberd_no_netns, ignore = "needs root, nft and ip (see build.rs)")]
fn host_unreachable_one_way() {
    unreachable_one_way(ONE_SHARD)
}

/// The cluster address of host `i` (the kit's `127.0.0.{2+i}`).
fn addr(i: usize) -> String {
    format!("127.0.0.{}", 2 + i)
}

/// Moves this thread (and so every process and thread it starts from now on) into a network
/// namespace of its own, with its loopback up. The namespace goes away with the last of them.
fn own_network_namespace() {
    // SAFETY: unshare with CLONE_NEWNET changes only the calling thread's network namespace.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    run("ip", &["link", "set", "lo", "up"]);
    nft("add table inet partition");
    nft("add chain inet partition cut { type filter hook input priority 0; policy accept; }");
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
}

fn nft(rule: &str) {
    run("nft", &[rule]);
}

/// Drops what is sent to host `i`'s cluster port (at `address`): the others cannot link to it, but
/// its own links, which connect from other ports, still reach them.
fn block_port(address: &str) {
    let (ip, port) = address.rsplit_once(':').unwrap();
    nft(&format!(
        "add rule inet partition cut ip daddr {ip} tcp dport {port} drop"
    ));
}

/// Drops every packet between host `i` and each of `others`, both ways.
fn cut(i: usize, others: &[usize]) {
    for &o in others {
        for (a, b) in [(addr(i), addr(o)), (addr(o), addr(i))] {
            nft(&format!(
                "add rule inet partition cut ip saddr {a} ip daddr {b} drop"
            ));
        }
    }
}

fn heal() {
    nft("flush chain inet partition cut");
}

/// Logs in through host `i`, or says why not (within the client's own timeouts).
fn try_login(c: &TestCluster, i: usize, jid: &str, resource: &str) -> Result<Client, String> {
    let server = c.host(i);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Client::login(server, jid, PASSWORD, resource)
    }))
    .map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// n2 is cut off from n1 and n3. bob is homed on n2 and connected to it (socket and home on the
/// host that goes: only the contacts' own homes can tell them he is gone); alice is homed on n1 and
/// connected to it; carol is homed on n3 and connected through n1. Checked: n2 stops serving (bob's
/// stream ends) and n1, n3 apply a view without it, with the times; alice gets bob's unavailable; a
/// relogin of bob/phone through n1, tried from the moment of the cut, binds only after n2 ended the old
/// one; the messages alice sent bob across the cut arrive once, in order; carol's messages to alice
/// flow throughout. After the heal, n2 rejoins by itself, every host prints the same view, and logins
/// through n2 and messages through it work.
fn host_cut_off_then_healed(layout: &[(&str, usize)]) {
    own_network_namespace();
    let c = TestCluster::start(layout, "");
    let alice = user(&c, "n1", "alice");
    let bob = user(&c, "n2", "bob");
    let carol = user(&c, "n3", "carol");
    mutual(&c, &alice, &bob);
    mutual(&c, &alice, &carol);
    let mut a = login(&c, 0, &alice, "desk");
    go_online(&mut a);
    let mut b = login(&c, 1, &bob, "phone");
    go_online(&mut b);
    let mut k = login(&c, 0, &carol, "pc");
    go_online(&mut k);
    wait_for(
        &mut a,
        "bob's presence",
        Duration::from_secs(10),
        presence_from(&b.jid, None),
    );
    for n in 0..5 {
        a.send(&format!(
            "<message to='{bob}' type='chat' id='m{n}'><body>{n}</body></message>"
        ));
    }
    let before: Vec<String> = messages(&mut b, 5, Duration::from_secs(10))
        .iter()
        .map(body)
        .collect();
    assert_eq!(before, ["0", "1", "2", "3", "4"]);
    // Past the link's acknowledgement delay (50 ms): a stanza n2 received but had not acknowledged
    // when the cut came would be routed again under the new view, and arrive twice (§9.3).
    std::thread::sleep(Duration::from_millis(300));

    let t0 = Instant::now();
    cut(1, &[0, 2]);
    // Sent across the cut: n1 holds them on its link to n2 and routes them again at the view change.
    for n in 5..15 {
        a.send(&format!(
            "<message to='{bob}' type='chat' id='m{n}'><body>{n}</body></message>"
        ));
    }
    let (old_ended, relogin) = std::thread::scope(|s| {
        // bob/phone through n1, again and again from the cut on: it may bind only once n2 has
        // stopped serving the old one.
        let relogin = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match try_login(&c, 0, &bob, "phone") {
                    Ok(client) => return Some((client, Instant::now())),
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    Err(_) => return None,
                }
            }
        });
        let end = stream_end(&mut b, Duration::from_secs(40));
        let old_ended = Instant::now();
        eprintln!(
            "cut ({} shard(s)): n2 ended bob's stream ({end:?}) {:?} after the cut",
            layout[0].1,
            old_ended - t0
        );
        (old_ended, relogin.join().unwrap())
    });
    let (mut b2, bound) = relogin.expect("bob/phone logs in again through n1 within 60 s");
    eprintln!(
        "cut ({} shard(s)): bob/phone bound again through n1 {:?} after the cut",
        layout[0].1,
        bound - t0
    );
    assert!(
        bound > old_ended,
        "bob/phone was bound through n1 before n2 had ended the old session"
    );
    c.wait_for_members(&["n1", "n3"], Duration::from_secs(30));
    eprintln!(
        "cut ({} shard(s)): n1 and n3 agree on a view without n2 {:?} after the cut",
        layout[0].1,
        t0.elapsed()
    );
    wait_for(
        &mut a,
        "bob's unavailable (his session ended with n2's part in the cluster)",
        Duration::from_secs(10),
        presence_from(&format!("{bob}/phone"), Some("unavailable")),
    );
    // bob's stream through n1 is new: what he missed comes from offline storage, or live if it was
    // routed again after he bound; either way once and in order.
    b2.send("<presence/>");
    let after: Vec<String> = messages(&mut b2, 10, Duration::from_secs(20))
        .iter()
        .map(body)
        .collect();
    let want: Vec<String> = (5..15).map(|n| n.to_string()).collect();
    assert_eq!(
        after, want,
        "the messages sent across the cut, once, in order"
    );
    assert!(stray_messages(&mut b2, Duration::from_millis(500)).is_empty());
    // carol (home n3, through n1) to alice (n1) is untouched by the cut.
    k.send(&format!(
        "<message to='{alice}' type='chat' id='k1'><body>from carol</body></message>"
    ));
    let got = messages(&mut a, 1, Duration::from_secs(10));
    assert_eq!(body(&got[0]), "from carol");

    heal();
    let t1 = Instant::now();
    c.wait_for_members(&["n1", "n2", "n3"], Duration::from_secs(40));
    eprintln!(
        "heal ({} shard(s)): all three hosts agree on one view {:?} after the heal",
        layout[0].1,
        t1.elapsed()
    );
    // bob's session may end now (his account may move back to n2): either way he can log in through
    // n2 itself and reach alice.
    drop(b2);
    // A host that rejoins takes clients after its join hold (§9.2).
    c.wait_accepting(1, Duration::from_secs(10));
    eprintln!(
        "heal ({} shard(s)): n2 takes clients again {:?} after the heal",
        layout[0].1,
        t1.elapsed()
    );
    let mut b3 = login(&c, 1, &bob, "tablet");
    go_online(&mut b3);
    b3.send(&format!(
        "<message to='{alice}' type='chat' id='b1'><body>back</body></message>"
    ));
    let got = messages(&mut a, 1, Duration::from_secs(10));
    assert_eq!(body(&got[0]), "back");
}

/// The others cannot reach n2's cluster port, while n2 reaches them (a one-way cut: n2's own links
/// see nothing wrong). The others fence n2; n2, whose links are up, rejoins, and is fenced again, and
/// then waits longer before each new attempt instead of moving its share of the accounts back and
/// forth at the pace of the eviction. Users of n1 and n3 talk throughout; after the heal all three
/// agree on one view and n2 takes clients again.
fn unreachable_one_way(layout: &[(&str, usize)]) {
    own_network_namespace();
    let c = TestCluster::start(layout, "");
    let alice = user(&c, "n1", "alice");
    let carol = user(&c, "n3", "carol");
    let mut a = login(&c, 0, &alice, "desk");
    let mut k = login(&c, 2, &carol, "pc");
    go_online(&mut a);
    go_online(&mut k);
    let n2 = c.status().1.into_iter().find(|r| r.node == "n2").unwrap();
    let t0 = Instant::now();
    block_port(&n2.address);
    // n2 comes back as soon as its old lease is out (its own links are up), so the view without it
    // may be brief: it is looked for in what n1 printed.
    let without_n2 = |c: &TestCluster| {
        c.views(0)
            .iter()
            .any(|v| v.members == ["n1".to_string(), "n3".to_string()])
    };
    while !without_n2(&c) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "n1 never served without n2:\n{}",
            c.report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "one way: n1 served without n2 {:?} after the cut",
        t0.elapsed()
    );
    // Long enough for two or three evictions at the undamped pace (about 7 s each with this lease).
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut n = 0;
    while Instant::now() < deadline {
        k.send(&format!(
            "<message to='{alice}' type='chat' id='k{n}'><body>{n}</body></message>"
        ));
        let got = messages(&mut a, 1, Duration::from_secs(10));
        assert_eq!(body(&got[0]), n.to_string());
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = c.host(1).tails(2000);
    let fenced = log.matches("event=cluster-fenced").count();
    let backed_off = log.matches("event=cluster-rejoin-backoff").count();
    eprintln!(
        "one way: n2 fenced {fenced} time(s), backed off {backed_off} time(s) in {:?}",
        t0.elapsed()
    );
    assert!(
        backed_off >= 1,
        "n2 rejoined at the pace of the eviction without waiting longer:\n{}",
        c.report()
    );
    heal();
    let t1 = Instant::now();
    c.wait_for_members(&["n1", "n2", "n3"], Duration::from_secs(90));
    c.wait_accepting(1, Duration::from_secs(10));
    eprintln!(
        "one way: healed, n2 takes clients {:?} after the heal",
        t1.elapsed()
    );
    let bob = user(&c, "n2", "bob");
    let mut b = login(&c, 1, &bob, "phone");
    go_online(&mut b);
    b.send(&format!(
        "<message to='{alice}' type='chat' id='b1'><body>back</body></message>"
    ));
    let got = messages(&mut a, 1, Duration::from_secs(10));
    assert_eq!(body(&got[0]), "back");
}

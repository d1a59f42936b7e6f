//! The cluster from outside (issue 13): three `rjabberd` processes on one PostgreSQL database
//! ([`common::cluster::TestCluster`]), clients connected to different hosts and homed on others
//! (docs/cluster-protocol.md §5, §8): messages, presence and IQs between hosts, a full JID bound on
//! two hosts, the session cap across hosts, and a host killed (SIGKILL), hung (SIGSTOP, then
//! SIGCONT) or restarted (SIGTERM, start), an external component reached from every host, and a host
//! drained with `rjabberd cluster leave`. Each test runs with three hosts of one shard and three of two shards. Built as ignored
//! when PostgreSQL is not installed (build.rs).

mod common;

use std::time::{Duration, Instant};

use common::cluster::{PASSWORD, TestCluster};
use common::cluster_steps::*;
use common::{Client, Got};
use rjabberd::proto::xml::Element;

crate::both_layouts!(
    [#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]];
    messages_between_hosts,
    presence_between_hosts,
    iq_between_hosts,
    conflict_across_hosts,
    session_cap_across_hosts,
    host_killed,
    host_hung_then_continued,
    host_restarted,
    component_on_another_host,
    host_left,
    operator_commands_across_hosts,
);

// ---- the tests ----

/// Needs no server: the configuration the kit writes loads, `storage migrate` and `cluster status`
/// run on it (the table is empty), so a failing start below is the server's, not the kit's.
#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn kit_configuration_loads() {
    let pg = common::pg::PgInstance::shared().expect("PostgreSQL installed");
    let url = pg.create_db("kitcheck");
    let dir = std::env::temp_dir().join(format!("rjabberd-kit-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rjabberd.toml");
    std::fs::write(
        &file,
        common::cluster::host_config(
            &dir,
            1,
            "n2",
            2,
            &url,
            "[limits]\nmax_sessions_per_user = 2\n",
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rjabberd"))
            .arg("--config")
            .arg(&file)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["storage", "migrate"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["cluster", "status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["cluster"], "test", "{json}");
    assert_eq!(json["epoch"], 0, "{json}");
    let out = run(&["user", "add", "kit@localhost", "--password", "pw"]);
    assert!(out.status.success(), "{out:?}");

    // The kit reads the table as the servers will fill it: two hosts joined through the registry.
    use rjabberd::cluster::membership::{MemberSpec, Registry, Timing};
    let registry = Registry::open(
        rjabberd::storage::postgres::Target::new(&url, None).unwrap(),
        "test",
        Timing::default(),
    )
    .unwrap();
    for (node, shards, port) in [("n2", 2, 7471), ("n1", 1, 7470)] {
        registry
            .join(&MemberSpec {
                node: node.into(),
                incarnation: 0x1234,
                address: format!("127.0.0.2:{port}"),
                shards,
            })
            .unwrap();
    }
    let (epoch, rows) = common::cluster::status_of(&file);
    assert_eq!(epoch, 2);
    let seen: Vec<(&str, &str, bool, usize)> = rows
        .iter()
        .map(|r| (r.node.as_str(), r.state.as_str(), r.member, r.shards))
        .collect();
    assert_eq!(seen, [("n1", "up", true, 1), ("n2", "up", true, 2)]);
    assert_eq!(rows[0].incarnation, "0000000000001234");
    assert_eq!(
        common::cluster::parse_view_line("rjabberd: cluster: epoch 7: members n3,n1,n2"),
        Some(common::cluster::ViewLine {
            epoch: 7,
            members: vec!["n1".into(), "n2".into(), "n3".into()]
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// alice on n1 (homed there), bob on n2 (homed on n3): 50 messages each way, to full JIDs, arrive
/// all, in order, once, with the sender's full JID; then one to bob's bare JID.
fn messages_between_hosts(layout: &[(&str, usize)]) {
    let c = TestCluster::start(layout, "");
    let alice = user(&c, "n1", "alice");
    let bob = user(&c, "n3", "bob");
    let mut a = login(&c, 0, &alice, "desk");
    let mut b = login(&c, 1, &bob, "phone");
    go_online(&mut a);
    go_online(&mut b);
    const N: usize = 50;
    for k in 0..N {
        a.send(&format!(
            "<message to='{}' type='chat' id='a{k}'><body>a2b {k}</body></message>",
            b.jid
        ));
        b.send(&format!(
            "<message to='{}' type='chat' id='b{k}'><body>b2a {k}</body></message>",
            a.jid
        ));
    }
    let (a_jid, b_jid) = (a.jid.clone(), b.jid.clone());
    for (rx, from, tag, prefix) in [(&mut b, &a_jid, "a", "a2b"), (&mut a, &b_jid, "b", "b2a")] {
        let got = messages(rx, N, Duration::from_secs(20));
        let seen: Vec<(Option<&str>, Option<&str>, String)> = got
            .iter()
            .map(|m| (m.attr("id"), m.attr("from"), body(m)))
            .collect();
        let ids: Vec<String> = (0..N).map(|k| format!("{tag}{k}")).collect();
        let want: Vec<(Option<&str>, Option<&str>, String)> = (0..N)
            .map(|k| {
                (
                    Some(ids[k].as_str()),
                    Some(from.as_str()),
                    format!("{prefix} {k}"),
                )
            })
            .collect();
        assert_eq!(
            seen, want,
            "{}: messages out of order, lost or altered",
            rx.jid
        );
        let more = stray_messages(rx, Duration::from_millis(500));
        assert!(more.is_empty(), "{}: duplicates: {}", rx.jid, show(&more));
    }
    // To the bare JID: bob's one available resource gets it.
    a.send(&format!(
        "<message to='{bob}' type='chat' id='bare1'><body>to your bare JID</body></message>"
    ));
    let got = messages(&mut b, 1, Duration::from_secs(10));
    assert_eq!(
        (got[0].attr("id"), got[0].attr("from"), body(&got[0])),
        (
            Some("bare1"),
            Some(a.jid.as_str()),
            "to your bare JID".to_string()
        ),
        "{}",
        got[0]
    );
    let more = stray_messages(&mut b, Duration::from_millis(300));
    assert!(more.is_empty(), "duplicates: {}", show(&more));
}

/// alice on n1 homed on n2, bob on n2 homed on n1, each on the other's roster (both): each gets the
/// other's available presence, once; alice gets bob's unavailable when he closes his stream.
fn presence_between_hosts(layout: &[(&str, usize)]) {
    let c = TestCluster::start(layout, "");
    let alice = user(&c, "n2", "alice");
    let bob = user(&c, "n1", "bob");
    mutual(&c, &alice, &bob);
    let mut a = login(&c, 0, &alice, "desk");
    go_online(&mut a);
    let mut b = login(&c, 1, &bob, "phone");
    b.send("<presence><status>here</status></presence>");
    let (p, _) = wait_for(
        &mut a,
        "bob's available presence",
        Duration::from_secs(10),
        presence_from(&b.jid, None),
    );
    assert_eq!(
        p.child("status").map(|s| s.text()).as_deref(),
        Some("here"),
        "{p}"
    );
    let (_, _) = wait_for(
        &mut b,
        "alice's presence (the answer to bob's probe)",
        Duration::from_secs(10),
        presence_from(&a.jid, None),
    );
    b.send("</stream:stream>");
    let (_, before) = wait_for(
        &mut a,
        "bob's unavailable presence after he closed",
        Duration::from_secs(10),
        presence_from(&b.jid, Some("unavailable")),
    );
    let again: Vec<&Element> = before
        .iter()
        .filter(|e| presence_from(&b.jid, None)(e))
        .collect();
    assert!(
        again.is_empty(),
        "bob's available presence came more than once: {}",
        show(&before)
    );
}

/// alice on n1 homed on n2, bob on n3 homed on n1: alice pings bob's full JID and bob's client
/// answers; alice reads the vCard bob set, with the IQ to bob's bare JID (answered by his home).
fn iq_between_hosts(layout: &[(&str, usize)]) {
    let c = TestCluster::start(layout, "");
    let alice = user(&c, "n2", "alice");
    let bob = user(&c, "n1", "bob");
    let mut a = login(&c, 0, &alice, "desk");
    let mut b = login(&c, 2, &bob, "phone");
    let set = b.iq(
        None,
        "set",
        "<vCard xmlns='vcard-temp'><FN>Bob Builder</FN><NICKNAME>bobby</NICKNAME></vCard>",
    );
    assert_eq!(set.attr("type"), Some("result"), "{set}");

    a.send(&format!(
        "<iq to='{}' type='get' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>",
        b.jid
    ));
    let (ping, _) = wait_for(&mut b, "alice's ping", Duration::from_secs(10), |e| {
        e.name == "iq" && e.attr("id") == Some("ping1")
    });
    assert_eq!(
        (
            ping.attr("type"),
            ping.attr("from"),
            ping.child("ping").is_some()
        ),
        (Some("get"), Some(a.jid.as_str()), true),
        "{ping}"
    );
    b.send(&format!("<iq to='{}' type='result' id='ping1'/>", a.jid));
    let pong = a.answer("ping1");
    assert_eq!(
        (pong.attr("type"), pong.attr("from")),
        (Some("result"), Some(b.jid.as_str())),
        "{pong}"
    );

    let card = a.iq(Some(&bob), "get", "<vCard xmlns='vcard-temp'/>");
    assert_eq!(card.attr("type"), Some("result"), "{card}");
    assert_eq!(card.attr("from"), Some(bob.as_str()), "{card}");
    let v = card
        .child("vCard")
        .unwrap_or_else(|| panic!("no vCard in {card}"));
    assert_eq!(
        (
            v.child("FN").map(|e| e.text()),
            v.child("NICKNAME").map(|e| e.text())
        ),
        (Some("Bob Builder".to_string()), Some("bobby".to_string())),
        "{card}"
    );
}

/// carol/phone (homed on n2) logs in on n1, then again on n3: the first stream ends with
/// `<conflict/>`, the second receives what is sent to carol/phone and to carol's bare JID.
fn conflict_across_hosts(layout: &[(&str, usize)]) {
    let c = TestCluster::start(layout, "");
    let carol = user(&c, "n2", "carol");
    let alice = user(&c, "n3", "alice");
    let mut first = login(&c, 0, &carol, "phone");
    go_online(&mut first);
    let mut second = login(&c, 2, &carol, "phone");
    assert_eq!(
        stream_end(&mut first, Duration::from_secs(10)).as_deref(),
        Some("conflict"),
        "the first carol/phone (on n1) must be replaced with a conflict stream error"
    );
    assert_eq!(second.jid, format!("{carol}/phone"));
    go_online(&mut second);
    let mut a = login(&c, 1, &alice, "desk");
    a.send(&format!(
        "<message to='{carol}/phone' type='chat' id='c1'><body>to the full JID</body></message>"
    ));
    a.send(&format!(
        "<message to='{carol}' type='chat' id='c2'><body>to the bare JID</body></message>"
    ));
    let got = messages(&mut second, 2, Duration::from_secs(10));
    let seen: Vec<(Option<&str>, String)> = got.iter().map(|m| (m.attr("id"), body(m))).collect();
    assert_eq!(
        seen,
        vec![
            (Some("c1"), "to the full JID".to_string()),
            (Some("c2"), "to the bare JID".to_string())
        ]
    );
    assert!(stray_messages(&mut second, Duration::from_millis(300)).is_empty());
}

/// With `max_sessions_per_user = 2`, dave (homed on n2) binds on n1 and n2, and a third resource on
/// n3 is refused with `resource-constraint` as on one host; the two sessions keep working, and once
/// one ends a bind on n3 succeeds.
fn session_cap_across_hosts(layout: &[(&str, usize)]) {
    let c = TestCluster::start(layout, "[limits]\nmax_sessions_per_user = 2\n");
    let dave = user(&c, "n2", "dave");
    let mut d1 = login(&c, 0, &dave, "a");
    let mut d2 = login(&c, 1, &dave, "b");
    let (local, domain) = dave.split_once('@').unwrap();
    let mut d3 = Client::connect(c.host(2).starttls, c.host(2).cert_path());
    d3.open(domain);
    d3.starttls();
    d3.open(domain);
    let r = d3.sasl("SCRAM-SHA-256", local, PASSWORD, None);
    assert_eq!(r.name, "success", "{r}");
    d3.restart(domain);
    let b = d3.bind(Some("c"));
    assert_eq!(
        b.attr("type"),
        Some("error"),
        "a third session on n3 must be refused: {b}"
    );
    assert!(
        b.child("error")
            .and_then(|e| e.child("resource-constraint"))
            .is_some(),
        "{b}"
    );
    // The two sessions still work, across hosts.
    d1.send(&format!(
        "<message to='{}' type='chat' id='x1'><body>a to b</body></message>",
        d2.jid
    ));
    let got = messages(&mut d2, 1, Duration::from_secs(10));
    assert_eq!(
        (got[0].attr("from"), body(&got[0])),
        (Some(d1.jid.as_str()), "a to b".to_string())
    );
    d2.send(&format!(
        "<message to='{}' type='chat' id='x2'><body>b to a</body></message>",
        d1.jid
    ));
    let got = messages(&mut d1, 1, Duration::from_secs(10));
    assert_eq!(
        (got[0].attr("from"), body(&got[0])),
        (Some(d2.jid.as_str()), "b to a".to_string())
    );
    // One ends; the count goes down cluster-wide, so a bind on n3 now succeeds.
    d1.send("</stream:stream>");
    stream_end(&mut d1, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = Client::connect(c.host(2).starttls, c.host(2).cert_path());
        d.open(domain);
        d.starttls();
        d.open(domain);
        assert_eq!(
            d.sasl("SCRAM-SHA-256", local, PASSWORD, None).name,
            "success"
        );
        d.restart(domain);
        let b = d.bind(Some("c"));
        if b.attr("type") == Some("result") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a bind on n3 still refused 5 s after dave/a closed: {b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The n2 row of the table.
fn row(c: &TestCluster, node: &str) -> common::cluster::StatusRow {
    c.status()
        .1
        .into_iter()
        .find(|r| r.node == node)
        .unwrap_or_else(|| panic!("no row for {node} in the table"))
}

/// alice (on n3) and bob (homed on n2, connected to n1) with a mutual subscription, online, alice
/// having seen bob's presence: the cast of the failure scenarios.
fn bob_seen_by_alice(c: &TestCluster, alice: &str, bob: &str) -> (Client, Client) {
    mutual(c, alice, bob);
    let mut a = login(c, 2, alice, "desk");
    go_online(&mut a);
    let mut b = login(c, 0, bob, "phone");
    b.send("<presence/>");
    wait_for(
        &mut a,
        "bob's presence",
        Duration::from_secs(10),
        presence_from(&b.jid, None),
    );
    (a, b)
}

/// After n2 was lost (`how`, at `t0`): alice gets bob's unavailable within 10 s (recorded in
/// `problems` when not), n1 and n3 apply the view without n2, and the table shows n2 fenced; whether
/// the unavailable came.
fn n2_goes(
    c: &TestCluster,
    a: &mut Client,
    b: &Client,
    problems: &mut Vec<String>,
    t0: Instant,
    how: &str,
    layout: &[(&str, usize)],
) -> bool {
    let unavailable = attempt(problems, "alice gets bob's unavailable", || {
        wait_for(
            a,
            &format!("bob's unavailable presence after {how} of n2"),
            Duration::from_secs(10),
            presence_from(&b.jid, Some("unavailable")),
        )
    });
    eprintln!(
        "{how} ({} shard(s)): alice got bob's unavailable: {} ({:?} after {how} of n2)",
        layout[0].1,
        unavailable.is_some(),
        t0.elapsed()
    );
    c.wait_for_members(&["n1", "n3"], Duration::from_secs(10));
    let fenced = row(c, "n2");
    assert!(
        !fenced.member && fenced.state == "fenced",
        "n2 must be fenced: {fenced:?}"
    );
    unavailable.is_some()
}

/// bob homed on n2 and connected to n1, alice on n3 (homed on n3), mutual subscription. SIGKILL n2:
/// alice gets bob's unavailable within 10 s, the table shows n2 fenced, n1 and n3 apply the view
/// without it, bob's stream on n1 ends, a message to bob while he is offline is kept, and bob logs
/// in again through n1: the message arrives and alice sees him again.
fn host_killed(layout: &[(&str, usize)]) {
    let mut c = TestCluster::start(layout, "");
    let (alice, bob) = (user(&c, "n3", "alice"), user(&c, "n2", "bob"));
    let (mut a, mut b) = bob_seen_by_alice(&c, &alice, &bob);
    let before = row(&c, "n2");
    assert!(before.member, "{before:?}");

    let mut problems = Vec::new();
    let t0 = Instant::now();
    c.kill9(c.index("n2"));
    let unavailable_seen = n2_goes(&c, &mut a, &b, &mut problems, t0, "SIGKILL", layout);
    let end = stream_end(&mut b, Duration::from_secs(10));
    eprintln!(
        "host_killed: bob's stream on n1 ended with {end:?} (read {:?} after SIGKILL of n2)",
        t0.elapsed()
    );

    a.send(&format!(
        "<message to='{bob}' type='chat' id='off1'><body>while you were away</body></message>"
    ));
    // Nothing bounces: the message is kept for bob.
    let bounced: Vec<Element> = a
        .drain(Duration::from_millis(500))
        .into_iter()
        .filter_map(|g| match g {
            Got::El(e) if e.attr("type") == Some("error") => Some(e),
            _ => None,
        })
        .collect();
    assert!(bounced.is_empty(), "{}", show(&bounced));

    let mut b2 = login(&c, 0, &bob, "phone2");
    b2.send("<presence/>");
    let got = messages(&mut b2, 1, Duration::from_secs(10));
    assert_eq!(
        (got[0].attr("id"), got[0].attr("from"), body(&got[0])),
        (
            Some("off1"),
            Some(a.jid.as_str()),
            "while you were away".to_string()
        ),
        "{}",
        got[0]
    );
    let (_, before) = wait_for(
        &mut a,
        "bob's presence after he logged in again",
        Duration::from_secs(10),
        presence_from(&b2.jid, None),
    );
    if !unavailable_seen {
        // docs/cluster-protocol.md §9.2 (at 850663f) says contacts of a session lost with its
        // home learn it when the user logs in again: say whether that happened, for the report.
        let late = before
            .iter()
            .any(|e| presence_from(&b.jid, Some("unavailable"))(e))
            || a.drain(Duration::from_secs(2))
                .iter()
                .any(|g| matches!(g, Got::El(e) if presence_from(&b.jid, Some("unavailable"))(e)));
        eprintln!(
            "host_killed: alice got the unavailable of bob's lost session once he logged in again: {late}"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Like [`host_killed`], with n2 hung (SIGSTOP) and erin connected to it: once the others fenced
/// n2, SIGCONT: n2 finds itself fenced, ends its client streams (erin's) and rejoins by itself as a
/// new incarnation; all three hosts apply the view with all three again; erin logs in through n2,
/// bob (homed on n2 again) through n1, and alice and bob see each other; and the view stays so
/// for 6 s (n2 is not fenced again).
fn host_hung_then_continued(layout: &[(&str, usize)]) {
    let mut c = TestCluster::start(layout, "");
    let (alice, bob) = (user(&c, "n3", "alice"), user(&c, "n2", "bob"));
    let erin = user(&c, "n1", "erin");
    let n2 = c.index("n2");
    let mut e = login(&c, n2, &erin, "laptop");
    go_online(&mut e);
    let (mut a, mut b) = bob_seen_by_alice(&c, &alice, &bob);
    let before = row(&c, "n2");

    let mut problems = Vec::new();
    let t0 = Instant::now();
    c.sigstop(n2);
    let _ = n2_goes(&c, &mut a, &b, &mut problems, t0, "SIGSTOP", layout);

    let t1 = Instant::now();
    c.sigcont(n2);
    let end = stream_end(&mut e, Duration::from_secs(10));
    eprintln!(
        "host_hung: erin's stream on n2 ended {:?} after SIGCONT, with {end:?}",
        t1.elapsed()
    );
    assert!(
        end.is_none() || end.as_deref() == Some("system-shutdown"),
        "erin's stream on the fenced n2 must end with system-shutdown (or a close): {end:?}"
    );
    c.wait_for_members(&["n1", "n2", "n3"], Duration::from_secs(20));
    let rejoined = Instant::now();
    let rejoined_epoch = c.latest_view(0).expect("a view").epoch;
    eprintln!("host_hung: n2 rejoined {:?} after SIGCONT", t1.elapsed());
    let back = row(&c, "n2");
    assert!(back.member && back.state == "up", "{back:?}");
    assert_ne!(
        back.incarnation, before.incarnation,
        "n2 must rejoin as a new incarnation"
    );
    let last = c.latest_view(n2).expect("n2 printed a view");
    assert!(
        last.epoch > c.views(n2).first().expect("a view").epoch,
        "n2 applied a new epoch: {:?}",
        c.views(n2)
    );

    // bob's stream through n1 to his home on n2 ended too (at the fencing or when n2 came back).
    let end = stream_end(&mut b, Duration::from_secs(10));
    eprintln!(
        "host_hung: bob's stream on n1 ended with {end:?}, {:?} after SIGCONT",
        t1.elapsed()
    );
    assert_eq!(c.home_node(&bob), "n2");

    // n2 serves again: once it takes connections (it holds them off briefly after rejoining),
    // erin (homed on n1) logs in through n2; bob (homed on n2 again) through n1, and he and alice
    // see each other.
    let hold = c.wait_accepting(n2, Duration::from_secs(5));
    eprintln!("host_hung: n2 took client connections {hold:?} after all hosts applied the view");
    let t2 = Instant::now();
    attempt(
        &mut problems,
        "erin logs in through n2 after it rejoined",
        || {
            let mut e2 = login(&c, n2, &erin, "laptop2");
            go_online(&mut e2);
        },
    );
    let b2 = attempt(
        &mut problems,
        "bob (homed on n2) logs in through n1 after n2 rejoined",
        || login(&c, 0, &bob, "phone2"),
    );
    eprintln!("host_hung: logins after the rejoin took {:?}", t2.elapsed());
    if let Some(mut b2) = b2 {
        b2.send("<presence/>");
        attempt(&mut problems, "alice sees bob after n2 rejoined", || {
            wait_for(
                &mut a,
                "bob's presence after n2 rejoined",
                Duration::from_secs(10),
                presence_from(&b2.jid, None),
            )
        });
        attempt(
            &mut problems,
            "bob gets alice's presence after n2 rejoined",
            || {
                wait_for(
                    &mut b2,
                    "alice's presence (answer to bob's probe)",
                    Duration::from_secs(10),
                    presence_from(&a.jid, None),
                )
            },
        );
    }
    // The rejoined n2 stays a member: no host applies another view within 6 s of the rejoin
    // (longer than a suspicion, 4 ticks, plus evict_after, 2 leases, plus a renewal).
    std::thread::sleep(Duration::from_secs(6).saturating_sub(rejoined.elapsed()));
    let views: Vec<_> = (0..c.len()).map(|i| c.latest_view(i)).collect();
    if views
        .iter()
        .any(|v| v.as_ref().is_none_or(|v| v.epoch != rejoined_epoch))
        || c.table_members() != ["n1", "n2", "n3"]
    {
        problems.push(format!(
            "the cluster did not stay at epoch {rejoined_epoch} with n1,n2,n3 for 6 s after n2 \
             rejoined: views {:?}, table {:?}",
            (0..c.len()).map(|i| c.views(i)).collect::<Vec<_>>(),
            c.status()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// n3 stopped with SIGTERM and started again on the same configuration ([`TestCluster::restart`]):
/// all three hosts apply the view with all three, n3 as a new incarnation, and a user homed on n3
/// logs in through n1 and exchanges messages with one on n2.
fn host_restarted(layout: &[(&str, usize)]) {
    let mut c = TestCluster::start(layout, "");
    let carol = user(&c, "n3", "carol");
    let dave = user(&c, "n2", "dave");
    let n3 = c.index("n3");
    let before = row(&c, "n3");
    let t0 = Instant::now();
    c.restart(n3);
    eprintln!(
        "host_restarted: n3 back in every view {:?} after SIGTERM",
        t0.elapsed()
    );
    let after = row(&c, "n3");
    assert!(after.member, "{after:?}");
    assert_ne!(after.incarnation, before.incarnation, "a new incarnation");
    assert_eq!(c.home_node(&carol), "n3");
    c.wait_accepting(0, Duration::from_secs(5));
    let mut cl = login(&c, 0, &carol, "r");
    let mut d = login(&c, n3, &dave, "r");
    cl.send(&format!(
        "<message to='{}' type='chat' id='r1'><body>after the restart</body></message>",
        d.jid
    ));
    let got = messages(&mut d, 1, Duration::from_secs(10));
    assert_eq!(
        (got[0].attr("from"), body(&got[0])),
        (Some(cl.jid.as_str()), "after the restart".to_string()),
        "{}",
        got[0]
    );
    d.send(&format!(
        "<message to='{}' type='chat' id='r2'><body>welcome back</body></message>",
        cl.jid
    ));
    let got = messages(&mut cl, 1, Duration::from_secs(10));
    assert_eq!(body(&got[0]), "welcome back", "{}", got[0]);
}

/// An external component connected to n1 is reached from a user homed elsewhere and connected to n3,
/// and its answer comes back (docs/cluster-protocol.md §7.3: ROUTE, then STANZA to the host).
fn component_on_another_host(layout: &[(&str, usize)]) {
    let extra = "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"component\"\n\
                 [[component]]\ndomain = \"gw.localhost\"\nsecret = \"s3cret\"\n";
    let c = TestCluster::start(layout, extra);
    let alice = user(&c, "n2", "alice");
    let n1 = c.index("n1");
    let n3 = c.index("n3");
    let (mut gw, done) = common::component(c.host(n1), "gw.localhost", "s3cret");
    assert_eq!(done.name, "handshake", "{done}");
    let mut a = login(&c, n3, &alice, "desk");
    go_online(&mut a);
    // The route reaches the other hosts with the next frames of n1's links: retry until it has.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        a.send("<message to='echo@gw.localhost' type='chat' id='c1'><body>ping</body></message>");
        match gw.next_within(Duration::from_millis(500)) {
            Some(Got::El(e)) if e.name == "message" => break e,
            other => {
                // An error bounced to alice before the route arrived is drained with her stream.
                let _ = a.drain(Duration::from_millis(50));
                assert!(
                    Instant::now() < deadline,
                    "the component never got the message; last: {other:?}"
                );
            }
        }
    };
    assert_eq!(
        (got.attr("from"), got.attr("to"), body(&got)),
        (
            Some(a.jid.as_str()),
            Some("echo@gw.localhost"),
            "ping".to_string()
        ),
        "{got}"
    );
    let _ = a.drain(Duration::from_millis(300));
    gw.send(&format!(
        "<message from='echo@gw.localhost' to='{}' type='chat' id='c2'><body>pong</body></message>",
        a.jid
    ));
    let back = messages(&mut a, 1, Duration::from_secs(10));
    assert_eq!(
        (back[0].attr("from"), body(&back[0])),
        (Some("echo@gw.localhost"), "pong".to_string()),
        "{}",
        back[0]
    );
    // n3 has the route (it carried the message): the same domain connecting there is refused, as on
    // one host, and the first connection keeps working.
    let (_, second) = common::component(c.host(n3), "gw.localhost", "s3cret");
    assert_eq!(second.name, "stream:error", "{second}");
    assert!(second.child("conflict").is_some(), "{second}");
    a.send("<message to='echo@gw.localhost' type='chat' id='c3'><body>again</body></message>");
    let again = messages(&mut gw, 1, Duration::from_secs(10));
    assert_eq!(body(&again[0]), "again");
}

/// `rjabberd cluster leave` drains a host: the others apply the view without it, a client whose
/// session lived there is told to reconnect, a message sent to that user meanwhile is kept, and the
/// user logs in again through another host and gets it.
fn host_left(layout: &[(&str, usize)]) {
    let c = TestCluster::start(layout, "");
    let alice = user(&c, "n2", "alice");
    let bob = user(&c, "n3", "bob");
    let (n1, n2, n3) = (c.index("n1"), c.index("n2"), c.index("n3"));
    let mut a = login(&c, n1, &alice, "desk");
    let mut b = login(&c, n3, &bob, "phone");
    go_online(&mut a);
    go_online(&mut b);
    let out = c.command(n2, &["cluster", "leave"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("left cluster"), "{said}");
    assert_eq!(
        stream_end(&mut a, Duration::from_secs(10)).as_deref(),
        Some("system-shutdown"),
        "alice's session lived on the host that left"
    );
    c.wait_for_members(&["n1", "n3"], Duration::from_secs(15));
    let row = row(&c, "n2");
    assert!(!row.member, "{row:?}");
    assert_eq!(row.state, "leaving", "{row:?}");
    assert_ne!(c.home_node(&alice), "n2");
    b.send(&format!(
        "<message to='{alice}' type='chat' id='l1'><body>while you moved</body></message>"
    ));
    // Kept offline at alice's new home, since she has no session now.
    std::thread::sleep(Duration::from_millis(500));
    c.wait_accepting(n1, Duration::from_secs(5));
    let mut a = login(&c, n1, &alice, "desk");
    go_online(&mut a);
    let got = messages(&mut a, 1, Duration::from_secs(10));
    assert_eq!(
        (got[0].attr("from"), body(&got[0])),
        (Some(b.jid.as_str()), "while you moved".to_string()),
        "{}",
        got[0]
    );
}

/// `rjabberd ctl` on a host that is not the account's home (docs/cluster-protocol.md §10): bob is
/// homed on n2 and connected through n3, alice homed on n1 and connected to it; on n3,
/// `connected-users` lists both; on n1, `user-sessions` lists bob's session at n2, and `kick` ends it
/// with `policy-violation` and the reason given; a second kick finds nothing (exit 1).
fn operator_commands_across_hosts(layout: &[(&str, usize)]) {
    let c = TestCluster::start(layout, "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    // The metrics show the view each host serves under and shard 0's links to every member.
    let epoch = c.latest_view(0).unwrap().epoch;
    let (status, metrics) = common::http(c.host(0).metrics_addr(), "GET", "/metrics");
    assert_eq!(status, 200);
    for line in [
        format!("rjabberd_cluster_epoch{{shard=\"0\"}} {epoch}"),
        "rjabberd_cluster_members{shard=\"0\"} 3".to_string(),
        "rjabberd_cluster_serving{shard=\"0\"} 1".to_string(),
        "rjabberd_cluster_link_up{shard=\"0\",peer=\"n2\"} 1".to_string(),
        "rjabberd_cluster_link_up{shard=\"0\",peer=\"n3\"} 1".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("rjabberd_cluster"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let bob = user(&c, "n2", "bob");
    let alice = user(&c, "n1", "alice");
    let mut b = login(&c, 2, &bob, "phone");
    go_online(&mut b);
    let _a = login(&c, 0, &alice, "desk");
    // Every host's sessions, asked on a host that holds none of them.
    let out = c.command(2, &["ctl", "connected-users"]);
    assert!(out.status.success(), "{out:?}");
    let mut want = [format!("{alice}/desk"), format!("{bob}/phone")];
    want.sort();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        want.join("\n") + "\n",
        "{out:?}"
    );
    let out = c.command(0, &["ctl", "user-sessions", &bob]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.starts_with(&format!("{bob}/phone\tpriority 0\tavailable\tn2 shard ")),
        "{text}"
    );
    let out = c.command(
        0,
        &[
            "ctl",
            "--json",
            "kick",
            &format!("{bob}/phone"),
            "spam & such",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["kicked"], serde_json::json!([format!("{bob}/phone")]));
    assert_eq!(
        stream_end(&mut b, Duration::from_secs(10)).as_deref(),
        Some("policy-violation")
    );
    let out = c.command(0, &["ctl", "kick", &bob]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing kicked"),
        "{out:?}"
    );
}

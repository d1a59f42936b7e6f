//! The cluster over TLS from outside (issue 13, docs/cluster-protocol.md §4): three `rjabberd`
//! processes whose links run TLS with certificates of one CA ([`TestCluster::start_tls`]), messages
//! both ways between users homed on different hosts, one of them connected through a host that is not
//! its home (its stream tunnelled over a TLS link); the cluster port answers a plaintext peer only with
//! a `CLOSE` saying TLS is required; and a host holding a certificate from another CA is fenced by the
//! others' suspicions, which go on serving. Each layout runs with one shard per host and with two.
//! Built as ignored when PostgreSQL is not installed (build.rs).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::cluster::{PASSWORD, TestCluster};
use common::cluster_steps::*;
use common::{Client, Got};

crate::both_layouts!(
    [#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]];
    messages_over_tls,
);

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn a_host_of_another_ca_is_fenced() {
    let c = TestCluster::start_tls(ONE_SHARD, "", &[2]);
    assert_eq!(c.table_members(), vec!["n1", "n2"]);
    exchange(&c, ("n1", 0), ("n2", 1), 10);
    let log = c.host(2).tails(400);
    assert!(
        log.contains("TLS"),
        "n3 says why its links fail:\n{}",
        c.report()
    );
}

// ---- the scenarios ----

fn messages_over_tls(layout: &[(&str, usize)]) {
    let c = TestCluster::start_tls(layout, "", &[]);
    // bob is homed on n3 and connected through n2: his stream crosses a link.
    exchange(&c, ("n1", 0), ("n3", 1), 50);
    // Every host's cluster port wants TLS: a plaintext frame gets a CLOSE in the clear saying so.
    let (_, rows) = c.status();
    for row in rows.iter().filter(|r| r.member) {
        let said = plaintext_probe(&row.address);
        assert!(
            said.windows(3).any(|w| w == b"TLS"),
            "{} ({}) answered a plaintext peer with {said:?}",
            row.node,
            row.address
        );
    }
}

/// A user homed on `a.0` logged in through host `a.1`, one homed on `b.0` through host `b.1`, and
/// `n` messages each way, in order, once each.
fn exchange(c: &TestCluster, a: (&str, usize), b: (&str, usize), n: usize) {
    let alice = user(c, a.0, "alice");
    let bob = user(c, b.0, "bob");
    let mut x = Client::login(c.host(a.1), &alice, PASSWORD, "desk");
    let mut y = Client::login(c.host(b.1), &bob, PASSWORD, "phone");
    go_online(&mut x);
    go_online(&mut y);
    for k in 0..n {
        x.send(&format!(
            "<message to='{}' type='chat' id='a{k}'><body>a2b {k}</body></message>",
            y.jid
        ));
        y.send(&format!(
            "<message to='{}' type='chat' id='b{k}'><body>b2a {k}</body></message>",
            x.jid
        ));
    }
    let (x_jid, y_jid) = (x.jid.clone(), y.jid.clone());
    for (rx, from, tag) in [(&mut y, &x_jid, "a"), (&mut x, &y_jid, "b")] {
        let got = messages(rx, n, Duration::from_secs(20));
        let seen: Vec<(String, String)> = got
            .iter()
            .map(|m| {
                (
                    m.attr("id").unwrap_or_default().to_string(),
                    m.attr("from").unwrap_or_default().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = (0..n)
            .map(|k| (format!("{tag}{k}"), from.clone()))
            .collect();
        assert_eq!(
            seen, want,
            "{}: messages out of order, lost or altered",
            rx.jid
        );
        let more: Vec<Got> = rx
            .drain(Duration::from_millis(300))
            .into_iter()
            .filter(|g| matches!(g, Got::El(e) if e.name == "message"))
            .collect();
        assert!(more.is_empty(), "{}: duplicates: {more:?}", rx.jid);
    }
}

/// Sends one TICK frame in the clear to a cluster port and returns what comes back until it closes.
fn plaintext_probe(address: &str) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0, 0, 0, 1, 0x10]).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

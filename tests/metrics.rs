//! The Prometheus endpoint over real sockets, with 1 and 2 shards (the two users on different shards):
//! while a test drives traffic, the counters move by exactly what was sent — messages in and out,
//! per-stage latency samples (with a mesh hop when the users live on different shards), IQs and their
//! errors by namespace, sessions and connections — and the exposition is well-formed; anything but
//! `GET /metrics` is refused with the right status.

mod common;

use std::collections::HashMap;

use common::{Client, SHARDS, TestServer, http, on_another_shard};

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\nlatency_sample = 1\n";

/// Every sample of an exposition by its series (name and labels as written), each line checked.
fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let (status, body) = http(server.metrics_addr(), "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    let mut out = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_string()), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE before {line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(out.insert(series.to_string(), v).is_none(), "twice: {line}");
    }
    out
}

/// The sum over shards of the series `name` whose labels include every one of `labels`.
fn total(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn counters_move_by_exactly_what_was_sent() {
    for shards in SHARDS {
        let server = TestServer::start(shards, METRICS);
        let bob_jid = on_another_shard("alice@localhost", "bob", shards);
        server.add_user("alice@localhost", "pw");
        server.add_user(&bob_jid, "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        let mut bob = Client::login(&server, &bob_jid, "pw", "r");
        alice.available(0);
        bob.available(0);

        let before = scrape(&server);
        assert_eq!(total(&before, "rjabberd_sessions", &["kind=\"c2s\""]), 2.0);
        assert_eq!(total(&before, "rjabberd_accounts_online", &[]), 2.0);
        assert_eq!(
            total(&before, "rjabberd_connections", &["kind=\"c2s\""]),
            2.0
        );
        assert_eq!(total(&before, "rjabberd_shards", &[]), shards as f64);
        // Client::login uses SCRAM-SHA-256; one wrong password is a failure of that mechanism.
        let scram = "mechanism=\"SCRAM-SHA-256\"";
        assert_eq!(total(&before, "rjabberd_logins_total", &[scram]), 2.0);
        assert_eq!(
            total(&before, "rjabberd_login_failures_total", &[scram]),
            0.0
        );
        {
            let mut wrong = Client::connect(server.starttls, server.cert_path());
            wrong.open("localhost");
            wrong.starttls();
            wrong.open("localhost");
            let r = wrong.sasl("SCRAM-SHA-256", "alice", "not-the-password", None);
            assert_eq!(r.name, "failure", "{r}");
        }
        let failed = scrape(&server);
        assert_eq!(
            total(&failed, "rjabberd_login_failures_total", &[scram]),
            1.0
        );
        assert_eq!(total(&failed, "rjabberd_logins_total", &[scram]), 2.0);
        let before = scrape(&server);

        const N: usize = 25;
        for i in 0..N {
            alice.send(&format!(
                "<message to='{bob_jid}' type='chat' id='m{i}'><body>{i}</body></message>"
            ));
        }
        for i in 0..N {
            let m = bob.el();
            assert_eq!(m.attr("id"), Some(format!("m{i}").as_str()), "{m}");
        }
        let after = scrape(&server);
        let delta = |name: &str, labels: &[&str]| {
            total(&after, name, labels) - total(&before, name, labels)
        };
        assert_eq!(
            delta("rjabberd_stanzas_in_total", &["kind=\"message\""]),
            N as f64
        );
        assert_eq!(
            delta("rjabberd_stanzas_out_total", &["kind=\"message\""]),
            N as f64
        );
        assert_eq!(
            delta("rjabberd_stanzas_in_total", &[]),
            N as f64,
            "nothing else was read"
        );
        for stage in ["parse", "route", "deliver", "total"] {
            assert_eq!(
                delta(
                    "rjabberd_stanza_stage_seconds_count",
                    &[&format!("stage=\"{stage}\"")]
                ),
                N as f64,
                "stage {stage}"
            );
        }
        let hops = if shards == 1 { 0.0 } else { N as f64 };
        assert_eq!(
            delta("rjabberd_stanza_stage_seconds_count", &["stage=\"mesh\""]),
            hops
        );
        assert!(delta("rjabberd_mesh_sent_total", &[]) >= hops);
        assert!(delta("rjabberd_bytes_in_total", &[]) >= (N * 60) as f64);
        assert!(delta("rjabberd_bytes_out_total", &[]) >= (N * 60) as f64);
        // The infinite bucket holds every sample and the sum is positive.
        assert_eq!(
            total(
                &after,
                "rjabberd_stanza_stage_seconds_bucket",
                &["stage=\"total\"", "le=\"+Inf\""]
            ),
            total(
                &after,
                "rjabberd_stanza_stage_seconds_count",
                &["stage=\"total\""]
            )
        );
        assert!(
            total(
                &after,
                "rjabberd_stanza_stage_seconds_sum",
                &["stage=\"total\""]
            ) > 0.0
        );

        // IQs by namespace: two pings answered, one ping `set` refused.
        for _ in 0..2 {
            let r = alice.iq(Some("localhost"), "get", "<ping xmlns='urn:xmpp:ping'/>");
            assert_eq!(r.attr("type"), Some("result"));
        }
        let r = alice.iq(Some("localhost"), "set", "<ping xmlns='urn:xmpp:ping'/>");
        assert_eq!(r.attr("type"), Some("error"));
        // A namespace nobody handles is answered but not counted (a client cannot grow the table).
        let r = alice.iq(
            Some("localhost"),
            "get",
            "<made-up xmlns='urn:example:none'/>",
        );
        assert_eq!(r.attr("type"), Some("error"));
        let later = scrape(&server);
        let ping = "namespace=\"urn:xmpp:ping\"";
        assert_eq!(
            total(&later, "rjabberd_iq_total", &[ping])
                - total(&after, "rjabberd_iq_total", &[ping]),
            3.0
        );
        assert_eq!(
            total(&later, "rjabberd_iq_errors_total", &[ping])
                - total(&after, "rjabberd_iq_errors_total", &[ping]),
            1.0
        );
        assert!(!later.keys().any(|k| k.contains("urn:example:none")));
        assert!(
            total(&later, "rjabberd_store_queries_total", &[]) > 0.0,
            "logins read the store"
        );
        assert!(total(&later, "rjabberd_resident_memory_bytes", &[]) > 0.0);

        // A client leaves: its session and connection go.
        drop(bob);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let m = scrape(&server);
            if total(&m, "rjabberd_sessions", &["kind=\"c2s\""]) == 1.0
                && total(&m, "rjabberd_connections", &["kind=\"c2s\""]) == 1.0
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the session did not go"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn only_get_metrics_is_served_and_sampling_can_be_off() {
    for shards in SHARDS {
        let server = TestServer::start(
            shards,
            "[metrics]\nlisten = \"127.0.0.1:0\"\nlatency_sample = 0\n",
        );
        let addr = server.metrics_addr();
        assert_eq!(http(addr, "GET", "/nothing").0, 404);
        assert_eq!(http(addr, "POST", "/metrics").0, 405);
        assert_eq!(http(addr, "HEAD", "/metrics"), (200, String::new()));
        assert_eq!(http(addr, "GET", "/").0, 200);
        server.add_user("alice@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        alice.send("<message to='alice@localhost/r'><body>x</body></message>");
        assert_eq!(alice.el().name, "message");
        let m = scrape(&server);
        assert_eq!(total(&m, "rjabberd_latency_sample_every", &[]), 0.0);
        assert_eq!(total(&m, "rjabberd_stanza_stage_seconds_count", &[]), 0.0);
        assert!(total(&m, "rjabberd_stanzas_in_total", &["kind=\"message\""]) >= 1.0);
    }
}

#[test]
fn without_the_section_nothing_listens() {
    let server = TestServer::start(1, "");
    assert!(
        !server
            .stdout
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("metrics on")),
        "the endpoint is off by default"
    );
}

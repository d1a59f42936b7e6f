//! The server's log as an operator reads it (issue 11, "logs fit for production"): with `[log] format`
//! `json` and `kv`, with 1 and 2 shards, every line the server writes on stderr parses; a login writes
//! one `login` line with the full JID and the client's address, the end of the session one `logout`
//! with why (closed, replaced, shutdown), a wrong password, an unknown host, a refused registration, a
//! bad component secret, the connection cap and the auth timeout one `refused` each; and a flood of
//! failed logins from one address is held to the configured burst and rate, with counts of what was
//! held back that add up to the flood.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Client, SHARDS, TestServer, component, header, on_another_shard};

const FORMATS: [&str; 2] = ["json", "kv"];

/// One log line's fields, every value as text (JSON numbers and booleans written as JSON writes them).
type Fields = HashMap<String, String>;

fn parse(format: &str, line: &str) -> Fields {
    match format {
        "json" => {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
            let obj = v
                .as_object()
                .unwrap_or_else(|| panic!("not an object: {line}"));
            obj.iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        }
        _ => rjabberd::logging::format::parse_kv(line)
            .unwrap_or_else(|| panic!("a log line is not key=value: {line}"))
            .into_iter()
            .collect(),
    }
}

/// Every line logged so far, parsed (a line that does not parse fails the test).
fn lines(server: &TestServer, format: &str) -> Vec<Fields> {
    let raw = server.stderr.lock().unwrap().clone();
    raw.iter()
        .map(|l| {
            let f = parse(format, l);
            for key in ["ts", "level", "target", "msg"] {
                assert!(f.contains_key(key), "no {key}: {l}");
            }
            f
        })
        .collect()
}

fn is(f: &Fields, key: &str, value: &str) -> bool {
    f.get(key).map(String::as_str) == Some(value)
}

/// Waits until `pred` holds of the lines logged; returns them.
fn wait_until(
    server: &TestServer,
    format: &str,
    what: &str,
    pred: impl Fn(&[Fields]) -> bool,
) -> Vec<Fields> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = lines(server, format);
        if pred(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not logged within 10 s; the log:\n{}",
            server.stderr.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn events<'a>(all: &'a [Fields], event: &str, peer: &str) -> Vec<&'a Fields> {
    all.iter()
        .filter(|f| is(f, "event", event) && is(f, "peer", peer))
        .collect()
}

fn log_config(format: &str, extra: &str) -> String {
    format!("[log]\nlevel = \"info\"\nformat = \"{format}\"\n{extra}")
}

#[test]
fn login_logout_and_refusals_are_one_line_each_with_the_peer() {
    for format in FORMATS {
        for shards in SHARDS {
            let mut server = TestServer::start_capturing(
                shards,
                &log_config(
                    format,
                    "[modules]\nmod_disco = true\n[modules.mod_register]\nregistrations_per_ip_per_hour = 3\n",
                ),
            );
            // With two shards, an account homed on shard 1: its connection moves there after SASL
            // from whichever shard accepted it.
            let user = on_another_shard("alice@localhost", "juliet", shards);
            let (local, _) = user.split_once('@').unwrap();
            server.add_user(&user, "secret");
            let what = format!("{format}, {shards} shard(s)");

            // A login: one line, on the account's home shard, once the resource is bound.
            let mut c = Client::login(&server, &user, "secret", "phone");
            let peer = c.local_addr().to_string();
            let all = wait_until(&server, format, "login", |a| {
                !events(a, "login", &peer).is_empty()
            });
            let logins = events(&all, "login", &peer);
            assert_eq!(logins.len(), 1, "{what}: {logins:?}");
            let login = logins[0];
            assert!(is(login, "jid", &format!("{user}/phone")), "{login:?}");
            assert!(is(login, "mechanism", "SCRAM-SHA-256"), "{login:?}");
            assert!(is(login, "tls", "true"), "{login:?}");
            assert!(is(login, "level", "info"), "{login:?}");
            let home = rjabberd::placement::home(&user, shards).shard;
            assert!(is(login, "shard", &home.to_string()), "{what}: {login:?}");

            // The client closes its stream: one logout, with the reason and the duration.
            c.send("</stream:stream>");
            c.drain(Duration::from_millis(200));
            let all = wait_until(&server, format, "logout", |a| {
                !events(a, "logout", &peer).is_empty()
            });
            let logouts = events(&all, "logout", &peer);
            assert_eq!(logouts.len(), 1, "{what}: {logouts:?}");
            assert!(is(logouts[0], "reason", "closed"), "{logouts:?}");
            assert!(is(logouts[0], "jid", &format!("{user}/phone")));
            assert!(logouts[0]["duration_ms"].parse::<u64>().is_ok());

            // A wrong password: one refusal with the mechanism, the condition and the name tried.
            let mut bad = Client::connect(server.starttls, server.cert_path());
            let bad_peer = bad.local_addr().to_string();
            bad.open("localhost");
            bad.starttls();
            bad.open("localhost");
            let r = bad.sasl("SCRAM-SHA-256", local, "wrong", None);
            assert_eq!(r.name, "failure", "{r}");
            let all = wait_until(&server, format, "refused", |a| {
                !events(a, "refused", &bad_peer).is_empty()
            });
            let refused = events(&all, "refused", &bad_peer);
            assert_eq!(refused.len(), 1, "{what}: {refused:?}");
            let f = refused[0];
            assert!(is(f, "reason", "sasl"), "{f:?}");
            assert!(is(f, "condition", "not-authorized"), "{f:?}");
            assert!(is(f, "mechanism", "SCRAM-SHA-256"), "{f:?}");
            assert!(is(f, "username", local), "{f:?}");
            // Leaving after a failure is no further refusal.
            drop(bad);

            // A stream to a host this server does not serve.
            let mut stray = Client::connect(server.starttls, server.cert_path());
            let stray_peer = stray.local_addr().to_string();
            stray.send(&header("nowhere.example"));
            assert_eq!(stray.stream_error().as_deref(), Some("host-unknown"));
            let all = wait_until(&server, format, "host-unknown", |a| {
                !events(a, "refused", &stray_peer).is_empty()
            });
            let f = events(&all, "refused", &stray_peer)[0];
            assert!(is(f, "reason", "stream-error"), "{f:?}");
            assert!(is(f, "condition", "host-unknown"), "{f:?}");

            // In-band registration: a name that is taken is refused, a new one registered.
            let mut reg = Client::connect(server.starttls, server.cert_path());
            let reg_peer = reg.local_addr().to_string();
            reg.open("localhost");
            reg.starttls();
            reg.open("localhost");
            let query = |name: &str| {
                format!(
                    "<query xmlns='jabber:iq:register'><username>{name}</username>\
                     <password>long enough</password></query>"
                )
            };
            let r = reg.iq(None, "set", &query(local));
            assert_eq!(r.attr("type"), Some("error"), "{r}");
            let r = reg.iq(None, "set", &query("newcomer"));
            assert_eq!(r.attr("type"), Some("result"), "{r}");
            let all = wait_until(&server, format, "registration", |a| {
                !events(a, "refused", &reg_peer).is_empty()
                    && !events(a, "registered", &reg_peer).is_empty()
            });
            let f = events(&all, "refused", &reg_peer)[0];
            assert!(is(f, "reason", "registration"), "{f:?}");
            assert!(is(f, "condition", "conflict"), "{f:?}");
            assert!(is(f, "username", local), "{f:?}");
            let f = events(&all, "registered", &reg_peer)[0];
            assert!(
                is(f, "username", "newcomer") && is(f, "host", "localhost"),
                "{f:?}"
            );
            drop(reg);

            // A second login with the same full JID replaces the first, and shutdown ends the second.
            let first = Client::login(&server, &user, "secret", "desk");
            let first_peer = first.local_addr().to_string();
            let second = Client::login(&server, &user, "secret", "desk");
            let second_peer = second.local_addr().to_string();
            let all = wait_until(&server, format, "replaced", |a| {
                !events(a, "logout", &first_peer).is_empty()
            });
            assert!(is(
                events(&all, "logout", &first_peer)[0],
                "reason",
                "replaced"
            ));
            server.terminate();
            let all = wait_until(&server, format, "shutdown", |a| {
                !events(a, "logout", &second_peer).is_empty()
            });
            assert!(is(
                events(&all, "logout", &second_peer)[0],
                "reason",
                "shutdown"
            ));

            // One line of each kind per thing that happened, none twice.
            for (event, peer, n) in [
                ("login", &peer, 1),
                ("logout", &peer, 1),
                ("refused", &bad_peer, 1),
                ("refused", &stray_peer, 1),
                ("refused", &reg_peer, 1),
                ("registered", &reg_peer, 1),
                ("login", &first_peer, 1),
                ("logout", &first_peer, 1),
                ("login", &second_peer, 1),
                ("logout", &second_peer, 1),
            ] {
                assert_eq!(events(&all, event, peer).len(), n, "{what}: {event} {peer}");
            }
            drop((c, first, second));
        }
    }
}

/// One failed PLAIN login for an account that does not exist, on a fresh connection without TLS.
fn fail_once(server: &TestServer) {
    let mut c = Client::connect(server.starttls, server.cert_path());
    c.open("localhost");
    let r = c.sasl("PLAIN", "nobody", "guess", None);
    assert_eq!(r.name, "failure", "{r}");
}

#[test]
fn a_flood_of_failed_logins_is_held_to_burst_and_rate_and_counted() {
    const FLOOD: u64 = 200;
    const BURST: u64 = 5;
    const RATE: f64 = 2.0;
    for format in FORMATS {
        for shards in SHARDS {
            let server = TestServer::start_capturing(
                shards,
                &log_config(
                    format,
                    &format!(
                        "rate_per_source = {RATE}\nburst = {BURST}\nsuppressed_report_secs = 1\n\
                         [auth]\nallow_plaintext = true\n"
                    ),
                ),
            );
            let what = format!("{format}, {shards} shard(s)");
            let start = Instant::now();
            for _ in 0..FLOOD {
                fail_once(&server);
            }
            let elapsed = start.elapsed().as_secs_f64();
            let from_here = |f: &Fields| f.get("peer").is_some_and(|p| p.starts_with("127.0.0.1:"));
            // Every failure is a line written or a line counted: in the next line that passed
            // (`suppressed=N`) or in a periodic `event=suppressed` line.
            let tally = |all: &[Fields]| {
                let written: Vec<&Fields> = all
                    .iter()
                    .filter(|f| is(f, "event", "refused") && from_here(f))
                    .collect();
                let carried: u64 = written
                    .iter()
                    .filter_map(|f| f.get("suppressed"))
                    .map(|n| n.parse::<u64>().unwrap())
                    .sum();
                let reported: u64 = all
                    .iter()
                    .filter(|f| is(f, "event", "suppressed") && is(f, "source", "127.0.0.1"))
                    .map(|f| f["count"].parse::<u64>().unwrap())
                    .sum();
                (written.len() as u64, carried + reported)
            };
            let all = wait_until(&server, format, "the counts of the flood", |a| {
                let (written, counted) = tally(a);
                written + counted >= FLOOD
            });
            let (written, counted) = tally(&all);
            assert_eq!(written + counted, FLOOD, "{what}: each failure once");
            // Each shard has its own limiter: the burst, then the rate over the time the flood took.
            let allowed = shards as f64 * (BURST as f64 + RATE * elapsed) + 1.0;
            assert!(
                (written as f64) <= allowed,
                "{what}: {written} lines written in {elapsed:.2} s, at most {allowed:.0} allowed"
            );
            assert!(written >= BURST, "{what}: the burst is written");
            for f in all
                .iter()
                .filter(|f| is(f, "event", "refused") && from_here(f))
            {
                assert!(
                    is(f, "reason", "sasl") && is(f, "username", "nobody"),
                    "{f:?}"
                );
            }
        }
    }
}

#[test]
fn components_the_connection_cap_and_the_auth_timeout_have_their_lines() {
    for shards in SHARDS {
        let format = if shards == 1 { "json" } else { "kv" };
        let server = TestServer::start_capturing(
            shards,
            &log_config(
                format,
                "[limits]\nmax_connections_per_shard = 1\nauth_timeout_secs = 2\n\
                 [[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"component\"\n\
                 [[component]]\ndomain = \"gw.localhost\"\nsecret = \"s3cret\"\n",
            ),
        );
        let what = format!("{format}, {shards} shard(s)");

        // A wrong handshake secret.
        let (bad, e) = component(&server, "gw.localhost", "wrong");
        assert_eq!(e.name, "stream:error", "{e}");
        let peer = bad.local_addr().to_string();
        let all = wait_until(&server, format, "handshake", |a| {
            !events(a, "refused", &peer).is_empty()
        });
        let f = events(&all, "refused", &peer)[0];
        assert!(is(f, "reason", "handshake"), "{what}: {f:?}");
        assert!(is(f, "condition", "not-authorized"), "{f:?}");
        assert!(is(f, "domain", "gw.localhost"), "{f:?}");
        drop(bad);

        // A component that connects and leaves.
        let (mut gw, e) = component(&server, "gw.localhost", "s3cret");
        assert_eq!(e.name, "handshake", "{e}");
        let peer = gw.local_addr().to_string();
        gw.send("</stream:stream>");
        gw.drain(Duration::from_millis(200));
        let all = wait_until(&server, format, "component logout", |a| {
            !events(a, "logout", &peer).is_empty()
        });
        assert!(is(
            events(&all, "login", &peer)[0],
            "domain",
            "gw.localhost"
        ));
        assert!(is(events(&all, "logout", &peer)[0], "reason", "closed"));
        drop(gw);
        std::thread::sleep(Duration::from_millis(100));

        // Connections that never authenticate: the cap refuses those over one per shard, and the
        // ones accepted time out.
        let mut held = Vec::new();
        let mut refused = None;
        for _ in 0..20 {
            let mut c = Client::connect(server.starttls, server.cert_path());
            let peer = c.local_addr().to_string();
            match c.next_within(Duration::from_millis(300)) {
                Some(common::Got::Header(_)) => {
                    assert_eq!(c.stream_error().as_deref(), Some("resource-constraint"));
                    refused = Some(peer);
                    break;
                }
                None => held.push((c, peer)),
                other => panic!("{other:?}"),
            }
        }
        let refused = refused.expect("the cap refused a connection");
        // By reason too: a source port of the component connections above may come back for these,
        // which go to another listener.
        let with = |a: &[Fields], peer: &str, reason: &str| {
            events(a, "refused", peer)
                .into_iter()
                .find(|f| is(f, "reason", reason))
                .cloned()
        };
        let all = wait_until(&server, format, "cap and timeouts", |a| {
            with(a, &refused, "connection-cap").is_some()
                && held
                    .iter()
                    .all(|(_, p)| with(a, p, "auth-timeout").is_some())
        });
        let f = with(&all, &refused, "connection-cap").unwrap();
        assert!(is(&f, "level", "warn"), "{what}: {f:?}");
        assert!(is(&f, "listener", "c2s"), "{f:?}");
        assert!(
            !held.is_empty(),
            "{what}: a connection was held before the cap"
        );
    }
}

//! The module API of the Developers Guide over real TCP, with 1 and 2 shards: the guide's `mod_cputime`
//! and echo service as written there, the IQ fault barrier (no handler, a rejected payload, a handler
//! error, a panic — each answered once, the shard going on), `one_queue` answering in request order,
//! `parallel` letting a fast request overtake a slow one, a module stopped by a configuration reload
//! (SIGHUP) leaving no handler or service behind, and bad module configuration named with its line.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Got, SHARDS, TestServer, error_condition};

const PROBE: &str = "urn:rjabberd:fault-probe";

fn modules(extra: &str) -> String {
    format!("[modules]\nmod_disco = true\nmod_ping = true\n{extra}")
}

#[test]
fn cputime_as_in_the_guide() {
    for shards in SHARDS {
        let server = TestServer::start(shards, &modules("mod_cputime = true\n"));
        server.add_user("alice@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        let r = alice.iq(
            Some("localhost"),
            "get",
            "<query xmlns='ejabberd:cputime'/>",
        );
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let q = r.child("query").expect("a query");
        assert_eq!(q.attr("xmlns"), Some("ejabberd:cputime"));
        let secs = q.child("cputime").expect("cputime").text();
        let (whole, frac) = secs.split_once('.').expect("three decimals");
        assert!(whole.parse::<u64>().is_ok() && frac.len() == 3, "{secs}");
        assert!(secs.parse::<f64>().unwrap() > 0.0);

        // set → the original child echoed with not-allowed.
        let r = alice.iq(
            Some("localhost"),
            "set",
            "<query xmlns='ejabberd:cputime'><x/></query>",
        );
        assert_eq!(r.attr("type"), Some("error"));
        assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
        let echoed = r.child("query").expect("the original child echoed");
        assert!(echoed.child("x").is_some(), "{r}");
    }
}

#[test]
fn echo_service_as_in_the_guide() {
    for shards in SHARDS {
        let server = TestServer::start(
            shards,
            &modules("mod_echo = true\n[host.modules.mod_echo]\nhost = \"mirror.example.net\"\n"),
        );
        server.add_user("alice@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        alice.send("<message to='echo.localhost' id='e1' type='chat'><body>hello</body></message>");
        let m = alice.el();
        assert_eq!(m.name, "message");
        assert_eq!(m.attr("from"), Some("echo.localhost"));
        assert_eq!(m.attr("to"), Some("alice@localhost/r"));
        assert_eq!(m.attr("id"), Some("e1"));
        assert_eq!(m.child("body").unwrap().text(), "hello");
        // Anything, to any JID of the service, comes back.
        alice.send("<iq to='room@echo.localhost/x' type='get' id='e2'><q xmlns='urn:x'/></iq>");
        let i = alice.el();
        assert_eq!(i.attr("from"), Some("room@echo.localhost/x"));
        assert_eq!(i.attr("type"), Some("get"));
        // The host option: the second virtual host's service sits where its configuration says.
        server.add_user("bob@example.net", "pw");
        let mut bob = Client::login(&server, "bob@example.net", "pw", "r");
        bob.send("<message to='mirror.example.net'><body>b</body></message>");
        assert_eq!(bob.el().attr("from"), Some("mirror.example.net"));
        bob.send("<message to='echo.example.net' id='n'><body>b</body></message>");
        let e = bob.el();
        assert_eq!(
            error_condition(&e).as_deref(),
            Some("remote-server-not-found")
        );
        // The service is listed by disco#items of its host.
        let items = alice.iq(
            Some("localhost"),
            "get",
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        );
        let q = items.child("query").unwrap();
        assert!(
            q.child_elements()
                .any(|i| i.attr("jid") == Some("echo.localhost")),
            "{items}"
        );
    }
}

#[test]
fn the_fault_barrier_answers_every_request_once() {
    for shards in SHARDS {
        for disc in ["no_queue", "one_queue", "parallel"] {
            let server = TestServer::start(
                shards,
                &modules(&format!("[modules.mod_fault_probe]\niqdisc = \"{disc}\"\n")),
            );
            server.add_user("alice@localhost", "pw");
            server.add_user("bob@localhost", "pw");
            let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
            let mut bob = Client::login(&server, "bob@localhost", "pw", "r");
            let probe =
                |action: &str| format!("<probe xmlns='{PROBE}' action='{action}' tag='t'/>");
            let cases = [
                ("ok", None),
                ("reject", Some("bad-request")),
                ("fail", Some("internal-server-error")),
                ("panic", Some("internal-server-error")),
            ];
            for (action, want) in cases {
                let r = alice.iq(Some("localhost"), "get", &probe(action));
                assert_eq!(error_condition(&r).as_deref(), want, "{disc} {action}: {r}");
            }
            // No handler for the namespace; not exactly one payload element.
            let r = alice.iq(Some("localhost"), "get", "<q xmlns='urn:nobody'/>");
            assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
            let r = alice.iq(Some("localhost"), "get", "");
            assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
            let r = alice.iq(
                Some("localhost"),
                "get",
                &format!("{}{}", probe("ok"), probe("ok")),
            );
            assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
            // Exactly one answer each: nothing else arrives.
            let extra = alice.drain(Duration::from_millis(300));
            assert!(extra.is_empty(), "{disc}: {extra:?}");
            // After a panic, both shards still serve: a message goes through and the handler works.
            bob.send(
                "<message to='alice@localhost/r' id='after'><body>still here</body></message>",
            );
            let m = alice.el();
            assert_eq!(m.attr("id"), Some("after"));
            let r = bob.iq(Some("localhost"), "get", &probe("ok"));
            assert_eq!(r.attr("type"), Some("result"), "{r}");
        }
    }
}

/// Sends `n` probes at once, the first ones slowest, and returns the order of the answers' tags.
fn answer_order(c: &mut Client, delays: &[u64]) -> Vec<String> {
    for (i, d) in delays.iter().enumerate() {
        c.send(&format!(
            "<iq to='localhost' type='get' id='o{i}'><probe xmlns='{PROBE}' delay_ms='{d}' tag='{i}'/></iq>"
        ));
    }
    let mut order = Vec::new();
    while order.len() < delays.len() {
        match c.next() {
            Got::El(e) if e.name == "iq" => {
                assert_eq!(e.attr("type"), Some("result"), "{e}");
                order.push(e.child("probe").unwrap().attr_s("tag").to_string());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    order
}

#[test]
fn one_queue_answers_in_order_and_parallel_does_not_wait() {
    for shards in SHARDS {
        let delays = [300, 200, 100, 0];
        let server = TestServer::start(
            shards,
            &modules("[modules.mod_fault_probe]\niqdisc = \"one_queue\"\n"),
        );
        server.add_user("alice@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        let started = Instant::now();
        assert_eq!(answer_order(&mut alice, &delays), ["0", "1", "2", "3"]);
        // One at a time: the delays add up.
        assert!(started.elapsed() >= Duration::from_millis(550));
        drop(server);

        let server = TestServer::start(
            shards,
            &modules("[modules.mod_fault_probe]\niqdisc = \"parallel\"\n"),
        );
        server.add_user("alice@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        assert_eq!(answer_order(&mut alice, &delays), ["3", "2", "1", "0"]);
    }
}

#[test]
fn a_reload_stops_a_module_and_leaves_nothing_behind() {
    for shards in SHARDS {
        let with = modules("mod_cputime = true\nmod_echo = true\nmod_version = true\n");
        let mut server = TestServer::start(shards, &with);
        server.add_user("alice@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        let info = |c: &mut Client| {
            let r = c.iq(
                Some("localhost"),
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            );
            r.child("query")
                .unwrap()
                .child_elements()
                .filter(|f| f.name == "feature")
                .map(|f| f.attr_s("var").to_string())
                .collect::<Vec<_>>()
        };
        let before = info(&mut alice);
        assert!(
            before.contains(&"ejabberd:cputime".to_string()),
            "{before:?}"
        );
        assert!(before.contains(&"jabber:iq:version".to_string()));

        server.set_extra(&modules("mod_version = true\n"));
        common::signal(server.pid(), libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(5);
        while server
            .stdout
            .lock()
            .unwrap()
            .iter()
            .all(|l| !l.contains("modules reloaded"))
        {
            assert!(Instant::now() < deadline, "no reload reported");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Every shard applies the plan within its housekeeping tick.
        std::thread::sleep(Duration::from_millis(200));
        let after = info(&mut alice);
        assert!(
            !after.contains(&"ejabberd:cputime".to_string()),
            "{after:?}"
        );
        assert!(after.contains(&"jabber:iq:version".to_string()));
        let r = alice.iq(
            Some("localhost"),
            "get",
            "<query xmlns='ejabberd:cputime'/>",
        );
        assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
        alice.send("<message to='echo.localhost' id='gone'><body>x</body></message>");
        let e = alice.el();
        assert_eq!(
            error_condition(&e).as_deref(),
            Some("remote-server-not-found"),
            "{e}"
        );
        // A connection that logs in afterwards (possibly on the other shard) sees the same.
        let mut late = Client::login(&server, "alice@localhost", "pw", "late");
        assert!(!info(&mut late).contains(&"ejabberd:cputime".to_string()));

        // A reload with a bad file changes nothing and names the line.
        server.set_extra("[modules.mod_version]\nshow_os = \"yes\"\n");
        common::signal(server.pid(), libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(300));
        let r = alice.iq(
            Some("localhost"),
            "get",
            "<query xmlns='jabber:iq:version'/>",
        );
        assert_eq!(r.attr("type"), Some("result"));
    }
}

#[test]
fn bad_module_configuration_stops_the_start_with_its_location() {
    let dir = std::env::temp_dir().join(format!("rjabberd-modcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "[modules]\nmod_ping = true\nmod_pong = true\n",
            ":3:",
            "unknown module `mod_pong`",
        ),
        (
            "[modules.mod_cputime]\niqdisc = \"queue\"\n",
            ":2:",
            "not one of",
        ),
        (
            "[modules.mod_echo]\nhots = \"x\"\n",
            ":2:",
            "no option `hots`",
        ),
        (
            "[modules]\nmod_server_info = true\n",
            ":2:",
            "needs `mod_disco`",
        ),
        (
            "[[host]]\nname = \"a.example\"\n[host.modules]\nmod_last = 3\n",
            ":4:",
            "expected true, false",
        ),
    ];
    for (text, at, what) in cases {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rjabberd"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(&format!("bad.toml{at}")), "{text}: {err}");
        assert!(err.contains(what), "{text}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

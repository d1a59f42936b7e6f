//! XEP-0114 external components over real TCP, with 1 and 2 shards: the handshake, stanzas both ways
//! between a component and clients (whichever shard each lives on), IQs from a component to the server,
//! a wrong secret (`not-authorized`), an unknown domain (`host-unknown`), a second connection for a
//! connected domain (`conflict`), a `from` outside the component's domain (`invalid-from`), the route
//! gone when the component leaves, and a real component written with slixmpp's `ComponentXMPP`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Client, Got, SHARDS, TestServer, component, error_condition};

const EXTRA: &str = "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"component\"\n\
    [[component]]\ndomain = \"gw.localhost\"\nsecret = \"s3cret\"\n";

/// Waits until every shard has the component's route (route changes cross the mesh).
fn settle() {
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn handshake_and_stanzas_both_ways() {
    for shards in SHARDS {
        let server = TestServer::start(shards, EXTRA);
        for u in ["alice", "bob", "carol"] {
            server.add_user(&format!("{u}@localhost"), "pw");
        }
        let (mut gw, done) = component(&server, "gw.localhost", "s3cret");
        assert_eq!(done.name, "handshake", "{done}");
        settle();
        // Several users, so with two shards some live on the component's shard and some do not.
        for u in ["alice", "bob", "carol"] {
            let mut c = Client::login(&server, &format!("{u}@localhost"), "pw", "r");
            c.send(&format!(
                "<message to='bot@gw.localhost' id='{u}1'><body>to the gateway</body></message>"
            ));
            let m = gw.el();
            assert_eq!(m.attr("from"), Some(format!("{u}@localhost/r").as_str()));
            assert_eq!(m.attr("to"), Some("bot@gw.localhost"));
            assert_eq!(m.attr("id"), Some(format!("{u}1").as_str()));
            gw.send(&format!(
                "<message from='bot@gw.localhost' to='{u}@localhost/r' id='{u}2'><body>back</body></message>"
            ));
            let m = c.el();
            assert_eq!(m.attr("from"), Some("bot@gw.localhost"));
            assert_eq!(m.child("body").unwrap().text(), "back");
            // An IQ from a client answered by the component.
            c.send(
                "<iq to='gw.localhost' type='get' id='v'><query xmlns='jabber:iq:version'/></iq>",
            );
            let q = gw.el();
            assert_eq!(q.attr("type"), Some("get"));
            gw.send(&format!(
                "<iq from='gw.localhost' to='{u}@localhost/r' type='result' id='v'/>"
            ));
            assert_eq!(c.answer("v").attr("from"), Some("gw.localhost"));
        }
        // The component asks the server (disco#items lists it under its parent host).
        gw.send(
            "<iq from='gw.localhost' to='localhost' type='get' id='d1'>\
             <query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        );
        let r = gw.answer("d1");
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        assert!(
            r.child("query")
                .unwrap()
                .child_elements()
                .any(|i| i.attr("jid") == Some("gw.localhost")),
            "{r}"
        );
        // To an account with no session: the error comes back to the component.
        gw.send("<message from='bot@gw.localhost' to='nobody@localhost' id='n1'><body>x</body></message>");
        let e = gw.el();
        assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));

        // A second connection for the same domain: conflict; the first keeps working.
        let (mut second, e) = component(&server, "gw.localhost", "s3cret");
        assert_eq!(e.name, "stream:error");
        assert!(e.child("conflict").is_some(), "{e}");
        assert!(matches!(second.next(), Got::Close | Got::Eof));

        // A `from` outside its domain ends the stream.
        gw.send("<message from='alice@localhost' to='bob@localhost'/>");
        let e = gw.el();
        assert!(e.child("invalid-from").is_some(), "{e}");

        // Once it has gone, the domain is unknown again and a new connection may take it.
        drop(gw);
        std::thread::sleep(Duration::from_millis(200));
        let mut alice = Client::login(&server, "alice@localhost", "pw", "after");
        alice.send("<message to='gw.localhost' id='g'><body>x</body></message>");
        let e = alice.el();
        assert_eq!(
            error_condition(&e).as_deref(),
            Some("remote-server-not-found")
        );
        let (_again, done) = component(&server, "gw.localhost", "s3cret");
        assert_eq!(done.name, "handshake");
    }
}

#[test]
fn refusals() {
    for shards in SHARDS {
        let server = TestServer::start(shards, EXTRA);
        let (mut c, e) = component(&server, "gw.localhost", "wrong");
        assert!(e.child("not-authorized").is_some(), "{e}");
        assert!(matches!(c.next(), Got::Close | Got::Eof));

        let mut c = Client::connect(server.listeners[2], server.cert_path());
        c.send(
            "<stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='other.localhost'>",
        );
        assert!(matches!(c.next(), Got::Header(_)));
        let e = c.el();
        assert!(e.child("host-unknown").is_some(), "{e}");

        // Malformed XML: not-well-formed, and the listener goes on.
        let mut c = Client::connect(server.listeners[2], server.cert_path());
        c.send("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='gw.localhost'><a></b>");
        assert!(matches!(c.next(), Got::Header(_)));
        let e = c.el();
        assert!(e.child("not-well-formed").is_some(), "{e}");
        let (_c, done) = component(&server, "gw.localhost", "s3cret");
        assert_eq!(done.name, "handshake");
    }
}

/// slixmpp's ComponentXMPP (tests/e2e/slixmpp_component.py) connects, answers a client's message and
/// sends one of its own. End to end like tests/e2e_clients.rs: ignored when built with
/// `RJABBERD_SKIP_E2E` set (see build.rs).
#[test]
#[cfg_attr(rjabberd_skip_e2e, ignore = "RJABBERD_SKIP_E2E is set (needs slixmpp)")]
fn a_slixmpp_component() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/slixmpp_component.py");
    for shards in SHARDS {
        let server = TestServer::start(shards, EXTRA);
        server.add_user("alice@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .arg(server.listeners[2].ip().to_string())
            .arg(server.listeners[2].port().to_string())
            .arg("gw.localhost")
            .arg("s3cret")
            .arg("alice@localhost/r")
            .spawn()
            .expect("python3 runs");
        // The component greets alice once its session is up.
        let deadline = Instant::now() + Duration::from_secs(20);
        let hello = loop {
            assert!(Instant::now() < deadline, "no greeting from the component");
            if let Some(status) = child.try_wait().unwrap()
                && !status.success()
            {
                panic!(
                    "the component script failed ({status}) before its greeting came: is slixmpp \
                     installed? (pip install slixmpp, or set RJABBERD_SKIP_E2E=1)"
                );
            }
            if let Some(Got::El(e)) = alice.next_within(Duration::from_millis(500))
                && e.name == "message"
            {
                break e;
            }
        };
        assert_eq!(hello.attr("from"), Some("echo@gw.localhost"));
        assert_eq!(hello.child("body").unwrap().text(), "component online");
        alice.send(
            "<message to='echo@gw.localhost' type='chat' id='s1'><body>ping me</body></message>",
        );
        let back = alice.el();
        assert_eq!(back.attr("from"), Some("echo@gw.localhost"), "{back}");
        assert_eq!(back.child("body").unwrap().text(), "echo: ping me");
        let status = child.wait().unwrap();
        assert!(status.success(), "the component script failed");
    }
}

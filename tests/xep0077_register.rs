//! XEP-0077 in-band registration over real TCP, with 1 and 2 shards: off by default (no feature, and a
//! registration attempt before authentication is `not-authorized`); when on, the stream feature after
//! TLS, the form, a new account that can log in, `conflict` for a taken name, `not-acceptable` for a
//! short password, the per-address rate limit (`resource-constraint`); an authenticated account changing
//! its password and removing itself (its sessions closed, its data gone).

mod common;

use common::{Client, SHARDS, TestServer, error_condition};
use rjabberd::proto::xml::Element;

const FORM: &str = "<query xmlns='jabber:iq:register'/>";

fn unauthenticated(server: &TestServer) -> Client {
    let mut c = Client::connect(server.starttls, server.cert_path());
    c.open("localhost");
    c.starttls();
    c.open("localhost");
    c
}

fn offers_register(c: &Client) -> bool {
    c.features
        .as_ref()
        .unwrap()
        .child_elements()
        .any(|f: &Element| f.name == "register")
}

fn register(c: &mut Client, user: &str, password: &str) -> Element {
    c.iq(
        None,
        "set",
        &format!(
            "<query xmlns='jabber:iq:register'><username>{user}</username><password>{password}</password></query>"
        ),
    )
}

fn can_login(server: &TestServer, user: &str, password: &str) -> bool {
    let mut c = unauthenticated(server);
    c.sasl("SCRAM-SHA-256", user, password, None).name == "success"
}

#[test]
fn off_by_default() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let mut c = unauthenticated(&server);
        assert!(!offers_register(&c));
        c.send("<iq type='get' id='r'><query xmlns='jabber:iq:register'/></iq>");
        assert_eq!(c.stream_error().as_deref(), Some("not-authorized"));
    }
}

#[test]
fn register_change_and_remove() {
    for shards in SHARDS {
        let server = TestServer::start(
            shards,
            "[modules]\nmod_disco = true\nmod_vcard = true\n\
             [modules.mod_register]\nregistrations_per_ip_per_hour = 3\n",
        );
        // Not before TLS (SASL is not offered there either).
        let mut plain = Client::connect(server.starttls, server.cert_path());
        plain.open("localhost");
        assert!(!offers_register(&plain));

        let mut c = unauthenticated(&server);
        assert!(offers_register(&c));
        let r = c.iq(None, "get", FORM);
        let q = r.child("query").expect("the form");
        assert!(
            q.child("username").is_some() && q.child("password").is_some(),
            "{r}"
        );
        let r = register(&mut c, "Alice", "correct horse");
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let r = register(&mut c, "alice", "another one");
        assert_eq!(error_condition(&r).as_deref(), Some("conflict"));
        let r = register(&mut c, "bob", "short");
        assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
        let r = register(&mut c, "bob", "long enough");
        assert_eq!(r.attr("type"), Some("result"));
        let r = register(&mut c, "carol", "long enough");
        assert_eq!(r.attr("type"), Some("result"));
        // The fourth from this address within the hour.
        let r = register(&mut c, "dave", "long enough");
        assert_eq!(error_condition(&r).as_deref(), Some("resource-constraint"));
        assert!(can_login(&server, "alice", "correct horse"));

        // Authenticated: the form says registered; change the password.
        let mut alice = Client::login(&server, "alice@localhost", "correct horse", "r");
        let r = alice.iq(Some("localhost"), "get", FORM);
        assert!(
            r.child("query").unwrap().child("registered").is_some(),
            "{r}"
        );
        let r = register(&mut alice, "alice", "battery staple");
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        assert!(!can_login(&server, "alice", "correct horse"));
        assert!(can_login(&server, "alice", "battery staple"));
        let r = register(&mut alice, "bob", "hijacked!!");
        assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));

        // Remove: the result, then the stream ends; the account and its vCard are gone.
        let r = alice.iq(None, "set", "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>");
        assert_eq!(r.attr("type"), Some("result"));
        let mut other = Client::login(&server, "alice@localhost", "battery staple", "other");
        let r = alice.iq(
            None,
            "set",
            "<query xmlns='jabber:iq:register'><remove/></query>",
        );
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        assert_eq!(alice.stream_error().as_deref(), Some("not-authorized"));
        assert_eq!(other.stream_error().as_deref(), Some("not-authorized"));
        assert!(!can_login(&server, "alice", "battery staple"));
        let mut bob = Client::login(&server, "bob@localhost", "long enough", "r");
        let r = bob.iq(
            Some("alice@localhost"),
            "get",
            "<vCard xmlns='vcard-temp'/>",
        );
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("service-unavailable"),
            "{r}"
        );
        // Re-registering the name starts from nothing.
        server.add_user("alice@localhost", "pw");
        let r = bob.iq(
            Some("alice@localhost"),
            "get",
            "<vCard xmlns='vcard-temp'/>",
        );
        assert_eq!(r.child("vCard").unwrap().child_elements().count(), 0, "{r}");
    }
}

#[test]
fn a_reload_turns_registration_on_and_off() {
    for shards in SHARDS {
        let mut server = TestServer::start(shards, "[modules]\nmod_disco = true\n");
        assert!(!offers_register(&unauthenticated(&server)));
        let reload = |server: &mut TestServer, extra: &str, n: usize| {
            server.set_extra(extra);
            common::signal(server.pid(), libc::SIGHUP);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while server
                .stdout
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("modules reloaded"))
                .count()
                < n
            {
                assert!(std::time::Instant::now() < deadline, "no reload reported");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // Every shard applies the plan within its housekeeping tick.
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        reload(
            &mut server,
            "[modules]\nmod_disco = true\nmod_register = true\n",
            1,
        );
        let mut c = unauthenticated(&server);
        assert!(offers_register(&c));
        assert_eq!(
            register(&mut c, "newcomer", "long enough").attr("type"),
            Some("result")
        );
        reload(&mut server, "[modules]\nmod_disco = true\n", 2);
        let mut c = unauthenticated(&server);
        assert!(!offers_register(&c));
        c.send("<iq type='get' id='r'><query xmlns='jabber:iq:register'/></iq>");
        assert_eq!(c.stream_error().as_deref(), Some("not-authorized"));
    }
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(register_change_and_remove,);

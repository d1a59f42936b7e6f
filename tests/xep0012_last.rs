//! XEP-0012 last activity over real TCP, with 1 and 2 shards: the server's uptime; an account asking
//! about itself while online (0), after its last session ended (seconds since, and the status it left
//! with), never logged in (`service-unavailable`); someone else asking (`forbidden`: no presence
//! subscription can exist before rosters).

mod common;

use std::time::Duration;

use common::{Client, SHARDS, TestServer, error_condition};

const Q: &str = "<query xmlns='jabber:iq:last'/>";

#[test]
fn uptime_and_last_logout() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("alice@localhost", "pw");
        server.add_user("bob@localhost", "pw");
        let mut bob = Client::login(&server, "bob@localhost", "pw", "r");
        let r = bob.iq(Some("localhost"), "get", Q);
        let up: u64 = r.child("query").unwrap().attr_s("seconds").parse().unwrap();
        assert!(up < 60, "{r}");

        // Never logged in.
        let r = bob.iq(None, "get", Q);
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("service-unavailable"),
            "{r}"
        );
        bob.available(0);
        let r = bob.iq(None, "get", Q);
        assert_eq!(r.child("query").unwrap().attr("seconds"), Some("0"), "{r}");

        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        alice.available(0);
        alice.send("<presence type='unavailable'><status>gone fishing</status></presence>");
        std::thread::sleep(Duration::from_millis(1200));
        let r = alice.iq(Some("alice@localhost"), "get", Q);
        let q = r.child("query").expect("a query");
        let secs: u64 = q.attr_s("seconds").parse().unwrap();
        assert!((1..10).contains(&secs), "{r}");
        assert_eq!(q.text(), "gone fishing");

        // Someone else: forbidden.
        let r = bob.iq(Some("alice@localhost"), "get", Q);
        assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    }
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(uptime_and_last_logout,);

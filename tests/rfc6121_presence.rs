//! RFC 6121 §4 presence between contacts over real TCP, with 1 and 2 shards and, with 2, the contacts on
//! different home shards: initial presence reaches the contacts subscribed to it and probes the ones it
//! is subscribed to (whose home answers with their current presence), updates reach subscribers, a
//! dropped connection is an unavailable presence to them, and a contact without a subscription gets
//! nothing.

mod common;

use std::time::Duration;

use common::{Client, Got, SHARDS, TestServer};
use rjabberd::placement::home;
use rjabberd::proto::xml::Element;

/// Three accounts; with two shards the first two live on different shards.
fn names(shards: usize) -> (String, String, String) {
    let a = home("juliet@localhost", shards).shard;
    let romeo = (0..100)
        .map(|i| format!("romeo{i}"))
        .find(|o| shards == 1 || home(&format!("{o}@localhost"), shards).shard != a)
        .expect("an account on the other shard");
    ("juliet".into(), romeo, "nurse".into())
}

/// The next presence from `from` (a full JID), skipping the echo of one's own presence.
fn presence_from(c: &mut Client, from: &str) -> Element {
    loop {
        let e = c.el();
        if e.name == "presence" && e.attr("from") == Some(from) {
            return e;
        }
        assert!(
            e.name == "presence",
            "expected a presence from {from}, got {e}"
        );
    }
}

fn nothing_from(c: &mut Client, who: &str) {
    while let Some(g) = c.next_within(Duration::from_millis(400)) {
        if let Got::El(e) = &g {
            assert!(
                !e.attr("from").is_some_and(|f| f.starts_with(who)),
                "nothing from {who} expected: {e}"
            );
        }
    }
}

#[test]
fn presence_flows_along_subscriptions() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (j, r, n) = names(shards);
        let (jj, rj, nj) = (
            format!("{j}@localhost"),
            format!("{r}@localhost"),
            format!("{n}@localhost"),
        );
        for u in [&jj, &rj, &nj] {
            server.add_user(u, "pw");
        }
        server.roster_add(&jj, &rj, "both");
        server.roster_add(&rj, &jj, "both");
        // The nurse is on Juliet's roster without a subscription: no presence either way.
        server.roster_add(&jj, &nj, "none");

        let mut romeo = Client::login(&server, &rj, "pw", "r");
        romeo.available(0);
        let mut nurse = Client::login(&server, &nj, "pw", "r");
        nurse.available(0);

        // Juliet's initial presence reaches Romeo; her probe brings his current presence back.
        let mut juliet = Client::login(&server, &jj, "pw", "balcony");
        juliet.send("<presence><status>here</status></presence>");
        let p = presence_from(&mut romeo, &format!("{jj}/balcony"));
        assert_eq!(p.child("status").map(|s| s.text()).as_deref(), Some("here"));
        assert_eq!(p.attr("type"), None);
        let p = presence_from(&mut juliet, &format!("{rj}/r"));
        assert_eq!(p.attr("type"), None, "{p}");

        // An update.
        juliet.send("<presence><show>away</show></presence>");
        let p = presence_from(&mut romeo, &format!("{jj}/balcony"));
        assert_eq!(p.child("show").map(|s| s.text()).as_deref(), Some("away"));

        // A probe at a later login is answered with the latest presence.
        let mut romeo2 = Client::login(&server, &rj, "pw", "r2");
        romeo2.send("<presence/>");
        let p = presence_from(&mut romeo2, &format!("{jj}/balcony"));
        assert_eq!(p.child("show").map(|s| s.text()).as_deref(), Some("away"));

        // The connection drops without a word: unavailable to her subscribers.
        drop(juliet);
        let p = presence_from(&mut romeo, &format!("{jj}/balcony"));
        assert_eq!(p.attr("type"), Some("unavailable"), "{p}");

        nothing_from(&mut nurse, &jj);
    }
}

#[test]
fn directed_presence_is_ended_by_unavailable_and_by_a_dropped_connection() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (j, r, _) = names(shards);
        let (jj, rj) = (format!("{j}@localhost"), format!("{r}@localhost"));
        server.add_user(&jj, "pw");
        server.add_user(&rj, "pw");
        // No subscription either way: only directed presence reaches Romeo.
        let mut romeo = Client::login(&server, &rj, "pw", "r");
        romeo.available(0);
        let mut juliet = Client::login(&server, &jj, "pw", "balcony");
        juliet.available(0);
        nothing_from(&mut romeo, &jj);

        juliet.send(&format!(
            "<presence to='{rj}/r'><status>psst</status></presence>"
        ));
        let p = presence_from(&mut romeo, &format!("{jj}/balcony"));
        assert_eq!(p.child("status").map(|s| s.text()).as_deref(), Some("psst"));
        // Going unavailable reaches him too (§4.6.3), once.
        juliet.send("<presence type='unavailable'/>");
        let p = presence_from(&mut romeo, &format!("{jj}/balcony"));
        assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
        nothing_from(&mut romeo, &jj);

        // Directed presence again, then the connection drops without a word.
        juliet.send(&format!("<presence to='{rj}'/>"));
        presence_from(&mut romeo, &format!("{jj}/balcony"));
        drop(juliet);
        let p = presence_from(&mut romeo, &format!("{jj}/balcony"));
        assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
        nothing_from(&mut romeo, &jj);
    }
}

#[test]
fn presence_errors_go_back_to_the_sender_and_are_never_answered() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (j, r, _) = names(shards);
        let (jj, rj) = (format!("{j}@localhost"), format!("{r}@localhost"));
        server.add_user(&jj, "pw");
        server.add_user(&rj, "pw");
        let mut juliet = Client::login(&server, &jj, "pw", "balcony");
        juliet.available(0);
        let mut romeo = Client::login(&server, &rj, "pw", "r");
        romeo.available(0);

        // Directed presence to a domain nobody serves: an error presence comes back to the session.
        juliet.send("<presence to='someone@unreachable.example' id='p1'/>");
        let e = juliet.el();
        assert_eq!(e.name, "presence", "{e}");
        assert_eq!(e.attr("type"), Some("error"), "{e}");
        assert_eq!(e.attr("id"), Some("p1"));
        assert_eq!(
            common::error_condition(&e).as_deref(),
            Some("remote-server-not-found")
        );

        // A presence error to a full JID reaches that resource; to the bare JID it is dropped
        // (RFC 6121 §8.5.2.1.1), and it is never answered with an error.
        romeo.send(&format!(
            "<presence to='{jj}/balcony' type='error' id='e1'><error type='cancel'>\
             <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        ));
        let e = presence_from(&mut juliet, &format!("{rj}/r"));
        assert_eq!(e.attr("type"), Some("error"), "{e}");
        assert_eq!(e.attr("id"), Some("e1"));
        romeo.send(&format!(
            "<presence to='{jj}' type='error' id='e2'><error type='cancel'>\
             <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        ));
        romeo.send(&format!(
            "<presence to='{jj}/gone' type='error' id='e3'><error type='cancel'>\
             <item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        ));
        nothing_from(&mut juliet, &rj);
        nothing_from(&mut romeo, &jj);
    }
}

#[test]
fn a_session_replaced_by_the_same_full_jid_goes_unavailable_first() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (j, r, _) = names(shards);
        let (jj, rj) = (format!("{j}@localhost"), format!("{r}@localhost"));
        server.add_user(&jj, "pw");
        server.add_user(&rj, "pw");
        server.roster_add(&jj, &rj, "both");
        server.roster_add(&rj, &jj, "both");
        let mut romeo = Client::login(&server, &rj, "pw", "r");
        romeo.available(0);
        let mut juliet = Client::login(&server, &jj, "pw", "balcony");
        juliet.send("<presence><show>away</show></presence>");
        presence_from(&mut romeo, &format!("{jj}/balcony"));

        // A second connection binds the same resource: the first ends with `conflict`, and Romeo is
        // told it went, even though the new one has not sent presence.
        let _again = Client::login(&server, &jj, "pw", "balcony");
        assert_eq!(juliet.stream_error().as_deref(), Some("conflict"));
        let p = presence_from(&mut romeo, &format!("{jj}/balcony"));
        assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
        nothing_from(&mut romeo, &jj);
    }
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(
    presence_flows_along_subscriptions,
    directed_presence_is_ended_by_unavailable_and_by_a_dropped_connection,
);

//! RFC 6121 §8.5 and RFC 6120 §10 routing over real TCP, with 1 and 2 shards and, with 2 shards, sender
//! and recipient on different home shards: messages to full and bare JIDs (priority rules), IQs between
//! users and to the server, presence to one's own resources, unknown users and resources, other domains,
//! and no error in reply to an error. Every `from` is stamped by the server.

mod common;

use std::time::Duration;

use common::{Client, Got, SHARDS, TestServer};
use rjabberd::placement::home;
use rjabberd::proto::xml::Element;

/// Two account names whose home shards differ when there are two shards.
fn pair(shards: usize) -> (String, String) {
    let first = "alice".to_string();
    let a = home(&format!("{first}@localhost"), shards).shard;
    for i in 0..100 {
        let other = format!("bob{i}");
        if shards == 1 || home(&format!("{other}@localhost"), shards).shard != a {
            return (first, other);
        }
    }
    unreachable!()
}

fn error_condition(e: &Element) -> Option<String> {
    e.child("error")?
        .child_elements()
        .find(|c| c.name != "text")
        .map(|c| c.name.clone())
}

fn quiet(c: &mut Client) {
    let got = c.drain(Duration::from_millis(300));
    assert!(got.is_empty(), "nothing more expected, got {got:?}");
}

#[test]
fn messages_to_full_and_bare_jids() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (a, b) = pair(shards);
        server.add_user(&format!("{a}@localhost"), "pw");
        server.add_user(&format!("{b}@localhost"), "pw");
        let mut alice = Client::login(&server, &format!("{a}@localhost"), "pw", "phone");
        let mut bob_hi = Client::login(&server, &format!("{b}@localhost"), "pw", "desk");
        let mut bob_lo = Client::login(&server, &format!("{b}@localhost"), "pw", "laptop");
        let mut bob_neg = Client::login(&server, &format!("{b}@localhost"), "pw", "bot");
        bob_hi.available(5);
        bob_hi.drain(Duration::from_millis(200));
        bob_lo.available(1);
        bob_neg.available(-1);
        for c in [&mut bob_hi, &mut bob_lo, &mut bob_neg] {
            c.drain(Duration::from_millis(200));
        }

        // To a full JID: exactly that resource, `from` stamped with the sender's full JID.
        alice.send(&format!(
            "<message to='{b}@localhost/laptop' id='m1' type='chat'><body>one</body></message>"
        ));
        let m = bob_lo.el();
        assert_eq!(
            m.attr("from"),
            Some(format!("{a}@localhost/phone").as_str()),
            "{m}"
        );
        assert_eq!(m.child("body").unwrap().text(), "one");
        quiet(&mut bob_hi);

        // A forged `from` of the sender's own bare JID is replaced by the full JID.
        alice.send(&format!("<message from='{a}@localhost' to='{b}@localhost/desk' id='m2'><body>two</body></message>"));
        assert_eq!(
            bob_hi.el().attr("from"),
            Some(format!("{a}@localhost/phone").as_str())
        );

        // To the bare JID: the highest non-negative priority only.
        alice.send(&format!(
            "<message to='{b}@localhost' id='m3' type='chat'><body>three</body></message>"
        ));
        assert_eq!(bob_hi.el().attr("id"), Some("m3"));
        quiet(&mut bob_lo);
        quiet(&mut bob_neg);

        // To an unavailable resource: a chat message falls back to the bare JID rules.
        alice.send(&format!(
            "<message to='{b}@localhost/gone' id='m4' type='chat'><body>four</body></message>"
        ));
        assert_eq!(bob_hi.el().attr("id"), Some("m4"));

        // Headline to the bare JID: every non-negative available resource.
        alice.send(&format!(
            "<message to='{b}@localhost' id='m5' type='headline'><body>five</body></message>"
        ));
        assert_eq!(bob_hi.el().attr("id"), Some("m5"));
        assert_eq!(bob_lo.el().attr("id"), Some("m5"));
        quiet(&mut bob_neg);
        quiet(&mut alice);
    }
}

#[test]
fn undeliverable_and_unknown() {
    for shards in SHARDS {
        // Without mod_offline (its storage is tests/xep0160_offline.rs): the RFC's error path.
        let server = TestServer::start(shards, "[modules]\nmod_disco = true\nmod_ping = true\n");
        let (a, b) = pair(shards);
        server.add_user(&format!("{a}@localhost"), "pw");
        server.add_user(&format!("{b}@localhost"), "pw");
        let mut alice = Client::login(&server, &format!("{a}@localhost"), "pw", "phone");

        // An existing user with no session and no offline storage: service-unavailable.
        alice.send(&format!(
            "<message to='{b}@localhost' id='o1' type='chat'><body>x</body></message>"
        ));
        let e = alice.el();
        assert_eq!(
            (e.attr("type"), e.attr("id")),
            (Some("error"), Some("o1")),
            "{e}"
        );
        assert_eq!(e.attr("from"), Some(format!("{b}@localhost").as_str()));
        assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));

        // No such user: message and IQ get service-unavailable, presence is dropped.
        alice.send("<message to='nobody@localhost' id='u1'><body>x</body></message>");
        assert_eq!(
            error_condition(&alice.el()).as_deref(),
            Some("service-unavailable")
        );
        alice.send("<iq to='nobody@localhost/r' type='get' id='u2'><query xmlns='jabber:iq:version'/></iq>");
        assert_eq!(
            error_condition(&alice.el()).as_deref(),
            Some("service-unavailable")
        );
        alice.send("<presence to='nobody@localhost'/>");
        quiet(&mut alice);

        // Another domain: remote-server-not-found until s2s exists.
        alice.send("<message to='juliet@capulet.example' id='r1'><body>x</body></message>");
        let e = alice.el();
        assert_eq!(
            error_condition(&e).as_deref(),
            Some("remote-server-not-found"),
            "{e}"
        );
        assert_eq!(e.attr("from"), Some("juliet@capulet.example"));

        // The server itself and a bare JID: answered by the IQ handlers (mod_ping is on by default);
        // a namespace nobody handles is service-unavailable.
        alice.send("<iq to='localhost' type='get' id='s1'><ping xmlns='urn:xmpp:ping'/></iq>");
        let pong = alice.el();
        assert_eq!(pong.attr("type"), Some("result"), "{pong}");
        assert_eq!(pong.attr("from"), Some("localhost"));
        alice.send("<iq to='localhost' type='get' id='s0'><query xmlns='jabber:iq:roster'/></iq>");
        assert_eq!(
            error_condition(&alice.el()).as_deref(),
            Some("service-unavailable")
        );
        alice.send(&format!(
            "<iq to='{b}@localhost' type='get' id='s2'><query xmlns='jabber:iq:roster'/></iq>"
        ));
        assert_eq!(
            error_condition(&alice.el()).as_deref(),
            Some("service-unavailable")
        );
        alice.send("<iq type='get' id='s3'><query xmlns='jabber:iq:roster'/></iq>");
        assert_eq!(
            error_condition(&alice.el()).as_deref(),
            Some("service-unavailable")
        );
        // A malformed address.
        alice.send("<message to='a@b@c' id='j1'/>");
        assert_eq!(
            error_condition(&alice.el()).as_deref(),
            Some("jid-malformed")
        );

        // Never an error in reply to an error.
        alice.send("<message to='nobody@localhost' type='error' id='e1'><error type='cancel'><gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>");
        alice.send("<iq to='localhost' type='error' id='e2'/>");
        alice.send("<message to='x@elsewhere.example' type='error' id='e3'/>");
        alice.send("<iq to='localhost' type='result' id='e4'/>");
        quiet(&mut alice);
    }
}

#[test]
fn iq_between_users_and_presence_to_own_resources() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (a, b) = pair(shards);
        server.add_user(&format!("{a}@localhost"), "pw");
        server.add_user(&format!("{b}@localhost"), "pw");
        let mut alice = Client::login(&server, &format!("{a}@localhost"), "pw", "phone");
        let mut alice2 = Client::login(&server, &format!("{a}@localhost"), "pw", "tablet");
        let mut bob = Client::login(&server, &format!("{b}@localhost"), "pw", "desk");

        // An IQ to another user's full JID is routed; the answer comes back.
        alice.send(&format!(
            "<iq to='{b}@localhost/desk' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>"
        ));
        let q = bob.el();
        assert_eq!(
            (q.name.as_str(), q.attr("from")),
            ("iq", Some(format!("{a}@localhost/phone").as_str())),
            "{q}"
        );
        bob.send(&format!("<iq to='{a}@localhost/phone' type='result' id='v1'><query xmlns='jabber:iq:version'><name>t</name></query></iq>"));
        let r = alice.el();
        assert_eq!(
            (r.attr("type"), r.attr("from")),
            (Some("result"), Some(format!("{b}@localhost/desk").as_str())),
            "{r}"
        );

        // Presence: goes to the account's own available resources (and echoes), not to other users.
        alice2.available(0);
        alice.send("<presence><show>away</show></presence>");
        let p1 = alice.el();
        let p2 = alice2.el();
        for p in [&p1, &p2] {
            assert_eq!(
                p.attr("from"),
                Some(format!("{a}@localhost/phone").as_str()),
                "{p}"
            );
        }
        quiet(&mut bob);

        // A session that ends without unavailable presence: the other resources are told.
        drop(alice);
        let gone = alice2.el();
        assert_eq!(
            (gone.attr("type"), gone.attr("from")),
            (
                Some("unavailable"),
                Some(format!("{a}@localhost/phone").as_str())
            ),
            "{gone}"
        );

        // Directed presence to another user reaches their available resources only.
        bob.available(0);
        alice2.send(&format!("<presence to='{b}@localhost'/>"));
        let p = bob.el();
        assert_eq!(
            p.attr("from"),
            Some(format!("{a}@localhost/tablet").as_str()),
            "{p}"
        );
        assert!(matches!(
            bob.next_within(Duration::from_millis(200)),
            None | Some(Got::El(_))
        ));
    }
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(messages_to_full_and_bare_jids, undeliverable_and_unknown,);

//! XEP-0160 offline messages (`mod_offline`, on by default) over real TCP, with 1 and 2 shards: chat and
//! normal messages to an account with no available session are kept, from any shard and from a
//! component-less sender on another host, and delivered in order after the account's next initial
//! presence, each with a XEP-0203 delay stamp and the original sender; nothing is delivered before
//! presence; headlines are not kept; beyond `max_messages` the sender gets `service-unavailable`; the
//! server advertises `msgoffline`; the messages survive a restart.

mod common;

use std::time::Duration;

use common::{Client, Got, SHARDS, TestServer, error_condition};

fn messages(c: &mut Client, n: usize) -> Vec<rjabberd::proto::xml::Element> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.next() {
            Got::El(e) if e.name == "message" => out.push(e),
            Got::El(_) => {}
            other => panic!("{other:?}"),
        }
    }
    out
}

#[test]
fn kept_then_delivered_after_presence() {
    for shards in SHARDS {
        let mut server = TestServer::start(
            shards,
            "[modules.mod_offline]\nmax_messages = 3\n[modules.mod_disco]\n",
        );
        for u in ["alice@localhost", "bob@localhost", "carol@example.net"] {
            server.add_user(u, "pw");
        }
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        let mut carol = Client::login(&server, "carol@example.net", "pw", "r");
        alice.send("<message to='bob@localhost' id='1' type='chat'><body>one</body></message>");
        carol.send("<message to='bob@localhost/gone' id='2'><body>two</body></message>");
        alice
            .send("<message to='bob@localhost' id='h' type='headline'><body>news</body></message>");
        alice.send("<message to='bob@localhost' id='3' type='chat'><body>three</body></message>");
        // The fourth is over the limit of 3.
        std::thread::sleep(Duration::from_millis(300));
        alice.send("<message to='bob@localhost' id='4' type='chat'><body>four</body></message>");
        let e = alice.el();
        assert_eq!(
            (e.attr("id"), error_condition(&e).as_deref()),
            (Some("4"), Some("service-unavailable")),
            "{e}"
        );
        let quiet = alice.drain(Duration::from_millis(300));
        assert!(quiet.is_empty(), "{quiet:?}");
        let r = alice.iq(
            Some("localhost"),
            "get",
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        );
        assert!(
            r.child("query")
                .unwrap()
                .child_elements()
                .any(|f| f.attr("var") == Some("msgoffline")),
            "{r}"
        );

        // Kept across a restart.
        drop(alice);
        drop(carol);
        server.restart();
        let mut bob = Client::login(&server, "bob@localhost", "pw", "desk");
        // Nothing before initial presence.
        let early = bob.drain(Duration::from_millis(300));
        assert!(early.is_empty(), "{early:?}");
        bob.available(0);
        let got = messages(&mut bob, 3);
        // In the order they arrived: one sender's messages in its order (two senders may interleave).
        let ids: Vec<&str> = got.iter().map(|m| m.attr_s("id")).collect();
        let pos = |id: &str| ids.iter().position(|i| *i == id).unwrap();
        assert!(pos("1") < pos("3"), "{ids:?}");
        let two = &got[pos("2")];
        assert_eq!(two.attr("from"), Some("carol@example.net/r"));
        let one = &got[pos("1")];
        assert_eq!(one.attr("from"), Some("alice@localhost/r"));
        assert_eq!(one.child("body").unwrap().text(), "one");
        let delay = one.child("delay").expect("a delay stamp");
        assert_eq!(delay.attr("xmlns"), Some("urn:xmpp:delay"));
        assert_eq!(delay.attr("from"), Some("localhost"));
        assert!(delay.attr_s("stamp").ends_with('Z'));
        // Delivered once: a second session finds nothing.
        let mut bob2 = Client::login(&server, "bob@localhost", "pw", "laptop");
        bob2.available(0);
        let rest: Vec<Got> = bob2
            .drain(Duration::from_millis(400))
            .into_iter()
            .filter(|g| matches!(g, Got::El(e) if e.name == "message"))
            .collect();
        assert!(rest.is_empty(), "{rest:?}");
    }
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(kept_then_delivered_after_presence,);

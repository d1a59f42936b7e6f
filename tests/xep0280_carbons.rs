//! XEP-0280 message carbons over real TCP, with 1 and 2 shards and, with 2, the user and the contact on
//! different home shards. Alice has three resources: `a1` (priority 5) and `a2` (priority 1) enable
//! carbons, `a3` (priority 0) does not; Bob is the contact. Each step checks exactly what every
//! connection got: the original where the delivery rules send it, a `<received/>` copy to each other
//! carbons-enabled resource for what reaches Alice (at her bare JID or a full JID), a `<sent/>` copy to
//! each other carbons-enabled resource for what she sends, and nothing more; `<private/>` and XEP-0334
//! `<no-copy/>` stop copies, a message that is not eligible gets none, and after `<disable/>` a
//! resource gets none, nor does a session that replaced one with the same full JID until it enables
//! them; a resource that enabled carbons before its initial presence gets copies. The server
//! advertises the feature where the module runs (per host) and stops copying when a reload stops the
//! module, and refuses an IQ that tries to switch carbons for another account.
//!
//! "Nothing more" is checked without guessing at timing: the copies of a stanza are written on the
//! account's home shard before (sent) or right after (received) the original is handed on, so once the
//! original has been seen, a ping round trip on each of Alice's connections brings back everything
//! written to it before; what follows the answer within a short quiet spell is counted too.

mod common;

use std::time::Duration;

use common::{Client, Got, SHARDS, TestServer, error_condition};
use rjabberd::proto::xml::Element;

const NS: &str = "urn:xmpp:carbons:2";
const DOMAIN: &str = "localhost";

/// Alice and, with two shards, a contact homed on the other shard.
fn names(shards: usize) -> (String, String) {
    let alice = "alice@localhost";
    (alice.into(), common::on_another_shard(alice, "bob", shards))
}

/// What one connection got, simplified for exact comparison.
#[derive(Debug, PartialEq, Eq)]
enum Msg {
    /// An original: its sender and body.
    Plain { from: String, body: String },
    /// A carbon copy: `sent` or `received`, and the forwarded message's from, to and body.
    Carbon {
        kind: String,
        from: String,
        to: String,
        body: String,
    },
}

fn plain(from: &str, body: &str) -> Msg {
    Msg::Plain {
        from: from.into(),
        body: body.into(),
    }
}

fn carbon(kind: &str, from: &str, to: &str, body: &str) -> Msg {
    Msg::Carbon {
        kind: kind.into(),
        from: from.into(),
        to: to.into(),
        body: body.into(),
    }
}

fn body(m: &Element) -> String {
    m.child("body").map(|b| b.text()).unwrap_or_default()
}

/// Reads a message as `c` (whose account is `account`) got it, checking a copy's envelope (§7, §8).
fn classify(c: &Client, account: &str, m: &Element) -> Msg {
    let wrapper = m
        .child_elements()
        .find(|e| (e.name == "sent" || e.name == "received") && e.attr("xmlns") == Some(NS));
    let Some(wrapper) = wrapper else {
        return plain(m.attr_s("from"), &body(m));
    };
    assert_eq!(
        m.attr("from"),
        Some(account),
        "a copy comes from the bare JID: {m}"
    );
    assert_eq!(m.attr("to"), Some(c.jid.as_str()), "{m}");
    let fwd = wrapper.child("forwarded").expect("forwarded");
    assert_eq!(fwd.attr("xmlns"), Some("urn:xmpp:forward:0"), "{m}");
    let inner = fwd.child("message").expect("the original");
    assert_eq!(inner.attr("xmlns"), Some("jabber:client"), "{m}");
    assert_eq!(
        m.attr("type"),
        inner.attr("type"),
        "the copy keeps the type: {m}"
    );
    carbon(
        &wrapper.name,
        inner.attr_s("from"),
        inner.attr_s("to"),
        &body(inner),
    )
}

/// Everything `c` got up to now: a ping round trip, then a quiet spell.
fn settle(c: &mut Client, account: &str) -> Vec<Msg> {
    let r = c.iq(Some(DOMAIN), "get", "<ping xmlns='urn:xmpp:ping'/>");
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let mut out = Vec::new();
    for g in c.drain(Duration::from_millis(150)) {
        match g {
            Got::El(m) if m.name == "message" => out.push(classify(c, account, &m)),
            Got::El(p) if p.name == "presence" => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

/// The next message `c` gets (waiting for it), classified.
fn next_message(c: &mut Client, account: &str) -> Msg {
    loop {
        let e = c.el();
        if e.name == "message" {
            return classify(c, account, &e);
        }
        assert_eq!(e.name, "presence", "{e}");
    }
}

struct Party {
    alice: String,
    bob: String,
    a: Vec<Client>,
    b: Client,
}

impl Party {
    fn full(&self, i: usize) -> String {
        self.a[i].jid.clone()
    }

    fn bob_full(&self) -> String {
        self.b.jid.clone()
    }

    /// What each of Alice's connections and Bob's got: one list each, Bob's last.
    fn settle_all(&mut self) -> Vec<Vec<Msg>> {
        let mut out = Vec::new();
        for c in self.a.iter_mut() {
            out.push(settle(c, &self.alice));
        }
        out.push(settle(&mut self.b, &self.bob));
        out
    }
}

fn set_carbons(c: &mut Client, what: &str) {
    let r = c.iq(None, "set", &format!("<{what} xmlns='{NS}'/>"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
}

fn party(server: &TestServer, shards: usize) -> Party {
    let (alice, bob) = names(shards);
    server.add_user(&alice, "pw");
    server.add_user(&bob, "pw");
    let mut a = Vec::new();
    for (r, priority) in [("a1", 5), ("a2", 1), ("a3", 0)] {
        let mut c = Client::login(server, &alice, "pw", r);
        c.available(priority);
        a.push(c);
    }
    let mut b = Client::login(server, &bob, "pw", "r");
    b.available(0);
    set_carbons(&mut a[0], "enable");
    set_carbons(&mut a[1], "enable");
    // Enabling twice is no error (§10.1).
    set_carbons(&mut a[1], "enable");
    let mut p = Party { alice, bob, a, b };
    p.settle_all();
    p
}

#[test]
fn received_copies_go_to_the_other_enabled_resources() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let mut p = party(&server, shards);
        let (alice, bob) = (p.alice.clone(), p.bob_full());
        let (a2, a3) = (p.full(1), p.full(2));

        // To the bare JID: the original to a1 (highest priority), a copy to a2, nothing to a3.
        p.b.send(&format!(
            "<message to='{alice}' type='chat'><body>r1</body></message>"
        ));
        assert_eq!(next_message(&mut p.a[0], &alice), plain(&bob, "r1"));
        let got = p.settle_all();
        assert_eq!(
            got,
            vec![
                vec![],
                vec![carbon("received", &bob, &alice, "r1")],
                vec![],
                vec![]
            ],
            "{shards} shard(s)"
        );

        // To the full JID of the resource without carbons: both enabled resources get a copy.
        p.b.send(&format!(
            "<message to='{a3}' type='chat'><body>r2</body></message>"
        ));
        assert_eq!(next_message(&mut p.a[2], &alice), plain(&bob, "r2"));
        let got = p.settle_all();
        assert_eq!(
            got,
            vec![
                vec![carbon("received", &bob, &a3, "r2")],
                vec![carbon("received", &bob, &a3, "r2")],
                vec![],
                vec![]
            ],
            "{shards} shard(s)"
        );

        // To the full JID of an enabled resource: no copy to itself; a normal message with a body.
        p.b.send(&format!("<message to='{a2}'><body>r3</body></message>"));
        assert_eq!(next_message(&mut p.a[1], &alice), plain(&bob, "r3"));
        let got = p.settle_all();
        assert_eq!(
            got,
            vec![
                vec![carbon("received", &bob, &a2, "r3")],
                vec![],
                vec![],
                vec![]
            ],
            "{shards} shard(s)"
        );
    }
}

#[test]
fn sent_copies_go_to_the_other_enabled_resources() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let mut p = party(&server, shards);
        let (bob, bob_bare) = (p.bob_full(), p.bob.clone());
        let (a1, a3) = (p.full(0), p.full(2));

        // From the resource without carbons: a copy to each enabled one (§8: irrespective of the
        // sender's own setting).
        p.a[2].send(&format!(
            "<message to='{bob}' type='chat'><body>s1</body></message>"
        ));
        assert_eq!(next_message(&mut p.b, &bob_bare), plain(&a3, "s1"));
        let got = p.settle_all();
        assert_eq!(
            got,
            vec![
                vec![carbon("sent", &a3, &bob, "s1")],
                vec![carbon("sent", &a3, &bob, "s1")],
                vec![],
                vec![]
            ],
            "{shards} shard(s)"
        );

        // From an enabled resource, to the contact's bare JID: never a copy back to the sender.
        p.a[0].send(&format!(
            "<message to='{bob_bare}' type='chat'><body>s2</body></message>"
        ));
        assert_eq!(next_message(&mut p.b, &bob_bare), plain(&a1, "s2"));
        let got = p.settle_all();
        assert_eq!(
            got,
            vec![
                vec![],
                vec![carbon("sent", &a1, &bob_bare, "s2")],
                vec![],
                vec![]
            ],
            "{shards} shard(s)"
        );
    }
}

#[test]
fn private_no_copy_and_ineligible_messages_get_no_copies() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let mut p = party(&server, shards);
        let (alice, bob, bob_bare) = (p.alice.clone(), p.bob_full(), p.bob.clone());
        let (a1, a3) = (p.full(0), p.full(2));

        // §9: private, received; the original reaches a1 without its <private/>.
        p.b.send(&format!(
            "<message to='{alice}' type='chat'><body>p1</body><private xmlns='{NS}'/></message>"
        ));
        let m = loop {
            let e = p.a[0].el();
            if e.name == "message" {
                break e;
            }
        };
        assert_eq!(body(&m), "p1");
        assert!(
            !m.child_elements().any(|c| c.name == "private"),
            "the receiving server removes <private/>: {m}"
        );
        assert_eq!(p.settle_all(), vec![vec![], vec![], vec![], vec![]]);

        // Private, sent.
        p.a[0].send(&format!(
            "<message to='{bob}' type='chat'><body>p2</body><private xmlns='{NS}'/></message>"
        ));
        assert_eq!(next_message(&mut p.b, &bob_bare), plain(&a1, "p2"));
        assert_eq!(p.settle_all(), vec![vec![], vec![], vec![], vec![]]);

        // XEP-0334 no-copy, received at a full JID and sent.
        p.b.send(&format!(
            "<message to='{a3}' type='chat'><body>n1</body><no-copy xmlns='urn:xmpp:hints'/></message>"
        ));
        assert_eq!(next_message(&mut p.a[2], &alice), plain(&bob, "n1"));
        assert_eq!(p.settle_all(), vec![vec![], vec![], vec![], vec![]]);
        p.a[2].send(&format!(
            "<message to='{bob}' type='chat'><body>n2</body><no-copy xmlns='urn:xmpp:hints'/></message>"
        ));
        assert_eq!(next_message(&mut p.b, &bob_bare), plain(&a3, "n2"));
        assert_eq!(p.settle_all(), vec![vec![], vec![], vec![], vec![]]);

        // Not eligible: a normal message without a body, a headline.
        p.b.send(&format!(
            "<message to='{a3}'><received xmlns='urn:xmpp:receipts' id='x'/></message>"
        ));
        assert_eq!(next_message(&mut p.a[2], &alice), plain(&bob, ""));
        assert_eq!(p.settle_all(), vec![vec![], vec![], vec![], vec![]]);
        p.b.send(&format!(
            "<message to='{a3}' type='headline'><body>h1</body></message>"
        ));
        assert_eq!(next_message(&mut p.a[2], &alice), plain(&bob, "h1"));
        assert_eq!(
            p.settle_all(),
            vec![vec![], vec![], vec![], vec![]],
            "{shards} shard(s)"
        );
    }
}

#[test]
fn disable_and_a_closed_session_stop_copies() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let mut p = party(&server, shards);
        let (alice, bob, bob_bare) = (p.alice.clone(), p.bob_full(), p.bob.clone());
        let a3 = p.full(2);

        set_carbons(&mut p.a[1], "disable");
        // Disabling twice is no error either.
        set_carbons(&mut p.a[1], "disable");
        p.b.send(&format!(
            "<message to='{a3}' type='chat'><body>d1</body></message>"
        ));
        assert_eq!(next_message(&mut p.a[2], &alice), plain(&bob, "d1"));
        assert_eq!(
            p.settle_all(),
            vec![
                vec![carbon("received", &bob, &a3, "d1")],
                vec![],
                vec![],
                vec![]
            ]
        );
        p.a[2].send(&format!(
            "<message to='{bob}' type='chat'><body>d2</body></message>"
        ));
        assert_eq!(next_message(&mut p.b, &bob_bare), plain(&a3, "d2"));
        assert_eq!(
            p.settle_all(),
            vec![
                vec![carbon("sent", &a3, &bob, "d2")],
                vec![],
                vec![],
                vec![]
            ]
        );

        // The last enabled resource leaves: nobody gets copies, and the others' traffic goes on.
        let a1 = p.a.remove(0);
        drop(a1);
        // Its unavailable presence reaches the others: then its session is gone.
        for c in p.a.iter_mut() {
            loop {
                let e = c.el();
                if e.name == "presence" && e.attr("type") == Some("unavailable") {
                    break;
                }
            }
        }
        p.b.send(&format!(
            "<message to='{a3}' type='chat'><body>d3</body></message>"
        ));
        assert_eq!(next_message(&mut p.a[1], &alice), plain(&bob, "d3"));
        assert_eq!(
            p.settle_all(),
            vec![vec![], vec![], vec![]],
            "{shards} shard(s)"
        );
        // A new session with a1's full JID starts without carbons.
        let mut again = Client::login(&server, &alice, "pw", "a1");
        again.available(5);
        p.a.push(again);
        p.settle_all();
        p.a[1].send(&format!(
            "<message to='{bob}' type='chat'><body>d4</body></message>"
        ));
        assert_eq!(next_message(&mut p.b, &bob_bare), plain(&a3, "d4"));
        assert_eq!(
            p.settle_all(),
            vec![vec![], vec![], vec![], vec![]],
            "{shards} shard(s)"
        );
    }
}

#[test]
fn only_the_account_itself_switches_carbons() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (alice, bob) = names(shards);
        server.add_user(&alice, "pw");
        server.add_user(&bob, "pw");
        let mut a1 = Client::login(&server, &alice, "pw", "a1");
        a1.available(1);
        let mut a2 = Client::login(&server, &alice, "pw", "a2");
        a2.available(0);
        let mut b = Client::login(&server, &bob, "pw", "r");
        b.available(0);
        for what in ["enable", "disable"] {
            let r = b.iq(Some(&alice), "set", &format!("<{what} xmlns='{NS}'/>"));
            assert_eq!(r.attr("type"), Some("error"), "{r}");
            assert_eq!(
                error_condition(&r).as_deref(),
                Some("not-allowed"),
                "{shards} shard(s): {r}"
            );
        }
        // Bob's attempt changed nothing: Alice has no carbons.
        let r = b.iq(Some(&alice), "set", &format!("<enable xmlns='{NS}'/>"));
        assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"), "{r}");
        b.send(&format!(
            "<message to='{}' type='chat'><body>x</body></message>",
            a1.jid
        ));
        assert_eq!(next_message(&mut a1, &alice), plain(&b.jid, "x"));
        assert_eq!(settle(&mut a2, &alice), vec![]);
        // A get is not how carbons are switched.
        let r = a1.iq(None, "get", &format!("<enable xmlns='{NS}'/>"));
        assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"), "{r}");
        // Neither is an unknown element.
        let r = a1.iq(None, "set", &format!("<toggle xmlns='{NS}'/>"));
        assert_eq!(error_condition(&r).as_deref(), Some("bad-request"), "{r}");
    }
}

fn features(c: &mut Client, to: &str) -> Vec<String> {
    let r = c.iq(
        Some(to),
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    );
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    r.child("query")
        .unwrap()
        .child_elements()
        .filter(|f| f.name == "feature")
        .map(|f| f.attr_s("var").to_string())
        .collect()
}

#[test]
fn the_feature_is_advertised_where_the_module_runs() {
    for shards in SHARDS {
        // The default module set on localhost; example.net turns carbons off.
        let server = TestServer::start(shards, "[host.modules]\nmod_carbons = false\n");
        server.add_user("alice@localhost", "pw");
        server.add_user("alice@example.net", "pw");
        let mut on = Client::login(&server, "alice@localhost", "pw", "r");
        assert!(
            features(&mut on, "localhost").contains(&NS.to_string()),
            "{shards} shard(s)"
        );
        set_carbons(&mut on, "enable");
        let mut off = Client::login(&server, "alice@example.net", "pw", "r");
        assert!(!features(&mut off, "example.net").contains(&NS.to_string()));
        let r = off.iq(None, "set", &format!("<enable xmlns='{NS}'/>"));
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("service-unavailable"),
            "{r}"
        );
    }
}

#[test]
fn a_session_that_replaces_another_starts_without_carbons() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (alice, bob) = names(shards);
        server.add_user(&alice, "pw");
        server.add_user(&bob, "pw");
        let mut a1 = Client::login(&server, &alice, "pw", "a1");
        a1.available(1);
        let mut old = Client::login(&server, &alice, "pw", "a2");
        old.available(0);
        let mut b = Client::login(&server, &bob, "pw", "r");
        b.available(0);
        set_carbons(&mut a1, "enable");
        set_carbons(&mut old, "enable");
        // The same full JID binds again: the old connection ends with `conflict`.
        let mut new = Client::login(&server, &alice, "pw", "a2");
        assert_eq!(old.stream_error().as_deref(), Some("conflict"));
        new.available(0);
        settle(&mut a1, &alice);
        settle(&mut new, &alice);
        let bob_full = b.jid.clone();
        let to_a1 = |b: &mut Client, body: &str| {
            b.send(&format!(
                "<message to='{alice}/a1' type='chat'><body>{body}</body></message>"
            ));
        };
        to_a1(&mut b, "c1");
        assert_eq!(next_message(&mut a1, &alice), plain(&bob_full, "c1"));
        assert_eq!(settle(&mut new, &alice), vec![], "{shards} shard(s)");
        // Once it enables them, the old session's end has not taken them away.
        set_carbons(&mut new, "enable");
        to_a1(&mut b, "c2");
        assert_eq!(next_message(&mut a1, &alice), plain(&bob_full, "c2"));
        assert_eq!(
            settle(&mut new, &alice),
            vec![carbon("received", &bob_full, &format!("{alice}/a1"), "c2")],
            "{shards} shard(s)"
        );
    }
}

#[test]
fn a_resource_that_enabled_carbons_before_its_presence_gets_copies() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (alice, bob) = names(shards);
        server.add_user(&alice, "pw");
        server.add_user(&bob, "pw");
        let mut a1 = Client::login(&server, &alice, "pw", "a1");
        a1.available(0);
        // Enabled, and no presence yet (as the XEP's wiki advises clients to do).
        let mut early = Client::login(&server, &alice, "pw", "early");
        set_carbons(&mut early, "enable");
        let mut b = Client::login(&server, &bob, "pw", "r");
        b.available(0);
        settle(&mut a1, &alice);
        let bob_full = b.jid.clone();
        b.send(&format!(
            "<message to='{alice}' type='chat'><body>e1</body></message>"
        ));
        assert_eq!(next_message(&mut a1, &alice), plain(&bob_full, "e1"));
        assert_eq!(
            settle(&mut early, &alice),
            vec![carbon("received", &bob_full, &alice, "e1")],
            "{shards} shard(s)"
        );
        a1.send(&format!(
            "<message to='{bob_full}' type='chat'><body>e2</body></message>"
        ));
        assert_eq!(next_message(&mut b, &bob), plain(&a1.jid, "e2"));
        assert_eq!(
            settle(&mut early, &alice),
            vec![carbon("sent", &a1.jid, &bob_full, "e2")],
            "{shards} shard(s)"
        );
        assert_eq!(settle(&mut a1, &alice), vec![]);
    }
}

#[test]
fn a_reload_that_stops_the_module_stops_the_copies() {
    for shards in SHARDS {
        let mut server = TestServer::start(shards, "");
        let mut p = party(&server, shards);
        let (alice, bob) = (p.alice.clone(), p.bob_full());
        server.set_extra("[modules]\nmod_disco = true\nmod_ping = true\n");
        common::signal(server.pid(), libc::SIGHUP);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while server
            .stdout
            .lock()
            .unwrap()
            .iter()
            .all(|l| !l.contains("modules reloaded"))
        {
            assert!(std::time::Instant::now() < deadline, "no reload reported");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Every shard applies the plan within its housekeeping tick.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!features(&mut p.a[0], DOMAIN).contains(&NS.to_string()));
        let r = p.a[0].iq(None, "set", &format!("<enable xmlns='{NS}'/>"));
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("service-unavailable"),
            "{r}"
        );
        p.b.send(&format!(
            "<message to='{alice}' type='chat'><body>after</body></message>"
        ));
        assert_eq!(next_message(&mut p.a[0], &alice), plain(&bob, "after"));
        assert_eq!(
            p.settle_all(),
            vec![vec![], vec![], vec![], vec![]],
            "{shards} shard(s)"
        );
    }
}

//! Routing rules, tested on an in-memory shard ([`crate::shard::testing`]): no sockets, no server start.

use crate::mesh::{Overflow, Peers, Refused, SPILL_CAP, ShardMsg};
use crate::placement::home;
use crate::router::Origin;
use crate::shard::testing::{Harness, run};

#[test]
fn a_message_to_a_full_jid_reaches_that_session_with_from_stamped() {
    run(|| async {
        let h = Harness::new("", &["alice@localhost", "bob@localhost"]);
        let alice = h.login("alice@localhost/a", Some(0));
        let bob = h.login("bob@localhost/b", Some(0));
        let bob2 = h.login("bob@localhost/c", Some(0));
        // The accounts' blocklists are read at login; until then what reaches them waits.
        h.settle(100).await;
        bob.received();
        bob2.received();
        h.send(
            &alice,
            "<message to='bob@localhost/c' id='m1'><body>hi</body></message>",
        );
        let got = bob2.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].attr("from"), Some("alice@localhost/a"));
        assert_eq!(got[0].attr("id"), Some("m1"));
        assert!(bob.received().is_empty(), "the other resource gets nothing");
    });
}

#[test]
fn a_chat_to_a_bare_jid_goes_to_the_highest_priority_and_negative_priority_gets_none() {
    run(|| async {
        let h = Harness::new("", &["alice@localhost", "bob@localhost"]);
        let alice = h.login("alice@localhost/a", Some(0));
        let low = h.login("bob@localhost/low", Some(1));
        let high = h.login("bob@localhost/high", Some(5));
        let hidden = h.login("bob@localhost/neg", Some(-1));
        h.settle(100).await;
        for s in [&low, &high, &hidden] {
            s.received();
        }
        h.send(
            &alice,
            "<message to='bob@localhost' type='chat'><body>x</body></message>",
        );
        assert_eq!(high.received().len(), 1);
        assert!(low.received().is_empty());
        assert!(hidden.received().is_empty());
    });
}

#[test]
fn unreachable_and_malformed_destinations_are_answered_to_the_sender() {
    run(|| async {
        let h = Harness::new("", &["alice@localhost"]);
        let alice = h.login("alice@localhost/a", Some(0));
        h.settle(100).await;
        alice.received();
        h.send(
            &alice,
            "<message to='x@elsewhere.example' id='r'><body>x</body></message>",
        );
        h.send(
            &alice,
            "<message to='a@b@c' id='j'><body>x</body></message>",
        );
        let got = alice.received();
        let condition = |i: usize| {
            got[i]
                .child("error")
                .and_then(|e| e.child_elements().next().map(|c| c.name.clone()))
        };
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].attr("id"), Some("r"));
        assert_eq!(condition(0).as_deref(), Some("remote-server-not-found"));
        assert_eq!(got[1].attr("id"), Some("j"));
        assert_eq!(condition(1).as_deref(), Some("jid-malformed"));
        // An error is never answered with an error.
        h.send(&alice, "<message to='x@elsewhere.example' type='error'/>");
        assert!(alice.received().is_empty());
    });
}

#[test]
fn an_iq_to_the_server_is_answered_by_its_module_and_routed_back() {
    run(|| async {
        let h = Harness::new("", &["alice@localhost"]);
        let alice = h.login("alice@localhost/a", None);
        // The account's blocklist is read at login; until then what it sends waits.
        h.settle(100).await;
        h.send(
            &alice,
            "<iq to='localhost' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        h.send(
            &alice,
            "<iq to='localhost' type='get' id='u'><nope xmlns='urn:x:none'/></iq>",
        );
        h.settle(20).await;
        let got = alice.received();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].attr("type"), Some("result"));
        assert_eq!(got[0].attr("from"), Some("localhost"));
        assert_eq!(got[1].attr("type"), Some("error"));
        assert!(
            got[1]
                .child("error")
                .unwrap()
                .child("service-unavailable")
                .is_some()
        );
    });
}

#[test]
fn a_service_gets_its_stanzas_on_the_senders_shard() {
    run(|| async {
        let h = Harness::new("[modules]\nmod_echo = true\n", &["alice@localhost"]);
        let alice = h.login("alice@localhost/a", Some(0));
        alice.received();
        h.send(
            &alice,
            "<message to='echo.localhost' id='e'><body>back</body></message>",
        );
        let got = alice.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].attr("from"), Some("echo.localhost"));
        assert_eq!(got[0].attr("id"), Some("e"));
    });
}

#[test]
fn a_stanza_for_an_unknown_account_is_bounced_after_the_store_says_so() {
    run(|| async {
        let h = Harness::new("[modules]\nmod_ping = true\n", &["alice@localhost"]);
        let alice = h.login("alice@localhost/a", Some(0));
        alice.received();
        h.send(
            &alice,
            "<message to='nobody@localhost' id='n'><body>x</body></message>",
        );
        h.settle(200).await;
        let got = alice.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0]
                .child("error")
                .unwrap()
                .child("service-unavailable")
                .is_some()
        );
    });
}

#[test]
fn a_second_session_with_the_same_full_jid_replaces_the_first() {
    run(|| async {
        let h = Harness::new("", &["alice@localhost"]);
        let first = h.login("alice@localhost/a", None);
        let _second = h.login("alice@localhost/a", None);
        assert_eq!(
            first.sink.take_kill(),
            Some(crate::proto::errors::StreamErrorCondition::Conflict)
        );
        assert_eq!(h.shard.sessions().borrow().len(), 1);
    });
}

/// Channels that are always full.
struct FullMesh;

impl Peers<ShardMsg> for FullMesh {
    fn try_send_to(&self, _to: usize, msg: ShardMsg) -> Result<(), Refused<ShardMsg>> {
        Err(Refused::Full(msg))
    }
}

/// An account of `host` homed on `shard` of 2.
fn homed_on(shard: usize) -> String {
    (0..)
        .map(|i| format!("user{i}@localhost"))
        .find(|j| home(j, 2).shard == shard)
        .expect("some account lands there")
}

#[test]
fn at_a_full_mesh_server_stanzas_wait_and_session_stanzas_bounce_past_the_cap() {
    assert_eq!(Origin::Server.overflow(), Overflow::Spill);
    assert_eq!(Origin::Component.overflow(), Overflow::Bounce);
    run(|| async {
        let (local, remote) = (homed_on(0), homed_on(1));
        let h = Harness::with_mesh("", &[&local], 2, Some(Box::new(FullMesh)));
        let me = h.login(&format!("{local}/a"), Some(0));
        // The account's blocklist is read at login; until then what it sends waits.
        h.settle(100).await;
        me.received();
        // An IQ answer the server generated for an account on the other shard: it waits, it is not lost.
        h.send_as_server(
            "localhost",
            &format!("<iq to='{remote}/x' type='result' id='answer'/>"),
        );
        assert_eq!(h.shard.waiting_for(1), 1);
        // A session's stanzas wait up to the cap; the next one is answered resource-constraint.
        for i in 1..SPILL_CAP {
            h.send(&me, &format!("<message to='{remote}' id='m{i}'/>"));
        }
        assert_eq!(h.shard.waiting_for(1), SPILL_CAP);
        assert!(me.received().is_empty(), "nothing bounced below the cap");
        h.send(&me, &format!("<message to='{remote}' id='over'/>"));
        let got = me.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].attr("id"), Some("over"));
        assert!(
            got[0]
                .child("error")
                .unwrap()
                .child("resource-constraint")
                .is_some()
        );
        assert!(
            h.shard.backpressured(),
            "connections pause reading long before the cap"
        );
        // What the server generates still waits past the cap.
        h.send_as_server(
            "localhost",
            &format!("<iq to='{remote}/x' type='result' id='answer2'/>"),
        );
        assert_eq!(h.shard.waiting_for(1), SPILL_CAP + 1);
    });
}

#[test]
fn a_stanza_the_server_generates_reaches_a_local_session() {
    run(|| async {
        let h = Harness::new("", &["alice@localhost"]);
        let alice = h.login("alice@localhost/a", Some(0));
        h.settle(100).await;
        alice.received();
        // A generated stanza (an IQ result) routed like any other reaches the session.
        h.send_as_server(
            "localhost",
            "<iq to='alice@localhost/a' type='result' id='r1'/>",
        );
        let got = alice.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].attr("id"), Some("r1"));
    });
}

/// Channels that take everything and remember what went where.
#[derive(Clone, Default)]
struct RecordingMesh(std::rc::Rc<std::cell::RefCell<Vec<(usize, ShardMsg)>>>);

impl Peers<ShardMsg> for RecordingMesh {
    fn try_send_to(&self, to: usize, msg: ShardMsg) -> Result<(), Refused<ShardMsg>> {
        self.0.borrow_mut().push((to, msg));
        Ok(())
    }
}

#[test]
fn a_multicast_crosses_the_mesh_once_per_destination_shard_and_stamps_each_to() {
    run(|| async {
        let on = |shard: usize, n: usize| -> Vec<String> {
            (0..)
                .map(|i| format!("contact{i}@localhost"))
                .filter(|j| home(j, 3).shard == shard)
                .take(n)
                .collect()
        };
        let (here, one, two) = (on(0, 2), on(1, 3), on(2, 2));
        let users: Vec<&str> = here.iter().map(String::as_str).collect();
        let mesh = RecordingMesh::default();
        let h = Harness::with_mesh("", &users, 3, Some(Box::new(mesh.clone())));
        let sessions: Vec<_> = here
            .iter()
            .map(|b| h.login(&format!("{b}/r"), Some(0)))
            .collect();
        h.settle(100).await;
        for s in &sessions {
            s.received();
        }
        let recipients: Vec<std::sync::Arc<str>> = here
            .iter()
            .chain(&one)
            .chain(&two)
            .map(|j| j.as_str().into())
            .collect();
        let presence = crate::proto::xml::parse_element(
            b"<presence xmlns='jabber:client'><show>away</show></presence>",
            &crate::proto::xml::Limits::default(),
        )
        .unwrap();
        h.shard
            .route_multicast(presence, "someone@localhost/x".into(), &recipients);
        let sent = mesh.0.borrow();
        assert_eq!(
            sent.len(),
            2,
            "one message per other shard, not one per contact"
        );
        for (shard, expected) in [(1, &one), (2, &two)] {
            let (_, msg) = sent.iter().find(|(to, _)| *to == shard).unwrap();
            let ShardMsg::Multicast { to, from, .. } = msg else {
                panic!("a multicast message");
            };
            assert_eq!(&**from, "someone@localhost/x");
            let to: Vec<&str> = to.iter().map(|t| &**t).collect();
            assert_eq!(to, expected.iter().map(String::as_str).collect::<Vec<_>>());
        }
        for (s, bare) in sessions.iter().zip(&here) {
            let got = s.received();
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].attr("to"), Some(bare.as_str()));
            assert_eq!(got[0].attr("from"), Some("someone@localhost/x"));
            assert!(got[0].child("show").is_some());
        }
    });
}

#[test]
fn what_a_session_sends_before_its_blocklist_is_read_waits_and_is_checked() {
    use crate::storage::AccountData;
    run(|| async {
        let h = Harness::new("", &["alice@localhost", "bob@localhost", "carol@localhost"]);
        let db = crate::storage::UserDb::open(&h.shard.config().data_dir).unwrap();
        db.data_put(
            "localhost",
            "alice",
            "blocking",
            &[("bob@localhost".into(), Some(Vec::new()))],
        )
        .unwrap();
        let bob = h.login("bob@localhost/b", Some(0));
        let carol = h.login("carol@localhost/c", Some(0));
        // Their presence echoes come once their own lists are known.
        let (mut echoes_b, mut echoes_c) = (0, 0);
        for _ in 0..100 {
            h.settle(20).await;
            echoes_b += bob.received().len();
            echoes_c += carol.received().len();
            if echoes_b > 0 && echoes_c > 0 {
                break;
            }
        }
        // Alice's list is read from the store after her bind: what she sends at once waits for it.
        let alice = h.login("alice@localhost/a", None);
        h.send(
            &alice,
            "<message to='bob@localhost/b' id='no' type='chat'><body>x</body></message>",
        );
        h.send(
            &alice,
            "<message to='carol@localhost/c' id='yes' type='chat'><body>x</body></message>",
        );
        let mut got = Vec::new();
        for _ in 0..100 {
            h.settle(20).await;
            got.extend(alice.received());
            if !got.is_empty() {
                break;
            }
        }
        h.settle(20).await;
        got.extend(alice.received());
        let refused: Vec<_> = got.iter().filter(|e| e.attr("id") == Some("no")).collect();
        assert_eq!(refused.len(), 1, "{got:?}");
        assert!(
            refused[0]
                .child("error")
                .and_then(|e| e.child("blocked"))
                .is_some(),
            "{got:?}"
        );
        assert!(bob.received().is_empty(), "nothing reaches a blocked JID");
        let got = carol.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].attr("id"), Some("yes"));
        assert_eq!(got[0].attr("from"), Some("alice@localhost/a"));
    });
}

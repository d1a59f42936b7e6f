//! The session manager's hooks for watched accounts, on an in-memory shard ([`crate::shard::testing`]):
//! `watched_delivered_packet` names the sessions the delivery rules chose, carries the stanza as it
//! arrived, and does not run when no session got it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::modules::hooks::{WATCHED_DELIVERED, WATCHED_RECEIVE, WatchedDelivered, WatchedPacket};
use crate::modules::{Flow, ModuleOpts, Registrations};
use crate::proto::xml::{Limits, parse_element};
use crate::shard::testing::{Harness, run};

/// What a probe module saw: the sessions and the stanza's body, per run of the hook.
type Seen = Rc<RefCell<Vec<(Vec<Arc<str>>, String)>>>;

fn probe(h: &Harness) -> Seen {
    let seen: Seen = Rc::default();
    let log = seen.clone();
    let regs = Registrations::new()
        .hook(&WATCHED_RECEIVE, 50, |_, p: &mut WatchedPacket| {
            // A handler that alters what is delivered: the hook after still sees what arrived.
            let to = p.stanza.to().unwrap_or_default().into_owned();
            let altered =
                format!("<message xmlns='jabber:client' to='{to}' type='chat'><body>altered</body></message>");
            if let Ok(s) = parse_element(altered.as_bytes(), &Limits::default()) {
                p.stanza = s;
            }
            Flow::Continue
        })
        .hook(&WATCHED_DELIVERED, 50, move |_, d: &mut WatchedDelivered| {
            let body = d
                .stanza
                .to_element()
                .child("body")
                .map(|b| b.text())
                .unwrap_or_default();
            let mut sessions = d.sessions.clone();
            sessions.sort();
            log.borrow_mut().push((sessions, body));
            Flow::Continue
        });
    h.shard.ctx().modules().borrow_mut().install(
        "localhost",
        "mod_probe",
        &ModuleOpts::default(),
        regs,
    );
    seen
}

#[test]
fn watched_delivered_names_the_sessions_the_rules_chose() {
    run(|| async {
        let h = Harness::new(
            "[modules]\nmod_disco = true\n",
            &["alice@localhost", "bob@localhost"],
        );
        let seen = probe(&h);
        let bob = h.login("bob@localhost/b", Some(0));
        let high = h.login("alice@localhost/high", Some(5));
        let low = h.login("alice@localhost/low", Some(1));
        let quiet = h.login("alice@localhost/quiet", None);
        let chat = |to: &str, body: &str| {
            format!("<message to='{to}' type='chat'><body>{body}</body></message>")
        };
        // Not watched: the hook does not run.
        h.send(&bob, &chat("alice@localhost", "unwatched"));
        assert!(seen.borrow().is_empty());
        for session in [&high, &low, &quiet] {
            session.received();
        }
        assert!(h.shard.ctx().watch("alice@localhost", "mod_probe", true));

        h.send(&bob, &chat("alice@localhost", "bare"));
        h.send(&bob, &chat("alice@localhost/low", "full"));
        // A full JID with no session: the bare JID's rules.
        h.send(&bob, &chat("alice@localhost/gone", "gone"));
        // A session without presence gets what is sent to its full JID.
        h.send(&bob, &chat("alice@localhost/quiet", "quiet"));
        let s = |r: &str| -> Arc<str> { format!("alice@localhost/{r}").into() };
        assert_eq!(
            *seen.borrow(),
            vec![
                (vec![s("high")], "bare".to_string()),
                (vec![s("low")], "full".to_string()),
                (vec![s("high")], "gone".to_string()),
                (vec![s("quiet")], "quiet".to_string()),
            ]
        );
        // What the sessions got is what the receive hook left.
        for (session, n) in [(&high, 2), (&low, 1), (&quiet, 1)] {
            let got = session.received();
            assert_eq!(got.len(), n, "{got:?}");
            assert!(
                got.iter()
                    .all(|m| m.child("body").map(|b| b.text()).as_deref() == Some("altered")),
                "{got:?}"
            );
        }
    });
}

#[test]
fn watched_delivered_does_not_run_when_no_session_got_the_stanza() {
    run(|| async {
        let h = Harness::new(
            "[modules]\nmod_disco = true\n",
            &["alice@localhost", "bob@localhost"],
        );
        let seen = probe(&h);
        let bob = h.login("bob@localhost/b", Some(0));
        // Connected, never available: a chat to the bare JID is for offline storage (none here).
        let _quiet = h.login("alice@localhost/quiet", None);
        assert!(h.shard.ctx().watch("alice@localhost", "mod_probe", true));
        h.send(
            &bob,
            "<message to='alice@localhost' type='chat'><body>x</body></message>",
        );
        // An IQ to the bare JID is answered for the account.
        h.send(
            &bob,
            "<iq to='alice@localhost' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        h.settle(20).await;
        assert!(seen.borrow().is_empty(), "{:?}", seen.borrow());
    });
}

/// A message for an account with no session waits for the store to say whether the account exists;
/// a client that logs in meanwhile (and whose initial presence has already collected what was kept
/// offline) must still get it — found in the `mixed` soak as messages delivered at the next login,
/// seconds late, or lost.
#[test]
fn a_message_whose_recipient_logs_in_during_the_lookup_reaches_the_new_session() {
    run(|| async {
        let h = Harness::new("", &["alice@localhost", "bob@localhost"]);
        let bob = h.login("bob@localhost/b", Some(0));
        h.settle(100).await;
        bob.received();
        h.send(
            &bob,
            "<message to='alice@localhost' type='chat' id='raced'><body>hi</body></message>",
        );
        // Before the lookup's answer can arrive (nothing has awaited yet): alice binds and sends
        // initial presence, which asks mod_offline for what was kept.
        let alice = h.login("alice@localhost/a", Some(0));
        h.settle(300).await;
        let got: Vec<_> = alice
            .received()
            .into_iter()
            .filter(|e| e.name == "message")
            .collect();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].attr("id"), Some("raced"));
        assert!(bob.received().is_empty(), "no error for bob");
    });
}

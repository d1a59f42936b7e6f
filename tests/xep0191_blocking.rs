//! XEP-0191 blocking over real TCP, with 1 and 2 shards and, with 2, the two accounts on different home
//! shards: the list, block and unblock with pushes to the resources that asked for it, the errors, what
//! a blocked JID can no longer do (messages bounced, presence dropped, nothing kept offline), what the
//! user can no longer send it, and presence: unavailable when blocked, current presence when unblocked.

mod common;

use std::time::Duration;

use common::{Client, Got, SHARDS, TestServer, error_condition};
use rjabberd::proto::xml::Element;

/// Juliet and Romeo; with two shards they live on different shards.
fn names(shards: usize) -> (String, String) {
    let juliet = "juliet@localhost";
    (
        juliet.into(),
        common::on_another_shard(juliet, "romeo", shards),
    )
}

const NS: &str = "urn:xmpp:blocking";

fn items(e: &Element) -> Vec<String> {
    e.child_elements()
        .next()
        .map(|list| {
            list.child_elements()
                .filter_map(|i| i.attr("jid").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything that arrives within a short quiet period.
fn arrivals(c: &mut Client) -> Vec<Element> {
    c.drain(Duration::from_millis(400))
        .into_iter()
        .filter_map(|g| match g {
            Got::El(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn next_named(c: &mut Client, name: &str) -> Element {
    loop {
        let e = c.el();
        if e.name == name {
            return e;
        }
    }
}

#[test]
fn block_unblock_and_pushes() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (j, r) = names(shards);
        server.add_user(&j, "pw");
        server.add_user(&r, "pw");
        let mut a = Client::login(&server, &j, "pw", "a");
        let mut b = Client::login(&server, &j, "pw", "b");
        // Only resources that asked for the list get pushes.
        let mut c = Client::login(&server, &j, "pw", "c");

        // Discovered on the server.
        let info = a.iq(
            Some("localhost"),
            "get",
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        );
        assert!(
            info.child("query")
                .unwrap()
                .child_elements()
                .any(|f| f.name == "feature" && f.attr("var") == Some(NS)),
            "{info}"
        );

        for client in [&mut a, &mut b] {
            let list = client.iq(None, "get", &format!("<blocklist xmlns='{NS}'/>"));
            assert_eq!(list.attr("type"), Some("result"), "{list}");
            assert!(items(&list).is_empty());
        }
        let res = a.iq(
            None,
            "set",
            &format!("<block xmlns='{NS}'><item jid='{r}'/><item jid='capulet.example'/></block>"),
        );
        assert_eq!(res.attr("type"), Some("result"), "{res}");
        for client in [&mut a, &mut b] {
            let push = next_named(client, "iq");
            assert_eq!(push.attr("type"), Some("set"), "{push}");
            assert_eq!(push.child_elements().next().unwrap().name, "block");
            let mut got = items(&push);
            got.sort();
            assert_eq!(got, vec!["capulet.example".to_string(), r.clone()]);
        }
        assert!(
            arrivals(&mut c).iter().all(|e| e.name != "iq"),
            "a resource that never asked gets no push"
        );
        let list = b.iq(None, "get", &format!("<blocklist xmlns='{NS}'/>"));
        let mut got = items(&list);
        got.sort();
        assert_eq!(got, vec!["capulet.example".to_string(), r.clone()]);

        // Errors.
        let empty = a.iq(None, "set", &format!("<block xmlns='{NS}'/>"));
        assert_eq!(error_condition(&empty).as_deref(), Some("bad-request"));
        let bad = a.iq(
            None,
            "set",
            &format!("<block xmlns='{NS}'><item jid='a@b@c'/></block>"),
        );
        assert_eq!(error_condition(&bad).as_deref(), Some("jid-malformed"));

        // Unblock one, then all.
        let res = b.iq(
            None,
            "set",
            &format!("<unblock xmlns='{NS}'><item jid='{r}'/></unblock>"),
        );
        assert_eq!(res.attr("type"), Some("result"), "{res}");
        for client in [&mut a, &mut b] {
            let push = next_named(client, "iq");
            assert_eq!(push.child_elements().next().unwrap().name, "unblock");
            assert_eq!(items(&push), vec![r.clone()]);
        }
        let res = a.iq(None, "set", &format!("<unblock xmlns='{NS}'/>"));
        assert_eq!(res.attr("type"), Some("result"), "{res}");
        for client in [&mut a, &mut b] {
            let push = next_named(client, "iq");
            assert_eq!(push.child_elements().next().unwrap().name, "unblock");
            assert!(items(&push).is_empty(), "{push}");
        }
        let list = a.iq(None, "get", &format!("<blocklist xmlns='{NS}'/>"));
        assert!(items(&list).is_empty(), "{list}");
        // Nobody else reads or changes it.
        let theirs = a.iq(Some(&r), "get", &format!("<blocklist xmlns='{NS}'/>"));
        assert_eq!(error_condition(&theirs).as_deref(), Some("forbidden"));
    }
}

#[test]
fn a_blocked_jid_reaches_nothing_and_is_reached_by_nothing() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (j, r) = names(shards);
        server.add_user(&j, "pw");
        server.add_user(&r, "pw");
        server.roster_add(&j, &r, "both");
        server.roster_add(&r, &j, "both");
        let mut juliet = Client::login(&server, &j, "pw", "balcony");
        juliet.available(0);
        let mut romeo = Client::login(&server, &r, "pw", "garden");
        romeo.available(0);
        // Each sees the other's presence.
        arrivals(&mut juliet);
        arrivals(&mut romeo);

        let res = juliet.iq(
            None,
            "set",
            &format!("<block xmlns='{NS}'><item jid='{r}'/></block>"),
        );
        assert_eq!(res.attr("type"), Some("result"), "{res}");
        // Romeo, subscribed to her presence, sees her go unavailable.
        let p = next_named(&mut romeo, "presence");
        assert_eq!(p.attr("type"), Some("unavailable"), "{p}");
        assert_eq!(p.attr("from"), Some(format!("{j}/balcony").as_str()));

        // His message is bounced; his presence and IQ result reach nothing.
        romeo.send(&format!(
            "<message to='{j}' id='m1' type='chat'><body>hi</body></message>"
        ));
        let e = next_named(&mut romeo, "message");
        assert_eq!(e.attr("type"), Some("error"), "{e}");
        assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
        romeo.send("<presence><show>away</show></presence>");
        let ping = romeo.iq(
            Some(&format!("{j}/balcony")),
            "get",
            "<ping xmlns='urn:xmpp:ping'/>",
        );
        assert_eq!(
            error_condition(&ping).as_deref(),
            Some("service-unavailable")
        );
        // His own presence echo.
        arrivals(&mut romeo);
        assert!(
            arrivals(&mut juliet).is_empty(),
            "nothing from a blocked JID reaches her"
        );

        // What she sends him is refused with the blocking error, and goes nowhere.
        juliet.send(&format!(
            "<message to='{r}/garden' id='m2' type='chat'><body>x</body></message>"
        ));
        let e = next_named(&mut juliet, "message");
        assert_eq!(e.attr("type"), Some("error"), "{e}");
        assert_eq!(error_condition(&e).as_deref(), Some("not-acceptable"));
        assert!(
            e.child("error")
                .unwrap()
                .child_elements()
                .any(|c| c.name == "blocked"
                    && c.attr("xmlns") == Some("urn:xmpp:blocking:errors")),
            "{e}"
        );
        // Her presence updates do not reach him either.
        juliet.send("<presence><show>dnd</show></presence>");
        let got = arrivals(&mut romeo);
        assert!(got.is_empty(), "{got:?}");

        // While she is offline nothing from him is kept for her.
        drop(juliet);
        arrivals(&mut romeo);
        romeo.send(&format!(
            "<message to='{j}' id='m3' type='chat'><body>later</body></message>"
        ));
        let e = next_named(&mut romeo, "message");
        assert_eq!(e.attr("type"), Some("error"), "{e}");
        let mut juliet = Client::login(&server, &j, "pw", "balcony");
        juliet.send("<presence/>");
        let got = arrivals(&mut juliet);
        assert!(
            got.iter().all(|e| e.name != "message"),
            "nothing was stored: {got:?}"
        );

        // Unblocked: he gets her current presence, and she his (her server probes him again).
        let res = juliet.iq(
            None,
            "set",
            &format!("<unblock xmlns='{NS}'><item jid='{r}'/></unblock>"),
        );
        assert_eq!(res.attr("type"), Some("result"), "{res}");
        let p = next_named(&mut romeo, "presence");
        assert_eq!(p.attr("from"), Some(format!("{j}/balcony").as_str()));
        assert_eq!(p.attr("type"), None, "{p}");
        let p = next_named(&mut juliet, "presence");
        assert_eq!(p.attr("from"), Some(format!("{r}/garden").as_str()));
        assert_eq!(p.child("show").map(|s| s.text()).as_deref(), Some("away"));
        romeo.send(&format!(
            "<message to='{j}' id='m4' type='chat'><body>again</body></message>"
        ));
        let m = next_named(&mut juliet, "message");
        assert_eq!(m.attr("id"), Some("m4"), "{m}");
    }
}

#[test]
fn a_blocked_domain_covers_its_accounts_and_the_list_survives_a_restart() {
    for shards in SHARDS {
        let mut server = TestServer::start(shards, "");
        let (j, r) = names(shards);
        server.add_user(&j, "pw");
        server.add_user(&r, "pw");
        let mut juliet = Client::login(&server, &j, "pw", "balcony");
        juliet.available(0);
        let res = juliet.iq(
            None,
            "set",
            &format!("<block xmlns='{NS}'><item jid='localhost/garden'/></block>"),
        );
        assert_eq!(res.attr("type"), Some("result"), "{res}");
        drop(juliet);
        server.restart();

        let mut juliet = Client::login(&server, &j, "pw", "balcony");
        juliet.available(0);
        // `localhost/garden` is the server's own resource, not Romeo's: he still gets through.
        let mut romeo = Client::login(&server, &r, "pw", "garden");
        romeo.send(&format!(
            "<message to='{j}' id='ok' type='chat'><body>hi</body></message>"
        ));
        let m = next_named(&mut juliet, "message");
        assert_eq!(m.attr("id"), Some("ok"), "{m}");
        let res = juliet.iq(
            None,
            "set",
            &format!("<block xmlns='{NS}'><item jid='localhost'/></block>"),
        );
        assert_eq!(res.attr("type"), Some("result"), "{res}");
        romeo.send(&format!(
            "<message to='{j}' id='no' type='chat'><body>hi</body></message>"
        ));
        let e = next_named(&mut romeo, "message");
        assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    }
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(
    block_unblock_and_pushes,
    a_blocked_jid_reaches_nothing_and_is_reached_by_nothing,
    a_blocked_domain_covers_its_accounts_and_the_list_survives_a_restart,
);

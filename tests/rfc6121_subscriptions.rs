//! RFC 6121 §3 presence subscriptions over real TCP, with 1 and 2 shards and, with 2, the two users on
//! different home shards: a request, its approval and the mutual subscription, with the roster pushes to
//! both sides and the states of Appendix A; a request to an account with no available resource, kept and
//! delivered at its next initial presence; pre-approval (§3.4); cancelling and unsubscribing.

mod common;

use std::time::Duration;

use common::{Client, Got, SHARDS, TestServer};
use rjabberd::placement::home;
use rjabberd::proto::xml::Element;

const NS: &str = "jabber:iq:roster";

/// Two account names whose home shards differ when there are two shards.
fn pair(shards: usize) -> (String, String) {
    let first = "juliet".to_string();
    let a = home(&format!("{first}@localhost"), shards).shard;
    let other = (0..100)
        .map(|i| format!("romeo{i}"))
        .find(|o| shards == 1 || home(&format!("{o}@localhost"), shards).shard != a)
        .expect("an account on the other shard");
    (first, other)
}

/// Logs in, asks for the roster (an interested resource) and sends initial presence.
fn online(server: &TestServer, user: &str) -> Client {
    let mut c = Client::login(server, &format!("{user}@localhost"), "pw", "r");
    let r = c.iq(None, "get", &format!("<query xmlns='{NS}'/>"));
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    c.available(0);
    c
}

/// Whether `e` is presence about availability (§4's business, tested in `rfc6121_presence.rs`).
fn availability(e: &Element) -> bool {
    e.name == "presence" && matches!(e.attr("type"), None | Some("unavailable"))
}

/// The next element that is not a presence about availability.
fn next(c: &mut Client) -> Element {
    loop {
        let e = c.el();
        if availability(&e) {
            continue;
        }
        return e;
    }
}

/// Reads the roster push this client gets next and answers it; returns `(subscription, ask)` of its item.
fn push(c: &mut Client, contact: &str) -> (String, Option<String>) {
    let iq = next(c);
    assert_eq!(iq.name, "iq", "expected a roster push: {iq}");
    assert_eq!(iq.attr("type"), Some("set"), "{iq}");
    c.send(&format!(
        "<iq type='result' id='{}'/>",
        iq.attr("id").unwrap()
    ));
    let item = iq.child("query").unwrap().child("item").unwrap().clone();
    assert_eq!(item.attr("jid"), Some(contact), "{iq}");
    (
        item.attr("subscription").unwrap().to_string(),
        item.attr("ask").map(str::to_string),
    )
}

fn presence(c: &mut Client, type_: &str, from: &str) {
    let p = next(c);
    assert_eq!(p.name, "presence", "{p}");
    assert_eq!(p.attr("type"), Some(type_), "{p}");
    assert_eq!(p.attr("from"), Some(from), "{p}");
}

fn quiet(c: &mut Client) {
    let got = c.next_within(Duration::from_millis(300));
    assert!(
        !matches!(&got, Some(Got::El(e)) if !availability(e)),
        "nothing more expected: {got:?}"
    );
}

fn roster_of(c: &mut Client) -> Vec<(String, String)> {
    let r = c.iq(None, "get", &format!("<query xmlns='{NS}'/>"));
    r.child("query")
        .unwrap()
        .child_elements()
        .map(|i| {
            (
                i.attr("jid").unwrap().to_string(),
                i.attr("subscription").unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn request_approve_and_mutual_subscription_across_shards() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (j, r) = pair(shards);
        let (jj, rj) = (format!("{j}@localhost"), format!("{r}@localhost"));
        server.add_user(&jj, "pw");
        server.add_user(&rj, "pw");
        let mut juliet = online(&server, &j);
        let mut romeo = online(&server, &r);

        // Romeo asks: his item is "None + Pending Out"; Juliet's server delivers the request.
        romeo.send(&format!("<presence to='{jj}' type='subscribe'/>"));
        assert_eq!(
            push(&mut romeo, &jj),
            ("none".into(), Some("subscribe".into()))
        );
        presence(&mut juliet, "subscribe", &rj);

        // Juliet approves: she is "From", he is "To" and told so.
        juliet.send(&format!("<presence to='{rj}' type='subscribed'/>"));
        assert_eq!(push(&mut juliet, &rj), ("from".into(), None));
        assert_eq!(push(&mut romeo, &jj), ("to".into(), None));
        presence(&mut romeo, "subscribed", &jj);

        // And the other way round: both.
        juliet.send(&format!("<presence to='{rj}' type='subscribe'/>"));
        assert_eq!(
            push(&mut juliet, &rj),
            ("from".into(), Some("subscribe".into()))
        );
        presence(&mut romeo, "subscribe", &jj);
        romeo.send(&format!("<presence to='{jj}' type='subscribed'/>"));
        assert_eq!(push(&mut romeo, &jj), ("both".into(), None));
        assert_eq!(push(&mut juliet, &rj), ("both".into(), None));
        presence(&mut juliet, "subscribed", &rj);
        assert_eq!(roster_of(&mut juliet), vec![(rj.clone(), "both".into())]);
        assert_eq!(roster_of(&mut romeo), vec![(jj.clone(), "both".into())]);

        // A request from someone already subscribed is answered by Juliet's server (A.3.1), not
        // delivered to her; Romeo's server, already "Both", takes the answer without a word (A.3.3).
        romeo.send(&format!("<presence to='{jj}' type='subscribe'/>"));
        quiet(&mut juliet);
        quiet(&mut romeo);

        // Romeo unsubscribes from Juliet: he is "From", she is "To".
        romeo.send(&format!("<presence to='{jj}' type='unsubscribe'/>"));
        assert_eq!(push(&mut romeo, &jj), ("from".into(), None));
        assert_eq!(push(&mut juliet, &rj), ("to".into(), None));
        presence(&mut juliet, "unsubscribe", &rj);
        // Refusing what was never asked changes nothing and goes nowhere (A.2.4, "To").
        juliet.send(&format!("<presence to='{rj}' type='unsubscribed'/>"));
        quiet(&mut juliet);
        quiet(&mut romeo);
        // Romeo cancels her subscription to him: "None" on both sides.
        romeo.send(&format!("<presence to='{jj}' type='unsubscribed'/>"));
        assert_eq!(push(&mut romeo, &jj), ("none".into(), None));
        assert_eq!(push(&mut juliet, &rj), ("none".into(), None));
        presence(&mut juliet, "unsubscribed", &rj);
    }
}

#[test]
fn a_request_waits_for_the_next_initial_presence() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (j, r) = pair(shards);
        let (jj, rj) = (format!("{j}@localhost"), format!("{r}@localhost"));
        server.add_user(&jj, "pw");
        server.add_user(&rj, "pw");
        let mut romeo = online(&server, &r);
        romeo.send(&format!("<presence to='{jj}' type='subscribe'/>"));
        assert_eq!(
            push(&mut romeo, &jj),
            ("none".into(), Some("subscribe".into()))
        );
        std::thread::sleep(Duration::from_millis(200));

        // Juliet logs in later: after her initial presence the request arrives.
        let mut juliet = Client::login(&server, &jj, "pw", "r");
        juliet.available(0);
        presence(&mut juliet, "subscribe", &rj);
        juliet.send(&format!("<presence to='{rj}' type='subscribed'/>"));
        assert_eq!(push(&mut romeo, &jj), ("to".into(), None));
        presence(&mut romeo, "subscribed", &jj);

        // Once answered, it does not come again.
        drop(juliet);
        let mut juliet = Client::login(&server, &jj, "pw", "r2");
        juliet.available(0);
        quiet(&mut juliet);
    }
}

#[test]
fn pre_approval_and_a_request_to_nobody() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let (j, r) = pair(shards);
        let (jj, rj) = (format!("{j}@localhost"), format!("{r}@localhost"));
        server.add_user(&jj, "pw");
        server.add_user(&rj, "pw");
        let mut juliet = online(&server, &j);
        let mut romeo = online(&server, &r);

        // §3.4: Juliet approves before Romeo asks; nothing is routed yet.
        juliet.send(&format!("<presence to='{rj}' type='subscribed'/>"));
        let iq = next(&mut juliet);
        let item = iq.child("query").unwrap().child("item").unwrap().clone();
        assert_eq!(item.attr("approved"), Some("true"), "{iq}");
        quiet(&mut romeo);
        // Romeo's request is approved at once, and Juliet is not asked.
        romeo.send(&format!("<presence to='{jj}' type='subscribe'/>"));
        assert_eq!(
            push(&mut romeo, &jj),
            ("none".into(), Some("subscribe".into()))
        );
        assert_eq!(push(&mut juliet, &rj), ("from".into(), None));
        assert_eq!(push(&mut romeo, &jj), ("to".into(), None));
        presence(&mut romeo, "subscribed", &jj);

        // A request to an account that does not exist changes the sender's roster and nothing else.
        romeo.send("<presence to='nobody@localhost' type='subscribe'/>");
        assert_eq!(
            push(&mut romeo, "nobody@localhost"),
            ("none".into(), Some("subscribe".into()))
        );
        quiet(&mut romeo);
    }
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(
    request_approve_and_mutual_subscription_across_shards,
    a_request_waits_for_the_next_initial_presence,
    pre_approval_and_a_request_to_nobody,
);

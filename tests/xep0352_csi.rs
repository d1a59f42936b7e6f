//! XEP-0352 client state indication over real TCP, with 1 and 2 shards and, with 2, the inactive
//! client's account and its contact's on different home shards. Juliet has two sessions: `phone`, which
//! goes inactive, and `desk`, which stays active and shows when a stanza for Juliet has reached her
//! home shard (both sessions' deliveries are decided there together), so that "the phone got nothing"
//! is asserted after the stanza was there to get. Presence updates (only the latest of each of Romeo's
//! full JIDs) and chat states wait; a message with a body comes at once, after what waited, in order;
//! `<active/>` writes out the rest before the answer to the next request; a small `max_queue` is
//! written out when full; the stream feature follows the module.

mod common;

use std::time::Duration;

use common::{Client, Got, SHARDS, TestServer};
use rjabberd::proto::xml::Element;

const INACTIVE: &str = "<inactive xmlns='urn:xmpp:csi:0'/>";
const ACTIVE: &str = "<active xmlns='urn:xmpp:csi:0'/>";
const PING: &str = "<ping xmlns='urn:xmpp:ping'/>";

/// Juliet and, with two shards, a Romeo on the other shard.
fn names(shards: usize) -> (String, String) {
    let juliet = "juliet@localhost";
    (
        juliet.into(),
        common::on_another_shard(juliet, "romeo", shards),
    )
}

struct Scene {
    server: TestServer,
    juliet: String,
    phone: Client,
    desk: Client,
    /// Romeo's resources `r1`, `r2`, …
    romeo: Vec<Client>,
    romeo_jid: String,
}

impl Scene {
    /// Juliet (`phone`, `desk`) and Romeo (`romeos` resources), subscribed both ways and available,
    /// everything they were sent so far read.
    fn new(shards: usize, extra: &str, romeos: usize) -> Scene {
        let server = TestServer::start(shards, extra);
        let (jj, rj) = names(shards);
        server.add_user(&jj, "pw");
        server.add_user(&rj, "pw");
        server.roster_add(&jj, &rj, "both");
        server.roster_add(&rj, &jj, "both");
        let mut romeo: Vec<Client> = (1..=romeos)
            .map(|i| {
                let mut c = Client::login(&server, &rj, "pw", &format!("r{i}"));
                c.send("<presence/>");
                c
            })
            .collect();
        let mut phone = Client::login(&server, &jj, "pw", "phone");
        phone.send("<presence/>");
        let mut desk = Client::login(&server, &jj, "pw", "desk");
        desk.send("<presence/>");
        for c in romeo.iter_mut().chain([&mut phone, &mut desk]) {
            c.drain(Duration::from_millis(300));
        }
        Scene {
            server,
            juliet: jj,
            phone,
            desk,
            romeo,
            romeo_jid: rj,
        }
    }

    fn r(&self, i: usize) -> String {
        format!("{}/r{i}", self.romeo_jid)
    }

    /// The phone goes inactive; the ping after it is answered once the nonza was dealt with.
    fn inactive(&mut self) {
        self.phone.send(INACTIVE);
        let pong = self.phone.iq(Some("localhost"), "get", PING);
        assert_eq!(pong.attr("type"), Some("result"), "{pong}");
    }

    /// Romeo's resource `i` sends presence with `status` to his subscribers; returns once the desk got
    /// it (the phone's session was then decided too).
    fn presence(&mut self, i: usize, status: &str) {
        let xml = if status == "unavailable" {
            "<presence type='unavailable'/>".to_string()
        } else {
            format!("<presence><status>{status}</status></presence>")
        };
        self.romeo[i - 1].send(&xml);
        let from = self.r(i);
        let got = next_from(&mut self.desk, &from);
        assert_eq!(label(&got), label_of(&from, status), "{got}");
    }

    /// Romeo's resource `i` sends a message to the phone, then a marker to the desk; returns once the
    /// desk got the marker (the message to the phone, sent before it on the same path, was dealt with).
    fn message_to_phone(&mut self, i: usize, payload: &str) {
        let (phone, desk) = (
            format!("{}/phone", self.juliet),
            format!("{}/desk", self.juliet),
        );
        let c = &mut self.romeo[i - 1];
        c.send(&format!(
            "<message to='{phone}' type='chat'>{payload}</message>"
        ));
        c.send(&format!(
            "<message to='{desk}' type='chat'><body>marker</body></message>"
        ));
        let from = self.r(i);
        let got = next_from(&mut self.desk, &from);
        assert_eq!(label(&got), format!("{from} message marker"), "{got}");
    }
}

/// A short line per element: who sent it, what it is, and its status, body or chat state (a delay
/// stamp left out).
fn label(e: &Element) -> String {
    let from = e.attr("from").unwrap_or_default();
    match e.name.as_str() {
        "presence" => match e.attr("type") {
            Some(t) => format!("{from} presence {t}"),
            None => format!(
                "{from} presence {}",
                e.child("status").map(|s| s.text()).unwrap_or_default()
            ),
        },
        "message" => match e.child("body") {
            Some(b) => format!("{from} message {}", b.text()),
            None => format!(
                "{from} message {}",
                e.child_elements()
                    .filter(|c| c.name != "delay")
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        },
        other => format!("{from} {other} {}", e.attr("id").unwrap_or_default()),
    }
}

fn label_of(from: &str, status: &str) -> String {
    format!("{from} presence {status}")
}

/// The next element from `from`, skipping others (the desk also sees the phone's traffic).
fn next_from(c: &mut Client, from: &str) -> Element {
    loop {
        let e = c.el();
        if e.attr("from") == Some(from) {
            return e;
        }
    }
}

/// The labels of the next `n` elements.
fn next_labels(c: &mut Client, n: usize) -> Vec<String> {
    (0..n).map(|_| label(&c.el())).collect()
}

/// Rewrites the configuration's modules and waits until every shard applied them.
fn reload(server: &mut TestServer, extra: &str) {
    let reloaded = |server: &TestServer| {
        let lines = server.stdout.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains("modules reloaded"))
            .count()
    };
    let before = reloaded(server);
    server.set_extra(extra);
    common::signal(server.pid(), libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reloaded(server) == before {
        assert!(std::time::Instant::now() < deadline, "no reload reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every shard applies the plan within its housekeeping tick.
    std::thread::sleep(Duration::from_millis(200));
}

fn nothing(c: &mut Client, what: &str) {
    if let Some(g) = c.next_within(Duration::from_millis(400)) {
        match g {
            Got::El(e) => panic!("{what}: nothing expected, got {e}"),
            other => panic!("{what}: nothing expected, got {other:?}"),
        }
    }
}

const COMPOSING: &str = "<composing xmlns='http://jabber.org/protocol/chatstates'/>";
const PAUSED: &str = "<paused xmlns='http://jabber.org/protocol/chatstates'/>";

#[test]
fn inactive_holds_presence_and_chat_states_until_something_matters() {
    for shards in SHARDS {
        let mut s = Scene::new(shards, "", 2);
        let (r1, r2) = (s.r(1), s.r(2));
        s.inactive();

        s.presence(1, "away");
        s.presence(2, "here");
        s.message_to_phone(1, COMPOSING);
        // The latest of each full JID: this replaces r1's `away`, and goes after what came since.
        s.presence(1, "dnd");
        s.message_to_phone(1, PAUSED);
        nothing(&mut s.phone, "inactive");

        // A message with a body comes at once, after what waited, in order; what waited says since
        // when.
        s.message_to_phone(2, "<body>hello</body>");
        let got: Vec<Element> = (0..4).map(|_| s.phone.el()).collect();
        for (i, e) in got.iter().enumerate() {
            let delay = e
                .child("delay")
                .filter(|d| d.namespace() == Some("urn:xmpp:delay"));
            assert_eq!(
                delay.and_then(|d| d.attr("from")),
                (i < 3).then_some("localhost"),
                "{e}"
            );
        }
        assert_eq!(
            got.iter().map(label).collect::<Vec<_>>(),
            [
                label_of(&r2, "here"),
                label_of(&r1, "dnd"),
                format!("{r1} message paused"),
                format!("{r2} message hello"),
            ],
            "{shards} shards"
        );
        nothing(&mut s.phone, "flushed");

        // Still inactive: held again. `active` writes out the rest before the answer to the ping sent
        // after it.
        s.presence(1, "xa");
        s.presence(2, "unavailable");
        s.presence(1, "back");
        nothing(&mut s.phone, "inactive again");
        s.phone.send(ACTIVE);
        s.phone
            .send("<iq to='localhost' type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>");
        assert_eq!(
            next_labels(&mut s.phone, 3),
            [
                label_of(&r2, "unavailable"),
                label_of(&r1, "back"),
                "localhost iq after".to_string(),
            ],
            "{shards} shards"
        );

        // Active: nothing waits.
        s.presence(1, "now");
        assert_eq!(label(&s.phone.el()), label_of(&r1, "now"));
    }
}

#[test]
fn a_full_queue_is_written_out() {
    for shards in SHARDS {
        let extra = "[modules]\nmod_ping = true\nmod_roster = true\n\
                     [modules.mod_client_state]\nmax_queue = 2\n";
        let mut s = Scene::new(shards, extra, 3);
        let (r1, r2, r3) = (s.r(1), s.r(2), s.r(3));
        s.inactive();
        s.presence(1, "a");
        s.presence(2, "b");
        // A replacement fits in a full queue.
        s.presence(2, "c");
        nothing(&mut s.phone, "two held");
        // One more does not: the two go out, the third waits.
        s.presence(3, "d");
        assert_eq!(
            next_labels(&mut s.phone, 2),
            [label_of(&r1, "a"), label_of(&r2, "c")],
            "{shards} shards"
        );
        nothing(&mut s.phone, "one held");
        s.phone.send(ACTIVE);
        assert_eq!(label(&s.phone.el()), label_of(&r3, "d"));
    }
}

#[test]
fn the_stream_feature_follows_the_module() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("juliet@localhost", "pw");
        // Before authentication: not offered.
        let mut c = Client::connect(server.starttls, server.cert_path());
        let f = c.open("localhost");
        assert!(f.child("csi").is_none(), "{f}");
        // After: offered, by default.
        let c = Client::login(&server, "juliet@localhost", "pw", "r");
        let f = c.features.clone().unwrap();
        let csi = f.child("csi").unwrap_or_else(|| panic!("{f}"));
        assert_eq!(csi.namespace(), Some("urn:xmpp:csi:0"));
        drop(server);

        // Without the module: not offered, and a nonza is ignored (the stream goes on).
        let server = TestServer::start(shards, "[modules]\nmod_ping = true\n");
        server.add_user("juliet@localhost", "pw");
        let mut c = Client::login(&server, "juliet@localhost", "pw", "r");
        let f = c.features.clone().unwrap();
        assert!(f.child("csi").is_none(), "{f}");
        c.send(INACTIVE);
        let pong = c.iq(Some("localhost"), "get", PING);
        assert_eq!(pong.attr("type"), Some("result"), "{pong}");
        c.send(ACTIVE);
        let pong = c.iq(Some("localhost"), "get", PING);
        assert_eq!(pong.attr("type"), Some("result"), "{pong}");

        // A reload that starts the module: the next login is offered the feature.
        let mut server = server;
        reload(
            &mut server,
            "[modules]\nmod_ping = true\nmod_client_state = true\n",
        );
        let c = Client::login(&server, "juliet@localhost", "pw", "r2");
        let f = c.features.clone().unwrap();
        assert!(f.child("csi").is_some(), "{f}");
    }
}

#[test]
fn a_reload_that_stops_the_module_writes_out_what_it_held() {
    for shards in SHARDS {
        let with = "[modules]\nmod_ping = true\nmod_roster = true\nmod_client_state = true\n";
        let mut s = Scene::new(shards, with, 1);
        let r1 = s.r(1);
        s.inactive();
        s.presence(1, "away");
        nothing(&mut s.phone, "held");
        reload(
            &mut s.server,
            "[modules]\nmod_ping = true\nmod_roster = true\n",
        );
        assert_eq!(
            label(&s.phone.el()),
            label_of(&r1, "away"),
            "{shards} shards"
        );
        // Nothing waits any more.
        s.presence(1, "back");
        assert_eq!(label(&s.phone.el()), label_of(&r1, "back"));
    }
}

#[test]
fn a_carbon_copy_for_an_inactive_session_comes_after_what_it_held() {
    for shards in SHARDS {
        let mut s = Scene::new(shards, "", 1);
        let enable = "<enable xmlns='urn:xmpp:carbons:2'/>";
        let on = s.phone.iq(None, "set", enable);
        assert_eq!(on.attr("type"), Some("result"), "{on}");
        s.inactive();
        s.presence(1, "busy");
        nothing(&mut s.phone, "a presence update held while inactive");
        // The desk writes to Romeo: the phone's sent copy matters, so what was held goes first.
        let romeo = s.romeo_jid.clone();
        s.desk.send(&format!(
            "<message to='{romeo}' type='chat'><body>hello</body></message>"
        ));
        let got = next_labels(&mut s.phone, 2);
        assert_eq!(got[0], label_of(&s.r(1), "busy"), "{got:?}");
        assert_eq!(got[1], format!("{} message sent", s.juliet), "{got:?}");
    }
}

//! RFC 6121 §2 (rosters) and XEP-0237 (roster versioning) over real TCP, with 1 and 2 shards: an empty
//! roster, adding, updating and removing items with pushes to every interested resource and to no
//! other, the §2.3.3 error cases, versions (a current `ver` gets an empty result), the item cap, the
//! roster kept across a restart and removed with the account, and the stream feature.

mod common;

use common::{Client, Got, SHARDS, TestServer, error_condition};
use rjabberd::proto::xml::Element;
use std::time::Duration;

const NS: &str = "jabber:iq:roster";

fn items(q: &Element) -> Vec<(String, Option<String>, Vec<String>, String)> {
    q.child_elements()
        .filter(|e| e.name == "item")
        .map(|i| {
            (
                i.attr("jid").unwrap_or_default().to_string(),
                i.attr("name").map(str::to_string),
                i.child_elements()
                    .filter(|g| g.name == "group")
                    .map(|g| g.text())
                    .collect(),
                i.attr("subscription").unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn set(c: &mut Client, item: &str) -> Element {
    c.iq(None, "set", &format!("<query xmlns='{NS}'>{item}</query>"))
}

/// The next roster push this client receives (answered, as RFC 6121 §2.1.6 asks).
fn push(c: &mut Client) -> Element {
    let iq = c.el();
    assert_eq!(iq.name, "iq", "{iq}");
    assert_eq!(iq.attr("type"), Some("set"), "{iq}");
    let id = iq.attr("id").unwrap().to_string();
    c.send(&format!("<iq type='result' id='{id}'/>"));
    iq.child("query")
        .expect("a roster push carries a query")
        .clone()
}

fn no_push(c: &mut Client) {
    let got = c.next_within(Duration::from_millis(300));
    assert!(
        !matches!(&got, Some(Got::El(e)) if e.name == "iq"),
        "no push expected: {got:?}"
    );
}

#[test]
fn get_set_update_remove_with_pushes_to_interested_resources() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("juliet@localhost", "pw");
        let mut a = Client::login(&server, "juliet@localhost", "pw", "balcony");
        let mut b = Client::login(&server, "juliet@localhost", "pw", "chamber");
        // A third resource that never asks for the roster is not interested: it gets no pushes.
        let mut quiet = Client::login(&server, "juliet@localhost", "pw", "garden");

        let r = a.iq(None, "get", &format!("<query xmlns='{NS}'/>"));
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let q = r.child("query").unwrap();
        assert!(items(q).is_empty());
        assert_eq!(q.attr("ver"), Some("0"));
        let r = b.iq(None, "get", &format!("<query xmlns='{NS}'/>"));
        assert!(items(r.child("query").unwrap()).is_empty());

        let r = set(
            &mut a,
            "<item jid='Nurse@Localhost' name='Nurse'><group>Servants</group></item>",
        );
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        for c in [&mut a, &mut b] {
            let p = push(c);
            assert_eq!(
                items(&p),
                vec![(
                    "nurse@localhost".into(),
                    Some("Nurse".into()),
                    vec!["Servants".into()],
                    "none".into()
                )]
            );
            assert_eq!(p.attr("ver"), Some("1"));
        }
        no_push(&mut quiet);

        // Update: name and groups change, the subscription state stays the server's.
        let r = set(
            &mut b,
            "<item jid='nurse@localhost' name='Angelica'><group>Kin</group><group>Servants</group></item>",
        );
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        for c in [&mut a, &mut b] {
            let p = push(c);
            assert_eq!(items(&p)[0].1.as_deref(), Some("Angelica"));
            assert_eq!(
                items(&p)[0].2,
                vec!["Kin".to_string(), "Servants".to_string()]
            );
            assert_eq!(p.attr("ver"), Some("2"));
        }
        set(&mut a, "<item jid='romeo@localhost'/>");
        push(&mut a);
        push(&mut b);

        let r = a.iq(None, "get", &format!("<query xmlns='{NS}'/>"));
        let q = r.child("query").unwrap();
        assert_eq!(q.attr("ver"), Some("3"));
        let got: Vec<String> = items(q).into_iter().map(|i| i.0).collect();
        assert_eq!(got, vec!["nurse@localhost", "romeo@localhost"]);

        // Remove: pushed as subscription='remove'; removing what is not there is item-not-found.
        let r = set(
            &mut a,
            "<item jid='romeo@localhost' subscription='remove'/>",
        );
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        for c in [&mut a, &mut b] {
            let p = push(c);
            assert_eq!(items(&p)[0].3, "remove");
        }
        let r = set(
            &mut a,
            "<item jid='romeo@localhost' subscription='remove'/>",
        );
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("item-not-found"),
            "{r}"
        );
        no_push(&mut quiet);
    }
}

#[test]
fn the_error_cases_of_2_3_3() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("juliet@localhost", "pw");
        server.add_user("romeo@localhost", "pw");
        let mut c = Client::login(&server, "juliet@localhost", "pw", "r");
        let cases = [
            (
                "<item jid='a@localhost'/><item jid='b@localhost'/>",
                "bad-request",
            ),
            (
                "<item jid='a@localhost'><group>G</group><group>G</group></item>",
                "bad-request",
            ),
            ("<item jid='a@localhost'><group/></item>", "not-acceptable"),
            ("<item jid='a@@localhost'/>", "jid-malformed"),
        ];
        for (item, want) in cases {
            let r = set(&mut c, item);
            assert_eq!(error_condition(&r).as_deref(), Some(want), "{item}: {r}");
        }
        // Someone else's roster is not for reading or changing (forbidden).
        let mut romeo = Client::login(&server, "romeo@localhost", "pw", "r");
        let r = romeo.iq(
            Some("juliet@localhost"),
            "get",
            &format!("<query xmlns='{NS}'/>"),
        );
        assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
        let r = romeo.iq(
            Some("juliet@localhost"),
            "set",
            &format!("<query xmlns='{NS}'><item jid='x@localhost'/></query>"),
        );
        assert_eq!(error_condition(&r).as_deref(), Some("forbidden"), "{r}");
    }
}

#[test]
fn versions_the_cap_restart_and_account_removal() {
    for shards in SHARDS {
        let mut server = TestServer::start(shards, "[modules.mod_roster]\nmax_items = 2\n");
        server.add_user("juliet@localhost", "pw");
        let mut c = Client::login(&server, "juliet@localhost", "pw", "r");
        set(&mut c, "<item jid='a@localhost'/>");
        set(&mut c, "<item jid='b@localhost'/>");
        let r = set(&mut c, "<item jid='c@localhost'/>");
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("not-acceptable"),
            "{r}"
        );
        // Updating an existing item is no addition.
        let r = set(&mut c, "<item jid='b@localhost' name='B'/>");
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        drop(c);

        server.restart();
        let mut c = Client::login(&server, "juliet@localhost", "pw", "r");
        let r = c.iq(None, "get", &format!("<query xmlns='{NS}' ver=''/>"));
        let q = r
            .child("query")
            .expect("a full roster for an unknown version");
        assert_eq!(items(q).len(), 2);
        let ver = q.attr("ver").unwrap().to_string();
        assert_eq!(ver, "3");
        // The current version: an empty result (XEP-0237 §4).
        let r = c.iq(None, "get", &format!("<query xmlns='{NS}' ver='{ver}'/>"));
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        assert!(r.child("query").is_none(), "{r}");
        drop(c);

        assert!(server.user(&["del", "juliet@localhost"]).status.success());
        server.add_user("juliet@localhost", "pw");
        let mut c = Client::login(&server, "juliet@localhost", "pw", "r");
        let r = c.iq(None, "get", &format!("<query xmlns='{NS}'/>"));
        assert!(
            items(r.child("query").unwrap()).is_empty(),
            "the roster went with the account: {r}"
        );
    }
}

#[test]
fn the_stream_offers_roster_versioning_unless_turned_off() {
    for (extra, offered) in [
        ("", true),
        ("[modules.mod_roster]\nversioning = false\n", false),
    ] {
        let server = TestServer::start(1, extra);
        server.add_user("juliet@localhost", "pw");
        let mut c = Client::connect_direct(server.direct, server.cert_path());
        let features = c.open("localhost");
        assert_eq!(features.child("ver").is_some(), offered, "{features}");
        assert!(features.child("sub").is_some(), "pre-approval: {features}");
        assert_eq!(c.sasl("PLAIN", "juliet", "pw", None).name, "success");
        let features = c.restart("localhost");
        assert_eq!(features.child("ver").is_some(), offered, "{features}");
        assert!(features.child("sub").is_some(), "pre-approval: {features}");
    }
}

#[test]
fn operators_manage_rosters_from_the_command_line() {
    let server = TestServer::start(1, "");
    server.add_user("juliet@localhost", "pw");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rjabberd"))
            .arg("--config")
            .arg(server.config_path())
            .arg("roster")
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&[
        "add",
        "juliet@localhost",
        "Romeo@Localhost",
        "--name",
        "Romeo",
        "--group",
        "Montague",
        "--subscription",
        "both",
    ]);
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&cli(&["list", "juliet@localhost"]).stdout).to_string();
    assert_eq!(listed, "romeo@localhost\tboth\tRomeo\tMontague\n");
    let mut c = Client::login(&server, "juliet@localhost", "pw", "r");
    let r = c.iq(None, "get", &format!("<query xmlns='{NS}'/>"));
    assert_eq!(
        items(r.child("query").unwrap()),
        vec![(
            "romeo@localhost".into(),
            Some("Romeo".into()),
            vec!["Montague".into()],
            "both".into()
        )]
    );
    assert!(
        cli(&["del", "juliet@localhost", "romeo@localhost"])
            .status
            .success()
    );
    let again = cli(&["del", "juliet@localhost", "romeo@localhost"]);
    assert!(!again.status.success(), "removing what is not there fails");
    assert!(
        cli(&[
            "add",
            "juliet@localhost",
            "x@localhost",
            "--subscription",
            "maybe"
        ])
        .status
        .code()
            != Some(0)
    );
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(
    get_set_update_remove_with_pushes_to_interested_resources,
    the_error_cases_of_2_3_3,
    versions_the_cap_restart_and_account_removal,
    operators_manage_rosters_from_the_command_line,
);

//! XEP-0227 (Portable Import/Export Format) through the `rjabberd export` and `rjabberd import`
//! commands, with 1 and 2 shards: accounts made over XMPP (vCard, private XML, an offline message) and
//! with the CLI (roster) come out of one server and into a fresh one, where the users log in with their
//! passwords and find everything; the second server's export is byte for byte the first's; a second
//! import skips every account. And from a real ejabberd (Debian's, started throw-away by
//! `tests/piefxis/ejabberd.sh`): its `export_piefxis` files import, and its users log in with
//! their passwords (SCRAM-SHA-1 and PLAIN: ejabberd keeps one hash; SCRAM-SHA-256 once a PLAIN login has
//! made its keys) and read their roster; and the other
//! way, `export --ejabberd` files import into ejabberd, whose user then has its password and roster.
//! Without ejabberd those cases are built ignored ("SKIPPED: ejabberd not installed", see build.rs).
//! And from a real Prosody (Debian's, its data written throw-away by `tests/piefxis/prosody.sh` and
//! turned into one XEP-0227 file per account by its own migrator): the files' directory imports, the
//! users log in with SCRAM-SHA-1 and PLAIN (Prosody keeps SHA-1 keys), or, from a host with
//! `password_hash = "SHA-256"` (keys the migrator labels SCRAM-SHA-1), with SCRAM-SHA-256 and PLAIN;
//! and the roster, the pending request, the vCard and the private XML arrive. Without Prosody that case is built ignored ("SKIPPED: Prosody not installed").
//! And the migration path for accounts with one hash's keys (from a file the test writes, on SQLite
//! and PostgreSQL): the other hash's SCRAM works once a PLAIN login has made its keys.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Client, Got, SHARDS, TestServer};
use rjabberd::proto::sasl::{Hash, ScramCredential};
use rjabberd::proto::xml::Element;

fn rjabberd(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rjabberd"))
        .arg("--config")
        .arg(server.config_path())
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn roster(c: &mut Client) -> Vec<Element> {
    let r = c.iq(None, "get", "<query xmlns='jabber:iq:roster'/>");
    r.child("query")
        .expect("a roster")
        .child_elements()
        .cloned()
        .collect()
}

fn next_message(c: &mut Client) -> Element {
    loop {
        match c.next() {
            Got::El(e) if e.name == "message" => return e,
            Got::El(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// STARTTLS, `mechanism`, bind; the SASL answer when it is not success.
fn login_with(
    server: &TestServer,
    mechanism: &str,
    jid: &str,
    password: &str,
) -> Result<Client, Element> {
    let (local, host) = jid.split_once('@').unwrap();
    let mut c = Client::connect(server.starttls, server.cert_path());
    c.open(host);
    c.starttls();
    c.open(host);
    let r = c.sasl(mechanism, local, password, None);
    if r.name != "success" {
        return Err(r);
    }
    c.restart(host);
    assert_eq!(c.bind(Some("r")).attr("type"), Some("result"));
    Ok(c)
}

#[test]
fn round_trip_between_two_servers_loses_nothing() {
    for shards in SHARDS {
        let mut a = TestServer::start(shards, "");
        a.add_user("alice@localhost", "wonder land");
        a.add_user("bob@localhost", "pw");
        a.add_user("carol@example.net", "pw");
        a.roster_add("alice@localhost", "bob@localhost", "both");
        let mut alice = Client::login(&a, "alice@localhost", "wonder land", "r");
        let r = alice.iq(
            None,
            "set",
            "<vCard xmlns='vcard-temp'><FN>Alice &amp; Co</FN></vCard>",
        );
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let r = alice.iq(
            None,
            "set",
            "<query xmlns='jabber:iq:private'><prefs xmlns='exodus:prefs'>dark</prefs></query>",
        );
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        // carol is offline: kept, in order.
        for (id, body) in [("1", "first"), ("2", "second")] {
            alice.send(&format!(
                "<message to='carol@example.net' id='{id}' type='chat'><body>{body}</body></message>"
            ));
        }
        // An IQ round trip after the messages: they are stored by the time it is answered.
        std::thread::sleep(Duration::from_millis(200));
        alice.iq(None, "get", "<query xmlns='jabber:iq:roster'/>");
        drop(alice);

        let dir = a.dir.join("export1");
        let said = ok(rjabberd(&a, &["export", path(&dir)]));
        assert!(
            said.contains("localhost: 2 users, 0 skipped, 0 failed; 1 roster items, 0 offline messages, 1 vCards, 1 private items"),
            "{said}"
        );
        assert!(said.contains("example.net: 1 users"), "{said}");
        assert!(
            said.contains("1 users, 0 skipped, 0 failed; 0 roster items, 2 offline messages"),
            "{said}"
        );

        // Into a fresh server (running: the CLI works beside it).
        let mut b = TestServer::start(shards, "");
        let said = ok(rjabberd(&b, &["import", path(&dir)]));
        assert!(said.contains("alice@localhost: imported (1 roster items, 0 offline messages, 1 vCard, 1 private items)"), "{said}");
        assert!(
            said.contains("carol@example.net: imported (0 roster items, 2 offline messages"),
            "{said}"
        );
        let dir2 = b.dir.join("export2");
        ok(rjabberd(&b, &["export", path(&dir2)]));
        for f in ["server-data.xml", "localhost.xml", "example.net.xml"] {
            assert_eq!(
                std::fs::read_to_string(dir.join(f)).unwrap(),
                std::fs::read_to_string(dir2.join(f)).unwrap(),
                "{f} differs between the two exports"
            );
        }
        // Again: nothing to do, and it says so per account.
        let said = ok(rjabberd(&b, &["import", path(&dir)]));
        assert!(
            said.contains("alice@localhost: exists, skipped (--overwrite replaces it)"),
            "{said}"
        );
        assert!(
            said.contains("localhost: 0 users, 2 skipped, 0 failed"),
            "{said}"
        );

        // The shards learn who holds offline messages at their start.
        b.restart();
        let mut alice = Client::login(&b, "alice@localhost", "wonder land", "r");
        let items = roster(&mut alice);
        assert_eq!(items.len(), 1);
        assert_eq!(
            (items[0].attr("jid"), items[0].attr("subscription")),
            (Some("bob@localhost"), Some("both"))
        );
        let v = alice.iq(None, "get", "<vCard xmlns='vcard-temp'/>");
        assert_eq!(
            v.child("vCard").unwrap().child("FN").unwrap().text(),
            "Alice & Co"
        );
        let p = alice.iq(
            None,
            "get",
            "<query xmlns='jabber:iq:private'><prefs xmlns='exodus:prefs'/></query>",
        );
        assert_eq!(
            p.child("query").unwrap().child("prefs").unwrap().text(),
            "dark"
        );
        let mut carol = Client::login(&b, "carol@example.net", "pw", "r");
        carol.available(0);
        for body in ["first", "second"] {
            let m = next_message(&mut carol);
            assert_eq!(m.attr("from"), Some("alice@localhost/r"), "{m}");
            assert_eq!(m.child("body").unwrap().text(), body);
            assert!(m.child("delay").is_some(), "{m}");
        }
        b.terminate();
        a.terminate();
    }
}

#[test]
fn bad_input_is_named_and_exits_1() {
    let server = TestServer::start(1, "");
    let file = server.dir.join("bad.xml");
    std::fs::write(
        &file,
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'><user name='ok' password='pw'/><user password='pw'/></host></server-data>",
    )
    .unwrap();
    let out = rjabberd(&server, &["import", path(&file)]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("bad.xml: host localhost: a user without a name attribute: not imported"),
        "{said}"
    );
    assert!(
        said.contains("localhost: 1 users, 0 skipped, 1 failed"),
        "{said}"
    );
    std::fs::write(&file, "<host xmlns='urn:xmpp:pie:0' jid='localhost'>").unwrap();
    let out = rjabberd(&server, &["import", path(&file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.xml: not a well-formed XML document"),
        "{out:?}"
    );
}

/// A XEP-0227 `<user/>` with the SCRAM keys of `hash` alone, as ejabberd and Prosody export them.
fn one_hash_user(name: &str, hash: Hash, password: &str) -> String {
    use base64::Engine;
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let c = ScramCredential::derive(hash, password, b"a salt of 16 b..", 4096);
    let mechanism = match hash {
        Hash::Sha1 => "SCRAM-SHA-1",
        Hash::Sha256 => "SCRAM-SHA-256",
    };
    format!(
        "<user name='{name}'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='{mechanism}'>\
         <iter-count>4096</iter-count><salt>{}</salt><server-key>{}</server-key>\
         <stored-key>{}</stored-key></scram-credentials></user>",
        b64(&c.salt),
        b64(&c.server_key),
        b64(&c.stored_key)
    )
}

/// The migration path of docs/storage.md: an imported account with one hash's keys fails the other
/// hash's SCRAM, logs in with PLAIN, and from then on the other SCRAM works too; a wrong PLAIN password
/// upgrades nothing. Both ways: SHA-1 keys alone (ejabberd, Prosody's default) and SHA-256 alone.
#[test]
fn a_one_hash_account_is_upgraded_at_a_plain_login() {
    for shards in SHARDS {
        let server = TestServer::start_capturing(shards, "[log]\nlevel = \"info\"\n");
        let juliet = "juliet@localhost";
        let nurse = common::on_another_shard(juliet, "nurse", shards);
        let nurse_local = nurse.split_once('@').unwrap().0;
        let file = server.dir.join("one-hash.xml");
        std::fs::write(
            &file,
            format!(
                "<?xml version='1.0'?>\n<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'>{}{}</host></server-data>\n",
                one_hash_user("juliet", Hash::Sha1, "r0meo&me"),
                one_hash_user(nurse_local, Hash::Sha256, "n0 secret"),
            ),
        )
        .unwrap();
        let said = ok(rjabberd(&server, &["import", path(&file)]));
        assert!(
            said.contains("localhost: 2 users, 0 skipped, 0 failed"),
            "{said}"
        );
        for (jid, password, has, lacks) in [
            (juliet, "r0meo&me", "SCRAM-SHA-1", "SCRAM-SHA-256"),
            (nurse.as_str(), "n0 secret", "SCRAM-SHA-256", "SCRAM-SHA-1"),
        ] {
            let failed = |r: Result<Client, Element>| r.err().map(|e| e.to_string());
            let refused = failed(login_with(&server, lacks, jid, password));
            assert!(
                refused
                    .as_deref()
                    .is_some_and(|e| e.contains("not-authorized")),
                "{jid} {lacks} before: {refused:?}"
            );
            assert!(
                login_with(&server, has, jid, password).is_ok(),
                "{jid} {has}"
            );
            // A wrong password neither logs in nor upgrades.
            assert!(login_with(&server, "PLAIN", jid, "guess").is_err());
            assert!(
                login_with(&server, lacks, jid, password).is_err(),
                "{jid}: {lacks} after a failed PLAIN"
            );
            assert!(
                login_with(&server, "PLAIN", jid, password).is_ok(),
                "{jid} PLAIN"
            );
            // At once, and on as many connections as there are shards to accept them.
            for _ in 0..shards {
                let after = login_with(&server, lacks, jid, password);
                assert!(
                    after.is_ok(),
                    "{jid} {lacks} after PLAIN: {:?}",
                    failed(after)
                );
            }
            assert!(
                login_with(&server, has, jid, password).is_ok(),
                "{jid} {has} still"
            );
            assert!(login_with(&server, lacks, jid, "guess").is_err());
            // An account with both hashes upgrades nothing at its next PLAIN login.
            assert!(login_with(&server, "PLAIN", jid, password).is_ok());
            let log = server.stderr.lock().unwrap().join("\n");
            assert_eq!(
                log.matches(&format!("event=keys-upgraded jid={jid} mechanism={lacks}"))
                    .count(),
                1,
                "one upgrade, logged: {log}"
            );
        }
        let log = server.stderr.lock().unwrap().join("\n");
        assert_eq!(log.matches("event=keys-upgraded").count(), 2, "{log}");
        assert!(!log.contains("keys-upgrade-failed"), "{log}");
    }
}

#[test]
#[cfg_attr(rjabberd_no_ejabberd, ignore = "SKIPPED: ejabberd not installed")]
#[cfg_attr(
    all(rjabberd_skip_e2e, not(rjabberd_no_ejabberd)),
    ignore = "RJABBERD_SKIP_E2E is set (needs ejabberd)"
)]
fn from_a_real_ejabberd() {
    let mut server = TestServer::start(2, "");
    let dir = server.dir.join("from-ejabberd");
    let started = Instant::now();
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/piefxis/ejabberd.sh"
    ))
    .arg("export")
    .arg(&dir)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "ejabberd export failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "ejabberd started, filled, exported and stopped in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let said = ok(rjabberd(&server, &["import", path(&dir)]));
    assert!(
        said.contains("juliet@example.net: imported (1 roster items, 1 offline messages, 1 vCard, 1 private items)"),
        "{said}"
    );
    assert!(
        said.contains("example.net: 2 users, 0 skipped, 0 failed"),
        "{said}"
    );
    server.restart();

    // ejabberd kept SCRAM-SHA-1 keys only: SCRAM-SHA-1 and PLAIN work, SCRAM-SHA-256 not until a
    // PLAIN login has made its keys.
    let mut juliet = login_with(&server, "SCRAM-SHA-1", "juliet@example.net", "r0meo&me").unwrap();
    let refused = login_with(&server, "SCRAM-SHA-256", "romeo@example.net", "j<3").err();
    assert_eq!(refused.map(|e| e.name), Some("failure".to_string()));
    assert!(login_with(&server, "PLAIN", "romeo@example.net", "j<4").is_err());
    assert!(login_with(&server, "PLAIN", "romeo@example.net", "j<3").is_ok());
    assert!(login_with(&server, "SCRAM-SHA-256", "romeo@example.net", "j<3").is_ok());

    let items = roster(&mut juliet);
    assert_eq!(items.len(), 1, "{items:?}");
    let romeo = &items[0];
    assert_eq!(
        (
            romeo.attr("jid"),
            romeo.attr("subscription"),
            romeo.attr("name")
        ),
        (Some("romeo@example.net"), Some("both"), Some("Romeo"))
    );
    assert_eq!(romeo.child("group").unwrap().text(), "Montagues");
    let v = juliet.iq(None, "get", "<vCard xmlns='vcard-temp'/>");
    assert_eq!(
        v.child("vCard").unwrap().child("FN").unwrap().text(),
        "Juliet Capulet"
    );
    let p = juliet.iq(
        None,
        "get",
        "<query xmlns='jabber:iq:private'><prefs xmlns='example:prefs'/></query>",
    );
    let prefs = p.child("query").unwrap().child("prefs").unwrap();
    assert_eq!(prefs.child("colour").unwrap().text(), "red");
    juliet.available(0);
    let m = next_message(&mut juliet);
    assert_eq!(m.attr("from"), Some("romeo@example.net/orchard"), "{m}");
    assert_eq!(
        m.child("body").unwrap().text(),
        "What light through yonder window breaks?"
    );
    assert!(m.child("delay").is_some(), "{m}");
    server.terminate();
}

#[test]
#[cfg_attr(rjabberd_no_ejabberd, ignore = "SKIPPED: ejabberd not installed")]
#[cfg_attr(
    all(rjabberd_skip_e2e, not(rjabberd_no_ejabberd)),
    ignore = "RJABBERD_SKIP_E2E is set (needs ejabberd)"
)]
fn to_a_real_ejabberd() {
    let server = TestServer::start(1, "");
    server.add_user("alice@example.net", "wonder land");
    server.roster_add("alice@example.net", "bob@example.net", "both");
    let dir = server.dir.join("to-ejabberd");
    // The throw-away ejabberd serves example.net alone.
    ok(rjabberd(
        &server,
        &["export", "--ejabberd", "--host", "example.net", path(&dir)],
    ));
    let started = Instant::now();
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/piefxis/ejabberd.sh"
    ))
    .arg("import")
    .arg(dir.join("server-data.xml"))
    .args(["alice", "wonder land"])
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "ejabberd started, imported and stopped in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(said.contains("users: alice"), "{said}");
    assert!(said.contains("password: right"), "{said}");
    assert!(said.contains("bob@example.net\t\tboth"), "{said}");
}

/// The XEP-0227 files of a throw-away Prosody, made once for every shard count.
fn prosody_files(dir: &Path) {
    let started = Instant::now();
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/piefxis/prosody.sh"
    ))
    .arg(dir)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "Prosody migration failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "Prosody data written and migrated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
#[cfg_attr(rjabberd_no_prosody, ignore = "SKIPPED: Prosody not installed")]
#[cfg_attr(
    all(rjabberd_skip_e2e, not(rjabberd_no_prosody)),
    ignore = "RJABBERD_SKIP_E2E is set (needs Prosody)"
)]
fn from_a_real_prosody() {
    let files = std::env::temp_dir().join(format!("rjabberd-from-prosody-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&files);
    prosody_files(&files);
    let mut names: Vec<String> = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "juliet@example.net.xml",
            "nurse@localhost.xml",
            "romeo@example.net.xml"
        ],
        "one file per account"
    );
    for shards in SHARDS {
        let mut server = TestServer::start(shards, "");
        let said = ok(rjabberd(&server, &["import", path(&files)]));
        assert!(
            said.contains("juliet@example.net: imported (3 roster items, 0 offline messages, 1 vCard, 1 private items); SCRAM-SHA-1 only"),
            "{said}"
        );
        assert!(
            said.contains("example.net: 2 users, 0 skipped, 0 failed; 3 roster items, 0 offline messages, 1 vCards, 1 private items"),
            "{said}"
        );
        assert!(
            said.contains("nurse@localhost: imported (0 roster items, 0 offline messages, 0 vCard, 0 private items); SCRAM-SHA-256 only"),
            "{said}"
        );
        assert!(
            said.contains("localhost: 1 users, 0 skipped, 0 failed"),
            "{said}"
        );
        server.restart();

        // internal_hashed kept SCRAM-SHA-1 keys: SCRAM-SHA-1 and PLAIN log in, SCRAM-SHA-256 cannot.
        let mut juliet =
            login_with(&server, "SCRAM-SHA-1", "juliet@example.net", "r0meo&me").unwrap();
        assert!(login_with(&server, "SCRAM-SHA-1", "romeo@example.net", "j<4").is_err());
        let refused = login_with(&server, "SCRAM-SHA-256", "romeo@example.net", "j<3").err();
        assert_eq!(refused.map(|e| e.name), Some("failure".to_string()));
        // A PLAIN login makes the SHA-256 keys.
        assert!(login_with(&server, "PLAIN", "romeo@example.net", "j<3").is_ok());
        assert!(login_with(&server, "SCRAM-SHA-256", "romeo@example.net", "j<3").is_ok());
        // password_hash = "SHA-256": the other way round.
        assert!(login_with(&server, "SCRAM-SHA-256", "nurse@localhost", "n0 secret").is_ok());
        assert!(login_with(&server, "SCRAM-SHA-256", "nurse@localhost", "n0 secrets").is_err());
        let refused = login_with(&server, "SCRAM-SHA-1", "nurse@localhost", "n0 secret").err();
        assert_eq!(refused.map(|e| e.name), Some("failure".to_string()));
        assert!(login_with(&server, "PLAIN", "nurse@localhost", "n0 secret").is_ok());
        assert!(login_with(&server, "SCRAM-SHA-1", "nurse@localhost", "n0 secret").is_ok());

        let mut items = roster(&mut juliet);
        items.sort_by(|a, b| a.attr("jid").cmp(&b.attr("jid")));
        assert_eq!(items.len(), 2, "{items:?}");
        let (nurse, romeo) = (&items[0], &items[1]);
        assert_eq!(
            (
                romeo.attr("jid"),
                romeo.attr("subscription"),
                romeo.attr("name")
            ),
            (Some("romeo@example.net"), Some("both"), Some("Romeo"))
        );
        assert_eq!(romeo.child("group").unwrap().text(), "Montagues");
        assert_eq!(
            (
                nurse.attr("jid"),
                nurse.attr("subscription"),
                nurse.attr("ask")
            ),
            (Some("nurse@localhost"), Some("none"), Some("subscribe"))
        );
        let v = juliet.iq(None, "get", "<vCard xmlns='vcard-temp'/>");
        let card = v.child("vCard").unwrap();
        assert_eq!(card.child("FN").unwrap().text(), "Juliet Capulet");
        assert_eq!(card.child("NICKNAME").unwrap().text(), "Jules & co");
        let p = juliet.iq(
            None,
            "get",
            "<query xmlns='jabber:iq:private'><prefs xmlns='example:prefs'/></query>",
        );
        let prefs = p.child("query").unwrap().child("prefs").unwrap();
        assert_eq!(prefs.child("colour").unwrap().text(), "red");
        // Prosody's pending request from paris (not on the roster) comes at the initial presence.
        juliet.send("<presence/>");
        let mut seen = Vec::new();
        loop {
            match juliet.next_within(Duration::from_secs(5)) {
                Some(Got::El(e))
                    if e.name == "presence"
                        && e.attr("type") == Some("subscribe")
                        && e.attr("from") == Some("paris@example.net") =>
                {
                    break;
                }
                Some(Got::El(e)) => seen.push(e),
                other => panic!("no subscription request from paris: {other:?} after {seen:?}"),
            }
        }
        server.terminate();
    }
    let _ = std::fs::remove_dir_all(&files);
}

// The key upgrade with the store on PostgreSQL, whose conditional write is SQL of its own.
crate::postgres_twins!(a_one_hash_account_is_upgraded_at_a_plain_login,);

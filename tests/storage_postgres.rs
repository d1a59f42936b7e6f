//! The PostgreSQL backend from outside (issue 12): real servers with `[storage] backend = "postgres"`
//! on one throw-away database. Accounts added through one host's `rjabberd user` are accounts on every
//! host at once, and a removal is seen as quickly; `rjabberd storage migrate` runs alone and exits.
//! Built as ignored when PostgreSQL is not installed (build.rs).

mod common;

use std::process::Command;

use common::pg::PgInstance;
use std::time::{Duration, Instant};

use common::{Client, Got, TestServer};

fn storage(url: &str) -> String {
    format!("[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 2\n")
}

/// Whether `user` (local@host) can authenticate with `password` on `server`.
fn sasl_succeeds(server: &TestServer, user: &str, password: &str) -> bool {
    Client::authenticate(server, user, password, "SCRAM-SHA-256")
        .1
        .name
        == "success"
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn hosts_on_one_database_share_their_accounts() {
    let Some(pg) = PgInstance::start() else {
        return;
    };
    let url = pg.create_db("shared");
    // Two hosts, with 1 and 2 shards, on one database; the second starts on a migrated schema.
    let a = TestServer::start(1, &storage(&url));
    let b = TestServer::start(2, &storage(&url));
    assert!(
        !a.dir.join("data/rjabberd.sqlite3").exists(),
        "no SQLite file beside PostgreSQL"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_rjabberd"))
        .arg("--config")
        .arg(a.config_path())
        .args(["storage", "migrate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("nothing to apply"), "{said}");

    // Added through one host, an account on both.
    a.add_user("alice@localhost", "pw-a");
    drop(Client::login(&a, "alice@localhost", "pw-a", "one"));
    drop(Client::login(&b, "alice@localhost", "pw-a", "two"));
    b.add_user("bob@example.net", "pw-b");
    drop(Client::login(&a, "bob@example.net", "pw-b", "r"));

    // A password change and a removal through one host hold on the other at its next login.
    let out = b.user(&["passwd", "alice@localhost", "--password", "new"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!sasl_succeeds(&a, "alice@localhost", "pw-a"));
    assert!(sasl_succeeds(&a, "alice@localhost", "new"));
    let out = a.user(&["del", "bob@example.net"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!sasl_succeeds(&b, "bob@example.net", "pw-b"));
    let out = b.user(&["list"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice@localhost\n");
}

/// Needs no PostgreSQL: the configuration is checked before anything connects.
#[test]
fn a_bad_database_url_stops_the_start_with_its_line() {
    let dir = std::env::temp_dir().join(format!("rjabberd-pgconf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rjabberd.toml");
    std::fs::write(
        &config,
        "[[host]]\nname = \"localhost\"\n[storage]\nbackend = \"postgres\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rjabberd"))
        .arg("--config")
        .arg(&config)
        .args(["storage", "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.url"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SASL outcome of a fresh connection's SCRAM-SHA-256 login: `success`, or `failure` with its
/// condition.
fn sasl_outcome(server: &TestServer, user: &str, password: &str) -> String {
    let (_, r) = Client::authenticate(server, user, password, "SCRAM-SHA-256");
    match r.child_elements().find(|e| e.name != "text") {
        Some(condition) if r.name == "failure" => format!("failure: {}", condition.name),
        _ => r.name.clone(),
    }
}

/// The next message-or-presence element `c` receives (IQ answers asked for elsewhere are kept).
fn next_stanza(c: &mut Client) -> rjabberd::proto::xml::Element {
    loop {
        match c.next() {
            Got::El(e) if e.name == "message" || e.name == "presence" => return e,
            Got::El(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Issue 12's fault: PostgreSQL stops under a running server and starts again. Meanwhile the sessions
/// there are keep working, a login fails with `temporary-auth-failure` (and not `not-authorized`,
/// which would tell clients the password is wrong), a message that would be kept offline comes back
/// to its sender as an error instead of vanishing, an IQ that needs the store is answered with an
/// error; afterwards logins and offline storage work again without a restart of rjabberd.
#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn the_server_rides_out_a_database_restart() {
    for shards in common::SHARDS {
        let Some(pg) = PgInstance::start() else {
            return;
        };
        let url = pg.create_db("fault");
        let server = TestServer::start(shards, &storage(&url));
        for u in [
            "alice@localhost",
            "bob@localhost",
            "carol@localhost",
            "dave@localhost",
        ] {
            server.add_user(u, "pw");
        }
        let mut alice = Client::login(&server, "alice@localhost", "pw", "a");
        alice.available(0);
        let mut bob = Client::login(&server, "bob@localhost", "pw", "b");
        bob.available(0);
        alice.drain(Duration::from_millis(200));

        pg.stop();

        // Sessions that exist need no store to talk.
        alice.send(
            "<message to='bob@localhost' type='chat' id='m1'><body>still here</body></message>",
        );
        let got = next_stanza(&mut bob);
        assert_eq!(
            (got.name.as_str(), got.attr("id")),
            ("message", Some("m1")),
            "{got}"
        );
        let pong = alice.iq(Some("localhost"), "get", "<ping xmlns='urn:xmpp:ping'/>");
        assert_eq!(pong.attr("type"), Some("result"), "{pong}");

        // A login cannot be checked: a temporary failure.
        let started = Instant::now();
        assert_eq!(
            sasl_outcome(&server, "dave@localhost", "pw"),
            "failure: temporary-auth-failure"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a refused connection fails at once, not after the query timeout: {:?}",
            started.elapsed()
        );

        // A message for an offline account is not kept and not dropped: its sender hears.
        alice
            .send("<message to='carol@localhost' type='chat' id='m2'><body>kept?</body></message>");
        let bounced = next_stanza(&mut alice);
        assert_eq!(bounced.attr("id"), Some("m2"), "{bounced}");
        assert_eq!(bounced.attr("type"), Some("error"), "{bounced}");
        assert_eq!(
            common::error_condition(&bounced).as_deref(),
            Some("internal-server-error"),
            "{bounced}"
        );
        // An IQ the store answers is answered with an error.
        let vcard = alice.iq(None, "get", "<vCard xmlns='vcard-temp'/>");
        assert_eq!(vcard.attr("type"), Some("error"), "{vcard}");

        pg.start_again();

        // The workers reconnect by themselves (their backoff is at most 5 s).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let outcome = sasl_outcome(&server, "dave@localhost", "pw");
            if outcome == "success" {
                break;
            }
            assert_eq!(outcome, "failure: temporary-auth-failure");
            assert!(
                Instant::now() < deadline,
                "no login within 20 s of the restart"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Every worker is back: each of several logins succeeds (one per worker at least).
        for _ in 0..4 {
            assert_eq!(sasl_outcome(&server, "dave@localhost", "pw"), "success");
        }
        // Offline storage works again, and the earlier sessions never noticed.
        alice.send("<message to='carol@localhost' type='chat' id='m3'><body>kept</body></message>");
        let quiet = alice.drain(Duration::from_millis(500));
        assert!(quiet.is_empty(), "no error this time: {quiet:?}");
        let mut carol = Client::login(&server, "carol@localhost", "pw", "c");
        carol.send("<presence/>");
        let first = loop {
            let e = next_stanza(&mut carol);
            if e.name == "message" {
                break e;
            }
        };
        let mut ids = vec![first.attr("id").map(str::to_string)];
        for g in carol.drain(Duration::from_millis(300)) {
            if let Got::El(e) = g
                && e.name == "message"
            {
                ids.push(e.attr("id").map(str::to_string));
            }
        }
        assert_eq!(
            ids,
            vec![Some("m3".to_string())],
            "only what was accepted was kept"
        );
        alice.send("<message to='bob@localhost' type='chat' id='m4'><body>after</body></message>");
        let got = next_stanza(&mut bob);
        assert_eq!(got.attr("id"), Some("m4"), "{got}");

        // A restart nobody queried through (a quick maintenance restart) costs no login: the
        // connections it ended are replaced as they are next used.
        pg.stop();
        pg.start_again();
        for _ in 0..4 {
            assert_eq!(sasl_outcome(&server, "dave@localhost", "pw"), "success");
        }
    }
}

//! The PostgreSQL backend from outside (issue 12): real servers with `[storage] backend = "postgres"`
//! on one throw-away database. Accounts added through one host's `rjabberd user` are accounts on every
//! host at once, and a removal is seen as quickly; `rjabberd storage migrate` runs alone and exits.
//! Built as ignored when PostgreSQL is not installed (build.rs).

mod common;

use std::process::Command;

use common::pg::PgInstance;
use common::{Client, TestServer};

fn storage(url: &str) -> String {
    format!("[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 2\n")
}

/// Whether `user` (local@host) can authenticate with `password` on `server`.
fn sasl_succeeds(server: &TestServer, user: &str, password: &str) -> bool {
    let (local, host) = user.split_once('@').unwrap();
    let mut c = Client::connect(server.starttls, server.cert_path());
    c.open(host);
    c.starttls();
    c.open(host);
    c.sasl("SCRAM-SHA-256", local, password, None).name == "success"
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

//! End to end with clients nobody here wrote: go-sendxmpp (Debian) delivers a message over STARTTLS to a
//! user logged in with the test client, and slixmpp (PyPI) does the same over STARTTLS with SCRAM, after
//! asking the server for service discovery and pinging it with its own XEP-0030 and XEP-0199 plugins. Both
//! verify the server's certificate against the one rjabberd generated; slixmpp clients also become
//! contacts (rosters, presence), get message carbons (XEP-0280) and block each other (XEP-0191). `.ci/run` installs both. On a
//! machine without them, `RJABBERD_SKIP_E2E=1 cargo test` builds them `#[ignore]`d (see build.rs), so
//! cargo reports them as ignored, not passed. With 1 and 2 shards.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Client, SHARDS, TestServer};

fn receive(juliet: &mut Client, body: &str) -> rjabberd::proto::xml::Element {
    loop {
        let m = juliet.el();
        if m.name == "message" {
            assert_eq!(
                m.child("body").map(|b| b.text()).as_deref(),
                Some(body),
                "{m}"
            );
            return m;
        }
    }
}

#[test]
#[cfg_attr(
    rjabberd_skip_e2e,
    ignore = "RJABBERD_SKIP_E2E is set (needs go-sendxmpp)"
)]
fn go_sendxmpp_delivers_over_starttls() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("juliet@localhost", "pencil");
        server.add_user("romeo@localhost", "montague");
        let mut juliet = Client::login(&server, "juliet@localhost", "pencil", "balcony");
        juliet.available(1);
        let body = format!("wherefore art thou, {shards}");
        let mut child = Command::new("go-sendxmpp")
            .env("SSL_CERT_FILE", server.cert_path())
            .args(["-u", "romeo@localhost", "-p", "montague", "-j"])
            .arg(server.starttls.to_string())
            .arg("juliet@localhost")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("go-sendxmpp is installed (apt-get install go-sendxmpp), or set RJABBERD_SKIP_E2E=1");
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
        }
        let status = child.wait().unwrap();
        assert!(status.success(), "go-sendxmpp failed: {status:?}");
        let m = receive(&mut juliet, &body);
        assert!(
            m.attr("from").unwrap().starts_with("romeo@localhost/"),
            "{m}"
        );
    }
}

#[test]
#[cfg_attr(rjabberd_skip_e2e, ignore = "RJABBERD_SKIP_E2E is set (needs slixmpp)")]
fn slixmpp_delivers_over_starttls_with_scram() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("juliet@localhost", "pencil");
        server.add_user("romeo@localhost", "montague");
        let mut juliet = Client::login(&server, "juliet@localhost", "pencil", "balcony");
        juliet.available(1);
        let body = format!("parting is such sweet sorrow, {shards}");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/slixmpp_send.py");
        let out = Command::new("python3")
            .arg(script)
            .args(["romeo@localhost", "montague", "127.0.0.1"])
            .arg(server.starttls.port().to_string())
            .arg(server.cert_path())
            .args(["juliet@localhost", &body])
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("SENT"),
            "slixmpp failed (pip install slixmpp, or set RJABBERD_SKIP_E2E=1): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("MECHANISM SCRAM-SHA-"),
            "SCRAM was used: {stdout}"
        );
        // slixmpp's own disco and ping plugins understood the server's module answers.
        assert!(
            stdout.lines().any(|l| l.starts_with("DISCO ")
                && l.contains("urn:xmpp:ping")
                && l.contains("http://jabber.org/protocol/disco#info")),
            "{stdout}"
        );
        assert!(stdout.contains("PING OK"), "{stdout}");
        let m = receive(&mut juliet, &body);
        assert!(
            m.attr("from").unwrap().starts_with("romeo@localhost/"),
            "{m}"
        );
        juliet.drain(Duration::from_millis(100));
    }
}

#[test]
#[cfg_attr(rjabberd_skip_e2e, ignore = "RJABBERD_SKIP_E2E is set (needs slixmpp)")]
fn slixmpp_contacts_subscribe_and_see_each_other_come_and_go() {
    two_accounts_script(
        "slixmpp_roster",
        &["romeo@localhost", "montague", "juliet@localhost", "pencil"],
        &[
            "ROMEO ROSTER 0",
            "JULIET ROSTER 0",
            "ROMEO SAW ONLINE juliet@localhost",
            "JULIET SAW ONLINE romeo@localhost",
            "ROMEO SUBSCRIPTION both",
            "JULIET SUBSCRIPTION both",
            "ROMEO SAW OFFLINE juliet@localhost",
            "DONE",
        ],
    );
}

#[test]
#[cfg_attr(rjabberd_skip_e2e, ignore = "RJABBERD_SKIP_E2E is set (needs slixmpp)")]
fn slixmpp_clients_get_message_carbons() {
    two_accounts_script(
        "slixmpp_carbons",
        &["juliet@localhost", "pencil", "romeo@localhost", "montague"],
        &[
            "DISCO CARBONS",
            "PHONE CARBONS ENABLED",
            "LAPTOP CARBONS ENABLED",
            "PHONE GOT romeo@localhost wherefore art thou",
            "LAPTOP GOT RECEIVED FROM romeo@localhost TO juliet@localhost/phone BODY wherefore art thou",
            "BOB GOT juliet@localhost/phone deny thy father",
            "LAPTOP GOT SENT FROM juliet@localhost/phone TO romeo@localhost BODY deny thy father",
            "PHONE CARBONS 0",
            "LAPTOP MESSAGES 0",
            "DONE",
        ],
    );
}

#[test]
#[cfg_attr(rjabberd_skip_e2e, ignore = "RJABBERD_SKIP_E2E is set (needs slixmpp)")]
fn slixmpp_blocks_and_unblocks() {
    two_accounts_script(
        "slixmpp_blocking",
        &["juliet@localhost", "pencil", "romeo@localhost", "montague"],
        &[
            "DISCO BLOCKING",
            "BLOCKLIST romeo@localhost",
            "ROMEO GOT error service-unavailable",
            "JULIET GOT romeo@localhost it is the east 0",
            "DONE",
        ],
    );
}

/// Runs `tests/e2e/{script}.py` with 1 and 2 shards against a server with the accounts juliet (password
/// `pencil`) and romeo (`montague`): its arguments are the STARTTLS address, the certificate and
/// `accounts` (JIDs and passwords in the order it takes them); every line of `expected` must be among
/// what it printed.
fn two_accounts_script(script: &str, accounts: &[&str], expected: &[&str]) {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("juliet@localhost", "pencil");
        server.add_user("romeo@localhost", "montague");
        let path = format!("{}/tests/e2e/{script}.py", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("python3")
            .arg(path)
            .arg("127.0.0.1")
            .arg(server.starttls.port().to_string())
            .arg(server.cert_path())
            .args(accounts)
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in expected {
            assert!(
                stdout.lines().any(|l| l == *line),
                "{shards} shard(s): `{line}` missing (pip install slixmpp, or set RJABBERD_SKIP_E2E=1):\n{stdout}\n{stderr}"
            );
        }
    }
}

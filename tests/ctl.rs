//! `rjabberd ctl` against a running server, with 1 and 2 shards (an account's second user on another
//! shard): every command's text and `--json` answer; kick ends sessions with `policy-violation` and the
//! reason, and they leave `connected-users`; send-message reaches an online session and is kept for an
//! offline account until its initial presence; registered-users lists exactly the accounts; reload
//! applies a changed `[modules]` and a broken file changes nothing and names its line; the exit codes of
//! usage errors and of no server; the socket is 0600 and a user other than root (or the server's) is
//! turned away, at the file and at the peer-credentials check.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Client, Got, SHARDS, TestServer, on_another_shard};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

fn run(mut cmd: Command) -> Out {
    let out = cmd.output().expect("rjabberd runs");
    Out {
        code: out.status.code().expect("an exit code"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn ctl_with(config: &Path, args: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rjabberd"));
    cmd.arg("--config").arg(config).arg("ctl").args(args);
    run(cmd)
}

fn ctl(server: &TestServer, args: &[&str]) -> Out {
    ctl_with(&server.config_path(), args)
}

fn socket(server: &TestServer) -> PathBuf {
    server.dir.join("data/rjabberd.ctl")
}

/// `connected-users` until it equals `want` (sessions end a moment after their stream error).
fn wait_connected(server: &TestServer, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = ctl(server, &["connected-users"]).ok();
        let got: Vec<&str> = out.stdout.lines().collect();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{got:?} vs {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads up to the stream error: its condition and text.
fn stream_error_with_text(c: &mut Client) -> (String, String) {
    loop {
        match c.next() {
            Got::El(e) if e.name == "stream:error" => {
                let condition = e
                    .child_elements()
                    .find(|c| c.name != "text")
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                let text = e.child("text").map(|t| t.text()).unwrap_or_default();
                return (condition, text);
            }
            Got::Close | Got::Eof => panic!("the stream ended without an error"),
            _ => {}
        }
    }
}

fn message(c: &mut Client) -> rjabberd::proto::xml::Element {
    loop {
        match c.next() {
            Got::El(e) if e.name == "message" => return e,
            Got::El(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn every_command_answers_in_text_and_json() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "[metrics]\nlatency_sample = 1\n");
        let bob_jid = on_another_shard("alice@localhost", "bob", shards);
        server.add_user("alice@localhost", "pw");
        server.add_user(&bob_jid, "pw");
        let mut a1 = Client::login(&server, "alice@localhost", "pw", "one");
        let mut a2 = Client::login(&server, "alice@localhost", "pw", "two");
        let mut bob = Client::login(&server, &bob_jid, "pw", "r");
        a1.available(5);
        a2.available(-1);
        bob.available(0);
        for i in 0..10 {
            a1.send(&format!(
                "<message to='{bob_jid}' type='chat' id='m{i}'><body>hi</body></message>"
            ));
            assert_eq!(message(&mut bob).attr("id"), Some(&*format!("m{i}")));
        }

        let out = ctl(&server, &["status"]).ok();
        assert!(
            out.stdout.starts_with("The node rjabberd@")
                && out.stdout.contains("is started with status: started"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains(&format!("{shards} shard(s)"))
                && out.stdout.contains("3 session(s) of 2 account(s)"),
            "{}",
            out.stdout
        );
        let j = ctl(&server, &["--json", "status"]).ok().json();
        assert_eq!(j["status"], "started");
        assert_eq!(j["shards"], shards);
        assert_eq!(j["sessions"], 3);
        assert_eq!(j["connections"]["c2s"], 3);

        let out = ctl(&server, &["stats"]).ok();
        assert!(
            out.stdout
                .contains("registered users: localhost 2, example.net 0 (2 in all)"),
            "{}",
            out.stdout
        );
        let sessions_row: Vec<&str> = out
            .stdout
            .lines()
            .find(|l| l.starts_with("sessions "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(sessions_row.len(), 1 + shards + 1, "{}", out.stdout);
        assert_eq!(sessions_row.last(), Some(&"3"));
        let j = ctl(&server, &["stats", "--json"]).ok().json();
        assert_eq!(j["registered_users"]["localhost"], 2);
        assert_eq!(j["shards"].as_array().unwrap().len(), shards);
        assert_eq!(j["total"]["sessions"], 3);
        assert_eq!(j["total"]["online_users"], 2);
        assert!(j["total"]["stanzas_in"]["message"].as_u64().unwrap() >= 10);

        let mut want = vec![
            "alice@localhost/one".to_string(),
            "alice@localhost/two".to_string(),
            format!("{bob_jid}/r"),
        ];
        want.sort();
        let out = ctl(&server, &["connected-users"]).ok();
        assert_eq!(out.stdout.lines().collect::<Vec<_>>(), want);
        let j = ctl(&server, &["connected_users", "--json"]).ok().json();
        assert_eq!(j["connected_users"], serde_json::json!(want));

        let home = rjabberd::placement::home("alice@localhost", shards).shard;
        let out = ctl(&server, &["user-sessions", "alice@localhost"]).ok();
        assert_eq!(
            out.stdout,
            format!(
                "alice@localhost/one\tpriority 5\tavailable\tshard {home}\n\
                 alice@localhost/two\tpriority -1\tavailable\tshard {home}\n"
            )
        );
        let j = ctl(&server, &["--json", "user-sessions", "alice@localhost"])
            .ok()
            .json();
        assert_eq!(j["sessions"].as_array().unwrap().len(), 2);
        assert_eq!(j["sessions"][0]["shard"], home);
        let out = ctl(&server, &["user-sessions", "nobody@localhost"]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains("nobody@localhost has no session"));

        let out = ctl(&server, &["registered-users", "localhost"]).ok();
        let mut accounts = vec!["alice@localhost".to_string(), bob_jid.clone()];
        accounts.sort();
        assert_eq!(out.stdout.lines().collect::<Vec<_>>(), accounts);
        let j = ctl(&server, &["registered-users", "localhost", "--json"])
            .ok()
            .json();
        assert_eq!(j["users"], serde_json::json!(accounts));
        assert_eq!(
            ctl(&server, &["registered-users", "example.net"])
                .ok()
                .stdout,
            ""
        );
        let out = ctl(&server, &["registered-users", "elsewhere.org"]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(out.stderr.contains("not a host this server serves"));

        let out = ctl(&server, &["latency"]).ok();
        assert!(
            out.stdout.contains("one stanza in 1 sampled"),
            "{}",
            out.stdout
        );
        let header = out.stdout.lines().nth(1).unwrap();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            [
                "stage", "shard", "count", "p50", "p90", "p99", "p99.9", "max"
            ]
        );
        let j = ctl(&server, &["latency", "--json"]).ok().json();
        let total_since_start = j["stages"]["total"]["all"]["count"].as_u64().unwrap();
        assert!(total_since_start >= 10, "{j}");
        assert_eq!(
            j["stages"]["total"]["shards"].as_array().unwrap().len(),
            shards
        );
        if shards > 1 {
            assert!(j["stages"]["mesh"]["all"]["count"].as_u64().unwrap() >= 10);
        }
        // Over an interval: only what happened in it.
        let config = server.config_path();
        let sampler = std::thread::spawn(move || {
            ctl_with(&config, &["--json", "latency", "--interval", "2"])
                .ok()
                .json()
        });
        std::thread::sleep(Duration::from_millis(500));
        for i in 0..5 {
            a1.send(&format!(
                "<message to='{bob_jid}' type='chat' id='n{i}'><body>hi</body></message>"
            ));
            message(&mut bob);
        }
        let j = sampler.join().unwrap();
        assert_eq!(j["interval_secs"], 2);
        let in_interval = j["stages"]["total"]["all"]["count"].as_u64().unwrap();
        assert!(
            (5..total_since_start).contains(&in_interval),
            "{in_interval} in the interval, {total_since_start} since start"
        );

        let out = ctl(&server, &["cluster", "status"]).ok();
        assert!(
            out.stdout
                .contains(&format!("is a single host with {shards} shard(s)")),
            "{}",
            out.stdout
        );
        let j = ctl(&server, &["--json", "cluster", "status"]).ok().json();
        assert_eq!(j["clustered"], false);
        assert_eq!(j["nodes"][0]["shards"], shards);

        let out = ctl(&server, &["help"]).ok();
        for c in [
            "status",
            "kick JID [REASON]",
            "latency [--interval SECONDS]",
        ] {
            assert!(out.stdout.contains(c), "{}", out.stdout);
        }
        let _ = (&mut a2, &mut bob);
    }
}

#[test]
fn kick_ends_sessions_with_the_reason() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let bob_jid = on_another_shard("alice@localhost", "bob", shards);
        server.add_user("alice@localhost", "pw");
        server.add_user(&bob_jid, "pw");
        let mut a1 = Client::login(&server, "alice@localhost", "pw", "one");
        let mut a2 = Client::login(&server, "alice@localhost", "pw", "two");
        let mut a3 = Client::login(&server, "alice@localhost", "pw", "three");
        let _bob = Client::login(&server, &bob_jid, "pw", "r");
        let bob_full = format!("{bob_jid}/r");

        // A full JID: that session only, with the reason given.
        let out = ctl(&server, &["kick", "alice@localhost/one", "spam & such"]).ok();
        assert_eq!(
            out.stdout, "kicked alice@localhost/one (spam & such)\n",
            "{}",
            out.stderr
        );
        assert_eq!(
            stream_error_with_text(&mut a1),
            ("policy-violation".into(), "spam & such".into())
        );
        let mut left = vec![
            "alice@localhost/three",
            "alice@localhost/two",
            bob_full.as_str(),
        ];
        left.sort();
        wait_connected(&server, &left);

        // A bare JID: every remaining session of the account, with the default text.
        let j = ctl(&server, &["--json", "kick", "alice@localhost"])
            .ok()
            .json();
        let mut kicked: Vec<String> = j["kicked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        kicked.sort();
        assert_eq!(kicked, ["alice@localhost/three", "alice@localhost/two"]);
        assert_eq!(j["reason"], "Kicked by administrator");
        for c in [&mut a2, &mut a3] {
            assert_eq!(
                stream_error_with_text(c),
                ("policy-violation".into(), "Kicked by administrator".into())
            );
        }
        wait_connected(&server, &[bob_full.as_str()]);

        // Nothing left to kick: exit 1.
        let out = ctl(&server, &["kick", "alice@localhost"]);
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert!(out.stderr.contains("nothing kicked"), "{}", out.stderr);
        let out = ctl(&server, &["kick", "alice@elsewhere.org"]);
        assert_eq!(out.code, 2, "{}", out.stderr);
    }
}

#[test]
fn send_message_reaches_online_and_offline_accounts() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let carol_jid = on_another_shard("bob@localhost", "carol", shards);
        server.add_user("bob@localhost", "pw");
        server.add_user(&carol_jid, "pw");
        let mut bob = Client::login(&server, "bob@localhost", "pw", "r");
        bob.available(0);

        let out = ctl(
            &server,
            &[
                "send-message",
                "admin@localhost",
                "bob@localhost",
                "Maintenance at 10:00 <UTC> & after",
            ],
        )
        .ok();
        assert_eq!(
            out.stdout,
            "sent a normal message from admin@localhost to bob@localhost\n"
        );
        let m = message(&mut bob);
        assert_eq!(m.attr("from"), Some("admin@localhost"), "{m}");
        assert_eq!(m.attr("type"), Some("normal"), "{m}");
        assert_eq!(
            m.child("body").unwrap().text(),
            "Maintenance at 10:00 <UTC> & after"
        );

        // Offline: kept, then delivered after the account's initial presence.
        let j = ctl(
            &server,
            &[
                "--json",
                "send-message",
                "localhost",
                &carol_jid,
                "--",
                "--while you were away",
            ],
        )
        .ok()
        .json();
        assert_eq!(j["sent"], true);
        assert_eq!(j["type"], "normal");
        std::thread::sleep(Duration::from_millis(300));
        let mut carol = Client::login(&server, &carol_jid, "pw", "r");
        carol.available(0);
        let m = message(&mut carol);
        assert_eq!(m.attr("from"), Some("localhost"), "{m}");
        assert_eq!(m.child("body").unwrap().text(), "--while you were away");
        assert!(m.child("delay").is_some(), "a stored message: {m}");

        let out = ctl(
            &server,
            &["send-message", "admin@elsewhere.org", "bob@localhost", "x"],
        );
        assert_eq!(out.code, 2, "{}", out.stderr);
        let out = ctl(&server, &["send-message", "admin@localhost", "bob@", "x"]);
        assert_eq!(out.code, 2, "{}", out.stderr);
    }
}

#[test]
fn reload_applies_modules_and_a_broken_file_changes_nothing() {
    const VERSION: &str = "<query xmlns='jabber:iq:version'/>";
    const PING: &str = "<ping xmlns='urn:xmpp:ping'/>";
    for shards in SHARDS {
        let mut server = TestServer::start(
            shards,
            "[modules]\nmod_disco = true\nmod_ping = true\nmod_version = true\n",
        );
        server.add_user("alice@localhost", "pw");
        let mut a = Client::login(&server, "alice@localhost", "pw", "r");
        let r = a.iq(Some("localhost"), "get", VERSION);
        assert_eq!(r.attr("type"), Some("result"), "{r}");

        server.set_extra("[modules]\nmod_disco = true\nmod_ping = true\n");
        let out = ctl(&server, &["reload"]).ok();
        assert!(
            out.stdout.starts_with("modules reloaded from "),
            "{}",
            out.stdout
        );
        // Every shard applied the plan before the answer: no wait needed.
        let r = a.iq(Some("localhost"), "get", VERSION);
        assert_eq!(
            common::error_condition(&r).as_deref(),
            Some("service-unavailable"),
            "{r}"
        );

        server.set_extra("[modules]\nmod_disco = true\nmod_ping = { colour = \"red\" }\n");
        let config = std::fs::read_to_string(server.config_path()).unwrap();
        let line = config
            .lines()
            .position(|l| l.starts_with("mod_ping"))
            .unwrap()
            + 1;
        let out = ctl(&server, &["reload"]);
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert!(
            out.stderr.contains(&format!("rjabberd.toml:{line}:"))
                && out.stderr.contains("configuration unchanged"),
            "{}",
            out.stderr
        );
        let j = ctl(&server, &["--json", "reload"]).json();
        assert!(j["error"].as_str().unwrap().contains("colour"), "{j}");
        let r = a.iq(Some("localhost"), "get", PING);
        assert_eq!(r.attr("type"), Some("result"), "ping still runs: {r}");
        let r = a.iq(Some("localhost"), "get", VERSION);
        assert_eq!(
            common::error_condition(&r).as_deref(),
            Some("service-unavailable"),
            "the plan of the last good file stays: {r}"
        );
    }
}

#[test]
fn exit_codes_for_usage_errors_and_no_server() {
    let mut server = TestServer::start(1, "");
    for (args, code) in [
        (&["frobnicate"][..], 2),
        (&[][..], 2),
        (&["kick"][..], 2),
        (&["kick", "not a jid@"][..], 2),
        (&["latency", "--interval", "0"][..], 2),
        (&["status", "--verbose"][..], 2),
        (&["status"][..], 0),
        (&["help"][..], 0),
    ] {
        let out = ctl(&server, args);
        assert_eq!(out.code, code, "{args:?}: {}{}", out.stdout, out.stderr);
    }
    let path = socket(&server);
    assert!(path.exists());
    server.terminate();
    assert!(!path.exists(), "a clean shutdown removes the socket");
    let out = ctl(&server, &["status"]);
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert!(
        out.stderr.contains("cannot reach the server")
            && out.stderr.contains(&path.display().to_string()),
        "{}",
        out.stderr
    );
    let j = ctl(&server, &["--json", "status"]);
    assert_eq!(j.code, 3);
    assert!(j.json()["error"].as_str().unwrap().contains("cannot reach"));
    // Usage is checked before the server is looked for; help needs none.
    assert_eq!(ctl(&server, &["frobnicate"]).code, 2);
    assert_eq!(ctl(&server, &["help"]).code, 0);
}

#[test]
fn only_root_and_the_servers_user_may_use_the_socket() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running as another uid needs root");
        return;
    }
    let server = TestServer::start(1, "");
    let path = socket(&server);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // A copy of the binary that `nobody` may run, wherever the target directory is.
    let bin_dir = server.dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("rjabberd");
    std::fs::copy(env!("CARGO_BIN_EXE_rjabberd"), &bin).unwrap();
    for (p, m) in [(&server.dir, 0o755), (&bin_dir, 0o755), (&bin, 0o755)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    std::fs::set_permissions(server.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = || {
        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(server.config_path())
            .args(["ctl", "status"])
            .uid(65534)
            .gid(65534);
        run(cmd)
    };
    // The file's mode turns it away.
    let out = as_nobody();
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    // With the file opened to everyone (an operator's mistake), the peer-credentials check does.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(
        path.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = as_nobody();
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("permission denied: uid 65534 may not use this control socket"),
        "{}",
        out.stderr
    );
    // Root may.
    let out = ctl(&server, &["status"]).ok();
    assert!(out.stdout.contains("started"));
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(send_message_reaches_online_and_offline_accounts,);

//! The server's life: accounts made with `rjabberd user` (also while it runs) survive a restart,
//! SIGTERM gives every client `system-shutdown` and a clean exit, and a second server started on an
//! address the first listens on refuses to start instead of sharing it. With 1 and 2 shards.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, SHARDS, TestServer};

/// Long and unlikely enough that finding its bytes in the database file means it is stored there (a
/// three-letter password could match a page or schema byte by chance).
const NEW_PASSWORD: &str = "qu1nce-Wh1stle-7hr0ugh-L4ntern";

#[test]
fn users_survive_a_restart_and_the_cli_works_while_running() {
    for shards in SHARDS {
        let mut server = TestServer::start(shards, "");
        server.add_user("juliet@localhost", "pencil");
        let _ = Client::login(&server, "juliet@localhost", "pencil", "r");
        // Added while running: usable at once.
        server.add_user("romeo@example.net", "montague");
        let _ = Client::login(&server, "romeo@example.net", "montague", "r");
        let dup = server.user(&["add", "juliet@localhost", "--password", "x"]);
        assert!(!dup.status.success());
        assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
        let bad = server.user(&["add", "juliet@nowhere.example", "--password", "x"]);
        assert!(String::from_utf8_lossy(&bad.stderr).contains("not a configured host"));
        let list = server.user(&["list"]);
        assert_eq!(
            String::from_utf8_lossy(&list.stdout),
            "romeo@example.net\njuliet@localhost\n",
            "sorted by host, then name"
        );

        server.restart();
        let _ = Client::login(&server, "juliet@localhost", "pencil", "r");
        // Password change and deletion take effect for the next login.
        assert!(
            server
                .user(&["passwd", "juliet@localhost", "--password", NEW_PASSWORD])
                .status
                .success()
        );
        let mut c = Client::connect_direct(server.direct, server.cert_path());
        c.open("localhost");
        assert_eq!(
            c.sasl("SCRAM-SHA-256", "juliet", "pencil", None).name,
            "failure"
        );
        let _ = Client::login(&server, "juliet@localhost", NEW_PASSWORD, "r");
        assert!(server.user(&["del", "romeo@example.net"]).status.success());
        let mut c = Client::connect_direct(server.direct, server.cert_path());
        c.open("example.net");
        assert_eq!(c.sasl("PLAIN", "romeo", "montague", None).name, "failure");
        // Only SCRAM keys are stored: the password is nowhere in the database.
        let db = std::fs::read(server.dir.join("data/rjabberd.sqlite3")).unwrap();
        assert!(
            !db.windows(NEW_PASSWORD.len())
                .any(|w| w == NEW_PASSWORD.as_bytes()),
            "a plaintext password in the store"
        );
    }
}

#[test]
fn sigterm_sends_system_shutdown_and_exits_cleanly() {
    for shards in SHARDS {
        let mut server = TestServer::start(shards, "");
        server.add_user("a@localhost", "pw");
        server.add_user("b@localhost", "pw");
        let mut a = Client::login(&server, "a@localhost", "pw", "r");
        let mut b = Client::login(&server, "b@localhost", "pw", "r");
        let mut pre = Client::connect(server.starttls, server.cert_path());
        pre.open("localhost");
        let status = server.terminate();
        assert!(status.success(), "exit status {status:?}");
        for c in [&mut a, &mut b, &mut pre] {
            assert_eq!(c.stream_error().as_deref(), Some("system-shutdown"));
        }
    }
}

#[test]
fn a_second_server_on_the_same_address_refuses_to_start() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("juliet@localhost", "pencil");
        // Same user, same shard count, its own data directory; a free address first, then one of the
        // first server's.
        let dir = server.dir.join("second");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("rjabberd.toml");
        std::fs::write(
            &config,
            format!(
                "shards = {shards}\ndata_dir = \"{}\"\n[[host]]\nname = \"localhost\"\n\
                 [[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n\
                 [[listener]]\naddress = \"{}\"\ntls = \"direct\"\n",
                dir.join("data").display(),
                server.direct
            ),
        )
        .unwrap();
        let mut second = Command::new(env!("CARGO_BIN_EXE_rjabberd"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rjabberd starts");
        let deadline = Instant::now() + Duration::from_secs(5);
        while second.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = second.kill();
                let out = second.wait_with_output().unwrap();
                panic!(
                    "a second server on {} still runs after 5 s: {}{}",
                    server.direct,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = second.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{stdout}{stderr}");
        assert!(
            stderr.contains(&format!(
                "cannot listen on {}: the address is in use by another process",
                server.direct
            )),
            "{stderr}"
        );
        assert!(!stdout.contains("listening on"), "{stdout}");
        // The first server still has its addresses to itself: every connection reaches it.
        for i in 0..4 {
            let _ = Client::login(&server, "juliet@localhost", "pencil", &format!("r{i}"));
            let mut c = Client::connect_direct(server.direct, server.cert_path());
            c.open("localhost");
            assert!(c.mechanisms().iter().any(|m| m == "SCRAM-SHA-256"));
        }
    }
}

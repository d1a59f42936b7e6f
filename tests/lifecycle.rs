//! The server's life: accounts made with `rjabberd user` (also while it runs) survive a restart, and
//! SIGTERM gives every client `system-shutdown` and a clean exit. With 1 and 2 shards.

mod common;

use common::{Client, SHARDS, TestServer};

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
                .user(&["passwd", "juliet@localhost", "--password", "new"])
                .status
                .success()
        );
        let mut c = Client::connect_direct(server.direct, server.cert_path());
        c.open("localhost");
        assert_eq!(
            c.sasl("SCRAM-SHA-256", "juliet", "pencil", None).name,
            "failure"
        );
        let _ = Client::login(&server, "juliet@localhost", "new", "r");
        assert!(server.user(&["del", "romeo@example.net"]).status.success());
        let mut c = Client::connect_direct(server.direct, server.cert_path());
        c.open("example.net");
        assert_eq!(c.sasl("PLAIN", "romeo", "montague", None).name, "failure");
        // Only SCRAM keys are stored: the password is nowhere in the database.
        let db = std::fs::read(server.dir.join("data/rjabberd.sqlite3")).unwrap();
        assert!(
            !db.windows(3).any(|w| w == b"new"),
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

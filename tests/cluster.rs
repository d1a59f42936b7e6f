//! The cluster from outside (issue 13), as far as it is built: `rjabberd cluster status` reads the
//! membership table in PostgreSQL and shows every host with its state, shards, sessions and lease, in
//! text and JSON. The cluster serving (several processes) is tested in `tests/cluster_routing.rs`.
//! Built as ignored when PostgreSQL is not installed (build.rs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pg::PgInstance;
use rjabberd::cluster::membership::{MemberSpec, Registry, Timing};
use rjabberd::storage::postgres::Target;

/// A configuration for host `node` of cluster `chat-prod` on the database `url`, with its secret
/// beside it; returns the file.
fn config(dir: &Path, node: &str, url: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let secret = dir.join("cluster.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = dir.join("rjabberd.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = \"{}\"\n[[host]]\nname = \"localhost\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [storage]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 1\n\
             [cluster]\nname = \"chat-prod\"\nnode = \"{node}\"\nlisten = \"127.0.0.2:7470\"\n\
             seeds = [\"127.0.0.3:7470\"]\nsecret_file = \"cluster.secret\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    file
}

fn rjabberd(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rjabberd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn cluster_status_shows_the_membership_table() {
    let Some(pg) = PgInstance::start() else {
        return;
    };
    let url = pg.create_db("cluster");
    let dir = std::env::temp_dir().join(format!("rjabberd-cluster-status-{}", std::process::id()));
    let file = config(&dir, "n1", &url);
    let out = rjabberd(&file, &["storage", "migrate"]);
    assert!(out.status.success(), "{out:?}");

    let out = rjabberd(&file, &["cluster", "status"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("epoch 0, 0 member(s)"), "{text}");
    assert!(text.contains("no host has joined yet"), "{text}");

    // Two hosts join through the registry, as the servers will; one then leaves.
    let registry = Registry::open(
        Target::new(&url, None).unwrap(),
        "chat-prod",
        Timing::default(),
    )
    .unwrap();
    let n1 = MemberSpec {
        node: "n1".into(),
        incarnation: 0xfeed,
        address: "127.0.0.2:7470".into(),
        shards: 2,
    };
    let n2 = MemberSpec {
        node: "n2".into(),
        incarnation: 0xbeef,
        address: "127.0.0.3:7470".into(),
        shards: 1,
    };
    registry.join(&n1).unwrap();
    registry.join(&n2).unwrap();
    registry.renew(&n1, 42).unwrap();
    assert!(registry.leave(&n2).unwrap());

    let out = rjabberd(&file, &["cluster", "status"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("epoch 3, 1 member(s) of 2 host(s) known"),
        "{text}"
    );
    let n1_line = text
        .lines()
        .find(|l| l.starts_with("n1 "))
        .expect("n1's line");
    let words: Vec<&str> = n1_line.split_whitespace().collect();
    assert_eq!(
        (words[1], words[2], words[3], words[4]),
        ("up", "127.0.0.2:7470", "2", "42"),
        "{n1_line}"
    );
    assert!(n1_line.ends_with("000000000000feed"), "{n1_line}");
    let n2_line = text
        .lines()
        .find(|l| l.starts_with("n2 "))
        .expect("n2's line");
    assert!(n2_line.contains(" leaving "), "{n2_line}");

    let out = rjabberd(&file, &["cluster", "status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["epoch"], 3);
    assert_eq!(json["hosts"][0]["node"], "n1");
    assert_eq!(json["hosts"][0]["member"], true);
    assert_eq!(json["hosts"][0]["sessions"], 42);
    assert_eq!(json["hosts"][1]["member"], false);
    assert_eq!(json["hosts"][1]["state"], "leaving");

    let _ = std::fs::remove_dir_all(&dir);
}

/// Needs no database: without `[cluster]` the command says this is a single host.
#[test]
fn cluster_status_without_a_cluster_says_so() {
    let dir = std::env::temp_dir().join(format!("rjabberd-no-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rjabberd.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = \"{}\"\n[[host]]\nname = \"localhost\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let out = rjabberd(&file, &["cluster", "status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("single host"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! Three switches for the tests, decided at build time because Rust's test harness has no skip at
//! run time: what is compiled `#[ignore]`d, cargo counts as ignored rather than passed.
//!
//! - `RJABBERD_SKIP_E2E` (set, and neither empty nor `0`) builds the end-to-end tests that drive
//!   go-sendxmpp and slixmpp as ignored. Cargo rebuilds the package when the variable changes, so
//!   `RJABBERD_SKIP_E2E=1 cargo test` is all it takes.
//! - The PostgreSQL store tests need PostgreSQL's programs (`initdb`, `pg_ctl`) to start a throw-away
//!   server; when none are found (`RJABBERD_PG_BINDIR`, Debian's `/usr/lib/postgresql/<N>/bin`, the
//!   PATH) or `RJABBERD_SKIP_PG` is set, they are built as ignored, with a build warning saying so.
//!   After installing PostgreSQL, `touch build.rs` (or set `RJABBERD_PG_BINDIR`) to build them again.
//! - The XEP-0227 tests that export from a real ejabberd are built as ignored when
//!   `/usr/sbin/ejabberdctl` is absent, the one that migrates from a real Prosody when
//!   `/usr/bin/prosody-migrator` is (both also with `RJABBERD_SKIP_E2E`).
//! - The cluster partition tests (nftables in a network namespace) are built as ignored when the
//!   build is not root's or `nft` / `ip` are missing.

use std::path::Path;

const EJABBERDCTL: &str = "/usr/sbin/ejabberdctl";
const PROSODY_MIGRATOR: &str = "/usr/bin/prosody-migrator";
const NFT: &str = "/usr/sbin/nft";
const IP: &str = "/usr/sbin/ip";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=RJABBERD_SKIP_E2E");
    println!("cargo::rustc-check-cfg=cfg(rjabberd_skip_e2e)");
    if set("RJABBERD_SKIP_E2E") {
        println!("cargo::rustc-cfg=rjabberd_skip_e2e");
    }

    // The XEP-0227 test exports from a real ejabberd: without one it is built `#[ignore]`d, so that
    // cargo reports it as ignored, not passed.
    // Watched only when it exists (a missing path counts as always changed: a rebuild on every run).
    if Path::new(EJABBERDCTL).exists() {
        println!("cargo::rerun-if-changed={EJABBERDCTL}");
    }
    println!("cargo::rustc-check-cfg=cfg(rjabberd_no_ejabberd)");
    if !Path::new(EJABBERDCTL).exists() {
        println!("cargo::rustc-cfg=rjabberd_no_ejabberd");
    }
    // The same for the test that migrates from Prosody (Debian's package: prosodyctl and the migrator).
    if Path::new(PROSODY_MIGRATOR).exists() {
        println!("cargo::rerun-if-changed={PROSODY_MIGRATOR}");
    }
    println!("cargo::rustc-check-cfg=cfg(rjabberd_no_prosody)");
    if !Path::new(PROSODY_MIGRATOR).exists() {
        println!("cargo::rustc-cfg=rjabberd_no_prosody");
    }

    // The partition tests cut links between hosts with nftables inside a network namespace of their
    // own: that takes root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and Debian's `nftables` and `iproute2`.
    println!("cargo::rustc-check-cfg=cfg(rjabberd_no_netns)");
    for tool in [NFT, IP] {
        if Path::new(tool).exists() {
            println!("cargo::rerun-if-changed={tool}");
        }
    }
    if !(Path::new(NFT).exists() && Path::new(IP).exists() && root()) {
        println!("cargo::rustc-cfg=rjabberd_no_netns");
        println!(
            "cargo::warning=not root, or no {NFT} / {IP}: the cluster partition tests are built as ignored"
        );
    }

    println!("cargo::rerun-if-env-changed=RJABBERD_SKIP_PG");
    println!("cargo::rerun-if-env-changed=RJABBERD_PG_BINDIR");
    println!("cargo::rustc-check-cfg=cfg(rjabberd_skip_pg)");
    // Watched only when it exists: cargo treats a missing path as always changed, which would rebuild
    // the package on every run on a machine without PostgreSQL.
    if Path::new("/usr/lib/postgresql").is_dir() {
        println!("cargo::rerun-if-changed=/usr/lib/postgresql");
    }
    if set("RJABBERD_SKIP_PG") {
        println!("cargo::rustc-cfg=rjabberd_skip_pg");
    } else if !postgres_installed() {
        println!("cargo::rustc-cfg=rjabberd_skip_pg");
        println!(
            "cargo::warning=PostgreSQL not installed (no initdb): the PostgreSQL store tests are built as ignored"
        );
    }
}

/// Whether the build (and so, in CI and on a developer's machine, the test run) is root's.
fn root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The same search as `tests/common/pg.rs` makes when a test starts a server.
fn postgres_installed() -> bool {
    if let Some(dir) = std::env::var_os("RJABBERD_PG_BINDIR") {
        return Path::new(&dir).join("initdb").is_file();
    }
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("bin/initdb").is_file());
    debian
        || std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("initdb").is_file()))
}

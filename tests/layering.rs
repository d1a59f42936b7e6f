//! The layering rules of DESIGN.md §3 as tests. Code under `src/proto` is sans-IO, so it must not name
//! an executor, a socket type, the wall clock or a thread. And dependencies point down: each layer below
//! names (as `crate::…` paths) none of the layers above it — `net` is the I/O floor and knows no router,
//! session manager, shard or module; modules reach the world through their context and know no shard,
//! router or connection; the configuration knows no module; the session manager knows no socket. A
//! violation names the file, the line and the rule.

use std::path::Path;

const FORBIDDEN_IN_PROTO: &[(&str, &str)] = &[
    ("glommio", "executors and their I/O live in shard/ and net/"),
    ("std::net", "sockets live in net/"),
    ("tokio", "no runtime in protocol code"),
    ("Instant::now", "time is passed in as `now`"),
    ("SystemTime::now", "time is passed in as `now`"),
    ("std::thread", "protocol code does not spawn"),
    ("std::fs", "protocol code does no file I/O"),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source tree") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn proto_is_sans_io() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto"),
        &mut files,
    );
    assert!(
        !files.is_empty(),
        "src/proto has no Rust files: the test would check nothing"
    );
    let mut violations = Vec::new();
    for file in &files {
        // A unit-test file of its own (`#[path = "…_tests.rs"] mod tests;`) is wholly test code.
        if file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "tests.rs" || n.ends_with("_tests.rs"))
        {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable source file");
        for (n, line) in text.lines().enumerate() {
            // A file's unit tests (its trailing `#[cfg(test)]` module) are the in-memory peer's driver
            // and may read a clock; the protocol code above them may not.
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or_default();
            for (needle, why) in FORBIDDEN_IN_PROTO {
                if code.contains(needle) {
                    violations.push(format!("{}:{}: `{needle}`: {why}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

/// `(files under this path, paths they must not name, why)`.
const DOWNWARD_ONLY: &[(&str, &[&str], &str)] = &[
    (
        "src/net",
        &[
            "crate::router",
            "crate::modules",
            "crate::sm",
            "crate::shard",
            "crate::c2s",
            "crate::component",
            "crate::mesh",
            "crate::storage",
            "crate::auth",
        ],
        "net is the I/O floor: stream glue above it gives it meaning",
    ),
    (
        "src/modules",
        &[
            "crate::shard",
            "crate::router",
            "crate::net",
            "crate::c2s",
            "crate::component",
            "crate::sm",
            "crate::mesh",
            "crate::sink",
        ],
        "modules reach the world through ModuleCtx only",
    ),
    (
        "src/config.rs",
        // Everything but `proto`, the sans-IO floor below it, where the protocol's own names (the SASL
        // mechanisms a `[auth] mechanisms` list is checked against) are defined once.
        &[
            "crate::admin",
            "crate::auth",
            "crate::c2s",
            "crate::cluster",
            "crate::component",
            "crate::logging",
            "crate::mesh",
            "crate::metrics",
            "crate::modules",
            "crate::net",
            "crate::placement",
            "crate::probe",
            "crate::router",
            "crate::shard",
            "crate::sink",
            "crate::sm",
            "crate::storage",
        ],
        "the configuration is the ground floor: it names no other part of the server but the \
         sans-IO protocol below it",
    ),
    (
        "src/sm",
        &[
            "crate::net",
            "crate::router",
            "crate::c2s",
            "crate::component",
            "crate::shard::pool",
        ],
        "the session manager is a service on the shard's state, below routing and sockets",
    ),
    (
        "src/router",
        &[
            "crate::net",
            "crate::c2s",
            "crate::component",
            "crate::shard::pool",
        ],
        "the router is reached by the stream glue, not the other way round",
    ),
    (
        "src/shard/mod.rs",
        &[
            "crate::router::route",
            "crate::router::local",
            "crate::router::Origin",
            "crate::sm::session",
            "crate::c2s",
            "crate::component",
            "crate::net::driver",
            "crate::shard::pool",
        ],
        "shard state sits low: what is above it is wired in from shard::pool",
    ),
    (
        "src/mesh.rs",
        &[
            "crate::router",
            "crate::sm",
            "crate::shard",
            "crate::net",
            "crate::c2s",
            "crate::component",
        ],
        "the mesh carries messages; it handles none",
    ),
    (
        "src/sink.rs",
        &[
            "crate::router",
            "crate::sm",
            "crate::shard",
            "crate::net",
            "crate::modules",
            "crate::mesh",
        ],
        "a sink is a queue below everything that writes to it",
    ),
    (
        "src/cluster/membership.rs",
        &[
            "crate::shard",
            "crate::router",
            "crate::sm",
            "crate::net",
            "crate::mesh",
            "crate::c2s",
            "crate::component",
            "crate::modules",
            "crate::sink",
        ],
        "the membership registry sits beside the store and blocks on the database: it knows no \
         shard, routing or socket",
    ),
    (
        "src/cluster/transport.rs",
        &[
            "crate::shard",
            "crate::router",
            "crate::sm",
            "crate::mesh",
            "crate::c2s",
            "crate::component",
            "crate::modules",
            "crate::sink",
            "crate::storage",
        ],
        "the links carry frames; what they mean (routing, sessions) is above them",
    ),
    (
        "src/placement.rs",
        &["crate::"],
        "placement is a pure function of a name",
    ),
    (
        "src/logging",
        &[
            "crate::router",
            "crate::sm",
            "crate::shard",
            "crate::net",
            "crate::modules",
            "crate::mesh",
            "crate::c2s",
            "crate::component",
            "crate::proto",
            "crate::sink",
            "crate::storage",
            "crate::auth",
        ],
        "the log output is ground floor: everything logs through it, it knows only the configuration",
    ),
];

#[test]
fn dependencies_point_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut violations = Vec::new();
    let mut checked = 0;
    for (under, forbidden, why) in DOWNWARD_ONLY {
        let path = root.join(under);
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path.clone());
        }
        assert!(
            files.iter().all(|f| f.exists()) && !files.is_empty(),
            "{under} is gone: the rule would check nothing"
        );
        for file in &files {
            checked += 1;
            let text = std::fs::read_to_string(file).expect("readable source file");
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("#[cfg(test)]") {
                    break;
                }
                let code = line.split("//").next().unwrap_or_default();
                if code.contains("crate::{") || code.contains("super::super") {
                    violations.push(format!(
                        "{}:{}: a grouped or climbing path hides what the file names; write each \
                         `crate::` path out",
                        file.strip_prefix(root).unwrap_or(file).display(),
                        n + 1
                    ));
                }
                for needle in *forbidden {
                    if code.contains(needle) {
                        violations.push(format!(
                            "{}:{}: names `{needle}`: {why}",
                            file.strip_prefix(root).unwrap_or(file).display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} files checked");
    assert!(
        violations.is_empty(),
        "arrows that run back up:\n{}",
        violations.join("\n")
    );
}

/// The configuration's rule lists the server's parts one by one (all but `proto`): a new top-level
/// module must be added to it, or the rule would let the configuration name it unseen.
#[test]
fn the_configuration_rule_names_every_other_part() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("src/lib.rs");
    let (_, forbidden, _) = DOWNWARD_ONLY
        .iter()
        .find(|(under, _, _)| *under == "src/config.rs")
        .expect("a rule for src/config.rs");
    for module in lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .filter(|m| !matches!(*m, "config" | "proto"))
    {
        let needle = format!("crate::{module}");
        assert!(
            forbidden.contains(&needle.as_str()),
            "the rule for src/config.rs does not name `{needle}`"
        );
    }
}

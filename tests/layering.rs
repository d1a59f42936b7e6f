//! The layering rules of DESIGN.md §3 as a test: code under `src/proto` is sans-IO, so it must not name
//! an executor, a socket type, the wall clock or a thread. A violation names the file and line.

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

//! External authentication (ejabberd's extauth protocol) over real TCP with real scripts — the
//! Developers Guide's Python example, corrected, and a Perl one — with 1 and 2 shards: only PLAIN is
//! offered; `auth` decides logins (passwords with colons included); `isuser` decides whether an offline
//! account exists; the frames the script receives are checked byte for byte; a script that dies is
//! restarted and only that request fails; a script that does not answer in time, or answers garbage, is
//! killed and restarted.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Client, SHARDS, TestServer, error_condition};

static N: AtomicUsize = AtomicUsize::new(0);

/// Copies `script` into a fresh directory (it logs its requests beside itself) and returns its path.
fn install(script: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rjabberd-extauth-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/extauth")
        .join(script);
    let dst = dir.join(script);
    std::fs::copy(&src, &dst).unwrap();
    dst
}

fn config(program: &Path, timeout: u64) -> String {
    format!(
        "[auth]\nmethod = \"external\"\nextauth_program = \"{}\"\nextauth_pool_size = 2\n\
         extauth_timeout_secs = {timeout}\n",
        program.display()
    )
}

/// STARTTLS, then PLAIN; returns the SASL answer and the client (bound when it succeeded).
/// Logs in with PLAIN: `success`, or the SASL failure's condition.
fn plain_login(server: &TestServer, user: &str, password: &str) -> (String, Client) {
    let mut c = Client::connect(server.starttls, server.cert_path());
    c.open("localhost");
    c.starttls();
    c.open("localhost");
    assert_eq!(c.mechanisms(), vec!["PLAIN".to_string()]);
    let r = c.sasl("PLAIN", user, password, None);
    if r.name == "success" {
        c.restart("localhost");
        let b = c.bind(Some("r"));
        assert_eq!(b.attr("type"), Some("result"), "{b}");
        return ("success".to_string(), c);
    }
    assert_eq!(r.name, "failure", "{r}");
    let condition = r.child_elements().next().map(|e| e.name.clone());
    (condition.expect("a failure names its condition"), c)
}

fn frame(s: &str) -> Vec<u8> {
    let mut f = (s.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(s.as_bytes());
    f
}

fn check_script(script: &str) {
    for shards in SHARDS {
        let program = install(script);
        let server = TestServer::start(shards, &config(&program, 2));
        let (r, mut alice) = plain_login(&server, "alice", "wonderland");
        assert_eq!(r, "success", "{script}");
        let (r, _) = plain_login(&server, "alice", "wrong");
        assert_eq!(r, "not-authorized");
        let (r, _) = plain_login(&server, "carol", "c4r0l:with:colons");
        assert_eq!(r, "success", "a password with colons");
        let (r, _) = plain_login(&server, "mallory", "x");
        assert_eq!(r, "not-authorized");

        // isuser: an offline account that exists is answered for; one that does not is unavailable.
        let r = alice.iq(
            Some("carol@localhost"),
            "get",
            "<ping xmlns='urn:xmpp:ping'/>",
        );
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let r = alice.iq(
            Some("nobody@localhost"),
            "get",
            "<ping xmlns='urn:xmpp:ping'/>",
        );
        assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));

        // A script that dies fails that request only; the next one is served by a new instance.
        let (r, _) = plain_login(&server, "alice", "die");
        assert_eq!(r, "temporary-auth-failure");
        for _ in 0..3 {
            let (r, _) = plain_login(&server, "alice", "wonderland");
            assert_eq!(r, "success", "after a restart");
        }

        // The frames, byte for byte (the Python script logs what it reads).
        if script.ends_with(".py") {
            let log = std::fs::read(program.with_file_name("requests.log")).unwrap();
            let mut want = frame("auth:alice:localhost:wonderland");
            want.push(b'\n');
            assert!(
                log.windows(want.len()).any(|w| w == want.as_slice()),
                "{:?}",
                String::from_utf8_lossy(&log)
            );
            let mut want = frame("isuser:nobody:localhost");
            want.push(b'\n');
            assert!(log.windows(want.len()).any(|w| w == want.as_slice()));
            let mut want = frame("auth:carol:localhost:c4r0l:with:colons");
            want.push(b'\n');
            assert!(log.windows(want.len()).any(|w| w == want.as_slice()));
        }
        drop(server);
        let _ = std::fs::remove_dir_all(program.parent().unwrap());
    }
}

#[test]
fn the_guides_python_script_corrected() {
    check_script("extauth.py");
}

#[test]
fn a_perl_script() {
    check_script("extauth.pl");
}

#[test]
fn a_script_that_does_not_answer_times_out() {
    let program = install("extauth.py");
    // 3 s: long enough that a restarted instance (a fresh Python) answers in time on a loaded
    // machine, where 1 s made the logins after the timeout flaky.
    let server = TestServer::start(2, &config(&program, 3));
    let started = Instant::now();
    let (r, _) = plain_login(&server, "alice", "sleep");
    assert_eq!(r, "temporary-auth-failure");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(15),
        "{took:?}"
    );
    for _ in 0..3 {
        let (r, _) = plain_login(&server, "alice", "wonderland");
        assert_eq!(r, "success");
    }
    // An answer that is not `00 02 00 0x`: that request fails at once, the instance is replaced.
    let started = Instant::now();
    let (r, _) = plain_login(&server, "alice", "garble");
    assert_eq!(r, "temporary-auth-failure");
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "no wait for a timeout"
    );
    for _ in 0..3 {
        let (r, _) = plain_login(&server, "alice", "wonderland");
        assert_eq!(r, "success");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(program.parent().unwrap());
}

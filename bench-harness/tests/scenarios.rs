//! The harness measures what it claims: against an in-process rjabberd (2 shards, plaintext), `login`
//! brings every provisioned user online, and `chat` delivers every message it sends (none lost) with a
//! latency for each, at a rate the machine sustains easily.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bench_harness::{Mech, RunArgs, Scenario, Tls, client, provision};
use rjabberd::config::Config;
use rjabberd::shard::Server;

fn server(dir: &std::path::Path) -> (Server, Arc<AtomicBool>) {
    let text = format!(
        "shards = 2\ndata_dir = \"{}\"\nlog_level = \"warn\"\n[[host]]\nname = \"localhost\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n[auth]\nallow_plaintext = true\n",
        dir.display()
    );
    let config = Config::parse(&text, std::path::Path::new("bench.toml")).unwrap();
    let shutdown = Arc::new(AtomicBool::new(false));
    (Server::start(config, shutdown.clone()).unwrap(), shutdown)
}

fn args(scenario: Scenario, server: std::net::SocketAddr, users: usize) -> RunArgs {
    RunArgs {
        scenario,
        server,
        host: "localhost".into(),
        users,
        prefix: "u".into(),
        password: "pw".into(),
        mech: Mech::ScramSha256,
        tls: Tls::None,
        ca: None,
        threads: 1,
        cpus: vec![],
        arrival_rate: 0.0,
        login_concurrency: 32,
        sources: 2,
        rate: 400.0,
        duration: 2.0,
        find_max: false,
        churn: 0.0,
        contacts: 18,
        p99_bound_ms: 10.0,
        settle: 0.0,
        server_pid: Some(std::process::id()),
        carbons: false,
        label: "rjabberd".into(),
        json: None,
        svg: None,
        trace_file: None,
        trace_slow_ms: 50.0,
    }
}

#[test]
fn login_and_chat_measure_every_message() {
    let dir = std::env::temp_dir().join(format!("rjabberd-bench-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    provision(&dir, 200, "localhost", "u", "pw", 4096).unwrap();
    let (server, shutdown) = server(&dir);
    let addr = server.shared.bound[0].0;

    let login = client::run(&args(Scenario::Login, addr, 200)).unwrap();
    assert_eq!((login.online, login.login_failures), (200, 0));
    assert_eq!(login.login.len(), 200, "a latency per login");

    // The same over STARTTLS, verifying the server's generated certificate.
    let mut tls_args = args(Scenario::Login, addr, 50);
    tls_args.tls = Tls::Starttls;
    tls_args.ca = Some(dir.join("certs/localhost.crt"));
    let tls_login = client::run(&tls_args).unwrap();
    assert_eq!((tls_login.online, tls_login.login_failures), (50, 0));

    let mut chat_args = args(Scenario::Chat, addr, 100);
    chat_args.json = Some(dir.join("chat.json"));
    chat_args.svg = Some(dir.join("chat.svg"));
    let chat = client::run(&chat_args).unwrap();
    let step = &chat.steps[0];
    assert!(step.sent >= 600, "the schedule sent {} of ~800", step.sent);
    assert_eq!(step.received, step.sent, "nothing lost");
    assert_eq!(step.latency.len(), step.sent, "a latency per message");
    bench_harness::report::finish(&chat_args, &chat);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("chat.json")).unwrap()).unwrap();
    assert_eq!(json["chat"][0]["lost"], 0);
    assert!(
        std::fs::read_to_string(dir.join("chat.svg"))
            .unwrap()
            .contains("<polyline")
    );

    // Mixed: chat while sessions drop and log in again; every message is received or bounced.
    let mut mixed_args = args(Scenario::Mixed, addr, 100);
    mixed_args.churn = 20.0;
    let trace = dir.join("mixed.trace");
    mixed_args.trace_file = Some(trace.clone());
    let mixed = client::run(&mixed_args).unwrap();
    // `--trace-file` has every drop and every login again.
    let lines = std::fs::read_to_string(&trace).unwrap();
    let count = |what: &str| lines.lines().filter(|l| l.contains(what)).count() as u64;
    assert_eq!(
        count(" drop user="),
        mixed.relogins + mixed.relogin_failures
    );
    assert_eq!(
        count(" relogin user="),
        mixed.relogins + mixed.relogin_failures
    );
    assert!(
        mixed.relogins >= 10,
        "{} sessions dropped and back",
        mixed.relogins
    );
    assert_eq!(mixed.relogin_failures, 0);
    assert_eq!(mixed.relogin.len() as u64, mixed.relogins);
    let step = &mixed.steps[0];
    assert!(step.sent >= 600, "the schedule sent {} of ~800", step.sent);
    // A message to a user between sessions may be bounced or, if it was in flight to the dropped
    // connection, lost; with 20 drops in a second only a handful can be.
    assert!(
        step.received + step.bounced + 20 >= step.sent,
        "sent {}, received {}, bounced {}",
        step.sent,
        step.received,
        step.bounced
    );

    shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join();
    let _ = std::fs::remove_dir_all(&dir);
}

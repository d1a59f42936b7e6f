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
        recipients: 0,
        messages: 0,
        batch: 10,
        p99_bound_ms: 10.0,
        settle: 0.0,
        server_pid: Some(std::process::id()),
        also_server: Vec::new(),
        also_pid: Vec::new(),
        db_pid: None,
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
    // Accounts of their own for the offline run, so that no session of the runs before is still
    // closing on the server when their messages arrive.
    provision(&dir, 50, "localhost", "o", "pw", 4096).unwrap();
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

    // Offline: every message sent to an offline user is kept, then handed out at its login.
    let mut off = args(Scenario::Offline, addr, 20);
    (off.recipients, off.messages, off.batch) = (30, 12, 5);
    off.prefix = "o".into();
    let offline = client::run(&off).unwrap();
    let o = offline.offline.as_ref().expect("the offline phases");
    assert_eq!(offline.online, 20);
    assert_eq!((o.sent, o.refused, o.barrier_errors), (240, 0, 0));
    assert_eq!((o.recipients_online, o.recipient_login_failures), (30, 0));
    assert_eq!((o.received, o.surplus, o.lost()), (240, 0, 0));
    assert_eq!(o.retrieve.len(), 30, "a retrieve time per recipient");
    assert!(o.store_server_cpu_s.is_some() && o.store_secs > 0.0);

    shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The offline plan spreads each sender's messages, and each batch, over every recipient, and the
/// expected counts add up to what is sent.
#[test]
fn offline_plan_covers_every_recipient() {
    use bench_harness::{offline_expected, offline_recipient};
    for (senders, messages, recipients) in [(100, 20, 1000), (7, 3, 5), (3, 2, 10), (1, 1, 1)] {
        let mut got = vec![0usize; recipients];
        for i in 0..senders {
            for k in 0..messages {
                let r = offline_recipient(i, k, senders, recipients);
                assert!(
                    (senders..senders + recipients).contains(&r),
                    "a recipient, not a sender"
                );
                got[r - senders] += 1;
            }
        }
        let want: Vec<usize> = (0..recipients)
            .map(|r| offline_expected(r, senders, messages, recipients))
            .collect();
        assert_eq!(got, want, "{senders} senders × {messages} to {recipients}");
        assert_eq!(want.iter().sum::<usize>(), senders * messages);
        // Balanced: no recipient gets more than one message more than another.
        assert!(want.iter().max().unwrap() - want.iter().min().unwrap() <= 1);
    }
    // One batch (the same k) of many senders goes to many recipients, not to one.
    let batch: std::collections::HashSet<usize> = (0..100)
        .map(|i| offline_recipient(i, 0, 100, 1000))
        .collect();
    assert_eq!(batch.len(), 100);
}

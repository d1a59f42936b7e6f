//! A small load loop for the server until the bench harness exists: it starts the release `rjabberd`
//! with 2 shards, then measures (1) the memory of idle authenticated sessions, as the server's RSS delta
//! over N TLS sessions (STARTTLS, SCRAM-SHA-256, bound, initial presence) after the idle sweep, and
//! (2) one-to-one messages per second between two shards, with pairs of clients whose accounts are homed
//! on different shards. Clients run in this process, on the same 2 cores as the server, so the message
//! rate is a floor, not the server's ceiling.
//!
//! `cargo bench --bench c2s_load` (N = 10000; `C2S_LOAD_SESSIONS=2000` for a quicker run).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer};
use rjabberd::placement::home;
use rjabberd::proto::sasl::Credentials;
use rjabberd::storage::{Accounts, UserDb};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sessions: usize = std::env::var("C2S_LOAD_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let server = TestServer::start(2, "[limits]\nmax_connections_per_shard = 100000\n");
    // Accounts straight into the store, one credential derivation for all.
    {
        let db = UserDb::open(&server.dir.join("data")).unwrap();
        let creds = Credentials::from_password("pw", b"0123456789abcdef", 4096).unwrap();
        for i in 0..sessions.max(100) {
            db.add("localhost", &format!("u{i}"), &creds).unwrap();
        }
    }
    // One session first, so the baseline includes what any first session brings (TLS tables, …).
    let mut warm = Client::login(&server, "u0@localhost", "pw", "warm");
    warm.available(0);
    std::thread::sleep(Duration::from_secs(11));
    let before = rss_kib(server.pid());

    // (1) Idle sessions.
    let started = Instant::now();
    let threads = 4;
    let per = sessions / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let starttls = server.starttls;
            let cert = server.cert_path();
            std::thread::spawn(move || {
                let fake = FakeServer { starttls, cert };
                (0..per)
                    .map(|i| {
                        let n = t * per + i + 1;
                        let mut c = fake.login(
                            &format!("u{}@localhost", n % sessions.max(100)),
                            &format!("r{n}"),
                        );
                        c.available(0);
                        c
                    })
                    .collect::<Vec<Client>>()
            })
        })
        .collect();
    let clients: Vec<Client> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let login_secs = started.elapsed().as_secs_f64();
    // Let the idle sweep (every 10 s) return the connections' buffers.
    std::thread::sleep(Duration::from_secs(12));
    let after = rss_kib(server.pid());
    let per_session = (after.saturating_sub(before)) as f64 / clients.len() as f64;
    println!(
        "idle sessions: {} logged in in {login_secs:.1} s; server RSS {before} KiB -> {after} KiB; \
         {per_session:.1} KiB per idle authenticated session",
        clients.len()
    );
    drop(clients);

    // (2) One-to-one messages between shards: one message per write (as a chatting client sends), and
    // 50 per write (as a busy bridge or bot does).
    for batch_size in [1, 50] {
        one_to_one(&server, batch_size);
    }
}

fn one_to_one(server: &TestServer, batch_size: usize) {
    let pairs = 20;
    // Messages per sender-receiver pair; more make the rate steadier on a noisy machine.
    let per_pair: usize = std::env::var("C2S_LOAD_PER_PAIR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut i = 0;
    while senders.len() < pairs || receivers.len() < pairs {
        let name = format!("u{i}");
        match home(&format!("{name}@localhost"), 2).shard {
            0 if senders.len() < pairs => senders.push(name),
            1 if receivers.len() < pairs => receivers.push(name),
            _ => {}
        }
        i += 1;
    }
    let mut threads = Vec::new();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2 * pairs + 1));
    for (s, r) in senders.iter().zip(&receivers) {
        let mut tx = Client::login(
            server,
            &format!("{s}@localhost"),
            "pw",
            &format!("tx{batch_size}"),
        );
        let mut rx = Client::login(
            server,
            &format!("{r}@localhost"),
            "pw",
            &format!("rx{batch_size}"),
        );
        let to = format!("{r}@localhost/rx{batch_size}");
        let b1 = barrier.clone();
        threads.push(std::thread::spawn(move || {
            b1.wait();
            let body = "x".repeat(64);
            let mut batch = String::new();
            for k in 0..per_pair {
                batch.push_str(&format!(
                    "<message to='{to}' type='chat' id='{k}'><body>{body}</body></message>"
                ));
                if k % batch_size == batch_size - 1 {
                    tx.send(&batch);
                    batch.clear();
                }
            }
            tx.send(&batch);
            tx
        }));
        let b2 = barrier.clone();
        threads.push(std::thread::spawn(move || {
            b2.wait();
            for k in 0..per_pair {
                let m = rx.el();
                assert_eq!(m.name, "message");
                assert_eq!(
                    m.attr("id"),
                    Some(k.to_string().as_str()),
                    "in order, none lost"
                );
            }
            rx
        }));
    }
    barrier.wait();
    let started = Instant::now();
    let mut ends = Vec::new();
    for t in threads {
        ends.push(t.join().unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    let total = pairs * per_pair;
    println!(
        "one-to-one between shards, {batch_size} per write: {total} messages over {pairs} pairs in {secs:.2} s \
         = {:.0} messages/s (TLS both ways; clients on the same 2 cores)",
        total as f64 / secs
    );
}

/// The login of [`Client::login`] without a `TestServer` borrow, for threads.
struct FakeServer {
    starttls: std::net::SocketAddr,
    cert: std::path::PathBuf,
}

impl FakeServer {
    fn login(&self, user: &str, resource: &str) -> Client {
        let (local, host) = user.split_once('@').unwrap();
        let mut c = Client::connect(self.starttls, self.cert.clone());
        c.open(host);
        c.starttls();
        c.open(host);
        let r = c.sasl("SCRAM-SHA-256", local, "pw", None);
        assert_eq!(r.name, "success", "{r}");
        c.restart(host);
        assert_eq!(c.bind(Some(resource)).attr("type"), Some("result"));
        c
    }
}

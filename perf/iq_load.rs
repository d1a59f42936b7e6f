//! IQ handler throughput and server CPU per IQ under each queueing discipline, side by side in one run:
//! a 2-shard release `rjabberd` with `mod_ping` and `mod_disco` configured with `iqdisc` = `no_queue`,
//! `one_queue` and `parallel` in turn; 20 TLS clients each send 20,000 pings to the server (pipelined 50 per
//! write) and read every answer. A fourth run sends disco#info (a handler that builds a 9-feature
//! answer) to show what a larger answer costs. Clients share the server's 2 cores, so rates are floors;
//! the CPU per IQ (server utime+stime from /proc over the run, divided by the IQs) is the comparable
//! figure.
//!
//! `cargo bench --bench iq_load`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{Client, Got, TestServer};
use rjabberd::proto::sasl::Credentials;
use rjabberd::storage::{Accounts, UserDb};

const CLIENTS: usize = 20;
const PER_CLIENT: usize = 20_000;
const BATCH: usize = 50;

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of stat(5) (utime, stime), counted from after the command name.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn run(label: &str, disc: &str, payload: &str) {
    let server = TestServer::start(
        2,
        &format!(
            "[modules.mod_ping]\niqdisc = \"{disc}\"\n[modules.mod_disco]\niqdisc = \"{disc}\"\n"
        ),
    );
    {
        let db = UserDb::open(&server.dir.join("data")).unwrap();
        let creds = Credentials::from_password("pw", b"0123456789abcdef", 4096).unwrap();
        for i in 0..CLIENTS {
            db.add("localhost", &format!("u{i}"), &creds).unwrap();
        }
    }
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client::login(&server, &format!("u{i}@localhost"), "pw", "r"))
        .collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS + 1));
    let mut threads = Vec::new();
    for mut c in clients {
        let b = barrier.clone();
        let payload = payload.to_string();
        threads.push(std::thread::spawn(move || {
            b.wait();
            let mut sent = 0;
            let mut got = 0;
            while got < PER_CLIENT {
                if sent < PER_CLIENT && sent - got < 4 * BATCH {
                    let mut batch = String::new();
                    for _ in 0..BATCH {
                        batch.push_str(&format!(
                            "<iq to='localhost' type='get' id='{sent}'>{payload}</iq>"
                        ));
                        sent += 1;
                    }
                    c.send(&batch);
                }
                match c.next() {
                    Got::El(e) => {
                        assert_eq!(e.attr("type"), Some("result"), "{e}");
                        got += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
            c
        }));
    }
    let cpu0 = cpu_secs(server.pid());
    barrier.wait();
    let started = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(server.pid()) - cpu0;
    let total = (CLIENTS * PER_CLIENT) as f64;
    println!(
        "{label:<24} iqdisc={disc:<9} {:>8.0} IQs/s  server CPU {:>5.2} µs per IQ ({} IQs in {secs:.2} s)",
        total / secs,
        cpu / total * 1e6,
        total
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ping = "<ping xmlns='urn:xmpp:ping'/>";
    for disc in ["no_queue", "one_queue", "parallel"] {
        run("ping to the server", disc, ping);
    }
    run(
        "disco#info of the server",
        "no_queue",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    );
}

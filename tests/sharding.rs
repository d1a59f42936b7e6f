//! Connections move home (DESIGN.md §2): after SASL every connection of an account is served by the
//! account's home shard, where its session entry is. Checked black-box by logging in many users with 2
//! shards and asking the server (SIGUSR1) for each shard's session table, then by chatting across shards.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Client, TestServer};
use rjabberd::placement::home;

fn dump(server: &TestServer) -> HashMap<usize, (usize, Vec<String>)> {
    let before = server.stdout.lock().unwrap().len();
    common::signal(server.pid(), libc::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = server.stdout.lock().unwrap()[before..].to_vec();
        let shards: HashMap<usize, (usize, Vec<String>)> = lines
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("rjabberd: shard ")?;
                let (id, rest) = rest.split_once(": ")?;
                let (conns, rest) = rest.split_once(" connections, ")?;
                let (_, accounts) = rest.split_once(" sessions: ")?;
                Some((
                    id.parse().ok()?,
                    (
                        conns.parse().ok()?,
                        accounts.split_whitespace().map(str::to_string).collect(),
                    ),
                ))
            })
            .collect();
        if shards.len() == server.shards {
            return shards;
        }
        assert!(
            Instant::now() < deadline,
            "no dump from every shard: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_connection_and_session_is_on_the_home_shard() {
    for shards in [1, 2] {
        let server = TestServer::start(shards, "");
        let users: Vec<String> = (0..16).map(|i| format!("user{i}@localhost")).collect();
        for u in &users {
            server.add_user(u, "pw");
        }
        // Two connections per user, through both listeners, so they are accepted on any shard.
        let mut clients = Vec::new();
        for u in &users {
            clients.push(Client::login(&server, u, "pw", "a"));
            let (local, host) = u.split_once('@').unwrap();
            let mut c = Client::connect_direct(server.direct, server.cert_path());
            c.open(host);
            assert_eq!(c.sasl("SCRAM-SHA-1", local, "pw", None).name, "success");
            c.restart(host);
            assert_eq!(c.bind(Some("b")).attr("type"), Some("result"));
            clients.push(c);
        }
        let table = dump(&server);
        let total_conns: usize = table.values().map(|(c, _)| c).sum();
        assert_eq!(
            total_conns,
            clients.len(),
            "every connection is counted once: {table:?}"
        );
        for u in &users {
            let holders: Vec<usize> = table
                .iter()
                .filter(|(_, (_, a))| a.contains(u))
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(holders, vec![home(u, shards).shard], "{u}: {table:?}");
        }
        // Connections per shard equal twice the accounts homed there: connections moved home.
        for (id, (conns, accounts)) in &table {
            assert_eq!(*conns, 2 * accounts.len(), "shard {id}: {table:?}");
        }
        if shards == 2 {
            assert!(
                table.values().all(|(_, a)| !a.is_empty()),
                "16 users spread over both shards: {table:?}"
            );
        }
        // Every pair can chat, whichever shards they live on.
        for i in 0..users.len() {
            let j = (i + 5) % users.len();
            let to = format!("{}/a", users[j]);
            clients[2 * i].send(&format!(
                "<message to='{to}' id='x{i}'><body>hi {i}</body></message>"
            ));
            let m = clients[2 * j].el();
            assert_eq!(m.attr("id"), Some(format!("x{i}").as_str()), "{m}");
            assert_eq!(m.attr("from"), Some(format!("{}/a", users[i]).as_str()));
        }
    }
}

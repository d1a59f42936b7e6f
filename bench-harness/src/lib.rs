//! The rjabberd load generator as a library: the scenarios and client connections ([`client`]), the
//! reports ([`report`]), account provisioning, and the run options shared by the `rjabberd-bench` binary
//! and the harness's own tests.

pub mod client;
pub mod offline;
pub mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// A login storm: logins/s, login latency, server CPU per login.
    Login,
    /// Hold N sessions: server RSS per idle session.
    Idle,
    /// Open-loop one-to-one chat between random online users.
    Chat,
    /// Soak: the chat of `chat` while `--churn` users per second disconnect and log in again (login,
    /// initial presence, chat and disconnects together).
    Mixed,
    /// Presence fan-out: every user has a roster of `--contacts` K others (ring neighbours, subscription
    /// both, provisioned on the server beforehand); once all are online, presence updates at `--rate`
    /// per second each reach K contacts. Needs a server with rosters.
    Presence,
    /// Offline messages (XEP-0160): `--users` senders each send `--messages` chat messages to
    /// `--recipients` accounts that are offline (the users after the senders), `--batch` at a time, each
    /// batch closed by two store-backed IQs; then the recipients log in and receive what was kept. Store
    /// and retrieve rates, and every message accounted for.
    Offline,
}

/// The contacts of user `i` among `n` in the presence scenario: its ring neighbours `i±1 … i±K/2`
/// (K rounded down to even), so every subscription is mutual.
pub fn contacts(i: usize, n: usize, k: usize) -> Vec<usize> {
    let half = (k / 2).min(n.saturating_sub(1) / 2);
    let mut out = Vec::with_capacity(2 * half);
    for d in 1..=half {
        out.push((i + d) % n);
        out.push((i + n - d) % n);
    }
    out
}

/// The `offline` scenario's plan: message `k` of sender `i` (of `senders`) goes to recipient
/// `senders + (k * senders + i) % recipients`, so that consecutive messages of one sender, and the
/// messages of one batch across senders, spread over every recipient.
pub fn offline_recipient(sender: usize, k: usize, senders: usize, recipients: usize) -> usize {
    senders + (k * senders + sender) % recipients.max(1)
}

/// How many messages recipient `r` (its index among the recipients, from 0) gets in the `offline`
/// plan: `senders * messages` spread round robin.
pub fn offline_expected(r: usize, senders: usize, messages: usize, recipients: usize) -> usize {
    let total = senders * messages;
    let recipients = recipients.max(1);
    total / recipients + usize::from(r < total % recipients)
}

/// The store `provision` writes into: rjabberd's configured one (`[storage]`, either backend, through
/// `rjabberd::storage::open` as `rjabberd user add` does) when a configuration file is given, else the
/// SQLite file in `data_dir`.
pub fn open_store(
    data_dir: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
) -> Result<Box<dyn rjabberd::storage::Store>, String> {
    match (config, data_dir) {
        (Some(path), _) => {
            let config = rjabberd::config::Config::load(path).map_err(|e| e.to_string())?;
            rjabberd::storage::open(&config.storage, &config.data_dir).map_err(|e| e.to_string())
        }
        (None, Some(dir)) => Ok(Box::new(
            rjabberd::storage::UserDb::open(dir).map_err(|e| e.to_string())?,
        )),
        (None, None) => Err("provision needs --data-dir or --config".into()),
    }
}

/// Writes rjabberd rosters for the presence scenario's rings (subscription both) into its store.
pub fn rosters(
    db: &dyn rjabberd::storage::Store,
    users: usize,
    contacts_per_user: usize,
    host: &str,
    prefix: &str,
) -> Result<(), String> {
    use rjabberd::proto::roster::{RosterItem, Subscription};
    let started = std::time::Instant::now();
    for i in 0..users {
        let owner = format!("{prefix}{i}");
        for c in contacts(i, users, contacts_per_user) {
            let mut item = RosterItem::new(format!("{prefix}{c}@{host}"));
            item.subscription = Subscription::Both;
            db.roster_put(host, &owner, &item)
                .map_err(|e| e.to_string())?;
        }
    }
    println!(
        "wrote {users} rosters of {} contacts on {host} in {:.1} s",
        contacts(0, users, contacts_per_user).len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes Prosody roster files (`DATA/<host>/roster/<user>.dat`, its internal storage format) for the
/// presence scenario's rings.
pub fn prosody_rosters(
    data_dir: &std::path::Path,
    users: usize,
    contacts_per_user: usize,
    host: &str,
    prefix: &str,
) -> std::io::Result<()> {
    // Prosody encodes every byte outside [A-Za-z0-9] in path components as %xx.
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    };
    let dir = data_dir.join(enc(host)).join("roster");
    std::fs::create_dir_all(&dir)?;
    for i in 0..users {
        let mut lua = String::from("return {\n\t[false] = {\n\t\t[\"version\"] = 1;\n\t};\n");
        for c in contacts(i, users, contacts_per_user) {
            lua.push_str(&format!(
                "\t[\"{prefix}{c}@{host}\"] = {{\n\t\t[\"subscription\"] = \"both\";\n\t\t[\"groups\"] = {{}};\n\t}};\n"
            ));
        }
        lua.push_str("};\n");
        std::fs::write(
            dir.join(format!("{}.dat", enc(&format!("{prefix}{i}")))),
            lua,
        )?;
    }
    Ok(())
}

/// How the client connections secure the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Tls {
    /// Plain TCP (the server must allow SASL without TLS).
    None,
    /// STARTTLS after the first stream header.
    Starttls,
    /// Direct TLS (XEP-0368), ALPN `xmpp-client`.
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mech {
    Plain,
    ScramSha1,
    ScramSha256,
}

#[derive(Parser, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// The server's c2s address (plain TCP; the server must allow SASL without TLS).
    #[arg(long, default_value = "127.0.0.1:5222")]
    pub server: SocketAddr,
    #[arg(long, default_value = "localhost")]
    pub host: String,
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    #[arg(long, default_value = "u")]
    pub prefix: String,
    #[arg(long, default_value = "pw")]
    pub password: String,
    #[arg(long, value_enum, default_value_t = Mech::ScramSha1)]
    pub mech: Mech,
    /// TLS for the client connections.
    #[arg(long, value_enum, default_value_t = Tls::None)]
    pub tls: Tls,
    /// PEM certificate(s) to trust for TLS (e.g. rjabberd's `data/certs/localhost.crt`); without it the
    /// server's certificate is not verified (a benchmark on loopback).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Harness threads (glommio executors).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs to pin the harness threads to, e.g. `1` or `2,3` (default: unpinned).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Logins started per second (0: as fast as `--login-concurrency` allows).
    #[arg(long, default_value_t = 0.0)]
    pub arrival_rate: f64,
    /// Logins in flight per harness thread when `--arrival-rate` is 0.
    #[arg(long, default_value_t = 64)]
    pub login_concurrency: usize,
    /// Source addresses 127.0.0.1 … 127.0.0.K (0: one per 2,000 connections, at least 16, at most 250).
    #[arg(long, default_value_t = 0)]
    pub sources: usize,
    /// Total chat messages per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of chat (per step with `--find-max`).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// `presence`: contacts per user (ring neighbours; rounded down to even).
    #[arg(long, default_value_t = 18)]
    pub contacts: usize,
    /// `offline`: accounts that receive while offline: users `--users` … `--users + --recipients - 1`.
    #[arg(long, default_value_t = 1000)]
    pub recipients: usize,
    /// `offline`: messages each sender sends.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// `offline`: messages a sender sends before it waits for two store-backed IQs (vCard gets) to
    /// come back. Keep senders × batch × 2 (two store queries per message) under the server's store
    /// queue (4,096 jobs), which refuses the excess.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// `mixed`: users per second (all threads) that drop their connection and log in again.
    #[arg(long, default_value_t = 10.0)]
    pub churn: f64,
    /// Raise the chat rate step by step until p99 exceeds `--p99-bound-ms` or a message is lost.
    #[arg(long)]
    pub find_max: bool,
    #[arg(long, default_value_t = 10.0)]
    pub p99_bound_ms: f64,
    /// Seconds to hold idle sessions before measuring RSS (rjabberd trims idle buffers every 10 s).
    #[arg(long, default_value_t = 12.0)]
    pub settle: f64,
    /// The server's process id, for its CPU time and RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// More hosts of the same cluster (rjabberd's, or ejabberd's): user `i` connects to the `i mod n`-th
    /// of `--server` and these, as a load balancer would spread them.
    #[arg(long, value_delimiter = ',')]
    pub also_server: Vec<SocketAddr>,
    /// Their processes, whose CPU and memory are added to `--server-pid`'s (the cost of a message summed
    /// over the hosts).
    #[arg(long, value_delimiter = ',')]
    pub also_pid: Vec<u32>,
    /// A database server's main process id (PostgreSQL's postmaster): its CPU time and its direct
    /// children's (the backends, the WAL writer) is reported beside the server's.
    #[arg(long)]
    pub db_pid: Option<u32>,
    /// Enable message carbons (XEP-0280) on every session after binding, before initial presence: what
    /// a modern client does, so the server carries each message on its carbons path.
    #[arg(long)]
    pub carbons: bool,
    /// A name for the server in reports (rjabberd, ejabberd, prosody).
    #[arg(long, default_value = "server")]
    pub label: String,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// SVG plot of the latency percentile distribution.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Diagnostics (off by default): write to FILE one line per chat message slower than
    /// `--trace-slow-ms` (sender, recipient, intended send and receive times, harness thread, whether it
    /// came stamped `<delay/>` from offline storage, how long after the recipient's login), every `mixed`
    /// drop and login again (with its connect time), late sends and harness-thread stalls. One file per
    /// process: the first run that names one opens it.
    #[arg(long)]
    pub trace_file: Option<PathBuf>,
    /// The threshold of `--trace-file` (ms): slower messages, later sends and longer stalls are logged.
    #[arg(long, default_value_t = 50.0)]
    pub trace_slow_ms: f64,
}

impl RunArgs {
    /// The server user `user` connects to.
    pub fn server_for(&self, user: usize) -> SocketAddr {
        match user % (1 + self.also_server.len()) {
            0 => self.server,
            k => self.also_server[k - 1],
        }
    }
}

/// One credential derivation for all accounts (same password, one fixed salt): provisioning 100,000
/// users takes seconds, and the harness's SCRAM client can reuse its salted password.
pub fn provision(
    data_dir: &std::path::Path,
    users: usize,
    host: &str,
    prefix: &str,
    password: &str,
    iterations: u32,
) -> Result<(), String> {
    provision_with(data_dir, users, host, prefix, password, iterations, false)
}

/// As [`provision`]; with `numbered_passwords` user `i` gets password `{password}{i}`, the convention of
/// Tsung's `ts_jabber` (one credential derivation per user then).
pub fn provision_with(
    data_dir: &std::path::Path,
    users: usize,
    host: &str,
    prefix: &str,
    password: &str,
    iterations: u32,
    numbered_passwords: bool,
) -> Result<(), String> {
    let db = rjabberd::storage::UserDb::open(data_dir).map_err(|e| e.to_string())?;
    provision_into(
        &db,
        users,
        host,
        prefix,
        password,
        iterations,
        numbered_passwords,
    )
}

/// As [`provision_with`], into any store (see [`open_store`]).
pub fn provision_into(
    db: &dyn rjabberd::storage::Store,
    users: usize,
    host: &str,
    prefix: &str,
    password: &str,
    iterations: u32,
    numbered_passwords: bool,
) -> Result<(), String> {
    let creds = rjabberd::proto::sasl::Credentials::from_password(
        password,
        b"rjabberd-bench-salt",
        iterations,
    )
    .map_err(|e| format!("{e:?}"))?;
    let started = std::time::Instant::now();
    let mut added = 0;
    for i in 0..users {
        let name = format!("{prefix}{i}");
        let own;
        let creds = if numbered_passwords {
            own = rjabberd::proto::sasl::Credentials::from_password(
                &format!("{password}{i}"),
                b"rjabberd-bench-salt",
                iterations,
            )
            .map_err(|e| format!("{e:?}"))?;
            &own
        } else {
            &creds
        };
        match db.add(host, &name, creds) {
            Ok(()) => added += 1,
            Err(e) if e.0.contains("already exists") => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    println!(
        "provisioned {added} new accounts ({users} wanted) on {host} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Seconds as a `Duration`, for arguments given in seconds.
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

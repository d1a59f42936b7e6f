//! A cluster of real `rjabberd` processes for black-box tests (issue 13, docs/cluster-protocol.md):
//! one throw-away PostgreSQL database shared by every host, one secret, and each host a
//! [`TestServer`] with its cluster listener on its own loopback address (`127.0.0.{2+i}:0`, so the
//! hosts find each other through the membership table, with no seeds) and its c2s listeners on
//! `127.0.0.1:0` as every other test has them.
//!
//! How the kit knows the cluster is formed: every host prints `rjabberd: cluster: epoch E: members
//! n1,n2,n3` on stdout each time it applies a view. [`TestCluster::wait_for_members`] waits until
//! every running host among the expected members has printed, as its *latest* such line, exactly the
//! expected members, all of them at the same epoch, and `rjabberd cluster status --json` lists
//! exactly those members (`member: true`). Every process is killed when the cluster drops (also on a
//! panic: the hosts are [`TestServer`]s, whose drop sends SIGKILL, which a stopped process obeys too).

use std::process::Command;
use std::time::{Duration, Instant};

use rjabberd::placement::Placement;

use super::TestServer;
use super::pg::PgInstance;

/// The lease and tick of every test cluster: a host sees a change within about `lease_ms / 4`, and
/// a dead host is fenced within about `lease_ms` plus a renewal interval.
pub const LEASE_MS: u64 = 2000;
pub const TICK_MS: u64 = 200;

/// The password of every account [`TestCluster::add_user`] creates with [`PASSWORD`].
pub const PASSWORD: &str = "secret-pw";

/// How long [`TestCluster::start`] and [`TestCluster::restart`] wait for the view.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

const SECRET: &str = "cluster-test-secret-0123456789abcdef-0123456789abcdef\n";

static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One cluster at a time per test binary: three hosts of two shards are already six shard threads
/// and three PostgreSQL clients; two clusters at once on a small machine starved a host's shards
/// past the server's 10 s start limit.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct TestCluster {
    /// The hosts, in the order given to [`TestCluster::start`] (index `i` is node `nodes[i]`).
    hosts: Vec<TestServer>,
    nodes: Vec<String>,
    shards: Vec<usize>,
    /// Hosts stopped with SIGSTOP and not yet continued.
    stopped: Vec<bool>,
    /// The database URL every host uses.
    pub url: String,
    /// Held while the cluster lives ([`ONE_AT_A_TIME`]); dropped after the hosts.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// One line `rjabberd: cluster: epoch E: members a,b,c`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewLine {
    pub epoch: u64,
    pub members: Vec<String>,
}

pub fn parse_view_line(line: &str) -> Option<ViewLine> {
    let rest = line.strip_prefix("rjabberd: cluster: epoch ")?;
    let (epoch, members) = rest.split_once(": members ")?;
    let mut members: Vec<String> = members
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    members.sort();
    Some(ViewLine {
        epoch: epoch.trim().parse().ok()?,
        members,
    })
}

/// A row of `rjabberd cluster status --json`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub node: String,
    pub state: String,
    pub member: bool,
    pub shards: usize,
    pub incarnation: String,
    pub address: String,
    pub sessions: u64,
}

impl TestCluster {
    /// Starts one host per `(node, shards)` on a fresh database of the test binary's shared
    /// PostgreSQL; `extra` is appended to every host's configuration (e.g. `[limits]` overrides).
    /// Returns once every host has applied the view with all of them.
    pub fn start(hosts: &[(&str, usize)], extra: &str) -> TestCluster {
        let cluster = TestCluster::launch(hosts, |dir, i, node, shards, url| {
            host_config(dir, i, node, shards, url, extra)
        });
        let all: Vec<&str> = cluster.nodes.iter().map(String::as_str).collect();
        cluster.wait_for_members(&all, FORM_TIMEOUT);
        cluster
    }

    /// Starts one host per `(node, shards)` on a fresh database of the test binary's shared
    /// PostgreSQL, each with the configuration `config(dir, index, node, shards, url)` writes, the
    /// schema migrated once before the first; returns without waiting for the view.
    fn launch(
        hosts: &[(&str, usize)],
        config: impl Fn(&std::path::Path, usize, &str, usize, &str) -> String,
    ) -> TestCluster {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let pg =
            PgInstance::shared().expect("PostgreSQL installed (the test is ignored otherwise)");
        let n = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let url = pg.create_db(&format!("cluster{n}"));
        let mut cluster = TestCluster {
            hosts: Vec::new(),
            nodes: hosts.iter().map(|(node, _)| node.to_string()).collect(),
            shards: hosts.iter().map(|(_, s)| *s).collect(),
            stopped: vec![false; hosts.len()],
            url,
            _turn: turn,
        };
        // The schema once, with the first host's configuration, before any host starts.
        let migrated = std::sync::atomic::AtomicBool::new(false);
        for (i, (node, shards)) in hosts.iter().enumerate() {
            let text_for = |dir: &std::path::Path| {
                let text = config(dir, i, node, *shards, &cluster.url);
                if !migrated.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    std::fs::write(dir.join("rjabberd.toml"), &text).unwrap();
                    let out = rjabberd(&dir.join("rjabberd.toml"), &["storage", "migrate"]);
                    assert!(
                        out.status.success(),
                        "storage migrate on {}: {out:?}",
                        cluster.url
                    );
                }
                text
            };
            cluster
                .hosts
                .push(TestServer::start_config(*shards, text_for));
        }
        cluster
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn host(&self, i: usize) -> &TestServer {
        &self.hosts[i]
    }

    pub fn node(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// The index of `node`.
    pub fn index(&self, node: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n == node)
            .unwrap_or_else(|| panic!("no host {node} in {:?}", self.nodes))
    }

    fn running(&self, i: usize) -> bool {
        self.hosts[i].child.is_some() && !self.stopped[i]
    }

    /// SIGKILL, and reaps it: the host stops renewing its lease at once.
    pub fn kill9(&mut self, i: usize) {
        let mut child = self.hosts[i].child.take().expect("the host runs");
        let _ = child.kill();
        let _ = child.wait();
        self.stopped[i] = false;
    }

    /// SIGSTOP: the host hangs (its sockets stay open, it answers nothing).
    pub fn sigstop(&mut self, i: usize) {
        super::signal(self.hosts[i].pid(), libc::SIGSTOP);
        self.stopped[i] = true;
    }

    /// SIGCONT after [`TestCluster::sigstop`].
    pub fn sigcont(&mut self, i: usize) {
        super::signal(self.hosts[i].pid(), libc::SIGCONT);
        self.stopped[i] = false;
    }

    /// Starts host `i` again on the same configuration (SIGTERM first if it still runs; a stopped
    /// host is killed), and waits until every running host has applied a view with all the hosts
    /// that run.
    pub fn restart(&mut self, i: usize) {
        if self.stopped[i] {
            self.kill9(i);
        }
        if self.hosts[i].child.is_some() {
            self.hosts[i].terminate();
        }
        self.hosts[i].launch();
        let live: Vec<String> = (0..self.len())
            .filter(|&j| self.running(j))
            .map(|j| self.nodes[j].clone())
            .collect();
        let live: Vec<&str> = live.iter().map(String::as_str).collect();
        self.wait_for_members(&live, FORM_TIMEOUT);
    }

    /// Waits until host `i` takes client connections: a host closes new c2s connections at once
    /// while it is out of the cluster and for a short hold after it (re)joins, even though it has
    /// printed the view. Probes with a stream header (no login) and returns how long it took;
    /// panics after `timeout`.
    pub fn wait_accepting(&self, i: usize, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let mut probe = super::Client::connect(self.host(i).starttls, self.host(i).cert_path());
            probe.send(&super::header("localhost"));
            match probe.next_within(Duration::from_secs(2)) {
                Some(super::Got::Header(_)) => return t0.elapsed(),
                other => {
                    if t0.elapsed() > timeout {
                        panic!(
                            "host {i} ({}) takes no client connection within {timeout:?} (last: {other:?})\n{}",
                            self.nodes[i],
                            self.report()
                        );
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `rjabberd --config <host i's config> args…` (a command on the shared database).
    pub fn command(&self, i: usize, args: &[&str]) -> std::process::Output {
        rjabberd(&self.hosts[i].config_path(), args)
    }

    /// `rjabberd cluster status --json`, row by row (read from the database, so any host's
    /// configuration serves, running or not).
    pub fn status(&self) -> (u64, Vec<StatusRow>) {
        status_of(&self.hosts[0].config_path())
    }

    /// The members (`member: true`) of the table now, sorted by node.
    pub fn table_members(&self) -> Vec<String> {
        let mut m: Vec<String> = self
            .status()
            .1
            .into_iter()
            .filter(|r| r.member)
            .map(|r| r.node)
            .collect();
        m.sort();
        m
    }

    /// The latest view host `i` printed, if any.
    pub fn latest_view(&self, i: usize) -> Option<ViewLine> {
        self.hosts[i]
            .stdout
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|l| parse_view_line(l))
    }

    /// Every view line host `i` printed, in order.
    pub fn views(&self, i: usize) -> Vec<ViewLine> {
        self.hosts[i]
            .stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| parse_view_line(l))
            .collect()
    }

    /// Waits until the table lists exactly `members` and every running host among them has printed,
    /// as its latest view, exactly `members`, all at the same epoch; panics after `timeout` with what
    /// each host printed and its log.
    pub fn wait_for_members(&self, members: &[&str], timeout: Duration) {
        let mut want: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        want.sort();
        let deadline = Instant::now() + timeout;
        loop {
            let hosts_agree = {
                let views: Vec<Option<ViewLine>> = (0..self.len())
                    .filter(|&i| self.running(i) && want.contains(&self.nodes[i]))
                    .map(|i| self.latest_view(i))
                    .collect();
                let epochs: Vec<u64> = views.iter().flatten().map(|v| v.epoch).collect();
                views
                    .iter()
                    .all(|v| v.as_ref().is_some_and(|v| v.members == want))
                    && epochs.windows(2).all(|w| w[0] == w[1])
            };
            if hosts_agree && self.table_members() == want {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the cluster did not settle on members {want:?} within {timeout:?}\n\
                     table: {:?}\n{}",
                    self.status(),
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Each host's state, its views and the tail of its output (25 lines, or as many as
    /// `RJABBERD_CLUSTER_TEST_TAIL` says), for panic messages.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            let state = if self.hosts[i].child.is_none() {
                "killed"
            } else if self.stopped[i] {
                "stopped"
            } else {
                "running"
            };
            out.push_str(&format!(
                "=== host {i} ({}, {} shard(s), {state}), config {}\nviews printed: {:?}\n{}\n",
                self.nodes[i],
                self.shards[i],
                self.hosts[i].config_path().display(),
                self.views(i)
                    .iter()
                    .map(|v| format!("{}:{}", v.epoch, v.members.join(",")))
                    .collect::<Vec<_>>(),
                self.hosts[i].tails(
                    std::env::var("RJABBERD_CLUSTER_TEST_TAIL")
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(25)
                )
            ));
        }
        out
    }

    /// Placement over the table's members now (`Home::host` indexes them sorted by node).
    pub fn placement(&self) -> Placement {
        let rows: Vec<StatusRow> = self.status().1.into_iter().filter(|r| r.member).collect();
        let members: Vec<(&str, usize)> =
            rows.iter().map(|r| (r.node.as_str(), r.shards)).collect();
        Placement::cluster(&members, &self.nodes[0])
    }

    /// The node that is home to `bare` under [`TestCluster::placement`].
    pub fn home_node(&self, bare: &str) -> String {
        let p = self.placement();
        p.members()[p.home(bare).host].0.clone()
    }

    /// The first `{prefix}{k}@localhost` homed on `node` among the members now.
    pub fn user_homed_on(&self, node: &str, prefix: &str) -> String {
        let p = self.placement();
        let host = p
            .members()
            .iter()
            .position(|(n, _)| n == node)
            .unwrap_or_else(|| panic!("{node} is not a member: {:?}", p.members()));
        (0..10_000)
            .map(|k| format!("{prefix}{k}@localhost"))
            .find(|jid| p.home(jid).host == host)
            .expect("an account homed on the node")
    }

    /// Creates `jid` with `password` through `rjabberd user add` on the shared database (with the
    /// first host's configuration; every host reads the same accounts).
    pub fn add_user(&self, jid: &str, password: &str) {
        self.hosts[0].add_user(jid, password);
    }

    /// `rjabberd roster add owner contact --subscription sub` on the shared database.
    pub fn roster_add(&self, owner: &str, contact: &str, subscription: &str) {
        self.hosts[0].roster_add(owner, contact, subscription);
    }
}

/// `rjabberd --config config cluster status --json`: the epoch and the rows.
pub fn status_of(config: &std::path::Path) -> (u64, Vec<StatusRow>) {
    let out = rjabberd(config, &["cluster", "status", "--json"]);
    assert!(out.status.success(), "cluster status: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cluster status --json: {e}: {out:?}"));
    let rows = json["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| StatusRow {
            node: h["node"].as_str().unwrap_or_default().to_string(),
            state: h["state"].as_str().unwrap_or_default().to_string(),
            member: h["member"].as_bool().unwrap_or(false),
            shards: h["shards"].as_u64().unwrap_or(0) as usize,
            incarnation: h["incarnation"].as_str().unwrap_or_default().to_string(),
            address: h["address"].as_str().unwrap_or_default().to_string(),
            sessions: h["sessions"].as_u64().unwrap_or(0),
        })
        .collect();
    (json["epoch"].as_u64().unwrap_or(0), rows)
}

impl Drop for TestCluster {
    /// On a panic, says what each host printed and logged before the hosts are killed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "cluster state at the panic:\ntable: {:?}\n{}",
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.status())).ok(),
                self.report()
            );
        }
    }
}

fn rjabberd(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rjabberd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// Host `i`'s configuration file (node `node`, cluster listener `127.0.0.{2+i}:0`), with its secret
/// written beside it in `dir` (mode 0600). The hosts log at `info` (kept in memory and quoted when a
/// test fails), or at the level `RJABBERD_CLUSTER_TEST_LOG` names.
pub fn host_config(
    dir: &std::path::Path,
    i: usize,
    node: &str,
    shards: usize,
    url: &str,
    extra: &str,
) -> String {
    use std::os::unix::fs::PermissionsExt;
    let secret = dir.join("cluster.secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(i < 250, "one loopback address per host");
    format!(
        "shards = {shards}\ndata_dir = \"{data}\"\nlog_level = \"{log_level}\"\n\
         [[host]]\nname = \"localhost\"\n[[host]]\nname = \"example.net\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"direct\"\n\
         {extra}\n\
         [storage]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 2\n\
         [cluster]\nname = \"test\"\nnode = \"{node}\"\nlisten = \"127.0.0.{addr}:0\"\n\
         seeds = []\nsecret_file = \"cluster.secret\"\nlease_ms = {LEASE_MS}\ntick_ms = {TICK_MS}\n",
        data = dir.join("data").display(),
        log_level = std::env::var("RJABBERD_CLUSTER_TEST_LOG").unwrap_or_else(|_| "info".into()),
        addr = 2 + i,
    )
}

/// A cluster CA for [`TestCluster::start_tls`]: its certificate in PEM and what signs with it.
pub struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes `ca.pem` (this CA), `node.pem` and `node.key` (a certificate naming `node`) into
    /// `dir`, and returns the `[cluster]` lines that use them.
    pub fn host_files(&self, dir: &std::path::Path, node: &str) -> String {
        let params = rcgen::CertificateParams::new(vec![node.to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), &self.pem).unwrap();
        std::fs::write(dir.join("node.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
        "tls = true\nca_file = \"ca.pem\"\ncert_file = \"node.pem\"\nkey_file = \"node.key\"\n"
            .to_string()
    }
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

impl TestCluster {
    /// [`TestCluster::start`] with TLS on the links: one CA for the cluster and a certificate per
    /// host naming its node, except the hosts listed in `other_ca`, which get a CA and certificate
    /// of their own (their links to the others fail). Returns once the others have settled on a view
    /// without those.
    pub fn start_tls(hosts: &[(&str, usize)], extra: &str, other_ca: &[usize]) -> TestCluster {
        let ca = TestCa::new();
        let cluster = TestCluster::launch(hosts, |dir, i, node, shards, url| {
            // `[cluster]` is the last table of `host_config`: the TLS lines land in it.
            let own_ca;
            let ca = if other_ca.contains(&i) {
                own_ca = TestCa::new();
                &own_ca
            } else {
                &ca
            };
            host_config(dir, i, node, shards, url, extra) + &ca.host_files(dir, node)
        });
        let trusted: Vec<&str> = (0..hosts.len())
            .filter(|i| !other_ca.contains(i))
            .map(|i| cluster.nodes[i].as_str())
            .collect();
        // A host of another CA is a member until the others' suspicions fence it (twice the lease).
        cluster.wait_for_members(&trusted, FORM_TIMEOUT + Duration::from_millis(3 * LEASE_MS));
        cluster
    }
}

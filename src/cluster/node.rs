//! This host as a member of its cluster (docs/cluster-protocol.md §6, §9.4): the state every shard
//! shares ([`ClusterShared`]: who this host is, its link settings, the view it serves under and when its
//! lease was last renewed) and the agent thread that keeps the membership ([`start`]): it joins at
//! start, renews the lease every `lease_ms / 4`, publishes each new view for the shards to apply,
//! fences this host itself when it cannot renew in time or finds itself out, rejoins as a new
//! incarnation, and leaves at shutdown. The registry blocks on PostgreSQL, so it runs here, on a thread
//! of its own, and never on a reactor; the shards only read what it publishes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::membership::{MemberSpec, Registry, Renewal, Timing, View};
use crate::cluster::tls::ClusterTls;
use crate::cluster::transport::LinkSettings;
use crate::config::Config;
use crate::placement::Placement;
use crate::proto::cluster::handshake::{Identity, Secret};
use crate::proto::cluster::wire::Member;

/// A view as the shards apply it: the members of one epoch, the placement computed from them once for
/// every shard, and this host's place among them.
#[derive(Debug)]
pub struct AppliedView {
    /// Bumped on every publication (a new epoch, or this host going out or back in).
    pub generation: u64,
    pub epoch: u64,
    /// Sorted by node name: what [`crate::placement::Home::host`] indexes.
    pub members: Vec<Member>,
    pub placement: Arc<Placement>,
    /// This host's index in `members`; `None` while it is out (fenced, or cut off from the database),
    /// when it serves no session.
    pub me: Option<usize>,
    /// The links' identity under this view (the incarnation changes when the host rejoins).
    pub identity: Identity,
    /// New client connections wait until then after this host joined: the hosts that held its
    /// accounts before must have applied the view (and ended those sessions) first, so that no full
    /// JID is bound on two hosts at once.
    pub accept_after: Instant,
}

impl AppliedView {
    /// The member at `host` (an index of [`crate::placement::Home::host`]).
    pub fn member(&self, host: usize) -> Option<&Member> {
        self.members.get(host)
    }

    /// Whether `node` at `incarnation` is a member of this view.
    pub fn has(&self, node: &str, incarnation: u64) -> bool {
        self.members
            .iter()
            .any(|m| m.node == node && m.incarnation == incarnation)
    }

    /// The members' names, comma separated (for the log and the start line).
    pub fn names(&self) -> String {
        self.members
            .iter()
            .map(|m| m.node.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Runs `verb` with `body` on the receiving host and answers its result (`Err` with the words an
/// operator reads). The future runs on the shard whose link received the request.
pub type RequestHandler =
    fn(
        crate::modules::ctx::ModuleCtx,
        String,
        bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bytes::Bytes, String>>>>;

/// What every shard shares about the cluster.
pub struct ClusterShared {
    pub name: String,
    pub node: String,
    /// Where this host's link listener is bound (port 0 resolved).
    pub listen: SocketAddr,
    /// What the others connect to.
    pub address: String,
    pub secret: Secret,
    pub tick: Duration,
    pub lease: Duration,
    pub link_queue: usize,
    /// TLS on the links, when `cluster.tls` is on.
    pub tls: Option<Arc<ClusterTls>>,
    view: Mutex<Arc<AppliedView>>,
    generation: AtomicU64,
    /// The generation each shard applied last.
    applied: Vec<AtomicU64>,
    /// The generation whose members line was printed.
    announced: AtomicU64,
    /// Sessions per shard, for the lease renewal (what `cluster status` shows).
    sessions: Vec<AtomicU64>,
    /// When the last renewal that succeeded was sent, in ms since `origin`: the shards stop serving
    /// once it is older than three quarters of the lease, before the database can give this host's
    /// accounts to another (a paused or cut-off host fences itself first).
    renewed_at: AtomicU64,
    origin: Instant,
    /// Set by `rjabberd cluster leave` (through the control socket) or at shutdown.
    leaving: AtomicBool,
    /// Members whose links from this host have been down for four ticks (§9.1), as shard 0 sees
    /// them; the agent reports the changes to the registry.
    suspects: Mutex<std::collections::BTreeSet<String>>,
    /// Members shard 0 has a link up to now (a host that is out rejoins only when it reaches them all).
    reachable: Mutex<std::collections::BTreeSet<String>>,
    /// What runs the requests other hosts send this one (§10), installed once at start.
    pub requests: std::sync::OnceLock<RequestHandler>,
    /// Set by [`ClusterShared::poke`], taken by the agent.
    poked: AtomicBool,
}

impl ClusterShared {
    /// The view to serve under now.
    pub fn view(&self) -> Arc<AppliedView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn publish(&self, view: AppliedView) {
        let mut slot = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *slot = Arc::new(AppliedView { generation, ..view });
    }

    /// Link settings for `identity` (every shard builds its own `Rc` of them).
    pub fn link_settings(&self, identity: &Identity) -> LinkSettings {
        LinkSettings {
            me: identity.clone(),
            secret: self.secret.clone(),
            tick: self.tick,
            max_frames: self.link_queue,
            source: Some(self.listen.ip()).filter(|ip| !ip.is_unspecified()),
            tls: self.tls.clone(),
        }
    }

    /// Shard `shard` applied `generation`. True once when every shard has applied the current one
    /// (the caller prints the members line then).
    pub fn applied(&self, shard: usize, generation: u64) -> bool {
        if let Some(a) = self.applied.get(shard) {
            a.store(generation, Ordering::SeqCst);
        }
        let all = self
            .applied
            .iter()
            .all(|a| a.load(Ordering::SeqCst) >= generation);
        all && self.announced.fetch_max(generation, Ordering::SeqCst) < generation
    }

    pub fn set_sessions(&self, shard: usize, n: u64) {
        if let Some(s) = self.sessions.get(shard) {
            s.store(n, Ordering::Relaxed);
        }
    }

    fn sessions(&self) -> u64 {
        self.sessions
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .sum()
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Whether the lease may have lapsed without this host knowing: no renewal has succeeded for three
    /// quarters of the lease (the process was paused, or the database is out of reach).
    pub fn lease_in_doubt(&self) -> bool {
        let since = self
            .now_ms()
            .saturating_sub(self.renewed_at.load(Ordering::SeqCst));
        Duration::from_millis(since) > self.lease * 3 / 4
    }

    /// Asks the agent to leave the cluster (the shards drain once the view without this host comes).
    pub fn leave(&self) {
        self.leaving.store(true, Ordering::SeqCst);
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::SeqCst)
    }

    /// Another host said the membership changed (`MEMBERS` of a newer epoch, or `LEAVING`, §6.4): the
    /// agent reads the table now instead of at its next renewal.
    pub fn poke(&self) {
        self.poked.store(true, Ordering::SeqCst);
    }

    /// The members this host suspects now, and those its links reach (shard 0 keeps both).
    pub fn set_links(
        &self,
        suspects: std::collections::BTreeSet<String>,
        reachable: std::collections::BTreeSet<String>,
    ) {
        *self.suspects.lock().unwrap_or_else(|p| p.into_inner()) = suspects;
        *self.reachable.lock().unwrap_or_else(|p| p.into_inner()) = reachable;
    }

    fn reachable(&self) -> std::collections::BTreeSet<String> {
        self.reachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn suspects(&self) -> std::collections::BTreeSet<String> {
        self.suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn incarnation() -> u64 {
    loop {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the OS random source works");
        let n = u64::from_be_bytes(b);
        if n != 0 {
            return n;
        }
    }
}

/// The view a [`View`] of the registry makes for this host.
fn applied(view: &View, me: &MemberSpec, cluster: &str, accept_after: Instant) -> AppliedView {
    let members: Vec<(&str, usize)> = view
        .members
        .iter()
        .map(|m| (m.node.as_str(), usize::from(m.shards)))
        .collect();
    let placement = Arc::new(Placement::cluster(&members, &me.node));
    AppliedView {
        generation: 0,
        epoch: view.epoch,
        me: view
            .members
            .iter()
            .position(|m| m.node == me.node && m.incarnation == me.incarnation),
        members: view.members.clone(),
        placement,
        identity: Identity {
            cluster: cluster.to_string(),
            node: me.node.clone(),
            incarnation: me.incarnation,
            shards: me.shards,
        },
        accept_after,
    }
}

/// The agent's handle: joined at shutdown.
pub struct Agent {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Joins the cluster (blocking: the caller is `Server::start`, before any shard runs) and starts the
/// agent thread. `listen` is the bound link listener; `shards` this host's shard count.
pub fn start(
    config: &Config,
    listen: SocketAddr,
    shards: usize,
    shutdown: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(Arc<ClusterShared>, Agent), String> {
    let cluster = config.cluster.as_ref().ok_or("no [cluster]")?;
    let tls = if cluster.tls {
        // The configuration check made sure all three are given.
        let file = |f: &Option<toml::Spanned<std::path::PathBuf>>| {
            f.as_ref()
                .map(|f| cluster.resolve(f.get_ref(), &config.file))
                .ok_or("cluster.tls = true needs ca_file, cert_file and key_file")
        };
        Some(Arc::new(ClusterTls::load(
            &file(&cluster.ca_file)?,
            &file(&cluster.cert_file)?,
            &file(&cluster.key_file)?,
            cluster.node.get_ref(),
        )?))
    } else {
        None
    };
    let name = cluster.name.get_ref().clone();
    let secret = Secret::from_file_contents(&cluster.read_secret(&config.file)?)?;
    let address = match &cluster.advertise {
        Some(a) => a.get_ref().clone(),
        None => listen.to_string(),
    };
    let lease = Duration::from_millis(cluster.lease_ms());
    let target = crate::storage::postgres_target(&config.storage).map_err(|e| e.to_string())?;
    let registry = Registry::open(
        target,
        &name,
        Timing {
            lease,
            // Twice the lease (10 s by default, §9.4): a suspicion outlives a lease that a merely slow
            // host would still renew.
            evict_after: lease * 2,
        },
    )
    .map_err(|e| format!("cluster {name}: {e}"))?;
    let mut me = MemberSpec {
        node: cluster.node.get_ref().clone(),
        incarnation: incarnation(),
        address: address.clone(),
        shards: shards.min(u16::MAX as usize) as u16,
    };
    let origin = Instant::now();
    let view = registry
        .join(&me)
        .map_err(|e| format!("cluster {name}: cannot join: {e}"))?;
    let hold = renewal_interval(lease) + Duration::from_millis(250);
    let first = applied(&view, &me, &name, Instant::now() + hold);
    let shared = Arc::new(ClusterShared {
        name: name.clone(),
        node: me.node.clone(),
        listen,
        address,
        secret,
        tick: Duration::from_millis(cluster.tick_ms()),
        lease,
        link_queue: cluster.link_queue(),
        tls,
        view: Mutex::new(Arc::new(AppliedView {
            generation: 1,
            ..first
        })),
        generation: AtomicU64::new(1),
        applied: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        announced: AtomicU64::new(0),
        sessions: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        renewed_at: AtomicU64::new(0),
        origin,
        leaving: AtomicBool::new(false),
        suspects: Mutex::new(Default::default()),
        reachable: Mutex::new(Default::default()),
        requests: std::sync::OnceLock::new(),
        poked: AtomicBool::new(false),
    });
    log::info!(
        event = "cluster-joined", cluster = name.as_str(), node = me.node.as_str(),
        incarnation = me.incarnation, epoch = view.epoch;
        "joined the cluster"
    );
    let agent_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("rjabberd-cluster".into())
        .spawn(move || {
            let mut last_epoch = view.epoch;
            let mut out = false;
            let mut failures = 0u32;
            // A host fenced again soon after it rejoined is cut off in a way its own links do not
            // show (the others cannot reach it, but it reaches them): each rejoin would move its
            // share of the accounts there and back, so the next attempt waits, twice as long each
            // time, up to a minute.
            let mut rejoined_at: Option<Instant> = None;
            let mut out_since = Instant::now();
            let mut backoff = Duration::ZERO;
            let mut reported = std::collections::BTreeSet::new();
            let step = renewal_interval(lease);
            loop {
                // Sleep in small steps so that a shutdown, a leave or another host's word that the
                // membership changed is seen at once.
                let wake = Instant::now() + step;
                while Instant::now() < wake
                    && !shutdown.load(Ordering::SeqCst)
                    && !agent_shared.is_leaving()
                    && !agent_shared.poked.swap(false, Ordering::SeqCst)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if shutdown.load(Ordering::SeqCst) || agent_shared.is_leaving() {
                    match registry.leave(&me) {
                        Ok(_) => log::info!(
                            event = "cluster-left", node = me.node.as_str();
                            "left the cluster"
                        ),
                        Err(e) => log::warn!("cluster: leaving: {e}"),
                    }
                    // The others, so that what this host still holds is routed to their new homes.
                    let v = others_view(&registry, last_epoch + 1);
                    agent_shared.publish(applied(&v, &me, &agent_shared.name, Instant::now()));
                    if shutdown.load(Ordering::SeqCst) {
                        return;
                    }
                    // Left by request: stay out until the process stops.
                    while !shutdown.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    return;
                }
                let sent = agent_shared.now_ms();
                let result = if out {
                    // Out (fenced, replaced or cut off): a new incarnation, once the database answers
                    // and shard 0 has a link up to every member (a host cut off from the others but
                    // not from the database would otherwise be fenced again at once, and every
                    // rejoin would move its share of the accounts back and forth).
                    match registry.view() {
                        Ok(others) => {
                            let reachable = agent_shared.reachable();
                            let cut_off: Vec<&str> = others
                                .members
                                .iter()
                                .filter(|m| m.node != me.node && !reachable.contains(&m.node))
                                .map(|m| m.node.as_str())
                                .collect();
                            let watched = agent_shared.view();
                            let same = |a: &[Member], b: &[Member]| {
                                a.len() == b.len()
                                    && a.iter().zip(b).all(|(x, y)| {
                                        x.node == y.node && x.incarnation == y.incarnation
                                    })
                            };
                            if !same(&watched.members, &others.members) {
                                // Shard 0 watches the links to these members from now on.
                                agent_shared.publish(applied(
                                    &others,
                                    &me,
                                    &agent_shared.name,
                                    Instant::now(),
                                ));
                                continue;
                            }
                            if !cut_off.is_empty() {
                                log::info!(
                                    "cluster: not rejoining yet: no link to {}",
                                    cut_off.join(", ")
                                );
                                continue;
                            }
                            if out_since.elapsed() < backoff {
                                continue;
                            }
                            // This node's previous incarnation still holds its slots (evicting
                            // until its lease runs out, or another process of the same node runs):
                            // joining now would take them back before the others ever served them.
                            if others.members.iter().any(|m| m.node == me.node) {
                                continue;
                            }
                            // The incarnation drawn when this host went out: its links already
                            // speak for it.
                            registry.join(&me).map(Renewal::Live)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    registry.renew(&me, agent_shared.sessions())
                };
                match result {
                    Ok(Renewal::Live(view)) => {
                        agent_shared.renewed_at.store(sent, Ordering::SeqCst);
                        failures = 0;
                        if out {
                            // The join dropped this node's reports.
                            reported.clear();
                        }
                        report_suspicions(&registry, &me, &agent_shared, &mut reported);
                        if out || view.epoch != last_epoch {
                            let accept_after = if out {
                                log::info!(
                                    event = "cluster-rejoined", node = me.node.as_str(),
                                    incarnation = me.incarnation, epoch = view.epoch;
                                    "rejoined the cluster as a new incarnation"
                                );
                                Instant::now() + step + Duration::from_millis(250)
                            } else {
                                agent_shared.view().accept_after
                            };
                            if out {
                                rejoined_at = Some(Instant::now());
                            }
                            out = false;
                            last_epoch = view.epoch;
                            agent_shared.publish(applied(
                                &view,
                                &me,
                                &agent_shared.name,
                                accept_after,
                            ));
                        }
                    }
                    Ok(Renewal::Fenced) | Ok(Renewal::Replaced { .. }) => {
                        backoff = if rejoined_at.is_some_and(|t| t.elapsed() < 4 * lease) {
                            (backoff * 2).clamp(lease, Duration::from_secs(60))
                        } else {
                            Duration::ZERO
                        };
                        out_since = Instant::now();
                        if !backoff.is_zero() {
                            log::warn!(
                                event = "cluster-rejoin-backoff", backoff_ms = backoff.as_millis() as u64;
                                "cluster: fenced again soon after rejoining (the others may not reach \
                                 this host): the next attempt waits {:.1} s",
                                backoff.as_secs_f64()
                            );
                        }
                        log::warn!(
                            event = "cluster-fenced", node = me.node.as_str(),
                            incarnation = me.incarnation;
                            "this host is no longer a member (fenced, or its lease lapsed): its \
                             sessions end and it joins again"
                        );
                        go_out(&registry, &agent_shared, &mut me, &mut out, &mut last_epoch);
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_power_of_two() {
                            log::warn!(
                                event = "cluster-renewal-failed", failures = failures;
                                "cluster: the lease could not be renewed: {e}"
                            );
                        }
                        if !out && agent_shared.lease_in_doubt() {
                            log::warn!(
                                event = "cluster-fenced", node = me.node.as_str();
                                "the lease could not be renewed in time: this host stops serving \
                                 until it can join again"
                            );
                            go_out(&registry, &agent_shared, &mut me, &mut out, &mut last_epoch);
                        }
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the cluster agent: {e}"))?;
    Ok((
        shared,
        Agent {
            thread: Some(thread),
        },
    ))
}

/// Records in the registry the suspicions shard 0's links have formed since the last report, and drops
/// those that ended (§9.1). A failure is tried again at the next renewal.
fn report_suspicions(
    registry: &Registry,
    me: &MemberSpec,
    shared: &ClusterShared,
    reported: &mut std::collections::BTreeSet<String>,
) {
    let now = shared.suspects();
    for node in now.difference(reported) {
        match registry.suspect(me, node) {
            Ok(()) => log::warn!(
                event = "cluster-suspect", node = node.as_str();
                "cluster: the links to {node} have been down for four ticks; reported"
            ),
            Err(e) => {
                log::warn!("cluster: reporting {node} as suspect: {e}");
                return;
            }
        }
    }
    for node in reported.difference(&now) {
        if let Err(e) = registry.unsuspect(me, node) {
            log::warn!("cluster: withdrawing the suspicion of {node}: {e}");
            return;
        }
        log::info!(event = "cluster-unsuspect", node = node.as_str(); "cluster: {node} is reachable again");
    }
    *reported = now;
}

/// How often the lease is renewed (§6.2).
pub fn renewal_interval(lease: Duration) -> Duration {
    lease / 4
}

/// Publishes a view without this host: the shards end its sessions and close its links.
fn go_out(
    registry: &Registry,
    shared: &ClusterShared,
    me: &mut MemberSpec,
    out: &mut bool,
    last_epoch: &mut u64,
) {
    if *out {
        return;
    }
    *out = true;
    // The old incarnation is over; the next one starts now, so that the links shard 0 opens to watch
    // the others while this host is out are new streams (§3.4), not a restart of the old ones that
    // the receivers would take for a resumption.
    me.incarnation = incarnation();
    // The others (this incarnation is not among them), so that what this host still holds is routed
    // to their new homes and shard 0 watches its links to them; none when the database is out of reach.
    let v = others_view(registry, *last_epoch);
    shared.publish(applied(&v, me, &shared.name, Instant::now()));
}

/// The view as the registry has it now, or, when the database is out of reach, one of no members at
/// `epoch` (this host then routes nowhere and waits).
fn others_view(registry: &Registry, epoch: u64) -> View {
    registry.view().unwrap_or(View {
        epoch,
        members: Vec::new(),
    })
}

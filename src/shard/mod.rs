//! One shard's state: everything mutable that a core owns — its connections ([`Sinks`]), its session
//! table, its route table, its modules' registrations and per-shard module state, its spill queues — and
//! the few operations every service above needs over them: [`Shard::send_home`], the one way to reach
//! the owner of a piece of state (the local fast path inside it), and [`Shard::route`], the router's
//! entry as lower layers reach it. The state sits low: the router, the session manager, the stream glue
//! and the modules (through [`ModuleCtx`]) are built on it, and none of it imports them. What connects
//! them is installed from above at start ([`Wiring`], by [`pool`]): the function that handles a mesh
//! message and the router's entry point. Start-up, listeners and housekeeping are in [`pool`].

pub mod pool;

pub use pool::Server;

#[cfg(test)]
pub(crate) mod testing;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Instant, SystemTime};

use crate::auth::ExtAuth;
use crate::config::{Config, ListenerKind, TlsMode};
use crate::mesh::{Outbox, Overflow, Peers, ShardMsg};
use crate::modules::ctx::{ModuleCtx, ModuleJob, SessionInfo, ShardServices, StateMap};
use crate::modules::{HookPoint, HostModules, ModuleTable};
use crate::net::tls::HostCertificates;
use crate::placement::{Home, Placement};
use crate::proto::c2s::C2sSettings;
use crate::proto::component::ComponentSettings;
use crate::proto::errors::{StanzaErrorCondition, StreamErrorCondition, write_error_between};
use crate::proto::xml::{Limits, Stanza, parse_element};
use crate::router::table::RouteTable;
use crate::sink::{Sink, SinkId, Sinks};
use crate::sm::table::SessionTable;
use crate::storage::StoreWorkers;

/// What every shard shares, read-only, built once at start.
pub struct ServerShared {
    pub config: Config,
    pub hosts: Vec<String>,
    pub placement: Arc<Placement>,
    pub settings: Arc<C2sSettings>,
    pub limits: Limits,
    pub certs: Arc<HostCertificates>,
    pub starttls: Arc<rustls::ServerConfig>,
    pub direct: Arc<rustls::ServerConfig>,
    pub store: StoreWorkers,
    pub shutdown: Arc<AtomicBool>,
    /// Addresses actually bound (port 0 resolved), one per configured listener, in order.
    pub bound: Vec<(std::net::SocketAddr, TlsMode, ListenerKind)>,
    /// The external components and their secrets.
    pub components: Arc<ComponentSettings>,
    /// Which shard and connection serve each connected component: the one place that decides
    /// `conflict`; every shard's route table follows it.
    pub component_owners: std::sync::Mutex<HashMap<String, (usize, SinkId)>>,
    /// The extauth program pool, when `auth.method = "external"`.
    pub extauth: Option<Arc<ExtAuth>>,
    /// The first error a shard met while starting (a module that would not start).
    pub start_error: std::sync::Mutex<Option<String>>,
    /// A new module plan for every shard (configuration reload), with its generation.
    pub module_plan: std::sync::Mutex<(usize, Vec<HostModules>)>,
    pub shards: usize,
    /// Shards that have bound their listeners.
    pub ready: AtomicUsize,
    /// Bumped to ask every shard to print its session table (SIGUSR1).
    pub dump_generation: AtomicUsize,
    /// When the server started (XEP-0012 uptime).
    pub started: Instant,
    /// The metrics endpoint's socket, bound at start and taken by shard 0, which serves it.
    pub metrics_listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    /// Where the metrics endpoint listens (port 0 resolved).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The control socket: bound at start, its listener taken by shard 0, its file removed at
    /// [`Server::join`].
    pub ctl: std::sync::Mutex<Option<crate::admin::ctl::CtlSocket>>,
    /// The module plan generation each shard applied last, and the error if it failed (what
    /// `rjabberd ctl reload` waits for and reports).
    pub plan_applied: std::sync::Mutex<Vec<(usize, Option<String>)>>,
    /// This host as a member of its cluster, when `[cluster]` is configured.
    pub cluster: Option<Arc<crate::cluster::node::ClusterShared>>,
}

/// The router's multicast entry: one stanza, its sender, its recipients.
pub type MulticastFn = fn(&Rc<Shard>, Stanza, Arc<str>, &[Arc<str>]);

/// What the layers above install in a shard so that the state can reach them without importing them.
#[derive(Clone, Copy)]
pub struct Wiring {
    /// Handles a mesh message on this shard (also the local fast path of [`Shard::send_home`]).
    pub handle: fn(&Rc<Shard>, ShardMsg),
    /// The router's entry for stanzas the server generates (`router::route` with `Origin::Server`).
    pub route: fn(&Rc<Shard>, Stanza, Arc<str>),
    /// The router's entry for one stanza the server sends to many (`router::route_multicast`).
    pub multicast: MulticastFn,
    /// The router's entry for a watched session's stanza that a module held back and lets go
    /// (`router::resume_from_session`: bare JID, full JID, stanza).
    pub resume: fn(&Rc<Shard>, &str, &str, Stanza),
    /// Hands a message to a home on another host of the cluster (`cluster::routing::send_remote`), under
    /// the same policy as the mesh: it comes back only when the policy bounces it.
    pub remote: RemoteFn,
    /// Asks another host of the cluster to run an operator's request (`cluster::requests::ask`).
    pub ask: AskFn,
}

/// The cluster's entry for a request to another host: the shard, the host's node, the verb, the body.
pub type AskFn =
    fn(
        Rc<Shard>,
        String,
        String,
        bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bytes::Bytes, String>>>>;

/// The cluster's entry for a message whose home is on another host.
#[allow(clippy::result_large_err)]
pub type RemoteFn = fn(&Rc<Shard>, Home, ShardMsg, Overflow) -> Result<(), ShardMsg>;

/// One shard's state. Shared by the shard's tasks through an `Rc`; never crosses threads.
pub struct Shard {
    id: usize,
    server: Arc<ServerShared>,
    sinks: RefCell<Sinks>,
    sessions: RefCell<SessionTable>,
    routes: RefCell<RouteTable>,
    modules: RefCell<ModuleTable>,
    /// Per-shard state of modules, one value per type ([`ModuleCtx::state`]).
    module_state: RefCell<StateMap>,
    /// The channels to the other shards (glommio's mesh; a test's own in the harness).
    mesh: Option<Box<dyn Peers<ShardMsg>>>,
    outbox: Outbox<ShardMsg>,
    closing: Cell<bool>,
    /// The read buffer every connection of this shard reads into (see the stream driver).
    read_buf: Rc<RefCell<Vec<u8>>>,
    /// Orders stanzas that reach this shard within the same nanosecond ([`Shard::arrival_key`]).
    arrivals: Cell<u32>,
    wiring: Wiring,
    /// Where accounts live, as this shard applies it: the single host's table, or a cluster epoch's
    /// (replaced when the shard applies a new view).
    placement: RefCell<Arc<Placement>>,
    /// This host's index among the members of the placement ([`Home::host`]); 0 on a single host.
    host: Cell<usize>,
    /// This shard's links, tunnels and view when the host is a member of a cluster.
    cluster: Option<Rc<crate::cluster::state::ShardCluster>>,
}

impl Shard {
    pub fn new(
        id: usize,
        server: Arc<ServerShared>,
        mesh: Option<Box<dyn Peers<ShardMsg>>>,
        wiring: Wiring,
    ) -> Shard {
        let routes = RouteTable::new(&server.hosts);
        let placement = RefCell::new(server.placement.clone());
        Shard {
            placement,
            host: Cell::new(0),
            cluster: None,
            id,
            outbox: Outbox::new(server.shards),
            server,
            sinks: RefCell::new(Sinks::default()),
            sessions: RefCell::new(SessionTable::default()),
            routes: RefCell::new(routes),
            modules: RefCell::new(ModuleTable::default()),
            module_state: RefCell::new(StateMap::default()),
            mesh,
            closing: Cell::new(false),
            read_buf: Rc::new(RefCell::new(vec![0; 16 * 1024])),
            arrivals: Cell::new(0),
            wiring,
        }
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn shards(&self) -> usize {
        self.server.shards
    }

    pub fn server(&self) -> &Arc<ServerShared> {
        &self.server
    }

    pub fn config(&self) -> &Config {
        &self.server.config
    }

    pub fn sinks(&self) -> &RefCell<Sinks> {
        &self.sinks
    }

    pub fn sessions(&self) -> &RefCell<SessionTable> {
        &self.sessions
    }

    pub fn routes(&self) -> &RefCell<RouteTable> {
        &self.routes
    }

    pub fn modules(&self) -> &RefCell<ModuleTable> {
        &self.modules
    }

    pub fn read_buf(&self) -> &Rc<RefCell<Vec<u8>>> {
        &self.read_buf
    }

    pub fn closing(&self) -> bool {
        self.closing.get()
    }

    pub fn set_closing(&self) {
        self.closing.set(true);
    }

    /// The home of a bare JID (or of any key placed like one).
    pub fn home(&self, key: &str) -> Home {
        self.placement.borrow().home(key)
    }

    /// Whether this shard is the home of `bare`.
    pub fn is_home(&self, bare: &str) -> bool {
        self.home(bare) == self.local(self.id)
    }

    /// Shard `shard` of this host, as a [`Home`].
    pub fn local(&self, shard: usize) -> Home {
        Home {
            host: self.host.get(),
            shard,
        }
    }

    /// This host's index among the members of the current placement ([`Home::host`]).
    pub fn host_index(&self) -> usize {
        self.host.get()
    }

    /// This shard's cluster state, when the host is a member of a cluster.
    pub fn cluster(&self) -> Option<&Rc<crate::cluster::state::ShardCluster>> {
        self.cluster.as_ref()
    }

    /// Installs the cluster state (at start, before the shard serves).
    pub fn set_cluster(&mut self, cluster: Rc<crate::cluster::state::ShardCluster>) {
        self.cluster = Some(cluster);
    }

    /// Applies a placement and this host's index in it (a new cluster view). `usize::MAX` as the index
    /// means this host is out of the cluster: no account is at home here.
    pub fn set_placement(&self, placement: Arc<Placement>, host: usize) {
        *self.placement.borrow_mut() = placement;
        self.host.set(host);
    }

    /// A module context over this shard.
    pub fn ctx(self: &Rc<Self>) -> ModuleCtx {
        ModuleCtx::new(self.clone())
    }

    /// Hands `msg` to the shard `home` names: on this shard, at once (no queue, no future); on another,
    /// through the mesh under `policy`; on another host of the cluster, through the cluster's links
    /// (installed as [`Wiring::remote`]). The message comes back only when the policy bounces it.
    #[allow(clippy::result_large_err)]
    pub fn send_home(
        self: &Rc<Self>,
        home: Home,
        msg: ShardMsg,
        policy: Overflow,
    ) -> Result<(), ShardMsg> {
        if home.host != self.host.get() {
            return (self.wiring.remote)(self, home, msg, policy);
        }
        let to = home.shard();
        if to == self.id {
            (self.wiring.handle)(self, msg);
            return Ok(());
        }
        let mesh = self
            .mesh
            .as_ref()
            .expect("a mesh exists with more than one shard");
        self.outbox.send(&**mesh, to, msg, policy)
    }

    /// Sends to every other shard under [`Overflow::Spill`] (route changes).
    pub fn broadcast(self: &Rc<Self>, make: impl Fn() -> ShardMsg) {
        let Some(mesh) = &self.mesh else { return };
        for to in 0..self.shards() {
            if to != self.id {
                let _ = self.outbox.send(&**mesh, to, make(), Overflow::Spill);
            }
        }
    }

    /// Retries what waits in the spill queues; true while anything still waits.
    pub fn flush_outbox(&self) -> bool {
        if let Some(mesh) = &self.mesh {
            self.outbox.flush_all(&**mesh);
        }
        self.outbox.spilled()
    }

    /// This shard's figures now: its counters and histograms, its outbox, its tables.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        let mut s = crate::metrics::with(|m| m.snapshot(self.id));
        let (counts, waiting) = self.outbox.counts();
        s.mesh_sent = counts.sent;
        s.mesh_spill_waiting = waiting;
        s.mesh_spilled = counts.spilled;
        s.mesh_refused = counts.refused;
        let table = self.sessions.borrow();
        s.sessions = table.len() as u64;
        s.accounts = table.account_count() as u64;
        s.components = self
            .server
            .component_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|(shard, _)| *shard == self.id)
            .count() as u64;
        s.cluster = self.cluster().map(|c| c.figures());
        s
    }

    /// Messages waiting in the spill queue for shard `to`.
    pub fn waiting_for(&self, to: usize) -> usize {
        self.outbox.waiting(to)
    }

    /// Whether this shard's connections should pause reading: a spill queue or the `one_queue` IQ
    /// queues are past their high-water marks.
    pub fn backpressured(&self) -> bool {
        self.outbox.backpressured() || self.modules.borrow().iq_backlogged()
    }

    /// Routes a stanza the server generated (an answer, an error, a module's message): the router's
    /// entry as installed by the pool.
    pub fn route(self: &Rc<Self>, stanza: Stanza, from: Arc<str>) {
        (self.wiring.route)(self, stanza, from)
    }

    /// Routes one stanza the server generated to each of `recipients` (its `to` set for each), crossing
    /// the mesh once per destination shard.
    pub fn route_multicast(
        self: &Rc<Self>,
        stanza: Stanza,
        from: Arc<str>,
        recipients: &[Arc<str>],
    ) {
        (self.wiring.multicast)(self, stanza, from, recipients)
    }

    /// Sends the error reply for `stanza` from `replier` back to its sender, wherever that is. Never
    /// answers an error with an error.
    pub fn bounce(
        self: &Rc<Self>,
        stanza: &Stanza,
        sender: &str,
        replier: &str,
        condition: StanzaErrorCondition,
    ) {
        let mut bytes = Vec::new();
        if !write_error_between(&mut bytes, stanza, replier, sender, condition) {
            return;
        }
        match parse_element(&bytes, &Limits::default()) {
            Ok(reply) => self.route(reply, replier.into()),
            Err(e) => log::error!(
                "an error reply did not parse ({e}): {}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }

    /// A key that sorts in the order stanzas reached this shard (time, then a per-shard sequence).
    pub fn arrival_key(&self) -> String {
        let ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seq = self.arrivals.get();
        self.arrivals.set(seq.wrapping_add(1));
        crate::storage::layout::arrival_key(ns, seq)
    }

    /// Prints this shard's connections and the accounts in its session table (for operators and for the
    /// placement test): one line, `rjabberd: shard N: C connections, S sessions: a@x b@y …`.
    pub fn dump(&self) {
        let table = self.sessions.borrow();
        let mut accounts: Vec<&str> = table.accounts().collect();
        accounts.sort_unstable();
        println!(
            "rjabberd: shard {}: {} connections, {} sessions: {}",
            self.id,
            self.sinks.borrow().len(),
            table.len(),
            accounts.join(" ")
        );
    }

    /// Whether a module registered a handler for `point` on this shard: the check the hot path makes
    /// before building a hook's event.
    pub fn has_hook<E>(&self, point: &HookPoint<E>) -> bool {
        self.modules.borrow().hooks().has(point)
    }

    /// The connection serving the session `full` of `bare`, when it is bound here.
    pub fn session_sink(&self, bare: &str, full: &str) -> Option<Rc<Sink>> {
        let id = self
            .sessions
            .borrow()
            .sessions(bare)
            .iter()
            .find(|s| &*s.full == full)
            .map(|s| s.sink)?;
        self.sink(id)
    }

    /// The sink of a connection of this shard.
    pub fn sink(&self, id: SinkId) -> Option<Rc<Sink>> {
        self.sinks.borrow().get(id)
    }
}

/// What a module may do, carried out over this shard's state.
impl ShardServices for Shard {
    fn shard_id(&self) -> usize {
        self.id
    }

    fn home_host(&self, key: &str) -> Option<String> {
        let home = self.home(key);
        if home.host == self.host_index() {
            return None;
        }
        let cluster = self.cluster()?;
        cluster
            .view()
            .members
            .get(home.host)
            .map(|m| m.node.clone())
    }

    fn other_hosts(&self) -> Vec<String> {
        let Some(cluster) = self.cluster() else {
            return Vec::new();
        };
        let view = cluster.view();
        view.members
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                Some(*i) != view.me && m.state == crate::proto::cluster::wire::MemberState::Up
            })
            .map(|(_, m)| m.node.clone())
            .collect()
    }

    fn ask_host(
        self: Rc<Self>,
        node: &str,
        verb: &str,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bytes::Bytes, String>>>> {
        (self.wiring.ask)(self.clone(), node.to_string(), verb.to_string(), body)
    }

    fn is_home(&self, key: &str) -> bool {
        Shard::is_home(self, key)
    }

    fn route(self: Rc<Self>, stanza: Stanza, from: Arc<str>) {
        Shard::route(&self, stanza, from)
    }

    fn route_multicast(self: Rc<Self>, stanza: Stanza, from: Arc<str>, recipients: &[Arc<str>]) {
        Shard::route_multicast(&self, stanza, from, recipients)
    }

    fn resume_send(self: Rc<Self>, bare: &str, full: &str, stanza: Stanza) {
        (self.wiring.resume)(&self, bare, full, stanza)
    }

    fn bounce(
        self: Rc<Self>,
        stanza: &Stanza,
        sender: &str,
        replier: &str,
        c: StanzaErrorCondition,
    ) {
        Shard::bounce(&self, stanza, sender, replier, c)
    }

    fn shards(&self) -> usize {
        self.server.shards
    }

    fn send_to(self: Rc<Self>, shard: usize, job: ModuleJob) {
        let home = self.local(shard);
        // Operators' requests wait rather than fail: one per request, and there are few.
        let _ = Shard::send_home(&self, home, ShardMsg::Module(job), Overflow::Spill);
    }

    fn snapshot(&self) -> crate::metrics::Snapshot {
        Shard::snapshot(self)
    }

    fn send_home(self: Rc<Self>, key: &str, job: ModuleJob) {
        let home = self.home(key);
        // Module work always waits rather than being lost: its senders are bounded by the requests
        // that cause it.
        let _ = Shard::send_home(&self, home, ShardMsg::Module(job), Overflow::Spill);
    }

    fn store(&self) -> &StoreWorkers {
        &self.server.store
    }

    fn extauth(&self) -> Option<Arc<ExtAuth>> {
        self.server.extauth.clone()
    }

    fn config(&self) -> &Config {
        &self.server.config
    }

    fn modules(&self) -> &RefCell<ModuleTable> {
        &self.modules
    }

    fn sessions(&self, bare: &str) -> Vec<SessionInfo> {
        self.sessions
            .borrow()
            .sessions(bare)
            .iter()
            .map(|s| SessionInfo {
                full: s.full.clone(),
                available: s.available,
                priority: s.priority,
            })
            .collect()
    }

    fn write_to_session(&self, bare: &str, full: &str, stanza: &Stanza, from: &Arc<str>) -> bool {
        self.session_sink(bare, full)
            .map(|sink| sink.deliver(stanza, from))
            .is_some()
    }

    fn send_to_session(&self, bare: &str, full: &str, bytes: &[u8]) -> bool {
        self.session_sink(bare, full)
            .map(|sink| sink.send_bytes(bytes))
            .is_some()
    }

    fn watch(&self, bare: &str, module: &'static str, on: bool) -> bool {
        self.sessions.borrow_mut().watch(bare, module, on)
    }

    fn end_sessions(
        &self,
        bare: &str,
        full: Option<&str>,
        condition: StreamErrorCondition,
        text: Option<&str>,
    ) -> Vec<Arc<str>> {
        let chosen: Vec<(Arc<str>, SinkId)> = self
            .sessions
            .borrow()
            .sessions(bare)
            .iter()
            .filter(|s| full.is_none_or(|f| *s.full == *f))
            .map(|s| (s.full.clone(), s.sink))
            .collect();
        let mut ended = Vec::with_capacity(chosen.len());
        for (jid, id) in chosen {
            if let Some(s) = self.sink(id) {
                s.kill_with_text(condition, text);
                ended.push(jid);
            }
        }
        ended
    }

    fn bound_sessions(&self) -> Vec<Arc<str>> {
        self.sessions
            .borrow()
            .all_sessions()
            .map(|s| s.full.clone())
            .collect()
    }

    fn available_presences(&self, bare: &str) -> Vec<(Arc<str>, Stanza)> {
        self.sessions
            .borrow()
            .sessions(bare)
            .iter()
            .filter(|s| s.available)
            .filter_map(|s| Some((s.full.clone(), s.presence.clone()?)))
            .collect()
    }

    fn deliver_to_available(&self, bare: &str, stanza: &Stanza, from: &Arc<str>) -> usize {
        let sinks: Vec<SinkId> = self
            .sessions
            .borrow()
            .sessions(bare)
            .iter()
            .filter(|s| s.available)
            .map(|s| s.sink)
            .collect();
        let mut n = 0;
        for id in sinks {
            if let Some(s) = self.sink(id) {
                s.deliver(stanza, from);
                n += 1;
            }
        }
        n
    }

    fn components_under(&self, host: &str) -> Vec<String> {
        self.routes.borrow().components_under(host)
    }

    fn state_map(&self) -> &RefCell<StateMap> {
        &self.module_state
    }

    fn started(&self) -> Instant {
        self.server.started
    }
}

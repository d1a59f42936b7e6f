//! One shard per core: a glommio executor pinned to its CPU that owns every piece of mutable state of its
//! part of the server — its connections (a slab), its session table, its spill queues — and wires the
//! channel mesh to the other shards. [`Server::start`] builds the pool; each shard binds every listener
//! with SO_REUSEPORT, accepts connections, and consumes the mesh. `home(bare_jid)` is the one placement
//! function: the shard (and, when clusters exist, the host) that owns an account.
//!
//! Mesh overflow policy: a message for a shard whose mesh queue is full waits in a per-peer spill queue,
//! in order, retried on every send and every millisecond. For stanzas the spill queue is capped
//! (`SPILL_CAP`); beyond it a stanza is bounced to its sender with `resource-constraint` (policy
//! [`Overflow::Bounce`]), and from `SPILL_HIGH_WATER` on the shard's connections pause reading, so a
//! burst slows its senders through TCP instead of bouncing; the same pause applies while the shard's
//! `one_queue` IQ queues hold more than `modules::iq::ONE_QUEUE_HIGH_WATER` requests. A connection
//! moving home always waits (policy [`Overflow::Spill`]; their number is bounded by the connection cap).
//! No mesh consumer ever awaits a send.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use glommio::channels::channel_mesh::{MeshBuilder, Senders};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use slab::Slab;

use crate::auth::ExtAuth;
use crate::config::{AuthMethod, Config, ListenerKind, TlsMode};
use crate::modules::HostModules;
use crate::net::conn::ConnShared;
use crate::net::tls::HostCertificates;
use crate::proto::c2s::{C2s, C2sSettings};
use crate::proto::component::ComponentSettings;
use crate::proto::xml::{Limits, Stanza};
use crate::sm::table::SessionTable;
use crate::storage::StoreWorkers;

/// Messages between shards. Everything in them is `Send`; a stanza travels as its refcounted bytes.
pub enum ShardMsg {
    /// Deliver a stanza to a local account of the receiving (home) shard; `from` is stamped on it.
    Deliver { stanza: Stanza, from: Arc<str> },
    /// A client connection moving to its home shard after SASL.
    Adopt(Box<MovedConnection>),
    /// A stanza for the external component serving `domain`, whose connection is on the receiving shard.
    ToComponent {
        domain: Box<str>,
        stanza: Stanza,
        from: Arc<str>,
    },
    /// An external component connected (`Some((shard, connection))`) or left (`None`): every shard's
    /// route table follows.
    ComponentRoute {
        domain: Box<str>,
        route: Option<(usize, usize)>,
    },
}

/// A connection in transit between shards: its socket, TLS state, stream state and unparsed bytes.
pub struct MovedConnection {
    pub fd: OwnedFd,
    pub peer: SocketAddr,
    pub tls: Option<Box<rustls::ServerConnection>>,
    pub c2s: C2s,
    pub unparsed: BytesMut,
}

/// The named policies for a full mesh queue (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Bounce,
    Spill,
}

/// Stanzas that may wait in one peer's spill queue before new ones bounce with `resource-constraint`.
const SPILL_CAP: usize = 16 * 1024;
/// Spill length at which connections pause reading (backpressure through TCP).
const SPILL_HIGH_WATER: usize = 1024;

/// What a connection over the per-shard cap receives before the close.
const CAP_REFUSAL: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><stream:error>\
    <resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>";

/// How often idle connections are asked to release their buffers.
const IDLE_SWEEP: Duration = Duration::from_secs(10);

/// The hosts whose `mod_register` lets unauthenticated streams create accounts.
pub fn register_hosts(plan: &[HostModules]) -> Vec<String> {
    plan.iter()
        .filter(|h| {
            h.modules
                .iter()
                .any(|(n, o)| *n == "mod_register" && o.bool("allow_preauth"))
        })
        .map(|h| h.host.clone())
        .collect()
}

/// When the server started (XEP-0012 uptime).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// When the server started.
pub fn started() -> std::time::Instant {
    *STARTED.get_or_init(std::time::Instant::now)
}

/// Where an account lives. `host` is always 0 (this host) until clusters exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Home {
    pub host: usize,
    pub shard: usize,
}

/// The placement function: the home of a bare JID (DESIGN.md §2). A fixed-key SipHash, so every shard and
/// every restart agrees.
pub fn home(bare_jid: &str, shards: usize) -> Home {
    let mut h = std::hash::DefaultHasher::new();
    bare_jid.hash(&mut h);
    Home {
        host: 0,
        shard: (h.finish() % shards.max(1) as u64) as usize,
    }
}

/// What every shard shares, read-only, built once at start.
pub struct ServerShared {
    pub config: Config,
    pub hosts: Vec<String>,
    pub settings: Arc<C2sSettings>,
    pub limits: Limits,
    pub certs: Arc<HostCertificates>,
    pub starttls: Arc<rustls::ServerConfig>,
    pub direct: Arc<rustls::ServerConfig>,
    pub store: StoreWorkers,
    pub shutdown: Arc<AtomicBool>,
    /// Addresses actually bound (port 0 resolved), one per configured listener, in order.
    pub bound: Vec<(SocketAddr, TlsMode, ListenerKind)>,
    /// The external components and their secrets.
    pub components: Arc<ComponentSettings>,
    /// Which shard and connection serve each connected component: the one place that decides
    /// `conflict`; every shard's route table follows it.
    pub component_owners: std::sync::Mutex<std::collections::HashMap<String, (usize, usize)>>,
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
}

/// One shard's state. Shared by the shard's tasks through an `Rc`; never crosses threads.
pub struct Shard {
    pub id: usize,
    pub server: Arc<ServerShared>,
    pub conns: RefCell<Slab<Rc<ConnShared>>>,
    pub sessions: RefCell<SessionTable>,
    mesh: Option<Senders<ShardMsg>>,
    spill: RefCell<Vec<VecDeque<ShardMsg>>>,
    pub closing: Cell<bool>,
    /// What the modules registered on this shard (IQ handlers, hooks, services).
    pub modules: RefCell<crate::modules::ModuleTable>,
    /// External components: domain → (shard, connection) of the component's connection.
    pub components: RefCell<std::collections::HashMap<String, (usize, usize)>>,
    /// The read buffer every connection of this shard reads into (see the connection driver).
    pub read_buf: RefCell<Vec<u8>>,
}

thread_local! {
    /// The shard running on this thread, if any: lets probes (the allocation test) attribute work.
    pub static CURRENT_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    /// True while this thread runs the stanza path from the parser's buffer to a recipient's output
    /// buffer (parsing, the c2s machine, routing, the mesh hop, delivery), and not socket or TLS work: the
    /// span the forwarding allocation test counts in.
    pub static HOT_PATH: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` marked as the stanza hot path (see [`HOT_PATH`]).
pub fn hot_path<T>(f: impl FnOnce() -> T) -> T {
    let was = HOT_PATH.with(|h| h.replace(true));
    let out = f();
    HOT_PATH.with(|h| h.set(was));
    out
}

impl Shard {
    pub fn shards(&self) -> usize {
        self.server.shards
    }

    /// Sends to another shard without waiting. A full queue applies `policy`; the message comes back
    /// only for [`Overflow::Bounce`].
    // The returned message is the bounce path's input, not an error to propagate: boxing it would cost
    // an allocation on every full-queue bounce for nothing.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, to: usize, msg: ShardMsg, policy: Overflow) -> Result<(), ShardMsg> {
        let mesh = self
            .mesh
            .as_ref()
            .expect("a mesh exists with more than one shard");
        let mut spill = self.spill.borrow_mut();
        let queue = &mut spill[to];
        // Order is kept: while a spill queue holds messages, new ones go behind them.
        let msg = if queue.is_empty() {
            match mesh.try_send_to(to, msg) {
                Ok(()) => return Ok(()),
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m))) => m,
                Err(e) => {
                    log::error!("shard {}: mesh send to {to} failed: {e}", self.id);
                    return Ok(());
                }
            }
        } else {
            msg
        };
        let cap = match policy {
            Overflow::Bounce => SPILL_CAP,
            Overflow::Spill => usize::MAX,
        };
        if queue.len() >= cap {
            return Err(msg);
        }
        queue.push_back(msg);
        drop(spill);
        self.flush_peer(to);
        Ok(())
    }

    /// Every connection of this shard, taken out of the slab so their methods may touch it again.
    pub fn connections(&self) -> Vec<Rc<ConnShared>> {
        self.conns.borrow().iter().map(|(_, c)| c.clone()).collect()
    }

    /// Whether a spill queue is long enough that connections should stop reading for a moment: the
    /// backpressure that keeps bursts from turning into bounces.
    pub fn backpressured(&self) -> bool {
        self.spill
            .borrow()
            .iter()
            .any(|q| q.len() >= SPILL_HIGH_WATER)
            || crate::modules::iq::backlog() >= crate::modules::iq::ONE_QUEUE_HIGH_WATER
    }

    fn flush_peer(&self, to: usize) {
        let Some(mesh) = &self.mesh else { return };
        let mut spill = self.spill.borrow_mut();
        let queue = &mut spill[to];
        while let Some(msg) = queue.pop_front() {
            match mesh.try_send_to(to, msg) {
                Ok(()) => {}
                Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m))) => {
                    queue.push_front(m);
                    break;
                }
                Err(_) => break,
            }
        }
    }

    fn flush_spill(&self) {
        for to in 0..self.shards() {
            self.flush_peer(to);
        }
    }

    /// Prints this shard's connections and the accounts in its session table (for operators and for the
    /// placement test): one line, `rjabberd: shard N: C connections, S sessions: a@x b@y …`.
    fn dump(&self) {
        let table = self.sessions.borrow();
        let mut accounts: Vec<&str> = table.accounts().collect();
        accounts.sort_unstable();
        println!(
            "rjabberd: shard {}: {} connections, {} sessions: {}",
            self.id,
            self.conns.borrow().len(),
            table.len(),
            accounts.join(" ")
        );
    }

    fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver { stanza, from } => {
                hot_path(|| crate::router::deliver_local(self, stanza, from))
            }
            ShardMsg::Adopt(moved) => crate::net::conn::adopt(self.clone(), *moved),
            ShardMsg::ToComponent {
                domain,
                stanza,
                from,
            } => {
                let route = self.components.borrow().get(&*domain).copied();
                match route {
                    Some((s, conn)) if s == self.id => {
                        crate::net::component::deliver(self, conn, &stanza, &from)
                    }
                    // It left meanwhile.
                    _ => crate::router::bounce_to_sender(
                        self,
                        &stanza,
                        &from,
                        &domain,
                        crate::proto::errors::StanzaErrorCondition::ServiceUnavailable,
                    ),
                }
            }
            ShardMsg::ComponentRoute { domain, route } => {
                let mut routes = self.components.borrow_mut();
                match route {
                    Some(r) => {
                        routes.insert(domain.into(), r);
                    }
                    None => {
                        routes.remove(&*domain);
                    }
                }
            }
        }
    }
}

/// A running server: its threads and the addresses it listens on.
pub struct Server {
    pub shared: Arc<ServerShared>,
    handles: glommio::PoolThreadHandles<()>,
}

impl Server {
    /// Starts the shards and returns once every listener is bound on every shard.
    pub fn start(config: Config, shutdown: Arc<AtomicBool>) -> Result<Server, String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = config.shard_count(cores);
        let certs = Arc::new(HostCertificates::load(&config)?);
        let store = StoreWorkers::start(&config.data_dir, 2).map_err(|e| e.to_string())?;
        let extauth = match (&config.auth.method, &config.auth.extauth_program) {
            (AuthMethod::External, Some(program)) => Some(Arc::new(
                ExtAuth::start(
                    program.get_ref(),
                    config.auth.extauth_pool_size,
                    Duration::from_secs(config.auth.extauth_timeout_secs),
                )
                .map_err(|e| e.to_string())?,
            )),
            _ => None,
        };
        let components = Arc::new(ComponentSettings {
            secrets: config
                .components
                .iter()
                .map(|c| (c.domain.get_ref().to_ascii_lowercase(), c.secret.clone()))
                .collect(),
            handshake_timeout: Duration::from_secs(config.limits.auth_timeout_secs),
        });
        STARTED.get_or_init(std::time::Instant::now);
        let hosts: Vec<String> = config
            .hosts
            .iter()
            .map(|h| h.name.get_ref().to_ascii_lowercase())
            .collect();
        let settings = Arc::new(C2sSettings {
            hosts: hosts.clone(),
            starttls: true,
            tls_required: !config.auth.allow_plaintext,
            max_sasl_failures: config.limits.max_sasl_failures,
            auth_timeout: Duration::from_secs(config.limits.auth_timeout_secs),
            plain_only: config.auth.method == AuthMethod::External,
            register_hosts: Arc::new(std::sync::RwLock::new(register_hosts(&config.module_plan))),
        });
        // Resolve port 0 once, with a socket bound but never listening (so it takes no connections),
        // held until every shard has bound the same address.
        let mut placeholders = Vec::new();
        let mut bound = Vec::new();
        for l in &config.listeners {
            let addr: SocketAddr = l.address.get_ref().parse().map_err(|e| format!("{e}"))?;
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )
            .map_err(|e| format!("{addr}: {e}"))?;
            sock.set_reuse_port(true)
                .map_err(|e| format!("{addr}: {e}"))?;
            sock.set_reuse_address(true)
                .map_err(|e| format!("{addr}: {e}"))?;
            sock.bind(&addr.into())
                .map_err(|e| format!("cannot bind {addr}: {e}"))?;
            let actual = sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| format!("{addr}: no local address"))?;
            bound.push((actual, l.tls, l.kind));
            placeholders.push(sock);
        }
        let plan = config.module_plan.clone();
        let session_cache: Arc<dyn rustls::server::StoresServerSessions> =
            if config.tls.session_cache_size == 0 {
                Arc::new(rustls::server::NoServerSessionStorage {})
            } else {
                rustls::server::ServerSessionMemoryCache::new(config.tls.session_cache_size)
            };
        let ticketer: Option<Arc<dyn rustls::server::ProducesTickets>> =
            if config.tls.session_tickets {
                Some(
                    rustls::crypto::ring::Ticketer::new()
                        .map_err(|e| format!("cannot make a TLS ticket key: {e}"))?,
                )
            } else {
                None
            };
        let shared = Arc::new(ServerShared {
            components,
            component_owners: std::sync::Mutex::new(std::collections::HashMap::new()),
            extauth,
            start_error: std::sync::Mutex::new(None),
            module_plan: std::sync::Mutex::new((0, plan)),
            limits: Limits {
                max_stanza_bytes: config.limits.max_stanza_bytes,
                ..Limits::default()
            },
            starttls: certs.server_config(false, &config.tls, &session_cache, &ticketer),
            direct: certs.server_config(true, &config.tls, &session_cache, &ticketer),
            certs,
            config,
            hosts,
            settings,
            store,
            shutdown,
            bound,
            shards,
            ready: AtomicUsize::new(0),
            dump_generation: AtomicUsize::new(0),
        });
        let placement = if shards <= cores {
            PoolPlacement::MaxSpread(shards, None)
        } else {
            PoolPlacement::Unbound(shards)
        };
        let mesh = (shards > 1).then(|| MeshBuilder::<ShardMsg, _>::full(shards, 1024));
        let for_shards = shared.clone();
        let handles = LocalExecutorPoolBuilder::new(placement)
            .name("rjabberd-shard")
            .on_all_shards(move || async move {
                let joined = match mesh {
                    Some(m) => Some(m.join().await.expect("mesh join")),
                    None => None,
                };
                let (senders, receivers) = match joined {
                    Some((s, r)) => (Some(s), Some(r)),
                    None => (None, None),
                };
                let id = senders.as_ref().map_or(0, |s| s.peer_id());
                run_shard(id, for_shards, senders, receivers).await;
            })
            .map_err(|e| format!("cannot start the shards: {e}"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while shared.ready.load(Ordering::SeqCst) < shards {
            if std::time::Instant::now() > deadline {
                // The shards that did start stop at once; those that could not start say why.
                shared.shutdown.store(true, Ordering::SeqCst);
                let why: Vec<String> = handles
                    .join_all()
                    .into_iter()
                    .filter_map(|r| r.err().map(|e| e.to_string()))
                    .collect();
                let mut memlock = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: getrlimit writes into the struct it is given.
                unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut memlock) };
                return Err(format!(
                    "shards did not start within 10 s ({}); glommio's io_uring rings need locked \
                     memory: RLIMIT_MEMLOCK is {} KiB, and less than about 512 KiB fails \
                     (raise `ulimit -l`, or LimitMEMLOCK= in a systemd unit)",
                    if why.is_empty() {
                        "no error reported".to_string()
                    } else {
                        why.join("; ")
                    },
                    memlock.rlim_cur / 1024
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(placeholders);
        let failed = shared
            .start_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(e) = failed {
            shared.shutdown.store(true, Ordering::SeqCst);
            let server = Server { shared, handles };
            server.join();
            return Err(e);
        }
        Ok(Server { shared, handles })
    }

    /// Asks every shard to apply a new module plan (configuration reload): modules no longer planned, or
    /// planned with other options, stop; new ones start.
    pub fn reload_modules(&self, plan: Vec<HostModules>) {
        *self
            .shared
            .settings
            .register_hosts
            .write()
            .unwrap_or_else(|p| p.into_inner()) = register_hosts(&plan);
        let mut slot = self
            .shared
            .module_plan
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        slot.0 += 1;
        slot.1 = plan;
    }

    /// Waits for every shard to finish (after the shutdown flag is set).
    pub fn join(self) {
        for r in self.handles.join_all() {
            if let Err(e) = r {
                log::error!("a shard ended with an error: {e}");
            }
        }
    }
}

/// A listening socket for this shard: SO_REUSEPORT (every shard binds the same address) and our backlog
/// (glommio's own `bind` fixes it at 1024).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    // SAFETY: the descriptor is a listening TCP socket owned by nothing else from here on.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(sock.into_raw_fd()) })
}

async fn run_shard(
    id: usize,
    server: Arc<ServerShared>,
    senders: Option<Senders<ShardMsg>>,
    receivers: Option<glommio::channels::channel_mesh::Receivers<ShardMsg>>,
) {
    CURRENT_SHARD.with(|c| c.set(Some(id)));
    let shard = Rc::new(Shard {
        id,
        spill: RefCell::new((0..server.shards).map(|_| VecDeque::new()).collect()),
        server: server.clone(),
        conns: RefCell::new(Slab::new()),
        sessions: RefCell::new(SessionTable::default()),
        mesh: senders,
        closing: Cell::new(false),
        modules: RefCell::new(crate::modules::ModuleTable::default()),
        components: RefCell::new(std::collections::HashMap::new()),
        read_buf: RefCell::new(vec![0; 16 * 1024]),
    });
    // Mesh consumers: one task per peer, each handling messages synchronously.
    if let Some(mut receivers) = receivers {
        for (_, rx) in receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    shard.handle(msg);
                }
            })
            .detach();
        }
    }
    let mut listeners = Vec::new();
    // Modules start before the listeners open, so the first client finds them.
    let plan = server
        .module_plan
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .1
        .clone();
    if let Err(e) = crate::modules::apply_plan(&shard, &plan) {
        log::error!("shard {id}: {e}");
        server
            .start_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        server.ready.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let mut plan_generation = 0;
    for (addr, tls, kind) in &server.bound {
        match listen(*addr, server.config.limits.listen_backlog) {
            Ok(l) => listeners.push((Rc::new(l), *tls, *kind)),
            Err(e) => {
                log::error!("shard {id}: cannot bind {addr}: {e}");
                server.shutdown.store(true, Ordering::SeqCst);
                server.ready.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
    for (listener, tls, kind) in &listeners {
        let listener = listener.clone();
        let shard = shard.clone();
        let tls = *tls;
        let kind = *kind;
        glommio::spawn_local(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        if shard.closing.get() {
                            return;
                        }
                        log::warn!("shard {}: accept failed: {e}", shard.id);
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if shard.closing.get() {
                    return;
                }
                if shard.conns.borrow().len()
                    >= shard.server.config.limits.max_connections_per_shard
                {
                    // The cap: refuse before any state is allocated, with `resource-constraint` on a
                    // plain listener (RFC 6120 §4.9.3.17); a direct-TLS client just sees the close.
                    log::warn!(
                        "shard {}: connection cap reached, refusing a connection",
                        shard.id
                    );
                    if tls == TlsMode::Starttls {
                        glommio::spawn_local(async move {
                            use futures_lite::AsyncWriteExt;
                            let mut stream = stream;
                            let _ = stream.write_all(CAP_REFUSAL).await;
                            let _ = stream.close().await;
                        })
                        .detach();
                    }
                    continue;
                }
                match kind {
                    ListenerKind::C2s => {
                        crate::net::conn::accept(shard.clone(), stream, tls == TlsMode::Direct)
                    }
                    ListenerKind::Component => crate::net::component::accept(shard.clone(), stream),
                }
            }
        })
        .detach();
    }
    server.ready.fetch_add(1, Ordering::SeqCst);
    log::debug!("shard {id} ready");

    // The housekeeping loop: spill queues, state dumps, the shutdown flag.
    let mut dumped = 0;
    let mut last_sweep = std::time::Instant::now();
    loop {
        // A millisecond while anything is spilled, otherwise a relaxed tick: an idle shard should cost
        // nothing measurable.
        let spilled = shard.spill.borrow().iter().any(|q| !q.is_empty());
        glommio::timer::sleep(Duration::from_millis(if spilled { 1 } else { 20 })).await;
        shard.flush_spill();
        if last_sweep.elapsed() >= IDLE_SWEEP {
            // Idle connections give their buffers back (the memory of an idle session).
            last_sweep = std::time::Instant::now();
            for c in shard.connections() {
                c.trim();
            }
        }
        let reload = {
            let slot = server.module_plan.lock().unwrap_or_else(|p| p.into_inner());
            (slot.0 != plan_generation).then(|| (slot.0, slot.1.clone()))
        };
        if let Some((generation, plan)) = reload {
            plan_generation = generation;
            match crate::modules::apply_plan(&shard, &plan) {
                Ok(()) => log::info!("shard {id}: modules reloaded"),
                Err(e) => log::error!("shard {id}: module reload: {e}"),
            }
        }
        let generation = server.dump_generation.load(Ordering::SeqCst);
        if generation != dumped {
            dumped = generation;
            shard.dump();
        }
        if server.shutdown.load(Ordering::SeqCst) {
            break;
        }
    }
    shard.closing.set(true);
    let conns = shard.connections();
    for c in &conns {
        c.kill(crate::proto::errors::StreamErrorCondition::SystemShutdown);
    }
    // Give connections a moment to write their `system-shutdown` errors.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !shard.conns.borrow().is_empty() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    drop(listeners);
    log::debug!("shard {id} stopped");
}

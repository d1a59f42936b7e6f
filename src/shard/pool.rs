//! Start-up and wiring: builds the shard pool ([`Server::start`]), installs in every shard what connects
//! its state to the services above it ([`Wiring`]: the mesh handler and the router's entry), binds the
//! listeners and accepts connections, consumes the mesh, applies module plans (at start and at a reload),
//! and runs each shard's housekeeping (spill queues, idle sweep, state dumps, shutdown). The one file that
//! sees every layer.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use glommio::channels::channel_mesh::{MeshBuilder, Senders};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

use super::{ServerShared, Shard, Wiring};
use crate::auth::ExtAuth;
use crate::config::{AuthMethod, Config, ListenerKind, TlsMode};
use crate::mesh::ShardMsg;
use crate::metrics::Stage;
use crate::modules::HostModules;
use crate::modules::client_state::csi_hosts;
use crate::modules::register::register_hosts;
use crate::modules::roster::{preapproval_hosts, rosterver_hosts};
use crate::net::tls::HostCertificates;
use crate::placement::Placement;
use crate::probe::{CURRENT_SHARD, hot_path};
use crate::proto::c2s::C2sSettings;
use crate::proto::component::ComponentSettings;
use crate::proto::xml::Limits;
use crate::storage::StoreWorkers;

/// What a connection over the per-shard cap receives before the close.
const CAP_REFUSAL: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><stream:error>\
    <resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>";

/// How often idle connections are asked to release their buffers.
const IDLE_SWEEP: Duration = Duration::from_secs(10);

/// The wiring every shard gets.
pub(crate) const WIRING: Wiring = Wiring {
    handle,
    route: crate::router::route_generated,
    multicast: crate::router::route_multicast,
    resume: crate::router::resume_from_session,
    remote: crate::cluster::routing::send_remote,
    ask: |shard, node, verb, body| {
        Box::pin(async move { crate::cluster::requests::ask(&shard, &node, &verb, body).await })
    },
};

/// Handles a message from the mesh (or from this shard's own fast path).
fn handle(shard: &Rc<Shard>, msg: ShardMsg) {
    match msg {
        ShardMsg::Deliver { stanza, from } => {
            hot_path(|| crate::sm::session::deliver_local(shard, stanza, from))
        }
        ShardMsg::Multicast { stanza, from, to } => {
            crate::sm::session::deliver_multicast(shard, &stanza, &from, &to)
        }
        ShardMsg::Adopt(moved) => crate::c2s::adopt(shard.clone(), *moved),
        ShardMsg::ToComponent {
            domain,
            stanza,
            from,
        } => crate::router::to_component(shard, &domain, stanza, from),
        ShardMsg::ComponentRoute { domain, route } => {
            shard.routes().borrow_mut().set_component(&domain, route)
        }
        ShardMsg::Module(job) => job(&shard.ctx()),
        ShardMsg::RemoteRoute { domain, route } => shard
            .routes()
            .borrow_mut()
            .set_remote_component(&domain, route),
        ShardMsg::Cluster(frame) => crate::cluster::routing::handle_frame(shard, *frame),
        ShardMsg::RemotePresence(p) => crate::cluster::routing::remote_presence(shard, *p),
    }
}

/// Starts, on this shard, the modules of `plan` (stopping what is no longer planned) and points the
/// route table at the services they registered.
pub(crate) fn apply_plan(shard: &Rc<Shard>, plan: &[HostModules]) -> Result<(), String> {
    let result = crate::modules::apply_plan(&shard.ctx(), plan);
    let services = shard.modules().borrow().services();
    shard.routes().borrow_mut().set_services(services);
    result
}

/// A running server: its threads and the addresses it listens on.
pub struct Server {
    pub shared: Arc<ServerShared>,
    handles: glommio::PoolThreadHandles<()>,
    /// The cluster membership agent, when this host is a member of a cluster.
    agent: Option<crate::cluster::node::Agent>,
}

impl Server {
    /// Starts the shards and returns once every listener is bound on every shard.
    pub fn start(config: Config, shutdown: Arc<AtomicBool>) -> Result<Server, String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = config.shard_count(cores);
        // Each address checked free of other processes (another rjabberd too), port 0 resolved, and held
        // until every shard listens on it: see net::listener.
        let mut placeholders = Vec::new();
        let mut bound = Vec::new();
        for l in &config.listeners {
            let addr: SocketAddr = l.address.get_ref().parse().map_err(|e| format!("{e}"))?;
            let reserved = crate::net::listener::reserve(addr).map_err(|e| e.to_string())?;
            bound.push((reserved.addr(), l.tls, l.kind));
            placeholders.push(reserved);
        }
        // Bound before any shard runs, like the listeners: a live server on the same socket fails the
        // start here, with the path.
        let ctl = if config.ctl.enabled {
            Some(crate::admin::ctl::CtlSocket::bind(
                &crate::admin::ctl::socket_path(&config),
            )?)
        } else {
            None
        };
        // The store first: it brings the schema (the membership tables too) up to date.
        let mut state = shared_state(config, shutdown.clone(), shards, bound)?;
        // A cluster member joins before any shard runs: the shards start with the first view.
        let (cluster, agent, cluster_reserved) = match &state.config.cluster {
            Some(c) => {
                let addr: SocketAddr = c.listen.get_ref().parse().map_err(|e| format!("{e}"))?;
                let reserved = crate::net::listener::reserve(addr)
                    .map_err(|e| format!("cluster.listen: {e}"))?;
                let (cluster, agent) = crate::cluster::node::start(
                    &state.config,
                    reserved.addr(),
                    shards,
                    shutdown.clone(),
                )?;
                let _ = cluster
                    .requests
                    .set(crate::admin::commands::cluster_request);
                (Some(cluster), Some(agent), Some(reserved))
            }
            None => (None, None, None),
        };
        state.cluster = cluster;
        let shared = Arc::new(state);
        *shared.ctl.lock().unwrap_or_else(|p| p.into_inner()) = ctl;
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
            let server = Server {
                shared,
                handles,
                agent,
            };
            server.join();
            return Err(e);
        }
        drop(cluster_reserved);
        if let Some(c) = &shared.cluster {
            // Clients wait until the hosts that held this host's accounts before it joined have
            // applied the view that moves them here (and ended their sessions).
            let until = c.view().accept_after;
            while std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(Server {
            shared,
            handles,
            agent,
        })
    }

    /// Re-reads the configuration file and applies its `[modules]` (SIGHUP); see [`reload`].
    pub fn reload(&self) -> Result<Reloaded, String> {
        reload(&self.shared)
    }

    /// Waits for every shard to finish (after the shutdown flag is set), and removes the control
    /// socket.
    pub fn join(self) {
        if let Some(agent) = self.agent {
            agent.join();
        }
        for r in self.handles.join_all() {
            if let Err(e) = r {
                log::error!("a shard ended with an error: {e}");
            }
        }
        drop(
            self.shared
                .ctl
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

/// What a configuration reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// The plan's generation: every shard has applied it once its entry in
    /// [`ServerShared::plan_applied`] reaches it.
    pub generation: usize,
    pub file: std::path::PathBuf,
    /// What the operator should know (changes that need a restart).
    pub notes: Vec<String>,
}

/// Re-reads the configuration file the server was started with and hands its module plan to every
/// shard, which apply it at their next tick: modules no longer planned, or planned with other options,
/// stop; new ones start. What SIGHUP and `rjabberd ctl reload` both do. A file with an error changes
/// nothing, and the error names its line; other sections than `[modules]` need a restart.
pub fn reload(shared: &ServerShared) -> Result<Reloaded, String> {
    let file = shared.config.file.clone();
    if file.as_os_str().is_empty() {
        return Err("started without --config, nothing to reload".into());
    }
    let (new, plan) = Config::load(&file)
        .and_then(|new| crate::modules::options::plan_of(&new).map(|plan| (new, plan)))
        .map_err(|e| format!("{e}; configuration unchanged"))?;
    let mut notes = Vec::new();
    if new.host_names() != shared.hosts {
        notes.push("hosts changed; that needs a restart (modules reloaded)".to_string());
    }
    // The streams' settings (mechanisms, plaintext) and the extauth pool are made once at start, so
    // like the other sections [auth] waits for a restart; saying so spares an operator who edited
    // `mechanisms` for a migration the surprise of an unchanged server.
    if new.auth != shared.config.auth {
        notes.push("[auth] changed; that needs a restart (modules reloaded)".to_string());
    }
    let generation = set_module_plan(shared, plan);
    Ok(Reloaded {
        generation,
        file,
        notes,
    })
}

/// [`reload`], then waits until every shard applied the plan: the report, or what failed.
pub async fn reload_and_wait(shared: &ServerShared) -> Result<String, String> {
    let r = reload(shared)?;
    let deadline = std::time::Instant::now() + crate::admin::SHARD_ANSWER_TIMEOUT;
    let applied = loop {
        let applied = shared
            .plan_applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if applied.iter().all(|(g, _)| *g >= r.generation) {
            break applied;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "modules of {} handed to the shards, but not every shard applied them within {} s",
                r.file.display(),
                crate::admin::SHARD_ANSWER_TIMEOUT.as_secs()
            ));
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    };
    let errors: Vec<String> = applied
        .iter()
        .enumerate()
        .filter_map(|(shard, (_, e))| e.as_ref().map(|e| format!("shard {shard}: {e}")))
        .collect();
    let mut report = format!(
        "modules reloaded from {}
",
        r.file.display()
    );
    for n in &r.notes {
        report.push_str(n);
        report.push('\n');
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(format!("{report}{}", errors.join("\n")))
    }
}

/// Hands `plan` to every shard; its generation.
fn set_module_plan(shared: &ServerShared, plan: Vec<HostModules>) -> usize {
    {
        // The stream features that follow the modules.
        let settings = &shared.settings;
        for (lock, hosts) in [
            (&settings.register_hosts, register_hosts(&plan)),
            (&settings.rosterver_hosts, rosterver_hosts(&plan)),
            (&settings.preapproval_hosts, preapproval_hosts(&plan)),
            (&settings.csi_hosts, csi_hosts(&plan)),
        ] {
            *lock.write().unwrap_or_else(|p| p.into_inner()) = hosts;
        }
    }
    let mut slot = shared.module_plan.lock().unwrap_or_else(|p| p.into_inner());
    slot.0 += 1;
    slot.1 = plan;
    slot.0
}

/// What every shard of a server will share, built from its configuration: certificates and TLS
/// configurations, the store's workers, the extauth pool, the c2s and component settings, placement.
pub(crate) fn shared_state(
    config: Config,
    shutdown: Arc<AtomicBool>,
    shards: usize,
    bound: Vec<(SocketAddr, TlsMode, ListenerKind)>,
) -> Result<ServerShared, String> {
    let plan = crate::modules::options::plan_of(&config).map_err(|e| e.to_string())?;
    let certs = Arc::new(HostCertificates::load(&config)?);
    let store =
        StoreWorkers::start(&config.storage, &config.data_dir).map_err(|e| e.to_string())?;
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
        mechanisms: config.auth.mechanisms(),
        register_hosts: Arc::new(std::sync::RwLock::new(register_hosts(&plan))),
        rosterver_hosts: Arc::new(std::sync::RwLock::new(rosterver_hosts(&plan))),
        preapproval_hosts: Arc::new(std::sync::RwLock::new(preapproval_hosts(&plan))),
        csi_hosts: Arc::new(std::sync::RwLock::new(csi_hosts(&plan))),
    });
    let session_cache: Arc<dyn rustls::server::StoresServerSessions> =
        if config.tls.session_cache_size == 0 {
            Arc::new(rustls::server::NoServerSessionStorage {})
        } else {
            rustls::server::ServerSessionMemoryCache::new(config.tls.session_cache_size)
        };
    let ticketer: Option<Arc<dyn rustls::server::ProducesTickets>> = if config.tls.session_tickets {
        Some(
            rustls::crypto::ring::Ticketer::new()
                .map_err(|e| format!("cannot make a TLS ticket key: {e}"))?,
        )
    } else {
        None
    };
    // Bound here, before any shard runs, so that a taken port fails the start with its address.
    let metrics_listener = match &config.metrics.listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr.get_ref().as_str())
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| format!("metrics.listen {}: {e}", addr.get_ref()))?;
            Some(l)
        }
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr().map_err(|e| e.to_string())?),
        None => None,
    };
    Ok(ServerShared {
        metrics_listener: std::sync::Mutex::new(metrics_listener),
        metrics_addr,
        ctl: std::sync::Mutex::new(None),
        plan_applied: std::sync::Mutex::new(vec![(0, None); shards]),
        cluster: None,
        placement: Arc::new(Placement::single_host(shards)),
        started: std::time::Instant::now(),
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
    })
}

async fn run_shard(
    id: usize,
    server: Arc<ServerShared>,
    senders: Option<Senders<ShardMsg>>,
    receivers: Option<glommio::channels::channel_mesh::Receivers<ShardMsg>>,
) {
    CURRENT_SHARD.with(|c| c.set(Some(id)));
    crate::metrics::with(|m| m.set_sampling(server.config.metrics.latency_sample));
    let mesh = senders.map(|s| Box::new(s) as Box<dyn crate::mesh::Peers<ShardMsg>>);
    let mut shard = Shard::new(id, server.clone(), mesh, WIRING);
    if let Some(c) = &server.cluster {
        shard.set_cluster(Rc::new(crate::cluster::state::ShardCluster::new(c.clone())));
    }
    let shard = Rc::new(shard);
    // The first view before anything is routed.
    crate::cluster::routing::tick(&shard);
    // Mesh consumers: one task per peer, each handling messages synchronously.
    if let Some(mut receivers) = receivers {
        for (peer, rx) in receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                while let Some(mut msg) = rx.recv().await {
                    crate::metrics::with(|m| m.mesh_received(peer));
                    if let ShardMsg::Deliver { stanza, .. } | ShardMsg::ToComponent { stanza, .. } =
                        &mut msg
                    {
                        crate::metrics::stage(&mut stanza.trace, Stage::Mesh);
                    }
                    handle(&shard, msg);
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
    if let Err(e) = apply_plan(&shard, &plan) {
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
    if let Err(e) = crate::cluster::routing::listen(&shard) {
        log::error!("shard {id}: {e}");
        server.shutdown.store(true, Ordering::SeqCst);
        server.ready.fetch_add(1, Ordering::SeqCst);
        return;
    }
    for (addr, tls, kind) in &server.bound {
        match crate::net::listener::listen(*addr, server.config.limits.listen_backlog) {
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
                        if shard.closing() {
                            return;
                        }
                        log::warn!("shard {}: accept failed: {e}", shard.id());
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if shard.closing() {
                    return;
                }
                if kind == ListenerKind::C2s && shard.cluster().is_some_and(|c| !c.accepting()) {
                    // Out of the cluster, or just joined: the client tries again (or another host).
                    log::debug!(
                        "shard {}: not serving clients yet; a connection is closed",
                        shard.id()
                    );
                    drop(stream);
                    continue;
                }
                if shard.sinks().borrow().len() >= shard.config().limits.max_connections_per_shard {
                    // The cap: refuse before any state is allocated, with `resource-constraint` on a
                    // plain listener (RFC 6120 §4.9.3.17); a direct-TLS client just sees the close.
                    let peer = stream
                        .peer_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    log::warn!(
                        event = "refused", reason = "connection-cap",
                        listener = if kind == ListenerKind::C2s { "c2s" } else { "component" },
                        peer:% = peer;
                        "connection cap reached, refusing a connection"
                    );
                    crate::metrics::with(|m| m.refused_at_cap());
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
                        crate::c2s::accept(shard.clone(), stream, tls == TlsMode::Direct)
                    }
                    ListenerKind::Component => crate::component::accept(shard.clone(), stream),
                }
            }
        })
        .detach();
    }
    let metrics_listener = (id == 0)
        .then(|| {
            server
                .metrics_listener
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        })
        .flatten();
    if let Some(l) = metrics_listener {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the descriptor comes from a listening socket this process owns, handed over whole.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(l.into_raw_fd()) };
        let s = shard.clone();
        let closing: Rc<dyn Fn() -> bool> = Rc::new(move || s.closing());
        glommio::spawn_local(crate::admin::http::serve(listener, shard.ctx(), closing)).detach();
    }
    let ctl_listener = (id == 0)
        .then(|| {
            server
                .ctl
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
                .and_then(|c| c.take_listener())
        })
        .flatten();
    if let Some(l) = ctl_listener {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the descriptor comes from a listening socket this process owns, handed over whole;
        // see admin::ctl::serve for why a Unix listener goes under glommio's TcpListener.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(l.into_raw_fd()) };
        let s = shard.clone();
        let closing: Rc<dyn Fn() -> bool> = Rc::new(move || s.closing());
        let shared = server.clone();
        let reload: crate::admin::commands::Reload = Rc::new(move || {
            let shared = shared.clone();
            Box::pin(async move { reload_and_wait(&shared).await })
        });
        glommio::spawn_local(crate::admin::ctl::serve(
            listener,
            shard.ctx(),
            reload,
            server.cluster.clone(),
            closing,
        ))
        .detach();
    }
    server.ready.fetch_add(1, Ordering::SeqCst);
    log::debug!("shard {id} ready");

    // The housekeeping loop: spill queues, state dumps, the shutdown flag.
    let mut dumped = 0;
    let mut spilled = false;
    let mut last_sweep = std::time::Instant::now();
    loop {
        // A millisecond while anything is spilled, otherwise a relaxed tick: an idle shard should cost
        // nothing measurable.
        glommio::timer::sleep(Duration::from_millis(if spilled { 1 } else { 20 })).await;
        spilled = shard.flush_outbox();
        crate::cluster::routing::tick(&shard);
        if last_sweep.elapsed() >= IDLE_SWEEP {
            // Idle connections give their buffers back (the memory of an idle session).
            last_sweep = std::time::Instant::now();
            for c in shard.sinks().borrow().all() {
                c.trim();
            }
        }
        let reload = {
            let slot = server.module_plan.lock().unwrap_or_else(|p| p.into_inner());
            (slot.0 != plan_generation).then(|| (slot.0, slot.1.clone()))
        };
        if let Some((generation, plan)) = reload {
            plan_generation = generation;
            let result = apply_plan(&shard, &plan);
            match &result {
                Ok(()) => log::info!("shard {id}: modules reloaded"),
                Err(e) => log::error!("shard {id}: module reload: {e}"),
            }
            if let Some(slot) = server
                .plan_applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(id)
            {
                *slot = (generation, result.err());
            }
        }
        crate::logging::report_suppressed(std::time::Instant::now(), false);
        let generation = server.dump_generation.load(Ordering::SeqCst);
        if generation != dumped {
            dumped = generation;
            shard.dump();
        }
        if server.shutdown.load(Ordering::SeqCst) {
            break;
        }
    }
    shard.set_closing();
    let conns = shard.sinks().borrow().all();
    for c in &conns {
        c.kill(crate::proto::errors::StreamErrorCondition::SystemShutdown);
    }
    // Give connections a moment to write their `system-shutdown` errors.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !shard.sinks().borrow().is_empty() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    drop(listeners);
    crate::logging::report_suppressed(std::time::Instant::now(), true);
    log::debug!("shard {id} stopped");
}

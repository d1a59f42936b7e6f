//! The module context: the whole surface a module sees of the server (STYLE: modules reach the world
//! through `ModuleCtx` only). It routes stanzas, sends work to the shard that owns a piece of state,
//! reaches the store and the extauth program, reads the session manager's view of an account, reads the
//! clock, and keeps each module's own per-shard state. It is implemented by the shard ([`ShardServices`]),
//! so modules import nothing of the shard, the router or the connections, and a test can hand them a
//! context of its own.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::ModuleTable;
use crate::auth::ExtAuth;
use crate::config::Config;
use crate::proto::errors::{StanzaErrorCondition, StreamErrorCondition};
use crate::proto::xml::Stanza;
use crate::storage::StoreWorkers;

/// Modules' per-shard state by type ([`ModuleCtx::state`]). A `TypeId` is a hash already: hashing it
/// again (SipHash) cost more than the rest of the lookup on every watched stanza.
pub type StateMap = HashMap<TypeId, Rc<dyn Any>, std::hash::BuildHasherDefault<TypeIdHasher>>;

/// Passes a `TypeId`'s own bits through as its hash.
#[derive(Default)]
pub struct TypeIdHasher(u64);

impl std::hash::Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for a TypeId (it writes integers), but correct for anything.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64 ^ (n >> 64) as u64;
    }
}

/// Work sent to another shard ([`ModuleCtx::send_home`]): it runs there with that shard's context.
pub type ModuleJob = Box<dyn FnOnce(&ModuleCtx) + Send>;

/// One session of an account, as the session manager reports it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub full: Arc<str>,
    pub available: bool,
    pub priority: i8,
}

/// What a shard does for its modules.
pub trait ShardServices {
    fn shard_id(&self) -> usize;
    /// Whether this shard is the home of `key` (a bare JID, or any key placed like one).
    fn is_home(&self, key: &str) -> bool;
    fn route(self: Rc<Self>, stanza: Stanza, from: Arc<str>);
    fn route_multicast(self: Rc<Self>, stanza: Stanza, from: Arc<str>, recipients: &[Arc<str>]);
    fn resume_send(self: Rc<Self>, bare: &str, full: &str, stanza: Stanza);
    fn bounce(
        self: Rc<Self>,
        stanza: &Stanza,
        sender: &str,
        replier: &str,
        condition: StanzaErrorCondition,
    );
    fn send_home(self: Rc<Self>, key: &str, job: ModuleJob);
    /// How many shards this host runs.
    fn shards(&self) -> usize;
    /// Runs `job` on shard `shard` of this host (at once when that is this shard).
    fn send_to(self: Rc<Self>, shard: usize, job: ModuleJob);
    /// This shard's metrics now.
    fn snapshot(&self) -> crate::metrics::Snapshot;
    fn store(&self) -> &StoreWorkers;
    fn extauth(&self) -> Option<Arc<ExtAuth>>;
    fn config(&self) -> &Config;
    fn modules(&self) -> &RefCell<ModuleTable>;
    /// The sessions of `bare` (on its home shard; elsewhere none).
    fn sessions(&self, bare: &str) -> Vec<SessionInfo>;
    /// Writes `stanza` (with `from` stamped) to the session `full` of `bare`, past every hook; false
    /// when it is not (or no longer) there.
    fn write_to_session(&self, bare: &str, full: &str, stanza: &Stanza, from: &Arc<str>) -> bool;
    /// Writes `bytes` to the session `full` of `bare`; false when it is not (or no longer) there.
    fn send_to_session(&self, bare: &str, full: &str, bytes: &[u8]) -> bool;
    /// Ends the sessions of `bare` (only the one of `full`, when given) with `condition` and `text`;
    /// the full JIDs of those it ended.
    fn end_sessions(
        &self,
        bare: &str,
        full: Option<&str>,
        condition: StreamErrorCondition,
        text: Option<&str>,
    ) -> Vec<Arc<str>>;
    /// The full JID of every session whose account lives on this shard.
    fn bound_sessions(&self) -> Vec<Arc<str>>;
    /// Starts or stops `module` watching `bare`'s stanzas (the `watched_*` hooks); false when the
    /// account has no session here.
    fn watch(&self, bare: &str, module: &'static str, on: bool) -> bool;
    /// The full JID and last available presence of each available session of `bare`.
    fn available_presences(&self, bare: &str) -> Vec<(Arc<str>, Stanza)>;
    /// Writes `stanza` (with `from` stamped) to every available session of `bare`; how many.
    fn deliver_to_available(&self, bare: &str, stanza: &Stanza, from: &Arc<str>) -> usize;
    /// The components connected under `host` (disco#items).
    fn components_under(&self, host: &str) -> Vec<String>;
    fn state_map(&self) -> &RefCell<StateMap>;
    /// When the server started.
    fn started(&self) -> Instant;
    /// The host of the cluster that is the home of `key`, when it is another one than this.
    fn home_host(&self, _key: &str) -> Option<String> {
        None
    }
    /// The other hosts of the cluster that serve now (none without a cluster).
    fn other_hosts(&self) -> Vec<String> {
        Vec::new()
    }
    /// Asks host `node` of the cluster to run `verb` with `body` (docs/cluster-protocol.md §10).
    fn ask_host(
        self: Rc<Self>,
        node: &str,
        _verb: &str,
        _body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bytes::Bytes, String>>>> {
        let why = format!("{node}: this host is not in a cluster");
        Box::pin(async move { Err(why) })
    }
}

/// A module's handle on its shard. Cheap to clone.
#[derive(Clone)]
pub struct ModuleCtx {
    shard: Rc<dyn ShardServices>,
}

impl ModuleCtx {
    pub fn new(shard: Rc<dyn ShardServices>) -> ModuleCtx {
        ModuleCtx { shard }
    }

    pub fn shard_id(&self) -> usize {
        self.shard.shard_id()
    }

    pub fn is_home(&self, key: &str) -> bool {
        self.shard.is_home(key)
    }

    /// Routes a stanza the module generated; `from` is stamped on delivery. A full mesh makes it wait
    /// rather than lose it.
    pub fn route(&self, stanza: Stanza, from: Arc<str>) {
        self.shard.clone().route(stanza, from)
    }

    /// Routes one stanza (without `to`) to each of `recipients`, as if each had its own copy with `to`
    /// set, but serialised and sent across the mesh once per destination shard (ejabberd's
    /// route_multicast): presence broadcasts and probes.
    pub fn route_multicast(&self, stanza: Stanza, from: Arc<str>, recipients: &[Arc<str>]) {
        self.shard.clone().route_multicast(stanza, from, recipients)
    }

    /// Lets go a stanza the session `full` of the watched account `bare` sent, which this module's
    /// `watched_send_packet` handler held back (stopped) until it could decide: it is routed as that
    /// session's own, past the send hooks. Nothing happens when the session is gone.
    pub fn resume_send(&self, bare: &str, full: &str, stanza: Stanza) {
        self.shard.clone().resume_send(bare, full, stanza)
    }

    /// Answers `stanza` from `sender` with an error from `replier` (never an error with an error).
    pub fn bounce(
        &self,
        stanza: &Stanza,
        sender: &str,
        replier: &str,
        condition: StanzaErrorCondition,
    ) {
        self.shard
            .clone()
            .bounce(stanza, sender, replier, condition)
    }

    /// Runs `job` on the home shard of `key` (at once when that is this shard).
    pub fn send_home(&self, key: &str, job: impl FnOnce(&ModuleCtx) + Send + 'static) {
        self.shard.clone().send_home(key, Box::new(job))
    }

    pub fn shards(&self) -> usize {
        self.shard.shards()
    }

    /// Runs `job` on shard `shard` of this host, at once when that is this shard (operators' requests
    /// that visit every shard).
    /// The host of the cluster that is the home of `key`, when it is another one than this.
    pub fn home_host(&self, key: &str) -> Option<String> {
        self.shard.home_host(key)
    }

    /// The other hosts of the cluster that serve now (none without a cluster).
    pub fn other_hosts(&self) -> Vec<String> {
        self.shard.other_hosts()
    }

    /// Asks host `node` of the cluster to run `verb` with `body` (an operator's request about an
    /// account homed there); its answer, or why there is none.
    pub async fn ask_host(
        &self,
        node: &str,
        verb: &str,
        body: bytes::Bytes,
    ) -> Result<bytes::Bytes, String> {
        self.shard.clone().ask_host(node, verb, body).await
    }

    pub fn send_to(&self, shard: usize, job: impl FnOnce(&ModuleCtx) + Send + 'static) {
        self.shard.clone().send_to(shard, Box::new(job))
    }

    /// This shard's metrics now.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        self.shard.snapshot()
    }

    pub fn store(&self) -> &StoreWorkers {
        self.shard.store()
    }

    pub fn extauth(&self) -> Option<Arc<ExtAuth>> {
        self.shard.extauth()
    }

    pub fn config(&self) -> &Config {
        self.shard.config()
    }

    pub fn modules(&self) -> &RefCell<ModuleTable> {
        self.shard.modules()
    }

    pub fn sessions(&self, bare: &str) -> Vec<SessionInfo> {
        self.shard.sessions(bare)
    }

    /// Writes `stanza` to one session of `bare` (on its home shard) as it is, past every hook: what a
    /// module decided to send there itself (carbon copies, stanzas held back and released).
    pub fn write_to_session(
        &self,
        bare: &str,
        full: &str,
        stanza: &Stanza,
        from: &Arc<str>,
    ) -> bool {
        self.shard.write_to_session(bare, full, stanza, from)
    }

    pub fn send_to_session(&self, bare: &str, full: &str, bytes: &[u8]) -> bool {
        self.shard.send_to_session(bare, full, bytes)
    }

    /// Starts (`on`) or stops `module` watching the stanzas `bare` sends and receives: while any module
    /// watches an account, they pass the `watched_send_packet`, `watched_receive_packet` and
    /// `watched_deliver_packet` hooks. A watch lasts while the account has sessions on its home shard
    /// (where this must run); false when it has none.
    pub fn watch(&self, bare: &str, module: &'static str, on: bool) -> bool {
        self.shard.watch(bare, module, on)
    }

    /// Ends every session of `bare` (on its home shard) with `condition`.
    pub fn kill_sessions(&self, bare: &str, condition: StreamErrorCondition) {
        self.shard.end_sessions(bare, None, condition, None);
    }

    /// Ends the sessions of `bare` (on its home shard), or only `full`, with a stream error that
    /// carries `text` (an operator's kick); the full JIDs of the sessions ended.
    pub fn end_sessions(
        &self,
        bare: &str,
        full: Option<&str>,
        condition: StreamErrorCondition,
        text: Option<&str>,
    ) -> Vec<Arc<str>> {
        self.shard.end_sessions(bare, full, condition, text)
    }

    /// The full JID of every session whose account lives on this shard (operators' listings).
    pub fn bound_sessions(&self) -> Vec<Arc<str>> {
        self.shard.bound_sessions()
    }

    pub fn available_presences(&self, bare: &str) -> Vec<(Arc<str>, Stanza)> {
        self.shard.available_presences(bare)
    }

    pub fn deliver_to_available(&self, bare: &str, stanza: &Stanza, from: &Arc<str>) -> usize {
        self.shard.deliver_to_available(bare, stanza, from)
    }

    pub fn components_under(&self, host: &str) -> Vec<String> {
        self.shard.components_under(host)
    }

    /// The wall clock (XEP-0082 stamps, last activity).
    pub fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    pub fn started(&self) -> Instant {
        self.shard.started()
    }

    /// This shard's instance of a module's state of type `T`, created on first use. Each shard has its
    /// own: no locks, no `thread_local!`.
    pub fn state<T: Default + 'static>(&self) -> Rc<T> {
        let mut map = self.shard.state_map().borrow_mut();
        map.entry(TypeId::of::<T>())
            .or_insert_with(|| Rc::new(T::default()))
            .clone()
            .downcast::<T>()
            .expect("keyed by its type")
    }

    /// The options a running module was started with on `host`.
    pub fn module_opts(&self, host: &str, module: &str) -> Option<super::ModuleOpts> {
        self.modules().borrow().opts(host, module)
    }
}

/// A context without a server, for testing modules and the framework: it records what a module routes
/// and keeps a session list that the test sets.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) struct TestShard {
        pub modules: RefCell<ModuleTable>,
        pub routed: RefCell<Vec<(Stanza, Arc<str>)>>,
        /// What `write_to_session` wrote: the session, the stanza, its `from`.
        pub written: RefCell<Vec<(String, Stanza, Arc<str>)>>,
        pub sessions: RefCell<HashMap<String, Vec<SessionInfo>>>,
        config: Config,
        store: StoreWorkers,
        state: RefCell<StateMap>,
        started: Instant,
    }

    impl TestShard {
        pub(crate) fn new() -> Rc<TestShard> {
            Rc::new(TestShard {
                modules: RefCell::new(ModuleTable::default()),
                routed: RefCell::new(Vec::new()),
                written: RefCell::new(Vec::new()),
                sessions: RefCell::new(HashMap::new()),
                config: Config::default(),
                store: StoreWorkers::with_backends(Vec::new()).expect("no workers to start"),
                state: RefCell::new(StateMap::default()),
                started: Instant::now(),
            })
        }

        pub(crate) fn ctx(self: &Rc<Self>) -> ModuleCtx {
            ModuleCtx::new(self.clone())
        }
    }

    impl ShardServices for TestShard {
        fn shard_id(&self) -> usize {
            0
        }
        fn is_home(&self, _key: &str) -> bool {
            true
        }
        fn route(self: Rc<Self>, stanza: Stanza, from: Arc<str>) {
            self.routed.borrow_mut().push((stanza, from));
        }
        fn resume_send(self: Rc<Self>, _bare: &str, full: &str, stanza: Stanza) {
            self.routed.borrow_mut().push((stanza, full.into()));
        }
        // Recorded as the copies a recipient would see.
        fn route_multicast(
            self: Rc<Self>,
            stanza: Stanza,
            from: Arc<str>,
            recipients: &[Arc<str>],
        ) {
            for to in recipients {
                if let Some(copy) = stanza.rewritten(None, Some(to)) {
                    self.routed.borrow_mut().push((copy, from.clone()));
                }
            }
        }
        fn bounce(
            self: Rc<Self>,
            stanza: &Stanza,
            sender: &str,
            replier: &str,
            condition: StanzaErrorCondition,
        ) {
            let mut bytes = Vec::new();
            if crate::proto::errors::write_error_between(
                &mut bytes, stanza, replier, sender, condition,
            ) {
                let reply =
                    crate::proto::xml::parse_element(&bytes, &crate::proto::xml::Limits::default())
                        .expect("an error reply parses");
                self.routed.borrow_mut().push((reply, replier.into()));
            }
        }
        fn send_home(self: Rc<Self>, _key: &str, job: ModuleJob) {
            job(&ModuleCtx::new(self));
        }
        fn shards(&self) -> usize {
            1
        }
        fn send_to(self: Rc<Self>, _shard: usize, job: ModuleJob) {
            job(&ModuleCtx::new(self));
        }
        fn snapshot(&self) -> crate::metrics::Snapshot {
            crate::metrics::with(|m| m.snapshot(0))
        }
        fn store(&self) -> &StoreWorkers {
            &self.store
        }
        fn extauth(&self) -> Option<Arc<ExtAuth>> {
            None
        }
        fn config(&self) -> &Config {
            &self.config
        }
        fn modules(&self) -> &RefCell<ModuleTable> {
            &self.modules
        }
        fn sessions(&self, bare: &str) -> Vec<SessionInfo> {
            self.sessions
                .borrow()
                .get(bare)
                .cloned()
                .unwrap_or_default()
        }
        fn send_to_session(&self, _bare: &str, _full: &str, _bytes: &[u8]) -> bool {
            false
        }
        fn write_to_session(
            &self,
            bare: &str,
            full: &str,
            stanza: &Stanza,
            from: &Arc<str>,
        ) -> bool {
            let there = self.sessions(bare).iter().any(|s| &*s.full == full);
            if there {
                self.written
                    .borrow_mut()
                    .push((full.to_string(), stanza.clone(), from.clone()));
            }
            there
        }
        fn watch(&self, bare: &str, _module: &'static str, _on: bool) -> bool {
            self.sessions.borrow().contains_key(bare)
        }
        fn end_sessions(
            &self,
            bare: &str,
            full: Option<&str>,
            _condition: StreamErrorCondition,
            _text: Option<&str>,
        ) -> Vec<Arc<str>> {
            let mut table = self.sessions.borrow_mut();
            let Some(sessions) = table.get_mut(bare) else {
                return Vec::new();
            };
            let (ended, kept): (Vec<_>, Vec<_>) = sessions
                .drain(..)
                .partition(|s| full.is_none_or(|f| *s.full == *f));
            *sessions = kept;
            ended.into_iter().map(|s| s.full).collect()
        }
        fn bound_sessions(&self) -> Vec<Arc<str>> {
            self.sessions
                .borrow()
                .values()
                .flatten()
                .map(|s| s.full.clone())
                .collect()
        }
        fn available_presences(&self, _bare: &str) -> Vec<(Arc<str>, Stanza)> {
            Vec::new()
        }
        fn deliver_to_available(&self, bare: &str, stanza: &Stanza, from: &Arc<str>) -> usize {
            let n = self.sessions(bare).iter().filter(|s| s.available).count();
            if n > 0 {
                self.routed
                    .borrow_mut()
                    .push((stanza.clone(), from.clone()));
            }
            n
        }
        fn components_under(&self, _host: &str) -> Vec<String> {
            Vec::new()
        }
        fn state_map(&self) -> &RefCell<StateMap> {
            &self.state
        }
        fn started(&self) -> Instant {
            self.started
        }
    }
}

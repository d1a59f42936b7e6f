//! The server configuration: one typed `Config` loaded from a TOML file, or embedded defaults when no file
//! is given. Every value has its type, default and meaning in one place (the field docs below, mirrored in
//! `rjabberd.example.toml`), and a bad file stops the start with the file, line, column and a message: an
//! unknown key, a value of the wrong type, an address that does not parse, a duplicate host.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::proto::sasl::Mechanism;
use serde::Deserialize;
use toml::Spanned;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Virtual hosts served, each with its own users and certificate.
    #[serde(rename = "host")]
    pub hosts: Vec<HostConfig>,
    /// Sockets to accept connections on.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Shards (executor threads, one per core); 0 means one per available core.
    pub shards: usize,
    /// Where the embedded store and generated certificates live.
    pub data_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace`. Kept from before `[log]`; `[log] level` wins when both
    /// are given (see [`Config::log_level`]).
    pub log_level: LogLevel,
    /// `[log]`: level, line format, and the rate limits on lines about one peer.
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub metrics: MetricsConfig,
    /// `[modules]`: module name = true | false | { options }, for every host. Serde only reserves the
    /// key; the module framework reads it with its spans from [`Config::source`] (the configuration
    /// is the ground floor: it knows no module).
    #[serde(rename = "modules")]
    pub modules_table: Option<toml::Value>,
    /// External components (XEP-0114) the component listeners accept.
    #[serde(rename = "component")]
    pub components: Vec<ComponentConfig>,
    pub ctl: CtlConfig,
    /// `[storage]`: which backend holds accounts, rosters and module data (docs/storage.md).
    pub storage: StorageConfig,
    /// `[cluster]`: this host as a member of a cluster (docs/cluster-protocol.md §2); absent, a
    /// single host.
    pub cluster: Option<ClusterConfig>,
    /// The text the configuration was read from (empty for the embedded defaults), for the checks made
    /// above this layer (module options) to name their line and column.
    #[serde(skip)]
    pub source: String,
    /// The file it was read from.
    #[serde(skip)]
    pub file: PathBuf,
}

/// One external component (XEP-0114).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The domain the component serves, e.g. `gateway.example.org`.
    pub domain: Spanned<String>,
    /// The shared secret of the handshake.
    pub secret: String,
}

/// One virtual host.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The domain, e.g. `example.org`.
    pub name: Spanned<String>,
    /// PEM certificate chain; when absent a self-signed one is generated under `data_dir` at first start.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// PEM private key for `certificate`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// `[host.modules]`: per-host module entries, overriding the global `[modules]` ones of the same name.
    #[serde(default)]
    pub modules: Option<toml::Value>,
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind on every shard (SO_REUSEPORT).
    pub address: Spanned<String>,
    /// What the listener speaks.
    #[serde(default)]
    pub kind: ListenerKind,
    /// How TLS is negotiated.
    #[serde(default)]
    pub tls: TlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerKind {
    /// Client-to-server streams (RFC 6120, `jabber:client`).
    #[default]
    C2s,
    /// External components (XEP-0114, `jabber:component:accept`); plain TCP, bind it to loopback or a
    /// private network.
    Component,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP with STARTTLS offered (and required before SASL unless `auth.allow_plaintext`).
    #[default]
    Starttls,
    /// TLS from the first byte (XEP-0368), ALPN `xmpp-client`.
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

/// How log lines are written (one line per record on stderr) and how many lines about one peer may be.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Overrides the top-level `log_level` when given.
    pub level: Option<LogLevel>,
    /// `text` (for a person at a terminal), `kv` (logfmt: key=value) or `json` (one object per line).
    pub format: LogFormat,
    /// Lines per second that one source address (an IPv4 address, an IPv6 /64) may produce on one shard
    /// once its burst is spent: logins, logouts and refusals are lines a peer can cause at will.
    pub rate_per_source: Spanned<f64>,
    /// Lines one source may produce at once before `rate_per_source` applies.
    pub burst: Spanned<u32>,
    /// Sources one shard tracks at most (the limiter's memory); beyond that, lines from new sources
    /// count against `rate_per_shard` only.
    pub max_sources: Spanned<usize>,
    /// Lines about peers one shard writes per second at most, whatever their sources (a flood from many
    /// addresses).
    pub rate_per_shard: Spanned<u32>,
    /// Seconds between the `event=suppressed` lines that count what the limits held back.
    pub suppressed_report_secs: Spanned<u64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: None,
            format: LogFormat::Text,
            rate_per_source: Spanned::new(0..0, 5.0),
            burst: Spanned::new(0..0, 20),
            max_sources: Spanned::new(0..0, 4096),
            rate_per_shard: Spanned::new(0..0, 500),
            suppressed_report_secs: Spanned::new(0..0, 10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-01T15:50:34.123Z INFO [0] rjabberd::c2s: message key=value…`
    #[default]
    Text,
    /// `ts=… level=info shard=0 target=rjabberd::c2s key=value… msg="message"` (logfmt).
    Kv,
    /// `{"ts":"…","level":"info","shard":0,"target":"rjabberd::c2s",…,"msg":"message"}`.
    Json,
}

/// Bounds on what one peer can make the server hold or do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest stanza in bytes (ejabberd's c2s `max_stanza_size`).
    pub max_stanza_bytes: usize,
    /// Seconds a connection may take to authenticate before it is closed.
    pub auth_timeout_secs: u64,
    /// Connections one shard accepts at most; further ones are refused at accept.
    pub max_connections_per_shard: usize,
    /// Bytes queued for one connection before it is disconnected as too slow a reader.
    pub max_output_queue_bytes: usize,
    /// Sessions (resources) one account may hold at once.
    pub max_sessions_per_user: usize,
    /// Failed SASL attempts allowed on one stream before it is closed.
    pub max_sasl_failures: u32,
    /// The accept queue of each listener on each shard (`listen(2)` backlog; the kernel caps it at
    /// `net.core.somaxconn`). Too small a queue drops connection attempts in a login storm, and each
    /// dropped SYN costs its client a 1 s retransmission.
    pub listen_backlog: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_bytes: 262_144,
            auth_timeout_secs: 30,
            max_connections_per_shard: 100_000,
            max_output_queue_bytes: 1 << 20,
            max_sessions_per_user: 10,
            max_sasl_failures: 3,
            listen_backlog: 4096,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint and per-stage latency sampling.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `ip:port` serving `GET /metrics` (Prometheus text format); absent: no endpoint. The figures
    /// are not secret but not public either: bind it to loopback or a management network.
    pub listen: Option<Spanned<String>>,
    /// Per-stage latency follows one stanza in this many: 1 every stanza, N one in N, 0 off. Read by
    /// `rjabberd ctl latency` and the endpoint's histograms.
    pub latency_sample: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            latency_sample: 1,
        }
    }
}

/// `[ctl]`: the control socket `rjabberd ctl` talks to (local, mode 0600, root or the server's user).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CtlConfig {
    /// Whether the server opens the socket.
    pub enabled: bool,
    /// Where; absent: `rjabberd.ctl` in `data_dir`. A Unix socket path holds at most 107 bytes.
    pub socket: Option<PathBuf>,
}

impl Default for CtlConfig {
    fn default() -> Self {
        CtlConfig {
            enabled: true,
            socket: None,
        }
    }
}

/// `[storage]`: the embedded SQLite file under `data_dir` (the default), or a PostgreSQL database that
/// several hosts share.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite` or `postgres`.
    pub backend: StorageBackend,
    /// With `postgres`: the database, as a `postgres://user:password@host:port/dbname?sslmode=…` URL or
    /// libpq's `key=value` form (a `host` that starts with `/` is a Unix socket directory).
    pub url: Option<Spanned<String>>,
    /// Store worker threads, each owning one connection; absent: 2 for SQLite (one file, one writer
    /// at a time), 8 for PostgreSQL.
    pub pool_size: Option<Spanned<usize>>,
    /// With `postgres`: PEM file of the certificate authorities the database's certificate is checked
    /// against; given, the connection uses TLS as the URL's `sslmode` says (`prefer`, the default,
    /// tries TLS first; `require` insists). Without it, no TLS, and `sslmode=require` is refused.
    pub ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Sqlite,
    Postgres,
}

impl StorageConfig {
    /// Worker threads (and connections) the store runs with.
    pub fn pool_size(&self) -> usize {
        match (&self.pool_size, self.backend) {
            (Some(n), _) => *n.get_ref(),
            (None, StorageBackend::Sqlite) => 2,
            (None, StorageBackend::Postgres) => 8,
        }
    }

    fn check(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        if let Some(n) = &self.pool_size
            && *n.get_ref() == 0
        {
            return Err((
                Some(n.span()),
                "storage.pool_size must be at least 1".into(),
            ));
        }
        match (self.backend, &self.url) {
            (StorageBackend::Postgres, None) => Err((
                None,
                "storage.backend = \"postgres\" needs storage.url".into(),
            )),
            (StorageBackend::Postgres, Some(url)) => {
                // The driver's own parser, so that what passes here is what connects later.
                let parsed = url
                    .get_ref()
                    .parse::<postgres::Config>()
                    .map_err(|e| (Some(url.span()), format!("storage.url: {e}")))?;
                match &self.ca_file {
                    Some(ca) if !ca.get_ref().is_file() => Err((
                        Some(ca.span()),
                        format!("storage.ca_file: {} is not a file", ca.get_ref().display()),
                    )),
                    None if parsed.get_ssl_mode() == postgres::config::SslMode::Require => Err((
                        Some(url.span()),
                        "storage.url: sslmode=require needs storage.ca_file (the CA that signed \
                         the database's certificate)"
                            .into(),
                    )),
                    _ => Ok(()),
                }
            }
            (StorageBackend::Sqlite, _) if self.ca_file.is_some() => Err((
                self.ca_file.as_ref().map(|c| c.span()),
                "storage.ca_file is for backend = \"postgres\"".into(),
            )),
            (StorageBackend::Sqlite, Some(url)) => Err((
                Some(url.span()),
                "storage.url is for backend = \"postgres\"; SQLite lives in data_dir".into(),
            )),
            (StorageBackend::Sqlite, None) => Ok(()),
        }
    }
}

/// `[cluster]` (docs/cluster-protocol.md §2). Relative paths are relative to the configuration file's
/// directory, so that one file can be copied to every host with its secret beside it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name: hosts of another name never link.
    pub name: Spanned<String>,
    /// This host's name, unique in the cluster.
    pub node: Spanned<String>,
    /// Where the other hosts reach this one (`ip:port`).
    pub listen: Spanned<String>,
    /// The address the others use when `listen` is a wildcard (`host:port`).
    #[serde(default)]
    pub advertise: Option<Spanned<String>>,
    /// Hosts to ask first (`host:port`); may include this one.
    #[serde(default)]
    pub seeds: Vec<Spanned<String>>,
    /// The shared secret: the same file on every host, at least 32 bytes, readable by its owner only.
    pub secret_file: Spanned<PathBuf>,
    /// TLS on links (rustls), with `ca_file`, `cert_file` and `key_file`.
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub cert_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub key_file: Option<Spanned<PathBuf>>,
    /// How long a host stays a member without renewing its lease (ms, default 5,000).
    #[serde(default)]
    pub lease_ms: Option<Spanned<u64>>,
    /// Idle tick on every link (ms, default 1,000); a peer silent for four ticks is suspected.
    #[serde(default)]
    pub tick_ms: Option<Spanned<u64>>,
    /// Frames a link may hold unacknowledged or unsent (default 65,536).
    #[serde(default)]
    pub link_queue: Option<Spanned<usize>>,
}

/// The smallest cluster secret (docs/cluster-protocol.md §2).
pub const MIN_CLUSTER_SECRET: usize = 32;

impl ClusterConfig {
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms.as_ref().map_or(5_000, |v| *v.get_ref())
    }

    pub fn tick_ms(&self) -> u64 {
        self.tick_ms.as_ref().map_or(1_000, |v| *v.get_ref())
    }

    pub fn link_queue(&self) -> usize {
        self.link_queue.as_ref().map_or(65_536, |v| *v.get_ref())
    }

    /// `path` as this section means it: relative to the configuration file's directory.
    pub fn resolve(&self, path: &Path, config_file: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        config_file.parent().unwrap_or(Path::new(".")).join(path)
    }

    /// The shared secret's bytes (trimmed of ASCII whitespace), or why the file will not do.
    pub fn read_secret(&self, config_file: &Path) -> Result<Vec<u8>, String> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.resolve(self.secret_file.get_ref(), config_file);
        let meta = std::fs::metadata(&path)
            .map_err(|e| format!("cluster.secret_file {}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "cluster.secret_file {} may be read by others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("cluster.secret_file {}: {e}", path.display()))?;
        let secret = bytes.trim_ascii();
        if secret.len() < MIN_CLUSTER_SECRET {
            return Err(format!(
                "cluster.secret_file {} holds {} bytes; at least {MIN_CLUSTER_SECRET} are needed \
                 (e.g. `head -c 48 /dev/urandom | base64 > {}`)",
                path.display(),
                secret.len(),
                path.display()
            ));
        }
        Ok(secret.to_vec())
    }

    fn check(
        &self,
        config_file: &Path,
        storage: &StorageConfig,
        taken: &[SocketAddr],
    ) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        for (value, key) in [(&self.name, "cluster.name"), (&self.node, "cluster.node")] {
            let v = value.get_ref();
            if v.is_empty()
                || v.len() > 64
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err((
                    Some(value.span()),
                    format!("{key}: `{v}` is not 1 to 64 of A-Z a-z 0-9 . _ -"),
                ));
            }
        }
        let listen: SocketAddr = self.listen.get_ref().parse().map_err(|_| {
            (
                Some(self.listen.span()),
                format!(
                    "cluster.listen: `{}` is not an ip:port address",
                    self.listen.get_ref()
                ),
            )
        })?;
        if listen.port() != 0 && taken.contains(&listen) {
            return Err((
                Some(self.listen.span()),
                format!("cluster.listen: {listen} is already an XMPP or metrics listener"),
            ));
        }
        if listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err((
                Some(self.listen.span()),
                format!(
                    "cluster.listen is a wildcard ({listen}): say in cluster.advertise which \
                     address the other hosts use"
                ),
            ));
        }
        for addr in self.advertise.iter().chain(&self.seeds) {
            if !is_host_port(addr.get_ref()) {
                return Err((
                    Some(addr.span()),
                    format!("cluster: `{}` is not a host:port address", addr.get_ref()),
                ));
            }
        }
        if storage.backend != StorageBackend::Postgres {
            return Err((
                Some(self.name.span()),
                "a cluster needs [storage] backend = \"postgres\": every host must see the same \
                 accounts, and the membership table lives there"
                    .into(),
            ));
        }
        self.read_secret(config_file)
            .map_err(|e| (Some(self.secret_file.span()), e))?;
        let files = [
            (&self.ca_file, "cluster.ca_file"),
            (&self.cert_file, "cluster.cert_file"),
            (&self.key_file, "cluster.key_file"),
        ];
        for (file, key) in files {
            match file {
                Some(f) if !self.resolve(f.get_ref(), config_file).is_file() => {
                    return Err((
                        Some(f.span()),
                        format!("{key}: {} is not a file", f.get_ref().display()),
                    ));
                }
                None if self.tls => {
                    return Err((
                        None,
                        format!(
                            "cluster.tls = true needs {key} (the cluster's own CA and this host's certificate)"
                        ),
                    ));
                }
                _ => {}
            }
        }
        let tick = self.tick_ms();
        if !(100..=60_000).contains(&tick) {
            return Err((
                self.tick_ms.as_ref().map(|v| v.span()),
                "cluster.tick_ms must be between 100 and 60000".into(),
            ));
        }
        if self.lease_ms() < 1_000 || self.lease_ms() < 2 * tick {
            // Whichever of the two was written is the one to look at.
            let span = self
                .lease_ms
                .as_ref()
                .or(self.tick_ms.as_ref())
                .map(|v| v.span());
            return Err((
                span,
                "cluster.lease_ms must be at least 1000 and at least twice cluster.tick_ms".into(),
            ));
        }
        if self.link_queue() < 64 {
            return Err((
                self.link_queue.as_ref().map(|v| v.span()),
                "cluster.link_queue must be at least 64".into(),
            ));
        }
        Ok(())
    }
}

/// `host:port` with a port number and a non-empty host (a name, an IPv4 address or `[IPv6]`).
fn is_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok_and(|p| p != 0) && is_plausible_domain(host)
        }
        None => false,
    }
}

/// TLS session resumption (what a reconnect wave costs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Sessions the server remembers for resumption (TLS 1.3 tickets that name a cached session, TLS 1.2
    /// session ids); 0 turns stateful resumption off.
    pub session_cache_size: usize,
    /// Stateless TLS 1.3 tickets (the session encrypted under a key that rotates every 6 hours) instead
    /// of the cache: no server memory per session, and no limit on how many can resume.
    pub session_tickets: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            session_cache_size: 20_000,
            session_tickets: false,
        }
    }
}

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// PBKDF2 iterations for newly stored SCRAM credentials.
    pub scram_iterations: u32,
    /// Offer SASL on streams without TLS (for loopback benchmarks only).
    pub allow_plaintext: bool,
    /// `internal` (the embedded store) or `external` (an ejabberd extauth program; only PLAIN is then
    /// offered, since the program needs the password).
    pub method: AuthMethod,
    /// The extauth program (with `method = "external"`), run without a shell.
    pub extauth_program: Option<Spanned<PathBuf>>,
    /// How many instances of the program run, each serving one request at a time.
    pub extauth_pool_size: usize,
    /// Seconds one request may take before it fails and that instance is restarted.
    pub extauth_timeout_secs: u64,
    /// The SASL mechanisms offered, in order of preference (the order of `<mechanisms/>`). Streams
    /// without channel-binding data leave out the -PLUS ones, and external authentication all but
    /// PLAIN. A server migrated from one that kept SCRAM keys of one hash offers that hash's SCRAM and
    /// PLAIN here until PLAIN logins have upgraded the keys (docs/storage.md).
    pub mechanisms: Spanned<Vec<Spanned<String>>>,
}

impl AuthConfig {
    /// The configured mechanisms, which [`Config::check`] has found all known.
    pub fn mechanisms(&self) -> Vec<Mechanism> {
        self.mechanisms
            .get_ref()
            .iter()
            .filter_map(|m| Mechanism::from_name(m.get_ref()))
            .collect()
    }

    fn check(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        let list = self.mechanisms.get_ref();
        let mut seen = Vec::new();
        for name in list {
            let Some(m) = Mechanism::from_name(name.get_ref()) else {
                let known: Vec<&str> = Mechanism::ALL.iter().map(|m| m.name()).collect();
                return Err((
                    Some(name.span()),
                    format!(
                        "auth.mechanisms: `{}` is not a mechanism rjabberd offers ({})",
                        name.get_ref(),
                        known.join(", ")
                    ),
                ));
            };
            if seen.contains(&m) {
                return Err((
                    Some(name.span()),
                    format!("auth.mechanisms: `{}` is listed twice", m.name()),
                ));
            }
            seen.push(m);
        }
        if seen.is_empty() {
            return Err((
                Some(self.mechanisms.span()),
                "auth.mechanisms is empty: no client could log in".into(),
            ));
        }
        // -PLUS alone would leave streams without channel binding nothing to offer: a mistake, not
        // a way to close the server.
        if seen.iter().all(|m| m.is_plus()) {
            return Err((
                Some(self.mechanisms.span()),
                "auth.mechanisms needs a mechanism other than the -PLUS ones, which are offered only \
                 with TLS channel binding"
                    .into(),
            ));
        }
        if self.method == AuthMethod::External && !seen.contains(&Mechanism::Plain) {
            return Err((
                Some(self.mechanisms.span()),
                "auth.method = \"external\" offers only PLAIN, which auth.mechanisms does not list"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    #[default]
    Internal,
    External,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            scram_iterations: 4096,
            allow_plaintext: false,
            method: AuthMethod::Internal,
            extauth_program: None,
            extauth_pool_size: 2,
            extauth_timeout_secs: 10,
            mechanisms: Spanned::new(
                0..0,
                Mechanism::ALL
                    .iter()
                    .map(|m| Spanned::new(0..0, m.name().to_string()))
                    .collect(),
            ),
        }
    }
}

impl Default for Config {
    /// The embedded defaults: `localhost`, STARTTLS on 127.0.0.1:5222, direct TLS on 127.0.0.1:5223,
    /// `./data`, one shard per core.
    fn default() -> Self {
        let listener = |address: &str, tls| ListenerConfig {
            address: Spanned::new(0..0, address.to_string()),
            kind: ListenerKind::C2s,
            tls,
        };
        Config {
            hosts: vec![HostConfig {
                name: Spanned::new(0..0, "localhost".to_string()),
                certificate: None,
                key: None,
                modules: None,
            }],
            listeners: vec![
                listener("127.0.0.1:5222", TlsMode::Starttls),
                listener("127.0.0.1:5223", TlsMode::Direct),
            ],
            shards: 0,
            data_dir: PathBuf::from("./data"),
            log_level: LogLevel::Info,
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            metrics: MetricsConfig::default(),
            modules_table: None,
            components: Vec::new(),
            ctl: CtlConfig::default(),
            storage: StorageConfig::default(),
            cluster: None,
            source: String::new(),
            file: PathBuf::new(),
        }
    }
}

/// A configuration that cannot be used, with where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single place (e.g. the file cannot be read).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks configuration text; `file` is only used to name the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = span.map_or((0, 0), |s| line_col(text, s.start));
            ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let mut config: Config =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_string()))?;
        // Before the checks: `[cluster]` paths are relative to the file.
        config.file = file.to_path_buf();
        config
            .check()
            .map_err(|(span, message)| at(span, message))?;
        config.source = text.to_string();
        Ok(config)
    }

    /// An error about the configuration's text at `span` (as a layer above found it).
    pub fn error_at(&self, span: Option<std::ops::Range<usize>>, message: String) -> ConfigError {
        let (line, column) = span.map_or((0, 0), |s| line_col(&self.source, s.start));
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            message,
        }
    }

    /// Checks what the types alone cannot: addresses parse, names are unique, values are in range.
    fn check(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        if self.hosts.is_empty() {
            return Err((None, "at least one [[host]] is required".into()));
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let name = host.name.get_ref();
            if !is_plausible_domain(name) {
                return Err((
                    Some(host.name.span()),
                    format!("`{name}` is not a domain name"),
                ));
            }
            if self.hosts[..i]
                .iter()
                .any(|h| h.name.get_ref().eq_ignore_ascii_case(name))
            {
                return Err((
                    Some(host.name.span()),
                    format!("host `{name}` is configured twice"),
                ));
            }
            if host.certificate.is_some() != host.key.is_some() {
                return Err((
                    Some(host.name.span()),
                    format!("host `{name}`: `certificate` and `key` go together"),
                ));
            }
        }
        if self.listeners.is_empty() {
            return Err((None, "at least one [[listener]] is required".into()));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let addr: SocketAddr = l.address.get_ref().parse().map_err(|_| {
                (
                    Some(l.address.span()),
                    format!("`{}` is not an ip:port address", l.address.get_ref()),
                )
            })?;
            // Port 0 asks the system for a free port, so two listeners may both say it.
            if addr.port() != 0
                && self.listeners[..i]
                    .iter()
                    .any(|o| o.address.get_ref().parse::<SocketAddr>().ok() == Some(addr))
            {
                return Err((
                    Some(l.address.span()),
                    format!("address {addr} is used twice"),
                ));
            }
        }
        if let Some(listen) = &self.metrics.listen {
            let addr: SocketAddr = listen.get_ref().parse().map_err(|_| {
                (
                    Some(listen.span()),
                    format!(
                        "metrics.listen: `{}` is not an ip:port address",
                        listen.get_ref()
                    ),
                )
            })?;
            if addr.port() != 0
                && self
                    .listeners
                    .iter()
                    .any(|l| l.address.get_ref().parse::<SocketAddr>().ok() == Some(addr))
            {
                return Err((
                    Some(listen.span()),
                    format!("metrics.listen: {addr} is already an XMPP listener"),
                ));
            }
        }
        let limits = &self.limits;
        if limits.max_stanza_bytes < 1024 {
            return Err((None, "limits.max_stanza_bytes must be at least 1024".into()));
        }
        if limits.max_sessions_per_user == 0 || limits.max_connections_per_shard == 0 {
            return Err((
                None,
                "limits: session and connection caps must be at least 1".into(),
            ));
        }
        for (i, c) in self.components.iter().enumerate() {
            let d = c.domain.get_ref();
            if !is_plausible_domain(d) {
                return Err((Some(c.domain.span()), format!("`{d}` is not a domain name")));
            }
            if self
                .hosts
                .iter()
                .any(|h| h.name.get_ref().eq_ignore_ascii_case(d))
                || self.components[..i]
                    .iter()
                    .any(|o| o.domain.get_ref().eq_ignore_ascii_case(d))
            {
                return Err((
                    Some(c.domain.span()),
                    format!("`{d}` is already a host or a component"),
                ));
            }
            if c.secret.is_empty() {
                return Err((
                    Some(c.domain.span()),
                    format!("component `{d}` needs a non-empty secret"),
                ));
            }
        }
        if self.auth.method == AuthMethod::External {
            match &self.auth.extauth_program {
                None => {
                    return Err((
                        None,
                        "auth.method = \"external\" needs auth.extauth_program".into(),
                    ));
                }
                Some(p) if !p.get_ref().is_file() => {
                    return Err((
                        Some(p.span()),
                        format!("{} is not a file", p.get_ref().display()),
                    ));
                }
                Some(_) => {}
            }
            if self.auth.extauth_pool_size == 0 || self.auth.extauth_timeout_secs == 0 {
                return Err((
                    None,
                    "auth.extauth_pool_size and auth.extauth_timeout_secs must be at least 1"
                        .into(),
                ));
            }
        }
        let log = &self.log;
        let rate = *log.rate_per_source.get_ref();
        if !(rate.is_finite() && rate > 0.0) {
            return Err((
                Some(log.rate_per_source.span()),
                "log.rate_per_source must be a number of lines per second above 0".into(),
            ));
        }
        for (value, name) in [
            (&log.burst, "log.burst"),
            (&log.rate_per_shard, "log.rate_per_shard"),
        ] {
            if *value.get_ref() == 0 {
                return Err((Some(value.span()), format!("{name} must be at least 1")));
            }
        }
        if *log.max_sources.get_ref() == 0 {
            return Err((
                Some(log.max_sources.span()),
                "log.max_sources must be at least 1".into(),
            ));
        }
        if *log.suppressed_report_secs.get_ref() == 0 {
            return Err((
                Some(log.suppressed_report_secs.span()),
                "log.suppressed_report_secs must be at least 1".into(),
            ));
        }
        self.storage.check()?;
        if let Some(cluster) = &self.cluster {
            let mut taken: Vec<SocketAddr> = self
                .listeners
                .iter()
                .filter_map(|l| l.address.get_ref().parse().ok())
                .collect();
            taken.extend(
                self.metrics
                    .listen
                    .as_ref()
                    .and_then(|m| m.get_ref().parse::<SocketAddr>().ok()),
            );
            cluster.check(&self.file, &self.storage, &taken)?;
        }
        self.auth.check()?;
        if self.auth.scram_iterations < 4096 {
            return Err((
                None,
                "auth.scram_iterations must be at least 4096 (RFC 7677 §4)".into(),
            ));
        }
        Ok(())
    }

    /// The log level in force: `[log] level`, else the top-level `log_level`.
    pub fn log_level(&self) -> LogLevel {
        self.log.level.unwrap_or(self.log_level)
    }

    /// The virtual hosts, lowercased, in configuration order.
    pub fn host_names(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| h.name.get_ref().to_ascii_lowercase())
            .collect()
    }

    /// The shard count to start: the configured one, or one per available core.
    pub fn shard_count(&self, available_cores: usize) -> usize {
        if self.shards == 0 {
            available_cores.max(1)
        } else {
            self.shards
        }
    }
}

/// A cheap shape check; full RFC 7622 preparation of domains is the JID module's job.
fn is_plausible_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 1023
        && !name.starts_with('.')
        && !name.contains("..")
        && !name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '@' | '/' | '\'' | '"' | '<' | '>' | '&'))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../rjabberd.example.toml");
        let config = parse(text).unwrap();
        assert!(!config.hosts.is_empty());
    }

    #[test]
    fn defaults_check() {
        assert_eq!(Config::default().check(), Ok(()));
        assert_eq!(parse("").unwrap().shards, 0);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = parse("shards = 2\n\n[limits]\nmax_stanza_byte = 10\n").unwrap_err();
        assert_eq!((err.line, err.file.to_str()), (4, Some("test.toml")));
        assert!(err.message.contains("max_stanza_byte"), "{err}");
        assert!(err.to_string().starts_with("test.toml:4:"), "{err}");
    }

    #[test]
    fn bad_values_are_named_with_their_line() {
        let err =
            parse("[[host]]\nname = \"a.example\"\n[[listener]]\naddress = \"localhost:5222\"\n")
                .unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.message.contains("ip:port"));
        let err =
            parse("[[host]]\nname = \"a.example\"\n[[host]]\nname = \"A.example\"\n").unwrap_err();
        assert_eq!(err.line, 4);
        let err = parse("shards = \"two\"\n").unwrap_err();
        assert_eq!(err.line, 1);
        let err =
            parse("[[listener]]\naddress = \"127.0.0.1:1\"\ntls = \"sometimes\"\n").unwrap_err();
        assert_eq!(err.line, 3);
        let err = parse("[auth]\nscram_iterations = 10\n").unwrap_err();
        assert!(err.message.contains("4096"));
    }

    #[test]
    fn auth_mechanisms() {
        assert_eq!(
            parse("").unwrap().auth.mechanisms(),
            Mechanism::ALL,
            "today's list by default"
        );
        let c = parse("[auth]\nmechanisms = [\"SCRAM-SHA-1-PLUS\", \"SCRAM-SHA-1\", \"PLAIN\"]\n")
            .unwrap();
        assert_eq!(
            c.auth.mechanisms(),
            [
                Mechanism::ScramSha1Plus,
                Mechanism::ScramSha1,
                Mechanism::Plain
            ]
        );
        let c = parse("[auth]\nmechanisms = [\"PLAIN\", \"SCRAM-SHA-256\"]\n").unwrap();
        assert_eq!(
            c.auth.mechanisms(),
            [Mechanism::Plain, Mechanism::ScramSha256],
            "the order is the operator's"
        );
        for (text, line, needle) in [
            (
                "[auth]\nmechanisms = [\n  \"PLAIN\",\n  \"DIGEST-MD5\",\n]\n",
                4,
                "`DIGEST-MD5` is not a mechanism",
            ),
            (
                "[auth]\nmechanisms = [\"scram-sha-1\"]\n",
                2,
                "`scram-sha-1` is not",
            ),
            ("[auth]\n\nmechanisms = []\n", 3, "auth.mechanisms is empty"),
            (
                "[auth]\nmechanisms = [\"SCRAM-SHA-256-PLUS\", \"SCRAM-SHA-1-PLUS\"]\n",
                2,
                "other than the -PLUS",
            ),
            (
                "[auth]\nmechanisms = [\"PLAIN\", \"SCRAM-SHA-1\",\n\"PLAIN\"]\n",
                3,
                "`PLAIN` is listed twice",
            ),
            ("[auth]\nmechanisms = \"PLAIN\"\n", 2, "sequence"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text}: {err}");
            assert!(err.message.contains(needle), "{text}: {err}");
        }
        // External authentication offers PLAIN alone, so it must be on the list.
        let program = std::env::current_exe().unwrap();
        let external = format!(
            "[auth]\nmethod = \"external\"\nextauth_program = \"{}\"\n",
            program.display()
        );
        assert!(parse(&external).is_ok());
        let err = parse(&format!("{external}mechanisms = [\"SCRAM-SHA-1\"]\n")).unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.message.contains("only PLAIN"), "{err}");
    }

    #[test]
    fn the_metrics_section_is_checked() {
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9560\"\nlatency_sample = 100\n").unwrap();
        assert_eq!(c.metrics.latency_sample, 100);
        assert_eq!(
            c.metrics.listen.as_ref().map(|l| l.get_ref().as_str()),
            Some("127.0.0.1:9560")
        );
        assert_eq!(parse("").unwrap().metrics.listen, None);
        let err = parse("\n[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("metrics.listen"), "{err}");
        let err = parse("[metrics]\nlatency_sample = -1\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse("[metrics]\nlisten = \"127.0.0.1:5222\"\n").unwrap_err();
        assert!(err.message.contains("already"), "{err}");
    }

    #[test]
    fn the_storage_section_is_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Sqlite);
        assert_eq!(c.storage.pool_size(), 2);
        let c = parse(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://rjabberd:secret@127.0.0.1:5432/rjabberd\"\n",
        )
        .unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Postgres);
        assert_eq!(c.storage.pool_size(), 8);
        let c =
            parse("[storage]\nbackend = \"postgres\"\nurl = \"host=/tmp user=x\"\npool_size = 3\n")
                .unwrap();
        assert_eq!(c.storage.pool_size(), 3);
        for (text, line, needle) in [
            ("[storage]\nbackend = \"postgres\"\n", 0, "storage.url"),
            ("[storage]\nbackend = \"mysql\"\n", 2, "mysql"),
            (
                "[storage]\nbackend = \"postgres\"\n\nurl = \"postgres://h:notaport/db\"\n",
                4,
                "storage.url",
            ),
            ("[storage]\nurl = \"postgres://h/db\"\n", 2, "storage.url"),
            ("[storage]\npool_size = 0\n", 2, "pool_size"),
            (
                "[storage]\nbackend = \"postgres\"\nurl = \"host=/tmp sslmode=require\"\n",
                3,
                "ca_file",
            ),
            (
                "[storage]\nbackend = \"postgres\"\nurl = \"host=/tmp\"\nca_file = \"/nonexistent.pem\"\n",
                4,
                "ca_file",
            ),
            ("[storage]\npath = \"x\"\n", 2, "path"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text}: {err}");
            assert!(err.message.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn the_log_section() {
        let config = parse("log_level = \"warn\"\n").unwrap();
        assert_eq!(
            config.log_level(),
            LogLevel::Warn,
            "the old key still works"
        );
        assert_eq!(config.log.format, LogFormat::Text);
        let config = parse(
            "log_level = \"warn\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\nrate_per_source = 0.5\nburst = 3\n",
        )
        .unwrap();
        assert_eq!(config.log_level(), LogLevel::Debug, "[log] level wins");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(*config.log.rate_per_source.get_ref(), 0.5);
        assert_eq!(*config.log.burst.get_ref(), 3);
        assert_eq!(
            *parse("[log]\nrate_per_source = 2\n")
                .unwrap()
                .log
                .rate_per_source
                .get_ref(),
            2.0
        );
        for (text, line, needle) in [
            ("[log]\nformat = \"xml\"\n", 2, "xml"),
            ("shards = 1\n[log]\nburst = 0\n", 3, "log.burst"),
            ("[log]\nrate_per_source = -1\n", 2, "log.rate_per_source"),
            ("[log]\n\nmax_sources = 0\n", 3, "log.max_sources"),
            ("[log]\nrate_per_shard = 0\n", 2, "log.rate_per_shard"),
            ("[log]\nlevel = \"loud\"\n", 2, "loud"),
            (
                "[log]\nsuppressed_report_secs = 0\n",
                2,
                "suppressed_report_secs",
            ),
            ("[log]\nrate = 3\n", 2, "rate"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text}: {err}");
            assert!(err.message.contains(needle), "{text}: {err}");
        }
    }

    /// A directory with a configuration whose `[cluster]` is `cluster` (after a Postgres `[storage]`),
    /// and a secret file of `secret` with `mode`; returns the configuration file's path.
    fn cluster_dir(name: &str, cluster: &str, secret: &[u8], mode: u32) -> (PathBuf, String) {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "rjabberd-cluster-config-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let secret_path = dir.join("cluster.secret");
        std::fs::write(&secret_path, secret).unwrap();
        std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(mode)).unwrap();
        let text = format!(
            "[[host]]\nname = \"localhost\"\n[[listener]]\naddress = \"127.0.0.1:5222\"\n\
             [storage]\nbackend = \"postgres\"\nurl = \"host=/tmp dbname=x\"\n[cluster]\n{cluster}"
        );
        (dir.join("rjabberd.toml"), text)
    }

    const CLUSTER: &str = "name = \"chat-prod\"\nnode = \"n1\"\nlisten = \"127.0.0.2:7470\"\n\
        seeds = [\"127.0.0.3:7470\", \"db2.example.net:7470\"]\nsecret_file = \"cluster.secret\"\n";
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef\n";

    #[test]
    fn a_cluster_section_as_the_issue_writes_it_parses_with_its_defaults() {
        let (file, text) = cluster_dir("ok", CLUSTER, SECRET, 0o600);
        let config = Config::parse(&text, &file).unwrap();
        let c = config.cluster.as_ref().unwrap();
        assert_eq!(
            (c.name.get_ref().as_str(), c.node.get_ref().as_str()),
            ("chat-prod", "n1")
        );
        assert_eq!(c.seeds.len(), 2);
        assert_eq!(
            (c.lease_ms(), c.tick_ms(), c.link_queue()),
            (5000, 1000, 65536)
        );
        // Relative to the file, trimmed.
        assert_eq!(c.read_secret(&file).unwrap(), SECRET.trim_ascii());
        assert!(parse("").unwrap().cluster.is_none());
    }

    #[test]
    fn each_bad_cluster_value_is_named_with_its_line() {
        // (what replaces a line of the good section, the line the error names (8 = [cluster]),
        //  words the message holds)
        let cases: [(&str, &str, usize, &str); 8] = [
            ("node = \"n1\"", "node = \"n 1\"", 10, "cluster.node"),
            (
                "listen = \"127.0.0.2:7470\"",
                "listen = \"n1:7470\"",
                11,
                "ip:port",
            ),
            (
                "listen = \"127.0.0.2:7470\"",
                "listen = \"0.0.0.0:7470\"",
                11,
                "cluster.advertise",
            ),
            (
                "listen = \"127.0.0.2:7470\"",
                "listen = \"127.0.0.1:5222\"",
                11,
                "already",
            ),
            (
                "\"db2.example.net:7470\"",
                "\"db2.example.net\"",
                12,
                "host:port",
            ),
            (
                "secret_file = \"cluster.secret\"",
                "secret_file = \"missing\"",
                13,
                "missing",
            ),
            (
                "secret_file = \"cluster.secret\"",
                "secret_file = \"cluster.secret\"\ntick_ms = 3000",
                14,
                "twice",
            ),
            (
                "secret_file = \"cluster.secret\"",
                "secret_file = \"cluster.secret\"\ntls = true",
                0,
                "cluster.ca_file",
            ),
        ];
        for (i, (from, to, line, words)) in cases.into_iter().enumerate() {
            let (file, text) = cluster_dir(
                &format!("bad{i}"),
                &CLUSTER.replace(from, to),
                SECRET,
                0o600,
            );
            let err = Config::parse(&text, &file).unwrap_err();
            assert_eq!(err.line, line, "{to}: {err}");
            assert!(err.message.contains(words), "{to}: {err}");
        }
    }

    #[test]
    fn a_weak_or_exposed_secret_and_a_cluster_on_sqlite_are_refused() {
        let (file, text) = cluster_dir("short", CLUSTER, b"too short\n", 0o600);
        let err = Config::parse(&text, &file).unwrap_err();
        assert!(err.message.contains("at least 32"), "{err}");
        assert_eq!(err.line, 13);
        let (file, text) = cluster_dir("exposed", CLUSTER, SECRET, 0o644);
        let err = Config::parse(&text, &file).unwrap_err();
        assert!(err.message.contains("chmod 600"), "{err}");
        let (file, text) = cluster_dir("sqlite", CLUSTER, SECRET, 0o600);
        let text = text.replace("backend = \"postgres\"\nurl = \"host=/tmp dbname=x\"\n", "");
        let err = Config::parse(&text, &file).unwrap_err();
        assert!(err.message.contains("postgres"), "{err}");
        let (file, text) = cluster_dir(
            "unknown",
            &format!("{CLUSTER}secret = \"x\"\n"),
            SECRET,
            0o600,
        );
        let err = Config::parse(&text, &file).unwrap_err();
        assert!(err.message.contains("secret"), "{err}");
    }
}

//! The black-box test kit: starts the real `rjabberd` binary on loopback with a fresh data directory and
//! ports chosen by the system, and a small blocking XMPP client (TCP, STARTTLS or direct TLS with rustls,
//! SASL PLAIN and SCRAM with channel binding, bind) that reads the server's stream with rjabberd's own
//! parser. Every test file runs its cases with 1 and with 2 shards.
#![allow(dead_code)]

pub mod cluster;
pub mod cluster_steps;
pub mod pg;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rjabberd::proto::sasl::Hash;
use rjabberd::proto::sasl::client::ScramClient;
use rjabberd::proto::xml::{Element, Event, Limits, StreamParser};

pub const SHARDS: [usize; 2] = [1, 2];

thread_local! {
    /// Set while a test runs through [`with_postgres`]: every server it starts stores in PostgreSQL.
    static ON_POSTGRES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Servers this thread started on PostgreSQL.
    static STARTED_ON_POSTGRES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `test` with every [`TestServer`] it starts on a database of its own in one throw-away
/// PostgreSQL per test binary ([`pg::PgInstance::shared`]), instead of the embedded SQLite: the same
/// black-box test, the other backend. A test binary without PostgreSQL panics here; the tests are
/// built as ignored then (see [`postgres_twins`]).
pub fn with_postgres(test: fn()) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ON_POSTGRES.with(|p| p.set(false));
        }
    }
    ON_POSTGRES.with(|p| p.set(true));
    let _reset = Reset;
    let before = STARTED_ON_POSTGRES.with(|n| n.get());
    test();
    assert!(
        STARTED_ON_POSTGRES.with(|n| n.get()) > before,
        "the test started no server, so it ran on no PostgreSQL"
    );
}

/// Databases created on the shared PostgreSQL of this test binary (for their names).
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The `[storage]` table of a server started now: a fresh database on the shared PostgreSQL under
/// [`with_postgres`], nothing otherwise.
fn postgres_storage() -> String {
    if !ON_POSTGRES.with(|p| p.get()) {
        return String::new();
    }
    let pg =
        pg::PgInstance::shared().expect("PostgreSQL installed (the test is ignored otherwise)");
    let url = pg.create_db(&format!("t{}", DATABASES.fetch_add(1, Ordering::SeqCst)));
    STARTED_ON_POSTGRES.with(|n| n.set(n.get() + 1));
    // Two connections a server: tests run several servers at once on one PostgreSQL.
    format!("[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 2\n")
}

/// Declares, in a module `on_postgres`, a twin of each named test that runs it again with the store
/// on PostgreSQL ([`with_postgres`]); built as ignored, with the reason, where PostgreSQL is not
/// installed (build.rs), so that a run without it says which tests it skipped.
#[macro_export]
macro_rules! postgres_twins {
    ($($test:ident),+ $(,)?) => {
        mod on_postgres {
            $(
                #[test]
                #[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
                fn $test() {
                    $crate::common::with_postgres(super::$test)
                }
            )+
        }
    };
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A new, empty directory for one server of this test binary.
fn fresh_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rjabberd-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct TestServer {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub starttls: SocketAddr,
    pub direct: SocketAddr,
    pub shards: usize,
    pub stdout: Arc<std::sync::Mutex<Vec<String>>>,
    /// The server's stderr (its log), line by line, when started with [`TestServer::start_capturing`];
    /// otherwise stderr goes to the test's own.
    pub stderr: Arc<std::sync::Mutex<Vec<String>>>,
    capture_stderr: bool,
    /// Every listener in configuration order (the two c2s ones first, then what `extra` adds).
    pub listeners: Vec<SocketAddr>,
    extra: String,
    /// The `[storage]` table when the test runs on PostgreSQL ([`with_postgres`]); empty for SQLite.
    storage: String,
    /// The whole configuration file, when the server was started with [`TestServer::start_config`]
    /// (then `extra` and `storage` are not used).
    config: Option<String>,
}

impl TestServer {
    /// Starts a server with `shards` shards for `localhost` and `example.net`; `extra` is appended to
    /// the configuration (e.g. `[limits]` overrides).
    pub fn start(shards: usize, extra: &str) -> TestServer {
        TestServer::start_with(shards, extra, false)
    }

    /// Like [`TestServer::start`], with the server's stderr (its log) kept in [`TestServer::stderr`].
    pub fn start_capturing(shards: usize, extra: &str) -> TestServer {
        TestServer::start_with(shards, extra, true)
    }

    fn start_with(shards: usize, extra: &str, capture_stderr: bool) -> TestServer {
        let mut s = TestServer::unlaunched(fresh_dir(), shards, capture_stderr);
        s.extra = extra.to_string();
        s.storage = postgres_storage();
        s.launch();
        s
    }

    /// Starts a server with a configuration of the caller's: `config` gets the server's fresh
    /// directory (for `data_dir` and files beside the configuration, such as a cluster secret) and
    /// returns the whole configuration file; its listeners must start with the two c2s ones
    /// (STARTTLS, then direct TLS) as [`TestServer::start`] has them. stderr is captured.
    pub fn start_config(
        shards: usize,
        config: impl FnOnce(&std::path::Path) -> String,
    ) -> TestServer {
        let dir = fresh_dir();
        let config = config(&dir);
        let mut s = TestServer::unlaunched(dir, shards, true);
        s.config = Some(config);
        s.launch();
        s
    }

    /// A server in `dir` not started yet, with the kit's configuration and no extra.
    fn unlaunched(dir: PathBuf, shards: usize, capture_stderr: bool) -> TestServer {
        TestServer {
            child: None,
            dir,
            starttls: "127.0.0.1:0".parse().unwrap(),
            direct: "127.0.0.1:0".parse().unwrap(),
            shards,
            stdout: Arc::default(),
            stderr: Arc::default(),
            capture_stderr,
            listeners: Vec::new(),
            extra: String::new(),
            storage: String::new(),
            config: None,
        }
    }

    /// The last `n` lines of the server's stdout and (when captured) stderr, for panic messages.
    pub fn tails(&self, n: usize) -> String {
        fn tail(lines: &[String], n: usize) -> String {
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        format!(
            "--- stdout (last {n} lines) ---\n{}\n--- stderr (last {n} lines) ---\n{}",
            tail(&self.stdout.lock().unwrap(), n),
            tail(&self.stderr.lock().unwrap(), n)
        )
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("rjabberd.toml")
    }

    /// Rewrites the configuration file with a new `extra` (for SIGHUP reload tests).
    pub fn set_extra(&mut self, extra: &str) {
        self.extra = extra.to_string();
        self.write_config();
    }

    fn write_config(&self) {
        if let Some(config) = &self.config {
            std::fs::write(self.config_path(), config).unwrap();
            return;
        }
        let config = format!(
            "shards = {}\ndata_dir = \"{}\"\nlog_level = \"warn\"\n\
             [[host]]\nname = \"localhost\"\n[[host]]\nname = \"example.net\"\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"direct\"\n{}\n{}",
            self.shards,
            self.dir.join("data").display(),
            self.extra,
            self.storage
        );
        std::fs::write(self.config_path(), config).unwrap();
    }

    /// Writes the configuration and starts the process; returns once it printed `rjabberd: serving`.
    pub fn launch(&mut self) {
        self.write_config();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rjabberd"))
            .arg("--config")
            .arg(self.config_path())
            .stdout(Stdio::piped())
            .stderr(if self.capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("rjabberd starts");
        if let Some(stderr) = child.stderr.take() {
            let lines = self.stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let lines = self.stdout.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut addrs = Vec::new();
        loop {
            let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(e) => {
                    let status = match child.try_wait() {
                        Ok(Some(status)) => format!("exited: {status}"),
                        _ => "still running".to_string(),
                    };
                    let _ = child.kill();
                    let _ = child.wait();
                    // Let the stderr reader catch up before quoting it.
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "the server did not report serving within 20 s ({e:?}; {status}; config {})\n{}",
                        self.config_path().display(),
                        self.tails(30)
                    );
                }
            };
            if let Some(rest) = line.strip_prefix("rjabberd: listening on ") {
                addrs.push(
                    rest.split(' ')
                        .next()
                        .unwrap()
                        .parse::<SocketAddr>()
                        .unwrap(),
                );
            }
            if line.starts_with("rjabberd: serving ") {
                break;
            }
        }
        self.starttls = addrs[0];
        self.direct = addrs[1];
        self.listeners = addrs;
        self.child = Some(child);
    }

    /// Where the metrics endpoint listens, as the server reported it at start.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix("rjabberd: metrics on http://"))
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .expect("the server reports its metrics endpoint")
            .parse()
            .unwrap()
    }

    /// Runs `rjabberd user …` against this server's store.
    pub fn user(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_rjabberd"))
            .arg("--config")
            .arg(self.config_path())
            .arg("user")
            .args(args)
            .output()
            .unwrap()
    }

    pub fn add_user(&self, jid: &str, password: &str) {
        let out = self.user(&["add", jid, "--password", password]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Puts `contact` on `owner`'s roster with `subscription` (`none`, `to`, `from`, `both`) through
    /// `rjabberd roster add`, as an operator would.
    pub fn roster_add(&self, owner: &str, contact: &str, subscription: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_rjabberd"))
            .arg("--config")
            .arg(self.config_path())
            .args([
                "roster",
                "add",
                owner,
                contact,
                "--subscription",
                subscription,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the server did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops and starts again on the same data directory (new ports).
    pub fn restart(&mut self) {
        self.terminate();
        self.launch();
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("data/certs/localhost.crt")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

/// Sends `signal` to the server process (no `kill` binary needed on the machine).
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid this test started; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => t.flush(),
        }
    }
}

/// What the client read: a stanza or nonza as an owned element, or the stream's end.
#[derive(Debug, Clone)]
pub enum Got {
    Header(Vec<(String, String)>),
    El(Element),
    Close,
    /// The connection ended (EOF or error) without a stream close.
    Eof,
}

pub struct Client {
    io: Transport,
    parser: StreamParser,
    pending: std::collections::VecDeque<Got>,
    pub jid: String,
    cert: PathBuf,
    pub features: Option<Element>,
}

pub fn header(to: &str) -> String {
    format!(
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>"
    )
}

thread_local! {
    /// TLS versions the next connections of this thread offer (all by default).
    pub static TLS_VERSIONS: std::cell::Cell<&'static [&'static rustls::SupportedProtocolVersion]> =
        const { std::cell::Cell::new(rustls::DEFAULT_VERSIONS) };
    /// The name sent in SNI and verified (the certificate's host).
    pub static SNI: std::cell::RefCell<String> = std::cell::RefCell::new("localhost".to_string());
}

fn tls_config(cert: &PathBuf, alpn: bool) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(TLS_VERSIONS.with(|v| v.get()))
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    if alpn {
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Arc::new(cfg)
}

impl Client {
    pub fn connect(addr: SocketAddr, cert: PathBuf) -> Client {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        Client {
            io: Transport::Plain(tcp),
            parser: StreamParser::new(Limits::default()),
            pending: Default::default(),
            jid: String::new(),
            cert,
            features: None,
        }
    }

    /// Direct TLS (XEP-0368) with ALPN `xmpp-client`.
    pub fn connect_direct(addr: SocketAddr, cert: PathBuf) -> Client {
        let mut c = Client::connect(addr, cert);
        c.start_tls(true);
        c
    }

    fn start_tls(&mut self, alpn: bool) {
        let placeholder = Transport::Plain(self.io.tcp().try_clone().unwrap());
        let Transport::Plain(tcp) = std::mem::replace(&mut self.io, placeholder) else {
            panic!("TLS twice")
        };
        let conn = rustls::ClientConnection::new(
            tls_config(&self.cert, alpn),
            SNI.with(|s| s.borrow().clone()).try_into().unwrap(),
        )
        .unwrap();
        self.io = Transport::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)));
        self.parser = StreamParser::new(Limits::default());
    }

    /// The client's address, as the server sees it (its `peer`).
    pub fn local_addr(&self) -> SocketAddr {
        self.io.tcp().local_addr().unwrap()
    }

    pub fn send(&mut self, s: &str) {
        self.io.write_all(s.as_bytes()).expect("write");
        self.io.flush().unwrap();
    }

    /// The negotiated TLS version, if TLS is on.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match &self.io {
            Transport::Tls(t) => t.conn.protocol_version(),
            Transport::Plain(_) => None,
        }
    }

    pub fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.io.write_all(b)?;
        self.io.flush()
    }

    /// The next thing the server sent, waiting up to `timeout`; `None` on timeout.
    pub fn next_within(&mut self, timeout: Duration) -> Option<Got> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(g) = self.pending.pop_front() {
                return Some(g);
            }
            loop {
                match self.parser.next_event() {
                    Ok(Some(Event::StreamOpen(h))) => self.pending.push_back(Got::Header(h.attrs)),
                    Ok(Some(Event::Stanza(s))) => self.pending.push_back(Got::El(s.to_element())),
                    Ok(Some(Event::StreamClose)) => self.pending.push_back(Got::Close),
                    Ok(Some(Event::Declaration(_))) => {}
                    Ok(None) => break,
                    Err(e) => panic!("the server sent bad XML: {e:?}"),
                }
            }
            if !self.pending.is_empty() {
                continue;
            }
            if Instant::now() > deadline {
                return None;
            }
            let mut buf = [0u8; 16384];
            match self.io.read(&mut buf) {
                Ok(0) => return Some(Got::Eof),
                Ok(n) => {
                    let mut rest = &buf[..n];
                    while !rest.is_empty() {
                        let k = self.parser.feed(rest);
                        rest = &rest[k..];
                        if k == 0 {
                            break;
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(Got::Eof),
            }
        }
    }

    pub fn next(&mut self) -> Got {
        self.next_within(Duration::from_secs(10))
            .expect("the server answers within 10 s")
    }

    /// Sends an IQ (`to` omitted when `None`) and returns the answer with the same id, keeping anything
    /// else that arrives meanwhile for later reads.
    pub fn iq(&mut self, to: Option<&str>, type_: &str, payload: &str) -> Element {
        static IQ_ID: AtomicUsize = AtomicUsize::new(0);
        let id = format!("iq{}", IQ_ID.fetch_add(1, Ordering::SeqCst));
        let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.send(&format!("<iq{to} type='{type_}' id='{id}'>{payload}</iq>"));
        self.answer(&id)
    }

    /// The IQ answer with `id`; other elements read meanwhile stay queued.
    pub fn answer(&mut self, id: &str) -> Element {
        let mut skipped = Vec::new();
        let found = loop {
            match self.next() {
                Got::El(e) if e.name == "iq" && e.attr("id") == Some(id) => break e,
                other => skipped.push(other),
            }
        };
        for s in skipped.into_iter().rev() {
            self.pending.push_front(s);
        }
        found
    }

    /// The next element, skipping nothing.
    pub fn el(&mut self) -> Element {
        match self.next() {
            Got::El(e) => e,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    /// Sends a header and reads the server's header and features.
    pub fn open(&mut self, to: &str) -> Element {
        self.send(&header(to));
        match self.next() {
            Got::Header(_) => {}
            other => panic!("expected a header, got {other:?}"),
        }
        let f = self.el();
        assert_eq!(f.name, "stream:features", "{f}");
        self.features = Some(f.clone());
        f
    }

    pub fn starttls(&mut self) {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        let p = self.el();
        assert_eq!(p.name, "proceed", "{p}");
        self.start_tls(false);
    }

    pub fn mechanisms(&self) -> Vec<String> {
        self.features
            .as_ref()
            .and_then(|f| f.child("mechanisms"))
            .map(|m| m.child_elements().map(|c| c.text()).collect())
            .unwrap_or_default()
    }

    fn binding(&self, name: &str) -> Vec<u8> {
        let Transport::Tls(t) = &self.io else {
            panic!("binding without TLS")
        };
        match name {
            "tls-exporter" => t
                .conn
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                .unwrap(),
            "tls-server-end-point" => {
                use sha2::Digest;
                sha2::Sha256::digest(t.conn.peer_certificates().unwrap()[0].as_ref()).to_vec()
            }
            _ => panic!("{name}"),
        }
    }

    /// Runs one SASL exchange; returns the server's final element (`success` or `failure`).
    pub fn sasl(
        &mut self,
        mechanism: &str,
        user: &str,
        password: &str,
        cb: Option<&str>,
    ) -> Element {
        if mechanism == "PLAIN" {
            let msg = B64.encode(format!("\0{user}\0{password}"));
            self.send(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{msg}</auth>"
            ));
            return self.el();
        }
        let hash = if mechanism.starts_with("SCRAM-SHA-256") {
            Hash::Sha256
        } else {
            Hash::Sha1
        };
        let data = cb.map(|name| (name, self.binding(name)));
        let mut scram = ScramClient::new(
            hash,
            user,
            password,
            "clientnonce123",
            data.as_ref().map(|(n, d)| (*n, d.as_slice())),
        );
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{}</auth>",
            B64.encode(scram.client_first())
        ));
        let challenge = self.el();
        if challenge.name != "challenge" {
            return challenge;
        }
        let last = scram
            .client_final(&B64.decode(challenge.text()).unwrap())
            .unwrap();
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(last)
        ));
        let result = self.el();
        if result.name == "success" {
            assert!(
                scram.verify_server(&B64.decode(result.text()).unwrap()),
                "server signature"
            );
        }
        result
    }

    /// Restarts the stream after SASL success.
    pub fn restart(&mut self, to: &str) -> Element {
        self.parser.reset();
        self.open(to)
    }

    pub fn bind(&mut self, resource: Option<&str>) -> Element {
        let r = resource.map_or(String::new(), |r| format!("<resource>{r}</resource>"));
        self.send(&format!("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{r}</bind></iq>"));
        let reply = self.el();
        if reply.attr("type") == Some("result") {
            self.jid = reply
                .path(&[
                    rjabberd::proto::xml::PathItem::Elem("bind"),
                    rjabberd::proto::xml::PathItem::Elem("jid"),
                    rjabberd::proto::xml::PathItem::Cdata,
                ])
                .as_str()
                .to_string();
        }
        reply
    }

    /// A fresh connection's STARTTLS and SASL with `mechanism` for `user` (local@host): the client
    /// and the server's last answer (`success` or `failure`).
    pub fn authenticate(
        server: &TestServer,
        user: &str,
        password: &str,
        mechanism: &str,
    ) -> (Client, Element) {
        let (local, host) = user.split_once('@').unwrap();
        let mut c = Client::connect(server.starttls, server.cert_path());
        c.open(host);
        c.starttls();
        c.open(host);
        let r = c.sasl(mechanism, local, password, None);
        (c, r)
    }

    /// STARTTLS, SCRAM-SHA-256, bind: a logged-in client on `host`.
    pub fn login(server: &TestServer, user: &str, password: &str, resource: &str) -> Client {
        let host = user.split_once('@').unwrap().1;
        let (mut c, r) = Client::authenticate(server, user, password, "SCRAM-SHA-256");
        assert_eq!(r.name, "success", "{r}");
        c.restart(host);
        let b = c.bind(Some(resource));
        assert_eq!(b.attr("type"), Some("result"), "{b}");
        c
    }

    /// Sends initial presence and reads its echo.
    pub fn available(&mut self, priority: i8) {
        self.send(&format!(
            "<presence><priority>{priority}</priority></presence>"
        ));
        let echo = self.el();
        assert_eq!(echo.name, "presence", "{echo}");
    }

    /// Waits until nothing arrives for `quiet`; returns what did.
    pub fn drain(&mut self, quiet: Duration) -> Vec<Got> {
        let mut out = Vec::new();
        while let Some(g) = self.next_within(quiet) {
            let end = matches!(g, Got::Eof);
            out.push(g);
            if end {
                break;
            }
        }
        out
    }

    /// Reads until the connection ends; returns the stream error condition, if one came.
    pub fn stream_error(&mut self) -> Option<String> {
        loop {
            match self.next() {
                Got::El(e) if e.name == "stream:error" => {
                    return e
                        .child_elements()
                        .find(|c| c.name != "text")
                        .map(|c| c.name.clone());
                }
                Got::Close | Got::Eof => return None,
                _ => {}
            }
        }
    }
}

/// The defined condition of an error stanza.
pub fn error_condition(e: &Element) -> Option<String> {
    e.child("error")?
        .child_elements()
        .find(|c| c.name != "text")
        .map(|c| c.name.clone())
}

pub fn element_string(e: &Element) -> String {
    e.to_xml_string()
}

/// The first of `{prefix}0@localhost`, `{prefix}1@localhost`, … whose home is not `anchor`'s among
/// `shards` (any, with one shard): the two users of a test on different shards.
pub fn on_another_shard(anchor: &str, prefix: &str, shards: usize) -> String {
    let a = rjabberd::placement::home(anchor, shards).shard;
    (0..100)
        .map(|i| format!("{prefix}{i}@localhost"))
        .find(|o| shards == 1 || rjabberd::placement::home(o, shards).shard != a)
        .expect("an account on the other shard")
}

/// One HTTP/1.1 request (`GET /metrics`, …) over a fresh connection: the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).expect("the endpoint accepts");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw)
        .expect("the endpoint answers and closes");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, body.to_string())
}

/// Connects a component (XEP-0114, on the third listener) for `domain` with `secret`; returns the client and what ended the handshake.
pub fn component(server: &TestServer, domain: &str, secret: &str) -> (Client, Element) {
    let mut c = Client::connect(server.listeners[2], server.cert_path());
    c.send(&format!(
        "<stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    ));
    let id = match c.next() {
        Got::Header(attrs) => attrs
            .iter()
            .find(|(n, _)| n == "id")
            .map(|(_, v)| v.clone())
            .expect("an id"),
        other => panic!("expected a header, got {other:?}"),
    };
    c.send(&format!(
        "<handshake>{}</handshake>",
        rjabberd::proto::component::handshake_digest(&id, secret)
    ));
    let e = c.el();
    (c, e)
}

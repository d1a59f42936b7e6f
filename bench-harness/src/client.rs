//! The client side of every scenario: harness threads (glommio executors), each owning the connections
//! of the users `i` with `i % threads == thread`. A connection logs in with ordinary awaits, then runs a
//! single task that both writes what the chat schedule queued for it and reads, parses and times what the
//! server delivers. Chat is open loop: every message has an intended send time on a fixed schedule, and
//! its latency is measured from that time (so a stalled server shows up as latency instead of as fewer
//! messages — the coordinated-omission correction).

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use hdrhistogram::Histogram;
use rjabberd::proto::sasl::Hash;
use rjabberd::proto::sasl::client::{SaltedPassword, ScramClient};
use rjabberd::proto::xml::{Event, Limits, Stanza, StreamParser};

use crate::{Mech, RunArgs, Scenario, Tls, secs};

/// A client stream: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}
impl<T: AsyncRead + AsyncWrite + Unpin + 'static> Io for T {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}
pub(crate) type Stream = Box<dyn Io>;

/// Accepts any server certificate: for loopback benchmarks without `--ca`.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration of a run.
pub fn tls_connector(args: &RunArgs) -> Result<futures_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match &args.ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                roots
                    .add(cert.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    };
    if args.tls == Tls::Direct {
        config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Ok(futures_rustls::TlsConnector::from(Arc::new(config)))
}

/// The time origin every harness thread measures from (an `Instant` is comparable across threads).
static BASE: OnceLock<Instant> = OnceLock::new();

pub(crate) fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// `--trace-file`, once opened: every thread appends its lines at the end of the run.
static TRACE_OUT: OnceLock<std::sync::Mutex<std::fs::File>> = OnceLock::new();

/// `--trace-file`: one harness thread's diagnostic lines (kept in memory during the run, so tracing
/// costs a `format!` per traced event and no system call). Times are ns since the harness's time origin;
/// the file's first line gives that origin as Unix time, to line up with server logs.
struct Trace {
    thread: usize,
    threshold_ns: u64,
    lines: RefCell<Vec<String>>,
}

impl Trace {
    fn log(&self, line: std::fmt::Arguments<'_>) {
        self.lines
            .borrow_mut()
            .push(format!("{} t{} {line}", now_ns(), self.thread));
    }

    fn flush(&self) {
        if let Some(out) = TRACE_OUT.get() {
            let mut f = out.lock().unwrap_or_else(|e| e.into_inner());
            for l in self.lines.borrow_mut().drain(..) {
                let _ = writeln!(f, "{l}");
            }
        }
    }
}

/// Counters shared by all harness threads.
#[derive(Default)]
pub struct Shared {
    pub online: AtomicUsize,
    pub login_failures: AtomicUsize,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Chat runs while this is set.
    pub sending: AtomicBool,
    /// Connections close when this is set.
    pub done: AtomicBool,
    /// The current chat rate (messages per second, all threads), set per `--find-max` step.
    pub rate_milli: AtomicU64,
    /// Bumped at each chat step; threads reset their histograms when they see it change.
    pub step: AtomicUsize,
    /// Threads that have finished their logins.
    pub logged_in_threads: AtomicUsize,
    /// The step whose measurements threads should close now (set after the main thread's drain).
    pub close_step: AtomicUsize,
    /// Thread-steps closed so far.
    pub steps_closed: AtomicUsize,
    /// Thread-steps whose sending has stopped (no message of the step is sent after this).
    pub steps_stopped: AtomicUsize,
    /// The largest per-thread p99 (ns) of the step being closed.
    pub step_p99: AtomicU64,
    /// Chat messages that came back as errors (a recipient between two sessions, in `mixed`).
    pub bounced: AtomicU64,
    /// `mixed`: sessions dropped and logged in again, and logins again that failed.
    pub relogins: AtomicU64,
    pub relogin_failures: AtomicU64,
}

/// What one harness thread measured in one chat step (or in the login phase).
pub struct ThreadResult {
    pub login: Histogram<u64>,
    /// `mixed`: latency of the logins after a disconnect.
    pub relogin: Histogram<u64>,
    pub steps: Vec<StepResult>,
}

pub struct StepResult {
    pub latency: Histogram<u64>,
    /// Messages received per second of the step, and p99 per second (ns).
    pub timeline: Vec<(u64, u64)>,
}

/// The whole run, merged.
pub struct Summary {
    pub login: Histogram<u64>,
    pub relogin: Histogram<u64>,
    pub relogins: u64,
    pub relogin_failures: u64,
    pub login_secs: f64,
    pub online: usize,
    pub login_failures: usize,
    pub steps: Vec<ChatStep>,
    pub server_cpu_login_s: Option<f64>,
    /// The database's CPU over the login phase (`--db-pid`).
    pub db_cpu_login_s: Option<f64>,
    pub harness_cpu_login_s: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// The `offline` scenario's phases.
    pub offline: Option<crate::offline::OfflineResult>,
}

pub struct ChatStep {
    pub rate: f64,
    pub secs: f64,
    pub sent: u64,
    pub received: u64,
    /// Answered with an error instead (not lost: the server said so).
    pub bounced: u64,
    pub latency: Histogram<u64>,
    pub timeline: Vec<(u64, u64)>,
    pub server_cpu_s: Option<f64>,
    pub harness_cpu_s: f64,
}

/// CPU seconds of a process (all its threads), from the scheduler's exact run-time accounting
/// (`/proc/PID/task/*/schedstat`, nanoseconds on CPU). The tick-sampled utime/stime of `/proc/PID/stat`
/// misattribute a process that runs briefly and often, as an XMPP server at low load does; it is the
/// fallback when schedstat is missing. Threads that have exited are not counted.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let base = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    if let Ok(tasks) = std::fs::read_dir(format!("{base}/task")) {
        let mut ns: u64 = 0;
        let mut any = false;
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat"))
                && let Some(v) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            {
                ns += v;
                any = true;
            }
        }
        if any {
            return Some(ns as f64 / 1e9);
        }
    }
    let stat = std::fs::read_to_string(format!("{base}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds of a process and of its direct children: a database server (PostgreSQL forks a backend
/// per connection and its WAL writer, checkpointer … under the postmaster), whose work for the server
/// happens in those children. Children that have exited are not counted (the backends of the server's
/// connections live as long as it does).
pub fn tree_cpu_secs(pid: Option<u32>) -> Option<f64> {
    let pid = pid?;
    let mut total = cpu_secs(Some(pid))?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The command may hold spaces and parentheses: the fields after the last ')' are state, ppid.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            total += cpu_secs(Some(child)).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// The CPU seconds of the server, summed over every host of a cluster (`--also-pid`).
pub fn servers_cpu(args: &RunArgs) -> Option<f64> {
    let first = cpu_secs(args.server_pid)?;
    args.also_pid
        .iter()
        .try_fold(first, |sum, p| Some(sum + cpu_secs(Some(*p))?))
}

/// The server's resident memory, summed over every host of a cluster.
pub fn servers_rss(args: &RunArgs) -> Option<u64> {
    let first = rss_kib(args.server_pid?)?;
    args.also_pid
        .iter()
        .try_fold(first, |sum, p| Some(sum + rss_kib(*p)?))
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid bounds")
}

/// Where the harness threads run: `--cpus`, or anywhere.
pub(crate) fn placement(args: &RunArgs) -> PoolPlacement {
    let threads = args.threads.max(1);
    if args.cpus.is_empty() {
        PoolPlacement::Unbound(threads)
    } else {
        PoolPlacement::Custom(
            (0..threads)
                .map(|t| {
                    glommio::CpuSet::online()
                        .expect("CPUs")
                        .filter(|c| c.cpu == args.cpus[t % args.cpus.len()])
                })
                .collect(),
        )
    }
}

/// Runs the scenario of `args`; returns what was measured.
pub fn run(args: &RunArgs) -> Result<Summary, String> {
    let _ = now_ns();
    tls_connector(args)?;
    if args.scenario == Scenario::Offline {
        return crate::offline::run(args);
    }
    if let Some(path) = &args.trace_file {
        let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let _ = writeln!(
            f,
            "# origin_unix_ns={} threshold_ms={}",
            unix_ns.saturating_sub(now_ns()),
            args.trace_slow_ms
        );
        let _ = TRACE_OUT.set(std::sync::Mutex::new(f));
    }
    let shared = Arc::new(Shared::default());
    shared
        .rate_milli
        .store((args.rate * 1000.0) as u64, Ordering::SeqCst);
    let threads = args.threads.max(1);
    let placement = placement(args);
    let server_cpu0 = servers_cpu(args);
    let db_cpu0 = tree_cpu_secs(args.db_pid);
    let harness_cpu0 = cpu_secs(None).unwrap_or(0.0);
    let rss_before = servers_rss(args);
    let login_started = Instant::now();
    let pool_args = args.clone();
    let pool_shared = shared.clone();
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("rjabberd-bench")
        .on_all_shards(move || async move {
            let id = glommio::executor().id() - 1;
            thread_main(id % threads, threads, pool_args, pool_shared).await
        })
        .map_err(|e| format!("cannot start the harness threads: {e}"))?;

    // The login phase ends when every thread has started (and finished) its logins.
    let n = args.users;
    let mut last = Instant::now();
    let progress = Progress::new(n as u64, "logging in");
    while shared.logged_in_threads.load(Ordering::SeqCst) < threads {
        std::thread::sleep(Duration::from_millis(50));
        let online = shared.online.load(Ordering::SeqCst);
        let failed = shared.login_failures.load(Ordering::SeqCst);
        let rate = online as f64 / login_started.elapsed().as_secs_f64().max(1e-3);
        let line = format!("{online} / {n} online, {failed} failed, {rate:.0} logins/s");
        if progress.is_bar() || last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            progress.update((online + failed) as u64, line);
        }
    }
    progress.finish();
    let login_secs = login_started.elapsed().as_secs_f64();
    let server_cpu_login = server_cpu0.zip(servers_cpu(args)).map(|(a, b)| b - a);
    let db_cpu_login = db_cpu0.zip(tree_cpu_secs(args.db_pid)).map(|(a, b)| b - a);
    let harness_cpu_login = cpu_secs(None).unwrap_or(0.0) - harness_cpu0;
    eprintln!(
        "  {} online in {login_secs:.2} s ({} failed)",
        shared.online.load(Ordering::SeqCst),
        shared.login_failures.load(Ordering::SeqCst)
    );

    let mut rss_after = None;
    let mut steps = Vec::new();
    match args.scenario {
        Scenario::Login | Scenario::Offline => {}
        Scenario::Idle => {
            std::thread::sleep(secs(args.settle));
            rss_after = servers_rss(args);
        }
        Scenario::Chat | Scenario::Mixed | Scenario::Presence => {
            let mut rate = args.rate;
            loop {
                shared
                    .rate_milli
                    .store((rate * 1000.0) as u64, Ordering::SeqCst);
                let sent0 = shared.sent.load(Ordering::SeqCst);
                let recv0 = shared.received.load(Ordering::SeqCst);
                let bounced0 = shared.bounced.load(Ordering::SeqCst);
                let s0 = servers_cpu(args);
                let h0 = cpu_secs(None).unwrap_or(0.0);
                shared.step.fetch_add(1, Ordering::SeqCst);
                shared.sending.store(true, Ordering::SeqCst);
                let started = Instant::now();
                let total_ms = secs(args.duration).as_millis() as u64;
                let progress = Progress::new(total_ms, &format!("chat at {rate:.0}/s"));
                let tick = if progress.is_bar() { 100 } else { 1000 };
                let (mut last_at, mut last_received) = (Instant::now(), 0);
                while started.elapsed() < secs(args.duration) {
                    std::thread::sleep(Duration::from_millis(tick).min(secs(args.duration)));
                    let sent = shared.sent.load(Ordering::SeqCst) - sent0;
                    let received = shared.received.load(Ordering::SeqCst) - recv0;
                    let now_rate = (received - last_received) as f64
                        / last_at.elapsed().as_secs_f64().max(1e-3);
                    (last_at, last_received) = (Instant::now(), received);
                    progress.update(
                        started.elapsed().as_millis() as u64,
                        format!(
                            "{:.0} s: sent {sent}, received {received}, now {now_rate:.0} msg/s",
                            started.elapsed().as_secs_f64()
                        ),
                    );
                }
                progress.finish();
                shared.sending.store(false, Ordering::SeqCst);
                let secs_run = started.elapsed().as_secs_f64();
                // A thread may be mid-burst: the step's `sent` is final only once every thread stopped.
                let step_no = shared.step.load(Ordering::SeqCst);
                let stop_wait = Instant::now();
                while shared.steps_stopped.load(Ordering::SeqCst) < step_no * threads
                    && stop_wait.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Drain: wait until everything sent arrived, or 3 s.
                let drain = Instant::now();
                while shared.received.load(Ordering::SeqCst) - recv0
                    + (shared.bounced.load(Ordering::SeqCst) - bounced0)
                    < shared.sent.load(Ordering::SeqCst) - sent0
                    && drain.elapsed() < Duration::from_secs(3)
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let sent = shared.sent.load(Ordering::SeqCst) - sent0;
                let received = shared.received.load(Ordering::SeqCst) - recv0;
                let bounced = shared.bounced.load(Ordering::SeqCst) - bounced0;
                let server_cpu = s0.zip(servers_cpu(args)).map(|(a, b)| b - a);
                // Have every thread close its histogram for this step.
                shared.step_p99.store(0, Ordering::SeqCst);
                let step = shared.step.load(Ordering::SeqCst);
                shared.close_step.store(step, Ordering::SeqCst);
                while shared.steps_closed.load(Ordering::SeqCst) < step * threads {
                    std::thread::sleep(Duration::from_millis(5));
                }
                steps.push((
                    rate,
                    secs_run,
                    sent,
                    received,
                    bounced,
                    server_cpu,
                    cpu_secs(None).unwrap_or(0.0) - h0,
                ));
                if !args.find_max {
                    break;
                }
                // The thread histograms are merged at the end; the stop rule uses the worst thread's p99.
                let p99 = shared.step_p99.load(Ordering::SeqCst) as f64 / 1e6;
                eprintln!(
                    "  step at {rate:.0}/s: p99 {p99:.2} ms, lost {}",
                    sent.saturating_sub(received)
                );
                if p99 > args.p99_bound_ms || received < sent {
                    break;
                }
                rate *= 1.5;
            }
        }
    }
    shared.done.store(true, Ordering::SeqCst);
    let results: Vec<ThreadResult> = handles
        .join_all()
        .into_iter()
        .map(|r| r.map_err(|e| format!("a harness thread failed: {e}")))
        .collect::<Result<_, _>>()?;
    let mut login = histogram();
    let mut relogin = histogram();
    for r in &results {
        login.add(&r.login).expect("same bounds");
        relogin.add(&r.relogin).expect("same bounds");
    }
    let chat_steps = steps
        .into_iter()
        .enumerate()
        .map(
            |(i, (rate, secs_run, sent, received, bounced, server_cpu_s, harness_cpu_s))| {
                let mut latency = histogram();
                let mut timeline: Vec<(u64, u64)> = Vec::new();
                for r in &results {
                    if let Some(s) = r.steps.get(i) {
                        latency.add(&s.latency).expect("same bounds");
                        for (k, (count, p99)) in s.timeline.iter().enumerate() {
                            if timeline.len() <= k {
                                timeline.push((0, 0));
                            }
                            timeline[k].0 += count;
                            timeline[k].1 = timeline[k].1.max(*p99);
                        }
                    }
                }
                ChatStep {
                    rate,
                    secs: secs_run,
                    sent,
                    received,
                    bounced,
                    latency,
                    timeline,
                    server_cpu_s,
                    harness_cpu_s,
                }
            },
        )
        .collect();
    Ok(Summary {
        login,
        relogin,
        relogins: shared.relogins.load(Ordering::SeqCst),
        relogin_failures: shared.relogin_failures.load(Ordering::SeqCst),
        login_secs,
        online: shared.online.load(Ordering::SeqCst),
        login_failures: shared.login_failures.load(Ordering::SeqCst),
        steps: chat_steps,
        server_cpu_login_s: server_cpu_login,
        db_cpu_login_s: db_cpu_login,
        harness_cpu_login_s: harness_cpu_login,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        offline: None,
    })
}

/// One online connection's shared state: what to write, and who to wake.
struct Online {
    user: usize,
    /// `user@host/` of this connection, to tell its own presence echoed back from its contacts'.
    own: String,
    out: RefCell<Vec<u8>>,
    waker: RefCell<Option<Waker>>,
    /// Set to drop the connection once what is queued is written (`mixed`).
    close: Cell<bool>,
    /// When its login finished (ns since the time origin), for `--trace-file`.
    ready_ns: u64,
}

impl Online {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Per-thread measurements of the current chat step.
struct Recorder {
    latency: RefCell<Histogram<u64>>,
    second: RefCell<Histogram<u64>>,
    timeline: RefCell<Vec<(u64, u64)>>,
    step_start: Cell<Instant>,
    second_count: Cell<u64>,
    /// `--trace-file`: this thread's diagnostic lines.
    trace: Option<Rc<Trace>>,
}

impl Recorder {
    fn record(&self, latency_ns: u64) {
        let v = latency_ns.clamp(1_000, 100_000_000_000);
        let _ = self.latency.borrow_mut().record(v);
        let _ = self.second.borrow_mut().record(v);
        self.second_count.set(self.second_count.get() + 1);
    }

    fn roll_second(&self) {
        let mut s = self.second.borrow_mut();
        let p99 = if s.is_empty() {
            0
        } else {
            s.value_at_quantile(0.99)
        };
        self.timeline
            .borrow_mut()
            .push((self.second_count.get(), p99));
        s.reset();
        self.second_count.set(0);
    }
}

async fn thread_main(
    id: usize,
    threads: usize,
    args: RunArgs,
    shared: Arc<Shared>,
) -> ThreadResult {
    let users: Vec<usize> = (id..args.users).step_by(threads).collect();
    let sources = if args.sources == 0 {
        // Not one per 64k ports: with the TIME_WAIT sockets earlier runs leave towards the same server
        // port, connect() on a crowded source address spends milliseconds finding a free port, and the
        // harness, not the server, sets the login rate (measured: 146 µs harness CPU per login on a fresh
        // machine, 2.8 ms after two runs of 5,000 from 127.0.0.1 alone).
        args.users.div_ceil(2_000).clamp(16, 250)
    } else {
        args.sources
    };
    let trace = args.trace_file.as_ref().map(|_| {
        Rc::new(Trace {
            thread: id,
            threshold_ns: (args.trace_slow_ms * 1e6) as u64,
            lines: RefCell::default(),
        })
    });
    let recorder = Rc::new(Recorder {
        latency: RefCell::new(histogram()),
        second: RefCell::new(histogram()),
        timeline: RefCell::new(Vec::new()),
        step_start: Cell::new(Instant::now()),
        second_count: Cell::new(0),
        trace: trace.clone(),
    });
    let login_hist = Rc::new(RefCell::new(histogram()));
    let relogin_hist = Rc::new(RefCell::new(histogram()));
    let in_flight = Rc::new(glommio::sync::Semaphore::new(
        args.login_concurrency.max(1) as u64
    ));
    let finished = Rc::new(Cell::new(0usize));
    let ctx = Rc::new(Ctx {
        connector: tls_connector(&args).expect("TLS configuration checked before the run"),
        args: args.clone(),
        shared: shared.clone(),
        recorder: recorder.clone(),
        online: Rc::default(),
        salted: Rc::default(),
        rbuf: Rc::new(RefCell::new(vec![0u8; 64 * 1024])),
        sources,
        trace: trace.clone(),
    });
    if let Some(tr) = trace.clone() {
        // Stall watchdog: a 1 ms timer that notes when this thread wakes it much later than due.
        let shared = shared.clone();
        glommio::spawn_local(async move {
            let tick = Duration::from_millis(1);
            let limit = tr.threshold_ns / 5;
            while !shared.done.load(Ordering::Relaxed) {
                let t = now_ns();
                glommio::timer::sleep(tick).await;
                let late = now_ns().saturating_sub(t + tick.as_nanos() as u64);
                if late > limit {
                    tr.log(format_args!("stall late_ms={:.3}", late as f64 / 1e6));
                }
            }
        })
        .detach();
    }
    let online = ctx.online.clone();
    let per_thread_rate = args.arrival_rate / threads as f64;
    let started = Instant::now();
    let mut logins = Vec::new();
    // `mixed`: sessions dropped whose login again has not finished.
    // (how many, whether the run has ended and counted them).
    let pending_relogins = Rc::new(Cell::new((0u64, false)));
    for (k, user) in users.iter().copied().enumerate() {
        if per_thread_rate > 0.0 {
            let at = started + secs(k as f64 / per_thread_rate);
            let now = Instant::now();
            if at > now {
                glommio::timer::sleep(at - now).await;
            }
        }
        let permit = in_flight
            .acquire_static_permit(1)
            .await
            .expect("semaphore open");
        let finished = finished.clone();
        let shared = shared.clone();
        let prefix = args.prefix.clone();
        logins.push(spawn_session(
            &ctx,
            user,
            false,
            login_hist.clone(),
            move |result: Result<(), &str>| {
                drop(permit);
                finished.set(finished.get() + 1);
                match result {
                    Ok(()) => {
                        shared.online.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        if shared.login_failures.fetch_add(1, Ordering::SeqCst) < 5 {
                            eprintln!("  login of {prefix}{user} failed: {e}");
                        }
                    }
                }
            },
        ));
    }
    // Wait for this thread's logins to finish (online or failed).
    let mine = users.len();
    while finished.get() < mine {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    shared.logged_in_threads.fetch_add(1, Ordering::SeqCst);

    // Chat schedule: open loop at this thread's share of the rate, from this thread's online users to
    // random online users anywhere.
    let mut steps = Vec::new();
    let mut seen_step = 0;
    let mut rng = Rng::new(id as u64 + 1);
    while !shared.done.load(Ordering::SeqCst) {
        if !matches!(
            args.scenario,
            Scenario::Chat | Scenario::Mixed | Scenario::Presence
        ) || !shared.sending.load(Ordering::SeqCst)
            || shared.step.load(Ordering::SeqCst) == seen_step
        {
            glommio::timer::sleep(Duration::from_millis(5)).await;
            continue;
        }
        seen_step = shared.step.load(Ordering::SeqCst);
        recorder.latency.borrow_mut().reset();
        recorder.second.borrow_mut().reset();
        recorder.timeline.borrow_mut().clear();
        recorder.second_count.set(0);
        recorder.step_start.set(Instant::now());
        let rate = shared.rate_milli.load(Ordering::SeqCst) as f64 / 1000.0 / threads as f64;
        let interval_ns = (1e9 / rate.max(0.001)) as u64;
        let start_ns = now_ns();
        let mut k: u64 = 0;
        let mut next_second = Instant::now() + Duration::from_secs(1);
        // `mixed`: this thread's share of the churn, as an interval between two disconnects.
        // `presence`: deliveries one update should cause (every contact is online by now).
        let fanout = crate::contacts(0, args.users, args.contacts).len() as u64;
        let churn_ns = (args.scenario == Scenario::Mixed && args.churn > 0.0)
            .then(|| (1e9 / (args.churn / threads as f64)) as u64);
        let mut next_churn = start_ns + churn_ns.unwrap_or(0);
        while shared.sending.load(Ordering::SeqCst) && !online.borrow().is_empty() {
            let intended = start_ns + k * interval_ns;
            let now = now_ns();
            if intended > now {
                // Sleep until the next message is due: never spin, the receivers share this thread.
                glommio::timer::sleep(Duration::from_nanos(intended - now)).await;
            }
            if Instant::now() >= next_second {
                recorder.roll_second();
                next_second += Duration::from_secs(1);
            }
            // Every message due by now goes out (open loop: falling behind does not lower the rate).
            let now = now_ns();
            if let Some(tr) = &trace {
                let due = start_ns + k * interval_ns;
                if now > due + tr.threshold_ns {
                    tr.log(format_args!(
                        "late_send intended_ns={due} late_ms={:.3}",
                        (now - due) as f64 / 1e6
                    ));
                }
            }
            if let Some(every) = churn_ns {
                while next_churn <= now {
                    next_churn += every;
                    let dropped = {
                        let mut list = online.borrow_mut();
                        if list.len() < 2 {
                            break;
                        }
                        let i = rng.below(list.len());
                        list.swap_remove(i)
                    };
                    dropped.close.set(true);
                    dropped.wake();
                    if let Some(tr) = &trace {
                        tr.log(format_args!("drop user={}", dropped.user));
                    }
                    let shared = shared.clone();
                    pending_relogins.set((pending_relogins.get().0 + 1, false));
                    let pending = pending_relogins.clone();
                    logins.push(spawn_session(
                        &ctx,
                        dropped.user,
                        true,
                        relogin_hist.clone(),
                        move |result: Result<(), &str>| {
                            if pending.get().1 {
                                // Already counted as a failure at the end of the run.
                                return;
                            }
                            pending.set((pending.get().0 - 1, false));
                            match result {
                                Ok(()) => {
                                    shared.relogins.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(e) => {
                                    if shared.relogin_failures.fetch_add(1, Ordering::SeqCst) < 5 {
                                        eprintln!("  login again failed: {e}");
                                    }
                                }
                            }
                        },
                    ));
                }
            }
            {
                let senders = online.borrow();
                let mut burst = 0;
                while start_ns + k * interval_ns <= now && burst < 10_000 && !senders.is_empty() {
                    let intended = start_ns + k * interval_ns;
                    let from = &senders[rng.below(senders.len())];
                    let to = rng.below(args.users);
                    let expected = {
                        let mut out = from.out.borrow_mut();
                        if args.scenario == Scenario::Presence {
                            // A presence update: the server broadcasts it to the sender's contacts.
                            let _ = write!(out, "<presence><status>{intended}</status></presence>");
                            fanout
                        } else {
                            let _ = write!(
                                out,
                                "<message to='{}{to}@{}/b' type='chat'><body>{intended}</body></message>",
                                args.prefix, args.host
                            );
                            1
                        }
                    };
                    from.wake();
                    shared.sent.fetch_add(expected, Ordering::Relaxed);
                    k += 1;
                    burst += 1;
                }
            }
            // Let the connections write and read what this burst produced.
            futures_lite::future::yield_now().await;
        }
        shared.steps_stopped.fetch_add(1, Ordering::SeqCst);
        // Close this step's histogram when the main thread says everything has arrived.
        while shared.close_step.load(Ordering::SeqCst) < seen_step {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        recorder.roll_second();
        let latency = recorder.latency.borrow().clone();
        if !latency.is_empty() {
            shared
                .step_p99
                .fetch_max(latency.value_at_quantile(0.99), Ordering::SeqCst);
        }
        steps.push(StepResult {
            latency,
            timeline: recorder.timeline.borrow().clone(),
        });
        shared.steps_closed.fetch_add(1, Ordering::SeqCst);
    }
    for c in online.borrow().iter() {
        c.wake();
    }
    // A session dropped just before the end is still logging in again: wait for it (a little), so
    // that every drop is counted as a login again or a failure; one still pending then is a failure.
    let waited_from = Instant::now();
    while pending_relogins.get().0 > 0 && waited_from.elapsed() < Duration::from_secs(5) {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shared
        .relogin_failures
        .fetch_add(pending_relogins.get().0, Ordering::SeqCst);
    pending_relogins.set((0, true));
    drop(logins);
    if let Some(tr) = &trace {
        tr.flush();
    }
    let login = login_hist.borrow().clone();
    let relogin = relogin_hist.borrow().clone();
    ThreadResult {
        login,
        relogin,
        steps,
    }
}

/// What every session task of a harness thread shares.
struct Ctx {
    args: RunArgs,
    shared: Arc<Shared>,
    recorder: Rc<Recorder>,
    /// This thread's connections that are logged in and not being dropped.
    online: Rc<RefCell<Vec<Rc<Online>>>>,
    salted: Rc<RefCell<Option<SaltedPassword>>>,
    /// One read buffer per harness thread.
    rbuf: Rc<RefCell<Vec<u8>>>,
    connector: futures_rustls::TlsConnector,
    sources: usize,
    trace: Option<Rc<Trace>>,
}

/// A task that logs `user` in (its latency into `hist`), calls `done` with the outcome, and then serves
/// the connection until the run ends or the connection is dropped.
fn spawn_session(
    ctx: &Rc<Ctx>,
    user: usize,
    again: bool,
    hist: Rc<RefCell<Histogram<u64>>>,
    done: impl FnOnce(Result<(), &str>) + 'static,
) -> glommio::task::JoinHandle<()> {
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let t0 = Instant::now();
        let start_ns = now_ns();
        let connect_ns = Cell::new(0u64);
        let source = Ipv4Addr::new(127, 0, 0, 1 + (user % ctx.sources) as u8);
        // A login that has not finished in 60 s counts as failed (a server that stalls one must not
        // stall the run).
        let result = futures_lite::future::or(
            login(
                &ctx.args,
                &ctx.connector,
                user,
                source,
                &ctx.salted,
                &connect_ns,
            ),
            async {
                glommio::timer::sleep(Duration::from_secs(60)).await;
                Err("no answer within 60 s".to_string())
            },
        )
        .await;
        if let Some(tr) = &ctx.trace
            && (again || connect_ns.get() > tr.threshold_ns / 50)
        {
            let kind = if again { "relogin" } else { "login" };
            tr.log(format_args!(
                "{kind} user={user} start_ns={start_ns} connect_us={:.0} login_ms={:.3} early={} ok={}",
                connect_ns.get() as f64 / 1e3,
                (now_ns() - start_ns) as f64 / 1e6,
                result.as_ref().map_or(0, |r| r.2.len()),
                result.is_ok()
            ));
        }
        match result {
            Ok((stream, parser, early)) => {
                done(Ok(()));
                let _ = hist
                    .borrow_mut()
                    .record((t0.elapsed().as_nanos() as u64).max(1_000));
                let conn = Rc::new(Online {
                    user,
                    own: format!("{}{user}@{}/", ctx.args.prefix, ctx.args.host),
                    out: RefCell::new(Vec::with_capacity(256)),
                    waker: RefCell::new(None),
                    close: Cell::new(false),
                    ready_ns: now_ns(),
                });
                ctx.online.borrow_mut().push(conn.clone());
                steady(
                    stream,
                    parser,
                    early,
                    conn,
                    ctx.recorder.clone(),
                    ctx.shared.clone(),
                    ctx.rbuf.clone(),
                )
                .await;
            }
            Err(e) => done(Err(&e)),
        }
    })
    .detach()
}

/// Accounts for one stanza an online connection received: a chat message (timed from the intended send
/// time in its body), a bounce, or a contact's presence update (timed from its status; presence without
/// one — logins, probes answered, the user's own echo — is not).
fn measure(s: &Stanza, own: &str, now: u64, rec: &Recorder, shared: &Shared) -> Option<u64> {
    let b = s.as_bytes();
    match s.local_name() {
        "presence" => {
            if s.from().is_some_and(|f| f.starts_with(own)) {
                return None;
            }
            let sent =
                memchr::memmem::find(b, b"<status>").and_then(|i| leading_number(&b[i + 8..]))?;
            rec.record(now.saturating_sub(sent));
            shared.received.fetch_add(1, Ordering::Relaxed);
            Some(sent)
        }
        "message" => {
            if s.type_().as_deref() == Some("error") {
                // The recipient was between sessions; servers that echo the payload would otherwise
                // count it as received.
                shared.bounced.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            let sent =
                memchr::memmem::find(b, b"<body>").and_then(|i| leading_number(&b[i + 6..]))?;
            rec.record(now.saturating_sub(sent));
            shared.received.fetch_add(1, Ordering::Relaxed);
            Some(sent)
        }
        _ => None,
    }
}

/// The decimal number at the start of `b`, if any.
fn leading_number(b: &[u8]) -> Option<u64> {
    let end = b
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).ok()?.parse().ok()
}

/// xorshift64*: a tiny generator so the send loop draws recipients without allocation or locks.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % n.max(1) as u64) as usize
    }
}

/// Connects from `source`, then negotiates: header, SASL, restart, bind, initial presence.
pub(crate) async fn login(
    args: &RunArgs,
    connector: &futures_rustls::TlsConnector,
    user: usize,
    source: Ipv4Addr,
    salted: &RefCell<Option<SaltedPassword>>,
    connect_ns: &Cell<u64>,
) -> Result<(Stream, StreamParser, Vec<Stanza>), String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    sock.set_reuse_address(true).map_err(|e| e.to_string())?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    // A blocking connect on loopback completes at once (or fails at once when the backlog is full).
    let t = now_ns();
    let connected = sock.connect(&args.server_for(user).into());
    connect_ns.set(now_ns() - t);
    connected.map_err(|e| format!("connect: {e}"))?;
    sock.set_tcp_nodelay(true).map_err(|e| e.to_string())?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    // SAFETY: the descriptor is owned by `sock`, whose ownership moves into the glommio stream.
    let tcp = unsafe { TcpStream::from_raw_fd(sock.into_raw_fd()) };
    let server_name = || {
        rustls::pki_types::ServerName::try_from(args.host.clone())
            .map_err(|e| format!("server name: {e}"))
    };
    let mut stream: Stream = match args.tls {
        Tls::Direct => Box::new(
            connector
                .connect(server_name()?, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?,
        ),
        _ => Box::new(tcp),
    };
    let mut p = StreamParser::new(Limits::default());
    let mut buf = vec![0u8; 4096];
    let host = &args.host;
    let header = format!(
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{host}' version='1.0'>"
    );
    send(&mut stream, header.as_bytes()).await?;
    expect_header(&mut stream, &mut p, &mut buf).await?;
    element(&mut stream, &mut p, &mut buf).await?; // features
    if args.tls == Tls::Starttls {
        send(
            &mut stream,
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        )
        .await?;
        let proceed = element(&mut stream, &mut p, &mut buf).await?;
        if proceed.local_name() != "proceed" {
            return Err(format!(
                "STARTTLS: {}",
                String::from_utf8_lossy(proceed.as_bytes())
            ));
        }
        // The plain stream is boxed; TLS needs the socket back.
        let tcp = stream_into_tcp(stream)?;
        stream = Box::new(
            connector
                .connect(server_name()?, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?,
        );
        p = StreamParser::new(Limits::default());
        send(&mut stream, header.as_bytes()).await?;
        expect_header(&mut stream, &mut p, &mut buf).await?;
        element(&mut stream, &mut p, &mut buf).await?; // features
    }
    let name = format!("{}{user}", args.prefix);
    match args.mech {
        Mech::Plain => {
            let msg = B64.encode(format!("\0{name}\0{}", args.password));
            send(
                &mut stream,
                format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{msg}</auth>"
                )
                .as_bytes(),
            )
            .await?;
        }
        Mech::ScramSha1 | Mech::ScramSha256 => {
            let (hash, mech) = if args.mech == Mech::ScramSha1 {
                (Hash::Sha1, "SCRAM-SHA-1")
            } else {
                (Hash::Sha256, "SCRAM-SHA-256")
            };
            let mut nonce = [0u8; 12];
            getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
            let mut scram = ScramClient::new(hash, &name, &args.password, &B64.encode(nonce), None);
            send(
                &mut stream,
                format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
                    B64.encode(scram.client_first())
                )
                .as_bytes(),
            )
            .await?;
            let challenge = element(&mut stream, &mut p, &mut buf).await?;
            if challenge.local_name() != "challenge" {
                return Err(format!(
                    "SASL: {}",
                    String::from_utf8_lossy(challenge.as_bytes())
                ));
            }
            let data = B64
                .decode(challenge.to_element().text().trim())
                .map_err(|e| e.to_string())?;
            let last = scram
                .client_final_cached(&data, &mut salted.borrow_mut())
                .map_err(|e| format!("{e:?}"))?;
            send(
                &mut stream,
                format!(
                    "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                    B64.encode(last)
                )
                .as_bytes(),
            )
            .await?;
        }
    }
    let outcome = element(&mut stream, &mut p, &mut buf).await?;
    if outcome.local_name() != "success" {
        return Err(format!(
            "SASL: {}",
            String::from_utf8_lossy(outcome.as_bytes())
        ));
    }
    p.reset();
    send(&mut stream, header.as_bytes()).await?;
    expect_header(&mut stream, &mut p, &mut buf).await?;
    element(&mut stream, &mut p, &mut buf).await?; // features
    send(
        &mut stream,
        b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>b</resource></bind></iq>",
    )
    .await?;
    let bound = element(&mut stream, &mut p, &mut buf).await?;
    if bound.type_().as_deref() != Some("result") {
        return Err(format!(
            "bind: {}",
            String::from_utf8_lossy(bound.as_bytes())
        ));
    }
    if args.carbons {
        send(
            &mut stream,
            b"<iq type='set' id='carbons'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        )
        .await?;
        let enabled = element(&mut stream, &mut p, &mut buf).await?;
        if enabled.type_().as_deref() != Some("result") {
            return Err(format!(
                "carbons: {}",
                String::from_utf8_lossy(enabled.as_bytes())
            ));
        }
    }
    send(&mut stream, b"<presence/>").await?;
    // Once bound, the session can be sent stanzas before its presence comes back (chat to this full
    // JID while it logs in again): they are kept for the steady state to account for.
    let mut early = Vec::new();
    loop {
        let el = element(&mut stream, &mut p, &mut buf).await?;
        if el.local_name() == "presence" {
            break;
        }
        if early.len() >= 1000 {
            return Err("no presence echo after 1,000 other stanzas".into());
        }
        early.push(el);
    }
    Ok((stream, p, early))
}

pub(crate) async fn send(stream: &mut Stream, bytes: &[u8]) -> Result<(), String> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| format!("write: {e}"))?;
    stream.flush().await.map_err(|e| format!("write: {e}"))
}

/// Recovers the TCP stream from a boxed plain stream (for STARTTLS).
fn stream_into_tcp(stream: Stream) -> Result<TcpStream, String> {
    let any: Box<dyn std::any::Any> = stream.into_any();
    any.downcast::<TcpStream>()
        .map(|b| *b)
        .map_err(|_| "STARTTLS on a stream that is not plain TCP".to_string())
}

async fn next_event(
    stream: &mut Stream,
    p: &mut StreamParser,
    buf: &mut [u8],
) -> Result<Event, String> {
    loop {
        if let Some(e) = p
            .next_event()
            .map_err(|e| format!("server sent bad XML: {e:?}"))?
        {
            return Ok(e);
        }
        let n = stream.read(buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let k = p.feed(rest);
            rest = &rest[k..];
            if k == 0 {
                return Err("stanza too large".into());
            }
        }
    }
}

async fn expect_header(
    stream: &mut Stream,
    p: &mut StreamParser,
    buf: &mut [u8],
) -> Result<(), String> {
    loop {
        match next_event(stream, p, buf).await? {
            Event::Declaration(_) => {}
            Event::StreamOpen(_) => return Ok(()),
            other => return Err(format!("expected a stream header, got {other:?}")),
        }
    }
}

pub(crate) async fn element(
    stream: &mut Stream,
    p: &mut StreamParser,
    buf: &mut [u8],
) -> Result<Stanza, String> {
    match next_event(stream, p, buf).await? {
        Event::Stanza(s) if s.local_name() == "error" => Err(format!(
            "stream error: {}",
            String::from_utf8_lossy(s.as_bytes())
        )),
        Event::Stanza(s) => Ok(s),
        other => Err(format!("expected an element, got {other:?}")),
    }
}

/// The steady state of an online connection: write what the schedule queued, read and time what
/// arrives, until the run is done.
async fn steady(
    mut stream: Stream,
    mut parser: StreamParser,
    early: Vec<Stanza>,
    conn: Rc<Online>,
    rec: Rc<Recorder>,
    shared: Arc<Shared>,
    rbuf: Rc<RefCell<Vec<u8>>>,
) {
    let trace = rec.trace.clone();
    // `--trace-file`: a message slower than the threshold, with who sent it and how it came.
    let slow = |s: &Stanza, sent: Option<u64>, now: u64, phase: &str| {
        if let (Some(tr), Some(sent)) = (&trace, sent)
            && now.saturating_sub(sent) > tr.threshold_ns
        {
            let b = s.as_bytes();
            tr.log(format_args!(
                "slow to={} from={} intended_ns={sent} recv_ns={now} lat_ms={:.3} phase={phase} since_login_ms={:.3} delayed={}",
                conn.user,
                s.from().as_deref().unwrap_or("-"),
                (now - sent) as f64 / 1e6,
                (now as f64 - conn.ready_ns as f64) / 1e6,
                memchr::memmem::find(b, b"urn:xmpp:delay").is_some()
            ));
        }
    };
    let now = now_ns();
    for s in &early {
        let sent = measure(s, &conn.own, now, &rec, &shared);
        slow(s, sent, now, "early");
    }
    // What the login's last read brought after the presence echo (e.g. offline messages, which a server
    // sends right behind it) is already in the parser: take it now, not when the next read arrives
    // (with ~2 messages per user per second that waited a few hundred ms and showed as latency).
    while let Ok(Some(ev)) = parser.next_event() {
        if let Event::Stanza(s) = ev {
            let sent = measure(&s, &conn.own, now, &rec, &shared);
            slow(&s, sent, now, "buffered");
        }
    }
    let mut wpos = 0usize;
    std::future::poll_fn(|cx: &mut Context<'_>| {
        loop {
            if shared.done.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            let mut progress = false;
            {
                let mut out = conn.out.borrow_mut();
                while wpos < out.len() {
                    match Pin::new(&mut stream).poll_write(cx, &out[wpos..]) {
                        Poll::Ready(Ok(n)) if n > 0 => {
                            wpos += n;
                            progress = true;
                        }
                        Poll::Ready(_) => return Poll::Ready(()),
                        Poll::Pending => break,
                    }
                }
                if wpos == out.len() && wpos > 0 {
                    out.clear();
                    wpos = 0;
                }
                if conn.close.get() && out.is_empty() {
                    // Dropped as a mobile client drops: TCP closes without a stream close.
                    if let Some(tr) = &trace {
                        tr.log(format_args!("closed user={}", conn.user));
                    }
                    return Poll::Ready(());
                }
                // TLS buffers records until flushed; plain TCP flushes at once.
                if let Poll::Ready(Err(_)) = Pin::new(&mut stream).poll_flush(cx) {
                    return Poll::Ready(());
                }
            }
            // One read buffer per harness thread: a non-buffered glommio read fills it synchronously.
            let mut rbuf = rbuf.borrow_mut();
            match Pin::new(&mut stream).poll_read(cx, &mut rbuf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => {
                    progress = true;
                    let now = now_ns();
                    let mut rest = &rbuf[..n];
                    while !rest.is_empty() {
                        let k = parser.feed(rest);
                        rest = &rest[k..];
                        while let Ok(Some(ev)) = parser.next_event() {
                            if let Event::Stanza(s) = ev {
                                let sent = measure(&s, &conn.own, now, &rec, &shared);
                                slow(&s, sent, now, "steady");
                            }
                        }
                        if k == 0 {
                            return Poll::Ready(());
                        }
                    }
                }
                Poll::Pending => {}
            }
            if !progress {
                *conn.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
    })
    .await;
    let _ = stream.close().await;
}

/// Live progress: an indicatif bar with current rates when stderr is a terminal, otherwise one plain line
/// per update (for logs and `perf/compare.sh`).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
}

impl Progress {
    pub(crate) fn new(len: u64, label: &str) -> Progress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "  {prefix} [{bar:30.cyan/blue}] {elapsed_precise} {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Progress {
            bar,
            label: label.to_string(),
        }
    }

    pub(crate) fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    pub(crate) fn update(&self, position: u64, message: String) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(position);
                bar.set_message(message);
            }
            None => eprintln!("  {}: {message}", self.label),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

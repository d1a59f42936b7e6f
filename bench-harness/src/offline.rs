//! The `offline` scenario: how fast the server keeps messages for offline accounts (XEP-0160) and hands
//! them out at the next login, which is the store's write and read path for messages.
//!
//! Three phases, each timed on its own: the senders (users `0 … --users - 1`) log in; they send their
//! `--messages` chat messages to the recipients (the `--recipients` users after them, who are offline),
//! `--batch` at a time; then the recipients log in with initial presence and read until each has what the
//! plan sent it ([`crate::offline_expected`]).
//!
//! The server keeps a message asynchronously (the store runs on worker threads), so "sent" is not
//! "stored". rjabberd keeps a message for an offline account with two store queries in a row (does
//! the account exist; then count and insert), on a first-in-first-out queue served by `pool_size`
//! workers. Each batch therefore ends with two vCard gets, the second sent when the first is answered:
//! both are answered from the same queue, so when the second answer is back every message of the batch
//! has been taken by a worker (with N workers, at most N - 1 may still be finishing). This also bounds
//! what a sender has in flight. The store phase ends when every sender's last batch is answered. A
//! message the server could not keep comes back as an error and is counted as refused, not as lost.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use glommio::LocalExecutorPoolBuilder;
use hdrhistogram::Histogram;
use rjabberd::proto::sasl::client::SaltedPassword;
use rjabberd::proto::xml::{Stanza, StreamParser};

use crate::client::{
    Progress, Stream, Summary, cpu_secs, element, histogram, login, now_ns, placement, send,
    tls_connector, tree_cpu_secs,
};
use crate::{RunArgs, offline_expected, offline_recipient};

/// What the store and retrieve phases measured.
pub struct OfflineResult {
    pub sent: u64,
    /// Answered with an error instead of kept (e.g. `max_messages` reached, the store queue full).
    pub refused: u64,
    /// Batch-closing IQs answered with an error or not at all (the sender's connection failed).
    pub barrier_errors: u64,
    pub store_secs: f64,
    pub store_server_cpu_s: Option<f64>,
    pub store_db_cpu_s: Option<f64>,
    pub recipients: usize,
    pub recipients_online: usize,
    pub recipient_login_failures: usize,
    pub received: u64,
    /// Messages beyond what the plan sent a recipient (duplicates).
    pub surplus: u64,
    /// From the recipients' first login to the last message received.
    pub retrieve_secs: f64,
    pub retrieve_server_cpu_s: Option<f64>,
    pub retrieve_db_cpu_s: Option<f64>,
    /// Per recipient: from the start of its login to the last of its messages.
    pub retrieve: Histogram<u64>,
}

impl OfflineResult {
    /// What was sent, neither refused nor received (duplicates do not make up for a loss).
    pub fn lost(&self) -> u64 {
        let delivered = self.received.saturating_sub(self.surplus);
        self.sent.saturating_sub(self.refused + delivered)
    }
}

#[derive(Default)]
struct State {
    senders_online: AtomicUsize,
    sender_failures: AtomicUsize,
    /// Harness threads whose senders have all logged in (or failed to).
    login_threads: AtomicUsize,
    go: AtomicBool,
    sent: AtomicU64,
    refused: AtomicU64,
    barrier_errors: AtomicU64,
    /// Senders whose last batch has been answered (or whose connection failed).
    senders_done: AtomicUsize,
    retrieve_go: AtomicBool,
    recipients_online: AtomicUsize,
    recipient_failures: AtomicUsize,
    /// Recipients that have all the plan sent them, or failed to log in.
    recipients_finished: AtomicUsize,
    received: AtomicU64,
    surplus: AtomicU64,
    last_receipt_ns: AtomicU64,
    done: AtomicBool,
}

struct Ctx {
    args: RunArgs,
    st: Arc<State>,
    connector: futures_rustls::TlsConnector,
    salted: RefCell<Option<SaltedPassword>>,
    sources: usize,
    login: RefCell<Histogram<u64>>,
    retrieve: RefCell<Histogram<u64>>,
}

/// Logs `user` in from one of the source addresses, giving up after 60 s as the other scenarios do.
async fn connect(ctx: &Ctx, user: usize) -> Result<(Stream, StreamParser, Vec<Stanza>), String> {
    let source = Ipv4Addr::new(127, 0, 0, 1 + (user % ctx.sources) as u8);
    let connect_ns = Cell::new(0);
    futures_lite::future::or(
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
    .await
}

async fn until(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

fn is_error(s: &Stanza) -> bool {
    s.type_().as_deref() == Some("error")
}

/// One sender: logs in (holding `permit`, one of `--login-concurrency`, until then), waits for the
/// store phase, sends its batches.
async fn sender<P>(ctx: Rc<Ctx>, i: usize, permit: P, logged_in: Rc<Cell<usize>>) {
    let st = &ctx.st;
    let t0 = Instant::now();
    let result = connect(&ctx, i).await;
    drop(permit);
    logged_in.set(logged_in.get() + 1);
    let (mut stream, mut p) = match result {
        Ok((stream, p, _)) => {
            let _ = ctx
                .login
                .borrow_mut()
                .record((t0.elapsed().as_nanos() as u64).max(1_000));
            st.senders_online.fetch_add(1, Ordering::SeqCst);
            (stream, p)
        }
        Err(e) => {
            if st.sender_failures.fetch_add(1, Ordering::SeqCst) < 5 {
                eprintln!("  login of sender {}{i} failed: {e}", ctx.args.prefix);
            }
            return;
        }
    };
    until(&st.go).await;
    let mut buf = vec![0u8; 16 * 1024];
    let batches = async {
        let (args, mut out, mut k) = (&ctx.args, String::new(), 0);
        while k < args.messages {
            let end = (k + args.batch.max(1)).min(args.messages);
            out.clear();
            for j in k..end {
                let to = offline_recipient(i, j, args.users, args.recipients);
                let _ = write!(
                    out,
                    "<message to='{}{to}@{}' type='chat'><body>{i}:{j}</body></message>",
                    args.prefix, args.host
                );
            }
            // Two store round trips, one after the other: a message costs two queries (does the
            // account exist; then keep it), the second queued only when the first is answered. The
            // first IQ is queued behind the batch's first queries, so its answer means those are done
            // and their second ones queued; the second IQ is queued behind those.
            for (n, step) in ["a", "b"].iter().enumerate() {
                let id = format!("b{end}{step}");
                let _ = write!(
                    out,
                    "<iq type='get' id='{id}'><vCard xmlns='vcard-temp'/></iq>"
                );
                send(&mut stream, out.as_bytes()).await?;
                out.clear();
                if n == 0 {
                    st.sent.fetch_add((end - k) as u64, Ordering::SeqCst);
                }
                loop {
                    let s = element(&mut stream, &mut p, &mut buf).await?;
                    match s.local_name() {
                        "message" if is_error(&s) => {
                            st.refused.fetch_add(1, Ordering::SeqCst);
                        }
                        "iq" if s.id().as_deref() == Some(id.as_str()) => {
                            if is_error(&s) {
                                st.barrier_errors.fetch_add(1, Ordering::SeqCst);
                            }
                            break;
                        }
                        _ => {}
                    }
                }
            }
            k = end;
        }
        Ok::<(), String>(())
    };
    if let Err(e) = batches.await {
        st.barrier_errors.fetch_add(1, Ordering::SeqCst);
        eprintln!("  sender {}{i}: {e}", ctx.args.prefix);
        st.senders_done.fetch_add(1, Ordering::SeqCst);
        return;
    }
    st.senders_done.fetch_add(1, Ordering::SeqCst);
    // With several store workers a refusal can come back after the batch's answer: stay to count it.
    futures_lite::future::or(
        async {
            while let Ok(s) = element(&mut stream, &mut p, &mut buf).await {
                if s.local_name() == "message" && is_error(&s) {
                    st.refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        },
        until(&st.done),
    )
    .await;
}

/// Recipient `r` (of the recipients): logs in (holding `permit` until then) and counts what it is handed.
async fn recipient<P>(ctx: Rc<Ctx>, r: usize, permit: P) {
    let (st, args) = (&ctx.st, &ctx.args);
    let user = args.users + r;
    let expected = offline_expected(r, args.users, args.messages, args.recipients) as u64;
    let t0 = Instant::now();
    let result = connect(&ctx, user).await;
    drop(permit);
    let (mut stream, mut p, early) = match result {
        Ok(x) => x,
        Err(e) => {
            if st.recipient_failures.fetch_add(1, Ordering::SeqCst) < 5 {
                eprintln!("  login of recipient {}{user} failed: {e}", args.prefix);
            }
            st.recipients_finished.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    st.recipients_online.fetch_add(1, Ordering::SeqCst);
    let got = Cell::new(0u64);
    let count = |s: &Stanza| {
        if s.local_name() != "message" || is_error(s) {
            return;
        }
        got.set(got.get() + 1);
        st.received.fetch_add(1, Ordering::SeqCst);
        st.last_receipt_ns.fetch_max(now_ns(), Ordering::SeqCst);
        if got.get() > expected {
            st.surplus.fetch_add(1, Ordering::SeqCst);
        } else if got.get() == expected {
            let _ = ctx
                .retrieve
                .borrow_mut()
                .record((t0.elapsed().as_nanos() as u64).max(1_000));
            st.recipients_finished.fetch_add(1, Ordering::SeqCst);
        }
    };
    if expected == 0 {
        st.recipients_finished.fetch_add(1, Ordering::SeqCst);
    }
    early.iter().for_each(count);
    let mut buf = vec![0u8; 16 * 1024];
    // Read on after the last expected message, to catch duplicates, until the run ends.
    futures_lite::future::or(
        async {
            while let Ok(s) = element(&mut stream, &mut p, &mut buf).await {
                count(&s);
            }
        },
        until(&st.done),
    )
    .await;
}

async fn thread_main(
    id: usize,
    threads: usize,
    args: RunArgs,
    st: Arc<State>,
) -> (Histogram<u64>, Histogram<u64>) {
    let sources = if args.sources == 0 {
        (args.users + args.recipients)
            .div_ceil(2_000)
            .clamp(16, 250)
    } else {
        args.sources
    };
    let ctx = Rc::new(Ctx {
        connector: tls_connector(&args).expect("TLS configuration checked before the run"),
        args: args.clone(),
        st: st.clone(),
        salted: RefCell::default(),
        sources,
        login: RefCell::new(histogram()),
        retrieve: RefCell::new(histogram()),
    });
    let in_flight = Rc::new(glommio::sync::Semaphore::new(
        args.login_concurrency.max(1) as u64
    ));
    let logged_in = Rc::new(Cell::new(0usize));
    let mine: Vec<usize> = (id..args.users).step_by(threads).collect();
    let mut tasks = Vec::new();
    for &i in &mine {
        let permit = in_flight.acquire_static_permit(1).await.expect("open");
        tasks
            .push(glommio::spawn_local(sender(ctx.clone(), i, permit, logged_in.clone())).detach());
    }
    while logged_in.get() < mine.len() {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    st.login_threads.fetch_add(1, Ordering::SeqCst);
    until(&st.retrieve_go).await;
    for r in (id..args.recipients).step_by(threads) {
        let permit = in_flight.acquire_static_permit(1).await.expect("open");
        tasks.push(glommio::spawn_local(recipient(ctx.clone(), r, permit)).detach());
    }
    until(&st.done).await;
    drop(tasks);
    let login = ctx.login.borrow().clone();
    let retrieve = ctx.retrieve.borrow().clone();
    (login, retrieve)
}

/// Runs the `offline` scenario (see the module's documentation).
pub fn run(args: &RunArgs) -> Result<Summary, String> {
    let st = Arc::new(State::default());
    let threads = args.threads.max(1);
    let cpu = || (crate::client::servers_cpu(args), tree_cpu_secs(args.db_pid));
    let delta = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
    let (server0, db0) = cpu();
    let harness0 = cpu_secs(None).unwrap_or(0.0);
    let started = Instant::now();
    let (pool_args, pool_st) = (args.clone(), st.clone());
    let handles = LocalExecutorPoolBuilder::new(placement(args))
        .name("rjabberd-bench")
        .on_all_shards(move || async move {
            let id = glommio::executor().id() - 1;
            thread_main(id % threads, threads, pool_args, pool_st).await
        })
        .map_err(|e| format!("cannot start the harness threads: {e}"))?;

    let progress = Progress::new(args.users as u64, "senders logging in");
    // Without a terminal, a plain line a second.
    let mut tick = Instant::now();
    while st.login_threads.load(Ordering::SeqCst) < threads {
        std::thread::sleep(Duration::from_millis(20));
        let (online, failed) = (
            st.senders_online.load(Ordering::SeqCst),
            st.sender_failures.load(Ordering::SeqCst),
        );
        if progress.is_bar() || tick.elapsed() >= Duration::from_secs(1) {
            tick = Instant::now();
            progress.update(
                (online + failed) as u64,
                format!("{online} / {} online, {failed} failed", args.users),
            );
        }
    }
    progress.finish();
    let login_secs = started.elapsed().as_secs_f64();
    let (server1, db1) = cpu();
    let harness_login = cpu_secs(None).unwrap_or(0.0) - harness0;
    let senders = st.senders_online.load(Ordering::SeqCst);

    // Store phase.
    let t = Instant::now();
    st.go.store(true, Ordering::SeqCst);
    let progress = Progress::new((senders * args.messages) as u64, "sending to offline users");
    let (mut moved, mut last_move) = (0, Instant::now());
    while st.senders_done.load(Ordering::SeqCst) < senders {
        std::thread::sleep(Duration::from_millis(2));
        let sent = st.sent.load(Ordering::SeqCst);
        if sent != moved {
            (moved, last_move) = (sent, Instant::now());
        } else if last_move.elapsed() > Duration::from_secs(30) {
            eprintln!("  the store phase made no progress for 30 s: giving up on it");
            break;
        }
        if progress.is_bar() || tick.elapsed() >= Duration::from_secs(1) {
            tick = Instant::now();
            progress.update(sent, format!("{sent} sent"));
        }
    }
    progress.finish();
    let store_secs = t.elapsed().as_secs_f64();
    let (server2, db2) = cpu();

    // Retrieve phase.
    let go_ns = now_ns();
    st.retrieve_go.store(true, Ordering::SeqCst);
    let progress = Progress::new(args.recipients as u64, "recipients logging in");
    let (mut moved, mut last_move) = (0, Instant::now());
    while st.recipients_finished.load(Ordering::SeqCst) < args.recipients {
        std::thread::sleep(Duration::from_millis(2));
        let received = st.received.load(Ordering::SeqCst);
        let finished = st.recipients_finished.load(Ordering::SeqCst);
        if received + finished as u64 != moved {
            (moved, last_move) = (received + finished as u64, Instant::now());
        } else if last_move.elapsed() > Duration::from_secs(10) {
            eprintln!("  no message for 10 s with recipients still waiting: messages lost");
            break;
        }
        if progress.is_bar() || tick.elapsed() >= Duration::from_secs(1) {
            tick = Instant::now();
            progress.update(finished as u64, format!("{received} messages received"));
        }
    }
    progress.finish();
    let (server3, db3) = cpu();
    let last = st.last_receipt_ns.load(Ordering::SeqCst);
    let retrieve_secs = if last > go_ns {
        (last - go_ns) as f64 / 1e9
    } else {
        (now_ns() - go_ns) as f64 / 1e9
    };
    st.done.store(true, Ordering::SeqCst);
    let results: Vec<(Histogram<u64>, Histogram<u64>)> = handles
        .join_all()
        .into_iter()
        .map(|r| r.map_err(|e| format!("a harness thread failed: {e}")))
        .collect::<Result<_, _>>()?;
    let (mut login_h, mut retrieve) = (histogram(), histogram());
    for (l, r) in &results {
        login_h.add(l).expect("same bounds");
        retrieve.add(r).expect("same bounds");
    }
    let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
    Ok(Summary {
        login: login_h,
        relogin: histogram(),
        relogins: 0,
        relogin_failures: 0,
        login_secs,
        online: senders,
        login_failures: st.sender_failures.load(Ordering::SeqCst),
        steps: Vec::new(),
        server_cpu_login_s: delta(server0, server1),
        db_cpu_login_s: delta(db0, db1),
        harness_cpu_login_s: harness_login,
        rss_before_kib: None,
        rss_after_kib: None,
        offline: Some(OfflineResult {
            sent: load(&st.sent),
            refused: load(&st.refused),
            barrier_errors: load(&st.barrier_errors),
            store_secs,
            store_server_cpu_s: delta(server1, server2),
            store_db_cpu_s: delta(db1, db2),
            recipients: args.recipients,
            recipients_online: st.recipients_online.load(Ordering::SeqCst),
            recipient_login_failures: st.recipient_failures.load(Ordering::SeqCst),
            received: load(&st.received),
            surplus: load(&st.surplus),
            retrieve_secs,
            retrieve_server_cpu_s: delta(server2, server3),
            retrieve_db_cpu_s: delta(db2, db3),
            retrieve,
        }),
    })
}

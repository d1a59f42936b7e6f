//! The forwarding path allocates nothing per stanza: a one-to-one message from a session on one shard to
//! a session homed on the other goes from the sender's read bytes through the parser, the c2s machine,
//! the router, the mesh and the recipient's session lookup into its output buffer without a heap
//! allocation; the only allocations are read-buffer refills, one 16 KiB chunk per 16 KiB of input. The server runs in this process with 2 shards; a counting global allocator counts only on
//! shard threads while they are inside that path ([`rjabberd::shard::HOT_PATH`]), so socket and TLS work
//! and the test's own clients are not counted. Plain TCP (no TLS) keeps rustls out of the picture.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::Client;
use rjabberd::config::Config;
use rjabberd::placement::home;
use rjabberd::probe::HOT_PATH;
use rjabberd::proto::sasl::Credentials;
use rjabberd::shard::pool::Server;
use rjabberd::storage::{Accounts, UserDb};

struct Counting;
static HOT_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Sizes of the counted allocations (the first 256), to say what they were when the count is not zero.
static SIZES: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

fn note(size: usize) {
    let i = HOT_ALLOCATIONS.fetch_add(1, Ordering::Relaxed) as usize;
    if i < SIZES.len() {
        SIZES[i].store(size as u64, Ordering::Relaxed);
    }
}

fn on_hot_path() -> bool {
    HOT_PATH.try_with(|h| h.get()).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_hot_path() {
            note(layout.size());
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_hot_path() {
            note(new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn login_plain(addr: std::net::SocketAddr, user: &str, resource: &str) -> Client {
    let mut c = Client::connect(addr, std::path::PathBuf::new());
    c.open("localhost");
    assert_eq!(c.sasl("PLAIN", user, "pw", None).name, "success");
    c.restart("localhost");
    assert_eq!(c.bind(Some(resource)).attr("type"), Some("result"));
    c
}

/// Sends `n` messages in bursts of 50 and reads them; returns the bytes sent.
fn exchange(from: &mut Client, to: &mut Client, to_jid: &str, n: usize, tag: &str) -> usize {
    let mut sent = 0;
    for i in 0..n {
        let m = format!(
            "<message to='{to_jid}' type='chat' id='{tag}{i}'><body>message number {i} of the run</body></message>"
        );
        sent += m.len();
        from.send(&m);
        if i % 50 == 49 {
            for j in i - 49..=i {
                let m = to.el();
                assert_eq!(m.attr("id"), Some(format!("{tag}{j}").as_str()), "{m}");
            }
        }
    }
    sent
}

#[test]
fn a_one_to_one_message_between_shards_allocates_nothing_per_stanza() {
    let dir = std::env::temp_dir().join(format!("rjabberd-fwd-alloc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "shards = 2\ndata_dir = \"{}\"\nlog_level = \"warn\"\n[[host]]\nname = \"localhost\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n[auth]\nallow_plaintext = true\n",
        dir.join("data").display()
    );
    let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
    // Two accounts homed on different shards.
    let sender = "sender";
    let receiver = (0..100)
        .map(|i| format!("receiver{i}"))
        .find(|r| home(&format!("{r}@localhost"), 2).shard != home("sender@localhost", 2).shard)
        .unwrap();
    let db = UserDb::open(&config.data_dir).unwrap();
    let creds = Credentials::from_password("pw", b"0123456789abcdef", 4096).unwrap();
    db.add("localhost", sender, &creds).unwrap();
    db.add("localhost", &receiver, &creds).unwrap();
    drop(db);

    let shutdown = Arc::new(AtomicBool::new(false));
    let server = Server::start(config, shutdown.clone()).unwrap();
    let addr = server.shared.bound[0].0;
    let mut a = login_plain(addr, sender, "out");
    let mut b = login_plain(addr, &receiver, "in");
    let to = format!("{receiver}@localhost/in");

    // Warm-up: buffers and queues grow to the traffic's size — including a backlog far larger than the
    // measured run's bursts of 50, so that a slow reader under a loaded machine does not make the
    // recipient's output buffer grow (an amortised growth, not a per-stanza allocation) inside the
    // counted window.
    for i in 0..1000 {
        a.send(&format!(
            "<message to='{to}' type='chat' id='b{i}'><body>message number {i} of the run</body></message>"
        ));
    }
    for i in 0..1000 {
        assert_eq!(b.el().attr("id"), Some(format!("b{i}").as_str()));
    }
    exchange(&mut a, &mut b, &to, 500, "w");
    HOT_ALLOCATIONS.store(0, Ordering::SeqCst);
    let n = 5000;
    let bytes_sent = exchange(&mut a, &mut b, &to, n, "m");
    let allocations = HOT_ALLOCATIONS.load(Ordering::SeqCst);
    let sizes: Vec<u64> = SIZES
        .iter()
        .take(allocations as usize)
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "{allocations} allocations on the forwarding path over {n} messages between shards; sizes {sizes:?}"
    );
    // What may allocate is the sender's read buffer being refilled: a new 16 KiB chunk when the old one
    // is still shared with stanzas in flight, plus the `bytes` crate's shared header on its first split.
    // That is per 16 KiB of input, not per stanza; anything else would be a per-stanza allocation.
    // Refills are power-of-two chunks from 1 KiB to 16 KiB (the buffer grows by doubling).
    let chunks = sizes
        .iter()
        .filter(|s| s.is_power_of_two() && (1024..=16 * 1024).contains(*s))
        .count();
    let others = sizes.len() - chunks;
    assert!(
        allocations as usize <= SIZES.len(),
        "{allocations} allocations over {n} messages"
    );
    // Besides the refills' headers, a buffer may reach a new high-water mark once or twice when a loaded
    // machine lets a reader fall behind (a parser chunk holding a stanza that straddles two reads, an
    // output buffer): amortised growth, bounded per connection, never per stanza.
    assert!(
        others <= chunks + 2,
        "allocations other than read-buffer refills: {sizes:?}"
    );
    assert!(
        chunks <= bytes_sent / (16 * 1024) + 1,
        "more refills than 16 KiB chunks of input: {chunks} for {bytes_sent} bytes"
    );
    assert!(
        (allocations as f64) / (n as f64) < 0.02,
        "{allocations} allocations over {n} messages"
    );

    shutdown.store(true, Ordering::SeqCst);
    drop((a, b));
    std::thread::sleep(Duration::from_millis(50));
    server.join();
    let _ = std::fs::remove_dir_all(&dir);
}

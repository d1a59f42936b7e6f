//! An in-memory shard for testing the services above the state (the router, the session manager, the
//! modules) without sockets: one shard with the server's real wiring, modules and store, on a glommio
//! executor of the test's own. Sessions are bound to bare sinks; a test routes stanzas as a session, a
//! component or the server would, and reads what each sink was given. A routing rule costs a function
//! call to test, not a server start.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::pool::{WIRING, shared_state};
use super::{ServerShared, Shard};
use crate::config::Config;
use crate::mesh::{Peers, ShardMsg};
use crate::proto::jid::Jid;
use crate::proto::xml::{
    Element, Event, Limits, Stanza, StreamParser, TargetStream, parse_element,
};
use crate::router::{self, Origin};
use crate::sink::Sink;
use crate::sm::session::{self, SessionRef};
use crate::storage::Accounts;

pub(crate) struct Harness {
    pub shard: Rc<Shard>,
    dir: std::path::PathBuf,
}

/// A bound session of the harness and its output.
pub(crate) struct TestSession {
    pub session: SessionRef,
    pub sink: Rc<Sink>,
}

impl Harness {
    /// One shard serving `localhost` and `example.net` with the default modules (plus `extra`
    /// configuration), a fresh store, and the accounts `users` (bare JIDs).
    pub(crate) fn new(extra: &str, users: &[&str]) -> Harness {
        Harness::with_mesh(extra, users, 1, None)
    }

    /// Shard 0 of `shards`, whose mesh to the others is `mesh` (a test's own channels).
    pub(crate) fn with_mesh(
        extra: &str,
        users: &[&str],
        shards: usize,
        mesh: Option<Box<dyn Peers<ShardMsg>>>,
    ) -> Harness {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rjabberd-harness-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let text = format!(
            "data_dir = \"{}\"\n[[host]]\nname = \"localhost\"\n[[host]]\nname = \"example.net\"\n{extra}",
            dir.join("data").display()
        );
        let config = Config::parse(&text, std::path::Path::new("harness.toml"))
            .expect("a valid harness configuration");
        let shared: Arc<ServerShared> = Arc::new(
            shared_state(config, Arc::new(AtomicBool::new(false)), shards, Vec::new())
                .expect("the harness's server state"),
        );
        let db = crate::storage::UserDb::open(&shared.config.data_dir).expect("store");
        for u in users {
            let (local, host) = u.split_once('@').expect("a bare JID");
            let creds =
                crate::proto::sasl::Credentials::from_password("pw", b"0123456789abcdef", 4096)
                    .expect("credentials");
            db.add(host, local, &creds).expect("a new account");
        }
        let plan = crate::modules::options::plan_of(&shared.config).expect("a valid module plan");
        let shard = Rc::new(Shard::new(0, shared, mesh, WIRING));
        super::pool::apply_plan(&shard, &plan).expect("the modules start");
        Harness { shard, dir }
    }

    /// Binds `full` (a full JID) to a new sink and sends initial presence when `available`.
    pub(crate) fn login(&self, full: &str, available: Option<i8>) -> TestSession {
        let jid = Jid::parse(full).expect("a full JID");
        let sink = Rc::new(Sink::new(1 << 20, TargetStream::CLIENT));
        let id = self.shard.sinks().borrow_mut().insert(sink.clone());
        let (_, s) = session::bind(
            &self.shard,
            &jid.bare(),
            jid.resource().map(str::to_string),
            id,
        )
        .expect("bound");
        let t = TestSession { session: s, sink };
        if let Some(priority) = available {
            self.send(
                &t,
                &format!("<presence><priority>{priority}</priority></presence>"),
            );
        }
        t
    }

    /// Routes `xml` (in `jabber:client`) as the session sent it.
    pub(crate) fn send(&self, from: &TestSession, xml: &str) {
        let stanza = client_stanza(xml);
        router::route(
            &self.shard,
            Origin::Session(&from.session),
            stanza,
            from.session.full.clone(),
        );
    }

    /// Routes `xml` as the server (a module) generated it, from `from`.
    pub(crate) fn send_as_server(&self, from: &str, xml: &str) {
        router::route(&self.shard, Origin::Server, client_stanza(xml), from.into());
    }

    /// Lets the shard's tasks run (store lookups, IQ handlers) for `ms` milliseconds.
    pub(crate) async fn settle(&self, ms: u64) {
        glommio::timer::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestSession {
    /// Everything written to this session since the last call, as elements.
    pub(crate) fn received(&self) -> Vec<Element> {
        self.sink.write_queued();
        let bytes = std::mem::take(&mut *self.sink.out()).to_vec();
        let mut parser = StreamParser::new(Limits::default());
        let mut input = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>".to_vec();
        input.extend_from_slice(&bytes);
        assert_eq!(
            parser.feed(&input),
            input.len(),
            "the output fits the parser"
        );
        let mut out = Vec::new();
        while let Some(event) = parser.next_event().expect("well-formed output") {
            if let Event::Stanza(s) = event {
                out.push(s.to_element());
            }
        }
        out
    }
}

fn client_stanza(xml: &str) -> Stanza {
    let el = parse_element(xml.as_bytes(), &Limits::default()).expect("test XML parses");
    let mut el = el.to_element();
    if el.attr("xmlns").is_none() {
        el.set_attr("xmlns", "jabber:client");
    }
    parse_element(el.to_xml_string().as_bytes(), &Limits::default()).expect("re-parses")
}

/// Runs `f` on a fresh glommio executor (one shard's worth of reactor).
pub(crate) fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("an executor starts (io_uring and 512 KiB of locked memory)")
        .join()
        .expect("the test body does not panic");
}

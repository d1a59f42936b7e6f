//! Cluster links over glommio TCP (docs/cluster-protocol.md §3, §4): the sockets under the sans-IO
//! machines of [`crate::proto::cluster`]. [`OutboundLink`] is one sending shard's stream to one peer
//! host: frames are queued at once (never awaited, so a mesh consumer can queue without blocking), and a
//! task connects, authenticates, writes, reads acknowledgements, ticks, and reconnects with the stream
//! resumed, for as long as the link lives. [`serve_inbound`] drives one accepted connection: the
//! handshake as acceptor, then data frames handed to the caller in order, acknowledged as §3.4 says.
//! With `cluster.tls` every connection first runs TLS (the rustls state of `super::tls`), and the
//! frames flow through it; without, bytes go between the socket and the frame reader directly. What
//! the frames mean (routing, sessions, membership) is above this file.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::{LocalReceiver, LocalSender, new_bounded};
use glommio::net::TcpStream;

use super::tls::{ClusterTls, TlsConn};
use crate::proto::cluster::handshake::{
    Acceptor, HANDSHAKE_TIMEOUT, Identity, Initiator, Peer, Refusal, Secret, Step,
};
use crate::proto::cluster::link::{Full, Inbound, MAX_QUEUED_BYTES, Outbound, Ticks};
use crate::proto::cluster::wire::{
    CloseReason, FEATURE_TLS_EXPORTER, Frame, FrameReader, RawFrame, WireError, kind,
};

/// What every link of this host shares.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub me: Identity,
    pub secret: Secret,
    pub tick: Duration,
    /// Frames a link may hold (§3.8).
    pub max_frames: usize,
    /// The address outbound links connect from: the listener's, when it names one, so that a peer
    /// (and a firewall between hosts) sees each host at the one address the membership table gives.
    pub source: Option<std::net::IpAddr>,
    /// TLS on every link (§4), when `cluster.tls` is on: one set of configurations for the host.
    pub tls: Option<Arc<ClusterTls>>,
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("the OS random source works");
    n
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEnd {
    /// The handshake or the peer refused (the reason and its words).
    Refused(CloseReason, String),
    /// The peer closed (`CLOSE` with its reason) or the connection dropped.
    Closed(String),
    /// A malformed frame or a broken rule.
    Protocol(String),
    /// Silence for four ticks.
    Silent,
    /// TLS failed or was not spoken (§4): a certificate from another CA or naming another node, or
    /// a peer without TLS when this host runs it (or the reverse).
    Tls(String),
}

impl std::fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkEnd::Refused(r, why) => write!(f, "refused ({}): {why}", r.as_str()),
            LinkEnd::Closed(why) => write!(f, "closed: {why}"),
            LinkEnd::Protocol(why) => write!(f, "protocol error: {why}"),
            LinkEnd::Silent => f.write_str("silent for four ticks"),
            LinkEnd::Tls(why) => write!(f, "TLS: {why}"),
        }
    }
}

impl From<Refusal> for LinkEnd {
    fn from(r: Refusal) -> LinkEnd {
        LinkEnd::Refused(r.reason, r.detail)
    }
}

impl From<WireError> for LinkEnd {
    fn from(e: WireError) -> LinkEnd {
        LinkEnd::Protocol(e.to_string())
    }
}

/// How much one socket read takes at most; one buffer of it per connection.
const READ_BUFFER: usize = 16 * 1024;

/// A link's socket, with its TLS state when the cluster runs TLS.
struct Conn {
    stream: TcpStream,
    tls: Option<Box<TlsConn>>,
}

/// Whether bytes a peer sent open a TLS record (handshake or alert, version 3.x): what a host without
/// TLS reads from one with it. No frame starts so: its length would be over the 16 MiB bound.
fn speaks_tls(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && matches!(bytes[0], 0x15 | 0x16) && bytes[1] == 0x03
}

/// Reads (through `buf`, the connection's read buffer) until a whole frame is there, or the deadline
/// passes (`Ok(None)`).
async fn read_frame(
    conn: &mut Conn,
    reader: &mut FrameReader,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<Option<RawFrame>, LinkEnd> {
    loop {
        if let Some(f) = reader.next_frame()? {
            return Ok(Some(f));
        }
        if conn.tls.as_ref().is_some_and(|t| t.peer_closed()) {
            return Err(LinkEnd::Closed("the peer ended TLS".into()));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(None);
        }
        let stream = &mut conn.stream;
        let read = async { Some(stream.read(buf).await) }
            .or(async {
                glommio::timer::sleep(wait).await;
                None
            })
            .await;
        match read {
            None => return Ok(None),
            Some(Ok(0)) => return Err(LinkEnd::Closed("the connection ended".into())),
            Some(Ok(n)) => match &mut conn.tls {
                None => reader.feed(&buf[..n]),
                Some(tls) => {
                    // Everything decrypted goes to the reader now: nothing waits inside rustls
                    // while this future may be dropped for a kick or a tick.
                    tls.feed(&buf[..n], |plain| reader.feed(plain))
                        .map_err(LinkEnd::Tls)?;
                }
            },
            Some(Err(e)) => return Err(LinkEnd::Closed(e.to_string())),
        }
    }
}

/// How much plaintext one TLS write seals before writing it, so that a large resend does not hold
/// all of its ciphertext at once.
const SEAL_CHUNK: usize = 256 * 1024;

async fn write(conn: &mut Conn, bytes: &[u8]) -> Result<(), LinkEnd> {
    match &mut conn.tls {
        None => conn
            .stream
            .write_all(bytes)
            .await
            .map_err(|e| LinkEnd::Closed(e.to_string())),
        Some(tls) => {
            for chunk in bytes.chunks(SEAL_CHUNK) {
                tls.seal(chunk);
                flush_tls(&mut conn.stream, tls).await?;
            }
            Ok(())
        }
    }
}

async fn flush_tls(stream: &mut TcpStream, tls: &mut TlsConn) -> Result<(), LinkEnd> {
    let out = tls.output();
    if out.is_empty() {
        return Ok(());
    }
    let written = stream.write_all(out).await;
    tls.written();
    written.map_err(|e| LinkEnd::Closed(e.to_string()))
}

/// Runs the TLS handshake of `conn` until `deadline`; returns the §4.3 exporter. Application bytes
/// that arrive with the peer's last handshake flight go to `reader`.
async fn tls_handshake(
    conn: &mut Conn,
    reader: &mut FrameReader,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<[u8; 32], LinkEnd> {
    let Conn { stream, tls } = conn;
    let tls = tls.as_mut().expect("a TLS connection");
    let mut first = true;
    loop {
        flush_tls(stream, tls).await?;
        if !tls.is_handshaking() {
            return tls
                .exporter()
                .ok_or_else(|| LinkEnd::Tls("no exporter after the handshake".into()));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let read = async { Some(stream.read(buf).await) }
            .or(async {
                glommio::timer::sleep(wait).await;
                None
            })
            .await;
        let n = match read {
            None => return Err(LinkEnd::Tls("no TLS handshake within 5 s".into())),
            Some(Ok(0)) => {
                return Err(LinkEnd::Tls(
                    "the connection ended in the TLS handshake (is cluster.tls off at the peer, or \
                     did it refuse this certificate?)"
                        .into(),
                ));
            }
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(LinkEnd::Closed(e.to_string())),
        };
        if first && !speaks_tls(&buf[..n]) {
            if tls.is_server() {
                // A sender without TLS reads frames: one `CLOSE` in the clear tells it why.
                let mut close = BytesMut::new();
                Frame::Close {
                    reason: CloseReason::Protocol,
                    text: "this host runs its cluster links over TLS (cluster.tls = true)".into(),
                }
                .encode(&mut close);
                let _ = stream.write_all(&close).await;
            }
            return Err(LinkEnd::Tls(
                "the peer does not speak TLS (cluster.tls is off there, on here)".into(),
            ));
        }
        first = false;
        if let Err(e) = tls.feed(&buf[..n], |plain| reader.feed(plain)) {
            // The alert saying why goes to the peer, so that its log says it too.
            let _ = flush_tls(stream, tls).await;
            return Err(LinkEnd::Tls(e));
        }
    }
}

/// Logs a link refused or failed at warn, at most once per 10 s per shard with the count of those
/// left out: a misconfigured peer retries every 2 s from each of its shards.
fn warn_limited(what: std::fmt::Arguments<'_>) {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
        static LEFT_OUT: Cell<u64> = const { Cell::new(0) };
    }
    let now = Instant::now();
    let due = LAST
        .get()
        .is_none_or(|t| now >= t + Duration::from_secs(10));
    if !due {
        LEFT_OUT.set(LEFT_OUT.get() + 1);
        return;
    }
    LAST.set(Some(now));
    match LEFT_OUT.replace(0) {
        0 => log::warn!("cluster: {what}"),
        n => log::warn!("cluster: {what} ({n} more refused links not logged)"),
    }
}

/// The shared state of one outbound link.
struct OutboundState {
    stream: Outbound,
    /// The receiver as last authenticated: a reconnect to the same incarnation resumes the stream.
    peer: Option<(String, u64)>,
    /// Frames abandoned when the receiver's incarnation changed, for the owner to re-route (§9.3).
    abandoned: Vec<Frame>,
    up: bool,
    closed: bool,
    last_end: Option<LinkEnd>,
}

/// One sending shard's stream to one peer host, and the task that carries it.
pub struct OutboundLink {
    state: Rc<RefCell<OutboundState>>,
    kick: LocalSender<()>,
}

impl OutboundLink {
    /// Starts the link task: it connects to `addr` (shard `to_shard` there), expecting `expected` when
    /// known, and keeps reconnecting with a backoff until [`OutboundLink::close`].
    pub fn start(
        settings: Rc<LinkSettings>,
        from_shard: u16,
        addr: SocketAddr,
        to_shard: u16,
        expected: Option<(String, u64)>,
    ) -> OutboundLink {
        let state = Rc::new(RefCell::new(OutboundState {
            stream: Outbound::new(settings.max_frames, MAX_QUEUED_BYTES),
            peer: expected,
            abandoned: Vec::new(),
            up: false,
            closed: false,
            last_end: None,
        }));
        let (kick, kicked) = new_bounded(1);
        glommio::spawn_local(run_outbound(
            settings,
            from_shard,
            addr,
            to_shard,
            state.clone(),
            kicked,
        ))
        .detach();
        OutboundLink { state, kick }
    }

    /// Queues a data frame without waiting; `Full` when the link holds its bound (§3.8).
    pub fn send(&self, frame: &Frame) -> Result<(), Full> {
        self.state.borrow_mut().stream.push(frame)?;
        // A kick already pending is as good as this one.
        let _ = self.kick.try_send(());
        Ok(())
    }

    /// Whether the link is authenticated and connected now.
    pub fn is_up(&self) -> bool {
        self.state.borrow().up
    }

    /// The receiver as last authenticated.
    pub fn peer(&self) -> Option<(String, u64)> {
        self.state.borrow().peer.clone()
    }

    /// Data frames sent and acknowledged over the stream's life.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.borrow();
        (s.stream.sent(), s.stream.acked())
    }

    /// Why the last connection ended.
    pub fn last_end(&self) -> Option<LinkEnd> {
        self.state.borrow().last_end.clone()
    }

    /// Frames the link gave up on because the receiver restarted (§9.3).
    pub fn take_abandoned(&self) -> Vec<Frame> {
        std::mem::take(&mut self.state.borrow_mut().abandoned)
    }

    /// Ends the link and hands back every data frame it still held, unsent or unacknowledged, with those
    /// it had already given up on: the receiver left the membership, and the owner routes them again
    /// under the new view (§9.3).
    pub fn close_and_take(&self) -> Vec<Frame> {
        let mut s = self.state.borrow_mut();
        s.closed = true;
        let mut out = std::mem::take(&mut s.abandoned);
        out.extend(s.stream.abandon().into_iter().filter_map(Result::ok));
        drop(s);
        let _ = self.kick.try_send(());
        out
    }

    /// Ends the link: the task writes what it can, closes with `normal`, and stops.
    pub fn close(&self) {
        self.state.borrow_mut().closed = true;
        let _ = self.kick.try_send(());
    }
}

impl Drop for OutboundLink {
    fn drop(&mut self) {
        self.close();
    }
}

async fn run_outbound(
    settings: Rc<LinkSettings>,
    from_shard: u16,
    addr: SocketAddr,
    to_shard: u16,
    state: Rc<RefCell<OutboundState>>,
    kicked: LocalReceiver<()>,
) {
    let kicked = Rc::new(kicked);
    let mut backoff = Duration::from_millis(50);
    loop {
        if state.borrow().closed {
            return;
        }
        let ended = connection(&settings, from_shard, addr, to_shard, &state, &kicked).await;
        {
            let mut s = state.borrow_mut();
            s.up = false;
            match ended {
                Ok(()) => return,
                Err(e) => {
                    if matches!(e, LinkEnd::Tls(_)) {
                        warn_limited(format_args!("link to {addr} shard {to_shard}: {e}"));
                    } else {
                        log::debug!("cluster link to {addr} shard {to_shard}: {e}");
                    }
                    s.last_end = Some(e);
                }
            }
            if s.closed {
                return;
            }
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Connects to `addr`, from `source` when it is given and of the same family. glommio 0.9 cannot bind
/// before its own connect, so a bound socket connects without blocking and is polled until the
/// handshake with the kernel ends: links connect rarely (at start and after a failure), so a few
/// timer wake-ups there cost nothing on the path of a stanza.
async fn connect_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
) -> std::io::Result<TcpStream> {
    let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) else {
        return TcpStream::connect(addr).await.map_err(std::io::Error::from);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut wait = Duration::from_millis(1);
            loop {
                if let Some(e) = socket.take_error()? {
                    return Err(e);
                }
                if socket.peer_addr().is_ok() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                glommio::timer::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(100));
            }
        }
        Err(e) => return Err(e),
    }
    // Back to blocking, as glommio makes its own sockets (io_uring does the waiting).
    socket.set_nonblocking(false)?;
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor is a connected TCP socket that `into_raw_fd` gave up, owned by no one
    // else from here on (glommio's socket2 is another version of the crate, hence the raw fd).
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// One connection of an outbound link, from connect to its end; `Ok` when the link was closed by
/// its owner.
async fn connection(
    settings: &LinkSettings,
    from_shard: u16,
    addr: SocketAddr,
    to_shard: u16,
    state: &Rc<RefCell<OutboundState>>,
    kicked: &Rc<LocalReceiver<()>>,
) -> Result<(), LinkEnd> {
    let stream = connect_from(settings.source, addr)
        .await
        .map_err(|e| LinkEnd::Closed(format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut stream = Conn { stream, tls: None };
    let expected = state.borrow().peer.clone();
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let exporter = match &settings.tls {
        None => None,
        Some(tls) => {
            // The receiver's certificate must name the node this link is for (§4): a link made
            // only from an address has nothing to check it against.
            let Some((node, _)) = &expected else {
                return Err(LinkEnd::Tls(format!(
                    "{addr}: the receiver's node is unknown, so its certificate cannot be checked"
                )));
            };
            stream.tls = Some(Box::new(tls.connect(node).map_err(LinkEnd::Tls)?));
            Some(tls_handshake(&mut stream, &mut reader, &mut buf, deadline).await?)
        }
    };
    let (mut hs, hello) = Initiator::start(
        &settings.me,
        settings.secret.clone(),
        from_shard,
        to_shard,
        expected.clone(),
        nonce(),
        exporter,
    );
    write(&mut stream, &hello).await?;
    let peer: Peer = loop {
        let raw = match read_frame(&mut stream, &mut reader, &mut buf, deadline).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return Err(LinkEnd::Closed("no handshake within 5 s".into())),
            Err(LinkEnd::Protocol(_)) if stream.tls.is_none() && speaks_tls(&buf) => {
                return Err(LinkEnd::Tls(
                    "the receiver speaks TLS (cluster.tls is on there, off here)".into(),
                ));
            }
            Err(e) => return Err(e),
        };
        match hs.on_frame(&raw) {
            Ok(Step::Send(out)) => write(&mut stream, &out).await?,
            Ok(Step::Up(out, peer)) => {
                if let Some(why) = tls_mismatch(&stream, &peer, expected.as_ref()) {
                    let _ = write(&mut stream, &refusal_close(&why)).await;
                    return Err(LinkEnd::Refused(CloseReason::Auth, why));
                }
                write(&mut stream, &out).await?;
                break peer;
            }
            Err(r) => {
                let _ = write(&mut stream, &r.close).await;
                return Err(r.into());
            }
        }
    };
    {
        let mut s = state.borrow_mut();
        match &expected {
            // The first contact (through a seed): nothing was written to anyone yet, so what is
            // queued is simply sent; the new stream starts at 0.
            None => s
                .stream
                .resume(0)
                .map_err(|e| LinkEnd::Protocol(e.to_string()))?,
            Some((n, i)) if *n == peer.node && *i == peer.incarnation => s
                .stream
                .resume(peer.received)
                .map_err(|e| LinkEnd::Protocol(e.to_string()))?,
            Some(_) => {
                // Another incarnation answers: what the old one did not acknowledge goes back to
                // the owner to re-route (§9.3), and the stream starts over.
                let old = s.stream.abandon();
                s.abandoned.extend(old.into_iter().filter_map(Result::ok));
                s.stream = Outbound::new(settings.max_frames, MAX_QUEUED_BYTES);
            }
        }
        s.peer = Some((peer.node.clone(), peer.incarnation));
        s.up = true;
    }
    let mut ticks = Ticks::new(settings.tick, Instant::now());
    loop {
        // Write what is pending.
        let mut out = BytesMut::new();
        let closing = {
            let mut s = state.borrow_mut();
            s.stream.write_pending(&mut out);
            s.closed
        };
        let now = Instant::now();
        if out.is_empty() && ticks.tick_due(now) {
            Frame::Tick.encode(&mut out);
        }
        if closing {
            Frame::Close {
                reason: CloseReason::Normal,
                text: String::new(),
            }
            .encode(&mut out);
        }
        if !out.is_empty() {
            write(&mut stream, &out).await?;
            ticks.wrote(Instant::now());
        }
        if closing {
            if let Some(tls) = &mut stream.tls {
                tls.close();
                let _ = flush_tls(&mut stream.stream, tls).await;
            }
            let _ = stream.stream.close().await;
            return Ok(());
        }
        if ticks.silent(Instant::now()) {
            let mut close = BytesMut::new();
            Frame::Close {
                reason: CloseReason::Timeout,
                text: "silent for four ticks".into(),
            }
            .encode(&mut close);
            let _ = write(&mut stream, &close).await;
            return Err(LinkEnd::Silent);
        }
        // Wait for a frame from the receiver, a kick (something to write), or the next tick.
        let deadline = ticks.next_deadline();
        let kicked = kicked.clone();
        let got = async { Some(read_frame(&mut stream, &mut reader, &mut buf, deadline).await) }
            .or(async move {
                kicked.recv().await;
                None
            })
            .await;
        let Some(read) = got else { continue };
        let Some(raw) = read? else { continue };
        ticks.read(Instant::now());
        match Frame::decode(&raw)? {
            Frame::Ack(n) => state
                .borrow_mut()
                .stream
                .on_ack(n)
                .map_err(|e| LinkEnd::Protocol(e.to_string()))?,
            Frame::Tick => {}
            Frame::Close { reason, text } => {
                return Err(LinkEnd::Closed(format!("{}: {text}", reason.as_str())));
            }
            other => {
                return Err(LinkEnd::Protocol(format!(
                    "a receiver sent frame 0x{:02x}",
                    other.kind()
                )));
            }
        }
    }
}

/// Why a link over TLS may not go up although its MACs verified: the exporter is not in the
/// transcript (a peer that did not offer it), or the receiver is not the node the sender's TLS
/// checked the certificate of.
fn tls_mismatch(conn: &Conn, peer: &Peer, expected: Option<&(String, u64)>) -> Option<String> {
    conn.tls.as_ref()?;
    if peer.features & FEATURE_TLS_EXPORTER == 0 {
        return Some("the peer did not bind the handshake to TLS (feature tls-exporter)".into());
    }
    match expected {
        Some((node, _)) if *node != peer.node => Some(format!(
            "node {} answered for {node}, whose certificate it has",
            peer.node
        )),
        _ => None,
    }
}

fn refusal_close(why: &str) -> BytesMut {
    let mut close = BytesMut::new();
    Frame::Close {
        reason: CloseReason::Auth,
        text: why.chars().take(256).collect(),
    }
    .encode(&mut close);
    close
}

/// The receiving ends this host holds, by (sender node, sender incarnation, sending shard): what a
/// reconnecting sender need not send again (§3.4). Each count is a cell the connection serving the
/// stream updates per frame without looking the stream up again.
#[derive(Debug, Default)]
pub struct InboundStreams {
    received: HashMap<(String, u64, u16), Rc<Cell<u64>>>,
}

impl InboundStreams {
    pub fn received(&self, node: &str, incarnation: u64, shard: u16) -> u64 {
        self.received
            .get(&(node.to_string(), incarnation, shard))
            .map_or(0, |c| c.get())
    }

    /// The count of one stream, created at 0.
    fn stream(&mut self, node: &str, incarnation: u64, shard: u16) -> Rc<Cell<u64>> {
        self.received
            .entry((node.to_string(), incarnation, shard))
            .or_default()
            .clone()
    }

    /// Forgets a sender's streams (it restarted or left).
    pub fn forget(&mut self, node: &str) {
        self.received.retain(|(n, _, _), _| n != node);
    }
}

/// Drives one accepted connection: the handshake, then every data frame to `deliver` with the peer
/// it came from, in order, acknowledged as it is handed on. Returns why the connection ended.
pub async fn serve_inbound(
    stream: TcpStream,
    settings: Rc<LinkSettings>,
    streams: Rc<RefCell<InboundStreams>>,
    mut deliver: impl FnMut(&Peer, Frame),
) -> LinkEnd {
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    let from = stream
        .peer_addr()
        .map_or_else(|_| "an unknown address".to_string(), |a| a.to_string());
    let mut stream = Conn {
        stream,
        tls: settings.tls.as_ref().map(|t| Box::new(t.accept())),
    };
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let exporter = match stream.tls {
        None => None,
        Some(_) => {
            match tls_handshake(
                &mut stream,
                &mut reader,
                &mut buf,
                accepted + HANDSHAKE_TIMEOUT,
            )
            .await
            {
                Ok(x) => Some(x),
                Err(e) => {
                    warn_limited(format_args!("a link from {from} refused: {e}"));
                    return e;
                }
            }
        }
    };
    let mut hs = Acceptor::new(
        settings.me.clone(),
        settings.secret.clone(),
        nonce(),
        exporter,
        accepted,
    );
    let peer = loop {
        let raw = match read_frame(&mut stream, &mut reader, &mut buf, hs.deadline()).await {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                if let Some(r) = hs.expired(Instant::now()) {
                    let _ = write(&mut stream, &r.close).await;
                    return r.into();
                }
                continue;
            }
            Err(LinkEnd::Protocol(_)) if stream.tls.is_none() && speaks_tls(&buf) => {
                let e = LinkEnd::Tls(
                    "the sender speaks TLS (cluster.tls is on there, off here)".into(),
                );
                warn_limited(format_args!("a link from {from} refused: {e}"));
                return e;
            }
            Err(e) => return e,
        };
        // The node the HELLO claims, for the certificate check below.
        let mut claimed = None;
        let step = hs.on_frame(&raw, |h| {
            claimed = Some(h.node.clone());
            streams
                .borrow()
                .received(&h.node, h.incarnation, h.from_shard)
        });
        match step {
            Ok(Step::Send(out)) => {
                // Before the WELCOME: a host with the cluster's certificate may still not speak for
                // another node (§4).
                if let (Some(tls), Some(node)) = (&stream.tls, &claimed)
                    && !tls.peer_names(node)
                {
                    let why = format!("the certificate does not name node {node}");
                    warn_limited(format_args!("a link from {from} refused: {why}"));
                    let _ = write(&mut stream, &refusal_close(&why)).await;
                    return LinkEnd::Refused(CloseReason::Auth, why);
                }
                if let Err(e) = write(&mut stream, &out).await {
                    return e;
                }
            }
            Ok(Step::Up(out, peer)) => {
                if let Some(why) = tls_mismatch(&stream, &peer, None) {
                    warn_limited(format_args!("a link from {from} refused: {why}"));
                    let _ = write(&mut stream, &refusal_close(&why)).await;
                    return LinkEnd::Refused(CloseReason::Auth, why);
                }
                if let Err(e) = write(&mut stream, &out).await {
                    return e;
                }
                break peer;
            }
            Err(r) => {
                warn_limited(format_args!("a link from {from} refused: {r}"));
                if !r.close.is_empty() {
                    let _ = write(&mut stream, &r.close).await;
                }
                return r.into();
            }
        }
    };
    let mut inbound = Inbound::new(peer.received);
    let count = streams
        .borrow_mut()
        .stream(&peer.node, peer.incarnation, peer.shard);
    let mut ticks = Ticks::new(settings.tick, Instant::now());
    let result: Result<(), LinkEnd> = async {
        loop {
            let now = Instant::now();
            let mut out = BytesMut::new();
            if inbound.ack_due(now)
                && let Some(ack) = inbound.take_ack()
            {
                ack.encode(&mut out);
            }
            if out.is_empty() && ticks.tick_due(now) {
                Frame::Tick.encode(&mut out);
            }
            if !out.is_empty() {
                write(&mut stream, &out).await?;
                ticks.wrote(Instant::now());
            }
            if ticks.silent(Instant::now()) {
                return Err(LinkEnd::Silent);
            }
            let deadline = inbound
                .ack_deadline()
                .map_or(ticks.next_deadline(), |a| a.min(ticks.next_deadline()));
            let Some(raw) = read_frame(&mut stream, &mut reader, &mut buf, deadline).await? else {
                continue;
            };
            ticks.read(Instant::now());
            if raw.kind == kind::TICK {
                continue;
            }
            match Frame::decode(&raw)? {
                Frame::Close { reason, text } => {
                    return Err(LinkEnd::Closed(format!("{}: {text}", reason.as_str())));
                }
                f if f.is_data() => {
                    inbound.on_data(Instant::now());
                    count.set(inbound.received());
                    deliver(&peer, f);
                }
                other => {
                    return Err(LinkEnd::Protocol(format!(
                        "a sender sent frame 0x{:02x} after the handshake",
                        other.kind()
                    )));
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => LinkEnd::Closed("done".into()),
        Err(e) => {
            if let LinkEnd::Protocol(why) = &e {
                let mut close = BytesMut::new();
                Frame::Close {
                    reason: CloseReason::Protocol,
                    text: why.chars().take(256).collect(),
                }
                .encode(&mut close);
                let _ = write(&mut stream, &close).await;
            }
            e
        }
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;

//! Cluster links over glommio TCP (docs/cluster-protocol.md §3, §4): the sockets under the sans-IO
//! machines of [`crate::proto::cluster`]. [`OutboundLink`] is one sending shard's stream to one peer
//! host: frames are queued at once (never awaited, so a mesh consumer can queue without blocking), and a
//! task connects, authenticates, writes, reads acknowledgements, ticks, and reconnects with the stream
//! resumed, for as long as the link lives. [`serve_inbound`] drives one accepted connection: the
//! handshake as acceptor, then data frames handed to the caller in order, acknowledged as §3.4 says.
//! What the frames mean (routing, sessions, membership) is above this file.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::{LocalReceiver, LocalSender, new_bounded};
use glommio::net::TcpStream;

use crate::proto::cluster::handshake::{
    Acceptor, Identity, Initiator, Peer, Refusal, Secret, Step,
};
use crate::proto::cluster::link::{Full, Inbound, MAX_QUEUED_BYTES, Outbound, Ticks};
use crate::proto::cluster::wire::{CloseReason, Frame, FrameReader, RawFrame, WireError, kind};

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
}

impl std::fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkEnd::Refused(r, why) => write!(f, "refused ({}): {why}", r.as_str()),
            LinkEnd::Closed(why) => write!(f, "closed: {why}"),
            LinkEnd::Protocol(why) => write!(f, "protocol error: {why}"),
            LinkEnd::Silent => f.write_str("silent for four ticks"),
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

/// Reads (through `buf`, the connection's read buffer) until a whole frame is there, or the deadline
/// passes (`Ok(None)`).
async fn read_frame(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<Option<RawFrame>, LinkEnd> {
    loop {
        if let Some(f) = reader.next_frame()? {
            return Ok(Some(f));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(None);
        }
        let read = async { Some(stream.read(buf).await) }
            .or(async {
                glommio::timer::sleep(wait).await;
                None
            })
            .await;
        match read {
            None => return Ok(None),
            Some(Ok(0)) => return Err(LinkEnd::Closed("the connection ended".into())),
            Some(Ok(n)) => reader.feed(&buf[..n]),
            Some(Err(e)) => return Err(LinkEnd::Closed(e.to_string())),
        }
    }
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), LinkEnd> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| LinkEnd::Closed(e.to_string()))
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
                    log::debug!("cluster link to {addr} shard {to_shard}: {e}");
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
    let mut stream = connect_from(settings.source, addr)
        .await
        .map_err(|e| LinkEnd::Closed(format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let expected = state.borrow().peer.clone();
    let (mut hs, hello) = Initiator::start(
        &settings.me,
        settings.secret.clone(),
        from_shard,
        to_shard,
        expected.clone(),
        nonce(),
        None,
    );
    write(&mut stream, &hello).await?;
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let deadline = Instant::now() + crate::proto::cluster::handshake::HANDSHAKE_TIMEOUT;
    let peer: Peer = loop {
        let raw = read_frame(&mut stream, &mut reader, &mut buf, deadline)
            .await?
            .ok_or_else(|| LinkEnd::Closed("no handshake within 5 s".into()))?;
        match hs.on_frame(&raw) {
            Ok(Step::Send(out)) => write(&mut stream, &out).await?,
            Ok(Step::Up(out, peer)) => {
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
            let _ = stream.close().await;
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
    mut stream: TcpStream,
    settings: Rc<LinkSettings>,
    streams: Rc<RefCell<InboundStreams>>,
    mut deliver: impl FnMut(&Peer, Frame),
) -> LinkEnd {
    let _ = stream.set_nodelay(true);
    let mut hs = Acceptor::new(
        settings.me.clone(),
        settings.secret.clone(),
        nonce(),
        None,
        Instant::now(),
    );
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; READ_BUFFER];
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
            Err(e) => return e,
        };
        let step = hs.on_frame(&raw, |h| {
            streams
                .borrow()
                .received(&h.node, h.incarnation, h.from_shard)
        });
        match step {
            Ok(Step::Send(out)) => {
                if let Err(e) = write(&mut stream, &out).await {
                    return e;
                }
            }
            Ok(Step::Up(out, peer)) => {
                if let Err(e) = write(&mut stream, &out).await {
                    return e;
                }
                break peer;
            }
            Err(r) => {
                log::warn!("cluster: a link refused: {r}");
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

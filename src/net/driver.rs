//! The stream driver: one task per XMPP connection that owns its socket, its TLS state (rustls, driven by
//! hand so that it can move between shards), its stream parser and its write loop, and hands every
//! parsed event to the connection's [`StreamGlue`] — the c2s or component glue today; s2s, cluster links
//! and WebSocket tomorrow. The glue carries out its protocol machine's actions and asks the driver, through
//! [`Control`], for what only the driver can do: start TLS, reset the parser, hold reading while a lookup
//! runs, close, or move the connection to another shard. Output comes from the connection's [`Sink`]:
//! stanzas stay stanzas until this loop writes them. When the connection ends or moves, the glue gets it
//! back ([`Ending`]): a moving connection's descriptor, TLS state and every byte read but not parsed.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::metrics::Stage;
use crate::probe::hot_path;
use crate::proto::errors::StreamErrorCondition;
use crate::proto::xml::{Event, Limits, StreamParser, Trace, XmlError};
use crate::sink::Sink;

const READ_CHUNK: usize = 16 * 1024;

/// What a stream's protocol glue does with what the driver reads, and tells it back.
pub trait StreamGlue {
    /// One event of the peer's stream.
    fn event(&mut self, event: Event, ctl: &mut Control);
    /// The peer's bytes are not well-formed XML (or break a limit).
    fn parse_error(&mut self, error: XmlError, ctl: &mut Control);
    /// Results that other tasks queued for this stream, and the machine's pending actions; true when
    /// anything moved.
    fn poll(&mut self, ctl: &mut Control) -> bool;
    /// The shard asked the stream to end with `condition` (shutdown, conflict, a full output queue, an
    /// operator's kick with its `text`).
    fn kill(&mut self, condition: StreamErrorCondition, text: Option<&str>, ctl: &mut Control);
    /// The TLS handshake completed.
    fn tls_established(&mut self, _tls: &rustls::ServerConnection, _ctl: &mut Control) {}
    /// When the machine's next timer fires, if it has one.
    fn deadline(&self) -> Option<Instant>;
    /// The deadline passed.
    fn timeout(&mut self, now: Instant, ctl: &mut Control);
    /// Whether the shard wants its connections to stop reading for a moment (backpressure).
    fn backpressured(&self) -> bool;
    /// Frees the machine's idle buffers (the shard's idle sweep).
    fn release_idle(&mut self) {}
    /// The connection ended or is moving.
    fn finish(self, ending: Ending);
}

/// What the glue asks of the driver.
pub struct Control {
    sink: Rc<Sink>,
    start_tls: bool,
    reset_parser: bool,
    close: bool,
    move_to: Option<usize>,
    hold: bool,
}

impl Control {
    /// The connection's output.
    pub fn sink(&self) -> &Rc<Sink> {
        &self.sink
    }
    /// What is queued now is the last plaintext: TLS starts once it is written, with a new parser.
    pub fn start_tls(&mut self) {
        self.start_tls = true;
    }
    /// A new stream begins on the same transport (after SASL success).
    pub fn reset_parser(&mut self) {
        self.reset_parser = true;
    }
    /// Close once everything queued is written.
    pub fn close(&mut self) {
        self.close = true;
    }
    /// Stop reading, write what is queued, and hand the connection back to the glue to move to `shard`.
    pub fn move_to(&mut self, shard: usize) {
        self.move_to = Some(shard);
    }
    /// Stop (or resume) reading while the glue waits for a result (a credentials lookup).
    pub fn hold_reading(&mut self, hold: bool) {
        self.hold = hold;
    }
}

/// How a driven connection ended.
pub enum Ending {
    Closed,
    /// Moving to `shard`.
    Moving {
        shard: usize,
        detached: Detached,
    },
}

/// A connection taken off its driver: everything needed to drive it elsewhere.
pub struct Detached {
    pub fd: OwnedFd,
    pub peer: SocketAddr,
    pub tls: Option<Box<rustls::ServerConnection>>,
    /// Plaintext read but not yet parsed.
    pub unparsed: BytesMut,
}

/// What a shard gives every driver it runs.
pub struct DriverEnv {
    pub limits: Limits,
    /// The configuration of TLS started by STARTTLS.
    pub starttls: Arc<rustls::ServerConfig>,
    /// The shard's read buffer, shared by its connections (a glommio read completes into it at once or
    /// only registers interest, so no connection needs its own while it waits).
    pub read_buf: Rc<std::cell::RefCell<Vec<u8>>>,
}

/// A byte stream that is not a socket of this host: a client connection whose socket is on another host
/// of the cluster, its bytes carried by the cluster's links.
pub trait Pipe: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Pipe for T {}

/// What a driver reads and writes: a socket, or a pipe to a socket elsewhere (which cannot move).
pub enum Io {
    Tcp(TcpStream),
    Pipe(Box<dyn Pipe>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Pipe(p) => Pin::new(p).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Pipe(p) => Pin::new(p).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Pipe(p) => Pin::new(p).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_close(cx),
            Io::Pipe(p) => Pin::new(p).poll_close(cx),
        }
    }
}

/// A connection to drive: fresh from accept, adopted from another shard, or tunnelled from another
/// host.
pub struct Transport {
    pub stream: Io,
    pub peer: SocketAddr,
    pub tls: Option<Box<rustls::ServerConnection>>,
    /// Whether `tls` has finished its handshake (an adopted connection's has).
    pub tls_up: bool,
    pub unparsed: BytesMut,
}

/// Spawns the task that drives `transport` for `glue` until it ends or moves.
pub fn spawn<G: StreamGlue + 'static>(
    glue: G,
    sink: Rc<Sink>,
    transport: Transport,
    env: DriverEnv,
) {
    let mut d = Driver {
        parser: StreamParser::new(env.limits),
        glue: Some(glue),
        ctl: Control {
            sink,
            start_tls: false,
            reset_parser: false,
            close: false,
            move_to: None,
            hold: false,
        },
        stream: transport.stream,
        peer: transport.peer,
        tls: transport.tls,
        tls_up: transport.tls_up,
        pending_tls: false,
        env,
        wbuf: Vec::new(),
        wpos: 0,
        carry: BytesMut::new(),
        moving: None,
        closing: false,
        eof: false,
        timer: None,
        pause: None,
        read_at: 0,
    };
    let unparsed = transport.unparsed;
    glommio::spawn_local(async move {
        if !unparsed.is_empty() {
            d.feed_plain(&unparsed);
        }
        let outcome = std::future::poll_fn(|cx| d.poll(cx)).await;
        d.finish(outcome);
    })
    .detach();
}

enum Outcome {
    Closed,
    Moving(usize),
}

struct Driver<G: StreamGlue> {
    /// Taken only by `finish`.
    glue: Option<G>,
    ctl: Control,
    stream: Io,
    peer: SocketAddr,
    tls: Option<Box<rustls::ServerConnection>>,
    tls_up: bool,
    /// `<proceed/>` is queued: TLS starts when it is on the wire.
    pending_tls: bool,
    env: DriverEnv,
    parser: StreamParser,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Plaintext read but not given to the parser because the connection is moving.
    carry: BytesMut,
    moving: Option<usize>,
    closing: bool,
    eof: bool,
    timer: Option<(Instant, glommio::timer::Timer)>,
    /// Set while reading pauses for backpressure.
    pause: Option<glommio::timer::Timer>,
    /// When the last socket read returned (per-stage latency; 0 while sampling is off).
    read_at: u64,
}

impl<G: StreamGlue> Driver<G> {
    fn glue(&mut self) -> &mut G {
        self.glue.as_mut().expect("the glue lives until finish")
    }

    /// Carries out what the glue asked for.
    fn apply(&mut self) {
        if std::mem::take(&mut self.ctl.reset_parser) {
            self.parser.reset();
        }
        if std::mem::take(&mut self.ctl.start_tls) {
            self.pending_tls = true;
            // Nothing may follow `<starttls/>` in the clear; a new parser for the new stream.
            self.parser = StreamParser::new(self.env.limits);
        }
        if self.ctl.close {
            self.closing = true;
        }
        if let Some(to) = self.ctl.move_to.take() {
            self.moving = Some(to);
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        loop {
            let mut progress = {
                let (glue, ctl) = (self.glue.as_mut().expect("glue"), &mut self.ctl);
                glue.poll(ctl)
            };
            self.apply();
            if self.ctl.sink.take_trim() {
                self.parser.release_idle_buffer();
                self.glue().release_idle();
                self.ctl.sink.release_idle();
                if self.wbuf.is_empty() {
                    self.wbuf = Vec::new();
                }
            }
            if let Some(condition) = self.ctl.sink.take_kill() {
                progress = true;
                let text = self.ctl.sink.take_kill_text();
                let (glue, ctl) = (self.glue.as_mut().expect("glue"), &mut self.ctl);
                glue.kill(condition, text.as_deref(), ctl);
                self.apply();
            }
            match self.glue().deadline() {
                None => self.timer = None,
                Some(deadline) => {
                    if self.timer.as_ref().is_none_or(|(d, _)| *d != deadline) {
                        let wait = deadline.saturating_duration_since(Instant::now());
                        self.timer = Some((deadline, glommio::timer::Timer::new(wait)));
                    }
                    let (_, timer) = self.timer.as_mut().expect("just set");
                    if Pin::new(timer).poll(cx).is_ready() {
                        self.timer = None;
                        let (glue, ctl) = (self.glue.as_mut().expect("glue"), &mut self.ctl);
                        glue.timeout(Instant::now(), ctl);
                        self.apply();
                        continue;
                    }
                }
            }
            self.ctl.sink.write_queued();
            match self.poll_write(cx) {
                Ok(p) => progress |= p,
                Err(()) => return Poll::Ready(Outcome::Closed),
            }
            let flushed = self.wpos == self.wbuf.len() && self.ctl.sink.is_flushed();
            if flushed {
                self.ctl.sink.on_the_wire();
            }
            if flushed && (self.closing || self.eof) {
                return Poll::Ready(Outcome::Closed);
            }
            if flushed && let Some(target) = self.moving {
                return Poll::Ready(Outcome::Moving(target));
            }
            let mut may_read = !self.closing
                && !self.eof
                && self.moving.is_none()
                && !self.pending_tls
                && !self.ctl.hold;
            if may_read && self.glue().backpressured() {
                // The shard is backed up: read again in a millisecond, when its queues have drained.
                may_read = false;
                let timer = self
                    .pause
                    .get_or_insert_with(|| glommio::timer::Timer::new(Duration::from_millis(1)));
                if Pin::new(timer).poll(cx).is_ready() {
                    self.pause = None;
                    continue;
                }
            }
            if may_read {
                let read_buf = self.env.read_buf.clone();
                let mut buf = read_buf.borrow_mut();
                match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(0)) => {
                        self.eof = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.read_at = crate::metrics::with(|m| {
                            m.bytes_in(n);
                            if m.sampling() {
                                crate::metrics::now_ns()
                            } else {
                                0
                            }
                        });
                        // Used before anything else on this shard can read into the buffer.
                        self.input(&buf[..n]);
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Outcome::Closed),
                    Poll::Pending => {}
                }
            }
            if !progress {
                self.ctl.sink.set_waker(cx.waker());
                return Poll::Pending;
            }
        }
    }

    /// Writes what is written out: TLS records, or the output buffer itself before TLS (no copy).
    /// Returns whether anything moved.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut progress = false;
        loop {
            if self.wpos < self.wbuf.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf[self.wpos..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        crate::metrics::with(|m| m.bytes_out(n));
                        self.wpos += n;
                        progress = true;
                        continue;
                    }
                    Poll::Ready(_) => return Err(()),
                    Poll::Pending => return Ok(progress),
                }
            }
            self.wbuf.clear();
            self.wpos = 0;
            if let Some(tls) = &mut self.tls {
                let mut out = self.ctl.sink.out();
                if !out.is_empty() && self.tls_up {
                    // rustls takes what fits under its buffer limit; the rest waits for the next round.
                    let n = tls.writer().write(&out).map_err(|_| ())?;
                    out.advance(n);
                }
                drop(out);
                while tls.wants_write() {
                    tls.write_tls(&mut self.wbuf).map_err(|_| ())?;
                }
                if !self.wbuf.is_empty() {
                    continue;
                }
            } else {
                let mut out = self.ctl.sink.out();
                if !out.is_empty() {
                    match Pin::new(&mut self.stream).poll_write(cx, &out[..]) {
                        Poll::Ready(Ok(n)) if n > 0 => {
                            crate::metrics::with(|m| m.bytes_out(n));
                            out.advance(n);
                            progress = true;
                            continue;
                        }
                        Poll::Ready(_) => return Err(()),
                        Poll::Pending => return Ok(progress),
                    }
                }
            }
            if self.pending_tls {
                // `<proceed/>` is on the wire: everything from now on is TLS.
                self.pending_tls = false;
                self.tls = Some(Box::new(
                    rustls::ServerConnection::new(self.env.starttls.clone())
                        .expect("valid TLS configuration"),
                ));
                self.tls_up = false;
                progress = true;
                continue;
            }
            return Ok(progress);
        }
    }

    /// Bytes from the socket: through TLS when it is on, then to the parser.
    fn input(&mut self, data: &[u8]) {
        if self.tls.is_none() {
            self.feed_plain(data);
            return;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let tls = self.tls.as_mut().expect("TLS is on");
            if tls.read_tls(&mut rest).is_err() {
                self.closing = true;
                return;
            }
            if let Err(e) = tls.process_new_packets() {
                log::debug!(peer:% = self.peer; "TLS error: {e}");
                // The alert rustls queued is written before the connection closes.
                self.closing = true;
                return;
            }
            if !self.tls_up && !tls.is_handshaking() {
                self.tls_up = true;
                let (glue, ctl) = (self.glue.as_mut().expect("glue"), &mut self.ctl);
                glue.tls_established(self.tls.as_ref().expect("TLS is on"), ctl);
                self.apply();
            }
            let mut plain = [0u8; READ_CHUNK];
            loop {
                let tls = self.tls.as_mut().expect("TLS is on");
                match tls.reader().read(&mut plain) {
                    Ok(0) => {
                        // close_notify: the peer is done.
                        self.eof = true;
                        break;
                    }
                    Ok(n) => self.feed_plain(&plain[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.closing = true;
                        return;
                    }
                }
            }
            if self.closing {
                return;
            }
        }
    }

    /// Plaintext stream bytes: parsed, and every event handed to the glue at once, so that a parser
    /// reset (STARTTLS, SASL success) happens before the next event is read.
    fn feed_plain(&mut self, data: &[u8]) {
        hot_path(|| self.feed_plain_inner(data))
    }

    fn feed_plain_inner(&mut self, data: &[u8]) {
        if self.moving.is_some() || self.closing {
            if self.moving.is_some() {
                self.carry.extend_from_slice(data);
            }
            return;
        }
        let mut rest = data;
        loop {
            let n = self.parser.feed(rest);
            rest = &rest[n..];
            loop {
                if self.moving.is_some() || self.closing || self.pending_tls {
                    break;
                }
                match self.parser.next_event() {
                    Ok(Some(mut event)) => {
                        if let Event::Stanza(stanza) = &mut event {
                            crate::metrics::with(|m| {
                                m.stanza_in(stanza.kind());
                                if self.read_at != 0 && m.take_sample() {
                                    let now = crate::metrics::now_ns();
                                    m.record(Stage::Parse, now.saturating_sub(self.read_at));
                                    stanza.trace = Trace {
                                        read: self.read_at,
                                        mark: now,
                                    };
                                }
                            });
                        }
                        let (glue, ctl) = (self.glue.as_mut().expect("glue"), &mut self.ctl);
                        glue.event(event, ctl);
                        self.apply();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let (glue, ctl) = (self.glue.as_mut().expect("glue"), &mut self.ctl);
                        glue.parse_error(e, ctl);
                        self.apply();
                        return;
                    }
                }
            }
            if rest.is_empty() {
                return;
            }
            if self.moving.is_some() {
                self.carry.extend_from_slice(rest);
                return;
            }
            if self.closing || self.pending_tls {
                return;
            }
            if n == 0 {
                // No room although every complete event was taken: a limit the parser did not catch.
                let (glue, ctl) = (self.glue.as_mut().expect("glue"), &mut self.ctl);
                glue.kill(StreamErrorCondition::PolicyViolation, None, ctl);
                self.apply();
                return;
            }
        }
    }

    fn finish(mut self, outcome: Outcome) {
        let glue = self.glue.take().expect("finish runs once");
        match outcome {
            Outcome::Closed => {
                if let Some(tls) = &mut self.tls {
                    tls.send_close_notify();
                }
                glue.finish(Ending::Closed);
            }
            Outcome::Moving(shard) => {
                let detached = self.detach();
                // This shard lets go of the socket before the next one takes it.
                drop(self.stream);
                match detached {
                    Some(detached) => glue.finish(Ending::Moving { shard, detached }),
                    None => glue.finish(Ending::Closed),
                }
            }
        }
    }

    /// Takes the connection off this driver: a duplicate of its descriptor, its TLS state, and every
    /// byte read but not parsed (the parser's, the carry, and TLS plaintext not yet read out).
    fn detach(&mut self) -> Option<Detached> {
        let Io::Tcp(stream) = &self.stream else {
            log::error!(peer:% = self.peer; "a tunnelled connection cannot move between shards");
            return None;
        };
        // SAFETY: the descriptor is valid while `self.stream` lives; it is duplicated before the stream
        // (and its descriptor) is dropped, so the socket stays open for the next driver.
        let fd = match unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                log::error!(peer:% = self.peer; "cannot hand the connection over: {e}");
                return None;
            }
        };
        let mut unparsed = self.parser.take_unparsed();
        unparsed.extend_from_slice(&self.carry);
        if let Some(tls) = &mut self.tls {
            let mut plain = [0u8; READ_CHUNK];
            while let Ok(n) = tls.reader().read(&mut plain) {
                if n == 0 {
                    break;
                }
                unparsed.extend_from_slice(&plain[..n]);
            }
        }
        Some(Detached {
            fd,
            peer: self.peer,
            tls: self.tls.take(),
            unparsed,
        })
    }
}

//! The connection driver: one task per client connection that owns its socket, its TLS state
//! (rustls, driven by hand so it can move between shards), its stream parser and its [`C2s`] state
//! machine, and carries out the machine's actions. Other tasks reach a connection only through its
//! [`ConnShared`]: the router appends stanzas to its output buffer (the zero-copy writer, capped), the
//! session manager or shutdown asks it to end with a stream error, and the store returns credentials.
//! After SASL success the driver moves the connection to its home shard: it stops reading, flushes what
//! it has to write, and hands the descriptor, TLS state, stream state and unread bytes to the mesh.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::modules::HookKind;
use crate::proto::c2s::{Action, BindError, C2s};
use crate::proto::errors::StreamErrorCondition;
use crate::proto::sasl::{ChannelBindings, Credentials};
use crate::proto::xml::{Stanza, StreamParser, TargetStream};
use crate::router;
use crate::shard::{MovedConnection, Overflow, Shard, ShardMsg, home};

const READ_CHUNK: usize = 16 * 1024;

/// Results of work done by other tasks for a connection.
pub enum ConnInput {
    Credentials(Option<Credentials>),
    PlainChecked(bool),
}

/// The part of a connection other tasks may touch.
pub struct ConnShared {
    pub(crate) out: RefCell<BytesMut>,
    pub(crate) waker: RefCell<Option<Waker>>,
    pub(crate) kill: Cell<Option<StreamErrorCondition>>,
    inputs: RefCell<VecDeque<ConnInput>>,
    /// Set by the shard's periodic sweep: release idle buffers.
    pub(crate) trim: Cell<bool>,
    max_out: usize,
    /// What the peer's stream declares (a client's or a component's).
    target: TargetStream<'static>,
}

impl ConnShared {
    pub(crate) fn new(max_out: usize, target: TargetStream<'static>) -> ConnShared {
        ConnShared {
            // Grown on demand: a 4 KiB buffer per connection at accept left a 4 KiB hole per session in the
            // heap once the idle sweep released it (RSS per idle session 10–11 KiB, 4.5 KiB of it live).
            out: RefCell::new(BytesMut::new()),
            waker: RefCell::new(None),
            kill: Cell::new(None),
            inputs: RefCell::new(VecDeque::new()),
            trim: Cell::new(false),
            max_out,
            target,
        }
    }

    /// Appends `stanza` with `from` stamped to the output buffer, without copying it into a tree or
    /// allocating. A connection whose reader lets the buffer reach its cap is ended with
    /// `policy-violation` instead: the memory a slow reader can pin is bounded by the cap.
    pub fn deliver(&self, stanza: &Stanza, from: &str) {
        let mut out = self.out.borrow_mut();
        if out.len() + stanza.as_bytes().len() + from.len() + 64 > self.max_out {
            drop(out);
            self.kill(StreamErrorCondition::PolicyViolation);
            return;
        }
        stanza.write_to(&mut *out, &self.target, Some(from), None);
        drop(out);
        self.wake();
    }

    /// Appends bytes the server wrote itself (error replies, presence it generates), under the same cap.
    pub fn send_bytes(&self, bytes: &[u8]) {
        let mut out = self.out.borrow_mut();
        if out.len() + bytes.len() > self.max_out {
            drop(out);
            self.kill(StreamErrorCondition::PolicyViolation);
            return;
        }
        out.extend_from_slice(bytes);
        drop(out);
        self.wake();
    }

    /// Ends the stream with `condition` (the first one asked for wins).
    pub fn kill(&self, condition: StreamErrorCondition) {
        if self.kill.get().is_none() {
            self.kill.set(Some(condition));
        }
        self.wake();
    }

    /// Asks the connection to free its idle buffers (called by the shard's sweep).
    pub fn trim(&self) {
        self.trim.set(true);
        self.wake();
    }

    fn input(&self, input: ConnInput) {
        self.inputs.borrow_mut().push_back(input);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A bound session as the driver and router see it.
#[derive(Clone)]
pub struct SessionRef {
    pub bare: Box<str>,
    pub full: Arc<str>,
    pub conn: usize,
}

enum Outcome {
    Closed,
    Moving(usize),
}

struct Driver {
    shard: Rc<Shard>,
    shared: Rc<ConnShared>,
    key: usize,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Box<rustls::ServerConnection>>,
    tls_up: bool,
    pending_tls: bool,
    c2s: C2s,
    parser: StreamParser,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Plaintext read but not given to the parser because the connection is moving.
    carry: BytesMut,
    awaiting_lookup: bool,
    moving: Option<usize>,
    closing: bool,
    eof: bool,
    session: Option<SessionRef>,
    auth_timer: Option<glommio::timer::Timer>,
    /// Set while reading pauses for backpressure.
    pause: Option<glommio::timer::Timer>,
}

fn random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the OS random source works");
}

/// Serves a newly accepted connection on `shard`.
pub fn accept(shard: Rc<Shard>, stream: TcpStream, direct_tls: bool) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let tls = direct_tls.then(|| {
        Box::new(
            rustls::ServerConnection::new(shard.server.direct.clone())
                .expect("valid TLS configuration"),
        )
    });
    let c2s = C2s::new(
        shard.server.settings.clone(),
        direct_tls,
        ChannelBindings::default(),
        Instant::now(),
        Box::new(random),
    );
    let auth_timeout = shard.server.settings.auth_timeout;
    spawn(
        shard,
        stream,
        peer,
        tls,
        false,
        c2s,
        BytesMut::new(),
        Some(auth_timeout),
    );
}

/// Takes over a connection that moved here from another shard.
pub fn adopt(shard: Rc<Shard>, moved: MovedConnection) {
    // SAFETY: the descriptor was duplicated for this transfer and is owned by `moved.fd` alone.
    let stream = unsafe { TcpStream::from_raw_fd(moved.fd.into_raw_fd()) };
    let tls_up = moved.tls.is_some();
    spawn(
        shard,
        stream,
        moved.peer,
        moved.tls,
        tls_up,
        moved.c2s,
        moved.unparsed,
        None,
    );
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    shard: Rc<Shard>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Box<rustls::ServerConnection>>,
    tls_up: bool,
    c2s: C2s,
    unparsed: BytesMut,
    auth_timeout: Option<Duration>,
) {
    let shared = Rc::new(ConnShared::new(
        shard.server.config.limits.max_output_queue_bytes,
        TargetStream::CLIENT,
    ));
    let key = shard.conns.borrow_mut().insert(shared.clone());
    let parser = StreamParser::new(shard.server.limits);
    let mut d = Driver {
        shard,
        shared,
        key,
        stream,
        peer,
        tls,
        tls_up,
        pending_tls: false,
        c2s,
        parser,
        wbuf: Vec::new(),
        wpos: 0,
        carry: BytesMut::new(),
        awaiting_lookup: false,
        moving: None,
        closing: false,
        eof: false,
        session: None,
        auth_timer: auth_timeout.map(glommio::timer::Timer::new),
        pause: None,
    };
    glommio::spawn_local(async move {
        if !unparsed.is_empty() {
            d.feed_plain(&unparsed);
        }
        let outcome = std::future::poll_fn(|cx| d.poll(cx)).await;
        d.finish(outcome);
    })
    .detach();
}

impl Driver {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        loop {
            let mut progress = false;
            let inputs: Vec<ConnInput> = self.shared.inputs.borrow_mut().drain(..).collect();
            for input in inputs {
                progress = true;
                match input {
                    ConnInput::Credentials(c) => {
                        self.awaiting_lookup = false;
                        self.c2s.credentials(c.as_ref());
                    }
                    ConnInput::PlainChecked(ok) => {
                        self.awaiting_lookup = false;
                        self.c2s.plain_checked(ok);
                    }
                }
            }
            if self.shared.trim.take() {
                self.parser.release_idle_buffer();
                self.c2s.release_idle();
                let mut out = self.shared.out.borrow_mut();
                if out.is_empty() && out.capacity() > 0 {
                    *out = BytesMut::new();
                }
                drop(out);
                if self.wbuf.is_empty() {
                    self.wbuf = Vec::new();
                }
            }
            if let Some(condition) = self.shared.kill.take() {
                progress = true;
                self.c2s.stream_error(condition, None);
            }
            progress |= self.do_actions();
            if let Some(timer) = &mut self.auth_timer {
                if self.c2s.user().is_some() {
                    self.auth_timer = None;
                } else if Pin::new(timer).poll(cx).is_ready() {
                    self.auth_timer = None;
                    self.c2s.tick(Instant::now());
                    continue;
                }
            }
            match self.poll_write(cx) {
                Ok(p) => progress |= p,
                Err(()) => return Poll::Ready(Outcome::Closed),
            }
            let flushed = self.wpos == self.wbuf.len() && self.shared.out.borrow().is_empty();
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
                && !self.awaiting_lookup;
            if may_read && self.shard.backpressured() {
                // The mesh is backed up: read again in a millisecond, when the spill queues have drained.
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
                // One read buffer per shard: a non-buffered glommio read copies into it synchronously
                // or only registers interest, so no connection needs its own while it waits.
                let shard = self.shard.clone();
                let mut buf = shard.read_buf.borrow_mut();
                match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(0)) => {
                        self.eof = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        // Copied out before anything else on this shard can read into the buffer.
                        let data = &buf[..n];
                        self.input(data);
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Outcome::Closed),
                    Poll::Pending => {}
                }
            }
            if !progress {
                *self.shared.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
    }

    /// Writes what is queued: TLS records, or the output buffer itself before TLS (no copy). Returns
    /// whether anything moved.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut progress = false;
        loop {
            if self.wpos < self.wbuf.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf[self.wpos..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
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
                let mut out = self.shared.out.borrow_mut();
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
                let mut out = self.shared.out.borrow_mut();
                if !out.is_empty() {
                    match Pin::new(&mut self.stream).poll_write(cx, &out[..]) {
                        Poll::Ready(Ok(n)) if n > 0 => {
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
                    rustls::ServerConnection::new(self.shard.server.starttls.clone())
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
                log::debug!("{}: TLS error: {e}", self.peer);
                // The alert rustls queued is written before the connection closes.
                self.closing = true;
                return;
            }
            if !self.tls_up && !tls.is_handshaking() {
                self.tls_up = true;
                let bindings = self.shard.server.certs.bindings(tls);
                self.c2s.tls_established(bindings);
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

    /// Plaintext stream bytes: parsed, and every event handed to the state machine at once, so that a
    /// parser reset (STARTTLS, SASL success) happens before the next event is read.
    fn feed_plain(&mut self, data: &[u8]) {
        crate::shard::hot_path(|| self.feed_plain_inner(data))
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
                    Ok(Some(event)) => {
                        self.c2s.handle_event(event);
                        self.do_actions();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.c2s.handle_parse_error(e);
                        self.do_actions();
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
                self.c2s
                    .stream_error(StreamErrorCondition::PolicyViolation, None);
                self.do_actions();
                return;
            }
        }
    }

    fn do_actions(&mut self) -> bool {
        let mut any = false;
        while let Some(action) = self.c2s.poll_action() {
            any = true;
            match action {
                Action::Send(bytes) => self.shared.out.borrow_mut().extend_from_slice(&bytes),
                Action::StartTls => {
                    self.pending_tls = true;
                    // Nothing may follow `<starttls/>` in the clear; a new parser for the new stream.
                    self.parser = StreamParser::new(self.shard.server.limits);
                }
                Action::ResetParser => self.parser.reset(),
                Action::LookupCredentials {
                    host,
                    username,
                    plain_password,
                } => {
                    self.awaiting_lookup = true;
                    let store = self.shard.server.store.clone();
                    let shared = self.shared.clone();
                    if let Some(extauth) = self.shard.server.extauth.clone() {
                        // Only PLAIN is offered with external authentication.
                        glommio::spawn_local(async move {
                            let ok = match plain_password {
                                Some(p) => extauth.auth(&username, &host, &p).await,
                                None => Ok(false),
                            };
                            let ok = ok.unwrap_or_else(|e| {
                                log::warn!("{e}");
                                false
                            });
                            shared.input(ConnInput::PlainChecked(ok));
                        })
                        .detach();
                        continue;
                    }
                    glommio::spawn_local(async move {
                        // The lookup, and for PLAIN the PBKDF2 check, run on a store worker thread.
                        let result = store
                            .run(move |db| {
                                let found = db.credentials(&host, &username)?;
                                Ok(match plain_password {
                                    Some(p) => ConnInput::PlainChecked(
                                        found.is_some_and(|c| c.sha256.verify_password(&p)),
                                    ),
                                    None => ConnInput::Credentials(found),
                                })
                            })
                            .await;
                        let input = result.unwrap_or_else(|e| {
                            log::error!("credentials lookup failed: {e}");
                            ConnInput::Credentials(None)
                        });
                        shared.input(input);
                    })
                    .detach();
                }
                Action::Authenticated(jid) => {
                    let target = home(jid.bare_str(), self.shard.shards()).shard;
                    if target != self.shard.id {
                        self.moving = Some(target);
                    }
                }
                Action::Bind { resource, iq } => self.bind(resource, &iq),
                Action::Route(stanza) => {
                    if let Some(session) = &self.session {
                        router::route_from_session(&self.shard, session, stanza);
                    }
                }
                Action::Register { host, iq } => {
                    let shard = self.shard.clone();
                    let shared = self.shared.clone();
                    let ip = self.peer.ip();
                    glommio::spawn_local(async move {
                        let answer =
                            crate::modules::register::preauth(&shard, &host, ip, &iq).await;
                        shared.send_bytes(&answer);
                    })
                    .detach();
                }
                Action::Close => self.closing = true,
            }
        }
        any
    }

    fn bind(&mut self, resource: Option<String>, iq: &Stanza) {
        let user = self.c2s.user().expect("bound after SASL").clone();
        let resource = resource.unwrap_or_else(|| {
            let mut r = [0u8; 8];
            random(&mut r);
            r.iter().map(|b| format!("{b:02x}")).collect()
        });
        let full = match user.with_resource(&resource) {
            Ok(full) => full,
            Err(_) => {
                self.c2s.bound(iq, Err(BindError::BadResource));
                return;
            }
        };
        let max = self.shard.server.config.limits.max_sessions_per_user;
        let result = self.shard.sessions.borrow_mut().bind(
            user.bare_str(),
            full.resource().expect("full JID"),
            self.key,
            max,
        );
        match result {
            Ok(bound) => {
                if let Some(old) = bound.replaced {
                    let conn = self.shard.conns.borrow().get(old).cloned();
                    if let Some(c) = conn {
                        c.kill(StreamErrorCondition::Conflict);
                    }
                }
                let session = SessionRef {
                    bare: user.bare_str().into(),
                    full: bound.full,
                    conn: self.key,
                };
                self.c2s.bound(iq, Ok(full));
                router::session_hook(&self.shard, HookKind::SmRegisterConnection, &session, "");
                self.session = Some(session);
            }
            Err(e) => self.c2s.bound(iq, Err(e)),
        }
    }

    fn finish(mut self, outcome: Outcome) {
        self.shard.conns.borrow_mut().remove(self.key);
        if let Some(session) = self.session.take() {
            let removed = self
                .shard
                .sessions
                .borrow_mut()
                .unbind(&session.bare, self.key);
            if let Some(s) = removed
                && s.available
            {
                router::broadcast_unavailable(&self.shard, &session);
                router::session_hook(&self.shard, HookKind::UnsetPresence, &session, "");
            }
            router::session_hook(&self.shard, HookKind::SmRemoveConnection, &session, "");
        }
        match outcome {
            Outcome::Closed => {
                if let Some(tls) = &mut self.tls {
                    tls.send_close_notify();
                }
            }
            Outcome::Moving(target) => self.hand_over(target),
        }
    }

    fn hand_over(mut self, target: usize) {
        // SAFETY: the descriptor is valid while `self.stream` lives; it is duplicated before the stream
        // (and its descriptor) is dropped, so the socket stays open for the home shard.
        let fd =
            match unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) }.try_clone_to_owned() {
                Ok(fd) => fd,
                Err(e) => {
                    log::error!("{}: cannot hand the connection over: {e}", self.peer);
                    return;
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
        let moved = MovedConnection {
            fd,
            peer: self.peer,
            tls: self.tls.take(),
            c2s: self.c2s,
            unparsed,
        };
        let shard = self.shard.clone();
        drop(self.stream);
        let _ = shard.send(target, ShardMsg::Adopt(Box::new(moved)), Overflow::Spill);
    }
}

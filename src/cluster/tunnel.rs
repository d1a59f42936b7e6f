//! Client connections across hosts (docs/cluster-protocol.md §8). A client stays connected to the host
//! it reached (the **edge**); once SASL names its account, its stream continues at the home of its bare
//! JID, on another host when placement says so, as a connection moves to its home shard within a host.
//! The edge keeps the socket and its TLS and relays the plaintext stream both ways ([`relay`]): the
//! client's bytes go to the home in `CONN_DATA` frames, and the home's come back the same way. The
//! home runs the whole session — stream, bind, presence, roster, every module — over a [`TunnelIo`]
//! pipe instead of a socket, so one owner holds every session of an account, `conflict` and
//! `max_sessions_per_user` hold across hosts as they do on one, and nothing of the session manager
//! changes. Either side ending sends `CONN_CLOSE`; a host leaving the view ends the connections
//! tunnelled through it ([`view_changed`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::node::AppliedView;
use super::state::{EdgeConn, ShardCluster, TunnelState};
use crate::net::driver::Detached;
use crate::placement::Home;
use crate::proto::cluster::wire::{ConnEnd, ConnOpen, Direction, Frame, Location};
use crate::shard::Shard;

/// The largest piece of a stream one `CONN_DATA` frame carries.
const MAX_CHUNK: usize = 64 * 1024;
/// Bytes for the client an edge holds unwritten before it stops reading from the client.
const EDGE_WRITE_HIGH: usize = 256 * 1024;

/// What the stream error an edge writes itself says when the home vanished.
const HOME_GONE: &[u8] =
    b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
    </stream:error></stream:stream>";

/// What the edge knows of the client when it hands the stream on.
pub struct Authenticated {
    pub user: String,
    pub host: String,
    pub secure: bool,
    pub mechanism: String,
}

/// Edge side: the connection authenticated here, and its home is on another host. Sends `CONN_OPEN`
/// and relays the socket until either side ends.
pub fn relay(shard: Rc<Shard>, home: Home, detached: Detached, who: Authenticated) {
    let Some(cluster) = shard.cluster().cloned() else {
        return;
    };
    let view = cluster.view();
    let Some(member) = view.member(home.host).cloned() else {
        log::warn!(
            "cluster: the home of {} left before the stream moved",
            who.user
        );
        return;
    };
    let Some(link) = cluster.link_to(shard.id(), &member) else {
        return;
    };
    let location = Location {
        node: view.identity.node.clone(),
        incarnation: view.identity.incarnation,
        shard: shard.id() as u16,
        conn: cluster.next_conn(),
    };
    let open = Frame::ConnOpen(ConnOpen {
        to_shard: home.shard as u16,
        epoch: view.epoch,
        location: location.clone(),
        user: who.user,
        host: who.host,
        secure: who.secure,
        mechanism: who.mechanism,
        peer: detached.peer.to_string(),
        unparsed: detached.unparsed.freeze(),
    });
    if link.send(&open).is_err() {
        log::warn!(
            "cluster: the link to {} is full; a client connection is refused",
            member.node
        );
        return;
    }
    let edge = Rc::new(EdgeConn {
        inbox: RefCell::new(VecDeque::new()),
        ended: Cell::new(None),
        waker: RefCell::new(None),
        home: (member.node.clone(), member.incarnation),
    });
    cluster
        .edges
        .borrow_mut()
        .insert(location.conn, edge.clone());
    // SAFETY: the descriptor was duplicated for this hand-over and is owned by `detached.fd` alone.
    let stream = unsafe { TcpStream::from_raw_fd(detached.fd.into_raw_fd()) };
    let mut r = Relay {
        shard: shard.clone(),
        cluster,
        stream,
        tls: detached.tls,
        edge,
        location,
        home_shard: home.shard as u16,
        wbuf: Vec::new(),
        wpos: 0,
        rbuf: vec![0; 16 * 1024],
    };
    glommio::spawn_local(async move {
        let end = std::future::poll_fn(|cx| r.poll(cx)).await;
        r.finish(end).await;
    })
    .detach();
}

/// How a relay ended.
enum RelayEnd {
    /// The client closed (or its socket broke): the home is told.
    Client,
    /// The home ended the stream; everything it sent is written.
    Home,
    /// The link to the home could not take more of the client's bytes.
    Overload,
}

struct Relay {
    shard: Rc<Shard>,
    cluster: Rc<ShardCluster>,
    stream: TcpStream,
    tls: Option<Box<rustls::ServerConnection>>,
    edge: Rc<EdgeConn>,
    location: Location,
    home_shard: u16,
    /// Bytes for the client's socket (TLS records, or plaintext without TLS).
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
}

impl Relay {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        loop {
            let mut progress = false;
            // What the home sent, into the client's stream.
            loop {
                let Some(b) = self.edge.inbox.borrow_mut().pop_front() else {
                    break;
                };
                progress = true;
                match &mut self.tls {
                    Some(tls) => {
                        if tls.writer().write_all(&b).is_err() {
                            return Poll::Ready(RelayEnd::Client);
                        }
                    }
                    None => self.wbuf.extend_from_slice(&b),
                }
            }
            if let Some(tls) = &mut self.tls {
                while tls.wants_write() {
                    if tls.write_tls(&mut self.wbuf).is_err() {
                        return Poll::Ready(RelayEnd::Client);
                    }
                }
            }
            while self.wpos < self.wbuf.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf[self.wpos..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.wpos += n;
                        progress = true;
                    }
                    Poll::Ready(_) => return Poll::Ready(RelayEnd::Client),
                    Poll::Pending => break,
                }
            }
            if self.wpos == self.wbuf.len() {
                self.wbuf.clear();
                self.wpos = 0;
            }
            if self.edge.ended.get().is_some() && self.wbuf.is_empty() {
                return Poll::Ready(RelayEnd::Home);
            }
            // The client's bytes, to the home, while the client's side is not backed up.
            if self.edge.ended.get().is_none() && self.wbuf.len() - self.wpos < EDGE_WRITE_HIGH {
                match Pin::new(&mut self.stream).poll_read(cx, &mut self.rbuf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(RelayEnd::Client);
                    }
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        let plain = match self.decrypt(n) {
                            Ok(p) => p,
                            Err(()) => return Poll::Ready(RelayEnd::Client),
                        };
                        for chunk in plain.chunks(MAX_CHUNK) {
                            if !self.to_home(Frame::ConnData {
                                to_shard: self.home_shard,
                                direction: Direction::ToHome,
                                location: self.location.clone(),
                                data: Bytes::copy_from_slice(chunk),
                            }) {
                                return Poll::Ready(RelayEnd::Overload);
                            }
                        }
                    }
                    Poll::Pending => {}
                }
            }
            if !progress {
                *self.edge.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
    }

    /// The plaintext in the `n` bytes just read.
    fn decrypt(&mut self, n: usize) -> Result<Vec<u8>, ()> {
        let Some(tls) = &mut self.tls else {
            return Ok(self.rbuf[..n].to_vec());
        };
        let mut rest = &self.rbuf[..n];
        let mut plain = Vec::new();
        while !rest.is_empty() {
            tls.read_tls(&mut rest).map_err(|_| ())?;
            tls.process_new_packets().map_err(|_| ())?;
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match tls.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(k) => plain.extend_from_slice(&chunk[..k]),
                    Err(_) => break,
                }
            }
        }
        Ok(plain)
    }

    fn to_home(&self, frame: Frame) -> bool {
        let (node, inc) = &self.edge.home;
        match self.cluster.link_to_node(self.shard.id(), node, *inc) {
            Some(link) => link.send(&frame).is_ok(),
            None => false,
        }
    }

    async fn finish(mut self, end: RelayEnd) {
        use futures_lite::AsyncWriteExt;
        self.cluster.edges.borrow_mut().remove(&self.location.conn);
        match end {
            RelayEnd::Client | RelayEnd::Overload => {
                let reason = if matches!(end, RelayEnd::Overload) {
                    ConnEnd::Overload
                } else {
                    ConnEnd::Normal
                };
                self.to_home(Frame::ConnClose {
                    to_shard: self.home_shard,
                    direction: Direction::ToHome,
                    location: self.location.clone(),
                    end: reason,
                });
            }
            RelayEnd::Home => {}
        }
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let mut out = Vec::new();
            while tls.wants_write() {
                if tls.write_tls(&mut out).is_err() {
                    break;
                }
            }
            let _ = self.stream.write_all(&out).await;
        }
        let _ = self.stream.close().await;
    }
}

/// A client stream that authenticated on another host of the cluster and continues here, at its
/// session's home: what the c2s glue needs to take it over.
pub struct FromEdge {
    pub host: String,
    pub user: crate::proto::jid::Jid,
    pub mechanism: String,
    pub secure: bool,
    pub peer: SocketAddr,
    pub pipe: TunnelIo,
    pub unparsed: BytesMut,
}

/// Home side: a client authenticated on another host, and its session lives here; `None` when this
/// shard does not take it (the edge is told).
pub fn open_at_home(shard: &Rc<Shard>, c: ConnOpen) -> Option<FromEdge> {
    let cluster = shard.cluster().cloned()?;
    let refuse = |why: &str| {
        log::info!(
            "cluster: a connection of {} from {} is refused here: {why}",
            c.user,
            c.location.node
        );
        if let Some(link) =
            cluster.link_to_node(shard.id(), &c.location.node, c.location.incarnation)
        {
            let _ = link.send(&Frame::ConnClose {
                to_shard: c.location.shard,
                direction: Direction::ToEdge,
                location: c.location.clone(),
                end: ConnEnd::Gone,
            });
        }
    };
    if !cluster.accepting() {
        refuse("this host is out of the cluster, or has just joined (§9.2)");
        return None;
    }
    let Ok(user) = crate::proto::jid::Jid::parse(&c.user) else {
        refuse("not a JID");
        return None;
    };
    if !shard.is_home(user.bare_str()) {
        refuse("not its home under this host's view");
        return None;
    }
    let state = Rc::new(TunnelState {
        inbox: RefCell::new(VecDeque::new()),
        eof: Cell::new(false),
        waker: RefCell::new(None),
    });
    cluster
        .tunnels
        .borrow_mut()
        .insert(c.location.clone(), state.clone());
    let pipe = TunnelIo {
        shard: shard.clone(),
        cluster: cluster.clone(),
        state,
        location: c.location.clone(),
        closed: false,
    };
    let peer: SocketAddr = c
        .peer
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    Some(FromEdge {
        host: c.host,
        user,
        mechanism: c.mechanism,
        secure: c.secure,
        peer,
        pipe,
        unparsed: BytesMut::from(&c.unparsed[..]),
    })
}

/// `CONN_DATA` for a connection of this shard (either side).
pub fn data(shard: &Rc<Shard>, direction: Direction, location: &Location, data: Bytes) {
    let Some(cluster) = shard.cluster() else {
        return;
    };
    match direction {
        Direction::ToHome => {
            if let Some(t) = cluster.tunnels.borrow().get(location) {
                t.inbox.borrow_mut().push_back(data);
                if let Some(w) = t.waker.borrow_mut().take() {
                    w.wake();
                }
            }
        }
        Direction::ToEdge => {
            if let Some(e) = cluster.edges.borrow().get(&location.conn) {
                e.inbox.borrow_mut().push_back(data);
                e.wake();
            }
        }
    }
}

/// `CONN_CLOSE` for a connection of this shard (either side).
pub fn closed(shard: &Rc<Shard>, direction: Direction, location: &Location, end: ConnEnd) {
    let Some(cluster) = shard.cluster() else {
        return;
    };
    match direction {
        Direction::ToHome => {
            if let Some(t) = cluster.tunnels.borrow_mut().remove(location) {
                t.end();
            }
        }
        Direction::ToEdge => {
            if let Some(e) = cluster.edges.borrow().get(&location.conn) {
                if end == ConnEnd::Gone {
                    e.inbox
                        .borrow_mut()
                        .push_back(Bytes::from_static(HOME_GONE));
                }
                e.ended.set(Some(end));
                e.wake();
            }
        }
    }
}

/// A new view: connections tunnelled to or from a host that is no longer a member end.
pub fn view_changed(_shard: &Rc<Shard>, cluster: &ShardCluster, view: &AppliedView) {
    let gone: Vec<Location> = cluster
        .tunnels
        .borrow()
        .keys()
        .filter(|l| !view.has(&l.node, l.incarnation))
        .cloned()
        .collect();
    for l in gone {
        if let Some(t) = cluster.tunnels.borrow_mut().remove(&l) {
            t.end();
        }
    }
    for e in cluster.edges.borrow().values() {
        if !view.has(&e.home.0, e.home.1) && e.ended.get().is_none() {
            e.inbox
                .borrow_mut()
                .push_back(Bytes::from_static(HOME_GONE));
            e.ended.set(Some(ConnEnd::Gone));
            e.wake();
        }
    }
}

/// This host is out of the cluster: every tunnelled connection ends, on both sides.
pub fn end_all(_shard: &Rc<Shard>, cluster: &ShardCluster) {
    for (_, t) in cluster.tunnels.borrow_mut().drain() {
        t.end();
    }
    for e in cluster.edges.borrow().values() {
        if e.ended.get().is_none() {
            e.inbox
                .borrow_mut()
                .push_back(Bytes::from_static(HOME_GONE));
            e.ended.set(Some(ConnEnd::Gone));
            e.wake();
        }
    }
}

/// A session's stream at its home, when the client's socket is on another host: reads what the edge
/// relayed, writes through this shard's link to the edge.
pub struct TunnelIo {
    shard: Rc<Shard>,
    cluster: Rc<ShardCluster>,
    state: Rc<TunnelState>,
    location: Location,
    closed: bool,
}

impl TunnelIo {
    fn send(&self, frame: &Frame) -> bool {
        match self.cluster.link_to_node(
            self.shard.id(),
            &self.location.node,
            self.location.incarnation,
        ) {
            Some(link) => link.send(frame).is_ok(),
            None => false,
        }
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let mut inbox = this.state.inbox.borrow_mut();
        if let Some(front) = inbox.front_mut() {
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front[..n]);
            if n == front.len() {
                inbox.pop_front();
            } else {
                let _ = front.split_to(n);
            }
            return Poll::Ready(Ok(n));
        }
        if this.state.eof.get() {
            return Poll::Ready(Ok(0));
        }
        *this.state.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.state.eof.get() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(MAX_CHUNK);
        let frame = Frame::ConnData {
            to_shard: this.location.shard,
            direction: Direction::ToEdge,
            location: this.location.clone(),
            data: Bytes::copy_from_slice(&buf[..n]),
        };
        if this.send(&frame) {
            Poll::Ready(Ok(n))
        } else {
            // The link to the edge is full or gone: this stream ends (§3.8).
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.close();
        Poll::Ready(Ok(()))
    }
}

impl TunnelIo {
    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.cluster.tunnels.borrow_mut().remove(&self.location);
        if !self.state.eof.get() {
            self.send(&Frame::ConnClose {
                to_shard: self.location.shard,
                direction: Direction::ToEdge,
                location: self.location.clone(),
                end: ConnEnd::Normal,
            });
        }
    }
}

impl Drop for TunnelIo {
    fn drop(&mut self) {
        self.close();
    }
}

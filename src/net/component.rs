//! The connection driver for external components (XEP-0114): one task per component connection that
//! owns its socket, parser and [`ComponentStream`], registers the component's domain as a route on every
//! shard after the handshake (the server-wide registry decides `conflict`), hands the component's stanzas
//! to the router, and writes what the router delivers to it. Components stay on the shard that accepted
//! them; other shards reach them over the mesh.

use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::conn::ConnShared;
use crate::proto::component::{ComponentAction, ComponentStream};
use crate::proto::xml::{Stanza, StreamParser, TargetStream};
use crate::shard::{Overflow, Shard, ShardMsg};

/// Writes a stanza to the component connection `conn` of this shard.
pub fn deliver(shard: &Rc<Shard>, conn: usize, stanza: &Stanza, from: &str) {
    let c = shard.conns.borrow().get(conn).cloned();
    if let Some(c) = c {
        c.deliver(stanza, from);
    }
}

/// Serves a newly accepted component connection on `shard`.
pub fn accept(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let shared = Rc::new(ConnShared::new(
        shard.server.config.limits.max_output_queue_bytes,
        TargetStream::COMPONENT,
    ));
    let key = shard.conns.borrow_mut().insert(shared.clone());
    let mut id = [0u8; 12];
    getrandom::fill(&mut id).expect("the OS random source works");
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let settings = shard.server.components.clone();
    let timeout = settings.handshake_timeout;
    let mut d = Driver {
        parser: StreamParser::new(shard.server.limits),
        fsm: ComponentStream::new(settings, id, Instant::now()),
        shard,
        shared,
        key,
        stream,
        domain: None,
        closing: false,
        eof: false,
        buf: vec![0; 16 * 1024],
        timer: Some(glommio::timer::Timer::new(timeout)),
    };
    glommio::spawn_local(async move {
        std::future::poll_fn(|cx| d.poll(cx)).await;
        d.finish();
    })
    .detach();
}

struct Driver {
    shard: Rc<Shard>,
    shared: Rc<ConnShared>,
    key: usize,
    stream: TcpStream,
    parser: StreamParser,
    fsm: ComponentStream,
    domain: Option<String>,
    closing: bool,
    eof: bool,
    buf: Vec<u8>,
    timer: Option<glommio::timer::Timer>,
}

impl Driver {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut progress = false;
            self.shared.trim.set(false);
            if let Some(condition) = self.shared.kill.take() {
                self.fsm.stream_error(condition, None);
            }
            progress |= self.do_actions();
            if let Some(timer) = &mut self.timer {
                if self.domain.is_some() {
                    self.timer = None;
                } else if Pin::new(timer).poll(cx).is_ready() {
                    self.timer = None;
                    self.fsm.tick(Instant::now());
                    continue;
                }
            }
            // Write what is queued.
            loop {
                let mut out = self.shared.out.borrow_mut();
                if out.is_empty() {
                    break;
                }
                match Pin::new(&mut self.stream).poll_write(cx, &out[..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        out.advance(n);
                        progress = true;
                    }
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => break,
                }
            }
            let flushed = self.shared.out.borrow().is_empty();
            if flushed && (self.closing || self.eof) {
                return Poll::Ready(());
            }
            if !self.closing && !self.eof {
                let mut buf = std::mem::take(&mut self.buf);
                match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(0)) => {
                        self.eof = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.input(&buf[..n]);
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
                self.buf = buf;
            }
            if !progress {
                *self.shared.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
    }

    fn input(&mut self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() && !self.closing {
            let n = self.parser.feed(rest);
            rest = &rest[n..];
            loop {
                if self.closing {
                    return;
                }
                match self.parser.next_event() {
                    Ok(Some(e)) => {
                        self.fsm.handle_event(e);
                        self.do_actions();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.fsm.handle_parse_error(e);
                        self.do_actions();
                        return;
                    }
                }
            }
            if n == 0 && !rest.is_empty() {
                self.fsm.stream_error(
                    crate::proto::errors::StreamErrorCondition::PolicyViolation,
                    None,
                );
                self.do_actions();
                return;
            }
        }
    }

    fn do_actions(&mut self) -> bool {
        let mut any = false;
        while let Some(a) = self.fsm.poll_action() {
            any = true;
            match a {
                ComponentAction::Send(b) => self.shared.out.borrow_mut().extend_from_slice(&b),
                ComponentAction::Register(domain) => {
                    let ok = register(&self.shard, &domain, self.key);
                    if ok {
                        log::info!("component {domain} connected");
                        self.domain = Some(domain);
                    }
                    self.fsm.registered(ok);
                }
                ComponentAction::Route(stanza) => {
                    let from: Arc<str> = stanza.from().unwrap_or_default().into();
                    crate::shard::hot_path(|| crate::router::route(&self.shard, stanza, from));
                }
                ComponentAction::Close => self.closing = true,
            }
        }
        any
    }

    fn finish(self) {
        self.shard.conns.borrow_mut().remove(self.key);
        if let Some(domain) = &self.domain {
            unregister(&self.shard, domain, self.key);
            log::info!("component {domain} disconnected");
        }
    }
}

/// Claims `domain` server-wide and installs the route on every shard; false when it is taken.
fn register(shard: &Rc<Shard>, domain: &str, conn: usize) -> bool {
    {
        let mut owners = shard
            .server
            .component_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if owners.contains_key(domain) {
            return false;
        }
        owners.insert(domain.to_string(), (shard.id, conn));
    }
    broadcast(shard, domain, Some((shard.id, conn)));
    true
}

fn unregister(shard: &Rc<Shard>, domain: &str, conn: usize) {
    {
        let mut owners = shard
            .server
            .component_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if owners.get(domain) != Some(&(shard.id, conn)) {
            return;
        }
        owners.remove(domain);
    }
    broadcast(shard, domain, None);
}

fn broadcast(shard: &Rc<Shard>, domain: &str, route: Option<(usize, usize)>) {
    match route {
        Some(r) => {
            shard.components.borrow_mut().insert(domain.to_string(), r);
        }
        None => {
            shard.components.borrow_mut().remove(domain);
        }
    }
    for peer in 0..shard.shards() {
        if peer != shard.id {
            // Route changes always wait in the spill queue rather than being lost.
            let _ = shard.send(
                peer,
                ShardMsg::ComponentRoute {
                    domain: domain.into(),
                    route,
                },
                Overflow::Spill,
            );
        }
    }
}

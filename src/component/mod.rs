//! The external component glue (XEP-0114, ejabberd_service): one per component connection, on top of the
//! stream driver. It feeds the driver's events to the [`ComponentStream`] machine; after the handshake it
//! claims the component's domain in the server-wide registry (a second connection for the same domain
//! gets `conflict`) and installs the route on every shard; the component's stanzas go to the router, and
//! the route goes when the connection does. Components stay on the shard that accepted them; other shards
//! reach them over the mesh.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use glommio::net::TcpStream;

use crate::mesh::ShardMsg;
use crate::metrics::ConnKind;
use crate::net::driver::{self, Control, DriverEnv, Ending, Io, StreamGlue, Transport};
use crate::probe::hot_path;
use crate::proto::component::{ComponentAction, ComponentStream};
use crate::proto::errors::{Closing, StreamErrorCondition};
use crate::proto::xml::{Event, TargetStream, XmlError};
use crate::router::{self, Origin};
use crate::shard::Shard;
use crate::sink::{Sink, SinkId};

/// Serves a newly accepted component connection on `shard`.
pub fn accept(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let sink = Rc::new(Sink::new(
        shard.config().limits.max_output_queue_bytes,
        TargetStream::COMPONENT,
    ));
    let id = shard.sinks().borrow_mut().insert(sink.clone());
    crate::metrics::with(|m| {
        m.accepted(ConnKind::Component);
        m.opened(ConnKind::Component);
    });
    let mut stream_id = [0u8; 12];
    getrandom::fill(&mut stream_id).expect("the OS random source works");
    let stream_id: String = stream_id.iter().map(|b| format!("{b:02x}")).collect();
    let settings = shard.server().components.clone();
    let now = Instant::now();
    let deadline = now + settings.handshake_timeout;
    let env = DriverEnv {
        limits: shard.server().limits,
        starttls: shard.server().starttls.clone(),
        read_buf: shard.read_buf().clone(),
    };
    let glue = ComponentGlue {
        fsm: ComponentStream::new(settings, stream_id, now),
        shard,
        id,
        peer,
        domain: None,
        deadline: Some(deadline),
        closing: None,
        killed: false,
        connected_at: None,
    };
    let transport = Transport {
        stream: Io::Tcp(stream),
        peer,
        tls: None,
        tls_up: false,
        unparsed: BytesMut::new(),
    };
    driver::spawn(glue, sink, transport, env);
}

struct ComponentGlue {
    shard: Rc<Shard>,
    id: SinkId,
    fsm: ComponentStream,
    peer: SocketAddr,
    domain: Option<String>,
    deadline: Option<Instant>,
    /// Why the machine closed the stream, once it did.
    closing: Option<Closing>,
    /// The shard ended the stream (shutdown, a full output queue).
    killed: bool,
    connected_at: Option<Instant>,
}

impl ComponentGlue {
    fn do_actions(&mut self, ctl: &mut Control) -> bool {
        let mut any = false;
        while let Some(a) = self.fsm.poll_action() {
            any = true;
            match a {
                ComponentAction::Send(b) => ctl.sink().send_own(b),
                ComponentAction::Register(domain) => {
                    let ok = register(&self.shard, &domain, self.id);
                    if ok {
                        log::info!(
                            event = "login", domain = domain.as_str(), peer:% = self.peer;
                            "component connected"
                        );
                        self.domain = Some(domain);
                        self.deadline = None;
                        self.connected_at = Some(Instant::now());
                    } else {
                        log::info!(
                            event = "refused", reason = "conflict", domain = domain.as_str(),
                            peer:% = self.peer;
                            "component domain already connected"
                        );
                    }
                    self.fsm.registered(ok);
                }
                ComponentAction::Route(stanza) => {
                    let from: Arc<str> = stanza.from().unwrap_or_default().into();
                    hot_path(|| router::route(&self.shard, Origin::Component, stanza, from));
                }
                ComponentAction::Close(why) => {
                    ctl.close();
                    self.closing.get_or_insert(why);
                    if self.domain.is_none() && !self.killed {
                        self.log_refusal(why);
                    }
                }
            }
        }
        any
    }

    /// The `refused` line of a component stream the server ended before the handshake completed.
    fn log_refusal(&self, why: Closing) {
        let reason = match why {
            Closing::ByPeer | Closing::TlsRefused => return,
            // The registry's `conflict` has its own line, written where it is decided.
            Closing::StreamError(StreamErrorCondition::Conflict) => return,
            Closing::StreamError(StreamErrorCondition::NotAuthorized) => "handshake",
            Closing::AuthTimeout => "auth-timeout",
            Closing::StreamError(_) | Closing::TooManyAuthFailures => "stream-error",
        };
        log::info!(
            event = "refused", reason = reason,
            condition = why.condition().map(|c| c.as_str()),
            domain = self.fsm.requested_domain(), peer:% = self.peer;
            "component refused"
        );
    }
}

impl StreamGlue for ComponentGlue {
    fn event(&mut self, event: Event, ctl: &mut Control) {
        self.fsm.handle_event(event);
        self.do_actions(ctl);
    }

    fn parse_error(&mut self, error: XmlError, ctl: &mut Control) {
        self.fsm.handle_parse_error(error);
        self.do_actions(ctl);
    }

    fn poll(&mut self, ctl: &mut Control) -> bool {
        self.do_actions(ctl)
    }

    fn kill(&mut self, condition: StreamErrorCondition, text: Option<&str>, ctl: &mut Control) {
        if !self.fsm.is_closed() {
            self.killed = true;
        }
        self.fsm.stream_error(condition, text);
        self.do_actions(ctl);
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn timeout(&mut self, now: Instant, ctl: &mut Control) {
        self.deadline = None;
        self.fsm.tick(now);
        self.do_actions(ctl);
    }

    fn backpressured(&self) -> bool {
        self.shard.backpressured()
    }

    fn finish(self, _ending: Ending) {
        self.shard.sinks().borrow_mut().remove(self.id);
        crate::metrics::with(|m| m.closed(ConnKind::Component));
        if let Some(domain) = &self.domain {
            unregister(&self.shard, domain, self.id);
            let reason = match self.closing {
                None => "dropped",
                Some(Closing::ByPeer) => "closed",
                Some(Closing::StreamError(StreamErrorCondition::SystemShutdown)) if self.killed => {
                    "shutdown"
                }
                Some(_) if self.killed => "killed",
                Some(_) => "stream-error",
            };
            let duration_ms = self
                .connected_at
                .map_or(0, |t| t.elapsed().as_millis() as u64);
            log::info!(
                event = "logout", domain = domain.as_str(), reason = reason,
                condition = self.closing.and_then(Closing::condition).map(|c| c.as_str()),
                duration_ms = duration_ms, peer:% = self.peer;
                "component disconnected"
            );
        }
    }
}

/// Claims `domain` server-wide and installs the route on every shard; false when it is taken, here
/// or on another host of the cluster (as far as this one has heard: two hosts claiming a domain in
/// the same instant both win, each routing to its own).
fn register(shard: &Rc<Shard>, domain: &str, sink: SinkId) -> bool {
    if matches!(
        shard.routes().borrow().lookup(domain),
        Some(crate::router::table::Route::Remote { .. })
    ) {
        return false;
    }
    {
        let mut owners = shard
            .server()
            .component_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if owners.contains_key(domain) {
            return false;
        }
        owners.insert(domain.to_string(), (shard.id(), sink));
    }
    announce(shard, domain, Some((shard.id(), sink)));
    true
}

fn unregister(shard: &Rc<Shard>, domain: &str, sink: SinkId) {
    {
        let mut owners = shard
            .server()
            .component_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if owners.get(domain) != Some(&(shard.id(), sink)) {
            return;
        }
        owners.remove(domain);
    }
    announce(shard, domain, None);
}

/// Installs the route here and, through the mesh (waiting rather than lost), on every other shard.
fn announce(shard: &Rc<Shard>, domain: &str, route: Option<(usize, SinkId)>) {
    shard.routes().borrow_mut().set_component(domain, route);
    shard.broadcast(|| ShardMsg::ComponentRoute {
        domain: domain.into(),
        route,
    });
    crate::cluster::routing::announce_component(shard, domain, route.is_some());
}

//! One shard's cluster state (docs/cluster-protocol.md §3, §8): the view it serves under, its outbound
//! links (one per peer host, to shard `this shard mod S_peer` there), the client connections tunnelled
//! through it in either direction, and the counts of what its links received. Owned by its shard and
//! never shared between threads; what the frames mean is in the routing and tunnel files beside it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

use super::node::{AppliedView, ClusterShared};
use super::presence_ledger::PresenceLedger;
use super::transport::{InboundStreams, LinkSettings, OutboundLink};
use crate::proto::cluster::wire::{ConnEnd, Location, Member, ResponseStatus};

/// What the stream error an edge writes itself says when the home vanished.
const HOME_GONE: &[u8] =
    b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
    </stream:error></stream:stream>";

/// A shard's cluster state. Owned by its shard; nothing here crosses threads.
pub struct ShardCluster {
    pub shared: Arc<ClusterShared>,
    pub(crate) view: RefCell<Arc<AppliedView>>,
    pub(crate) settings: RefCell<Rc<LinkSettings>>,
    /// By peer node: the incarnation the link was made for, and the link.
    pub(crate) links: RefCell<HashMap<String, (u64, Rc<OutboundLink>)>>,
    /// Client sockets of this shard whose session lives on another host, by connection id.
    pub(crate) edges: RefCell<HashMap<u64, Rc<EdgeConn>>>,
    /// Sessions of this shard whose client socket is on another host, by the socket's location.
    pub(crate) tunnels: RefCell<HashMap<Location, Rc<TunnelState>>>,
    next_conn: Cell<u64>,
    /// What the links this shard accepted have received, per stream (for resumption, §3.4).
    pub inbound: Rc<RefCell<InboundStreams>>,
    /// Whether this shard serves as a member now (false while the host is out of the cluster).
    pub(crate) serving: Cell<bool>,
    /// Since when each member's link has been down, as shard 0 watches them (§9.1).
    pub(crate) down_since: RefCell<HashMap<String, Instant>>,
    /// The presences this shard's accounts received from sessions homed on other hosts (§9.2).
    pub(crate) presence: RefCell<PresenceLedger>,
    /// This shard's requests to other hosts that wait for an answer (§10).
    pub(crate) waiting: RefCell<Waiting>,
}

impl ShardCluster {
    pub fn new(shared: Arc<ClusterShared>) -> ShardCluster {
        let view = shared.view();
        let settings = Rc::new(shared.link_settings(&view.identity));
        ShardCluster {
            shared,
            view: RefCell::new(Arc::new(AppliedView {
                // Not applied yet: the first tick applies the published view.
                generation: 0,
                epoch: 0,
                members: Vec::new(),
                placement: view.placement.clone(),
                me: None,
                identity: view.identity.clone(),
                accept_after: view.accept_after,
            })),
            settings: RefCell::new(settings),
            links: RefCell::new(HashMap::new()),
            edges: RefCell::new(HashMap::new()),
            tunnels: RefCell::new(HashMap::new()),
            next_conn: Cell::new(1),
            inbound: Rc::new(RefCell::new(InboundStreams::default())),
            serving: Cell::new(false),
            down_since: RefCell::new(HashMap::new()),
            presence: RefCell::default(),
            waiting: RefCell::default(),
        }
    }

    /// The view this shard serves under.
    pub fn view(&self) -> Arc<AppliedView> {
        self.view.borrow().clone()
    }

    pub fn settings(&self) -> Rc<LinkSettings> {
        self.settings.borrow().clone()
    }

    /// Whether this shard serves now: the host is a member and its lease is not in doubt.
    pub fn serving(&self) -> bool {
        self.serving.get()
    }

    /// Whether a new client connection may be taken now (a member, past the hold after joining).
    pub fn accepting(&self) -> bool {
        self.serving.get() && Instant::now() >= self.view.borrow().accept_after
    }

    /// A fresh connection id for a client socket of this shard.
    pub fn next_conn(&self) -> u64 {
        let n = self.next_conn.get();
        self.next_conn.set(n + 1);
        n
    }

    /// This shard's link to `member`, made when there is none for its incarnation.
    /// What the metrics show of this shard's part of the cluster.
    pub fn figures(&self) -> crate::metrics::ClusterFigures {
        let view = self.view();
        let mut links: Vec<(String, bool, u64, u64)> = self
            .links
            .borrow()
            .iter()
            .map(|(node, (_, link))| {
                let (sent, acked) = link.counts();
                (node.clone(), link.is_up(), sent, acked)
            })
            .collect();
        links.sort();
        crate::metrics::ClusterFigures {
            epoch: view.epoch,
            members: view.members.len() as u64,
            serving: self.serving(),
            ledger_entries: self.presence.borrow().len() as u64,
            links,
        }
    }

    pub fn link_to(&self, from_shard: usize, member: &Member) -> Option<Rc<OutboundLink>> {
        if let Some((inc, link)) = self.links.borrow().get(&member.node)
            && *inc == member.incarnation
        {
            return Some(link.clone());
        }
        let addr: SocketAddr = match member.address.parse() {
            Ok(a) => a,
            Err(e) => {
                log::error!(
                    "cluster: member {} advertises `{}`, not an ip:port address ({e})",
                    member.node,
                    member.address
                );
                return None;
            }
        };
        let link = Rc::new(OutboundLink::start(
            self.settings(),
            from_shard as u16,
            addr,
            (from_shard % usize::from(member.shards.max(1))) as u16,
            Some((member.node.clone(), member.incarnation)),
        ));
        let old = self
            .links
            .borrow_mut()
            .insert(member.node.clone(), (member.incarnation, link.clone()));
        if let Some((_, old)) = old {
            // The node restarted: what its old incarnation never acknowledged is re-routed by the
            // caller's next tick (it is a new stream to the new incarnation).
            old.close();
        }
        Some(link)
    }

    /// The link to the member at host index `host` of the current view.
    pub fn link_to_host(&self, from_shard: usize, host: usize) -> Option<(Rc<OutboundLink>, u64)> {
        let view = self.view();
        let member = view.member(host)?;
        Some((self.link_to(from_shard, member)?, view.epoch))
    }

    /// The link to `node` at `incarnation`, when it is a member of the current view.
    pub fn link_to_node(
        &self,
        from_shard: usize,
        node: &str,
        incarnation: u64,
    ) -> Option<Rc<OutboundLink>> {
        let view = self.view();
        let member = view
            .members
            .iter()
            .find(|m| m.node == node && m.incarnation == incarnation)?;
        self.link_to(from_shard, member)
    }
}

/// An edge connection as its shard's frame handling sees it: bytes from the home, in order, and
/// whether the home ended the stream.
pub struct EdgeConn {
    pub(crate) inbox: RefCell<VecDeque<Bytes>>,
    pub(crate) ended: Cell<Option<ConnEnd>>,
    pub(crate) waker: RefCell<Option<Waker>>,
    /// The home's node and incarnation.
    pub(crate) home: (String, u64),
    /// The domain the client's stream addressed (for a stream header the edge may have to write).
    pub(crate) host: String,
    /// Whether the home has sent anything (its stream header) yet.
    pub(crate) heard: Cell<bool>,
    /// The session's full JID once the home bound it (§8.4).
    pub(crate) full: RefCell<Option<String>>,
}

impl EdgeConn {
    /// The home is gone: the client's stream ends with `<system-shutdown/>`, after a stream header
    /// when the home never sent one (RFC 6120 §4.9.1.1: the error follows a header).
    pub(crate) fn home_gone(&self) {
        if self.ended.get().is_some() {
            return;
        }
        let mut inbox = self.inbox.borrow_mut();
        if !self.heard.get() {
            inbox.push_back(Bytes::from(format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                 xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='{}'>",
                self.host
            )));
        }
        inbox.push_back(Bytes::from_static(HOME_GONE));
        drop(inbox);
        self.ended.set(Some(ConnEnd::Gone));
        self.wake();
    }

    pub(crate) fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A tunnelled session's input as its home shard sees it.
pub struct TunnelState {
    pub(crate) inbox: RefCell<VecDeque<Bytes>>,
    pub(crate) eof: Cell<bool>,
    pub(crate) waker: RefCell<Option<Waker>>,
}

impl TunnelState {
    pub(crate) fn end(&self) {
        self.eof.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// The requests of one shard that wait for an answer, by id; the id's top 16 bits name the shard,
/// so that an answer arriving on another shard's link finds its way.
#[derive(Default)]
pub struct Waiting {
    pub(crate) next: u64,
    pub(crate) by_id:
        std::collections::HashMap<u64, futures_channel::oneshot::Sender<(ResponseStatus, Bytes)>>,
}

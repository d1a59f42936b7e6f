//! The mesh between the shards of one host: the messages they exchange ([`ShardMsg`]), the bounded
//! glommio channels that carry them, and the overflow policy for a full channel. Nothing here awaits: a
//! send either lands in the peer's channel, waits in this shard's per-peer spill queue, or comes back to
//! the caller, who answers it (DESIGN.md §2: a mesh consumer that awaited a send could deadlock).
//!
//! The policy, by name ([`Overflow`]):
//! - [`Overflow::Bounce`]: a message waits in the spill queue, in order, up to [`SPILL_CAP`]; beyond it
//!   the send fails and hands the message back, so the caller can answer its sender with
//!   `resource-constraint`. Stanzas from clients and components take this path.
//! - [`Overflow::Spill`]: the message always waits. For what must not be lost and is bounded elsewhere:
//!   connections moving home (bounded by the connection cap), route changes, and stanzas the server
//!   itself generates (IQ answers, error replies: one per request, and requests are bounded by the
//!   read backpressure below).
//!
//! From [`SPILL_HIGH_WATER`] waiting messages on any peer, [`Outbox::backpressured`] is true and the
//! shard's connections pause reading, so a burst slows its senders through TCP instead of bouncing.
//! Spill queues are retried on every send to that peer and by the shard's housekeeping tick.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::BytesMut;
use glommio::channels::channel_mesh::Senders;

use crate::modules::ctx::ModuleJob;
use crate::proto::c2s::C2s;
use crate::proto::xml::Stanza;

/// Messages between shards. Everything in them is `Send`; a stanza travels as its refcounted bytes.
pub enum ShardMsg {
    /// Deliver a stanza to a local account of the receiving (home) shard; `from` is stamped on it.
    Deliver { stanza: Stanza, from: Arc<str> },
    /// One stanza for several local accounts of the receiving shard (ejabberd's route_multicast, a
    /// presence broadcast): sent once per destination shard, each recipient's `to` stamped when written.
    Multicast {
        stanza: Stanza,
        from: Arc<str>,
        to: Vec<Arc<str>>,
    },
    /// A client connection moving to its home shard after SASL.
    Adopt(Box<MovedConnection>),
    /// A stanza for the external component serving `domain`, whose connection is on the receiving shard.
    ToComponent {
        domain: Box<str>,
        stanza: Stanza,
        from: Arc<str>,
    },
    /// An external component connected (`Some(sink)` on the sending shard) or left (`None`): every
    /// shard's route table follows.
    ComponentRoute {
        domain: Box<str>,
        route: Option<(usize, crate::sink::SinkId)>,
    },
    /// Work a module sends to the shard that owns some state of its (`ModuleCtx::send_home`).
    Module(ModuleJob),
    /// An external component connected to another host of the cluster (`Some`: node, incarnation,
    /// shard) or left it (`None`): every shard's route table follows.
    RemoteRoute {
        domain: Box<str>,
        route: Option<(Arc<str>, u64, usize)>,
    },
    /// A frame from another host of the cluster for this shard (a stanza, a tunnelled connection's
    /// bytes), handed on by the shard whose link received it.
    Cluster(Box<crate::proto::cluster::wire::Frame>),
    /// An available or unavailable presence from a session homed on another host, for accounts of
    /// the receiving shard: delivered, and noted in the shard's presence ledger so that they learn the
    /// session is gone if its host dies (docs/cluster-protocol.md §9.2).
    RemotePresence(Box<RemotePresence>),
}

pub struct RemotePresence {
    pub stanza: Stanza,
    pub from: Arc<str>,
    /// The recipients of a multicast (each `to` stamped when written); empty for one stanza delivered
    /// to its own `to`.
    pub multicast: Vec<Arc<str>>,
    /// The host the presence came from, where its sender's session lives.
    pub node: Arc<str>,
    pub incarnation: u64,
    pub available: bool,
}

/// A connection in transit between shards: its socket, TLS state, stream state and unparsed bytes.
pub struct MovedConnection {
    pub fd: OwnedFd,
    pub peer: SocketAddr,
    pub tls: Option<Box<rustls::ServerConnection>>,
    pub c2s: C2s,
    pub unparsed: BytesMut,
}

/// The named policies for a full mesh channel (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Bounce,
    Spill,
}

/// Messages that may wait in one peer's spill queue before new [`Overflow::Bounce`] ones come back.
pub const SPILL_CAP: usize = 16 * 1024;
/// Spill length at which connections pause reading (backpressure through TCP).
pub const SPILL_HIGH_WATER: usize = 1024;

/// Why a channel refused a message; the message comes back either way.
pub enum Refused<T> {
    /// The channel is full for now.
    Full(T),
    /// The peer is gone (only while the server stops).
    Closed(T),
}

/// The channels to the other shards, as the overflow policy sees them: a non-blocking send per peer.
pub trait Peers<T> {
    fn try_send_to(&self, to: usize, msg: T) -> Result<(), Refused<T>>;
}

impl Peers<ShardMsg> for Senders<ShardMsg> {
    fn try_send_to(&self, to: usize, msg: ShardMsg) -> Result<(), Refused<ShardMsg>> {
        match Senders::try_send_to(self, to, msg) {
            Ok(()) => Ok(()),
            Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m))) => {
                Err(Refused::Full(m))
            }
            Err(glommio::GlommioError::Closed(glommio::ResourceType::Channel(m))) => {
                Err(Refused::Closed(m))
            }
            // Not a channel error: nothing to hand back (the old code logged and went on too).
            Err(e) => {
                log::error!("a mesh send to shard {to} failed: {e}");
                Ok(())
            }
        }
    }
}

/// This shard's spill queues, one per peer, and the policy over them.
pub struct Outbox<T> {
    queues: RefCell<Vec<VecDeque<T>>>,
    counts: RefCell<OutboxCounts>,
}

/// What an outbox did, for the metrics: messages handed to each peer's channel, messages that had to
/// wait in a spill queue, messages refused at its cap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub sent: Vec<u64>,
    pub spilled: u64,
    pub refused: u64,
}

impl<T> Outbox<T> {
    pub fn new(peers: usize) -> Outbox<T> {
        Outbox {
            queues: RefCell::new((0..peers).map(|_| VecDeque::new()).collect()),
            counts: RefCell::new(OutboxCounts {
                sent: vec![0; peers],
                ..OutboxCounts::default()
            }),
        }
    }

    /// The counts so far, and what waits for each peer now.
    pub fn counts(&self) -> (OutboxCounts, Vec<u64>) {
        let waiting = self
            .queues
            .borrow()
            .iter()
            .map(|q| q.len() as u64)
            .collect();
        (self.counts.borrow().clone(), waiting)
    }

    /// Sends without waiting. A full channel applies `policy`; the message comes back only for
    /// [`Overflow::Bounce`] past [`SPILL_CAP`]. A closed channel (the server is stopping) drops it.
    // The returned message is the bounce path's input, not an error to propagate: boxing it would cost
    // an allocation on every full-queue bounce for nothing.
    #[allow(clippy::result_large_err)]
    pub fn send(
        &self,
        peers: &(impl Peers<T> + ?Sized),
        to: usize,
        msg: T,
        policy: Overflow,
    ) -> Result<(), T> {
        let mut queues = self.queues.borrow_mut();
        let queue = &mut queues[to];
        // Order is kept: while a spill queue holds messages, new ones go behind them.
        let msg = if queue.is_empty() {
            match peers.try_send_to(to, msg) {
                Ok(()) => {
                    self.counts.borrow_mut().sent[to] += 1;
                    return Ok(());
                }
                Err(Refused::Full(m)) => m,
                Err(Refused::Closed(_)) => {
                    log::debug!("mesh: shard {to} is gone; a message is dropped at shutdown");
                    return Ok(());
                }
            }
        } else {
            msg
        };
        let cap = match policy {
            Overflow::Bounce => SPILL_CAP,
            Overflow::Spill => usize::MAX,
        };
        if queue.len() >= cap {
            self.counts.borrow_mut().refused += 1;
            return Err(msg);
        }
        self.counts.borrow_mut().spilled += 1;
        queue.push_back(msg);
        drop(queues);
        self.flush(peers, to);
        Ok(())
    }

    /// Moves what waits for `to` into its channel, in order, as far as it takes them.
    pub fn flush(&self, peers: &(impl Peers<T> + ?Sized), to: usize) {
        let mut queues = self.queues.borrow_mut();
        let queue = &mut queues[to];
        while let Some(msg) = queue.pop_front() {
            match peers.try_send_to(to, msg) {
                Ok(()) => self.counts.borrow_mut().sent[to] += 1,
                Err(Refused::Full(m)) => {
                    queue.push_front(m);
                    break;
                }
                Err(Refused::Closed(_)) => {
                    queue.clear();
                    break;
                }
            }
        }
    }

    pub fn flush_all(&self, peers: &(impl Peers<T> + ?Sized)) {
        let n = self.queues.borrow().len();
        for to in 0..n {
            self.flush(peers, to);
        }
    }

    /// Whether anything waits (the housekeeping tick retries every millisecond while it does).
    pub fn spilled(&self) -> bool {
        self.queues.borrow().iter().any(|q| !q.is_empty())
    }

    /// Whether a spill queue is long enough that connections should stop reading for a moment.
    pub fn backpressured(&self) -> bool {
        self.queues
            .borrow()
            .iter()
            .any(|q| q.len() >= SPILL_HIGH_WATER)
    }

    /// Messages waiting for `to`.
    pub fn waiting(&self, to: usize) -> usize {
        self.queues.borrow()[to].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Channels of a fixed capacity that a test drains by hand.
    struct FakePeers {
        channels: RefCell<Vec<VecDeque<u32>>>,
        capacity: usize,
        closed: Cell<bool>,
    }

    impl FakePeers {
        fn new(peers: usize, capacity: usize) -> FakePeers {
            FakePeers {
                channels: RefCell::new(vec![VecDeque::new(); peers]),
                capacity,
                closed: Cell::new(false),
            }
        }
        fn drain(&self, to: usize) -> Vec<u32> {
            self.channels.borrow_mut()[to].drain(..).collect()
        }
    }

    impl Peers<u32> for FakePeers {
        fn try_send_to(&self, to: usize, msg: u32) -> Result<(), Refused<u32>> {
            if self.closed.get() {
                return Err(Refused::Closed(msg));
            }
            let mut c = self.channels.borrow_mut();
            if c[to].len() >= self.capacity {
                return Err(Refused::Full(msg));
            }
            c[to].push_back(msg);
            Ok(())
        }
    }

    #[test]
    fn a_full_channel_spills_in_order_and_drains_in_order() {
        let peers = FakePeers::new(2, 4);
        let out = Outbox::new(2);
        for i in 0..10 {
            assert!(out.send(&peers, 1, i, Overflow::Bounce).is_ok());
        }
        assert_eq!(out.waiting(1), 6);
        assert!(out.spilled());
        assert_eq!(peers.drain(1), vec![0, 1, 2, 3]);
        // A new message goes behind the spilled ones even though the channel has room now.
        out.send(&peers, 1, 10, Overflow::Bounce).ok().unwrap();
        assert_eq!(peers.drain(1), vec![4, 5, 6, 7]);
        out.flush_all(&peers);
        assert_eq!(peers.drain(1), vec![8, 9, 10]);
        assert!(!out.spilled());
        assert!(peers.drain(0).is_empty(), "other peers untouched");
        let (counts, waiting) = out.counts();
        assert_eq!(counts.sent, vec![0, 11]);
        assert_eq!(counts.spilled, 7, "4 to 10 waited");
        assert_eq!(waiting, vec![0, 0]);
    }

    #[test]
    fn bounce_hands_the_message_back_at_the_cap_and_spill_never_does() {
        let peers = FakePeers::new(1, 0);
        let out = Outbox::new(1);
        for i in 0..SPILL_CAP as u32 {
            out.send(&peers, 0, i, Overflow::Bounce).ok().unwrap();
        }
        assert_eq!(out.send(&peers, 0, 99, Overflow::Bounce).err(), Some(99));
        // What must not be lost (a server-generated IQ answer, a connection moving home) still waits.
        assert!(out.send(&peers, 0, 100, Overflow::Spill).is_ok());
        assert_eq!(out.waiting(0), SPILL_CAP + 1);
        assert_eq!(out.counts().0.refused, 1);
    }

    #[test]
    fn backpressure_starts_at_the_high_water_mark() {
        let peers = FakePeers::new(2, 0);
        let out = Outbox::new(2);
        for i in 0..SPILL_HIGH_WATER as u32 - 1 {
            out.send(&peers, 1, i, Overflow::Bounce).ok().unwrap();
        }
        assert!(!out.backpressured());
        out.send(&peers, 1, 0, Overflow::Bounce).ok().unwrap();
        assert!(out.backpressured());
    }

    #[test]
    fn a_closed_peer_drops_quietly() {
        let peers = FakePeers::new(1, 0);
        let out = Outbox::new(1);
        out.send(&peers, 0, 1, Overflow::Bounce).ok().unwrap();
        peers.closed.set(true);
        out.flush_all(&peers);
        assert!(!out.spilled());
        assert!(out.send(&peers, 0, 2, Overflow::Bounce).is_ok());
    }
}

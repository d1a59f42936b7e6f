//! A connection's output as the rest of its shard sees it: the [`Sink`] that the session manager, the
//! router and the modules hand stanzas to, and the per-shard table of sinks ([`Sinks`]) that gives each a
//! generational [`SinkId`]. Stanzas stay stanzas (their refcounted bytes and the `from` to stamp) until
//! the connection's driver writes them, so that what was handed to a connection can be counted and kept
//! for resending (XEP-0198) before it becomes bytes. The memory a slow reader can pin is bounded by the
//! cap: a sink over it ends its stream with `policy-violation`. A session names its connection by
//! `SinkId`, never by a reusable slot: an id whose connection is gone finds nothing, even after the slot
//! is reused.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

use bytes::BytesMut;
use slab::Slab;

use crate::proto::errors::StreamErrorCondition;
use crate::proto::xml::{Stanza, TargetStream, Trace};

/// A connection of one shard: its slot and the generation that slot had when it was given out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SinkId {
    index: u32,
    generation: u32,
}

/// What waits to be written, in order.
enum Outgoing {
    /// A stanza with `from` stamped when written (the zero-copy writer).
    Stanza { stanza: Stanza, from: Arc<str> },
    /// A stanza sent to many (a presence broadcast), its `to` stamped too: one copy of its bytes serves
    /// every recipient of a shard.
    Addressed {
        stanza: Stanza,
        from: Arc<str>,
        to: Arc<str>,
    },
    /// Bytes the server wrote itself (error replies, stored messages) or the stream's own framing.
    Bytes(Vec<u8>),
}

/// Estimated bytes a queued stanza adds when written (the `from` attribute and declarations).
const STAMP_ALLOWANCE: usize = 64;

/// The part of a connection other tasks of its shard may touch.
pub struct Sink {
    queue: RefCell<VecDeque<Outgoing>>,
    /// Bytes in `queue`, as counted for the cap.
    queued: Cell<usize>,
    /// Written bytes not yet on the wire (taken by the driver's TLS or socket writes).
    out: RefCell<BytesMut>,
    waker: RefCell<Option<Waker>>,
    kill: Cell<Option<StreamErrorCondition>>,
    /// The text that goes with `kill` (an operator's reason), kept apart so `kill` stays a `Cell`.
    kill_text: RefCell<Option<Box<str>>>,
    /// Set by the shard's periodic sweep: release idle buffers.
    trim: Cell<bool>,
    max_out: usize,
    /// What the peer's stream declares (a client's or a component's).
    target: TargetStream<'static>,
    /// Sampled stanzas written into `out` and not yet on the wire (per-stage latency); a few at most.
    traces: RefCell<Vec<Trace>>,
}

/// Sampled stanzas a sink follows at once; more (a burst to one slow reader) go unrecorded.
const MAX_TRACES: usize = 32;

impl Sink {
    pub fn new(max_out: usize, target: TargetStream<'static>) -> Sink {
        Sink {
            // Grown on demand: a 4 KiB buffer per connection at accept left a 4 KiB hole per session in the
            // heap once the idle sweep released it.
            queue: RefCell::new(VecDeque::new()),
            queued: Cell::new(0),
            out: RefCell::new(BytesMut::new()),
            waker: RefCell::new(None),
            kill: Cell::new(None),
            kill_text: RefCell::new(None),
            trim: Cell::new(false),
            max_out,
            target,
            traces: RefCell::new(Vec::new()),
        }
    }

    /// Whether `more` bytes fit under the cap; when not, the stream is ended with `policy-violation`.
    fn admit(&self, more: usize) -> bool {
        if self.out.borrow().len() + self.queued.get() + more > self.max_out {
            self.kill(StreamErrorCondition::PolicyViolation);
            return false;
        }
        self.queued.set(self.queued.get() + more);
        true
    }

    /// Queues `stanza`, to be written with `from` stamped, without copying its bytes or allocating.
    pub fn deliver(&self, stanza: &Stanza, from: &Arc<str>) {
        self.deliver_owned(stanza.clone(), from.clone())
    }

    /// [`Sink::deliver`] for a stanza the caller hands over (one recipient): not even a reference
    /// count changes.
    pub fn deliver_owned(&self, stanza: Stanza, from: Arc<str>) {
        if !self.admit(stanza.as_bytes().len() + from.len() + STAMP_ALLOWANCE) {
            return;
        }
        self.queue
            .borrow_mut()
            .push_back(Outgoing::Stanza { stanza, from });
        self.wake();
    }

    /// Queues `stanza` to be written with both `from` and `to` stamped (one recipient of a broadcast).
    pub fn deliver_addressed(&self, stanza: &Stanza, from: &Arc<str>, to: &Arc<str>) {
        let size = stanza.as_bytes().len() + from.len() + to.len() + STAMP_ALLOWANCE;
        if !self.admit(size) {
            return;
        }
        self.queue.borrow_mut().push_back(Outgoing::Addressed {
            stanza: stanza.clone(),
            from: from.clone(),
            to: to.clone(),
        });
        self.wake();
    }

    /// Queues bytes the server wrote itself (error replies, stored messages), under the same cap.
    pub fn send_bytes(&self, bytes: &[u8]) {
        if !self.admit(bytes.len()) {
            return;
        }
        self.queue
            .borrow_mut()
            .push_back(Outgoing::Bytes(bytes.to_vec()));
        self.wake();
    }

    /// Queues the stream's own output (headers, features, SASL): not counted against the cap, which
    /// bounds what others make a connection hold.
    pub fn send_own(&self, bytes: Vec<u8>) {
        self.queue.borrow_mut().push_back(Outgoing::Bytes(bytes));
        self.wake();
    }

    /// Ends the stream with `condition` (the first one asked for wins).
    pub fn kill(&self, condition: StreamErrorCondition) {
        self.kill_with_text(condition, None)
    }

    /// Ends the stream with `condition` and a `<text/>` for the peer (an operator's kick).
    pub fn kill_with_text(&self, condition: StreamErrorCondition, text: Option<&str>) {
        if self.kill.get().is_none() {
            self.kill.set(Some(condition));
            *self.kill_text.borrow_mut() = text.map(Into::into);
        }
        self.wake();
    }

    /// Asks the connection to free its idle buffers (called by the shard's sweep).
    pub fn trim(&self) {
        self.trim.set(true);
        self.wake();
    }

    pub fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    // ---- the driver's side ----

    pub fn set_waker(&self, waker: &Waker) {
        *self.waker.borrow_mut() = Some(waker.clone());
    }

    pub fn take_kill(&self) -> Option<StreamErrorCondition> {
        self.kill.take()
    }

    /// The text of the kill just taken, if it had one.
    pub fn take_kill_text(&self) -> Option<Box<str>> {
        self.kill_text.borrow_mut().take()
    }

    pub fn take_trim(&self) -> bool {
        self.trim.take()
    }

    /// Writes what is queued into the output buffer (stanzas through the zero-copy writer, `from`
    /// stamped); returns how many stanzas were written.
    pub fn write_queued(&self) -> usize {
        let mut queue = self.queue.borrow_mut();
        if queue.is_empty() {
            return 0;
        }
        let mut out = self.out.borrow_mut();
        let mut stanzas = 0;
        crate::metrics::with(|m| {
            for item in queue.drain(..) {
                let stanza = match &item {
                    Outgoing::Stanza { stanza, from } => {
                        stanza.write_to(&mut *out, &self.target, Some(from), None);
                        stanza
                    }
                    Outgoing::Addressed { stanza, from, to } => {
                        stanza.write_to(&mut *out, &self.target, Some(from), Some(to));
                        stanza
                    }
                    Outgoing::Bytes(b) => {
                        out.extend_from_slice(b);
                        continue;
                    }
                };
                stanzas += 1;
                m.stanza_out(stanza.kind());
                if stanza.trace.sampled() {
                    let mut traces = self.traces.borrow_mut();
                    if traces.len() < MAX_TRACES {
                        traces.push(stanza.trace);
                    }
                }
            }
        });
        self.queued.set(0);
        stanzas
    }

    /// Everything written is on the wire: the sampled stanzas among it end their journey now.
    pub fn on_the_wire(&self) {
        let mut traces = self.traces.borrow_mut();
        if !traces.is_empty() {
            crate::metrics::written(&traces);
            traces.clear();
        }
    }

    /// The written bytes not yet on the wire.
    pub fn out(&self) -> std::cell::RefMut<'_, BytesMut> {
        self.out.borrow_mut()
    }

    /// Whether nothing waits, queued or written.
    pub fn is_flushed(&self) -> bool {
        self.queue.borrow().is_empty() && self.out.borrow().is_empty()
    }

    /// Gives back the memory of empty buffers (an idle connection).
    pub fn release_idle(&self) {
        let mut out = self.out.borrow_mut();
        if out.is_empty() && out.capacity() > 0 {
            *out = BytesMut::new();
        }
        let mut queue = self.queue.borrow_mut();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        let mut traces = self.traces.borrow_mut();
        if traces.is_empty() && traces.capacity() > 0 {
            *traces = Vec::new();
        }
    }
}

/// The connections of one shard, by generational id.
#[derive(Default)]
pub struct Sinks {
    slab: Slab<(u32, Rc<Sink>)>,
    next_generation: u32,
}

impl Sinks {
    pub fn insert(&mut self, sink: Rc<Sink>) -> SinkId {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let index = self.slab.insert((generation, sink)) as u32;
        SinkId { index, generation }
    }

    /// The connection `id` names, if it is still there.
    pub fn get(&self, id: SinkId) -> Option<Rc<Sink>> {
        match self.slab.get(id.index as usize) {
            Some((g, s)) if *g == id.generation => Some(s.clone()),
            _ => None,
        }
    }

    pub fn remove(&mut self, id: SinkId) {
        if self.get(id).is_some() {
            self.slab.remove(id.index as usize);
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every connection, cloned out so their methods may touch the table again.
    pub fn all(&self) -> Vec<Rc<Sink>> {
        self.slab.iter().map(|(_, (_, s))| s.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::xml::{Limits, parse_element};

    #[test]
    fn a_reused_slot_does_not_answer_for_the_old_id() {
        let mut sinks = Sinks::default();
        let a = sinks.insert(Rc::new(Sink::new(1024, TargetStream::CLIENT)));
        sinks.remove(a);
        let b = sinks.insert(Rc::new(Sink::new(1024, TargetStream::CLIENT)));
        assert_eq!(a.index, b.index, "the slot is reused");
        assert!(sinks.get(a).is_none());
        assert!(sinks.get(b).is_some());
        sinks.remove(a);
        assert_eq!(sinks.len(), 1, "removing a stale id removes nothing");
    }

    #[test]
    fn stanzas_are_written_in_order_with_from_stamped_and_the_cap_holds() {
        let sink = Sink::new(300, TargetStream::CLIENT);
        let s = parse_element(
            b"<message xmlns='jabber:client' to='b@x'><body>hi</body></message>",
            &Limits::default(),
        )
        .unwrap();
        let from: Arc<str> = "a@x/r".into();
        sink.send_own(b"<x/>".to_vec());
        sink.deliver(&s, &from);
        assert_eq!(sink.write_queued(), 1);
        let text = String::from_utf8(sink.out().to_vec()).unwrap();
        assert!(text.starts_with("<x/><message"), "{text}");
        assert!(text.contains("from='a@x/r'"), "{text}");
        assert!(sink.take_kill().is_none());
        for _ in 0..3 {
            sink.deliver(&s, &from);
        }
        assert_eq!(
            sink.take_kill(),
            Some(StreamErrorCondition::PolicyViolation)
        );
    }
}

//! One link's reliability, sans-IO (docs/cluster-protocol.md §3.4, §3.5, §3.8): [`Outbound`] is the
//! sending end of a stream (its numbered data frames kept until acknowledged, the bound and its
//! overflow, resending after a reconnect, what is left to re-route when the receiver is gone) and
//! [`Inbound`] the receiving end (the count it acknowledges, when to say so). Both keep the idle tick
//! and the silence that makes a peer suspect. Frames and `now` in, bytes out; the socket and the timers
//! are the caller's.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::wire::{Frame, RawFrame, WireError};

/// An `ACK` after this many data frames at most (§3.4).
pub const ACK_EVERY: u64 = 64;
/// And within this long of the first frame it has not acknowledged.
pub const ACK_DELAY: Duration = Duration::from_millis(50);
/// A link's byte bound (§3.8), beside its frame bound.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// The idle tick and the silence that follows from it (§3.5).
#[derive(Debug, Clone, Copy)]
pub struct Ticks {
    pub interval: Duration,
    last_write: Instant,
    last_read: Instant,
}

impl Ticks {
    pub fn new(interval: Duration, now: Instant) -> Ticks {
        Ticks {
            interval,
            last_write: now,
            last_read: now,
        }
    }

    pub fn wrote(&mut self, now: Instant) {
        self.last_write = now;
    }

    pub fn read(&mut self, now: Instant) {
        self.last_read = now;
    }

    /// A `TICK` is due: nothing written for an interval.
    pub fn tick_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_write) >= self.interval
    }

    /// The peer has been silent for four intervals: suspect it and close.
    pub fn silent(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_read) >= self.interval * 4
    }

    /// The next instant at which [`Ticks::tick_due`] or [`Ticks::silent`] may change.
    pub fn next_deadline(&self) -> Instant {
        (self.last_write + self.interval).min(self.last_read + self.interval * 4)
    }
}

/// The link's queue is full: the frame was not taken, and the caller applies the frame kind's overflow
/// policy (§3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The peer broke the acknowledgement rules (§3.4): a protocol error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError(pub String);

impl std::fmt::Display for AckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sending end of one stream (sending node and incarnation, sending shard → receiving node and
/// incarnation). It outlives its TCP connections: a reconnect to the same receiver incarnation
/// resumes it.
#[derive(Debug)]
pub struct Outbound {
    /// Encoded data frames, oldest first: the acknowledged ones are gone, then `written` that went
    /// out on the current connection, then those not yet written.
    frames: VecDeque<Bytes>,
    /// The stream's count of acknowledged data frames.
    acked: u64,
    /// Frames at the front of `frames` written on the current connection.
    written: usize,
    bytes: usize,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbound {
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbound {
        Outbound {
            frames: VecDeque::new(),
            acked: 0,
            written: 0,
            bytes: 0,
            max_frames: max_frames.max(1),
            max_bytes,
        }
    }

    /// Queues a data frame, or refuses it when the link holds its bound.
    pub fn push(&mut self, frame: &Frame) -> Result<(), Full> {
        debug_assert!(frame.is_data(), "only data frames are numbered");
        let mut b = BytesMut::new();
        frame.encode(&mut b);
        if self.frames.len() >= self.max_frames || self.bytes + b.len() > self.max_bytes {
            return Err(Full);
        }
        self.bytes += b.len();
        self.frames.push_back(b.freeze());
        Ok(())
    }

    /// Frames queued and not acknowledged (written or not).
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Data frames pushed over the stream's life.
    pub fn sent(&self) -> u64 {
        self.acked + self.frames.len() as u64
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Appends what is not yet written to `out` (cheap: the frames are already encoded) and counts it
    /// as written; whether anything was.
    pub fn write_pending(&mut self, out: &mut BytesMut) -> bool {
        let before = self.written;
        for f in self.frames.iter().skip(self.written) {
            out.extend_from_slice(f);
        }
        self.written = self.frames.len();
        self.written > before
    }

    /// The receiver's `ACK`: drops what it has.
    pub fn on_ack(&mut self, received: u64) -> Result<(), AckError> {
        let written_total = self.acked + self.written as u64;
        if received < self.acked || received > written_total {
            return Err(AckError(format!(
                "ACK {received} outside {}..={written_total}",
                self.acked
            )));
        }
        self.drop_through(received);
        Ok(())
    }

    /// A new connection to the same receiver incarnation said it holds `received` frames of the
    /// stream: those are dropped and the rest will be written again, in order.
    pub fn resume(&mut self, received: u64) -> Result<(), AckError> {
        if received < self.acked || received > self.sent() {
            return Err(AckError(format!(
                "resume at {received} outside {}..={}",
                self.acked,
                self.sent()
            )));
        }
        self.written = 0;
        self.drop_through(received);
        Ok(())
    }

    /// The receiver incarnation is gone (restarted, left, fenced): every frame it did not acknowledge,
    /// oldest first, for the caller to re-route under the new epoch (§9.3). The stream ends here.
    pub fn abandon(&mut self) -> Vec<Result<Frame, WireError>> {
        self.written = 0;
        self.bytes = 0;
        self.frames
            .drain(..)
            .map(|mut b| {
                let raw = split_raw(&mut b);
                Frame::decode(&raw)
            })
            .collect()
    }

    fn drop_through(&mut self, received: u64) {
        while self.acked < received {
            let f = self.frames.pop_front().expect("counted above");
            self.bytes -= f.len();
            self.written = self.written.saturating_sub(1);
            self.acked += 1;
        }
    }
}

/// A whole encoded frame back as kind and body.
fn split_raw(b: &mut Bytes) -> RawFrame {
    let body = b.split_off(5);
    RawFrame { kind: b[4], body }
}

/// The receiving end of one stream: the count of data frames taken, and when to acknowledge it.
#[derive(Debug)]
pub struct Inbound {
    received: u64,
    acked: u64,
    first_unacked: Option<Instant>,
}

impl Inbound {
    /// A stream the receiver already holds `received` frames of (0 for a new one).
    pub fn new(received: u64) -> Inbound {
        Inbound {
            received,
            acked: received,
            first_unacked: None,
        }
    }

    /// A data frame was taken off the link and handed on.
    pub fn on_data(&mut self, now: Instant) {
        self.received += 1;
        self.first_unacked.get_or_insert(now);
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// An `ACK` is due: after [`ACK_EVERY`] frames, or [`ACK_DELAY`] after the first one not yet
    /// acknowledged.
    pub fn ack_due(&self, now: Instant) -> bool {
        self.received - self.acked >= ACK_EVERY
            || self
                .first_unacked
                .is_some_and(|t| now.saturating_duration_since(t) >= ACK_DELAY)
    }

    /// When the pending acknowledgement falls due, if one is pending.
    pub fn ack_deadline(&self) -> Option<Instant> {
        self.first_unacked.map(|t| t + ACK_DELAY)
    }

    /// The `ACK` to write now (the caller asked [`Inbound::ack_due`], or is writing anyway).
    pub fn take_ack(&mut self) -> Option<Frame> {
        if self.received == self.acked {
            return None;
        }
        self.acked = self.received;
        self.first_unacked = None;
        Some(Frame::Ack(self.received))
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;

//! A stream between an in-memory sender and receiver whose connection breaks at many points: every frame
//! arrives exactly once and in order; the acknowledgement rules; the bound; what is handed back for
//! re-routing; ticks and silence on a virtual clock.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::proto::cluster::wire::{FrameReader, StanzaFrame, StanzaKind, Target};

fn stanza(n: u64) -> Frame {
    Frame::Stanza(StanzaFrame {
        to_shard: 0,
        epoch: 1,
        target: Target::Home,
        from: "a@x/r".into(),
        to: "b@x".into(),
        kind: StanzaKind::Message,
        xml: Bytes::from(format!("<message id='{n}'/>")),
    })
}

fn id_of(f: &Frame) -> u64 {
    match f {
        Frame::Stanza(s) => std::str::from_utf8(&s.xml).unwrap()[13..]
            .trim_end_matches("'/>")
            .parse()
            .unwrap(),
        other => panic!("{other:?}"),
    }
}

/// A small deterministic generator, so that a failure can be replayed.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn every_frame_arrives_once_and_in_order_across_broken_connections() {
    for seed in 0..20 {
        let mut rng = Lcg(seed);
        let t0 = Instant::now();
        let mut out = Outbound::new(10_000, MAX_QUEUED_BYTES);
        let mut inbound = Inbound::new(0);
        let mut delivered = Vec::new();
        let mut next = 0u64;
        let total = 500;
        let mut rounds = 0;
        while (delivered.len() as u64) < total {
            rounds += 1;
            assert!(rounds < 10_000, "no progress");
            // The sender pushes a few.
            for _ in 0..rng.below(20) {
                if next < total {
                    out.push(&stanza(next)).unwrap();
                    next += 1;
                }
            }
            let mut wire = BytesMut::new();
            out.write_pending(&mut wire);
            // The connection carries a prefix of it, then maybe breaks.
            let breaks = rng.below(4) == 0;
            let carried = if breaks {
                rng.below(wire.len() as u64 + 1) as usize
            } else {
                wire.len()
            };
            let mut reader = FrameReader::new();
            reader.feed(&wire[..carried]);
            while let Some(raw) = reader.next_frame().unwrap() {
                delivered.push(id_of(&Frame::decode(&raw).unwrap()));
                inbound.on_data(t0);
            }
            if breaks {
                // A new connection to the same incarnation: the WELCOME says what arrived.
                out.resume(inbound.received()).unwrap();
            } else if rng.below(2) == 0 {
                // An ACK comes back (perhaps late: an older count is fine).
                if let Some(Frame::Ack(n)) = inbound.take_ack() {
                    out.on_ack(n - rng.below(2).min(n - out.acked())).unwrap();
                }
            }
        }
        let want: Vec<u64> = (0..total).collect();
        assert_eq!(delivered, want, "seed {seed}");
        assert_eq!(out.sent(), total);
    }
}

#[test]
fn acks_must_stay_within_what_was_written() {
    let mut out = Outbound::new(100, MAX_QUEUED_BYTES);
    for i in 0..5 {
        out.push(&stanza(i)).unwrap();
    }
    // Nothing written yet: no ACK may count anything.
    assert!(out.on_ack(1).is_err());
    out.write_pending(&mut BytesMut::new());
    out.on_ack(3).unwrap();
    assert_eq!((out.acked(), out.len()), (3, 2));
    assert!(out.on_ack(2).is_err(), "a count never goes back");
    assert!(out.on_ack(6).is_err(), "more than was sent");
    out.on_ack(3).unwrap();
    out.on_ack(5).unwrap();
    assert!(out.is_empty());
    // A resume beyond what was sent is a lie.
    assert!(out.resume(6).is_err());
}

#[test]
fn resuming_writes_the_rest_again_in_order() {
    let mut out = Outbound::new(100, MAX_QUEUED_BYTES);
    for i in 0..4 {
        out.push(&stanza(i)).unwrap();
    }
    out.write_pending(&mut BytesMut::new());
    out.resume(1).unwrap();
    let mut wire = BytesMut::new();
    assert!(out.write_pending(&mut wire));
    let mut r = FrameReader::new();
    r.feed(&wire);
    let mut ids = Vec::new();
    while let Some(raw) = r.next_frame().unwrap() {
        ids.push(id_of(&Frame::decode(&raw).unwrap()));
    }
    assert_eq!(ids, [1, 2, 3]);
    assert!(!out.write_pending(&mut BytesMut::new()), "nothing twice");
}

#[test]
fn a_full_link_refuses_by_frames_and_by_bytes() {
    let mut out = Outbound::new(3, MAX_QUEUED_BYTES);
    for i in 0..3 {
        out.push(&stanza(i)).unwrap();
    }
    assert_eq!(out.push(&stanza(3)), Err(Full));
    out.write_pending(&mut BytesMut::new());
    out.on_ack(1).unwrap();
    out.push(&stanza(3)).unwrap();

    let mut small = Outbound::new(100, 80);
    small.push(&stanza(0)).unwrap();
    assert_eq!(
        small.push(&stanza(1)),
        Err(Full),
        "two frames exceed 80 bytes"
    );
}

#[test]
fn abandoning_hands_back_what_was_not_acknowledged_oldest_first() {
    let mut out = Outbound::new(100, MAX_QUEUED_BYTES);
    for i in 0..5 {
        out.push(&stanza(i)).unwrap();
    }
    out.write_pending(&mut BytesMut::new());
    out.on_ack(2).unwrap();
    let back: Vec<u64> = out
        .abandon()
        .iter()
        .map(|f| id_of(f.as_ref().unwrap()))
        .collect();
    assert_eq!(back, [2, 3, 4]);
    assert!(out.is_empty());
}

#[test]
fn the_receiver_acknowledges_every_64_frames_or_after_50_ms() {
    let t0 = Instant::now();
    let mut inbound = Inbound::new(10);
    assert!(!inbound.ack_due(t0));
    assert_eq!(inbound.take_ack(), None, "nothing new since the resume");
    for _ in 0..63 {
        inbound.on_data(t0);
    }
    assert!(!inbound.ack_due(t0 + Duration::from_millis(49)));
    assert!(inbound.ack_due(t0 + ACK_DELAY));
    inbound.on_data(t0);
    assert!(inbound.ack_due(t0), "64 frames");
    assert_eq!(inbound.take_ack(), Some(Frame::Ack(74)));
    assert!(!inbound.ack_due(t0 + Duration::from_secs(1)));
    assert_eq!(inbound.ack_deadline(), None);
}

#[test]
fn ticks_when_idle_and_suspects_after_four_silent_intervals() {
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    let mut t = Ticks::new(s, t0);
    assert!(!t.tick_due(t0 + s / 2));
    assert!(t.tick_due(t0 + s));
    t.wrote(t0 + s);
    assert!(!t.tick_due(t0 + s * 3 / 2));
    assert!(!t.silent(t0 + s * 3));
    assert!(t.silent(t0 + s * 4));
    t.read(t0 + s * 3);
    assert!(!t.silent(t0 + s * 4));
    assert_eq!(t.next_deadline(), t0 + s * 2);
}

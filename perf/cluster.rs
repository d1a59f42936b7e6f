//! The cluster protocol's cost per stanza crossing hosts (docs/cluster-protocol.md), side by side in one
//! run: wrapping a chat message in a `STANZA` frame and reading it back (what a host pair pays per
//! message on top of the TCP write and read), against parsing the same stanza's XML again with the
//! stream parser (what a hop would cost if stanzas were re-serialised and re-parsed, as they are not);
//! the link's bookkeeping per frame (queue, write, count, acknowledge); and one whole handshake (two
//! HMAC-SHA256 per side: paid once per link). It ends by printing `frame vs re-parse: R`.
//!
//! Run with `cargo bench --bench cluster`; `-- --quick` for rougher figures faster.

#[path = "estimates.rs"]
mod estimates;
use estimates::mean_ns;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::Criterion;
use rjabberd::proto::cluster::handshake::{Acceptor, Identity, Initiator, Secret, Step};
use rjabberd::proto::cluster::link::{Inbound, MAX_QUEUED_BYTES, Outbound};
use rjabberd::proto::cluster::wire::{Frame, FrameReader, StanzaFrame, StanzaKind, Target};
use rjabberd::proto::xml::{Event, Limits, StreamParser};

/// A chat message as clients send them (about 300 bytes with a receipt request and a chat state).
const CHAT: &str = "<message xmlns='jabber:client' to='romeo@example.net' from='juliet@example.com/balcony' \
    type='chat' id='a6c0b1f2-55d3-4f0c-9a4e-0e4c7c0c8f1a'><body>Wherefore art thou, Romeo? Deny thy \
    father and refuse thy name.</body><active xmlns='http://jabber.org/protocol/chatstates'/>\
    <request xmlns='urn:xmpp:receipts'/></message>";

const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
    to='example.net' version='1.0'>";

fn frame() -> Frame {
    Frame::Stanza(StanzaFrame {
        to_shard: 1,
        epoch: 7,
        target: Target::Home,
        from: "juliet@example.com/balcony".into(),
        to: "romeo@example.net".into(),
        kind: StanzaKind::Message,
        xml: Bytes::from_static(CHAT.as_bytes()),
    })
}

/// Encodes the frame and reads it back whole: the per-message work of a cluster hop.
fn frame_round_trip(f: &Frame, out: &mut BytesMut, reader: &mut FrameReader) -> usize {
    out.clear();
    f.encode(out);
    reader.feed(out);
    let raw = reader.next_frame().unwrap().unwrap();
    match Frame::decode(&raw).unwrap() {
        Frame::Stanza(s) => s.xml.len() + s.to.len(),
        _ => unreachable!(),
    }
}

/// Parses the stanza again, header extracted, as a receiving host would have to without the frame.
fn reparse(parser: &mut StreamParser) -> usize {
    let mut rest = CHAT.as_bytes();
    let mut n = 0;
    while !rest.is_empty() {
        let k = parser.feed(rest);
        rest = &rest[k..];
        while let Some(e) = parser.next_event().unwrap() {
            if let Event::Stanza(s) = e {
                n += s.to().map_or(0, |t| t.len()) + s.id().map_or(0, |i| i.len());
            }
        }
    }
    n
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let f = frame();
    let mut g = c.benchmark_group("cluster_hop");
    let (mut out, mut reader) = (BytesMut::new(), FrameReader::new());
    g.bench_function("frame", |b| {
        b.iter(|| frame_round_trip(black_box(&f), &mut out, &mut reader))
    });
    let mut parser = StreamParser::new(Limits::default());
    parser.feed(HEADER.as_bytes());
    while parser.next_event().unwrap().is_some() {}
    g.bench_function("reparse", |b| b.iter(|| reparse(black_box(&mut parser))));
    // Queue, write, count and acknowledge, per frame, in batches of 64 (one ACK each).
    let mut link = Outbound::new(1 << 20, MAX_QUEUED_BYTES);
    let mut inbound = Inbound::new(0);
    let now = Instant::now();
    let mut wire = BytesMut::new();
    g.bench_function("link_bookkeeping_x64", |b| {
        b.iter(|| {
            wire.clear();
            for _ in 0..64 {
                link.push(black_box(&f)).unwrap();
            }
            link.write_pending(&mut wire);
            for _ in 0..64 {
                inbound.on_data(now);
            }
            if let Some(Frame::Ack(n)) = inbound.take_ack() {
                link.on_ack(n).unwrap();
            }
        })
    });
    g.finish();

    let me = |node: &str| Identity {
        cluster: "bench".into(),
        node: node.into(),
        incarnation: 1,
        shards: 4,
    };
    let secret = Secret::from_file_contents(&[b's'; 48]).unwrap();
    c.bench_function("cluster_handshake", |b| {
        b.iter(|| {
            let (mut a, hello) =
                Initiator::start(&me("a"), secret.clone(), 0, 1, None, [1; 32], None);
            let mut acc = Acceptor::new(me("b"), secret.clone(), [2; 32], None, now);
            let mut r = FrameReader::new();
            r.feed(&hello);
            let Ok(Step::Send(w)) = acc.on_frame(&r.next_frame().unwrap().unwrap(), |_| 0) else {
                unreachable!()
            };
            r.feed(&w);
            let Ok(Step::Send(auth)) = a.on_frame(&r.next_frame().unwrap().unwrap()) else {
                unreachable!()
            };
            r.feed(&auth);
            let Ok(Step::Up(ok, _)) = acc.on_frame(&r.next_frame().unwrap().unwrap(), |_| 0) else {
                unreachable!()
            };
            r.feed(&ok);
            black_box(a.on_frame(&r.next_frame().unwrap().unwrap()).is_ok())
        })
    });
    c.final_summary();

    let est = |group: &str, id: &str| {
        mean_ns(group, id).unwrap_or_else(|| panic!("no estimate for {group}/{id}"))
    };
    let framed = est("cluster_hop", "frame");
    let reparsed = est("cluster_hop", "reparse");
    let bookkeeping = est("cluster_hop", "link_bookkeeping_x64") / 64.0;
    println!("STANZA frame encode + read back: {framed:.0} ns per message");
    println!("re-parsing the stanza instead:   {reparsed:.0} ns per message");
    println!("link bookkeeping:                {bookkeeping:.0} ns per frame");
    println!(
        "handshake:                       {:.1} µs per link",
        est("cluster_handshake", "") / 1000.0
    );
    println!("frame vs re-parse: {:.2}", framed / reparsed);
}

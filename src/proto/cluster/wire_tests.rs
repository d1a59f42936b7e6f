//! The frame codec against itself and against hand-written bytes: every kind round-trips, whole and cut
//! into 1, 2, 5 and 10 byte pieces; the byte layout of a few frames is pinned as the specification
//! writes it; and every kind of malformed input is refused with its error.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;

fn location(n: u64) -> Location {
    Location {
        node: format!("n{n}"),
        incarnation: 0x1122_3344_5566_7788 + n,
        shard: n as u16,
        conn: 1000 + n,
    }
}

/// One frame of every kind, with fields that exercise the encodings (empty and non-ASCII strings,
/// empty and non-empty lists, negative priorities).
pub(super) fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            major: MAJOR,
            minor: MINOR,
            cluster: "chat-prod".into(),
            node: "n1".into(),
            incarnation: 42,
            shards: 2,
            from_shard: 1,
            to_shard: 0,
            to_node: String::new(),
            to_incarnation: 0,
            features: FEATURE_TLS_EXPORTER,
            nonce: [7; 32],
        }),
        Frame::Welcome(Welcome {
            refused: None,
            major: 1,
            minor: 0,
            node: "n2".into(),
            incarnation: 43,
            shards: 4,
            features: 0,
            received: 17,
            nonce: [9; 32],
        }),
        Frame::Welcome(Welcome {
            refused: Some(CloseReason::Cluster),
            major: 1,
            minor: 0,
            node: "n2".into(),
            incarnation: 43,
            shards: 4,
            features: 0,
            received: 0,
            nonce: [0; 32],
        }),
        Frame::Auth([1; 32]),
        Frame::AuthOk([2; 32]),
        Frame::Tick,
        Frame::Ack(u64::MAX),
        Frame::Close {
            reason: CloseReason::Fenced,
            text: "fenced by n3 at epoch 9".into(),
        },
        Frame::Stanza(StanzaFrame {
            to_shard: 1,
            epoch: 9,
            target: Target::Home,
            from: "juliet@example.com/balcony".into(),
            to: "romeo@example.net".into(),
            kind: StanzaKind::Message,
            xml: Bytes::from_static(b"<message type='chat'><body>caf\xc3\xa9</body></message>"),
        }),
        Frame::Stanza(StanzaFrame {
            to_shard: 0,
            epoch: 9,
            target: Target::Session(location(3)),
            from: "example.net".into(),
            to: "romeo@example.net/orchard".into(),
            kind: StanzaKind::Iq,
            xml: Bytes::from_static(b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>"),
        }),
        Frame::Stanza(StanzaFrame {
            to_shard: 0,
            epoch: 1,
            target: Target::Host,
            from: "a@b".into(),
            to: "echo.example.net".into(),
            kind: StanzaKind::Other,
            xml: Bytes::new(),
        }),
        Frame::Fanout {
            epoch: 3,
            from: "juliet@example.com/balcony".into(),
            xml: Bytes::from_static(b"<presence/>"),
            groups: vec![
                FanoutGroup {
                    to_shard: 0,
                    recipients: vec!["romeo@example.net".into(), "nurse@example.net".into()],
                },
                FanoutGroup {
                    to_shard: 1,
                    recipients: vec![],
                },
            ],
        },
        Frame::Route {
            domain: "echo.example.net".into(),
            shard: 1,
            up: true,
        },
        Frame::ConnOpen(ConnOpen {
            to_shard: 1,
            epoch: 9,
            location: location(1),
            user: "romeo@example.net".into(),
            host: "example.net".into(),
            secure: true,
            mechanism: "SCRAM-SHA-256".into(),
            peer: "192.0.2.7:50122".into(),
            unparsed: Bytes::from_static(b"<stream:stream to='example.net' version='1.0'"),
        }),
        Frame::ConnData {
            to_shard: 0,
            direction: Direction::ToHome,
            location: location(1),
            data: Bytes::from_static(b"<message to='juliet@example.com'><body>\xc3\xa9</body>"),
        },
        Frame::ConnData {
            to_shard: 3,
            direction: Direction::ToEdge,
            location: location(2),
            data: Bytes::new(),
        },
        Frame::ConnClose {
            to_shard: 0,
            direction: Direction::ToEdge,
            location: location(2),
            end: ConnEnd::Gone,
        },
        Frame::Members {
            epoch: 10,
            members: vec![
                Member {
                    node: "n1".into(),
                    incarnation: 42,
                    address: "127.0.0.2:7470".into(),
                    shards: 2,
                    state: MemberState::Up,
                    sessions: 12_345,
                },
                Member {
                    node: "n2".into(),
                    incarnation: 43,
                    address: "[::1]:7470".into(),
                    shards: 1,
                    state: MemberState::Leaving,
                    sessions: 0,
                },
            ],
        },
        Frame::Leaving {
            node: "n2".into(),
            incarnation: 43,
        },
        Frame::Request {
            id: 1,
            verb: "status".into(),
            body: Bytes::from_static(b"{}"),
        },
        Frame::Response {
            id: 1,
            status: ResponseStatus::UnknownVerb,
            body: Bytes::new(),
        },
        Frame::Optional {
            kind: 0x60,
            body: Bytes::from_static(b"future"),
        },
    ]
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        f.encode(&mut out);
    }
    out.to_vec()
}

/// Feeds `bytes` in pieces of `piece` bytes and decodes every frame that comes out.
fn decode_in_pieces(bytes: &[u8], piece: usize) -> Result<Vec<Frame>, WireError> {
    let mut reader = FrameReader::new();
    let mut out = Vec::new();
    for chunk in bytes.chunks(piece.max(1)) {
        reader.feed(chunk);
        while let Some(raw) = reader.next_frame()? {
            out.push(Frame::decode(&raw)?);
        }
    }
    assert_eq!(reader.buffered(), 0, "nothing left over");
    Ok(out)
}

#[test]
fn every_kind_round_trips_whole_and_in_pieces() {
    let frames = samples();
    let bytes = encode_all(&frames);
    for piece in [bytes.len(), 1, 2, 5, 10] {
        assert_eq!(
            decode_in_pieces(&bytes, piece).unwrap(),
            frames,
            "piece {piece}"
        );
    }
}

#[test]
fn the_kinds_are_the_specifications() {
    let kinds: Vec<u8> = samples().iter().map(Frame::kind).collect();
    assert_eq!(
        kinds,
        [
            0x01, 0x02, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12, 0x20, 0x20, 0x20, 0x21, 0x22, 0x30,
            0x31, 0x31, 0x32, 0x40, 0x41, 0x50, 0x51, 0x60
        ]
    );
    for f in samples() {
        assert_eq!(
            f.is_data(),
            f.kind() >= 0x20,
            "{f:?}: only stanza, session, membership and request frames are numbered"
        );
    }
}

/// The layout of §3.2 and §7.1, byte by byte, so that the codec cannot drift from the document.
#[test]
fn bytes_on_the_wire_are_as_specified() {
    let mut out = BytesMut::new();
    Frame::Ack(0x0102).encode(&mut out);
    assert_eq!(&out[..], &[0, 0, 0, 9, 0x11, 0, 0, 0, 0, 0, 0, 1, 2]);

    let mut out = BytesMut::new();
    Frame::Close {
        reason: CloseReason::Auth,
        text: "no".into(),
    }
    .encode(&mut out);
    assert_eq!(&out[..], &[0, 0, 0, 6, 0x12, 3, 0, 2, b'n', b'o']);

    let mut out = BytesMut::new();
    Frame::Stanza(StanzaFrame {
        to_shard: 1,
        epoch: 2,
        target: Target::Home,
        from: "a".into(),
        to: "b".into(),
        kind: StanzaKind::Presence,
        xml: Bytes::from_static(b"<p/>"),
    })
    .encode(&mut out);
    let mut want = BytesMut::new();
    want.put_u32(1 + 2 + 8 + 1 + 3 + 3 + 1 + 4 + 4);
    want.put_u8(0x20);
    want.put_u16(1);
    want.put_u64(2);
    want.put_u8(0);
    want.put_slice(&[0, 1, b'a', 0, 1, b'b', 1]);
    want.put_slice(&[0, 0, 0, 4]);
    want.put_slice(b"<p/>");
    assert_eq!(out, want);

    let mut out = BytesMut::new();
    samples()[0].encode(&mut out);
    assert_eq!(&out[5..13], b"RJCLUSTR", "HELLO starts with the magic");
}

#[test]
fn a_stanzas_xml_is_a_slice_of_what_was_read() {
    let frame = &samples()[8];
    let mut bytes = BytesMut::new();
    frame.encode(&mut bytes);
    let mut reader = FrameReader::new();
    reader.feed(&bytes);
    let raw = reader.next_frame().unwrap().unwrap();
    let Frame::Stanza(s) = Frame::decode(&raw).unwrap() else {
        panic!("a stanza frame");
    };
    let body = raw.body.as_ptr() as usize;
    let xml = s.xml.as_ptr() as usize;
    assert!(
        xml >= body && xml + s.xml.len() <= body + raw.body.len(),
        "the XML points into the frame's buffer: no copy"
    );
}

fn raw(kind: u8, body: &[u8]) -> RawFrame {
    RawFrame {
        kind,
        body: Bytes::copy_from_slice(body),
    }
}

#[test]
fn bad_lengths_are_refused_before_any_body_is_read() {
    for len in [0u32, MAX_FRAME as u32 + 1, u32::MAX] {
        let mut reader = FrameReader::new();
        reader.feed(&len.to_be_bytes());
        assert_eq!(
            reader.next_frame(),
            Err(WireError::BadLength(len as usize)),
            "{len}"
        );
    }
    // At the limit, the reader waits for the body.
    let mut reader = FrameReader::new();
    reader.feed(&(MAX_FRAME as u32).to_be_bytes());
    assert_eq!(reader.next_frame(), Ok(None));
}

#[test]
fn every_truncation_of_every_kind_is_refused() {
    for frame in samples() {
        let body = frame.body();
        if matches!(frame, Frame::Optional { .. }) {
            continue;
        }
        for cut in 0..body.len() {
            let r = Frame::decode(&raw(frame.kind(), &body[..cut]));
            assert!(
                matches!(
                    r,
                    Err(WireError::Truncated { .. } | WireError::BadValue { .. })
                ),
                "{frame:?} cut at {cut}: {r:?}"
            );
        }
    }
}

#[test]
fn a_byte_after_the_last_field_is_refused() {
    for frame in samples() {
        if matches!(frame, Frame::Optional { .. }) {
            continue;
        }
        let mut body = frame.body().to_vec();
        body.push(0);
        assert_eq!(
            Frame::decode(&raw(frame.kind(), &body)),
            Err(WireError::TrailingBytes {
                kind: frame.kind(),
                extra: 1
            }),
            "{frame:?}"
        );
    }
}

#[test]
fn values_outside_their_range_are_refused() {
    let bad = |kind: u8, body: &[u8]| match Frame::decode(&raw(kind, body)) {
        Err(WireError::BadValue { what, .. }) => what,
        other => panic!("kind 0x{kind:02x}: {other:?}"),
    };
    assert_eq!(bad(kind::CLOSE, &[10, 0, 0]), "reason");
    assert_eq!(bad(kind::WELCOME, &[42]), "status");
    // A string of invalid UTF-8, and one with a NUL.
    assert_eq!(bad(kind::CLOSE, &[0, 0, 1, 0xff]), "UTF-8");
    assert_eq!(bad(kind::CLOSE, &[0, 0, 1, 0]), "NUL in a string");
    // A HELLO from something that is not a cluster peer.
    let mut hello = samples()[0].body().to_vec();
    hello[0] = b'X';
    assert_eq!(bad(kind::HELLO, &hello), "magic");
    // A stanza with target 3, and one of kind 4.
    let mut s = BytesMut::new();
    s.put_u16(0);
    s.put_u64(1);
    s.put_u8(3);
    assert_eq!(bad(kind::STANZA, &s), "target");
    let mut s = BytesMut::new();
    s.put_u16(0);
    s.put_u64(1);
    s.put_u8(0);
    s.put_slice(&[0, 1, b'a', 0, 1, b'b', 4, 0, 0, 0, 0]);
    assert_eq!(bad(kind::STANZA, &s), "stanza kind");
    // A bool of 2: CONN_OPEN's `secure`, after to_shard, epoch, the location, user and host.
    let open = samples()
        .into_iter()
        .find(|f| matches!(f, Frame::ConnOpen(_)))
        .expect("a CONN_OPEN sample");
    let Frame::ConnOpen(c) = &open else {
        unreachable!()
    };
    let at =
        2 + 8 + (2 + c.location.node.len() + 8 + 2 + 8) + (2 + c.user.len()) + (2 + c.host.len());
    let mut p = open.body().to_vec();
    assert_eq!(p[at], 1, "the secure flag");
    p[at] = 2;
    assert_eq!(bad(kind::CONN_OPEN, &p), "bool");
    // A direction of 2.
    let mut d = BytesMut::new();
    d.put_u16(0);
    d.put_u8(2);
    assert_eq!(bad(kind::CONN_DATA, &d), "direction");
}

#[test]
fn a_forged_count_reserves_nothing() {
    // MEMBERS claiming four billion members in a 12-byte body.
    let mut body = BytesMut::new();
    body.put_u64(1);
    body.put_u32(u32::MAX);
    assert!(matches!(
        Frame::decode(&raw(kind::MEMBERS, &body)),
        Err(WireError::Truncated { .. })
    ));
}

#[test]
fn unknown_kinds_are_refused_and_optional_ones_kept() {
    for k in [0x00, 0x05, 0x13, 0x24, 0x33, 0x36, 0x42, 0x52, 0x80, 0xff] {
        assert_eq!(
            Frame::decode(&raw(k, b"")),
            Err(WireError::UnknownKind(k)),
            "0x{k:02x}"
        );
    }
    for k in [0x60, 0x7f] {
        assert_eq!(
            Frame::decode(&raw(k, b"x")),
            Ok(Frame::Optional {
                kind: k,
                body: Bytes::from_static(b"x")
            })
        );
        assert!(is_data_kind(k), "optional frames are acknowledged");
    }
}

/// The fuzz target's properties (fuzz/fuzz_targets/cluster_frames.rs) on every test run, over valid
/// frames with bytes flipped, cut or inserted: no panic, pieces change nothing, and a body the decoder
/// accepts is the canonical encoding of what it decoded.
mod mutated {
    use proptest::prelude::*;

    use super::*;

    fn check(data: &[u8], piece: usize) {
        let read = |piece: usize| {
            let mut r = FrameReader::new();
            let mut out = Vec::new();
            for c in data.chunks(piece.max(1)) {
                r.feed(c);
                loop {
                    match r.next_frame() {
                        Ok(Some(f)) => out.push(f),
                        Ok(None) => break,
                        Err(e) => return (out, Some(e)),
                    }
                }
            }
            (out, None)
        };
        let whole = read(data.len());
        assert_eq!(whole, read(piece), "pieces of {piece} changed the frames");
        for raw in &whole.0 {
            if let Ok(f) = Frame::decode(raw)
                && !matches!(f, Frame::Optional { .. })
            {
                assert_eq!(f.body(), raw.body, "{f:?} is not canonical");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn mutated_frames_never_panic_and_decode_canonically(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..6),
            piece in prop_oneof![Just(1usize), Just(2), Just(5), Just(10), Just(4096)],
        ) {
            let mut data = BytesMut::new();
            for f in samples() {
                f.encode(&mut data);
            }
            let mut data = data.to_vec();
            for (at, byte, op) in edits {
                let at = at % (data.len() + 1);
                match op {
                    0 if at < data.len() => data[at] = byte,
                    1 if at < data.len() => {
                        data.truncate(at);
                    }
                    _ => data.insert(at, byte),
                }
            }
            check(&data, piece);
        }

        #[test]
        fn random_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            piece in 1usize..16,
        ) {
            check(&data, piece);
        }
    }
}

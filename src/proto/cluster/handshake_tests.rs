//! The handshake between an in-memory initiator and acceptor: the link comes up with each side knowing
//! the other; every refusal of §4.2 is made with its reason and a `WELCOME` that says it; a wrong
//! secret fails on both sides; a resumed stream carries its count only to the same incarnation; a
//! MAC from one connection does not open another; the frames may arrive in any pieces.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::*;
use crate::proto::cluster::wire::{FrameReader, RawFrame};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-shared";

fn secret() -> Secret {
    Secret::from_file_contents(SECRET).unwrap()
}

fn id(node: &str, incarnation: u64, shards: u16) -> Identity {
    Identity {
        cluster: "chat-prod".into(),
        node: node.into(),
        incarnation,
        shards,
    }
}

/// The frames in `bytes`, fed to a reader in pieces of `piece` bytes.
fn frames(bytes: &[u8], piece: usize) -> Vec<RawFrame> {
    let mut r = FrameReader::new();
    let mut out = Vec::new();
    for c in bytes.chunks(piece.max(1)) {
        r.feed(c);
        while let Some(f) = r.next_frame().unwrap() {
            out.push(f);
        }
    }
    out
}

fn one(bytes: &[u8]) -> RawFrame {
    let mut f = frames(bytes, bytes.len());
    assert_eq!(f.len(), 1, "one frame");
    f.remove(0)
}

struct Run {
    initiator: Result<Peer, Refusal>,
    acceptor: Result<Peer, Refusal>,
}

/// A whole handshake, `piece` bytes at a time.
#[allow(clippy::too_many_arguments)]
fn run(
    a: &Identity,
    a_secret: Secret,
    b: &Identity,
    b_secret: Secret,
    to_shard: u16,
    expected: Option<(String, u64)>,
    has: u64,
    piece: usize,
) -> Run {
    let (mut init, hello) = Initiator::start(a, a_secret, 0, to_shard, expected, [1; 32], None);
    let mut acc = Acceptor::new(b.clone(), b_secret, [2; 32], None, Instant::now());
    let mut to_b = hello;
    let mut acceptor = None;
    let mut initiator = None;
    for _ in 0..4 {
        let mut to_a = BytesMut::new();
        for f in frames(&to_b, piece) {
            match acc.on_frame(&f, |_| has) {
                Ok(Step::Send(out)) => to_a.extend_from_slice(&out),
                Ok(Step::Up(out, peer)) => {
                    to_a.extend_from_slice(&out);
                    acceptor = Some(Ok(peer));
                }
                Err(r) => {
                    to_a.extend_from_slice(&r.close);
                    acceptor = Some(Err(r));
                }
            }
        }
        to_b = BytesMut::new();
        for f in frames(&to_a, piece) {
            match init.on_frame(&f) {
                Ok(Step::Send(out)) => to_b.extend_from_slice(&out),
                Ok(Step::Up(_, peer)) => initiator = Some(Ok(peer)),
                Err(r) => {
                    to_b.extend_from_slice(&r.close);
                    initiator = Some(Err(r));
                }
            }
        }
        if initiator.is_some() && acceptor.is_some() {
            break;
        }
    }
    Run {
        initiator: initiator.expect("the initiator finished"),
        acceptor: acceptor.expect("the acceptor finished"),
    }
}

#[test]
fn the_link_comes_up_with_both_sides_knowing_each_other_in_any_pieces() {
    let (a, b) = (id("n1", 11, 2), id("n2", 22, 4));
    for piece in [1000, 1, 2, 5, 10] {
        let r = run(&a, secret(), &b, secret(), 3, None, 0, piece);
        let at_a = r.initiator.unwrap();
        assert_eq!(
            (
                at_a.node.as_str(),
                at_a.incarnation,
                at_a.shards,
                at_a.shard
            ),
            ("n2", 22, 4, 3)
        );
        let at_b = r.acceptor.unwrap();
        assert_eq!(
            (
                at_b.node.as_str(),
                at_b.incarnation,
                at_b.shards,
                at_b.shard
            ),
            ("n1", 11, 2, 0)
        );
        assert_eq!((at_a.received, at_b.received), (0, 0));
    }
}

#[test]
fn another_secret_fails_on_the_acceptor_and_nothing_is_said_but_close() {
    let other = Secret::from_file_contents(b"another secret of thirty-two bytes or more!").unwrap();
    let r = run(
        &id("n1", 1, 1),
        other,
        &id("n2", 2, 1),
        secret(),
        0,
        None,
        0,
        7,
    );
    let refused = r.acceptor.unwrap_err();
    assert_eq!(refused.reason, CloseReason::Auth);
    assert_eq!(r.initiator.unwrap_err().reason, CloseReason::Auth);
}

#[test]
fn an_acceptor_with_another_secret_is_not_believed() {
    // The acceptor accepts (its check is of the initiator's MAC under *its* secret, which here fails
    // too); so build the case by hand: a correct AUTH_OK must come from the same secret.
    let (a, b) = (id("n1", 1, 1), id("n2", 2, 1));
    let (mut init, hello) = Initiator::start(&a, secret(), 0, 0, None, [1; 32], None);
    let other = Secret::from_file_contents(b"another secret of thirty-two bytes or more!").unwrap();
    let mut acc = Acceptor::new(b, other.clone(), [2; 32], None, Instant::now());
    let Ok(Step::Send(welcome)) = acc.on_frame(&one(&hello), |_| 0) else {
        panic!("a welcome");
    };
    let Ok(Step::Send(_auth)) = init.on_frame(&one(&welcome)) else {
        panic!("an auth");
    };
    // A forged AUTH_OK: the right shape, the MAC of the other secret over the same transcript.
    let transcript = transcript(
        &Frame::decode(&one(&hello)).unwrap().body(),
        &one(&welcome).body,
        None,
    );
    let mut forged = BytesMut::new();
    Frame::AuthOk(other.mac(RECEIVER_LABEL, &transcript)).encode(&mut forged);
    let refused = init.on_frame(&one(&forged)).unwrap_err();
    assert_eq!(refused.reason, CloseReason::Auth);
}

#[test]
fn each_refusal_says_why_in_a_welcome_then_closes() {
    let b = id("n2", 22, 2);
    /// Who connects, to which shard, expecting whom, and the refusal due.
    type Case = (Identity, u16, Option<(String, u64)>, CloseReason);
    let cases: Vec<Case> = vec![
        (
            Identity {
                cluster: "other".into(),
                ..id("n1", 1, 1)
            },
            0,
            None,
            CloseReason::Cluster,
        ),
        (id("n2", 1, 1), 0, None, CloseReason::Node),
        (id("n1", 1, 1), 2, None, CloseReason::Shard),
        (id("n1", 1, 1), 0, Some(("n9".into(), 0)), CloseReason::Node),
        (
            id("n1", 1, 1),
            0,
            Some(("n2".into(), 21)),
            CloseReason::Node,
        ),
    ];
    for (a, to_shard, expected, reason) in cases {
        let (_, hello) = Initiator::start(&a, secret(), 0, to_shard, expected, [1; 32], None);
        let mut acc = Acceptor::new(b.clone(), secret(), [2; 32], None, Instant::now());
        let r = acc.on_frame(&one(&hello), |_| 0).unwrap_err();
        assert_eq!(r.reason, reason, "{a:?}: {r}");
        let said = frames(&r.close, 3);
        assert_eq!(said.len(), 2, "a WELCOME and a CLOSE");
        match Frame::decode(&said[0]).unwrap() {
            Frame::Welcome(w) => assert_eq!(w.refused, Some(reason)),
            f => panic!("{f:?}"),
        }
        assert!(matches!(
            Frame::decode(&said[1]).unwrap(),
            Frame::Close { reason: r, .. } if r == reason
        ));
    }
}

#[test]
fn another_major_version_is_refused_and_a_newer_minor_speaks_ours() {
    let b = id("n2", 22, 1);
    let mut hello = Hello {
        major: MAJOR + 1,
        minor: 0,
        cluster: "chat-prod".into(),
        node: "n1".into(),
        incarnation: 1,
        shards: 1,
        from_shard: 0,
        to_shard: 0,
        to_node: String::new(),
        to_incarnation: 0,
        features: 0,
        nonce: [0; 32],
    };
    let mut bytes = BytesMut::new();
    Frame::Hello(hello.clone()).encode(&mut bytes);
    let mut acc = Acceptor::new(b.clone(), secret(), [2; 32], None, Instant::now());
    assert_eq!(
        acc.on_frame(&one(&bytes), |_| 0).unwrap_err().reason,
        CloseReason::Version
    );

    hello.major = MAJOR;
    hello.minor = MINOR + 3;
    let mut bytes = BytesMut::new();
    Frame::Hello(hello).encode(&mut bytes);
    let mut acc = Acceptor::new(b, secret(), [2; 32], None, Instant::now());
    let Ok(Step::Send(w)) = acc.on_frame(&one(&bytes), |_| 0) else {
        panic!("accepted");
    };
    match Frame::decode(&one(&w)).unwrap() {
        Frame::Welcome(w) => assert_eq!((w.major, w.minor), (MAJOR, MINOR)),
        f => panic!("{f:?}"),
    }
}

#[test]
fn a_stream_resumes_only_with_the_incarnation_it_was_sent_to() {
    let (a, b) = (id("n1", 11, 1), id("n2", 22, 1));
    // The sender knows n2 incarnation 22, and n2 has 40 frames of the stream: resume after them.
    let r = run(
        &a,
        secret(),
        &b,
        secret(),
        0,
        Some(("n2".into(), 22)),
        40,
        5,
    );
    assert_eq!(r.initiator.unwrap().received, 40);
    assert_eq!(r.acceptor.unwrap().received, 40);
    // A seed connection (incarnation unknown) starts a new stream whatever the acceptor holds.
    let r = run(&a, secret(), &b, secret(), 0, None, 40, 5);
    assert_eq!(r.initiator.unwrap().received, 0);
}

#[test]
fn a_new_peer_claiming_frames_is_refused_by_the_initiator() {
    // A WELCOME from an incarnation the initiator did not ask for may not claim frames.
    let a = id("n1", 11, 1);
    let (mut init, _) = Initiator::start(&a, secret(), 0, 0, None, [1; 32], None);
    let mut w = BytesMut::new();
    Frame::Welcome(Welcome {
        refused: None,
        major: MAJOR,
        minor: MINOR,
        node: "n2".into(),
        incarnation: 99,
        shards: 1,
        features: 0,
        received: 5,
        nonce: [3; 32],
    })
    .encode(&mut w);
    assert_eq!(
        init.on_frame(&one(&w)).unwrap_err().reason,
        CloseReason::Protocol
    );
}

#[test]
fn a_mac_does_not_open_another_connection() {
    let (a, b) = (id("n1", 11, 1), id("n2", 22, 1));
    // Connection 1: record the initiator's AUTH.
    let (mut init1, hello1) = Initiator::start(&a, secret(), 0, 0, None, [1; 32], None);
    let mut acc1 = Acceptor::new(b.clone(), secret(), [2; 32], None, Instant::now());
    let Ok(Step::Send(w1)) = acc1.on_frame(&one(&hello1), |_| 0) else {
        panic!()
    };
    let Ok(Step::Send(auth1)) = init1.on_frame(&one(&w1)) else {
        panic!()
    };
    // Connection 2, same HELLO replayed, the acceptor's nonce fresh: the old AUTH fails.
    let mut acc2 = Acceptor::new(b, secret(), [3; 32], None, Instant::now());
    let Ok(Step::Send(_)) = acc2.on_frame(&one(&hello1), |_| 0) else {
        panic!()
    };
    assert_eq!(
        acc2.on_frame(&one(&auth1), |_| 0).unwrap_err().reason,
        CloseReason::Auth
    );
}

#[test]
fn the_tls_exporter_binds_the_macs_to_the_tls_session() {
    let (a, b) = (id("n1", 11, 1), id("n2", 22, 1));
    // Both on TLS but seeing different exporters (a relay splicing two TLS sessions): refused.
    let (mut init, hello) = Initiator::start(&a, secret(), 0, 0, None, [1; 32], Some([5; 32]));
    let mut acc = Acceptor::new(b.clone(), secret(), [2; 32], Some([6; 32]), Instant::now());
    let Ok(Step::Send(w)) = acc.on_frame(&one(&hello), |_| 0) else {
        panic!()
    };
    let Ok(Step::Send(auth)) = init.on_frame(&one(&w)) else {
        panic!()
    };
    assert_eq!(
        acc.on_frame(&one(&auth), |_| 0).unwrap_err().reason,
        CloseReason::Auth
    );
    // The same exporter on both sides: up, with the feature agreed.
    let (mut init, hello) = Initiator::start(&a, secret(), 0, 0, None, [1; 32], Some([5; 32]));
    let mut acc = Acceptor::new(b, secret(), [2; 32], Some([5; 32]), Instant::now());
    let Ok(Step::Send(w)) = acc.on_frame(&one(&hello), |_| 0) else {
        panic!()
    };
    let Ok(Step::Send(auth)) = init.on_frame(&one(&w)) else {
        panic!()
    };
    let Ok(Step::Up(ok, peer)) = acc.on_frame(&one(&auth), |_| 0) else {
        panic!()
    };
    assert_eq!(peer.features, FEATURE_TLS_EXPORTER);
    assert!(matches!(init.on_frame(&one(&ok)), Ok(Step::Up(..))));
}

#[test]
fn something_that_is_not_a_peer_gets_no_answer() {
    let b = id("n2", 22, 1);
    let mut acc = Acceptor::new(b.clone(), secret(), [2; 32], None, Instant::now());
    // "GET / HTTP/1.1" read as a frame header: a huge length, so the reader refuses it first; a small
    // frame of another kind is refused by the acceptor without a word.
    let r = acc
        .on_frame(&one(&[0, 0, 0, 1, kind::TICK]), |_| 0)
        .unwrap_err();
    assert!(r.close.is_empty(), "nothing written to a stranger");
    let mut bad_magic = BytesMut::new();
    Frame::Hello(Hello {
        major: 1,
        minor: 0,
        cluster: String::new(),
        node: "x".into(),
        incarnation: 1,
        shards: 1,
        from_shard: 0,
        to_shard: 0,
        to_node: String::new(),
        to_incarnation: 0,
        features: 0,
        nonce: [0; 32],
    })
    .encode(&mut bad_magic);
    bad_magic[5] = b'X';
    let mut acc = Acceptor::new(b, secret(), [2; 32], None, Instant::now());
    assert!(
        acc.on_frame(&one(&bad_magic), |_| 0)
            .unwrap_err()
            .close
            .is_empty()
    );
}

#[test]
fn an_acceptor_gives_up_after_five_seconds() {
    let t0 = Instant::now();
    let acc = Acceptor::new(id("n2", 22, 1), secret(), [2; 32], None, t0);
    assert!(acc.expired(t0 + Duration::from_millis(4999)).is_none());
    assert_eq!(
        acc.expired(t0 + HANDSHAKE_TIMEOUT).unwrap().reason,
        CloseReason::Timeout
    );
}

#[test]
fn a_short_secret_is_refused_and_whitespace_trimmed() {
    assert!(Secret::from_file_contents(b"short\n").is_err());
    assert!(Secret::from_file_contents(&[b' '; 64]).is_err());
    let padded = [b"\n  ".as_slice(), SECRET, b"\n"].concat();
    let (a, b) = (id("n1", 1, 1), id("n2", 2, 1));
    let r = run(
        &a,
        Secret::from_file_contents(&padded).unwrap(),
        &b,
        secret(),
        0,
        None,
        0,
        9,
    );
    assert!(r.initiator.is_ok() && r.acceptor.is_ok());
}

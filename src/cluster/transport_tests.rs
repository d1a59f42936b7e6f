//! Two hosts on two executor threads over loopback TCP: a stream of frames arrives exactly once and in
//! order although the receiver drops the connection in the middle (the sender reconnects and resumes
//! where the receiver's count says); a sender with another secret never gets a link up. Over TLS
//! (certificates made here with rcgen): a link up with the exporter bound into the handshake, and
//! the refusals of §4: a certificate from another CA, one naming another node, and a host with TLS
//! against one without, either way round.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use glommio::net::TcpListener;

use super::*;
use crate::proto::cluster::wire::{StanzaFrame, StanzaKind, Target};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn settings(node: &str, incarnation: u64, secret: &[u8]) -> Rc<LinkSettings> {
    tls_settings(node, incarnation, secret, None)
}

fn tls_settings(
    node: &str,
    incarnation: u64,
    secret: &[u8],
    tls: Option<Arc<ClusterTls>>,
) -> Rc<LinkSettings> {
    Rc::new(LinkSettings {
        me: Identity {
            cluster: "test".into(),
            node: node.into(),
            incarnation,
            shards: 1,
        },
        secret: Secret::from_file_contents(secret).unwrap(),
        tick: Duration::from_millis(200),
        max_frames: 100_000,
        source: None,
        tls,
    })
}

/// A cluster CA: its certificate and what signs with it.
struct Ca {
    cert: rustls::pki_types::CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap().der().clone();
    Ca {
        cert,
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// The TLS of a host whose certificate, signed by `signer`, names `cert_names`; it trusts `trusts`.
fn host_tls(trusts: &Ca, signer: &Ca, cert_names: &str) -> Arc<ClusterTls> {
    let params = rcgen::CertificateParams::new(vec![cert_names.to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params
        .signed_by(&key, &signer.issuer)
        .unwrap()
        .der()
        .clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // A host's own certificate is checked against its CA at start: one from another CA is loaded
    // here under that CA, then made to trust `trusts` alone.
    let own = ClusterTls::new(
        vec![signer.cert.clone()],
        vec![cert.clone()],
        key.clone_key(),
        cert_names,
    );
    assert!(own.is_ok(), "{:?}", own.err());
    Arc::new(ClusterTls::new_unchecked(vec![trusts.cert.clone()], vec![cert], key).unwrap())
}

fn stanza(n: u64) -> Frame {
    Frame::Stanza(StanzaFrame {
        to_shard: 0,
        epoch: 1,
        target: Target::Home,
        from: "a@x/r".into(),
        to: "b@x".into(),
        kind: StanzaKind::Message,
        xml: Bytes::from(n.to_string()),
    })
}

/// Runs a receiver host on its own thread: it accepts connections, hands their frames' numbers to
/// the result, and drops the first connection after `break_after` frames. Returns its address and
/// what it received once `want` frames arrived (or `give_up` passed), and how the connections ended.
/// A receiver's thread: the frames' numbers it got, and how each connection ended.
type Received = std::thread::JoinHandle<(Vec<u64>, Vec<LinkEnd>)>;

fn receiver(
    break_after: usize,
    want: usize,
    give_up: Duration,
) -> (std::net::SocketAddr, Received) {
    let (addr, handle, _) = receiver_as(settings("b", 2, SECRET), break_after, want, give_up);
    (addr, handle)
}

/// [`receiver`] as any host; the third result holds the feature bits of the last sender it served.
fn receiver_as(
    me: Rc<LinkSettings>,
    break_after: usize,
    want: usize,
    give_up: Duration,
) -> (
    std::net::SocketAddr,
    Received,
    Arc<std::sync::atomic::AtomicU32>,
) {
    let features = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen_features = features.clone();
    // `LinkSettings` holds an `Rc`: what crosses to the receiver's thread is its parts.
    let (identity, secret, tls) = (me.me.clone(), me.secret.clone(), me.tls.clone());
    drop(me);
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let me = Rc::new(LinkSettings {
                    me: identity,
                    secret,
                    tick: Duration::from_millis(200),
                    max_frames: 100_000,
                    source: None,
                    tls,
                });
                let streams = Rc::new(RefCell::new(InboundStreams::default()));
                let got: Rc<RefCell<Vec<u64>>> = Rc::default();
                let ends: Rc<RefCell<Vec<LinkEnd>>> = Rc::default();
                let connections = Rc::new(Cell::new(0));
                let deadline = Instant::now() + give_up;
                let accept = {
                    let (got, ends) = (got.clone(), ends.clone());
                    async move {
                        loop {
                            let Ok(stream) = listener.accept().await else {
                                continue;
                            };
                            connections.set(connections.get() + 1);
                            let first = connections.get() == 1;
                            let (me, streams, got, ends) =
                                (me.clone(), streams.clone(), got.clone(), ends.clone());
                            let features = seen_features.clone();
                            glommio::spawn_local(async move {
                                let seen = Rc::new(Cell::new(0usize));
                                let counter = seen.clone();
                                let g = got.clone();
                                let serve = serve_inbound(stream, me, streams, move |peer, f| {
                                    features
                                        .store(peer.features, std::sync::atomic::Ordering::SeqCst);
                                    if let Frame::Stanza(s) = f {
                                        let n =
                                            std::str::from_utf8(&s.xml).unwrap().parse().unwrap();
                                        g.borrow_mut().push(n);
                                        counter.set(counter.get() + 1);
                                    }
                                });
                                let cut = async {
                                    while !(first && seen.get() >= break_after) {
                                        glommio::timer::sleep(Duration::from_millis(1)).await;
                                    }
                                    LinkEnd::Closed("cut by the test".into())
                                };
                                let end = serve.or(cut).await;
                                ends.borrow_mut().push(end);
                            })
                            .detach();
                        }
                    }
                };
                let done = async {
                    while got.borrow().len() < want && Instant::now() < deadline {
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                    }
                    // Long enough for the last ACK (due 50 ms after the last frame) to go out.
                    glommio::timer::sleep(Duration::from_millis(300)).await;
                };
                accept.or(done).await;
                let got = got.borrow().clone();
                let ends = ends.borrow().clone();
                (got, ends)
            })
    });
    (rx.recv().unwrap(), handle, features)
}

/// Runs a sender on this thread: `n` frames to `addr`, a few at a time; waits until all are
/// acknowledged or `give_up` passes; returns (sent, acked, how the last connection ended).
fn send(
    addr: std::net::SocketAddr,
    secret: &'static [u8],
    n: u64,
    give_up: Duration,
) -> (u64, u64, Option<LinkEnd>) {
    send_as(|| settings("a", 1, secret), None, addr, n, give_up)
}

/// [`send`] as any host, to the receiver `expected` (node, incarnation) when given.
fn send_as(
    me: impl FnOnce() -> Rc<LinkSettings> + 'static,
    expected: Option<(&str, u64)>,
    addr: std::net::SocketAddr,
    n: u64,
    give_up: Duration,
) -> (u64, u64, Option<LinkEnd>) {
    let expected = expected.map(|(node, inc)| (node.to_string(), inc));
    LocalExecutorBuilder::default()
        .make()
        .unwrap()
        .run(async move {
            let link = OutboundLink::start(me(), 0, addr, 0, expected);
            for i in 0..n {
                link.send(&stanza(i)).unwrap();
                if i % 50 == 0 {
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
            }
            let deadline = Instant::now() + give_up;
            while link.counts().1 < n && Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            let (sent, acked) = link.counts();
            let end = link.last_end();
            link.close();
            glommio::timer::sleep(Duration::from_millis(20)).await;
            (sent, acked, end)
        })
}

#[test]
fn frames_arrive_once_and_in_order_across_a_dropped_connection() {
    let (addr, receiver) = receiver(300, 1000, Duration::from_secs(20));
    let (sent, acked, end) = send(addr, SECRET, 1000, Duration::from_secs(20));
    let (got, ends) = receiver.join().unwrap();
    let want: Vec<u64> = (0..1000).collect();
    assert_eq!(got, want, "every frame once, in order");
    assert_eq!((sent, acked), (1000, 1000));
    assert!(
        matches!(&ends[0], LinkEnd::Closed(why) if why == "cut by the test"),
        "{ends:?}"
    );
    assert!(end.is_some(), "the sender saw the first connection end");
}

#[test]
fn a_sender_with_another_secret_gets_no_link() {
    // Both give up after a while: the sender keeps trying (and being refused) meanwhile.
    let (addr, receiver) = receiver(usize::MAX, 1, Duration::from_secs(2));
    let (_, acked, end) = send(
        addr,
        b"another secret, also thirty-two bytes long",
        5,
        Duration::from_secs(1),
    );
    assert_eq!(acked, 0);
    assert!(
        matches!(end, Some(LinkEnd::Refused(CloseReason::Auth, _))),
        "{end:?}"
    );
    let (got, ends) = receiver.join().unwrap();
    assert!(got.is_empty());
    assert!(
        ends.iter()
            .all(|e| matches!(e, LinkEnd::Refused(CloseReason::Auth, _))),
        "{ends:?}"
    );
}

#[test]
fn a_link_connects_from_the_source_address_it_is_given() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let source: std::net::IpAddr = "127.0.0.5".parse().unwrap();
    let (connected, refused) = LocalExecutorBuilder::default()
        .make()
        .unwrap()
        .run(async move {
            let connected = connect_from(Some(source), addr).await.map(|_| ());
            let refused = connect_from(Some(source), closed).await.map(|_| ());
            (connected, refused)
        });
    connected.expect("connected from 127.0.0.5");
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), source, "the listener saw the source address");
    let e = refused.expect_err("nothing listens there");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

/// One link over TLS from `sender` (node `from`) to `receiver` (node `to`): what arrived, acknowledged
/// and ended, with the feature bits the receiver saw.
#[allow(clippy::type_complexity)]
fn tls_link(
    from: (&'static str, Option<Arc<ClusterTls>>),
    to: (&'static str, Option<Arc<ClusterTls>>),
    n: u64,
    give_up: Duration,
) -> ((u64, u64, Option<LinkEnd>), (Vec<u64>, Vec<LinkEnd>), u32) {
    let (addr, receiver, features) = receiver_as(
        tls_settings(to.0, 2, SECRET, to.1),
        usize::MAX,
        n as usize,
        give_up,
    );
    let (node, tls) = from;
    let sent = send_as(
        move || tls_settings(node, 1, SECRET, tls),
        Some((to.0, 2)),
        addr,
        n,
        give_up,
    );
    let received = receiver.join().unwrap();
    (
        sent,
        received,
        features.load(std::sync::atomic::Ordering::SeqCst),
    )
}

#[test]
fn a_link_over_tls_carries_frames_and_acks_bound_to_the_exporter() {
    let ca = ca();
    let (a, b) = (host_tls(&ca, &ca, "a"), host_tls(&ca, &ca, "b"));
    // Both directions: each host as sender and as receiver.
    for (from, to) in [(("a", a.clone()), ("b", b.clone())), (("b", b), ("a", a))] {
        let ((sent, acked, _), (got, _), features) = tls_link(
            (from.0, Some(from.1)),
            (to.0, Some(to.1)),
            500,
            Duration::from_secs(20),
        );
        assert_eq!(
            got,
            (0..500).collect::<Vec<u64>>(),
            "every frame once, in order"
        );
        assert_eq!((sent, acked), (500, 500));
        assert_ne!(
            features & FEATURE_TLS_EXPORTER,
            0,
            "the MACs cover the TLS exporter (§4.3)"
        );
    }
}

#[test]
fn a_sender_with_a_certificate_from_another_ca_gets_no_link() {
    let (ca, other) = (ca(), ca());
    let ((_, acked, end), (got, ends), _) = tls_link(
        ("a", Some(host_tls(&ca, &other, "a"))),
        ("b", Some(host_tls(&ca, &ca, "b"))),
        5,
        Duration::from_secs(2),
    );
    assert_eq!(acked, 0);
    assert!(got.is_empty());
    assert!(matches!(end, Some(LinkEnd::Tls(_))), "{end:?}");
    assert!(
        !ends.is_empty() && ends.iter().all(|e| matches!(e, LinkEnd::Tls(_))),
        "{ends:?}"
    );
}

#[test]
fn a_receiver_with_a_certificate_from_another_ca_gets_no_link() {
    let (ca, other) = (ca(), ca());
    let ((_, acked, end), (got, _), _) = tls_link(
        ("a", Some(host_tls(&ca, &ca, "a"))),
        ("b", Some(host_tls(&ca, &other, "b"))),
        5,
        Duration::from_secs(2),
    );
    assert_eq!(acked, 0);
    assert!(got.is_empty());
    assert!(
        matches!(&end, Some(LinkEnd::Tls(why)) if why.contains("certificate")),
        "{end:?}"
    );
}

#[test]
fn a_certificate_naming_another_node_gets_no_link() {
    let ca = ca();
    // Host "a" holds a good certificate of the cluster, but it names "c".
    let ((_, acked, end), (got, ends), _) = tls_link(
        ("a", Some(host_tls(&ca, &ca, "c"))),
        ("b", Some(host_tls(&ca, &ca, "b"))),
        5,
        Duration::from_secs(2),
    );
    assert_eq!(acked, 0);
    assert!(got.is_empty());
    assert!(
        matches!(&end, Some(LinkEnd::Refused(CloseReason::Auth, why)) if why.contains("does not name node a")),
        "{end:?}"
    );
    assert!(
        !ends.is_empty()
            && ends
                .iter()
                .all(|e| matches!(e, LinkEnd::Refused(CloseReason::Auth, _))),
        "{ends:?}"
    );
    // And the other way: a receiver whose certificate names another node than the one dialled.
    let ((_, acked, end), (got, _), _) = tls_link(
        ("a", Some(host_tls(&ca, &ca, "a"))),
        ("b", Some(host_tls(&ca, &ca, "c"))),
        5,
        Duration::from_secs(2),
    );
    assert_eq!(acked, 0);
    assert!(got.is_empty());
    assert!(matches!(end, Some(LinkEnd::Tls(_))), "{end:?}");
}

#[test]
fn a_plaintext_sender_and_a_tls_receiver_get_no_link() {
    let ca = ca();
    let ((_, acked, end), (got, ends), _) = tls_link(
        ("a", None),
        ("b", Some(host_tls(&ca, &ca, "b"))),
        5,
        Duration::from_secs(2),
    );
    assert_eq!(acked, 0);
    assert!(got.is_empty());
    assert!(
        matches!(&end, Some(LinkEnd::Refused(CloseReason::Protocol, why)) if why.contains("TLS")),
        "{end:?}"
    );
    assert!(
        !ends.is_empty()
            && ends
                .iter()
                .all(|e| matches!(e, LinkEnd::Tls(why) if why.contains("does not speak TLS"))),
        "{ends:?}"
    );
}

#[test]
fn a_tls_sender_and_a_plaintext_receiver_get_no_link() {
    let ca = ca();
    let ((_, acked, end), (got, ends), _) = tls_link(
        ("a", Some(host_tls(&ca, &ca, "a"))),
        ("b", None),
        5,
        Duration::from_secs(2),
    );
    assert_eq!(acked, 0);
    assert!(got.is_empty());
    assert!(matches!(end, Some(LinkEnd::Tls(_))), "{end:?}");
    assert!(
        !ends.is_empty()
            && ends
                .iter()
                .all(|e| matches!(e, LinkEnd::Tls(why) if why.contains("speaks TLS"))),
        "{ends:?}"
    );
}

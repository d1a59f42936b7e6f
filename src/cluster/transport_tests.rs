//! Two hosts on two executor threads over loopback TCP: a stream of frames arrives exactly once and in
//! order although the receiver drops the connection in the middle (the sender reconnects and resumes
//! where the receiver's count says); a sender with another secret never gets a link up.

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
    })
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
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let me = settings("b", 2, SECRET);
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
                            glommio::spawn_local(async move {
                                let seen = Rc::new(Cell::new(0usize));
                                let counter = seen.clone();
                                let g = got.clone();
                                let serve = serve_inbound(stream, me, streams, move |_, f| {
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
    (rx.recv().unwrap(), handle)
}

/// Runs a sender on this thread: `n` frames to `addr`, a few at a time; waits until all are
/// acknowledged or `give_up` passes; returns (sent, acked, how the last connection ended).
fn send(
    addr: std::net::SocketAddr,
    secret: &'static [u8],
    n: u64,
    give_up: Duration,
) -> (u64, u64, Option<LinkEnd>) {
    LocalExecutorBuilder::default()
        .make()
        .unwrap()
        .run(async move {
            let link = OutboundLink::start(settings("a", 1, secret), 0, addr, 0, None);
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

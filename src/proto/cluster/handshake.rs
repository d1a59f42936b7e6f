//! The link handshake (docs/cluster-protocol.md §4) as two sans-IO state machines: [`Initiator`] for
//! the shard that connects, [`Acceptor`] for the host that accepts. Frames in, frames out, `now` passed
//! in; no socket, no clock, no randomness of their own (nonces are given). Each ends in
//! [`Step::Up`] with what the link needs to know of its peer, or in an error that names the `CLOSE`
//! reason to send. The MACs are HMAC-SHA256 under the shared secret over a transcript of the exact
//! bodies that were sent and read, so the secret never crosses the wire and no MAC can be replayed on
//! another connection.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::wire::{
    CloseReason, FEATURE_TLS_EXPORTER, Frame, Hello, KNOWN_FEATURES, MAJOR, MINOR, RawFrame,
    Welcome, kind,
};

/// How long an accepted connection may take to authenticate (§4).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The smallest shared secret accepted (§2).
pub const MIN_SECRET: usize = 32;

/// The cluster's shared secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The secret from a file's contents: leading and trailing ASCII whitespace dropped, at least
    /// [`MIN_SECRET`] bytes left.
    pub fn from_file_contents(bytes: &[u8]) -> Result<Secret, String> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET {
            return Err(format!(
                "the cluster secret has {} bytes; at least {MIN_SECRET} are needed \
                 (e.g. `head -c 48 /dev/urandom | base64`)",
                trimmed.len()
            ));
        }
        Ok(Secret(trimmed.to_vec()))
    }

    fn mac(&self, label: &[u8], transcript: &[u8; 32]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        m.update(label);
        m.update(transcript);
        m.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

const SENDER_LABEL: &[u8] = b"rjabberd cluster sender";
const RECEIVER_LABEL: &[u8] = b"rjabberd cluster receiver";

/// This host as the handshake presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cluster: String,
    pub node: String,
    pub incarnation: u64,
    pub shards: u16,
}

/// What a link learns of its peer once the handshake is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub incarnation: u64,
    pub shards: u16,
    /// The other end's shard: the sending shard for an acceptor, the receiving one for an initiator.
    pub shard: u16,
    pub minor: u8,
    pub features: u32,
    /// Data frames of the stream the receiver already had (§3.4): what the sender need not resend.
    pub received: u64,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes and read on.
    Send(BytesMut),
    /// Write these bytes (possibly none): the link is up.
    Up(BytesMut, Peer),
}

/// A handshake that cannot go on: send `CLOSE` with `reason` (when `close` holds its bytes) and end
/// the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: CloseReason,
    pub detail: String,
    /// The bytes to write before closing (a refusing `WELCOME` and/or a `CLOSE`); empty when nothing
    /// should be said (the peer is not a cluster peer at all).
    pub close: BytesMut,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

fn refusal(reason: CloseReason, detail: impl Into<String>) -> Refusal {
    let detail = detail.into();
    let mut close = BytesMut::new();
    Frame::Close {
        reason,
        text: detail.chars().take(256).collect(),
    }
    .encode(&mut close);
    Refusal {
        reason,
        detail,
        close,
    }
}

/// `SHA-256(body(HELLO) ‖ body(WELCOME) ‖ exporter)` (§4.3).
fn transcript(hello: &[u8], welcome: &[u8], exporter: Option<&[u8; 32]>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(hello);
    h.update(welcome);
    if let Some(x) = exporter {
        h.update(x);
    }
    h.finalize().into()
}

/// The exporter enters the transcript only when both sides said they would use it and TLS is on.
fn exporter_if(features: u32, exporter: Option<&[u8; 32]>) -> Option<&[u8; 32]> {
    exporter.filter(|_| features & FEATURE_TLS_EXPORTER != 0)
}

/// The minor version both sides speak: the lower one (§4.2).
// While this build is at minor 0 every `min` gives 0, which clippy calls pointless; it stops being
// so at 1.1.
#[allow(clippy::unnecessary_min_or_max)]
fn common_minor(theirs: u8) -> u8 {
    theirs.min(MINOR)
}

#[derive(Debug)]
enum InitiatorState {
    AwaitWelcome,
    AwaitAuthOk { transcript: [u8; 32], peer: Peer },
    Done,
}

/// The connecting side.
#[derive(Debug)]
pub struct Initiator {
    secret: Secret,
    hello: Bytes,
    expected: Option<(String, u64)>,
    to_shard: u16,
    exporter: Option<[u8; 32]>,
    state: InitiatorState,
}

impl Initiator {
    /// Starts a handshake from `from_shard` of `me` to `to_shard` of the host at the other end, which
    /// is `expected` (node and incarnation) when known, a seed otherwise. `exporter` is the TLS
    /// exporter value when the link runs over TLS. Returns the machine and the `HELLO` to write.
    pub fn start(
        me: &Identity,
        secret: Secret,
        from_shard: u16,
        to_shard: u16,
        expected: Option<(String, u64)>,
        nonce: [u8; 32],
        exporter: Option<[u8; 32]>,
    ) -> (Initiator, BytesMut) {
        let features = if exporter.is_some() {
            FEATURE_TLS_EXPORTER
        } else {
            0
        };
        let hello = Frame::Hello(Hello {
            major: MAJOR,
            minor: MINOR,
            cluster: me.cluster.clone(),
            node: me.node.clone(),
            incarnation: me.incarnation,
            shards: me.shards,
            from_shard,
            to_shard,
            to_node: expected.as_ref().map(|e| e.0.clone()).unwrap_or_default(),
            to_incarnation: expected.as_ref().map_or(0, |e| e.1),
            features,
            nonce,
        });
        let mut out = BytesMut::new();
        hello.encode(&mut out);
        let machine = Initiator {
            secret,
            hello: hello.body(),
            expected,
            to_shard,
            exporter,
            state: InitiatorState::AwaitWelcome,
        };
        (machine, out)
    }

    /// Takes the next frame the acceptor sent.
    pub fn on_frame(&mut self, raw: &RawFrame) -> Result<Step, Refusal> {
        let frame =
            Frame::decode(raw).map_err(|e| refusal(CloseReason::Protocol, e.to_string()))?;
        match (&self.state, frame) {
            (_, Frame::Close { reason, text }) => {
                self.state = InitiatorState::Done;
                Err(Refusal {
                    reason,
                    detail: format!("refused by the peer: {text}"),
                    close: BytesMut::new(),
                })
            }
            (InitiatorState::AwaitWelcome, Frame::Welcome(w)) => self.on_welcome(raw, w),
            (InitiatorState::AwaitAuthOk { transcript, peer }, Frame::AuthOk(mac)) => {
                let want = self.secret.mac(RECEIVER_LABEL, transcript);
                if !bool::from(want.ct_eq(&mac)) {
                    self.state = InitiatorState::Done;
                    return Err(refusal(
                        CloseReason::Auth,
                        "the peer's MAC does not verify: another secret",
                    ));
                }
                let peer = peer.clone();
                self.state = InitiatorState::Done;
                Ok(Step::Up(BytesMut::new(), peer))
            }
            (_, f) => Err(refusal(
                CloseReason::Protocol,
                format!("unexpected frame 0x{:02x} in the handshake", f.kind()),
            )),
        }
    }

    fn on_welcome(&mut self, raw: &RawFrame, w: Welcome) -> Result<Step, Refusal> {
        if let Some(reason) = w.refused {
            self.state = InitiatorState::Done;
            return Err(Refusal {
                reason,
                detail: format!("{} refused the link", w.node),
                close: BytesMut::new(),
            });
        }
        if w.major != MAJOR || w.minor > MINOR {
            return Err(refusal(
                CloseReason::Version,
                format!("the peer chose version {}.{}", w.major, w.minor),
            ));
        }
        if w.incarnation == 0 || w.shards == 0 || self.to_shard >= w.shards {
            return Err(refusal(
                CloseReason::Protocol,
                "a WELCOME with no incarnation or too few shards",
            ));
        }
        let same_peer = self
            .expected
            .as_ref()
            .is_some_and(|(n, i)| *n == w.node && *i == w.incarnation);
        if w.received != 0 && !same_peer {
            return Err(refusal(
                CloseReason::Protocol,
                "a new peer claims to hold frames of this stream",
            ));
        }
        let features = w.features & KNOWN_FEATURES;
        let t = transcript(
            &self.hello,
            &raw.body,
            exporter_if(features, self.exporter.as_ref()),
        );
        let mut out = BytesMut::new();
        Frame::Auth(self.secret.mac(SENDER_LABEL, &t)).encode(&mut out);
        self.state = InitiatorState::AwaitAuthOk {
            transcript: t,
            peer: Peer {
                node: w.node,
                incarnation: w.incarnation,
                shards: w.shards,
                shard: self.to_shard,
                minor: w.minor,
                features,
                received: w.received,
            },
        };
        Ok(Step::Send(out))
    }
}

#[derive(Debug)]
enum AcceptorState {
    AwaitHello,
    AwaitAuth { transcript: [u8; 32], peer: Peer },
    Done,
}

/// The accepting side.
#[derive(Debug)]
pub struct Acceptor {
    me: Identity,
    secret: Secret,
    nonce: [u8; 32],
    exporter: Option<[u8; 32]>,
    deadline: Instant,
    state: AcceptorState,
}

impl Acceptor {
    /// A connection accepted at `now`; it must authenticate by `now + HANDSHAKE_TIMEOUT`.
    pub fn new(
        me: Identity,
        secret: Secret,
        nonce: [u8; 32],
        exporter: Option<[u8; 32]>,
        now: Instant,
    ) -> Acceptor {
        Acceptor {
            me,
            secret,
            nonce,
            exporter,
            deadline: now + HANDSHAKE_TIMEOUT,
            state: AcceptorState::AwaitHello,
        }
    }

    /// When the connection must be given up if the handshake has not finished.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the handshake took too long: close with reason `timeout`.
    pub fn expired(&self, now: Instant) -> Option<Refusal> {
        (!matches!(self.state, AcceptorState::Done) && now >= self.deadline)
            .then(|| refusal(CloseReason::Timeout, "no handshake within 5 s"))
    }

    /// Takes the next frame the initiator sent. `received` answers, for a `HELLO`, how many data
    /// frames of the stream (sender node, incarnation, sending shard) this host already has (§3.4; 0
    /// for a stream it does not know).
    pub fn on_frame(
        &mut self,
        raw: &RawFrame,
        received: impl FnOnce(&Hello) -> u64,
    ) -> Result<Step, Refusal> {
        if matches!(self.state, AcceptorState::AwaitHello) && raw.kind != kind::HELLO {
            // Not a cluster peer (an HTTP probe, a port scan): nothing to say to it.
            self.state = AcceptorState::Done;
            return Err(Refusal {
                reason: CloseReason::Protocol,
                detail: format!("the first frame is 0x{:02x}, not HELLO", raw.kind),
                close: BytesMut::new(),
            });
        }
        let frame = match Frame::decode(raw) {
            Ok(f) => f,
            Err(e) if raw.kind == kind::HELLO => {
                self.state = AcceptorState::Done;
                return Err(Refusal {
                    reason: CloseReason::Protocol,
                    detail: e.to_string(),
                    close: BytesMut::new(),
                });
            }
            Err(e) => return Err(refusal(CloseReason::Protocol, e.to_string())),
        };
        match (&self.state, frame) {
            (AcceptorState::AwaitHello, Frame::Hello(h)) => self.on_hello(raw, h, received),
            (AcceptorState::AwaitAuth { transcript, peer }, Frame::Auth(mac)) => {
                let want = self.secret.mac(SENDER_LABEL, transcript);
                if !bool::from(want.ct_eq(&mac)) {
                    self.state = AcceptorState::Done;
                    return Err(refusal(
                        CloseReason::Auth,
                        "the MAC does not verify: another secret",
                    ));
                }
                let mut out = BytesMut::new();
                Frame::AuthOk(self.secret.mac(RECEIVER_LABEL, transcript)).encode(&mut out);
                let peer = peer.clone();
                self.state = AcceptorState::Done;
                Ok(Step::Up(out, peer))
            }
            (_, Frame::Close { reason, text }) => {
                self.state = AcceptorState::Done;
                Err(Refusal {
                    reason,
                    detail: format!("closed by the peer: {text}"),
                    close: BytesMut::new(),
                })
            }
            (_, f) => Err(refusal(
                CloseReason::Protocol,
                format!("unexpected frame 0x{:02x} in the handshake", f.kind()),
            )),
        }
    }

    fn on_hello(
        &mut self,
        raw: &RawFrame,
        h: Hello,
        received: impl FnOnce(&Hello) -> u64,
    ) -> Result<Step, Refusal> {
        let refuse = |this: &mut Acceptor, reason: CloseReason, detail: String| {
            this.state = AcceptorState::Done;
            let mut r = refusal(reason, detail);
            let mut welcome = BytesMut::new();
            this.welcome(Some(reason), MINOR, 0, 0).encode(&mut welcome);
            welcome.extend_from_slice(&r.close);
            r.close = welcome;
            Err(r)
        };
        if h.major != MAJOR {
            return refuse(
                self,
                CloseReason::Version,
                format!(
                    "{} speaks {}.{}; this host {MAJOR}.{MINOR}",
                    h.node, h.major, h.minor
                ),
            );
        }
        if h.cluster != self.me.cluster {
            return refuse(
                self,
                CloseReason::Cluster,
                format!(
                    "{} is of cluster `{}`, not `{}`",
                    h.node, h.cluster, self.me.cluster
                ),
            );
        }
        if h.node == self.me.node || h.node.is_empty() || h.incarnation == 0 {
            return refuse(
                self,
                CloseReason::Node,
                format!(
                    "a peer named `{}` (this host is `{}`)",
                    h.node, self.me.node
                ),
            );
        }
        if (!h.to_node.is_empty() && h.to_node != self.me.node)
            || (h.to_incarnation != 0 && h.to_incarnation != self.me.incarnation)
        {
            return refuse(
                self,
                CloseReason::Node,
                format!(
                    "{} asked for {} incarnation {:x}; this is {} incarnation {:x}",
                    h.node, h.to_node, h.to_incarnation, self.me.node, self.me.incarnation
                ),
            );
        }
        if h.to_shard >= self.me.shards || h.shards == 0 || h.from_shard >= h.shards {
            return refuse(
                self,
                CloseReason::Shard,
                format!(
                    "{} asked for shard {} of {} (from its shard {} of {})",
                    h.node, h.to_shard, self.me.shards, h.from_shard, h.shards
                ),
            );
        }
        let features = h.features & KNOWN_FEATURES & self.my_features();
        let resumed = if h.to_incarnation == self.me.incarnation {
            received(&h)
        } else {
            0
        };
        let welcome = self.welcome(None, common_minor(h.minor), features, resumed);
        let welcome_body = welcome.body();
        let t = transcript(
            &raw.body,
            &welcome_body,
            exporter_if(features, self.exporter.as_ref()),
        );
        let mut out = BytesMut::new();
        welcome.encode(&mut out);
        self.state = AcceptorState::AwaitAuth {
            transcript: t,
            peer: Peer {
                node: h.node,
                incarnation: h.incarnation,
                shards: h.shards,
                shard: h.from_shard,
                minor: common_minor(h.minor),
                features,
                received: resumed,
            },
        };
        Ok(Step::Send(out))
    }

    fn my_features(&self) -> u32 {
        if self.exporter.is_some() {
            FEATURE_TLS_EXPORTER
        } else {
            0
        }
    }

    fn welcome(
        &self,
        refused: Option<CloseReason>,
        minor: u8,
        features: u32,
        received: u64,
    ) -> Frame {
        Frame::Welcome(Welcome {
            refused,
            major: MAJOR,
            minor,
            node: self.me.node.clone(),
            incarnation: self.me.incarnation,
            shards: self.me.shards,
            features,
            received,
            nonce: self.nonce,
        })
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;

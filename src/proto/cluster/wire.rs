//! The cluster protocol's frames (docs/cluster-protocol.md §3, §4, §6–§10): their types, the one encoder
//! and the one decoder, sans-IO. [`FrameReader`] takes bytes in any pieces and gives whole frames as
//! [`RawFrame`]s (kind and body, a slice of what was read: a stanza's XML stays the bytes that arrived);
//! [`Frame::decode`] checks a body field by field, with no trailing byte allowed, and
//! [`Frame::encode`] writes the canonical form. Handshake MACs are computed over raw bodies
//! (the handshake), so what was read is what is authenticated.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The first bytes of every `HELLO`.
pub const MAGIC: [u8; 8] = *b"RJCLUSTR";
/// The protocol version this build speaks (§3.6).
pub const MAJOR: u8 = 1;
pub const MINOR: u8 = 0;
/// The largest frame, counting the kind byte and the body.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Feature bit 0: the handshake MAC covers the TLS exporter (§4.3).
pub const FEATURE_TLS_EXPORTER: u32 = 1;
/// The features this build knows; the others are sent as zero.
pub const KNOWN_FEATURES: u32 = FEATURE_TLS_EXPORTER;

pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const AUTH: u8 = 0x03;
    pub const AUTH_OK: u8 = 0x04;
    pub const TICK: u8 = 0x10;
    pub const ACK: u8 = 0x11;
    pub const CLOSE: u8 = 0x12;
    pub const STANZA: u8 = 0x20;
    pub const FANOUT: u8 = 0x21;
    pub const ROUTE: u8 = 0x22;
    pub const CONN_OPEN: u8 = 0x30;
    pub const CONN_DATA: u8 = 0x31;
    pub const CONN_CLOSE: u8 = 0x32;
    pub const CONN_BOUND: u8 = 0x33;
    pub const SESSION_LOST: u8 = 0x34;
    pub const MEMBERS: u8 = 0x40;
    pub const LEAVING: u8 = 0x41;
    pub const REQUEST: u8 = 0x50;
    pub const RESPONSE: u8 = 0x51;
    /// Kinds a receiver that does not know them acknowledges and ignores (§3.6).
    pub const OPTIONAL: std::ops::RangeInclusive<u8> = 0x60..=0x7f;
}

/// Why a frame could not be read: each is a protocol error that closes the link (`CLOSE` reason
/// `protocol`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The length field is 0 or above [`MAX_FRAME`].
    BadLength(usize),
    /// A kind this version does not know (and not an optional one).
    UnknownKind(u8),
    /// The body ended inside a field.
    Truncated { kind: u8 },
    /// Bytes after the last field.
    TrailingBytes { kind: u8, extra: usize },
    /// A field's value is not one the protocol allows (a bool of 2, a reason of 42, bad UTF-8…).
    BadValue { kind: u8, what: &'static str },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadLength(n) => write!(f, "frame length {n} out of range"),
            WireError::UnknownKind(k) => write!(f, "unknown frame kind 0x{k:02x}"),
            WireError::Truncated { kind } => write!(f, "frame 0x{kind:02x} ends inside a field"),
            WireError::TrailingBytes { kind, extra } => {
                write!(f, "frame 0x{kind:02x} has {extra} bytes after its fields")
            }
            WireError::BadValue { kind, what } => write!(f, "frame 0x{kind:02x}: bad {what}"),
        }
    }
}

impl std::error::Error for WireError {}

/// A whole frame as read: its kind and its body (everything after the kind byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: u8,
    pub body: Bytes,
}

/// Cuts a byte stream into frames. Bytes go in as they arrive; frames come out whole, their bodies
/// slices of one buffer (no copy per field).
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Appends bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` until one has fully arrived. An error leaves the reader unusable:
    /// the link is closed.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(WireError::BadLength(len));
        }
        if self.buf.len() < 4 + len {
            // Room for the rest at once, so a large stanza is not copied on every read.
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let mut frame = self.buf.split_to(len).freeze();
        let kind = frame.get_u8();
        Ok(Some(RawFrame { kind, body: frame }))
    }

    /// Bytes read but not yet part of a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Why a link is closed (§3.7), also a `WELCOME`'s refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Normal = 0,
    Protocol = 1,
    Timeout = 2,
    Auth = 3,
    Version = 4,
    Cluster = 5,
    Node = 6,
    Shard = 7,
    Overload = 8,
    Fenced = 9,
}

impl CloseReason {
    fn from_u8(v: u8) -> Option<CloseReason> {
        use CloseReason::*;
        Some(match v {
            0 => Normal,
            1 => Protocol,
            2 => Timeout,
            3 => Auth,
            4 => Version,
            5 => Cluster,
            6 => Node,
            7 => Shard,
            8 => Overload,
            9 => Fenced,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        use CloseReason::*;
        match self {
            Normal => "normal",
            Protocol => "protocol",
            Timeout => "timeout",
            Auth => "auth",
            Version => "version",
            Cluster => "cluster",
            Node => "node",
            Shard => "shard",
            Overload => "overload",
            Fenced => "fenced",
        }
    }
}

/// Where a client connection is (§1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub node: String,
    pub incarnation: u64,
    pub shard: u16,
    pub conn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub major: u8,
    pub minor: u8,
    pub cluster: String,
    pub node: String,
    pub incarnation: u64,
    pub shards: u16,
    pub from_shard: u16,
    pub to_shard: u16,
    /// The node the sender believes it reaches; empty for a seed address.
    pub to_node: String,
    /// That node's incarnation as the sender knows it; 0 when unknown.
    pub to_incarnation: u64,
    pub features: u32,
    pub nonce: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// `None`: the link is accepted; otherwise why not.
    pub refused: Option<CloseReason>,
    pub major: u8,
    pub minor: u8,
    pub node: String,
    pub incarnation: u64,
    pub shards: u16,
    pub features: u32,
    /// Data frames of this stream the receiver already has (§3.4).
    pub received: u64,
    pub nonce: [u8; 32],
}

/// Who a `STANZA` is for on the receiving host (§7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The home of the bare JID of `to`.
    Home,
    /// One client connection.
    Session(Location),
    /// The receiving host's router: a service, a component, the server itself.
    Host,
}

/// The stanza's element, so that the receiver need not look (§7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaKind {
    Message = 0,
    Presence = 1,
    Iq = 2,
    Other = 3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaFrame {
    pub to_shard: u16,
    pub epoch: u64,
    pub target: Target,
    pub from: String,
    pub to: String,
    pub kind: StanzaKind,
    pub xml: Bytes,
}

/// Recipients of one presence homed on one shard of the receiving host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutGroup {
    pub to_shard: u16,
    pub recipients: Vec<String>,
}

/// Which way a tunnelled connection's frame goes (§8): to the session's home, or back to the host
/// that holds the client's socket (the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToHome = 0,
    ToEdge = 1,
}

/// Why a tunnelled connection ended (§8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEnd {
    /// The stream ended (the client closed, or the home closed the stream).
    Normal = 0,
    /// The link to the other side could not take more (§3.8).
    Overload = 1,
    /// The other side's host is leaving or fenced, or the session's home moved (§9.2).
    Gone = 2,
}

/// A client connection that authenticated on one host (the edge) whose session lives on another (the
/// home of its bare JID): what the home needs to continue the stream (§8.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnOpen {
    pub to_shard: u16,
    pub epoch: u64,
    /// The client's socket: edge node, its incarnation, shard, connection id.
    pub location: Location,
    /// The authenticated bare JID.
    pub user: String,
    /// The domain the client's stream addressed.
    pub host: String,
    /// Whether the client's transport is TLS (at the edge).
    pub secure: bool,
    /// The SASL mechanism that authenticated it (`SCRAM-SHA-256`, ...).
    pub mechanism: String,
    /// The client's address as the edge sees it (for logs and limits).
    pub peer: String,
    /// Stream bytes the client sent after SASL success that the edge read but did not parse.
    pub unparsed: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Up = 0,
    Leaving = 1,
    Fenced = 2,
    /// Fenced by suspicion while its lease still runs: it keeps its slots until the lease is out, so
    /// that nobody binds its accounts before it has stopped serving them (§9.4).
    Evicting = 3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: String,
    pub incarnation: u64,
    pub address: String,
    pub shards: u16,
    pub state: MemberState,
    pub sessions: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStatus {
    Ok = 0,
    Error = 1,
    UnknownVerb = 2,
}

/// Every frame of version 1.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Auth([u8; 32]),
    AuthOk([u8; 32]),
    Tick,
    Ack(u64),
    Close {
        reason: CloseReason,
        text: String,
    },
    Stanza(StanzaFrame),
    Fanout {
        epoch: u64,
        from: String,
        xml: Bytes,
        groups: Vec<FanoutGroup>,
    },
    /// An external component connected to (`up`) or left the sending host, on its shard `shard` (§7.3).
    Route {
        domain: String,
        shard: u16,
        up: bool,
    },
    ConnOpen(ConnOpen),
    /// Stream bytes of a tunnelled connection, in order (§8.2).
    ConnData {
        to_shard: u16,
        direction: Direction,
        location: Location,
        data: Bytes,
    },
    ConnClose {
        to_shard: u16,
        direction: Direction,
        location: Location,
        end: ConnEnd,
    },
    /// The home bound the tunnelled connection's session to `full` (§8.4), so that the edge can tell
    /// the account's next home if this one dies.
    ConnBound {
        to_shard: u16,
        location: Location,
        full: String,
    },
    /// The session `full` ended with its home's host (§9.2): its new home tells its contacts.
    SessionLost {
        to_shard: u16,
        epoch: u64,
        full: String,
    },
    Members {
        epoch: u64,
        members: Vec<Member>,
    },
    Leaving {
        node: String,
        incarnation: u64,
    },
    Request {
        id: u64,
        verb: String,
        body: Bytes,
    },
    Response {
        id: u64,
        status: ResponseStatus,
        body: Bytes,
    },
    /// An optional kind (§3.6) this build does not know: acknowledged and ignored.
    Optional {
        kind: u8,
        body: Bytes,
    },
}

impl Frame {
    pub fn kind(&self) -> u8 {
        use Frame::*;
        match self {
            Hello(_) => kind::HELLO,
            Welcome(_) => kind::WELCOME,
            Auth(_) => kind::AUTH,
            AuthOk(_) => kind::AUTH_OK,
            Tick => kind::TICK,
            Ack(_) => kind::ACK,
            Close { .. } => kind::CLOSE,
            Stanza(_) => kind::STANZA,
            Fanout { .. } => kind::FANOUT,
            Route { .. } => kind::ROUTE,
            ConnOpen(_) => kind::CONN_OPEN,
            ConnData { .. } => kind::CONN_DATA,
            ConnClose { .. } => kind::CONN_CLOSE,
            ConnBound { .. } => kind::CONN_BOUND,
            SessionLost { .. } => kind::SESSION_LOST,
            Members { .. } => kind::MEMBERS,
            Leaving { .. } => kind::LEAVING,
            Request { .. } => kind::REQUEST,
            Response { .. } => kind::RESPONSE,
            Optional { kind, .. } => *kind,
        }
    }

    /// Data frames are numbered and acknowledged (§3.4).
    pub fn is_data(&self) -> bool {
        is_data_kind(self.kind())
    }

    /// Appends the frame, length first.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        out.put_u8(self.kind());
        self.encode_body(out);
        let len = out.len() - start - 4;
        debug_assert!(len <= MAX_FRAME, "a frame over MAX_FRAME was built");
        out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    }

    /// The frame's body alone (what the handshake transcript hashes).
    pub fn body(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_body(&mut out);
        out.freeze()
    }

    fn encode_body(&self, out: &mut BytesMut) {
        use Frame::*;
        match self {
            Hello(h) => {
                out.put_slice(&MAGIC);
                out.put_u8(h.major);
                out.put_u8(h.minor);
                put_str(out, &h.cluster);
                put_str(out, &h.node);
                out.put_u64(h.incarnation);
                out.put_u16(h.shards);
                out.put_u16(h.from_shard);
                out.put_u16(h.to_shard);
                put_str(out, &h.to_node);
                out.put_u64(h.to_incarnation);
                out.put_u32(h.features);
                out.put_slice(&h.nonce);
            }
            Welcome(w) => {
                out.put_u8(w.refused.map_or(0, |r| r as u8));
                out.put_u8(w.major);
                out.put_u8(w.minor);
                put_str(out, &w.node);
                out.put_u64(w.incarnation);
                out.put_u16(w.shards);
                out.put_u32(w.features);
                out.put_u64(w.received);
                out.put_slice(&w.nonce);
            }
            Auth(mac) | AuthOk(mac) => out.put_slice(mac),
            Tick => {}
            Ack(n) => out.put_u64(*n),
            Close { reason, text } => {
                out.put_u8(*reason as u8);
                put_str(out, text);
            }
            Stanza(s) => {
                out.put_u16(s.to_shard);
                out.put_u64(s.epoch);
                match &s.target {
                    Target::Home => out.put_u8(0),
                    Target::Session(l) => {
                        out.put_u8(1);
                        put_location(out, l);
                    }
                    Target::Host => out.put_u8(2),
                }
                put_str(out, &s.from);
                put_str(out, &s.to);
                out.put_u8(s.kind as u8);
                put_bytes(out, &s.xml);
            }
            Fanout {
                epoch,
                from,
                xml,
                groups,
            } => {
                out.put_u64(*epoch);
                put_str(out, from);
                put_bytes(out, xml);
                out.put_u32(groups.len() as u32);
                for g in groups {
                    out.put_u16(g.to_shard);
                    out.put_u32(g.recipients.len() as u32);
                    for r in &g.recipients {
                        put_str(out, r);
                    }
                }
            }
            Route { domain, shard, up } => {
                put_str(out, domain);
                out.put_u16(*shard);
                out.put_u8(u8::from(*up));
            }
            ConnOpen(c) => {
                out.put_u16(c.to_shard);
                out.put_u64(c.epoch);
                put_location(out, &c.location);
                put_str(out, &c.user);
                put_str(out, &c.host);
                out.put_u8(u8::from(c.secure));
                put_str(out, &c.mechanism);
                put_str(out, &c.peer);
                put_bytes(out, &c.unparsed);
            }
            ConnData {
                to_shard,
                direction,
                location,
                data,
            } => {
                out.put_u16(*to_shard);
                out.put_u8(*direction as u8);
                put_location(out, location);
                put_bytes(out, data);
            }
            ConnClose {
                to_shard,
                direction,
                location,
                end,
            } => {
                out.put_u16(*to_shard);
                out.put_u8(*direction as u8);
                put_location(out, location);
                out.put_u8(*end as u8);
            }
            ConnBound {
                to_shard,
                location,
                full,
            } => {
                out.put_u16(*to_shard);
                put_location(out, location);
                put_str(out, full);
            }
            SessionLost {
                to_shard,
                epoch,
                full,
            } => {
                out.put_u16(*to_shard);
                out.put_u64(*epoch);
                put_str(out, full);
            }
            Members { epoch, members } => {
                out.put_u64(*epoch);
                out.put_u32(members.len() as u32);
                for m in members {
                    put_str(out, &m.node);
                    out.put_u64(m.incarnation);
                    put_str(out, &m.address);
                    out.put_u16(m.shards);
                    out.put_u8(m.state as u8);
                    out.put_u64(m.sessions);
                }
            }
            Leaving { node, incarnation } => {
                put_str(out, node);
                out.put_u64(*incarnation);
            }
            Request { id, verb, body } => {
                out.put_u64(*id);
                put_str(out, verb);
                put_bytes(out, body);
            }
            Response { id, status, body } => {
                out.put_u64(*id);
                out.put_u8(*status as u8);
                put_bytes(out, body);
            }
            Optional { body, .. } => out.put_slice(body),
        }
    }

    /// Reads a frame's body, every field checked and nothing left over.
    pub fn decode(raw: &RawFrame) -> Result<Frame, WireError> {
        let mut r = Fields {
            kind: raw.kind,
            b: raw.body.clone(),
        };
        let frame = match raw.kind {
            kind::HELLO => {
                let magic = r.array::<8>()?;
                if magic != MAGIC {
                    return Err(r.bad("magic"));
                }
                Frame::Hello(Hello {
                    major: r.u8()?,
                    minor: r.u8()?,
                    cluster: r.str()?,
                    node: r.str()?,
                    incarnation: r.u64()?,
                    shards: r.u16()?,
                    from_shard: r.u16()?,
                    to_shard: r.u16()?,
                    to_node: r.str()?,
                    to_incarnation: r.u64()?,
                    features: r.u32()?,
                    nonce: r.array::<32>()?,
                })
            }
            kind::WELCOME => {
                let status = r.u8()?;
                let refused = match status {
                    0 => None,
                    s => Some(CloseReason::from_u8(s).ok_or_else(|| r.bad("status"))?),
                };
                Frame::Welcome(Welcome {
                    refused,
                    major: r.u8()?,
                    minor: r.u8()?,
                    node: r.str()?,
                    incarnation: r.u64()?,
                    shards: r.u16()?,
                    features: r.u32()?,
                    received: r.u64()?,
                    nonce: r.array::<32>()?,
                })
            }
            kind::AUTH => Frame::Auth(r.array::<32>()?),
            kind::AUTH_OK => Frame::AuthOk(r.array::<32>()?),
            kind::TICK => Frame::Tick,
            kind::ACK => Frame::Ack(r.u64()?),
            kind::CLOSE => {
                let reason = CloseReason::from_u8(r.u8()?).ok_or_else(|| r.bad("reason"))?;
                Frame::Close {
                    reason,
                    text: r.str()?,
                }
            }
            kind::STANZA => {
                let to_shard = r.u16()?;
                let epoch = r.u64()?;
                let target = match r.u8()? {
                    0 => Target::Home,
                    1 => Target::Session(r.location()?),
                    2 => Target::Host,
                    _ => return Err(r.bad("target")),
                };
                let from = r.str()?;
                let to = r.str()?;
                let kind = match r.u8()? {
                    0 => StanzaKind::Message,
                    1 => StanzaKind::Presence,
                    2 => StanzaKind::Iq,
                    3 => StanzaKind::Other,
                    _ => return Err(r.bad("stanza kind")),
                };
                Frame::Stanza(StanzaFrame {
                    to_shard,
                    epoch,
                    target,
                    from,
                    to,
                    kind,
                    xml: r.bytes()?,
                })
            }
            kind::FANOUT => {
                let epoch = r.u64()?;
                let from = r.str()?;
                let xml = r.bytes()?;
                let groups = r.list(|r| {
                    Ok(FanoutGroup {
                        to_shard: r.u16()?,
                        recipients: r.list(|r| r.str())?,
                    })
                })?;
                Frame::Fanout {
                    epoch,
                    from,
                    xml,
                    groups,
                }
            }
            kind::ROUTE => Frame::Route {
                domain: r.str()?,
                shard: r.u16()?,
                up: r.bool()?,
            },
            kind::CONN_OPEN => Frame::ConnOpen(ConnOpen {
                to_shard: r.u16()?,
                epoch: r.u64()?,
                location: r.location()?,
                user: r.str()?,
                host: r.str()?,
                secure: r.bool()?,
                mechanism: r.str()?,
                peer: r.str()?,
                unparsed: r.bytes()?,
            }),
            kind::CONN_DATA => Frame::ConnData {
                to_shard: r.u16()?,
                direction: r.direction()?,
                location: r.location()?,
                data: r.bytes()?,
            },
            kind::CONN_CLOSE => Frame::ConnClose {
                to_shard: r.u16()?,
                direction: r.direction()?,
                location: r.location()?,
                end: match r.u8()? {
                    0 => ConnEnd::Normal,
                    1 => ConnEnd::Overload,
                    2 => ConnEnd::Gone,
                    _ => return Err(r.bad("connection end")),
                },
            },
            kind::CONN_BOUND => Frame::ConnBound {
                to_shard: r.u16()?,
                location: r.location()?,
                full: r.str()?,
            },
            kind::SESSION_LOST => Frame::SessionLost {
                to_shard: r.u16()?,
                epoch: r.u64()?,
                full: r.str()?,
            },
            kind::MEMBERS => Frame::Members {
                epoch: r.u64()?,
                members: r.list(|r| {
                    Ok(Member {
                        node: r.str()?,
                        incarnation: r.u64()?,
                        address: r.str()?,
                        shards: r.u16()?,
                        state: match r.u8()? {
                            0 => MemberState::Up,
                            1 => MemberState::Leaving,
                            2 => MemberState::Fenced,
                            3 => MemberState::Evicting,
                            _ => return Err(r.bad("member state")),
                        },
                        sessions: r.u64()?,
                    })
                })?,
            },
            kind::LEAVING => Frame::Leaving {
                node: r.str()?,
                incarnation: r.u64()?,
            },
            kind::REQUEST => Frame::Request {
                id: r.u64()?,
                verb: r.str()?,
                body: r.bytes()?,
            },
            kind::RESPONSE => {
                let id = r.u64()?;
                let status = match r.u8()? {
                    0 => ResponseStatus::Ok,
                    1 => ResponseStatus::Error,
                    2 => ResponseStatus::UnknownVerb,
                    _ => return Err(r.bad("response status")),
                };
                Frame::Response {
                    id,
                    status,
                    body: r.bytes()?,
                }
            }
            k if kind::OPTIONAL.contains(&k) => {
                return Ok(Frame::Optional {
                    kind: k,
                    body: raw.body.clone(),
                });
            }
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(frame)
    }
}

/// Whether frames of `kind` are numbered and acknowledged (§3.3).
pub fn is_data_kind(kind: u8) -> bool {
    kind >= kind::STANZA
}

fn put_str(out: &mut BytesMut, s: &str) {
    debug_assert!(
        s.len() <= u16::MAX as usize,
        "a str field over 65,535 bytes"
    );
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_location(out: &mut BytesMut, l: &Location) {
    put_str(out, &l.node);
    out.put_u64(l.incarnation);
    out.put_u16(l.shard);
    out.put_u64(l.conn);
}

/// A body being read field by field.
struct Fields {
    kind: u8,
    b: Bytes,
}

impl Fields {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.b.remaining() < n {
            return Err(WireError::Truncated { kind: self.kind });
        }
        Ok(())
    }

    fn bad(&self, what: &'static str) -> WireError {
        WireError::BadValue {
            kind: self.kind,
            what,
        }
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.b.get_u16())
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.b.get_u32())
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.b.get_u64())
    }

    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.bad("bool")),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.need(N)?;
        let mut a = [0u8; N];
        self.b.copy_to_slice(&mut a);
        Ok(a)
    }

    fn str(&mut self) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        self.need(n)?;
        let raw = self.b.split_to(n);
        let s = std::str::from_utf8(&raw).map_err(|_| self.bad("UTF-8"))?;
        if s.contains('\0') {
            return Err(self.bad("NUL in a string"));
        }
        Ok(s.to_string())
    }

    fn bytes(&mut self) -> Result<Bytes, WireError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.b.split_to(n))
    }

    fn direction(&mut self) -> Result<Direction, WireError> {
        match self.u8()? {
            0 => Ok(Direction::ToHome),
            1 => Ok(Direction::ToEdge),
            _ => Err(self.bad("direction")),
        }
    }

    fn location(&mut self) -> Result<Location, WireError> {
        Ok(Location {
            node: self.str()?,
            incarnation: self.u64()?,
            shard: self.u16()?,
            conn: self.u64()?,
        })
    }

    /// A `u32` count, then the items. The count is checked against what is left (each item takes at
    /// least one byte), so a forged count cannot make the reader reserve memory it was not sent.
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Fields) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let n = self.u32()? as usize;
        if n > self.b.remaining() {
            return Err(WireError::Truncated { kind: self.kind });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }

    fn finish(self) -> Result<(), WireError> {
        match self.b.remaining() {
            0 => Ok(()),
            extra => Err(WireError::TrailingBytes {
                kind: self.kind,
                extra,
            }),
        }
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;

//! The external component stream (XEP-0114, `jabber:component:accept`) as a sans-IO state machine: the
//! component's header names the domain it wants to serve, the server answers with a stream id, the
//! component proves the shared secret with `<handshake>hex(SHA-1(id ‖ secret))</handshake>`, and the
//! driver registers the route (a domain already connected → `conflict`). Afterwards every stanza must
//! come `from` the component's domain or a subdomain of it and name a `to`; they are handed to the
//! router. A wrong secret → `not-authorized`; an unknown domain → `host-unknown`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::errors::{Closing, StreamErrorCondition, write_stream_error};
use super::jid::Jid;
use super::xml::{Event, Stanza, StanzaKind, StreamHeader, XmlError};

pub const NS_COMPONENT: &str = "jabber:component:accept";

/// The components the server accepts: domain → shared secret.
#[derive(Debug, Clone, Default)]
pub struct ComponentSettings {
    pub secrets: HashMap<String, String>,
    pub handshake_timeout: Duration,
}

#[derive(Debug)]
pub enum ComponentAction {
    Send(Vec<u8>),
    /// The secret matched for `domain`: register the route and answer with
    /// [`ComponentStream::registered`].
    Register(String),
    /// A stanza from the component, checked, for the router.
    Route(Stanza),
    /// Close after writing what is queued; the reason is for the logs.
    Close(Closing),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    Handshake,
    Registering,
    Established,
    Closed,
}

pub struct ComponentStream {
    settings: Arc<ComponentSettings>,
    phase: Phase,
    stream_id: String,
    domain: String,
    header_sent: bool,
    started: Instant,
    actions: VecDeque<ComponentAction>,
}

impl ComponentStream {
    /// A new stream; `stream_id` must be fresh randomness (the handshake digest depends on it).
    pub fn new(settings: Arc<ComponentSettings>, stream_id: String, now: Instant) -> Self {
        ComponentStream {
            settings,
            phase: Phase::Header,
            stream_id,
            domain: String::new(),
            header_sent: false,
            started: now,
            actions: VecDeque::new(),
        }
    }

    pub fn poll_action(&mut self) -> Option<ComponentAction> {
        self.actions.pop_front()
    }

    /// The domain, once the handshake succeeded.
    pub fn domain(&self) -> Option<&str> {
        (self.phase == Phase::Established).then_some(self.domain.as_str())
    }

    /// The domain the component's header asked for, once it named one this server knows (for the logs
    /// of a refused handshake).
    pub fn requested_domain(&self) -> Option<&str> {
        (!self.domain.is_empty()).then_some(self.domain.as_str())
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn handle_event(&mut self, event: Event) {
        if self.phase == Phase::Closed {
            return;
        }
        match event {
            Event::Declaration(_) => {}
            Event::StreamOpen(h) => self.open(&h),
            Event::StreamClose => {
                self.send(b"</stream:stream>".to_vec());
                self.close(Closing::ByPeer);
            }
            Event::Stanza(s) => self.element(s),
        }
    }

    pub fn handle_parse_error(&mut self, error: XmlError) {
        self.stream_error(error.condition().into(), None);
    }

    /// The driver's answer to [`ComponentAction::Register`]: `false` when the domain is connected
    /// already.
    pub fn registered(&mut self, ok: bool) {
        if self.phase != Phase::Registering {
            return;
        }
        if ok {
            self.phase = Phase::Established;
            self.send(b"<handshake/>".to_vec());
        } else {
            self.stream_error(
                StreamErrorCondition::Conflict,
                Some("this component domain is already connected"),
            );
        }
    }

    /// Closes a stream that has not completed the handshake in time.
    pub fn tick(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Header | Phase::Handshake)
            && now.duration_since(self.started) >= self.settings.handshake_timeout
        {
            self.end_with(
                StreamErrorCondition::ConnectionTimeout,
                None,
                Closing::AuthTimeout,
            );
        }
    }

    pub fn stream_error(&mut self, condition: StreamErrorCondition, text: Option<&str>) {
        self.end_with(condition, text, Closing::StreamError(condition));
    }

    fn end_with(&mut self, condition: StreamErrorCondition, text: Option<&str>, why: Closing) {
        if self.phase == Phase::Closed {
            return;
        }
        if !self.header_sent {
            self.send_header("");
        }
        let mut out = Vec::new();
        write_stream_error(&mut out, condition, text);
        self.send(out);
        self.close(why);
    }

    fn open(&mut self, header: &StreamHeader) {
        if self.phase != Phase::Header {
            self.stream_error(StreamErrorCondition::BadFormat, None);
            return;
        }
        if !header.is_xmpp_stream() || header.default_ns() != Some(NS_COMPONENT) {
            self.stream_error(StreamErrorCondition::InvalidNamespace, None);
            return;
        }
        let to = header
            .to()
            .map(|t| t.to_ascii_lowercase())
            .unwrap_or_default();
        if !self.settings.secrets.contains_key(&to) {
            self.stream_error(StreamErrorCondition::HostUnknown, None);
            return;
        }
        self.send_header(&to);
        self.domain = to;
        self.phase = Phase::Handshake;
    }

    fn send_header(&mut self, from: &str) {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(
            b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
              xmlns='jabber:component:accept'",
        );
        if !from.is_empty() {
            out.extend_from_slice(b" from='");
            out.extend_from_slice(super::xml::escape(from).as_bytes());
            out.push(b'\'');
        }
        out.extend_from_slice(b" id='");
        out.extend_from_slice(self.stream_id.as_bytes());
        out.extend_from_slice(b"'>");
        self.header_sent = true;
        self.send(out);
    }

    fn element(&mut self, s: Stanza) {
        let in_ns = s.namespace().as_deref() == Some(NS_COMPONENT);
        match self.phase {
            Phase::Handshake if in_ns && s.local_name() == "handshake" => {
                let given = s.to_element().text();
                let secret = &self.settings.secrets[&self.domain];
                let expected = handshake_digest(&self.stream_id, secret);
                let given = given.trim().to_ascii_lowercase();
                if given.len() == expected.len()
                    && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
                {
                    self.phase = Phase::Registering;
                    self.actions
                        .push_back(ComponentAction::Register(self.domain.clone()));
                } else {
                    self.stream_error(StreamErrorCondition::NotAuthorized, None);
                }
            }
            Phase::Handshake | Phase::Registering => {
                self.stream_error(StreamErrorCondition::NotAuthorized, None);
            }
            Phase::Established => {
                if s.kind() == StanzaKind::Other {
                    self.stream_error(StreamErrorCondition::UnsupportedStanzaType, None);
                    return;
                }
                let from_ok = s.from().is_some_and(|f| {
                    Jid::parse(&f).is_ok_and(|j| {
                        let d = j.domain();
                        d == self.domain
                            || d.strip_suffix(self.domain.as_str())
                                .is_some_and(|p| p.ends_with('.'))
                    })
                });
                if !from_ok {
                    self.stream_error(StreamErrorCondition::InvalidFrom, None);
                    return;
                }
                if s.to().is_none() {
                    self.stream_error(StreamErrorCondition::ImproperAddressing, None);
                    return;
                }
                self.actions.push_back(ComponentAction::Route(s));
            }
            Phase::Header | Phase::Closed => {}
        }
    }

    fn send(&mut self, bytes: Vec<u8>) {
        self.actions.push_back(ComponentAction::Send(bytes));
    }

    fn close(&mut self, why: Closing) {
        self.phase = Phase::Closed;
        self.actions.push_back(ComponentAction::Close(why));
    }
}

/// `hex(SHA-1(stream id ‖ secret))`, lowercase (XEP-0114 §3).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::xml::{Limits, StreamParser};

    struct Peer {
        stream: ComponentStream,
        parser: StreamParser,
        out: String,
        routed: Vec<Stanza>,
        registered: Vec<String>,
        closed: Option<Closing>,
    }

    impl Peer {
        fn new() -> Peer {
            let mut secrets = HashMap::new();
            secrets.insert("gw.example.org".to_string(), "s3cret".to_string());
            let settings = Arc::new(ComponentSettings {
                secrets,
                handshake_timeout: Duration::from_secs(5),
            });
            Peer {
                stream: ComponentStream::new(settings, "3BF96D32".into(), Instant::now()),
                parser: StreamParser::new(Limits::default()),
                out: String::new(),
                routed: Vec::new(),
                registered: Vec::new(),
                closed: None,
            }
        }

        /// Feeds `input` cut into `piece`-byte pieces; returns what the server wrote meanwhile.
        fn feed(&mut self, input: &str, piece: usize) -> String {
            let start = self.out.len();
            for chunk in input.as_bytes().chunks(piece.max(1)) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let n = self.parser.feed(rest);
                    rest = &rest[n..];
                    loop {
                        match self.parser.next_event() {
                            Ok(Some(e)) => self.stream.handle_event(e),
                            Ok(None) => break,
                            Err(e) => {
                                self.stream.handle_parse_error(e);
                                break;
                            }
                        }
                        self.drain();
                    }
                    self.drain();
                    if self.closed.is_some() {
                        return self.out[start..].to_string();
                    }
                }
            }
            self.out[start..].to_string()
        }

        /// The header and a correct handshake, whole.
        fn handshake(&mut self) {
            self.feed(HEADER, 100);
            let digest = handshake_digest("3BF96D32", "s3cret");
            self.feed(&format!("<handshake>{digest}</handshake>"), 100);
        }

        fn drain(&mut self) {
            while let Some(a) = self.stream.poll_action() {
                match a {
                    ComponentAction::Send(b) => self.out.push_str(&String::from_utf8(b).unwrap()),
                    ComponentAction::Register(d) => self.registered.push(d),
                    ComponentAction::Route(s) => self.routed.push(s),
                    ComponentAction::Close(why) => self.closed = Some(why),
                }
            }
        }
    }

    const HEADER: &str = "<stream:stream xmlns='jabber:component:accept' \
        xmlns:stream='http://etherx.jabber.org/streams' to='gw.example.org'>";

    #[test]
    fn the_xep_0114_example_digest() {
        // XEP-0114 §3, example 3: id 3BF96D32, secret "Kx5pXq" is not given there; check the shape and
        // that a change of either input changes it.
        let d = handshake_digest("3BF96D32", "s3cret");
        assert_eq!(d.len(), 40);
        assert_ne!(d, handshake_digest("3BF96D33", "s3cret"));
        assert_eq!(
            handshake_digest("", ""),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
    }

    #[test]
    fn handshake_then_stanzas_in_every_cut() {
        for piece in [1, 2, 5, 10, 4096] {
            let mut p = Peer::new();
            let out = p.feed(HEADER, piece);
            assert!(out.contains("from='gw.example.org' id='3BF96D32'"), "{out}");
            let digest = handshake_digest("3BF96D32", "s3cret").to_uppercase();
            p.feed(&format!("<handshake>{digest}</handshake>"), piece);
            assert_eq!(p.registered, vec!["gw.example.org".to_string()]);
            p.stream.registered(true);
            p.drain();
            assert!(p.out.ends_with("<handshake/>"), "{}", p.out);
            p.feed(
                "<message from='bot@gw.example.org' to='juliet@example.org'><body>hi</body></message>\
                 <presence from='x.gw.example.org' to='romeo@example.org'/>",
                piece,
            );
            assert_eq!(p.routed.len(), 2, "piece {piece}");
            assert!(p.closed.is_none());
        }
    }

    #[test]
    fn refusals() {
        let mut p = Peer::new();
        p.feed(HEADER, 7);
        let out = p.feed("<handshake>0000</handshake>", 3);
        assert!(out.contains("<not-authorized"), "{out}");
        assert_eq!(
            p.closed,
            Some(Closing::StreamError(StreamErrorCondition::NotAuthorized))
        );
        assert!(p.registered.is_empty());

        let mut p = Peer::new();
        let out = p.feed(&HEADER.replace("gw.example.org", "other.example.org"), 4);
        assert!(out.contains("<host-unknown"), "{out}");
        assert_eq!(
            p.closed,
            Some(Closing::StreamError(StreamErrorCondition::HostUnknown))
        );

        let mut p = Peer::new();
        let out = p.feed(
            &HEADER.replace("jabber:component:accept", "jabber:client"),
            4,
        );
        assert!(out.contains("<invalid-namespace"), "{out}");

        let mut p = Peer::new();
        p.handshake();
        p.stream.registered(false);
        p.drain();
        assert!(p.out.contains("<conflict"), "{}", p.out);

        let mut p = Peer::new();
        p.handshake();
        p.stream.registered(true);
        p.drain();
        let out = p.feed("<message from='evil@example.org' to='a@example.org'/>", 5);
        assert!(out.contains("<invalid-from"), "{out}");
    }

    #[test]
    fn a_slow_handshake_times_out() {
        let mut p = Peer::new();
        p.feed(HEADER, 100);
        p.stream.tick(Instant::now() + Duration::from_secs(6));
        p.drain();
        assert!(p.out.contains("<connection-timeout"), "{}", p.out);
        assert_eq!(p.closed, Some(Closing::AuthTimeout));
    }
}

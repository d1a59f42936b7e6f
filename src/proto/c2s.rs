//! The client-to-server stream state machine (RFC 6120 §4 to §7): stream headers, features, STARTTLS,
//! SASL, resource binding and the legacy session IQ, up to an established session whose stanzas it hands
//! to the router. It owns the negotiation state of one connection and nothing else: it reads parsed
//! events and driver inputs (TLS is up, credentials found, bind decided, the clock) and queues
//! [`Action`]s (bytes to send, TLS to start, a lookup to make, a stanza to route, the stream to close).
//! No sockets, no storage, no clock of its own, so every path is tested against an in-memory peer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::csi::NS_CSI;
use super::errors::{
    Closing, StanzaErrorCondition, StreamErrorCondition, write_error_reply, write_stream_error,
};
use super::jid::Jid;
use super::sasl::{ChannelBindings, Credentials, Mechanism, SaslError, SaslServer, Step};
use super::xml::{Element, Event, Stanza, StanzaKind, StreamHeader, XmlError, escape};

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const NS_SASL_CB: &str = "urn:xmpp:sasl-cb:0";

/// Fills a buffer with fresh randomness (stream ids, SASL nonces); passed in so tests are repeatable.
pub type RandomSource = Box<dyn FnMut(&mut [u8]) + Send>;

/// What the state machine needs to know of the server's configuration, shared by all connections.
#[derive(Debug, Clone)]
pub struct C2sSettings {
    /// The virtual hosts served; the first is used when a client omits `to`.
    pub hosts: Vec<String>,
    /// Whether STARTTLS can be offered (a certificate exists and the listener is not already TLS).
    pub starttls: bool,
    /// Whether SASL is refused until TLS is up (RFC 6120 §5.3.1 lets a server require it; default true).
    pub tls_required: bool,
    /// Failed SASL attempts allowed on one stream before it is closed with `policy-violation`.
    pub max_sasl_failures: u32,
    /// How long a connection may take to authenticate.
    pub auth_timeout: Duration,
    /// Offer only PLAIN (external authentication needs the password itself).
    pub plain_only: bool,
    /// The SASL mechanisms configured (`[auth] mechanisms`), in order of preference; a stream offers
    /// those it can (see [`offered_mechanisms`]).
    pub mechanisms: Vec<Mechanism>,
    /// Hosts offering in-band registration (XEP-0077) before authentication; replaced when a
    /// configuration reload changes `mod_register`.
    pub register_hosts: std::sync::Arc<std::sync::RwLock<Vec<String>>>,
    /// The hosts whose rosters are versioned (XEP-0237): their streams offer `<ver/>`.
    pub rosterver_hosts: std::sync::Arc<std::sync::RwLock<Vec<String>>>,
    /// The hosts whose rosters take subscription pre-approvals (RFC 6121 §3.4): their streams offer
    /// `<sub/>`.
    pub preapproval_hosts: std::sync::Arc<std::sync::RwLock<Vec<String>>>,
    /// The hosts running `mod_client_state`: their streams offer `<csi/>` (XEP-0352).
    pub csi_hosts: std::sync::Arc<std::sync::RwLock<Vec<String>>>,
}

/// What the connection driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Write these bytes (in order with every other `Send`).
    Send(Vec<u8>),
    /// After the bytes before it are written, start TLS as server on this connection, and reset the
    /// parser: everything after `<starttls/>` is TLS and then a new stream (RFC 6120 §5.4.3.3).
    StartTls,
    /// Reset the parser now: the client restarts the stream after SASL success (RFC 6120 §6.4.6); bytes
    /// already read belong to the new stream.
    ResetParser,
    /// Look up the credentials of `username` on `host` and answer with [`C2s::credentials`]; for PLAIN
    /// (`plain_password` set) verify the password against them instead, off the reactor, and answer with
    /// [`C2s::plain_checked`].
    LookupCredentials {
        host: String,
        username: String,
        plain_password: Option<String>,
    },
    /// A SASL attempt ended, in success or failure (RFC 6120 §6.4.5, §6.4.6): one per attempt, for the
    /// logs and the counters. A success is followed by [`Action::Authenticated`].
    Authentication {
        /// The mechanism's name as offered ([`Mechanism::name`]), or `"none"` when the client named
        /// none that is offered: a small fixed set, fit for a metric's label.
        mechanism: &'static str,
        /// The username the client gave (its prepared localpart), when it got that far.
        username: Option<String>,
        /// `Err` carries the SASL condition sent (RFC 6120 §6.5), e.g. `not-authorized`, `aborted`.
        outcome: Result<(), &'static str>,
    },
    /// SASL succeeded for this bare JID: the driver may move the connection to the JID's home shard.
    Authenticated(Jid),
    /// Bind a resource (`None`: the server chooses) and answer with [`C2s::bound`]. `iq` is the request.
    Bind {
        resource: Option<String>,
        iq: Stanza,
    },
    /// An established session sent a stanza for the router; `from` has been checked and must be stamped.
    Route(Stanza),
    /// An established session sent a client state nonza (XEP-0352): `<active/>` (`true`) or
    /// `<inactive/>`. What it changes must be done before the next action (the XEP's in-order rule).
    ClientState { active: bool },
    /// An in-band registration request (XEP-0077) before authentication, for `host`; the driver
    /// answers it (the answer carries the request's `id` and no addresses).
    Register { host: String, iq: Stanza },
    /// Close the connection after writing what is queued (the closing tag or the stream error included);
    /// the reason is for the logs.
    Close(Closing),
}

/// Why a bind request was refused, decided by the session manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The resource is not a valid resourcepart.
    BadResource,
    /// The account has as many sessions as it may.
    TooManySessions,
}

/// The mechanisms a stream offers, from the `configured` ones in their order: -PLUS ones only with
/// channel-binding data (`plus`), and only PLAIN with external authentication (`plain_only`).
pub fn offered_mechanisms(
    configured: &[Mechanism],
    plus: bool,
    plain_only: bool,
) -> impl Iterator<Item = Mechanism> + '_ {
    configured
        .iter()
        .copied()
        .filter(move |m| plus || !m.is_plus())
        .filter(move |m| !plain_only || *m == Mechanism::Plain)
}

/// A get or set whose one payload is `<query xmlns='jabber:iq:register'/>`.
fn is_register_iq(stanza: &Stanza) -> bool {
    if !matches!(stanza.type_().as_deref(), Some("get" | "set")) {
        return false;
    }
    let el = stanza.to_element();
    let mut children = el.child_elements();
    matches!(
        (children.next(), children.next()),
        (Some(q), None) if q.name == "query" && q.attr("xmlns") == Some("jabber:iq:register")
    )
}

/// What a top-level element is, for the negotiation's dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    StartTls,
    Auth,
    Response,
    Abort,
    /// A XEP-0352 nonza: `<active/>` (`true`) or `<inactive/>`.
    Csi(bool),
    /// Anything in `jabber:client` (stanzas, and unknown elements there).
    Client,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's stream header.
    Header,
    /// Before authentication, after features.
    PreAuth,
    /// `<proceed/>` sent; waiting for the driver to start TLS and the client to restart.
    TlsStarting,
    /// A SASL exchange in progress.
    Sasl,
    /// Waiting for a credentials lookup during SASL.
    SaslLookup,
    /// Authenticated, before bind.
    Bound0,
    /// Waiting for the session manager's bind answer.
    Binding,
    /// A bound session.
    Established,
    Closed,
}

/// One client stream's negotiation and session state.
pub struct C2s {
    settings: std::sync::Arc<C2sSettings>,
    phase: Phase,
    /// The host the client addressed.
    host: String,
    stream_id: String,
    header_sent: bool,
    secure: bool,
    bindings: ChannelBindings,
    sasl: Option<SaslServer>,
    sasl_failures: u32,
    /// The username of the SASL attempt in progress, once the client gave one.
    sasl_username: Option<String>,
    /// The mechanism that authenticated this stream.
    mechanism: Option<Mechanism>,
    user: Option<Jid>,
    full: Option<Jid>,
    started: Instant,
    actions: VecDeque<Action>,
    random: RandomSource,
}

impl C2s {
    /// A new stream. `secure` is true on a direct-TLS listener (XEP-0368), where TLS is already up and
    /// `bindings` are known. `random` fills buffers with fresh randomness (stream ids, SASL nonces).
    pub fn new(
        settings: std::sync::Arc<C2sSettings>,
        secure: bool,
        bindings: ChannelBindings,
        now: Instant,
        mut random: RandomSource,
    ) -> C2s {
        let mut id = [0u8; 12];
        random(&mut id);
        C2s {
            host: settings.hosts.first().cloned().unwrap_or_default(),
            settings,
            phase: Phase::Header,
            stream_id: hex(&id),
            header_sent: false,
            secure,
            bindings,
            sasl: None,
            sasl_failures: 0,
            sasl_username: None,
            mechanism: None,
            user: None,
            full: None,
            started: now,
            actions: VecDeque::new(),
            random,
        }
    }

    /// A stream that authenticated on another host of the cluster and continues here, at its session's
    /// home (docs/cluster-protocol.md §8): SASL succeeded there for `user` with `mechanism`, and the
    /// client's next stream header comes through the tunnel. `secure` says whether the client's
    /// transport (at the other host) is TLS.
    pub fn authenticated_elsewhere(
        settings: std::sync::Arc<C2sSettings>,
        host: String,
        user: Jid,
        mechanism: &str,
        secure: bool,
        now: Instant,
        random: RandomSource,
    ) -> C2s {
        let mut c = C2s::new(settings, secure, ChannelBindings::default(), now, random);
        c.host = host;
        c.user = Some(user);
        c.mechanism = Mechanism::from_name(mechanism);
        c.phase = Phase::Header;
        c.header_sent = false;
        c
    }

    /// Gives back the action queue's memory when it is empty (an idle connection; it grew during
    /// negotiation and would otherwise hold several actions' worth for the life of the session).
    pub fn release_idle(&mut self) {
        if self.actions.is_empty() && self.actions.capacity() > 0 {
            self.actions = VecDeque::new();
        }
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The authenticated bare JID, once SASL has succeeded.
    pub fn user(&self) -> Option<&Jid> {
        self.user.as_ref()
    }

    /// The bound full JID of an established session.
    pub fn full_jid(&self) -> Option<&Jid> {
        self.full.as_ref()
    }

    /// The name of the SASL mechanism that authenticated this stream.
    pub fn mechanism(&self) -> Option<&'static str> {
        self.mechanism.map(Mechanism::name)
    }

    /// Whether TLS is up on this stream (direct TLS or after STARTTLS).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// A parsed event from the client.
    pub fn handle_event(&mut self, event: Event) {
        if self.phase == Phase::Closed {
            return;
        }
        match event {
            Event::Declaration(_) => {}
            Event::StreamOpen(header) => self.stream_open(&header),
            Event::StreamClose => {
                self.send(b"</stream:stream>".to_vec());
                self.close(Closing::ByPeer);
            }
            Event::Stanza(stanza) => self.element(stanza),
        }
    }

    /// The parser refused the input: the matching stream error, and close.
    pub fn handle_parse_error(&mut self, error: XmlError) {
        self.stream_error(error.condition().into(), None);
    }

    /// TLS is up after STARTTLS; `bindings` are its channel-binding data.
    pub fn tls_established(&mut self, bindings: ChannelBindings) {
        self.secure = true;
        self.bindings = bindings;
        self.phase = Phase::Header;
        self.header_sent = false;
    }

    /// The answer to a PLAIN [`Action::LookupCredentials`]: whether the password matched.
    pub fn plain_checked(&mut self, ok: bool) {
        if self.phase != Phase::SaslLookup {
            return;
        }
        self.phase = Phase::Sasl;
        let result = self.sasl.as_mut().expect("in SASL").plain_checked(ok);
        self.sasl_step(result);
    }

    /// The answer to [`Action::LookupCredentials`]; `None` when the user does not exist.
    pub fn credentials(&mut self, credentials: Option<&Credentials>) {
        if self.phase != Phase::SaslLookup {
            return;
        }
        self.phase = Phase::Sasl;
        let result = self
            .sasl
            .as_mut()
            .expect("in SASL")
            .credentials(credentials);
        self.sasl_step(result);
    }

    /// The store (or the extauth program) could not answer [`Action::LookupCredentials`]: down,
    /// restarting, timed out. The attempt fails with `temporary-auth-failure` (RFC 6120 §6.5.12), which
    /// tells the client to try again later and does not count towards the failure cap: the fault is
    /// the server's.
    pub fn credentials_unavailable(&mut self) {
        if self.phase != Phase::SaslLookup {
            return;
        }
        self.phase = Phase::Sasl;
        let mech = self.sasl.take().map(|s| s.mechanism());
        self.sasl_failure(mech, "temporary-auth-failure");
    }

    /// The session manager's answer to [`Action::Bind`].
    pub fn bound(&mut self, iq: &Stanza, result: Result<Jid, BindError>) {
        if self.phase != Phase::Binding {
            return;
        }
        match result {
            Ok(full) => {
                let mut out = Vec::new();
                out.extend_from_slice(b"<iq type='result'");
                put_id(&mut out, iq);
                out.extend_from_slice(b"><bind xmlns='");
                out.extend_from_slice(NS_BIND.as_bytes());
                out.extend_from_slice(b"'><jid>");
                out.extend_from_slice(escape(full.as_str()).as_bytes());
                out.extend_from_slice(b"</jid></bind></iq>");
                self.send(out);
                self.full = Some(full);
                self.phase = Phase::Established;
            }
            Err(e) => {
                self.phase = Phase::Bound0;
                let condition = match e {
                    BindError::BadResource => StanzaErrorCondition::BadRequest,
                    BindError::TooManySessions => StanzaErrorCondition::ResourceConstraint,
                };
                self.reply_error(iq, condition);
            }
        }
    }

    /// The clock: closes a connection that has not authenticated in time.
    pub fn tick(&mut self, now: Instant) {
        if self.user.is_none()
            && self.phase != Phase::Closed
            && now.duration_since(self.started) >= self.settings.auth_timeout
        {
            self.end_with(
                StreamErrorCondition::ConnectionTimeout,
                None,
                Closing::AuthTimeout,
            );
        }
    }

    /// Ends the stream with `condition` (e.g. `conflict` when replaced, `system-shutdown`).
    pub fn stream_error(&mut self, condition: StreamErrorCondition, text: Option<&str>) {
        self.end_with(condition, text, Closing::StreamError(condition));
    }

    fn end_with(&mut self, condition: StreamErrorCondition, text: Option<&str>, why: Closing) {
        if self.phase == Phase::Closed {
            return;
        }
        if !self.header_sent {
            self.send_header(None);
        }
        let mut out = Vec::new();
        write_stream_error(&mut out, condition, text);
        self.send(out);
        self.close(why);
    }

    fn close(&mut self, why: Closing) {
        self.phase = Phase::Closed;
        self.actions.push_back(Action::Close(why));
    }

    fn send(&mut self, bytes: Vec<u8>) {
        self.actions.push_back(Action::Send(bytes));
    }

    fn send_header(&mut self, features: Option<Vec<u8>>) {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' ");
        out.extend_from_slice(b"xmlns:stream='http://etherx.jabber.org/streams' id='");
        out.extend_from_slice(self.stream_id.as_bytes());
        out.extend_from_slice(b"' from='");
        out.extend_from_slice(escape(&self.host).as_bytes());
        out.extend_from_slice(b"' version='1.0' xml:lang='en'>");
        if let Some(f) = features {
            out.extend_from_slice(&f);
        }
        self.header_sent = true;
        self.send(out);
    }

    fn stream_open(&mut self, header: &StreamHeader) {
        if self.phase != Phase::Header {
            // A second header inside a stream is not well-formed for us: the parser reports it as a
            // stanza named stream, so this is unreachable; be strict anyway.
            self.stream_error(StreamErrorCondition::BadFormat, None);
            return;
        }
        let mut id = [0u8; 12];
        (self.random)(&mut id);
        self.stream_id = hex(&id);
        if let Some(to) = header.to() {
            match super::jid::prep_domain(to) {
                Ok(d) if self.settings.hosts.contains(&d) => self.host = d,
                _ => {
                    self.stream_error(StreamErrorCondition::HostUnknown, None);
                    return;
                }
            }
        }
        if !header.is_xmpp_stream() {
            self.stream_error(StreamErrorCondition::InvalidNamespace, None);
            return;
        }
        if header.default_ns() != Some(NS_CLIENT) {
            self.stream_error(StreamErrorCondition::InvalidNamespace, None);
            return;
        }
        // RFC 6120 §4.7.5: a missing version means 0.9, which has no features; only major version 1.
        match header.version() {
            Some(v) if v.split('.').next() == Some("1") => {}
            _ => {
                self.stream_error(StreamErrorCondition::UnsupportedVersion, None);
                return;
            }
        }
        let features = self.features();
        self.send_header(Some(features));
        self.phase = if self.user.is_some() {
            Phase::Bound0
        } else {
            Phase::PreAuth
        };
    }

    /// Whether this stream's host is in one of the settings' host lists (which follow the modules).
    fn host_in(&self, hosts: &std::sync::RwLock<Vec<String>>) -> bool {
        hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&self.host)
    }

    fn offers_registration(&self) -> bool {
        self.host_in(&self.settings.register_hosts)
    }

    /// The roster's stream features (XEP-0237 versioning, RFC 6121 §3.4 pre-approval).
    fn roster_features(&self, f: &mut String) {
        if self.host_in(&self.settings.rosterver_hosts) {
            f.push_str("<ver xmlns='urn:xmpp:features:rosterver'/>");
        }
        if self.host_in(&self.settings.preapproval_hosts) {
            f.push_str("<sub xmlns='urn:xmpp:features:pre-approval'/>");
        }
    }

    /// XEP-0352, after authentication only (the nonzas mean something for a bound session).
    fn csi_feature(&self, f: &mut String) {
        if self.host_in(&self.settings.csi_hosts) {
            f.push_str("<csi xmlns='urn:xmpp:csi:0'/>");
        }
    }

    fn offers_sasl(&self) -> bool {
        self.secure || !self.settings.tls_required
    }

    fn mechanisms(&self) -> impl Iterator<Item = Mechanism> + '_ {
        offered_mechanisms(
            &self.settings.mechanisms,
            self.secure && self.bindings.any(),
            self.settings.plain_only,
        )
    }

    /// Whether this stream offers a -PLUS mechanism: only then does a client's `y` flag (it could bind
    /// but thinks the server cannot) mean a downgrade, and only then is XEP-0440's list worth sending.
    fn offers_plus(&self) -> bool {
        self.mechanisms().any(Mechanism::is_plus)
    }

    fn features(&self) -> Vec<u8> {
        let mut f = String::from("<stream:features>");
        if self.user.is_some() {
            f.push_str("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>");
            f.push_str(
                "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>",
            );
            self.roster_features(&mut f);
            self.csi_feature(&mut f);
        } else {
            if !self.secure && self.settings.starttls {
                f.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                if self.settings.tls_required {
                    f.push_str("<required/>");
                }
                f.push_str("</starttls>");
            }
            if self.offers_sasl() {
                f.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>");
                for m in self.mechanisms() {
                    f.push_str("<mechanism>");
                    f.push_str(m.name());
                    f.push_str("</mechanism>");
                }
                f.push_str("</mechanisms>");
                if self.offers_registration() {
                    f.push_str("<register xmlns='http://jabber.org/features/iq-register'/>");
                }
                self.roster_features(&mut f);
                if self.offers_plus() {
                    f.push_str("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>");
                    for t in self.bindings.types() {
                        f.push_str("<channel-binding type='");
                        f.push_str(t);
                        f.push_str("'/>");
                    }
                    f.push_str("</sasl-channel-binding>");
                }
            }
        }
        f.push_str("</stream:features>");
        f.into_bytes()
    }

    fn element(&mut self, stanza: Stanza) {
        // Classified without copying the name or namespace: this runs for every stanza.
        let class = {
            let ns = stanza.namespace();
            match (ns.as_deref(), stanza.local_name()) {
                (Some(NS_TLS), "starttls") => Elem::StartTls,
                (Some(NS_SASL), "auth") => Elem::Auth,
                (Some(NS_SASL), "response") => Elem::Response,
                (Some(NS_SASL), "abort") => Elem::Abort,
                (Some(NS_CSI), "active") => Elem::Csi(true),
                (Some(NS_CSI), "inactive") => Elem::Csi(false),
                (Some(NS_CLIENT), _) => Elem::Client,
                _ => Elem::Other,
            }
        };
        match (&self.phase, class) {
            (Phase::PreAuth, Elem::StartTls) => self.starttls(),
            (Phase::PreAuth, Elem::Auth) => self.auth(&stanza),
            (Phase::Sasl, Elem::Response) => {
                let Some(data) = self.sasl_payload(&stanza) else {
                    return;
                };
                let result = self.sasl.as_mut().expect("in SASL").step(&data);
                self.sasl_step(result);
            }
            (Phase::Sasl | Phase::SaslLookup, Elem::Abort) => {
                let mech = self.sasl.take().map(|s| s.mechanism());
                self.sasl_failure(mech, "aborted");
            }
            (Phase::Bound0 | Phase::Established, Elem::Client)
                if stanza.kind() == StanzaKind::Iq && self.is_session_iq(&stanza) =>
            {
                // RFC 3921 §3, kept by RFC 6121 as optional: answered, nothing to do.
                let mut out = Vec::new();
                out.extend_from_slice(b"<iq type='result'");
                put_id(&mut out, &stanza);
                out.extend_from_slice(b"/>");
                self.send(out);
            }
            (Phase::Bound0, Elem::Client) if stanza.kind() == StanzaKind::Iq => {
                self.bind_request(stanza)
            }
            (Phase::Established, Elem::Client) if stanza.kind() != StanzaKind::Other => {
                self.route(stanza)
            }
            // Carried out by whoever runs on the host (mod_client_state); without it, ignored: the
            // XEP defines no answer, and a reload may have stopped the module under a client that saw
            // the feature.
            (Phase::Established, Elem::Csi(active)) => {
                self.actions.push_back(Action::ClientState { active })
            }
            (Phase::PreAuth, Elem::Client)
                if stanza.kind() == StanzaKind::Iq
                    && self.offers_sasl()
                    && self.offers_registration()
                    && is_register_iq(&stanza) =>
            {
                self.actions.push_back(Action::Register {
                    host: self.host.clone(),
                    iq: stanza,
                });
            }
            (Phase::PreAuth | Phase::Sasl | Phase::SaslLookup, Elem::Client)
                if stanza.kind() != StanzaKind::Other =>
            {
                // RFC 6120 §6.4.1: no stanzas before authentication.
                self.stream_error(StreamErrorCondition::NotAuthorized, None)
            }
            (Phase::Bound0 | Phase::Binding, Elem::Client)
                if stanza.kind() != StanzaKind::Other =>
            {
                // RFC 6120 §7.1: no stanzas before the resource is bound.
                self.stream_error(StreamErrorCondition::NotAuthorized, None)
            }
            (Phase::SaslLookup | Phase::Binding | Phase::TlsStarting, _) => {
                // Pipelining past a step that waits for the server is a protocol violation.
                self.stream_error(StreamErrorCondition::PolicyViolation, None)
            }
            _ => self.stream_error(StreamErrorCondition::UnsupportedStanzaType, None),
        }
    }

    fn starttls(&mut self) {
        if self.secure || !self.settings.starttls {
            // RFC 6120 §5.4.2.2: a failure, then close.
            self.send(
                b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>".to_vec(),
            );
            self.close(Closing::TlsRefused);
            return;
        }
        self.send(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".to_vec());
        self.actions.push_back(Action::StartTls);
        self.phase = Phase::TlsStarting;
    }

    fn auth(&mut self, stanza: &Stanza) {
        let el = stanza.to_element();
        let name = el.attr("mechanism").unwrap_or_default();
        let offered = Mechanism::from_name(name).filter(|m| self.mechanisms().any(|o| o == *m));
        self.sasl_username = None;
        if !self.offers_sasl() {
            self.sasl_failure(offered, "encryption-required");
            return;
        }
        let Some(mech) = offered else {
            self.sasl_failure(None, "invalid-mechanism");
            return;
        };
        let Some(data) = decode_payload(&el) else {
            self.sasl_failure(Some(mech), "incorrect-encoding");
            return;
        };
        let mut nonce = [0u8; 18];
        (self.random)(&mut nonce);
        let plus_offered = self.offers_plus();
        self.sasl = Some(SaslServer::new(
            mech,
            self.bindings.clone(),
            plus_offered,
            &nonce,
        ));
        self.phase = Phase::Sasl;
        if data.is_empty() && mech != Mechanism::Plain {
            // No initial response: an empty challenge asks for it (RFC 6120 §6.4.2).
            self.send(b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".to_vec());
            return;
        }
        let result = self.sasl.as_mut().expect("just set").step(&data);
        self.sasl_step(result);
    }

    fn sasl_payload(&mut self, stanza: &Stanza) -> Option<Vec<u8>> {
        let el = stanza.to_element();
        let data = decode_payload(&el);
        if data.is_none() {
            let mech = self.sasl.take().map(|s| s.mechanism());
            self.sasl_failure(mech, "incorrect-encoding");
        }
        data
    }

    fn sasl_step(&mut self, result: Result<Step, SaslError>) {
        match result {
            Ok(Step::NeedCredentials { username }) => {
                self.phase = Phase::SaslLookup;
                self.sasl_username = Some(username.clone());
                let host = self.host.clone();
                let plain_password = self
                    .sasl
                    .as_ref()
                    .and_then(|s| s.plain_password())
                    .map(str::to_string);
                self.actions.push_back(Action::LookupCredentials {
                    host,
                    username,
                    plain_password,
                });
            }
            Ok(Step::Challenge(c)) => {
                let mut out = b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>".to_vec();
                out.extend_from_slice(B64.encode(c).as_bytes());
                out.extend_from_slice(b"</challenge>");
                self.send(out);
            }
            Ok(Step::Success {
                username,
                additional,
            }) => {
                let mech = self.sasl.take().map(|s| s.mechanism());
                let Ok(jid) = Jid::from_parts(Some(&username), &self.host, None) else {
                    self.sasl_failure(mech, "not-authorized");
                    return;
                };
                let mut out = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'".to_vec();
                if additional.is_empty() {
                    out.extend_from_slice(b"/>");
                } else {
                    out.push(b'>');
                    out.extend_from_slice(B64.encode(additional).as_bytes());
                    out.extend_from_slice(b"</success>");
                }
                self.send(out);
                self.actions.push_back(Action::Authentication {
                    mechanism: mech.map_or("none", Mechanism::name),
                    username: Some(username),
                    outcome: Ok(()),
                });
                self.sasl_username = None;
                self.mechanism = mech;
                self.actions.push_back(Action::ResetParser);
                self.user = Some(jid.clone());
                self.phase = Phase::Header;
                self.header_sent = false;
                self.actions.push_back(Action::Authenticated(jid));
            }
            Err(e) => {
                let mech = self.sasl.take().map(|s| s.mechanism());
                self.sasl_failure(mech, e.condition());
            }
        }
    }

    /// Answers a failed SASL attempt with `condition`, reports it, and closes the stream at the cap.
    fn sasl_failure(&mut self, mechanism: Option<Mechanism>, condition: &'static str) {
        let mut out = b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><".to_vec();
        out.extend_from_slice(condition.as_bytes());
        out.extend_from_slice(b"/></failure>");
        self.send(out);
        self.actions.push_back(Action::Authentication {
            mechanism: mechanism.map_or("none", Mechanism::name),
            username: self.sasl_username.take(),
            outcome: Err(condition),
        });
        self.phase = Phase::PreAuth;
        if condition != "aborted" && condition != "temporary-auth-failure" {
            self.sasl_failures += 1;
        }
        if self.sasl_failures >= self.settings.max_sasl_failures {
            self.end_with(
                StreamErrorCondition::PolicyViolation,
                Some("too many failed authentication attempts"),
                Closing::TooManyAuthFailures,
            );
        }
    }

    /// Writes the answer to a pre-authentication request (in-band registration) into the stream.
    pub fn send_raw(&mut self, bytes: Vec<u8>) {
        if self.phase != Phase::Closed {
            self.send(bytes);
        }
    }

    fn is_session_iq(&self, stanza: &Stanza) -> bool {
        if stanza.type_().as_deref() != Some("set") {
            return false;
        }
        if let Some(to) = stanza.to()
            && *to != *self.host
        {
            return false;
        }
        let el = stanza.to_element();
        let children: Vec<&Element> = el.child_elements().collect();
        children.len() == 1
            && children[0].name == "session"
            && children[0].namespace() == Some(NS_SESSION)
    }

    fn bind_request(&mut self, stanza: Stanza) {
        let el = stanza.to_element();
        let bind = el
            .child_elements()
            .find(|c| c.name == "bind" && c.namespace() == Some(NS_BIND));
        match (stanza.type_().as_deref(), bind) {
            (Some("set"), Some(bind)) => {
                let resource = bind
                    .child("resource")
                    .map(|r| r.text())
                    .filter(|r| !r.is_empty());
                self.phase = Phase::Binding;
                self.actions.push_back(Action::Bind {
                    resource,
                    iq: stanza,
                });
            }
            _ => {
                // RFC 6120 §7.1: no other stanza before the resource is bound.
                self.stream_error(StreamErrorCondition::NotAuthorized, None)
            }
        }
    }

    fn route(&mut self, stanza: Stanza) {
        let full = self.full.as_ref().expect("established");
        if let Some(from) = stanza.from() {
            // RFC 6120 §8.1.2.1: a client may only claim its own full or bare JID.
            let ok = Jid::parse(&from)
                .is_ok_and(|f| f == *full || (f.is_bare() && f.bare_str() == full.bare_str()));
            if !ok {
                self.stream_error(StreamErrorCondition::InvalidFrom, None);
                return;
            }
        }
        // RFC 6120 §8.2.3: an IQ has a type of get, set, result or error; anything else is answered
        // with bad-request here rather than routed.
        if stanza.kind() == StanzaKind::Iq
            && !matches!(
                stanza.type_().as_deref(),
                Some("get" | "set" | "result" | "error")
            )
        {
            let mut out = Vec::new();
            if super::errors::write_error_between(
                &mut out,
                &stanza,
                &self.host,
                full.as_str(),
                StanzaErrorCondition::BadRequest,
            ) {
                self.send(out);
            }
            return;
        }
        self.actions.push_back(Action::Route(stanza));
    }

    /// Answers `stanza` from the server with a stanza error (never an error to an error).
    pub fn reply_error(&mut self, stanza: &Stanza, condition: StanzaErrorCondition) {
        let mut out = Vec::new();
        if write_error_reply(&mut out, stanza, &self.host, condition, None) {
            self.send(out);
        }
    }
}

fn decode_payload(el: &Element) -> Option<Vec<u8>> {
    let text = el.text();
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Some(Vec::new());
    }
    B64.decode(text).ok()
}

fn put_id(out: &mut Vec<u8>, iq: &Stanza) {
    if let Some(id) = iq.id() {
        out.extend_from_slice(b" id='");
        out.extend_from_slice(escape(&id).as_bytes());
        out.push(b'\'');
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sasl::Hash;
    use crate::proto::sasl::client::ScramClient;
    use crate::proto::xml::{Limits, StreamParser};
    use std::sync::Arc;

    const HDR: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
                       to='example.org' version='1.0'>";

    fn settings(tls_required: bool) -> Arc<C2sSettings> {
        Arc::new(C2sSettings {
            hosts: vec!["example.org".into(), "other.example".into()],
            starttls: true,
            tls_required,
            max_sasl_failures: 2,
            auth_timeout: Duration::from_secs(30),
            plain_only: false,
            mechanisms: Mechanism::ALL.to_vec(),
            register_hosts: std::sync::Arc::new(std::sync::RwLock::new(vec!["example.org".into()])),
            rosterver_hosts: std::sync::Arc::default(),
            preapproval_hosts: std::sync::Arc::default(),
            csi_hosts: std::sync::Arc::new(std::sync::RwLock::new(vec!["example.org".into()])),
        })
    }

    /// The in-memory peer: a parser for the client's bytes, the state machine, a one-user store and
    /// everything the server sent, as text.
    struct Peer {
        parser: StreamParser,
        c2s: C2s,
        sent: String,
        routed: Vec<Stanza>,
        /// The client state nonzas passed on, in order (`true`: active).
        states: Vec<bool>,
        authenticated: Option<Jid>,
        /// Every SASL outcome reported, in order.
        auths: Vec<(&'static str, Option<String>, Result<(), &'static str>)>,
        closed: bool,
        /// Why the machine closed the stream.
        closing: Option<Closing>,
        tls_started: bool,
        creds: Credentials,
        piece: usize,
        /// The store is down: every lookup fails.
        store_down: bool,
    }

    impl Peer {
        fn new(tls_required: bool, secure: bool, piece: usize) -> Peer {
            Peer::with(settings(tls_required), secure, piece)
        }

        fn with(settings: Arc<C2sSettings>, secure: bool, piece: usize) -> Peer {
            let mut counter = 0u8;
            Peer {
                parser: StreamParser::new(Limits::default()),
                c2s: C2s::new(
                    settings,
                    secure,
                    ChannelBindings::default(),
                    Instant::now(),
                    Box::new(move |b: &mut [u8]| {
                        for x in b {
                            counter = counter.wrapping_add(1);
                            *x = counter;
                        }
                    }),
                ),
                sent: String::new(),
                routed: Vec::new(),
                states: Vec::new(),
                authenticated: None,
                auths: Vec::new(),
                closed: false,
                closing: None,
                tls_started: false,
                creds: Credentials::from_password("pencil", b"0123456789abcdef", 4096).unwrap(),
                piece,
                store_down: false,
            }
        }

        /// Feeds `input` in pieces and carries out every action; returns what the server sent meanwhile.
        fn client(&mut self, input: &str) -> String {
            let before = self.sent.len();
            for chunk in input.as_bytes().chunks(self.piece) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let n = self.parser.feed(rest);
                    rest = &rest[n..];
                    loop {
                        match self.parser.next_event() {
                            Ok(Some(e)) => self.c2s.handle_event(e),
                            Ok(None) => break,
                            Err(e) => {
                                self.c2s.handle_parse_error(e);
                                self.drain();
                                return self.sent[before..].to_string();
                            }
                        }
                        self.drain();
                    }
                }
            }
            self.sent[before..].to_string()
        }

        fn drain(&mut self) {
            while let Some(a) = self.c2s.poll_action() {
                match a {
                    Action::Send(b) => self.sent.push_str(std::str::from_utf8(&b).unwrap()),
                    Action::StartTls => {
                        self.tls_started = true;
                        self.parser.reset();
                    }
                    Action::ResetParser => self.parser.reset(),
                    Action::LookupCredentials {
                        host,
                        username,
                        plain_password,
                    } => {
                        assert_eq!(host, "example.org");
                        if self.store_down {
                            self.c2s.credentials_unavailable();
                            continue;
                        }
                        let creds = self.creds.clone();
                        let found = (username == "juliet").then_some(&creds);
                        match plain_password {
                            Some(p) => self
                                .c2s
                                .plain_checked(found.is_some_and(|c| c.verify_password(&p))),
                            None => self.c2s.credentials(found),
                        }
                    }
                    Action::Authentication {
                        mechanism,
                        username,
                        outcome,
                    } => self.auths.push((mechanism, username, outcome)),
                    Action::Authenticated(j) => {
                        assert!(
                            matches!(self.auths.last(), Some((_, _, Ok(())))),
                            "a success is reported before Authenticated"
                        );
                        self.authenticated = Some(j)
                    }
                    Action::Bind { resource, iq } => {
                        let user = self.c2s.user().unwrap().clone();
                        let r = match resource.as_deref() {
                            Some("bad\u{7}") => Err(BindError::BadResource),
                            Some(r) => Ok(user.with_resource(r).unwrap()),
                            None => Ok(user.with_resource("generated").unwrap()),
                        };
                        self.c2s.bound(&iq, r);
                    }
                    Action::Route(s) => self.routed.push(s),
                    Action::ClientState { active } => self.states.push(active),
                    Action::Register { host, iq } => {
                        assert_eq!(host, "example.org");
                        self.c2s.send_raw(b"<iq type='result'/>".to_vec());
                        self.routed.push(iq);
                    }
                    Action::Close(why) => {
                        assert!(!self.closed, "one Close per stream");
                        self.closed = true;
                        self.closing = Some(why);
                    }
                }
            }
        }

        /// A SCRAM-SHA-256 exchange as juliet with `password`: the client machine and the
        /// server's last answer.
        fn scram(&mut self, password: &str) -> (ScramClient, String) {
            self.scram_with(Hash::Sha256, "SCRAM-SHA-256", password)
        }

        fn scram_with(
            &mut self,
            hash: Hash,
            mechanism: &str,
            password: &str,
        ) -> (ScramClient, String) {
            let mut scram = ScramClient::new(hash, "juliet", password, "cnonce", None);
            let out = self.client(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{}</auth>",
                B64.encode(scram.client_first())
            ));
            let challenge = between(
                &out,
                "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
                "</challenge>",
            );
            let last = scram.client_final(&B64.decode(challenge).unwrap()).unwrap();
            let out = self.client(&format!(
                "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                B64.encode(last)
            ));
            (scram, out)
        }

        fn login(&mut self, resource: &str) {
            self.client(HDR);
            let (scram, out) = self.scram("pencil");
            let v = between(
                &out,
                "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
                "</success>",
            );
            assert!(scram.verify_server(&B64.decode(v).unwrap()));
            let out = self.client(HDR);
            assert!(
                out.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"),
                "{out}"
            );
            let out = self.client(&format!(
                "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
            ));
            assert!(
                out.contains(&format!("<jid>juliet@example.org/{resource}</jid>")),
                "{out}"
            );
            assert!(self.c2s.is_established());
        }
    }

    fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
        let i = s.find(a).unwrap_or_else(|| panic!("{a} not in {s}")) + a.len();
        &s[i..i + s[i..].find(b).unwrap()]
    }

    const PIECES: [usize; 5] = [usize::MAX, 1, 2, 5, 10];

    #[test]
    fn plaintext_negotiation_to_an_established_session() {
        for piece in PIECES {
            let mut p = Peer::new(false, false, piece);
            p.login("balcony");
            assert_eq!(
                p.authenticated.as_ref().unwrap().as_str(),
                "juliet@example.org"
            );
            let out = p.client(
                "<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
            );
            assert_eq!(out, "<iq type='result' id='s'/>");
            p.client("<message to='romeo@example.org' from='juliet@example.org/balcony'><body>hi</body></message>");
            assert_eq!(p.routed.len(), 1);
            assert_eq!(
                p.auths,
                [("SCRAM-SHA-256", Some("juliet".to_string()), Ok(()))]
            );
            assert_eq!(p.c2s.mechanism(), Some("SCRAM-SHA-256"));
            assert!(!p.c2s.is_secure());
            let out = p.client("</stream:stream>");
            assert_eq!(out, "</stream:stream>");
            assert!(p.closed);
            assert_eq!(p.closing, Some(Closing::ByPeer));
        }
    }

    #[test]
    fn features_follow_the_tls_state() {
        let mut p = Peer::new(true, false, usize::MAX);
        let out = p.client(HDR);
        assert!(
            out.contains(
                "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
            )
        );
        assert!(
            !out.contains("<mechanisms"),
            "no SASL before TLS when TLS is required: {out}"
        );
        let out = p.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABwZW5jaWw=</auth>");
        assert!(out.contains("<encryption-required/>"), "{out}");
        assert_eq!(p.auths, [("PLAIN", None, Err("encryption-required"))]);
        let out = p.client("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert_eq!(out, "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert!(p.tls_started);
        p.c2s.tls_established(ChannelBindings {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: None,
        });
        let out = p.client(HDR);
        assert!(!out.contains("starttls"));
        assert!(
            out.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism>"),
            "{out}"
        );
        assert!(
            out.contains("<channel-binding type='tls-exporter'/>"),
            "{out}"
        );
        let out = p.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABwZW5jaWw=</auth>");
        assert!(out.starts_with("<success"), "{out}");
        assert_eq!(p.auths[1], ("PLAIN", Some("juliet".to_string()), Ok(())));
        assert!(p.c2s.is_secure());
    }

    fn offered(out: &str) -> Vec<&str> {
        between(
            out,
            "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
            "</mechanisms>",
        )
        .split("</mechanism>")
        .filter_map(|m| m.strip_prefix("<mechanism>"))
        .collect()
    }

    #[test]
    fn the_configured_mechanisms_are_offered_in_their_order_and_no_others_accepted() {
        use Mechanism::*;
        let bindings = || ChannelBindings {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: None,
        };
        let mut s = (*settings(true)).clone();
        s.mechanisms = vec![ScramSha1Plus, ScramSha1, Plain];
        let s = Arc::new(s);
        let mut p = Peer::with(s.clone(), true, usize::MAX);
        p.c2s.tls_established(bindings());
        let out = p.client(HDR);
        assert_eq!(
            offered(&out),
            ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "PLAIN"],
            "{out}"
        );
        assert!(out.contains("<sasl-channel-binding"), "{out}");
        for refused in ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "DIGEST-MD5"] {
            let out = p.client(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{refused}'>biwsbj1qdWxpZXQscj1hYmM=</auth>"
            ));
            assert!(out.contains("<invalid-mechanism/>"), "{refused}: {out}");
            // Reset the cap (2) between attempts: this is about the condition, not the count.
            p.c2s.sasl_failures = 0;
        }
        let (_, out) = p.scram_with(Hash::Sha1, "SCRAM-SHA-1", "pencil");
        assert!(out.contains("<success"), "{out}");

        // Without channel-binding data the -PLUS ones go, and so does XEP-0440's list.
        let mut p = Peer::with(s.clone(), true, usize::MAX);
        let out = p.client(HDR);
        assert_eq!(offered(&out), ["SCRAM-SHA-1", "PLAIN"], "{out}");
        assert!(!out.contains("sasl-channel-binding"), "{out}");

        // No -PLUS configured: a client that could bind and says so (`y`) is no downgrade victim.
        let mut s2 = (*s).clone();
        s2.mechanisms = vec![ScramSha256, Plain];
        let mut p = Peer::with(Arc::new(s2), true, usize::MAX);
        p.c2s.tls_established(bindings());
        let out = p.client(HDR);
        assert_eq!(offered(&out), ["SCRAM-SHA-256", "PLAIN"], "{out}");
        assert!(!out.contains("sasl-channel-binding"), "{out}");
        let out = p.client(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            B64.encode("y,,n=juliet,r=abc")
        ));
        assert!(out.starts_with("<challenge"), "{out}");

        // External authentication keeps PLAIN alone, wherever the list puts it.
        let mut s3 = (*s).clone();
        s3.plain_only = true;
        let mut p = Peer::with(Arc::new(s3), true, usize::MAX);
        p.c2s.tls_established(bindings());
        assert_eq!(offered(&p.client(HDR)), ["PLAIN"]);
    }

    #[test]
    fn a_store_that_cannot_answer_is_a_temporary_failure_outside_the_cap() {
        // The cap is 2 (see below): three attempts while the store is down do not reach it.
        let mut p = Peer::new(false, false, usize::MAX);
        p.store_down = true;
        p.client(HDR);
        for _ in 0..3 {
            // `\0juliet\0pencil`: the right password, but nobody can check it.
            let out = p.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABwZW5jaWw=</auth>");
            assert!(out.contains("<temporary-auth-failure/>"), "{out}");
            assert!(!p.closed);
        }
        assert_eq!(
            p.auths[0],
            (
                "PLAIN",
                Some("juliet".to_string()),
                Err("temporary-auth-failure")
            )
        );
        // The store is back: the same client logs in on the same stream.
        p.store_down = false;
        let out = p.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABwZW5jaWw=</auth>");
        assert!(out.starts_with("<success"), "{out}");
    }

    #[test]
    fn sasl_failures_and_their_cap() {
        let mut p = Peer::new(false, false, usize::MAX);
        p.client(HDR);
        let out = p.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-NOPE'/>");
        assert!(out.contains("<invalid-mechanism/>"), "{out}");
        let out =
            p.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!!</auth>");
        assert!(out.contains("<incorrect-encoding/>"), "{out}");
        assert!(
            out.contains("<policy-violation"),
            "the second failure reaches the cap of 2: {out}"
        );
        assert!(p.closed);
        assert_eq!(
            p.auths,
            [
                ("none", None, Err("invalid-mechanism")),
                ("PLAIN", None, Err("incorrect-encoding")),
            ]
        );
        assert_eq!(p.closing, Some(Closing::TooManyAuthFailures));

        let mut p = Peer::new(false, false, usize::MAX);
        p.client(HDR);
        // `\0juliet\0wrong`
        let out = p.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAB3cm9uZw==</auth>");
        assert!(out.contains("<not-authorized/>"), "{out}");
        let out =
            p.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'/>");
        assert!(out.contains("<challenge"), "{out}");
        let out = p.client("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        assert!(out.contains("<aborted/>"), "{out}");
        let out = p.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>bixtPWp1bGlldA==</auth>");
        assert!(out.contains("<malformed-request/>"), "{out}");
        assert!(p.closed);
        // Every attempt reported once, the abort too (it does not count towards the cap).
        assert_eq!(
            p.auths,
            [
                ("PLAIN", Some("juliet".to_string()), Err("not-authorized")),
                ("SCRAM-SHA-1", None, Err("aborted")),
                ("SCRAM-SHA-1", None, Err("malformed-request")),
            ]
        );
        assert_eq!(p.closing, Some(Closing::TooManyAuthFailures));

        // A wrong SCRAM proof names the user it tried.
        let mut p = Peer::new(false, false, usize::MAX);
        p.client(HDR);
        let (_, out) = p.scram("wrong");
        assert!(out.contains("<not-authorized/>"), "{out}");
        assert_eq!(
            p.auths,
            [(
                "SCRAM-SHA-256",
                Some("juliet".to_string()),
                Err("not-authorized")
            )]
        );
        assert!(!p.closed, "one failure is under the cap");
    }

    #[test]
    fn header_checks() {
        let cases = [
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='nowhere.example' version='1.0'>",
                "host-unknown",
            ),
            (
                "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>",
                "invalid-namespace",
            ),
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org'>",
                "unsupported-version",
            ),
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='example.org' version='1.0'>",
                "invalid-namespace",
            ),
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'><a",
                "",
            ),
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'><!-- c -->",
                "restricted-xml",
            ),
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'><a></b>",
                "not-well-formed",
            ),
        ];
        for (input, condition) in cases {
            for piece in PIECES {
                let mut p = Peer::new(false, false, piece);
                let out = p.client(input);
                if condition.is_empty() {
                    assert!(!p.closed, "incomplete input waits: {out}");
                    continue;
                }
                assert!(
                    out.starts_with("<?xml version='1.0'?><stream:stream "),
                    "a header precedes the error: {out}"
                );
                assert!(
                    out.contains(&format!(
                        "<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                    )),
                    "{input}: {out}"
                );
                assert!(out.ends_with("</stream:error></stream:stream>"));
                assert!(p.closed);
                assert_eq!(
                    p.closing.and_then(Closing::condition).map(|c| c.as_str()),
                    Some(condition)
                );
            }
        }
        let mut p = Peer::new(false, false, usize::MAX);
        let out = p.client(&HDR.replace("example.org", "Other.Example"));
        assert!(out.contains("from='other.example'"), "{out}");
    }

    #[test]
    fn stanzas_before_auth_or_bind_and_forged_from() {
        let mut p = Peer::new(false, false, usize::MAX);
        p.client(HDR);
        let out = p.client("<message to='a@example.org'><body>x</body></message>");
        assert!(
            out.contains("<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
            "{out}"
        );

        let mut p = Peer::new(false, false, usize::MAX);
        p.login("r");
        let out = p.client("<message from='romeo@example.org/x' to='a@example.org'/>");
        assert!(out.contains("<invalid-from"), "{out}");
        assert!(p.routed.is_empty());

        let mut p = Peer::new(false, false, usize::MAX);
        p.login("r");
        p.client("<message from='juliet@example.org' to='a@example.org'/>");
        assert_eq!(p.routed.len(), 1, "the bare JID is the sender's own");
        let out = p.client("<iq id='t1' to='romeo@example.org'/>");
        assert!(
            out.contains("type='error'") && out.contains("<bad-request"),
            "{out}"
        );
        let out = p.client("<iq id='t2' type='fetch'/>");
        assert!(out.contains("<bad-request"), "{out}");
        assert_eq!(p.routed.len(), 1, "neither was routed");
        let out = p.client("<enable xmlns='urn:xmpp:sm:3'/>");
        assert!(out.contains("<unsupported-stanza-type"), "{out}");
    }

    #[test]
    fn bind_errors_and_timeout() {
        let mut p = Peer::new(false, false, usize::MAX);
        p.client(HDR);
        p.c2s.tick(Instant::now() + Duration::from_secs(31));
        p.drain();
        assert!(p.sent.contains("<connection-timeout"), "{}", p.sent);
        assert!(p.closed);
        assert_eq!(p.closing, Some(Closing::AuthTimeout));

        let mut p = Peer::new(false, false, usize::MAX);
        p.login("first");
        // Authenticated sessions do not time out.
        p.c2s.tick(Instant::now() + Duration::from_secs(3600));
        p.drain();
        assert!(!p.closed);
    }

    #[test]
    fn in_band_registration_only_where_sasl_is_offered() {
        for piece in PIECES {
            let mut p = Peer::new(false, false, piece);
            let out = p.client(HDR);
            assert!(out.contains("<register xmlns='http://jabber.org/features/iq-register'/>"));
            let out = p.client("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>");
            assert_eq!(out, "<iq type='result'/>");
            assert_eq!(p.routed.len(), 1);
            // Anything else before authentication is still refused.
            let out = p.client("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>");
            assert!(out.contains("<not-authorized"), "{out}");

            // TLS required and not up: neither SASL nor registration.
            let mut p = Peer::new(true, false, piece);
            let out = p.client(HDR);
            assert!(!out.contains("iq-register"), "{out}");
            let out = p.client("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>");
            assert!(out.contains("<not-authorized"), "{out}");
        }
    }

    #[test]
    fn client_state_nonzas_after_bind() {
        const INACTIVE: &str = "<inactive xmlns='urn:xmpp:csi:0'/>";
        const ACTIVE: &str = "<active xmlns='urn:xmpp:csi:0'/>";
        for piece in PIECES {
            let out = Peer::new(false, false, piece).client(HDR);
            assert!(!out.contains("urn:xmpp:csi:0"), "not before auth: {out}");
            let mut p = Peer::new(false, false, piece);
            p.login("phone");
            // Passed on in order with the stanzas around them, and never answered.
            let out = p.client(&format!(
                "{INACTIVE}<message to='romeo@example.org'><body>1</body></message>{ACTIVE}{INACTIVE}"
            ));
            assert_eq!(out, "", "no answer to a nonza");
            assert_eq!(p.states, [false, true, false]);
            assert_eq!(p.routed.len(), 1);
            // Prefixed, the same nonza.
            p.client("<c:active xmlns:c='urn:xmpp:csi:0'/>");
            assert_eq!(p.states, [false, true, false, true]);
            // Another element of the namespace is not one.
            let out = p.client("<csi xmlns='urn:xmpp:csi:0'/>");
            assert!(out.contains("<unsupported-stanza-type"), "{out}");
        }
    }

    #[test]
    fn the_csi_feature_follows_the_host_list() {
        let mut p = Peer::new(false, false, usize::MAX);
        p.login("r");
        // The post-authentication features of the login carried it; check them again after a change.
        let settings = settings(false);
        settings.csi_hosts.write().unwrap().clear();
        let mut q = Peer::new(false, false, usize::MAX);
        q.c2s = C2s::new(
            settings,
            false,
            ChannelBindings::default(),
            Instant::now(),
            Box::new(|b: &mut [u8]| b.fill(7)),
        );
        q.login("r");
        assert!(!q.sent.contains("urn:xmpp:csi:0"), "{}", q.sent);
        assert!(
            p.sent
                .contains("<csi xmlns='urn:xmpp:csi:0'/></stream:features>"),
            "{}",
            p.sent
        );
        // Before bind the nonza has no session to act on: refused like any element out of place.
        let mut r = Peer::new(false, false, usize::MAX);
        r.client(HDR);
        let out = r.client("<inactive xmlns='urn:xmpp:csi:0'/>");
        assert!(out.contains("<unsupported-stanza-type"), "{out}");
        assert!(r.states.is_empty());
    }
}

//! The two kinds of XMPP error on the wire: stream errors (RFC 6120 §4.9), which end a connection, and
//! stanza errors (RFC 6120 §8.3), which answer one stanza. This module owns their conditions, their
//! default types and their serialisation, and the rule that an error is never answered with an error.
//! Error replies are written from a stanza's parsed header, without building a tree.

use bytes::BufMut;

use super::xml::{Stanza, StanzaKind, StreamCondition, XmlError};

const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
const NS_STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// Every defined stream error condition (RFC 6120 §4.9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamErrorCondition {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SeeOtherHost,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedFeature,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

/// Why a stream machine closed its stream, for the glue's logs and counters: a stream that ends is a
/// logout or a refusal, and the operator wants to know which and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The peer closed its stream (`</stream:stream>`), and the machine answered in kind.
    ByPeer,
    /// The machine sent this stream error: the peer broke a rule, or the glue asked (`conflict`,
    /// `system-shutdown`, a full output queue).
    StreamError(StreamErrorCondition),
    /// The peer did not authenticate in time (`connection-timeout` was sent).
    AuthTimeout,
    /// The peer failed authentication as often as it may (`policy-violation` was sent).
    TooManyAuthFailures,
    /// STARTTLS was refused (a TLS `<failure/>` was sent, RFC 6120 §5.4.2.2).
    TlsRefused,
}

impl Closing {
    /// The stream error condition sent, if one was.
    pub fn condition(self) -> Option<StreamErrorCondition> {
        match self {
            Closing::StreamError(c) => Some(c),
            Closing::AuthTimeout => Some(StreamErrorCondition::ConnectionTimeout),
            Closing::TooManyAuthFailures => Some(StreamErrorCondition::PolicyViolation),
            Closing::ByPeer | Closing::TlsRefused => None,
        }
    }
}

impl StreamErrorCondition {
    pub fn as_str(self) -> &'static str {
        use StreamErrorCondition::*;
        match self {
            BadFormat => "bad-format",
            BadNamespacePrefix => "bad-namespace-prefix",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostGone => "host-gone",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            Reset => "reset",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SeeOtherHost => "see-other-host",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedFeature => "unsupported-feature",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }
}

impl From<StreamCondition> for StreamErrorCondition {
    fn from(c: StreamCondition) -> Self {
        match c {
            StreamCondition::NotWellFormed => StreamErrorCondition::NotWellFormed,
            StreamCondition::RestrictedXml => StreamErrorCondition::RestrictedXml,
            StreamCondition::InvalidNamespace => StreamErrorCondition::InvalidNamespace,
            StreamCondition::BadFormat => StreamErrorCondition::BadFormat,
            StreamCondition::PolicyViolation => StreamErrorCondition::PolicyViolation,
            StreamCondition::UnsupportedEncoding => StreamErrorCondition::UnsupportedEncoding,
        }
    }
}

impl From<&XmlError> for StreamErrorCondition {
    fn from(e: &XmlError) -> Self {
        e.condition().into()
    }
}

/// Appends `<stream:error>` with the condition and an optional English text, followed by the stream close:
/// a stream error always ends the stream (RFC 6120 §4.9.1.1).
///
/// ```
/// use rjabberd::proto::errors::{StreamErrorCondition, write_stream_error};
/// let mut out = Vec::new();
/// write_stream_error(&mut out, StreamErrorCondition::HostUnknown, None);
/// assert_eq!(
///     String::from_utf8(out).unwrap(),
///     "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
/// );
/// ```
pub fn write_stream_error(
    out: &mut impl BufMut,
    condition: StreamErrorCondition,
    text: Option<&str>,
) {
    out.put_slice(b"<stream:error>");
    put_condition(out, condition.as_str(), NS_STREAM_ERRORS, text);
    out.put_slice(b"</stream:error></stream:stream>");
}

/// The error types of RFC 6120 §8.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// Every defined stanza error condition (RFC 6120 §8.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaErrorCondition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

impl StanzaErrorCondition {
    pub fn as_str(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            Gone => "gone",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            Redirect => "redirect",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            SubscriptionRequired => "subscription-required",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The type RFC 6120 §8.3.3 gives in each condition's example, which is what servers send by default.
    pub fn default_type(self) -> ErrorType {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => {
                ErrorType::Modify
            }
            NotAuthorized | Forbidden | RegistrationRequired | SubscriptionRequired => {
                ErrorType::Auth
            }
            RecipientUnavailable | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => {
                ErrorType::Wait
            }
            Conflict
            | FeatureNotImplemented
            | Gone
            | InternalServerError
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable
            | UndefinedCondition => ErrorType::Cancel,
        }
    }
}

/// Whether a stanza may be answered with an error: not when it is itself an error (RFC 6120 §8.3.1), and
/// only stanzas (message, presence, IQ) are answered at all.
pub fn may_bounce(stanza: &Stanza) -> bool {
    stanza.kind() != StanzaKind::Other && stanza.type_().as_deref() != Some("error")
}

/// Appends the error reply to `stanza`: same element name and `id`, `from` and `to` swapped (`from` set to
/// `replier` when the original had no `to`, as when the server answers for the sender's own account),
/// `type='error'` and the `<error>` child. The original payload is not echoed: RFC 6120 §8.3.1 allows either,
/// and echoing would copy attacker-sized content back. Returns false, writing nothing, when the stanza must
/// not be answered (see [`may_bounce`]).
///
/// ```
/// use rjabberd::proto::errors::{StanzaErrorCondition, write_error_reply};
/// use rjabberd::proto::xml::{Limits, parse_element};
/// let iq = parse_element(b"<iq xmlns='jabber:client' type='get' id='1' from='a@x/r' to='x'><q xmlns='urn:q'/></iq>", &Limits::default()).unwrap();
/// let mut out = Vec::new();
/// assert!(write_error_reply(&mut out, &iq, "x", StanzaErrorCondition::ServiceUnavailable, None));
/// assert_eq!(
///     String::from_utf8(out).unwrap(),
///     "<iq from='x' to='a@x/r' type='error' id='1'><error type='cancel'>\
///      <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
/// );
/// ```
pub fn write_error_reply(
    out: &mut impl BufMut,
    stanza: &Stanza,
    replier: &str,
    condition: StanzaErrorCondition,
    text: Option<&str>,
) -> bool {
    if !may_bounce(stanza) {
        return false;
    }
    let from = stanza.to();
    let to = stanza.from();
    write_error(
        out,
        stanza,
        stanza.name(),
        None,
        from.as_deref().unwrap_or(replier),
        to.as_deref(),
        condition,
        text,
        None,
    );
    true
}

/// Appends the error reply to `stanza` with explicit addresses, for a router that knows the sender's full
/// JID even when the stanza did not carry `from`. The reply declares `jabber:client` so it can be parsed
/// and routed like any stanza. Returns false, writing nothing, when the stanza must not be answered.
pub fn write_error_between(
    out: &mut impl BufMut,
    stanza: &Stanza,
    from: &str,
    to: &str,
    condition: StanzaErrorCondition,
) -> bool {
    write_error_between_with(out, stanza, from, to, condition, None)
}

/// [`write_error_between`] with an application-specific condition (RFC 6120 §8.3.2): `app` is a
/// complete element, written after the defined condition, e.g. XEP-0191's
/// `<blocked xmlns='urn:xmpp:blocking:errors'/>`.
pub fn write_error_between_with(
    out: &mut impl BufMut,
    stanza: &Stanza,
    from: &str,
    to: &str,
    condition: StanzaErrorCondition,
    app: Option<&str>,
) -> bool {
    if !may_bounce(stanza) {
        return false;
    }
    write_error(
        out,
        stanza,
        stanza.local_name(),
        Some("jabber:client"),
        from,
        Some(to),
        condition,
        None,
        app,
    );
    true
}

/// The one writer of error replies: `<name [xmlns] from [to] type='error' [id]><error …/></name>`.
#[allow(clippy::too_many_arguments)]
fn write_error(
    out: &mut impl BufMut,
    stanza: &Stanza,
    name: &str,
    xmlns: Option<&str>,
    from: &str,
    to: Option<&str>,
    condition: StanzaErrorCondition,
    text: Option<&str>,
    app: Option<&str>,
) {
    out.put_u8(b'<');
    out.put_slice(name.as_bytes());
    if let Some(ns) = xmlns {
        put_attr(out, "xmlns", ns);
    }
    put_attr(out, "from", from);
    if let Some(to) = to {
        put_attr(out, "to", to);
    }
    put_attr(out, "type", "error");
    if let Some(id) = stanza.id() {
        put_attr(out, "id", &id);
    }
    out.put_u8(b'>');
    put_error_element(out, condition, text, app);
    out.put_slice(b"</");
    out.put_slice(name.as_bytes());
    out.put_u8(b'>');
}

/// Appends the `<error/>` child of an error stanza: its type, the condition and an optional English
/// text. The one writer of it, for the router's replies and the IQ handlers' answers alike.
pub fn write_error_element(
    out: &mut impl BufMut,
    condition: StanzaErrorCondition,
    text: Option<&str>,
) {
    put_error_element(out, condition, text, None);
}

/// The `<error/>` child, with an application-specific condition when `app` is given.
fn put_error_element(
    out: &mut impl BufMut,
    condition: StanzaErrorCondition,
    text: Option<&str>,
    app: Option<&str>,
) {
    out.put_slice(b"<error type='");
    out.put_slice(condition.default_type().as_str().as_bytes());
    out.put_slice(b"'>");
    put_condition(out, condition.as_str(), NS_STANZA_ERRORS, text);
    if let Some(app) = app {
        out.put_slice(app.as_bytes());
    }
    out.put_slice(b"</error>");
}

/// A defined condition and its optional English text, in the namespace of stream or stanza errors (the
/// part RFC 6120 §4.9.2 and §8.3.2 share).
fn put_condition(out: &mut impl BufMut, condition: &str, ns: &str, text: Option<&str>) {
    out.put_u8(b'<');
    out.put_slice(condition.as_bytes());
    out.put_slice(b" xmlns='");
    out.put_slice(ns.as_bytes());
    out.put_slice(b"'/>");
    if let Some(text) = text {
        out.put_slice(b"<text xmlns='");
        out.put_slice(ns.as_bytes());
        out.put_slice(b"' xml:lang='en'>");
        put_text(out, text);
        out.put_slice(b"</text>");
    }
}

fn put_attr(out: &mut impl BufMut, name: &str, value: &str) {
    out.put_u8(b' ');
    out.put_slice(name.as_bytes());
    out.put_slice(b"='");
    put_text(out, value);
    out.put_u8(b'\'');
}

fn put_text(out: &mut impl BufMut, text: &str) {
    out.put_slice(super::xml::escape(text).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::xml::{Limits, parse_element};

    fn stanza(s: &str) -> Stanza {
        parse_element(s.as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn errors_are_never_answered_with_errors() {
        let mut out = Vec::new();
        let err = stanza("<message xmlns='jabber:client' type='error' from='a@x' to='b@x'/>");
        assert!(!write_error_reply(
            &mut out,
            &err,
            "x",
            StanzaErrorCondition::ServiceUnavailable,
            None
        ));
        let nonza = stanza("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert!(!write_error_reply(
            &mut out,
            &nonza,
            "x",
            StanzaErrorCondition::BadRequest,
            None
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn replies_parse_and_carry_the_condition() {
        let msg = stanza(
            "<message xmlns='jabber:client' from='a@x/r' to='nobody@x' id='m&amp;1'><body>hi</body></message>",
        );
        let mut out = Vec::new();
        assert!(write_error_reply(
            &mut out,
            &msg,
            "x",
            StanzaErrorCondition::ItemNotFound,
            Some("no <such> user")
        ));
        let reply = stanza(&String::from_utf8(out).unwrap().replacen(
            "<message",
            "<message xmlns='jabber:client'",
            1,
        ));
        assert_eq!(reply.type_().as_deref(), Some("error"));
        assert_eq!(reply.id().as_deref(), Some("m&1"));
        assert_eq!(reply.from().as_deref(), Some("nobody@x"));
        assert_eq!(reply.to().as_deref(), Some("a@x/r"));
    }

    #[test]
    fn every_condition_has_a_wire_name_and_a_type() {
        assert_eq!(
            StanzaErrorCondition::ServiceUnavailable.default_type(),
            ErrorType::Cancel
        );
        assert_eq!(
            StanzaErrorCondition::NotAuthorized.default_type(),
            ErrorType::Auth
        );
        assert_eq!(
            StanzaErrorCondition::ResourceConstraint.default_type(),
            ErrorType::Wait
        );
        assert_eq!(
            StreamErrorCondition::from(StreamCondition::PolicyViolation).as_str(),
            "policy-violation"
        );
    }
}

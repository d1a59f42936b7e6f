//! The parser's refusals. Every way the stanza engine can reject input is one variant here, sorted by the
//! stream error the server answers with (RFC 6120 §4.9.3), so the connection layer never has to guess:
//! `XmlError::condition()` is the single mapping from a refusal to the wire.

use std::fmt;

/// The RFC 6120 §4.9.3 stream error conditions the stanza engine can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamCondition {
    /// §4.9.3.13: the data is not well-formed XML or not namespace-well-formed.
    NotWellFormed,
    /// §4.9.3.18: XML that RFC 6120 §11.1 forbids (comments, PIs, DTDs, entity declarations/references).
    RestrictedXml,
    /// §4.9.3.10: the stream namespace is not `http://etherx.jabber.org/streams`.
    InvalidNamespace,
    /// §4.9.3.1: well-formed XML that cannot be processed as an XMPP stream.
    BadFormat,
    /// §4.9.3.14: a local limit (stanza size, depth, attributes, namespace declarations) was exceeded.
    PolicyViolation,
    /// §4.9.3.22: the XML declaration names an encoding other than UTF-8.
    UnsupportedEncoding,
}

impl StreamCondition {
    /// The element name of the condition inside `<stream:error>`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamCondition::NotWellFormed => "not-well-formed",
            StreamCondition::RestrictedXml => "restricted-xml",
            StreamCondition::InvalidNamespace => "invalid-namespace",
            StreamCondition::BadFormat => "bad-format",
            StreamCondition::PolicyViolation => "policy-violation",
            StreamCondition::UnsupportedEncoding => "unsupported-encoding",
        }
    }
}

impl fmt::Display for StreamCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the input is not well-formed (XML 1.0 fifth edition and Namespaces in XML 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    InvalidUtf8,
    /// A code point outside the XML `Char` production (control characters, U+FFFE, U+FFFF).
    IllegalChar,
    InvalidName,
    /// Markup where it cannot stand: `<` in an attribute value, a stray `/`, a missing `=`, quote or space.
    UnexpectedByte,
    MismatchedEndTag,
    DuplicateAttribute,
    /// A prefix on an element or attribute that no declaration in scope binds.
    UnboundPrefix,
    /// A namespace declaration Namespaces in XML forbids: `xmlns:p=""`, rebinding `xml` or `xmlns`, a
    /// prefix `xmlns` on an element.
    ReservedNamespace,
    /// `&` not followed by a complete, legal reference.
    BadReference,
    /// `]]>` in character data.
    CdataEndInText,
    /// Data after the root element was closed, or a second root.
    JunkAfterRoot,
    /// A malformed XML declaration.
    BadDeclaration,
    /// A CDATA section outside an element.
    MisplacedCdata,
    /// The input ended inside an element (only reported by [`super::StreamParser::finish`]).
    UnexpectedEof,
}

/// Markup that RFC 6120 §11.1 forbids even though XML allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Restricted {
    Comment,
    ProcessingInstruction,
    Doctype,
    /// An entity reference other than `lt`, `gt`, `amp`, `apos`, `quot`.
    EntityReference,
}

/// Which caller-set limit was exceeded (see [`super::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    StanzaSize,
    Depth,
    Attributes,
    NamespaceDeclarations,
}

/// Well-formed XML that is not a usable XMPP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadFormat {
    /// Non-whitespace character data directly inside `<stream:stream>`, between stanzas.
    TextAtStreamLevel,
    /// The stream was closed without ever being opened, or the root is not an element.
    NoStream,
}

/// One refusal of the stanza engine, with the byte offset in the stream where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XmlError {
    pub kind: XmlErrorKind,
    /// Offset from the start of the stream (or of the document), counting bytes of earlier stanzas.
    pub offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XmlErrorKind {
    NotWellFormed(Malformed),
    RestrictedXml(Restricted),
    /// The root element is not `{http://etherx.jabber.org/streams}stream`.
    InvalidNamespace,
    BadFormat(BadFormat),
    LimitExceeded(LimitKind),
    UnsupportedEncoding,
}

impl XmlError {
    pub(crate) fn new(kind: XmlErrorKind, offset: u64) -> Self {
        XmlError { kind, offset }
    }

    /// The stream error the server sends for this refusal.
    pub fn condition(&self) -> StreamCondition {
        match self.kind {
            XmlErrorKind::NotWellFormed(_) => StreamCondition::NotWellFormed,
            XmlErrorKind::RestrictedXml(_) => StreamCondition::RestrictedXml,
            XmlErrorKind::InvalidNamespace => StreamCondition::InvalidNamespace,
            XmlErrorKind::BadFormat(_) => StreamCondition::BadFormat,
            XmlErrorKind::LimitExceeded(_) => StreamCondition::PolicyViolation,
            XmlErrorKind::UnsupportedEncoding => StreamCondition::UnsupportedEncoding,
        }
    }
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            XmlErrorKind::NotWellFormed(m) => format!("not well-formed: {m:?}"),
            XmlErrorKind::RestrictedXml(r) => format!("restricted XML: {r:?}"),
            XmlErrorKind::InvalidNamespace => "the stream namespace is wrong".to_string(),
            XmlErrorKind::BadFormat(b) => format!("bad format: {b:?}"),
            XmlErrorKind::LimitExceeded(l) => format!("limit exceeded: {l:?}"),
            XmlErrorKind::UnsupportedEncoding => "encoding other than UTF-8".to_string(),
        };
        write!(f, "{what} at byte {} ({})", self.offset, self.condition())
    }
}

impl std::error::Error for XmlError {}

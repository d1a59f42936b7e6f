//! PLACEHOLDER: the resumable stream parser is being written.
use bytes::BytesMut;

use super::error::XmlError;
use super::stanza::{Stanza, StreamHeader, XmlDecl};

/// Caller-set bounds on what one peer can make the parser hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest top-level element in bytes, from `<` to `>` (ejabberd's c2s `max_stanza_size`).
    pub max_stanza_bytes: usize,
    /// Deepest nesting of elements, counting the stream root.
    pub max_depth: usize,
    /// Most attributes on one element, namespace declarations included.
    pub max_attrs: usize,
    /// Most namespace declarations in scope at once.
    pub max_ns_decls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_depth: 64,
            max_attrs: 64,
            max_ns_decls: 32,
        }
    }
}

/// What the parser yields, in stream order.
#[derive(Debug, Clone)]
pub enum Event {
    Declaration(XmlDecl),
    StreamOpen(StreamHeader),
    Stanza(Stanza),
    StreamClose,
}

pub struct StreamParser {
    _p: (),
}

impl StreamParser {
    /// A parser for an XMPP stream: root start tag → `StreamOpen`, each child → `Stanza`, root end → `StreamClose`.
    pub fn new(_limits: Limits) -> Self {
        todo!()
    }
    /// A parser for one standalone document: its root element is yielded whole as one `Stanza`.
    pub fn document(_limits: Limits) -> Self {
        todo!()
    }
    /// Appends up to `room()` bytes; returns how many were taken.
    pub fn feed(&mut self, _data: &[u8]) -> usize {
        todo!()
    }
    /// How many more bytes `feed` accepts now; drain events to make room.
    pub fn room(&self) -> usize {
        todo!()
    }
    /// The next complete event, `Ok(None)` when more bytes are needed. After an error, every call returns it.
    pub fn next_event(&mut self) -> Result<Option<Event>, XmlError> {
        todo!()
    }
    /// Signals end of input: an error if it ends inside an element (or, for a document, before its root).
    pub fn finish(&mut self) -> Result<(), XmlError> {
        todo!()
    }
    /// Stream restart (after STARTTLS or SASL): forgets the header and all state, keeps unparsed bytes.
    pub fn reset(&mut self) {
        todo!()
    }
    /// Removes and returns the bytes not yet parsed.
    pub fn take_unparsed(&mut self) -> BytesMut {
        todo!()
    }
}

/// Parses and checks one complete document holding a single element (the seed's
/// `xml_stream:parse_element`), returning it as a view.
pub fn parse_element(input: &[u8], limits: &Limits) -> Result<Stanza, XmlError> {
    let _ = (input, limits);
    todo!()
}

//! The stanza engine: it owns everything the server knows about XML. An XMPP stream is one endless document;
//! [`StreamParser`] cuts it into top-level elements as bytes arrive, checks each completely before yielding
//! it, and hands it out as a [`Stanza`]: the refcounted bytes that were read plus offsets of its name,
//! namespace, `to`, `from`, `type`, `id` and `xml:lang`. Routing reads those offsets; forwarding writes the
//! same bytes back out with [`Stanza::write_to`], stamping `from`; nothing builds a tree on that path.
//! Modules that need to look inside a stanza ask for an owned [`Element`] (the seed's
//! `{xmlelement, Name, Attrs, Children}`), built on demand from the checked bytes.
//!
//! ```text
//!  feed(bytes) ─► BytesMut ─► lexer (byte-level state machine, resumable at any byte)
//!                                │ checks: UTF-8, Char, names, end tags, attributes, namespaces,
//!                                │         references, RFC 6120 §11 restrictions, limits
//!                                ▼
//!               Event::{Declaration, StreamOpen(StreamHeader), Stanza(Stanza), StreamClose}
//!                                │
//!             Stanza { Bytes, StanzaHead } ─► write_to(out, target, from, to)   (no tree, no allocation)
//!                                └──────────► to_element() ─► Element           (owned, on demand)
//! ```
//!
//! Refusals are [`XmlError`]s whose [`XmlError::condition`] is the stream error to send. Limits
//! ([`Limits`]) bound what a peer can make the parser hold: the buffer never exceeds the largest allowed
//! element plus a fixed read slack (`StreamParser::room`), and exceeding a limit is `policy-violation`.
//!
//! Why not xml-rs, the design card's XML package: it allocates a `String` per name, attribute and text event
//! and has no zero-copy or resumable-by-byte mode, so it cannot meet the forwarding path's budget. It stays
//! as the reference parser in the differential tests and the fuzz target, and as a baseline in
//! `perf/xml.rs`; `docs/xml.md` gives the details.
mod chars;
mod element;
mod error;
mod escape;
mod parser;
mod stanza;

pub use element::{Element, Node, PathItem, PathValue, attr_of, attr_of_s, remove_text, text_of};
pub use error::{
    BadFormat, LimitKind, Malformed, Restricted, StreamCondition, XmlError, XmlErrorKind,
};
pub use escape::{escape, unescape_attr, unescape_text};
pub use parser::{Event, Limits, StreamParser, parse_element, parse_trusted};
pub use stanza::{
    CONTENT_NAMESPACES, NS_STREAMS, NS_XML, Stanza, StanzaKind, StreamHeader, StreamScope,
    TargetStream, Trace, XmlDecl,
};

#[cfg(test)]
mod tests;

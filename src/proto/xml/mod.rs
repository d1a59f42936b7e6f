//! The stanza engine: PLACEHOLDER essay.
mod chars;
mod element;
mod error;
mod escape;
mod parser;
mod stanza;

pub use element::{Element, Node};
pub use error::{
    BadFormat, LimitKind, Malformed, Restricted, StreamCondition, XmlError, XmlErrorKind,
};
pub use escape::{escape, unescape_attr, unescape_text};
pub use parser::{Event, Limits, StreamParser, parse_element};
pub use stanza::{
    CONTENT_NAMESPACES, NS_STREAMS, NS_XML, Stanza, StanzaKind, StreamHeader, StreamScope,
    TargetStream, XmlDecl,
};

#[cfg(test)]
mod tests;

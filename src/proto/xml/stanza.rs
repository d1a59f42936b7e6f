//! Zero-copy views of what the stream parser yields, and the forwarding writer. A [`Stanza`] is the
//! refcounted bytes that were read plus a small header of offsets found while the parser checked them; it
//! never holds a tree. The writer re-emits those bytes with `from`/`to` stamped and, only where the target
//! stream binds namespaces differently, with the declarations the stanza relied on added to its start tag.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{BufMut, Bytes};

use super::escape::{put_escaped_attr, unescape_attr};

/// The namespace of an XMPP stream header (RFC 6120 §4.8.1).
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// The XML namespace, bound to the prefix `xml` in every document.
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
/// Content namespaces whose stanzas are the same stanzas under another stream type: forwarding between
/// them only changes which of these the stanza is written in.
pub const CONTENT_NAMESPACES: [&str; 4] = [
    "jabber:client",
    "jabber:server",
    "jabber:component:accept",
    "jabber:component:connect",
];

/// A byte range inside a stanza's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// An attribute value inside a stanza: where it is and whether it holds a reference or a literal
/// whitespace character that unescaping must replace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ValueSpan {
    pub span: Span,
    pub escaped: bool,
}

/// Where a stanza's own namespace comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum NsRef {
    /// No namespace is in scope for the element's (empty) prefix.
    #[default]
    None,
    /// Declared on the stanza's own start tag.
    Own(ValueSpan),
    /// Declared on the stream header: an index into [`StreamScope::bindings`].
    Inherited(u8),
}

/// The namespace declarations of a stream header, shared by every stanza of that stream so that a stanza
/// can name what it inherits without copying it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamScope {
    /// `(prefix, uri)` in declaration order; the prefix is empty for the default namespace.
    pub bindings: Vec<(String, String)>,
}

impl StreamScope {
    pub fn default_ns(&self) -> Option<&str> {
        self.lookup("")
    }

    pub fn lookup(&self, prefix: &str) -> Option<&str> {
        self.bindings
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, u)| u.as_str())
    }
}

impl ValueSpan {
    fn rebase(&mut self, base: u32) {
        self.span.start -= base;
    }
}

/// Offsets found in a top-level element's start tag while it was checked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StanzaHead {
    /// The qualified name as written.
    pub name: Span,
    /// Length of the prefix, 0 when the name has none.
    pub prefix_len: u16,
    pub ns: NsRef,
    pub to: Option<ValueSpan>,
    pub from: Option<ValueSpan>,
    pub kind: Option<ValueSpan>,
    pub id: Option<ValueSpan>,
    pub lang: Option<ValueSpan>,
    /// Bit i set: the stanza uses binding i of the stream scope.
    pub inherited: u64,
}

impl StanzaHead {
    /// Makes offsets relative to the element's first byte instead of the parser's buffer.
    pub(crate) fn rebase(&mut self, base: u32) {
        self.name.start -= base;
        if let NsRef::Own(v) = &mut self.ns {
            v.rebase(base);
        }
        for v in [
            &mut self.to,
            &mut self.from,
            &mut self.kind,
            &mut self.id,
            &mut self.lang,
        ]
        .into_iter()
        .flatten()
        {
            v.rebase(base);
        }
    }
}

/// A complete top-level element of a stream (a stanza or a nonza such as `<starttls/>`), checked, as a
/// view over the bytes that were read.
#[derive(Debug, Clone)]
pub struct Stanza {
    pub(crate) bytes: Bytes,
    pub(crate) head: StanzaHead,
    pub(crate) scope: Option<Arc<StreamScope>>,
    /// Set by the server's shell when this stanza is sampled for per-stage latency.
    pub trace: Trace,
}

/// The timestamps of a stanza followed for per-stage latency, in nanoseconds of the server's monotonic
/// clock (`crate::metrics`): when the socket read that completed it returned, and the last stage
/// boundary it passed. The shell stamps them; protocol code only carries them (copies share them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trace {
    /// 0: not sampled.
    pub read: u64,
    pub mark: u64,
}

impl Trace {
    pub fn sampled(&self) -> bool {
        self.read != 0
    }
}

/// The three stanza kinds of RFC 6120 §8, or anything else (a nonza).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
    Other,
}

/// What the stream a stanza is written into already declares, so the writer adds only what is missing.
#[derive(Debug, Clone, Copy)]
pub struct TargetStream<'a> {
    /// The default namespace of the target stream header (`jabber:client`, `jabber:server`, …).
    pub default_ns: &'a str,
    /// Prefixes the target header binds, e.g. `[("stream", NS_STREAMS)]`.
    pub prefixes: &'a [(&'a str, &'a str)],
}

impl TargetStream<'static> {
    /// A client-to-server stream as rjabberd opens it.
    pub const CLIENT: TargetStream<'static> = TargetStream {
        default_ns: "jabber:client",
        prefixes: &[("stream", NS_STREAMS)],
    };
    /// An external component's stream (XEP-0114) as rjabberd answers it.
    pub const COMPONENT: TargetStream<'static> = TargetStream {
        default_ns: "jabber:component:accept",
        prefixes: &[("stream", NS_STREAMS)],
    };
    /// A server-to-server stream as rjabberd opens it.
    pub const SERVER: TargetStream<'static> = TargetStream {
        default_ns: "jabber:server",
        prefixes: &[("stream", NS_STREAMS)],
    };
    /// No stream at all: the written element declares every namespace it uses and parses alone.
    pub const STANDALONE: TargetStream<'static> = TargetStream {
        default_ns: "",
        prefixes: &[],
    };
}

impl Stanza {
    /// The stanza as bytes of its own (a copy: it pins no read buffer), with `from` and `to` set when
    /// given: what the server keeps or re-addresses.
    pub fn rewritten(&self, from: Option<&str>, to: Option<&str>) -> Option<Stanza> {
        let mut out = Vec::with_capacity(self.bytes.len() + 64);
        self.write_to(&mut out, &TargetStream::STANDALONE, from, to);
        super::parse_element(&out, &super::Limits::default()).ok()
    }

    /// The checked bytes of the whole element, exactly as they were read.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The refcounted bytes (cloning them copies nothing).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    fn str_at(&self, span: Span) -> &str {
        let bytes = &self.bytes[span.range()];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: a `Stanza` is made only by the parser (`parser.rs`, `Event::Stanza`), which decoded
        // every byte of the element as UTF-8 XML characters before handing it out, and its bytes are
        // never changed afterwards; every span it records starts and ends at an ASCII delimiter (a
        // quote, `<`, `:`, a space), so the slice is whole characters. Checking again on each attribute
        // read cost about 2.5 % of a forwarded message.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    fn value(&self, v: Option<ValueSpan>) -> Option<Cow<'_, str>> {
        let v = v?;
        let raw = self.str_at(v.span);
        Some(if v.escaped {
            unescape_attr(raw)
        } else {
            Cow::Borrowed(raw)
        })
    }

    /// The element name as written, with its prefix if it has one.
    pub fn name(&self) -> &str {
        self.str_at(self.head.name)
    }

    /// The element name without its prefix.
    pub fn local_name(&self) -> &str {
        let name = self.name();
        match self.head.prefix_len {
            0 => name,
            p => &name[p as usize + 1..],
        }
    }

    /// The prefix of the element name, if any.
    pub fn prefix(&self) -> Option<&str> {
        match self.head.prefix_len {
            0 => None,
            p => Some(&self.name()[..p as usize]),
        }
    }

    /// The namespace of the element, resolved against its own declarations and the stream header's.
    pub fn namespace(&self) -> Option<Cow<'_, str>> {
        match self.head.ns {
            NsRef::None => None,
            NsRef::Own(v) => self.value(Some(v)),
            NsRef::Inherited(i) => {
                let scope = self.scope.as_ref()?;
                Some(Cow::Borrowed(scope.bindings[i as usize].1.as_str()))
            }
        }
    }

    /// Message, presence or IQ when the element is one of them in a content namespace.
    pub fn kind(&self) -> StanzaKind {
        let in_content_ns = self
            .namespace()
            .is_some_and(|ns| CONTENT_NAMESPACES.contains(&&*ns));
        if !in_content_ns {
            return StanzaKind::Other;
        }
        match self.local_name() {
            "message" => StanzaKind::Message,
            "presence" => StanzaKind::Presence,
            "iq" => StanzaKind::Iq,
            _ => StanzaKind::Other,
        }
    }

    pub fn to(&self) -> Option<Cow<'_, str>> {
        self.value(self.head.to)
    }

    pub fn from(&self) -> Option<Cow<'_, str>> {
        self.value(self.head.from)
    }

    /// The `type` attribute.
    pub fn type_(&self) -> Option<Cow<'_, str>> {
        self.value(self.head.kind)
    }

    pub fn id(&self) -> Option<Cow<'_, str>> {
        self.value(self.head.id)
    }

    /// The `xml:lang` attribute of the element itself (not inherited from the stream).
    pub fn lang(&self) -> Option<Cow<'_, str>> {
        self.value(self.head.lang)
    }

    /// The stream-header bindings `(prefix, uri)` this stanza relies on; the prefix is empty for the default
    /// namespace.
    pub fn inherited_bindings(&self) -> impl Iterator<Item = (&str, &str)> {
        let mask = self.head.inherited;
        self.scope.iter().flat_map(move |scope| {
            scope
                .bindings
                .iter()
                .enumerate()
                .filter(move |(i, _)| mask & (1u64 << i) != 0)
                .map(|(_, (p, u))| (p.as_str(), u.as_str()))
        })
    }

    /// An owned tree of this element, with the stream-level declarations it relies on written on its root,
    /// so the tree means the same thing outside the stream.
    pub fn to_element(&self) -> super::Element {
        let inherited: Vec<(&str, &str)> = self.inherited_bindings().collect();
        super::Element::from_checked(self.as_bytes(), &inherited)
    }

    /// Appends the stanza to `out` as it must appear on `target`: the original bytes, with `from` and `to`
    /// set when given (replaced in place or added after the name), a content namespace (`jabber:client`,
    /// `jabber:server`, …) mapped to the target's, and any stream-level declaration it relied on that the
    /// target lacks written on its start tag. Nothing else is re-serialised and nothing is allocated.
    pub fn write_to(
        &self,
        out: &mut impl BufMut,
        target: &TargetStream<'_>,
        from: Option<&str>,
        to: Option<&str>,
    ) {
        let bytes = &self.bytes[..];
        let name_end = self.head.name.range().end;
        // In-place replacements of attribute values, at most three, kept sorted by offset.
        let mut edits: [(Span, &str); 3] = [(Span::default(), ""); 3];
        let mut n_edits = 0;

        let scope = self.scope.as_deref();
        let target_content = CONTENT_NAMESPACES.contains(&target.default_ns);
        let mut remap_own_ns: Option<Span> = None;
        if let NsRef::Own(v) = self.head.ns
            && self.head.prefix_len == 0
            && target_content
        {
            let own = self.value(Some(v)).unwrap_or_default();
            if CONTENT_NAMESPACES.contains(&&*own) && own != target.default_ns {
                remap_own_ns = Some(v.span);
            }
        }

        out.put_slice(&bytes[..name_end]);
        // Declarations the target lacks.
        if let Some(scope) = scope {
            for (i, (prefix, uri)) in scope.bindings.iter().enumerate() {
                if self.head.inherited & (1u64 << i) == 0 {
                    continue;
                }
                let present = if prefix.is_empty() {
                    target.default_ns == uri
                        || (target_content && CONTENT_NAMESPACES.contains(&uri.as_str()))
                } else {
                    target.prefixes.iter().any(|(p, u)| p == prefix && u == uri)
                };
                if present {
                    continue;
                }
                if prefix.is_empty() {
                    out.put_slice(b" xmlns='");
                } else {
                    out.put_slice(b" xmlns:");
                    out.put_slice(prefix.as_bytes());
                    out.put_slice(b"='");
                }
                put_escaped_attr(out, uri);
                out.put_u8(b'\'');
            }
        }
        if let (Some(value), None) = (from, self.head.from) {
            put_attr(out, "from", value);
        }
        if let (Some(value), None) = (to, self.head.to) {
            put_attr(out, "to", value);
        }
        if let (Some(value), Some(v)) = (from, self.head.from) {
            edits[n_edits] = (v.span, value);
            n_edits += 1;
        }
        if let (Some(value), Some(v)) = (to, self.head.to) {
            edits[n_edits] = (v.span, value);
            n_edits += 1;
        }
        if let Some(span) = remap_own_ns {
            edits[n_edits] = (span, target.default_ns);
            n_edits += 1;
        }
        let edits = &mut edits[..n_edits];
        edits.sort_unstable_by_key(|(span, _)| span.start);
        let mut at = name_end;
        for (span, value) in edits.iter() {
            out.put_slice(&bytes[at..span.start as usize]);
            put_escaped_attr(out, value);
            at = span.range().end;
        }
        out.put_slice(&bytes[at..]);
    }
}

fn put_attr(out: &mut impl BufMut, name: &str, value: &str) {
    out.put_u8(b' ');
    out.put_slice(name.as_bytes());
    out.put_slice(b"='");
    put_escaped_attr(out, value);
    out.put_u8(b'\'');
}

/// The XML declaration at the start of a stream, if the peer sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlDecl {
    pub version: String,
    pub encoding: Option<String>,
    pub standalone: Option<bool>,
}

/// The root start tag of a stream (`<stream:stream …>`), copied out: it is read once per stream and kept
/// for the stream's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Qualified name as written.
    pub name: String,
    /// Resolved namespace of the root element.
    pub namespace: Option<String>,
    /// Every attribute other than namespace declarations: `(qualified name, unescaped value)`.
    pub attrs: Vec<(String, String)>,
    /// The namespace declarations, shared with every stanza of the stream.
    pub scope: Arc<StreamScope>,
}

impl StreamHeader {
    /// An attribute by qualified name (`to`, `from`, `version`, `id`, `xml:lang`).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn to(&self) -> Option<&str> {
        self.attr("to")
    }

    pub fn from(&self) -> Option<&str> {
        self.attr("from")
    }

    pub fn version(&self) -> Option<&str> {
        self.attr("version")
    }

    pub fn id(&self) -> Option<&str> {
        self.attr("id")
    }

    pub fn lang(&self) -> Option<&str> {
        self.attr("xml:lang")
    }

    /// The content namespace: the default namespace declared on the header (`jabber:client`, …).
    pub fn default_ns(&self) -> Option<&str> {
        self.scope.default_ns()
    }

    /// Whether the root is `{http://etherx.jabber.org/streams}stream`.
    pub fn is_xmpp_stream(&self) -> bool {
        let local = self.name.rsplit(':').next().unwrap_or_default();
        local == "stream" && self.namespace.as_deref() == Some(NS_STREAMS)
    }
}

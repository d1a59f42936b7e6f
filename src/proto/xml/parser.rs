//! The resumable stream parser: it owns the read buffer of one XML stream, cuts it into top-level elements
//! as bytes arrive, checks each completely (XML 1.0, Namespaces in XML, RFC 6120 §11 restricted XML and the
//! caller's limits) and yields it as a zero-copy [`Stanza`]. The lexer is a byte-level state machine whose
//! state survives between feeds, so an element that arrives one byte at a time is scanned once, as if it had
//! arrived whole; the only bytes ever rescanned are the at most three of a split UTF-8 sequence and the few
//! bytes of a split `<?xml`/`<![CDATA[` opener.

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use super::chars::{
    NAME_CHAR, NAME_START, decode_utf8, is_name_cp, is_name_start_cp, is_space, is_xml_char,
};
use super::error::{BadFormat, LimitKind, Malformed, Restricted, XmlError, XmlErrorKind};
use super::escape::unescape_attr;
use super::stanza::{
    NS_XML, NsRef, Span, Stanza, StanzaHead, StreamHeader, StreamScope, Trace, ValueSpan, XmlDecl,
};

const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";

/// Room the buffer keeps beyond the largest element, so that a partial element at the limit still leaves
/// space for a read: with it, `feed` can always make progress once complete events are drained.
const READ_SLACK: usize = 16 * 1024;
/// The most the read buffer grows by at once (see [`StreamParser::feed`]).
const FEED_CHUNK: usize = 16 * 1024;
/// The first growth of an empty read buffer.
const FIRST_CHUNK: usize = 1024;

/// The declaration is short; a longer one is refused rather than buffered.
const MAX_DECL_BYTES: usize = 512;

/// The stanza header records stream-level bindings in a `u64`.
const MAX_STREAM_BINDINGS: usize = 64;

/// Caller-set bounds on what one peer can make the parser hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest top-level element in bytes, from `<` to `>` (ejabberd's c2s `max_stanza_size`). The stream
    /// header is held to it too.
    pub max_stanza_bytes: usize,
    /// Deepest nesting of elements, counting the stream root.
    pub max_depth: usize,
    /// Most attributes on one element, namespace declarations included.
    pub max_attrs: usize,
    /// Most namespace declarations in scope at once, the stream header's included (at most 64 of those).
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
    /// The XML declaration (`<?xml version='1.0'?>`), when the peer sent one.
    Declaration(XmlDecl),
    /// The stream root's start tag.
    StreamOpen(StreamHeader),
    /// A complete, checked top-level element (or, for a document parser, the root element).
    Stanza(Stanza),
    /// The stream root's end tag.
    StreamClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Root start tag → `StreamOpen`, each child → `Stanza`, root end tag → `StreamClose`.
    Stream,
    /// The root element itself is yielded as one `Stanza`.
    Document,
    /// Only the root's start tag is read ([`parse_trusted`]).
    Head,
}

/// Where in the document the parser is, outside any element it is assembling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Nothing but a byte-order mark seen: the XML declaration may still come.
    Start,
    /// Before the root element.
    Prolog,
    /// Inside the stream root, between stanzas.
    InStream,
    /// After the root element.
    Epilog,
}

/// The lexer state: which production the next byte continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Character data, or white space between top-level constructs.
    Content,
    /// After `<`.
    TagOpen,
    /// After `<?`: deciding between the XML declaration and a (forbidden) processing instruction.
    PiOpen,
    /// Inside the XML declaration, looking for `?>`.
    Decl,
    /// After `<!`.
    Bang,
    /// Matching `<![CDATA[`; the count is how many bytes of it matched.
    CdataOpen(u8),
    /// Inside a CDATA section; the count is how many `]` were just seen (at most 2).
    Cdata(u8),
    StartName,
    /// Inside a start tag after its name or an attribute; `true` when white space was seen since.
    InTag(bool),
    /// After `/` in a start tag.
    EmptyClose,
    AttrName,
    AfterAttrName,
    BeforeValue,
    /// Inside an attribute value delimited by the given quote.
    AttrValue(u8),
    /// Matching an end tag's name against the open element's; the count is how many bytes matched.
    EndName(u32),
    AfterEndName,
    /// Inside a reference (`&…;`); where it returns to is in `Machine::ref_quote`.
    Ref(RefStage),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefStage {
    Start,
    /// A named reference: how many bytes of the name were read.
    Named(u8),
    Hash,
    Dec,
    HexFirst,
    Hex,
}

/// An element of the current top-level element that is still open.
#[derive(Debug, Clone, Copy)]
struct Open {
    name: Span,
    /// Length of `Machine::ns` before this element's declarations were pushed.
    ns_len: u32,
}

/// A namespace declaration inside the current top-level element.
#[derive(Debug, Clone, Copy)]
struct Binding {
    /// Empty span for the default namespace.
    prefix: Span,
    uri: ValueSpan,
}

/// An attribute of the start tag being read.
#[derive(Debug, Clone, Copy)]
struct Attr {
    name: Span,
    /// Offset of the colon in the name, 0 when there is none (a name cannot start with one).
    colon: u32,
    value: ValueSpan,
}

/// What a prefix resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    NoNamespace,
    Local(usize),
    Stream(usize),
    Xml,
}

/// A completed step of the lexer.
enum Step {
    NeedMore,
    // Boxed: they come once per stream, and a small `Step` keeps the per-feed path (mostly `NeedMore`
    // when reads are small) free of large copies.
    Decl(Box<XmlDecl>),
    Root(Box<StreamHeader>),
    Stanza,
    Close,
}

/// Everything the lexer remembers between feeds. Positions are offsets into the parser's buffer; the
/// buffer is only trimmed where no position points into it (between top-level constructs).
struct Machine {
    mode: Mode,
    limits: Limits,
    lex: Lex,
    level: Level,
    pos: usize,
    /// Where the `<` of the tag being read is.
    tag_start: usize,
    /// Inside a top-level element (or the stream header), which starts at `base`.
    in_top: bool,
    base: usize,
    root_open: bool,
    root_name: Vec<u8>,
    scope: Option<Arc<StreamScope>>,
    stack: Vec<Open>,
    ns: Vec<Binding>,
    attrs: Vec<Attr>,
    /// The name being read: its start, the offset of its colon (0 if none) and whether the next character
    /// must be a name-start character.
    name_start: usize,
    name_colon: usize,
    name_first: bool,
    tag_name: Span,
    tag_colon: usize,
    attr_name_end: usize,
    bom_seen: bool,
    value_start: usize,
    value_escaped: bool,
    /// `Some(quote)` when the reference being read is inside an attribute value.
    ref_quote: Option<u8>,
    ref_name: [u8; 4],
    ref_value: u32,
    head: StanzaHead,
}

type Res<T> = Result<T, XmlErrorKind>;

fn malformed(m: Malformed) -> XmlErrorKind {
    XmlErrorKind::NotWellFormed(m)
}

fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        len: (end - start) as u32,
    }
}

impl Machine {
    fn new(mode: Mode, limits: Limits) -> Self {
        Machine {
            mode,
            limits,
            lex: Lex::Content,
            level: Level::Start,
            pos: 0,
            tag_start: 0,
            in_top: false,
            base: 0,
            root_open: false,
            root_name: Vec::new(),
            scope: None,
            stack: Vec::new(),
            ns: Vec::new(),
            attrs: Vec::new(),
            name_start: 0,
            name_colon: 0,
            name_first: true,
            tag_name: Span::default(),
            tag_colon: 0,
            attr_name_end: 0,
            bom_seen: false,
            value_start: 0,
            value_escaped: false,
            ref_quote: None,
            ref_name: [0; 4],
            ref_value: 0,
            head: StanzaHead::default(),
        }
    }

    /// Back to the start of a document, keeping allocations.
    fn restart(&mut self) {
        self.lex = Lex::Content;
        self.level = Level::Start;
        self.bom_seen = false;
        self.in_top = false;
        self.root_open = false;
        self.root_name.clear();
        self.scope = None;
        self.stack.clear();
        self.ns.clear();
        self.attrs.clear();
    }

    /// Runs the lexer over `buf[pos..]` until it completes an event or needs more bytes.
    fn run(&mut self, full: &[u8]) -> Res<Step> {
        let mut pos = self.pos;
        let max = self.limits.max_stanza_bytes;
        let result = loop {
            // Inside an element the lexer never looks past its size limit, so the limit is found at the
            // same byte however the input was cut.
            let end = if self.in_top {
                full.len().min(self.base.saturating_add(max))
            } else {
                full.len()
            };
            let buf = &full[..end];
            if pos >= end {
                break Ok(Step::NeedMore);
            }
            match self.lex {
                Lex::Content => {
                    if self.in_top {
                        pos += skip_text(&buf[pos..]);
                        if pos >= end {
                            continue;
                        }
                        match buf[pos] {
                            b'<' => {
                                self.tag_start = pos;
                                self.lex = Lex::TagOpen;
                                pos += 1;
                            }
                            b'&' => {
                                self.ref_quote = None;
                                self.lex = Lex::Ref(RefStage::Start);
                                pos += 1;
                            }
                            b'>' => {
                                if buf[pos - 1] == b']' && buf[pos - 2] == b']' {
                                    break Err(malformed(Malformed::CdataEndInText));
                                }
                                pos += 1;
                            }
                            b'\t' | b'\n' | b'\r' => pos += 1,
                            b if b < 0x20 => break Err(malformed(Malformed::IllegalChar)),
                            b if b < 0x80 => pos += 1,
                            _ => match text_char(&buf[pos..]) {
                                Ok(Some(len)) => pos += len,
                                Ok(None) => break Ok(Step::NeedMore),
                                Err(e) => break Err(e),
                            },
                        }
                    } else {
                        // Between top-level constructs only white space may appear.
                        let ws_start = pos;
                        while pos < end && is_space(buf[pos]) {
                            pos += 1;
                        }
                        if pos > ws_start && self.level == Level::Start {
                            // The XML declaration must come first.
                            self.level = Level::Prolog;
                        }
                        if pos >= end {
                            continue;
                        }
                        let b = buf[pos];
                        if b == b'<' {
                            self.tag_start = pos;
                            self.lex = Lex::TagOpen;
                            pos += 1;
                        } else if b == 0xEF && self.level == Level::Start && !self.bom_seen {
                            if end < pos + 3 {
                                break Ok(Step::NeedMore);
                            }
                            if buf[pos..pos + 3] != [0xEF, 0xBB, 0xBF] {
                                break Err(malformed(Malformed::UnexpectedByte));
                            }
                            self.bom_seen = true;
                            pos += 3;
                        } else {
                            break Err(match self.level {
                                Level::InStream => {
                                    XmlErrorKind::BadFormat(BadFormat::TextAtStreamLevel)
                                }
                                Level::Epilog => malformed(Malformed::JunkAfterRoot),
                                _ => malformed(Malformed::UnexpectedByte),
                            });
                        }
                    }
                }
                Lex::TagOpen => {
                    let b = buf[pos];
                    match b {
                        b'/' => {
                            if self.stack.is_empty() && (self.in_top || !self.root_open) {
                                break Err(malformed(if self.level == Level::Epilog {
                                    Malformed::JunkAfterRoot
                                } else {
                                    Malformed::UnexpectedByte
                                }));
                            }
                            self.lex = Lex::EndName(0);
                            pos += 1;
                        }
                        b'?' => {
                            self.lex = Lex::PiOpen;
                            pos += 1;
                        }
                        b'!' => {
                            self.lex = Lex::Bang;
                            pos += 1;
                        }
                        _ => {
                            if b < 0x80 && !NAME_START[b as usize] {
                                break Err(malformed(if b == b':' {
                                    Malformed::InvalidName
                                } else {
                                    Malformed::UnexpectedByte
                                }));
                            }
                            if !self.in_top {
                                if self.level == Level::Epilog {
                                    break Err(malformed(Malformed::JunkAfterRoot));
                                }
                                self.in_top = true;
                                self.base = self.tag_start;
                                if self.level == Level::Start {
                                    self.level = Level::Prolog;
                                }
                            }
                            self.begin_name(pos);
                            self.lex = Lex::StartName;
                        }
                    }
                }
                Lex::PiOpen => {
                    // Only `<?xml` followed by white space, first thing in the document, is a
                    // declaration. The target `xml` anywhere else is not well-formed (XML 1.0 §2.6
                    // reserves it); any other target is a processing instruction, which RFC 6120
                    // forbids.
                    let need = self.tag_start + 6;
                    let target = &buf[self.tag_start + 2..end.min(need)];
                    let is_xml_target = |t: &[u8]| {
                        t.len() == 4
                            && t[..3].eq_ignore_ascii_case(b"xml")
                            && (is_space(t[3]) || t[3] == b'?')
                    };
                    if end < need {
                        let seen = target.len().min(3);
                        if target[..seen].eq_ignore_ascii_case(&b"xml"[..seen]) {
                            break Ok(Step::NeedMore);
                        }
                        break Err(XmlErrorKind::RestrictedXml(
                            Restricted::ProcessingInstruction,
                        ));
                    }
                    if self.level == Level::Start && &target[..3] == b"xml" && is_space(target[3]) {
                        self.lex = Lex::Decl;
                        pos = need;
                    } else if is_xml_target(target) {
                        break Err(malformed(Malformed::BadDeclaration));
                    } else {
                        break Err(XmlErrorKind::RestrictedXml(
                            Restricted::ProcessingInstruction,
                        ));
                    }
                }
                Lex::Decl => {
                    // The declaration is searched only within its size cap, so a long one fails at the
                    // same offset however the input was cut.
                    let cap = self.tag_start + MAX_DECL_BYTES;
                    let window_end = end.min(cap);
                    match memchr::memchr(b'>', &buf[pos..window_end]) {
                        Some(i) if buf[pos + i - 1] == b'?' => {
                            let decl = parse_decl(&buf[self.tag_start + 6..pos + i - 1]);
                            pos += i + 1;
                            self.lex = Lex::Content;
                            self.level = Level::Prolog;
                            break decl.map(|d| Step::Decl(Box::new(d)));
                        }
                        Some(i) => {
                            // Report at the `>`, wherever the feeds were cut.
                            pos += i;
                            break Err(malformed(Malformed::BadDeclaration));
                        }
                        None if window_end == cap => {
                            pos = cap;
                            break Err(malformed(Malformed::BadDeclaration));
                        }
                        None => pos = end,
                    }
                }
                Lex::Bang => {
                    match buf[pos] {
                        b'[' if !self.stack.is_empty() => {
                            self.lex = Lex::CdataOpen(3);
                        }
                        b'[' if self.level == Level::InStream => {
                            break Err(XmlErrorKind::BadFormat(BadFormat::TextAtStreamLevel));
                        }
                        b'[' => break Err(malformed(Malformed::MisplacedCdata)),
                        b'-' => break Err(XmlErrorKind::RestrictedXml(Restricted::Comment)),
                        b'D' => break Err(XmlErrorKind::RestrictedXml(Restricted::Doctype)),
                        _ => break Err(malformed(Malformed::UnexpectedByte)),
                    }
                    pos += 1;
                }
                Lex::CdataOpen(n) => {
                    const OPENER: &[u8] = b"<![CDATA[";
                    if buf[pos] != OPENER[n as usize] {
                        break Err(malformed(Malformed::UnexpectedByte));
                    }
                    pos += 1;
                    self.lex = if n as usize + 1 == OPENER.len() {
                        Lex::Cdata(0)
                    } else {
                        Lex::CdataOpen(n + 1)
                    };
                }
                Lex::Cdata(brackets) => {
                    let skipped = skip_cdata(&buf[pos..]);
                    let brackets = if skipped > 0 { 0 } else { brackets };
                    pos += skipped;
                    if pos >= end {
                        self.lex = Lex::Cdata(brackets);
                        continue;
                    }
                    match buf[pos] {
                        b']' => {
                            self.lex = Lex::Cdata((brackets + 1).min(2));
                            pos += 1;
                        }
                        b'>' if brackets == 2 => {
                            self.lex = Lex::Content;
                            pos += 1;
                        }
                        b'>' | b'\t' | b'\n' | b'\r' => {
                            self.lex = Lex::Cdata(0);
                            pos += 1;
                        }
                        b if b < 0x20 => break Err(malformed(Malformed::IllegalChar)),
                        b if b < 0x80 => {
                            self.lex = Lex::Cdata(0);
                            pos += 1;
                        }
                        _ => match text_char(&buf[pos..]) {
                            Ok(Some(len)) => {
                                self.lex = Lex::Cdata(0);
                                pos += len;
                            }
                            Ok(None) => break Ok(Step::NeedMore),
                            Err(e) => break Err(e),
                        },
                    }
                }
                Lex::StartName => match self.scan_name(buf, &mut pos) {
                    Ok(true) => {
                        self.tag_name = span(self.name_start, pos);
                        self.tag_colon = self.name_colon;
                        self.attrs.clear();
                        self.lex = Lex::InTag(false);
                    }
                    Ok(false) => break Ok(Step::NeedMore),
                    Err(e) => break Err(e),
                },
                Lex::InTag(had_space) => {
                    let b = buf[pos];
                    if is_space(b) {
                        pos += 1;
                        while pos < end && is_space(buf[pos]) {
                            pos += 1;
                        }
                        self.lex = Lex::InTag(true);
                    } else if b == b'>' {
                        pos += 1;
                        match self.finish_start_tag(buf, false) {
                            Ok(Step::NeedMore) => {}
                            other => break other,
                        }
                    } else if b == b'/' {
                        pos += 1;
                        self.lex = Lex::EmptyClose;
                    } else if had_space && (b >= 0x80 || NAME_START[b as usize]) {
                        self.begin_name(pos);
                        self.lex = Lex::AttrName;
                    } else {
                        break Err(malformed(if b == b':' {
                            Malformed::InvalidName
                        } else {
                            Malformed::UnexpectedByte
                        }));
                    }
                }
                Lex::EmptyClose => {
                    if buf[pos] != b'>' {
                        break Err(malformed(Malformed::UnexpectedByte));
                    }
                    pos += 1;
                    match self.finish_start_tag(buf, true) {
                        Ok(Step::NeedMore) => {}
                        other => break other,
                    }
                }
                Lex::AttrName => match self.scan_name(buf, &mut pos) {
                    Ok(true) => {
                        self.attr_name_end = pos;
                        self.lex = Lex::AfterAttrName;
                    }
                    Ok(false) => break Ok(Step::NeedMore),
                    Err(e) => break Err(e),
                },
                Lex::AfterAttrName => {
                    let b = buf[pos];
                    if is_space(b) {
                        pos += 1;
                    } else if b == b'=' {
                        pos += 1;
                        self.lex = Lex::BeforeValue;
                    } else {
                        break Err(malformed(Malformed::UnexpectedByte));
                    }
                }
                Lex::BeforeValue => {
                    let b = buf[pos];
                    pos += 1;
                    if b == b'"' || b == b'\'' {
                        self.value_start = pos;
                        self.value_escaped = false;
                        self.lex = Lex::AttrValue(b);
                    } else if !is_space(b) {
                        break Err(malformed(Malformed::UnexpectedByte));
                    }
                }
                Lex::AttrValue(quote) => {
                    pos += skip_attr_value(&buf[pos..]);
                    if pos >= end {
                        continue;
                    }
                    match buf[pos] {
                        b if b == quote => {
                            if self.attrs.len() >= self.limits.max_attrs {
                                break Err(XmlErrorKind::LimitExceeded(LimitKind::Attributes));
                            }
                            let colon = self.name_colon;
                            self.attrs.push(Attr {
                                name: span(self.name_start, self.attr_name_end),
                                colon: colon as u32,
                                value: ValueSpan {
                                    span: span(self.value_start, pos),
                                    escaped: self.value_escaped,
                                },
                            });
                            pos += 1;
                            self.lex = Lex::InTag(false);
                        }
                        b'"' | b'\'' => pos += 1,
                        b'<' => break Err(malformed(Malformed::UnexpectedByte)),
                        b'&' => {
                            self.value_escaped = true;
                            self.ref_quote = Some(quote);
                            self.lex = Lex::Ref(RefStage::Start);
                            pos += 1;
                        }
                        b'\t' | b'\n' | b'\r' => {
                            self.value_escaped = true;
                            pos += 1;
                        }
                        b if b < 0x20 => break Err(malformed(Malformed::IllegalChar)),
                        _ => match text_char(&buf[pos..]) {
                            Ok(Some(len)) => pos += len,
                            Ok(None) => break Ok(Step::NeedMore),
                            Err(e) => break Err(e),
                        },
                    }
                }
                Lex::EndName(matched) => {
                    let expected: &[u8] = match self.stack.last() {
                        Some(open) => &buf[open.name.range()],
                        None => &self.root_name,
                    };
                    let mut matched = matched as usize;
                    while pos < end {
                        let b = buf[pos];
                        if matched < expected.len() && expected[matched] == b {
                            matched += 1;
                            pos += 1;
                        } else {
                            break;
                        }
                    }
                    if pos >= end {
                        self.lex = Lex::EndName(matched as u32);
                        continue;
                    }
                    let b = buf[pos];
                    if matched != expected.len() || !(is_space(b) || b == b'>') {
                        break Err(malformed(Malformed::MismatchedEndTag));
                    }
                    self.lex = Lex::AfterEndName;
                }
                Lex::AfterEndName => {
                    let b = buf[pos];
                    pos += 1;
                    if b == b'>' {
                        match self.finish_end_tag() {
                            Ok(Step::NeedMore) => {}
                            other => break other,
                        }
                    } else if !is_space(b) {
                        break Err(malformed(Malformed::UnexpectedByte));
                    }
                }
                Lex::Ref(stage) => match self.scan_ref(stage, buf[pos]) {
                    Ok(()) => pos += 1,
                    Err(e) => break Err(e),
                },
            }
        };
        self.pos = pos;
        match result {
            Ok(Step::NeedMore) if self.in_top && full.len() - self.base > max => {
                Err(XmlErrorKind::LimitExceeded(LimitKind::StanzaSize))
            }
            other => other,
        }
    }

    fn begin_name(&mut self, pos: usize) {
        self.name_start = pos;
        self.name_colon = 0;
        self.name_first = true;
    }

    /// Advances over name characters. `Ok(true)` when a byte that ends the name is reached, `Ok(false)` when
    /// the buffer ends first (state kept), an error when the name is not a QName.
    fn scan_name(&mut self, buf: &[u8], pos: &mut usize) -> Res<bool> {
        let mut p = *pos;
        let end = buf.len();
        let r = loop {
            if p >= end {
                break Ok(false);
            }
            let b = buf[p];
            if b < 0x80 {
                let ok = if self.name_first {
                    NAME_START[b as usize]
                } else {
                    NAME_CHAR[b as usize]
                };
                if ok {
                    self.name_first = false;
                    p += 1;
                    // The common case: a run of ASCII name characters.
                    while p < end && buf[p] < 0x80 && NAME_CHAR[buf[p] as usize] {
                        p += 1;
                    }
                } else if b == b':' {
                    if self.name_colon != 0 || self.name_first {
                        break Err(malformed(Malformed::InvalidName));
                    }
                    self.name_colon = p;
                    self.name_first = true;
                    p += 1;
                } else if self.name_first {
                    break Err(malformed(if p == self.name_start {
                        Malformed::UnexpectedByte
                    } else {
                        Malformed::InvalidName
                    }));
                } else {
                    break Ok(true);
                }
            } else {
                match decode_utf8(&buf[p..]) {
                    Ok(Some((cp, len))) => {
                        let ok = if self.name_first {
                            is_name_start_cp(cp)
                        } else {
                            is_name_cp(cp)
                        };
                        if !ok {
                            break Err(malformed(Malformed::InvalidName));
                        }
                        self.name_first = false;
                        p += len;
                    }
                    Ok(None) => break Ok(false),
                    Err(m) => break Err(malformed(m)),
                }
            }
        };
        *pos = p;
        r
    }

    fn scan_ref(&mut self, stage: RefStage, b: u8) -> Res<()> {
        let bad = || malformed(Malformed::BadReference);
        let next = match stage {
            RefStage::Start => {
                if b == b'#' {
                    RefStage::Hash
                } else if b < 0x80 && NAME_START[b as usize] {
                    self.ref_name[0] = b;
                    RefStage::Named(1)
                } else if b >= 0x80 {
                    // A non-ASCII name can only be an undeclared entity.
                    RefStage::Named(u8::MAX)
                } else {
                    return Err(bad());
                }
            }
            RefStage::Named(n) => {
                if b == b';' {
                    let name = &self.ref_name[..(n as usize).min(4)];
                    let known = n as usize <= 4
                        && matches!(name, b"lt" | b"gt" | b"amp" | b"apos" | b"quot");
                    if !known {
                        return Err(XmlErrorKind::RestrictedXml(Restricted::EntityReference));
                    }
                    return self.end_ref();
                } else if b >= 0x80 || NAME_CHAR[b as usize] || b == b':' {
                    if (n as usize) < 4 {
                        self.ref_name[n as usize] = b;
                    }
                    RefStage::Named(n.saturating_add(1))
                } else {
                    return Err(bad());
                }
            }
            RefStage::Hash => {
                if b == b'x' {
                    self.ref_value = 0;
                    RefStage::HexFirst
                } else if b.is_ascii_digit() {
                    self.ref_value = (b - b'0') as u32;
                    RefStage::Dec
                } else {
                    return Err(bad());
                }
            }
            RefStage::Dec => {
                if b.is_ascii_digit() {
                    self.ref_value = (self.ref_value * 10 + (b - b'0') as u32).min(0x11_0000);
                    RefStage::Dec
                } else if b == b';' {
                    return self.end_char_ref();
                } else {
                    return Err(bad());
                }
            }
            RefStage::HexFirst | RefStage::Hex => {
                if let Some(d) = (b as char).to_digit(16) {
                    self.ref_value = (self.ref_value * 16 + d).min(0x11_0000);
                    RefStage::Hex
                } else if b == b';' && stage == RefStage::Hex {
                    return self.end_char_ref();
                } else {
                    return Err(bad());
                }
            }
        };
        self.lex = Lex::Ref(next);
        Ok(())
    }

    fn end_char_ref(&mut self) -> Res<()> {
        if !is_xml_char(self.ref_value) {
            return Err(malformed(Malformed::BadReference));
        }
        self.end_ref()
    }

    fn end_ref(&mut self) -> Res<()> {
        self.lex = match self.ref_quote {
            Some(q) => Lex::AttrValue(q),
            None => Lex::Content,
        };
        Ok(())
    }

    /// The value of a checked attribute, unescaped when it needs to be.
    fn value<'b>(buf: &'b [u8], v: ValueSpan) -> std::borrow::Cow<'b, str> {
        let raw = std::str::from_utf8(&buf[v.span.range()]).expect("checked UTF-8");
        if v.escaped {
            unescape_attr(raw)
        } else {
            std::borrow::Cow::Borrowed(raw)
        }
    }

    /// Looks a prefix up in the declarations in scope: the current element's and its ancestors' first,
    /// then the stream header's.
    fn resolve(&self, buf: &[u8], prefix: &[u8]) -> Option<Resolved> {
        for (i, b) in self.ns.iter().enumerate().rev() {
            if same(&buf[b.prefix.range()], prefix) {
                return Some(if b.uri.span.len == 0 {
                    Resolved::NoNamespace
                } else {
                    Resolved::Local(i)
                });
            }
        }
        if prefix == b"xml" {
            return Some(Resolved::Xml);
        }
        if let Some(scope) = &self.scope
            && let Some(i) = scope
                .bindings
                .iter()
                .rposition(|(p, _)| same(p.as_bytes(), prefix))
        {
            return Some(if scope.bindings[i].1.is_empty() {
                Resolved::NoNamespace
            } else {
                Resolved::Stream(i)
            });
        }
        prefix.is_empty().then_some(Resolved::NoNamespace)
    }

    fn uri<'b>(&'b self, buf: &'b [u8], r: Resolved) -> std::borrow::Cow<'b, str> {
        match r {
            Resolved::NoNamespace => "".into(),
            Resolved::Local(i) => Self::value(buf, self.ns[i].uri),
            Resolved::Stream(i) => {
                let scope = self.scope.as_ref().expect("resolved against the scope");
                scope.bindings[i].1.as_str().into()
            }
            Resolved::Xml => NS_XML.into(),
        }
    }

    /// Checks a complete start tag: namespace declarations, prefixes, attribute uniqueness and depth; records
    /// a stanza's header; and says whether an event is complete.
    fn finish_start_tag(&mut self, buf: &[u8], empty: bool) -> Res<Step> {
        let ns_before = self.ns.len();
        let is_root = self.mode == Mode::Stream && !self.root_open;
        let is_top = self.stack.is_empty();
        let depth = self.stack.len() + 1 + self.root_open as usize;
        if depth > self.limits.max_depth {
            return Err(XmlErrorKind::LimitExceeded(LimitKind::Depth));
        }

        // Namespace declarations first: they are in scope for the element's own name and attributes.
        for a in &self.attrs {
            let name = &buf[a.name.range()];
            let prefix = if name == b"xmlns" {
                span(a.name.start as usize, a.name.start as usize)
            } else if a.colon != 0 && &buf[a.name.start as usize..a.colon as usize] == b"xmlns" {
                span(a.colon as usize + 1, a.name.range().end)
            } else {
                continue;
            };
            let uri = Self::value(buf, a.value);
            let prefix_bytes = &buf[prefix.range()];
            let reserved = match prefix_bytes {
                b"" => uri == NS_XML || uri == NS_XMLNS,
                b"xml" => uri != NS_XML,
                b"xmlns" => true,
                _ => uri.is_empty() || uri == NS_XML || uri == NS_XMLNS,
            };
            if reserved {
                return Err(malformed(Malformed::ReservedNamespace));
            }
            let scope_len = self.scope.as_ref().map_or(0, |s| s.bindings.len());
            if self.ns.len() + scope_len >= self.limits.max_ns_decls
                || (is_root && self.ns.len() >= MAX_STREAM_BINDINGS)
            {
                return Err(XmlErrorKind::LimitExceeded(
                    LimitKind::NamespaceDeclarations,
                ));
            }
            self.ns.push(Binding {
                prefix,
                uri: a.value,
            });
        }

        let mut inherited = 0u64;
        let mut note = |r: Resolved| {
            if let Resolved::Stream(i) = r {
                inherited |= 1u64 << i;
            }
        };

        // The element's name.
        let name = &buf[self.tag_name.range()];
        let prefix: &[u8] = if self.tag_colon != 0 {
            &buf[self.tag_name.start as usize..self.tag_colon]
        } else {
            b""
        };
        if prefix == b"xmlns" {
            return Err(malformed(Malformed::ReservedNamespace));
        }
        let element_ns = self
            .resolve(buf, prefix)
            .ok_or(malformed(Malformed::UnboundPrefix))?;
        note(element_ns);

        // Attributes: prefixes bound, names unique as written and after expansion.
        let attrs = &self.attrs;
        for (i, a) in attrs.iter().enumerate() {
            let a_name = &buf[a.name.range()];
            let is_decl = a_name == b"xmlns" || a_name.starts_with(b"xmlns:");
            let a_ns = if a.colon != 0 && !is_decl {
                let r = self
                    .resolve(buf, &buf[a.name.start as usize..a.colon as usize])
                    .ok_or(malformed(Malformed::UnboundPrefix))?;
                note(r);
                Some(r)
            } else {
                None
            };
            for b in &attrs[..i] {
                let b_name = &buf[b.name.range()];
                if same(a_name, b_name) {
                    return Err(malformed(Malformed::DuplicateAttribute));
                }
                if let Some(a_ns) = a_ns
                    && b.colon != 0
                    && !b_name.starts_with(b"xmlns:")
                    && same(
                        &buf[a.colon as usize + 1..a.name.range().end],
                        &buf[b.colon as usize + 1..b.name.range().end],
                    )
                {
                    let b_ns = self
                        .resolve(buf, &buf[b.name.start as usize..b.colon as usize])
                        .ok_or(malformed(Malformed::UnboundPrefix))?;
                    if self.uri(buf, a_ns) == self.uri(buf, b_ns) {
                        return Err(malformed(Malformed::DuplicateAttribute));
                    }
                }
            }
        }

        if is_root {
            let header = self.stream_header(buf, element_ns);
            if !header.is_xmpp_stream() {
                return Err(XmlErrorKind::InvalidNamespace);
            }
            if empty {
                // `<stream:stream/>` opens and closes the stream at once.
                self.level = Level::Epilog;
            } else {
                self.root_open = true;
                self.level = Level::InStream;
                self.root_name.clear();
                self.root_name.extend_from_slice(name);
            }
            self.scope = Some(header.scope.clone());
            self.ns.clear();
            self.in_top = false;
            self.lex = Lex::Content;
            return Ok(Step::Root(Box::new(header)));
        }

        if is_top {
            self.record_head(buf, element_ns, inherited);
            if self.mode == Mode::Head {
                return Ok(self.top_done());
            }
        } else {
            self.head.inherited |= inherited;
        }
        self.lex = Lex::Content;
        if !empty {
            self.stack.push(Open {
                name: self.tag_name,
                ns_len: ns_before as u32,
            });
            return Ok(Step::NeedMore);
        }
        self.ns.truncate(ns_before);
        if is_top {
            return Ok(self.top_done());
        }
        Ok(Step::NeedMore)
    }

    fn record_head(&mut self, buf: &[u8], element_ns: Resolved, inherited: u64) {
        let mut head = StanzaHead {
            name: self.tag_name,
            prefix_len: if self.tag_colon != 0 {
                (self.tag_colon - self.tag_name.start as usize) as u16
            } else {
                0
            },
            ns: match element_ns {
                Resolved::NoNamespace => NsRef::None,
                Resolved::Local(i) => NsRef::Own(self.ns[i].uri),
                Resolved::Stream(i) => NsRef::Inherited(i as u8),
                Resolved::Xml => NsRef::None,
            },
            inherited,
            ..StanzaHead::default()
        };
        for a in &self.attrs {
            let slot = match &buf[a.name.range()] {
                b"to" => &mut head.to,
                b"from" => &mut head.from,
                b"type" => &mut head.kind,
                b"id" => &mut head.id,
                b"xml:lang" => &mut head.lang,
                _ => continue,
            };
            *slot = Some(a.value);
        }
        self.head = head;
    }

    fn stream_header(&self, buf: &[u8], element_ns: Resolved) -> StreamHeader {
        let bindings = self
            .ns
            .iter()
            .map(|b| {
                let prefix = String::from_utf8_lossy(&buf[b.prefix.range()]).into_owned();
                (prefix, Self::value(buf, b.uri).into_owned())
            })
            .collect();
        let attrs = self
            .attrs
            .iter()
            .filter(|a| {
                let n = &buf[a.name.range()];
                n != b"xmlns" && !n.starts_with(b"xmlns:")
            })
            .map(|a| {
                let name = String::from_utf8_lossy(&buf[a.name.range()]).into_owned();
                (name, Self::value(buf, a.value).into_owned())
            })
            .collect();
        let namespace = match element_ns {
            Resolved::NoNamespace => None,
            r => Some(self.uri(buf, r).into_owned()),
        };
        StreamHeader {
            name: String::from_utf8_lossy(&buf[self.tag_name.range()]).into_owned(),
            namespace,
            attrs,
            scope: Arc::new(StreamScope { bindings }),
        }
    }

    fn finish_end_tag(&mut self) -> Res<Step> {
        self.lex = Lex::Content;
        match self.stack.pop() {
            Some(open) => {
                self.ns.truncate(open.ns_len as usize);
                if self.stack.is_empty() {
                    return Ok(self.top_done());
                }
                Ok(Step::NeedMore)
            }
            None => {
                self.root_open = false;
                self.level = Level::Epilog;
                Ok(Step::Close)
            }
        }
    }

    fn top_done(&mut self) -> Step {
        self.in_top = false;
        if self.mode != Mode::Stream {
            self.level = Level::Epilog;
        }
        Step::Stanza
    }
}

/// Length of the run of text bytes that need no attention: anything but `<`, `&`, `>`, control characters
/// other than tab, line feed and carriage return, and non-ASCII bytes.
fn skip_text(s: &[u8]) -> usize {
    skip_plain(
        s,
        |b| {
            (0x20..0x80).contains(&b) && b != b'<' && b != b'&' && b != b'>'
                || matches!(b, b'\t' | b'\n' | b'\r')
        },
        simd::TEXT,
    )
}

/// Length of the run of attribute-value bytes that need no attention: anything but quotes, `<`, `&`,
/// control characters (tab, line feed and carriage return mark the value for normalisation) and non-ASCII.
fn skip_attr_value(s: &[u8]) -> usize {
    skip_plain(
        s,
        |b| (0x20..0x80).contains(&b) && !matches!(b, b'<' | b'&' | b'"' | b'\''),
        simd::ATTR,
    )
}

/// Length of the run of CDATA bytes that need no attention: anything but `]`, `>`, control characters and
/// non-ASCII.
fn skip_cdata(s: &[u8]) -> usize {
    skip_plain(
        s,
        |b| (0x20..0x80).contains(&b) && b != b']' && b != b'>',
        simd::CDATA,
    )
}

#[inline(always)]
fn skip_plain(s: &[u8], plain: impl Fn(u8) -> bool, class: simd::Class) -> usize {
    let mut i = simd::skip(s, class);
    while i < s.len() && plain(s[i]) {
        i += 1;
    }
    i
}

/// One non-ASCII character of text or of an attribute value: its length, `None` if it is cut off.
fn text_char(s: &[u8]) -> Res<Option<usize>> {
    match decode_utf8(s) {
        Ok(Some((cp, len))) => {
            if is_xml_char(cp) {
                Ok(Some(len))
            } else {
                Err(malformed(Malformed::IllegalChar))
            }
        }
        Ok(None) => Ok(None),
        Err(m) => Err(malformed(m)),
    }
}

/// Parses the inside of `<?xml … ?>` after `<?xml` and one space.
/// Equality for the short names and prefixes the tag checks compare many times per element: an inline
/// byte loop, because the library `memcmp` call costs more than the comparison for a handful of bytes
/// (it was a quarter of the parse time on the mixed corpus).
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

fn parse_decl(s: &[u8]) -> Res<XmlDecl> {
    let bad = || malformed(Malformed::BadDeclaration);
    let text = std::str::from_utf8(s).map_err(|_| bad())?;
    let mut rest = text;
    let mut fields: Vec<(&str, &str)> = Vec::with_capacity(3);
    loop {
        let trimmed = rest.trim_start_matches([' ', '\t', '\n', '\r']);
        if trimmed.is_empty() {
            break;
        }
        if trimmed.len() == rest.len() && !fields.is_empty() {
            return Err(bad()); // pseudo-attributes must be separated by white space
        }
        let eq = trimmed.find('=').ok_or_else(bad)?;
        let key = trimmed[..eq].trim_end_matches([' ', '\t', '\n', '\r']);
        let after = trimmed[eq + 1..].trim_start_matches([' ', '\t', '\n', '\r']);
        let quote = after
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .ok_or_else(bad)?;
        let close = after[1..].find(quote).ok_or_else(bad)?;
        fields.push((key, &after[1..1 + close]));
        rest = &after[close + 2..];
    }
    let mut fields = fields.into_iter().peekable();
    let version = match fields.next() {
        Some(("version", v))
            if v.starts_with("1.") && v.len() > 2 && v[2..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            v.to_string()
        }
        _ => return Err(bad()),
    };
    let mut encoding = None;
    if let Some(("encoding", e)) = fields.peek().copied() {
        fields.next();
        let valid = e.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && e.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(bad());
        }
        if !e.eq_ignore_ascii_case("utf-8") {
            return Err(XmlErrorKind::UnsupportedEncoding);
        }
        encoding = Some(e.to_string());
    }
    let mut standalone = None;
    if let Some(("standalone", s)) = fields.peek().copied() {
        fields.next();
        standalone = Some(match s {
            "yes" => true,
            "no" => false,
            _ => return Err(bad()),
        });
    }
    if fields.next().is_some() {
        return Err(bad());
    }
    Ok(XmlDecl {
        version,
        encoding,
        standalone,
    })
}

/// Skipping runs of uninteresting bytes 16 at a time. SSE2 is part of the x86-64 baseline, so no runtime
/// detection is needed; other targets use the scalar loop in `skip_plain` alone.
mod simd {
    #[derive(Clone, Copy)]
    pub(super) struct Class {
        /// Bytes that stop the skip besides controls and non-ASCII.
        stops: [u8; 3],
        /// Whether tab, line feed and carriage return are plain in this context.
        space_ok: bool,
    }

    pub(super) const TEXT: Class = Class {
        stops: [b'<', b'&', b'>'],
        space_ok: true,
    };
    pub(super) const ATTR: Class = Class {
        stops: [b'<', b'&', b'"'],
        space_ok: false,
    };
    pub(super) const CDATA: Class = Class {
        stops: [b']', b'>', b']'],
        space_ok: true,
    };

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) fn skip(s: &[u8], class: Class) -> usize {
        use std::arch::x86_64::*;
        let mut i = 0;
        // SAFETY: SSE2 is always present on x86_64, and every load reads 16 bytes inside `s`
        // (`i + 16 <= s.len()`), unaligned loads being allowed by `_mm_loadu_si128`.
        unsafe {
            let space = _mm_set1_epi8(0x20);
            let s0 = _mm_set1_epi8(class.stops[0] as i8);
            let s1 = _mm_set1_epi8(class.stops[1] as i8);
            let s2 = _mm_set1_epi8(class.stops[2] as i8);
            let apos = _mm_set1_epi8(b'\'' as i8);
            let tab = _mm_set1_epi8(b'\t' as i8);
            let lf = _mm_set1_epi8(b'\n' as i8);
            let cr = _mm_set1_epi8(b'\r' as i8);
            while i + 16 <= s.len() {
                let v = _mm_loadu_si128(s.as_ptr().add(i) as *const __m128i);
                // Signed compare: below 0x20, or 0x80 and above (negative as i8).
                let mut stop = _mm_cmplt_epi8(v, space);
                if class.space_ok {
                    let ws = _mm_or_si128(
                        _mm_or_si128(_mm_cmpeq_epi8(v, tab), _mm_cmpeq_epi8(v, lf)),
                        _mm_cmpeq_epi8(v, cr),
                    );
                    stop = _mm_andnot_si128(ws, stop);
                } else {
                    stop = _mm_or_si128(stop, _mm_cmpeq_epi8(v, apos));
                }
                stop = _mm_or_si128(stop, _mm_cmpeq_epi8(v, s0));
                stop = _mm_or_si128(stop, _mm_cmpeq_epi8(v, s1));
                stop = _mm_or_si128(stop, _mm_cmpeq_epi8(v, s2));
                let mask = _mm_movemask_epi8(stop);
                if mask != 0 {
                    return i + mask.trailing_zeros() as usize;
                }
                i += 16;
            }
        }
        i
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    pub(super) fn skip(_s: &[u8], _class: Class) -> usize {
        0
    }
}

/// The stanza engine's entry point for one stream: feed it bytes, take events out.
///
/// ```
/// use rjabberd::proto::xml::{Event, Limits, StreamParser};
/// let mut p = StreamParser::new(Limits::default());
/// p.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org'>");
/// p.feed(b"<message to='juliet@example.org'><body>hi</body></message>");
/// assert!(matches!(p.next_event(), Ok(Some(Event::StreamOpen(_)))));
/// let Ok(Some(Event::Stanza(s))) = p.next_event() else { panic!() };
/// assert_eq!(s.to().as_deref(), Some("juliet@example.org"));
/// assert_eq!(s.namespace().as_deref(), Some("jabber:client"));
/// assert!(matches!(p.next_event(), Ok(None)));
/// ```
pub struct StreamParser {
    buf: BytesMut,
    m: Machine,
    /// Bytes removed from the front of `buf` since the stream began, for error offsets.
    consumed: u64,
    error: Option<XmlError>,
    /// A self-closed stream root (`<stream:stream/>`) still owes its `StreamClose`.
    close_pending: bool,
    /// How much the read buffer grows by next (see [`StreamParser::feed`]).
    chunk: usize,
}

impl StreamParser {
    /// A parser for an XMPP stream: root start tag → `StreamOpen`, each child → `Stanza`, root end tag →
    /// `StreamClose`. A root other than `{http://etherx.jabber.org/streams}stream` is `invalid-namespace`.
    pub fn new(limits: Limits) -> Self {
        Self::with_mode(Mode::Stream, limits)
    }

    /// A parser for one standalone document: its root element is yielded whole as one `Stanza`.
    pub fn document(limits: Limits) -> Self {
        Self::with_mode(Mode::Document, limits)
    }

    fn with_mode(mode: Mode, limits: Limits) -> Self {
        StreamParser {
            buf: BytesMut::new(),
            m: Machine::new(mode, limits),
            consumed: 0,
            error: None,
            close_pending: false,
            chunk: FIRST_CHUNK,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.m.limits
    }

    fn capacity(&self) -> usize {
        self.m.limits.max_stanza_bytes.saturating_add(READ_SLACK)
    }

    /// How many more bytes `feed` accepts now; drain events to make room.
    pub fn room(&self) -> usize {
        self.capacity().saturating_sub(self.buf.len())
    }

    /// How many bytes the parser holds (unparsed, or part of an element not yet complete).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends up to `room()` bytes; returns how many were taken.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        if self.buf.capacity() - self.buf.len() < n {
            // Grow by at least a chunk: yielded stanzas share the buffer's allocation, so while any is
            // alive a refill cannot reuse it in place; a chunk holds many small stanzas, making the
            // refill (and its allocation) per chunk of input rather than per read or per stanza. The
            // chunk starts small and doubles up to FEED_CHUNK, so a stream that only negotiates (a
            // login, an idle session) never holds 16 KiB.
            self.buf.reserve(n.max(self.chunk).min(self.room()));
            self.chunk = (2 * self.chunk).min(FEED_CHUNK);
        }
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    /// Frees the read buffer when nothing is buffered, so that an idle connection holds no parser memory;
    /// the next `feed` allocates again. Returns whether memory was released.
    pub fn release_idle_buffer(&mut self) -> bool {
        if self.buf.is_empty() && self.m.pos == 0 && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
            self.chunk = FIRST_CHUNK;
            true
        } else {
            false
        }
    }

    /// The next complete event, `Ok(None)` when more bytes are needed. After an error, every call returns it.
    pub fn next_event(&mut self) -> Result<Option<Event>, XmlError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if std::mem::take(&mut self.close_pending) {
            return Ok(Some(Event::StreamClose));
        }
        match self.step() {
            Ok(ev) => Ok(ev),
            Err(kind) => {
                let e = XmlError::new(kind, self.consumed + self.m.pos as u64);
                self.error = Some(e);
                Err(e)
            }
        }
    }

    fn step(&mut self) -> Result<Option<Event>, XmlErrorKind> {
        match self.m.run(&self.buf)? {
            Step::NeedMore => {
                if !self.m.in_top && self.m.lex == Lex::Content {
                    self.trim(self.m.pos);
                }
                Ok(None)
            }
            Step::Decl(decl) => {
                self.trim(self.m.pos);
                Ok(Some(Event::Declaration(*decl)))
            }
            Step::Root(header) => {
                self.trim(self.m.pos);
                self.close_pending = self.m.level == Level::Epilog;
                Ok(Some(Event::StreamOpen(*header)))
            }
            Step::Close => {
                self.trim(self.m.pos);
                Ok(Some(Event::StreamClose))
            }
            Step::Stanza => {
                let (base, end) = (self.m.base, self.m.pos);
                self.buf.advance(base);
                let bytes = self.buf.split_to(end - base).freeze();
                self.consumed += end as u64;
                self.m.pos = 0;
                let mut head = self.m.head;
                head.rebase(base as u32);
                Ok(Some(Event::Stanza(Stanza {
                    bytes,
                    head,
                    scope: self.m.scope.clone(),
                    trace: Trace::default(),
                })))
            }
        }
    }

    fn trim(&mut self, n: usize) {
        self.buf.advance(n);
        self.consumed += n as u64;
        self.m.pos -= n;
    }

    /// Signals end of input: an error unless the document is complete (its root element closed).
    pub fn finish(&mut self) -> Result<(), XmlError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.m.level == Level::Epilog
            && self.m.lex == Lex::Content
            && self.m.pos == self.buf.len()
        {
            return Ok(());
        }
        let e = XmlError::new(
            XmlErrorKind::NotWellFormed(Malformed::UnexpectedEof),
            self.consumed + self.buf.len() as u64,
        );
        self.error = Some(e);
        Err(e)
    }

    /// Stream restart (after STARTTLS or SASL): forgets the header and all state, keeps unparsed bytes.
    pub fn reset(&mut self) {
        let pos = self.m.pos;
        self.trim(pos);
        self.consumed = 0;
        self.error = None;
        self.close_pending = false;
        self.m.restart();
    }

    /// Removes and returns the bytes not yet parsed.
    pub fn take_unparsed(&mut self) -> BytesMut {
        let pos = self.m.pos;
        let rest = self.buf.split_off(pos);
        self.m.pos = pos;
        rest
    }
}

/// Parses and checks one complete document holding a single element (the seed's
/// `xml_stream:parse_element`), returning it as a view.
///
/// ```
/// use rjabberd::proto::xml::{Limits, parse_element};
/// let s = parse_element(b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>", &Limits::default()).unwrap();
/// assert_eq!(s.id().as_deref(), Some("1"));
/// assert!(parse_element(b"<iq><!-- no --></iq>", &Limits::default()).is_err());
/// ```
pub fn parse_element(input: &[u8], limits: &Limits) -> Result<Stanza, XmlError> {
    let mut p = StreamParser::document(*limits);
    let mut rest = input;
    let mut root = None;
    loop {
        let n = p.feed(rest);
        rest = &rest[n..];
        while let Some(ev) = p.next_event()? {
            if let Event::Stanza(s) = ev {
                root = Some(s);
            }
        }
        if rest.is_empty() {
            break;
        }
    }
    p.finish()?;
    Ok(root.expect("a finished document has a root"))
}

/// A stanza another host of the cluster sent (docs/cluster-protocol.md §7.1): bytes a parser of that
/// host already checked and its writer wrote standalone, from a peer that proved the cluster's secret.
/// Only the root's start tag is read (name, namespace, the attributes routing needs), and the rest is
/// taken as it is, sharing `xml` without a copy; what is checked of it is that the element ends where
/// the bytes do (its own end tag, or a self-closed start tag), so that a truncated or spliced frame
/// is refused rather than written into a client's stream.
pub fn parse_trusted(xml: bytes::Bytes, limits: &Limits) -> Result<Stanza, XmlError> {
    let mut m = Machine::new(Mode::Head, *limits);
    let end = match m.run(&xml) {
        Ok(Step::Stanza) => m.pos,
        Ok(_) => {
            return Err(XmlError::new(
                XmlErrorKind::NotWellFormed(Malformed::UnexpectedEof),
                xml.len() as u64,
            ));
        }
        Err(kind) => return Err(XmlError::new(kind, m.pos as u64)),
    };
    let base = m.base;
    let tail_at = xml.len()
        - xml
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    let self_closed = xml[..end].ends_with(b"/>");
    let closed = if self_closed {
        tail_at == end
    } else {
        let name = &xml[m.head.name.range()];
        let tail = &xml[end..tail_at];
        tail.len() >= name.len() + 3
            && tail.ends_with(b">")
            && tail[..tail.len() - 1].ends_with(name)
            && tail[..tail.len() - 1 - name.len()].ends_with(b"</")
    };
    if !closed {
        return Err(XmlError::new(
            XmlErrorKind::NotWellFormed(Malformed::MismatchedEndTag),
            tail_at as u64,
        ));
    }
    let mut head = m.head;
    head.rebase(base as u32);
    Ok(Stanza {
        bytes: xml.slice(base..tail_at),
        head,
        scope: None,
        trace: Trace::default(),
    })
}

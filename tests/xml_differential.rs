//! Differential tests of the stanza engine against xml-rs (the crate `xml`), the reference parser. This file
//! owns the evidence that rjabberd's parser accepts exactly what XML 1.0 and Namespaces in XML 1.0 accept,
//! minus what RFC 6120 §11 forbids (listed in [`RESTRICTED`], each class with its reason), and that for
//! accepted input both parsers see the same elements, attributes, namespaces and text. Every input runs
//! whole and cut into 1, 2, 5 and 10 byte pieces, and all cuts must give the same events or the same error.
//! Inputs come from three places: the recorded streams in `tests/corpus/`, a hand-written table of
//! malformed and edge-case documents, and proptest-generated (and mutated) element trees. It also owns the
//! explicit check of the refusal → stream-error mapping.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rjabberd::proto::xml::{
    BadFormat, Element, Event, LimitKind, Limits, Malformed, NS_STREAMS, NS_XML, Node, Restricted,
    StreamCondition, StreamHeader, StreamParser, XmlDecl, XmlError, XmlErrorKind, parse_element,
};
use xml::reader::{ParserConfig, XmlEvent};

const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";

/// What RFC 6120 §11 makes rjabberd refuse although XML 1.0 (and so xml-rs) accepts it. A disagreement
/// with xml-rs is allowed only when the input contains one of these, and only with the listed condition.
const RESTRICTED: &[(Class, StreamCondition, &str)] = &[
    (
        Class::Comment,
        StreamCondition::RestrictedXml,
        "RFC 6120 §11.1: an XMPP entity must not accept XML comments",
    ),
    (
        Class::ProcessingInstruction,
        StreamCondition::RestrictedXml,
        "RFC 6120 §11.1: processing instructions are forbidden (the leading XML declaration is not one)",
    ),
    (
        Class::Doctype,
        StreamCondition::RestrictedXml,
        "RFC 6120 §11.1: internal or external DTD subsets are forbidden",
    ),
    (
        Class::NonUtf8Encoding,
        StreamCondition::UnsupportedEncoding,
        "RFC 6120 §11.6: streams are UTF-8 only; §4.9.3.22 names the error for any other encoding",
    ),
    (
        Class::TextAtStreamLevel,
        StreamCondition::BadFormat,
        "RFC 6120 §11.7 and §4.9.3.1: only white space may stand between stanzas; text or CDATA directly \
         inside <stream:stream> cannot be processed as a stream (stream mode only)",
    ),
    (
        Class::NotAStream,
        StreamCondition::InvalidNamespace,
        "RFC 6120 §4.8.1 and §4.9.3.10: the root of a stream must be \
         {http://etherx.jabber.org/streams}stream (stream mode only)",
    ),
];

/// Constructs XML allows and an XMPP stream does not; see [`RESTRICTED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Comment,
    ProcessingInstruction,
    Doctype,
    NonUtf8Encoding,
    TextAtStreamLevel,
    NotAStream,
}

impl Class {
    fn condition(self) -> StreamCondition {
        RESTRICTED
            .iter()
            .find(|(c, _, _)| *c == self)
            .map(|(_, cond, _)| *cond)
            .expect("every class is in RESTRICTED")
    }

    /// Whether `kind` is the refusal this class must cause (not merely one with the same condition).
    fn explains(self, kind: XmlErrorKind) -> bool {
        kind == match self {
            Class::Comment => XmlErrorKind::RestrictedXml(Restricted::Comment),
            Class::ProcessingInstruction => {
                XmlErrorKind::RestrictedXml(Restricted::ProcessingInstruction)
            }
            Class::Doctype => XmlErrorKind::RestrictedXml(Restricted::Doctype),
            Class::NonUtf8Encoding => XmlErrorKind::UnsupportedEncoding,
            Class::TextAtStreamLevel => XmlErrorKind::BadFormat(BadFormat::TextAtStreamLevel),
            Class::NotAStream => XmlErrorKind::InvalidNamespace,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Stream,
    Document,
}

/// Large enough that no differential input meets a limit: limits are policy, not XML.
fn limits() -> Limits {
    Limits {
        max_stanza_bytes: 1 << 22,
        max_depth: 1024,
        max_attrs: 1024,
        max_ns_decls: 1024,
    }
}

fn parser(mode: Mode) -> StreamParser {
    match mode {
        Mode::Stream => StreamParser::new(limits()),
        Mode::Document => StreamParser::document(limits()),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Driving rjabberd.

/// Feeds `bytes` in pieces of `n` bytes, draining events after every feed (a parser takes at most `room()`
/// bytes, so a piece may take several feeds), then signals the end of input.
fn feed_in_pieces(mut p: StreamParser, bytes: &[u8], n: usize) -> Result<Vec<Event>, XmlError> {
    let mut events = Vec::new();
    for piece in bytes.chunks(n.max(1)) {
        let mut rest = piece;
        loop {
            let taken = p.feed(rest);
            rest = &rest[taken..];
            while let Some(ev) = p.next_event()? {
                events.push(ev);
            }
            if rest.is_empty() {
                break;
            }
            assert!(
                taken > 0 || p.room() > 0,
                "the parser takes no bytes and has no event to drain: it can never progress"
            );
        }
    }
    p.finish()?;
    Ok(events)
}

/// An event reduced to something comparable across runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Decl(XmlDecl),
    Open(StreamHeader),
    Stanza(Vec<u8>),
    Close,
}

fn summarize(events: &[Event]) -> Vec<Ev> {
    events
        .iter()
        .map(|e| match e {
            Event::Declaration(d) => Ev::Decl(d.clone()),
            Event::StreamOpen(h) => Ev::Open(h.clone()),
            Event::Stanza(s) => Ev::Stanza(s.as_bytes().to_vec()),
            Event::StreamClose => Ev::Close,
        })
        .collect()
}

/// Runs `input` whole and in 1, 2, 5 and 10 byte pieces; every run must give the same events, or the same
/// error at the same offset. Returns the whole run.
fn run_rjabberd(mode: Mode, input: &[u8]) -> Result<Result<Vec<Event>, XmlError>, String> {
    let whole = feed_in_pieces(parser(mode), input, input.len());
    let whole_sum = whole.as_ref().map(|e| summarize(e)).map_err(|e| *e);
    for n in [1, 2, 5, 10] {
        let cut = feed_in_pieces(parser(mode), input, n);
        let cut_sum = cut.as_ref().map(|e| summarize(e)).map_err(|e| *e);
        let tmp_same = std::env::var_os("TMP_KIND_ONLY").is_some()
            && match (&cut_sum, &whole_sum) {
                (Err(a), Err(b)) => a.kind == b.kind,
                _ => false,
            };
        if cut_sum != whole_sum && !tmp_same {
            return Err(format!(
                "{mode:?}: {n}-byte pieces give {:?}, the whole input gives {:?}",
                brief(&cut_sum),
                brief(&whole_sum)
            ));
        }
    }
    Ok(whole)
}

fn brief(r: &Result<Vec<Ev>, XmlError>) -> String {
    match r {
        Ok(evs) => format!("{} events", evs.len()),
        Err(e) => format!("{:?} at {}", e.kind, e.offset),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The common model both parsers are reduced to.

/// An element as a namespace-aware reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tree {
    /// Qualified name as written.
    name: String,
    /// Resolved namespace, empty for none.
    ns: String,
    /// `(qualified name, namespace, unescaped value)`, sorted; namespace declarations excluded.
    attrs: Vec<(String, String, String)>,
    /// The bindings in scope: declarations compared by their effect, without the built-in `xml` and
    /// `xmlns` prefixes and without an empty default namespace.
    scope: BTreeMap<String, String>,
    children: Vec<Child>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Child {
    Elem(Tree),
    /// Coalesced character data: references resolved, CDATA counted as text.
    Text(String),
}

fn normalize_scope(scope: &mut BTreeMap<String, String>) {
    if scope.get("").is_some_and(|u| u.is_empty()) {
        scope.remove("");
    }
    if scope.get("xml").is_some_and(|u| u == NS_XML) {
        scope.remove("xml");
    }
    if scope.get("xmlns").is_some_and(|u| u == NS_XMLNS) {
        scope.remove("xmlns");
    }
}

fn split_qname(q: &str) -> (&str, &str) {
    q.split_once(':').unwrap_or(("", q))
}

/// Reduces rjabberd's owned tree to the model, resolving prefixes against `outer` (the stream header's
/// bindings for a stanza, nothing for a document root) plus the tree's own declarations.
fn from_element(e: &Element, outer: &BTreeMap<String, String>) -> Tree {
    let mut scope = outer.clone();
    for (k, v) in &e.attrs {
        if k == "xmlns" {
            scope.insert(String::new(), v.clone());
        } else if let Some(p) = k.strip_prefix("xmlns:") {
            scope.insert(p.to_string(), v.clone());
        }
    }
    normalize_scope(&mut scope);
    let resolve = |prefix: &str| -> String {
        match prefix {
            "xml" => NS_XML.to_string(),
            p => scope.get(p).cloned().unwrap_or_default(),
        }
    };
    let ns = resolve(split_qname(&e.name).0);
    let mut attrs: Vec<(String, String, String)> = e
        .attrs
        .iter()
        .filter(|(k, _)| k != "xmlns" && !k.starts_with("xmlns:"))
        .map(|(k, v)| {
            let ns = match split_qname(k) {
                ("", _) => String::new(),
                (p, _) => resolve(p),
            };
            (k.clone(), ns, v.clone())
        })
        .collect();
    attrs.sort();
    let children = e
        .children
        .iter()
        .map(|c| match c {
            Node::Element(child) => Child::Elem(from_element(child, &scope)),
            Node::Text(t) => Child::Text(t.clone()),
        })
        .collect();
    Tree {
        name: e.name.clone(),
        ns,
        attrs,
        scope,
        children,
    }
}

/// What xml-rs made of a document: its root, and which [`RESTRICTED`] constructs it met on the way.
#[derive(Debug)]
struct Reference {
    root: Tree,
    /// Whether a CDATA section stood directly inside the root (the merged text does not say).
    root_cdata: bool,
    encoding: String,
    comments: bool,
    pis: bool,
    doctype: bool,
}

fn xmlrs(input: &[u8]) -> Result<Reference, String> {
    let mut config = ParserConfig::new();
    config.trim_whitespace = false;
    config.whitespace_to_characters = true;
    config.cdata_to_characters = false;
    config.coalesce_characters = true;
    config.ignore_comments = false;
    config.allow_multiple_root_elements = false;
    let mut reader = config.create_reader(input);
    let mut stack: Vec<Tree> = Vec::new();
    let mut root = None;
    let mut out = Reference {
        root: Tree {
            name: String::new(),
            ns: String::new(),
            attrs: Vec::new(),
            scope: BTreeMap::new(),
            children: Vec::new(),
        },
        root_cdata: false,
        encoding: String::new(),
        comments: false,
        pis: false,
        doctype: false,
    };
    loop {
        match reader.next().map_err(|e| e.to_string())? {
            XmlEvent::StartDocument { encoding, .. } => out.encoding = encoding,
            XmlEvent::EndDocument => break,
            XmlEvent::ProcessingInstruction { .. } => out.pis = true,
            XmlEvent::Comment(_) => out.comments = true,
            XmlEvent::Doctype { .. } => out.doctype = true,
            XmlEvent::StartElement {
                name,
                attributes,
                namespace,
            } => {
                let mut scope: BTreeMap<String, String> = namespace.0.into_iter().collect();
                normalize_scope(&mut scope);
                let mut attrs: Vec<(String, String, String)> = attributes
                    .into_iter()
                    .map(|a| {
                        let q = match &a.name.prefix {
                            Some(p) => format!("{p}:{}", a.name.local_name),
                            None => a.name.local_name.clone(),
                        };
                        (q, a.name.namespace.unwrap_or_default(), a.value)
                    })
                    .collect();
                attrs.sort();
                let qname = match &name.prefix {
                    Some(p) => format!("{p}:{}", name.local_name),
                    None => name.local_name,
                };
                stack.push(Tree {
                    name: qname,
                    ns: name.namespace.unwrap_or_default(),
                    attrs,
                    scope,
                    children: Vec::new(),
                });
            }
            XmlEvent::EndElement { .. } => {
                let done = stack.pop().ok_or("end without start")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Child::Elem(done)),
                    None => root = Some(done),
                }
            }
            XmlEvent::Characters(t) | XmlEvent::Whitespace(t) => push_text(&mut stack, t),
            XmlEvent::CData(t) => {
                out.root_cdata |= stack.len() == 1;
                push_text(&mut stack, t);
            }
        }
    }
    out.root = root.ok_or("no root element")?;
    Ok(out)
}

/// Text events append to the open element's last text child: the model coalesces character data.
fn push_text(stack: &mut [Tree], t: String) {
    // An empty CDATA section is no character data at all.
    let Some(top) = stack.last_mut().filter(|_| !t.is_empty()) else {
        return;
    };
    match top.children.last_mut() {
        Some(Child::Text(prev)) => prev.push_str(&t),
        _ => top.children.push(Child::Text(t)),
    }
}

/// The [`RESTRICTED`] constructs xml-rs met in a document it accepted.
fn classes(r: &Reference, mode: Mode, input: &[u8]) -> Vec<Class> {
    let mut found = Vec::new();
    if r.comments {
        found.push(Class::Comment);
    }
    if r.pis {
        found.push(Class::ProcessingInstruction);
    }
    if r.doctype {
        found.push(Class::Doctype);
    }
    if !r.encoding.eq_ignore_ascii_case("utf-8") {
        found.push(Class::NonUtf8Encoding);
    }
    if mode == Mode::Stream {
        let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
        // A character reference to a space is text too, though xml-rs reports it as white space.
        let text = r.root.children.iter().any(|c| match c {
            Child::Text(t) => !t.chars().all(is_space) || input.contains(&b'&'),
            Child::Elem(_) => false,
        });
        if text || r.root_cdata {
            found.push(Class::TextAtStreamLevel);
        }
        if r.root.ns != NS_STREAMS || split_qname(&r.root.name).1 != "stream" {
            found.push(Class::NotAStream);
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------------------
// The comparison.

/// How a differential run ended when both parsers agree.
#[derive(Debug)]
enum Agreement {
    Accepted(Vec<Event>),
    /// Both refuse: the refusal is ours.
    Refused(XmlError),
    /// xml-rs accepts a construct RFC 6120 forbids, which we refuse as [`RESTRICTED`] says.
    Restricted(XmlError, Class),
    /// xml-rs accepts input that XML 1.0 or Namespaces forbid (a known leniency, see [`xmlrs_leniency`]);
    /// we refuse it.
    XmlRsLenient(XmlError, &'static str),
}

/// Known xml-rs 1.x leniencies that generated (mutated) input can hit, found by scanning the input and
/// matched to the refusal they must cause. The hand cases in [`XMLRS_WRONG`] pin each one.
fn xmlrs_leniency(input: &[u8], kind: XmlErrorKind) -> Option<&'static str> {
    let text = String::from_utf8_lossy(input);
    let mut in_tag = false;
    let mut quote = None;
    let mut lt_in_value = false;
    let mut bad_local_start = false;
    let mut duplicate_decl = false;
    // The current tag with its attribute values left out, to find repeated namespace declarations.
    let mut tag = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_tag, quote) {
            (false, _) if c == '<' => {
                if chars.peek() == Some(&'!') {
                    // CDATA, comment or DOCTYPE: not a tag; skip to its `>`.
                    for d in chars.by_ref() {
                        if d == '>' {
                            break;
                        }
                    }
                } else {
                    in_tag = true;
                    tag.clear();
                }
            }
            (true, None) if c == '>' => {
                in_tag = false;
                let names: Vec<&str> = tag
                    .split('=')
                    .filter_map(|part| part.split_whitespace().last())
                    .filter(|n| *n == "xmlns" || n.starts_with("xmlns:"))
                    .collect();
                duplicate_decl |= names
                    .iter()
                    .enumerate()
                    .any(|(i, n)| names[..i].contains(n));
            }
            (true, None) if c == '\'' || c == '"' => quote = Some(c),
            (true, None) if c == ':' => {
                tag.push(c);
                bad_local_start |= chars.peek().is_some_and(|n| {
                    n.is_ascii_digit()
                        || matches!(n, '-' | '.' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
                });
            }
            (true, None) => tag.push(c),
            (true, Some(q)) if c == q => quote = None,
            (true, Some(_)) if c == '<' => lt_in_value = true,
            _ => {}
        }
    }
    let decl = text
        .trim_start_matches('\u{feff}')
        .strip_prefix("<?xml")
        .and_then(|d| d.split_once("?>"))
        .map(|(d, _)| d);
    // A pseudo-attribute value outside the VersionNum/EncName/yes-no grammar, e.g. `encoding="UTF-8 "`.
    let padded_decl_value = decl.is_some_and(|d| {
        d.split(['\'', '"']).skip(1).step_by(2).any(|v| {
            !v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
    });
    match kind {
        XmlErrorKind::NotWellFormed(Malformed::DuplicateAttribute) if duplicate_decl => Some(
            "XML 1.0 §3.1 WFC Unique Att Spec: a namespace declaration may appear once per start tag; \
             xml-rs accepts the repeat",
        ),
        XmlErrorKind::NotWellFormed(Malformed::BadDeclaration) if padded_decl_value => Some(
            "XML 1.0 §2.8 [24]-[26] and §4.3.3 [81]: VersionNum and EncName are made of letters, digits, \
             `.`, `_` and `-`; xml-rs trims and does not check them",
        ),
        XmlErrorKind::NotWellFormed(Malformed::UnexpectedByte) if lt_in_value => {
            Some("XML 1.0 §3.1 [10] AttValue excludes `<`; xml-rs accepts `</` in a value")
        }
        XmlErrorKind::NotWellFormed(Malformed::InvalidName) if bad_local_start => Some(
            "Namespaces in XML 1.0 §3: the local part is an NCName, which cannot start with a digit, \
             `-`, `.` or a combining mark; xml-rs does not check the character after the colon",
        ),
        _ => None,
    }
}

fn differential(mode: Mode, input: &[u8]) -> Result<Agreement, String> {
    let ours = run_rjabberd(mode, input)?;
    let theirs = xmlrs(input);
    match (ours, theirs) {
        (Ok(events), Ok(r)) => {
            compare(mode, &events, &r)?;
            round_trip(&events)?;
            Ok(Agreement::Accepted(events))
        }
        (Err(e), Err(_)) => Ok(Agreement::Refused(e)),
        (Err(e), Ok(r)) => match classes(&r, mode, input)
            .into_iter()
            .find(|c| c.explains(e.kind))
        {
            Some(c) => Ok(Agreement::Restricted(e, c)),
            None if xmlrs_leniency(input, e.kind).is_some() => Ok(Agreement::XmlRsLenient(
                e,
                xmlrs_leniency(input, e.kind).unwrap_or_default(),
            )),
            None => Err(format!(
                "rjabberd refuses ({:?} at {}), xml-rs accepts and no restricted class explains it",
                e.kind, e.offset
            )),
        },
        (Ok(_), Err(x)) => Err(format!("rjabberd accepts, xml-rs refuses: {x}")),
    }
}

fn scope_of(h: &StreamHeader) -> BTreeMap<String, String> {
    let mut scope: BTreeMap<String, String> = h.scope.bindings.iter().cloned().collect();
    normalize_scope(&mut scope);
    scope
}

/// Both parsers accepted: the header (stream mode) and each stanza (or the document's root) must match.
fn compare(mode: Mode, events: &[Event], r: &Reference) -> Result<(), String> {
    let (outer, expected): (BTreeMap<String, String>, Vec<&Tree>) = match mode {
        Mode::Document => (BTreeMap::new(), vec![&r.root]),
        Mode::Stream => {
            let h = events
                .iter()
                .find_map(|e| match e {
                    Event::StreamOpen(h) => Some(h),
                    _ => None,
                })
                .ok_or("no StreamOpen")?;
            let root = &r.root;
            let header_attrs: Vec<(String, String)> = {
                let mut a = h.attrs.clone();
                a.sort();
                a
            };
            let ref_attrs: Vec<(String, String)> = root
                .attrs
                .iter()
                .map(|(q, _, v)| (q.clone(), v.clone()))
                .collect();
            if h.name != root.name
                || h.namespace.clone().unwrap_or_default() != root.ns
                || header_attrs != ref_attrs
                || scope_of(h) != root.scope
            {
                return Err(format!(
                    "stream headers differ:\n ours {h:?}\n xml-rs {root:?}"
                ));
            }
            if !matches!(events.last(), Some(Event::StreamClose)) {
                return Err("an accepted stream does not end with StreamClose".into());
            }
            let stanzas = root
                .children
                .iter()
                .filter_map(|c| match c {
                    Child::Elem(t) => Some(t),
                    Child::Text(_) => None,
                })
                .collect();
            (scope_of(h), stanzas)
        }
    };
    let ours: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Stanza(s) => Some(s),
            _ => None,
        })
        .collect();
    if ours.len() != expected.len() {
        return Err(format!(
            "{} stanzas against xml-rs's {}",
            ours.len(),
            expected.len()
        ));
    }
    for (s, want) in ours.iter().zip(expected) {
        let got = from_element(&s.to_element(), &outer);
        if &got != want {
            return Err(format!(
                "trees differ for {:?}:\n ours   {got:?}\n xml-rs {want:?}",
                String::from_utf8_lossy(s.as_bytes())
            ));
        }
        // The zero-copy header must say what the tree says.
        let attr = |name: &str| {
            want.attrs
                .iter()
                .find(|(q, _, _)| q == name)
                .map(|(_, _, v)| v.as_str())
        };
        let header_ok = s.name() == want.name
            && s.namespace().unwrap_or_default() == want.ns
            && s.to().as_deref() == attr("to")
            && s.from().as_deref() == attr("from")
            && s.type_().as_deref() == attr("type")
            && s.id().as_deref() == attr("id")
            && s.lang().as_deref() == attr("xml:lang");
        if !header_ok {
            return Err(format!(
                "stanza header differs from its tree for {:?}",
                String::from_utf8_lossy(s.as_bytes())
            ));
        }
    }
    Ok(())
}

/// An accepted stanza written out by the owned tree and parsed again must give the same tree.
fn round_trip(events: &[Event]) -> Result<(), String> {
    if std::env::var_os("TMP_SKIP_RT").is_some() {
        return Ok(());
    }
    for ev in events {
        let Event::Stanza(s) = ev else { continue };
        let tree = s.to_element();
        let text = tree.to_xml_string();
        let again = parse_element(text.as_bytes(), &limits())
            .map_err(|e| format!("the written tree {text:?} is refused: {e}"))?
            .to_element();
        if again != tree {
            return Err(format!(
                "round trip changes the tree:\n before {tree:?}\n written {text:?}\n after  {again:?}"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// (a) The corpus.

#[test]
fn corpus_streams_agree_with_xml_rs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/corpus exists")
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus under {}", dir.display());
    for path in files {
        let input = std::fs::read(&path).expect("readable corpus file");
        match differential(Mode::Stream, &input) {
            Ok(Agreement::Accepted(events)) => {
                let stanzas = events
                    .iter()
                    .filter(|e| matches!(e, Event::Stanza(_)))
                    .count();
                assert!(stanzas > 0, "{}: no stanzas", path.display());
            }
            other => panic!("{}: {other:?}", path.display()),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// (b) Malformed and edge-case inputs.

const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
                      to='example.org' version='1.0'>";

/// How a case is run: a document, a raw stream, or stanzas wrapped in [`HEADER`] and `</stream:stream>`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Doc,
    Raw,
    Body,
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Accept,
    /// Both parsers refuse; ours with this condition.
    Refuse(StreamCondition),
    /// xml-rs accepts; we refuse as [`RESTRICTED`] says for the class.
    Restricted(Class),
    /// xml-rs is wrong here (see [`XMLRS_WRONG`]): we refuse with this condition, xml-rs accepts.
    XmlRsAccepts(StreamCondition),
    /// xml-rs is wrong here (see [`XMLRS_WRONG`]): we accept, xml-rs refuses.
    XmlRsRefuses,
}

/// Where xml-rs 1.x breaks the specifications, by case name, with the clause. The cases still assert that
/// xml-rs is wrong, so an entry fails (and can be removed) once xml-rs is fixed.
const XMLRS_WRONG: &[(&str, &str)] = &[
    (
        "duplicate prefix declaration",
        "XML 1.0 §3.1 WFC Unique Att Spec: `xmlns:p` is an attribute name like any other and may appear          once per start tag; xml-rs accepts the repeat",
    ),
    (
        "duplicate default declaration",
        "XML 1.0 §3.1 WFC Unique Att Spec, as above, for `xmlns`",
    ),
    (
        "other prefix to the xml name",
        "Namespaces in XML 1.0 §3 Reserved Prefixes: other prefixes must not be bound to          http://www.w3.org/XML/1998/namespace; xml-rs accepts the binding",
    ),
    (
        "lt-slash in attribute value",
        "XML 1.0 §3.1 [10] AttValue excludes `<`; xml-rs 1.x accepts `<` when `/` follows it",
    ),
    (
        "lt-slash in namespace name",
        "XML 1.0 §3.1 [10] AttValue, as above, in a namespace declaration",
    ),
    (
        "element with the xml prefix",
        "Namespaces in XML 1.0 §3: the prefix `xml` is bound by definition and may be used; only          declaring it to another name is an error. xml-rs refuses any element named `xml:…`",
    ),
];

use Expect::{Accept, Refuse};
use Kind::{Body, Doc, Raw};
const NWF: Expect = Refuse(StreamCondition::NotWellFormed);
const RESTRICTED_XML: Expect = Refuse(StreamCondition::RestrictedXml);
const XMLRS_ACCEPTS_NWF: Expect = Expect::XmlRsAccepts(StreamCondition::NotWellFormed);

const CASES: &[(&str, Kind, &[u8], Expect)] = &[
    // Tags and names.
    ("empty element", Doc, b"<a/>", Accept),
    ("nested with text", Doc, b"<a>x<b>y</b>z</a>", Accept),
    ("white space inside tags", Doc, b"<a\n x\t=\r\n'1'\n/>", Accept),
    ("white space in end tag", Doc, b"<a></a \n>", Accept),
    ("unclosed start tag", Doc, b"<a", NWF),
    ("unclosed element", Doc, b"<a><b></b>", NWF),
    ("end tag only", Doc, b"</a>", NWF),
    ("mismatched end tag", Doc, b"<a></b>", NWF),
    ("end tag prefix differs", Doc, b"<p:a xmlns:p='u'></q:a>", NWF),
    // XML 1.0 §3 WFC Element Type Match compares names as written, not expanded names.
    ("end tag same namespace other prefix", Doc, b"<p:a xmlns:p='u' xmlns:q='u'></q:a>", NWF),
    ("space before end tag name", Doc, b"<a></ a>", NWF),
    ("attribute on end tag", Doc, b"<a></a x='1'>", NWF),
    ("space before name", Doc, b"< a/>", NWF),
    ("name starts with digit", Doc, b"<1a/>", NWF),
    ("name starts with hyphen", Doc, b"<-a/>", NWF),
    ("name starts with colon", Doc, b"<:a/>", NWF),
    ("name ends with colon", Doc, b"<a:/>", NWF),
    // Namespaces in XML 1.0 §3: a QName has at most one colon.
    ("two colons", Doc, b"<a:b:c xmlns:a='u'/>", NWF),
    ("lt-slash in attribute value", Doc, b"<a x='<//'/>", XMLRS_ACCEPTS_NWF),
    ("lt-slash in namespace name", Doc, b"<a xmlns='http:<//e.example'/>", XMLRS_ACCEPTS_NWF),
    ("lt-letter in attribute value", Doc, b"<a x='<a'/>", NWF),
    ("lt at end of attribute value", Doc, b"<a x='h:<'/>", NWF),
    ("non-ASCII names", Doc, "<é名·x é:ü='1' xmlns:é='u'/>".as_bytes(), Accept),
    // U+00D7 is outside NameChar (XML 1.0 §2.3).
    ("illegal name character", Doc, "<a×b/>".as_bytes(), NWF),
    ("lt inside text", Doc, b"<a>a<b</a>", NWF),
    ("gt inside text", Doc, b"<a>a>b</a>", Accept),
    // Attributes.
    ("duplicate attribute", Doc, b"<a x='1' x='2'/>", NWF),
    // Namespaces in XML 1.0 §6.3: no two attributes with the same expanded name.
    ("duplicate after expansion", Doc, b"<a xmlns:p='u' xmlns:q='u' p:x='1' q:x='2'/>", NWF),
    ("same local name, other namespaces", Doc, b"<a xmlns:p='u' xmlns:q='v' p:x='1' q:x='2'/>", Accept),
    ("prefixed and unprefixed", Doc, b"<a xmlns:p='u' p:x='1' x='2'/>", Accept),
    ("duplicate prefix declaration", Doc, b"<a xmlns:p='u' xmlns:p='u'/>", XMLRS_ACCEPTS_NWF),
    ("duplicate default declaration", Doc, b"<a xmlns='u' xmlns='u'/>", XMLRS_ACCEPTS_NWF),
    ("lt in attribute value", Doc, b"<a x='<'/>", NWF),
    ("gt in attribute value", Doc, b"<a x='>'/>", Accept),
    ("other quote in attribute value", Doc, b"<a x='\"' y=\"'\"/>", Accept),
    ("missing space between attributes", Doc, b"<a x='1'y='2'/>", NWF),
    ("unquoted attribute value", Doc, b"<a x=1/>", NWF),
    ("attribute without value", Doc, b"<a x/>", NWF),
    ("mismatched quotes", Doc, b"<a x='1\"/>", NWF),
    ("attribute value normalisation", Doc, b"<a x='a\tb\nc\r\nd&#9;e&#10;'/>", Accept),
    // Namespace declarations.
    ("unbound element prefix", Doc, b"<p:a/>", NWF),
    ("unbound attribute prefix", Doc, b"<a p:x='1'/>", NWF),
    ("prefix bound on a sibling only", Doc, b"<a><p:b xmlns:p='u'/><p:c/></a>", NWF),
    // Namespaces in XML 1.0 §3: a prefixed declaration's value must not be empty (1.1 allows it).
    ("empty prefixed declaration", Doc, b"<a xmlns:p=''/>", NWF),
    ("empty default declaration undeclares", Doc, b"<a xmlns='u'><b xmlns=''/></a>", Accept),
    // Namespaces in XML 1.0 §3 "Reserved Prefixes and Namespace Names".
    ("rebinding xml", Doc, b"<a xmlns:xml='urn:x'/>", NWF),
    ("binding xml to its own name", Doc, b"<a xmlns:xml='http://www.w3.org/XML/1998/namespace'/>", Accept),
    ("binding xmlns", Doc, b"<a xmlns:xmlns='urn:x'/>", NWF),
    ("other prefix to the xml name", Doc, b"<a xmlns:p='http://www.w3.org/XML/1998/namespace'/>", XMLRS_ACCEPTS_NWF),
    ("default to the xmlns name", Doc, b"<a xmlns='http://www.w3.org/2000/xmlns/'/>", NWF),
    ("element with prefix xmlns", Doc, b"<xmlns:a/>", NWF),
    ("xml:lang needs no declaration", Doc, b"<a xml:lang='en'><b xml:space='default'/></a>", Accept),
    ("element with the xml prefix", Doc, b"<a><xml:b/></a>", Expect::XmlRsRefuses),
    ("default namespace is not for attributes", Doc, b"<a xmlns='u' x='1'><b/></a>", Accept),
    // Encoding (XML 1.0 §2.2 Char; RFC 3629 UTF-8).
    ("overlong UTF-8", Doc, b"<a>\xC0\xAF</a>", NWF),
    ("overlong three-byte UTF-8", Doc, b"<a>\xE0\x80\xAF</a>", NWF),
    ("UTF-8 surrogate", Doc, b"<a>\xED\xA0\x80</a>", NWF),
    ("truncated UTF-8", Doc, b"<a>\xE6\x97</a>", NWF),
    ("truncated UTF-8 at end of input", Doc, b"<a/>\xE6", NWF),
    ("byte 0xFF", Doc, b"<a>\xFF</a>", NWF),
    ("bad UTF-8 in a name", Doc, b"<a\xC3/>", NWF),
    ("beyond U+10FFFF", Doc, b"<a x='\xF4\x90\x80\x80'/>", NWF),
    ("four-byte character", Doc, "<a x='😀'>😀</a>".as_bytes(), Accept),
    ("control character in text", Doc, b"<a>\x01</a>", NWF),
    ("NUL in text", Doc, b"<a>\x00</a>", NWF),
    ("U+FFFE in text", Doc, b"<a>\xEF\xBF\xBE</a>", NWF),
    ("U+FFFF in attribute", Doc, b"<a x='\xEF\xBF\xBF'/>", NWF),
    ("control character in attribute", Doc, b"<a x='\x1F'/>", NWF),
    ("control character in CDATA", Doc, b"<a><![CDATA[\x02]]></a>", NWF),
    // Character data and references (XML 1.0 §2.4, §4.1).
    ("]]> in text", Doc, b"<a>x]]>y</a>", NWF),
    ("]] without > in text", Doc, b"<a>]]</a>", Accept),
    ("] > in text", Doc, b"<a>]>]] ></a>", Accept),
    ("character reference zero", Doc, b"<a>&#0;</a>", NWF),
    ("character reference to a surrogate", Doc, b"<a>&#xD800;</a>", NWF),
    ("character reference beyond Unicode", Doc, b"<a>&#x110000;</a>", NWF),
    ("character reference to U+FFFE", Doc, b"<a x='&#xFFFE;'/>", NWF),
    ("character reference to a control", Doc, b"<a>&#1;</a>", NWF),
    ("huge decimal reference", Doc, b"<a>&#99999999999999999999;</a>", NWF),
    ("empty decimal reference", Doc, b"<a>&#;</a>", NWF),
    ("empty hex reference", Doc, b"<a>&#x;</a>", NWF),
    ("uppercase X reference", Doc, b"<a>&#X41;</a>", NWF),
    ("tab, line feed, CR by reference", Doc, b"<a>&#9;&#10;&#13;&#x1F600;</a>", Accept),
    ("line ends normalised", Doc, b"<a>x\r\ny\rz</a>", Accept),
    ("predefined entities", Doc, b"<a x='&lt;&gt;&amp;&apos;&quot;'>&lt;&gt;&amp;&apos;&quot;</a>", Accept),
    // XML 1.0 §4.1 WFC Entity Declared: without a DTD only the five exist; RFC 6120 names the error.
    ("undeclared entity", Doc, b"<a>&nbsp;</a>", RESTRICTED_XML),
    ("undeclared entity in attribute", Doc, b"<a x='&foo;'/>", RESTRICTED_XML),
    ("entity without semicolon", Doc, b"<a>&amp</a>", NWF),
    ("bare ampersand", Doc, b"<a>a & b</a>", NWF),
    ("bare ampersand in attribute", Doc, b"<a x='a&b'/>", NWF),
    // CDATA.
    ("CDATA inside", Doc, b"<a>x<![CDATA[<&]]]>y</a>", Accept),
    ("empty CDATA", Doc, b"<a><![CDATA[]]></a>", Accept),
    ("unterminated CDATA", Doc, b"<a><![CDATA[x</a>", NWF),
    ("misspelt CDATA", Doc, b"<a><![CDATAX[x]]></a>", NWF),
    ("CDATA at top level", Doc, b"<![CDATA[x]]><a/>", NWF),
    // Document structure (XML 1.0 §2.1, §2.8).
    ("text after root", Doc, b"<a/>x", NWF),
    ("white space after root", Doc, b"<a/>\n\t ", Accept),
    ("two roots", Doc, b"<a/><b/>", NWF),
    ("text before root", Doc, b"x<a/>", NWF),
    ("empty document", Doc, b"", NWF),
    ("white space only", Doc, b" \n", NWF),
    ("byte-order mark", Doc, b"\xEF\xBB\xBF<a/>", Accept),
    ("byte-order mark then declaration", Doc, b"\xEF\xBB\xBF<?xml version='1.0'?><a/>", Accept),
    ("two byte-order marks", Doc, b"\xEF\xBB\xBF\xEF\xBB\xBF<a/>", NWF),
    ("declaration", Doc, b"<?xml version='1.0'?><a/>", Accept),
    ("declaration with UTF-8", Doc, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<a/>", Accept),
    ("declaration with utf-8", Doc, b"<?xml version='1.0' encoding='utf-8' standalone='yes'?><a/>", Accept),
    ("declaration only", Doc, b"<?xml version='1.0'?>", NWF),
    ("declaration without version", Doc, b"<?xml encoding='UTF-8'?><a/>", NWF),
    ("declaration in wrong order", Doc, b"<?xml encoding='UTF-8' version='1.0'?><a/>", NWF),
    ("declaration with bad standalone", Doc, b"<?xml version='1.0' standalone='maybe'?><a/>", NWF),
    // XML 1.0 §2.8: the declaration only stands first; elsewhere `<?xml` is a PI with a reserved target.
    ("declaration after white space", Doc, b" <?xml version='1.0'?><a/>", NWF),
    ("declaration after root", Doc, b"<a/><?xml version='1.0'?>", NWF),
    // Restricted XML.
    ("comment", Doc, b"<a><!-- c --></a>", Expect::Restricted(Class::Comment)),
    ("comment in prolog", Doc, b"<!-- c --><a/>", Expect::Restricted(Class::Comment)),
    ("processing instruction", Doc, b"<a><?pi data?></a>", Expect::Restricted(Class::ProcessingInstruction)),
    ("PI in prolog", Doc, b"<?pi?><a/>", Expect::Restricted(Class::ProcessingInstruction)),
    ("DOCTYPE", Doc, b"<!DOCTYPE a><a/>", Expect::Restricted(Class::Doctype)),
    ("declaration ISO-8859-1", Doc, b"<?xml version='1.0' encoding='ISO-8859-1'?><a/>", Expect::Restricted(Class::NonUtf8Encoding)),
    // Streams.
    ("stanzas", Body, b"<message to='a@b'><body>hi</body></message><presence/>", Accept),
    ("white space between stanzas", Body, b" \n\t\r\n <iq type='get' id='1'/> \n", Accept),
    ("stream-prefixed nonza", Body, b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>", Accept),
    ("stanza redeclares the default", Body, b"<message xmlns='jabber:server'/><x xmlns=''/>", Accept),
    ("text between stanzas", Body, b"<presence/>hello<presence/>", Expect::Restricted(Class::TextAtStreamLevel)),
    ("CDATA between stanzas", Body, b"<![CDATA[x]]>", Expect::Restricted(Class::TextAtStreamLevel)),
    ("reference between stanzas", Body, b"&#32;", Expect::Restricted(Class::TextAtStreamLevel)),
    ("comment between stanzas", Body, b"<!--c--><presence/>", Expect::Restricted(Class::Comment)),
    ("PI between stanzas", Body, b"<?pi?>", Expect::Restricted(Class::ProcessingInstruction)),
    ("unclosed stanza at stream close", Body, b"<message>", NWF),
    ("unbound prefix in stanza", Body, b"<foo:bar/>", NWF),
    ("undeclared entity in stanza", Body, b"<message>&copy;</message>", RESTRICTED_XML),
    ("root not a stream", Raw, b"<a/>", Expect::Restricted(Class::NotAStream)),
    ("stream root in another namespace", Raw, b"<stream:stream xmlns:stream='urn:wrong'></stream:stream>", Expect::Restricted(Class::NotAStream)),
    ("stream prefix unbound", Raw, b"<stream:stream></stream:stream>", NWF),
    ("self-closed stream", Raw, b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>", Accept),
    ("unprefixed stream root", Raw, b"<stream xmlns='http://etherx.jabber.org/streams'><x xmlns='u'/></stream>", Accept),
    ("stream never closed", Raw, b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><a/>", NWF),
    ("text after the stream", Raw, b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>x", NWF),
    ("second stream", Raw, b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/><stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>", NWF),
    ("duplicate header attribute", Raw, b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='a' to='b'/>", NWF),
    ("stream with ISO-8859-1", Raw, b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>", Expect::Restricted(Class::NonUtf8Encoding)),
];

fn case_input(kind: Kind, input: &[u8]) -> (Mode, Vec<u8>) {
    match kind {
        Kind::Doc => (Mode::Document, input.to_vec()),
        Kind::Raw => (Mode::Stream, input.to_vec()),
        Kind::Body => {
            let mut v = HEADER.as_bytes().to_vec();
            v.extend_from_slice(input);
            v.extend_from_slice(b"</stream:stream>");
            (Mode::Stream, v)
        }
    }
}

#[test]
fn edge_cases_agree_with_xml_rs_and_the_spec() {
    let mut failures = Vec::new();
    for &(name, kind, input, expect) in CASES {
        let (mode, input) = case_input(kind, input);
        if let Expect::XmlRsAccepts(_) | Expect::XmlRsRefuses = expect {
            let listed = XMLRS_WRONG.iter().any(|(n, _)| *n == name);
            let ours = run_rjabberd(mode, &input);
            let theirs = xmlrs(&input);
            let ok = listed
                && match (&ours, &theirs, expect) {
                    (Ok(Err(e)), Ok(_), Expect::XmlRsAccepts(cond)) => e.condition() == cond,
                    (Ok(Ok(events)), Err(_), Expect::XmlRsRefuses) => round_trip(events).is_ok(),
                    _ => false,
                };
            if !ok {
                failures.push(format!(
                    "{name} (listed in XMLRS_WRONG: {listed}): {:?}\n   expected {expect:?}, got ours \
                     {:?}, xml-rs {:?}",
                    String::from_utf8_lossy(&input),
                    ours.map(|r| r.map(|e| summarize(&e))),
                    theirs.map(|r| r.root)
                ));
            }
            continue;
        }
        let outcome = differential(mode, &input);
        let ok = match (&outcome, expect) {
            (Ok(Agreement::Accepted(_)), Accept) => true,
            (Ok(Agreement::Refused(e)), Refuse(cond)) => e.condition() == cond,
            (Ok(Agreement::Restricted(e, c)), Expect::Restricted(want)) => {
                *c == want && e.condition() == want.condition()
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{name}: {:?}\n   expected {expect:?}, got {outcome:?}",
                String::from_utf8_lossy(&input)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn every_restricted_class_has_a_case() {
    for (class, _, why) in RESTRICTED {
        assert!(
            CASES
                .iter()
                .any(|(_, _, _, e)| matches!(e, Expect::Restricted(c) if c == class)),
            "{class:?} ({why}) has no case in CASES"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// The refusal → stream error mapping (RFC 6120 §4.9.3).

fn refusal(mode: Mode, input: &[u8], limits: Limits) -> XmlError {
    let p = match mode {
        Mode::Stream => StreamParser::new(limits),
        Mode::Document => StreamParser::document(limits),
    };
    feed_in_pieces(p, input, input.len()).expect_err("refused")
}

#[test]
fn each_refusal_maps_to_its_stream_error() {
    let body = |s: &str| format!("{HEADER}{s}").into_bytes();
    let small = Limits {
        max_stanza_bytes: 256,
        max_depth: 4,
        max_attrs: 4,
        max_ns_decls: 4,
    };
    /// Input, limits, the refusal, its condition and the element name sent on the wire.
    type Case = (
        Mode,
        Vec<u8>,
        Limits,
        XmlErrorKind,
        StreamCondition,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            Mode::Document,
            b"<a></b>".to_vec(),
            limits(),
            XmlErrorKind::NotWellFormed(Malformed::MismatchedEndTag),
            StreamCondition::NotWellFormed,
            "not-well-formed",
        ),
        (
            Mode::Document,
            b"<a xmlns:p='u' xmlns:q='u' p:x='1' q:x='2'/>".to_vec(),
            limits(),
            XmlErrorKind::NotWellFormed(Malformed::DuplicateAttribute),
            StreamCondition::NotWellFormed,
            "not-well-formed",
        ),
        (
            Mode::Document,
            b"<a><!--c--></a>".to_vec(),
            limits(),
            XmlErrorKind::RestrictedXml(Restricted::Comment),
            StreamCondition::RestrictedXml,
            "restricted-xml",
        ),
        (
            Mode::Document,
            b"<a><?pi?></a>".to_vec(),
            limits(),
            XmlErrorKind::RestrictedXml(Restricted::ProcessingInstruction),
            StreamCondition::RestrictedXml,
            "restricted-xml",
        ),
        (
            Mode::Document,
            b"<!DOCTYPE a><a/>".to_vec(),
            limits(),
            XmlErrorKind::RestrictedXml(Restricted::Doctype),
            StreamCondition::RestrictedXml,
            "restricted-xml",
        ),
        (
            Mode::Document,
            b"<a>&nbsp;</a>".to_vec(),
            limits(),
            XmlErrorKind::RestrictedXml(Restricted::EntityReference),
            StreamCondition::RestrictedXml,
            "restricted-xml",
        ),
        (
            Mode::Stream,
            b"<a/>".to_vec(),
            limits(),
            XmlErrorKind::InvalidNamespace,
            StreamCondition::InvalidNamespace,
            "invalid-namespace",
        ),
        (
            Mode::Stream,
            body("text"),
            limits(),
            XmlErrorKind::BadFormat(BadFormat::TextAtStreamLevel),
            StreamCondition::BadFormat,
            "bad-format",
        ),
        (
            Mode::Stream,
            body(&format!(
                "<message><body>{}</body></message>",
                "x".repeat(300)
            )),
            small,
            XmlErrorKind::LimitExceeded(LimitKind::StanzaSize),
            StreamCondition::PolicyViolation,
            "policy-violation",
        ),
        (
            Mode::Stream,
            body("<a><b><c><d/></c></b></a>"),
            small,
            XmlErrorKind::LimitExceeded(LimitKind::Depth),
            StreamCondition::PolicyViolation,
            "policy-violation",
        ),
        (
            Mode::Stream,
            body("<a b='1' c='2' d='3' e='4' f='5'/>"),
            small,
            XmlErrorKind::LimitExceeded(LimitKind::Attributes),
            StreamCondition::PolicyViolation,
            "policy-violation",
        ),
        (
            Mode::Stream,
            body("<a xmlns:b='1' xmlns:c='2' xmlns:d='3'/>"),
            small,
            XmlErrorKind::LimitExceeded(LimitKind::NamespaceDeclarations),
            StreamCondition::PolicyViolation,
            "policy-violation",
        ),
        (
            Mode::Document,
            b"<?xml version='1.0' encoding='UTF-16'?><a/>".to_vec(),
            limits(),
            XmlErrorKind::UnsupportedEncoding,
            StreamCondition::UnsupportedEncoding,
            "unsupported-encoding",
        ),
    ];
    for (mode, input, limits, kind, condition, wire) in cases {
        let e = refusal(mode, &input, limits);
        let shown = String::from_utf8_lossy(&input);
        assert_eq!(e.kind, kind, "{shown}");
        assert_eq!(e.condition(), condition, "{shown}");
        assert_eq!(e.condition().as_str(), wire, "{shown}");
        assert!(e.to_string().contains(wire), "{e} names {wire}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// (c) Generated documents.

/// Local names: ASCII, with every NameChar class, and non-ASCII start and continuation characters.
const LOCALS: &[&str] = &[
    "a", "b", "body", "x-y", "_u", "n.1", "é", "名前", "Ωm", "x·y", "message", "stream",
];
const PREFIXES: &[&str] = &["p", "q", "ns", "é", "stream"];
/// Raw (escaped) namespace names; a small pool so that distinct prefixes often share a name.
const URIS: &[&str] = &[
    "urn:a",
    "urn:b",
    "jabber:client",
    "http://etherx.jabber.org/streams",
    "urn:x?a=1&amp;b=2",
    "urn:&#233;t&#xE9;",
];
/// Pieces of character data: plain, non-ASCII, references, CDATA, white space and line ends, and the
/// characters that only sometimes need escaping.
const TEXT: &[&str] = &[
    "hi",
    "word ",
    "é",
    "日本語",
    "😀",
    "&lt;",
    "&gt;",
    "&amp;",
    "&apos;",
    "&quot;",
    "&#65;",
    "&#x1F600;",
    "&#xE9;",
    "&#13;",
    "&#10;",
    "<![CDATA[a<b&c]]>",
    "<![CDATA[]]>",
    "<![CDATA[]]]>",
    "<![CDATA[ é\r\n]]>",
    " ",
    "\n",
    "\t",
    "\r\n",
    "\r",
    ">",
    "]",
    "'",
    "\"",
];
/// Pieces of attribute values; `Q` stands for the quote that does not delimit the value.
const VALUE: &[&str] = &[
    "v",
    "é",
    "日本",
    "&lt;",
    "&gt;",
    "&amp;",
    "&apos;",
    "&quot;",
    ">",
    "&#9;",
    "&#10;",
    "&#13;",
    "&#x1F600;",
    "\t",
    "\n",
    "\r\n",
    " ",
    "Q",
];
/// Bytes a mutation inserts: markup characters, bytes that break UTF-8, and controls.
const INTERESTING: &[u8] = b"<>&'\"/:=!?]; \x00\x01\xC3\xA9\xFF\xEF";

#[derive(Debug, Clone)]
struct GenElem {
    prefix: Option<usize>,
    local: usize,
    /// Whether the element declares its own prefix (when it has one); without it the prefix is often
    /// unbound, which is one of the ways a generated document is invalid.
    declare_own: bool,
    /// `(prefix or default, uri or empty)`.
    decls: Vec<(Option<usize>, Option<usize>)>,
    /// `(prefix, local, declare the prefix here, value pieces)`.
    attrs: Vec<(Option<usize>, usize, bool, Vec<usize>)>,
    children: Vec<GenNode>,
    self_close: bool,
    double_quotes: bool,
}

#[derive(Debug, Clone)]
enum GenNode {
    Elem(GenElem),
    Text(Vec<usize>),
}

fn gen_prefix() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![3 => Just(None), 2 => (0..PREFIXES.len()).prop_map(Some)]
}

fn gen_tree() -> impl Strategy<Value = GenElem> {
    let text = prop::collection::vec(0..TEXT.len(), 1..6).prop_map(GenNode::Text);
    let leaf = gen_elem(Just(Vec::new()).boxed());
    leaf.prop_recursive(4, 32, 4, move |inner| {
        let child = prop_oneof![inner.prop_map(GenNode::Elem), text.clone()];
        gen_elem(prop::collection::vec(child, 0..5).boxed())
    })
}

fn gen_elem(children: BoxedStrategy<Vec<GenNode>>) -> BoxedStrategy<GenElem> {
    let decl = (
        prop::option::of(0..PREFIXES.len()),
        prop::option::weighted(0.9, 0..URIS.len()),
    );
    let attr = (
        gen_prefix(),
        0..LOCALS.len(),
        prop::bool::weighted(0.9),
        prop::collection::vec(0..VALUE.len(), 0..5),
    );
    (
        gen_prefix(),
        0..LOCALS.len(),
        prop::bool::weighted(0.9),
        prop::collection::vec(decl, 0..3),
        prop::collection::vec(attr, 0..4),
        children,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(prefix, local, declare_own, decls, attrs, children, self_close, double_quotes)| {
                GenElem {
                    prefix,
                    local,
                    declare_own,
                    decls,
                    attrs,
                    children,
                    self_close,
                    double_quotes,
                }
            },
        )
        .boxed()
}

fn qname(prefix: Option<usize>, local: usize) -> String {
    match prefix {
        Some(p) => format!("{}:{}", PREFIXES[p], LOCALS[local]),
        None => LOCALS[local].to_string(),
    }
}

fn write_elem(e: &GenElem, out: &mut String) {
    let q = if e.double_quotes { '"' } else { '\'' };
    let other = if e.double_quotes { "'" } else { "\"" };
    let name = qname(e.prefix, e.local);
    out.push('<');
    out.push_str(&name);
    // Attribute names are written once each (a duplicate as written is too easy a refusal to be
    // interesting); duplicates after namespace expansion are left in.
    let mut written: Vec<String> = Vec::new();
    let mut put = |out: &mut String, n: String, v: String| {
        if !written.contains(&n) {
            out.push_str(&format!(" {n}={q}{v}{q}"));
            written.push(n);
        }
    };
    let decl_name = |p: Option<usize>| match p {
        Some(p) => format!("xmlns:{}", PREFIXES[p]),
        None => "xmlns".to_string(),
    };
    if let (Some(p), true) = (e.prefix, e.declare_own) {
        put(out, decl_name(Some(p)), URIS[p % URIS.len()].to_string());
    }
    for (p, u) in &e.decls {
        put(
            out,
            decl_name(*p),
            u.map_or(String::new(), |u| URIS[u].into()),
        );
    }
    for (p, local, declare, _) in &e.attrs {
        if let (Some(p), true) = (p, declare) {
            put(out, decl_name(Some(*p)), URIS[(p + 1) % URIS.len()].into());
        }
        let _ = local;
    }
    for (p, local, _, value) in &e.attrs {
        let v: String = value
            .iter()
            .map(|&i| if VALUE[i] == "Q" { other } else { VALUE[i] })
            .collect();
        put(out, qname(*p, *local), v);
    }
    if e.children.is_empty() && e.self_close {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for c in &e.children {
        match c {
            GenNode::Elem(child) => write_elem(child, out),
            GenNode::Text(pieces) => pieces.iter().for_each(|&i| out.push_str(TEXT[i])),
        }
    }
    out.push_str(&format!("</{name}>"));
}

const DECLS: &[&str] = &[
    "",
    "",
    "<?xml version='1.0'?>",
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
    "\u{FEFF}<?xml version='1.0' encoding='utf-8' standalone='no'?>",
    "\u{FEFF}",
];
const GAPS: &[&str] = &["", " ", "\n", "\r\n", "\t \n"];

/// `(byte index, operation, byte)`: 0 flips a bit of the byte at the index, 1 inserts a byte, 2 deletes.
type Mutation = (prop::sample::Index, u8, u8);

fn gen_mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let byte = prop_oneof![prop::sample::select(INTERESTING), any::<u8>()];
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, byte), 1..4),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for (at, op, b) in mutations {
        if bytes.is_empty() {
            break;
        }
        let i = at.index(bytes.len());
        match op {
            0 => bytes[i] ^= 1 << (b % 8),
            1 => bytes.insert(i, *b),
            _ => {
                bytes.remove(i);
            }
        }
    }
    bytes
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: std::env::var("XML_DIFF_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs the differential check on a generated input; refusals and acceptances both count, and how many of
/// each is returned so that the generator can be seen to produce both.
fn check_generated(mode: Mode, input: &[u8]) -> Result<bool, TestCaseError> {
    match differential(mode, input) {
        Ok(Agreement::Accepted(_)) => Ok(true),
        Ok(Agreement::XmlRsLenient(e, why)) => {
            // Each leniency is a well-formedness rule xml-rs skips, so our refusal must say so.
            prop_assert_eq!(e.condition(), StreamCondition::NotWellFormed, "{}", why);
            Ok(false)
        }
        Ok(_) => Ok(false),
        Err(why) => Err(TestCaseError::fail(format!(
            "{why}\n input {:?}",
            String::from_utf8_lossy(input)
        ))),
    }
}

#[test]
fn generated_documents_agree_with_xml_rs() {
    let strategy = (0..DECLS.len(), gen_tree(), 0..GAPS.len(), gen_mutations());
    let accepted = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    runner()
        .run(&strategy, |(decl, root, gap, mutations)| {
            let mut doc = DECLS[decl].to_string();
            doc.push_str(GAPS[gap]);
            write_elem(&root, &mut doc);
            doc.push_str(GAPS[gap]);
            let input = mutate(doc.into_bytes(), &mutations);
            let ok = check_generated(Mode::Document, &input)?;
            let counter = if ok { &accepted } else { &refused };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap();
    // Both outcomes must be exercised, or the property says little.
    assert!(
        accepted.get() >= 32 && refused.get() >= 32,
        "accepted {}, refused {}",
        accepted.get(),
        refused.get()
    );
}

#[test]
fn generated_streams_agree_with_xml_rs() {
    let strategy = (
        0..DECLS.len(),
        prop::collection::vec((gen_tree(), 0..GAPS.len()), 0..5),
        gen_mutations(),
    );
    let accepted = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    runner()
        .run(&strategy, |(decl, stanzas, mutations)| {
            let mut doc = DECLS[decl].to_string();
            doc.push_str(HEADER);
            for (stanza, gap) in &stanzas {
                doc.push_str(GAPS[*gap]);
                write_elem(stanza, &mut doc);
            }
            doc.push_str("</stream:stream>");
            let input = mutate(doc.into_bytes(), &mutations);
            let ok = check_generated(Mode::Stream, &input)?;
            let counter = if ok { &accepted } else { &refused };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap();
    assert!(
        accepted.get() >= 32 && refused.get() >= 32,
        "accepted {}, refused {}",
        accepted.get(),
        refused.get()
    );
}

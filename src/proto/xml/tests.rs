//! Unit tests of the stream parser and the forwarding writer. Every case runs on its input whole and cut
//! into 1, 2, 5 and 10 byte pieces, and all five runs must give the same events or the same error.

use super::*;
use bytes::{Bytes, BytesMut};

const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";

/// A comparable summary of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Decl(XmlDecl),
    Open(StreamHeader),
    Stanza(String),
    Close,
}

fn summarize(ev: Event) -> Ev {
    match ev {
        Event::Declaration(d) => Ev::Decl(d),
        Event::StreamOpen(h) => Ev::Open(h),
        Event::Stanza(s) => Ev::Stanza(String::from_utf8(s.as_bytes().to_vec()).unwrap()),
        Event::StreamClose => Ev::Close,
    }
}

fn run_pieces(mut p: StreamParser, input: &[u8], piece: usize) -> (Vec<Ev>, Option<XmlError>) {
    let mut events = Vec::new();
    for chunk in input.chunks(piece.max(1)) {
        let mut rest = chunk;
        loop {
            let n = p.feed(rest);
            rest = &rest[n..];
            loop {
                match p.next_event() {
                    Ok(Some(ev)) => events.push(summarize(ev)),
                    Ok(None) => break,
                    Err(e) => return (events, Some(e)),
                }
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    (events, None)
}

/// Runs `input` whole and in 1, 2, 5 and 10 byte pieces; all must agree; returns the events and error.
fn run_all(make: impl Fn() -> StreamParser, input: &[u8]) -> (Vec<Ev>, Option<XmlError>) {
    let whole = run_pieces(make(), input, input.len());
    for piece in [1, 2, 5, 10] {
        let cut = run_pieces(make(), input, piece);
        assert_eq!(
            cut.0,
            whole.0,
            "events differ at piece size {piece} for {:?}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(
            cut.1.map(|e| e.kind),
            whole.1.map(|e| e.kind),
            "errors differ at piece size {piece} for {:?}",
            String::from_utf8_lossy(input)
        );
    }
    whole
}

fn stream(input: &str) -> (Vec<Ev>, Option<XmlError>) {
    run_all(|| StreamParser::new(Limits::default()), input.as_bytes())
}

fn stanzas(input: &str) -> Vec<String> {
    let (events, err) = stream(&format!("{HEADER}{input}"));
    assert_eq!(err, None, "{input}");
    events
        .into_iter()
        .filter_map(|e| match e {
            Ev::Stanza(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn refused(input: &str) -> XmlErrorKind {
    let (_, err) = stream(&format!("{HEADER}{input}"));
    err.unwrap_or_else(|| panic!("accepted: {input}")).kind
}

fn first_stanza(body: &str) -> Stanza {
    let mut p = StreamParser::new(Limits::default());
    p.feed(HEADER.as_bytes());
    p.feed(body.as_bytes());
    assert!(matches!(p.next_event(), Ok(Some(Event::StreamOpen(_)))));
    match p.next_event() {
        Ok(Some(Event::Stanza(s))) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_whole_stream_yields_declaration_header_stanzas_and_close() {
    let input = format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n{HEADER}\n  <message to='a@b'><body>x &amp; y</body></message> <presence/>\n<iq type='get' id='1'><q xmlns='jabber:iq:roster'/></iq></stream:stream>"
    );
    let (events, err) = stream(&input);
    assert_eq!(err, None);
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(
        matches!(&events[0], Ev::Decl(d) if d.version == "1.0" && d.encoding.as_deref() == Some("UTF-8"))
    );
    let Ev::Open(h) = &events[1] else { panic!() };
    assert!(h.is_xmpp_stream());
    assert_eq!(h.to(), Some("example.org"));
    assert_eq!(h.default_ns(), Some("jabber:client"));
    assert_eq!(
        events[2],
        Ev::Stanza("<message to='a@b'><body>x &amp; y</body></message>".into())
    );
    assert_eq!(events[3], Ev::Stanza("<presence/>".into()));
    assert_eq!(events[5], Ev::Close);
}

#[test]
fn header_values_are_extracted_without_a_tree() {
    let s = first_stanza(
        "<message xml:lang='en' type=\"chat\" id='m&amp;1' to='romeo@example.net/orchard' from='juliet@example.com/balcony'><body/></message>",
    );
    assert_eq!(s.kind(), StanzaKind::Message);
    assert_eq!(s.name(), "message");
    assert_eq!(s.namespace().as_deref(), Some("jabber:client"));
    assert_eq!(s.to().as_deref(), Some("romeo@example.net/orchard"));
    assert_eq!(s.from().as_deref(), Some("juliet@example.com/balcony"));
    assert_eq!(s.type_().as_deref(), Some("chat"));
    assert_eq!(s.id().as_deref(), Some("m&1"));
    assert_eq!(s.lang().as_deref(), Some("en"));
    assert!(matches!(s.to(), Some(std::borrow::Cow::Borrowed(_))));
}

#[test]
fn nonzas_and_prefixed_elements_resolve_their_namespace() {
    let s = first_stanza("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(
        s.namespace().as_deref(),
        Some("urn:ietf:params:xml:ns:xmpp-tls")
    );
    assert_eq!(s.kind(), StanzaKind::Other);
    let s = first_stanza(
        "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>",
    );
    assert_eq!(s.prefix(), Some("stream"));
    assert_eq!(s.local_name(), "features");
    assert_eq!(s.namespace().as_deref(), Some(NS_STREAMS));
}

#[test]
fn well_formed_content_is_accepted() {
    let ok = [
        "<a/>",
        "<a></a>",
        "<a b='1' c=\"2\"/>",
        "<a  b = '1'\n\tc='2' ></a >",
        "<a>text &lt;&gt;&amp;&apos;&quot; &#65;&#x1F600;&#0000065;</a>",
        "<a><![CDATA[ <not markup> & ]] ]> ]]></a>",
        "<a>]]</a>",
        "<a>] ]></a>",
        "<a>caf\u{e9} \u{1F600} \u{4e2d}\u{6587}</a>",
        "<\u{e9}l\u{e9}ment \u{e9}='\u{e9}'/>",
        "<p:a xmlns:p='urn:p' p:x='1' x='2'/>",
        "<a xmlns:p='urn:p' xmlns:q='urn:q' p:x='1' q:x='2'/>",
        "<a xml:lang='fr'/>",
        "<a xmlns=''><b/></a>",
        "<a xmlns:xml='http://www.w3.org/XML/1998/namespace'/>",
        "<a b='x\ty\nz\r\n'/>",
        "<a>\r\n</a>",
        "<a b='&#60;'/>",
        "<a><b><c><d/></c></b></a>",
    ];
    for input in ok {
        assert_eq!(stanzas(input).len(), 1, "{input}");
    }
}

#[test]
fn malformed_input_is_not_well_formed() {
    use Malformed::*;
    let cases: &[(&str, Malformed)] = &[
        ("<a></b>", MismatchedEndTag),
        ("<a></ab>", MismatchedEndTag),
        ("<ab></a>", MismatchedEndTag),
        ("<a><b></a></b>", MismatchedEndTag),
        ("<1a/>", UnexpectedByte),
        ("< a/>", UnexpectedByte),
        ("<a b='1'c='2'/>", UnexpectedByte),
        ("<a b=1/>", UnexpectedByte),
        ("<a b/>", UnexpectedByte),
        ("<a b='<'/>", UnexpectedByte),
        ("<a b='1' b='2'/>", DuplicateAttribute),
        (
            "<a xmlns:p='u' xmlns:q='u' p:x='1' q:x='2'/>",
            DuplicateAttribute,
        ),
        ("<p:a/>", UnboundPrefix),
        ("<a p:b='1'/>", UnboundPrefix),
        ("<a xmlns:p=''/>", ReservedNamespace),
        ("<a xmlns:xml='urn:x'/>", ReservedNamespace),
        ("<a xmlns:xmlns='urn:x'/>", ReservedNamespace),
        (
            "<a xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
            ReservedNamespace,
        ),
        ("<xmlns:a/>", ReservedNamespace),
        ("<a:b:c xmlns:a='u'/>", InvalidName),
        ("<a: xmlns:a='u'/>", InvalidName),
        ("<a>&#0;</a>", BadReference),
        ("<a>&#xD800;</a>", BadReference),
        ("<a>&#x110000;</a>", BadReference),
        ("<a>&#99999999999999999999;</a>", BadReference),
        ("<a>& b</a>", BadReference),
        ("<a>&amp</a>", BadReference),
        ("<a>&#x;</a>", BadReference),
        ("<a>]]></a>", CdataEndInText),
        ("<a>\u{1}</a>", IllegalChar),
        ("<a b='\u{1}'/>", IllegalChar),
        ("<a>\u{FFFE}</a>", IllegalChar),
        ("<a>\u{FFFF}</a>", IllegalChar),
        ("<a/ >", UnexpectedByte),
        ("<a><!x></a>", UnexpectedByte),
        ("<a><![CDAT[x]]></a>", UnexpectedByte),
    ];
    for (input, why) in cases {
        assert_eq!(refused(input), XmlErrorKind::NotWellFormed(*why), "{input}");
    }
}

#[test]
fn invalid_utf8_is_not_well_formed() {
    let cases: &[&[u8]] = &[
        b"<a>\xC0\x80</a>",
        b"<a>\xED\xA0\x80</a>",
        b"<a>\xF5\x80\x80\x80</a>",
        b"<a>\xE2\x82</a>",
        b"<a b='\xFF'/>",
        b"<\xC3\x28/>",
        b"<a>\x80</a>",
    ];
    for input in cases {
        let mut bytes = HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(input);
        let (_, err) = run_all(|| StreamParser::new(Limits::default()), &bytes);
        let kind = err.expect("refused").kind;
        assert!(
            matches!(
                kind,
                XmlErrorKind::NotWellFormed(Malformed::InvalidUtf8 | Malformed::InvalidName)
            ),
            "{input:?}: {kind:?}"
        );
        assert_eq!(err.unwrap().condition(), StreamCondition::NotWellFormed);
    }
}

#[test]
fn restricted_xml_is_refused() {
    use Restricted::*;
    let cases: &[(&str, Restricted)] = &[
        ("<a><!-- c --></a>", Comment),
        ("<!-- c -->", Comment),
        ("<a><?pi x?></a>", ProcessingInstruction),
        ("<?pi x?>", ProcessingInstruction),
        ("<a>&nbsp;</a>", EntityReference),
        ("<a b='&foo;'/>", EntityReference),
        ("<a>&ampx;</a>", EntityReference),
        ("<a>&\u{e9};</a>", EntityReference),
    ];
    for (input, why) in cases {
        let kind = refused(input);
        assert_eq!(kind, XmlErrorKind::RestrictedXml(*why), "{input}");
    }
    let (_, err) = stream(&format!("<!DOCTYPE stream>{HEADER}"));
    assert_eq!(err.unwrap().kind, XmlErrorKind::RestrictedXml(Doctype));
    assert_eq!(err.unwrap().condition(), StreamCondition::RestrictedXml);
    // A declaration anywhere but at the very start is not well-formed rather than a forbidden PI
    // (XML 1.0 §2.6 reserves the target `xml`).
    let (_, err) = stream(&format!("\n<?xml version='1.0'?>{HEADER}"));
    assert_eq!(
        err.unwrap().kind,
        XmlErrorKind::NotWellFormed(Malformed::BadDeclaration)
    );
    let (_, err) = stream(&format!("<?xml-stylesheet href='a'?>{HEADER}"));
    assert_eq!(
        err.unwrap().kind,
        XmlErrorKind::RestrictedXml(ProcessingInstruction)
    );
}

#[test]
fn stream_level_text_is_bad_format() {
    let kind = refused("<a/>hello<b/>");
    assert_eq!(kind, XmlErrorKind::BadFormat(BadFormat::TextAtStreamLevel));
    let kind = refused("&amp;");
    assert_eq!(kind, XmlErrorKind::BadFormat(BadFormat::TextAtStreamLevel));
    // Whitespace keepalives are fine.
    assert_eq!(stanzas(" \n\t\r <a/> \n ").len(), 1);
}

#[test]
fn the_stream_root_must_be_in_the_streams_namespace() {
    let (_, err) = stream("<stream:stream xmlns:stream='urn:wrong' xmlns='jabber:client'>");
    assert_eq!(err.unwrap().kind, XmlErrorKind::InvalidNamespace);
    assert_eq!(err.unwrap().condition(), StreamCondition::InvalidNamespace);
    let (_, err) = stream("<stream xmlns='jabber:client'>");
    assert_eq!(err.unwrap().condition(), StreamCondition::InvalidNamespace);
    let (_, err) = stream("<stream:stream xmlns='jabber:client'>");
    assert_eq!(
        err.unwrap().kind,
        XmlErrorKind::NotWellFormed(Malformed::UnboundPrefix)
    );
}

#[test]
fn xml_declaration_variants() {
    let ok = [
        "<?xml version='1.0'?>",
        "<?xml version=\"1.0\" encoding=\"utf-8\" standalone='yes'?>",
        "\u{feff}<?xml version='1.0'?>",
        "\u{feff}",
        "<?xml version = '1.1' ?>",
    ];
    for decl in ok {
        let (events, err) = stream(&format!("{decl}{HEADER}"));
        assert_eq!(err, None, "{decl}");
        assert!(events.iter().any(|e| matches!(e, Ev::Open(_))));
    }
    let (_, err) = stream(&format!(
        "<?xml version='1.0' encoding='ISO-8859-1'?>{HEADER}"
    ));
    assert_eq!(
        err.unwrap().condition(),
        StreamCondition::UnsupportedEncoding
    );
    for bad in [
        "<?xml?>",
        "<?xml encoding='UTF-8'?>",
        "<?xml version='2.0'?>",
        "<?xml version='1.0'encoding='UTF-8'?>",
        "<?xml version='1.0' standalone='maybe'?>",
        "<?xml version='1.0' foo='bar'?>",
    ] {
        let (_, err) = stream(&format!("{bad}{HEADER}"));
        assert!(err.is_some(), "{bad}");
    }
}

#[test]
fn junk_after_the_stream_is_refused() {
    let (events, err) = stream(&format!("{HEADER}<a/></stream:stream> <b/>"));
    assert_eq!(events.last(), Some(&Ev::Close));
    assert_eq!(
        err.unwrap().kind,
        XmlErrorKind::NotWellFormed(Malformed::JunkAfterRoot)
    );
    let (_, err) = stream(&format!("{HEADER}</stream:streamx>"));
    assert_eq!(
        err.unwrap().kind,
        XmlErrorKind::NotWellFormed(Malformed::MismatchedEndTag)
    );
    let (_, err) = stream("</stream:stream>");
    assert!(err.is_some());
}

#[test]
fn a_self_closed_stream_opens_and_closes() {
    let (events, err) = stream("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>");
    assert_eq!(err, None);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1], Ev::Close);
}

#[test]
fn limits_are_policy_violations() {
    let small = Limits {
        max_stanza_bytes: 150,
        max_depth: 4,
        max_attrs: 4,
        max_ns_decls: 4,
    };
    let check = |input: String, limit: LimitKind| {
        let (_, err) = run_all(
            || StreamParser::new(small),
            format!("{HEADER}{input}").as_bytes(),
        );
        let err = err.unwrap_or_else(|| panic!("accepted {input}"));
        assert_eq!(err.kind, XmlErrorKind::LimitExceeded(limit), "{input}");
        assert_eq!(err.condition(), StreamCondition::PolicyViolation);
    };
    check(format!("<a>{}</a>", "x".repeat(200)), LimitKind::StanzaSize);
    check(
        format!("<a b='{}'/>", "x".repeat(200)),
        LimitKind::StanzaSize,
    );
    check("<a><b><c><d/></c></b></a>".into(), LimitKind::Depth);
    check(
        "<a b='1' c='2' d='3' e='4' f='5'/>".into(),
        LimitKind::Attributes,
    );
    check(
        "<a xmlns:a='1' xmlns:b='2' xmlns:c='3'/>".into(),
        LimitKind::NamespaceDeclarations,
    );
    // At the limits, accepted.
    let (_, err) = run_all(
        || StreamParser::new(small),
        format!("{HEADER}<a><b><c/></b></a><a b='1' c='2' d='3' e='4'/><a xmlns:a='1' xmlns:b='2'/><a>{}</a>", "x".repeat(143)).as_bytes(),
    );
    assert_eq!(err, None);
}

#[test]
fn memory_stays_bounded_whatever_is_fed() {
    let limits = Limits {
        max_stanza_bytes: 4096,
        ..Limits::default()
    };
    let mut p = StreamParser::new(limits);
    p.feed(HEADER.as_bytes());
    assert!(p.next_event().unwrap().is_some());
    // A peer that never closes its element: the parser refuses once the limit is passed.
    let chunk = [b'x'; 1000];
    p.feed(b"<message><body>");
    let mut refused = None;
    for _ in 0..100 {
        let n = p.feed(&chunk);
        assert!(p.buffered() <= limits.max_stanza_bytes + READ_SLACK_FOR_TESTS);
        if let Err(e) = p.next_event() {
            refused = Some(e);
            break;
        }
        assert!(n > 0);
    }
    assert_eq!(
        refused.unwrap().condition(),
        StreamCondition::PolicyViolation
    );
    // Many small stanzas offered at once are taken only as room allows.
    let mut p = StreamParser::new(limits);
    let mut many = HEADER.as_bytes().to_vec();
    for _ in 0..10_000 {
        many.extend_from_slice(b"<presence/>");
    }
    let taken = p.feed(&many);
    assert!(taken < many.len());
    assert!(p.buffered() <= limits.max_stanza_bytes + READ_SLACK_FOR_TESTS);
}

const READ_SLACK_FOR_TESTS: usize = 16 * 1024;

#[test]
fn finish_reports_truncated_documents() {
    let mut p = StreamParser::new(Limits::default());
    p.feed(HEADER.as_bytes());
    p.feed(b"<message>");
    while let Ok(Some(_)) = p.next_event() {}
    assert_eq!(
        p.finish().unwrap_err().kind,
        XmlErrorKind::NotWellFormed(Malformed::UnexpectedEof)
    );

    let mut p = StreamParser::document(Limits::default());
    p.feed(b"<a>x</a>  ");
    assert!(matches!(p.next_event(), Ok(Some(Event::Stanza(_)))));
    assert!(matches!(p.next_event(), Ok(None)));
    assert!(p.finish().is_ok());
}

#[test]
fn document_mode_takes_one_root() {
    let doc = |input: &str| {
        run_all(
            || StreamParser::document(Limits::default()),
            input.as_bytes(),
        )
    };
    let (events, err) = doc("<?xml version='1.0'?><a xmlns='urn:a'><b/></a>\n");
    assert_eq!(err, None);
    assert_eq!(events.len(), 2);
    let (_, err) = doc("<a/><b/>");
    assert_eq!(
        err.unwrap().kind,
        XmlErrorKind::NotWellFormed(Malformed::JunkAfterRoot)
    );
    let (_, err) = doc("<a/>x");
    assert_eq!(
        err.unwrap().kind,
        XmlErrorKind::NotWellFormed(Malformed::JunkAfterRoot)
    );
    let (_, err) = doc("x<a/>");
    assert_eq!(
        err.unwrap().kind,
        XmlErrorKind::NotWellFormed(Malformed::UnexpectedByte)
    );
    let (_, err) = doc("<![CDATA[x]]><a/>");
    assert_eq!(
        err.unwrap().kind,
        XmlErrorKind::NotWellFormed(Malformed::MisplacedCdata)
    );
    assert!(parse_element(b"<a>", &Limits::default()).is_err());
    assert!(parse_element(b"", &Limits::default()).is_err());
}

#[test]
fn restart_keeps_unparsed_bytes() {
    let mut p = StreamParser::new(Limits::default());
    p.feed(HEADER.as_bytes());
    p.feed(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>");
    p.feed(HEADER.as_bytes());
    assert!(matches!(p.next_event(), Ok(Some(Event::StreamOpen(_)))));
    assert!(matches!(p.next_event(), Ok(Some(Event::Stanza(_)))));
    p.reset();
    assert!(matches!(p.next_event(), Ok(Some(Event::StreamOpen(_)))));
    assert!(matches!(p.next_event(), Ok(None)));
    p.feed(b"<presence/>");
    p.reset();
    assert_eq!(&p.take_unparsed()[..], b"<presence/>");
}

#[test]
fn error_offsets_point_into_the_stream() {
    let input = format!("{HEADER}<a/><b></c>");
    let (_, err) = stream(&input);
    let offset = err.unwrap().offset as usize;
    assert!(
        offset >= HEADER.len() + 4 && offset <= input.len(),
        "{offset}"
    );
}

// ---- the forwarding writer ----

fn written(body: &str, target: &TargetStream<'_>, from: Option<&str>, to: Option<&str>) -> String {
    let s = first_stanza(body);
    let mut out = Vec::new();
    s.write_to(&mut out, target, from, to);
    String::from_utf8(out).unwrap()
}

#[test]
fn writer_stamps_from_in_place_or_adds_it() {
    assert_eq!(
        written(
            "<message to='b@x'><body>hi</body></message>",
            &TargetStream::CLIENT,
            Some("a@x/r"),
            None
        ),
        "<message from='a@x/r' to='b@x'><body>hi</body></message>"
    );
    assert_eq!(
        written(
            "<message from='forged@evil' to='b@x'/>",
            &TargetStream::CLIENT,
            Some("a@x/r'&"),
            None
        ),
        "<message from='a@x/r&apos;&amp;' to='b@x'/>"
    );
    assert_eq!(
        written(
            "<iq to=\"b@x\" id='1' from=\"c\"/>",
            &TargetStream::CLIENT,
            Some("a@x"),
            Some("d@x")
        ),
        "<iq to=\"d@x\" id='1' from=\"a@x\"/>"
    );
    // Untouched when nothing is asked.
    let body = "<message to='b@x' xml:lang='en'><body>caf\u{e9} &amp;</body></message>";
    assert_eq!(written(body, &TargetStream::CLIENT, None, None), body);
}

#[test]
fn writer_maps_content_namespaces_for_s2s() {
    // Inherited jabber:client becomes jabber:server by the target stream's default.
    assert_eq!(
        written(
            "<message to='b@y'><body>hi</body></message>",
            &TargetStream::SERVER,
            Some("a@x/r"),
            None
        ),
        "<message from='a@x/r' to='b@y'><body>hi</body></message>"
    );
    // An explicit content namespace is rewritten on the top element only.
    assert_eq!(
        written(
            "<message xmlns='jabber:client' to='b@y'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'/></forwarded></message>",
            &TargetStream::SERVER,
            None,
            None
        ),
        "<message xmlns='jabber:server' to='b@y'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'/></forwarded></message>"
    );
}

#[test]
fn writer_declares_stream_level_prefixes_the_target_lacks() {
    let header = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' xmlns:ext='urn:example:ext'>";
    let mut p = StreamParser::new(Limits::default());
    p.feed(header.as_bytes());
    p.feed(b"<message to='b@x'><ext:data ext:v='1'>x</ext:data></message><stream:features/>");
    assert!(matches!(p.next_event(), Ok(Some(Event::StreamOpen(_)))));
    let Ok(Some(Event::Stanza(s))) = p.next_event() else {
        panic!()
    };
    let mut out = Vec::new();
    s.write_to(&mut out, &TargetStream::CLIENT, Some("a@x"), None);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        "<message xmlns:ext='urn:example:ext' from='a@x' to='b@x'><ext:data ext:v='1'>x</ext:data></message>"
    );
    // The rewrite stands alone: it parses as a document with the same meaning.
    let alone = Element::parse(&out).unwrap();
    assert_eq!(alone.attr("xmlns:ext"), Some("urn:example:ext"));
    assert_eq!(alone.attr("from"), Some("a@x"));
    assert_eq!(
        alone
            .path(&[PathItem::Elem("ext:data"), PathItem::Attr("ext:v")])
            .as_str(),
        "1"
    );
    // A stream prefix the target binds the same way needs nothing.
    let Ok(Some(Event::Stanza(f))) = p.next_event() else {
        panic!()
    };
    let mut out = Vec::new();
    f.write_to(&mut out, &TargetStream::CLIENT, None, None);
    assert_eq!(out, b"<stream:features/>");
    // Written to a stream with another default namespace, the inherited default is declared.
    let mut out = Vec::new();
    let component = TargetStream {
        default_ns: "urn:other",
        prefixes: &[],
    };
    s.write_to(&mut out, &component, None, None);
    assert!(
        String::from_utf8(out)
            .unwrap()
            .starts_with("<message xmlns='jabber:client' xmlns:ext='urn:example:ext'")
    );
}

// ---- the owned tree ----

#[test]
fn owned_trees_decode_text_attributes_and_cdata() {
    let s = first_stanza(
        "<message to='a&amp;b' x='l1\r\nl2\tz'><body>x &lt; y\r\nz<![CDATA[<raw> & \r\n]]>!</body><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'><p>a<br/>b</p></body></html></message>",
    );
    let el = s.to_element();
    assert_eq!(el.name, "message");
    assert_eq!(el.attr("to"), Some("a&b"));
    assert_eq!(el.attr("x"), Some("l1 l2 z"));
    // The inherited default namespace is written on the root, so the tree stands alone.
    assert_eq!(el.attr("xmlns"), Some("jabber:client"));
    assert_eq!(el.child("body").unwrap().text(), "x < y\nz<raw> & \n!");
    let p = el.path(&[
        PathItem::Elem("html"),
        PathItem::Elem("body"),
        PathItem::Elem("p"),
    ]);
    let PathValue::Element(p) = p else {
        panic!("{p:?}")
    };
    assert_eq!(p.children.len(), 3);
    assert_eq!(p.text(), "ab");
    // Serialising and parsing again gives the same tree.
    assert_eq!(Element::parse(&el.to_xml_string()).unwrap(), el);
}

#[test]
fn owned_trees_keep_a_root_declaration_over_the_inherited_one() {
    let s = first_stanza("<stream:features xmlns='urn:x'><a/></stream:features>");
    let el = s.to_element();
    assert_eq!(el.attr("xmlns"), Some("urn:x"));
    assert_eq!(el.attr("xmlns:stream"), Some(NS_STREAMS));
    assert_eq!(el.attrs.len(), 2);
    assert_eq!(el.child_elements().count(), 1);
}

#[test]
fn the_guide_example_round_trips() {
    let text =
        "<message to='test@conference.example.org' type='groupchat'><body>test</body></message>";
    let el = Element::parse(text).unwrap();
    let built = Element::new("message")
        .with_attr("to", "test@conference.example.org")
        .with_attr("type", "groupchat")
        .with_child(Element::new("body").with_text("test"));
    assert_eq!(el, built);
    assert_eq!(el.to_xml_string(), text);
    assert_eq!(
        el.path(&[PathItem::Elem("body"), PathItem::Cdata]).as_str(),
        "test"
    );
    assert_eq!(el.path(&[PathItem::Attr("type")]).as_str(), "groupchat");
    assert_eq!(el.path(&[PathItem::Attr("id")]).as_str(), "");
    assert_eq!(remove_text(&el.children).len(), 1);
    assert_eq!(attr_of_s(&el.attrs, "to"), "test@conference.example.org");
    assert_eq!(escape("<'&'>"), "&lt;&apos;&amp;&apos;&gt;");
}

/// What routing reads of a stanza, to compare two parses of the same bytes.
fn routing_view(s: &Stanza) -> Vec<Option<String>> {
    vec![
        Some(s.name().to_string()),
        s.namespace().map(|v| v.into_owned()),
        s.to().map(|v| v.into_owned()),
        s.from().map(|v| v.into_owned()),
        s.type_().map(|v| v.into_owned()),
        s.id().map(|v| v.into_owned()),
        s.lang().map(|v| v.into_owned()),
        Some(format!("{:?}", s.kind())),
        Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
    ]
}

#[test]
fn a_trusted_stanza_reads_as_a_full_parse_of_the_same_bytes() {
    let limits = Limits::default();
    for xml in [
        "<message xmlns='jabber:client' to='a@x/r' from='b@x/s' type='chat' id='m1' \
         xml:lang='en'><body>hi &amp; bye</body><x xmlns='urn:y'><z/></x></message>",
        "<presence xmlns='jabber:server' from='b@x/s'/>",
        "<presence xmlns='jabber:client' from='b@x/s' type='unavailable'></presence>",
        "<cl:iq xmlns:cl='jabber:client' to='x' type='get' id='1'><q xmlns='jabber:iq:version'/></cl:iq>",
        "<message xmlns='jabber:client' to='a&apos;b@x'><body>\u{e9}t\u{e9}</body></message>",
    ] {
        let full = parse_element(xml.as_bytes(), &limits).unwrap();
        let head = parse_trusted(Bytes::from(xml), &limits).unwrap();
        assert_eq!(routing_view(&head), routing_view(&full), "{xml}");
        // Written into a stream the same way, byte for byte.
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        full.write_to(&mut a, &TargetStream::CLIENT, Some("z@x/w"), None);
        head.write_to(&mut b, &TargetStream::CLIENT, Some("z@x/w"), None);
        assert_eq!(a, b, "{xml}");
    }
}

#[test]
fn a_trusted_stanza_that_does_not_end_where_its_bytes_do_is_refused() {
    let limits = Limits::default();
    for xml in [
        "<message xmlns='jabber:client' to='a@x'><body>hi</body>",
        "<message xmlns='jabber:client' to='a@x'><body>hi</body></messag>",
        "<message xmlns='jabber:client' to='a@x'><body>hi</body></message><message>",
        "<message xmlns='jabber:client' to='a@x'/><message/>",
        "<message xmlns='jabber:client' to='a@x'",
        "<message xmlns='jabber:client' to='a@x' to='b@x'></message>",
        "<p:message to='a@x'></p:message>",
        "",
        "not xml",
    ] {
        assert!(
            parse_trusted(Bytes::from(xml), &limits).is_err(),
            "accepted: {xml}"
        );
    }
}

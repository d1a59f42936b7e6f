//! Fuzz target for the stanza engine's stream parser. It owns four properties: no input panics the parser;
//! the parser's buffer never outgrows the stanza limit plus one read's slack; cutting the input into
//! pieces never changes the events or the error; and a document the parser accepts is accepted by xml-rs,
//! the reference, too (rjabberd refuses more, per RFC 6120 §11, never less).
//!
//! The first input byte picks the piece size and the mode; the rest is the XML.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rjabberd::proto::xml::{Event, Limits, StreamParser, XmlError};

/// Small limits so the memory bound is tight and the limit paths are reached often.
const LIMITS: Limits = Limits {
    max_stanza_bytes: 4096,
    max_depth: 16,
    max_attrs: 16,
    max_ns_decls: 8,
};

/// The most a parser may hold beyond the stanza limit: one read's worth of slack.
const SLACK: usize = 16 * 1024 + 64;

#[derive(Debug, PartialEq)]
enum Seen {
    Decl(String, Option<String>),
    Open(Vec<(String, String)>),
    Stanza(Vec<u8>, String, Option<String>, Option<String>, Option<String>),
    Close,
}

fn summary(e: Event) -> Seen {
    match e {
        Event::Declaration(d) => Seen::Decl(d.version.clone(), d.encoding.clone()),
        Event::StreamOpen(h) => Seen::Open(h.attrs),
        Event::Stanza(s) => Seen::Stanza(
            s.as_bytes().to_vec(),
            s.name().to_string(),
            s.namespace().map(|n| n.into_owned()),
            s.to().map(|n| n.into_owned()),
            s.id().map(|n| n.into_owned()),
        ),
        Event::StreamClose => Seen::Close,
    }
}

fn run(document: bool, input: &[u8], piece: usize) -> Result<Vec<Seen>, XmlError> {
    let mut p = if document {
        StreamParser::document(LIMITS)
    } else {
        StreamParser::new(LIMITS)
    };
    let mut out = Vec::new();
    for chunk in input.chunks(piece) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let n = p.feed(rest);
            rest = &rest[n..];
            assert!(
                p.buffered() <= LIMITS.max_stanza_bytes + SLACK,
                "parser holds {} bytes",
                p.buffered()
            );
            while let Some(e) = p.next_event()? {
                out.push(summary(e));
            }
            if n == 0 && p.room() == 0 {
                // A full buffer with no event would be a livelock; the parser must have failed instead.
                panic!("no room and no progress");
            }
        }
    }
    p.finish()?;
    Ok(out)
}

fn xmlrs_accepts(input: &[u8]) -> bool {
    let mut config = xml::reader::ParserConfig::new();
    config.trim_whitespace = false;
    config.whitespace_to_characters = true;
    config.coalesce_characters = true;
    config.ignore_comments = false;
    config.allow_multiple_root_elements = false;
    let mut reader = config.create_reader(input);
    loop {
        match reader.next() {
            Ok(xml::reader::XmlEvent::EndDocument) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let document = control & 0x80 != 0;
    let piece = match control & 0x0f {
        0 => 1460,
        n => n as usize,
    };
    let whole = run(document, input, input.len().max(1));
    let pieces = run(document, input, piece);
    assert_eq!(whole, pieces, "piece size {piece} changes the outcome");
    if document && whole.is_ok() {
        // xml-rs 1.x refuses any element named `xml:…`, which Namespaces in XML allows; and it applies
        // XML 1.1's rules to a document declaring version 1.1, which rjabberd reads as XML 1.0 (XMPP is
        // XML 1.0, and XML 1.0 §2.8 has a 1.0 processor read any 1.x document as 1.0). Skip those.
        let xml_prefixed_element = input.windows(5).any(|w| w == b"<xml:" || w == b"/xml:");
        let declares_other_version = matches!(&whole, Ok(seen) if seen.iter().any(
            |s| matches!(s, Seen::Decl(v, _) if v != "1.0")
        ));
        if !xml_prefixed_element && !declares_other_version {
            assert!(xmlrs_accepts(input), "rjabberd accepts what xml-rs refuses");
        }
    }
});

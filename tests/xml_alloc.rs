//! Allocation accounting for the stanza engine's hot path. This file owns the evidence that framing a
//! stanza, extracting its header and writing it out with a new `from` (to a client stream and, rewritten
//! to `jabber:server`, to a server stream) allocate nothing per stanza once the buffers have grown to the
//! traffic's size. A counting global allocator sees every allocation of the process, so this file holds
//! exactly one test: nothing else may run beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rjabberd::proto::xml::{Event, Limits, StreamParser, TargetStream};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The part of a recorded stream after its header: the stanzas, in the order a client sent them.
fn stanzas_of(corpus: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(format!(
        "{}/tests/corpus/{corpus}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("corpus file");
    let body_start = text.find("<stream:stream").expect("stream header");
    let body_start = body_start + text[body_start..].find('>').unwrap() + 1;
    let body_end = text.rfind("</stream:stream>").unwrap_or(text.len());
    text.as_bytes()[body_start..body_end].to_vec()
}

/// What the work loop saw, so the optimiser cannot drop the work and the test can check it happened.
#[derive(Default)]
struct Seen {
    stanzas: u64,
    header_bytes: u64,
    written: u64,
    borrowed_headers: u64,
}

fn note_len(len: &mut u64, v: Option<Cow<'_, str>>) -> bool {
    match v {
        Some(Cow::Borrowed(s)) => {
            *len += s.len() as u64;
            true
        }
        Some(Cow::Owned(s)) => {
            *len += s.len() as u64;
            false
        }
        None => true,
    }
}

/// Feeds `bytes` in 1460-byte pieces (one TCP segment's payload) and does for each stanza what the router
/// does: read the header, then write it out twice with `from` stamped.
fn pump(
    parser: &mut StreamParser,
    bytes: &[u8],
    client_out: &mut Vec<u8>,
    server_out: &mut Vec<u8>,
    seen: &mut Seen,
) {
    for piece in bytes.chunks(1460) {
        let mut rest = piece;
        while !rest.is_empty() {
            let n = parser.feed(rest);
            rest = &rest[n..];
            while let Some(event) = parser.next_event().expect("corpus is valid") {
                let Event::Stanza(stanza) = event else {
                    continue;
                };
                seen.stanzas += 1;
                let mut len = 0;
                let mut borrowed = note_len(&mut len, stanza.to());
                borrowed &= note_len(&mut len, stanza.from());
                borrowed &= note_len(&mut len, stanza.type_());
                borrowed &= note_len(&mut len, stanza.id());
                borrowed &= note_len(&mut len, stanza.lang());
                len +=
                    stanza.name().len() as u64 + stanza.namespace().map_or(0, |n| n.len() as u64);
                seen.header_bytes += len;
                seen.borrowed_headers += u64::from(borrowed);
                client_out.clear();
                stanza.write_to(
                    client_out,
                    &TargetStream::CLIENT,
                    Some("juliet@example.org/balcony"),
                    None,
                );
                server_out.clear();
                stanza.write_to(
                    server_out,
                    &TargetStream::SERVER,
                    Some("juliet@example.org/balcony"),
                    Some("romeo@example.net"),
                );
                seen.written += (client_out.len() + server_out.len()) as u64;
            }
        }
    }
}

#[test]
fn framing_header_extraction_and_forwarding_allocate_nothing_per_stanza() {
    let header =
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
                   to='example.org' version='1.0'>";
    for corpus in ["chat.xml", "muc_presence.xml", "roster.xml", "xhtml_im.xml"] {
        let body = stanzas_of(corpus);
        let mut parser = StreamParser::new(Limits::default());
        parser.feed(header);
        assert!(matches!(
            parser.next_event(),
            Ok(Some(Event::StreamOpen(_)))
        ));
        let mut client_out = Vec::with_capacity(64 * 1024);
        let mut server_out = Vec::with_capacity(64 * 1024);

        // Warm-up: the buffers grow to the traffic's largest stanza and lay of the pieces.
        let mut warm = Seen::default();
        pump(
            &mut parser,
            &body,
            &mut client_out,
            &mut server_out,
            &mut warm,
        );

        let mut seen = Seen::default();
        ALLOCATIONS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            pump(
                &mut parser,
                &body,
                &mut client_out,
                &mut server_out,
                &mut seen,
            );
        }
        COUNTING.store(false, Ordering::SeqCst);
        let allocations = ALLOCATIONS.load(Ordering::SeqCst);

        assert!(
            seen.stanzas >= 200,
            "{corpus}: only {} stanzas",
            seen.stanzas
        );
        assert_eq!(
            seen.stanzas,
            3 * warm.stanzas,
            "{corpus}: every pass sees the same stanzas"
        );
        assert!(seen.header_bytes > 0 && seen.written > 0);
        // A header value with a character reference is unescaped into a new string, by design; those
        // stanzas may allocate once each, and every other stanza must not allocate at all.
        let escaped = seen.stanzas - seen.borrowed_headers;
        assert!(
            allocations <= escaped,
            "{corpus}: {allocations} allocations over {} stanzas ({escaped} with escaped header values)",
            seen.stanzas
        );
        eprintln!(
            "{corpus}: {} stanzas, {allocations} allocations ({escaped} stanzas with escaped header values)",
            seen.stanzas
        );
    }
}

//! Fuzz target for the reading of stanzas another cluster host sent (`parse_trusted`,
//! docs/cluster-protocol.md §7.1), which reads only the root's start tag. It owns two properties: no
//! input panics it, and whatever it accepts that the full parser also accepts reads the same to routing
//! (name, namespace, addresses, type, id, language, kind) and keeps the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rjabberd::proto::xml::{Limits, Stanza, parse_element, parse_trusted};

fn view(s: &Stanza) -> Vec<Option<String>> {
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

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(head) = parse_trusted(Bytes::copy_from_slice(data), &limits) else {
        return;
    };
    if let Ok(full) = parse_element(data, &limits) {
        assert_eq!(view(&head), view(&full));
    }
});

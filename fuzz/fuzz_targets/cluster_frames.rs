//! Fuzz target for the cluster protocol's frame codec and handshake (docs/cluster-protocol.md). It owns
//! four properties: no input panics the frame reader, the decoder or an accepting handshake; cutting the
//! input into pieces never changes the frames or the error; a body the decoder accepts is the canonical
//! encoding of what it decoded (encode(decode(body)) == body), so two implementations cannot read one
//! frame two ways; and the reader holds at most one frame's bytes.
//!
//! The first input byte picks the piece size; the rest is the byte stream.
#![no_main]

use std::time::Instant;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rjabberd::proto::cluster::handshake::{Acceptor, Identity, Secret};
use rjabberd::proto::cluster::wire::{Frame, FrameReader, MAX_FRAME, RawFrame, WireError};

fn frames(data: &[u8], piece: usize) -> (Vec<RawFrame>, Option<WireError>) {
    let mut reader = FrameReader::new();
    let mut out = Vec::new();
    for chunk in data.chunks(piece) {
        reader.feed(chunk);
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        assert!(reader.buffered() <= MAX_FRAME + 4 + piece);
    }
    (out, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let piece = [1, 2, 5, 10, 4096][first as usize % 5];
    let (whole, whole_err) = frames(data, data.len().max(1));
    let (cut, cut_err) = frames(data, piece);
    assert_eq!(whole, cut, "pieces changed the frames");
    assert_eq!(whole_err, cut_err, "pieces changed the error");

    for raw in &whole {
        if let Ok(frame) = Frame::decode(raw) {
            assert_eq!(frame.kind(), raw.kind);
            if !matches!(frame, Frame::Optional { .. }) {
                assert_eq!(frame.body(), raw.body, "not the canonical encoding");
            }
            let mut again = BytesMut::new();
            frame.encode(&mut again);
            assert_eq!(&again[5..], &raw.body[..]);
        }
    }

    let me = Identity {
        cluster: "fuzz".into(),
        node: "n0".into(),
        incarnation: 1,
        shards: 2,
    };
    let secret = Secret::from_file_contents(&[b'k'; 32]).expect("a long enough secret");
    let mut acceptor = Acceptor::new(me, secret, [0; 32], None, Instant::now());
    for raw in &whole {
        if acceptor.on_frame(raw, |_| 3).is_err() {
            break;
        }
    }
});

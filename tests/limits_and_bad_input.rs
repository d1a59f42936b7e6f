//! Bad input and limits, black-box: each class of malformed or hostile input closes only the offending
//! connection with the right stream error, while another user's session keeps working; the stanza size
//! limit; a reader too slow to drain its output queue is disconnected without pinning memory. With 1 and
//! 2 shards.

mod common;

use std::time::Duration;

use common::{Client, SHARDS, TestServer};

fn still_works(a: &mut Client, b: &mut Client, tag: &str) {
    let to = b.jid.clone();
    a.send(&format!(
        "<message to='{to}' id='{tag}'><body>still here</body></message>"
    ));
    let m = b.el();
    assert_eq!(m.attr("id"), Some(tag), "{m}");
}

#[test]
fn each_class_of_bad_input_closes_only_its_connection() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "[limits]\nmax_stanza_bytes = 4096\n");
        server.add_user("victim@localhost", "pw");
        server.add_user("friend@localhost", "pw");
        server.add_user("mallory@localhost", "pw");
        let mut victim = Client::login(&server, "victim@localhost", "pw", "r");
        let mut friend = Client::login(&server, "friend@localhost", "pw", "r");
        let cases: &[(&str, &str)] = &[
            ("<message><body>a</wrong></message>", "not-well-formed"),
            ("<message><body>\u{1}</body></message>", "not-well-formed"),
            (
                "<message to='a@localhost' to='b@localhost'/>",
                "not-well-formed",
            ),
            ("<p:message/>", "not-well-formed"),
            ("<message><!-- hi --></message>", "restricted-xml"),
            ("<message><?pi x?></message>", "restricted-xml"),
            ("<message>&ent;</message>", "restricted-xml"),
            ("text at stream level", "bad-format"),
            ("<stream:features/>", "unsupported-stanza-type"),
            (
                "<message from='victim@localhost/r' to='friend@localhost'/>",
                "invalid-from",
            ),
        ];
        for (i, (input, condition)) in cases.iter().enumerate() {
            let mut mallory = Client::login(&server, "mallory@localhost", "pw", "m");
            mallory.send(input);
            assert_eq!(
                mallory.stream_error().as_deref(),
                Some(*condition),
                "{input}"
            );
            still_works(&mut victim, &mut friend, &format!("c{i}"));
            still_works(&mut friend, &mut victim, &format!("d{i}"));
        }
        // Over the stanza size limit: policy-violation.
        let mut mallory = Client::login(&server, "mallory@localhost", "pw", "m");
        let big = format!(
            "<message to='friend@localhost/r'><body>{}</body></message>",
            "x".repeat(5000)
        );
        mallory.send(&big);
        assert_eq!(mallory.stream_error().as_deref(), Some("policy-violation"));
        // Invalid UTF-8 inside TLS.
        let mut mallory = Client::login(&server, "mallory@localhost", "pw", "m");
        let _ = mallory.send_raw(b"<message><body>\xff\xfe</body></message>");
        assert_eq!(mallory.stream_error().as_deref(), Some("not-well-formed"));
        // Garbage where TLS was promised ends the connection without touching anyone.
        {
            use std::io::{Read, Write};
            let mut raw = std::net::TcpStream::connect(server.direct).unwrap();
            raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            raw.write_all(b"this is not a TLS ClientHello at all, not even close...........")
                .unwrap();
            let mut sink = Vec::new();
            // The server answers with a TLS alert, if anything, and closes.
            assert!(
                raw.read_to_end(&mut sink).is_ok(),
                "the connection is closed, not left hanging"
            );
            assert!(sink.len() < 64, "only an alert: {sink:?}");
        }
        still_works(&mut victim, &mut friend, "end");
    }
}

#[test]
fn a_slow_reader_is_disconnected_and_others_continue() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "[limits]\nmax_output_queue_bytes = 65536\n");
        server.add_user("slow@localhost", "pw");
        server.add_user("fast@localhost", "pw");
        server.add_user("peer@localhost", "pw");
        let slow = Client::login(&server, "slow@localhost", "pw", "r");
        let mut fast = Client::login(&server, "fast@localhost", "pw", "r");
        let mut peer = Client::login(&server, "peer@localhost", "pw", "r");
        // `slow` never reads; `fast` sends it far more than socket buffers and the queue cap hold.
        let body = "y".repeat(4000);
        let mut cut_off = false;
        for i in 0..3000 {
            fast.send(&format!(
                "<message to='slow@localhost/r' id='f{i}'><body>{body}</body></message>"
            ));
            if i % 100 == 99 {
                // Once slow is gone, messages to its resource bounce to the sender.
                let got = fast.drain(Duration::from_millis(1));
                if got
                    .iter()
                    .any(|g| matches!(g, common::Got::El(e) if e.attr("type") == Some("error")))
                {
                    cut_off = true;
                    break;
                }
            }
        }
        assert!(cut_off, "the slow reader was never disconnected");
        still_works(&mut fast, &mut peer, "after");
        drop(slow);
    }
}

#[test]
fn the_connection_cap_per_shard_refuses_more() {
    let server = TestServer::start(1, "[limits]\nmax_connections_per_shard = 3\n");
    server.add_user("a@localhost", "pw");
    let mut a = Client::login(&server, "a@localhost", "pw", "r");
    let _b = Client::connect(server.starttls, server.cert_path());
    let _c = Client::connect(server.starttls, server.cert_path());
    std::thread::sleep(Duration::from_millis(200));
    // The fourth is refused at once with `resource-constraint`.
    let mut d = Client::connect(server.starttls, server.cert_path());
    d.send(&common::header("localhost"));
    assert_eq!(d.stream_error().as_deref(), Some("resource-constraint"));
    // Existing sessions are untouched.
    a.send("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
    assert_eq!(a.el().attr("type"), Some("result"));
}

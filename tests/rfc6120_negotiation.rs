//! RFC 6120 over real TCP: stream headers and their errors, STARTTLS and direct TLS, every SASL mechanism
//! (with both channel-binding types for -PLUS) and SASL failure, resource binding and its conflicts, the
//! legacy session IQ, the closing handshake, and whitespace keepalives. Every case runs with 1 and 2 shards.

mod common;

use std::time::Duration;

use common::{Client, Got, SHARDS, TestServer, header};

#[test]
fn starttls_then_every_mechanism() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("juliet@localhost", "pencil");
        let cases: &[(&str, Option<&str>)] = &[
            ("PLAIN", None),
            ("SCRAM-SHA-1", None),
            ("SCRAM-SHA-256", None),
            ("SCRAM-SHA-1-PLUS", Some("tls-exporter")),
            ("SCRAM-SHA-256-PLUS", Some("tls-exporter")),
            ("SCRAM-SHA-256-PLUS", Some("tls-server-end-point")),
        ];
        for (mechanism, cb) in cases {
            let mut c = Client::connect(server.starttls, server.cert_path());
            let f = c.open("localhost");
            let tls = f.child("starttls").expect("STARTTLS offered");
            assert!(
                tls.child("required").is_some(),
                "TLS required by default: {f}"
            );
            assert!(f.child("mechanisms").is_none(), "no SASL before TLS: {f}");
            c.starttls();
            let f = c.open("localhost");
            assert!(f.child("starttls").is_none());
            let mechs = c.mechanisms();
            assert!(
                mechs.iter().any(|m| m == mechanism),
                "{mechanism} offered: {f}"
            );
            let cb_types: Vec<String> = f
                .child("sasl-channel-binding")
                .map(|s| {
                    s.child_elements()
                        .map(|c| c.attr_s("type").to_string())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(cb_types, ["tls-exporter", "tls-server-end-point"], "{f}");
            let r = c.sasl(mechanism, "juliet", "pencil", *cb);
            assert_eq!(r.name, "success", "{mechanism} {cb:?}: {r}");
            let f = c.restart("localhost");
            assert!(
                f.child("bind").is_some() && f.child("session").is_some(),
                "{f}"
            );
            let b = c.bind(Some("balcony"));
            assert_eq!(b.attr("type"), Some("result"), "{b}");
            assert_eq!(c.jid, "juliet@localhost/balcony");
            // The legacy session IQ is answered.
            c.send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
            let s = c.el();
            assert_eq!(
                (s.attr("type"), s.attr("id")),
                (Some("result"), Some("s1")),
                "{s}"
            );
            // Whitespace keepalives are ignored; the closing handshake is answered.
            c.send("   \n  ");
            c.send("</stream:stream>");
            assert!(matches!(c.next(), Got::Close));
        }
    }
}

#[test]
fn direct_tls_with_alpn() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("romeo@localhost", "secret");
        let mut c = Client::connect_direct(server.direct, server.cert_path());
        let f = c.open("localhost");
        assert!(f.child("starttls").is_none(), "{f}");
        let r = c.sasl(
            "SCRAM-SHA-256-PLUS",
            "romeo",
            "secret",
            Some("tls-exporter"),
        );
        assert_eq!(r.name, "success", "{r}");
        c.restart("localhost");
        assert_eq!(c.bind(None).attr("type"), Some("result"));
        assert!(
            c.jid.starts_with("romeo@localhost/") && c.jid.len() > "romeo@localhost/".len(),
            "{}",
            c.jid
        );
    }
}

#[test]
fn sasl_failures() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "[limits]\nmax_sasl_failures = 3\n");
        server.add_user("juliet@localhost", "pencil");
        // Before TLS, with TLS required.
        let mut c = Client::connect(server.starttls, server.cert_path());
        c.open("localhost");
        let r = c.sasl("PLAIN", "juliet", "pencil", None);
        assert!(
            r.name == "failure" && r.child("encryption-required").is_some(),
            "{r}"
        );

        let mut c = Client::connect(server.starttls, server.cert_path());
        c.open("localhost");
        c.starttls();
        c.open("localhost");
        let r = c.sasl("SCRAM-SHA-256", "juliet", "wrong", None);
        assert!(r.child("not-authorized").is_some(), "{r}");
        c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>");
        let r = c.el();
        assert!(r.child("invalid-mechanism").is_some(), "{r}");
        c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'/>");
        assert_eq!(c.el().name, "challenge");
        c.send("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        let r = c.el();
        assert!(r.child("aborted").is_some(), "{r}");
        c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>bm9wZQ==</auth>");
        let r = c.el();
        assert!(r.child("malformed-request").is_some(), "{r}");
        // The third failure (abort does not count) reaches the cap of 3.
        assert_eq!(c.stream_error().as_deref(), Some("policy-violation"));

        // Unknown user: the same not-authorized as a wrong password.
        let mut c = Client::connect_direct(server.direct, server.cert_path());
        c.open("localhost");
        let r = c.sasl("SCRAM-SHA-1", "nobody", "pencil", None);
        assert!(r.child("not-authorized").is_some(), "{r}");
        let r = c.sasl("PLAIN", "nobody", "pencil", None);
        assert!(r.child("not-authorized").is_some(), "{r}");
    }
}

#[test]
fn stream_header_errors() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let cases = [
            (header("nowhere.example"), "host-unknown"),
            (
                "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>".to_string(),
                "invalid-namespace",
            ),
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>".to_string(),
                "unsupported-version",
            ),
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='urn:not-streams' to='localhost' version='1.0'>".to_string(),
                "invalid-namespace",
            ),
            ("<?xml version='1.0' encoding='ISO-8859-1'?>".to_string(), "unsupported-encoding"),
            ("<!DOCTYPE x>".to_string(), "restricted-xml"),
            ("<stream:stream>".to_string(), "not-well-formed"),
        ];
        for (input, condition) in cases {
            let mut c = Client::connect(server.starttls, server.cert_path());
            c.send(&input);
            assert_eq!(c.stream_error().as_deref(), Some(condition), "{input}");
        }
        // The second host is served and named in the reply.
        let mut c = Client::connect(server.starttls, server.cert_path());
        c.send(&header("example.net"));
        match c.next() {
            Got::Header(attrs) => {
                assert!(attrs.iter().any(|(k, v)| k == "from" && v == "example.net"))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn bind_conflict_and_session_cap() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "[limits]\nmax_sessions_per_user = 2\n");
        server.add_user("juliet@localhost", "pencil");
        let mut first = Client::login(&server, "juliet@localhost", "pencil", "balcony");
        // The same full JID again: the new session wins, the old one gets `conflict`.
        let mut second = Client::login(&server, "juliet@localhost", "pencil", "balcony");
        assert_eq!(first.stream_error().as_deref(), Some("conflict"));
        let _third = Client::login(&server, "juliet@localhost", "pencil", "garden");
        // A third resource exceeds the cap of 2.
        let (local, host) = ("juliet", "localhost");
        let mut c = Client::connect(server.starttls, server.cert_path());
        c.open(host);
        c.starttls();
        c.open(host);
        assert_eq!(c.sasl("SCRAM-SHA-1", local, "pencil", None).name, "success");
        c.restart(host);
        let b = c.bind(Some("orchard"));
        assert_eq!(b.attr("type"), Some("error"), "{b}");
        assert!(
            b.child("error")
                .and_then(|e| e.child("resource-constraint"))
                .is_some(),
            "{b}"
        );
        // The replacing session works.
        second.send(
            "<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
        );
        assert_eq!(second.el().attr("type"), Some("result"));
    }
}

#[test]
fn stanzas_before_authentication_are_refused() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        let mut c = Client::connect_direct(server.direct, server.cert_path());
        c.open("localhost");
        c.send("<message to='juliet@localhost'><body>hi</body></message>");
        assert_eq!(c.stream_error().as_deref(), Some("not-authorized"));
    }
}

#[test]
fn unauthenticated_connections_time_out() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "[limits]\nauth_timeout_secs = 1\n");
        let mut c = Client::connect(server.starttls, server.cert_path());
        c.open("localhost");
        let started = std::time::Instant::now();
        assert_eq!(c.stream_error().as_deref(), Some("connection-timeout"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn tls_1_2_and_1_3_with_channel_binding() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("juliet@localhost", "pencil");
        static ONLY_12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        for (versions, expected) in [
            (&ONLY_12[..], rustls::ProtocolVersion::TLSv1_2),
            (&ONLY_13[..], rustls::ProtocolVersion::TLSv1_3),
        ] {
            common::TLS_VERSIONS.with(|v| v.set(versions));
            for cb in ["tls-exporter", "tls-server-end-point"] {
                let mut c = Client::connect(server.starttls, server.cert_path());
                c.open("localhost");
                c.starttls();
                c.open("localhost");
                assert_eq!(c.tls_version(), Some(expected));
                let r = c.sasl("SCRAM-SHA-256-PLUS", "juliet", "pencil", Some(cb));
                assert_eq!(r.name, "success", "{expected:?} {cb}: {r}");
            }
        }
        common::TLS_VERSIONS.with(|v| v.set(rustls::DEFAULT_VERSIONS));
    }
}

#[test]
fn each_host_has_its_certificate_chosen_by_sni() {
    for shards in SHARDS {
        // A certificate for example.org made outside the server, configured for that host only.
        let dir =
            std::env::temp_dir().join(format!("rjabberd-sni-{}-{shards}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["example.org".to_string()]).unwrap();
        let (crt, key) = (dir.join("net.crt"), dir.join("net.key"));
        std::fs::write(&crt, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let server = TestServer::start(
            shards,
            &format!(
                "[[host]]\nname = \"example.org\"\ncertificate = \"{}\"\nkey = \"{}\"\n",
                crt.display(),
                key.display()
            ),
        );
        server.add_user("romeo@example.org", "pw");
        // SNI example.org: the configured certificate (trusted from its own file) is presented.
        common::SNI.with(|s| *s.borrow_mut() = "example.org".into());
        let mut c = Client::connect_direct(server.direct, crt.clone());
        c.open("example.org");
        assert_eq!(
            c.sasl(
                "SCRAM-SHA-1-PLUS",
                "romeo",
                "pw",
                Some("tls-server-end-point")
            )
            .name,
            "success"
        );
        common::SNI.with(|s| *s.borrow_mut() = "localhost".into());
        // SNI localhost: the generated one.
        let mut c = Client::connect_direct(server.direct, server.cert_path());
        c.open("localhost");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `[auth] mechanisms` decides what `<mechanisms/>` lists, in its order, and what `<auth/>` accepts.
#[test]
fn configured_mechanisms_are_offered_and_no_others() {
    for shards in SHARDS {
        let server = TestServer::start(
            shards,
            "[auth]\nmechanisms = [\"SCRAM-SHA-1-PLUS\", \"SCRAM-SHA-1\", \"PLAIN\"]\n",
        );
        server.add_user("juliet@localhost", "pencil");
        let connect = || {
            let mut c = Client::connect(server.starttls, server.cert_path());
            c.open("localhost");
            c.starttls();
            let f = c.open("localhost");
            (c, f)
        };
        let (c, f) = connect();
        assert_eq!(
            c.mechanisms(),
            ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "PLAIN"],
            "{f}"
        );
        assert!(f.child("sasl-channel-binding").is_some(), "{f}");
        for refused in ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"] {
            let (mut c, _) = connect();
            let r = c.sasl(refused, "juliet", "pencil", None);
            assert_eq!(
                (r.name.as_str(), r.child("invalid-mechanism").is_some()),
                ("failure", true),
                "{refused}: {r}"
            );
        }
        for (mechanism, cb) in [
            ("SCRAM-SHA-1-PLUS", Some("tls-exporter")),
            ("SCRAM-SHA-1", None),
            ("PLAIN", None),
        ] {
            let (mut c, _) = connect();
            let r = c.sasl(mechanism, "juliet", "pencil", cb);
            assert_eq!(r.name, "success", "{mechanism}: {r}");
        }
    }
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(
    configured_mechanisms_are_offered_and_no_others,
    starttls_then_every_mechanism,
    sasl_failures,
    bind_conflict_and_session_cap,
);

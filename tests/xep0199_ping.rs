//! XEP-0199 ping over real TCP, with 1 and 2 shards: the server answers pings to itself and to an
//! account's bare JID (online or not); a ping to a full JID is passed through to that client, whose
//! answer comes back; `set` is refused.

mod common;

use common::{Client, SHARDS, TestServer, error_condition};

const PING: &str = "<ping xmlns='urn:xmpp:ping'/>";

#[test]
fn server_bare_and_full_jid_pings() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("alice@localhost", "pw");
        server.add_user("bob@localhost", "pw");
        server.add_user("carol@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        let mut bob = Client::login(&server, "bob@localhost", "pw", "desk");

        let r = alice.iq(Some("localhost"), "get", PING);
        assert_eq!(
            (r.attr("type"), r.attr("from"), r.attr("to")),
            (Some("result"), Some("localhost"), Some("alice@localhost/r"))
        );
        for to in ["bob@localhost", "carol@localhost"] {
            let r = alice.iq(Some(to), "get", PING);
            assert_eq!(
                (r.attr("type"), r.attr("from")),
                (Some("result"), Some(to)),
                "{r}"
            );
        }
        // To a full JID: the client gets it and answers.
        alice.send(&format!(
            "<iq to='bob@localhost/desk' type='get' id='p1'>{PING}</iq>"
        ));
        let got = bob.el();
        assert_eq!(got.attr("from"), Some("alice@localhost/r"));
        assert!(got.child("ping").is_some());
        bob.send("<iq to='alice@localhost/r' type='result' id='p1'/>");
        let r = alice.answer("p1");
        assert_eq!(
            (r.attr("type"), r.attr("from")),
            (Some("result"), Some("bob@localhost/desk"))
        );

        let r = alice.iq(Some("localhost"), "set", PING);
        assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
        // A ping to an account that does not exist.
        let r = alice.iq(Some("nobody@localhost"), "get", PING);
        assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    }
}

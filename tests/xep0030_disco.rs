//! XEP-0030 service discovery over real TCP, with 1 and 2 shards: the server's identity and the features
//! the enabled modules registered (and only those), an account's identity and features, services and
//! components as the server's items, an unknown node, and `set` refused.

mod common;

use common::{Client, SHARDS, TestServer, error_condition};
use rjabberd::proto::xml::Element;

const INFO: &str = "<query xmlns='http://jabber.org/protocol/disco#info'/>";
const ITEMS: &str = "<query xmlns='http://jabber.org/protocol/disco#items'/>";

fn features(r: &Element) -> Vec<String> {
    r.child("query")
        .expect("a query")
        .child_elements()
        .filter(|f| f.name == "feature")
        .map(|f| f.attr_s("var").to_string())
        .collect()
}

#[test]
fn server_and_account_info_and_items() {
    for shards in SHARDS {
        // The embedded default module set, plus the echo service.
        let server = TestServer::start(
            shards,
            "[modules]\nmod_disco = true\nmod_ping = true\nmod_version = true\nmod_echo = true\n\
             mod_vcard = true\n",
        );
        server.add_user("alice@localhost", "pw");
        server.add_user("bob@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");

        let r = alice.iq(Some("localhost"), "get", INFO);
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        let q = r.child("query").unwrap();
        let id = q.child("identity").expect("an identity");
        assert_eq!(
            (id.attr("category"), id.attr("type")),
            (Some("server"), Some("im"))
        );
        let f = features(&r);
        for want in [
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items",
            "urn:xmpp:ping",
            "jabber:iq:version",
            "vcard-temp",
        ] {
            assert!(f.contains(&want.to_string()), "{want} missing from {f:?}");
        }
        // Modules that are not enabled are not advertised.
        for absent in ["urn:xmpp:time", "jabber:iq:last", "ejabberd:cputime"] {
            assert!(!f.contains(&absent.to_string()), "{absent} in {f:?}");
        }

        let r = alice.iq(Some("localhost"), "get", ITEMS);
        let items: Vec<&str> = r
            .child("query")
            .unwrap()
            .child_elements()
            .map(|i| i.attr_s("jid"))
            .collect();
        assert_eq!(items, vec!["echo.localhost"]);

        // An account (offline bob, and alice herself without `to`).
        for to in [Some("bob@localhost"), None] {
            let r = alice.iq(to, "get", INFO);
            assert_eq!(r.attr("type"), Some("result"), "{r}");
            let id = r.child("query").unwrap().child("identity").unwrap();
            assert_eq!(
                (id.attr("category"), id.attr("type")),
                (Some("account"), Some("registered"))
            );
            let f = features(&r);
            assert!(f.contains(&"vcard-temp".to_string()), "{f:?}");
            assert!(f.contains(&"urn:xmpp:ping".to_string()), "{f:?}");
        }
        let r = alice.iq(Some("bob@localhost"), "get", ITEMS);
        assert_eq!(r.attr("type"), Some("result"));

        // Unknown node; set.
        let r = alice.iq(
            Some("localhost"),
            "get",
            "<query xmlns='http://jabber.org/protocol/disco#info' node='nope'/>",
        );
        assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
        let r = alice.iq(Some("localhost"), "set", INFO);
        assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
    }
}

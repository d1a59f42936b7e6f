//! XEP-0157 contact addresses over real TCP, with 1 and 2 shards: the configured addresses appear in the
//! server's disco#info as a `http://jabber.org/network/serverinfo` form, and only on the host that
//! configured them.

mod common;

use common::{Client, SHARDS, TestServer};

#[test]
fn contact_addresses_in_disco_info() {
    for shards in SHARDS {
        let server = TestServer::start(
            shards,
            "[modules]\nmod_disco = true\n\
             [host.modules.mod_server_info]\nabuse = [\"mailto:abuse@@HOST@\", \"xmpp:abuse@@HOST@\"]\n\
             admin = [\"xmpp:admin@@HOST@\"]\n",
        );
        server.add_user("a@localhost", "pw");
        server.add_user("b@example.net", "pw");
        let q = "<query xmlns='http://jabber.org/protocol/disco#info'/>";
        let mut b = Client::login(&server, "b@example.net", "pw", "r");
        let r = b.iq(Some("example.net"), "get", q);
        let form = r
            .child("query")
            .unwrap()
            .child("x")
            .expect("a serverinfo form");
        assert_eq!(form.attr("xmlns"), Some("jabber:x:data"));
        let fields: Vec<(String, Vec<String>)> = form
            .child_elements()
            .map(|f| {
                (
                    f.attr_s("var").to_string(),
                    f.child_elements().map(|v| v.text()).collect(),
                )
            })
            .collect();
        assert_eq!(
            fields,
            vec![
                (
                    "FORM_TYPE".into(),
                    vec!["http://jabber.org/network/serverinfo".into()]
                ),
                (
                    "abuse-addresses".into(),
                    vec![
                        "mailto:abuse@example.net".into(),
                        "xmpp:abuse@example.net".into()
                    ]
                ),
                (
                    "admin-addresses".into(),
                    vec!["xmpp:admin@example.net".into()]
                ),
            ]
        );
        let mut a = Client::login(&server, "a@localhost", "pw", "r");
        let r = a.iq(Some("localhost"), "get", q);
        assert!(r.child("query").unwrap().child("x").is_none(), "{r}");
    }
}

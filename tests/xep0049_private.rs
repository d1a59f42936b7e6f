//! XEP-0049 private XML storage over real TCP, with 1 and 2 shards: store and read back (prefixed
//! namespaces too), an element never stored read back as asked, several at once, another account's
//! storage (`forbidden`), reserved namespaces and an empty query (`not-acceptable`), the quota.

mod common;

use common::{Client, SHARDS, TestServer, error_condition};

#[test]
fn store_and_retrieve() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "[modules.mod_private]\nmax_size = 2048\n");
        server.add_user("alice@localhost", "pw");
        server.add_user("bob@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        let r = alice.iq(
            None,
            "set",
            "<query xmlns='jabber:iq:private'><exodus:prefs xmlns:exodus='exodus:prefs'>\
             <defaultnick>Hamlet</defaultnick></exodus:prefs><storage xmlns='storage:bookmarks'>\
             <conference jid='x@conf.example'/></storage></query>",
        );
        assert_eq!(r.attr("type"), Some("result"), "{r}");

        let r = alice.iq(
            Some("alice@localhost"),
            "get",
            "<query xmlns='jabber:iq:private'><prefs xmlns='exodus:prefs'/></query>",
        );
        let q = r.child("query").expect("a query");
        let prefs = q.child_elements().next().expect("the stored element");
        assert_eq!(prefs.child("defaultnick").unwrap().text(), "Hamlet", "{r}");

        let r = alice.iq(
            None,
            "get",
            "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/><never xmlns='urn:never'/></query>",
        );
        let kids: Vec<_> = r
            .child("query")
            .unwrap()
            .child_elements()
            .cloned()
            .collect();
        assert_eq!(kids.len(), 2);
        assert!(kids[0].child("conference").is_some(), "{r}");
        assert_eq!(
            (kids[1].name.as_str(), kids[1].child_elements().count()),
            ("never", 0)
        );

        let mut bob = Client::login(&server, "bob@localhost", "pw", "r");
        let r = bob.iq(
            Some("alice@localhost"),
            "get",
            "<query xmlns='jabber:iq:private'><prefs xmlns='exodus:prefs'/></query>",
        );
        assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
        for bad in [
            "<query xmlns='jabber:iq:private'/>",
            "<query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query>",
            "<query xmlns='jabber:iq:private'><x/></query>",
        ] {
            let r = bob.iq(None, "set", bad);
            assert_eq!(
                error_condition(&r).as_deref(),
                Some("not-acceptable"),
                "{bad}"
            );
        }
        let big = format!(
            "<query xmlns='jabber:iq:private'><big xmlns='urn:big'>{}</big></query>",
            "y".repeat(3000)
        );
        let r = bob.iq(None, "set", &big);
        assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
    }
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(store_and_retrieve,);

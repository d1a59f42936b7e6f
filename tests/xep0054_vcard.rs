//! XEP-0054 vcard-temp over real TCP, with 1 and 2 shards: an empty vCard before any is stored, an
//! account publishing its own and anyone reading it (owner online or not, across shards), nobody
//! writing someone else's (`forbidden`), the size cap (`not-acceptable`), a wrong payload
//! (`bad-request`), the vCard kept across a restart and removed with the account.

mod common;

use common::{Client, SHARDS, TestServer, error_condition};

const GET: &str = "<vCard xmlns='vcard-temp'/>";

#[test]
fn publish_read_and_refuse() {
    for shards in SHARDS {
        let mut server = TestServer::start(
            shards,
            "[modules.mod_vcard]\nmax_size = 1024\n[modules.mod_disco]\n",
        );
        for u in ["alice", "bob", "carol"] {
            server.add_user(&format!("{u}@localhost"), "pw");
        }
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        let r = alice.iq(None, "get", GET);
        let v = r.child("vCard").expect("an empty vCard");
        assert_eq!(v.child_elements().count(), 0);

        let card =
            "<vCard xmlns='vcard-temp'><FN>Alice &amp; Co</FN><NICKNAME>al</NICKNAME></vCard>";
        let r = alice.iq(None, "set", card);
        assert_eq!(r.attr("type"), Some("result"), "{r}");
        drop(alice);

        let mut bob = Client::login(&server, "bob@localhost", "pw", "r");
        let r = bob.iq(Some("alice@localhost"), "get", GET);
        let v = r.child("vCard").expect("alice's vCard");
        assert_eq!(v.child("FN").unwrap().text(), "Alice & Co");
        assert_eq!(r.attr("from"), Some("alice@localhost"));

        let r = bob.iq(
            Some("alice@localhost"),
            "set",
            "<vCard xmlns='vcard-temp'><FN>x</FN></vCard>",
        );
        assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
        let big = format!(
            "<vCard xmlns='vcard-temp'><DESC>{}</DESC></vCard>",
            "x".repeat(2000)
        );
        let r = bob.iq(None, "set", &big);
        assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
        let r = bob.iq(None, "set", "<query xmlns='vcard-temp'/>");
        assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));

        // Kept across a restart; removed with the account.
        drop(bob);
        server.restart();
        let mut carol = Client::login(&server, "carol@localhost", "pw", "r");
        let r = carol.iq(Some("alice@localhost"), "get", GET);
        assert_eq!(
            r.child("vCard").unwrap().child("NICKNAME").unwrap().text(),
            "al"
        );
        let out = server.user(&["del", "alice@localhost"]);
        assert!(out.status.success());
        server.add_user("alice@localhost", "pw");
        let r = carol.iq(Some("alice@localhost"), "get", GET);
        assert_eq!(r.child("vCard").unwrap().child_elements().count(), 0, "{r}");
    }
}

// The same tests with the store on PostgreSQL (issue 12).
crate::postgres_twins!(publish_read_and_refuse,);

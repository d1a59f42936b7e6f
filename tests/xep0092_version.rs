//! XEP-0092 software version over real TCP, with 1 and 2 shards: name and version, the OS only when
//! `show_os` is on, `set` refused.

mod common;

use common::{Client, SHARDS, TestServer, error_condition};

const Q: &str = "<query xmlns='jabber:iq:version'/>";

#[test]
fn version_with_and_without_os() {
    for shards in SHARDS {
        // No `[modules]`: the default set (which has mod_version); example.net overrides its options.
        let server = TestServer::start(shards, "[host.modules.mod_version]\nshow_os = true\n");
        server.add_user("a@localhost", "pw");
        server.add_user("b@example.net", "pw");
        let mut a = Client::login(&server, "a@localhost", "pw", "r");
        let r = a.iq(Some("localhost"), "get", Q);
        let q = r.child("query").expect("a query");
        assert_eq!(q.child("name").unwrap().text(), "rjabberd");
        assert_eq!(
            q.child("version").unwrap().text(),
            env!("CARGO_PKG_VERSION")
        );
        // `[host.modules]` after the second [[host]] applies to example.net only.
        assert!(q.child("os").is_none(), "{r}");
        let mut b = Client::login(&server, "b@example.net", "pw", "r");
        let r = b.iq(Some("example.net"), "get", Q);
        let os = r
            .child("query")
            .unwrap()
            .child("os")
            .expect("os shown")
            .text();
        assert!(!os.is_empty());
        let r = a.iq(Some("localhost"), "set", Q);
        assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
    }
}

//! XEP-0202 entity time over real TCP, with 1 and 2 shards: UTC in XEP-0082 form, close to the test's
//! clock, with a zero offset.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Client, SHARDS, TestServer};

#[test]
fn the_server_tells_the_time() {
    for shards in SHARDS {
        let server = TestServer::start(shards, "");
        server.add_user("alice@localhost", "pw");
        let mut alice = Client::login(&server, "alice@localhost", "pw", "r");
        let r = alice.iq(Some("localhost"), "get", "<time xmlns='urn:xmpp:time'/>");
        let t = r.child("time").expect("a time");
        assert_eq!(t.child("tzo").unwrap().text(), "+00:00");
        let utc = t.child("utc").unwrap().text();
        assert!(utc.ends_with('Z') && utc.len() == 24, "{utc}");
        let now = rjabberd::modules::util::utc_timestamp(SystemTime::now());
        // Same day, hour and minute (allowing a minute boundary between the two readings).
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 60;
        if secs > 2 {
            assert_eq!(&utc[..16], &now[..16], "{utc} vs {now}");
        }
    }
}

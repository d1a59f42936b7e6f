//! The steps the cluster scenarios are made of (tests/cluster_routing.rs, tests/cluster_partition.rs):
//! logging in through a host, waiting for a stanza or for the end of a stream with everything read
//! meanwhile in the panic message, going online, reading messages, and making users homed on a given
//! host with a roster between them.

use std::time::{Duration, Instant};

use super::cluster::{PASSWORD, TestCluster};
use super::{Client, Got};
use rjabberd::proto::xml::Element;

/// Three hosts of one shard, and three of two: the two layouts every cluster scenario runs on.
pub const ONE_SHARD: &[(&str, usize)] = &[("n1", 1), ("n2", 1), ("n3", 1)];
pub const TWO_SHARDS: &[(&str, usize)] = &[("n1", 2), ("n2", 2), ("n3", 2)];

/// Each scenario `fn name(layout)` named, as the tests `one_shard::name` and `two_shards::name`, each
/// with the attributes in the brackets (the conditions that build it as ignored):
/// `both_layouts!([#[cfg_attr(rjabberd_skip_pg, ignore = "…")]]; name, other);`.
#[macro_export]
macro_rules! both_layouts {
    ($attrs:tt ; $($test:ident),+ $(,)?) => {
        mod one_shard {
            $( $crate::both_layouts!(@one $attrs $test ONE_SHARD); )+
        }
        mod two_shards {
            $( $crate::both_layouts!(@one $attrs $test TWO_SHARDS); )+
        }
    };
    (@one [$(#[$attr:meta])*] $test:ident $layout:ident) => {
        #[test]
        $(#[$attr])*
        fn $test() {
            super::$test($crate::common::cluster_steps::$layout)
        }
    };
}

/// Logs `jid` in through host `i` with `resource`.
pub fn login(c: &TestCluster, i: usize, jid: &str, resource: &str) -> Client {
    Client::login(c.host(i), jid, PASSWORD, resource)
}

/// Reads until an element satisfying `want` arrives; panics after `timeout`, or when the stream
/// ends, with everything read meanwhile. Returns the element and what came before it.
pub fn wait_for(
    client: &mut Client,
    what: &str,
    timeout: Duration,
    want: impl Fn(&Element) -> bool,
) -> (Element, Vec<Element>) {
    let deadline = Instant::now() + timeout;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_within(left) {
            Some(Got::El(e)) if want(&e) => return (e, before),
            Some(Got::El(e)) => before.push(e),
            Some(Got::Header(_)) => {}
            Some(end @ (Got::Close | Got::Eof)) => panic!(
                "{} waiting for {what}: the stream ended ({end:?}) after {}",
                client.jid,
                show(&before)
            ),
            None => panic!(
                "{} waiting for {what}: nothing within {timeout:?}; read meanwhile: {}",
                client.jid,
                show(&before)
            ),
        }
    }
}

pub fn show(els: &[Element]) -> String {
    if els.is_empty() {
        return "nothing".to_string();
    }
    els.iter()
        .map(|e| e.to_xml_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Presence from exactly `from` with `type` (`None`: available).
pub fn presence_from(from: &str, type_: Option<&str>) -> impl Fn(&Element) -> bool {
    let from = from.to_string();
    let type_ = type_.map(str::to_string);
    move |e: &Element| {
        e.name == "presence"
            && e.attr("from") == Some(from.as_str())
            && e.attr("type") == type_.as_deref()
    }
}

/// Sends initial presence and waits for its echo (presence from the client's own full JID).
pub fn go_online(client: &mut Client) {
    client.send("<presence/>");
    let me = client.jid.clone();
    wait_for(
        client,
        "the echo of its own presence",
        Duration::from_secs(10),
        presence_from(&me, None),
    );
}

/// The next `n` messages (other stanzas are skipped), within `timeout` in all.
pub fn messages(client: &mut Client, n: usize, timeout: Duration) -> Vec<Element> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut other = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_within(left) {
            Some(Got::El(e)) if e.name == "message" => got.push(e),
            Some(Got::El(e)) => other.push(e),
            Some(Got::Header(_)) => {}
            Some(end) => panic!(
                "{}: the stream ended ({end:?}) after {} of {n} messages: {}",
                client.jid,
                got.len(),
                show(&got)
            ),
            None => panic!(
                "{}: {} of {n} messages within {timeout:?}: {}; other stanzas: {}",
                client.jid,
                got.len(),
                show(&got),
                show(&other)
            ),
        }
    }
    got
}

pub fn body(e: &Element) -> String {
    e.child("body").map(|b| b.text()).unwrap_or_default()
}

/// Messages that arrive within `quiet` of silence (to prove nothing more comes).
pub fn stray_messages(client: &mut Client, quiet: Duration) -> Vec<Element> {
    client
        .drain(quiet)
        .into_iter()
        .filter_map(|g| match g {
            Got::El(e) if e.name == "message" => Some(e),
            _ => None,
        })
        .collect()
}

/// Waits up to `timeout` for the stream to end; returns the stream error condition if one came
/// (`Some("")` for a stream error without a condition), `None` for a plain close or EOF.
pub fn stream_end(client: &mut Client, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut read = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_within(left) {
            Some(Got::El(e)) if e.name == "stream:error" => {
                return Some(
                    e.child_elements()
                        .find(|c| c.name != "text")
                        .map(|c| c.name.clone())
                        .unwrap_or_default(),
                );
            }
            Some(Got::El(e)) => read.push(e),
            Some(Got::Header(_)) => {}
            Some(Got::Close | Got::Eof) => return None,
            None => panic!(
                "{}: the stream did not end within {timeout:?}; read: {}",
                client.jid,
                show(&read)
            ),
        }
    }
}

/// Runs `step`; a panic in it is recorded in `problems` (with `what`) instead of ending the test,
/// so that a run reports every failing step of a scenario whose later steps do not depend on it.
pub fn attempt<T>(problems: &mut Vec<String>, what: &str, step: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            problems.push(format!("{what}: {msg}"));
            None
        }
    }
}

/// Users `prefix…@localhost` homed on `home`, created with [`PASSWORD`].
pub fn user(c: &TestCluster, home: &str, prefix: &str) -> String {
    let jid = c.user_homed_on(home, prefix);
    c.add_user(&jid, PASSWORD);
    jid
}

pub fn mutual(c: &TestCluster, a: &str, b: &str) {
    c.roster_add(a, b, "both");
    c.roster_add(b, a, "both");
}

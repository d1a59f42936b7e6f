//! A shard's ledger of the available presences it delivered from sessions homed on other hosts
//! (docs/cluster-protocol.md §9.2): for each sending full JID, the host incarnation it came from and
//! the recipients it was addressed to, as they were addressed. When a view drops that incarnation,
//! every session homed there has ended with it, including those whose socket and home were both on the
//! dead host, which nobody is left to speak for; the ledger names the unavailable presences this
//! shard's accounts are owed. It is kept at the recipients' home shard, which sees both a session's
//! old presence and, after the account moved, its new one from its new home: a newer origin replaces
//! the older, so a user who is back already is not announced gone. Pure bookkeeping, no I/O.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct PresenceLedger {
    by_sender: HashMap<Arc<str>, Entry>,
}

#[derive(Debug)]
struct Entry {
    node: Arc<str>,
    incarnation: u64,
    /// A set: one presence broadcast notes hundreds of recipients at once.
    recipients: HashSet<Arc<str>>,
}

impl PresenceLedger {
    /// A presence from `from` (a full JID homed on `node`/`incarnation`) was delivered to
    /// `recipients`: `available` notes them, an unavailable one clears them.
    pub fn note(
        &mut self,
        from: &Arc<str>,
        node: &str,
        incarnation: u64,
        recipients: &[Arc<str>],
        available: bool,
    ) {
        if !available {
            if let Some(entry) = self.by_sender.get_mut(from) {
                for r in recipients {
                    entry.recipients.remove(r);
                }
                if entry.recipients.is_empty() {
                    self.by_sender.remove(from);
                }
            }
            return;
        }
        let entry = self.by_sender.entry(from.clone()).or_insert_with(|| Entry {
            node: node.into(),
            incarnation,
            recipients: HashSet::new(),
        });
        if *entry.node != *node || entry.incarnation != incarnation {
            // The session is back from another home: what the old one was owed is moot.
            entry.node = node.into();
            entry.incarnation = incarnation;
            entry.recipients.clear();
        }
        entry.recipients.extend(recipients.iter().cloned());
    }

    /// Takes out the senders whose host incarnation `alive` no longer admits, each with the recipients
    /// that are owed its unavailable presence (sorted).
    pub fn departed(
        &mut self,
        alive: impl Fn(&str, u64) -> bool,
    ) -> Vec<(Arc<str>, Vec<Arc<str>>)> {
        let gone: Vec<Arc<str>> = self
            .by_sender
            .iter()
            .filter(|(_, e)| !alive(&e.node, e.incarnation))
            .map(|(from, _)| from.clone())
            .collect();
        gone.into_iter()
            .filter_map(|from| {
                let mut recipients: Vec<Arc<str>> = self
                    .by_sender
                    .remove(&from)?
                    .recipients
                    .into_iter()
                    .collect();
                recipients.sort();
                Some((from, recipients))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_sender.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sender.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jids(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn the_recipients_of_a_departed_host_s_presences_are_owed_an_unavailable() {
        let mut l = PresenceLedger::default();
        let bob: Arc<str> = "bob@x/phone".into();
        let carol: Arc<str> = "carol@x/pc".into();
        l.note(&bob, "n2", 7, &jids(&["alice@x"]), true);
        l.note(&bob, "n2", 7, &jids(&["dave@x/r", "alice@x"]), true);
        l.note(&carol, "n3", 9, &jids(&["alice@x"]), true);
        let gone = l.departed(|node, inc| !(node == "n2" && inc == 7));
        assert_eq!(gone, vec![(bob, jids(&["alice@x", "dave@x/r"]))]);
        assert_eq!(l.len(), 1, "carol's host is alive");
        assert!(l.departed(|_, _| true).is_empty());
    }

    #[test]
    fn an_unavailable_presence_clears_what_is_owed() {
        let mut l = PresenceLedger::default();
        let bob: Arc<str> = "bob@x/phone".into();
        l.note(&bob, "n2", 7, &jids(&["alice@x", "dave@x"]), true);
        l.note(&bob, "n2", 7, &jids(&["alice@x"]), false);
        assert_eq!(
            l.departed(|_, _| false),
            vec![(bob.clone(), jids(&["dave@x"]))]
        );
        l.note(&bob, "n2", 7, &jids(&["alice@x"]), true);
        l.note(&bob, "n2", 7, &jids(&["alice@x"]), false);
        assert!(l.is_empty(), "nothing owed, nothing kept");
        // An unavailable for a sender never noted changes nothing.
        l.note(&bob, "n2", 7, &jids(&["alice@x"]), false);
        assert!(l.is_empty());
    }

    #[test]
    fn a_session_back_from_a_new_home_is_not_announced_gone() {
        let mut l = PresenceLedger::default();
        let bob: Arc<str> = "bob@x/phone".into();
        l.note(&bob, "n2", 7, &jids(&["alice@x", "dave@x"]), true);
        // The view that drops n2 is not applied here yet, but bob is back through n3.
        l.note(&bob, "n3", 4, &jids(&["alice@x"]), true);
        let gone = l.departed(|node, _| node != "n2");
        assert!(gone.is_empty(), "{gone:?}");
        // And when n3 goes in turn, only what n3's session was sent is owed.
        assert_eq!(l.departed(|_, _| false), vec![(bob, jids(&["alice@x"]))]);
    }
}

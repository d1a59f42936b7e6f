//! The session table of one shard: for every account whose home is this shard, its bound resources with
//! the connection that serves each, its priority and whether it is available. The shard owns the one
//! instance; only the session manager's work (`sm::session`) changes it. Lookups take the bare JID as a
//! borrowed string, so delivering a stanza does not allocate.

use std::collections::HashMap;
use std::sync::Arc;

use super::deliver::ResourceState;
use crate::proto::c2s::BindError;
use crate::proto::xml::Stanza;
use crate::sink::SinkId;

/// One bound resource, served by the connection `Id` names (a [`SinkId`] on a shard; later a detached
/// XEP-0198 session or a session on another host).
#[derive(Debug, Clone)]
pub struct Session<Id = SinkId> {
    pub resource: Box<str>,
    /// The full JID, shared with the connection and stamped as `from` on everything it sends.
    pub full: Arc<str>,
    pub sink: Id,
    pub priority: i8,
    pub available: bool,
    /// The last available presence it sent, copied out of the read buffer (what a probe is answered
    /// with, RFC 6121 §4.3.2).
    pub presence: Option<Stanza>,
}

/// What a successful bind did.
#[derive(Debug)]
pub struct Bound<Id = SinkId> {
    pub full: Arc<str>,
    pub bare: Arc<str>,
    pub watch: Watch,
    /// The connection whose session had the same full JID and was replaced; it gets a `conflict` error.
    pub replaced: Option<Id>,
    /// Whether the replaced session was available (its contacts are owed an unavailable presence).
    pub replaced_available: bool,
}

/// An account with sessions here: its sessions and the modules that watch its traffic.
struct Account<Id> {
    /// The bare JID, shared with the sessions' [`Watch`] and handed to hooks without a copy.
    bare: Arc<str>,
    sessions: Vec<Session<Id>>,
    /// The modules that asked to see this account's stanzas (blocking, carbons, client state): while
    /// any does, its stanzas leave the allocation-free fast paths and pass the `watched_*` hooks.
    watchers: Vec<&'static str>,
    watch: Watch,
}

/// Whether an account is watched, shared with its sessions' connections so that the router asks
/// without a lookup.
#[derive(Debug, Clone, Default)]
pub struct Watch(std::rc::Rc<std::cell::Cell<bool>>);

impl Watch {
    pub fn get(&self) -> bool {
        self.0.get()
    }
}

pub struct SessionTable<Id = SinkId> {
    users: HashMap<Box<str>, Account<Id>>,
    count: usize,
}

impl<Id> Default for SessionTable<Id> {
    fn default() -> Self {
        SessionTable {
            users: HashMap::new(),
            count: 0,
        }
    }
}

impl<Id: Copy + PartialEq> SessionTable<Id> {
    /// Binds `resource` of `bare` to `conn`. A session with the same full JID is replaced (RFC 6120
    /// §7.7.2.2, the policy of most servers); otherwise the account may hold `max` sessions.
    pub fn bind(
        &mut self,
        bare: &str,
        resource: &str,
        conn: Id,
        max: usize,
    ) -> Result<Bound<Id>, BindError> {
        let account = self.users.entry(bare.into()).or_insert_with(|| Account {
            bare: bare.into(),
            sessions: Vec::new(),
            watchers: Vec::new(),
            watch: Watch::default(),
        });
        let (shared_bare, watch) = (account.bare.clone(), account.watch.clone());
        let sessions = &mut account.sessions;
        let full: Arc<str> = format!("{bare}/{resource}").into();
        if let Some(s) = sessions.iter_mut().find(|s| &*s.resource == resource) {
            let (replaced, replaced_available) = (s.sink, s.available);
            *s = Session {
                resource: resource.into(),
                full: full.clone(),
                sink: conn,
                priority: 0,
                available: false,
                presence: None,
            };
            return Ok(Bound {
                full,
                bare: shared_bare,
                watch,
                replaced: Some(replaced),
                replaced_available,
            });
        }
        if sessions.len() >= max {
            if sessions.is_empty() {
                self.users.remove(bare);
            }
            return Err(BindError::TooManySessions);
        }
        sessions.push(Session {
            resource: resource.into(),
            full: full.clone(),
            sink: conn,
            priority: 0,
            available: false,
            presence: None,
        });
        self.count += 1;
        Ok(Bound {
            full,
            bare: shared_bare,
            watch,
            replaced: None,
            replaced_available: false,
        })
    }

    /// Removes the session of `conn` (if it is still the one bound: a replaced connection is not).
    pub fn unbind(&mut self, bare: &str, conn: Id) -> Option<Session<Id>> {
        let sessions = &mut self.users.get_mut(bare)?.sessions;
        let i = sessions.iter().position(|s| s.sink == conn)?;
        let removed = sessions.swap_remove(i);
        self.count -= 1;
        if sessions.is_empty()
            && let Some(account) = self.users.remove(bare)
        {
            account.watch.0.set(false);
        }
        Some(removed)
    }

    pub fn sessions(&self, bare: &str) -> &[Session<Id>] {
        self.users.get(bare).map_or(&[], |a| a.sessions.as_slice())
    }

    /// The account's sessions and whether it is watched, in one lookup (the delivery fast path).
    pub fn sessions_and_watch(&self, bare: &str) -> (&[Session<Id>], bool) {
        self.users.get(bare).map_or((&[], false), |a| {
            (a.sessions.as_slice(), !a.watchers.is_empty())
        })
    }

    /// Starts (`on`) or stops `module` watching `bare`'s stanzas; false when the account has no
    /// session here (a watch lasts while the account has sessions).
    pub fn watch(&mut self, bare: &str, module: &'static str, on: bool) -> bool {
        let Some(account) = self.users.get_mut(bare) else {
            return false;
        };
        account.watchers.retain(|m| *m != module);
        if on {
            account.watchers.push(module);
        }
        account.watch.0.set(!account.watchers.is_empty());
        true
    }

    /// The account's shared bare JID and watch mark, while it has sessions.
    pub fn account_watch(&self, bare: &str) -> Option<(Arc<str>, Watch)> {
        self.users
            .get(bare)
            .map(|a| (a.bare.clone(), a.watch.clone()))
    }

    /// The account's bare JID, shared, when some module watches it.
    pub fn watched(&self, bare: &str) -> Option<Arc<str>> {
        self.users
            .get(bare)
            .filter(|a| !a.watchers.is_empty())
            .map(|a| a.bare.clone())
    }

    /// Records the presence of `conn`'s session; returns whether it was available before.
    pub fn set_presence(
        &mut self,
        bare: &str,
        conn: Id,
        available: bool,
        priority: i8,
    ) -> Option<bool> {
        let s = self
            .users
            .get_mut(bare)?
            .sessions
            .iter_mut()
            .find(|s| s.sink == conn)?;
        let was = s.available;
        s.available = available;
        s.priority = priority;
        if !available {
            s.presence = None;
        }
        Some(was)
    }

    /// Keeps `presence` as the last available presence of `conn`'s session.
    pub fn set_last_presence(&mut self, bare: &str, conn: Id, presence: Stanza) {
        if let Some(s) = self
            .users
            .get_mut(bare)
            .and_then(|a| a.sessions.iter_mut().find(|s| s.sink == conn))
        {
            s.presence = Some(presence);
        }
    }

    /// The account's sessions as the delivery rules see them.
    pub fn states(&self, bare: &str) -> Vec<ResourceState<'_, Id>> {
        self.sessions(bare)
            .iter()
            .map(|s| ResourceState {
                id: s.sink,
                resource: &s.resource,
                priority: s.priority,
                available: s.available,
            })
            .collect()
    }

    /// Bound sessions on this shard.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Accounts with sessions here.
    pub fn account_count(&self) -> usize {
        self.users.len()
    }

    /// Every session here, account by account in no order (operators' listings).
    pub fn all_sessions(&self) -> impl Iterator<Item = &Session<Id>> {
        self.users.values().flat_map(|a| a.sessions.iter())
    }

    /// Every bare JID with sessions here (for checks and tests).
    pub fn accounts(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|k| &**k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_replace_cap_unbind() {
        let mut t = SessionTable::<usize>::default();
        let a = t.bind("a@x", "r1", 1, 2).unwrap();
        assert_eq!(&*a.full, "a@x/r1");
        assert!(a.replaced.is_none());
        t.bind("a@x", "r2", 2, 2).unwrap();
        assert_eq!(
            t.bind("a@x", "r3", 3, 2).unwrap_err(),
            BindError::TooManySessions
        );
        let again = t.bind("a@x", "r1", 4, 2).unwrap();
        assert_eq!(again.replaced, Some(1));
        assert!(
            t.unbind("a@x", 1).is_none(),
            "the replaced connection no longer owns the session"
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.set_presence("a@x", 4, true, 5), Some(false));
        assert!(
            t.states("a@x")
                .iter()
                .any(|s| s.id == 4 && s.available && s.priority == 5)
        );
        assert!(t.watched("a@x").is_none());
        assert!(t.watch("a@x", "mod_a", true));
        assert!(t.watch("a@x", "mod_b", true));
        let watch = t.bind("a@x", "r9", 9, 3).unwrap().watch;
        assert!(
            watch.get(),
            "a session bound later shares the account's watch"
        );
        t.watch("a@x", "mod_a", false);
        assert_eq!(t.watched("a@x").as_deref(), Some("a@x"));
        t.watch("a@x", "mod_b", false);
        assert!(t.watched("a@x").is_none() && !watch.get());
        t.unbind("a@x", 9).unwrap();
        t.unbind("a@x", 4).unwrap();
        t.unbind("a@x", 2).unwrap();
        assert!(t.is_empty());
        assert!(!t.watch("a@x", "mod_a", true), "no account, no watch");
        assert_eq!(t.sessions("a@x").len(), 0);
    }
}

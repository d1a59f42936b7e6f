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
    /// The connection whose session had the same full JID and was replaced; it gets a `conflict` error.
    pub replaced: Option<Id>,
}

pub struct SessionTable<Id = SinkId> {
    users: HashMap<Box<str>, Vec<Session<Id>>>,
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
        let sessions = self.users.entry(bare.into()).or_default();
        let full: Arc<str> = format!("{bare}/{resource}").into();
        if let Some(s) = sessions.iter_mut().find(|s| &*s.resource == resource) {
            let replaced = s.sink;
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
                replaced: Some(replaced),
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
            replaced: None,
        })
    }

    /// Removes the session of `conn` (if it is still the one bound: a replaced connection is not).
    pub fn unbind(&mut self, bare: &str, conn: Id) -> Option<Session<Id>> {
        let sessions = self.users.get_mut(bare)?;
        let i = sessions.iter().position(|s| s.sink == conn)?;
        let removed = sessions.swap_remove(i);
        self.count -= 1;
        if sessions.is_empty() {
            self.users.remove(bare);
        }
        Some(removed)
    }

    pub fn sessions(&self, bare: &str) -> &[Session<Id>] {
        self.users.get(bare).map_or(&[], |v| v.as_slice())
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
            .and_then(|v| v.iter_mut().find(|s| s.sink == conn))
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
        t.unbind("a@x", 4).unwrap();
        t.unbind("a@x", 2).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.sessions("a@x").len(), 0);
    }
}

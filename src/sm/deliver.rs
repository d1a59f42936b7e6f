//! The delivery rules of RFC 6121 §8.5 as one pure function: given what a stanza is and what the home shard
//! knows of the addressed account, decide where it goes. No I/O, no table: the session manager's work (`sm::session`) asks this
//! function and carries out the answer, so every rule is tested here without sockets.

use crate::proto::errors::StanzaErrorCondition;
use crate::proto::xml::StanzaKind;

/// What the session manager knows of one connected resource of the addressed account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceState<'a, Id> {
    pub id: Id,
    pub resource: &'a str,
    /// The priority of its last available presence (RFC 6121 §4.7.2.3); meaningless while not available.
    pub priority: i8,
    /// Whether it has sent initial presence and not gone unavailable since ("available resource", as
    /// opposed to merely "connected").
    pub available: bool,
}

/// Where a stanza goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<Id> {
    /// To these sessions (never empty).
    Sessions(Vec<Id>),
    /// The server answers on the account's behalf (an IQ to a bare JID, a presence probe).
    HandleForAccount,
    /// The message is offered for storage (the `offline_message` hook, `mod_offline`); when nobody keeps
    /// it the caller bounces it with `service-unavailable`, which §8.5.2.2.1 also allows.
    Offline,
    /// Answer the sender with this stanza error (the caller skips it when the stanza is itself an error).
    Bounce(StanzaErrorCondition),
    /// Drop without a word, as the RFC prescribes for this case.
    Drop,
}

/// The message and presence types that change the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaType {
    /// A message without type or with `normal`.
    Normal,
    Chat,
    Groupchat,
    Headline,
    Error,
    /// Presence without a type.
    Available,
    Unavailable,
    /// `subscribe`, `subscribed`, `unsubscribe`, `unsubscribed`.
    Subscription,
    Probe,
    /// IQ `get` or `set`.
    Request,
    /// IQ `result`.
    Result,
    /// A type the RFC does not define for this kind: the stanza is answered with `bad-request`.
    Unknown,
}

/// Whether a stanza is an IQ request (`get` or `set`), which must be answered exactly once.
pub fn is_request(stanza: &crate::proto::xml::Stanza) -> bool {
    stanza.kind() == StanzaKind::Iq && matches!(stanza.type_().as_deref(), Some("get" | "set"))
}

impl StanzaType {
    /// Classifies a stanza's `type` attribute for its kind.
    pub fn classify(kind: StanzaKind, type_attr: Option<&str>) -> StanzaType {
        use StanzaType::*;
        match (kind, type_attr) {
            (_, Some("error")) => Error,
            (StanzaKind::Message, None | Some("normal")) => Normal,
            (StanzaKind::Message, Some("chat")) => Chat,
            (StanzaKind::Message, Some("groupchat")) => Groupchat,
            (StanzaKind::Message, Some("headline")) => Headline,
            (StanzaKind::Presence, None) => Available,
            (StanzaKind::Presence, Some("unavailable")) => Unavailable,
            (
                StanzaKind::Presence,
                Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed"),
            ) => Subscription,
            (StanzaKind::Presence, Some("probe")) => Probe,
            (StanzaKind::Iq, Some("get" | "set")) => Request,
            (StanzaKind::Iq, Some("result")) => Result,
            _ => Unknown,
        }
    }
}

/// Decides delivery of a stanza addressed to a local account.
///
/// `exists` says whether the account exists; `resource` is the resourcepart of the `to` address, if any;
/// `sessions` are the account's connected resources.
pub fn decide<Id: Copy>(
    kind: StanzaKind,
    ty: StanzaType,
    exists: bool,
    resource: Option<&str>,
    sessions: &[ResourceState<'_, Id>],
) -> Delivery<Id> {
    use StanzaType::*;
    if ty == Unknown {
        return Delivery::Bounce(StanzaErrorCondition::BadRequest);
    }
    if ty == Error {
        // Errors are delivered when their exact target exists, and otherwise dropped: never bounced.
        if let Some(r) = resource
            && let Some(s) = sessions.iter().find(|s| s.resource == r)
        {
            return Delivery::Sessions(vec![s.id]);
        }
        return Delivery::Drop;
    }
    if !exists {
        // §8.5.1: no such user.
        return match kind {
            StanzaKind::Presence => Delivery::Drop,
            StanzaKind::Message if ty == Headline => Delivery::Drop,
            _ => Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable),
        };
    }
    if let Some(r) = resource {
        // §8.5.3: a full JID.
        if let Some(s) = sessions.iter().find(|s| s.resource == r) {
            if kind == StanzaKind::Presence && ty == Probe {
                return Delivery::HandleForAccount;
            }
            return Delivery::Sessions(vec![s.id]);
        }
        // §8.5.3.2: no such resource.
        return match (kind, ty) {
            (StanzaKind::Message, Normal | Chat | Headline) => bare(kind, ty, sessions),
            (StanzaKind::Message, _) => Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable),
            (StanzaKind::Presence, Subscription) => bare(kind, ty, sessions),
            (StanzaKind::Presence, Probe) => Delivery::HandleForAccount,
            (StanzaKind::Presence, _) => Delivery::Drop,
            (StanzaKind::Iq, Request) => Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable),
            (StanzaKind::Iq, _) => Delivery::Drop,
            (StanzaKind::Other, _) => Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable),
        };
    }
    bare(kind, ty, sessions)
}

/// §8.5.2: a bare JID of an existing account.
fn bare<Id: Copy>(
    kind: StanzaKind,
    ty: StanzaType,
    sessions: &[ResourceState<'_, Id>],
) -> Delivery<Id> {
    use StanzaType::*;
    let non_negative = || -> Vec<Id> {
        sessions
            .iter()
            .filter(|s| s.available && s.priority >= 0)
            .map(|s| s.id)
            .collect()
    };
    match (kind, ty) {
        (StanzaKind::Message, Normal | Chat) => {
            // §8.5.2.1.1: the most available resources of highest non-negative priority; when every
            // available resource has a negative priority, the account counts as having none.
            let best = sessions
                .iter()
                .filter(|s| s.available && s.priority >= 0)
                .map(|s| s.priority)
                .max();
            match best {
                Some(p) => Delivery::Sessions(
                    sessions
                        .iter()
                        .filter(|s| s.available && s.priority == p)
                        .map(|s| s.id)
                        .collect(),
                ),
                None => Delivery::Offline,
            }
        }
        (StanzaKind::Message, Headline) => {
            let to = non_negative();
            if to.is_empty() {
                Delivery::Drop
            } else {
                Delivery::Sessions(to)
            }
        }
        (StanzaKind::Message, _) => Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable),
        (StanzaKind::Presence, Available | Unavailable | Subscription) => {
            // Directed presence and subscription requests go to every available resource; with none,
            // subscription requests would be stored by the roster module, other presence is dropped.
            let to: Vec<Id> = sessions
                .iter()
                .filter(|s| s.available)
                .map(|s| s.id)
                .collect();
            if to.is_empty() {
                Delivery::Drop
            } else {
                Delivery::Sessions(to)
            }
        }
        (StanzaKind::Presence, _) => Delivery::HandleForAccount,
        (StanzaKind::Iq, Request) => Delivery::HandleForAccount,
        (StanzaKind::Iq, _) => Delivery::Drop,
        (StanzaKind::Other, _) => Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StanzaKind::*;

    fn s(id: u32, resource: &str, priority: i8, available: bool) -> ResourceState<'_, u32> {
        ResourceState {
            id,
            resource,
            priority,
            available,
        }
    }

    #[test]
    fn bare_messages_go_to_the_highest_non_negative_priority() {
        let sessions = [
            s(1, "a", 5, true),
            s(2, "b", 5, true),
            s(3, "c", 1, true),
            s(4, "d", 9, false),
        ];
        for ty in [StanzaType::Normal, StanzaType::Chat] {
            assert_eq!(
                decide(Message, ty, true, None, &sessions),
                Delivery::Sessions(vec![1, 2])
            );
        }
        assert_eq!(
            decide(Message, StanzaType::Headline, true, None, &sessions),
            Delivery::Sessions(vec![1, 2, 3])
        );
        assert_eq!(
            decide(Message, StanzaType::Groupchat, true, None, &sessions),
            Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable)
        );
    }

    #[test]
    fn negative_priorities_count_as_unavailable_for_bare_messages() {
        let sessions = [s(1, "a", -1, true), s(2, "b", 3, false)];
        assert_eq!(
            decide(Message, StanzaType::Chat, true, None, &sessions),
            Delivery::Offline
        );
        assert_eq!(
            decide(Message, StanzaType::Headline, true, None, &sessions),
            Delivery::Drop
        );
        // But a full JID reaches it.
        assert_eq!(
            decide(Message, StanzaType::Chat, true, Some("a"), &sessions),
            Delivery::Sessions(vec![1])
        );
    }

    #[test]
    fn full_jids_fall_back_by_kind() {
        let sessions = [s(1, "a", 0, true)];
        assert_eq!(
            decide(Message, StanzaType::Chat, true, Some("gone"), &sessions),
            Delivery::Sessions(vec![1])
        );
        assert_eq!(
            decide(
                Message,
                StanzaType::Groupchat,
                true,
                Some("gone"),
                &sessions
            ),
            Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable)
        );
        assert_eq!(
            decide(Iq, StanzaType::Request, true, Some("gone"), &sessions),
            Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable)
        );
        assert_eq!(
            decide(Iq, StanzaType::Result, true, Some("gone"), &sessions),
            Delivery::Drop
        );
        assert_eq!(
            decide(
                Presence,
                StanzaType::Available,
                true,
                Some("gone"),
                &sessions
            ),
            Delivery::Drop
        );
        assert_eq!(
            decide(Iq, StanzaType::Request, true, Some("a"), &sessions),
            Delivery::Sessions(vec![1])
        );
    }

    #[test]
    fn bare_iqs_are_answered_by_the_server() {
        assert_eq!(
            decide::<u32>(Iq, StanzaType::Request, true, None, &[]),
            Delivery::HandleForAccount
        );
        assert_eq!(
            decide::<u32>(Presence, StanzaType::Probe, true, None, &[]),
            Delivery::HandleForAccount
        );
    }

    #[test]
    fn unknown_users_reveal_nothing_for_presence_and_bounce_the_rest() {
        assert_eq!(
            decide::<u32>(Presence, StanzaType::Subscription, false, None, &[]),
            Delivery::Drop
        );
        assert_eq!(
            decide::<u32>(Message, StanzaType::Chat, false, None, &[]),
            Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable)
        );
        assert_eq!(
            decide::<u32>(Iq, StanzaType::Request, false, Some("r"), &[]),
            Delivery::Bounce(StanzaErrorCondition::ServiceUnavailable)
        );
    }

    #[test]
    fn errors_are_never_bounced() {
        let sessions = [s(1, "a", 0, true)];
        for (kind, resource) in [(Message, None), (Iq, Some("x")), (Presence, None)] {
            assert_eq!(
                decide(kind, StanzaType::Error, true, resource, &sessions),
                Delivery::Drop
            );
            assert_eq!(
                decide::<u32>(kind, StanzaType::Error, false, resource, &[]),
                Delivery::Drop
            );
        }
        assert_eq!(
            decide(Iq, StanzaType::Error, true, Some("a"), &sessions),
            Delivery::Sessions(vec![1])
        );
    }

    #[test]
    fn types_are_classified_per_kind() {
        assert_eq!(StanzaType::classify(Message, None), StanzaType::Normal);
        assert_eq!(StanzaType::classify(Iq, None), StanzaType::Unknown);
        assert_eq!(
            StanzaType::classify(Presence, Some("chat")),
            StanzaType::Unknown
        );
        assert_eq!(StanzaType::classify(Iq, Some("error")), StanzaType::Error);
        assert_eq!(
            decide::<u32>(Iq, StanzaType::Unknown, true, None, &[]),
            Delivery::Bounce(StanzaErrorCondition::BadRequest)
        );
    }
}

//! Client State Indication (XEP-0352) as pure decisions: which stanzas for an inactive session can wait
//! ([`classify`]: presence updates and standalone XEP-0085 chat states), and what to do with the next
//! one given what is already held ([`decide`]: hold it, replacing an older one of the same sender and
//! sort; flush a full queue and hold it; or flush everything held and send it). The module
//! (`modules::client_state`) keeps the queues and carries the decisions out; nothing here does I/O.
//!
//! The rules follow ejabberd's `mod_client_state`:
//! - held: presence that tells availability (no `type`, or `unavailable`) and messages whose only
//!   payload is a chat state, each from someone other than the account itself (a chat state from the
//!   account's own bare JID keeps its other clients in step);
//! - only the latest of each (sender's full JID, presence or chat state) is kept: the older is dropped
//!   and the newer appended, so that what is flushed keeps the order of arrival (every stanza flushed
//!   arrived after the ones flushed before it; replacing in place would send a newer presence ahead of
//!   stanzas that arrived before it);
//! - anything else (a message with a body, an IQ, a subscription request, an error…) flushes what is
//!   held, in order, and then goes out, so it is never overtaken by what arrived before it;
//! - a queue of `max_queue` stanzas is flushed before one more is held: the memory held per inactive
//!   session is at most `max_queue` stanzas (each copied out of the read buffer, so it pins nothing
//!   else), each at most the stanza size limit.

use super::xml::{Element, Stanza, StanzaKind};

/// The stream feature and the nonzas' namespace.
pub const NS_CSI: &str = "urn:xmpp:csi:0";
/// XEP-0085 chat states.
pub const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

/// The five XEP-0085 states.
const CHAT_STATES: [&str; 5] = ["active", "composing", "paused", "inactive", "gone"];

/// Payloads that may ride along a standalone chat state without making it matter: a thread id
/// (`jabber:client`), XEP-0334 hints, XEP-0359 stanza and origin ids, a XEP-0203 delay.
const INCIDENTAL_NAMESPACES: [&str; 3] = ["urn:xmpp:hints", "urn:xmpp:sid:0", "urn:xmpp:delay"];

/// What kind of stanza an inactive session may be spared for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Presence telling availability (available or unavailable).
    Presence,
    /// A message whose only payload is a chat state.
    ChatState,
}

/// What the module is configured to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub queue_presence: bool,
    pub queue_chat_states: bool,
    /// Held stanzas per inactive session before the queue is flushed.
    pub max_queue: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            queue_presence: true,
            queue_chat_states: true,
            max_queue: 100,
        }
    }
}

/// Whether `stanza` (from `from`, for a session of `account`, a bare JID) may wait while the session is
/// inactive, and as what; `None` when it matters now.
pub fn classify(stanza: &Stanza, from: &str, account: &str, policy: &Policy) -> Option<Held> {
    match stanza.kind() {
        StanzaKind::Presence if policy.queue_presence => {
            matches!(stanza.type_().as_deref(), None | Some("unavailable"))
                .then_some(Held::Presence)
        }
        StanzaKind::Message if policy.queue_chat_states => {
            if stanza.type_().as_deref() == Some("error") || super::jid::bare_of(from) == account {
                return None;
            }
            is_standalone_chat_state(&stanza.to_element()).then_some(Held::ChatState)
        }
        _ => None,
    }
}

/// A message carrying a chat state and nothing that matters besides (no body, subject or other
/// payload): XEP-0085's standalone notification.
pub fn is_standalone_chat_state(message: &Element) -> bool {
    let mut states = 0;
    for child in message.child_elements() {
        match child.namespace() {
            Some(NS_CHATSTATES) if CHAT_STATES.contains(&child.name.as_str()) => states += 1,
            // No namespace of its own: the message's, jabber:client.
            None if child.name == "thread" => {}
            Some(ns) if INCIDENTAL_NAMESPACES.contains(&ns) => {}
            _ => return false,
        }
    }
    states == 1
}

/// What to do with a stanza for an inactive session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Append it to the held queue, first removing the entry at `replaces` (an older stanza of the same
    /// sender and kind), if any.
    Hold { replaces: Option<usize> },
    /// The queue is full: write out everything held, in order, then hold this one.
    FlushThenHold,
    /// It matters: write out everything held, in order, then this one.
    FlushThenSend,
}

/// Decides for a stanza classified `class`, from `from`, given the held queue as `(sender, kind)` in
/// order.
pub fn decide<'a>(
    held: impl ExactSizeIterator<Item = (&'a str, Held)>,
    class: Option<Held>,
    from: &str,
    max_queue: usize,
) -> Decision {
    let Some(class) = class else {
        return Decision::FlushThenSend;
    };
    let len = held.len();
    let mut replaces = None;
    for (i, (sender, kind)) in held.enumerate() {
        if kind == class && sender == from {
            replaces = Some(i);
            break;
        }
    }
    match replaces {
        Some(_) => Decision::Hold { replaces },
        None if len >= max_queue => Decision::FlushThenHold,
        None => Decision::Hold { replaces: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::xml::{Limits, parse_element};

    const ACCOUNT: &str = "juliet@example.org";
    const ROMEO: &str = "romeo@example.net/orchard";

    fn stanza(s: &str) -> Stanza {
        parse_element(s.as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn what_may_wait() {
        use Held::*;
        let cases: &[(&str, &str, Option<Held>)] = &[
            ("<presence xmlns='jabber:client'/>", ROMEO, Some(Presence)),
            (
                "<presence xmlns='jabber:client'><show>away</show><status>x</status></presence>",
                ROMEO,
                Some(Presence),
            ),
            (
                "<presence xmlns='jabber:client' type='unavailable'/>",
                ROMEO,
                Some(Presence),
            ),
            // Subscription requests and their answers, errors and probes matter.
            (
                "<presence xmlns='jabber:client' type='subscribe'/>",
                ROMEO,
                None,
            ),
            (
                "<presence xmlns='jabber:client' type='subscribed'/>",
                ROMEO,
                None,
            ),
            (
                "<presence xmlns='jabber:client' type='unsubscribed'/>",
                ROMEO,
                None,
            ),
            (
                "<presence xmlns='jabber:client' type='error'/>",
                ROMEO,
                None,
            ),
            (
                "<presence xmlns='jabber:client' type='probe'/>",
                ROMEO,
                None,
            ),
            (
                "<message xmlns='jabber:client' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
                ROMEO,
                Some(ChatState),
            ),
            (
                "<message xmlns='jabber:client'><paused xmlns='http://jabber.org/protocol/chatstates'/><thread>t1</thread><no-store xmlns='urn:xmpp:hints'/><origin-id xmlns='urn:xmpp:sid:0' id='x'/></message>",
                ROMEO,
                Some(ChatState),
            ),
            // A body (or anything else) with the chat state makes it matter.
            (
                "<message xmlns='jabber:client' type='chat'><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
                ROMEO,
                None,
            ),
            (
                "<message xmlns='jabber:client'><subject>s</subject><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
                ROMEO,
                None,
            ),
            (
                "<message xmlns='jabber:client'><x xmlns='jabber:x:oob'/><gone xmlns='http://jabber.org/protocol/chatstates'/></message>",
                ROMEO,
                None,
            ),
            (
                "<message xmlns='jabber:client'><body>hi</body></message>",
                ROMEO,
                None,
            ),
            ("<message xmlns='jabber:client'/>", ROMEO, None),
            // Not a chat state: a wrong name, a wrong namespace, two of them.
            (
                "<message xmlns='jabber:client'><typing xmlns='http://jabber.org/protocol/chatstates'/></message>",
                ROMEO,
                None,
            ),
            (
                "<message xmlns='jabber:client'><composing/></message>",
                ROMEO,
                None,
            ),
            (
                "<message xmlns='jabber:client'><composing xmlns='http://jabber.org/protocol/chatstates'/><paused xmlns='http://jabber.org/protocol/chatstates'/></message>",
                ROMEO,
                None,
            ),
            (
                "<message xmlns='jabber:client' type='error'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
                ROMEO,
                None,
            ),
            // The account's own other clients keep in step.
            (
                "<message xmlns='jabber:client'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
                "juliet@example.org/phone",
                None,
            ),
            (
                "<iq xmlns='jabber:client' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
                ROMEO,
                None,
            ),
            (
                "<iq xmlns='jabber:client' type='result' id='1'/>",
                ROMEO,
                None,
            ),
        ];
        for (xml, from, want) in cases {
            assert_eq!(
                classify(&stanza(xml), from, ACCOUNT, &Policy::default()),
                *want,
                "{xml}"
            );
        }
    }

    #[test]
    fn the_options_turn_each_kind_off() {
        let presence = stanza("<presence xmlns='jabber:client'/>");
        let chat_state = stanza(
            "<message xmlns='jabber:client'><gone xmlns='http://jabber.org/protocol/chatstates'/></message>",
        );
        let no_presence = Policy {
            queue_presence: false,
            ..Policy::default()
        };
        let no_chat_states = Policy {
            queue_chat_states: false,
            ..Policy::default()
        };
        assert_eq!(classify(&presence, ROMEO, ACCOUNT, &no_presence), None);
        assert_eq!(
            classify(&chat_state, ROMEO, ACCOUNT, &no_presence),
            Some(Held::ChatState)
        );
        assert_eq!(
            classify(&presence, ROMEO, ACCOUNT, &no_chat_states),
            Some(Held::Presence)
        );
        assert_eq!(classify(&chat_state, ROMEO, ACCOUNT, &no_chat_states), None);
    }

    #[test]
    fn hold_replace_flush() {
        use Decision::*;
        use Held::*;
        const A: &str = "a@x/1";
        const A2: &str = "a@x/2";
        const B: &str = "b@x/1";
        /// The held queue, the new stanza's class and sender, `max_queue`, and the decision.
        type Case<'a> = (
            &'a [(&'a str, Held)],
            Option<Held>,
            &'a str,
            usize,
            Decision,
        );
        let cases: &[Case] = &[
            (&[], Some(Presence), A, 3, Hold { replaces: None }),
            (
                &[(A, Presence)],
                Some(Presence),
                A,
                3,
                Hold { replaces: Some(0) },
            ),
            // Another resource of the same account is another sender.
            (
                &[(A, Presence)],
                Some(Presence),
                A2,
                3,
                Hold { replaces: None },
            ),
            // A chat state does not replace a presence of the same sender, nor the reverse.
            (
                &[(A, Presence)],
                Some(ChatState),
                A,
                3,
                Hold { replaces: None },
            ),
            (
                &[(B, ChatState), (A, Presence), (A, ChatState)],
                Some(ChatState),
                A,
                3,
                Hold { replaces: Some(2) },
            ),
            (
                &[(B, Presence), (A, Presence)],
                Some(Presence),
                A,
                3,
                Hold { replaces: Some(1) },
            ),
            // Full: a replacement still fits, anything new flushes first.
            (
                &[(A, Presence), (A2, Presence), (B, Presence)],
                Some(Presence),
                A2,
                3,
                Hold { replaces: Some(1) },
            ),
            (
                &[(A, Presence), (A2, Presence), (B, Presence)],
                Some(ChatState),
                B,
                3,
                FlushThenHold,
            ),
            (&[(A, Presence)], Some(Presence), B, 1, FlushThenHold),
            // What matters flushes, full or not, empty or not.
            (&[], None, A, 3, FlushThenSend),
            (&[(A, Presence), (B, ChatState)], None, A, 3, FlushThenSend),
        ];
        for (held, class, from, max, want) in cases {
            let got = decide(held.iter().copied(), *class, from, *max);
            assert_eq!(got, *want, "{held:?} {class:?} from {from}, max {max}");
        }
    }
}

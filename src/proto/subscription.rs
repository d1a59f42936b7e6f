//! The presence subscription state machine of RFC 6121 §3 and Appendix A, as two pure functions: what
//! the user's server does with a subscription stanza the user sends ([`outbound`], Appendix A.2) and
//! what the contact's server does with one it receives ([`inbound`], Appendix A.3) — whether the stanza
//! goes on, the roster item's new state, and, for pre-approval (§3.4) and for a request from an entity
//! already subscribed, the answer the server gives itself. The tests are the appendix's tables, row by
//! row.

use super::roster::Subscription;

/// A roster item's subscription state as Appendix A names it ("None + Pending Out", "To + Pending
/// In", …), plus the pre-approval flag of §3.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    pub subscription: Subscription,
    /// The user asked for the contact's presence; no answer yet.
    pub pending_out: bool,
    /// The contact asked for the user's presence; no answer yet.
    pub pending_in: bool,
    /// The user approved the contact's subscription before it was asked for.
    pub approved: bool,
}

/// The four subscription stanzas (presence types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl Kind {
    pub fn parse(presence_type: &str) -> Option<Kind> {
        Some(match presence_type {
            "subscribe" => Kind::Subscribe,
            "subscribed" => Kind::Subscribed,
            "unsubscribe" => Kind::Unsubscribe,
            "unsubscribed" => Kind::Unsubscribed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Subscribe => "subscribe",
            Kind::Subscribed => "subscribed",
            Kind::Unsubscribe => "unsubscribe",
            Kind::Unsubscribed => "unsubscribed",
        }
    }
}

/// What to do with a subscription stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Outbound: route the stanza to the contact. Inbound: deliver it to the user (or keep it for the
    /// user's next session).
    pub pass: bool,
    /// The item's new state, when it changes (a roster push follows).
    pub new: Option<State>,
    /// Inbound: what the contact's server answers itself, on the contact's behalf.
    pub reply: Option<Kind>,
}

const fn keep(pass: bool) -> Outcome {
    Outcome {
        pass,
        new: None,
        reply: None,
    }
}

fn to(pass: bool, s: State) -> Outcome {
    Outcome {
        pass,
        new: Some(s),
        reply: None,
    }
}

fn has_to(s: Subscription) -> bool {
    matches!(s, Subscription::To | Subscription::Both)
}

fn has_from(s: Subscription) -> bool {
    matches!(s, Subscription::From | Subscription::Both)
}

fn with(to_: bool, from: bool) -> Subscription {
    match (to_, from) {
        (false, false) => Subscription::None,
        (true, false) => Subscription::To,
        (false, true) => Subscription::From,
        (true, true) => Subscription::Both,
    }
}

/// Appendix A.2: the user sent `kind` to a contact whose item (from the user's side) is in `state`.
pub fn outbound(state: State, kind: Kind) -> Outcome {
    let s = state.subscription;
    match kind {
        // A.2.1: always routed; asking again changes nothing.
        Kind::Subscribe => {
            if has_to(s) || state.pending_out {
                keep(true)
            } else {
                to(
                    true,
                    State {
                        pending_out: true,
                        ..state
                    },
                )
            }
        }
        // A.2.2: always routed; the user's subscription to the contact (or its request) ends.
        Kind::Unsubscribe => {
            if !has_to(s) && !state.pending_out {
                keep(true)
            } else {
                to(
                    true,
                    State {
                        subscription: with(false, has_from(s)),
                        pending_out: false,
                        ..state
                    },
                )
            }
        }
        // A.2.3: approves a pending request; with none, it is a pre-approval (§3.4), not routed.
        Kind::Subscribed => {
            if state.pending_in {
                to(
                    true,
                    State {
                        subscription: with(has_to(s), true),
                        pending_in: false,
                        approved: false,
                        ..state
                    },
                )
            } else if !has_from(s) && !state.approved {
                to(
                    false,
                    State {
                        approved: true,
                        ..state
                    },
                )
            } else {
                keep(false)
            }
        }
        // A.2.4: refuses a pending request or cancels the contact's subscription; cancels a
        // pre-approval.
        Kind::Unsubscribed => {
            if state.pending_in || has_from(s) {
                to(
                    true,
                    State {
                        subscription: with(has_to(s), false),
                        pending_in: false,
                        approved: false,
                        ..state
                    },
                )
            } else if state.approved {
                to(
                    false,
                    State {
                        approved: false,
                        ..state
                    },
                )
            } else {
                keep(false)
            }
        }
    }
}

/// Appendix A.3: the contact's server received `kind` from a user; `state` is the item of that user in
/// the contact's roster (the default state when there is none).
pub fn inbound(state: State, kind: Kind) -> Outcome {
    let s = state.subscription;
    match kind {
        // A.3.1: a new request is delivered; one already pending is not; an entity already subscribed
        // gets `subscribed` from the server. A pre-approved request is approved at once (§3.4).
        Kind::Subscribe => {
            if has_from(s) {
                Outcome {
                    pass: false,
                    new: None,
                    reply: Some(Kind::Subscribed),
                }
            } else if state.pending_in {
                keep(false)
            } else if state.approved {
                Outcome {
                    pass: false,
                    new: Some(State {
                        subscription: with(has_to(s), true),
                        approved: false,
                        ..state
                    }),
                    reply: Some(Kind::Subscribed),
                }
            } else {
                to(
                    true,
                    State {
                        pending_in: true,
                        ..state
                    },
                )
            }
        }
        // A.3.2: the user's subscription to the contact (or its request) ends.
        Kind::Unsubscribe => {
            if state.pending_in || has_from(s) {
                to(
                    true,
                    State {
                        subscription: with(has_to(s), false),
                        pending_in: false,
                        ..state
                    },
                )
            } else {
                keep(false)
            }
        }
        // A.3.3: only an answer to the contact's own pending request counts.
        Kind::Subscribed => {
            if state.pending_out {
                to(
                    true,
                    State {
                        subscription: with(true, has_from(s)),
                        pending_out: false,
                        ..state
                    },
                )
            } else {
                keep(false)
            }
        }
        // A.3.4: the contact's subscription to the user (or its request) ends.
        Kind::Unsubscribed => {
            if state.pending_out || has_to(s) {
                to(
                    true,
                    State {
                        subscription: with(false, has_from(s)),
                        pending_out: false,
                        ..state
                    },
                )
            } else {
                keep(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nine states of Appendix A by their names.
    fn st(name: &str) -> State {
        let (sub, pending) = match name.split_once(" + ") {
            Some((s, p)) => (s, p),
            None => (name, ""),
        };
        State {
            subscription: Subscription::parse(&sub.to_ascii_lowercase()).expect(name),
            pending_out: pending.contains("Out"),
            pending_in: pending.contains("In"),
            approved: false,
        }
    }

    const STATES: [&str; 9] = [
        "None",
        "None + Pending Out",
        "None + Pending In",
        "None + Pending Out+In",
        "To",
        "To + Pending In",
        "From",
        "From + Pending Out",
        "Both",
    ];

    /// One of the appendix's tables: for each existing state, whether the stanza goes on and the new
    /// state (`None` for "no state change").
    fn check(
        table: &str,
        f: fn(State, Kind) -> Outcome,
        kind: Kind,
        rows: [(bool, Option<&str>); 9],
    ) {
        for (name, (pass, new)) in STATES.iter().zip(rows) {
            let got = f(st(name), kind);
            assert_eq!(got.pass, pass, "{table}, \"{name}\": route/deliver");
            assert_eq!(got.new, new.map(st), "{table}, \"{name}\": new state");
        }
    }

    #[test]
    fn a_2_1_outbound_subscribe() {
        check(
            "A.2.1",
            outbound,
            Kind::Subscribe,
            [
                (true, Some("None + Pending Out")),
                (true, None),
                (true, Some("None + Pending Out+In")),
                (true, None),
                (true, None),
                (true, None),
                (true, Some("From + Pending Out")),
                (true, None),
                (true, None),
            ],
        );
    }

    #[test]
    fn a_2_2_outbound_unsubscribe() {
        check(
            "A.2.2",
            outbound,
            Kind::Unsubscribe,
            [
                (true, None),
                (true, Some("None")),
                (true, None),
                (true, Some("None + Pending In")),
                (true, Some("None")),
                (true, Some("None + Pending In")),
                (true, None),
                (true, Some("From")),
                (true, Some("From")),
            ],
        );
    }

    #[test]
    fn a_2_3_outbound_subscribed() {
        // Rows without a pending request are pre-approvals (§3.4): not routed, the flag set.
        let pre = |name: &str| {
            let got = outbound(st(name), Kind::Subscribed);
            assert!(!got.pass, "{name}");
            assert_eq!(
                got.new,
                Some(State {
                    approved: true,
                    ..st(name)
                }),
                "{name}"
            );
        };
        for name in ["None", "None + Pending Out", "To"] {
            pre(name);
        }
        let rows = [
            ("None + Pending In", true, Some("From")),
            ("None + Pending Out+In", true, Some("From + Pending Out")),
            ("To + Pending In", true, Some("Both")),
            ("From", false, None),
            ("From + Pending Out", false, None),
            ("Both", false, None),
        ];
        for (name, pass, new) in rows {
            let got = outbound(st(name), Kind::Subscribed);
            assert_eq!((got.pass, got.new), (pass, new.map(st)), "A.2.3 \"{name}\"");
        }
        // Approving twice in advance changes nothing more.
        let approved = State {
            approved: true,
            ..st("None")
        };
        assert_eq!(outbound(approved, Kind::Subscribed), keep(false));
    }

    #[test]
    fn a_2_4_outbound_unsubscribed() {
        check(
            "A.2.4",
            outbound,
            Kind::Unsubscribed,
            [
                (false, None),
                (false, None),
                (true, Some("None")),
                (true, Some("None + Pending Out")),
                (false, None),
                (true, Some("To")),
                (true, Some("None")),
                (true, Some("None + Pending Out")),
                (true, Some("To")),
            ],
        );
        // It also withdraws a pre-approval, without routing anything.
        let approved = State {
            approved: true,
            ..st("None")
        };
        assert_eq!(
            outbound(approved, Kind::Unsubscribed),
            to(false, st("None"))
        );
    }

    #[test]
    fn a_3_1_inbound_subscribe() {
        check(
            "A.3.1",
            inbound,
            Kind::Subscribe,
            [
                (true, Some("None + Pending In")),
                (true, Some("None + Pending Out+In")),
                (false, None),
                (false, None),
                (true, Some("To + Pending In")),
                (false, None),
                (false, None),
                (false, None),
                (false, None),
            ],
        );
        // An entity already subscribed gets `subscribed` from the server itself.
        for name in ["From", "From + Pending Out", "Both"] {
            assert_eq!(
                inbound(st(name), Kind::Subscribe).reply,
                Some(Kind::Subscribed),
                "{name}"
            );
        }
        for name in ["None", "None + Pending In", "To"] {
            assert_eq!(inbound(st(name), Kind::Subscribe).reply, None, "{name}");
        }
        // §3.4: a pre-approved request is approved at once, not delivered.
        let approved = State {
            approved: true,
            ..st("To")
        };
        let got = inbound(approved, Kind::Subscribe);
        assert_eq!(
            got,
            Outcome {
                pass: false,
                new: Some(st("Both")),
                reply: Some(Kind::Subscribed),
            }
        );
    }

    #[test]
    fn a_3_2_inbound_unsubscribe() {
        check(
            "A.3.2",
            inbound,
            Kind::Unsubscribe,
            [
                (false, None),
                (false, None),
                (true, Some("None")),
                (true, Some("None + Pending Out")),
                (false, None),
                (true, Some("To")),
                (true, Some("None")),
                (true, Some("None + Pending Out")),
                (true, Some("To")),
            ],
        );
    }

    #[test]
    fn a_3_3_inbound_subscribed() {
        check(
            "A.3.3",
            inbound,
            Kind::Subscribed,
            [
                (false, None),
                (true, Some("To")),
                (false, None),
                (true, Some("To + Pending In")),
                (false, None),
                (false, None),
                (false, None),
                (true, Some("Both")),
                (false, None),
            ],
        );
    }

    #[test]
    fn a_3_4_inbound_unsubscribed() {
        check(
            "A.3.4",
            inbound,
            Kind::Unsubscribed,
            [
                (false, None),
                (true, Some("None")),
                (false, None),
                (true, Some("None + Pending In")),
                (true, Some("None")),
                (true, Some("None + Pending In")),
                (false, None),
                (true, Some("From")),
                (true, Some("From")),
            ],
        );
    }
}

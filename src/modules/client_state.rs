//! `mod_client_state`, Client State Indication (XEP-0352): while a client says its user is not using it
//! (`<inactive/>`), the server holds back what can wait — presence updates, keeping only the latest of
//! each sender's full JID, and standalone chat states (XEP-0085) — and sends at once everything that
//! matters (a message with a body, an IQ, a subscription request, an error…), after writing out what
//! was held, in order, so that nothing is overtaken by what arrived before it. `<active/>` writes out
//! the rest, in order, before the stream's next element is read (the XEP's in-order rule). The rules
//! are the pure functions of `proto::csi`; this file keeps the queues and carries the decisions out.
//!
//! A session that goes inactive makes its account *watched* (`ModuleCtx::watch`), so that the stanzas
//! for it pass `watched_deliver_packet` on the account's home shard, where they are held; accounts with
//! no inactive session stay on the fast paths. The queues live on the home shard, one per inactive
//! session, at most `max_queue` stanzas each (a full queue is written out before one more is held),
//! each copied out of the read buffer and stamped with a XEP-0203 `<delay/>` (when it arrived).
//! Subscription requests and stored offline messages reach sessions past the hooks
//! (`deliver_to_available`): CSI would send them at once anyway.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use super::hooks::{
    CLIENT_STATE, ClientState, SM_REGISTER_CONNECTION, SM_REMOVE_CONNECTION, SessionEvent,
    WATCHED_DELIVER, WatchedPacket,
};
use super::util::utc_timestamp;
use super::{Flow, HostModules, Module, ModuleCtx, ModuleOpts, OptKind, OptionSpec, Registrations};
use crate::proto::csi::{Decision, Held, Policy, classify, decide};
use crate::proto::jid::{bare_of, domain_of};
use crate::proto::xml::{Element, Limits, Node, Stanza, parse_element};

pub const PROTOCOLS: &[&str] = &["XEP-0352 v1.0.0", "XEP-0085 v2.1", "XEP-0203 v2.0"];

const MODULE: &str = "mod_client_state";

pub struct ClientStateIndication;

impl Module for ClientStateIndication {
    fn name(&self) -> &'static str {
        MODULE
    }
    fn doc(&self) -> &'static str {
        "XEP-0352 client state indication: presence updates and chat states wait while a client is inactive"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[
            OptionSpec {
                name: "queue_presence",
                kind: OptKind::Bool,
                default: "true",
                doc: "hold presence updates (available, unavailable) for an inactive client, the latest of each sender's full JID",
            },
            OptionSpec {
                name: "queue_chat_states",
                kind: OptKind::Bool,
                default: "true",
                doc: "hold standalone XEP-0085 chat states for an inactive client, the latest of each sender's full JID",
            },
            OptionSpec {
                name: "max_queue",
                kind: OptKind::Int {
                    min: 1,
                    max: 10_000,
                },
                default: "100",
                doc: "stanzas held per inactive session; a full queue is written out before one more is held",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let policy = Rc::new(Policy {
            queue_presence: opts.bool("queue_presence"),
            queue_chat_states: opts.bool("queue_chat_states"),
            max_queue: opts.int("max_queue") as usize,
        });
        Ok(Registrations::new()
            .hook(&CLIENT_STATE, 50, |ctx, ev: &mut ClientState| {
                if ev.active {
                    activate(ctx, &ev.account, &ev.full);
                } else {
                    deactivate(ctx, &ev.account, &ev.full);
                }
                Flow::Continue
            })
            // Late: what other modules do to a stanza for this session comes first; holding it is the
            // last step before the connection.
            .hook(&WATCHED_DELIVER, 90, move |ctx, p: &mut WatchedPacket| {
                deliver(ctx, p, &policy)
            })
            // Sessions are known by full JID, and a session replaced by a newer one with the same
            // full JID (`conflict`) ends after the newer one was bound. A stream begins active: the
            // newer session drops what was held for the one it replaced (its connection is ending),
            // and the older one's end leaves the newer one's state alone.
            .hook(&SM_REGISTER_CONNECTION, 50, |ctx, e: &mut SessionEvent| {
                forget(ctx, bare_of(&e.full), &e.full);
                Flow::Continue
            })
            .hook(&SM_REMOVE_CONNECTION, 50, |ctx, e: &mut SessionEvent| {
                // The connection is gone: what was held for it has nowhere to go.
                let (account, full) = (bare_of(&e.full), &*e.full);
                if is_inactive(ctx, account, full)
                    && !ctx.sessions(account).iter().any(|s| &*s.full == full)
                {
                    forget(ctx, account, full);
                }
                Flow::Continue
            }))
    }
    /// Stopped (a reload that removes the module or changes its options): its hooks are gone, so
    /// nothing would release what is held. Every inactive session of the host is made active: what
    /// it held is written out, in order, and its account no longer watched for this module. A client
    /// that wants to be inactive under the restarted module says so again.
    fn stop(&self, ctx: &ModuleCtx, host: &str) {
        let state = ctx.state::<InactiveSessions>();
        let accounts: Vec<Arc<str>> = state
            .0
            .borrow()
            .keys()
            .filter(|a| domain_of(a) == host)
            .cloned()
            .collect();
        for account in accounts {
            let sessions = state.0.borrow_mut().remove(&account).unwrap_or_default();
            ctx.watch(&account, MODULE, false);
            for s in sessions {
                flush(ctx, &account, &s.full, s.held);
            }
        }
    }
}

/// The hosts where `mod_client_state` runs: their streams offer the XEP-0352 feature.
pub fn csi_hosts(plan: &[HostModules]) -> Vec<String> {
    super::options::hosts_running(plan, MODULE, |_| true)
}

/// A stanza held for an inactive session.
struct HeldStanza {
    kind: Held,
    /// The sender, as stamped.
    from: Arc<str>,
    /// Copied out of the read buffer.
    stanza: Stanza,
}

/// One inactive session and what is held for it, oldest first.
struct Inactive {
    full: Arc<str>,
    held: VecDeque<HeldStanza>,
}

/// This shard's inactive sessions, by account (bare JID): the accounts homed here.
#[derive(Default)]
struct InactiveSessions(RefCell<HashMap<Arc<str>, Vec<Inactive>>>);

impl InactiveSessions {
    /// Removes the session's entry; its held stanzas, and whether it was the account's last.
    fn remove(&self, account: &str, full: &str) -> Option<(VecDeque<HeldStanza>, bool)> {
        let mut map = self.0.borrow_mut();
        let sessions = map.get_mut(account)?;
        let i = sessions.iter().position(|s| &*s.full == full)?;
        let held = sessions.swap_remove(i).held;
        let last = sessions.is_empty();
        if last {
            map.remove(account);
        }
        Some((held, last))
    }
}

/// Whether the session `full` of `account` is marked inactive here.
fn is_inactive(ctx: &ModuleCtx, account: &str, full: &str) -> bool {
    let state = ctx.state::<InactiveSessions>();
    let map = state.0.borrow();
    map.get(account)
        .is_some_and(|v| v.iter().any(|s| &*s.full == full))
}

fn deactivate(ctx: &ModuleCtx, account: &Arc<str>, full: &Arc<str>) {
    let state = ctx.state::<InactiveSessions>();
    {
        let mut map = state.0.borrow_mut();
        let sessions = map.entry(account.clone()).or_default();
        if sessions.iter().any(|s| s.full == *full) {
            return;
        }
        sessions.push(Inactive {
            full: full.clone(),
            held: VecDeque::new(),
        });
    }
    if !ctx.watch(account, MODULE, true) {
        // No session here (cannot happen for a bound session on its home shard): nothing to hold for.
        state.remove(account, full);
    }
}

fn activate(ctx: &ModuleCtx, account: &str, full: &str) {
    let state = ctx.state::<InactiveSessions>();
    let Some((held, last)) = state.remove(account, full) else {
        return;
    };
    if last {
        ctx.watch(account, MODULE, false);
    }
    flush(ctx, account, full, held);
}

fn forget(ctx: &ModuleCtx, account: &str, full: &str) {
    let state = ctx.state::<InactiveSessions>();
    if let Some((_, true)) = state.remove(account, full) {
        // Other sessions of the account may remain; they need not pass the hooks for this module.
        ctx.watch(account, MODULE, false);
    }
}

/// Writes out `held` to the session, in order, past every hook.
fn flush(ctx: &ModuleCtx, account: &str, full: &str, held: VecDeque<HeldStanza>) {
    for h in held {
        ctx.write_to_session(account, full, &h.stanza, &h.from);
    }
}

/// The stanza as it is held: a copy (a queue kept for hours must not pin the buffers its stanzas were
/// read into) stamped with a XEP-0203 `<delay/>` from the server saying when it arrived, so that the
/// client can tell how old a presence is when it gets it (as ejabberd does).
fn held_form(stanza: &Stanza, host: &str, now: SystemTime) -> Option<Stanza> {
    let mut el = stanza.to_element();
    el.children.push(Node::Element(
        Element::new("delay")
            .with_attr("xmlns", "urn:xmpp:delay")
            .with_attr("from", host)
            .with_attr("stamp", utc_timestamp(now)),
    ));
    parse_element(el.to_xml_string().as_bytes(), &Limits::default()).ok()
}

/// A stanza about to be written to a session of a watched account: held, or sent after what is held.
fn deliver(ctx: &ModuleCtx, p: &mut WatchedPacket, policy: &Policy) -> Flow {
    let Some(full) = p.session.clone() else {
        return Flow::Continue;
    };
    let state = ctx.state::<InactiveSessions>();
    let (class, decision) = {
        let map = state.0.borrow();
        let Some(session) = map
            .get(&*p.account)
            .and_then(|v| v.iter().find(|s| s.full == full))
        else {
            return Flow::Continue;
        };
        let class = classify(&p.stanza, &p.from, &p.account, policy);
        let held = session.held.iter().map(|h| (&*h.from, h.kind));
        (class, decide(held, class, &p.from, policy.max_queue))
    };
    let copy = match (decision, class) {
        (Decision::FlushThenSend, _) | (_, None) => None,
        (_, Some(kind)) => {
            held_form(&p.stanza, domain_of(&p.account), ctx.now()).map(|stanza| HeldStanza {
                kind,
                from: p.from.clone(),
                stanza,
            })
        }
    };
    let mut map = state.0.borrow_mut();
    let Some(session) = map
        .get_mut(&*p.account)
        .and_then(|v| v.iter_mut().find(|s| s.full == full))
    else {
        return Flow::Continue;
    };
    match (decision, copy) {
        (Decision::Hold { replaces }, Some(copy)) => {
            if let Some(i) = replaces {
                session.held.remove(i);
            }
            session.held.push_back(copy);
            Flow::Stop
        }
        (Decision::FlushThenHold, Some(copy)) => {
            let out = std::mem::replace(&mut session.held, VecDeque::from([copy]));
            drop(map);
            flush(ctx, &p.account, &full, out);
            Flow::Stop
        }
        // It matters (or could not be copied): what is held first, then it.
        _ => {
            let out = std::mem::take(&mut session.held);
            drop(map);
            flush(ctx, &p.account, &full, out);
            Flow::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ctx::SessionInfo;
    use super::super::ctx::testing::TestShard;
    use super::super::hooks::{self, CLIENT_STATE, WATCHED_DELIVER};
    use super::*;
    use crate::proto::xml::{Limits, parse_element};

    const JULIET: &str = "juliet@example.org";
    const PHONE: &str = "juliet@example.org/phone";
    const DESK: &str = "juliet@example.org/desk";

    /// A shard running the module (with `options`) and Juliet's two sessions.
    fn shard(options: &str) -> Rc<TestShard> {
        let shard = TestShard::new();
        let plan = super::super::options::plan(
            &format!("[modules.mod_client_state]\n{options}"),
            &["example.org".to_string()],
        )
        .unwrap();
        super::super::apply_plan(&shard.ctx(), &plan).unwrap();
        let sessions = [PHONE, DESK].map(|f| SessionInfo {
            full: f.into(),
            available: true,
            priority: 0,
        });
        shard
            .sessions
            .borrow_mut()
            .insert(JULIET.into(), sessions.to_vec());
        shard
    }

    fn nonza(shard: &Rc<TestShard>, full: &str, active: bool) {
        let mut ev = ClientState {
            account: JULIET.into(),
            full: full.into(),
            active,
        };
        hooks::run(&shard.ctx(), &CLIENT_STATE, "example.org", &mut ev);
    }

    /// Offers a stanza from `from` to the session `full`; whether it went on.
    fn offer(shard: &Rc<TestShard>, full: &str, from: &str, xml: &str) -> bool {
        let mut p = WatchedPacket {
            account: JULIET.into(),
            session: Some(full.into()),
            from: from.into(),
            stanza: parse_element(xml.as_bytes(), &Limits::default()).unwrap(),
        };
        hooks::run(&shard.ctx(), &WATCHED_DELIVER, "example.org", &mut p) == Flow::Continue
    }

    /// What was written past the hooks since the last call: (session, sender, `<show/>` or body text).
    fn written(shard: &Rc<TestShard>) -> Vec<(String, String, String)> {
        shard
            .written
            .borrow_mut()
            .drain(..)
            .map(|(full, s, from)| {
                let el = s.to_element();
                let text = el
                    .child("show")
                    .or(el.child("body"))
                    .map(|c| c.text())
                    .unwrap_or_else(|| el.name.clone());
                (full, from.to_string(), text)
            })
            .collect()
    }

    fn show(s: &str) -> String {
        format!("<presence xmlns='jabber:client'><show>{s}</show></presence>")
    }

    const COMPOSING: &str = "<message xmlns='jabber:client' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>";
    const R1: &str = "romeo@example.net/1";
    const R2: &str = "romeo@example.net/2";

    fn w(full: &str, from: &str, text: &str) -> (String, String, String) {
        (full.into(), from.into(), text.into())
    }

    #[test]
    fn held_while_inactive_then_flushed_in_order() {
        let s = shard("");
        // Active: nothing is held.
        assert!(offer(&s, PHONE, R1, &show("chat")));
        nonza(&s, PHONE, false);
        assert!(!offer(&s, PHONE, R1, &show("away")));
        assert!(!offer(&s, PHONE, R2, &show("dnd")));
        assert!(!offer(&s, PHONE, R1, COMPOSING));
        // The newer presence of R1 replaces the older and goes to the end.
        assert!(!offer(&s, PHONE, R1, &show("xa")));
        // The other session is active: untouched.
        assert!(offer(&s, DESK, R1, &show("xa")));
        assert!(written(&s).is_empty());
        // A message with a body: what is held goes first, in order, then it (the caller writes it).
        let body = "<message xmlns='jabber:client' type='chat'><body>hi</body></message>";
        assert!(offer(&s, PHONE, R1, body));
        assert_eq!(
            written(&s),
            [
                w(PHONE, R2, "dnd"),
                w(PHONE, R1, "message"),
                w(PHONE, R1, "xa")
            ]
        );
        // Still inactive: held again; `active` writes it out and holds nothing more.
        assert!(!offer(&s, PHONE, R2, &show("away")));
        assert!(!offer(
            &s,
            PHONE,
            R2,
            "<presence xmlns='jabber:client' type='unavailable'/>"
        ));
        nonza(&s, PHONE, true);
        assert_eq!(written(&s), [w(PHONE, R2, "presence")]);
        assert!(offer(&s, PHONE, R2, &show("chat")));
        assert!(written(&s).is_empty());
    }

    #[test]
    fn what_was_held_says_when_it_arrived() {
        let s = shard("");
        nonza(&s, PHONE, false);
        assert!(!offer(&s, PHONE, R1, &show("away")));
        assert!(offer(
            &s,
            PHONE,
            R1,
            "<message xmlns='jabber:client'><body>b</body></message>"
        ));
        let written = s.written.borrow_mut().drain(..).collect::<Vec<_>>();
        assert_eq!(written.len(), 1);
        let el = written[0].1.to_element();
        let delay = el.child("delay").unwrap_or_else(|| panic!("{el}"));
        assert_eq!(delay.namespace(), Some("urn:xmpp:delay"));
        assert_eq!(delay.attr("from"), Some("example.org"));
        assert!(
            delay.attr("stamp").is_some_and(|t| t.ends_with('Z')),
            "{el}"
        );
        assert_eq!(el.child("show").map(|c| c.text()).as_deref(), Some("away"));
    }

    #[test]
    fn what_matters_goes_at_once() {
        let s = shard("");
        nonza(&s, PHONE, false);
        for xml in [
            "<presence xmlns='jabber:client' type='subscribe'/>",
            "<iq xmlns='jabber:client' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<message xmlns='jabber:client' type='error'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        ] {
            assert!(offer(&s, PHONE, R1, xml), "{xml}");
        }
        // The account's own chat states keep its clients in step.
        assert!(offer(&s, PHONE, DESK, COMPOSING));
        assert!(written(&s).is_empty(), "nothing was held");
    }

    #[test]
    fn a_full_queue_is_flushed_before_one_more_is_held() {
        let s = shard("max_queue = 2\n");
        nonza(&s, PHONE, false);
        assert!(!offer(&s, PHONE, R1, &show("away")));
        assert!(!offer(&s, PHONE, R2, &show("away")));
        // A replacement fits in a full queue.
        assert!(!offer(&s, PHONE, R2, &show("dnd")));
        assert!(written(&s).is_empty());
        assert!(!offer(&s, PHONE, "nurse@example.org/n", &show("xa")));
        assert_eq!(written(&s), [w(PHONE, R1, "away"), w(PHONE, R2, "dnd")]);
        nonza(&s, PHONE, true);
        assert_eq!(written(&s), [w(PHONE, "nurse@example.org/n", "xa")]);
    }

    #[test]
    fn stopping_the_module_writes_out_what_it_held() {
        let s = shard("");
        nonza(&s, PHONE, false);
        nonza(&s, DESK, false);
        assert!(!offer(&s, PHONE, R1, &show("away")));
        assert!(!offer(&s, DESK, R2, &show("dnd")));
        super::super::stop_module(&s.ctx(), "another.example", MODULE);
        assert!(
            written(&s).is_empty(),
            "another host's sessions are left alone"
        );
        super::super::stop_module(&s.ctx(), "example.org", MODULE);
        let mut got = written(&s);
        got.sort();
        assert_eq!(got, [w(DESK, R2, "dnd"), w(PHONE, R1, "away")]);
        assert!(s.ctx().state::<InactiveSessions>().0.borrow().is_empty());
        // Started again, the sessions are active until they say otherwise.
        let plan = super::super::options::plan(
            "[modules.mod_client_state]\n",
            &["example.org".to_string()],
        )
        .unwrap();
        super::super::apply_plan(&s.ctx(), &plan).unwrap();
        assert!(offer(&s, PHONE, R1, &show("xa")));
    }

    fn session_event(s: &Rc<TestShard>, point: &hooks::HookPoint<SessionEvent>, full: &str) {
        let mut ev = SessionEvent {
            full: full.into(),
            user: "juliet".into(),
            host: "example.org".into(),
            status: String::new(),
        };
        hooks::run(&s.ctx(), point, "example.org", &mut ev);
    }

    #[test]
    fn a_session_replaced_with_its_full_jid() {
        let s = shard("");
        nonza(&s, PHONE, false);
        assert!(!offer(&s, PHONE, R1, &show("away")));
        // A new connection binds `phone` (the table now holds it; the old one is ending): it begins
        // active, and what was held for the old one is dropped.
        session_event(&s, &SM_REGISTER_CONNECTION, PHONE);
        assert!(offer(&s, PHONE, R1, &show("dnd")));
        // The new one goes inactive; the old one's end, coming after, leaves it so.
        nonza(&s, PHONE, false);
        session_event(&s, &SM_REMOVE_CONNECTION, PHONE);
        assert!(!offer(&s, PHONE, R1, &show("xa")));
        nonza(&s, PHONE, true);
        assert_eq!(written(&s), [w(PHONE, R1, "xa")]);
    }

    #[test]
    fn options_and_the_session_end() {
        let s = shard("queue_presence = false\n");
        nonza(&s, PHONE, false);
        assert!(offer(&s, PHONE, R1, &show("away")));
        assert!(!offer(&s, PHONE, R1, COMPOSING));
        // The session ends (the table no longer holds it): what was held is dropped, and it is not
        // inactive any more.
        s.sessions.borrow_mut().get_mut(JULIET).unwrap().remove(0);
        session_event(&s, &SM_REMOVE_CONNECTION, PHONE);
        assert!(offer(&s, PHONE, R1, COMPOSING));
        nonza(&s, PHONE, true);
        assert!(written(&s).is_empty());
        assert!(s.ctx().state::<InactiveSessions>().0.borrow().is_empty());
    }
}

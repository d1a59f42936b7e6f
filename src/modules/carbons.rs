//! `mod_carbons`, Message Carbons (XEP-0280): a resource enables or disables carbons with an IQ to its
//! own account; while any resource of an account has them on, the module watches the account
//! (`ModuleCtx::watch`) and, on its home shard, writes forwarded copies to its carbons-enabled
//! resources: of each eligible message one of its sessions sends (`<sent/>`, to every enabled resource
//! but the sender) and of each eligible message that reaches it (`<received/>`, to every enabled
//! resource the delivery rules did not give the original to). A carbons-enabled resource gets copies
//! whether or not it is available: XEP-0280 speaks of carbons-enabled resources only, and clients are
//! advised to enable carbons before their initial presence. Which messages are eligible, and the
//! copies themselves, are `proto::carbons`. A message kept offline (no resource available) gets no
//! copy: the account gets it at its next initial presence.
//! `<private/>` (§9) is removed from what the account's sessions receive. Accounts nobody enabled
//! carbons for are not watched, so their stanzas keep the allocation-free paths.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use super::hooks::{
    DISCO_FEATURES, DiscoQuery, SM_REGISTER_CONNECTION, SM_REMOVE_CONNECTION, SessionEvent,
    WATCHED_DELIVER, WATCHED_DELIVERED, WATCHED_RECEIVE, WATCHED_SEND, WatchedDelivered,
    WatchedPacket,
};
use super::iq::handler;
use super::util::iqdisc;
use super::{
    Component, Flow, Iq, IqError, IqResult, IqType, Module, ModuleCtx, ModuleOpts, OptionSpec,
    Registrations,
};
use crate::proto::carbons::{
    Direction, NS_CARBONS, eligible, forwarded_copy, mentions_carbons, without_private,
};
use crate::proto::errors::StanzaErrorCondition as Cond;
use crate::proto::xml::{Stanza, StanzaKind};

pub const PROTOCOLS: &[&str] = &["XEP-0280 v1.0.1", "XEP-0297 v1.0", "XEP-0334 v0.3"];

const MODULE: &str = "mod_carbons";

pub struct Carbons;

impl Module for Carbons {
    fn name(&self) -> &'static str {
        MODULE
    }
    fn doc(&self) -> &'static str {
        "XEP-0280 message carbons: copies of sent and received messages to a user's other resources"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[iqdisc("\"no_queue\"")];
        O
    }
    /// Stopped on `host` (a reload): its accounts' carbons end and they are no longer watched for it,
    /// so that starting it again begins with every resource off, as the clients will expect.
    fn stop(&self, ctx: &ModuleCtx, host: &str) {
        let enabled = ctx.state::<Enabled>();
        let accounts: Vec<Arc<str>> = enabled
            .0
            .borrow()
            .keys()
            .filter(|bare| crate::proto::jid::domain_of(bare) == host)
            .cloned()
            .collect();
        for bare in accounts {
            enabled.0.borrow_mut().remove(&bare);
            ctx.watch(&bare, MODULE, false);
        }
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        Ok(Registrations::new()
            .iq(
                Component::Sm,
                NS_CARBONS,
                opts.iqdisc(),
                handler(carbons_iq),
            )
            .hook(&DISCO_FEATURES, 50, |_, q: &mut DiscoQuery| {
                if q.component == Component::Local && q.node.is_none() {
                    q.features.push(NS_CARBONS.into());
                }
                Flow::Continue
            })
            .hook(&WATCHED_SEND, 50, |ctx, p: &mut WatchedPacket| {
                sent(ctx, p);
                Flow::Continue
            })
            .hook(&WATCHED_RECEIVE, 50, |_, p: &mut WatchedPacket| {
                strip_private(p);
                Flow::Continue
            })
            .hook(&WATCHED_DELIVERED, 50, |ctx, d: &mut WatchedDelivered| {
                received(ctx, d);
                Flow::Continue
            })
            // A session bound again with the same full JID (the old one replaced) starts without
            // carbons; the old one's end then leaves the new one's alone.
            .hook(&SM_REGISTER_CONNECTION, 50, |ctx, e: &mut SessionEvent| {
                let bare = format!("{}@{}", e.user, e.host);
                set(ctx, &bare, &e.full, false);
                Flow::Continue
            })
            .hook(&SM_REMOVE_CONNECTION, 50, |ctx, e: &mut SessionEvent| {
                let bare = format!("{}@{}", e.user, e.host);
                if !ctx.sessions(&bare).iter().any(|s| s.full == e.full) {
                    set(ctx, &bare, &e.full, false);
                }
                Flow::Continue
            }))
    }
}

/// The carbons-enabled resources of the accounts homed on this shard, by bare JID. An account is here
/// only while one of its resources has carbons on, and is watched exactly then.
#[derive(Default)]
struct Enabled(RefCell<HashMap<Arc<str>, Vec<Arc<str>>>>);

impl Enabled {
    /// The enabled resources of `bare` other than those in `but`.
    fn others(&self, bare: &str, but: &[Arc<str>]) -> Vec<Arc<str>> {
        self.0
            .borrow()
            .get(bare)
            .map(|fulls| fulls.iter().filter(|f| !but.contains(f)).cloned().collect())
            .unwrap_or_default()
    }
}

/// Turns carbons on or off for the session `full` of `bare`, and watches the account while any of its
/// resources has them on.
fn set(ctx: &ModuleCtx, bare: &str, full: &Arc<str>, on: bool) {
    let enabled = ctx.state::<Enabled>();
    let watched = {
        let mut map = enabled.0.borrow_mut();
        if on {
            let fulls = map.entry(Arc::from(bare)).or_default();
            if !fulls.contains(full) {
                fulls.push(full.clone());
            }
        } else if let Some(fulls) = map.get_mut(bare) {
            fulls.retain(|f| f != full);
            if fulls.is_empty() {
                map.remove(bare);
            }
        }
        map.contains_key(bare)
    };
    // Asked every time rather than on a change: the account's watch ends with its last session, and
    // this keeps the two in step even if one was missed (the module stopped and started meanwhile).
    ctx.watch(bare, MODULE, watched);
}

/// `<enable/>` and `<disable/>` (§4, §5), from a session of the account itself.
fn carbons_iq(iq: &Iq) -> IqResult {
    if iq.type_ == IqType::Get {
        return Err(IqError::new(Cond::NotAllowed));
    }
    // Only a resource of the account, for itself (§4.1, §5.1: not-allowed).
    let bare = iq.to.bare_str();
    let full: Arc<str> = Arc::from(iq.from.as_str());
    if !iq.from_owner()
        || iq.from.resource().is_none()
        || !iq.ctx.sessions(bare).iter().any(|s| s.full == full)
    {
        return Err(IqError::new(Cond::NotAllowed));
    }
    let on = match iq.payload.name.rsplit(':').next().unwrap_or_default() {
        "enable" => true,
        "disable" => false,
        _ => {
            return Err(IqError::bad_request(
                "expected <enable/> or <disable/> in urn:xmpp:carbons:2",
            ));
        }
    };
    // Enabling twice, or disabling what is off, is no error (§10.1).
    set(&iq.ctx, bare, &full, on);
    Ok(None)
}

/// §8: an eligible message a session of the account sent goes, as `<sent/>`, to the account's other
/// carbons-enabled resources.
fn sent(ctx: &ModuleCtx, p: &WatchedPacket) {
    if p.stanza.kind() != StanzaKind::Message {
        return;
    }
    let sender = p.session.iter().cloned().collect::<Vec<_>>();
    let targets = ctx.state::<Enabled>().others(&p.account, &sender);
    copy(
        ctx,
        Direction::Sent,
        &p.account,
        &p.stanza,
        &p.from,
        &targets,
    );
}

/// §7: an eligible message that reached the account goes, as `<received/>`, to its carbons-enabled
/// resources that did not get the original.
fn received(ctx: &ModuleCtx, d: &WatchedDelivered) {
    if d.stanza.kind() != StanzaKind::Message {
        return;
    }
    let targets = ctx.state::<Enabled>().others(&d.account, &d.sessions);
    copy(
        ctx,
        Direction::Received,
        &d.account,
        &d.stanza,
        &d.from,
        &targets,
    );
}

fn copy(
    ctx: &ModuleCtx,
    direction: Direction,
    account: &Arc<str>,
    original: &Stanza,
    from: &str,
    targets: &[Arc<str>],
) {
    if targets.is_empty() || !eligible(direction, &original.to_element()) {
        return;
    }
    for to in targets {
        match forwarded_copy(direction, original, from, account, to) {
            Some(c) => {
                // Through `watched_deliver_packet` like any stanza for the session, so that a client
                // state module writes out what it holds for an inactive session first.
                let mut packet = WatchedPacket {
                    account: account.clone(),
                    session: Some(to.clone()),
                    from: account.clone(),
                    stanza: c,
                };
                let host = crate::proto::jid::domain_of(account);
                if super::hooks::run(ctx, &WATCHED_DELIVER, host, &mut packet) == Flow::Continue {
                    ctx.write_to_session(account, to, &packet.stanza, account);
                }
            }
            None => log::error!("mod_carbons: a copy for {to} did not parse"),
        }
    }
}

/// §9: the receiving server removes `<private/>` before delivering.
fn strip_private(p: &mut WatchedPacket) {
    if p.stanza.kind() != StanzaKind::Message || !mentions_carbons(&p.stanza) {
        return;
    }
    if let Some(stripped) = without_private(&p.stanza.to_element()) {
        p.stanza = stripped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::ctx::SessionInfo;
    use crate::modules::ctx::testing::TestShard;
    use crate::modules::hooks;
    use crate::proto::jid::Jid;
    use crate::proto::xml::{Element, Limits, parse_element};
    use std::rc::Rc;

    const A: &str = "alice@example.org";

    fn shard(resources: &[&str]) -> (Rc<TestShard>, ModuleCtx) {
        let shard = TestShard::new();
        let ctx = shard.ctx();
        shard.sessions.borrow_mut().insert(
            A.to_string(),
            resources
                .iter()
                .map(|r| SessionInfo {
                    full: format!("{A}/{r}").into(),
                    available: true,
                    priority: 0,
                })
                .collect(),
        );
        let plan = crate::modules::options::plan(
            "[modules]\nmod_carbons = true\n",
            &["example.org".to_string()],
        )
        .unwrap();
        let opts = plan[0].modules[0].1.clone();
        let regs = Carbons.start("example.org", &opts).unwrap();
        ctx.modules()
            .borrow_mut()
            .install("example.org", MODULE, &opts, regs);
        (shard, ctx)
    }

    fn iq(ctx: &ModuleCtx, from: &str, to: &str, type_: IqType, payload: &str) -> IqResult {
        carbons_iq(&Iq {
            id: "c1".into(),
            type_,
            from: Jid::parse(from).unwrap(),
            to: Jid::parse(to).unwrap(),
            host: "example.org".into(),
            lang: None,
            payload: Element::parse(payload).unwrap(),
            ctx: ctx.clone(),
        })
    }

    fn enable(ctx: &ModuleCtx, r: &str) {
        let full = format!("{A}/{r}");
        assert_eq!(
            iq(
                ctx,
                &full,
                A,
                IqType::Set,
                "<enable xmlns='urn:xmpp:carbons:2'/>"
            ),
            Ok(None)
        );
    }

    fn message(xml: &str) -> Stanza {
        parse_element(xml.as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn enable_and_disable_are_for_the_account_itself() {
        let (_shard, ctx) = shard(&["a", "b"]);
        enable(&ctx, "a");
        enable(&ctx, "a");
        assert_eq!(ctx.state::<Enabled>().others(A, &[]).len(), 1);
        let no = |r: IqResult| assert_eq!(r.unwrap_err().condition, Cond::NotAllowed);
        no(iq(
            &ctx,
            "mallory@example.org/x",
            A,
            IqType::Set,
            "<enable xmlns='urn:xmpp:carbons:2'/>",
        ));
        no(iq(
            &ctx,
            &format!("{A}/gone"),
            A,
            IqType::Set,
            "<enable xmlns='urn:xmpp:carbons:2'/>",
        ));
        no(iq(
            &ctx,
            &format!("{A}/a"),
            A,
            IqType::Get,
            "<enable xmlns='urn:xmpp:carbons:2'/>",
        ));
        assert_eq!(
            iq(
                &ctx,
                &format!("{A}/a"),
                A,
                IqType::Set,
                "<toggle xmlns='urn:xmpp:carbons:2'/>"
            )
            .unwrap_err()
            .condition,
            Cond::BadRequest
        );
        for _ in 0..2 {
            assert_eq!(
                iq(
                    &ctx,
                    &format!("{A}/a"),
                    A,
                    IqType::Set,
                    "<disable xmlns='urn:xmpp:carbons:2'/>"
                ),
                Ok(None)
            );
        }
        assert!(ctx.state::<Enabled>().0.borrow().is_empty());
    }

    #[test]
    fn sent_copies_go_to_the_other_enabled_resources() {
        let (shard, ctx) = shard(&["a", "b", "c"]);
        enable(&ctx, "a");
        enable(&ctx, "b");
        let mut p = WatchedPacket {
            account: A.into(),
            session: Some(format!("{A}/a").into()),
            from: format!("{A}/a").into(),
            stanza: message(
                "<message xmlns='jabber:client' to='bob@example.org' type='chat'><body>hi</body></message>",
            ),
        };
        assert_eq!(
            hooks::run(&ctx, &WATCHED_SEND, "example.org", &mut p),
            Flow::Continue
        );
        let written = shard.written.borrow();
        assert_eq!(written.len(), 1);
        let (to, copy, from) = &written[0];
        assert_eq!(to, &format!("{A}/b"));
        assert_eq!(&**from, A);
        assert!(copy.to_element().child("sent").is_some());
    }

    #[test]
    fn received_copies_skip_the_resources_that_got_the_original() {
        let (shard, ctx) = shard(&["a", "b", "c"]);
        enable(&ctx, "a");
        enable(&ctx, "b");
        let original = message(
            "<message xmlns='jabber:client' to='alice@example.org' type='chat'><body>hi</body></message>",
        );
        let mut d = WatchedDelivered {
            account: A.into(),
            from: "bob@example.org/x".into(),
            stanza: original.clone(),
            sessions: vec![format!("{A}/b").into()],
        };
        hooks::run(&ctx, &WATCHED_DELIVERED, "example.org", &mut d);
        {
            let written = shard.written.borrow();
            assert_eq!(written.len(), 1);
            assert_eq!(written[0].0, format!("{A}/a"));
            assert!(written[0].1.to_element().child("received").is_some());
        }
        // Private, no copy; and the delivered original loses its <private/>.
        let private = message(
            "<message xmlns='jabber:client' type='chat'><body>hi</body><private xmlns='urn:xmpp:carbons:2'/></message>",
        );
        let mut d = WatchedDelivered {
            stanza: private.clone(),
            ..d
        };
        hooks::run(&ctx, &WATCHED_DELIVERED, "example.org", &mut d);
        assert_eq!(shard.written.borrow().len(), 1);
        let mut p = WatchedPacket {
            account: A.into(),
            session: None,
            from: "bob@example.org/x".into(),
            stanza: private,
        };
        hooks::run(&ctx, &WATCHED_RECEIVE, "example.org", &mut p);
        assert!(p.stanza.to_element().child("private").is_none());
        assert!(p.stanza.to_element().child("body").is_some());
    }

    #[test]
    fn a_session_that_ends_takes_its_carbons_along() {
        let (shard, ctx) = shard(&["a", "b"]);
        enable(&ctx, "a");
        shard
            .sessions
            .borrow_mut()
            .get_mut(A)
            .unwrap()
            .retain(|s| !s.full.ends_with("/a"));
        let mut e = SessionEvent {
            full: format!("{A}/a").into(),
            user: "alice".into(),
            host: "example.org".into(),
            status: String::new(),
        };
        hooks::run(&ctx, &SM_REMOVE_CONNECTION, "example.org", &mut e);
        assert!(ctx.state::<Enabled>().0.borrow().is_empty());
    }
}

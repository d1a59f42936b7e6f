//! The session manager's work on the home shard (ejabberd_sm): binding a resource (and replacing one with
//! the same full JID: `conflict`), unbinding it when its connection ends, the presence state of each
//! session and its broadcast, the session hooks, and delivery to an account: a stanza that reached the
//! account's home is decided by the RFC 6121 §8.5 rules of [`super::deliver`] and carried out — written to
//! the chosen sessions' sinks, answered for the account (IQs to the bare JID go to the `ejabberd_sm`
//! handlers), offered to `offline_message`, or bounced. Only this file changes the session table.

use std::rc::Rc;
use std::sync::Arc;

use super::deliver::{Delivery, StanzaType, decide, is_request};
use crate::modules::hooks::{
    self, IN_SUBSCRIPTION, OFFLINE_MESSAGE, OfflineMessage, PRESENCE_PROBE, PresenceProbe,
    PresenceUpdate, SM_REGISTER_CONNECTION, SM_REMOVE_CONNECTION, SessionEvent, SubscriptionStanza,
    UNSET_PRESENCE, USER_AVAILABLE, USER_PRESENCE, USER_RECEIVE_PACKET, WATCHED_DELIVER,
    WATCHED_DELIVERED, WATCHED_RECEIVE, WatchedDelivered, WatchedPacket, run_packet,
};
use crate::modules::iq::{self, Component};
use crate::proto::c2s::BindError;
use crate::proto::errors::{StanzaErrorCondition, StreamErrorCondition};
use crate::proto::jid::{Jid, JidView, bare_of, domain_of};
use crate::proto::subscription::Kind;
use crate::proto::xml::{Limits, Stanza, StanzaKind, parse_element};
use crate::shard::Shard;
use crate::sink::SinkId;
use crate::sm::table::Watch;

/// A bound session as its connection and the router see it.
#[derive(Clone)]
pub struct SessionRef {
    pub bare: Arc<str>,
    pub full: Arc<str>,
    pub sink: SinkId,
    /// Whether a module watches the account's stanzas (`watched_send_packet` then runs).
    pub watch: Watch,
}

/// Binds `resource` (a random one when the client asked for none) of the authenticated `user` to the
/// connection `sink`. A session with the same full JID is replaced and its connection ends with
/// `conflict`; `sm_register_connection` runs.
pub fn bind(
    shard: &Rc<Shard>,
    user: &Jid,
    resource: Option<String>,
    sink: SinkId,
) -> Result<(Jid, SessionRef), BindError> {
    let resource = resource.unwrap_or_else(|| {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).expect("the OS random source works");
        r.iter().map(|b| format!("{b:02x}")).collect()
    });
    let full = user
        .with_resource(&resource)
        .map_err(|_| BindError::BadResource)?;
    let max = shard.config().limits.max_sessions_per_user;
    let bound = shard.sessions().borrow_mut().bind(
        user.bare_str(),
        full.resource().expect("full JID"),
        sink,
        max,
    )?;
    let session = SessionRef {
        bare: bound.bare,
        full: bound.full,
        sink,
        watch: bound.watch,
    };
    if let Some(old) = bound.replaced {
        if let Some(s) = shard.sink(old) {
            s.kill(StreamErrorCondition::Conflict);
        }
        // The replaced session ends here, before the new one begins: its connection's own end finds
        // nothing left to unbind, and modules' state kept by full JID is not carried over.
        let replaced = SessionRef {
            sink: old,
            ..session.clone()
        };
        ended(shard, &replaced, bound.replaced_available);
    }
    session_hook(shard, &SM_REGISTER_CONNECTION, &session, "");
    Ok((full, session))
}

/// The connection of `session` ended: the session goes, its other available resources are told when it
/// left without unavailable presence, and the session hooks run.
pub fn unbind(shard: &Rc<Shard>, session: &SessionRef) {
    let removed = shard
        .sessions()
        .borrow_mut()
        .unbind(&session.bare, session.sink);
    // A session replaced by a newer bind of its full JID ended at that bind.
    if let Some(s) = removed {
        ended(shard, session, s.available);
    }
}

/// A session is gone (its connection ended, or a newer one took its full JID): when it was available,
/// the account's other resources and its contacts are told; the session hooks run.
fn ended(shard: &Rc<Shard>, session: &SessionRef, was_available: bool) {
    if was_available
        && let Ok(unavailable) = parse_element(
            b"<presence xmlns='jabber:client' type='unavailable'/>",
            &Limits::default(),
        )
    {
        broadcast_unavailable(shard, session, &unavailable);
        session_hook(shard, &UNSET_PRESENCE, session, "");
        presence_hook(shard, session, false, false, unavailable);
    }
    session_hook(shard, &SM_REMOVE_CONNECTION, session, "");
}

/// A session of an account homed here ended elsewhere without this shard holding it: its home's host
/// died, and the host that held its client's socket says so (docs/cluster-protocol.md §9.2). The
/// modules hear of it as of a session that ended here (last activity, presence bookkeeping), unless
/// the same full JID is bound here again already. Its contacts are not sent its unavailable from here:
/// each contact's home shard learns from its presence ledger, which also covers the recipients of
/// directed presence, and a broadcast here would reach them twice.
pub fn lost_elsewhere(shard: &Rc<Shard>, full: &str) {
    let bare = crate::proto::jid::bare_of(full);
    if shard
        .sessions()
        .borrow()
        .sessions(bare)
        .iter()
        .any(|s| &*s.full == full)
    {
        return;
    }
    let (user, host) = bare.split_once('@').unwrap_or(("", bare));
    let event = || SessionEvent {
        full: full.into(),
        user: user.to_string(),
        host: host.to_string(),
        status: String::new(),
    };
    for hook in [&UNSET_PRESENCE, &SM_REMOVE_CONNECTION] {
        if shard.has_hook(hook) {
            hooks::run(&shard.ctx(), hook, host, &mut event());
        }
    }
}

/// A stanza without `to` from a session: presence is the session's own (broadcast), a message is for the
/// sender's bare JID (RFC 6120 §10.3.1), an IQ is answered by the server for the account (§10.3.3).
pub fn without_to(shard: &Rc<Shard>, from: &SessionRef, stanza: Stanza) {
    match stanza.kind() {
        StanzaKind::Presence => self_presence(shard, from, &stanza),
        StanzaKind::Message => deliver_local(shard, stanza, from.full.clone()),
        StanzaKind::Iq if is_request(&stanza) => iq::dispatch(
            &shard.ctx(),
            Component::Sm,
            domain_of(&from.bare),
            &stanza,
            &from.full,
            &from.bare,
        ),
        _ => {}
    }
}

/// On the home shard of the stanza's `to` account: decide delivery and carry it out.
pub fn deliver_local(shard: &Rc<Shard>, stanza: Stanza, from: Arc<str>) {
    // The common case first, without allocating or touching a reference count: a full JID whose session
    // exists, and no hook to run; the stanza is handed over.
    if let Some(sink) = full_jid_session(shard, &stanza)
        && !shard.has_hook(&USER_RECEIVE_PACKET)
    {
        if let Some(s) = shard.sink(sink) {
            s.deliver_owned(stanza, from);
        }
        return;
    }
    // A watched account's modules see the stanza before the rules choose where it goes, and (with the
    // stanza as it arrived) which of its sessions they chose.
    let (stanza, delivered) = match watched_recipient(shard, &stanza, &from) {
        Some(account) => {
            let arrived = shard.has_hook(&WATCHED_DELIVERED).then(|| stanza.clone());
            let mut packet = WatchedPacket {
                account: account.clone(),
                session: None,
                from: from.clone(),
                stanza,
            };
            let host = domain_of(&account);
            if hooks::run(&shard.ctx(), &WATCHED_RECEIVE, host, &mut packet) == hooks::Flow::Stop {
                return;
            }
            (packet.stanza, arrived.map(|a| (packet.account, a)))
        }
        None => (stanza, None),
    };
    let to_attr = stanza.to();
    let owned;
    let to = match to_attr.as_deref() {
        None => match JidView::canonical(&from) {
            // A message without `to` is for the sender's own bare JID.
            Some(v) => JidView {
                text: v.bare(),
                local: v.local,
                domain: v.domain,
                resource: None,
            },
            None => match Jid::parse(&from) {
                Ok(j) => {
                    owned = j.bare();
                    owned.view()
                }
                Err(_) => return,
            },
        },
        Some(t) => match JidView::canonical(t) {
            Some(v) => v,
            None => match Jid::parse(t) {
                Ok(j) => {
                    owned = j;
                    owned.view()
                }
                Err(_) => return,
            },
        },
    };
    let kind = stanza.kind();
    let ty = StanzaType::classify(kind, stanza.type_().as_deref());
    let bare = to.bare();
    // A receive handler that readdressed the stanza made it another account's business.
    let delivered = delivered.filter(|(account, _)| **account == *bare);
    // A subscription stanza for this account: the roster's keeper (mod_roster) takes it over.
    if ty == StanzaType::Subscription
        && shard.has_hook(&IN_SUBSCRIPTION)
        && let Some(kind) = stanza.type_().as_deref().and_then(Kind::parse)
    {
        let mut event = SubscriptionStanza {
            user: bare.to_string(),
            contact: bare_of(&from).to_string(),
            kind,
            stanza: stanza.clone(),
        };
        let host = to.domain.to_string();
        if hooks::run(&shard.ctx(), &IN_SUBSCRIPTION, &host, &mut event) == hooks::Flow::Stop {
            return;
        }
    }
    // A full JID whose session exists, which the fast path above left: a `user_receive_packet` hook to
    // run, or an address that needed preparing.
    if let Some(resource) = to.resource
        && ty != StanzaType::Probe
        && ty != StanzaType::Unknown
    {
        let sink = {
            let table = shard.sessions().borrow();
            table
                .sessions(bare)
                .iter()
                .find(|s| &*s.resource == resource)
                .map(|s| s.sink)
        };
        if let Some(sink) = sink {
            deliver_to_session(shard, sink, &stanza, &from, to.text);
            if let Some((account, arrived)) = delivered {
                watched_delivered(shard, account, arrived, &from, &[sink]);
            }
            return;
        }
    }
    let has_sessions = !shard.sessions().borrow().sessions(bare).is_empty();
    if has_sessions {
        let decision = {
            let table = shard.sessions().borrow();
            let states = table.states(bare);
            decide(kind, ty, true, to.resource, &states)
        };
        let chosen = match (&delivered, &decision) {
            (Some(_), Delivery::Sessions(sinks)) => Some(sinks.clone()),
            _ => None,
        };
        let arrival = shard.arrival_key();
        apply(shard, &stanza, &from, to.text, kind, ty, decision, &arrival);
        if let (Some((account, arrived)), Some(sinks)) = (delivered, chosen) {
            watched_delivered(shard, account, arrived, &from, &sinks);
        }
        return;
    }
    // No session: whether the account exists decides between silence and an error, unless the rules
    // give the same answer either way (presence to an account with no session is dropped).
    let resource = to.resource;
    let if_exists = decide::<SinkId>(kind, ty, true, resource, &[]);
    if if_exists == decide::<SinkId>(kind, ty, false, resource, &[]) {
        let to_text = to.text.to_string();
        drop(to_attr);
        let arrival = shard.arrival_key();
        apply(
            shard, &stanza, &from, &to_text, kind, ty, if_exists, &arrival,
        );
        return;
    }
    let (host, user) = (
        to.domain.to_string(),
        to.local.unwrap_or_default().to_string(),
    );
    let resource = to.resource.map(str::to_string);
    let to_text = to.text.to_string();
    // Taken now: lookups run on several worker threads and may finish out of order, but what is kept
    // for an offline account must keep the order the stanzas arrived in.
    let arrival = shard.arrival_key();
    drop(to_attr);
    let shard = shard.clone();
    let bare = format!("{user}@{host}");
    glommio::spawn_local(async move {
        let looked_up = match shard.server().extauth.clone() {
            Some(ext) => ext.isuser(&user, &host).await.map_err(|e| e.to_string()),
            None => shard
                .server()
                .store
                .run(move |db| db.exists(&host, &user))
                .await
                .map_err(|e| e.to_string()),
        };
        // The lookup yielded to the shard: a session of the account may have been bound meanwhile (a
        // client logging in again). The rules decide with the sessions there are now; deciding with
        // none would keep a message offline after the account's initial presence had already
        // collected what was kept, and it would wait for the next login (seen in the `mixed` soak as
        // messages seconds late, or lost at the end of the run).
        let (sink, decision) = {
            let table = shard.sessions().borrow();
            let sink = resource.as_deref().and_then(|r| {
                table
                    .sessions(&bare)
                    .iter()
                    .find(|s| &*s.resource == r)
                    .map(|s| s.sink)
            });
            let states = table.states(&bare);
            let exists = *looked_up.as_ref().unwrap_or(&true);
            (sink, decide(kind, ty, exists, resource.as_deref(), &states))
        };
        if let Some(sink) = sink
            && ty != StanzaType::Probe
            && ty != StanzaType::Unknown
        {
            deliver_to_session(&shard, sink, &stanza, &from, &to_text);
            return;
        }
        if let Err(e) = &looked_up
            && needs_the_account(kind, ty, &decision)
        {
            // Neither stored nor answered for an account that may not exist: the sender learns that
            // it was not delivered (issue 12: never dropped in silence while the store is down), and
            // nothing is kept for an account nobody has confirmed.
            log::warn!("cannot tell whether {bare} exists ({e}); a {kind:?} to it is refused");
            shard.bounce(
                &stanza,
                &from,
                &to_text,
                StanzaErrorCondition::InternalServerError,
            );
            return;
        }
        apply(
            &shard, &stanza, &from, &to_text, kind, ty, decision, &arrival,
        );
    })
    .detach();
}

/// One stanza for several accounts of this shard (a presence broadcast that crossed the mesh once):
/// written to each recipient's sessions with its `to` stamped, sharing the bytes. What the rules send
/// elsewhere than to sessions (a probe answered for the account, or anything unusual) takes the
/// one-recipient path with a copy of its own.
pub fn deliver_multicast(
    shard: &Rc<Shard>,
    stanza: &Stanza,
    from: &Arc<str>,
    recipients: &[Arc<str>],
) {
    let kind = stanza.kind();
    let ty = StanzaType::classify(kind, stanza.type_().as_deref());
    let shared = kind == StanzaKind::Presence
        && matches!(
            ty,
            StanzaType::Available | StanzaType::Unavailable | StanzaType::Probe
        )
        && !shard.has_hook(&USER_RECEIVE_PACKET);
    for to in recipients {
        let view = JidView::canonical(to).filter(|_| shared);
        let decision = view.and_then(|view| {
            let table = shard.sessions().borrow();
            if table.watched(view.bare()).is_some() {
                // Its modules see each stanza: a copy of its own.
                return None;
            }
            let states = table.states(view.bare());
            if states.is_empty() {
                let if_exists = decide::<SinkId>(kind, ty, true, view.resource, &[]);
                let otherwise = decide::<SinkId>(kind, ty, false, view.resource, &[]);
                (if_exists == otherwise).then_some(if_exists)
            } else {
                Some(decide(kind, ty, true, view.resource, &states))
            }
        });
        match decision {
            Some(Delivery::Sessions(sinks)) => {
                for sink in sinks {
                    if let Some(s) = shard.sink(sink) {
                        s.deliver_addressed(stanza, from, to);
                    }
                }
            }
            Some(Delivery::Drop) => {}
            Some(decision @ Delivery::HandleForAccount) if ty == StanzaType::Probe => {
                apply(shard, stanza, from, to, kind, ty, decision, "");
            }
            _ => {
                if let Some(copy) = stanza.rewritten(None, Some(to)) {
                    deliver_local(shard, copy, from.clone());
                }
            }
        }
    }
}

/// Runs `watched_delivered_packet`: `arrived` (for the watched `account`) went to the sessions `sinks`.
fn watched_delivered(
    shard: &Rc<Shard>,
    account: Arc<str>,
    arrived: Stanza,
    from: &Arc<str>,
    sinks: &[SinkId],
) {
    let sessions = shard
        .sessions()
        .borrow()
        .sessions(&account)
        .iter()
        .filter(|s| sinks.contains(&s.sink))
        .map(|s| s.full.clone())
        .collect();
    let mut event = WatchedDelivered {
        account: account.clone(),
        from: from.clone(),
        stanza: arrived,
        sessions,
    };
    hooks::run(
        &shard.ctx(),
        &WATCHED_DELIVERED,
        domain_of(&account),
        &mut event,
    );
}

/// The bare JID of the account a stanza is for, when a module watches it and a handler waits.
fn watched_recipient(shard: &Shard, stanza: &Stanza, from: &str) -> Option<Arc<str>> {
    if !shard.has_hook(&WATCHED_RECEIVE) && !shard.has_hook(&WATCHED_DELIVERED) {
        return None;
    }
    let to_attr = stanza.to();
    let to = to_attr.as_deref().unwrap_or(from);
    let table = shard.sessions().borrow();
    match JidView::canonical(to) {
        Some(view) => table.watched(view.bare()),
        None => table.watched(Jid::parse(to).ok()?.bare().as_str()),
    }
}

/// The session a stanza to a full JID goes to, when the JID is canonical, the session exists and the
/// stanza's type is one delivered to a full JID as is.
fn full_jid_session(shard: &Shard, stanza: &Stanza) -> Option<SinkId> {
    let to_attr = stanza.to()?;
    let to = JidView::canonical(&to_attr)?;
    let resource = to.resource?;
    let ty = StanzaType::classify(stanza.kind(), stanza.type_().as_deref());
    // Probes and subscriptions are the account's business before any session's.
    if matches!(
        ty,
        StanzaType::Probe | StanzaType::Unknown | StanzaType::Subscription
    ) {
        return None;
    }
    let table = shard.sessions().borrow();
    let (sessions, watched) = table.sessions_and_watch(to.bare());
    if watched {
        return None;
    }
    sessions
        .iter()
        .find(|s| &*s.resource == resource)
        .map(|s| s.sink)
}

/// Whether carrying out `decision` would act for the account itself (keep a message for it, answer an
/// IQ on its behalf), which must wait for its existence to be known; a probe's answer and what is
/// dropped or bounced either way need no account.
fn needs_the_account(kind: StanzaKind, ty: StanzaType, decision: &Delivery<SinkId>) -> bool {
    match decision {
        Delivery::Offline => true,
        Delivery::HandleForAccount => kind == StanzaKind::Iq && ty == StanzaType::Request,
        Delivery::Sessions(_) | Delivery::Bounce(_) | Delivery::Drop => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn apply(
    shard: &Rc<Shard>,
    stanza: &Stanza,
    from: &Arc<str>,
    to_text: &str,
    kind: StanzaKind,
    ty: StanzaType,
    decision: Delivery<SinkId>,
    arrival: &str,
) {
    match decision {
        Delivery::Sessions(sinks) => {
            for sink in sinks {
                deliver_to_session(shard, sink, stanza, from, to_text);
            }
        }
        Delivery::Bounce(condition) => shard.bounce(stanza, from, to_text, condition),
        Delivery::HandleForAccount => {
            // IQs go to the `ejabberd_sm` handlers; probes to whoever keeps rosters.
            if ty == StanzaType::Probe && shard.has_hook(&PRESENCE_PROBE) {
                let bare = bare_of(to_text);
                let mut probe = PresenceProbe {
                    user: bare.to_string(),
                    prober: bare_of(from).to_string(),
                    reply_to: from.to_string(),
                };
                hooks::run(&shard.ctx(), &PRESENCE_PROBE, domain_of(bare), &mut probe);
                return;
            }
            if kind == StanzaKind::Iq && ty == StanzaType::Request {
                let bare = match Jid::parse(to_text) {
                    Ok(j) => j.bare(),
                    Err(_) => return,
                };
                iq::dispatch(
                    &shard.ctx(),
                    Component::Sm,
                    bare.domain(),
                    stanza,
                    from,
                    bare.as_str(),
                );
            }
        }
        // Kept by a module (mod_offline) if one keeps it; otherwise RFC 6121 §8.5.2.2.1 allows an error.
        Delivery::Offline => {
            let bare = bare_of(to_text);
            let (user, host) = bare.split_once('@').unwrap_or(("", bare));
            let mut msg = OfflineMessage {
                from: from.clone(),
                user: user.to_string(),
                host: host.to_string(),
                stanza: stanza.clone(),
                arrival: arrival.to_string(),
            };
            let kept = shard.has_hook(&OFFLINE_MESSAGE)
                && hooks::run(&shard.ctx(), &OFFLINE_MESSAGE, host, &mut msg) == hooks::Flow::Stop;
            if !kept {
                shard.bounce(
                    stanza,
                    from,
                    to_text,
                    StanzaErrorCondition::ServiceUnavailable,
                );
            }
        }
        Delivery::Drop => {}
    }
}

/// Writes a stanza to a session of this shard, through `user_receive_packet` when a module registered it.
fn deliver_to_session(shard: &Rc<Shard>, sink: SinkId, stanza: &Stanza, from: &Arc<str>, to: &str) {
    let host = domain_of(to);
    if shard.has_hook(&USER_RECEIVE_PACKET) {
        if let Some(st) = run_packet(
            &shard.ctx(),
            &USER_RECEIVE_PACKET,
            host,
            from,
            stanza.clone(),
        ) {
            write_to_session(shard, sink, &st, from, bare_of(to));
        }
        return;
    }
    write_to_session(shard, sink, stanza, from, bare_of(to));
}

/// The last step of every delivery to a session of `bare`: through `watched_deliver_packet` when a
/// module watches the account, then onto the connection's sink.
fn write_to_session(shard: &Rc<Shard>, sink: SinkId, stanza: &Stanza, from: &Arc<str>, bare: &str) {
    let Some(s) = shard.sink(sink) else { return };
    if shard.has_hook(&WATCHED_DELIVER) {
        let watched = {
            let table = shard.sessions().borrow();
            table.watched(bare).and_then(|account| {
                let session = table.sessions(bare).iter().find(|x| x.sink == sink)?;
                Some((account, session.full.clone()))
            })
        };
        if let Some((account, full)) = watched {
            let mut packet = WatchedPacket {
                account: account.clone(),
                session: Some(full),
                from: from.clone(),
                stanza: stanza.clone(),
            };
            if hooks::run(
                &shard.ctx(),
                &WATCHED_DELIVER,
                domain_of(&account),
                &mut packet,
            ) == hooks::Flow::Continue
            {
                s.deliver(&packet.stanza, from);
            }
            return;
        }
    }
    s.deliver(stanza, from);
}

/// Presence without `to`: records availability and priority, and broadcasts it to the account's
/// available resources (RFC 6121 §4.2.2 and §4.5.2; contacts come with rosters).
fn self_presence(shard: &Rc<Shard>, from: &SessionRef, stanza: &Stanza) {
    let ty = StanzaType::classify(StanzaKind::Presence, stanza.type_().as_deref());
    let available = match ty {
        StanzaType::Available => true,
        StanzaType::Unavailable => false,
        _ => return,
    };
    let priority = if available {
        stanza
            .to_element()
            .child("priority")
            .and_then(|p| p.text().trim().parse::<i32>().ok())
            .map_or(0, |p| p.clamp(-128, 127) as i8)
    } else {
        0
    };
    let (was_available, recipients): (bool, Vec<SinkId>) = {
        let mut table = shard.sessions().borrow_mut();
        let was = table
            .sessions(&from.bare)
            .iter()
            .any(|s| s.sink == from.sink && s.available);
        table.set_presence(&from.bare, from.sink, available, priority);
        let recipients = table
            .sessions(&from.bare)
            .iter()
            .filter(|s| s.available || (available && s.sink == from.sink))
            .map(|s| s.sink)
            .collect();
        (was, recipients)
    };
    for id in recipients {
        write_to_session(shard, id, stanza, &from.full, &from.bare);
    }
    // Copied out: kept for probes and broadcast to contacts, it must not pin the read buffer. Only when
    // a module answers probes or broadcasts: the copy costs a write and a parse.
    let wanted = shard.has_hook(&PRESENCE_PROBE) || shard.has_hook(&USER_PRESENCE);
    if wanted && let Some(copy) = stanza.rewritten(None, None) {
        if available {
            shard
                .sessions()
                .borrow_mut()
                .set_last_presence(&from.bare, from.sink, copy.clone());
        }
        presence_hook(shard, from, available, available && !was_available, copy);
    }
    if available != was_available {
        let status = if available {
            String::new()
        } else {
            stanza
                .to_element()
                .child("status")
                .map(|s| s.text())
                .unwrap_or_default()
        };
        let hook = if available {
            &USER_AVAILABLE
        } else {
            &UNSET_PRESENCE
        };
        session_hook(shard, hook, from, &status);
    }
}

/// Runs a session hook for `session`.
fn session_hook(
    shard: &Rc<Shard>,
    hook: &hooks::HookPoint<SessionEvent>,
    session: &SessionRef,
    status: &str,
) {
    if !shard.has_hook(hook) {
        return;
    }
    let (user, host) = session.bare.split_once('@').unwrap_or(("", &session.bare));
    let mut event = SessionEvent {
        full: session.full.clone(),
        user: user.to_string(),
        host: host.to_string(),
        status: status.to_string(),
    };
    hooks::run(&shard.ctx(), hook, host, &mut event);
}

/// A session ended without unavailable presence: its other available resources are told.
fn broadcast_unavailable(shard: &Rc<Shard>, session: &SessionRef, presence: &Stanza) {
    let recipients: Vec<SinkId> = shard
        .sessions()
        .borrow()
        .sessions(&session.bare)
        .iter()
        .filter(|s| s.available)
        .map(|s| s.sink)
        .collect();
    for id in recipients {
        write_to_session(shard, id, presence, &session.full, &session.bare);
    }
}

/// Runs `user_presence` for a session's own presence.
fn presence_hook(
    shard: &Rc<Shard>,
    session: &SessionRef,
    available: bool,
    initial: bool,
    stanza: Stanza,
) {
    if !shard.has_hook(&USER_PRESENCE) {
        return;
    }
    let (user, host) = session.bare.split_once('@').unwrap_or(("", &session.bare));
    let mut update = PresenceUpdate {
        full: session.full.clone(),
        user: user.to_string(),
        host: host.to_string(),
        available,
        initial,
        stanza,
    };
    let host = update.host.clone();
    hooks::run(&shard.ctx(), &USER_PRESENCE, &host, &mut update);
}

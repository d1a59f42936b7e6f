//! The router, local router and session manager of the ejabberd guide, as functions over one shard's
//! state. A stanza is routed by its `to`: a service a module registered on this shard, an external
//! component (on the shard its connection lives on), another domain (no s2s yet:
//! `remote-server-not-found`), the server itself (IQs to the `ejabberd_local` handlers of
//! [`crate::modules`]), or an account, whose home shard applies RFC 6121 §8.5 ([`crate::sm::deliver`]):
//! IQs to the bare JID go to the `ejabberd_sm` handlers, everything else is written into the recipients'
//! output buffers with the zero-copy writer. Presence without `to` goes to the sender's own available
//! resources (rosters come later). The packet hooks run here, and only when some module registered
//! one. An error is never answered with an error.

use std::rc::Rc;
use std::sync::Arc;

use crate::modules::{self, Component, HookKind, SessionEvent};
use crate::net::conn::SessionRef;
use crate::proto::errors::{StanzaErrorCondition, write_error_between};
use crate::proto::jid::{Jid, JidView};
use crate::proto::xml::{Limits, Stanza, StanzaKind, parse_element};
use crate::shard::{Overflow, Shard, ShardMsg, home};
use crate::sm::deliver::{Delivery, StanzaType, decide};

/// A stanza an established session sent; `from` is stamped with the session's full JID.
pub fn route_from_session(shard: &Rc<Shard>, from: &SessionRef, stanza: Stanza) {
    let stanza = if shard.modules.borrow().has_hooks(HookKind::UserSendPacket) {
        let to = stanza.to().map(|t| t.into_owned()).unwrap_or_default();
        match modules::run_packet_hook(
            &shard.modules,
            HookKind::UserSendPacket,
            domain_of(&from.bare),
            &from.full,
            &to,
            stanza,
        ) {
            Some(s) => s,
            None => return,
        }
    } else {
        stanza
    };
    let Some(stanza) = filter(shard, stanza, &from.full) else {
        return;
    };
    let kind = stanza.kind();
    let to = stanza.to();
    let Some(to) = to else {
        match kind {
            StanzaKind::Presence => self_presence(shard, from, &stanza),
            // RFC 6120 §10.3.1: no `to` is the sender's own bare JID.
            StanzaKind::Message => deliver_local(shard, stanza.clone(), from.full.clone()),
            // RFC 6120 §10.3.3: the server answers for the account (the `ejabberd_sm` handlers).
            StanzaKind::Iq if is_request(&stanza) => modules::iq::dispatch(
                shard,
                Component::Sm,
                domain_of(&from.bare),
                &stanza,
                &from.full,
                &from.bare,
            ),
            _ => {}
        }
        return;
    };
    match JidView::canonical(&to) {
        Some(view) => route_to(shard, from, &stanza, view),
        None => match Jid::parse(&to) {
            Ok(jid) => route_to(shard, from, &stanza, jid.view()),
            Err(_) => reply_to_session(
                shard,
                from,
                &stanza,
                &from.bare,
                StanzaErrorCondition::JidMalformed,
            ),
        },
    }
}

fn route_to(shard: &Rc<Shard>, from: &SessionRef, stanza: &Stanza, to: JidView<'_>) {
    if !shard.server.hosts.iter().any(|h| h == to.domain) {
        if route_to_service(shard, stanza, &from.full, to.domain) {
            return;
        }
        // Until s2s exists every other domain is unreachable.
        reply_to_session(
            shard,
            from,
            stanza,
            to.text,
            StanzaErrorCondition::RemoteServerNotFound,
        );
        return;
    }
    if to.local.is_none() {
        // The server itself or a resource of it: IQs go to the `ejabberd_local` handlers; a message
        // has nobody to read it; results and presence need no answer.
        if is_request(stanza) {
            modules::iq::dispatch(
                shard,
                Component::Local,
                to.domain,
                stanza,
                &from.full,
                to.text,
            );
        } else if stanza.kind() == StanzaKind::Message {
            reply_to_session(
                shard,
                from,
                stanza,
                to.text,
                StanzaErrorCondition::ServiceUnavailable,
            );
        }
        return;
    }
    let target = home(to.bare(), shard.shards()).shard;
    if target == shard.id {
        deliver_local(shard, stanza.clone(), from.full.clone());
        return;
    }
    let msg = ShardMsg::Deliver {
        stanza: stanza.clone(),
        from: from.full.clone(),
    };
    if let Err(ShardMsg::Deliver { stanza, .. }) = shard.send(target, msg, Overflow::Bounce) {
        reply_to_session(
            shard,
            from,
            &stanza,
            to.text,
            StanzaErrorCondition::ResourceConstraint,
        );
    }
}

/// A service or an external component owning `domain`: hands the stanza over and returns true.
fn route_to_service(shard: &Rc<Shard>, stanza: &Stanza, from: &Arc<str>, domain: &str) -> bool {
    let service = shard.modules.borrow().service(domain);
    if let Some(service) = service {
        service(shard, stanza.clone(), from.clone());
        return true;
    }
    let component = shard.components.borrow().get(domain).copied();
    if let Some((target, conn)) = component {
        if target == shard.id {
            crate::net::component::deliver(shard, conn, stanza, from);
        } else {
            let msg = ShardMsg::ToComponent {
                domain: domain.into(),
                stanza: stanza.clone(),
                from: from.clone(),
            };
            if let Err(ShardMsg::ToComponent { stanza, from, .. }) =
                shard.send(target, msg, Overflow::Bounce)
            {
                bounce_to_sender(
                    shard,
                    &stanza,
                    &from,
                    domain,
                    StanzaErrorCondition::ResourceConstraint,
                );
            }
        }
        return true;
    }
    false
}

/// Runs `filter_packet` when a module registered it, for the hosts of the sender and the recipient.
fn filter(shard: &Rc<Shard>, stanza: Stanza, from: &str) -> Option<Stanza> {
    if !shard.modules.borrow().has_hooks(HookKind::FilterPacket) {
        return Some(stanza);
    }
    let to = stanza.to().map(|t| t.into_owned()).unwrap_or_default();
    let mut stanza = stanza;
    let mut hosts = vec![domain_of(from).to_string()];
    let to_domain = domain_of(&to).to_string();
    if !to.is_empty() && to_domain != hosts[0] {
        hosts.push(to_domain);
    }
    for host in hosts {
        stanza = modules::run_packet_hook(
            &shard.modules,
            HookKind::FilterPacket,
            &host,
            from,
            &to,
            stanza,
        )?;
    }
    Some(stanza)
}

/// The domain part of a JID string (no preparation: for JIDs the server stamped or prepared).
pub fn domain_of(jid: &str) -> &str {
    let rest = jid.split_once('@').map_or(jid, |(_, d)| d);
    rest.split_once('/').map_or(rest, |(d, _)| d)
}

/// Routes a stanza the server or a module generated, or one an external component sent: by its `to`,
/// with `from` stamped on delivery. Nothing is bounced to `from` if the target cannot be reached (the
/// generator is the server), except for components, whose stanzas are bounced like a session's.
pub fn route(shard: &Rc<Shard>, stanza: Stanza, from: Arc<str>) {
    let Some(stanza) = filter(shard, stanza, &from) else {
        return;
    };
    let Some(to) = stanza.to().map(|t| t.into_owned()) else {
        return;
    };
    let jid = match Jid::parse(&to) {
        Ok(j) => j,
        Err(_) => {
            bounce_to_sender(
                shard,
                &stanza,
                &from,
                &to,
                StanzaErrorCondition::JidMalformed,
            );
            return;
        }
    };
    let domain = jid.domain();
    if !shard.server.hosts.iter().any(|h| h == domain) {
        if !route_to_service(shard, &stanza, &from, domain) {
            bounce_to_sender(
                shard,
                &stanza,
                &from,
                &to,
                StanzaErrorCondition::RemoteServerNotFound,
            );
        }
        return;
    }
    if jid.local().is_none() {
        if is_request(&stanza) {
            modules::iq::dispatch(
                shard,
                Component::Local,
                domain,
                &stanza,
                &from,
                jid.as_str(),
            );
        }
        return;
    }
    let target = home(jid.bare_str(), shard.shards()).shard;
    if target == shard.id {
        deliver_local(shard, stanza, from);
    } else {
        let _ = shard.send(target, ShardMsg::Deliver { stanza, from }, Overflow::Bounce);
    }
}

fn is_request(stanza: &Stanza) -> bool {
    stanza.kind() == StanzaKind::Iq && matches!(stanza.type_().as_deref(), Some("get" | "set"))
}

/// On the home shard of the stanza's `to` account: decide delivery and carry it out.
pub fn deliver_local(shard: &Rc<Shard>, stanza: Stanza, from: Arc<str>) {
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
    // The common case first, without allocating: a full JID whose session exists.
    if let Some(resource) = to.resource
        && ty != StanzaType::Probe
        && ty != StanzaType::Unknown
    {
        let conn = {
            let table = shard.sessions.borrow();
            table
                .sessions(bare)
                .iter()
                .find(|s| &*s.resource == resource)
                .map(|s| s.conn)
        };
        if let Some(conn) = conn {
            deliver_to_conn(shard, conn, &stanza, &from, to.text);
            return;
        }
    }
    let has_sessions = !shard.sessions.borrow().sessions(bare).is_empty();
    if has_sessions {
        let decision = {
            let table = shard.sessions.borrow();
            let states = table.states(bare);
            decide(kind, ty, true, to.resource, &states)
        };
        apply(
            shard,
            &stanza,
            &from,
            to.text,
            kind,
            ty,
            decision,
            &arrival_key(),
        );
        return;
    }
    // No session: whether the account exists decides between silence and an error.
    let (host, user) = (
        to.domain.to_string(),
        to.local.unwrap_or_default().to_string(),
    );
    let resource = to.resource.map(str::to_string);
    let to_text = to.text.to_string();
    // Taken now: lookups run on several worker threads and may finish out of order, but what is kept
    // for an offline account must keep the order the stanzas arrived in.
    let arrival = arrival_key();
    let shard = shard.clone();
    let store = shard.server.store.clone();
    let extauth = shard.server.extauth.clone();
    glommio::spawn_local(async move {
        let exists = match extauth {
            Some(ext) => ext.isuser(&user, &host).await.unwrap_or_else(|e| {
                log::warn!("{e}");
                false
            }),
            None => store
                .run(move |db| db.exists(&host, &user))
                .await
                .unwrap_or(false),
        };
        let decision = decide::<usize>(kind, ty, exists, resource.as_deref(), &[]);
        apply(
            &shard, &stanza, &from, &to_text, kind, ty, decision, &arrival,
        );
    })
    .detach();
}

#[allow(clippy::too_many_arguments)]
fn apply(
    shard: &Rc<Shard>,
    stanza: &Stanza,
    from: &Arc<str>,
    to_text: &str,
    kind: StanzaKind,
    ty: StanzaType,
    decision: Delivery<usize>,
    arrival: &str,
) {
    match decision {
        Delivery::Sessions(conns) => {
            for key in conns {
                deliver_to_conn(shard, key, stanza, from, to_text);
            }
        }
        Delivery::Bounce(condition) => bounce_to_sender(shard, stanza, from, to_text, condition),
        Delivery::HandleForAccount => {
            // IQs go to the `ejabberd_sm` handlers; probes wait for rosters.
            if kind == StanzaKind::Iq && ty == StanzaType::Request {
                let bare = match Jid::parse(to_text) {
                    Ok(j) => j.bare(),
                    Err(_) => return,
                };
                modules::iq::dispatch(
                    shard,
                    Component::Sm,
                    bare.domain(),
                    stanza,
                    from,
                    bare.as_str(),
                );
            }
        }
        // Stored by a module (mod_offline) if one keeps it; otherwise RFC 6121 §8.5.2.2.1 allows an error.
        Delivery::Offline => {
            let bare = to_text.split_once('/').map_or(to_text, |(b, _)| b);
            let (user, host) = bare.split_once('@').unwrap_or(("", bare));
            let kept = modules::run_offline_message(
                shard,
                &modules::OfflineMessage {
                    from,
                    user,
                    host,
                    stanza,
                    arrival,
                },
            );
            if !kept {
                bounce_to_sender(
                    shard,
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

thread_local! {
    /// Orders stanzas that arrive within the same nanosecond on this shard.
    static ARRIVALS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A key that sorts in the order stanzas reached this shard (time, then a per-shard sequence).
pub fn arrival_key() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let seq = ARRIVALS.with(|s| {
        let v = s.get();
        s.set(v.wrapping_add(1));
        v
    });
    format!("{ns:024}{seq:010}")
}

/// Writes a stanza to one of this shard's connections, through `user_receive_packet` when a module
/// registered it.
fn deliver_to_conn(shard: &Rc<Shard>, key: usize, stanza: &Stanza, from: &str, to: &str) {
    let c = shard.conns.borrow().get(key).cloned();
    let Some(c) = c else { return };
    if shard
        .modules
        .borrow()
        .has_hooks(HookKind::UserReceivePacket)
    {
        if let Some(s) = modules::run_packet_hook(
            &shard.modules,
            HookKind::UserReceivePacket,
            domain_of(to),
            from,
            to,
            stanza.clone(),
        ) {
            c.deliver(&s, from);
        }
        return;
    }
    c.deliver(stanza, from);
}

/// Sends the error reply for `stanza` from `replier` back to its sender `sender`, wherever that is.
pub fn bounce_to_sender(
    shard: &Rc<Shard>,
    stanza: &Stanza,
    sender: &str,
    replier: &str,
    condition: StanzaErrorCondition,
) {
    let mut bytes = Vec::new();
    if !write_error_between(&mut bytes, stanza, replier, sender, condition) {
        return;
    }
    let Ok(reply) = parse_element(&bytes, &Limits::default()) else {
        log::error!(
            "an error reply did not parse: {}",
            String::from_utf8_lossy(&bytes)
        );
        return;
    };
    // Wherever the sender is: a local account's home shard, a component, a service.
    route(shard, reply, replier.into());
}

/// An error reply to a session of this shard, from `replier`.
fn reply_to_session(
    shard: &Rc<Shard>,
    session: &SessionRef,
    stanza: &Stanza,
    replier: &str,
    condition: StanzaErrorCondition,
) {
    let mut bytes = Vec::new();
    if write_error_between(&mut bytes, stanza, replier, &session.full, condition) {
        let c = shard.conns.borrow().get(session.conn).cloned();
        if let Some(c) = c {
            c.send_bytes(&bytes);
        }
    }
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
    let (was_available, recipients): (bool, Vec<usize>) = {
        let mut table = shard.sessions.borrow_mut();
        let was = table
            .sessions(&from.bare)
            .iter()
            .any(|s| s.conn == from.conn && s.available);
        table.set_presence(&from.bare, from.conn, available, priority);
        let recipients = table
            .sessions(&from.bare)
            .iter()
            .filter(|s| s.available || (available && s.conn == from.conn))
            .map(|s| s.conn)
            .collect();
        (was, recipients)
    };
    for key in recipients {
        let c = shard.conns.borrow().get(key).cloned();
        if let Some(c) = c {
            c.deliver(stanza, &from.full);
        }
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
        let (user, host) = from.bare.split_once('@').unwrap_or(("", &from.bare));
        let event = SessionEvent {
            full: &from.full,
            user,
            host,
            status: &status,
        };
        let hook = if available {
            HookKind::UserAvailable
        } else {
            HookKind::UnsetPresence
        };
        modules::run_session_hook(shard, hook, &event);
    }
}

/// Runs a session hook for `session` (`sm_register_connection`, `sm_remove_connection`,
/// `unset_presence` on disconnect).
pub fn session_hook(shard: &Rc<Shard>, hook: HookKind, session: &SessionRef, status: &str) {
    let (user, host) = session.bare.split_once('@').unwrap_or(("", &session.bare));
    modules::run_session_hook(
        shard,
        hook,
        &SessionEvent {
            full: &session.full,
            user,
            host,
            status,
        },
    );
}

/// A session ended without unavailable presence: its other available resources are told.
pub fn broadcast_unavailable(shard: &Rc<Shard>, session: &SessionRef) {
    let Ok(presence) = parse_element(
        b"<presence xmlns='jabber:client' type='unavailable'/>",
        &Limits::default(),
    ) else {
        return;
    };
    let recipients: Vec<usize> = shard
        .sessions
        .borrow()
        .sessions(&session.bare)
        .iter()
        .filter(|s| s.available)
        .map(|s| s.conn)
        .collect();
    for key in recipients {
        let c = shard.conns.borrow().get(key).cloned();
        if let Some(c) = c {
            c.deliver(&presence, &session.full);
        }
    }
}

//! The router, local router and session manager of the ejabberd guide, as functions over one shard's
//! state. A stanza from a local session is routed by its `to`: another domain (no s2s yet:
//! `remote-server-not-found`), the server itself (no handler modules yet: `service-unavailable` for
//! requests), or an account, whose home shard applies RFC 6121 §8.5 ([`crate::sm::deliver`]) and writes
//! the stanza into the recipients' output buffers with the zero-copy writer. Presence without `to` goes
//! to the sender's own available resources (rosters come later). An error is never answered with an
//! error.

use std::rc::Rc;
use std::sync::Arc;

use crate::net::conn::SessionRef;
use crate::proto::errors::{StanzaErrorCondition, write_error_between};
use crate::proto::jid::{Jid, JidView};
use crate::proto::xml::{Limits, Stanza, StanzaKind, parse_element};
use crate::shard::{Overflow, Shard, ShardMsg, home};
use crate::sm::deliver::{Delivery, StanzaType, decide};

/// A stanza an established session sent; `from` is stamped with the session's full JID.
pub fn route_from_session(shard: &Rc<Shard>, from: &SessionRef, stanza: Stanza) {
    let kind = stanza.kind();
    let to = stanza.to();
    let Some(to) = to else {
        match kind {
            StanzaKind::Presence => self_presence(shard, from, &stanza),
            // RFC 6120 §10.3.1: no `to` is the sender's own bare JID.
            StanzaKind::Message => deliver_local(shard, stanza.clone(), from.full.clone()),
            // RFC 6120 §10.3.3: the server answers for the account; no handlers exist yet.
            _ => reply_to_session(
                shard,
                from,
                &stanza,
                &from.bare,
                StanzaErrorCondition::ServiceUnavailable,
            ),
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
        // The server itself or a resource of it: no handler modules exist yet. Results and presence
        // need no answer.
        if is_request(stanza) || stanza.kind() == StanzaKind::Message {
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
            let c = shard.conns.borrow().get(conn).cloned();
            if let Some(c) = c {
                c.deliver(&stanza, &from);
            }
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
        apply(shard, &stanza, &from, to.text, kind, ty, decision);
        return;
    }
    // No session: whether the account exists decides between silence and an error.
    let (host, user) = (
        to.domain.to_string(),
        to.local.unwrap_or_default().to_string(),
    );
    let resource = to.resource.map(str::to_string);
    let to_text = to.text.to_string();
    let shard = shard.clone();
    let store = shard.server.store.clone();
    glommio::spawn_local(async move {
        let exists = store
            .run(move |db| db.exists(&host, &user))
            .await
            .unwrap_or(false);
        let decision = decide::<usize>(kind, ty, exists, resource.as_deref(), &[]);
        apply(&shard, &stanza, &from, &to_text, kind, ty, decision);
    })
    .detach();
}

fn apply(
    shard: &Rc<Shard>,
    stanza: &Stanza,
    from: &Arc<str>,
    to_text: &str,
    kind: StanzaKind,
    ty: StanzaType,
    decision: Delivery<usize>,
) {
    match decision {
        Delivery::Sessions(conns) => {
            for key in conns {
                let c = shard.conns.borrow().get(key).cloned();
                if let Some(c) = c {
                    c.deliver(stanza, from);
                }
            }
        }
        Delivery::Bounce(condition) => bounce_to_sender(shard, stanza, from, to_text, condition),
        Delivery::HandleForAccount => {
            // No handler modules yet: requests are refused, probes wait for rosters.
            if kind == StanzaKind::Iq && ty == StanzaType::Request {
                bounce_to_sender(
                    shard,
                    stanza,
                    from,
                    to_text,
                    StanzaErrorCondition::ServiceUnavailable,
                );
            }
        }
        // No offline storage yet: RFC 6121 §8.5.2.2.1 allows an error instead.
        Delivery::Offline => bounce_to_sender(
            shard,
            stanza,
            from,
            to_text,
            StanzaErrorCondition::ServiceUnavailable,
        ),
        Delivery::Drop => {}
    }
}

/// Sends the error reply for `stanza` from `replier` back to its sender `sender`, wherever that is.
fn bounce_to_sender(
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
    let bare = match JidView::canonical(sender) {
        Some(v) => v.bare().to_string(),
        None => match Jid::parse(sender) {
            Ok(j) => j.bare_str().to_string(),
            Err(_) => return,
        },
    };
    let replier: Arc<str> = replier.into();
    let target = home(&bare, shard.shards()).shard;
    if target == shard.id {
        deliver_local(shard, reply, replier);
    } else {
        // Never bounce a bounce: a full queue drops it.
        let _ = shard.send(
            target,
            ShardMsg::Deliver {
                stanza: reply,
                from: replier,
            },
            Overflow::Bounce,
        );
    }
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
    let recipients: Vec<usize> = {
        let mut table = shard.sessions.borrow_mut();
        table.set_presence(&from.bare, from.conn, available, priority);
        table
            .sessions(&from.bare)
            .iter()
            .filter(|s| s.available || (available && s.conn == from.conn))
            .map(|s| s.conn)
            .collect()
    };
    for key in recipients {
        let c = shard.conns.borrow().get(key).cloned();
        if let Some(c) = c {
            c.deliver(stanza, &from.full);
        }
    }
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

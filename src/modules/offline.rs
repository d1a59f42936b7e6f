//! `mod_offline`: offline message storage (XEP-0160). A `normal` or `chat` message for an account with
//! no available session (RFC 6121 §8.5.2.2.1) is kept, copied out of the read buffer with a XEP-0203
//! `<delay/>` stamp, in the account's module data, up to `max_messages` (beyond: `service-unavailable` to
//! the sender, as XEP-0160 §3 says); the account's first available presence then receives them, in
//! order, after its presence echo. Built on the `offline_message` and `user_available` hooks.

use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use super::hooks::{
    DISCO_FEATURES, DiscoQuery, OFFLINE_MESSAGE, OfflineMessage, SessionEvent, USER_AVAILABLE,
};
use super::util::{HoldersIndex, utc_timestamp};
use super::{Component, Flow, Module, ModuleCtx, ModuleOpts, OptKind, OptionSpec, Registrations};
use crate::proto::errors::StanzaErrorCondition;
use crate::proto::xml::{Element, Node, Stanza};

pub const PROTOCOLS: &[&str] = &["XEP-0160 v1.0", "XEP-0203 v2.0"];

pub struct Offline;

const MODULE: &str = crate::storage::layout::OFFLINE;

/// The accounts homed on this shard that may have messages waiting, so that a login costs no store
/// round trip when there are none (the common case).
#[derive(Default)]
struct Waiting(Rc<HoldersIndex>);

impl Module for Offline {
    fn name(&self) -> &'static str {
        "mod_offline"
    }
    fn doc(&self) -> &'static str {
        "XEP-0160 offline messages: kept while an account is offline, delivered at its next presence"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[OptionSpec {
            name: "max_messages",
            kind: OptKind::Int {
                min: 1,
                max: 100_000,
            },
            default: "100",
            doc: "messages kept per account; beyond it the sender gets service-unavailable",
        }];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let max = opts.int("max_messages") as u64;
        Ok(Registrations::new()
            .hook(&OFFLINE_MESSAGE, 50, move |ctx, m: &mut OfflineMessage| {
                keep(ctx, m, max);
                Flow::Stop
            })
            .hook(&USER_AVAILABLE, 50, |ctx, e: &mut SessionEvent| {
                deliver_stored(ctx, e);
                Flow::Continue
            })
            .hook(&DISCO_FEATURES, 50, |_, q: &mut DiscoQuery| {
                if q.component == Component::Local && q.node.is_none() {
                    q.features.push("msgoffline".into());
                }
                Flow::Continue
            }))
    }
}

/// The message as the account will receive it: `from` stamped, in `jabber:client`, with a `<delay/>`.
fn stored_form(stanza: &Stanza, from: &str, host: &str) -> Vec<u8> {
    let mut el = stanza.to_element();
    el.set_attr("from", from);
    if !el.name.contains(':') {
        // A component's message is in its own content namespace; the client's stream is jabber:client.
        el.set_attr("xmlns", "jabber:client");
    }
    el.children.push(Node::Element(
        Element::new("delay")
            .with_attr("xmlns", "urn:xmpp:delay")
            .with_attr("from", host)
            .with_attr("stamp", utc_timestamp(SystemTime::now())),
    ));
    el.to_xml_string().into_bytes()
}

fn keep(ctx: &ModuleCtx, m: &OfflineMessage, max: u64) {
    let value = stored_form(&m.stanza, &m.from, &m.host);
    let (host, user) = (m.host.clone(), m.user.clone());
    ctx.state::<Waiting>()
        .0
        .set(&format!("{user}@{host}"), true);
    let stanza = m.stanza.clone();
    let from: Arc<str> = m.from.clone();
    let bare = format!("{user}@{host}");
    let store = ctx.store().clone();
    let ctx = ctx.clone();
    let k = m.arrival.clone();
    glommio::spawn_local(async move {
        let (h, u) = (host.clone(), user.clone());
        let kept = store
            .run(move |db| {
                if db.data_count(&h, &u, MODULE)? >= max {
                    return Ok(false);
                }
                db.data_put(&h, &u, MODULE, &[(k, Some(value))])?;
                Ok(true)
            })
            .await;
        let refused = match kept {
            Ok(true) => return,
            Ok(false) => {
                log::debug!("mod_offline: {bare} has {max} messages waiting; refusing more");
                StanzaErrorCondition::ServiceUnavailable
            }
            Err(e) => {
                log::warn!("mod_offline: cannot keep a message for {bare}: {e}");
                StanzaErrorCondition::ServiceUnavailable
            }
        };
        ctx.bounce(&stanza, &from, &bare, refused);
    })
    .detach();
}

fn deliver_stored(ctx: &ModuleCtx, e: &SessionEvent) {
    // The first login on this shard loads who has messages kept from an earlier run.
    let waiting = ctx.state::<Waiting>();
    waiting.0.load(ctx, &e.host, MODULE);
    if !waiting.0.take(&format!("{}@{}", e.user, e.host)) {
        return;
    }
    let (host, user, full) = (e.host.clone(), e.user.clone(), e.full.to_string());
    let store = ctx.store().clone();
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let (h, u) = (host.clone(), user.clone());
        let stored = match store.run(move |db| db.data_take_all(&h, &u, MODULE)).await {
            Ok(s) => s,
            Err(err) => {
                log::warn!("mod_offline: cannot read the messages of {user}@{host}: {err}");
                // Still there: the next login must look again (the index forgot them above).
                ctx.state::<Waiting>()
                    .0
                    .set(&format!("{user}@{host}"), true);
                return;
            }
        };
        if stored.is_empty() {
            return;
        }
        let bare = format!("{user}@{host}");
        // All or none: nothing runs on this shard between two of these writes.
        let delivered = stored
            .iter()
            .all(|(_, xml)| ctx.send_to_session(&bare, &full, xml));
        if !delivered {
            // The session ended meanwhile: they wait for the next one.
            ctx.state::<Waiting>().0.set(&bare, true);
            let back: Vec<(String, Option<Vec<u8>>)> =
                stored.into_iter().map(|(k, v)| (k, Some(v))).collect();
            let r = store
                .run(move |db| db.data_put(&host, &user, MODULE, &back))
                .await;
            if let Err(err) = r {
                log::warn!("mod_offline: messages for {bare} lost: {err}");
            }
        }
    })
    .detach();
}

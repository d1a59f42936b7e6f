//! `mod_blocking`, the blocking command (XEP-0191): an account gets its blocklist, blocks JIDs, unblocks
//! some or all; each change is stored in the account's module data and pushed to every resource that
//! asked for the list. While an account's list is not empty its home shard watches its stanzas: what it
//! sends to a blocked JID is answered `not-acceptable` with `<blocked/>` and goes nowhere; what a blocked
//! JID sends it is dropped (messages and IQ requests answered `service-unavailable`, presence without a
//! word), also while it is offline (not stored, not kept as a subscription request); its presence does
//! not reach a blocked contact, which gets `unavailable` from each available resource when blocked and
//! the current presence when unblocked. Each shard knows which of its accounts have a list at all (read
//! once per host), so that the others cost nothing: no read at login, no watch. Lists are cached on the
//! account's home shard while it has sessions, and for some offline accounts (bounded) so that
//! messages to them are checked without a store read each.
//!
//! Between a session's bind and the first read of its account's list (a store round trip), what it
//! sends and what reaches it waits, in order, and is then checked and let go.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use super::hooks::{
    DISCO_FEATURES, DiscoQuery, IN_SUBSCRIPTION, OFFLINE_MESSAGE, OfflineMessage,
    PRESENCE_RECIPIENTS, PresenceRecipients, SM_REGISTER_CONNECTION, SM_REMOVE_CONNECTION,
    SessionEvent, SubscriptionStanza, WATCHED_RECEIVE, WATCHED_SEND, WatchedPacket,
};
use super::iq::async_handler;
use super::util::{HoldersIndex, LoadJob, Loader, iqdisc, route_presence};
use super::{
    Component, Flow, Iq, IqError, IqResult, IqType, Module, ModuleCtx, ModuleOpts, OptKind,
    OptionSpec, Registrations,
};
use crate::proto::blocking::{BLOCKED_ERROR, BlockingSet, NS_BLOCKING, blocks, element, parse_set};
use crate::proto::errors::{StanzaErrorCondition as Cond, write_error_between_with};
use crate::proto::jid::{JidView, bare_of, domain_of};
use crate::proto::roster::Subscription;
use crate::proto::xml::{Limits, Stanza, StanzaKind, escape, parse_element};
use crate::storage::{Store, StoreError};

pub const PROTOCOLS: &[&str] = &["XEP-0191 v1.3"];

/// The module's key in the account data store.
const MODULE: &str = "blocking";
/// Offline accounts' lists kept per shard before the cache of them starts over.
const OFFLINE_CACHE: usize = 10_000;

pub struct Blocking;

impl Module for Blocking {
    fn name(&self) -> &'static str {
        "mod_blocking"
    }
    fn doc(&self) -> &'static str {
        "XEP-0191 blocking command: block, unblock, unblock all, pushes; blocked JIDs reach nothing"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[
            iqdisc("\"one_queue\""),
            OptionSpec {
                name: "max_items",
                kind: OptKind::Int {
                    min: 1,
                    max: 100_000,
                },
                default: "1000",
                doc: "JIDs one blocklist may hold; a block past it gets not-acceptable",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let max_items = opts.int("max_items") as usize;
        Ok(Registrations::new()
            .iq(
                Component::Sm,
                NS_BLOCKING,
                opts.iqdisc(),
                async_handler(move |iq| blocking_iq(iq, max_items)),
            )
            .hook(&SM_REGISTER_CONNECTION, 50, |ctx, e: &mut SessionEvent| {
                session_opened(ctx, &format!("{}@{}", e.user, e.host));
                Flow::Continue
            })
            .hook(&SM_REMOVE_CONNECTION, 50, |ctx, e: &mut SessionEvent| {
                ctx.state::<Interested>().0.borrow_mut().remove(&e.full);
                let bare = format!("{}@{}", e.user, e.host);
                if ctx.sessions(&bare).is_empty() {
                    ctx.state::<Lists>().forget(&bare);
                }
                Flow::Continue
            })
            .hook(&WATCHED_SEND, 50, outbound)
            .hook(&WATCHED_RECEIVE, 50, inbound)
            .hook(&OFFLINE_MESSAGE, 40, offline_message)
            .hook(&IN_SUBSCRIPTION, 40, in_subscription)
            .hook(
                &PRESENCE_RECIPIENTS,
                50,
                |ctx, p: &mut PresenceRecipients| {
                    if let Some(list) = ctx.state::<Lists>().get(&p.account)
                        && !list.is_empty()
                    {
                        p.recipients.retain(|to| !blocked(&list, &p.account, to));
                    }
                    Flow::Continue
                },
            )
            .hook(&DISCO_FEATURES, 50, |_, q: &mut DiscoQuery| {
                if q.component == Component::Local && q.node.is_none() {
                    q.features.push(NS_BLOCKING.into());
                }
                Flow::Continue
            }))
    }
}

/// The full JIDs of this shard's sessions that asked for their blocklist (they get pushes).
#[derive(Default)]
struct Interested(RefCell<HashSet<Arc<str>>>);

/// Work waiting for an account's list to load.
type ListJob = LoadJob<Vec<String>>;

/// The blocklists this shard knows: of the accounts with sessions here (their home), and of some
/// offline ones (bounded), with the reads under way.
#[derive(Default)]
struct Lists {
    online: RefCell<HashMap<String, Rc<Vec<String>>>>,
    offline: RefCell<HashMap<String, Rc<Vec<String>>>>,
    loader: Rc<Loader<Vec<String>>>,
}

impl Lists {
    fn get(&self, bare: &str) -> Option<Rc<Vec<String>>> {
        let online = self.online.borrow().get(bare).cloned();
        online.or_else(|| self.offline.borrow().get(bare).cloned())
    }

    /// Replaces a list after a change written by the account (which has a session here).
    fn set(&self, bare: &str, list: Vec<String>) {
        self.loader.wrote();
        self.offline.borrow_mut().remove(bare);
        self.online
            .borrow_mut()
            .insert(bare.to_string(), Rc::new(list));
    }

    fn keep(&self, ctx: &ModuleCtx, bare: &str, list: Rc<Vec<String>>) {
        if !ctx.sessions(bare).is_empty() {
            self.online.borrow_mut().insert(bare.to_string(), list);
            return;
        }
        let mut offline = self.offline.borrow_mut();
        if offline.len() >= OFFLINE_CACHE {
            offline.clear();
        }
        offline.insert(bare.to_string(), list);
    }

    fn forget(&self, bare: &str) {
        self.online.borrow_mut().remove(bare);
    }

    /// Runs `job` over `bare`'s list: at once when known, otherwise once read (behind the work already
    /// waiting for it, in order).
    fn with_list(self: &Rc<Self>, ctx: &ModuleCtx, bare: &str, job: ListJob) {
        if let Some(list) = self.get(bare) {
            return job(ctx, &list);
        }
        let (user, host) = bare.split_once('@').unwrap_or(("", bare));
        let (user, host) = (user.to_string(), host.to_string());
        let (lists, key) = (self.clone(), bare.to_string());
        self.loader.load(
            ctx,
            bare,
            job,
            "blocklist",
            move |db| list_of(db, &host, &user),
            move |ctx, list, fresh| {
                if fresh {
                    let list = Rc::new(list);
                    lists.keep(ctx, &key, list.clone());
                    list
                } else {
                    // A change was written meanwhile (maybe this account's, which then is kept).
                    lists.get(&key).unwrap_or_else(|| Rc::new(list))
                }
            },
        );
    }
}

/// An account's blocked JIDs, as stored (one key each in the module's account data).
fn list_of(db: &dyn Store, host: &str, user: &str) -> Result<Vec<String>, StoreError> {
    Ok(db
        .data_all(host, user, MODULE)?
        .into_iter()
        .map(|(jid, _)| jid)
        .collect())
}

/// Whether `bare`'s list is surely empty without reading it (and starts learning its host's accounts).
fn surely_empty(ctx: &ModuleCtx, bare: &str) -> bool {
    let index = ctx.state::<WithLists>();
    index.0.load(ctx, domain_of(bare), MODULE);
    !index.0.may_hold(bare)
}

/// Which accounts homed on this shard have a blocklist at all: the others (nearly everyone) need no
/// read at login and no watch.
#[derive(Default)]
struct WithLists(Rc<HoldersIndex>);

/// A session was bound: an account with a list is watched from now until the list is known to be
/// empty, so that nothing reaches it unchecked.
fn session_opened(ctx: &ModuleCtx, bare: &str) {
    if surely_empty(ctx, bare) {
        return;
    }
    let lists = ctx.state::<Lists>();
    if let Some(list) = lists.get(bare) {
        lists.keep(ctx, bare, list.clone());
        ctx.watch(bare, "mod_blocking", !list.is_empty());
        return;
    }
    ctx.watch(bare, "mod_blocking", true);
    let owner = bare.to_string();
    lists.with_list(
        ctx,
        bare,
        Box::new(move |ctx, list| {
            if list.is_empty() {
                ctx.watch(&owner, "mod_blocking", false);
            }
        }),
    );
}

/// Whether `list` (the account's) blocks `other`. The account itself and its own server are never
/// blocked: a domain item naming the account's own domain would otherwise cut it off from its server's
/// answers and its own pushes.
fn blocked(list: &[String], account: &str, other: &str) -> bool {
    if list.is_empty() {
        return false;
    }
    let other_bare = bare_of(other);
    if other_bare == account || other_bare == domain_of(account) {
        return false;
    }
    blocks(list, other)
}

/// The address a stanza is for, as the blocklist sees it (prepared; the bare JID of `from` for none).
fn addressee(stanza: &Stanza) -> Option<String> {
    let to = stanza.to()?;
    match JidView::canonical(&to) {
        Some(_) => Some(to.into_owned()),
        None => crate::proto::jid::Jid::parse(&to)
            .ok()
            .map(|j| j.as_str().to_string()),
    }
}

/// What a watched account's session sends: nothing goes to a blocked JID (§3.3).
fn outbound(ctx: &ModuleCtx, p: &mut WatchedPacket) -> Flow {
    let lists = ctx.state::<Lists>();
    let Some(list) = lists.get(&p.account) else {
        // Not read yet (just after bind): held until it is, then checked and let go (in order).
        let (stanza, account) = (p.stanza.clone(), p.account.clone());
        let session: Arc<str> = p.session.clone().unwrap_or_else(|| p.from.clone());
        lists.with_list(
            ctx,
            &p.account,
            Box::new(move |ctx, list| {
                if !refuse_outbound(ctx, list, &account, &session, &stanza) {
                    ctx.resume_send(&account, &session, stanza);
                }
            }),
        );
        return Flow::Stop;
    };
    // Watched for another module's sake.
    if list.is_empty() {
        return Flow::Continue;
    }
    let session = p.session.as_deref().unwrap_or(&p.from);
    if refuse_outbound(ctx, &list, &p.account, session, &p.stanza) {
        Flow::Stop
    } else {
        Flow::Continue
    }
}

/// Answers a stanza `session` of `account` sent to a JID its list blocks (`not-acceptable` with
/// `<blocked/>`); false, doing nothing, when the addressee is not blocked.
fn refuse_outbound(
    ctx: &ModuleCtx,
    list: &[String],
    account: &str,
    session: &str,
    stanza: &Stanza,
) -> bool {
    if list.is_empty() {
        return false;
    }
    let Some(to) = addressee(stanza) else {
        return false;
    };
    if !blocked(list, account, &to) {
        return false;
    }
    let mut bytes = Vec::new();
    if write_error_between_with(
        &mut bytes,
        stanza,
        &to,
        session,
        Cond::NotAcceptable,
        Some(BLOCKED_ERROR),
    ) {
        ctx.send_to_session(account, session, &bytes);
    }
    true
}

/// Answers (or silently drops) a stanza a blocked JID sent the account (§3.5 of v1.3's rules: presence
/// without a word, messages and IQ requests `service-unavailable`).
fn refuse(ctx: &ModuleCtx, stanza: &Stanza, from: &str, account: &str) {
    let answered = match stanza.kind() {
        StanzaKind::Message => true,
        StanzaKind::Iq => matches!(stanza.type_().as_deref(), Some("get" | "set")),
        _ => false,
    };
    if answered {
        let to = stanza.to().map(|t| t.into_owned());
        ctx.bounce(
            stanza,
            from,
            to.as_deref().unwrap_or(account),
            Cond::ServiceUnavailable,
        );
    }
}

/// What reaches a watched account: nothing from a blocked JID.
fn inbound(ctx: &ModuleCtx, p: &mut WatchedPacket) -> Flow {
    let lists = ctx.state::<Lists>();
    match lists.get(&p.account) {
        Some(list) => {
            if blocked(&list, &p.account, &p.from) {
                refuse(ctx, &p.stanza, &p.from, &p.account);
                return Flow::Stop;
            }
            Flow::Continue
        }
        None => {
            // Held until the list is read, then checked and routed again (in order).
            let (stanza, from, account) = (p.stanza.clone(), p.from.clone(), p.account.clone());
            lists.with_list(
                ctx,
                &p.account,
                Box::new(move |ctx, list| {
                    if blocked(list, &account, &from) {
                        refuse(ctx, &stanza, &from, &account);
                    } else {
                        ctx.route(stanza, from);
                    }
                }),
            );
            Flow::Stop
        }
    }
}

/// A message for an offline account: not kept when its sender is blocked.
fn offline_message(ctx: &ModuleCtx, m: &mut OfflineMessage) -> Flow {
    let bare = format!("{}@{}", m.user, m.host);
    if surely_empty(ctx, &bare) {
        return Flow::Continue;
    }
    let lists = ctx.state::<Lists>();
    if let Some(list) = lists.get(&bare) {
        if blocked(&list, &bare, &m.from) {
            refuse(ctx, &m.stanza, &m.from, &bare);
            return Flow::Stop;
        }
        return Flow::Continue;
    }
    let mut held = OfflineMessage {
        from: m.from.clone(),
        user: m.user.clone(),
        host: m.host.clone(),
        stanza: m.stanza.clone(),
        arrival: m.arrival.clone(),
    };
    lists.with_list(
        ctx,
        &bare,
        Box::new(move |ctx, _| {
            // Known now: this handler decides at once on the second run.
            let host = held.host.clone();
            let kept = super::hooks::run(ctx, &OFFLINE_MESSAGE, &host, &mut held) == Flow::Stop;
            if !kept {
                let to = format!("{}@{}", held.user, held.host);
                ctx.bounce(&held.stanza, &held.from, &to, Cond::ServiceUnavailable);
            }
        }),
    );
    Flow::Stop
}

/// A subscription stanza for an account: dropped without a word when its sender is blocked.
fn in_subscription(ctx: &ModuleCtx, ev: &mut SubscriptionStanza) -> Flow {
    if surely_empty(ctx, &ev.user) {
        return Flow::Continue;
    }
    let lists = ctx.state::<Lists>();
    if let Some(list) = lists.get(&ev.user) {
        return if blocked(&list, &ev.user, &ev.contact) {
            Flow::Stop
        } else {
            Flow::Continue
        };
    }
    let mut held = SubscriptionStanza {
        user: ev.user.clone(),
        contact: ev.contact.clone(),
        kind: ev.kind,
        stanza: ev.stanza.clone(),
    };
    lists.with_list(
        ctx,
        &ev.user,
        Box::new(move |ctx, _| {
            let host = domain_of(&held.user).to_string();
            super::hooks::run(ctx, &IN_SUBSCRIPTION, &host, &mut held);
        }),
    );
    Flow::Stop
}

async fn blocking_iq(iq: Iq, max_items: usize) -> IqResult {
    if !iq.from_owner() {
        return Err(IqError::new(Cond::Forbidden));
    }
    match iq.type_ {
        IqType::Get if iq.payload.name == "blocklist" => get(iq).await,
        IqType::Get => Err(IqError::bad_request("expected <blocklist/>")),
        IqType::Set => set(iq, max_items).await,
    }
}

async fn get(iq: Iq) -> IqResult {
    let (host, user) = iq.account();
    let list = iq
        .ctx
        .store()
        .run(move |db| list_of(db, &host, &user))
        .await
        .map_err(IqError::internal)?;
    iq.ctx
        .state::<Interested>()
        .0
        .borrow_mut()
        .insert(iq.from.as_str().into());
    Ok(Some(element("blocklist", &list)))
}

/// What a change did: the list after it, and the JIDs it added or removed with the subscription each
/// has on the account's roster (for the presence that follows).
struct Changed {
    list: Vec<String>,
    touched: Vec<(String, Subscription)>,
}

async fn set(iq: Iq, max_items: usize) -> IqResult {
    let request = parse_set(&iq.payload, max_items)
        .map_err(|(condition, text)| IqError::new(condition).with_text(text))?;
    let (host, user) = iq.account();
    let bare = iq.to.bare_str().to_string();
    let req = request.clone();
    let changed = iq
        .ctx
        .store()
        .run(move |db| {
            let before = list_of(db, &host, &user)?;
            let touched: Vec<String> = match &req {
                BlockingSet::Block(items) => items
                    .iter()
                    .filter(|j| !before.contains(j))
                    .cloned()
                    .collect(),
                BlockingSet::Unblock(items) => items
                    .iter()
                    .filter(|j| before.contains(j))
                    .cloned()
                    .collect(),
                BlockingSet::UnblockAll => before.clone(),
            };
            let block = matches!(req, BlockingSet::Block(_));
            if block && before.len() + touched.len() > max_items {
                return Ok(None);
            }
            // A blocked JID is a key with an empty value; unblocking removes the key.
            let values: Vec<(String, Option<Vec<u8>>)> = touched
                .iter()
                .map(|j| (j.clone(), block.then(Vec::new)))
                .collect();
            db.data_put(&host, &user, MODULE, &values)?;
            let list = list_of(db, &host, &user)?;
            let mut with_subscription = Vec::new();
            for jid in touched {
                let subscription = db
                    .roster_item(&host, &user, &jid)?
                    .map_or(Subscription::None, |i| i.subscription);
                with_subscription.push((jid, subscription));
            }
            Ok(Some(Changed {
                list,
                touched: with_subscription,
            }))
        })
        .await
        .map_err(IqError::internal)?;
    let Some(changed) = changed else {
        return Err(IqError::new(Cond::NotAcceptable)
            .with_text(format!("the blocklist is full ({max_items} items)")));
    };
    let ctx = &iq.ctx;
    let blocking = matches!(request, BlockingSet::Block(_));
    // Before the list changes: what the account tells a contact it blocks still goes.
    if blocking {
        for (jid, subscription) in &changed.touched {
            if matches!(subscription, Subscription::From | Subscription::Both) {
                for (full, _) in ctx.available_presences(&bare) {
                    route_presence(ctx, "unavailable", jid, full);
                }
            }
        }
    }
    let empty = changed.list.is_empty();
    ctx.state::<WithLists>().0.set(&bare, !empty);
    ctx.state::<Lists>().set(&bare, changed.list);
    ctx.watch(&bare, "mod_blocking", !empty);
    if !blocking {
        for (jid, subscription) in &changed.touched {
            if matches!(subscription, Subscription::From | Subscription::Both) {
                for (full, presence) in ctx.available_presences(&bare) {
                    if let Some(p) = presence.rewritten(None, Some(jid)) {
                        ctx.route(p, full);
                    }
                }
            }
            // What the contact said while blocked was dropped: ask again.
            if matches!(subscription, Subscription::To | Subscription::Both) {
                for (full, _) in ctx.available_presences(&bare) {
                    route_presence(ctx, "probe", jid, full);
                }
            }
        }
    }
    let pushed = match &request {
        BlockingSet::Block(items) => element("block", items),
        BlockingSet::Unblock(items) => element("unblock", items),
        BlockingSet::UnblockAll => element("unblock", &[]),
    };
    push(ctx, &bare, &pushed);
    Ok(None)
}

/// Sends a block or unblock push to each interested resource of `owner` (§3.3, §3.4).
fn push(ctx: &ModuleCtx, owner: &str, payload: &crate::proto::xml::Element) {
    let targets: Vec<Arc<str>> = ctx
        .state::<Interested>()
        .0
        .borrow()
        .iter()
        .filter(|full| bare_of(full) == owner)
        .cloned()
        .collect();
    let body = payload.to_xml_string();
    for (n, full) in targets.iter().enumerate() {
        let xml = format!(
            "<iq xmlns='jabber:client' type='set' id='block-push-{n}' to='{}'>{body}</iq>",
            escape(full)
        );
        match parse_element(xml.as_bytes(), &Limits::default()) {
            Ok(stanza) => ctx.route(stanza, owner.into()),
            Err(e) => log::error!("mod_blocking: a push did not parse: {e}"),
        }
    }
}

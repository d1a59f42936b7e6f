//! `mod_roster`, rosters (RFC 6121 §2) with versioning (XEP-0237): an account gets its roster, adds or
//! updates an item (name and groups) and removes one; every change is stored with a new version and
//! pushed to each of the account's interested resources (those that asked for the roster on this
//! connection). Requests run on the account's home shard, where its sessions are, in arrival order
//! (`one_queue`). A request with the current version gets an empty result. Removing an item to or from
//! which presence flows tells the contact (`unsubscribe` / `unsubscribed`, §2.5.2). Presence
//! subscriptions (RFC 6121 §3) change the items' states through the pure state machine of
//! `proto::subscription`: on the user's home shard for what the user sends (Appendix A.2), on the
//! contact's home shard for what arrives (A.3), one at a time per shard so that a user's subscription
//! stanzas keep their order; a request that finds no available resource waits in the roster
//! (pending in) and is delivered again at the account's next initial presence. Presence follows the
//! subscriptions (RFC 6121 §4): a session's presence goes to every contact with a `from` or `both`
//! subscription, its initial presence also probes every `to` or `both` contact, and a probe is answered
//! with the last presence of each available resource when the prober is subscribed. The roster of an
//! account with sessions here is cached on its home shard (loaded by its first roster request or
//! broadcast, written through by every change made here, dropped with its last session).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use super::hooks::{
    DIRECTED_PRESENCE, DirectedPresence, IN_SUBSCRIPTION, OUT_SUBSCRIPTION, PRESENCE_PROBE,
    PRESENCE_RECIPIENTS, PresenceProbe, PresenceRecipients, PresenceUpdate, SM_REMOVE_CONNECTION,
    SessionEvent, SubscriptionStanza, USER_AVAILABLE, USER_PRESENCE,
};
use super::iq::async_handler;
use super::util::{LoadJob, Loader, childless_presence, iqdisc, route_presence};
use super::{
    Component, Flow, HostModules, Iq, IqError, IqResult, IqType, Module, ModuleCtx, ModuleOpts,
    OptKind, OptionSpec, Registrations,
};
use crate::proto::errors::StanzaErrorCondition as Cond;
use crate::proto::jid::{bare_of, domain_of};
use crate::proto::roster::{
    NS_ROSTER, RosterItem, RosterLimits, RosterSet, Subscription, parse_set, removed_element,
};
use crate::proto::subscription::{Kind, State, inbound, outbound};
use crate::proto::xml::{Element, Limits, escape, parse_element};

pub const PROTOCOLS: &[&str] = &["RFC 6121", "XEP-0237 v1.3"];

pub struct Roster;

impl Module for Roster {
    fn name(&self) -> &'static str {
        "mod_roster"
    }
    fn doc(&self) -> &'static str {
        "RFC 6121 rosters: get, set, remove, pushes to interested resources, XEP-0237 versioning"
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
                    max: 1_000_000,
                },
                default: "1000",
                doc: "items one roster may hold; a set adding one more gets not-acceptable",
            },
            OptionSpec {
                name: "versioning",
                kind: OptKind::Bool,
                default: "true",
                doc: "XEP-0237 roster versioning (a stream feature, `ver` on results and pushes)",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let settings = Rc::new(Settings {
            max_items: opts.int("max_items") as u64,
            versioning: opts.bool("versioning"),
            limits: RosterLimits::default(),
        });
        let (out, inb) = (settings.clone(), settings.clone());
        Ok(Registrations::new()
            .iq(
                Component::Sm,
                NS_ROSTER,
                opts.iqdisc(),
                async_handler(move |iq| roster_iq(iq, settings.clone())),
            )
            .hook(
                &OUT_SUBSCRIPTION,
                50,
                move |ctx, ev: &mut SubscriptionStanza| {
                    subscription(ctx, ev, out.clone(), Side::Outbound);
                    Flow::Stop
                },
            )
            .hook(
                &IN_SUBSCRIPTION,
                50,
                move |ctx, ev: &mut SubscriptionStanza| {
                    subscription(ctx, ev, inb.clone(), Side::Inbound);
                    Flow::Stop
                },
            )
            .hook(&USER_AVAILABLE, 50, |ctx, e: &mut SessionEvent| {
                deliver_pending_requests(ctx, e);
                Flow::Continue
            })
            .hook(&USER_PRESENCE, 50, |ctx, u: &mut PresenceUpdate| {
                broadcast(ctx, u);
                Flow::Continue
            })
            .hook(&PRESENCE_PROBE, 50, |ctx, p: &mut PresenceProbe| {
                answer_probe(ctx, p);
                Flow::Stop
            })
            .hook(&SM_REMOVE_CONNECTION, 50, |ctx, e: &mut SessionEvent| {
                ctx.state::<Interested>().0.borrow_mut().remove(&e.full);
                let bare = format!("{}@{}", e.user, e.host);
                if ctx.sessions(&bare).is_empty() {
                    ctx.state::<RosterCache>().forget(&bare);
                }
                // A session that never went available still owes its directed presence an end.
                let targets = ctx.state::<Directed>().0.borrow_mut().remove(&e.full);
                let targets: Vec<Arc<str>> = targets
                    .unwrap_or_default()
                    .iter()
                    .map(|t| Arc::from(t.as_str()))
                    .collect();
                unavailable_to(ctx, &e.full, &targets);
                Flow::Continue
            })
            .hook(&DIRECTED_PRESENCE, 50, |ctx, d: &mut DirectedPresence| {
                let directed = ctx.state::<Directed>();
                let mut map = directed.0.borrow_mut();
                let targets = map.entry(d.full.clone()).or_default();
                if d.available {
                    targets.insert(d.to.clone());
                } else {
                    targets.remove(&d.to);
                }
                Flow::Continue
            }))
    }
}

/// The hosts where `mod_roster` runs: their rosters take pre-approvals (the RFC 6121 §3.4 stream
/// feature).
pub fn preapproval_hosts(plan: &[HostModules]) -> Vec<String> {
    super::options::hosts_running(plan, "mod_roster", |_| true)
}

/// The hosts whose `mod_roster` versions rosters (the XEP-0237 stream feature).
pub fn rosterver_hosts(plan: &[HostModules]) -> Vec<String> {
    super::options::hosts_running(plan, "mod_roster", |o| o.bool("versioning"))
}

struct Settings {
    max_items: u64,
    versioning: bool,
    limits: RosterLimits,
}

/// The full JIDs of this shard's sessions that asked for their roster ("interested resources").
#[derive(Default)]
struct Interested(RefCell<HashSet<Arc<str>>>);

/// Whom each session of this shard sent directed available presence (RFC 6121 §4.6): they are told
/// when it becomes unavailable.
#[derive(Default)]
struct Directed(RefCell<std::collections::HashMap<Arc<str>, HashSet<String>>>);

/// A cached roster, with the two lists every presence broadcast walks made once.
struct CachedRoster {
    items: Vec<RosterItem>,
    /// Contacts subscribed to the account's presence (`from`, `both`): its broadcasts go to them.
    presence_to: Vec<Arc<str>>,
    /// Contacts whose presence the account has (`to`, `both`): its initial presence probes them.
    probe_to: Vec<Arc<str>>,
}

impl CachedRoster {
    fn new(items: Vec<RosterItem>) -> CachedRoster {
        let with = |subs: [Subscription; 2]| -> Vec<Arc<str>> {
            items
                .iter()
                .filter(|i| subs.contains(&i.subscription))
                .map(|i| Arc::from(i.jid.as_str()))
                .collect()
        };
        CachedRoster {
            presence_to: with([Subscription::From, Subscription::Both]),
            probe_to: with([Subscription::To, Subscription::Both]),
            items,
        }
    }

    fn item(&self, jid: &str) -> Option<&RosterItem> {
        self.items.iter().find(|i| i.jid == jid)
    }
}

/// The rosters of the accounts with sessions on this shard (their home), kept while they have sessions:
/// every presence broadcast reads one, and every change made here writes through. Changes made beside
/// the server (`rjabberd roster …`) reach it at the account's next roster request or login.
#[derive(Default)]
struct RosterCache {
    rosters: RefCell<std::collections::HashMap<String, Rc<CachedRoster>>>,
    /// Reads under way, with the work waiting for them, and the count of changes written through.
    loader: Rc<Loader<CachedRoster>>,
}

impl RosterCache {
    fn get(&self, bare: &str) -> Option<Rc<CachedRoster>> {
        self.rosters.borrow().get(bare).cloned()
    }

    /// Keeps a roster read from the store, unless a change was written through since `writes_before`.
    fn put_read(&self, bare: &str, items: Vec<RosterItem>, writes_before: u64) {
        if self.loader.writes() == writes_before {
            self.rosters
                .borrow_mut()
                .insert(bare.to_string(), Rc::new(CachedRoster::new(items)));
        }
    }

    /// Writes through a stored item (`None`: removed), when the roster is cached.
    fn write(&self, bare: &str, jid: &str, item: Option<&RosterItem>) {
        self.loader.wrote();
        let mut rosters = self.rosters.borrow_mut();
        let Some(cached) = rosters.get_mut(bare) else {
            return;
        };
        let mut items = cached.items.clone();
        items.retain(|i| i.jid != jid);
        if let Some(item) = item {
            let at = items.partition_point(|i| i.jid.as_str() < jid);
            items.insert(at, item.clone());
        }
        *cached = Rc::new(CachedRoster::new(items));
    }

    fn forget(&self, bare: &str) {
        self.rosters.borrow_mut().remove(bare);
    }

    /// Runs `job` over `bare`'s roster: at once when it is cached, otherwise once it is read (behind the
    /// work already waiting for the same roster). The roster read is kept while the account has
    /// sessions here.
    fn with_roster(self: &Rc<Self>, ctx: &ModuleCtx, bare: &str, job: LoadJob<CachedRoster>) {
        if let Some(roster) = self.get(bare) {
            return job(ctx, &roster);
        }
        let Some((user, host)) = bare.split_once('@') else {
            return;
        };
        let (user, host) = (user.to_string(), host.to_string());
        let (cache, key) = (self.clone(), bare.to_string());
        self.loader.load(
            ctx,
            bare,
            job,
            "roster",
            move |db| db.roster(&host, &user).map(|(_, items)| items),
            move |ctx, items, fresh| {
                let roster = Rc::new(CachedRoster::new(items));
                if fresh && !ctx.sessions(&key).is_empty() {
                    cache.rosters.borrow_mut().insert(key, roster.clone());
                }
                roster
            },
        );
    }
}

/// Unavailable presence from `full` to each of `targets`.
fn unavailable_to(ctx: &ModuleCtx, full: &Arc<str>, targets: &[Arc<str>]) {
    if targets.is_empty() {
        return;
    }
    if let Some(p) = childless_presence("unavailable", None) {
        ctx.route_multicast(p, full.clone(), targets);
    }
}

async fn roster_iq(iq: Iq, settings: Rc<Settings>) -> IqResult {
    // Only the account itself reads or changes its roster (§2.1.5, §2.3.3: forbidden).
    if !iq.from_owner() {
        return Err(IqError::new(Cond::Forbidden));
    }
    if iq.payload.name != "query" {
        return Err(IqError::bad_request(
            "expected <query xmlns='jabber:iq:roster'/>",
        ));
    }
    match iq.type_ {
        IqType::Get => get(iq, &settings).await,
        IqType::Set => set(iq, &settings).await,
    }
}

fn query(version: Option<u64>) -> Element {
    let q = Element::new("query").with_attr("xmlns", NS_ROSTER);
    match version {
        Some(v) => q.with_attr("ver", v.to_string()),
        None => q,
    }
}

async fn get(iq: Iq, settings: &Settings) -> IqResult {
    let (host, user) = iq.account();
    let asked = iq.payload.attr("ver").map(str::to_string);
    let cache = iq.ctx.state::<RosterCache>();
    let writes_before = cache.loader.writes();
    let (version, items) = iq
        .ctx
        .store()
        .run(move |db| db.roster(&host, &user))
        .await
        .map_err(IqError::internal)?;
    iq.ctx
        .state::<Interested>()
        .0
        .borrow_mut()
        .insert(iq.from.as_str().into());
    cache.put_read(iq.to.bare_str(), items.clone(), writes_before);
    if settings.versioning && asked.as_deref() == Some(version.to_string().as_str()) {
        // XEP-0237 §4: nothing changed since the client's copy; changes come as pushes.
        return Ok(None);
    }
    let mut q = query(settings.versioning.then_some(version));
    for item in items.iter().filter(|i| i.listed) {
        q = q.with_child(item.to_element());
    }
    Ok(Some(q))
}

async fn set(iq: Iq, settings: &Settings) -> IqResult {
    let (host, user) = iq.account();
    let owner = iq.to.bare_str().to_string();
    let request = parse_set(&iq.payload, &owner, &settings.limits)
        .map_err(|(condition, text)| IqError::new(condition).with_text(text))?;
    let max = settings.max_items;
    let (pushed, farewell) = match request {
        RosterSet::Update { jid, name, groups } => {
            let (h, u) = (host.clone(), user.clone());
            let outcome = iq
                .ctx
                .store()
                .run(move |db| {
                    let mut item = match db.roster_item(&h, &u, &jid)? {
                        Some(item) => item,
                        None => {
                            if db.roster_count(&h, &u)? >= max {
                                return Ok(None);
                            }
                            RosterItem::new(jid)
                        }
                    };
                    item.name = name;
                    item.groups = groups;
                    item.listed = true;
                    let version = db.roster_put(&h, &u, &item)?;
                    Ok(Some((version, item)))
                })
                .await
                .map_err(IqError::internal)?;
            let Some((version, item)) = outcome else {
                return Err(IqError::new(Cond::NotAcceptable)
                    .with_text(format!("the roster is full ({max} items)")));
            };
            iq.ctx
                .state::<RosterCache>()
                .write(&owner, &item.jid, Some(&item));
            ((version, item.to_element()), None)
        }
        RosterSet::Remove { jid } => {
            let (h, u, j) = (host.clone(), user.clone(), jid.clone());
            let outcome = iq
                .ctx
                .store()
                .run(move |db| {
                    let Some(item) = db.roster_item(&h, &u, &j)?.filter(|i| i.listed) else {
                        return Ok(None);
                    };
                    let version = db.roster_remove(&h, &u, &j)?.unwrap_or_default();
                    Ok(Some((version, item)))
                })
                .await
                .map_err(IqError::internal)?;
            // §2.5.3: removing an item that is not there is an error.
            let Some((version, item)) = outcome else {
                return Err(IqError::new(Cond::ItemNotFound));
            };
            iq.ctx.state::<RosterCache>().write(&owner, &jid, None);
            ((version, removed_element(&jid)), Some(item))
        }
    };
    let (version, element) = pushed;
    push(
        &iq.ctx,
        &owner,
        settings.versioning.then_some(version),
        element,
    );
    if let Some(item) = farewell {
        unsubscribe_on_removal(&iq.ctx, &owner, &item);
    }
    Ok(None)
}

/// Sends a roster push with `item` to each interested resource of `owner` (RFC 6121 §2.1.6).
fn push(ctx: &ModuleCtx, owner: &str, version: Option<u64>, item: Element) {
    let prefix = format!("{owner}/");
    let targets: Vec<Arc<str>> = ctx
        .state::<Interested>()
        .0
        .borrow()
        .iter()
        .filter(|full| full.starts_with(&prefix))
        .cloned()
        .collect();
    let q = query(version).with_child(item);
    for (n, full) in targets.iter().enumerate() {
        let mut xml = format!(
            "<iq xmlns='jabber:client' type='set' id='push{}-{n}' to='{}'>",
            version.unwrap_or_default(),
            escape(full)
        );
        xml.push_str(&q.to_xml_string());
        xml.push_str("</iq>");
        match parse_element(xml.as_bytes(), &Limits::default()) {
            Ok(stanza) => ctx.route(stanza, owner.into()),
            Err(e) => log::error!("mod_roster: a push did not parse: {e}"),
        }
    }
}

/// RFC 6121 §2.5.2: a removed contact to or from whom presence flowed is told, so that its side of the
/// subscription ends too.
fn unsubscribe_on_removal(ctx: &ModuleCtx, owner: &str, item: &RosterItem) {
    let mut kinds = Vec::new();
    if matches!(item.subscription, Subscription::To | Subscription::Both) || item.ask {
        kinds.push("unsubscribe");
    }
    if matches!(item.subscription, Subscription::From | Subscription::Both) || item.pending_in {
        kinds.push("unsubscribed");
    }
    for kind in kinds {
        route_presence(ctx, kind, &item.jid, owner.into());
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The user sent it (Appendix A.2).
    Outbound,
    /// It arrived for the user (Appendix A.3).
    Inbound,
}

/// One subscription stanza at a time per shard: the store runs on several threads, and a user's
/// `subscribe` must not be overtaken by its `unsubscribe`.
struct SubscriptionTurn(glommio::sync::Semaphore);

impl Default for SubscriptionTurn {
    fn default() -> Self {
        SubscriptionTurn(glommio::sync::Semaphore::new(1))
    }
}

fn state_of(item: &RosterItem) -> State {
    State {
        subscription: item.subscription,
        pending_out: item.ask,
        pending_in: item.pending_in,
        approved: item.approved,
    }
}

/// Carries out Appendix A for one subscription stanza: the item's new state stored and pushed, the
/// stanza routed on (outbound) or delivered to the user's available resources (inbound), and the
/// server's own answer on the user's behalf.
fn subscription(ctx: &ModuleCtx, ev: &SubscriptionStanza, settings: Rc<Settings>, side: Side) {
    let Some((user, host)) = ev
        .user
        .split_once('@')
        .map(|(u, h)| (u.to_string(), h.to_string()))
    else {
        return;
    };
    let (owner, contact, kind, stanza) = (
        ev.user.clone(),
        ev.contact.clone(),
        ev.kind,
        ev.stanza.clone(),
    );
    let ctx = ctx.clone();
    let turn = ctx.state::<SubscriptionTurn>();
    glommio::spawn_local(async move {
        let Ok(_turn) = turn.0.acquire_permit(1).await else {
            return;
        };
        let (h, u, c) = (host.clone(), user.clone(), contact.clone());
        let inbound_side = side == Side::Inbound;
        let loaded = ctx
            .store()
            .run(move |db| {
                // An inbound stanza for an account that does not exist is dropped (RFC 6121 §8.5.1).
                if inbound_side && !db.exists(&h, &u)? {
                    return Ok(None);
                }
                Ok(Some(db.roster_item(&h, &u, &c)?))
            })
            .await;
        let existing = match loaded {
            Ok(Some(item)) => item,
            Ok(None) => return,
            Err(e) => {
                log::warn!(
                    "mod_roster: a {} for {owner} is refused: {e}",
                    kind.as_str()
                );
                refuse(&ctx, &stanza, side, &owner, &contact);
                return;
            }
        };
        let mut item = existing.unwrap_or_else(|| RosterItem {
            // A request the user has not answered creates no visible item (RFC 6121 §3.1.3).
            listed: side == Side::Outbound,
            ..RosterItem::new(contact.clone())
        });
        let outcome = match side {
            Side::Outbound => outbound(state_of(&item), kind),
            Side::Inbound => inbound(state_of(&item), kind),
        };
        if let Some(new) = outcome.new {
            // What the user's clients see of the item before the change: a push only when it changes
            // (a request pending in is not theirs to see).
            let seen_before = item.listed.then(|| item.to_element());
            item.subscription = new.subscription;
            item.ask = new.pending_out;
            item.pending_in = new.pending_in;
            item.approved = new.approved;
            // What the user sends, and a subscription either way, put the contact on the roster.
            item.listed |= side == Side::Outbound || item.subscription != Subscription::None;
            let stored = item.clone();
            let (h, u, c) = (host.clone(), user.clone(), contact.clone());
            let written = ctx
                .store()
                .run(move |db| {
                    if stored.is_vacant() {
                        db.roster_remove(&h, &u, &c)
                    } else {
                        db.roster_put(&h, &u, &stored).map(Some)
                    }
                })
                .await;
            if written.is_ok() {
                let kept = (!item.is_vacant()).then_some(&item);
                ctx.state::<RosterCache>().write(&owner, &contact, kept);
            }
            match written {
                Ok(Some(version)) if item.listed && seen_before != Some(item.to_element()) => push(
                    &ctx,
                    &owner,
                    settings.versioning.then_some(version),
                    item.to_element(),
                ),
                Ok(_) => {}
                Err(e) => {
                    log::warn!("mod_roster: {owner}'s item for {contact} not stored: {e}");
                    refuse(&ctx, &stanza, side, &owner, &contact);
                    return;
                }
            }
        }
        let owner_jid: Arc<str> = owner.as_str().into();
        if outcome.pass {
            match side {
                // Stamped with the user's bare JID (RFC 6121 §3.1.2) on its way to the contact; an
                // approval is followed by the user's current presence (§3.1.5), a cancellation by
                // unavailable presence (§3.2.2), from each available resource.
                Side::Outbound => {
                    ctx.route(stanza, owner_jid.clone());
                    match kind {
                        Kind::Subscribed => {
                            for (full, presence) in ctx.available_presences(&owner) {
                                if let Some(p) = presence.rewritten(None, Some(&contact)) {
                                    ctx.route(p, full);
                                }
                            }
                        }
                        Kind::Unsubscribed => {
                            for (full, _) in ctx.available_presences(&owner) {
                                unavailable_to(&ctx, &full, &[contact.as_str().into()]);
                            }
                        }
                        _ => {}
                    }
                }
                // Delivered to every available resource; a request that finds none waits in the
                // roster (pending in) for the next initial presence.
                Side::Inbound => {
                    let from: Arc<str> = contact.as_str().into();
                    ctx.deliver_to_available(&owner, &stanza, &from);
                }
            }
        }
        if let Some(reply) = outcome.reply {
            route_presence(&ctx, reply.as_str(), &contact, owner_jid);
        }
    })
    .detach();
}

/// A subscription stanza from a contact that could not be stored (the store is down) is answered with
/// an error, so that its sender knows to send it again rather than wait for an answer that will never
/// come. The user's own (outbound) ones are only logged: the user's server has no full JID to answer
/// and the user's client sees no roster push.
fn refuse(
    ctx: &ModuleCtx,
    stanza: &crate::proto::xml::Stanza,
    side: Side,
    owner: &str,
    contact: &str,
) {
    if side == Side::Inbound {
        ctx.bounce(stanza, contact, owner, Cond::InternalServerError);
    }
}

/// At an account's initial presence: the subscription requests that arrived while it had no available
/// resource (RFC 6121 §3.1.3).
fn deliver_pending_requests(ctx: &ModuleCtx, e: &SessionEvent) {
    let (host, user, full) = (e.host.clone(), e.user.clone(), e.full.clone());
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let (h, u) = (host.clone(), user.clone());
        let Ok((_, items)) = ctx.store().run(move |db| db.roster(&h, &u)).await else {
            return;
        };
        let bare = format!("{user}@{host}");
        for item in items.iter().filter(|i| i.pending_in) {
            let xml = format!(
                "<presence xmlns='jabber:client' type='subscribe' from='{}' to='{}'/>",
                escape(&item.jid),
                escape(&bare)
            );
            if !ctx.send_to_session(&bare, &full, xml.as_bytes()) {
                return;
            }
        }
    })
    .detach();
}

/// RFC 6121 §4.2.2, §4.4.2, §4.5.2: a session's presence to the contacts subscribed to it, and at its
/// initial presence a probe to each contact it is subscribed to.
fn broadcast(ctx: &ModuleCtx, u: &PresenceUpdate) {
    let (full, stanza, initial) = (u.full.clone(), u.stanza.clone(), u.initial);
    // Going unavailable ends directed presence too (§4.6.3).
    let directed = if u.available {
        HashSet::new()
    } else {
        ctx.state::<Directed>()
            .0
            .borrow_mut()
            .remove(&full)
            .unwrap_or_default()
    };
    let bare = format!("{}@{}", u.user, u.host);
    ctx.state::<RosterCache>().with_roster(
        ctx,
        &bare,
        Box::new(move |ctx, roster| send_presence(ctx, &full, stanza, initial, directed, roster)),
    );
}

/// The broadcast itself, over a roster in hand: one multicast for the subscribers, one for the probes.
fn send_presence(
    ctx: &ModuleCtx,
    full: &Arc<str>,
    stanza: crate::proto::xml::Stanza,
    initial: bool,
    directed: HashSet<String>,
    roster: &CachedRoster,
) {
    let subscribed = |jid: &str| {
        roster
            .item(jid)
            .is_some_and(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
    };
    // Those with a subscription get the broadcast below; the others are told here.
    let directed_only: Vec<Arc<str>> = directed
        .iter()
        .filter(|to| !subscribed(bare_of(to)))
        .map(|to| Arc::from(to.as_str()))
        .collect();
    let account = bare_of(full);
    unavailable_to(ctx, full, &allowed(ctx, account, &directed_only));
    let presence_to = allowed(ctx, account, &roster.presence_to);
    if !presence_to.is_empty() {
        ctx.route_multicast(stanza, full.clone(), &presence_to);
    }
    let probe_to = if initial {
        allowed(ctx, account, &roster.probe_to)
    } else {
        Cow::Borrowed(&[][..])
    };
    if !probe_to.is_empty() {
        // From the full JID: the answers come to this resource alone.
        if let Some(probe) = childless_presence("probe", None) {
            ctx.route_multicast(probe, full.clone(), &probe_to);
        }
    }
}

/// The recipients of `account`'s presence that the `presence_recipients` handlers let through (a
/// blocked contact is not).
fn allowed<'a>(ctx: &ModuleCtx, account: &str, recipients: &'a [Arc<str>]) -> Cow<'a, [Arc<str>]> {
    let filtered = ctx.modules().borrow().hooks().has(&PRESENCE_RECIPIENTS);
    if !filtered || recipients.is_empty() {
        return Cow::Borrowed(recipients);
    }
    let mut event = PresenceRecipients {
        account: account.to_string(),
        recipients: recipients.to_vec(),
    };
    super::hooks::run(ctx, &PRESENCE_RECIPIENTS, domain_of(account), &mut event);
    Cow::Owned(event.recipients)
}

/// RFC 6121 §4.3.2: a subscribed prober gets the last presence of each available resource (nothing when
/// none is available, which the RFC allows).
fn answer_probe(ctx: &ModuleCtx, p: &PresenceProbe) {
    if ctx.available_presences(&p.user).is_empty() {
        return;
    }
    let (owner, prober, reply_to) = (p.user.clone(), p.prober.clone(), p.reply_to.clone());
    ctx.state::<RosterCache>().with_roster(
        ctx,
        &p.user,
        Box::new(move |ctx, roster| {
            if !roster
                .item(&prober)
                .is_some_and(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
            {
                return;
            }
            if allowed(ctx, &owner, &[reply_to.as_str().into()]).is_empty() {
                return;
            }
            for (full, presence) in ctx.available_presences(&owner) {
                if let Some(p) = presence.rewritten(None, Some(&reply_to)) {
                    ctx.route(p, full);
                }
            }
        }),
    );
}

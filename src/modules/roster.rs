//! `mod_roster`, rosters (RFC 6121 §2) with versioning (XEP-0237): an account gets its roster, adds or
//! updates an item (name and groups) and removes one; every change is stored with a new version and
//! pushed to each of the account's interested resources (those that asked for the roster on this
//! connection). Requests run on the account's home shard, where its sessions are, in arrival order
//! (`one_queue`). A request with the current version gets an empty result. Removing an item to or from
//! which presence flows tells the contact (`unsubscribe` / `unsubscribed`, §2.5.2). The subscription
//! states themselves change with presence subscriptions (RFC 6121 §3), which are not handled yet.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use super::hooks::{SM_REMOVE_CONNECTION, SessionEvent};
use super::iq::async_handler;
use super::util::iqdisc;
use super::{
    Component, Flow, HostModules, Iq, IqError, IqResult, IqType, Module, ModuleCtx, ModuleOpts,
    OptKind, OptionSpec, Registrations,
};
use crate::proto::errors::StanzaErrorCondition as Cond;
use crate::proto::roster::{
    NS_ROSTER, RosterItem, RosterLimits, RosterSet, Subscription, parse_set, removed_element,
};
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
        Ok(Registrations::new()
            .iq(
                Component::Sm,
                NS_ROSTER,
                opts.iqdisc(),
                async_handler(move |iq| roster_iq(iq, settings.clone())),
            )
            .hook(&SM_REMOVE_CONNECTION, 50, |ctx, e: &mut SessionEvent| {
                ctx.state::<Interested>().0.borrow_mut().remove(&e.full);
                Flow::Continue
            }))
    }
}

/// The hosts whose `mod_roster` versions rosters (the XEP-0237 stream feature).
pub fn rosterver_hosts(plan: &[HostModules]) -> Vec<String> {
    plan.iter()
        .filter(|h| {
            h.modules
                .iter()
                .any(|(n, o)| *n == "mod_roster" && o.bool("versioning"))
        })
        .map(|h| h.host.clone())
        .collect()
}

struct Settings {
    max_items: u64,
    versioning: bool,
    limits: RosterLimits,
}

/// The full JIDs of this shard's sessions that asked for their roster ("interested resources").
#[derive(Default)]
struct Interested(RefCell<HashSet<Arc<str>>>);

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
    if settings.versioning && asked.as_deref() == Some(version.to_string().as_str()) {
        // XEP-0237 §4: nothing changed since the client's copy; changes come as pushes.
        return Ok(None);
    }
    let mut q = query(settings.versioning.then_some(version));
    for item in &items {
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
                    let version = db.roster_put(&h, &u, &item)?;
                    Ok(Some((version, item)))
                })
                .await
                .map_err(IqError::internal)?;
            let Some((version, item)) = outcome else {
                return Err(IqError::new(Cond::NotAcceptable)
                    .with_text(format!("the roster is full ({max} items)")));
            };
            ((version, item.to_element()), None)
        }
        RosterSet::Remove { jid } => {
            let (h, u, j) = (host.clone(), user.clone(), jid.clone());
            let outcome = iq
                .ctx
                .store()
                .run(move |db| {
                    let Some(item) = db.roster_item(&h, &u, &j)? else {
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
        let xml = format!(
            "<presence xmlns='jabber:client' type='{kind}' to='{}'/>",
            escape(&item.jid)
        );
        if let Ok(stanza) = parse_element(xml.as_bytes(), &Limits::default()) {
            ctx.route(stanza, owner.into());
        }
    }
}

//! The built-in modules: the Developers Guide's two examples (`mod_cputime`, `mod_echo`), the common
//! server modules (service discovery, software version, ping, entity time, last activity, vcard-temp,
//! private XML storage, contact addresses), and `mod_fault_probe`, a diagnostic handler that fails on
//! request so operators and tests can see the IQ fault barrier and the queueing disciplines at work.
//! Each module is a unit struct implementing [`Module`]; its options table is the one place that says
//! what it accepts.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::iq::{async_handler, handler};
use super::{
    Component, DiscoExtra, DiscoQuery, Flow, Hook, Iq, IqError, IqResult, IqType, Module,
    ModuleOpts, OptKind, OptionSpec, Registrations, SessionEvent,
};
use crate::proto::errors::StanzaErrorCondition as Cond;
use crate::proto::xml::{Element, Limits, Stanza, TargetStream, parse_element};
use crate::shard::Shard;

pub static ALL: &[&dyn Module] = &[
    &Cputime,
    &Echo,
    &Disco,
    &Version,
    &Ping,
    &Time,
    &Last,
    &Vcard,
    &Private,
    &ServerInfo,
    &super::register::Register,
    &super::offline::Offline,
    &FaultProbe,
];

const fn iqdisc(default: &'static str) -> OptionSpec {
    OptionSpec {
        name: "iqdisc",
        kind: OptKind::IqDisc,
        default,
        doc: "queueing discipline of the module's IQ handlers: no_queue, one_queue or parallel",
    }
}

fn query(ns: &str) -> Element {
    Element::new("query").with_attr("xmlns", ns)
}

fn get_only(iq: &Iq) -> Result<(), IqError> {
    match iq.type_ {
        IqType::Get => Ok(()),
        IqType::Set => Err(IqError::new(Cond::NotAllowed)),
    }
}

// ---- mod_cputime (Developers Guide §8.1) ----

pub const NS_CPUTIME: &str = "ejabberd:cputime";

/// The guide's example IQ handler: the server process's CPU time.
pub struct Cputime;

impl Module for Cputime {
    fn name(&self) -> &'static str {
        "mod_cputime"
    }
    fn doc(&self) -> &'static str {
        "ejabberd:cputime — the server process's CPU seconds (the Developers Guide's example)"
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[iqdisc("\"one_queue\"")];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        Ok(Registrations::new().iq(
            Component::Local,
            NS_CPUTIME,
            opts.iqdisc(),
            handler(|iq| match iq.type_ {
                // As in the guide: the original child echoed with `not-allowed`.
                IqType::Set => Err(IqError::new(Cond::NotAllowed).with_payload()),
                IqType::Get => Ok(Some(query(NS_CPUTIME).with_child(
                    Element::new("cputime").with_text(format!("{:.3}", process_cpu_seconds())),
                ))),
            }),
        ))
    }
}

/// User plus system CPU time of the whole process (every shard), like `erlang:statistics(runtime)`.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

// ---- mod_echo (Developers Guide §8.2) ----

/// The guide's example service: every stanza sent to `echo.<host>` comes back with `from` and `to`
/// swapped.
pub struct Echo;

impl Module for Echo {
    fn name(&self) -> &'static str {
        "mod_echo"
    }
    fn doc(&self) -> &'static str {
        "a service that sends every stanza back to its sender (the Developers Guide's example)"
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[OptionSpec {
            name: "host",
            kind: OptKind::Str,
            default: "\"echo.@HOST@\"",
            doc: "the service's domain",
        }];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let domain = opts.str("host").to_ascii_lowercase();
        if crate::proto::jid::prep_domain(&domain).is_err() {
            return Err(format!("`{domain}` is not a domain"));
        }
        Ok(Registrations::new().service(&domain, Rc::new(echo)))
    }
}

/// No stream declares anything: the written stanza carries its own namespace and can be parsed alone.
const STANDALONE: TargetStream<'static> = TargetStream {
    default_ns: "",
    prefixes: &[],
};

fn echo(shard: &Rc<Shard>, stanza: Stanza, from: Arc<str>) {
    let Some(to) = stanza.to().map(|t| t.into_owned()) else {
        return;
    };
    let mut out = Vec::with_capacity(stanza.as_bytes().len() + 64);
    // `ejabberd_router:route(To, From, Packet)`: the same bytes, addresses swapped.
    stanza.write_to(&mut out, &STANDALONE, Some(&to), Some(&from));
    match parse_element(&out, &Limits::default()) {
        Ok(back) => crate::router::route(shard, back, to.into()),
        Err(e) => log::error!("echo: the swapped stanza did not parse: {e}"),
    }
}

// ---- mod_disco (XEP-0030) ----

pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

/// Service discovery: identities and features from what modules registered; services as items.
pub struct Disco;

impl Module for Disco {
    fn name(&self) -> &'static str {
        "mod_disco"
    }
    fn doc(&self) -> &'static str {
        "XEP-0030 service discovery of the server and of accounts"
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[
            iqdisc("\"no_queue\""),
            OptionSpec {
                name: "name",
                kind: OptKind::Str,
                default: "\"rjabberd\"",
                doc: "the name of the server's identity",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let disc = opts.iqdisc();
        let name: Rc<str> = opts.str("name").into();
        let mut regs = Registrations::new();
        for component in [Component::Local, Component::Sm] {
            let name = name.clone();
            regs = regs
                .iq(
                    component,
                    NS_DISCO_INFO,
                    disc,
                    handler(move |iq| disco_info(iq, component, &name)),
                )
                .iq(
                    component,
                    NS_DISCO_ITEMS,
                    disc,
                    handler(move |iq| disco_items(iq, component)),
                );
        }
        Ok(regs)
    }
}

fn disco_info(iq: &Iq, component: Component, name: &str) -> IqResult {
    get_only(iq)?;
    let node = iq.payload.attr("node");
    if node.is_some() {
        return Err(IqError::new(Cond::ItemNotFound));
    }
    let mut q = query(NS_DISCO_INFO);
    q = match component {
        Component::Local => q.with_child(
            Element::new("identity")
                .with_attr("category", "server")
                .with_attr("type", "im")
                .with_attr("name", name),
        ),
        Component::Sm => q.with_child(
            Element::new("identity")
                .with_attr("category", "account")
                .with_attr("type", "registered"),
        ),
    };
    let mut features = iq.shard.modules.borrow().iq_namespaces(component, &iq.host);
    let from = iq.from.as_str();
    let DiscoExtra {
        features: more,
        forms,
    } = super::run_disco_features(
        &iq.shard,
        &DiscoQuery {
            component,
            host: &iq.host,
            from,
            node,
        },
    );
    features.extend(more);
    features.sort();
    features.dedup();
    for f in features {
        q = q.with_child(Element::new("feature").with_attr("var", f));
    }
    for form in forms {
        q = q.with_child(form);
    }
    Ok(Some(q))
}

fn disco_items(iq: &Iq, component: Component) -> IqResult {
    get_only(iq)?;
    if iq.payload.attr("node").is_some() {
        return Err(IqError::new(Cond::ItemNotFound));
    }
    let mut q = query(NS_DISCO_ITEMS);
    if component == Component::Local {
        let mut domains = iq.shard.modules.borrow().services_of(&iq.host);
        let suffix = format!(".{}", iq.host);
        domains.extend(
            iq.shard
                .components
                .borrow()
                .keys()
                .filter(|d| d.ends_with(&suffix))
                .cloned(),
        );
        domains.sort();
        domains.dedup();
        for d in domains {
            q = q.with_child(Element::new("item").with_attr("jid", d));
        }
    }
    Ok(Some(q))
}

// ---- mod_version (XEP-0092) ----

pub struct Version;

impl Module for Version {
    fn name(&self) -> &'static str {
        "mod_version"
    }
    fn doc(&self) -> &'static str {
        "XEP-0092 software version of the server"
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[
            iqdisc("\"no_queue\""),
            OptionSpec {
                name: "show_os",
                kind: OptKind::Bool,
                default: "false",
                doc: "include the operating system (kernel name and release) in the answer",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let os = opts.bool("show_os").then(os_name);
        Ok(Registrations::new().iq(
            Component::Local,
            "jabber:iq:version",
            opts.iqdisc(),
            handler(move |iq| {
                get_only(iq)?;
                let mut q = query("jabber:iq:version")
                    .with_child(Element::new("name").with_text("rjabberd"))
                    .with_child(Element::new("version").with_text(env!("CARGO_PKG_VERSION")));
                if let Some(os) = &os {
                    q = q.with_child(Element::new("os").with_text(os.clone()));
                }
                Ok(Some(q))
            }),
        ))
    }
}

fn os_name() -> String {
    // SAFETY: uname fills the zeroed struct; its fields are NUL-terminated.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {}", field(&u.sysname), field(&u.release))
}

// ---- mod_ping (XEP-0199) ----

pub const NS_PING: &str = "urn:xmpp:ping";

/// Answers pings to the server and, for accounts, to their bare JID; pings to a full JID reach the
/// client like any IQ.
pub struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "mod_ping"
    }
    fn doc(&self) -> &'static str {
        "XEP-0199 ping: the server answers for itself and for accounts' bare JIDs"
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[iqdisc("\"no_queue\"")];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let pong = || {
            handler(|iq| {
                get_only(iq)?;
                Ok(None)
            })
        };
        Ok(Registrations::new()
            .iq(Component::Local, NS_PING, opts.iqdisc(), pong())
            .iq(Component::Sm, NS_PING, opts.iqdisc(), pong()))
    }
}

// ---- mod_time (XEP-0202) ----

pub struct Time;

impl Module for Time {
    fn name(&self) -> &'static str {
        "mod_time"
    }
    fn doc(&self) -> &'static str {
        "XEP-0202 entity time of the server (UTC)"
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[iqdisc("\"no_queue\"")];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        Ok(Registrations::new().iq(
            Component::Local,
            "urn:xmpp:time",
            opts.iqdisc(),
            handler(|iq| {
                get_only(iq)?;
                Ok(Some(
                    Element::new("time")
                        .with_attr("xmlns", "urn:xmpp:time")
                        .with_child(Element::new("tzo").with_text("+00:00"))
                        .with_child(
                            Element::new("utc").with_text(utc_timestamp(SystemTime::now())),
                        ),
                ))
            }),
        ))
    }
}

/// XEP-0082 `CCYY-MM-DDThh:mm:ss.sssZ`.
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (proleptic Gregorian; Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

// ---- mod_last (XEP-0012) ----

pub const NS_LAST: &str = "jabber:iq:last";

/// Last activity: the server's uptime, and for an account the time since its last session ended (with
/// the status it left with). Only the account itself may ask until rosters (presence subscriptions)
/// exist; anyone else gets `forbidden`, as XEP-0012 §3 asks without a subscription.
pub struct Last;

impl Module for Last {
    fn name(&self) -> &'static str {
        "mod_last"
    }
    fn doc(&self) -> &'static str {
        "XEP-0012 last activity: server uptime and accounts' last logout"
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[iqdisc("\"one_queue\"")];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        Ok(Registrations::new()
            .iq(
                Component::Local,
                NS_LAST,
                opts.iqdisc(),
                handler(|iq| {
                    get_only(iq)?;
                    let up = crate::shard::started().elapsed().as_secs();
                    Ok(Some(query(NS_LAST).with_attr("seconds", up.to_string())))
                }),
            )
            .iq(
                Component::Sm,
                NS_LAST,
                opts.iqdisc(),
                async_handler(account_last),
            )
            .hook(
                50,
                Hook::UnsetPresence(Rc::new(|shard: &Rc<Shard>, e: &SessionEvent<'_>| {
                    record_logout(shard, e);
                    Flow::Continue
                })),
            ))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn record_logout(shard: &Rc<Shard>, e: &SessionEvent<'_>) {
    // Another resource still online keeps the account active.
    let still_online = shard
        .sessions
        .borrow()
        .sessions(&format!("{}@{}", e.user, e.host))
        .iter()
        .any(|s| s.available && &*s.full != e.full);
    if still_online {
        return;
    }
    let value = format!("{}\n{}", unix_now(), e.status).into_bytes();
    let (host, user) = (e.host.to_string(), e.user.to_string());
    let store = shard.server.store.clone();
    glommio::spawn_local(async move {
        let r = store
            .run(move |db| db.data_put(&host, &user, "last", &[(String::new(), Some(value))]))
            .await;
        if let Err(e) = r {
            log::warn!("mod_last: cannot record a logout: {e}");
        }
    })
    .detach();
}

async fn account_last(iq: Iq) -> IqResult {
    get_only(&iq)?;
    if !iq.from_owner() {
        return Err(IqError::new(Cond::Forbidden));
    }
    let online = iq
        .shard
        .sessions
        .borrow()
        .sessions(iq.to.bare_str())
        .iter()
        .any(|s| s.available);
    if online {
        return Ok(Some(query(NS_LAST).with_attr("seconds", "0")));
    }
    let (host, user) = iq.account();
    let stored = iq
        .shard
        .server
        .store
        .run(move |db| db.data_get(&host, &user, "last", ""))
        .await
        .map_err(IqError::internal)?;
    let Some(value) = stored else {
        return Err(IqError::new(Cond::ServiceUnavailable));
    };
    let text = String::from_utf8_lossy(&value);
    let (at, status) = text.split_once('\n').unwrap_or((&text, ""));
    let at: u64 = at.parse().map_err(IqError::internal)?;
    Ok(Some(
        query(NS_LAST)
            .with_attr("seconds", unix_now().saturating_sub(at).to_string())
            .with_text(status),
    ))
}

// ---- mod_vcard (XEP-0054) ----

pub const NS_VCARD: &str = "vcard-temp";

pub struct Vcard;

impl Module for Vcard {
    fn name(&self) -> &'static str {
        "mod_vcard"
    }
    fn doc(&self) -> &'static str {
        "XEP-0054 vcard-temp: accounts publish their vCard; anyone may read it"
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[
            iqdisc("\"parallel\""),
            OptionSpec {
                name: "max_size",
                kind: OptKind::Int {
                    min: 1024,
                    max: 16 * 1024 * 1024,
                },
                default: "65536",
                doc: "largest vCard an account may store, in bytes of XML",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let max = opts.int("max_size") as usize;
        Ok(Registrations::new()
            .iq(
                Component::Sm,
                NS_VCARD,
                opts.iqdisc(),
                async_handler(move |iq| account_vcard(iq, max)),
            )
            .iq(
                Component::Local,
                NS_VCARD,
                opts.iqdisc(),
                handler(|iq| {
                    get_only(iq)?;
                    Ok(Some(
                        Element::new("vCard")
                            .with_attr("xmlns", NS_VCARD)
                            .with_child(Element::new("FN").with_text("rjabberd"))
                            .with_child(
                                Element::new("DESC")
                                    .with_text("rjabberd, a thread-per-core XMPP server"),
                            ),
                    ))
                }),
            ))
    }
}

async fn account_vcard(iq: Iq, max: usize) -> IqResult {
    if iq.payload.name != "vCard" {
        return Err(IqError::bad_request("expected <vCard xmlns='vcard-temp'/>"));
    }
    let (host, user) = iq.account();
    let store = iq.shard.server.store.clone();
    match iq.type_ {
        IqType::Get => {
            let stored = store
                .run(move |db| db.data_get(&host, &user, "vcard", ""))
                .await
                .map_err(IqError::internal)?;
            match stored {
                Some(xml) => {
                    let text = String::from_utf8(xml).map_err(IqError::internal)?;
                    Ok(Some(Element::parse(&text).map_err(IqError::internal)?))
                }
                None => Ok(Some(Element::new("vCard").with_attr("xmlns", NS_VCARD))),
            }
        }
        IqType::Set => {
            if !iq.from_owner() {
                return Err(IqError::new(Cond::Forbidden));
            }
            let mut card = iq.payload.clone();
            card.attrs.retain(|(n, _)| n != "xmlns");
            card.attrs.insert(0, ("xmlns".into(), NS_VCARD.into()));
            let xml = card.to_xml_string();
            if xml.len() > max {
                return Err(IqError::new(Cond::NotAcceptable)
                    .with_text(format!("a vCard may hold at most {max} bytes")));
            }
            store
                .run(move |db| {
                    db.data_put(
                        &host,
                        &user,
                        "vcard",
                        &[(String::new(), Some(xml.into_bytes()))],
                    )
                })
                .await
                .map_err(IqError::internal)?;
            Ok(None)
        }
    }
}

// ---- mod_private (XEP-0049) ----

pub const NS_PRIVATE: &str = "jabber:iq:private";

pub struct Private;

impl Module for Private {
    fn name(&self) -> &'static str {
        "mod_private"
    }
    fn doc(&self) -> &'static str {
        "XEP-0049 private XML storage, per account"
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[
            iqdisc("\"parallel\""),
            OptionSpec {
                name: "max_size",
                kind: OptKind::Int {
                    min: 1024,
                    max: 64 * 1024 * 1024,
                },
                default: "1048576",
                doc: "bytes of private XML one account may store in all",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let max = opts.int("max_size") as u64;
        Ok(Registrations::new().iq(
            Component::Sm,
            NS_PRIVATE,
            opts.iqdisc(),
            async_handler(move |iq| private(iq, max)),
        ))
    }
}

/// The storage key of a private element: `{namespace}name`.
fn private_key(el: &Element) -> Option<String> {
    let ns = super::iq::namespace_of(el)?;
    if matches!(
        ns,
        "jabber:client" | "jabber:server" | "jabber:component:accept" | NS_PRIVATE
    ) {
        return None;
    }
    let local = el.name.split_once(':').map_or(el.name.as_str(), |(_, l)| l);
    Some(format!("{{{ns}}}{local}"))
}

async fn private(iq: Iq, max: u64) -> IqResult {
    if iq.payload.name != "query" {
        return Err(IqError::bad_request(
            "expected <query xmlns='jabber:iq:private'/>",
        ));
    }
    if !iq.from_owner() {
        return Err(IqError::new(Cond::Forbidden));
    }
    let children: Vec<Element> = iq.payload.child_elements().cloned().collect();
    if children.is_empty() {
        return Err(IqError::new(Cond::NotAcceptable).with_text("the query names no namespace"));
    }
    let mut keyed = Vec::with_capacity(children.len());
    for c in children {
        let key = private_key(&c).ok_or_else(|| {
            IqError::new(Cond::NotAcceptable).with_text("this namespace cannot be stored")
        })?;
        keyed.push((key, c));
    }
    let (host, user) = iq.account();
    let store = iq.shard.server.store.clone();
    match iq.type_ {
        IqType::Get => {
            let keys: Vec<String> = keyed.iter().map(|(k, _)| k.clone()).collect();
            let found = store
                .run(move |db| {
                    keys.iter()
                        .map(|k| db.data_get(&host, &user, "private", k))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .map_err(IqError::internal)?;
            let mut q = query(NS_PRIVATE);
            for ((_, asked), stored) in keyed.into_iter().zip(found) {
                let el = match stored {
                    Some(xml) => {
                        Element::parse(&String::from_utf8_lossy(&xml)).map_err(IqError::internal)?
                    }
                    // Nothing stored: the requested element, as asked.
                    None => asked,
                };
                q = q.with_child(el);
            }
            Ok(Some(q))
        }
        IqType::Set => {
            let values: Vec<(String, Option<Vec<u8>>)> = keyed
                .into_iter()
                .map(|(k, el)| (k, Some(standalone(el).to_xml_string().into_bytes())))
                .collect();
            let added: u64 = values
                .iter()
                .map(|(_, v)| v.as_ref().map_or(0, |v| v.len() as u64))
                .sum();
            store
                .run(move |db| {
                    let used = db.data_size(&host, &user, "private")?;
                    if used + added > max {
                        return Ok(false);
                    }
                    db.data_put(&host, &user, "private", &values)?;
                    Ok(true)
                })
                .await
                .map_err(IqError::internal)
                .and_then(|stored| {
                    if stored {
                        Ok(None)
                    } else {
                        Err(IqError::new(Cond::NotAcceptable)
                            .with_text(format!("private storage is limited to {max} bytes")))
                    }
                })
        }
    }
}

/// The element with its namespace declared on itself, so it means the same when stored alone.
fn standalone(mut el: Element) -> Element {
    if let Some(ns) = super::iq::namespace_of(&el).map(str::to_string) {
        match el.name.split_once(':') {
            Some((p, _)) => {
                let p = format!("xmlns:{p}");
                if el.attr(&p).is_none() {
                    el.set_attr(p, ns);
                }
            }
            None => el.set_attr("xmlns", ns),
        }
    }
    el
}

// ---- mod_server_info (XEP-0157) ----

/// Contact addresses of the server's operators, in the server's disco#info as a
/// `http://jabber.org/network/serverinfo` form (XEP-0157, via XEP-0128).
pub struct ServerInfo;

const SERVER_INFO_FIELDS: &[&str] = &[
    "abuse", "admin", "feedback", "sales", "security", "status", "support",
];

impl Module for ServerInfo {
    fn name(&self) -> &'static str {
        "mod_server_info"
    }
    fn doc(&self) -> &'static str {
        "XEP-0157 contact addresses in the server's service discovery"
    }
    fn depends(&self) -> &'static [&'static str] {
        &["mod_disco"]
    }
    fn options(&self) -> &'static [OptionSpec] {
        const fn addr(name: &'static str, doc: &'static str) -> OptionSpec {
            OptionSpec {
                name,
                kind: OptKind::StrList,
                default: "[]",
                doc,
            }
        }
        const O: &[OptionSpec] = &[
            addr(
                "abuse",
                "addresses for reporting abuse (mailto:, xmpp:, https: URIs)",
            ),
            addr("admin", "addresses of the administrators"),
            addr("feedback", "addresses for feedback"),
            addr("sales", "addresses for sales"),
            addr("security", "addresses for security reports"),
            addr("status", "where the service status is published"),
            addr("support", "addresses for support"),
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let mut form = Element::new("x")
            .with_attr("xmlns", "jabber:x:data")
            .with_attr("type", "result")
            .with_child(
                Element::new("field")
                    .with_attr("var", "FORM_TYPE")
                    .with_attr("type", "hidden")
                    .with_child(
                        Element::new("value").with_text("http://jabber.org/network/serverinfo"),
                    ),
            );
        for name in SERVER_INFO_FIELDS {
            let addresses = opts.list(name);
            if addresses.is_empty() {
                continue;
            }
            let mut field = Element::new("field")
                .with_attr("var", format!("{name}-addresses"))
                .with_attr("type", "list-multi");
            for a in addresses {
                field = field.with_child(Element::new("value").with_text(a.clone()));
            }
            form = form.with_child(field);
        }
        Ok(Registrations::new().hook(
            50,
            Hook::DiscoFeatures(Rc::new(
                move |q: &DiscoQuery<'_>, extra: &mut DiscoExtra| {
                    if q.component == Component::Local && q.node.is_none() {
                        extra.forms.push(form.clone());
                    }
                    Flow::Continue
                },
            )),
        ))
    }
}

// ---- mod_fault_probe (diagnostics) ----

pub const NS_FAULT_PROBE: &str = "urn:rjabberd:fault-probe";

/// A handler that misbehaves on request, to watch the fault barrier and the disciplines:
/// `<probe xmlns='urn:rjabberd:fault-probe' action='ok|reject|fail|panic' delay_ms='N' tag='T'/>`
/// sleeps `delay_ms` (at most 10 s), then answers `<probe tag='T'/>`, refuses the payload
/// (`bad-request`), returns an error, or panics. Off by default; never enable it where users should not
/// be able to make the server log panics.
pub struct FaultProbe;

impl Module for FaultProbe {
    fn name(&self) -> &'static str {
        "mod_fault_probe"
    }
    fn doc(&self) -> &'static str {
        "diagnostics: an IQ handler that sleeps, fails or panics on request"
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[iqdisc("\"parallel\"")];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        Ok(Registrations::new().iq(
            Component::Local,
            NS_FAULT_PROBE,
            opts.iqdisc(),
            async_handler(probe),
        ))
    }
}

async fn probe(iq: Iq) -> IqResult {
    let p = &iq.payload;
    let delay: u64 = p.attr("delay_ms").and_then(|d| d.parse().ok()).unwrap_or(0);
    if delay > 0 {
        glommio::timer::sleep(Duration::from_millis(delay.min(10_000))).await;
    }
    match p.attr("action").unwrap_or("ok") {
        "ok" => Ok(Some(
            Element::new("probe")
                .with_attr("xmlns", NS_FAULT_PROBE)
                .with_attr("tag", p.attr_s("tag")),
        )),
        "reject" => Err(IqError::bad_request("the probe asked to be rejected")),
        "fail" => Err(IqError::internal("the probe asked to fail")),
        "panic" => panic!("mod_fault_probe: a panic on request"),
        other => Err(IqError::bad_request(format!("unknown action `{other}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_xep_0082() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(utc_timestamp(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn private_keys_refuse_reserved_namespaces() {
        let el = Element::parse("<prefs xmlns='exodus:prefs'/>").unwrap();
        assert_eq!(private_key(&el).as_deref(), Some("{exodus:prefs}prefs"));
        let el = Element::parse("<e:prefs xmlns:e='exodus:prefs'/>").unwrap();
        assert_eq!(private_key(&el).as_deref(), Some("{exodus:prefs}prefs"));
        let el = Element::parse("<x xmlns='jabber:client'/>").unwrap();
        assert_eq!(private_key(&el), None);
        let el = Element::parse("<x/>").unwrap();
        assert_eq!(private_key(&el), None);
    }

    #[test]
    fn every_module_default_parses() {
        let plan = super::super::options::plan(
            "[modules]\nmod_cputime = true\nmod_echo = true\nmod_disco = true\nmod_version = true\n\
             mod_ping = true\nmod_time = true\nmod_last = true\nmod_vcard = true\nmod_private = true\n\
             mod_server_info = true\nmod_fault_probe = true\nmod_register = true\nmod_offline = true\n",
            &["example.org".to_string()],
        )
        .unwrap();
        assert_eq!(plan[0].modules.len(), ALL.len());
        let echo = plan[0]
            .modules
            .iter()
            .find(|(n, _)| *n == "mod_echo")
            .unwrap();
        assert_eq!(echo.1.str("host"), "echo.example.org");
        // Dependencies come first.
        let pos = |n: &str| plan[0].modules.iter().position(|(m, _)| *m == n).unwrap();
        assert!(pos("mod_disco") < pos("mod_server_info"));
    }

    #[test]
    fn bad_module_config_is_located() {
        let hosts = ["example.org".to_string()];
        let text = "[modules]\nmod_ping = true\n[modules.mod_cputime]\niqdisc = \"sometimes\"\n";
        let (span, msg) = super::super::options::plan(text, &hosts).unwrap_err();
        assert_eq!(&text[span.unwrap()], "\"sometimes\"");
        assert!(msg.contains("iqdisc"), "{msg}");
        let text = "[modules.mod_echo]\nhots = \"x\"\n";
        let (span, msg) = super::super::options::plan(text, &hosts).unwrap_err();
        assert_eq!(&text[span.unwrap()], "hots");
        assert!(msg.contains("has no option `hots`"), "{msg}");
        let text = "[modules]\nmod_nope = true\n";
        let (span, _) = super::super::options::plan(text, &hosts).unwrap_err();
        assert_eq!(&text[span.unwrap()], "mod_nope");
        let text = "[modules]\nmod_server_info = true\n";
        let (_, msg) = super::super::options::plan(text, &hosts).unwrap_err();
        assert!(msg.contains("needs `mod_disco`"), "{msg}");
        let text = "[modules.mod_vcard]\nmax_size = 12\n";
        let (_, msg) = super::super::options::plan(text, &hosts).unwrap_err();
        assert!(msg.contains("outside"), "{msg}");
    }
}

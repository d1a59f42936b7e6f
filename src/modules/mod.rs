//! The module framework: ejabberd's `gen_mod`, `gen_iq_handler` and hooks over one shard. A [`Module`]
//! is started per virtual host on every shard (each shard is a small ejabberd node) and returns
//! [`Registrations`] — IQ handlers, hooks, service routes — which this file installs in the shard's
//! [`ModuleTable`] tagged with the module and host, and removes when the module stops, so a stopped
//! module leaves nothing behind. The table is owned by the shard; the router reads it. Options are
//! declared and checked in [`options`]; IQ dispatch and the fault barrier are in [`iq`]; the built-in
//! modules are in [`builtin`].

pub mod builtin;
pub mod iq;
pub mod offline;
pub mod options;
pub mod register;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

pub use iq::{Component, Iq, IqDisc, IqError, IqFuture, IqHandler, IqResult, IqType};
pub use options::{HostModules, ModuleOpts, OptKind, OptValue, OptionSpec};

use crate::proto::xml::{Element, Stanza};
use crate::shard::Shard;

/// A server module (`gen_mod`). `start` runs on every shard for every host the module is enabled on and
/// returns what the module registers; the framework installs it, and removes all of it at stop.
pub trait Module: Sync {
    /// The name used in the configuration, e.g. `mod_ping`.
    fn name(&self) -> &'static str;
    /// One line on what the module does.
    fn doc(&self) -> &'static str;
    /// Modules that must be enabled (and are started first) on the same host.
    fn depends(&self) -> &'static [&'static str] {
        &[]
    }
    /// The options, with their types, defaults and docs.
    fn options(&self) -> &'static [OptionSpec] {
        &[]
    }
    /// Starts the module on `host` (on the calling shard); an error stops the server's start.
    fn start(&self, host: &str, opts: &ModuleOpts) -> Result<Registrations, String>;
    /// Called after the framework removed what `start` registered on `host`, for anything else the module
    /// holds.
    fn stop(&self, _host: &str) {}
}

/// The built-in modules.
pub fn builtin() -> &'static [&'static dyn Module] {
    builtin::ALL
}

pub fn find_module(name: &str) -> Option<&'static dyn Module> {
    builtin().iter().copied().find(|m| m.name() == name)
}

/// Whether a hook's later handlers (and, for packet hooks, the packet itself) go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Later handlers are skipped; a packet hook also drops the packet.
    Stop,
}

/// A stanza passing a packet hook. A handler may replace `stanza` to alter what is routed.
pub struct Packet<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub stanza: Stanza,
}

/// A session event (`sm_register_connection`, `sm_remove_connection`, `user_available`,
/// `unset_presence`).
pub struct SessionEvent<'a> {
    pub full: &'a str,
    pub user: &'a str,
    pub host: &'a str,
    /// The `<status/>` of an unavailable presence, for `unset_presence`.
    pub status: &'a str,
}

/// A disco#info request being answered, for `disco_features`.
pub struct DiscoQuery<'a> {
    pub component: Component,
    pub host: &'a str,
    pub from: &'a str,
    pub node: Option<&'a str>,
}

/// What `disco_features` handlers add to: feature vars and XEP-0128 extension forms.
#[derive(Default)]
pub struct DiscoExtra {
    pub features: Vec<String>,
    pub forms: Vec<Element>,
}

pub type PacketHook = Rc<dyn Fn(&mut Packet<'_>) -> Flow>;
pub type SessionHook = Rc<dyn Fn(&Rc<Shard>, &SessionEvent<'_>) -> Flow>;
pub type RemoveUserHook = Rc<dyn Fn(&Rc<Shard>, &str, &str) -> Flow>;
pub type DiscoHook = Rc<dyn Fn(&DiscoQuery<'_>, &mut DiscoExtra) -> Flow>;
/// `offline_message`: a handler that keeps the message (stores it) returns [`Flow::Stop`]; when none does,
/// the sender gets `service-unavailable`.
pub type OfflineHook = Rc<dyn Fn(&Rc<Shard>, &OfflineMessage<'_>) -> Flow>;

/// A message for an account with no available session (RFC 6121 §8.5.2.2.1), before it is bounced.
pub struct OfflineMessage<'a> {
    /// The sender's full JID, as stamped.
    pub from: &'a str,
    pub user: &'a str,
    pub host: &'a str,
    pub stanza: &'a Stanza,
    /// Sorts in the order the stanza reached its home shard ([`crate::router::arrival_key`]).
    pub arrival: &'a str,
}
/// A service (a subdomain a module owns): receives every stanza routed to it, with the sender's JID.
pub type ServiceHandler = Rc<dyn Fn(&Rc<Shard>, Stanza, Arc<str>)>;

/// The hooks of the Developers Guide that rjabberd runs.
#[derive(Clone)]
pub enum Hook {
    /// Every stanza the router routes to or from the host, before delivery.
    FilterPacket(PacketHook),
    /// A stanza a local session sent, before routing.
    UserSendPacket(PacketHook),
    /// A stanza about to be written to a local session.
    UserReceivePacket(PacketHook),
    /// A resource was bound.
    SmRegisterConnection(SessionHook),
    /// A session ended.
    SmRemoveConnection(SessionHook),
    /// A session sent its first available presence.
    UserAvailable(SessionHook),
    /// A session became unavailable (presence or disconnect), with its status text.
    UnsetPresence(SessionHook),
    /// An account was removed (user, host).
    RemoveUser(RemoveUserHook),
    /// Features (and forms) for a disco#info answer.
    DiscoFeatures(DiscoHook),
    /// A message for an account that has no available session.
    OfflineMessage(OfflineHook),
}

impl Hook {
    fn slot(&self) -> usize {
        match self {
            Hook::FilterPacket(_) => 0,
            Hook::UserSendPacket(_) => 1,
            Hook::UserReceivePacket(_) => 2,
            Hook::SmRegisterConnection(_) => 3,
            Hook::SmRemoveConnection(_) => 4,
            Hook::UserAvailable(_) => 5,
            Hook::UnsetPresence(_) => 6,
            Hook::RemoveUser(_) => 7,
            Hook::DiscoFeatures(_) => 8,
            Hook::OfflineMessage(_) => 9,
        }
    }
}

const HOOK_SLOTS: usize = 10;

/// What a module's `start` registers.
#[derive(Default)]
pub struct Registrations {
    pub iq: Vec<(Component, String, IqDisc, IqHandler)>,
    /// `(sequence, hook)`: lower sequence numbers run first.
    pub hooks: Vec<(i32, Hook)>,
    pub services: Vec<(String, ServiceHandler)>,
}

impl Registrations {
    pub fn new() -> Self {
        Self::default()
    }

    /// `add_iq_handler(Component, Host, NS, …, Type)`.
    pub fn iq(mut self, component: Component, ns: &str, disc: IqDisc, handler: IqHandler) -> Self {
        self.iq.push((component, ns.to_string(), disc, handler));
        self
    }

    pub fn hook(mut self, seq: i32, hook: Hook) -> Self {
        self.hooks.push((seq, hook));
        self
    }

    pub fn service(mut self, domain: &str, handler: ServiceHandler) -> Self {
        self.services.push((domain.to_ascii_lowercase(), handler));
        self
    }
}

pub(crate) struct IqEntry {
    pub module: &'static str,
    pub disc: IqDisc,
    pub handler: IqHandler,
    /// The ordered queue of a `one_queue` handler; its consumer task ends when this is dropped.
    pub queue: Option<Rc<iq::OneQueue>>,
}

struct HookEntry {
    seq: i32,
    host: String,
    module: &'static str,
    hook: Hook,
}

struct ServiceEntry {
    host: String,
    module: &'static str,
    handler: ServiceHandler,
}

/// Everything the modules of every host registered on one shard.
#[derive(Default)]
pub struct ModuleTable {
    running: Vec<(String, &'static str, ModuleOpts)>,
    /// host → namespace → [ejabberd_local, ejabberd_sm]
    iq: HashMap<String, HashMap<String, [Option<IqEntry>; 2]>>,
    hooks: [Vec<HookEntry>; HOOK_SLOTS],
    services: HashMap<String, ServiceEntry>,
}

impl ModuleTable {
    /// Installs what `name` registered on `host`, tagged so [`ModuleTable::remove`] finds all of it.
    /// A `one_queue` handler's consumer task is spawned on the current executor.
    pub fn install(
        &mut self,
        host: &str,
        name: &'static str,
        opts: &ModuleOpts,
        regs: Registrations,
    ) {
        for (component, ns, disc, handler) in regs.iq {
            let queue = (disc == IqDisc::OneQueue).then(|| iq::OneQueue::start(handler.clone()));
            let slots = self
                .iq
                .entry(host.to_string())
                .or_default()
                .entry(ns.clone())
                .or_default();
            if let Some(old) = &slots[component as usize] {
                log::warn!(
                    "{host}: {name} replaces {}'s handler for {ns} ({component:?})",
                    old.module
                );
            }
            slots[component as usize] = Some(IqEntry {
                module: name,
                disc,
                handler,
                queue,
            });
        }
        for (seq, hook) in regs.hooks {
            let slot = &mut self.hooks[hook.slot()];
            slot.push(HookEntry {
                seq,
                host: host.to_string(),
                module: name,
                hook,
            });
            // Stable: equal sequence numbers keep registration order.
            slot.sort_by_key(|e| e.seq);
        }
        for (domain, handler) in regs.services {
            self.services.insert(
                domain,
                ServiceEntry {
                    host: host.to_string(),
                    module: name,
                    handler,
                },
            );
        }
        self.running.push((host.to_string(), name, opts.clone()));
    }

    /// Removes everything `name` registered on `host`.
    pub fn remove(&mut self, host: &str, name: &str) {
        if let Some(by_ns) = self.iq.get_mut(host) {
            for slots in by_ns.values_mut() {
                for slot in slots.iter_mut() {
                    if slot.as_ref().is_some_and(|e| e.module == name) {
                        *slot = None;
                    }
                }
            }
            by_ns.retain(|_, slots| slots.iter().any(Option::is_some));
        }
        for slot in self.hooks.iter_mut() {
            slot.retain(|e| !(e.host == host && e.module == name));
        }
        self.services
            .retain(|_, s| !(s.host == host && s.module == name));
        self.running.retain(|(h, m, _)| !(h == host && *m == name));
    }

    pub(crate) fn iq_handler(
        &self,
        component: Component,
        host: &str,
        ns: &str,
    ) -> Option<(IqDisc, IqHandler, Option<Rc<iq::OneQueue>>)> {
        let entry = self.iq.get(host)?.get(ns)?[component as usize].as_ref()?;
        Some((entry.disc, entry.handler.clone(), entry.queue.clone()))
    }

    /// The namespaces with a handler on `host` for `component` (disco#info features).
    pub fn iq_namespaces(&self, component: Component, host: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .iq
            .get(host)
            .map(|m| {
                m.iter()
                    .filter(|(_, slots)| slots[component as usize].is_some())
                    .map(|(ns, _)| ns.clone())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    pub fn service(&self, domain: &str) -> Option<ServiceHandler> {
        self.services.get(domain).map(|s| s.handler.clone())
    }

    /// The services of `host` (disco#items of the server).
    pub fn services_of(&self, host: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| s.host == host)
            .map(|(d, _)| d.clone())
            .collect();
        out.sort();
        out
    }

    /// Whether any handler is registered for a hook slot: the check the hot path makes.
    pub fn has_hooks(&self, hook: HookKind) -> bool {
        !self.hooks[hook as usize].is_empty()
    }

    fn hooks_for(&self, hook: HookKind, host: &str) -> Vec<Hook> {
        self.hooks[hook as usize]
            .iter()
            .filter(|e| e.host == host)
            .map(|e| e.hook.clone())
            .collect()
    }

    /// The options a running module was started with on `host`.
    pub fn opts(&self, host: &str, module: &str) -> Option<ModuleOpts> {
        self.running
            .iter()
            .find(|(h, m, _)| h == host && *m == module)
            .map(|(_, _, o)| o.clone())
    }

    pub fn is_running(&self, host: &str, module: &str) -> bool {
        self.running
            .iter()
            .any(|(h, m, _)| h == host && *m == module)
    }
}

/// The hook slots, for [`ModuleTable::has_hooks`] and the runners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    FilterPacket = 0,
    UserSendPacket = 1,
    UserReceivePacket = 2,
    SmRegisterConnection = 3,
    SmRemoveConnection = 4,
    UserAvailable = 5,
    UnsetPresence = 6,
    RemoveUser = 7,
    DiscoFeatures = 8,
    OfflineMessage = 9,
}

/// Starts (on this shard) every module of every host in `plan`, stopping what runs but is no longer
/// planned or is planned with other options. Used at start and at a configuration reload.
pub fn apply_plan(shard: &Rc<Shard>, plan: &[HostModules]) -> Result<(), String> {
    let running: Vec<(String, &'static str, ModuleOpts)> = shard.modules.borrow().running.clone();
    // Stop in reverse start order, so dependants stop before what they depend on.
    for (host, name, opts) in running.iter().rev() {
        let keep = plan
            .iter()
            .any(|h| &h.host == host && h.modules.iter().any(|(n, o)| n == name && o == opts));
        if !keep {
            stop_module(shard, host, name);
        }
    }
    for h in plan {
        for (name, opts) in &h.modules {
            if shard.modules.borrow().is_running(&h.host, name) {
                continue;
            }
            start_module(shard, &h.host, name, opts)?;
        }
    }
    Ok(())
}

fn start_module(
    shard: &Rc<Shard>,
    host: &str,
    name: &'static str,
    opts: &ModuleOpts,
) -> Result<(), String> {
    let module = find_module(name).ok_or_else(|| format!("unknown module {name}"))?;
    let regs = module
        .start(host, opts)
        .map_err(|e| format!("module {name} on {host}: {e}"))?;
    shard.modules.borrow_mut().install(host, name, opts, regs);
    log::debug!("shard {}: {name} started on {host}", shard.id);
    Ok(())
}

/// Removes everything `name` registered on `host` on this shard, then calls its `stop`.
pub fn stop_module(shard: &Rc<Shard>, host: &str, name: &str) {
    shard.modules.borrow_mut().remove(host, name);
    let module = find_module(name);
    if let Some(m) = module {
        m.stop(host);
    }
    log::debug!("shard {}: {name} stopped on {host}", shard.id);
}

/// Runs a packet hook's handlers for `host` in order, over a shard's module table. Returns the (possibly
/// replaced) stanza, or `None` when a handler stopped it.
pub fn run_packet_hook(
    table: &std::cell::RefCell<ModuleTable>,
    hook: HookKind,
    host: &str,
    from: &str,
    to: &str,
    stanza: Stanza,
) -> Option<Stanza> {
    // Collected first: a handler may read the table (no borrow is held while it runs).
    let hooks = table.borrow().hooks_for(hook, host);
    let mut packet = Packet { from, to, stanza };
    for h in hooks {
        let flow = match &h {
            Hook::FilterPacket(f) | Hook::UserSendPacket(f) | Hook::UserReceivePacket(f) => {
                f(&mut packet)
            }
            _ => Flow::Continue,
        };
        if flow == Flow::Stop {
            return None;
        }
    }
    Some(packet.stanza)
}

/// Runs a session hook's handlers for the event's host in order.
pub fn run_session_hook(shard: &Rc<Shard>, hook: HookKind, event: &SessionEvent<'_>) {
    if !shard.modules.borrow().has_hooks(hook) {
        return;
    }
    let hooks = shard.modules.borrow().hooks_for(hook, event.host);
    for h in hooks {
        let flow = match &h {
            Hook::SmRegisterConnection(f)
            | Hook::SmRemoveConnection(f)
            | Hook::UserAvailable(f)
            | Hook::UnsetPresence(f) => f(shard, event),
            _ => Flow::Continue,
        };
        if flow == Flow::Stop {
            return;
        }
    }
}

/// Runs `remove_user` for an account that was removed.
pub fn run_remove_user(shard: &Rc<Shard>, user: &str, host: &str) {
    let hooks = shard.modules.borrow().hooks_for(HookKind::RemoveUser, host);
    for h in hooks {
        if let Hook::RemoveUser(f) = &h
            && f(shard, user, host) == Flow::Stop
        {
            return;
        }
    }
}

/// Runs `offline_message`; true when a handler kept the message.
pub fn run_offline_message(shard: &Rc<Shard>, msg: &OfflineMessage<'_>) -> bool {
    if !shard.modules.borrow().has_hooks(HookKind::OfflineMessage) {
        return false;
    }
    let hooks = shard
        .modules
        .borrow()
        .hooks_for(HookKind::OfflineMessage, msg.host);
    for h in hooks {
        if let Hook::OfflineMessage(f) = &h
            && f(shard, msg) == Flow::Stop
        {
            return true;
        }
    }
    false
}

/// Collects `disco_features` for a disco#info answer.
pub fn run_disco_features(shard: &Rc<Shard>, query: &DiscoQuery<'_>) -> DiscoExtra {
    let hooks = shard
        .modules
        .borrow()
        .hooks_for(HookKind::DiscoFeatures, query.host);
    let mut extra = DiscoExtra::default();
    for h in hooks {
        if let Hook::DiscoFeatures(f) = &h
            && f(query, &mut extra) == Flow::Stop
        {
            break;
        }
    }
    extra
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::proto::xml::{Limits, parse_element};

    fn stanza(s: &str) -> Stanza {
        parse_element(s.as_bytes(), &Limits::default()).unwrap()
    }

    /// A filter that appends its mark to the body, or stops stanzas whose body holds `stop`.
    fn marker(mark: &'static str) -> Hook {
        Hook::FilterPacket(Rc::new(move |p: &mut Packet<'_>| {
            let mut el = p.stanza.to_element();
            let body = el
                .children
                .iter_mut()
                .find_map(|n| match n {
                    crate::proto::xml::Node::Element(e) if e.name == "body" => Some(e),
                    _ => None,
                })
                .expect("a body");
            let text = body.text();
            if text.contains("stop") {
                return Flow::Stop;
            }
            body.children = vec![crate::proto::xml::Node::Text(format!("{text}{mark}"))];
            p.stanza = stanza(&el.to_xml_string());
            Flow::Continue
        }))
    }

    #[test]
    fn hooks_run_by_sequence_alter_and_stop_and_go_with_their_module() {
        let table = RefCell::new(ModuleTable::default());
        let opts = ModuleOpts::default();
        // Registered out of order; sequence decides.
        table.borrow_mut().install(
            "example.org",
            "mod_b",
            &opts,
            Registrations::new().hook(20, marker("B")),
        );
        table.borrow_mut().install(
            "example.org",
            "mod_a",
            &opts,
            Registrations::new().hook(10, marker("A")),
        );
        table.borrow_mut().install(
            "other.example",
            "mod_c",
            &opts,
            Registrations::new().hook(5, marker("C")),
        );
        let run = |body: &str| {
            run_packet_hook(
                &table,
                HookKind::FilterPacket,
                "example.org",
                "a@example.org/r",
                "b@example.org",
                stanza(&format!(
                    "<message xmlns='jabber:client'><body>{body}</body></message>"
                )),
            )
            .map(|s| s.to_element().child("body").unwrap().text())
        };
        assert_eq!(run("x").as_deref(), Some("xAB"));
        assert_eq!(run("stop"), None);
        assert!(table.borrow().has_hooks(HookKind::FilterPacket));
        table.borrow_mut().remove("example.org", "mod_a");
        assert_eq!(run("x").as_deref(), Some("xB"));
        table.borrow_mut().remove("example.org", "mod_b");
        assert_eq!(run("x").as_deref(), Some("x"));
        assert!(!table.borrow().is_running("example.org", "mod_b"));
        // Another host's module is untouched.
        assert!(table.borrow().is_running("other.example", "mod_c"));
    }
}

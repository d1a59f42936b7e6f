//! The module framework: ejabberd's `gen_mod`, `gen_iq_handler` and hooks over one shard. A [`Module`]
//! is started per virtual host on every shard (each shard is a small ejabberd node) and returns
//! [`Registrations`] — IQ handlers, hooks, service routes — which this file installs in the shard's
//! [`ModuleTable`] tagged with the module and host, and removes when the module stops, so a stopped
//! module leaves nothing behind. The table is owned by the shard; the router reads it. Options are
//! declared and checked in [`options`]; IQ dispatch and the fault barrier are in [`iq`]. Each built-in
//! module has a file of its own, named after it and saying in its `PROTOCOLS` which specifications it
//! implements; [`builtin`] lists them, and [`util`] holds the few helpers they share.

pub mod blocking;
pub mod carbons;
pub mod client_state;
pub mod cputime;
pub mod ctx;
pub mod disco;
pub mod echo;
pub mod fault_probe;
pub mod hooks;
pub mod iq;
pub mod last;
pub mod offline;
pub mod options;
pub mod ping;
pub mod private;
pub mod register;
pub mod roster;
pub mod server_info;
pub mod time;
pub mod util;
pub mod vcard;
pub mod version;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

pub use iq::{Component, Iq, IqDisc, IqError, IqFuture, IqHandler, IqResult, IqType};
pub use options::{HostModules, ModuleOpts, OptKind, OptValue, OptionSpec};

pub use ctx::ModuleCtx;
pub use hooks::{Flow, HookPoint};

use crate::proto::xml::Stanza;
use hooks::{HookFn, HookRegistration, HookTable};

/// A server module (`gen_mod`). `start` runs on every shard for every host the module is enabled on and
/// returns what the module registers; the framework installs it, and removes all of it at stop.
pub trait Module: Sync {
    /// The name used in the configuration, e.g. `mod_ping`.
    fn name(&self) -> &'static str;
    /// One line on what the module does.
    fn doc(&self) -> &'static str;
    /// The specifications this module implements, e.g. `&["XEP-0199"]` (ejabberd's `-protocol` attribute).
    fn protocols(&self) -> &'static [&'static str];
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
    /// Called on each shard after the framework removed what `start` registered on `host` there, for
    /// anything else the module holds (per-shard state it must release or hand on: stanzas it held
    /// back, watches).
    fn stop(&self, _ctx: &ModuleCtx, _host: &str) {}
}

/// The built-in modules.
pub fn builtin() -> &'static [&'static dyn Module] {
    static ALL: &[&dyn Module] = &[
        &cputime::Cputime,
        &echo::Echo,
        &disco::Disco,
        &version::Version,
        &ping::Ping,
        &time::Time,
        &last::Last,
        &vcard::Vcard,
        &private::Private,
        &server_info::ServerInfo,
        &register::Register,
        &offline::Offline,
        &roster::Roster,
        &blocking::Blocking,
        &client_state::ClientStateIndication,
        &carbons::Carbons,
        &fault_probe::FaultProbe,
    ];
    ALL
}

pub fn find_module(name: &str) -> Option<&'static dyn Module> {
    builtin().iter().copied().find(|m| m.name() == name)
}

/// A service (a subdomain a module owns): receives every stanza routed to it, with the sender's JID.
pub type ServiceHandler = Rc<dyn Fn(&ModuleCtx, Stanza, Arc<str>)>;

/// What a module's `start` registers.
#[derive(Default)]
pub struct Registrations {
    pub iq: Vec<(Component, String, IqDisc, IqHandler)>,
    pub hooks: Vec<HookRegistration>,
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

    /// `ejabberd_hooks:add(Hook, Host, …, Seq)`: lower sequence numbers run first.
    pub fn hook<E: 'static>(
        mut self,
        point: &HookPoint<E>,
        seq: i32,
        handler: impl Fn(&ModuleCtx, &mut E) -> Flow + 'static,
    ) -> Self {
        let handler: HookFn<E> = Rc::new(handler);
        self.hooks.push(HookRegistration::new(point, seq, handler));
        self
    }

    pub fn service(
        mut self,
        domain: &str,
        handler: impl Fn(&ModuleCtx, Stanza, Arc<str>) + 'static,
    ) -> Self {
        self.services
            .push((domain.to_ascii_lowercase(), Rc::new(handler)));
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
    /// Requests waiting in this shard's `one_queue` queues.
    iq_backlog: iq::Backlog,
    hooks: HookTable,
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
            let queue = (disc == IqDisc::OneQueue)
                .then(|| iq::OneQueue::start(handler.clone(), self.iq_backlog.clone()));
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
        for reg in regs.hooks {
            self.hooks.install(host, name, reg);
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
        self.hooks.remove(host, name);
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

    /// Whether the `one_queue` queues hold so many requests that connections should pause reading.
    pub fn iq_backlogged(&self) -> bool {
        self.iq_backlog.get() >= iq::ONE_QUEUE_HIGH_WATER
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

    /// Every service and its handler (what the route table installs).
    pub fn services(&self) -> Vec<(String, ServiceHandler)> {
        self.services
            .iter()
            .map(|(d, s)| (d.clone(), s.handler.clone()))
            .collect()
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

    pub fn hooks(&self) -> &HookTable {
        &self.hooks
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

/// Starts (on the context's shard) every module of every host in `plan`, stopping what runs but is no
/// longer planned or is planned with other options. Used at start and at a configuration reload.
pub fn apply_plan(ctx: &ModuleCtx, plan: &[HostModules]) -> Result<(), String> {
    let running: Vec<(String, &'static str, ModuleOpts)> = ctx.modules().borrow().running.clone();
    // Stop in reverse start order, so dependants stop before what they depend on.
    for (host, name, opts) in running.iter().rev() {
        let keep = plan
            .iter()
            .any(|h| &h.host == host && h.modules.iter().any(|(n, o)| n == name && o == opts));
        if !keep {
            stop_module(ctx, host, name);
        }
    }
    for h in plan {
        for (name, opts) in &h.modules {
            if ctx.modules().borrow().is_running(&h.host, name) {
                continue;
            }
            start_module(ctx, &h.host, name, opts)?;
        }
    }
    Ok(())
}

fn start_module(
    ctx: &ModuleCtx,
    host: &str,
    name: &'static str,
    opts: &ModuleOpts,
) -> Result<(), String> {
    let module = find_module(name).ok_or_else(|| format!("unknown module {name}"))?;
    let regs = module
        .start(host, opts)
        .map_err(|e| format!("module {name} on {host}: {e}"))?;
    ctx.modules().borrow_mut().install(host, name, opts, regs);
    log::debug!("shard {}: {name} started on {host}", ctx.shard_id());
    Ok(())
}

/// Removes everything `name` registered on `host` on this shard, then calls its `stop`.
pub fn stop_module(ctx: &ModuleCtx, host: &str, name: &str) {
    ctx.modules().borrow_mut().remove(host, name);
    let module = find_module(name);
    if let Some(m) = module {
        m.stop(ctx, host);
    }
    log::debug!("shard {}: {name} stopped on {host}", ctx.shard_id());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::xml::{Limits, parse_element};

    fn stanza(s: &str) -> Stanza {
        parse_element(s.as_bytes(), &Limits::default()).unwrap()
    }

    /// A filter that appends its mark to the body, or stops stanzas whose body holds `stop`.
    fn marker(mark: &'static str) -> impl Fn(&ModuleCtx, &mut hooks::Packet) -> Flow {
        move |_, p| {
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
        }
    }

    #[test]
    fn hooks_run_by_sequence_alter_and_stop_and_go_with_their_module() {
        let shard = ctx::testing::TestShard::new();
        let ctx = shard.ctx();
        let table = ctx.modules();
        let opts = ModuleOpts::default();
        let filter = &hooks::FILTER_PACKET;
        // Registered out of order; sequence decides.
        table.borrow_mut().install(
            "example.org",
            "mod_b",
            &opts,
            Registrations::new().hook(filter, 20, marker("B")),
        );
        table.borrow_mut().install(
            "example.org",
            "mod_a",
            &opts,
            Registrations::new().hook(filter, 10, marker("A")),
        );
        table.borrow_mut().install(
            "other.example",
            "mod_c",
            &opts,
            Registrations::new().hook(filter, 5, marker("C")),
        );
        let run = |body: &str| {
            let mut packet = hooks::Packet {
                from: "a@example.org/r".into(),
                to: "b@example.org".into(),
                stanza: stanza(&format!(
                    "<message xmlns='jabber:client'><body>{body}</body></message>"
                )),
            };
            (hooks::run(&ctx, filter, "example.org", &mut packet) == Flow::Continue)
                .then(|| packet.stanza.to_element().child("body").unwrap().text())
        };
        assert_eq!(run("x").as_deref(), Some("xAB"));
        assert_eq!(run("stop"), None);
        assert!(table.borrow().hooks().has(filter));
        assert!(!table.borrow().hooks().has(&hooks::USER_SEND_PACKET));
        table.borrow_mut().remove("example.org", "mod_a");
        assert_eq!(run("x").as_deref(), Some("xB"));
        table.borrow_mut().remove("example.org", "mod_b");
        assert_eq!(run("x").as_deref(), Some("x"));
        assert!(!table.borrow().is_running("example.org", "mod_b"));
        // Another host's module is untouched.
        assert!(table.borrow().is_running("other.example", "mod_c"));
        table.borrow_mut().remove("other.example", "mod_c");
        assert!(
            !table.borrow().hooks().has(filter),
            "an empty point is gone"
        );
    }

    /// A hook point declared outside the framework (as a module would) works without editing it.
    #[test]
    fn a_new_hook_point_needs_no_framework_change() {
        struct Greeting(String);
        const GREET: HookPoint<Greeting> = HookPoint::new("greet");
        let shard = ctx::testing::TestShard::new();
        let ctx = shard.ctx();
        ctx.modules().borrow_mut().install(
            "example.org",
            "mod_greeter",
            &ModuleOpts::default(),
            Registrations::new().hook(&GREET, 50, |_, g: &mut Greeting| {
                g.0.push_str(", world");
                Flow::Continue
            }),
        );
        let mut g = Greeting("hello".into());
        hooks::run(&ctx, &GREET, "example.org", &mut g);
        assert_eq!(g.0, "hello, world");
    }

    #[test]
    fn every_module_default_parses() {
        let plan = super::options::plan(
            "[modules]\nmod_cputime = true\nmod_echo = true\nmod_disco = true\nmod_version = true\n\
             mod_ping = true\nmod_time = true\nmod_last = true\nmod_vcard = true\nmod_private = true\n\
             mod_server_info = true\nmod_fault_probe = true\nmod_register = true\nmod_offline = true\n\
             mod_roster = true\nmod_blocking = true\nmod_client_state = true\nmod_carbons = true\n",
            &["example.org".to_string()],
        )
        .unwrap();
        assert_eq!(plan[0].modules.len(), builtin().len());
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
        let (span, msg) = super::options::plan(text, &hosts).unwrap_err();
        assert_eq!(&text[span.unwrap()], "\"sometimes\"");
        assert!(msg.contains("iqdisc"), "{msg}");
        let text = "[modules.mod_echo]\nhots = \"x\"\n";
        let (span, msg) = super::options::plan(text, &hosts).unwrap_err();
        assert_eq!(&text[span.unwrap()], "hots");
        assert!(msg.contains("has no option `hots`"), "{msg}");
        let text = "[modules]\nmod_nope = true\n";
        let (span, _) = super::options::plan(text, &hosts).unwrap_err();
        assert_eq!(&text[span.unwrap()], "mod_nope");
        let text = "[modules]\nmod_server_info = true\n";
        let (_, msg) = super::options::plan(text, &hosts).unwrap_err();
        assert!(msg.contains("needs `mod_disco`"), "{msg}");
        let text = "[modules.mod_vcard]\nmax_size = 12\n";
        let (_, msg) = super::options::plan(text, &hosts).unwrap_err();
        assert!(msg.contains("outside"), "{msg}");
    }

    /// `XEP-NNNN` or `RFC NNNN`, optionally followed by ` v` and a version.
    fn is_protocol(p: &str) -> bool {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (spec, version) = match p.split_once(" v") {
            Some((spec, v)) => (spec, Some(v)),
            None => (p, None),
        };
        let spec_ok = match (spec.strip_prefix("XEP-"), spec.strip_prefix("RFC ")) {
            (Some(n), _) => n.len() == 4 && digits(n),
            (_, Some(n)) => digits(n),
            _ => false,
        };
        spec_ok && version.is_none_or(|v| v.split('.').all(digits))
    }

    #[test]
    fn protocols_are_named_like_specifications() {
        for p in ["XEP-0199", "XEP-0030 v2.5", "RFC 6120", "RFC 6121 v1.0.1"] {
            assert!(is_protocol(p), "{p}");
        }
        for p in [
            "XEP-199",
            "XEP-0199 2.0",
            "XEP-0199 v",
            "rfc 6120",
            "RFC6120",
            "XEP-0030 v2.x",
        ] {
            assert!(!is_protocol(p), "{p}");
        }
        for m in builtin() {
            for p in m.protocols() {
                assert!(is_protocol(p), "{}: `{p}`", m.name());
            }
        }
    }

    #[test]
    fn builtin_module_names_are_unique() {
        let mut names: Vec<&str> = builtin().iter().map(|m| m.name()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "{names:?}");
    }
}

//! Module options: each module declares its options (name, type, default written as TOML, doc) in one
//! table, and this file turns the `[modules]` sections of the configuration into checked, typed
//! [`ModuleOpts`] per virtual host, in dependency order, or into an error at the line and column of the
//! offending key. It reads the spans from the TOML document itself (`toml::de::DeTable`), because serde
//! loses them inside free-form tables.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{IqDisc, Module, find_module};

/// One option of a module: its name, type, default (a TOML literal) and what it does.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    pub name: &'static str,
    pub kind: OptKind,
    /// The default as a TOML value literal, e.g. `"one_queue"`, `true`, `60`, `[]`.
    pub default: &'static str,
    pub doc: &'static str,
}

/// The type of an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptKind {
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    /// A string; `@HOST@` in it is replaced by the virtual host.
    Str,
    /// A list of strings (`@HOST@` replaced).
    StrList,
    /// `"no_queue"`, `"one_queue"` or `"parallel"`.
    IqDisc,
}

/// A checked option value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptValue {
    Bool(bool),
    Int(i64),
    Str(String),
    StrList(Vec<String>),
    IqDisc(IqDisc),
}

/// The checked options of one module on one host. Asking for an option the module did not declare is a
/// programming error and panics (the module tests catch it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleOpts {
    values: BTreeMap<&'static str, OptValue>,
}

impl ModuleOpts {
    fn get(&self, name: &str) -> &OptValue {
        self.values
            .get(name)
            .unwrap_or_else(|| panic!("option `{name}` is not declared by the module"))
    }

    pub fn bool(&self, name: &str) -> bool {
        match self.get(name) {
            OptValue::Bool(b) => *b,
            other => panic!("option `{name}` is {other:?}, not a bool"),
        }
    }

    pub fn int(&self, name: &str) -> i64 {
        match self.get(name) {
            OptValue::Int(i) => *i,
            other => panic!("option `{name}` is {other:?}, not an integer"),
        }
    }

    pub fn str(&self, name: &str) -> &str {
        match self.get(name) {
            OptValue::Str(s) => s,
            other => panic!("option `{name}` is {other:?}, not a string"),
        }
    }

    pub fn list(&self, name: &str) -> &[String] {
        match self.get(name) {
            OptValue::StrList(l) => l,
            other => panic!("option `{name}` is {other:?}, not a list"),
        }
    }

    /// The `iqdisc` option every IQ-handling module declares.
    pub fn iqdisc(&self) -> IqDisc {
        match self.get("iqdisc") {
            OptValue::IqDisc(d) => *d,
            other => panic!("option `iqdisc` is {other:?}"),
        }
    }
}

/// The modules of one virtual host, dependencies before dependants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostModules {
    pub host: String,
    pub modules: Vec<(&'static str, ModuleOpts)>,
}

/// Modules enabled on every host when the configuration has no `[modules]` section.
pub const DEFAULT_MODULES: &[&str] = &[
    "mod_disco",
    "mod_version",
    "mod_ping",
    "mod_time",
    "mod_last",
    "mod_vcard",
    "mod_private",
    "mod_offline",
    "mod_roster",
    "mod_blocking",
    "mod_client_state",
    "mod_carbons",
];

pub type SpanError = (Option<Range<usize>>, String);

/// One `name = true | false | { options }` entry, with where it is.
struct Entry<'a> {
    span: Range<usize>,
    enabled: bool,
    options: Vec<(Spanned<&'a str>, &'a Spanned<DeValue<'a>>)>,
}

/// Builds every host's module list from the configuration text (already known to parse as TOML).
pub fn plan(text: &str, hosts: &[String]) -> Result<Vec<HostModules>, SpanError> {
    let doc = DeTable::parse(text).map_err(|e| (e.span(), e.message().to_string()))?;
    let doc = doc.get_ref();
    let global = match lookup(doc, "modules") {
        Some(v) => Some(entries(v)?),
        None => None,
    };
    let host_tables: Vec<Option<&Spanned<DeValue<'_>>>> = match lookup(doc, "host") {
        Some(v) => match v.get_ref() {
            DeValue::Array(a) => a
                .iter()
                .map(|h| match h.get_ref() {
                    DeValue::Table(t) => lookup(t, "modules"),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let mut merged: BTreeMap<String, Entry<'_>> = BTreeMap::new();
        match &global {
            Some(g) => {
                for (name, e) in g {
                    merged.insert(name.clone(), clone_entry(e));
                }
            }
            None => {
                for name in DEFAULT_MODULES {
                    merged.insert(
                        name.to_string(),
                        Entry {
                            span: 0..0,
                            enabled: true,
                            options: Vec::new(),
                        },
                    );
                }
            }
        }
        if let Some(Some(table)) = host_tables.get(i) {
            for (name, e) in entries(table)? {
                merged.insert(name, e);
            }
        }
        out.push(host_plan(host, merged)?);
    }
    Ok(out)
}

/// The hosts where `module` runs with options that `wanted` accepts (what a stream feature follows).
pub fn hosts_running(
    plan: &[HostModules],
    module: &str,
    wanted: impl Fn(&ModuleOpts) -> bool,
) -> Vec<String> {
    plan.iter()
        .filter(|h| h.modules.iter().any(|(n, o)| *n == module && wanted(o)))
        .map(|h| h.host.clone())
        .collect()
}

/// The module plan of a loaded configuration: its `[modules]` sections checked, with file, line and
/// column on error; the embedded default set for the embedded configuration.
pub fn plan_of(
    config: &crate::config::Config,
) -> Result<Vec<HostModules>, crate::config::ConfigError> {
    let hosts = config.host_names();
    if config.source.is_empty() {
        return Ok(default_plan(&hosts));
    }
    plan(&config.source, &hosts).map_err(|(span, message)| config.error_at(span, message))
}

/// The plan of the embedded defaults.
pub fn default_plan(hosts: &[String]) -> Vec<HostModules> {
    plan("", hosts).expect("the default modules are valid")
}

fn clone_entry<'a>(e: &Entry<'a>) -> Entry<'a> {
    Entry {
        span: e.span.clone(),
        enabled: e.enabled,
        options: e.options.clone(),
    }
}

fn lookup<'a>(table: &'a DeTable<'a>, key: &str) -> Option<&'a Spanned<DeValue<'a>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

fn entries<'a>(value: &'a Spanned<DeValue<'a>>) -> Result<BTreeMap<String, Entry<'a>>, SpanError> {
    let DeValue::Table(table) = value.get_ref() else {
        return Err((
            Some(value.span()),
            "`modules` must be a table of module names".into(),
        ));
    };
    let mut out = BTreeMap::new();
    for (name, v) in table.iter() {
        let entry = match v.get_ref() {
            DeValue::Boolean(b) => Entry {
                span: name.span(),
                enabled: *b,
                options: Vec::new(),
            },
            DeValue::Table(opts) => Entry {
                span: name.span(),
                enabled: true,
                options: opts
                    .iter()
                    .map(|(k, v)| (Spanned::new(k.span(), k.get_ref().as_ref()), v))
                    .collect(),
            },
            _ => {
                return Err((
                    Some(v.span()),
                    format!(
                        "module `{}`: expected true, false or a table of options",
                        name.get_ref()
                    ),
                ));
            }
        };
        out.insert(name.get_ref().to_string(), entry);
    }
    Ok(out)
}

fn host_plan(host: &str, merged: BTreeMap<String, Entry<'_>>) -> Result<HostModules, SpanError> {
    let mut chosen: Vec<(&'static dyn Module, Range<usize>, ModuleOpts)> = Vec::new();
    for (name, entry) in &merged {
        if !entry.enabled {
            continue;
        }
        let Some(module) = find_module(name) else {
            let known: Vec<&str> = super::builtin().iter().map(|m| m.name()).collect();
            return Err((
                Some(entry.span.clone()),
                format!("unknown module `{name}` (known: {})", known.join(", ")),
            ));
        };
        let opts = options(module, host, &entry.options)?;
        chosen.push((module, entry.span.clone(), opts));
    }
    // Dependencies first; a missing one is an error at the dependant.
    for (module, span, _) in &chosen {
        for dep in module.depends() {
            if !chosen.iter().any(|(m, _, _)| m.name() == *dep) {
                return Err((
                    Some(span.clone()),
                    format!(
                        "module `{}` needs `{dep}`, which is not enabled for host `{host}`",
                        module.name()
                    ),
                ));
            }
        }
    }
    let mut ordered: Vec<(&'static str, ModuleOpts)> = Vec::new();
    let mut rest = chosen;
    while !rest.is_empty() {
        let before = rest.len();
        let mut i = 0;
        while i < rest.len() {
            let ready = rest[i]
                .0
                .depends()
                .iter()
                .all(|d| ordered.iter().any(|(n, _)| n == d));
            if ready {
                let (m, _, o) = rest.remove(i);
                ordered.push((m.name(), o));
            } else {
                i += 1;
            }
        }
        if rest.len() == before {
            return Err((
                Some(rest[0].1.clone()),
                format!(
                    "module `{}` is part of a dependency cycle",
                    rest[0].0.name()
                ),
            ));
        }
    }
    Ok(HostModules {
        host: host.to_string(),
        modules: ordered,
    })
}

fn options(
    module: &dyn Module,
    host: &str,
    given: &[(Spanned<&str>, &Spanned<DeValue<'_>>)],
) -> Result<ModuleOpts, SpanError> {
    let mut values = BTreeMap::new();
    for (key, value) in given {
        let Some(spec) = module.options().iter().find(|s| s.name == *key.get_ref()) else {
            let known: Vec<&str> = module.options().iter().map(|s| s.name).collect();
            return Err((
                Some(key.span()),
                format!(
                    "module `{}` has no option `{}` (it has: {})",
                    module.name(),
                    key.get_ref(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        let v = convert(spec, value.get_ref(), host).map_err(|message| {
            (
                Some(value.span()),
                format!(
                    "module `{}`, option `{}`: {message}",
                    module.name(),
                    spec.name
                ),
            )
        })?;
        values.insert(spec.name, v);
    }
    for spec in module.options() {
        if values.contains_key(spec.name) {
            continue;
        }
        let literal = format!("v = {}", spec.default);
        let parsed = DeTable::parse(&literal).unwrap_or_else(|e| {
            panic!(
                "module {} option {}: bad default: {e}",
                module.name(),
                spec.name
            )
        });
        let v = lookup(parsed.get_ref(), "v").expect("the default has a value");
        let v = convert(spec, v.get_ref(), host).unwrap_or_else(|e| {
            panic!(
                "module {} option {}: bad default: {e}",
                module.name(),
                spec.name
            )
        });
        values.insert(spec.name, v);
    }
    Ok(ModuleOpts { values })
}

fn convert(spec: &OptionSpec, value: &DeValue<'_>, host: &str) -> Result<OptValue, String> {
    let expand = |s: &str| s.replace("@HOST@", host);
    match (spec.kind, value) {
        (OptKind::Bool, DeValue::Boolean(b)) => Ok(OptValue::Bool(*b)),
        (OptKind::Int { min, max }, DeValue::Integer(i)) => {
            let n = i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .map_err(|_| format!("`{i}` is not an integer"))?;
            if n < min || n > max {
                return Err(format!("{n} is outside {min}..={max}"));
            }
            Ok(OptValue::Int(n))
        }
        (OptKind::Str, DeValue::String(s)) => Ok(OptValue::Str(expand(s))),
        (OptKind::StrList, DeValue::Array(a)) => {
            let mut out = Vec::new();
            for item in a.iter() {
                match item.get_ref() {
                    DeValue::String(s) => out.push(expand(s)),
                    _ => return Err("expected a list of strings".into()),
                }
            }
            Ok(OptValue::StrList(out))
        }
        (OptKind::IqDisc, DeValue::String(s)) => match s.as_ref() {
            "no_queue" => Ok(OptValue::IqDisc(IqDisc::NoQueue)),
            "one_queue" => Ok(OptValue::IqDisc(IqDisc::OneQueue)),
            "parallel" => Ok(OptValue::IqDisc(IqDisc::Parallel)),
            other => Err(format!(
                "`{other}` is not one of \"no_queue\", \"one_queue\", \"parallel\""
            )),
        },
        (kind, _) => Err(format!("expected {}", kind_name(kind))),
    }
}

fn kind_name(kind: OptKind) -> &'static str {
    match kind {
        OptKind::Bool => "true or false",
        OptKind::Int { .. } => "an integer",
        OptKind::Str => "a string",
        OptKind::StrList => "a list of strings",
        OptKind::IqDisc => "\"no_queue\", \"one_queue\" or \"parallel\"",
    }
}

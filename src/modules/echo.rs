//! `mod_echo`, the Developers Guide's example service (§8.2): every stanza sent to `echo.<host>` comes
//! back with `from` and `to` swapped.

use std::sync::Arc;

use super::{Module, ModuleCtx, ModuleOpts, OptKind, OptionSpec, Registrations};
use crate::proto::xml::Stanza;

/// None: the echo service is the guide's example, not a specification.
pub const PROTOCOLS: &[&str] = &[];

pub struct Echo;

impl Module for Echo {
    fn name(&self) -> &'static str {
        "mod_echo"
    }
    fn doc(&self) -> &'static str {
        "a service that sends every stanza back to its sender (the Developers Guide's example)"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
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
        Ok(Registrations::new().service(&domain, echo))
    }
}

fn echo(ctx: &ModuleCtx, stanza: Stanza, from: Arc<str>) {
    let Some(to) = stanza.to().map(|t| t.into_owned()) else {
        return;
    };
    // `ejabberd_router:route(To, From, Packet)`: the same bytes, addresses swapped.
    match stanza.rewritten(Some(&to), Some(&from)) {
        Some(back) => ctx.route(back, to.into()),
        None => log::error!("echo: the swapped stanza did not parse"),
    }
}

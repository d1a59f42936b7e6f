//! `mod_cputime`, the Developers Guide's example IQ handler (§8.1): `ejabberd:cputime` queries to the
//! server are answered with the server process's CPU time.

use super::iq::handler;
use super::util::{iqdisc, query};
use super::{Component, IqError, IqType, Module, ModuleOpts, OptionSpec, Registrations};
use crate::proto::errors::StanzaErrorCondition as Cond;
use crate::proto::xml::Element;

/// None: `ejabberd:cputime` is the guide's example, not a specification.
pub const PROTOCOLS: &[&str] = &[];

pub const NS_CPUTIME: &str = "ejabberd:cputime";

pub struct Cputime;

impl Module for Cputime {
    fn name(&self) -> &'static str {
        "mod_cputime"
    }
    fn doc(&self) -> &'static str {
        "ejabberd:cputime — the server process's CPU seconds (the Developers Guide's example)"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
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

//! `mod_fault_probe`, diagnostics: a handler that misbehaves on request, to watch the IQ fault barrier
//! and the queueing disciplines:
//! `<probe xmlns='urn:rjabberd:fault-probe' action='ok|reject|fail|panic' delay_ms='N' tag='T'/>`
//! sleeps `delay_ms` (at most 10 s), then answers `<probe tag='T'/>`, refuses the payload
//! (`bad-request`), returns an error, or panics. Off by default; never enable it where users should not
//! be able to make the server log panics.

use std::time::Duration;

use super::iq::async_handler;
use super::util::iqdisc;
use super::{Component, Iq, IqError, IqResult, Module, ModuleOpts, OptionSpec, Registrations};
use crate::proto::xml::Element;

/// None: the probe's namespace is rjabberd's own diagnostic, not a specification.
pub const PROTOCOLS: &[&str] = &[];

pub const NS_FAULT_PROBE: &str = "urn:rjabberd:fault-probe";

pub struct FaultProbe;

impl Module for FaultProbe {
    fn name(&self) -> &'static str {
        "mod_fault_probe"
    }
    fn doc(&self) -> &'static str {
        "diagnostics: an IQ handler that sleeps, fails or panics on request"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
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

//! `mod_time`, entity time (XEP-0202): the server's time, in UTC, as a XEP-0082 timestamp (written by
//! [`super::util::utc_timestamp`], which mod_offline shares).

use std::time::SystemTime;

use super::iq::handler;
use super::util::{get_only, iqdisc, utc_timestamp};
use super::{Component, Module, ModuleOpts, OptionSpec, Registrations};
use crate::proto::xml::Element;

pub const PROTOCOLS: &[&str] = &["XEP-0202 v2.0", "XEP-0082 v1.1"];

pub struct Time;

impl Module for Time {
    fn name(&self) -> &'static str {
        "mod_time"
    }
    fn doc(&self) -> &'static str {
        "XEP-0202 entity time of the server (UTC)"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
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

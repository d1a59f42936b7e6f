//! `mod_ping`, XMPP Ping (XEP-0199): answers pings to the server and, for accounts, to their bare JID;
//! pings to a full JID reach the client like any IQ.

use super::iq::handler;
use super::util::{get_only, iqdisc};
use super::{Component, Module, ModuleOpts, OptionSpec, Registrations};

pub const PROTOCOLS: &[&str] = &["XEP-0199 v2.0"];

pub const NS_PING: &str = "urn:xmpp:ping";

pub struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "mod_ping"
    }
    fn doc(&self) -> &'static str {
        "XEP-0199 ping: the server answers for itself and for accounts' bare JIDs"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
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

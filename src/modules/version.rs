//! `mod_version`, software version (XEP-0092): the server's name and version, and its operating system
//! when `show_os` is set.

use super::iq::handler;
use super::util::{get_only, iqdisc, query};
use super::{Component, Module, ModuleOpts, OptKind, OptionSpec, Registrations};
use crate::proto::xml::Element;

pub const PROTOCOLS: &[&str] = &["XEP-0092 v1.1"];

pub struct Version;

impl Module for Version {
    fn name(&self) -> &'static str {
        "mod_version"
    }
    fn doc(&self) -> &'static str {
        "XEP-0092 software version of the server"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
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

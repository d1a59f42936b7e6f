//! `mod_server_info`, contact addresses (XEP-0157): the addresses of the server's operators, in the
//! server's disco#info as a `http://jabber.org/network/serverinfo` form (an extension form, XEP-0128)
//! added through the `disco_features` hook.

use super::hooks::{DISCO_FEATURES, DiscoQuery};
use super::{Component, Flow, Module, ModuleOpts, OptKind, OptionSpec, Registrations};
use crate::proto::xml::Element;

pub const PROTOCOLS: &[&str] = &["XEP-0157", "XEP-0128"];

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
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
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
        Ok(
            Registrations::new().hook(&DISCO_FEATURES, 50, move |_, q: &mut DiscoQuery| {
                if q.component == Component::Local && q.node.is_none() {
                    q.forms.push(form.clone());
                }
                Flow::Continue
            }),
        )
    }
}

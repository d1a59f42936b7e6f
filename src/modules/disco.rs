//! `mod_disco`, service discovery (XEP-0030): identities and features from what modules registered
//! (and what `disco_features` hooks add); services as items.

use std::rc::Rc;

use super::hooks::{self, DISCO_FEATURES, DiscoQuery};
use super::iq::handler;
use super::util::{get_only, iqdisc, query};
use super::{
    Component, Iq, IqError, IqResult, Module, ModuleOpts, OptKind, OptionSpec, Registrations,
};
use crate::proto::errors::StanzaErrorCondition as Cond;
use crate::proto::xml::Element;

pub const PROTOCOLS: &[&str] = &["XEP-0030 v2.5"];

pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub struct Disco;

impl Module for Disco {
    fn name(&self) -> &'static str {
        "mod_disco"
    }
    fn doc(&self) -> &'static str {
        "XEP-0030 service discovery of the server and of accounts"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[
            iqdisc("\"no_queue\""),
            OptionSpec {
                name: "name",
                kind: OptKind::Str,
                default: "\"rjabberd\"",
                doc: "the name of the server's identity",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let disc = opts.iqdisc();
        let name: Rc<str> = opts.str("name").into();
        let mut regs = Registrations::new();
        for component in [Component::Local, Component::Sm] {
            let name = name.clone();
            regs = regs
                .iq(
                    component,
                    NS_DISCO_INFO,
                    disc,
                    handler(move |iq| disco_info(iq, component, &name)),
                )
                .iq(
                    component,
                    NS_DISCO_ITEMS,
                    disc,
                    handler(move |iq| disco_items(iq, component)),
                );
        }
        Ok(regs)
    }
}

fn disco_info(iq: &Iq, component: Component, name: &str) -> IqResult {
    get_only(iq)?;
    let node = iq.payload.attr("node");
    if node.is_some() {
        return Err(IqError::new(Cond::ItemNotFound));
    }
    let mut q = query(NS_DISCO_INFO);
    q = match component {
        Component::Local => q.with_child(
            Element::new("identity")
                .with_attr("category", "server")
                .with_attr("type", "im")
                .with_attr("name", name),
        ),
        Component::Sm => q.with_child(
            Element::new("identity")
                .with_attr("category", "account")
                .with_attr("type", "registered"),
        ),
    };
    let mut features = iq.ctx.modules().borrow().iq_namespaces(component, &iq.host);
    let mut query = DiscoQuery {
        component,
        host: iq.host.clone(),
        from: iq.from.as_str().to_string(),
        node: node.map(str::to_string),
        features: Vec::new(),
        forms: Vec::new(),
    };
    hooks::run(&iq.ctx, &DISCO_FEATURES, &iq.host, &mut query);
    let DiscoQuery {
        features: more,
        forms,
        ..
    } = query;
    features.extend(more);
    features.sort();
    features.dedup();
    for f in features {
        q = q.with_child(Element::new("feature").with_attr("var", f));
    }
    for form in forms {
        q = q.with_child(form);
    }
    Ok(Some(q))
}

fn disco_items(iq: &Iq, component: Component) -> IqResult {
    get_only(iq)?;
    if iq.payload.attr("node").is_some() {
        return Err(IqError::new(Cond::ItemNotFound));
    }
    let mut q = query(NS_DISCO_ITEMS);
    if component == Component::Local {
        let mut domains = iq.ctx.modules().borrow().services_of(&iq.host);
        domains.extend(iq.ctx.components_under(&iq.host));
        domains.sort();
        domains.dedup();
        for d in domains {
            q = q.with_child(Element::new("item").with_attr("jid", d));
        }
    }
    Ok(Some(q))
}

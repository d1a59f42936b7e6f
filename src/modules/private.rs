//! `mod_private`, private XML storage (XEP-0049): an account stores and reads back elements of its own,
//! keyed by their namespace and name, up to `max_size` bytes in all; reserved namespaces are refused.

use super::iq::async_handler;
use super::util::{iqdisc, query};
use super::{
    Component, Iq, IqError, IqResult, IqType, Module, ModuleOpts, OptKind, OptionSpec,
    Registrations,
};
use crate::proto::errors::StanzaErrorCondition as Cond;
use crate::proto::xml::Element;
use crate::storage::layout;

pub const PROTOCOLS: &[&str] = &["XEP-0049 v1.2"];

pub const NS_PRIVATE: &str = "jabber:iq:private";

pub struct Private;

impl Module for Private {
    fn name(&self) -> &'static str {
        "mod_private"
    }
    fn doc(&self) -> &'static str {
        "XEP-0049 private XML storage, per account"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[
            iqdisc("\"parallel\""),
            OptionSpec {
                name: "max_size",
                kind: OptKind::Int {
                    min: 1024,
                    max: 64 * 1024 * 1024,
                },
                default: "1048576",
                doc: "bytes of private XML one account may store in all",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let max = opts.int("max_size") as u64;
        Ok(Registrations::new().iq(
            Component::Sm,
            NS_PRIVATE,
            opts.iqdisc(),
            async_handler(move |iq| private(iq, max)),
        ))
    }
}

/// The storage key of a private element: `{namespace}name`.
fn private_key(el: &Element) -> Option<String> {
    let ns = super::iq::namespace_of(el)?;
    if matches!(
        ns,
        "jabber:client" | "jabber:server" | "jabber:component:accept" | NS_PRIVATE
    ) {
        return None;
    }
    let local = el.name.split_once(':').map_or(el.name.as_str(), |(_, l)| l);
    Some(layout::private_key(ns, local))
}

async fn private(iq: Iq, max: u64) -> IqResult {
    if iq.payload.name != "query" {
        return Err(IqError::bad_request(
            "expected <query xmlns='jabber:iq:private'/>",
        ));
    }
    if !iq.from_owner() {
        return Err(IqError::new(Cond::Forbidden));
    }
    let children: Vec<Element> = iq.payload.child_elements().cloned().collect();
    if children.is_empty() {
        return Err(IqError::new(Cond::NotAcceptable).with_text("the query names no namespace"));
    }
    let mut keyed = Vec::with_capacity(children.len());
    for c in children {
        let key = private_key(&c).ok_or_else(|| {
            IqError::new(Cond::NotAcceptable).with_text("this namespace cannot be stored")
        })?;
        keyed.push((key, c));
    }
    let (host, user) = iq.account();
    let store = iq.ctx.store().clone();
    match iq.type_ {
        IqType::Get => {
            let keys: Vec<String> = keyed.iter().map(|(k, _)| k.clone()).collect();
            let found = store
                .run(move |db| {
                    keys.iter()
                        .map(|k| db.data_get(&host, &user, layout::PRIVATE, k))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .map_err(IqError::internal)?;
            let mut q = query(NS_PRIVATE);
            for ((_, asked), stored) in keyed.into_iter().zip(found) {
                let el = match stored {
                    Some(xml) => {
                        Element::parse(&String::from_utf8_lossy(&xml)).map_err(IqError::internal)?
                    }
                    // Nothing stored: the requested element, as asked.
                    None => asked,
                };
                q = q.with_child(el);
            }
            Ok(Some(q))
        }
        IqType::Set => {
            let values: Vec<(String, Option<Vec<u8>>)> = keyed
                .into_iter()
                .map(|(k, el)| (k, Some(standalone(el).to_xml_string().into_bytes())))
                .collect();
            let added: u64 = values
                .iter()
                .map(|(_, v)| v.as_ref().map_or(0, |v| v.len() as u64))
                .sum();
            store
                .run(move |db| {
                    let used = db.data_size(&host, &user, layout::PRIVATE)?;
                    if used + added > max {
                        return Ok(false);
                    }
                    db.data_put(&host, &user, layout::PRIVATE, &values)?;
                    Ok(true)
                })
                .await
                .map_err(IqError::internal)
                .and_then(|stored| {
                    if stored {
                        Ok(None)
                    } else {
                        Err(IqError::new(Cond::NotAcceptable)
                            .with_text(format!("private storage is limited to {max} bytes")))
                    }
                })
        }
    }
}

/// The element with its namespace declared on itself, so it means the same when stored alone.
fn standalone(mut el: Element) -> Element {
    if let Some(ns) = super::iq::namespace_of(&el).map(str::to_string) {
        match el.name.split_once(':') {
            Some((p, _)) => {
                let p = format!("xmlns:{p}");
                if el.attr(&p).is_none() {
                    el.set_attr(p, ns);
                }
            }
            None => el.set_attr("xmlns", ns),
        }
    }
    el
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_refuse_reserved_namespaces() {
        let el = Element::parse("<prefs xmlns='exodus:prefs'/>").unwrap();
        assert_eq!(private_key(&el).as_deref(), Some("{exodus:prefs}prefs"));
        let el = Element::parse("<e:prefs xmlns:e='exodus:prefs'/>").unwrap();
        assert_eq!(private_key(&el).as_deref(), Some("{exodus:prefs}prefs"));
        let el = Element::parse("<x xmlns='jabber:client'/>").unwrap();
        assert_eq!(private_key(&el), None);
        let el = Element::parse("<x/>").unwrap();
        assert_eq!(private_key(&el), None);
    }
}

//! `mod_vcard`, vcard-temp (XEP-0054): accounts publish their vCard, in their module data, up to
//! `max_size`; anyone may read it; the server answers with its own vCard.

use super::iq::{async_handler, handler};
use super::util::{get_only, iqdisc};
use super::{
    Component, Iq, IqError, IqResult, IqType, Module, ModuleOpts, OptKind, OptionSpec,
    Registrations,
};
use crate::proto::errors::StanzaErrorCondition as Cond;
use crate::proto::xml::Element;
use crate::storage::layout;

pub const PROTOCOLS: &[&str] = &["XEP-0054 v1.2"];

pub const NS_VCARD: &str = "vcard-temp";

pub struct Vcard;

impl Module for Vcard {
    fn name(&self) -> &'static str {
        "mod_vcard"
    }
    fn doc(&self) -> &'static str {
        "XEP-0054 vcard-temp: accounts publish their vCard; anyone may read it"
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
                    max: 16 * 1024 * 1024,
                },
                default: "65536",
                doc: "largest vCard an account may store, in bytes of XML",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        let max = opts.int("max_size") as usize;
        Ok(Registrations::new()
            .iq(
                Component::Sm,
                NS_VCARD,
                opts.iqdisc(),
                async_handler(move |iq| account_vcard(iq, max)),
            )
            .iq(
                Component::Local,
                NS_VCARD,
                opts.iqdisc(),
                handler(|iq| {
                    get_only(iq)?;
                    Ok(Some(
                        Element::new("vCard")
                            .with_attr("xmlns", NS_VCARD)
                            .with_child(Element::new("FN").with_text("rjabberd"))
                            .with_child(
                                Element::new("DESC")
                                    .with_text("rjabberd, a thread-per-core XMPP server"),
                            ),
                    ))
                }),
            ))
    }
}

async fn account_vcard(iq: Iq, max: usize) -> IqResult {
    if iq.payload.name != "vCard" {
        return Err(IqError::bad_request("expected <vCard xmlns='vcard-temp'/>"));
    }
    let (host, user) = iq.account();
    let store = iq.ctx.store().clone();
    match iq.type_ {
        IqType::Get => {
            let stored = store
                .run(move |db| db.data_get(&host, &user, layout::VCARD, layout::VCARD_KEY))
                .await
                .map_err(IqError::internal)?;
            match stored {
                Some(xml) => {
                    let text = String::from_utf8(xml).map_err(IqError::internal)?;
                    Ok(Some(Element::parse(&text).map_err(IqError::internal)?))
                }
                None => Ok(Some(Element::new("vCard").with_attr("xmlns", NS_VCARD))),
            }
        }
        IqType::Set => {
            if !iq.from_owner() {
                return Err(IqError::new(Cond::Forbidden));
            }
            let mut card = iq.payload.clone();
            card.attrs.retain(|(n, _)| n != "xmlns");
            card.attrs.insert(0, ("xmlns".into(), NS_VCARD.into()));
            let xml = card.to_xml_string();
            if xml.len() > max {
                return Err(IqError::new(Cond::NotAcceptable)
                    .with_text(format!("a vCard may hold at most {max} bytes")));
            }
            store
                .run(move |db| {
                    db.data_put(
                        &host,
                        &user,
                        layout::VCARD,
                        &[(layout::VCARD_KEY.to_string(), Some(xml.into_bytes()))],
                    )
                })
                .await
                .map_err(IqError::internal)?;
            Ok(None)
        }
    }
}

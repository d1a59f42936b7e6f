//! The blocking command of XEP-0191 as data: a `block` or `unblock` request checked (each item a JID,
//! prepared; a block names at least one; an unblock without items unblocks all), the JID matching of
//! XEP-0016 §2.1 that decides whether an address falls under a blocked item (full JID, bare JID,
//! domain with resource, domain), and the elements results and pushes carry. Pure: `mod_blocking` stores
//! the lists and routes the elements.

use super::errors::StanzaErrorCondition;
use super::jid::{Jid, JidView};
use super::xml::Element;

pub const NS_BLOCKING: &str = "urn:xmpp:blocking";
/// The application-specific error condition for a stanza sent to a blocked JID (§3.3).
pub const BLOCKED_ERROR: &str = "<blocked xmlns='urn:xmpp:blocking:errors'/>";

/// What a `set` asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockingSet {
    Block(Vec<String>),
    Unblock(Vec<String>),
    UnblockAll,
}

/// A request's error: the condition and an English text.
pub type BlockingError = (StanzaErrorCondition, &'static str);

/// Checks a `<block/>` or `<unblock/>` payload; items come back prepared and without duplicates, in
/// the order given.
pub fn parse_set(payload: &Element, max_items: usize) -> Result<BlockingSet, BlockingError> {
    use StanzaErrorCondition as C;
    let mut items: Vec<String> = Vec::new();
    for item in payload.child_elements().filter(|e| e.name == "item") {
        let Some(attr) = item.attr("jid") else {
            return Err((C::BadRequest, "an <item/> has no jid"));
        };
        let jid = Jid::parse(attr).map_err(|_| (C::JidMalformed, "an item's jid is not a JID"))?;
        let jid = jid.as_str().to_string();
        if !items.contains(&jid) {
            items.push(jid);
        }
        if items.len() > max_items {
            return Err((C::NotAcceptable, "too many items"));
        }
    }
    match payload.name.as_str() {
        // §3.3: a block with no item is an error.
        "block" if items.is_empty() => Err((C::BadRequest, "a block names at least one JID")),
        "block" => Ok(BlockingSet::Block(items)),
        "unblock" if items.is_empty() => Ok(BlockingSet::UnblockAll),
        "unblock" => Ok(BlockingSet::Unblock(items)),
        _ => Err((C::BadRequest, "expected <block/> or <unblock/>")),
    }
}

/// Whether `address` (a prepared JID) falls under the blocked item `item` (XEP-0191 §3.3 and XEP-0016
/// §2.1): an item with a resource matches that full JID only; a bare item matches the bare JID and
/// every full JID of it; `domain/resource` matches that resource of the domain itself; a domain matches
/// the domain and every address at it.
pub fn matches(item: &str, address: &str) -> bool {
    let (Some(item), Some(address)) = (JidView::canonical(item), JidView::canonical(address))
    else {
        // Both are stored or stamped prepared; anything else is compared as text.
        return item == address;
    };
    if item.domain != address.domain {
        return false;
    }
    if item.local.is_some() && item.local != address.local {
        return false;
    }
    match item.resource {
        Some(r) => address.resource == Some(r) && (item.local.is_some() || address.local.is_none()),
        None => true,
    }
}

/// Whether any item of `list` blocks `address`.
pub fn blocks(list: &[String], address: &str) -> bool {
    list.iter().any(|item| matches(item, address))
}

/// The items of a blocklist result or of a push.
pub fn element(name: &str, items: &[String]) -> Element {
    let mut e = Element::new(name).with_attr("xmlns", NS_BLOCKING);
    for jid in items {
        e = e.with_child(Element::new("item").with_attr("jid", jid.as_str()));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::xml::{Limits, parse_element};

    fn payload(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Limits::default())
            .unwrap()
            .to_element()
    }

    #[test]
    fn requests_are_checked() {
        use StanzaErrorCondition as C;
        let ns = "xmlns='urn:xmpp:blocking'";
        let cases: &[(&str, Result<BlockingSet, C>)] = &[
            (
                "<block NS><item jid='Romeo@Montague.net'/><item jid='romeo@montague.net'/></block>",
                Ok(BlockingSet::Block(vec!["romeo@montague.net".into()])),
            ),
            ("<block NS/>", Err(C::BadRequest)),
            ("<block NS><item/></block>", Err(C::BadRequest)),
            (
                "<block NS><item jid='a@b@c'/></block>",
                Err(C::JidMalformed),
            ),
            ("<unblock NS/>", Ok(BlockingSet::UnblockAll)),
            (
                "<unblock NS><item jid='montague.net/orchard'/></unblock>",
                Ok(BlockingSet::Unblock(vec!["montague.net/orchard".into()])),
            ),
            ("<blocklist NS/>", Err(C::BadRequest)),
        ];
        for (xml, expected) in cases {
            let got = parse_set(&payload(&xml.replace("NS", ns)), 10).map_err(|(c, _)| c);
            assert_eq!(&got, expected, "{xml}");
        }
        let many: String = (0..4).map(|i| format!("<item jid='u{i}@x'/>")).collect();
        let xml = format!("<block {ns}>{many}</block>");
        assert_eq!(
            parse_set(&payload(&xml), 3).map_err(|(c, _)| c),
            Err(C::NotAcceptable)
        );
    }

    #[test]
    fn jid_matching_follows_xep_0016() {
        let cases = [
            // item, address, blocked
            ("romeo@montague.net", "romeo@montague.net", true),
            ("romeo@montague.net", "romeo@montague.net/orchard", true),
            ("romeo@montague.net", "juliet@montague.net", false),
            (
                "romeo@montague.net/orchard",
                "romeo@montague.net/orchard",
                true,
            ),
            (
                "romeo@montague.net/orchard",
                "romeo@montague.net/garden",
                false,
            ),
            ("romeo@montague.net/orchard", "romeo@montague.net", false),
            ("montague.net", "montague.net", true),
            ("montague.net", "romeo@montague.net/orchard", true),
            ("montague.net", "capulet.net", false),
            ("montague.net", "romeo@capulet.net", false),
            ("montague.net/orchard", "montague.net/orchard", true),
            ("montague.net/orchard", "romeo@montague.net/orchard", false),
            ("montague.net/orchard", "montague.net", false),
        ];
        for (item, address, blocked) in cases {
            assert_eq!(matches(item, address), blocked, "{item} vs {address}");
        }
        let list = vec!["capulet.net".to_string(), "romeo@montague.net".to_string()];
        assert!(blocks(&list, "nurse@capulet.net/x"));
        assert!(!blocks(&list, "benvolio@montague.net"));
    }
}

//! The roster of RFC 6121 §2 as data: an item (contact, name, groups, subscription state), what a roster
//! set asks for once checked against the §2.3.3 error cases, and the item as the `jabber:iq:roster`
//! element that results and pushes carry. Pure: the module that keeps rosters (`mod_roster`) stores
//! these and routes the elements.

use super::errors::StanzaErrorCondition;
use super::jid::Jid;
use super::xml::Element;

pub const NS_ROSTER: &str = "jabber:iq:roster";

/// The subscription state of an item (RFC 6121 §2.1.2.5), from the user's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subscription {
    #[default]
    None,
    /// The user receives the contact's presence.
    To,
    /// The contact receives the user's presence.
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    pub fn parse(s: &str) -> Option<Subscription> {
        Some(match s {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => return None,
        })
    }
}

/// One roster item, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RosterItem {
    /// The contact's bare JID, prepared.
    pub jid: String,
    pub name: Option<String>,
    /// In the order the client gave them, without duplicates.
    pub groups: Vec<String>,
    pub subscription: Subscription,
    /// The user asked to subscribe and the contact has not answered (`ask='subscribe'`).
    pub ask: bool,
    /// The contact asked to subscribe and the user has not answered (not shown to clients as an
    /// attribute; kept to deliver the request again).
    pub pending_in: bool,
    /// The user pre-approved the contact's subscription (RFC 6121 §3.4).
    pub approved: bool,
    /// Whether the item is on the roster the user sees. An item kept only for a subscription request
    /// the user has not answered is not (RFC 6121 §3.1.3: the request creates no roster item).
    pub listed: bool,
}

impl RosterItem {
    /// A listed item for `jid`, subscription none.
    pub fn new(jid: impl Into<String>) -> RosterItem {
        RosterItem {
            jid: jid.into(),
            listed: true,
            ..RosterItem::default()
        }
    }

    /// Whether nothing is left of the item: not listed, no subscription either way, nothing pending
    /// or approved.
    pub fn is_vacant(&self) -> bool {
        !self.listed
            && self.subscription == Subscription::None
            && !self.ask
            && !self.pending_in
            && !self.approved
    }

    /// The item as results and pushes carry it.
    pub fn to_element(&self) -> Element {
        let mut el = Element::new("item")
            .with_attr("jid", self.jid.clone())
            .with_attr("subscription", self.subscription.as_str());
        if let Some(name) = &self.name {
            el = el.with_attr("name", name.clone());
        }
        if self.ask {
            el = el.with_attr("ask", "subscribe");
        }
        if self.approved {
            el = el.with_attr("approved", "true");
        }
        for g in &self.groups {
            el = el.with_child(Element::new("group").with_text(g.clone()));
        }
        el
    }
}

/// The `<item subscription='remove'/>` of a push for a removed item.
pub fn removed_element(jid: &str) -> Element {
    Element::new("item")
        .with_attr("jid", jid)
        .with_attr("subscription", "remove")
}

/// What a checked roster set asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterSet {
    /// Add the item or update its name and groups (the subscription state is the server's).
    Update {
        jid: String,
        name: Option<String>,
        groups: Vec<String>,
    },
    Remove {
        jid: String,
    },
}

/// The limits a server sets on roster sets (§2.3.3 lets the server configure them).
#[derive(Debug, Clone, Copy)]
pub struct RosterLimits {
    pub max_name_chars: usize,
    pub max_group_chars: usize,
    pub max_groups: usize,
}

impl Default for RosterLimits {
    fn default() -> Self {
        RosterLimits {
            max_name_chars: 1024,
            max_group_chars: 1024,
            max_groups: 64,
        }
    }
}

/// A refused roster set: the condition and a text for the client.
pub type RosterError = (StanzaErrorCondition, &'static str);

/// Checks a roster set's `<query/>` against RFC 6121 §2.3.3 (and §2.1.2 on which attributes a client
/// may set) and says what it asks for. `owner` is the account's bare JID: an item for it is refused.
pub fn parse_set(
    query: &Element,
    owner: &str,
    limits: &RosterLimits,
) -> Result<RosterSet, RosterError> {
    use StanzaErrorCondition as C;
    let mut items = query.child_elements().filter(|e| e.name == "item");
    let Some(item) = items.next() else {
        return Err((C::BadRequest, "a roster set carries one <item/>"));
    };
    if items.next().is_some() {
        return Err((C::BadRequest, "a roster set carries exactly one <item/>"));
    }
    let Some(jid_attr) = item.attr("jid") else {
        return Err((C::BadRequest, "the <item/> has no jid"));
    };
    let jid = Jid::parse(jid_attr).map_err(|_| (C::JidMalformed, "the item's jid is not a JID"))?;
    if jid.resource().is_some() {
        return Err((C::JidMalformed, "a roster item is a bare JID"));
    }
    let jid = jid.as_str().to_string();
    if item.attr("subscription") == Some("remove") {
        return Ok(RosterSet::Remove { jid });
    }
    if jid == owner {
        return Err((C::NotAllowed, "the account itself cannot be a contact"));
    }
    let name = item.attr("name").map(str::to_string);
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > limits.max_name_chars)
    {
        return Err((C::NotAcceptable, "the name is too long"));
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item.child_elements().filter(|e| e.name == "group") {
        let text = g.text();
        if text.is_empty() {
            return Err((C::NotAcceptable, "a group name is empty"));
        }
        if text.chars().count() > limits.max_group_chars {
            return Err((C::NotAcceptable, "a group name is too long"));
        }
        if groups.contains(&text) {
            return Err((C::BadRequest, "a group is named twice"));
        }
        groups.push(text);
    }
    if groups.len() > limits.max_groups {
        return Err((C::NotAcceptable, "too many groups"));
    }
    Ok(RosterSet::Update { jid, name, groups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::xml::{Limits, parse_element};
    use StanzaErrorCondition as C;

    fn set(xml: &str) -> Result<RosterSet, RosterError> {
        let q = parse_element(xml.as_bytes(), &Limits::default())
            .unwrap()
            .to_element();
        parse_set(&q, "juliet@example.com", &RosterLimits::default())
    }

    fn q(items: &str) -> String {
        format!("<query xmlns='jabber:iq:roster'>{items}</query>")
    }

    #[test]
    fn a_set_with_name_and_groups() {
        assert_eq!(
            set(&q(
                "<item jid='Nurse@Example.com' name='Nurse'><group>Servants</group><group>Kin</group></item>"
            )),
            Ok(RosterSet::Update {
                jid: "nurse@example.com".into(),
                name: Some("Nurse".into()),
                groups: vec!["Servants".into(), "Kin".into()],
            })
        );
        assert_eq!(
            set(&q("<item jid='nurse@example.com' subscription='remove'/>")),
            Ok(RosterSet::Remove {
                jid: "nurse@example.com".into()
            })
        );
    }

    #[test]
    fn the_error_cases_of_2_3_3() {
        let cases = [
            (q(""), C::BadRequest),
            (
                q("<item jid='a@example.com'/><item jid='b@example.com'/>"),
                C::BadRequest,
            ),
            (
                q("<item jid='a@example.com'><group>G</group><group>G</group></item>"),
                C::BadRequest,
            ),
            (
                q("<item jid='a@example.com'><group></group></item>"),
                C::NotAcceptable,
            ),
            (q("<item jid='a@@example.com'/>"), C::JidMalformed),
            (q("<item jid='a@example.com/r'/>"), C::JidMalformed),
            (q("<item/>"), C::BadRequest),
            (q("<item jid='juliet@example.com'/>"), C::NotAllowed),
        ];
        for (xml, want) in cases {
            assert_eq!(set(&xml).map_err(|e| e.0), Err(want), "{xml}");
        }
        let long = "x".repeat(1025);
        assert_eq!(
            set(&q(&format!("<item jid='a@example.com' name='{long}'/>"))).map_err(|e| e.0),
            Err(C::NotAcceptable)
        );
    }

    #[test]
    fn an_item_element_carries_what_clients_see() {
        let mut item = RosterItem::new("romeo@example.net");
        item.name = Some("Romeo".into());
        item.groups = vec!["Friends".into()];
        item.subscription = Subscription::To;
        item.ask = true;
        item.pending_in = true;
        let el = item.to_element();
        assert_eq!(el.attr("jid"), Some("romeo@example.net"));
        assert_eq!(el.attr("subscription"), Some("to"));
        assert_eq!(el.attr("ask"), Some("subscribe"));
        assert_eq!(el.attr("name"), Some("Romeo"));
        assert_eq!(
            el.child("group").map(|g| g.text()).as_deref(),
            Some("Friends")
        );
        assert_eq!(
            el.attr("pending_in"),
            None,
            "pending-in is the server's own business"
        );
    }
}

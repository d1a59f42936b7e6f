//! Message Carbons (XEP-0280 v1.0.1) as data: which messages are copied (§6, with §9's `<private/>` and
//! XEP-0334's `<no-copy/>`), the `<private/>` a receiving server removes, and the forwarded copy itself
//! (§7 `received`, §8 `sent`, wrapped per XEP-0297). Pure: the module that keeps track of which
//! resources enabled carbons (`mod_carbons`) asks these functions and writes what they build.

use super::xml::{CONTENT_NAMESPACES, Element, Limits, Node, Stanza, parse_element};

pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334 message processing hints (`<no-copy/>`).
pub const NS_HINTS: &str = "urn:xmpp:hints";
const NS_CLIENT: &str = "jabber:client";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0249 direct MUC invitations.
const NS_CONFERENCE: &str = "jabber:x:conference";
/// XEP-0353 Jingle Message Initiation, both versions in use.
const NS_JINGLE_MESSAGE: [&str; 2] = ["urn:xmpp:jingle-message:0", "urn:xmpp:jingle-message:1"];

/// Which side of the account a message passed: what the copy is wrapped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// One of the account's sessions sent it (§8): `<sent/>`.
    Sent,
    /// It reached the account (§7): `<received/>`.
    Received,
}

impl Direction {
    pub fn element_name(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// Whether a `<message/>` is copied to the account's other carbons-enabled resources (§6, §9).
///
/// Copied: `chat`; `normal` (or no type) with a `<body/>`, a MUC invitation (XEP-0249, or a mediated
/// XEP-0045 one) or a XEP-0353 call signal (so that a call answered on one device stops ringing on the
/// others, as Prosody does). Never: `groupchat`, `headline`, `error` (correlating an error with the message it
/// answers is left out, as §6 allows); anything carrying `<private xmlns='urn:xmpp:carbons:2'/>` or
/// XEP-0334 `<no-copy/>`; a carbon copy itself (`<sent/>` or `<received/>`); and, received, a message
/// from a MUC room or one of its occupants (the room already sends it to each joined client), known by
/// its `<x xmlns='…muc#user'/>` without an invitation in it.
pub fn eligible(direction: Direction, message: &Element) -> bool {
    if local(&message.name) != "message" {
        return false;
    }
    let invitation = has_child(message, "x", NS_CONFERENCE)
        || children(message).any(|(c, ns)| {
            local(&c.name) == "x"
                && ns == NS_MUC_USER
                && c.child_elements().any(|i| local(&i.name) == "invite")
        });
    let call = || children(message).any(|(_, ns)| NS_JINGLE_MESSAGE.contains(&ns));
    let by_type = match message.attr("type") {
        Some("chat") => true,
        None | Some("normal") => has_child(message, "body", NS_CLIENT) || invitation || call(),
        _ => false,
    };
    if !by_type {
        return false;
    }
    if has_child(message, "private", NS_CARBONS)
        || has_child(message, "no-copy", NS_HINTS)
        || has_child(message, "sent", NS_CARBONS)
        || has_child(message, "received", NS_CARBONS)
    {
        return false;
    }
    let from_muc =
        direction == Direction::Received && has_child(message, "x", NS_MUC_USER) && !invitation;
    !from_muc
}

/// Whether a message carries `<private xmlns='urn:xmpp:carbons:2'/>`.
pub fn is_private(message: &Element) -> bool {
    has_child(message, "private", NS_CARBONS)
}

/// Whether the bytes of a stanza might concern carbons at all (name the namespace): a scan that spares
/// parsing the common message, which does not.
pub fn mentions_carbons(stanza: &Stanza) -> bool {
    memchr::memmem::find(stanza.as_bytes(), NS_CARBONS.as_bytes()).is_some()
}

/// The message without its `<private/>` (§9: the receiving server SHOULD remove it before delivering),
/// or `None` when it has none (or, which cannot happen for what the parser checked, does not parse
/// again).
pub fn without_private(message: &Element) -> Option<Stanza> {
    if !is_private(message) {
        return None;
    }
    let mut stripped = message.clone();
    stripped.children.retain(|n| match n {
        Node::Element(c) => !(local(&c.name) == "private" && ns_of(message, c) == NS_CARBONS),
        Node::Text(_) => true,
    });
    let bytes = stripped.to_xml_string();
    parse_element(bytes.as_bytes(), &roomy(bytes.len())).ok()
}

/// The forwarded copy of `original` for the account's resource `to` (a full JID): from the account's
/// bare JID `account`, keeping the original's `type`, holding `<sent/>` or `<received/>` with the
/// XEP-0297 `<forwarded/>` around the original, whose `from` is set to `original_from` (the sender's
/// full JID as stamped; a stanza in transit may not carry it yet). The original is written in
/// `jabber:client`, whatever stream it came in on (a component's, later a server's), as the client
/// would have received it. `None` only when the result does not parse, which would be a bug here.
pub fn forwarded_copy(
    direction: Direction,
    original: &Stanza,
    original_from: &str,
    account: &str,
    to: &str,
) -> Option<Stanza> {
    let mut inner = original.to_element();
    let in_content_ns = original
        .namespace()
        .is_some_and(|ns| CONTENT_NAMESPACES.contains(&&*ns));
    if in_content_ns && original.prefix().is_none() {
        inner.set_attr("xmlns", NS_CLIENT);
    }
    inner.set_attr("from", original_from);
    let mut copy = Element::new("message")
        .with_attr("xmlns", NS_CLIENT)
        .with_attr("from", account)
        .with_attr("to", to);
    if let Some(ty) = original.type_() {
        copy.set_attr("type", ty);
    }
    let copy = copy.with_child(
        Element::new(direction.element_name())
            .with_attr("xmlns", NS_CARBONS)
            .with_child(
                Element::new("forwarded")
                    .with_attr("xmlns", NS_FORWARD)
                    .with_child(inner),
            ),
    );
    let mut out: Vec<u8> = Vec::with_capacity(original.as_bytes().len() + 256);
    copy.write_to(&mut out);
    parse_element(&out, &roomy(out.len())).ok()
}

/// The default limits, widened for an element the server built around one it already accepted: three
/// more levels, three more declarations, and its whole size.
fn roomy(len: usize) -> Limits {
    let d = Limits::default();
    Limits {
        max_stanza_bytes: d.max_stanza_bytes.max(len),
        max_depth: d.max_depth + 3,
        max_ns_decls: d.max_ns_decls + 3,
        ..d
    }
}

/// The name without its prefix.
fn local(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, l)| l)
}

/// The namespace of `child` of `parent`: its prefix's declaration (on itself or the parent), else its
/// own default, else the parent's (`jabber:client` for a stanza whose stream declared it).
fn ns_of<'a>(parent: &'a Element, child: &'a Element) -> &'a str {
    match child.name.split_once(':') {
        Some((prefix, _)) => {
            let decl = format!("xmlns:{prefix}");
            child
                .attr(&decl)
                .or_else(|| parent.attr(&decl))
                .unwrap_or("")
        }
        None => child
            .attr("xmlns")
            .or_else(|| parent.attr("xmlns"))
            .unwrap_or(NS_CLIENT),
    }
}

/// The child elements with their namespaces.
fn children(parent: &Element) -> impl Iterator<Item = (&Element, &str)> {
    parent.child_elements().map(move |c| (c, ns_of(parent, c)))
}

fn has_child(parent: &Element, name: &str, ns: &str) -> bool {
    children(parent).any(|(c, n)| local(&c.name) == name && n == ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Received, Sent};

    fn el(xml: &str) -> Element {
        Element::parse(xml).unwrap_or_else(|e| panic!("{xml}: {e}"))
    }

    #[test]
    fn eligibility() {
        // (message, copied when sent, copied when received)
        let cases: &[(&str, bool, bool)] = &[
            ("<message type='chat'><body>hi</body></message>", true, true),
            // A chat state alone, type chat: copied (§10.2 of the XEP: intentional).
            (
                "<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
                true,
                true,
            ),
            (
                "<message type='normal'><body>hi</body></message>",
                true,
                true,
            ),
            ("<message><body>hi</body></message>", true, true),
            // Normal without a body: a receipt, a chat state.
            (
                "<message><received xmlns='urn:xmpp:receipts' id='x'/></message>",
                false,
                false,
            ),
            ("<message type='normal'/>", false, false),
            // A <body> of another namespace is no body.
            (
                "<message><html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'/></html></message>",
                false,
                false,
            ),
            (
                "<message type='groupchat'><body>hi</body></message>",
                false,
                false,
            ),
            (
                "<message type='headline'><body>news</body></message>",
                false,
                false,
            ),
            (
                "<message type='error'><body>hi</body></message>",
                false,
                false,
            ),
            (
                "<message type='bogus'><body>hi</body></message>",
                false,
                false,
            ),
            // §9: private.
            (
                "<message type='chat'><body>hi</body><private xmlns='urn:xmpp:carbons:2'/></message>",
                false,
                false,
            ),
            (
                "<message type='chat' xmlns:c='urn:xmpp:carbons:2'><body>hi</body><c:private/></message>",
                false,
                false,
            ),
            // A <private/> of another namespace changes nothing.
            (
                "<message type='chat'><body>hi</body><private xmlns='urn:example'/></message>",
                true,
                true,
            ),
            // XEP-0334 no-copy.
            (
                "<message type='chat'><body>hi</body><no-copy xmlns='urn:xmpp:hints'/></message>",
                false,
                false,
            ),
            (
                "<message type='chat'><body>hi</body><no-store xmlns='urn:xmpp:hints'/></message>",
                true,
                true,
            ),
            // A carbon is not copied again.
            (
                "<message type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'/></sent></message>",
                false,
                false,
            ),
            (
                "<message type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>",
                false,
                false,
            ),
            // A MUC private message: copied when the user sends it, not when an occupant does.
            (
                "<message type='chat'><body>psst</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>",
                true,
                false,
            ),
            // Invitations are copied both ways.
            (
                "<message><x xmlns='jabber:x:conference' jid='room@muc.example'/></message>",
                true,
                true,
            ),
            (
                "<message><x xmlns='http://jabber.org/protocol/muc#user'><invite from='a@b'/></x></message>",
                true,
                true,
            ),
            // XEP-0353 call signals, either version.
            (
                "<message><propose xmlns='urn:xmpp:jingle-message:0' id='c'/></message>",
                true,
                true,
            ),
            (
                "<message type='normal'><accept xmlns='urn:xmpp:jingle-message:1' id='c'/></message>",
                true,
                true,
            ),
            (
                "<message type='headline'><propose xmlns='urn:xmpp:jingle-message:0' id='c'/></message>",
                false,
                false,
            ),
            ("<presence/>", false, false),
        ];
        for (xml, sent, received) in cases {
            let m = el(xml);
            assert_eq!(eligible(Sent, &m), *sent, "sent: {xml}");
            assert_eq!(eligible(Received, &m), *received, "received: {xml}");
        }
    }

    #[test]
    fn private_is_removed() {
        let m = el(
            "<message xmlns='jabber:client' type='chat' id='1'><body>hi</body><private xmlns='urn:xmpp:carbons:2'/></message>",
        );
        assert!(is_private(&m));
        let s = without_private(&m).unwrap();
        let back = s.to_element();
        assert!(!is_private(&back));
        assert_eq!(back.child("body").unwrap().text(), "hi");
        assert_eq!(s.id().as_deref(), Some("1"));
        assert!(without_private(&el("<message><body>hi</body></message>")).is_none());
    }

    #[test]
    fn copies_wrap_the_original() {
        let original = parse_element(
            b"<message xmlns='jabber:client' to='juliet@capulet.example/balcony' type='chat' id='m1'><body>Neither, fair saint &amp; more</body></message>",
            &Limits::default(),
        )
        .unwrap();
        for direction in [Sent, Received] {
            let copy = forwarded_copy(
                direction,
                &original,
                "romeo@montague.example/home",
                "romeo@montague.example",
                "romeo@montague.example/garden",
            )
            .unwrap();
            assert_eq!(copy.from().as_deref(), Some("romeo@montague.example"));
            assert_eq!(copy.to().as_deref(), Some("romeo@montague.example/garden"));
            assert_eq!(copy.type_().as_deref(), Some("chat"));
            let e = copy.to_element();
            let wrapper = e.child(direction.element_name()).unwrap();
            assert_eq!(wrapper.attr("xmlns"), Some(NS_CARBONS));
            let fwd = wrapper.child("forwarded").unwrap();
            assert_eq!(fwd.attr("xmlns"), Some(NS_FORWARD));
            let inner = fwd.child("message").unwrap();
            assert_eq!(inner.attr("xmlns"), Some("jabber:client"));
            assert_eq!(inner.attr("from"), Some("romeo@montague.example/home"));
            assert_eq!(inner.attr("to"), Some("juliet@capulet.example/balcony"));
            assert_eq!(inner.attr("id"), Some("m1"));
            assert_eq!(
                inner.child("body").unwrap().text(),
                "Neither, fair saint & more"
            );
            // A copy is itself never copied.
            assert!(!eligible(Sent, &e) && !eligible(Received, &e));
        }
    }

    #[test]
    fn a_copy_of_a_message_from_a_stream_declares_its_namespace() {
        // In transit, a message relies on the stream's default namespace; its copy must not.
        let mut p = crate::proto::xml::StreamParser::new(Limits::default());
        p.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'><message to='a@b'><body>x</body></message>");
        let mut stanza = None;
        while let Some(ev) = p.next_event().unwrap() {
            if let crate::proto::xml::Event::Stanza(s) = ev {
                stanza = Some(s);
            }
        }
        let copy = forwarded_copy(Received, &stanza.unwrap(), "c@d/r", "a@b", "a@b/x").unwrap();
        let e = copy.to_element();
        let inner = e.path(&[
            crate::proto::xml::PathItem::Elem("received"),
            crate::proto::xml::PathItem::Elem("forwarded"),
            crate::proto::xml::PathItem::Elem("message"),
        ]);
        let crate::proto::xml::PathValue::Element(inner) = inner else {
            panic!("{e}")
        };
        assert_eq!(inner.attr("xmlns"), Some("jabber:client"));
        assert_eq!(inner.attr("from"), Some("c@d/r"));
        assert_eq!(copy.type_(), None);
    }

    #[test]
    fn a_copy_of_a_message_from_a_component_is_in_the_client_namespace() {
        let mut p = crate::proto::xml::StreamParser::new(Limits::default());
        p.feed(b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'><message from='icq.example' to='a@b/x' type='chat'><body>x</body></message>");
        let mut stanza = None;
        while let Some(ev) = p.next_event().unwrap() {
            if let crate::proto::xml::Event::Stanza(s) = ev {
                stanza = Some(s);
            }
        }
        let copy =
            forwarded_copy(Received, &stanza.unwrap(), "icq.example", "a@b", "a@b/y").unwrap();
        let e = copy.to_element();
        let inner = e
            .child("received")
            .and_then(|r| r.child("forwarded"))
            .and_then(|f| f.child("message"))
            .unwrap();
        assert_eq!(inner.attr("xmlns"), Some("jabber:client"), "{e}");
        assert_eq!(inner.child("body").unwrap().attr("xmlns"), None, "{e}");
        assert_eq!(copy.type_().as_deref(), Some("chat"));
    }
}

//! The owned element tree and the element API of the ejabberd Developers Guide (sections 5 to 7): the
//! seed's `{xmlelement, Name, Attrs, Children}` and the functions of its modules `xml` and `xml_stream`,
//! under Rust names. A tree is built only on demand, from bytes the stream parser has already checked
//! ([`super::Stanza::to_element`]) or from a string ([`Element::parse`]); the routing path never builds one.
//! As in ejabberd, names are qualified names as written and namespace declarations are ordinary
//! attributes (`xmlns`, `xmlns:p`).
//!
//! | seed (ejabberd) | rjabberd |
//! | --- | --- |
//! | `{xmlelement, Name, Attrs, Children}` | [`Element`] `{ name, attrs, children }` |
//! | `{xmlcdata, CData}` | [`Node::Text`] |
//! | `xml:element_to_string/1` | [`Element::to_xml_string`], [`Element::write_to`], `Display` |
//! | `xml:crypt/1` | [`escape`](super::escape()) |
//! | `xml:remove_cdata/1` | [`remove_text`], [`Element::child_elements`] |
//! | `xml:get_path_s/2` | [`Element::path`] with [`PathItem`] `Elem` / `Attr` / `Cdata` |
//! | `xml:get_cdata/1` | [`text_of`] |
//! | `xml:get_tag_cdata/1` | [`Element::text`] |
//! | `xml:get_attr/2` | [`attr_of`] |
//! | `xml:get_attr_s/2` | [`attr_of_s`] |
//! | `xml:get_tag_attr/2` | [`Element::attr`] |
//! | `xml:get_tag_attr_s/2` | [`Element::attr_s`] |
//! | `xml:get_subtag/2` | [`Element::child`] |
//! | `xml_stream:parse_element/1` | [`Element::parse`] |

use std::borrow::Cow;
use std::fmt;

use bytes::BufMut;

use super::error::XmlError;
use super::escape::{put_escaped_attr, put_escaped_text, unescape_attr, unescape_text};
use super::parser::{Limits, parse_element};

/// An XML element: `{xmlelement, Name, Attrs, Children}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// The qualified name as written (`message`, `stream:features`).
    pub name: String,
    /// `(qualified name, unescaped value)` in document order, namespace declarations included.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// A child of an element: an element or character data (`{xmlcdata, CData}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    /// Unescaped text; adjacent text, references and CDATA sections are merged into one node.
    Text(String),
}

/// One step of a [`Element::path`] walk (the seed's `get_path_s/2` path items).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathItem<'a> {
    /// `{elem, Name}`: descend into the first child element of that name.
    Elem(&'a str),
    /// `{attr, Name}`: the value of that attribute of the current element.
    Attr(&'a str),
    /// `cdata`: the text of the current element.
    Cdata,
}

/// What a [`Element::path`] walk ends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathValue<'a> {
    Element(&'a Element),
    Text(Cow<'a, str>),
}

impl PathValue<'_> {
    /// The text the walk ended on; empty when it ended on an element.
    pub fn as_str(&self) -> &str {
        match self {
            PathValue::Element(_) => "",
            PathValue::Text(t) => t,
        }
    }
}

impl Element {
    /// An element with no attributes or children.
    pub fn new(name: impl Into<String>) -> Self {
        Element {
            name: name.into(),
            ..Element::default()
        }
    }

    /// Adds (or replaces) an attribute, builder style.
    ///
    /// ```
    /// use rjabberd::proto::xml::Element;
    /// let ping = Element::new("ping").with_attr("xmlns", "urn:xmpp:ping");
    /// assert_eq!(ping.to_xml_string(), "<ping xmlns='urn:xmpp:ping'/>");
    /// ```
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Appends a child element, builder style.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Appends text, builder style.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// Sets an attribute, replacing one of the same name.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// The value of `xmlns` on this element itself (not resolved through ancestors).
    pub fn namespace(&self) -> Option<&str> {
        self.attr("xmlns")
    }

    /// `get_tag_attr/2`: an attribute's value.
    ///
    /// ```
    /// use rjabberd::proto::xml::Element;
    /// let m = Element::new("message").with_attr("type", "groupchat");
    /// assert_eq!(m.attr("type"), Some("groupchat"));
    /// assert_eq!(m.attr("to"), None);
    /// ```
    pub fn attr(&self, name: &str) -> Option<&str> {
        attr_of(&self.attrs, name)
    }

    /// `get_tag_attr_s/2`: an attribute's value, or `""` when absent.
    ///
    /// ```
    /// use rjabberd::proto::xml::Element;
    /// assert_eq!(Element::new("message").attr_s("to"), "");
    /// ```
    pub fn attr_s(&self, name: &str) -> &str {
        self.attr(name).unwrap_or("")
    }

    /// `get_subtag/2`: the first child element with this qualified name.
    ///
    /// ```
    /// use rjabberd::proto::xml::Element;
    /// let m = Element::new("message").with_child(Element::new("body").with_text("test"));
    /// assert_eq!(m.child("body").map(|b| b.text()), Some("test".to_string()));
    /// assert!(m.child("subject").is_none());
    /// ```
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.child_elements().find(|e| e.name == name)
    }

    /// The child elements, text left out (`remove_cdata/1` on the children).
    pub fn child_elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// `get_tag_cdata/1`: the concatenated text of the direct children.
    ///
    /// ```
    /// use rjabberd::proto::xml::Element;
    /// let b = Element::new("body").with_text("a").with_child(Element::new("br")).with_text("b");
    /// assert_eq!(b.text(), "ab");
    /// ```
    pub fn text(&self) -> String {
        text_of(&self.children)
    }

    /// `get_path_s/2`: walks `path` from this element. An empty path gives the element itself; `Elem`
    /// descends into the first child of that name, or ends the walk with `""` when there is none; `Attr`
    /// gives an attribute's value (or `""`) and `Cdata` the current element's text, both ending the walk.
    ///
    /// ```
    /// use rjabberd::proto::xml::{Element, PathItem, PathValue};
    /// let iq = Element::parse("<iq type='get'><query xmlns='jabber:iq:version'><name>rjabberd</name></query></iq>").unwrap();
    /// let name = iq.path(&[PathItem::Elem("query"), PathItem::Elem("name"), PathItem::Cdata]);
    /// assert_eq!(name.as_str(), "rjabberd");
    /// assert_eq!(iq.path(&[PathItem::Elem("query"), PathItem::Attr("xmlns")]).as_str(), "jabber:iq:version");
    /// assert_eq!(iq.path(&[PathItem::Elem("nope"), PathItem::Cdata]).as_str(), "");
    /// assert_eq!(iq.path(&[]), PathValue::Element(&iq));
    /// ```
    pub fn path<'a>(&'a self, path: &[PathItem<'_>]) -> PathValue<'a> {
        let mut current = self;
        for item in path {
            match item {
                PathItem::Elem(name) => match current.child(name) {
                    Some(child) => current = child,
                    None => return PathValue::Text(Cow::Borrowed("")),
                },
                PathItem::Attr(name) => {
                    return PathValue::Text(Cow::Borrowed(current.attr_s(name)));
                }
                PathItem::Cdata => return PathValue::Text(Cow::Owned(current.text())),
            }
        }
        PathValue::Element(current)
    }

    /// `element_to_string/1`: the element serialised, attribute values single-quoted, empty elements
    /// self-closed.
    ///
    /// ```
    /// use rjabberd::proto::xml::Element;
    /// let m = Element::new("message")
    ///     .with_attr("to", "test@conference.example.org")
    ///     .with_attr("type", "groupchat")
    ///     .with_child(Element::new("body").with_text("a < b"));
    /// assert_eq!(
    ///     m.to_xml_string(),
    ///     "<message to='test@conference.example.org' type='groupchat'><body>a &lt; b</body></message>"
    /// );
    /// ```
    pub fn to_xml_string(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        String::from_utf8(out).expect("serialised from strings")
    }

    /// Appends the serialised element to `out`.
    pub fn write_to(&self, out: &mut impl BufMut) {
        // An explicit stack instead of recursion: trees built from the wire are bounded by the parser's
        // depth limit, but trees built by code are not.
        enum Todo<'a> {
            Open(&'a Element),
            Text(&'a str),
            Close(&'a str),
        }
        let mut todo = vec![Todo::Open(self)];
        while let Some(item) = todo.pop() {
            match item {
                Todo::Text(t) => put_escaped_text(out, t),
                Todo::Close(name) => {
                    out.put_slice(b"</");
                    out.put_slice(name.as_bytes());
                    out.put_u8(b'>');
                }
                Todo::Open(el) => {
                    out.put_u8(b'<');
                    out.put_slice(el.name.as_bytes());
                    for (name, value) in &el.attrs {
                        out.put_u8(b' ');
                        out.put_slice(name.as_bytes());
                        out.put_slice(b"='");
                        put_escaped_attr(out, value);
                        out.put_u8(b'\'');
                    }
                    if el.children.is_empty() {
                        out.put_slice(b"/>");
                        continue;
                    }
                    out.put_u8(b'>');
                    todo.push(Todo::Close(&el.name));
                    for child in el.children.iter().rev() {
                        todo.push(match child {
                            Node::Element(e) => Todo::Open(e),
                            Node::Text(t) => Todo::Text(t),
                        });
                    }
                }
            }
        }
    }

    /// `xml_stream:parse_element/1`: parses and checks a complete element from a string (restricted XML
    /// as on a stream; the default [`Limits`]).
    ///
    /// ```
    /// use rjabberd::proto::xml::Element;
    /// let el = Element::parse("<message to='a@b'><body>hi &amp; bye</body></message>").unwrap();
    /// assert_eq!(el.child("body").unwrap().text(), "hi & bye");
    /// assert!(Element::parse("<message>").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Element, XmlError> {
        Ok(parse_element(s.as_bytes(), &Limits::default())?.to_element())
    }

    /// Builds the tree of one element from bytes the parser has checked. `inherited` are the stream-level
    /// declarations the element relies on; each is written on the root unless the root declares that
    /// prefix itself, so the tree means the same outside its stream.
    pub(crate) fn from_checked(bytes: &[u8], inherited: &[(&str, &str)]) -> Element {
        let text = std::str::from_utf8(bytes).expect("checked by the parser");
        let mut stack: Vec<Element> = Vec::new();
        let mut pending_text = String::new();
        let mut i = 0;
        let b = text.as_bytes();
        loop {
            // Character data up to the next markup.
            let next = memchr::memchr(b'<', &b[i..]).map_or(b.len(), |p| i + p);
            if next > i && !stack.is_empty() {
                pending_text.push_str(&unescape_text(&text[i..next]));
            }
            i = next;
            if i >= b.len() {
                break;
            }
            if text[i..].starts_with("<![CDATA[") {
                let end = i + text[i..].find("]]>").expect("checked by the parser");
                let raw = &text[i + 9..end];
                // Line ends are normalised in CDATA too (XML 1.0 §2.11); references are not expanded.
                if raw.contains('\r') {
                    pending_text.push_str(&raw.replace("\r\n", "\n").replace('\r', "\n"));
                } else {
                    pending_text.push_str(raw);
                }
                i = end + 3;
                continue;
            }
            if let Some(parent) = stack.last_mut()
                && !pending_text.is_empty()
            {
                parent
                    .children
                    .push(Node::Text(std::mem::take(&mut pending_text)));
            }
            if b[i + 1] == b'/' {
                let end = i + memchr::memchr(b'>', &b[i..]).expect("checked by the parser");
                i = end + 1;
                let done = stack.pop().expect("checked by the parser");
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(done)),
                    None => return done,
                }
                continue;
            }
            // A start tag: name, then attributes until `>` or `/>`.
            let name_end = i
                + 1
                + b[i + 1..]
                    .iter()
                    .position(|&c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'/' | b'>'))
                    .expect("checked by the parser");
            let mut el = Element::new(&text[i + 1..name_end]);
            let mut p = name_end;
            let empty = loop {
                while matches!(b[p], b' ' | b'\t' | b'\n' | b'\r') {
                    p += 1;
                }
                match b[p] {
                    b'>' => {
                        p += 1;
                        break false;
                    }
                    b'/' => {
                        p += 2;
                        break true;
                    }
                    _ => {
                        let eq = p + memchr::memchr(b'=', &b[p..]).expect("checked by the parser");
                        let name = text[p..eq].trim_end();
                        let mut q = eq + 1;
                        while matches!(b[q], b' ' | b'\t' | b'\n' | b'\r') {
                            q += 1;
                        }
                        let quote = b[q];
                        let close = q
                            + 1
                            + memchr::memchr(quote, &b[q + 1..]).expect("checked by the parser");
                        let value = unescape_attr(&text[q + 1..close]).into_owned();
                        el.attrs.push((name.to_string(), value));
                        p = close + 1;
                    }
                }
            };
            i = p;
            if stack.is_empty() {
                for (prefix, uri) in inherited {
                    let decl = if prefix.is_empty() {
                        "xmlns".to_string()
                    } else {
                        format!("xmlns:{prefix}")
                    };
                    if el.attr(&decl).is_none() {
                        el.attrs.push((decl, (*uri).to_string()));
                    }
                }
            }
            if empty {
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => return el,
                }
            } else {
                stack.push(el);
            }
        }
        stack
            .into_iter()
            .next()
            .expect("checked by the parser: one complete element")
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_xml_string())
    }
}

/// `get_attr/2`: an attribute's value in an attribute list.
///
/// ```
/// use rjabberd::proto::xml::attr_of;
/// let attrs = vec![("to".to_string(), "a@b".to_string())];
/// assert_eq!(attr_of(&attrs, "to"), Some("a@b"));
/// ```
pub fn attr_of<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `get_attr_s/2`: an attribute's value in an attribute list, or `""`.
///
/// ```
/// use rjabberd::proto::xml::attr_of_s;
/// assert_eq!(attr_of_s(&[], "to"), "");
/// ```
pub fn attr_of_s<'a>(attrs: &'a [(String, String)], name: &str) -> &'a str {
    attr_of(attrs, name).unwrap_or("")
}

/// `get_cdata/1`: the concatenated text of a list of nodes.
///
/// ```
/// use rjabberd::proto::xml::{Node, text_of};
/// assert_eq!(text_of(&[Node::Text("a".into()), Node::Text("b".into())]), "ab");
/// ```
pub fn text_of(nodes: &[Node]) -> String {
    nodes
        .iter()
        .filter_map(|n| match n {
            Node::Text(t) => Some(t.as_str()),
            Node::Element(_) => None,
        })
        .collect()
}

/// `remove_cdata/1`: the elements of a list of nodes, text left out.
///
/// ```
/// use rjabberd::proto::xml::{Element, Node, remove_text};
/// let nodes = vec![Node::Text(" ".into()), Node::Element(Element::new("a"))];
/// assert_eq!(remove_text(&nodes), vec![&Element::new("a")]);
/// ```
pub fn remove_text(nodes: &[Node]) -> Vec<&Element> {
    nodes
        .iter()
        .filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
        .collect()
}

//! XEP-0227 (Portable Import/Export Format) for `rjabberd export` and `rjabberd import`: the accounts of
//! a store with their SCRAM credentials, rosters, offline messages, vCards and private XML, to and from
//! files that ejabberd (`ejabberdctl export_piefxis` / `import_piefxis`) and Prosody's migrator read and
//! write. It owns the format (an [`Account`] as a `<user/>` element and back, SCRAM keys in both the
//! plain and ejabberd's doubly base64-encoded forms, and the SHA-256 keys Prosody's migrator labels
//! SHA-1), the file layout (an index `<server-data/>` that `xi:include`s one `<host/>` file per host,
//! as ejabberd writes it; or self-contained files, as Prosody's migrator writes one per account), and
//! the copy between the files and any backend, through the [`Store`] traits alone, using the modules'
//! stored forms of [`super::layout`].
//! An account is checked whole before anything is written for it, and removed again if a write fails,
//! so a bad entry never leaves half an account.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::layout;
use super::{Store, StoreError};
use crate::proto::jid::Jid;
use crate::proto::roster::{NS_ROSTER, RosterItem, Subscription};
use crate::proto::sasl::{Credentials, Hash, ScramCredential};
use crate::proto::xml::{Element, Limits, Node, parse_element};

pub const NS_PIE: &str = "urn:xmpp:pie:0";
/// The namespace of XEP-0227 before 1.0, which older ejabberd releases still write.
pub const NS_PIE_OLD: &str = "http://www.xmpp.org/extensions/xep-0227.html#ns";
pub const NS_SCRAM: &str = "urn:xmpp:pie:0#scram";
const NS_XI: &str = "http://www.w3.org/2001/XInclude";
const NS_VCARD: &str = "vcard-temp";
const NS_PRIVATE: &str = "jabber:iq:private";
const NS_CLIENT: &str = "jabber:client";
/// The index file `export` writes beside the host files.
pub const INDEX_FILE: &str = "server-data.xml";

/// One account as the format carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Account {
    /// The local part, prepared.
    pub name: String,
    /// A plaintext password, when a file holds one (never written by `export`, never stored).
    pub password: Option<String>,
    /// SCRAM credentials as given, one per hash.
    pub scram: Vec<ScramCredential>,
    /// In contact order; items only pending (`pending_in`, not listed) travel as `<presence/>`.
    pub roster: Vec<RosterItem>,
    /// In arrival order, in mod_offline's stored form.
    pub offline: Vec<Element>,
    pub vcard: Option<Element>,
    /// Each with its namespace declared on itself.
    pub private: Vec<Element>,
}

/// What an import or export did for one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSummary {
    pub host: String,
    pub users: u64,
    pub skipped: u64,
    pub failed: u64,
    pub roster_items: u64,
    pub offline: u64,
    pub vcards: u64,
    pub private: u64,
}

impl std::fmt::Display for HostSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} users, {} skipped, {} failed; {} roster items, {} offline messages, {} vCards, {} private items",
            self.host,
            self.users,
            self.skipped,
            self.failed,
            self.roster_items,
            self.offline,
            self.vcards,
            self.private
        )
    }
}

impl HostSummary {
    fn add(&mut self, a: &Account) {
        self.users += 1;
        self.roster_items += a.roster.len() as u64;
        self.offline += a.offline.len() as u64;
        self.vcards += u64::from(a.vcard.is_some());
        self.private += a.private.len() as u64;
    }
}

// ---- The format: an account as a <user/> element and back. ----

/// The namespace an element declares for itself (for a prefixed name, the prefix's), else `inherited`.
fn ns_of<'a>(el: &'a Element, inherited: &'a str) -> &'a str {
    match el.name.split_once(':') {
        Some((p, _)) => el
            .attrs
            .iter()
            .find(|(n, _)| n.strip_prefix("xmlns:") == Some(p))
            .map_or(inherited, |(_, v)| v.as_str()),
        None => el.attr("xmlns").unwrap_or(inherited),
    }
}

fn local_name(el: &Element) -> &str {
    el.name.split_once(':').map_or(el.name.as_str(), |(_, l)| l)
}

fn mechanism_of(hash: Hash) -> &'static str {
    match hash {
        Hash::Sha1 => "SCRAM-SHA-1",
        Hash::Sha256 => "SCRAM-SHA-256",
    }
}

fn key_len(hash: Hash) -> usize {
    match hash {
        Hash::Sha1 => 20,
        Hash::Sha256 => 32,
    }
}

/// A `<scram-credentials/>` element. The keys are the hash's length, which tells the two encodings
/// apart: XEP-0227's (base64 of the bytes) and ejabberd's (base64 of the base64 text it keeps); the salt
/// is read in the same encoding as the keys.
fn scram_from_element(el: &Element) -> Result<Option<ScramCredential>, String> {
    let mechanism = el.attr("mechanism").unwrap_or_default();
    let mut hash = match mechanism {
        "SCRAM-SHA-1" => Hash::Sha1,
        "SCRAM-SHA-256" => Hash::Sha256,
        _ => return Ok(None),
    };
    let field = |name: &str| -> Result<String, String> {
        el.child_elements()
            .find(|c| local_name(c) == name)
            .map(|c| c.text().trim().to_string())
            .ok_or_else(|| format!("{mechanism} credentials without <{name}/>"))
    };
    let b64 = |name: &str, text: &str| {
        B64.decode(text)
            .map_err(|e| format!("{mechanism} <{name}/> is not base64: {e}"))
    };
    let iterations: u32 = field("iter-count")?
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{mechanism} <iter-count/> is not a positive number"))?;
    let (stored, server, salt) = (
        b64("stored-key", &field("stored-key")?)?,
        b64("server-key", &field("server-key")?)?,
        b64("salt", &field("salt")?)?,
    );
    let twice = |name: &str, once: &[u8]| {
        std::str::from_utf8(once)
            .map_err(|_| format!("{mechanism} <{name}/> has the wrong length"))
            .and_then(|t| b64(name, t))
    };
    // Prosody's migrator labels every key SCRAM-SHA-1 (it does not see `password_hash`), also the
    // SHA-256 keys of a server configured with `password_hash = "SHA-256"`. Their length says what
    // they are: no SHA-1 key, in either encoding, is 32 bytes.
    let sha256 = key_len(Hash::Sha256);
    if hash == Hash::Sha1 && stored.len() == sha256 && server.len() == sha256 {
        hash = Hash::Sha256;
    }
    let len = key_len(hash);
    let (stored, server, salt) = if stored.len() == len && server.len() == len {
        (stored, server, salt)
    } else {
        let wrong =
            || format!("{mechanism} keys are neither {len} bytes nor base64 of {len} bytes");
        let (st, se) = match (twice("stored-key", &stored), twice("server-key", &server)) {
            (Ok(st), Ok(se)) if st.len() == len && se.len() == len => (st, se),
            _ => return Err(wrong()),
        };
        (st, se, twice("salt", &salt)?)
    };
    if salt.is_empty() {
        return Err(format!("{mechanism} <salt/> is empty"));
    }
    Ok(Some(ScramCredential {
        hash,
        iterations,
        salt,
        stored_key: stored,
        server_key: server,
    }))
}

/// How SCRAM values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScramEncoding {
    /// XEP-0227's: base64 of the bytes (Prosody and Tigase read this).
    #[default]
    Xep0227,
    /// ejabberd's (23.01 writes and reads it): base64 of the base64 text it keeps.
    Ejabberd,
}

fn scram_to_element(c: &ScramCredential, enc: ScramEncoding) -> Element {
    let b64 = |v: &[u8]| match enc {
        ScramEncoding::Xep0227 => B64.encode(v),
        ScramEncoding::Ejabberd => B64.encode(B64.encode(v)),
    };
    let text = |name: &str, v: String| Element::new(name).with_text(v);
    Element::new("scram-credentials")
        .with_attr("xmlns", NS_SCRAM)
        .with_attr("mechanism", mechanism_of(c.hash))
        .with_child(text("iter-count", c.iterations.to_string()))
        .with_child(text("salt", b64(&c.salt)))
        .with_child(text("server-key", b64(&c.server_key)))
        .with_child(text("stored-key", b64(&c.stored_key)))
}

fn bare_jid(s: &str) -> Result<String, String> {
    let jid = Jid::parse(s).map_err(|e| format!("`{s}` is not a JID: {e}"))?;
    if jid.resource().is_some() {
        return Err(format!("`{s}` is not a bare JID"));
    }
    Ok(jid.as_str().to_string())
}

fn roster_item_from_element(el: &Element) -> Result<RosterItem, String> {
    let jid = bare_jid(
        el.attr("jid")
            .ok_or("a roster item without a jid attribute")?,
    )?;
    let subscription = match el.attr("subscription") {
        None => Subscription::None,
        Some(s) => Subscription::parse(s).ok_or_else(|| {
            format!("roster item {jid}: subscription `{s}` is not none, to, from or both")
        })?,
    };
    let mut groups: Vec<String> = Vec::new();
    for g in el.child_elements().filter(|c| local_name(c) == "group") {
        let g = g.text();
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(RosterItem {
        jid,
        name: el
            .attr("name")
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        groups,
        subscription,
        ask: el.attr("ask") == Some("subscribe"),
        pending_in: false,
        approved: matches!(el.attr("approved"), Some("true" | "1")),
        // rjabberd's own mark for an item kept only for its subscription state (see `to_element`).
        listed: el.attr("listed") != Some("false"),
    })
}

impl Account {
    /// Reads a `<user/>` of `host`: the whole account or what is wrong with it.
    pub fn from_element(host: &str, el: &Element, inherited_ns: &str) -> Result<Account, String> {
        let raw = el.attr("name").ok_or("a user without a name attribute")?;
        let jid = Jid::parse(&format!("{raw}@{host}"))
            .map_err(|e| format!("user `{raw}`: not a valid user name: {e}"))?;
        let name = jid.local().unwrap_or_default().to_string();
        let fail = |what: String| format!("user {name}: {what}");
        let mut a = Account {
            name: name.clone(),
            password: el
                .attr("password")
                .filter(|p| !p.is_empty())
                .map(str::to_string),
            ..Account::default()
        };
        let mut pending_in = Vec::new();
        for child in el.child_elements() {
            match (local_name(child), ns_of(child, inherited_ns)) {
                ("scram-credentials", NS_SCRAM) => {
                    if let Some(c) = scram_from_element(child).map_err(fail)? {
                        a.scram.retain(|o| o.hash != c.hash);
                        a.scram.push(c);
                    }
                }
                ("query", NS_ROSTER) => {
                    for item in child.child_elements().filter(|c| local_name(c) == "item") {
                        let item = roster_item_from_element(item).map_err(fail)?;
                        a.roster.retain(|o| o.jid != item.jid);
                        a.roster.push(item);
                    }
                }
                ("offline-messages", _) => {
                    for m in child.child_elements() {
                        if local_name(m) != "message" {
                            return Err(fail(format!("<{}/> among offline messages", m.name)));
                        }
                        let mut m = m.clone();
                        if !m.name.contains(':') && m.attr("xmlns").is_none() {
                            m.set_attr("xmlns", NS_CLIENT);
                        }
                        a.offline.push(m);
                    }
                }
                ("vCard", NS_VCARD) => {
                    let mut card = child.clone();
                    // As mod_vcard stores it: the namespace declared first.
                    card.attrs.retain(|(n, _)| n != "xmlns");
                    card.attrs.insert(0, ("xmlns".into(), NS_VCARD.into()));
                    a.vcard = Some(card);
                }
                ("query", NS_PRIVATE) => {
                    for p in child.child_elements() {
                        let ns = ns_of(p, NS_PRIVATE);
                        if matches!(ns, NS_PRIVATE | NS_CLIENT | "jabber:server" | NS_PIE) {
                            return Err(fail(format!(
                                "private element <{}/> has no namespace of its own",
                                p.name
                            )));
                        }
                        let mut p = p.clone();
                        match p.name.split_once(':') {
                            Some((prefix, _)) => p.set_attr(format!("xmlns:{prefix}"), ns),
                            None => p.set_attr("xmlns", ns),
                        }
                        let key = layout::private_key(ns, local_name(&p));
                        a.private
                            .retain(|o| layout::private_key(ns_of(o, ""), local_name(o)) != key);
                        a.private.push(p);
                    }
                }
                ("presence", _) if child.attr("type") == Some("subscribe") => {
                    let from = child.attr("from").ok_or_else(|| {
                        fail("a subscription request without a from attribute".into())
                    })?;
                    let from = Jid::parse(from)
                        .map_err(|e| fail(format!("subscription request from `{from}`: {e}")))?;
                    pending_in.push(from.bare_str().to_string());
                }
                // Privacy lists, PEP, MAM and the like: not carried (see docs/storage.md).
                _ => {}
            }
        }
        for from in pending_in {
            match a.roster.iter_mut().find(|i| i.jid == from) {
                Some(i) => i.pending_in = true,
                None => a.roster.push(RosterItem {
                    jid: from,
                    pending_in: true,
                    listed: false,
                    ..RosterItem::default()
                }),
            }
        }
        Ok(a)
    }

    /// The `<user/>` element (in the `<host/>`'s default namespace).
    pub fn to_element(&self) -> Element {
        self.to_element_with(ScramEncoding::Xep0227)
    }

    /// The `<user/>` element, with SCRAM values encoded as `enc` says.
    pub fn to_element_with(&self, enc: ScramEncoding) -> Element {
        let mut user = Element::new("user").with_attr("name", self.name.clone());
        if let Some(p) = &self.password {
            user.set_attr("password", p.clone());
        }
        for c in &self.scram {
            user = user.with_child(scram_to_element(c, enc));
        }
        if !self.offline.is_empty() {
            let mut o = Element::new("offline-messages");
            o.children = self.offline.iter().cloned().map(Node::Element).collect();
            user = user.with_child(o);
        }
        if let Some(v) = &self.vcard {
            user = user.with_child(v.clone());
        }
        let listed: Vec<&RosterItem> = self
            .roster
            .iter()
            .filter(|i| i.listed || !pending_only(i))
            .collect();
        if !listed.is_empty() {
            let mut q = Element::new("query").with_attr("xmlns", NS_ROSTER);
            for i in listed {
                let mut el = i.to_element();
                if !i.listed {
                    el.set_attr("listed", "false");
                }
                q = q.with_child(el);
            }
            user = user.with_child(q);
        }
        if !self.private.is_empty() {
            let mut q = Element::new("query").with_attr("xmlns", NS_PRIVATE);
            q.children = self.private.iter().cloned().map(Node::Element).collect();
            user = user.with_child(q);
        }
        // XEP-0227 §4.8: subscription requests the user has not answered.
        for i in self.roster.iter().filter(|i| i.pending_in) {
            user = user.with_child(
                Element::new("presence")
                    .with_attr("xmlns", NS_CLIENT)
                    .with_attr("from", i.jid.clone())
                    .with_attr("type", "subscribe"),
            );
        }
        user
    }
}

/// Whether an item exists only for an unanswered subscription request: it travels as `<presence/>`.
fn pending_only(i: &RosterItem) -> bool {
    RosterItem {
        pending_in: false,
        ..i.clone()
    }
    .is_vacant()
}

/// The credentials to store for an imported account. A plaintext password gives both hashes (with
/// `iterations`, as `rjabberd user add`); SCRAM keys are kept as given. The store keeps one salt and
/// iteration count for both hashes: a hash the file lacks (ejabberd keeps one) gets empty keys, which
/// match no proof, so that mechanism fails for the account while the other works.
pub fn credentials_for(a: &Account, iterations: u32) -> Result<(Credentials, Vec<String>), String> {
    let mut notes = Vec::new();
    if let Some(p) = &a.password {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
        let c = Credentials::from_password(p, &salt, iterations)
            .map_err(|_| format!("user {}: the password is not a valid OpaqueString", a.name))?;
        return Ok((c, notes));
    }
    let find = |h: Hash| a.scram.iter().find(|c| c.hash == h).cloned();
    let empty = |h: Hash, like: &ScramCredential| ScramCredential {
        hash: h,
        iterations: like.iterations,
        salt: like.salt.clone(),
        stored_key: Vec::new(),
        server_key: Vec::new(),
    };
    let c = match (find(Hash::Sha1), find(Hash::Sha256)) {
        (Some(s1), Some(s256)) if s1.salt == s256.salt && s1.iterations == s256.iterations => {
            Credentials {
                sha1: s1,
                sha256: s256,
            }
        }
        (Some(_), Some(s256)) => {
            notes.push("SCRAM-SHA-1 keys dropped (a salt other than SCRAM-SHA-256's)".into());
            Credentials {
                sha1: empty(Hash::Sha1, &s256),
                sha256: s256,
            }
        }
        (Some(s1), None) => {
            notes.push(
                "SCRAM-SHA-1 only: SCRAM-SHA-256 logins fail until a PLAIN login or a password set makes its keys".into(),
            );
            Credentials {
                sha256: empty(Hash::Sha256, &s1),
                sha1: s1,
            }
        }
        (None, Some(s256)) => {
            notes.push("SCRAM-SHA-256 only: SCRAM-SHA-1 logins fail until a PLAIN login or a password set makes its keys".into());
            Credentials {
                sha1: empty(Hash::Sha1, &s256),
                sha256: s256,
            }
        }
        (None, None) => {
            notes.push("no password or SCRAM keys: no login until `rjabberd user passwd`".into());
            let none = ScramCredential {
                hash: Hash::Sha256,
                iterations,
                salt: vec![0; 16],
                stored_key: Vec::new(),
                server_key: Vec::new(),
            };
            Credentials {
                sha1: empty(Hash::Sha1, &none),
                sha256: none,
            }
        }
    };
    Ok((c, notes))
}

// ---- The store side, through the traits. ----

fn parse_stored(what: &str, bytes: &[u8]) -> Result<Element, StoreError> {
    let text = std::str::from_utf8(bytes).map_err(|e| StoreError(format!("{what}: {e}")))?;
    Element::parse(text).map_err(|e| StoreError(format!("{what}: {e}")))
}

/// An account as the store holds it.
pub fn read_account(db: &dyn Store, host: &str, name: &str) -> Result<Account, StoreError> {
    let who = format!("{name}@{host}");
    let creds = db
        .credentials(host, name)?
        .ok_or_else(|| StoreError(format!("{who}: no such account")))?;
    let scram = [creds.sha1, creds.sha256]
        .into_iter()
        .filter(|c| !c.stored_key.is_empty())
        .collect();
    let (_, roster) = db.roster(host, name)?;
    let offline = db
        .data_all(host, name, layout::OFFLINE)?
        .iter()
        .map(|(_, v)| parse_stored(&format!("{who}'s offline message"), v))
        .collect::<Result<_, _>>()?;
    let vcard = db
        .data_get(host, name, layout::VCARD, layout::VCARD_KEY)?
        .map(|v| parse_stored(&format!("{who}'s vCard"), &v))
        .transpose()?;
    let private = db
        .data_all(host, name, layout::PRIVATE)?
        .iter()
        .map(|(_, v)| parse_stored(&format!("{who}'s private XML"), v))
        .collect::<Result<_, _>>()?;
    Ok(Account {
        name: name.to_string(),
        password: None,
        scram,
        roster,
        offline,
        vcard,
        private,
    })
}

/// Writes a new account (which must not exist) and its data; on a failure removes what was written.
pub fn write_account(
    db: &dyn Store,
    host: &str,
    a: &Account,
    creds: &Credentials,
) -> Result<(), StoreError> {
    db.add(host, &a.name, creds)?;
    let rest = || -> Result<(), StoreError> {
        for item in &a.roster {
            db.roster_put(host, &a.name, item)?;
        }
        if let Some(v) = &a.vcard {
            let value = Some(v.to_xml_string().into_bytes());
            db.data_put(
                host,
                &a.name,
                layout::VCARD,
                &[(layout::VCARD_KEY.into(), value)],
            )?;
        }
        if !a.private.is_empty() {
            let values: Vec<(String, Option<Vec<u8>>)> = a
                .private
                .iter()
                .map(|p| {
                    let key = layout::private_key(ns_of(p, ""), local_name(p));
                    (key, Some(p.to_xml_string().into_bytes()))
                })
                .collect();
            db.data_put(host, &a.name, layout::PRIVATE, &values)?;
        }
        if !a.offline.is_empty() {
            // Keys in mod_offline's scheme, from now on: after anything kept already, in file order.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let values: Vec<(String, Option<Vec<u8>>)> = a
                .offline
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let key = layout::arrival_key(now, i as u32);
                    (key, Some(m.to_xml_string().into_bytes()))
                })
                .collect();
            db.data_put(host, &a.name, layout::OFFLINE, &values)?;
        }
        Ok(())
    };
    rest().inspect_err(|_| {
        let _ = db.delete(host, &a.name);
    })
}

// ---- Files. ----

const HEAD: &str = "<?xml version='1.0' encoding='UTF-8'?>\n";

fn host_file_name(host: &str) -> String {
    format!("{}.xml", host.replace(['/', '\\'], "_"))
}

/// Writes `dir/server-data.xml`, which includes one `dir/<host>.xml` per host, each with every account
/// of that host. Refuses to replace files that exist. The index is written last, so it names only
/// complete host files.
pub fn export(
    db: &dyn Store,
    dir: &Path,
    hosts: &[String],
    enc: ScramEncoding,
) -> Result<Vec<HostSummary>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let index = dir.join(INDEX_FILE);
    let files: Vec<PathBuf> = hosts.iter().map(|h| dir.join(host_file_name(h))).collect();
    for f in files.iter().chain([&index]) {
        if f.exists() {
            return Err(format!(
                "{} exists: export into an empty directory",
                f.display()
            ));
        }
    }
    let mut summaries = Vec::new();
    for (host, file) in hosts.iter().zip(&files) {
        let mut sum = HostSummary {
            host: host.clone(),
            ..HostSummary::default()
        };
        let f = std::fs::File::create(file)
            .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
        let mut out = std::io::BufWriter::new(f);
        let head = Element::new("host")
            .with_attr("xmlns", NS_PIE)
            .with_attr("xmlns:xi", NS_XI)
            .with_attr("jid", host.clone())
            .to_xml_string();
        let open = head.trim_end_matches("/>").to_string() + ">\n";
        let io = |e: std::io::Error| format!("cannot write {}: {e}", file.display());
        out.write_all(HEAD.as_bytes()).map_err(io)?;
        out.write_all(open.as_bytes()).map_err(io)?;
        for (_, name) in db.list(Some(host)).map_err(|e| e.to_string())? {
            let a = read_account(db, host, &name).map_err(|e| e.to_string())?;
            sum.add(&a);
            out.write_all(a.to_element_with(enc).to_xml_string().as_bytes())
                .map_err(io)?;
            out.write_all(b"\n").map_err(io)?;
        }
        out.write_all(b"</host>\n").map_err(io)?;
        out.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        summaries.push(sum);
    }
    let mut text = String::from(HEAD);
    text.push_str(&format!(
        "<server-data xmlns='{NS_PIE}' xmlns:xi='{NS_XI}'>\n"
    ));
    for h in hosts {
        let href = Element::new("xi:include").with_attr("href", host_file_name(h));
        text.push_str(&href.to_xml_string());
        text.push('\n');
    }
    text.push_str("</server-data>\n");
    std::fs::write(&index, text).map_err(|e| format!("cannot write {}: {e}", index.display()))?;
    Ok(summaries)
}

/// Reads one file as a whole document.
fn load(path: &Path) -> Result<Element, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let limits = Limits {
        max_stanza_bytes: usize::MAX,
        max_depth: 256,
        max_attrs: 256,
        max_ns_decls: 64,
    };
    parse_element(&bytes, &limits)
        .map(|s| s.to_element())
        .map_err(|e| format!("{}: not a well-formed XML document: {e}", path.display()))
}

/// A `<host/>` to import and the file it came from.
struct HostEntry {
    file: PathBuf,
    host: Element,
    ns: String,
}

fn is_pie(ns: &str) -> bool {
    ns == NS_PIE || ns == NS_PIE_OLD
}

/// A file's identity for `seen` and `parsed`: how an index names a file need not be how the directory
/// listing did.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// The hosts of a file: its root `<host/>`, or those of its `<server-data/>`, included files followed.
/// A file already in `parsed` (by [`canonical`] path) is taken from there rather than read again.
fn collect(
    path: &Path,
    parsed: &mut HashMap<PathBuf, Element>,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<HostEntry>,
) -> Result<(), String> {
    let key = canonical(path);
    if !seen.insert(key.clone()) {
        return Ok(());
    }
    let root = match parsed.remove(&key) {
        Some(root) => root,
        None => load(path)?,
    };
    collect_root(path, root, parsed, seen, out)
}

fn collect_root(
    path: &Path,
    root: Element,
    parsed: &mut HashMap<PathBuf, Element>,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<HostEntry>,
) -> Result<(), String> {
    let ns = ns_of(&root, "").to_string();
    match local_name(&root) {
        "host" if is_pie(&ns) => out.push(HostEntry {
            file: path.to_path_buf(),
            host: root,
            ns,
        }),
        "server-data" if is_pie(&ns) => {
            for child in root.child_elements() {
                match local_name(child) {
                    // The `xi` prefix is declared on the root (ejabberd) or on the element.
                    "include" if is_xinclude(&root, child) => {
                        let href = child.attr("href").ok_or_else(|| {
                            format!("{}: <xi:include/> without href", path.display())
                        })?;
                        let target = path.parent().unwrap_or(Path::new(".")).join(href);
                        collect(&target, parsed, seen, out)?;
                    }
                    "host" => out.push(HostEntry {
                        file: path.to_path_buf(),
                        host: child.clone(),
                        ns: ns_of(child, &ns).to_string(),
                    }),
                    other => {
                        return Err(format!("{}: unexpected <{other}/>", path.display()));
                    }
                }
            }
        }
        other => {
            return Err(format!(
                "{}: <{other}/> is not XEP-0227's <server-data/> or <host/> (namespace {NS_PIE})",
                path.display()
            ));
        }
    }
    Ok(())
}

fn is_xinclude(root: &Element, child: &Element) -> bool {
    local_name(child) == "include"
        && (ns_of(child, ns_of(root, "")) == NS_XI
            || child
                .name
                .split_once(':')
                .is_some_and(|(p, _)| root.attr(&format!("xmlns:{p}")) == Some(NS_XI)))
}

fn is_index(root: &Element) -> bool {
    local_name(root) == "server-data" && root.child_elements().any(|c| is_xinclude(root, c))
}

/// The hosts in `path`: a file, or a directory holding one export (one index naming host files, as
/// ejabberd and `rjabberd export` write it, or files with the hosts themselves, as Prosody's migrator
/// writes them, one per account).
fn hosts_in(path: &Path) -> Result<Vec<HostEntry>, String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    if !path.is_dir() {
        collect(path, &mut HashMap::new(), &mut seen, &mut out)?;
        return Ok(out);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    files.sort();
    let mut roots = BTreeMap::new();
    for f in files {
        roots.insert(f.clone(), load(&f)?);
    }
    // Only a <server-data/> that includes files is an index: Prosody's migrator writes one
    // self-contained <server-data/> per account (`<user>@<host>.xml`), and a directory of those is
    // one export whose files are all imported.
    let indexes: Vec<&PathBuf> = roots
        .iter()
        .filter(|(_, r)| is_index(r))
        .map(|(f, _)| f)
        .collect();
    if indexes.len() > 1 {
        return Err(format!(
            "{} holds several exports ({}): name the index file to import",
            path.display(),
            indexes
                .iter()
                .map(|f| f.file_name().unwrap_or_default().to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    match indexes.first().map(|f| (*f).clone()) {
        Some(index) => {
            let files: Vec<PathBuf> = roots.keys().cloned().collect();
            // Each file was parsed once above; the index's includes take them from here.
            let mut parsed: HashMap<PathBuf, Element> =
                roots.into_iter().map(|(f, r)| (canonical(&f), r)).collect();
            collect(&index, &mut parsed, &mut seen, &mut out)?;
            // A file the index does not name would otherwise be left out without a word.
            if let Some(stray) = files.iter().find(|f| !seen.contains(&canonical(f))) {
                return Err(format!(
                    "{}: not included by the index {}: import one file at a time, or move it out",
                    stray.display(),
                    index.display()
                ));
            }
        }
        None => {
            for (f, root) in roots {
                collect_root(&f, root, &mut HashMap::new(), &mut seen, &mut out)?;
            }
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no XEP-0227 files", path.display()));
    }
    Ok(out)
}

/// How `import` treats what it finds.
pub struct ImportOptions {
    /// Replace accounts that exist (all their data), instead of skipping them.
    pub overwrite: bool,
    /// For accounts with a plaintext password in the file.
    pub scram_iterations: u32,
    /// The configured hosts: a host not among them is refused.
    pub hosts: Vec<String>,
}

/// Imports every account of `path` (a file or a directory). Says what it does with each account
/// through `say`; returns the summary per host, and whether anything failed. An error that stops the
/// whole import (an unreadable or malformed file) is returned before anything is written.
pub fn import(
    db: &dyn Store,
    path: &Path,
    opts: &ImportOptions,
    say: &mut dyn FnMut(String),
) -> Result<(Vec<HostSummary>, bool), String> {
    let entries = hosts_in(path)?;
    let mut summaries: Vec<HostSummary> = Vec::new();
    let mut failed = false;
    for e in entries {
        let file = e.file.display().to_string();
        let given = e
            .host
            .attr("jid")
            .ok_or_else(|| format!("{file}: a <host/> without a jid attribute"))?;
        let Some(host) = opts
            .hosts
            .iter()
            .find(|h| h.eq_ignore_ascii_case(given))
            .cloned()
        else {
            return Err(format!(
                "{file}: host {given} is not configured here (add a [[host]] for it first)"
            ));
        };
        let idx = match summaries.iter().position(|s| s.host == host) {
            Some(i) => i,
            None => {
                summaries.push(HostSummary {
                    host: host.clone(),
                    ..HostSummary::default()
                });
                summaries.len() - 1
            }
        };
        let sum = &mut summaries[idx];
        for user in e.host.child_elements().filter(|c| local_name(c) == "user") {
            let account = match Account::from_element(&host, user, &e.ns) {
                Ok(a) => a,
                Err(what) => {
                    say(format!("{file}: host {host}: {what}: not imported"));
                    sum.failed += 1;
                    failed = true;
                    continue;
                }
            };
            let who = format!("{}@{host}", account.name);
            let step = || -> Result<Option<Vec<String>>, String> {
                let (creds, notes) = credentials_for(&account, opts.scram_iterations)?;
                let exists = db.exists(&host, &account.name).map_err(|e| e.to_string())?;
                if exists && !opts.overwrite {
                    return Ok(None);
                }
                // What --overwrite replaces, put back if the new account cannot be written.
                let old = if exists {
                    let old = read_account(db, &host, &account.name).map_err(|e| e.to_string())?;
                    let old_creds = db
                        .credentials(&host, &account.name)
                        .map_err(|e| e.to_string())?;
                    db.delete(&host, &account.name).map_err(|e| e.to_string())?;
                    old_creds.map(|c| (old, c))
                } else {
                    None
                };
                write_account(db, &host, &account, &creds).map_err(|e| {
                    let restored = old
                        .as_ref()
                        .is_some_and(|(o, c)| write_account(db, &host, o, c).is_ok());
                    format!(
                        "{e}{}",
                        if restored {
                            " (the old account is kept)"
                        } else {
                            ""
                        }
                    )
                })?;
                Ok(Some(notes))
            };
            match step() {
                Ok(Some(notes)) => {
                    sum.add(&account);
                    let mut line = format!(
                        "{who}: imported ({} roster items, {} offline messages, {} vCard, {} private items)",
                        account.roster.len(),
                        account.offline.len(),
                        u8::from(account.vcard.is_some()),
                        account.private.len()
                    );
                    for n in notes {
                        line.push_str("; ");
                        line.push_str(&n);
                    }
                    say(line);
                }
                Ok(None) => {
                    sum.skipped += 1;
                    say(format!("{who}: exists, skipped (--overwrite replaces it)"));
                }
                Err(what) => {
                    sum.failed += 1;
                    failed = true;
                    say(format!("{file}: {who}: not imported: {what}"));
                }
            }
        }
    }
    Ok((summaries, failed))
}

#[cfg(test)]
mod tests;

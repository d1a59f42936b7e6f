//! JIDs (RFC 7622): parsing, PRECIS preparation and comparison. A [`Jid`] is always in its canonical
//! form, so two JIDs are equal exactly when their strings are: the localpart enforced with the
//! UsernameCaseMapped profile (RFC 8265 §3.3), the resourcepart with OpaqueString (RFC 8265 §4.2), the
//! domainpart lower-cased and, for internationalised names, mapped through IDNA (UTS #46) to its U-label
//! form. The common all-ASCII case is checked by hand and costs one scan; anything else goes to the
//! `precis-profiles` and `idna` crates.

use std::fmt;

use precis_profiles::precis_core::profile::PrecisFastInvocation;
use precis_profiles::{OpaqueString, UsernameCaseMapped};

/// RFC 7622 §3.2, §3.3, §3.4: each part is at most 1023 octets once prepared.
const MAX_PART: usize = 1023;

/// Why a string is not a JID. Each maps to the `jid-malformed` stanza error; the variant says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JidError {
    EmptyLocal,
    EmptyDomain,
    EmptyResource,
    /// A part is longer than 1023 octets.
    TooLong,
    /// The localpart contains a character RFC 7622 §3.3.1 excludes (`"&'/:<>@`) or that
    /// UsernameCaseMapped disallows (spaces, controls, …).
    BadLocal,
    /// The domainpart is not a valid domain name, IPv4 address or bracketed IPv6 address.
    BadDomain,
    /// The resourcepart contains a character OpaqueString disallows (controls, …).
    BadResource,
}

impl fmt::Display for JidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JidError::EmptyLocal => "empty localpart",
            JidError::EmptyDomain => "empty domainpart",
            JidError::EmptyResource => "empty resourcepart",
            JidError::TooLong => "a part is longer than 1023 bytes",
            JidError::BadLocal => "localpart not allowed by RFC 7622 (UsernameCaseMapped)",
            JidError::BadDomain => "domainpart is not a valid domain name or IP address",
            JidError::BadResource => "resourcepart not allowed by RFC 7622 (OpaqueString)",
        })
    }
}

impl std::error::Error for JidError {}

/// A prepared JID: `[local@]domain[/resource]`, stored as one string with the part boundaries.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    text: String,
    /// Byte length of the localpart; 0 when there is none (an empty localpart is not a JID).
    local_len: u16,
    /// Byte offset of the `/` before the resourcepart, or `text.len()` when there is none.
    slash: u16,
}

impl Jid {
    /// Parses and prepares a JID as received on the wire.
    ///
    /// ```
    /// use rjabberd::proto::jid::Jid;
    /// let j = Jid::parse("Juliet@Example.COM/Balcony").unwrap();
    /// assert_eq!(j.as_str(), "juliet@example.com/Balcony");
    /// assert_eq!(j.local(), Some("juliet"));
    /// assert_eq!(j.domain(), "example.com");
    /// assert_eq!(j.resource(), Some("Balcony"));
    /// assert_eq!(j.bare().as_str(), "juliet@example.com");
    /// ```
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        // RFC 7622 §3.1: the resource starts at the first `/`, the localpart ends at the first `@`
        // before it.
        let (rest, resource) = match s.find('/') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let (local, domain) = match rest.find('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let local = local.map(prep_local).transpose()?;
        let domain = prep_domain(domain)?;
        let resource = resource.map(prep_resource).transpose()?;
        Ok(Self::assemble(
            local.as_deref(),
            &domain,
            resource.as_deref(),
        ))
    }

    /// Builds a JID from parts, preparing each.
    pub fn from_parts(
        local: Option<&str>,
        domain: &str,
        resource: Option<&str>,
    ) -> Result<Jid, JidError> {
        let local = local.map(prep_local).transpose()?;
        let domain = prep_domain(domain)?;
        let resource = resource.map(prep_resource).transpose()?;
        Ok(Self::assemble(
            local.as_deref(),
            &domain,
            resource.as_deref(),
        ))
    }

    fn assemble(local: Option<&str>, domain: &str, resource: Option<&str>) -> Jid {
        let mut text = String::with_capacity(
            local.map_or(0, |l| l.len() + 1) + domain.len() + resource.map_or(0, |r| r.len() + 1),
        );
        if let Some(l) = local {
            text.push_str(l);
            text.push('@');
        }
        text.push_str(domain);
        let slash = text.len();
        if let Some(r) = resource {
            text.push('/');
            text.push_str(r);
        }
        Jid {
            local_len: local.map_or(0, |l| l.len() as u16),
            slash: slash as u16,
            text,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn local(&self) -> Option<&str> {
        (self.local_len > 0).then(|| &self.text[..self.local_len as usize])
    }

    pub fn domain(&self) -> &str {
        let start = if self.local_len > 0 {
            self.local_len as usize + 1
        } else {
            0
        };
        &self.text[start..self.slash as usize]
    }

    pub fn resource(&self) -> Option<&str> {
        ((self.slash as usize) < self.text.len()).then(|| &self.text[self.slash as usize + 1..])
    }

    pub fn is_bare(&self) -> bool {
        self.slash as usize == self.text.len()
    }

    /// `local@domain` (or `domain`) without the resource.
    pub fn bare(&self) -> Jid {
        Jid {
            text: self.bare_str().to_string(),
            local_len: self.local_len,
            slash: self.slash,
        }
    }

    /// The bare part as a string slice, without allocating.
    pub fn bare_str(&self) -> &str {
        &self.text[..self.slash as usize]
    }

    /// This JID's bare part with `resource` (prepared) as the resourcepart.
    pub fn with_resource(&self, resource: &str) -> Result<Jid, JidError> {
        let resource = prep_resource(resource)?;
        let mut text = String::with_capacity(self.slash as usize + 1 + resource.len());
        text.push_str(self.bare_str());
        text.push('/');
        text.push_str(&resource);
        Ok(Jid {
            text,
            local_len: self.local_len,
            slash: self.slash,
        })
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jid({})", self.text)
    }
}

impl std::str::FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Jid::parse(s)
    }
}

/// A JID borrowed from a string that is already canonical, so that routing needs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JidView<'a> {
    pub text: &'a str,
    pub local: Option<&'a str>,
    pub domain: &'a str,
    pub resource: Option<&'a str>,
}

impl<'a> JidView<'a> {
    /// A view of `s` when it is an all-ASCII JID already in canonical form (lower-case local and domain
    /// parts, nothing PRECIS would map); `None` means "run [`Jid::parse`]", not "invalid".
    pub fn canonical(s: &'a str) -> Option<JidView<'a>> {
        // Byte scans: these strings are short, and the char searchers' set-up cost more than the
        // search on the message path.
        let bytes = s.as_bytes();
        let slash = position(bytes, b'/');
        let rest_end = slash.unwrap_or(bytes.len());
        let (local, domain) = match position(&bytes[..rest_end], b'@') {
            Some(i) => (Some(&s[..i]), &s[i + 1..rest_end]),
            None => (None, &s[..rest_end]),
        };
        let resource = slash.map(|i| &s[i + 1..]);
        let local_ok = local.is_none_or(|l| {
            !l.is_empty()
                && l.len() <= MAX_PART
                && l.bytes().all(|b| {
                    (0x21..0x7f).contains(&b)
                        && !b.is_ascii_uppercase()
                        && !matches!(b, b'"' | b'&' | b'\'' | b'/' | b':' | b'<' | b'>' | b'@')
                })
        });
        let domain_ok = !domain.is_empty()
            && domain.len() <= MAX_PART
            && !domain.ends_with('.')
            && domain.as_bytes().split(|&b| b == b'.').all(|l| {
                let a_label = l.len() >= 4 && l[..4].eq_ignore_ascii_case(b"xn--");
                let shape_ok = !l.is_empty()
                    && l.len() <= 63
                    && l.first() != Some(&b'-')
                    && l.last() != Some(&b'-');
                shape_ok
                    && !a_label
                    && l.iter()
                        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        let resource_ok = resource.is_none_or(|r| {
            !r.is_empty() && r.len() <= MAX_PART && r.bytes().all(|b| (0x20..0x7f).contains(&b))
        });
        (local_ok && domain_ok && resource_ok).then_some(JidView {
            text: s,
            local,
            domain,
            resource,
        })
    }

    /// `local@domain` or `domain`.
    pub fn bare(&self) -> &'a str {
        match self.resource {
            Some(r) => &self.text[..self.text.len() - r.len() - 1],
            None => self.text,
        }
    }
}

impl Jid {
    /// This JID as a borrowed view.
    pub fn view(&self) -> JidView<'_> {
        JidView {
            text: &self.text,
            local: self.local(),
            domain: self.domain(),
            resource: self.resource(),
        }
    }
}

/// Prepares a localpart (also a SASL username): UsernameCaseMapped, then RFC 7622 §3.3.1's exclusions.
pub fn prep_local(s: &str) -> Result<String, JidError> {
    if s.is_empty() {
        return Err(JidError::EmptyLocal);
    }
    let excluded = |c: char| matches!(c, '"' | '&' | '\'' | '/' | ':' | '<' | '>' | '@');
    let prepared = if s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        // ASCII fast path: IdentifierClass allows every printable ASCII character but space, and case
        // mapping is lower-casing.
        s.to_ascii_lowercase()
    } else {
        UsernameCaseMapped::enforce(s)
            .map_err(|_| JidError::BadLocal)?
            .into_owned()
    };
    if prepared.is_empty() {
        return Err(JidError::EmptyLocal);
    }
    if prepared.len() > MAX_PART {
        return Err(JidError::TooLong);
    }
    if prepared.contains(excluded) {
        return Err(JidError::BadLocal);
    }
    Ok(prepared)
}

/// Prepares a resourcepart with OpaqueString.
pub fn prep_resource(s: &str) -> Result<String, JidError> {
    if s.is_empty() {
        return Err(JidError::EmptyResource);
    }
    let prepared = if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        // ASCII fast path: FreeformClass allows every printable ASCII character and space; OpaqueString
        // maps nothing in ASCII.
        s.to_string()
    } else {
        OpaqueString::enforce(s)
            .map_err(|_| JidError::BadResource)?
            .into_owned()
    };
    if prepared.is_empty() {
        return Err(JidError::EmptyResource);
    }
    if prepared.len() > MAX_PART {
        return Err(JidError::TooLong);
    }
    Ok(prepared)
}

/// Prepares a domainpart: a trailing dot is dropped (RFC 7622 §3.2), IP literals are kept as written,
/// names are lower-cased and internationalised names mapped to U-labels.
pub fn prep_domain(s: &str) -> Result<String, JidError> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err(JidError::EmptyDomain);
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<core::net::Ipv6Addr>()
            .map(|_| s.to_string())
            .map_err(|_| JidError::BadDomain);
    }
    // A-labels (`xn--…`) take the IDNA path so that they compare equal to their U-label form.
    let ascii_name = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s
            .split('.')
            .any(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case("xn--"));
    let prepared = if ascii_name {
        let lower = s.to_ascii_lowercase();
        let labels_ok = lower
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'));
        if !labels_ok {
            return Err(JidError::BadDomain);
        }
        lower
    } else {
        // UTS #46 processing validates and maps; the JID keeps the Unicode form (RFC 7622 §3.2.2).
        idna::domain_to_ascii_strict(s).map_err(|_| JidError::BadDomain)?;
        let (unicode, result) = idna::domain_to_unicode(s);
        result.map_err(|_| JidError::BadDomain)?;
        unicode
    };
    if prepared.len() > MAX_PART {
        return Err(JidError::TooLong);
    }
    Ok(prepared)
}

/// The first `byte` in `bytes`.
fn position(bytes: &[u8], byte: u8) -> Option<usize> {
    bytes.iter().position(|&b| b == byte)
}

/// The bare part of a JID string (everything before the resource), without preparing it.
pub fn bare_of(jid: &str) -> &str {
    position(jid.as_bytes(), b'/').map_or(jid, |i| &jid[..i])
}

/// The domain part of a JID string, without preparing it: for JIDs the server stamped or prepared.
pub fn domain_of(jid: &str) -> &str {
    let bare = bare_of(jid);
    position(bare.as_bytes(), b'@').map_or(bare, |i| &bare[i + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_domain_of_a_stamped_jid() {
        for (jid, bare, domain) in [
            ("a@b/c", "a@b", "b"),
            ("a@b", "a@b", "b"),
            ("b", "b", "b"),
            ("b/r@x/y", "b", "b"),
            ("a@b/r@x", "a@b", "b"),
        ] {
            assert_eq!(bare_of(jid), bare, "{jid}");
            assert_eq!(domain_of(jid), domain, "{jid}");
        }
    }

    #[test]
    fn examples_from_rfc_7622_section_3_5() {
        for ok in [
            "juliet@example.com",
            "juliet@example.com/foo",
            "juliet@example.com/foo bar",
            "juliet@example.com/foo@bar",
            "foo\\20bar@example.com",
            "fussball@example.com",
            "fu\u{df}ball@example.com",
            "\u{3c0}@example.com",
            "\u{3a3}@example.com/foo",
            "\u{3c3}@example.com/foo",
            "\u{3c2}@example.com/foo",
            "king@example.com/\u{265a}",
            "example.com",
            "example.com/foobar",
            "a.example.com/b@example.net",
        ] {
            Jid::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("\"juliet\"@example.com", JidError::BadLocal),
            ("foo bar@example.com", JidError::BadLocal),
            ("henry\u{2163}@example.com", JidError::BadLocal),
            ("\u{265a}@example.com", JidError::BadLocal),
            ("juliet@", JidError::EmptyDomain),
            ("@example.com", JidError::EmptyLocal),
            ("juliet@example.com/", JidError::EmptyResource),
            ("/foobar", JidError::EmptyDomain),
        ] {
            assert_eq!(Jid::parse(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn canonical_forms_compare_equal() {
        let a = Jid::parse("\u{3a3}@Example.COM./Res").unwrap();
        let b = Jid::parse("\u{3c3}@example.com/Res").unwrap();
        assert_eq!(a, b);
        assert_ne!(
            Jid::parse("a@example.com/Res").unwrap(),
            Jid::parse("a@example.com/res").unwrap(),
            "resources are case-sensitive"
        );
        assert_eq!(
            Jid::parse("b\u{fc}cher.EXAMPLE").unwrap().as_str(),
            "b\u{fc}cher.example"
        );
        assert_eq!(
            Jid::parse("xn--bcher-kva.example").unwrap().as_str(),
            "b\u{fc}cher.example"
        );
    }

    #[test]
    fn canonical_views_agree_with_parse() {
        for s in [
            "a@b.example/c",
            "b.example",
            "a@b.example",
            "a@b.example/C D",
            "x@127.0.0.1",
        ] {
            let v = JidView::canonical(s).unwrap_or_else(|| panic!("{s}"));
            let j = Jid::parse(s).unwrap();
            assert_eq!(v, j.view(), "{s}");
            assert_eq!(v.bare(), j.bare_str());
        }
        for s in [
            "A@b.example",
            "a@B.example",
            "a@xn--bcher-kva.example",
            "é@b.example",
            "a@b.example.",
        ] {
            assert!(JidView::canonical(s).is_none(), "{s}");
        }
    }

    #[test]
    fn parts_and_bare() {
        let j = Jid::parse("a@b.example/c/d@e").unwrap();
        assert_eq!(j.local(), Some("a"));
        assert_eq!(j.domain(), "b.example");
        assert_eq!(j.resource(), Some("c/d@e"));
        assert_eq!(j.bare_str(), "a@b.example");
        assert!(j.bare().is_bare());
        let d = Jid::parse("b.example").unwrap();
        assert_eq!(
            (d.local(), d.domain(), d.resource()),
            (None, "b.example", None)
        );
        assert_eq!(d.with_resource("r").unwrap().as_str(), "b.example/r");
        assert_eq!(Jid::parse("[::1]").unwrap().domain(), "[::1]");
        assert_eq!(Jid::parse("127.0.0.1").unwrap().domain(), "127.0.0.1");
        assert_eq!(Jid::parse("a@-bad.example"), Err(JidError::BadDomain));
        assert_eq!(
            Jid::parse(&format!("{}@x", "a".repeat(1024))),
            Err(JidError::TooLong)
        );
    }
}

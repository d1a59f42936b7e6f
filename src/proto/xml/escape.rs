//! Escaping for output and unescaping of checked input. Both borrow when nothing changes, so the common case
//! (JIDs, ids, plain text) costs a scan and no allocation. Unescaping trusts that the parser has already
//! checked every reference; it is never given unchecked bytes.

use std::borrow::Cow;

/// Escapes the five XML special characters (`&`, `<`, `>`, `"`, `'`): the seed's `crypt/1`.
///
/// ```
/// use rjabberd::proto::xml::escape;
/// assert_eq!(escape("a<b & 'c'"), "a&lt;b &amp; &apos;c&apos;");
/// assert!(matches!(escape("plain"), std::borrow::Cow::Borrowed(_)));
/// ```
pub fn escape(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.iter().position(|b| needs_escape(*b)) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(b: u8) -> bool {
    matches!(b, b'&' | b'<' | b'>' | b'"' | b'\'')
}

/// Appends `s` escaped for an attribute value or for text, without an intermediate string. Tab, line feed
/// and carriage return go out as character references: a parser normalises them when written literally
/// (to a space in attribute values, `\r` to `\n` in text, XML 1.0 §2.11 and §3.3.3), so only a reference
/// carries the value through a round trip.
pub(crate) fn put_escaped_attr(out: &mut impl bytes::BufMut, s: &str) {
    put_escaped(out, s, true)
}

/// Appends `s` escaped for character data; only `\r` of the white space needs a reference there.
pub(crate) fn put_escaped_text(out: &mut impl bytes::BufMut, s: &str) {
    put_escaped(out, s, false)
}

fn put_escaped(out: &mut impl bytes::BufMut, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&apos;",
            b'\t' if attr => b"&#9;",
            b'\n' if attr => b"&#10;",
            b'\r' => b"&#13;",
            _ => continue,
        };
        out.put_slice(&bytes[start..i]);
        out.put_slice(rep);
        start = i + 1;
    }
    out.put_slice(&bytes[start..]);
}

/// Unescapes checked character data: references are replaced, and line ends are normalised as XML 1.0
/// §2.11 requires (`\r\n` and a lone `\r` become `\n`).
pub fn unescape_text(raw: &str) -> Cow<'_, str> {
    unescape(raw, false)
}

/// Unescapes a checked attribute value: references are replaced and, after line-end normalisation, each
/// tab, line feed and carriage return written literally becomes a space (XML 1.0 §3.3.3).
pub fn unescape_attr(raw: &str) -> Cow<'_, str> {
    unescape(raw, true)
}

fn unescape(raw: &str, attr: bool) -> Cow<'_, str> {
    let special = |b: &u8| match b {
        b'&' | b'\r' => true,
        b'\t' | b'\n' => attr,
        _ => false,
    };
    let bytes = raw.as_bytes();
    let Some(first) = bytes.iter().position(special) else {
        return Cow::Borrowed(raw);
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..first]);
    let mut i = first;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'&' => {
                let end = i + raw[i..].find(';').expect("reference checked by the parser");
                let name = &raw[i + 1..end];
                let c = match name {
                    "lt" => '<',
                    "gt" => '>',
                    "amp" => '&',
                    "apos" => '\'',
                    "quot" => '"',
                    _ => char_ref(name).expect("reference checked by the parser"),
                };
                out.push(c);
                i = end + 1;
            }
            b'\r' => {
                out.push(if attr { ' ' } else { '\n' });
                i += 1;
                if bytes.get(i) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\t' | b'\n' if attr => {
                out.push(' ');
                i += 1;
            }
            _ => {
                let next = bytes[i..]
                    .iter()
                    .position(special)
                    .map_or(bytes.len(), |p| i + p);
                out.push_str(&raw[i..next]);
                i = next;
            }
        }
    }
    Cow::Owned(out)
}

/// Decodes the body of a character reference (`#65` or `#x41`), or `None` when it is not one.
pub(crate) fn char_ref(name: &str) -> Option<char> {
    let digits = name.strip_prefix('#')?;
    let value = match digits.strip_prefix('x') {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u32>().ok()?,
    };
    char::from_u32(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_references_and_line_ends() {
        assert_eq!(unescape_text("a&lt;&#x41;&#66;\r\nb\rc"), "a<AB\nb\nc");
        assert_eq!(unescape_attr("a\tb\r\nc&#10;"), "a b c\n");
        assert!(matches!(unescape_attr("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn escape_round_trips() {
        let s = "<'\"&>é";
        assert_eq!(unescape_text(&escape(s)), s);
        let mut out = Vec::new();
        put_escaped_text(&mut out, s);
        assert_eq!(out, escape(s).as_bytes());
        let ws = "a\tb\nc\rd";
        let mut text = Vec::new();
        put_escaped_text(&mut text, ws);
        assert_eq!(text, b"a\tb\nc&#13;d");
        let mut attr = Vec::new();
        put_escaped_attr(&mut attr, ws);
        assert_eq!(attr, b"a&#9;b&#10;c&#13;d");
        assert_eq!(unescape_attr(std::str::from_utf8(&attr).unwrap()), ws);
    }
}

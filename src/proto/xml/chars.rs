//! Character classes of XML 1.0 (fifth edition) and Namespaces in XML 1.0, and the UTF-8 decoder the
//! parser uses for non-ASCII bytes. ASCII goes through 128-entry tables; everything else through
//! [`decode_utf8`] and the range checks below, so the common case is one table load per byte.

use super::error::Malformed;

const fn ascii_table(start_only: bool) -> [bool; 128] {
    let mut t = [false; 128];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        t[c] = b.is_ascii_alphabetic()
            || b == b'_'
            || (!start_only && (b.is_ascii_digit() || b == b'-' || b == b'.'));
        c += 1;
    }
    t
}

/// ASCII bytes that may start an NCName (the colon is handled by the caller).
pub(crate) static NAME_START: [bool; 128] = ascii_table(true);
/// ASCII bytes that may continue an NCName.
pub(crate) static NAME_CHAR: [bool; 128] = ascii_table(false);

pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `NameStartChar` minus the colon, for code points at or above U+0080.
pub(crate) fn is_name_start_cp(cp: u32) -> bool {
    matches!(cp,
        0xC0..=0xD6 | 0xD8..=0xF6 | 0xF8..=0x2FF | 0x370..=0x37D | 0x37F..=0x1FFF | 0x200C..=0x200D
        | 0x2070..=0x218F | 0x2C00..=0x2FEF | 0x3001..=0xD7FF | 0xF900..=0xFDCF | 0xFDF0..=0xFFFD
        | 0x10000..=0xEFFFF)
}

/// `NameChar` minus the colon, for code points at or above U+0080.
pub(crate) fn is_name_cp(cp: u32) -> bool {
    is_name_start_cp(cp) || matches!(cp, 0xB7 | 0x300..=0x36F | 0x203F..=0x2040)
}

/// The `Char` production for any code point.
pub(crate) fn is_xml_char(cp: u32) -> bool {
    matches!(cp, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Decodes one UTF-8 sequence whose first byte is at least 0x80. `Ok(None)` means the slice ends inside
/// the sequence; the caller waits for more bytes and decodes it again, which rescans at most three bytes.
pub(crate) fn decode_utf8(s: &[u8]) -> Result<Option<(u32, usize)>, Malformed> {
    let b0 = s[0];
    let (len, lo, hi, init) = match b0 {
        0xC2..=0xDF => (2, 0x80, 0xBF, (b0 & 0x1F) as u32),
        0xE0 => (3, 0xA0, 0xBF, 0),
        0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80, 0xBF, (b0 & 0x0F) as u32),
        0xED => (3, 0x80, 0x9F, 0xD),
        0xF0 => (4, 0x90, 0xBF, 0),
        0xF1..=0xF3 => (4, 0x80, 0xBF, (b0 & 0x07) as u32),
        0xF4 => (4, 0x80, 0x8F, 4),
        _ => return Err(Malformed::InvalidUtf8),
    };
    let mut cp = init;
    for i in 1..len {
        let Some(&b) = s.get(i) else {
            return Ok(None);
        };
        let (lo, hi) = if i == 1 { (lo, hi) } else { (0x80, 0xBF) };
        if b < lo || b > hi {
            return Err(Malformed::InvalidUtf8);
        }
        cp = (cp << 6) | (b & 0x3F) as u32;
    }
    Ok(Some((cp, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_agrees_with_std_on_every_two_and_three_byte_prefix() {
        for b0 in 0x80u8..=0xFF {
            for b1 in 0x80u8..=0xBF {
                for b2 in [0x80u8, 0xBF, 0x41] {
                    let bytes = [b0, b1, b2, 0x80];
                    let ours = decode_utf8(&bytes);
                    let std_ok = std::str::from_utf8(&bytes[..1])
                        .or_else(|_| std::str::from_utf8(&bytes[..2]))
                        .or_else(|_| std::str::from_utf8(&bytes[..3]))
                        .or_else(|_| std::str::from_utf8(&bytes[..4]));
                    match (ours, std_ok) {
                        (Ok(Some((cp, len))), Ok(s)) => {
                            assert_eq!(s.len(), len);
                            assert_eq!(s.chars().next().map(u32::from), Some(cp));
                        }
                        (Err(_), Err(_)) => {}
                        (o, s) => panic!("{bytes:02x?}: ours {o:?}, std {s:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn truncated_sequences_ask_for_more() {
        assert_eq!(decode_utf8(&[0xE2, 0x82]), Ok(None));
        assert_eq!(decode_utf8(&[0xF0]), Ok(None));
        assert_eq!(decode_utf8(&[0xE2, 0x82, 0xAC]), Ok(Some((0x20AC, 3))));
    }
}

//! One log record as one line of text, in the three formats of `[log] format`: `text` for a person,
//! `kv` (logfmt) and `json` for machines. It owns the escaping that keeps a line a line: values come
//! from peers (usernames, JIDs, stream text), and none may carry a newline, a quote that ends a value
//! early, or a character that makes a terminal or a viewer show something else than what was written.
//! Timestamps are UTC RFC 3339 with milliseconds, computed here from the Unix time.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// Longest value written, in bytes; longer ones are cut at a character boundary and end with `…`. A
/// peer can make a value long (a 1 KiB username), and the rate limit counts lines, not bytes.
pub const MAX_VALUE: usize = 256;
/// Longest message written.
pub const MAX_MSG: usize = 2048;

/// A field's value: numbers and booleans are written bare (JSON numbers), everything else as a string.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// Already in its final form: an integer, a finite float, `true` or `false`.
    Bare(String),
    Str(String),
}

/// What a line says.
pub struct Line<'a> {
    pub time: SystemTime,
    pub level: log::Level,
    /// The shard whose thread wrote it, if any (the main thread and worker threads have none).
    pub shard: Option<usize>,
    pub target: &'a str,
    pub fields: &'a [(String, Val)],
    pub msg: &'a str,
}

/// Appends `line` and a newline to `out`.
pub fn write_line(out: &mut String, format: LogFormat, line: &Line) {
    match format {
        LogFormat::Text => text(out, line),
        LogFormat::Kv => kv(out, line),
        LogFormat::Json => json(out, line),
    }
    out.push('\n');
}

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

fn text(out: &mut String, line: &Line) {
    timestamp(out, line.time);
    let _ = write!(out, " {:<5} ", line.level);
    match line.shard {
        Some(s) => {
            let _ = write!(out, "[{s}] ");
        }
        None => out.push_str("[-] "),
    }
    out.push_str(line.target);
    out.push_str(": ");
    // Unquoted for reading; control characters still escaped, so a line stays one line.
    for c in cut(line.msg, MAX_MSG).chars() {
        match c {
            c if needs_escape(c) => escape_char(out, c),
            c => out.push(c),
        }
    }
    if line.msg.len() > MAX_MSG {
        out.push('…');
    }
    for (k, v) in line.fields {
        out.push(' ');
        kv_pair(out, k, v);
    }
}

fn kv(out: &mut String, line: &Line) {
    out.push_str("ts=");
    timestamp(out, line.time);
    out.push_str(" level=");
    out.push_str(level_name(line.level));
    if let Some(s) = line.shard {
        let _ = write!(out, " shard={s}");
    }
    out.push_str(" target=");
    kv_value(out, line.target, usize::MAX);
    for (k, v) in line.fields {
        out.push(' ');
        kv_pair(out, k, v);
    }
    out.push_str(" msg=");
    kv_value(out, line.msg, MAX_MSG);
}

fn json(out: &mut String, line: &Line) {
    out.push_str("{\"ts\":\"");
    timestamp(out, line.time);
    out.push_str("\",\"level\":\"");
    out.push_str(level_name(line.level));
    out.push('"');
    if let Some(s) = line.shard {
        let _ = write!(out, ",\"shard\":{s}");
    }
    out.push_str(",\"target\":");
    json_string(out, line.target, usize::MAX);
    for (k, v) in line.fields {
        out.push(',');
        json_string(out, k, MAX_VALUE);
        out.push(':');
        match v {
            Val::Bare(b) => out.push_str(b),
            Val::Str(s) => json_string(out, s, MAX_VALUE),
        }
    }
    out.push_str(",\"msg\":");
    json_string(out, line.msg, MAX_MSG);
    out.push('}');
}

fn kv_pair(out: &mut String, key: &str, value: &Val) {
    // Keys are the code's own; anything that could break the pair still becomes `_`.
    for c in cut(key, MAX_VALUE).chars() {
        out.push(
            if c == ' ' || c == '"' || c == '=' || c == '\\' || needs_escape(c) {
                '_'
            } else {
                c
            },
        );
    }
    out.push('=');
    match value {
        Val::Bare(b) => out.push_str(b),
        Val::Str(s) => kv_value(out, s, MAX_VALUE),
    }
}

/// A logfmt value: bare when it is one plain word, else in double quotes with `"`, `\` and every
/// character of [`needs_escape`] escaped.
pub fn kv_value(out: &mut String, value: &str, max: usize) {
    let s = cut(value, max);
    let long = s.len() < value.len();
    let plain = !s.is_empty()
        && !long
        && !s
            .chars()
            .any(|c| c == '"' || c == '=' || c == '\\' || c.is_whitespace() || needs_escape(c));
    if plain {
        out.push_str(s);
        return;
    }
    out.push('"');
    quoted(out, s);
    if long {
        out.push('…');
    }
    out.push('"');
}

/// A JSON string (RFC 8259), with the same characters escaped as in logfmt, which JSON allows.
pub fn json_string(out: &mut String, value: &str, max: usize) {
    let s = cut(value, max);
    out.push('"');
    quoted(out, s);
    if s.len() < value.len() {
        out.push('…');
    }
    out.push('"');
}

fn quoted(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if needs_escape(c) => escape_char(out, c),
            c => out.push(c),
        }
    }
}

fn escape_char(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        // Every character escaped here is in the Basic Multilingual Plane: four hex digits suffice.
        c => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
}

/// Characters never written raw: C0 and C1 controls and DEL (newlines among them), the Unicode line
/// and paragraph separators (line breaks to JavaScript and some viewers), and the bidirectional
/// controls, which make a terminal show text in another order than it was written.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Reads a `kv` line back into its pairs, in order (the inverse of the `kv` format, for tests and
/// tools); `None` when it is not one.
pub fn parse_kv(line: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut rest = line.trim_end_matches('\n');
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = &rest[..eq];
        if key.is_empty() || key.contains(' ') {
            return None;
        }
        rest = &rest[eq + 1..];
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        'u' => {
                            let hex: String =
                                (0..4).filter_map(|_| chars.next()).map(|c| c.1).collect();
                            value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        }
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            rest = &quoted[end + 1..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            value.push_str(&rest[..end]);
            rest = &rest[end..];
        }
        pairs.push((key.to_string(), value));
        match rest.strip_prefix(' ') {
            Some(r) => rest = r,
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(pairs)
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `2026-12-01T15:50:34.123Z`.
pub fn timestamp(out: &mut String, time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let day = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        day / 3600,
        day / 60 % 60,
        day % 60,
        since.subsec_millis()
    );
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_milliseconds() {
        // Checked against Python's datetime.fromtimestamp(t, timezone.utc).
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_709_210_096_500, "2024-02-29T12:34:56.500Z"),
            (1_796_140_234_123, "2026-12-01T15:50:34.123Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        ] {
            let mut s = String::new();
            timestamp(&mut s, at(ms));
            assert_eq!(s, want);
        }
    }

    #[test]
    fn kv_values_are_quoted_and_escaped_when_they_must_be() {
        for (value, want) in [
            ("juliet@example.org/balcony", "juliet@example.org/balcony"),
            ("127.0.0.1:4242", "127.0.0.1:4242"),
            ("", "\"\""),
            ("two words", "\"two words\""),
            ("a=b", "\"a=b\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("back\\slash", "\"back\\\\slash\""),
            ("x\nevent=login jid=admin", "\"x\\nevent=login jid=admin\""),
            ("cr\rlf", "\"cr\\rlf\""),
            ("tab\t", "\"tab\\t\""),
            (
                "nul\0bell\u{7}esc\u{1b}[31m",
                "\"nul\\u0000bell\\u0007esc\\u001b[31m\"",
            ),
            ("del\u{7f}nel\u{85}", "\"del\\u007fnel\\u0085\""),
            ("ls\u{2028}ps\u{2029}", "\"ls\\u2028ps\\u2029\""),
            ("rlo\u{202e}txt.exe", "\"rlo\\u202etxt.exe\""),
            ("ünïcödé-日本", "ünïcödé-日本"),
            ("non\u{a0}breaking", "\"non\u{a0}breaking\""),
        ] {
            let mut s = String::new();
            kv_value(&mut s, value, MAX_VALUE);
            assert_eq!(s, want, "{value:?}");
            assert!(!s.contains('\n') && !s.contains('\r'));
            // And read back to what was written.
            let back = parse_kv(&format!("k={s} next=1")).unwrap();
            assert_eq!(back[0], ("k".to_string(), value.to_string()));
            assert_eq!(back[1], ("next".to_string(), "1".to_string()));
        }
    }

    #[test]
    fn json_strings_parse_back_to_what_was_written() {
        for value in [
            "plain",
            "",
            "quote \" and \\ backslash",
            "line\nbreak\r\n{\"forged\":true}",
            "controls \0\u{1}\u{1f}\u{7f}\u{85}\u{9b}",
            "separators \u{2028}\u{2029} bidi \u{202e}\u{2066}",
            "ünïcödé 日本 😀",
            "</script>",
        ] {
            let mut s = String::new();
            json_string(&mut s, value, MAX_VALUE);
            assert!(!s.contains('\n') && !s.contains('\r') && !s.contains('\u{2028}'));
            let back: String = serde_json::from_str(&s).unwrap();
            assert_eq!(back, value);
        }
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(300);
        let mut s = String::new();
        kv_value(&mut s, &long, MAX_VALUE);
        assert!(s.len() <= MAX_VALUE + 8, "{}", s.len());
        assert!(s.ends_with("…\""));
        let mut s = String::new();
        json_string(&mut s, &long, MAX_VALUE);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back.chars().count(), MAX_VALUE / 2 + 1);
    }

    fn sample() -> (Vec<(String, Val)>, Line<'static>) {
        let fields = vec![
            ("event".into(), Val::Str("login".into())),
            ("jid".into(), Val::Str("a@x/r".into())),
            ("peer".into(), Val::Str("127.0.0.1:4242".into())),
            ("tls".into(), Val::Bare("true".into())),
            ("duration_ms".into(), Val::Bare("1500".into())),
        ];
        let line = Line {
            time: at(1_796_140_234_123),
            level: log::Level::Info,
            shard: Some(0),
            target: "rjabberd::c2s",
            fields: &[],
            msg: "session started",
        };
        (fields, line)
    }

    #[test]
    fn the_three_formats() {
        let (fields, mut line) = sample();
        line.fields = &fields;
        let mut s = String::new();
        write_line(&mut s, LogFormat::Kv, &line);
        assert_eq!(
            s,
            "ts=2026-12-01T15:50:34.123Z level=info shard=0 target=rjabberd::c2s event=login \
             jid=a@x/r peer=127.0.0.1:4242 tls=true duration_ms=1500 msg=\"session started\"\n"
        );
        let mut s = String::new();
        write_line(&mut s, LogFormat::Json, &line);
        assert_eq!(
            s,
            "{\"ts\":\"2026-12-01T15:50:34.123Z\",\"level\":\"info\",\"shard\":0,\
             \"target\":\"rjabberd::c2s\",\"event\":\"login\",\"jid\":\"a@x/r\",\
             \"peer\":\"127.0.0.1:4242\",\"tls\":true,\"duration_ms\":1500,\"msg\":\"session started\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["duration_ms"], 1500);
        let mut s = String::new();
        line.shard = None;
        write_line(&mut s, LogFormat::Text, &line);
        assert_eq!(
            s,
            "2026-12-01T15:50:34.123Z INFO  [-] rjabberd::c2s: session started event=login \
             jid=a@x/r peer=127.0.0.1:4242 tls=true duration_ms=1500\n"
        );
    }

    #[test]
    fn a_peer_controlled_string_cannot_forge_a_line() {
        let evil = "x\" msg=\"y\nts=2026-12-01T00:00:00.000Z level=info event=login jid=admin@x";
        let fields = vec![("username".into(), Val::Str(evil.into()))];
        for format in [LogFormat::Text, LogFormat::Kv, LogFormat::Json] {
            let line = Line {
                time: at(0),
                level: log::Level::Info,
                shard: Some(1),
                target: "rjabberd::c2s",
                fields: &fields,
                msg: evil,
            };
            let mut s = String::new();
            write_line(&mut s, format, &line);
            assert_eq!(s.matches('\n').count(), 1, "{format:?}: {s}");
            assert!(s.ends_with('\n'));
            if format == LogFormat::Json {
                let v: serde_json::Value = serde_json::from_str(&s).unwrap();
                assert_eq!(v["username"], evil);
                assert_eq!(v["msg"], evil);
            }
            if format == LogFormat::Kv {
                // Exactly the pairs written: the quote in the value did not open a new one.
                let pairs = parse_kv(&s).unwrap();
                let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(keys, ["ts", "level", "shard", "target", "username", "msg"]);
                assert_eq!(pairs[4].1, evil);
                assert_eq!(pairs[5].1, evil);
            }
        }
    }
}

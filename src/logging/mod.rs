//! The server's log output: the `log::Log` behind every `log::info!` and friends, installed once by
//! `main` from `[log]`. It filters by level and target (the configured level for `rjabberd`, or
//! `RUST_LOG` when set, as env_logger read it), writes each record as one line on stderr in the
//! configured format ([`format`]), with the record's key-value fields, and passes every line that names
//! a `peer` through its thread's rate limiter ([`limiter`]): logins, logouts and refusals are lines a
//! peer can cause at will. The limiter is per thread (a shard's thread is the shard), so the hot path
//! takes no lock; each shard's housekeeping calls [`report_suppressed`] to write what it held back.
//!
//! Event lines carry `event=` and say what happened to whom: `login`, `logout` and `refused` with the
//! `peer` (ip:port) and the shard; `docs/operations.md` lists their fields.

pub mod format;
pub mod limiter;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use log::kv::{Key, Value, VisitSource, VisitValue};

use crate::config::{Config, LogFormat, LogLevel};
use crate::probe::CURRENT_SHARD;
use format::{Line, Val};
use limiter::{Limiter, Limits, Source, Verdict};

/// The key whose value ties a line to a peer, and so to its rate limit.
pub const PEER: &str = "peer";

struct Logger {
    filter: env_filter::Filter,
    format: LogFormat,
    limits: Limits,
}

thread_local! {
    /// This thread's limiter, made at its first line about a peer.
    static LIMITER: RefCell<Option<Limiter>> = const { RefCell::new(None) };
    /// This thread's line buffer, reused.
    static BUF: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The limiter settings of a configuration.
pub fn limits_of(config: &Config) -> Limits {
    let l = &config.log;
    Limits {
        rate_per_source: *l.rate_per_source.get_ref(),
        burst: *l.burst.get_ref(),
        max_sources: *l.max_sources.get_ref(),
        rate_per_shard: *l.rate_per_shard.get_ref(),
        report_every: Duration::from_secs(*l.suppressed_report_secs.get_ref()),
    }
}

/// Installs the logger for `config` (once per process; a second call changes nothing and says so).
pub fn init(config: &Config) -> Result<(), log::SetLoggerError> {
    let level = match config.log_level() {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| format!("rjabberd={level}"));
    let filter = env_filter::Builder::new().parse(&spec).build();
    log::set_max_level(filter.filter());
    log::set_boxed_logger(Box::new(Logger {
        filter,
        format: config.log.format,
        limits: limits_of(config),
    }))
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.filter.matches(record) {
            return;
        }
        // The limiter decides before anything is formatted: a flood costs a lookup per line.
        let suppressed = match peer_of(record) {
            Some(ip) => match admit(self.limits, Source::of(ip), Instant::now()) {
                Verdict::Pass { suppressed } => suppressed,
                Verdict::Drop => return,
            },
            None => 0,
        };
        let mut fields = Fields(Vec::new());
        let _ = record.key_values().visit(&mut fields);
        let mut fields = fields.0;
        if suppressed > 0 {
            fields.push(("suppressed".into(), Val::Bare(suppressed.to_string())));
        }
        let mut msg = String::new();
        let _ = write!(msg, "{}", record.args());
        let line = Line {
            time: SystemTime::now(),
            level: record.level(),
            shard: CURRENT_SHARD.try_with(|s| s.get()).ok().flatten(),
            target: record.target(),
            fields: &fields,
            msg: &msg,
        };
        let write = |buf: &mut String| {
            buf.clear();
            format::write_line(buf, self.format, &line);
            // One write per line: stderr's lock keeps lines of different threads whole.
            let _ = std::io::stderr().lock().write_all(buf.as_bytes());
        };
        let done = BUF.try_with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => write(&mut buf),
            Err(_) => write(&mut String::new()),
        });
        if done.is_err() {
            write(&mut String::new());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

fn admit(limits: Limits, source: Source, now: Instant) -> Verdict {
    LIMITER
        .try_with(|l| {
            let mut l = l.borrow_mut();
            l.get_or_insert_with(|| Limiter::new(limits, now))
                .admit(source, now)
        })
        .unwrap_or(Verdict::Pass { suppressed: 0 })
}

/// The address of a record's `peer` field, read without allocating (it is an `ip:port` or an `ip`).
fn peer_of(record: &log::Record) -> Option<IpAddr> {
    let value = record.key_values().get(Key::from_str(PEER))?;
    let mut buf = SmallBuf::default();
    write!(buf, "{value}").ok()?;
    let text = std::str::from_utf8(&buf.bytes[..buf.len]).ok()?;
    text.parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()
}

/// Room for the longest socket address (`[ffff:…:255.255.255.255%4294967295]:65535`).
struct SmallBuf {
    bytes: [u8; 64],
    len: usize,
}

impl Default for SmallBuf {
    fn default() -> Self {
        SmallBuf {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl std::fmt::Write for SmallBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Writes, on this thread, the counts of lines its limiter held back, one `event=suppressed` line per
/// source, when they are due (every `suppressed_report_secs`), or all of them now with `all` (at
/// shutdown).
pub fn report_suppressed(now: Instant, all: bool) {
    let report = LIMITER
        .try_with(|l| match l.borrow_mut().as_mut() {
            Some(l) if all => l.drain(now),
            Some(l) => l.report(now),
            None => Vec::new(),
        })
        .unwrap_or_default();
    for s in report {
        match s.source {
            Some(source) => log::info!(
                event = "suppressed", source:% = source, count = s.count;
                "log lines about this source held back by the rate limit"
            ),
            None => log::info!(
                event = "suppressed", source = "untracked", count = s.count;
                "log lines held back by the shard's rate limit, from more sources than are tracked"
            ),
        }
    }
}

/// Collects a record's fields, typed: numbers and booleans stay bare.
struct Fields(Vec<(String, Val)>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let mut v = Typed(None);
        value.visit(&mut v)?;
        match v.0 {
            // An absent optional field (`None`) is left out rather than written as a word.
            Some(None) => {}
            Some(Some(val)) => self.0.push((key.as_str().to_string(), val)),
            None => self
                .0
                .push((key.as_str().to_string(), Val::Str(value.to_string()))),
        }
        Ok(())
    }
}

struct Typed(Option<Option<Val>>);

impl<'v> VisitValue<'v> for Typed {
    fn visit_any(&mut self, value: Value) -> Result<(), log::kv::Error> {
        self.0 = Some(Some(Val::Str(value.to_string())));
        Ok(())
    }
    fn visit_null(&mut self) -> Result<(), log::kv::Error> {
        self.0 = Some(None);
        Ok(())
    }
    fn visit_u64(&mut self, value: u64) -> Result<(), log::kv::Error> {
        self.0 = Some(Some(Val::Bare(value.to_string())));
        Ok(())
    }
    fn visit_i64(&mut self, value: i64) -> Result<(), log::kv::Error> {
        self.0 = Some(Some(Val::Bare(value.to_string())));
        Ok(())
    }
    fn visit_f64(&mut self, value: f64) -> Result<(), log::kv::Error> {
        // JSON has no NaN or infinity: those are strings.
        self.0 = Some(Some(if value.is_finite() {
            Val::Bare(value.to_string())
        } else {
            Val::Str(value.to_string())
        }));
        Ok(())
    }
    fn visit_bool(&mut self, value: bool) -> Result<(), log::kv::Error> {
        self.0 = Some(Some(Val::Bare(value.to_string())));
        Ok(())
    }
    fn visit_str(&mut self, value: &str) -> Result<(), log::kv::Error> {
        self.0 = Some(Some(Val::Str(value.to_string())));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_in(value: &str) -> Option<IpAddr> {
        let kvs: &[(&str, &str)] = &[("event", "login"), (PEER, value)];
        let record = log::Record::builder()
            .args(format_args!("x"))
            .key_values(&kvs)
            .build();
        peer_of(&record)
    }

    #[test]
    fn the_peer_field_names_the_source() {
        for (value, want) in [
            ("127.0.0.1:4242", Some("127.0.0.1")),
            ("[2001:db8::1]:5222", Some("2001:db8::1")),
            ("192.0.2.9", Some("192.0.2.9")),
            ("2001:db8::2", Some("2001:db8::2")),
            ("not an address", None),
            ("", None),
        ] {
            assert_eq!(
                peer_in(value),
                want.map(|w| w.parse().unwrap()),
                "{value:?}"
            );
        }
        // Longer than any address: not one, and no allocation to find out.
        assert_eq!(peer_in(&"9".repeat(100)), None);
        let none = log::Record::builder().args(format_args!("x")).build();
        assert_eq!(peer_of(&none), None);
    }

    #[test]
    fn fields_keep_their_types_and_absent_ones_are_left_out() {
        let username: Option<&str> = None;
        let kvs: Vec<(&str, log::kv::Value)> = vec![
            ("count", log::kv::Value::from(3u64)),
            ("tls", log::kv::Value::from(true)),
            ("jid", log::kv::Value::from("a@x/r")),
            ("username", log::kv::ToValue::to_value(&username)),
        ];
        let record = log::Record::builder()
            .args(format_args!("x"))
            .key_values(&kvs)
            .build();
        let mut fields = Fields(Vec::new());
        record.key_values().visit(&mut fields).unwrap();
        assert_eq!(
            fields.0,
            [
                ("count".to_string(), Val::Bare("3".into())),
                ("tls".to_string(), Val::Bare("true".into())),
                ("jid".to_string(), Val::Str("a@x/r".into())),
            ]
        );
    }
}

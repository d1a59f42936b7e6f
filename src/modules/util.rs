//! Helpers shared by the built-in modules: the `iqdisc` option of their IQ handlers, the `<query/>`
//! element most of them answer with, the refusal of `set` where only `get` means anything, and XEP-0082
//! timestamps (mod_time answers with them, mod_offline stamps its XEP-0203 `<delay/>`s with them). They
//! live here so that no module file imports another.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Iq, IqError, IqType, OptKind, OptionSpec};
use crate::proto::errors::StanzaErrorCondition as Cond;
use crate::proto::xml::Element;

pub(super) const fn iqdisc(default: &'static str) -> OptionSpec {
    OptionSpec {
        name: "iqdisc",
        kind: OptKind::IqDisc,
        default,
        doc: "queueing discipline of the module's IQ handlers: no_queue, one_queue or parallel",
    }
}

pub(super) fn query(ns: &str) -> Element {
    Element::new("query").with_attr("xmlns", ns)
}

pub(super) fn get_only(iq: &Iq) -> Result<(), IqError> {
    match iq.type_ {
        IqType::Get => Ok(()),
        IqType::Set => Err(IqError::new(Cond::NotAllowed)),
    }
}

/// XEP-0082 `CCYY-MM-DDThh:mm:ss.sssZ`.
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (proleptic Gregorian; Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_xep_0082() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(utc_timestamp(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}

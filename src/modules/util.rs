//! Helpers shared by the built-in modules: the `iqdisc` option of their IQ handlers, the `<query/>`
//! element most of them answer with, the refusal of `set` where only `get` means anything, and XEP-0082
//! timestamps (mod_time answers with them, mod_offline stamps its XEP-0203 `<delay/>`s with them), and the
//! [`Loader`] behind the per-account caches of mod_roster and mod_blocking. They live here so that no
//! module file imports another.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Iq, IqError, IqType, ModuleCtx, OptKind, OptionSpec};
use crate::proto::errors::StanzaErrorCondition as Cond;
use crate::proto::xml::{Element, Limits, Stanza, escape, parse_element};
use crate::storage::{Store, StoreError};

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

/// A presence without children, of `type_` (unavailable, probe, a subscription type), to `to` when
/// given: what the server sends on an account's behalf. `None` (logged) only if it did not parse, which
/// would be a bug here.
pub(super) fn childless_presence(type_: &str, to: Option<&str>) -> Option<Stanza> {
    let to_attr = to
        .map(|t| format!(" to='{}'", escape(t)))
        .unwrap_or_default();
    let xml = format!("<presence xmlns='jabber:client' type='{type_}'{to_attr}/>");
    parse_element(xml.as_bytes(), &Limits::default())
        .map_err(|e| log::error!("a {type_} presence did not parse: {e}"))
        .ok()
}

/// Routes a [`childless_presence`] of `type_` to `to`, from `from`.
pub(super) fn route_presence(ctx: &ModuleCtx, type_: &str, to: &str, from: Arc<str>) {
    if let Some(p) = childless_presence(type_, Some(to)) {
        ctx.route(p, from);
    }
}

/// Which accounts homed on this shard hold any of one module's account data, per host, read once from
/// the store (mod_offline: who has messages waiting; mod_blocking: who has a blocklist). The rest
/// need no store read until they gain some. Until a host is known, every account may hold some.
#[derive(Default)]
pub(super) struct HoldersIndex {
    accounts: RefCell<std::collections::HashSet<String>>,
    /// Hosts whose holders are known here.
    loaded: RefCell<std::collections::HashSet<String>>,
    /// Hosts whose read has started.
    loading: RefCell<std::collections::HashSet<String>>,
}

impl HoldersIndex {
    /// Starts reading, once per host, which of its accounts homed here hold data of `module`.
    pub(super) fn load(self: &Rc<Self>, ctx: &ModuleCtx, host: &str, module: &'static str) {
        if !self.loading.borrow_mut().insert(host.to_string()) {
            return;
        }
        let (index, ctx, host) = (self.clone(), ctx.clone(), host.to_string());
        glommio::spawn_local(async move {
            let h = host.clone();
            match ctx
                .store()
                .run(move |db| db.data_accounts(&h, module))
                .await
            {
                Ok(users) => {
                    let mut accounts = index.accounts.borrow_mut();
                    for u in users {
                        let bare = format!("{u}@{host}");
                        if ctx.is_home(&bare) {
                            accounts.insert(bare);
                        }
                    }
                    index.loaded.borrow_mut().insert(host);
                }
                Err(e) => {
                    log::warn!("{module}: cannot list {host}'s accounts with data: {e}");
                    // The next one to ask tries again.
                    index.loading.borrow_mut().remove(&host);
                }
            }
        })
        .detach();
    }

    /// Whether `bare` may hold data (true while its host is not known yet).
    pub(super) fn may_hold(&self, bare: &str) -> bool {
        !self
            .loaded
            .borrow()
            .contains(crate::proto::jid::domain_of(bare))
            || self.accounts.borrow().contains(bare)
    }

    /// Records whether `bare` holds data now.
    pub(super) fn set(&self, bare: &str, holds: bool) {
        if holds {
            self.accounts.borrow_mut().insert(bare.to_string());
        } else {
            self.accounts.borrow_mut().remove(bare);
        }
    }

    /// Whether `bare` may hold data, forgetting that it does (what it holds is about to be taken).
    pub(super) fn take(&self, bare: &str) -> bool {
        let removed = self.accounts.borrow_mut().remove(bare);
        removed
            || !self
                .loaded
                .borrow()
                .contains(crate::proto::jid::domain_of(bare))
    }
}

/// Work waiting for a value a [`Loader`] reads, in the order it came.
pub(super) type LoadJob<T> = Box<dyn FnOnce(&ModuleCtx, &Rc<T>)>;

/// Reads of one key that keep meeting changes written meanwhile before the last is taken as it is.
const LOAD_ATTEMPTS: usize = 3;

/// Reads per-account values from the store for a module's per-shard cache (rosters, blocklists): one
/// read per key at a time, with whatever needs the value meanwhile waiting behind it in order, so that
/// an account's work keeps its order and other accounts' reads do not wait for it. The store runs on
/// several threads: a read that a change written through here may have overtaken is read again, a few
/// times, and the cache is told whether the value it finally gets may be kept.
pub(super) struct Loader<T> {
    waiting: RefCell<HashMap<String, Vec<LoadJob<T>>>>,
    writes: Cell<u64>,
}

impl<T> Default for Loader<T> {
    fn default() -> Self {
        Loader {
            waiting: RefCell::new(HashMap::new()),
            writes: Cell::new(0),
        }
    }
}

impl<T: 'static> Loader<T> {
    /// A change was written through to the cache: reads under way may be older than it.
    pub(super) fn wrote(&self) {
        self.writes.set(self.writes.get() + 1);
    }

    /// The count of changes written through, to tell later whether a read was overtaken.
    pub(super) fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// Queues `job` for `key` and, unless a read of it is under way, starts one: `read` runs on a
    /// store worker, and `keep` turns what it read into what the waiting work gets, told whether no
    /// change overtook the read (only then may it keep the value). A failed read drops the waiting
    /// work, logged with `what` it was.
    pub(super) fn load<V, R, K>(
        self: &Rc<Self>,
        ctx: &ModuleCtx,
        key: &str,
        job: LoadJob<T>,
        what: &'static str,
        read: R,
        keep: K,
    ) where
        V: Send + 'static,
        R: FnOnce(&dyn Store) -> Result<V, StoreError> + Send + Clone + 'static,
        K: FnOnce(&ModuleCtx, V, bool) -> Rc<T> + 'static,
    {
        if let Some(waiting) = self.waiting.borrow_mut().get_mut(key) {
            waiting.push(job);
            return;
        }
        self.waiting.borrow_mut().insert(key.to_string(), vec![job]);
        let (loader, ctx, key) = (self.clone(), ctx.clone(), key.to_string());
        glommio::spawn_local(async move {
            let mut attempts = 0;
            let value = loop {
                attempts += 1;
                let writes_before = loader.writes();
                match ctx.store().run(read.clone()).await {
                    Ok(v) => {
                        let fresh = loader.writes() == writes_before;
                        if fresh || attempts >= LOAD_ATTEMPTS {
                            break Ok(keep(&ctx, v, fresh));
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            let waiting = loader.waiting.borrow_mut().remove(&key).unwrap_or_default();
            match value {
                Ok(value) => {
                    for job in waiting {
                        job(&ctx, &value);
                    }
                }
                Err(e) => log::warn!(
                    "{key}'s {what} did not load ({e}); {} waiting for it dropped",
                    waiting.len()
                ),
            }
        })
        .detach();
    }
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

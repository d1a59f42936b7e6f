//! Storage behind traits, cut from what the server and its modules call: [`Accounts`] (accounts and
//! their SCRAM credentials) and [`AccountData`] (each module's per-account values, keyed by module and
//! key: vCards, private XML, last activity, offline messages), and [`Rosters`]. [`sqlite`] is the
//! embedded implementation; [`postgres`] the one for several hosts on one database, chosen by
//! `[storage] backend`; [`tests::contract`] is the suite every implementation must pass. Shards never touch a
//! backend themselves: [`StoreWorkers`] runs every query on worker threads fed by a bounded crossbeam
//! channel, and a shard awaits the answer, so a slow disk stalls a login, never a reactor.

pub mod layout;
pub mod piefxis;
pub mod postgres;
pub mod sqlite;

use std::path::Path;

use crate::config::{StorageBackend, StorageConfig};
use crate::proto::roster::RosterItem;
use crate::proto::sasl::Credentials;

pub use sqlite::UserDb;

/// A store error, with what was being done.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Accounts and their credentials.
pub trait Accounts {
    /// Adds an account; fails when it exists.
    fn add(&self, host: &str, username: &str, creds: &Credentials) -> Result<(), StoreError>;
    /// Replaces an account's credentials; fails when it does not exist.
    fn set_credentials(
        &self,
        host: &str,
        username: &str,
        creds: &Credentials,
    ) -> Result<(), StoreError>;
    /// Replaces an account's credentials with `new` if they still are `old`, in one statement; false
    /// when they are not (changed meanwhile, e.g. a password set, which then stands) or the account
    /// is gone.
    fn replace_credentials(
        &self,
        host: &str,
        username: &str,
        old: &Credentials,
        new: &Credentials,
    ) -> Result<bool, StoreError>;
    /// Removes an account and every module's data for it, atomically; fails when it does not exist.
    fn delete(&self, host: &str, username: &str) -> Result<(), StoreError>;
    /// Every account as `(host, username)`, sorted; only `host`'s when given.
    fn list(&self, host: Option<&str>) -> Result<Vec<(String, String)>, StoreError>;
    /// How many accounts (of `host`, when given): a figure for operators, without the listing.
    fn count(&self, host: Option<&str>) -> Result<u64, StoreError> {
        Ok(self.list(host)?.len() as u64)
    }
    fn exists(&self, host: &str, username: &str) -> Result<bool, StoreError>;
    fn credentials(&self, host: &str, username: &str) -> Result<Option<Credentials>, StoreError>;
}

/// Modules' per-account values, by module and key.
pub trait AccountData {
    /// A module's value for an account under `key`.
    fn data_get(
        &self,
        host: &str,
        username: &str,
        module: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets (or, with `None`, removes) several of a module's values for an account, atomically.
    fn data_put(
        &self,
        host: &str,
        username: &str,
        module: &str,
        values: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError>;
    /// Removes every module's data for an account (when the account itself lives elsewhere, e.g. with
    /// external authentication).
    fn data_remove_account(&self, host: &str, username: &str) -> Result<(), StoreError>;
    /// A module's values for an account in key order.
    fn data_all(
        &self,
        host: &str,
        username: &str,
        module: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// A module's values for an account in key order, removed in the same transaction (what a queue
    /// hands out once).
    fn data_take_all(
        &self,
        host: &str,
        username: &str,
        module: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// The accounts of `host` for which a module holds anything.
    fn data_accounts(&self, host: &str, module: &str) -> Result<Vec<String>, StoreError>;
    /// How many values a module holds for an account.
    fn data_count(&self, host: &str, username: &str, module: &str) -> Result<u64, StoreError>;
    /// The total size of a module's values for an account (for quotas).
    fn data_size(&self, host: &str, username: &str, module: &str) -> Result<u64, StoreError>;
}

/// Rosters (RFC 6121 §2): each account's items and the roster's version (XEP-0237), which every change
/// advances.
pub trait Rosters {
    /// The roster in contact order and its version (0 for a roster never written).
    fn roster(&self, host: &str, username: &str) -> Result<(u64, Vec<RosterItem>), StoreError>;
    fn roster_item(
        &self,
        host: &str,
        username: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StoreError>;
    /// Writes an item (replacing the one for its contact); returns the new version.
    fn roster_put(&self, host: &str, username: &str, item: &RosterItem) -> Result<u64, StoreError>;
    /// Removes the item for `contact`; the new version, or `None` when there was none.
    fn roster_remove(
        &self,
        host: &str,
        username: &str,
        contact: &str,
    ) -> Result<Option<u64>, StoreError>;
    fn roster_count(&self, host: &str, username: &str) -> Result<u64, StoreError>;
}

/// A whole backend, as one worker thread owns it.
pub trait Store: Accounts + AccountData + Rosters + Send {}

impl<T: Accounts + AccountData + Rosters + Send> Store for T {}

type Job = Box<dyn FnOnce(&dyn Store) + Send>;

/// Worker threads that own backend connections and run queries for the shards.
#[derive(Clone)]
pub struct StoreWorkers {
    jobs: crossbeam_channel::Sender<Job>,
    /// How long a shard waits for one query before it answers with an error.
    timeout: std::time::Duration,
}

/// The per-request timeout: a database that hangs (a network partition, a lock held for ever) fails
/// the requests that need it — a login with `temporary-auth-failure`, a stored message with an error to
/// its sender — instead of leaving them waiting with their sessions.
pub const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl StoreWorkers {
    /// Starts `storage.pool_size()` workers on the configured backend: the embedded database in
    /// `data_dir`, or PostgreSQL (its schema migrated first, each worker with its own connection).
    pub fn start(storage: &StorageConfig, data_dir: &Path) -> Result<StoreWorkers, StoreError> {
        let threads = storage.pool_size().max(1);
        let backends = match storage.backend {
            StorageBackend::Sqlite => {
                // Opened once alone first, so that the tables are created before workers race to.
                UserDb::open(data_dir)?;
                (0..threads)
                    .map(|_| UserDb::open(data_dir).map(|db| Box::new(db) as Box<dyn Store>))
                    .collect::<Result<Vec<_>, _>>()?
            }
            StorageBackend::Postgres => {
                let config = postgres_target(storage)?;
                postgres::migrate(&config)?;
                (0..threads)
                    .map(|_| {
                        postgres::PgStore::open(config.clone())
                            .map(|db| Box::new(db) as Box<dyn Store>)
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Self::with_backends(backends)
    }

    /// Starts one worker per backend connection.
    pub fn with_backends(backends: Vec<Box<dyn Store>>) -> Result<StoreWorkers, StoreError> {
        // Bounded: a flood of logins waits for a worker instead of queueing without limit.
        let (tx, rx) = crossbeam_channel::bounded::<Job>(4096);
        for (i, db) in backends.into_iter().enumerate() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("rjabberd-store-{i}"))
                .spawn(move || {
                    for job in rx {
                        job(&*db);
                    }
                })
                .map_err(|e| StoreError(format!("cannot start a store worker: {e}")))?;
        }
        Ok(StoreWorkers {
            jobs: tx,
            timeout: QUERY_TIMEOUT,
        })
    }

    /// The same workers with another per-request timeout.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> StoreWorkers {
        self.timeout = timeout;
        self
    }

    /// Runs `f` on a worker and awaits its result. Never blocks the calling reactor: a full job queue
    /// answers with an error at once.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let started = crate::metrics::now_ns();
        let (tx, rx) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move |db| {
            let begun = std::time::Instant::now();
            let result = f(db);
            let _ = tx.send((result, begun.elapsed().as_nanos() as u64));
        });
        let (result, exec_ns) = match self.jobs.try_send(job) {
            // The job still runs when its time is up; its answer then has nobody to go to.
            Ok(()) => match glommio::timer::timeout(self.timeout, async { Ok(rx.await) }).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => (Err(StoreError("store worker gone".into())), 0),
                Err(_) => (
                    Err(StoreError(format!(
                        "store query timed out after {} ms",
                        self.timeout.as_millis()
                    ))),
                    0,
                ),
            },
            Err(_) => (Err(StoreError("store queue full".into())), 0),
        };
        // Recorded on the shard that asked (it awaited here), in that shard's histograms: the whole
        // wait, and the part a worker spent on the query itself; the rest is the queue.
        let ok = result.is_ok();
        crate::metrics::with(|m| m.store_query(crate::metrics::now_ns() - started, exec_ns, ok));
        result
    }

    /// Queries waiting for a worker.
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }
}

/// The configured PostgreSQL database (`storage.url`, `storage.ca_file`), for whatever connects to it:
/// the store, `rjabberd storage migrate`, the cluster's registry.
pub fn postgres_target(storage: &StorageConfig) -> Result<postgres::Target, StoreError> {
    let url = storage
        .url
        .as_ref()
        .ok_or_else(|| StoreError("storage.url is required for PostgreSQL".into()))?;
    postgres::Target::new(
        url.get_ref(),
        storage.ca_file.as_ref().map(|c| c.get_ref().as_path()),
    )
}

/// One connection to the configured store, for the commands that change it beside a running server
/// (`rjabberd user …`, `rjabberd roster …`); PostgreSQL's schema is migrated first, as at start.
pub fn open(storage: &StorageConfig, data_dir: &Path) -> Result<Box<dyn Store>, StoreError> {
    Ok(match storage.backend {
        StorageBackend::Sqlite => Box::new(UserDb::open(data_dir)?),
        StorageBackend::Postgres => {
            let config = postgres_target(storage)?;
            postgres::migrate(&config)?;
            Box::new(postgres::PgStore::open(config)?)
        }
    })
}

/// Brings the store's schema up to date and says what was done (`rjabberd storage migrate`).
pub fn migrate(storage: &StorageConfig, data_dir: &Path) -> Result<String, StoreError> {
    match storage.backend {
        StorageBackend::Sqlite => {
            UserDb::open(data_dir)?;
            Ok(format!(
                "SQLite: {} is up to date",
                UserDb::path(data_dir).display()
            ))
        }
        StorageBackend::Postgres => {
            let applied = postgres::migrate(&postgres_target(storage)?)?;
            let latest = postgres::MIGRATIONS.last().map_or(0, |(v, _)| *v);
            Ok(match applied.as_slice() {
                [] => format!("PostgreSQL: the schema is at version {latest}; nothing to apply"),
                _ => format!(
                    "PostgreSQL: applied migration(s) {}; the schema is at version {latest}",
                    applied
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What every backend must do; `open` gives a second connection to the same store.
    pub(crate) fn contract(db: &dyn Store, open: &dyn Fn() -> Box<dyn Store>) {
        let c = Credentials::from_password("pencil", b"0123456789abcdef", 4096).unwrap();
        db.add("example.org", "juliet", &c).unwrap();
        assert!(db.add("example.org", "juliet", &c).is_err());
        assert_eq!(
            db.credentials("example.org", "juliet").unwrap(),
            Some(c.clone())
        );
        assert_eq!(db.credentials("example.org", "romeo").unwrap(), None);
        let c2 = Credentials::from_password("other", b"fedcba9876543210", 4096).unwrap();
        db.set_credentials("example.org", "juliet", &c2).unwrap();
        assert_eq!(db.credentials("example.org", "juliet").unwrap(), Some(c2));
        assert!(db.set_credentials("example.org", "nobody", &c).is_err());
        db.add("other.example", "romeo", &c).unwrap();
        assert_eq!(db.list(None).unwrap().len(), 2);
        assert_eq!(
            db.list(Some("other.example")).unwrap(),
            vec![("other.example".into(), "romeo".into())]
        );

        // Module data: put, get, count, size, take in key order, accounts, removal with the account.
        let put = |k: &str, v: &[u8]| (k.to_string(), Some(v.to_vec()));
        db.data_put(
            "example.org",
            "juliet",
            "m",
            &[put("b", b"22"), put("a", b"1")],
        )
        .unwrap();
        db.data_put("example.org", "juliet", "other", &[put("x", b"y")])
            .unwrap();
        assert_eq!(
            db.data_get("example.org", "juliet", "m", "a").unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(db.data_count("example.org", "juliet", "m").unwrap(), 2);
        assert_eq!(db.data_size("example.org", "juliet", "m").unwrap(), 3);
        assert_eq!(
            db.data_accounts("example.org", "m").unwrap(),
            vec!["juliet".to_string()]
        );
        db.data_put("example.org", "juliet", "m", &[("b".into(), None)])
            .unwrap();
        db.data_put("example.org", "juliet", "m", &[put("c", b"3")])
            .unwrap();
        assert_eq!(
            db.data_all("example.org", "juliet", "m").unwrap(),
            vec![("a".into(), b"1".to_vec()), ("c".into(), b"3".to_vec())]
        );
        assert_eq!(db.data_count("example.org", "juliet", "m").unwrap(), 2);
        assert_eq!(
            db.data_take_all("example.org", "juliet", "m").unwrap(),
            vec![("a".into(), b"1".to_vec()), ("c".into(), b"3".to_vec())]
        );
        assert_eq!(db.data_count("example.org", "juliet", "m").unwrap(), 0);

        // A second connection (as the CLI beside a running server) sees changes at once.
        let other = open();
        other.delete("example.org", "juliet").unwrap();
        assert!(!db.exists("example.org", "juliet").unwrap());
        assert!(db.delete("example.org", "juliet").is_err());
        assert_eq!(
            db.data_get("example.org", "juliet", "other", "x").unwrap(),
            None,
            "module data goes with the account"
        );
        // Rosters: versions advance, items round-trip, removal with the account.
        let mut item = RosterItem::new("nurse@example.org");
        item.name = Some("Nurse".into());
        item.groups = vec!["Servants".into(), "Kin".into()];
        item.subscription = crate::proto::roster::Subscription::Both;
        item.pending_in = true;
        assert_eq!(db.roster("other.example", "romeo").unwrap(), (0, vec![]));
        let v1 = db.roster_put("other.example", "romeo", &item).unwrap();
        let v2 = db
            .roster_put("other.example", "romeo", &RosterItem::new("a@example.org"))
            .unwrap();
        assert!(v2 > v1 && v1 > 0);
        let (ver, items) = db.roster("other.example", "romeo").unwrap();
        assert_eq!(ver, v2);
        assert_eq!(items, vec![RosterItem::new("a@example.org"), item.clone()]);
        assert_eq!(
            db.roster_item("other.example", "romeo", "nurse@example.org")
                .unwrap(),
            Some(item)
        );
        assert_eq!(db.roster_count("other.example", "romeo").unwrap(), 2);
        assert_eq!(
            db.roster_remove("other.example", "romeo", "nobody@example.org")
                .unwrap(),
            None
        );
        let v3 = db
            .roster_remove("other.example", "romeo", "a@example.org")
            .unwrap()
            .unwrap();
        assert!(v3 > v2);
        db.data_put("other.example", "romeo", "m", &[put("k", b"v")])
            .unwrap();
        db.data_remove_account("other.example", "romeo").unwrap();
        assert_eq!(db.data_count("other.example", "romeo", "m").unwrap(), 0);
        assert_eq!(db.roster_count("other.example", "romeo").unwrap(), 0);
        assert!(db.exists("other.example", "romeo").unwrap());
        db.roster_put("other.example", "romeo", &RosterItem::new("b@example.org"))
            .unwrap();
        db.delete("other.example", "romeo").unwrap();
        assert_eq!(db.roster("other.example", "romeo").unwrap(), (0, vec![]));

        // An account imported with one hash's keys (XEP-0227 from ejabberd): the other's are empty,
        // with the same salt and iteration count, and come back so.
        let mut one = c.clone();
        one.sha256.stored_key.clear();
        one.sha256.server_key.clear();
        db.add("example.org", "imported", &one).unwrap();
        assert_eq!(
            db.credentials("example.org", "imported").unwrap(),
            Some(one.clone())
        );
        // The upgrade at a PLAIN login replaces them only if they are still what it read.
        let stale = Credentials::from_password("other", b"fedcba9876543210", 4096).unwrap();
        assert!(
            !db.replace_credentials("example.org", "imported", &stale, &c)
                .unwrap()
        );
        assert!(
            db.replace_credentials("example.org", "imported", &one, &c)
                .unwrap()
        );
        assert_eq!(
            db.credentials("example.org", "imported").unwrap(),
            Some(c.clone())
        );
        assert!(
            !db.replace_credentials("example.org", "imported", &one, &c)
                .unwrap()
        );
        assert!(
            !db.replace_credentials("example.org", "nobody", &one, &c)
                .unwrap()
        );
        db.delete("example.org", "imported").unwrap();
    }

    #[test]
    fn a_query_past_its_time_fails_and_the_next_one_is_served() {
        let dir =
            std::env::temp_dir().join(format!("rjabberd-store-timeout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db: Box<dyn Store> = Box::new(UserDb::open(&dir).unwrap());
        let workers = StoreWorkers::with_backends(vec![db])
            .unwrap()
            .with_timeout(std::time::Duration::from_millis(100));
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let started = std::time::Instant::now();
                let slow = workers
                    .run(|_| {
                        std::thread::sleep(std::time::Duration::from_millis(400));
                        Ok(())
                    })
                    .await;
                let e = slow.unwrap_err();
                assert!(e.0.contains("timed out"), "{e}");
                assert!(started.elapsed() < std::time::Duration::from_millis(350));
                // The worker finishes the slow job, then serves the next one.
                glommio::timer::sleep(std::time::Duration::from_millis(400)).await;
                let n = workers.run(|db| db.list(None)).await.unwrap();
                assert!(n.is_empty());
            })
            .unwrap()
            .join()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sqlite_keeps_the_contract() {
        let dir = std::env::temp_dir().join(format!("rjabberd-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = UserDb::open(&dir).unwrap();
        let d = dir.clone();
        contract(&db, &move || Box::new(UserDb::open(&d).unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Two workers queueing and handing out (as mod_offline does) at the same time: a take that reads
    /// and then deletes must wait for the other writer, not fail with "database is locked" (it did
    /// for a third of the recipients in `perf/knobs.sh storage`).
    #[test]
    fn sqlite_takes_while_another_connection_writes() {
        let dir = std::env::temp_dir().join(format!("rjabberd-store-take-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        UserDb::open(&dir).unwrap();
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let db = UserDb::open(&dir).unwrap();
                    let user = format!("u{w}");
                    for i in 0..500 {
                        let v = vec![(format!("{i:05}"), Some(b"m".to_vec()))];
                        db.data_put("h", &user, "offline", &v).unwrap();
                        let taken = db.data_take_all("h", &user, "offline").unwrap();
                        assert_eq!(taken.len(), 1, "worker {w}, round {i}");
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The throw-away PostgreSQL server of the black-box tests, shared with the unit tests here and with
/// the other modules' unit tests that need a database (one copy: a file loaded as two modules is
/// refused by clippy).
#[cfg(test)]
#[path = "../../tests/common/pg.rs"]
pub(crate) mod throwaway_pg;

#[cfg(test)]
mod postgres_tests {
    use super::postgres::{MIGRATIONS, PgStore, Target, migrate};
    use super::throwaway_pg::PgInstance;
    use super::*;

    #[test]
    #[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
    fn postgres_keeps_the_contract() {
        let Some(pg) = PgInstance::start() else {
            return;
        };
        let config = Target::new(&pg.create_db("contract"), None).unwrap();
        let all: Vec<i32> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert_eq!(migrate(&config).unwrap(), all);
        let db = PgStore::open(config.clone()).unwrap();
        tests::contract(&db, &move || {
            Box::new(PgStore::open(config.clone()).unwrap())
        });
    }

    #[test]
    #[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
    fn postgres_migrations_run_once_when_hosts_start_together() {
        let Some(pg) = PgInstance::start() else {
            return;
        };
        let config = Target::new(&pg.create_db("migrations"), None).unwrap();
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let c = config.clone();
                std::thread::spawn(move || migrate(&c).unwrap())
            })
            .collect();
        let mut applied: Vec<Vec<i32>> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        applied.sort();
        let all: Vec<i32> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            applied,
            vec![vec![], vec![], vec![], all],
            "one host applies them"
        );
        assert_eq!(migrate(&config).unwrap(), Vec::<i32>::new());
        // A database a newer rjabberd migrated is refused rather than misread.
        pg.psql(
            "migrations",
            "INSERT INTO schema_migrations (version) VALUES (9999)",
        );
        let err = migrate(&config).unwrap_err();
        assert!(err.0.contains("9999"), "{err}");
    }

    #[test]
    #[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
    fn postgres_worker_reconnects_after_its_connection_breaks() {
        let Some(pg) = PgInstance::start() else {
            return;
        };
        let config = Target::new(&pg.create_db("reconnect"), None).unwrap();
        migrate(&config).unwrap();
        let db = PgStore::open(config).unwrap();
        let c = Credentials::from_password("pencil", b"0123456789abcdef", 4096).unwrap();
        db.add("example.org", "juliet", &c).unwrap();
        pg.psql(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = 'reconnect' AND pid <> pg_backend_pid()",
        );
        // The query that meets the connection the database ended runs again on a new one.
        assert!(db.exists("example.org", "juliet").unwrap());
        assert!(db.exists("example.org", "juliet").unwrap());
        // With the server gone, a query fails, and so do those before the next attempt is due, at
        // once rather than after a connect timeout each.
        drop(pg);
        assert!(db.exists("example.org", "juliet").is_err());
        let _ = db.exists("example.org", "juliet");
        let started = std::time::Instant::now();
        let err = db.exists("example.org", "juliet").unwrap_err();
        assert!(err.0.contains("not due"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
    }

    #[test]
    #[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
    fn postgres_over_tls_checks_the_servers_certificate() {
        let server = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let Some(pg) =
            PgInstance::start_tls(&server.cert.pem(), &server.signing_key.serialize_pem())
        else {
            return;
        };
        pg.create_db("tls");
        let dir = std::env::temp_dir().join(format!("rjabberd-pgca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, stranger) = (dir.join("ca.pem"), dir.join("stranger.pem"));
        std::fs::write(&ca, server.cert.pem()).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&stranger, other.cert.pem()).unwrap();
        // sslmode=require: the session is TLS or nothing, so success means TLS.
        let url = format!("{} sslmode=require", pg.tcp_url("tls"));
        let target = Target::new(&url, Some(&ca)).unwrap();
        migrate(&target).unwrap();
        let db = PgStore::open(target).unwrap();
        let c = Credentials::from_password("pencil", b"0123456789abcdef", 4096).unwrap();
        db.add("example.org", "juliet", &c).unwrap();
        assert!(db.exists("example.org", "juliet").unwrap());
        // A certificate not signed by the configured authority is refused.
        let err = PgStore::open(Target::new(&url, Some(&stranger)).unwrap())
            .err()
            .expect("an unknown certificate is refused");
        assert!(err.0.contains("cannot connect"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The embedded store: accounts and their SCRAM credentials, and the per-account data of modules
//! (vCards, private XML, last activity) keyed by module and key, in one SQLite database under the data
//! directory; removing an account removes its module data in the same transaction. SQLite in WAL mode lets the `rjabberd user …` commands change accounts while the server runs,
//! and each lookup sees the change at once. Shards never touch the database themselves: [`StoreWorkers`]
//! runs every query on worker threads fed by a crossbeam channel, and a shard awaits the answer, so a slow
//! disk stalls a login, never a reactor.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::proto::sasl::{Credentials, Hash, ScramCredential};

/// A store error, with what was being done.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// One connection to the account database.
pub struct UserDb {
    conn: Connection,
}

impl UserDb {
    /// The database file inside `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("rjabberd.sqlite3")
    }

    /// Opens (creating when missing) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<UserDb, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", data_dir.display())))?;
        let conn = Connection::open(Self::path(data_dir))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS users (
                 host TEXT NOT NULL,
                 username TEXT NOT NULL,
                 iterations INTEGER NOT NULL,
                 salt BLOB NOT NULL,
                 sha1_stored_key BLOB NOT NULL,
                 sha1_server_key BLOB NOT NULL,
                 sha256_stored_key BLOB NOT NULL,
                 sha256_server_key BLOB NOT NULL,
                 PRIMARY KEY (host, username)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS account_data (
                 host TEXT NOT NULL,
                 username TEXT NOT NULL,
                 module TEXT NOT NULL,
                 key TEXT NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (host, username, module, key)
             ) WITHOUT ROWID;",
        )?;
        Ok(UserDb { conn })
    }

    /// Adds an account; fails when it exists.
    pub fn add(&self, host: &str, username: &str, creds: &Credentials) -> Result<(), StoreError> {
        let sql = "INSERT OR IGNORE INTO users VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
        if self.write_credentials(sql, host, username, creds)? == 0 {
            return Err(StoreError(format!("{username}@{host} already exists")));
        }
        Ok(())
    }

    /// Replaces an account's credentials; fails when it does not exist.
    pub fn set_credentials(
        &self,
        host: &str,
        username: &str,
        creds: &Credentials,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE users SET iterations = ?3, salt = ?4, sha1_stored_key = ?5, sha1_server_key = ?6,
                 sha256_stored_key = ?7, sha256_server_key = ?8 WHERE host = ?1 AND username = ?2";
        if self.write_credentials(sql, host, username, creds)? == 0 {
            return Err(StoreError(format!("{username}@{host} does not exist")));
        }
        Ok(())
    }

    /// Runs `sql` with the account and its credentials bound as ?1…?8, in the table's column order;
    /// returns the rows changed.
    fn write_credentials(
        &self,
        sql: &str,
        host: &str,
        username: &str,
        creds: &Credentials,
    ) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            sql,
            params![
                host,
                username,
                creds.sha256.iterations,
                creds.sha256.salt,
                creds.sha1.stored_key,
                creds.sha1.server_key,
                creds.sha256.stored_key,
                creds.sha256.server_key
            ],
        )?)
    }

    /// Removes an account and every module's data for it.
    pub fn delete(&self, host: &str, username: &str) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let n = tx.execute(
            "DELETE FROM users WHERE host = ?1 AND username = ?2",
            params![host, username],
        )?;
        if n == 0 {
            return Err(StoreError(format!("{username}@{host} does not exist")));
        }
        tx.execute(
            "DELETE FROM account_data WHERE host = ?1 AND username = ?2",
            params![host, username],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A module's value for an account under `key`.
    pub fn data_get(
        &self,
        host: &str,
        username: &str,
        module: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM account_data WHERE host = ?1 AND username = ?2 AND module = ?3 AND key = ?4",
                params![host, username, module, key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Sets (or, with `None`, removes) several of a module's values for an account, atomically.
    pub fn data_put(
        &self,
        host: &str,
        username: &str,
        module: &str,
        values: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        for (key, value) in values {
            match value {
                Some(v) => tx.execute(
                    "INSERT OR REPLACE INTO account_data VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![host, username, module, key, v],
                )?,
                None => tx.execute(
                    "DELETE FROM account_data WHERE host = ?1 AND username = ?2 AND module = ?3 AND key = ?4",
                    params![host, username, module, key],
                )?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes every module's data for an account (when the account itself lives elsewhere, e.g. with
    /// external authentication).
    pub fn data_remove_account(&self, host: &str, username: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM account_data WHERE host = ?1 AND username = ?2",
            params![host, username],
        )?;
        Ok(())
    }

    /// A module's values for an account in key order, removed from the store in the same transaction
    /// (what a queue hands out once).
    pub fn data_take_all(
        &self,
        host: &str,
        username: &str,
        module: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let rows = {
            let mut stmt = tx.prepare(
                "SELECT key, value FROM account_data WHERE host = ?1 AND username = ?2 AND module = ?3 ORDER BY key",
            )?;
            let rows = stmt.query_map(params![host, username, module], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            rows.collect::<Result<Vec<(String, Vec<u8>)>, _>>()?
        };
        tx.execute(
            "DELETE FROM account_data WHERE host = ?1 AND username = ?2 AND module = ?3",
            params![host, username, module],
        )?;
        tx.commit()?;
        Ok(rows)
    }

    /// The accounts of `host` for which a module holds anything.
    pub fn data_accounts(&self, host: &str, module: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT username FROM account_data WHERE host = ?1 AND module = ?2",
        )?;
        let rows = stmt.query_map(params![host, module], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many values a module holds for an account.
    pub fn data_count(&self, host: &str, username: &str, module: &str) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM account_data WHERE host = ?1 AND username = ?2 AND module = ?3",
            params![host, username, module],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// The total size of a module's values for an account (for quotas).
    pub fn data_size(&self, host: &str, username: &str, module: &str) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(LENGTH(value)), 0) FROM account_data WHERE host = ?1 AND username = ?2 AND module = ?3",
            params![host, username, module],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Every account as `(host, username)`, sorted; only `host`'s when given.
    pub fn list(&self, host: Option<&str>) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT host, username FROM users WHERE ?1 IS NULL OR host = ?1 ORDER BY host, username",
        )?;
        let rows = stmt.query_map(params![host], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn exists(&self, host: &str, username: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM users WHERE host = ?1 AND username = ?2",
                params![host, username],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn credentials(
        &self,
        host: &str,
        username: &str,
    ) -> Result<Option<Credentials>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT iterations, salt, sha1_stored_key, sha1_server_key, sha256_stored_key, sha256_server_key
                 FROM users WHERE host = ?1 AND username = ?2",
                params![host, username],
                |r| {
                    let iterations: u32 = r.get(0)?;
                    let salt: Vec<u8> = r.get(1)?;
                    Ok(Credentials {
                        sha1: ScramCredential {
                            hash: Hash::Sha1,
                            iterations,
                            salt: salt.clone(),
                            stored_key: r.get(2)?,
                            server_key: r.get(3)?,
                        },
                        sha256: ScramCredential {
                            hash: Hash::Sha256,
                            iterations,
                            salt,
                            stored_key: r.get(4)?,
                            server_key: r.get(5)?,
                        },
                    })
                },
            )
            .optional()?)
    }
}

type Job = Box<dyn FnOnce(&UserDb) + Send>;

/// Worker threads that own database connections and run queries for the shards.
#[derive(Clone)]
pub struct StoreWorkers {
    jobs: crossbeam_channel::Sender<Job>,
}

impl StoreWorkers {
    /// Starts `threads` workers on the database in `data_dir` (opened once here to fail early).
    pub fn start(data_dir: &Path, threads: usize) -> Result<StoreWorkers, StoreError> {
        UserDb::open(data_dir)?;
        // Bounded: a flood of logins waits for a worker instead of queueing without limit.
        let (tx, rx) = crossbeam_channel::bounded::<Job>(4096);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let db = UserDb::open(data_dir)?;
            std::thread::Builder::new()
                .name(format!("rjabberd-store-{i}"))
                .spawn(move || {
                    for job in rx {
                        job(&db);
                    }
                })
                .map_err(|e| StoreError(format!("cannot start a store worker: {e}")))?;
        }
        Ok(StoreWorkers { jobs: tx })
    }

    /// Runs `f` on a worker and awaits its result. Never blocks the calling reactor: a full job queue
    /// answers with an error at once.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&UserDb) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move |db| {
            let _ = tx.send(f(db));
        });
        self.jobs
            .try_send(job)
            .map_err(|_| StoreError("store queue full".into()))?;
        rx.await
            .map_err(|_| StoreError("store worker gone".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_round_trip() {
        let dir = std::env::temp_dir().join(format!("rjabberd-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = UserDb::open(&dir).unwrap();
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
        db.add("other.example", "romeo", &c).unwrap();
        assert_eq!(db.list(None).unwrap().len(), 2);
        assert_eq!(
            db.list(Some("other.example")).unwrap(),
            vec![("other.example".into(), "romeo".into())]
        );
        // A second connection (as the CLI beside a running server) sees changes at once.
        let other = UserDb::open(&dir).unwrap();
        other.delete("example.org", "juliet").unwrap();
        assert!(!db.exists("example.org", "juliet").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The embedded store: SQLite under the data directory, one database file. Accounts and their SCRAM
//! credentials, and the per-account data of modules (vCards, private XML, last activity, offline
//! messages) keyed by module and key; removing an account removes its module data in the same
//! transaction. WAL mode lets the `rjabberd user …` commands change accounts while the server runs, and
//! each lookup sees the change at once. One `UserDb` is one connection; the server's worker threads each
//! own one.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::{AccountData, Accounts, Rosters, StoreError};
use crate::proto::roster::{RosterItem, Subscription};
use crate::proto::sasl::{Credentials, Hash, ScramCredential};

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
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS roster_items (
                 host TEXT NOT NULL,
                 username TEXT NOT NULL,
                 contact TEXT NOT NULL,
                 name TEXT,
                 -- joined with U+001F, which XML 1.0 character data cannot hold
                 groups TEXT NOT NULL,
                 subscription TEXT NOT NULL,
                 ask INTEGER NOT NULL,
                 pending_in INTEGER NOT NULL,
                 approved INTEGER NOT NULL,
                 listed INTEGER NOT NULL,
                 PRIMARY KEY (host, username, contact)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS roster_versions (
                 host TEXT NOT NULL,
                 username TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 PRIMARY KEY (host, username)
             ) WITHOUT ROWID;",
        )?;
        Ok(UserDb { conn })
    }

    /// Runs `sql` with `host`, `username` (?1, ?2), then each of `creds`' columns in the order all
    /// the credential statements share (iterations, salt, SHA-1 keys, SHA-256 keys): one set for an
    /// insert or an update, the new then the old for a compare-and-replace. The rows it touched.
    fn write_credentials(
        &self,
        sql: &str,
        host: &str,
        username: &str,
        creds: &[&Credentials],
    ) -> Result<usize, StoreError> {
        let mut params: Vec<&dyn rusqlite::ToSql> = vec![&host, &username];
        for c in creds {
            params.extend([
                &c.sha256.iterations as &dyn rusqlite::ToSql,
                &c.sha256.salt,
                &c.sha1.stored_key,
                &c.sha1.server_key,
                &c.sha256.stored_key,
                &c.sha256.server_key,
            ]);
        }
        Ok(self.conn.execute(sql, params.as_slice())?)
    }
}

impl Accounts for UserDb {
    /// Adds an account; fails when it exists.
    fn add(&self, host: &str, username: &str, creds: &Credentials) -> Result<(), StoreError> {
        let sql = "INSERT OR IGNORE INTO users VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
        if self.write_credentials(sql, host, username, &[creds])? == 0 {
            return Err(StoreError(format!("{username}@{host} already exists")));
        }
        Ok(())
    }

    /// Replaces an account's credentials; fails when it does not exist.
    fn set_credentials(
        &self,
        host: &str,
        username: &str,
        creds: &Credentials,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE users SET iterations = ?3, salt = ?4, sha1_stored_key = ?5, sha1_server_key = ?6,
                 sha256_stored_key = ?7, sha256_server_key = ?8 WHERE host = ?1 AND username = ?2";
        if self.write_credentials(sql, host, username, &[creds])? == 0 {
            return Err(StoreError(format!("{username}@{host} does not exist")));
        }
        Ok(())
    }

    fn replace_credentials(
        &self,
        host: &str,
        username: &str,
        old: &Credentials,
        new: &Credentials,
    ) -> Result<bool, StoreError> {
        let n = self.write_credentials(
            "UPDATE users SET iterations = ?3, salt = ?4, sha1_stored_key = ?5, sha1_server_key = ?6,
                 sha256_stored_key = ?7, sha256_server_key = ?8
             WHERE host = ?1 AND username = ?2 AND iterations = ?9 AND salt = ?10
                 AND sha1_stored_key = ?11 AND sha1_server_key = ?12
                 AND sha256_stored_key = ?13 AND sha256_server_key = ?14",
            host,
            username,
            &[new, old],
        )?;
        Ok(n > 0)
    }

    /// Removes an account and every module's data for it.
    fn delete(&self, host: &str, username: &str) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let n = tx.execute(
            "DELETE FROM users WHERE host = ?1 AND username = ?2",
            params![host, username],
        )?;
        if n == 0 {
            return Err(StoreError(format!("{username}@{host} does not exist")));
        }
        remove_account_data(&tx, host, username)?;
        tx.commit()?;
        Ok(())
    }

    /// Every account as `(host, username)`, sorted; only `host`'s when given.
    fn list(&self, host: Option<&str>) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT host, username FROM users WHERE ?1 IS NULL OR host = ?1 ORDER BY host, username",
        )?;
        let rows = stmt.query_map(params![host], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn count(&self, host: Option<&str>) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM users WHERE ?1 IS NULL OR host = ?1",
            params![host],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    fn exists(&self, host: &str, username: &str) -> Result<bool, StoreError> {
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

    fn credentials(&self, host: &str, username: &str) -> Result<Option<Credentials>, StoreError> {
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

impl AccountData for UserDb {
    /// A module's value for an account under `key`.
    fn data_get(
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
    fn data_put(
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
    fn data_remove_account(&self, host: &str, username: &str) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        remove_account_data(&tx, host, username)?;
        tx.commit()?;
        Ok(())
    }

    /// A module's values for an account in key order, removed from the store in the same transaction
    /// (what a queue hands out once).
    fn data_all(
        &self,
        host: &str,
        username: &str,
        module: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, value FROM account_data WHERE host = ?1 AND username = ?2 AND module = ?3 ORDER BY key",
        )?;
        let rows = stmt.query_map(params![host, username, module], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn data_take_all(
        &self,
        host: &str,
        username: &str,
        module: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // IMMEDIATE: a deferred transaction that reads and then writes fails at once with "database is
        // locked" when another connection wrote in between (WAL mode cannot upgrade its snapshot, and
        // the busy timeout does not apply); two store workers handing out offline messages at the same
        // time did that to a third of the logins in `perf/knobs.sh storage`.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
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
    fn data_accounts(&self, host: &str, module: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT username FROM account_data WHERE host = ?1 AND module = ?2",
        )?;
        let rows = stmt.query_map(params![host, module], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many values a module holds for an account.
    fn data_count(&self, host: &str, username: &str, module: &str) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM account_data WHERE host = ?1 AND username = ?2 AND module = ?3",
            params![host, username, module],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// The total size of a module's values for an account (for quotas).
    fn data_size(&self, host: &str, username: &str, module: &str) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(LENGTH(value)), 0) FROM account_data WHERE host = ?1 AND username = ?2 AND module = ?3",
            params![host, username, module],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}

/// Everything stored for an account besides its credentials: module data and the roster.
fn remove_account_data(
    tx: &rusqlite::Transaction<'_>,
    host: &str,
    username: &str,
) -> Result<(), StoreError> {
    for table in ["account_data", "roster_items", "roster_versions"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE host = ?1 AND username = ?2"),
            params![host, username],
        )?;
    }
    Ok(())
}

const GROUP_SEPARATOR: char = '\u{1f}';

fn roster_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RosterItem> {
    let groups: String = r.get(2)?;
    let subscription: String = r.get(3)?;
    Ok(RosterItem {
        jid: r.get(0)?,
        name: r.get(1)?,
        groups: if groups.is_empty() {
            Vec::new()
        } else {
            groups.split(GROUP_SEPARATOR).map(str::to_string).collect()
        },
        subscription: Subscription::parse(&subscription).unwrap_or_default(),
        ask: r.get(4)?,
        pending_in: r.get(5)?,
        approved: r.get(6)?,
        listed: r.get(7)?,
    })
}

const ROSTER_COLUMNS: &str =
    "contact, name, groups, subscription, ask, pending_in, approved, listed";

/// Advances the roster's version in `tx`; returns the new one.
fn bump_version(
    tx: &rusqlite::Transaction<'_>,
    host: &str,
    username: &str,
) -> Result<u64, StoreError> {
    tx.execute(
        "INSERT INTO roster_versions VALUES (?1, ?2, 1)
         ON CONFLICT (host, username) DO UPDATE SET version = version + 1",
        params![host, username],
    )?;
    Ok(tx.query_row(
        "SELECT version FROM roster_versions WHERE host = ?1 AND username = ?2",
        params![host, username],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

impl Rosters for UserDb {
    fn roster(&self, host: &str, username: &str) -> Result<(u64, Vec<RosterItem>), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let version: Option<i64> = tx
            .query_row(
                "SELECT version FROM roster_versions WHERE host = ?1 AND username = ?2",
                params![host, username],
                |r| r.get(0),
            )
            .optional()?;
        let items = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {ROSTER_COLUMNS} FROM roster_items WHERE host = ?1 AND username = ?2 ORDER BY contact"
            ))?;
            let rows = stmt.query_map(params![host, username], roster_row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok((version.unwrap_or(0) as u64, items))
    }

    fn roster_item(
        &self,
        host: &str,
        username: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {ROSTER_COLUMNS} FROM roster_items WHERE host = ?1 AND username = ?2 AND contact = ?3"
                ),
                params![host, username, contact],
                roster_row,
            )
            .optional()?)
    }

    fn roster_put(&self, host: &str, username: &str, item: &RosterItem) -> Result<u64, StoreError> {
        let sep = GROUP_SEPARATOR.to_string();
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO roster_items VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                host,
                username,
                item.jid,
                item.name,
                item.groups.join(&sep),
                item.subscription.as_str(),
                item.ask,
                item.pending_in,
                item.approved,
                item.listed
            ],
        )?;
        let version = bump_version(&tx, host, username)?;
        tx.commit()?;
        Ok(version)
    }

    fn roster_remove(
        &self,
        host: &str,
        username: &str,
        contact: &str,
    ) -> Result<Option<u64>, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let n = tx.execute(
            "DELETE FROM roster_items WHERE host = ?1 AND username = ?2 AND contact = ?3",
            params![host, username, contact],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let version = bump_version(&tx, host, username)?;
        tx.commit()?;
        Ok(Some(version))
    }

    fn roster_count(&self, host: &str, username: &str) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM roster_items WHERE host = ?1 AND username = ?2",
            params![host, username],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}

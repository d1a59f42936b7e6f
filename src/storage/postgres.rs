//! The PostgreSQL store: the same accounts, module data and rosters as [`super::sqlite`], in a database
//! that several rjabberd hosts share, so that what one writes (an account, a roster item) every other
//! sees with its next query. This module owns the schema and its versioned migrations ([`MIGRATIONS`],
//! applied by [`migrate`] under an advisory lock so hosts starting together do not race), the
//! statements (prepared once per connection), and the connection of one store worker thread
//! ([`PgStore`]), which is reopened on the next query after it breaks, with a backoff while the
//! database stays unreachable. The driver is the synchronous `postgres` crate: a worker thread blocks on
//! its query exactly as an SQLite worker does, and no async runtime comes near the shards.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use postgres::{Client, IsolationLevel, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{AccountData, Accounts, Rosters, StoreError};
use crate::proto::roster::{RosterItem, Subscription};
use crate::proto::sasl::{Credentials, Hash, ScramCredential};

/// The schema, one step per version, in order. A step is never edited once released: a change is a new
/// step. Text that names or orders things (hosts, usernames, modules, keys, contacts) uses the "C"
/// collation: byte order, as SQLite compares, so both backends list in the same order whatever the
/// database's locale.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE users (
        host text COLLATE "C" NOT NULL,
        username text COLLATE "C" NOT NULL,
        iterations bigint NOT NULL,
        salt bytea NOT NULL,
        sha1_stored_key bytea NOT NULL,
        sha1_server_key bytea NOT NULL,
        sha256_stored_key bytea NOT NULL,
        sha256_server_key bytea NOT NULL,
        PRIMARY KEY (host, username)
    );
    CREATE TABLE account_data (
        host text COLLATE "C" NOT NULL,
        username text COLLATE "C" NOT NULL,
        module text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (host, username, module, key)
    );
    -- data_accounts(host, module) looks up by module without a username.
    CREATE INDEX account_data_by_module ON account_data (host, module, username);
    CREATE TABLE roster_items (
        host text COLLATE "C" NOT NULL,
        username text COLLATE "C" NOT NULL,
        contact text COLLATE "C" NOT NULL,
        name text,
        groups text[] NOT NULL,
        subscription text NOT NULL,
        ask boolean NOT NULL,
        pending_in boolean NOT NULL,
        approved boolean NOT NULL,
        listed boolean NOT NULL,
        PRIMARY KEY (host, username, contact)
    );
    CREATE TABLE roster_versions (
        host text COLLATE "C" NOT NULL,
        username text COLLATE "C" NOT NULL,
        version bigint NOT NULL,
        PRIMARY KEY (host, username)
    );
    "#,
    ),
    // The cluster's membership registry (docs/cluster-protocol.md §6.1; the cluster module's registry reads and writes it).
    (
        2,
        r#"
    CREATE TABLE cluster_members (
        cluster text COLLATE "C" NOT NULL,
        node text COLLATE "C" NOT NULL,
        incarnation bigint NOT NULL,
        address text NOT NULL,
        shards integer NOT NULL,
        proto_major integer NOT NULL,
        state text NOT NULL,
        lease_until timestamptz NOT NULL,
        sessions bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (cluster, node)
    );
    CREATE TABLE cluster_epochs (
        cluster text COLLATE "C" PRIMARY KEY,
        epoch bigint NOT NULL
    );
    CREATE TABLE cluster_suspicions (
        cluster text COLLATE "C" NOT NULL,
        reporter text COLLATE "C" NOT NULL,
        suspect text COLLATE "C" NOT NULL,
        since timestamptz NOT NULL,
        PRIMARY KEY (cluster, reporter, suspect)
    );
    "#,
    ),
];

/// The advisory lock key migrations run under ("rjabberd" in ASCII): the first host to take it applies
/// the steps; the others wait, then find nothing left to do.
const MIGRATION_LOCK: i64 = 0x726a_6162_6265_7264;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError(format!("postgres: {}", explain(&e)))
    }
}

/// What went wrong in full: the server's own words (e.g. "duplicate key …") are in the DbError, and
/// the cause of an I/O failure (e.g. "Connection refused") in the source; Display alone says only
/// "db error" or "error connecting to server".
fn explain(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Where the database is and how to reach it: the parsed `storage.url`, and TLS when `storage.ca_file`
/// names the authorities to check the server's certificate against (rustls, as for XMPP clients).
#[derive(Clone)]
pub struct Target {
    pub config: postgres::Config,
    tls: Option<MakeRustlsConnect>,
}

impl Target {
    /// Parses a `storage.url` (already checked when the configuration was loaded) and loads `ca_file`.
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<Target, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError(format!("storage.url: {e}")))?;
        // The driver waits for a connection as long as the system does (minutes for a host that
        // drops SYNs), and a worker waiting is a worker not serving: bound it unless the URL says.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let tls = match ca_file {
            None => None,
            Some(path) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| StoreError(format!("{}: {e}", path.display())))?
                {
                    let cert = cert.map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
                }
                let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| StoreError(format!("TLS to PostgreSQL: {e}")))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(MakeRustlsConnect::new(tls))
            }
        };
        Ok(Target { config, tls })
    }
}

/// Opens one connection.
pub(crate) fn connect(target: &Target) -> Result<Client, StoreError> {
    let connected = match &target.tls {
        Some(tls) => target.config.connect(tls.clone()),
        None => target.config.connect(NoTls),
    };
    connected.map_err(|e| StoreError(format!("cannot connect to PostgreSQL: {}", explain(&e))))
}

/// Opens one connection whose statements the server ends after `statement_timeout`, unless the URL's
/// `options` set their own: a caller that has stopped waiting should not leave a query running.
pub(crate) fn connect_bounded(
    target: &Target,
    statement_timeout: Duration,
) -> Result<Client, StoreError> {
    let mut client = connect(target)?;
    if target.config.get_options().is_none() {
        client.batch_execute(&format!(
            "SET statement_timeout = {}",
            statement_timeout.as_millis()
        ))?;
    }
    Ok(client)
}

/// Applies the steps of [`MIGRATIONS`] the database lacks, each in its own transaction with its row in
/// `schema_migrations`; returns the versions applied. Fails when the database is at a version this
/// build does not know (a newer rjabberd migrated it).
pub fn migrate(target: &Target) -> Result<Vec<i32>, StoreError> {
    let mut client = connect(target)?;
    // Session-level, so it spans the per-step transactions; released when the connection closes even
    // if this process dies half-way.
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = apply_migrations(&mut client);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}

fn apply_migrations(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let current: i32 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > known {
        return Err(StoreError(format!(
            "the database's schema is at version {current}; this rjabberd knows up to {known}"
        )));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)
            .map_err(|e| StoreError(format!("migration {version}: {}", StoreError::from(e))))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )?;
        tx.commit()?;
        applied.push(*version);
    }
    Ok(applied)
}

/// Every statement the traits run, prepared once per connection: the server parses and plans each
/// once, and a query costs one round trip.
struct Statements {
    add: Statement,
    set_credentials: Statement,
    replace_credentials: Statement,
    delete_user: Statement,
    delete_data: Statement,
    delete_roster: Statement,
    delete_version: Statement,
    list_all: Statement,
    list_host: Statement,
    count_all: Statement,
    count_host: Statement,
    exists: Statement,
    credentials: Statement,
    data_get: Statement,
    data_set: Statement,
    data_unset: Statement,
    data_all: Statement,
    data_take_all: Statement,
    data_accounts: Statement,
    data_count: Statement,
    data_size: Statement,
    roster_version: Statement,
    roster_items: Statement,
    roster_item: Statement,
    roster_put: Statement,
    roster_remove: Statement,
    roster_bump: Statement,
    roster_count: Statement,
}

const ROSTER_COLUMNS: &str =
    "contact, name, groups, subscription, ask, pending_in, approved, listed";

impl Statements {
    fn prepare(c: &mut Client) -> Result<Statements, postgres::Error> {
        let user = "WHERE host = $1 AND username = $2";
        let module = "WHERE host = $1 AND username = $2 AND module = $3";
        Ok(Statements {
            add: c.prepare(
                "INSERT INTO users VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )?,
            set_credentials: c.prepare(&format!(
                "UPDATE users SET iterations = $3, salt = $4, sha1_stored_key = $5,
                 sha1_server_key = $6, sha256_stored_key = $7, sha256_server_key = $8 {user}"
            ))?,
            replace_credentials: c.prepare(&format!(
                "UPDATE users SET iterations = $3, salt = $4, sha1_stored_key = $5,
                 sha1_server_key = $6, sha256_stored_key = $7, sha256_server_key = $8 {user}
                 AND iterations = $9 AND salt = $10 AND sha1_stored_key = $11
                 AND sha1_server_key = $12 AND sha256_stored_key = $13 AND sha256_server_key = $14"
            ))?,
            delete_user: c.prepare(&format!("DELETE FROM users {user}"))?,
            delete_data: c.prepare(&format!("DELETE FROM account_data {user}"))?,
            delete_roster: c.prepare(&format!("DELETE FROM roster_items {user}"))?,
            delete_version: c.prepare(&format!("DELETE FROM roster_versions {user}"))?,
            // Two statements rather than `$1 IS NULL OR host = $1`, whose one generic plan cannot
            // use the primary key for the one-host case.
            list_all: c.prepare("SELECT host, username FROM users ORDER BY host, username")?,
            list_host: c.prepare(
                "SELECT host, username FROM users WHERE host = $1 ORDER BY host, username",
            )?,
            count_all: c.prepare("SELECT COUNT(*) FROM users")?,
            count_host: c.prepare("SELECT COUNT(*) FROM users WHERE host = $1")?,
            exists: c.prepare(&format!("SELECT 1 FROM users {user}"))?,
            credentials: c.prepare(&format!(
                "SELECT iterations, salt, sha1_stored_key, sha1_server_key, sha256_stored_key,
                 sha256_server_key FROM users {user}"
            ))?,
            data_get: c.prepare(&format!(
                "SELECT value FROM account_data {module} AND key = $4"
            ))?,
            data_set: c.prepare(
                "INSERT INTO account_data VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (host, username, module, key) DO UPDATE SET value = EXCLUDED.value",
            )?,
            data_unset: c.prepare(&format!("DELETE FROM account_data {module} AND key = $4"))?,
            data_all: c.prepare(&format!(
                "SELECT key, value FROM account_data {module} ORDER BY key"
            ))?,
            // One statement, so atomic: a concurrent taker blocks on the rows, then finds them gone,
            // and each value is handed out once.
            data_take_all: c.prepare(&format!(
                "WITH taken AS (DELETE FROM account_data {module} RETURNING key, value)
                 SELECT key, value FROM taken ORDER BY key"
            ))?,
            data_accounts: c.prepare(
                "SELECT DISTINCT username FROM account_data WHERE host = $1 AND module = $2
                 ORDER BY username",
            )?,
            data_count: c.prepare(&format!("SELECT COUNT(*) FROM account_data {module}"))?,
            data_size: c.prepare(&format!(
                "SELECT COALESCE(SUM(octet_length(value)), 0)::bigint FROM account_data {module}"
            ))?,
            roster_version: c.prepare(&format!("SELECT version FROM roster_versions {user}"))?,
            roster_items: c.prepare(&format!(
                "SELECT {ROSTER_COLUMNS} FROM roster_items {user} ORDER BY contact"
            ))?,
            roster_item: c.prepare(&format!(
                "SELECT {ROSTER_COLUMNS} FROM roster_items {user} AND contact = $3"
            ))?,
            roster_put: c.prepare(
                "INSERT INTO roster_items VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (host, username, contact) DO UPDATE SET name = EXCLUDED.name,
                 groups = EXCLUDED.groups, subscription = EXCLUDED.subscription, ask = EXCLUDED.ask,
                 pending_in = EXCLUDED.pending_in, approved = EXCLUDED.approved,
                 listed = EXCLUDED.listed",
            )?,
            roster_remove: c
                .prepare(&format!("DELETE FROM roster_items {user} AND contact = $3"))?,
            roster_bump: c.prepare(
                "INSERT INTO roster_versions VALUES ($1, $2, 1)
                 ON CONFLICT (host, username) DO UPDATE SET version = roster_versions.version + 1
                 RETURNING version",
            )?,
            roster_count: c.prepare(&format!("SELECT COUNT(*) FROM roster_items {user}"))?,
        })
    }
}

/// A live connection and its statements.
struct Connection {
    client: Client,
    st: Statements,
}

/// How long a connection attempt may take when `storage.url` sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The shortest and longest wait between connection attempts while the database is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One store worker's connection to the database, opened on first use and reopened on the next query
/// after it broke (the query that met the break fails). While the database cannot be reached, queries
/// fail at once until the next attempt is due, so a worker does not spin on connect and the queue
/// drains with errors instead of waiting.
pub struct PgStore {
    target: Target,
    // The traits take `&self` and a worker thread owns its store alone: a RefCell, not a lock.
    conn: RefCell<Option<Connection>>,
    next_attempt: Cell<Option<Instant>>,
    backoff: Cell<Duration>,
}

impl PgStore {
    /// A store that connects with `config`, once now (so a bad URL or password fails the start).
    /// The schema must be migrated already ([`migrate`]).
    pub fn open(target: Target) -> Result<PgStore, StoreError> {
        let store = PgStore {
            target,
            conn: RefCell::new(None),
            next_attempt: Cell::new(None),
            backoff: Cell::new(BACKOFF_MIN),
        };
        store.with(|_| Ok(()))?;
        Ok(store)
    }

    /// Runs `f` on the connection, connecting first when there is none. A failure that is not the
    /// server's answer to the query (I/O, a closed connection, a protocol error) drops the connection,
    /// so that the next query reconnects. A kept connection that the database ended while it sat idle
    /// (a restart of PostgreSQL: `admin_shutdown`, before `f` ran anything) is replaced and `f` run once
    /// more, so that a restart costs no query its answer.
    fn with<T>(
        &self,
        mut f: impl FnMut(&mut Connection) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let kept = self.connected()?;
        match self.run(&mut f) {
            Err(e) if kept && ended_by_the_server(&e) => {
                log::info!(error:% = e; "PostgreSQL ended an idle connection; running the query on a new one");
                self.connected()?;
                self.run(&mut f).map_err(StoreError::from)
            }
            other => other.map_err(StoreError::from),
        }
    }

    /// Opens the connection when there is none (unless the backoff says not yet); whether it was
    /// already open.
    fn connected(&self) -> Result<bool, StoreError> {
        let mut slot = self.conn.borrow_mut();
        if slot.as_ref().is_some_and(|c| c.client.is_closed()) {
            *slot = None;
        }
        if slot.is_some() {
            return Ok(true);
        }
        if let Some(at) = self.next_attempt.get()
            && Instant::now() < at
        {
            return Err(StoreError(
                "PostgreSQL unreachable; the next connection attempt is not due yet".into(),
            ));
        }
        // A query the database holds (a lock, an overloaded server) would hold this worker long
        // after the shard stopped waiting (`super::QUERY_TIMEOUT`): end it on the server then.
        let opened = connect_bounded(&self.target, super::QUERY_TIMEOUT).and_then(|mut client| {
            let st = Statements::prepare(&mut client).map_err(StoreError::from)?;
            Ok(Connection { client, st })
        });
        match opened {
            Ok(c) => {
                self.next_attempt.set(None);
                self.backoff.set(BACKOFF_MIN);
                *slot = Some(c);
                Ok(false)
            }
            Err(e) => {
                let wait = self.backoff.get();
                self.next_attempt.set(Some(Instant::now() + wait));
                self.backoff.set((wait * 2).min(BACKOFF_MAX));
                Err(e)
            }
        }
    }

    /// Runs `f` on the open connection, dropping the connection when the failure is not the server's
    /// answer to the query.
    fn run<T>(
        &self,
        f: &mut impl FnMut(&mut Connection) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let mut slot = self.conn.borrow_mut();
        let conn = slot.as_mut().expect("connected first");
        let result = f(conn);
        if let Err(e) = &result
            && (e.as_db_error().is_none() || conn.client.is_closed() || ended_by_the_server(e))
        {
            log::warn!(error:% = e; "PostgreSQL connection lost; reconnecting on the next query");
            *slot = None;
        }
        result
    }
}

/// The database ended the session itself (`pg_ctl stop`, `pg_terminate_backend`): SQLSTATE 57P01,
/// `admin_shutdown`. PostgreSQL sends it when it ends the backend; the query that reads it first did
/// not run, and a transaction open at that moment was rolled back, so running it again is safe.
fn ended_by_the_server(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::ADMIN_SHUTDOWN)
}

fn to_credentials(row: &postgres::Row) -> Credentials {
    let iterations = row.get::<_, i64>(0) as u32;
    let salt: Vec<u8> = row.get(1);
    Credentials {
        sha1: ScramCredential {
            hash: Hash::Sha1,
            iterations,
            salt: salt.clone(),
            stored_key: row.get(2),
            server_key: row.get(3),
        },
        sha256: ScramCredential {
            hash: Hash::Sha256,
            iterations,
            salt,
            stored_key: row.get(4),
            server_key: row.get(5),
        },
    }
}

fn to_roster_item(row: &postgres::Row) -> RosterItem {
    let subscription: String = row.get(3);
    RosterItem {
        jid: row.get(0),
        name: row.get(1),
        groups: row.get(2),
        subscription: Subscription::parse(&subscription).unwrap_or_default(),
        ask: row.get(4),
        pending_in: row.get(5),
        approved: row.get(6),
        listed: row.get(7),
    }
}

/// Removes an account's module data and roster inside `tx`.
fn remove_account_data(
    tx: &mut postgres::Transaction<'_>,
    st: &Statements,
    host: &str,
    username: &str,
) -> Result<(), postgres::Error> {
    for s in [&st.delete_data, &st.delete_roster, &st.delete_version] {
        tx.execute(s, &[&host, &username])?;
    }
    Ok(())
}

impl PgStore {
    /// Runs the statement `which` picks with `host`, `username`, then each of `creds`' columns in the
    /// order all the credential statements share (iterations, salt, SHA-1 keys, SHA-256 keys): one
    /// set for an insert or an update, the new then the old for a compare-and-replace. The rows it
    /// touched.
    fn write_credentials(
        &self,
        which: impl Fn(&Statements) -> &Statement,
        host: &str,
        username: &str,
        creds: &[&Credentials],
    ) -> Result<u64, StoreError> {
        let iterations: Vec<i64> = creds
            .iter()
            .map(|c| i64::from(c.sha256.iterations))
            .collect();
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&host, &username];
        for (c, iterations) in creds.iter().zip(&iterations) {
            params.extend([
                iterations as &(dyn postgres::types::ToSql + Sync),
                &c.sha256.salt,
                &c.sha1.stored_key,
                &c.sha1.server_key,
                &c.sha256.stored_key,
                &c.sha256.server_key,
            ]);
        }
        self.with(|c| c.client.execute(which(&c.st), &params))
    }
}

impl Accounts for PgStore {
    fn add(&self, host: &str, username: &str, creds: &Credentials) -> Result<(), StoreError> {
        if self.write_credentials(|st| &st.add, host, username, &[creds])? == 0 {
            return Err(StoreError(format!("{username}@{host} already exists")));
        }
        Ok(())
    }

    fn set_credentials(
        &self,
        host: &str,
        username: &str,
        creds: &Credentials,
    ) -> Result<(), StoreError> {
        if self.write_credentials(|st| &st.set_credentials, host, username, &[creds])? == 0 {
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
        let n =
            self.write_credentials(|st| &st.replace_credentials, host, username, &[new, old])?;
        Ok(n > 0)
    }

    fn delete(&self, host: &str, username: &str) -> Result<(), StoreError> {
        let n = self.with(|c| {
            let mut tx = c.client.transaction()?;
            let n = tx.execute(&c.st.delete_user, &[&host, &username])?;
            if n > 0 {
                remove_account_data(&mut tx, &c.st, host, username)?;
                tx.commit()?;
            }
            // Otherwise the transaction rolls back as it drops.
            Ok(n)
        })?;
        if n == 0 {
            return Err(StoreError(format!("{username}@{host} does not exist")));
        }
        Ok(())
    }

    fn list(&self, host: Option<&str>) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.with(|c| match host {
            Some(h) => c.client.query(&c.st.list_host, &[&h]),
            None => c.client.query(&c.st.list_all, &[]),
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn count(&self, host: Option<&str>) -> Result<u64, StoreError> {
        let row = self.with(|c| match host {
            Some(h) => c.client.query_one(&c.st.count_host, &[&h]),
            None => c.client.query_one(&c.st.count_all, &[]),
        })?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn exists(&self, host: &str, username: &str) -> Result<bool, StoreError> {
        Ok(self
            .with(|c| c.client.query_opt(&c.st.exists, &[&host, &username]))?
            .is_some())
    }

    fn credentials(&self, host: &str, username: &str) -> Result<Option<Credentials>, StoreError> {
        let row = self.with(|c| c.client.query_opt(&c.st.credentials, &[&host, &username]))?;
        Ok(row.as_ref().map(to_credentials))
    }
}

impl AccountData for PgStore {
    fn data_get(
        &self,
        host: &str,
        username: &str,
        module: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self.with(|c| {
            c.client
                .query_opt(&c.st.data_get, &[&host, &username, &module, &key])
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    fn data_put(
        &self,
        host: &str,
        username: &str,
        module: &str,
        values: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            for (key, value) in values {
                match value {
                    Some(v) => tx.execute(&c.st.data_set, &[&host, &username, &module, key, v])?,
                    None => tx.execute(&c.st.data_unset, &[&host, &username, &module, key])?,
                };
            }
            tx.commit()
        })
    }

    fn data_remove_account(&self, host: &str, username: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            remove_account_data(&mut tx, &c.st, host, username)?;
            tx.commit()
        })
    }

    fn data_all(
        &self,
        host: &str,
        username: &str,
        module: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self.with(|c| c.client.query(&c.st.data_all, &[&host, &username, &module]))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn data_take_all(
        &self,
        host: &str,
        username: &str,
        module: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self.with(|c| {
            c.client
                .query(&c.st.data_take_all, &[&host, &username, &module])
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn data_accounts(&self, host: &str, module: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.with(|c| c.client.query(&c.st.data_accounts, &[&host, &module]))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn data_count(&self, host: &str, username: &str, module: &str) -> Result<u64, StoreError> {
        let row = self.with(|c| {
            c.client
                .query_one(&c.st.data_count, &[&host, &username, &module])
        })?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn data_size(&self, host: &str, username: &str, module: &str) -> Result<u64, StoreError> {
        let row = self.with(|c| {
            c.client
                .query_one(&c.st.data_size, &[&host, &username, &module])
        })?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

impl Rosters for PgStore {
    fn roster(&self, host: &str, username: &str) -> Result<(u64, Vec<RosterItem>), StoreError> {
        self.with(|c| {
            // One snapshot for both reads, so the version is the one of the items returned.
            let mut tx = c
                .client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let version = tx
                .query_opt(&c.st.roster_version, &[&host, &username])?
                .map_or(0, |r| r.get::<_, i64>(0) as u64);
            let items = tx
                .query(&c.st.roster_items, &[&host, &username])?
                .iter()
                .map(to_roster_item)
                .collect();
            tx.commit()?;
            Ok((version, items))
        })
    }

    fn roster_item(
        &self,
        host: &str,
        username: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StoreError> {
        let row = self.with(|c| {
            c.client
                .query_opt(&c.st.roster_item, &[&host, &username, &contact])
        })?;
        Ok(row.as_ref().map(to_roster_item))
    }

    fn roster_put(&self, host: &str, username: &str, item: &RosterItem) -> Result<u64, StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            tx.execute(
                &c.st.roster_put,
                &[
                    &host,
                    &username,
                    &item.jid,
                    &item.name,
                    &item.groups,
                    &item.subscription.as_str(),
                    &item.ask,
                    &item.pending_in,
                    &item.approved,
                    &item.listed,
                ],
            )?;
            let version: i64 = tx.query_one(&c.st.roster_bump, &[&host, &username])?.get(0);
            tx.commit()?;
            Ok(version as u64)
        })
    }

    fn roster_remove(
        &self,
        host: &str,
        username: &str,
        contact: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.with(|c| {
            let mut tx = c.client.transaction()?;
            if tx.execute(&c.st.roster_remove, &[&host, &username, &contact])? == 0 {
                return Ok(None);
            }
            let version: i64 = tx.query_one(&c.st.roster_bump, &[&host, &username])?.get(0);
            tx.commit()?;
            Ok(Some(version as u64))
        })
    }

    fn roster_count(&self, host: &str, username: &str) -> Result<u64, StoreError> {
        let row = self.with(|c| c.client.query_one(&c.st.roster_count, &[&host, &username]))?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

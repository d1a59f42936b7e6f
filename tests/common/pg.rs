//! A throw-away PostgreSQL server for the store's tests: `initdb` in a fresh temporary directory, started
//! with `pg_ctl` on a Unix socket in that directory only (no TCP port to collide with other runs or
//! other engineers), trust authentication for the superuser `rjabberd`, and stopped and removed when the
//! guard drops, also when a test panics. PostgreSQL refuses to run as root, so as root the directory
//! goes to the `postgres` user and the server runs as it (`runuser`). Used by the unit tests of
//! `src/storage` (through `#[path]`) and by `tests/storage_postgres.rs`; plain std, no crate of ours.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A running throw-away server; stopped and deleted on drop.
pub struct PgInstance {
    bin: PathBuf,
    dir: PathBuf,
    /// The TCP port on 127.0.0.1, when started with TLS.
    pub port: Option<u16>,
    /// Run PostgreSQL's programs as `postgres` (we are root).
    as_postgres: bool,
    /// The server's options (`pg_ctl -o`), for starting it again after [`PgInstance::stop`].
    options: String,
}

/// Where PostgreSQL's programs are: `RJABBERD_PG_BINDIR`, else Debian's newest
/// `/usr/lib/postgresql/<N>/bin`, else the directory of `initdb` on the PATH; `None` when not installed.
pub fn pg_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("RJABBERD_PG_BINDIR") {
        return Some(PathBuf::from(dir)).filter(|d| d.join("initdb").is_file());
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    })
}

impl PgInstance {
    /// One server for the whole test binary, started at its first use, for tests that each take a
    /// database of their own on it ([`super::with_postgres`]). A static is never dropped, so a
    /// watcher in its own process group stops and removes it once this process has exited, however it
    /// ends (a panic, an abort, Ctrl-C).
    pub fn shared() -> Option<&'static PgInstance> {
        static SHARED: std::sync::OnceLock<Option<PgInstance>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| {
                let pg = PgInstance::start()?;
                pg.watch_for_exit();
                Some(pg)
            })
            .as_ref()
    }

    fn watch_for_exit(&self) {
        use std::os::unix::process::CommandExt;
        let pg_ctl = format!(
            "{} -D '{}' -m immediate -w stop",
            self.bin.join("pg_ctl").display(),
            self.data().display()
        );
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {pg_ctl}")
        } else {
            pg_ctl
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.1; done; cd /; {stop} >/dev/null 2>&1; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        // Started in the background by a shell that exits at once (and is waited for), so that the
        // watcher is nobody's child here and outlives this process.
        let status = Command::new("sh")
            .args(["-c", &format!("( {script} ) &")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .status()
            .expect("sh runs");
        assert!(
            status.success(),
            "the watcher of the shared PostgreSQL did not start"
        );
    }

    /// Starts one, or `None` (having said so on stderr) when PostgreSQL is not installed.
    pub fn start() -> Option<PgInstance> {
        PgInstance::start_with(None)
    }

    /// Like [`PgInstance::start`], also listening on 127.0.0.1 with TLS (PostgreSQL offers TLS on TCP
    /// only) with this PEM certificate and key.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Option<PgInstance> {
        PgInstance::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Option<PgInstance> {
        let Some(bin) = pg_bindir() else {
            eprintln!("SKIPPED: PostgreSQL not installed (no initdb; see README)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "rjabberd-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let mut pg = PgInstance {
            bin,
            dir,
            port: None,
            as_postgres,
            options: String::new(),
        };
        let mut tcp = "-c listen_addresses=''".to_string();
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            let (c, k) = (pg.dir.join("server.crt"), pg.dir.join("server.key"));
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            // PostgreSQL refuses a key others can read.
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
            // Asked of the system and freed at once: another run may take it before PostgreSQL
            // does, a race lost rarely and loudly (pg_ctl fails).
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            pg.port = Some(port);
            tcp = format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c ssl=on -c ssl_cert_file='{}' \
                 -c ssl_key_file='{}'",
                c.display(),
                k.display()
            );
        }
        if as_postgres {
            let out = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&pg.dir)
                .output()
                .expect("chown runs");
            assert!(out.status.success(), "chown: {out:?}");
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data().to_string_lossy(),
                "-U",
                "rjabberd",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        // Unix socket in our directory only; durability is not wanted from a server that lives for
        // one test.
        pg.options = format!(
            "{tcp} -c unix_socket_directories='{}' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            pg.dir.display()
        );
        pg.start_again();
        Some(pg)
    }

    /// Starts the server (again, after [`PgInstance::stop`]) on the same data, socket and port.
    pub fn start_again(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &self.dir.join("postgres.log").to_string_lossy(),
                "-o",
                &self.options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server as an operator's restart would (`-m fast`: clients are disconnected, the
    /// data is kept), and waits until it is down.
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// PostgreSQL's `program`, run as the `postgres` user when we are root, in our directory (the
    /// postgres user may not be allowed into the caller's working directory).
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.current_dir(&self.dir);
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            out.status.success(),
            "{program} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
        );
    }

    /// The socket directory (libpq's `host` for a Unix socket).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A connection string (libpq's key=value form) for `dbname`, over the Unix socket.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=rjabberd dbname={dbname}",
            self.dir.display(),
            self.port.unwrap_or(5432)
        )
    }

    /// A connection string for `dbname` over TCP to `localhost` (the name the certificate must carry).
    pub fn tcp_url(&self, dbname: &str) -> String {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=rjabberd dbname={dbname}",
            self.port.expect("started with TLS")
        )
    }

    /// Creates a database and returns its connection string.
    pub fn create_db(&self, dbname: &str) -> String {
        self.run(
            "createdb",
            &[
                "-h",
                &self.dir.to_string_lossy(),
                "-p",
                &self.port.unwrap_or(5432).to_string(),
                "-U",
                "rjabberd",
                dbname,
            ],
        );
        self.url(dbname)
    }

    /// Runs SQL with `psql` (as the superuser, on `dbname`), e.g. to cut other connections.
    pub fn psql(&self, dbname: &str, sql: &str) {
        self.run(
            "psql",
            &[
                "-h",
                &self.dir.to_string_lossy(),
                "-p",
                &self.port.unwrap_or(5432).to_string(),
                "-U",
                "rjabberd",
                "-d",
                dbname,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        // Immediate: nothing here needs a clean shutdown, and it must not wait for clients.
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

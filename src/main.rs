//! The `rjabberd` command: starts the server (with embedded defaults, or `--config FILE`), or manages
//! accounts in the store (`rjabberd user add|passwd|del|list`), also while the server runs, or migrates
//! the store's schema (`rjabberd storage migrate`), or talks to
//! the running server over its control socket (`rjabberd ctl …`).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use rjabberd::config::Config;
use rjabberd::modules::options::plan_of;
use rjabberd::proto::jid::Jid;
use rjabberd::proto::roster::{RosterItem, Subscription};
use rjabberd::proto::sasl::Credentials;
use rjabberd::shard::pool::Server;
use rjabberd::storage::piefxis;

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "rjabberd", version, about = "A thread-per-core XMPP server")]
struct Cli {
    /// Configuration file (TOML); without it the embedded defaults serve `localhost`.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Manage accounts.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Manage rosters (ejabberdctl's add_rosteritem / get_roster / delete_rosteritem). Sessions online
    /// see the change at their next roster request.
    Roster {
        #[command(subcommand)]
        action: RosterAction,
    },
    /// Manage the store: `storage migrate` applies the schema migrations (as a start does) and exits.
    Storage {
        #[command(subcommand)]
        action: StorageAction,
    },
    /// Write every account (of one host with --host) to XEP-0227 files in DIR: an index
    /// (server-data.xml) and one file per host, as `ejabberdctl export_piefxis` writes them.
    Export {
        dir: PathBuf,
        #[arg(long)]
        host: Option<String>,
        /// Write SCRAM values as ejabberd reads them (base64 twice) instead of XEP-0227's way.
        #[arg(long)]
        ejabberd: bool,
    },
    /// Read accounts from XEP-0227 files (a directory as `export` or ejabberd writes it, or one file).
    /// Accounts that exist are skipped unless --overwrite, which replaces them with all their data.
    Import {
        path: PathBuf,
        #[arg(long)]
        overwrite: bool,
    },
    /// The cluster as its membership table in PostgreSQL says (docs/cluster-protocol.md §6), read
    /// directly from the database, so it works from any machine with the configuration file:
    /// `cluster status [--json]`.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Talk to the running server over its control socket (ejabberdctl's commands): `ctl help` lists
    /// them; `--json` anywhere before `--` for machine-readable output. Exit codes: 0 done, 1 failed,
    /// 2 usage error, 3 no server reached.
    #[command(disable_help_flag = true)]
    Ctl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Every host the table holds: state, address, shards, sessions, the lease left, and the epoch.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Drain the running host of this configuration (over its control socket): it leaves the cluster,
    /// the others take its accounts, and its clients are told to reconnect.
    Leave,
}

#[derive(Subcommand)]
enum StorageAction {
    /// Bring the schema up to date (PostgreSQL: the versioned migrations, under an advisory lock).
    Migrate,
}

#[derive(Subcommand)]
enum RosterAction {
    /// Add or update an item: `roster add alice@localhost bob@localhost --name Bob --group Friends`.
    Add {
        owner: String,
        contact: String,
        #[arg(long)]
        name: Option<String>,
        /// A group (repeat for several).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// none, to, from or both.
        #[arg(long, default_value = "none")]
        subscription: String,
    },
    /// Print an account's roster: contact, subscription, name, groups.
    List { owner: String },
    /// Remove an item.
    Del { owner: String, contact: String },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create an account: `user add alice@localhost` (the password is read from stdin unless given).
    Add {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Change an account's password.
    Passwd {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account.
    Del { jid: String },
    /// List accounts, of one host or of all.
    List { host: Option<String> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Ctl { args }) = cli.command {
        return ExitCode::from(rjabberd::admin::ctl::client_main(
            cli.config.as_deref(),
            args,
        ));
    }
    if let Some(Command::Cluster {
        action: ClusterAction::Leave,
    }) = cli.command
    {
        return ExitCode::from(rjabberd::admin::ctl::client_main(
            cli.config.as_deref(),
            vec!["cluster".into(), "leave".into()],
        ));
    }
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("rjabberd: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    // The module options are checked here too, so that every configuration error exits alike.
    if let Err(e) = plan_of(&config) {
        eprintln!("rjabberd: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = rjabberd::logging::init(&config) {
        eprintln!("rjabberd: cannot install the logger: {e}");
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::User { action } => user(&config, action),
        Command::Roster { action } => roster(&config, action),
        Command::Storage {
            action: StorageAction::Migrate,
        } => rjabberd::storage::migrate(&config.storage, &config.data_dir)
            .map(|done| println!("{done}"))
            .map_err(|e| e.to_string()),
        Command::Export {
            dir,
            host,
            ejabberd,
        } => export(&config, &dir, host, ejabberd),
        Command::Import { path, overwrite } => import(&config, &path, overwrite),
        Command::Cluster {
            action: ClusterAction::Status { json },
        } => cluster_status(&config, json),
        Command::Ctl { .. }
        | Command::Cluster {
            action: ClusterAction::Leave,
        } => unreachable!("answered above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rjabberd: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    let fds = rjabberd::net::raise_fd_limit();
    log::debug!("open-file limit: {fds}");
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone())
            .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    }
    let dump = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, dump.clone())
        .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    let hosts: Vec<String> = config
        .hosts
        .iter()
        .map(|h| h.name.get_ref().clone())
        .collect();
    let server = Server::start(config, shutdown)?;
    for (addr, tls, kind) in &server.shared.bound {
        match kind {
            rjabberd::config::ListenerKind::C2s => println!(
                "rjabberd: listening on {addr} (c2s, {})",
                match tls {
                    rjabberd::config::TlsMode::Starttls => "starttls",
                    rjabberd::config::TlsMode::Direct => "direct tls",
                }
            ),
            rjabberd::config::ListenerKind::Component => {
                println!("rjabberd: listening on {addr} (component)")
            }
        }
    }
    if let Some(addr) = server.shared.metrics_addr {
        println!("rjabberd: metrics on http://{addr}/metrics");
    }
    if let Some(ctl) = &*server.shared.ctl.lock().unwrap_or_else(|p| p.into_inner()) {
        println!("rjabberd: control socket {}", ctl.path().display());
    }
    println!(
        "rjabberd: serving {} with {} shard(s); data in {}",
        hosts.join(", "),
        server.shared.shards,
        server.shared.config.data_dir.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SIGUSR1 asks every shard to print its session table.
    while !server.shared.shutdown.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if dump.swap(false, Ordering::SeqCst) {
            server.shared.dump_generation.fetch_add(1, Ordering::SeqCst);
        }
        if reload.swap(false, Ordering::SeqCst) {
            reload_modules(&server);
        }
    }
    server.join();
    println!("rjabberd: stopped");
    Ok(())
}

/// SIGHUP: what `rjabberd ctl reload` does too (`pool::reload`), reported on the standard streams.
fn reload_modules(server: &Server) {
    match server.reload() {
        Ok(r) => {
            for note in &r.notes {
                eprintln!("rjabberd: SIGHUP: {note}");
            }
            println!("rjabberd: modules reloaded from {}", r.file.display());
        }
        Err(e) => eprintln!("rjabberd: SIGHUP: {e}"),
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

fn account(config: &Config, jid: &str) -> Result<(String, String), String> {
    let jid = Jid::parse(jid).map_err(|e| format!("`{jid}`: {e}"))?;
    let (Some(local), true) = (jid.local(), jid.resource().is_none()) else {
        return Err(format!("`{jid}` is not a bare JID like alice@localhost"));
    };
    let host = jid.domain().to_string();
    if !config
        .hosts
        .iter()
        .any(|h| h.name.get_ref().eq_ignore_ascii_case(&host))
    {
        return Err(format!("{host} is not a configured host"));
    }
    Ok((host, local.to_string()))
}

fn password(given: Option<String>) -> Result<String, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        return Err("empty password".into());
    }
    Ok(p)
}

fn credentials(config: &Config, password: &str) -> Result<Credentials, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    Credentials::from_password(password, &salt, config.auth.scram_iterations).map_err(|_| {
        "the password contains characters that are not allowed (RFC 8265 OpaqueString)".to_string()
    })
}

fn user(config: &Config, action: UserAction) -> Result<(), String> {
    let db =
        rjabberd::storage::open(&config.storage, &config.data_dir).map_err(|e| e.to_string())?;
    match action {
        UserAction::Add { jid, password: p } => {
            let (host, local) = account(config, &jid)?;
            let creds = credentials(config, &password(p)?)?;
            db.add(&host, &local, &creds).map_err(|e| e.to_string())?;
            println!("added {local}@{host}");
        }
        UserAction::Passwd { jid, password: p } => {
            let (host, local) = account(config, &jid)?;
            let creds = credentials(config, &password(p)?)?;
            db.set_credentials(&host, &local, &creds)
                .map_err(|e| e.to_string())?;
            println!("changed the password of {local}@{host}");
        }
        UserAction::Del { jid } => {
            let (host, local) = account(config, &jid)?;
            db.delete(&host, &local).map_err(|e| e.to_string())?;
            println!("deleted {local}@{host}");
        }
        UserAction::List { host } => {
            for (h, u) in db.list(host.as_deref()).map_err(|e| e.to_string())? {
                println!("{u}@{h}");
            }
        }
    }
    Ok(())
}

fn roster(config: &Config, action: RosterAction) -> Result<(), String> {
    let db =
        rjabberd::storage::open(&config.storage, &config.data_dir).map_err(|e| e.to_string())?;
    let contact_jid = |contact: &str| -> Result<String, String> {
        let jid = Jid::parse(contact).map_err(|e| format!("`{contact}`: {e}"))?;
        if jid.resource().is_some() {
            return Err(format!("`{contact}` is not a bare JID"));
        }
        Ok(jid.as_str().to_string())
    };
    match action {
        RosterAction::Add {
            owner,
            contact,
            name,
            groups,
            subscription,
        } => {
            let (host, local) = account(config, &owner)?;
            let contact = contact_jid(&contact)?;
            let subscription = Subscription::parse(&subscription)
                .ok_or_else(|| format!("`{subscription}`: not one of none, to, from, both"))?;
            let mut item = db
                .roster_item(&host, &local, &contact)
                .map_err(|e| e.to_string())?
                .unwrap_or_else(|| RosterItem::new(contact.clone()));
            item.name = name;
            item.groups = groups;
            item.subscription = subscription;
            item.listed = true;
            db.roster_put(&host, &local, &item)
                .map_err(|e| e.to_string())?;
            println!("{local}@{host}: {contact} ({})", subscription.as_str());
        }
        RosterAction::List { owner } => {
            let (host, local) = account(config, &owner)?;
            let (_, items) = db.roster(&host, &local).map_err(|e| e.to_string())?;
            for i in items {
                println!(
                    "{}\t{}\t{}\t{}",
                    i.jid,
                    i.subscription.as_str(),
                    i.name.unwrap_or_default(),
                    i.groups.join(",")
                );
            }
        }
        RosterAction::Del { owner, contact } => {
            let (host, local) = account(config, &owner)?;
            let contact = contact_jid(&contact)?;
            match db
                .roster_remove(&host, &local, &contact)
                .map_err(|e| e.to_string())?
            {
                Some(_) => println!("{local}@{host}: {contact} removed"),
                None => return Err(format!("{contact} is not on the roster of {local}@{host}")),
            }
        }
    }
    Ok(())
}

fn configured_hosts(config: &Config) -> Vec<String> {
    config
        .hosts
        .iter()
        .map(|h| h.name.get_ref().clone())
        .collect()
}

fn cluster_status(config: &Config, json: bool) -> Result<(), String> {
    use rjabberd::cluster::membership::{Registry, Timing};
    let cluster = config
        .cluster
        .as_ref()
        .ok_or("no [cluster] in the configuration: this is a single host")?;
    let target = rjabberd::storage::postgres_target(&config.storage).map_err(|e| e.to_string())?;
    let name = cluster.name.get_ref();
    let status = Registry::open(target, name, Timing::default())
        .and_then(|r| r.status())
        .map_err(|e| format!("cluster {name}: {e}"))?;
    if json {
        let rows: Vec<serde_json::Value> = status
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "node": r.node,
                    "incarnation": format!("{:016x}", r.incarnation),
                    "address": r.address,
                    "shards": r.shards,
                    "state": r.state,
                    "member": r.is_member(),
                    "sessions": r.sessions,
                    "lease_left_ms": r.lease_left_ms,
                })
            })
            .collect();
        let out = serde_json::json!({ "cluster": name, "epoch": status.epoch, "hosts": rows });
        println!("{out}");
        return Ok(());
    }
    let members = status.rows.iter().filter(|r| r.is_member()).count();
    println!(
        "cluster {name}: epoch {}, {members} member(s) of {} host(s) known",
        status.epoch,
        status.rows.len()
    );
    if status.rows.is_empty() {
        println!("no host has joined yet");
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:<24} {:>6} {:>9} {:>10}  incarnation",
        "node", "state", "address", "shards", "sessions", "lease"
    );
    for r in &status.rows {
        let state = if r.state == "up" && !r.is_member() {
            "lapsed"
        } else {
            r.state.as_str()
        };
        let lease = if r.lease_left_ms > 0 {
            format!("{:.1} s", r.lease_left_ms as f64 / 1000.0)
        } else {
            "-".to_string()
        };
        println!(
            "{:<16} {:<8} {:<24} {:>6} {:>9} {:>10}  {:016x}",
            r.node, state, r.address, r.shards, r.sessions, lease, r.incarnation
        );
    }
    Ok(())
}

fn export(
    config: &Config,
    dir: &std::path::Path,
    host: Option<String>,
    ejabberd: bool,
) -> Result<(), String> {
    let mut hosts = configured_hosts(config);
    if let Some(h) = host {
        hosts.retain(|c| c.eq_ignore_ascii_case(&h));
        if hosts.is_empty() {
            return Err(format!("{h} is not a configured host"));
        }
    }
    let db =
        rjabberd::storage::open(&config.storage, &config.data_dir).map_err(|e| e.to_string())?;
    for s in piefxis::export(
        &*db,
        dir,
        &hosts,
        if ejabberd {
            piefxis::ScramEncoding::Ejabberd
        } else {
            piefxis::ScramEncoding::Xep0227
        },
    )? {
        println!("{s}");
    }
    println!("exported to {}", dir.join(piefxis::INDEX_FILE).display());
    Ok(())
}

fn import(config: &Config, path: &std::path::Path, overwrite: bool) -> Result<(), String> {
    let db =
        rjabberd::storage::open(&config.storage, &config.data_dir).map_err(|e| e.to_string())?;
    let opts = piefxis::ImportOptions {
        overwrite,
        scram_iterations: config.auth.scram_iterations,
        hosts: configured_hosts(config),
    };
    let (summaries, failed) = piefxis::import(&*db, path, &opts, &mut |line| println!("{line}"))?;
    for s in summaries {
        println!("{s}");
    }
    if failed {
        return Err("some accounts were not imported (see above)".into());
    }
    Ok(())
}

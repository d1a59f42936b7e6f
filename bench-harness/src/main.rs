//! `rjabberd-bench`: an XMPP load generator. It owns the scenarios (`login`, `idle`, `chat` with
//! `--find-max`, `mixed`, `presence`, `offline`), the client connections that run them (one glommio
//! executor per harness thread, each with its own connections; source addresses spread over 127.0.0.x so
//! N can exceed one address's ephemeral ports), the measurements (hdrhistogram latencies, corrected for
//! coordinated omission in `chat`; the server's, a database's and its own CPU and the server's RSS from
//! /proc), and the reports (a one-screen summary, JSON, an SVG percentile plot). `provision` writes N
//! accounts straight into rjabberd's store (its SQLite file, or whatever `[storage]` a configuration
//! file names).
//!
//! The hot path (sending and receiving chat messages) formats into and parses from reused buffers with
//! rjabberd's zero-copy parser: no allocation per message.

use std::path::PathBuf;

use bench_harness::{RunArgs, client, open_store, provision_into, report, rosters};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rjabberd-bench",
    about = "XMPP load generator for rjabberd, ejabberd and Prosody"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write N accounts (`{prefix}{i}@{host}`, one password, one salt) into rjabberd's store.
    Provision {
        /// rjabberd's data directory (its `data_dir`): its SQLite store.
        #[arg(long, required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        /// rjabberd's configuration file instead: its `[storage]` (SQLite or PostgreSQL).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value = "localhost")]
        host: String,
        #[arg(long, default_value = "u")]
        prefix: String,
        #[arg(long, default_value = "pw")]
        password: String,
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
        /// Give user i the password `{password}{i}` (Tsung's convention).
        #[arg(long)]
        numbered_passwords: bool,
        /// Also give every user a roster of this many ring neighbours (subscription both), as the
        /// `presence` scenario expects.
        #[arg(long, default_value_t = 0)]
        contacts: usize,
    },
    /// Write Prosody roster files for the presence scenario (ring neighbours, subscription both) into
    /// Prosody's data directory.
    ProsodyRosters {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 18)]
        contacts: usize,
        #[arg(long, default_value = "localhost")]
        host: String,
        #[arg(long, default_value = "u")]
        prefix: String,
    },
    /// Run a scenario against a server.
    Run(Box<RunArgs>),
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Provision {
            data_dir,
            config,
            users,
            host,
            prefix,
            password,
            iterations,
            numbered_passwords,
            contacts,
        } => {
            let result = open_store(data_dir.as_deref(), config.as_deref()).and_then(|db| {
                provision_into(
                    &*db,
                    users,
                    &host,
                    &prefix,
                    &password,
                    iterations,
                    numbered_passwords,
                )?;
                if contacts == 0 {
                    return Ok(());
                }
                rosters(&*db, users, contacts, &host, &prefix)
            });
            if let Err(e) = result {
                eprintln!("rjabberd-bench: {e}");
                std::process::exit(1);
            }
        }
        Command::ProsodyRosters {
            data_dir,
            users,
            contacts,
            host,
            prefix,
        } => {
            if let Err(e) =
                bench_harness::prosody_rosters(&data_dir, users, contacts, &host, &prefix)
            {
                eprintln!("rjabberd-bench: {e}");
                std::process::exit(1);
            }
        }
        Command::Run(args) => {
            let fds = rjabberd::net::raise_fd_limit();
            if (fds as usize) < args.users + 64 {
                eprintln!(
                    "rjabberd-bench: warning: the open-file limit is {fds}, below the {} connections asked for",
                    args.users
                );
            }
            let summary = client::run(&args);
            match summary {
                Ok(s) => report::finish(&args, &s),
                Err(e) => {
                    eprintln!("rjabberd-bench: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

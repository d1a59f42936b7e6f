//! The commands of `rjabberd ctl`, ejabberdctl's most used: their arguments ([`parse`], the same
//! function on both ends of the socket, so the client reports a usage error without a server and the
//! server trusts nothing it was sent), what each does on shard 0 ([`run`]: it visits the other shards
//! over the mesh, the store through its workers), and how each answer reads for people (text) and for
//! scripts (`--json`). Exit codes: 0 done, 1 the command failed (nothing to kick, a shard did not
//! answer), 2 a usage error (unknown command, bad arguments or JID, a host not served), 3 no server
//! reached (no socket, refused, not permitted).

use std::fmt::Write as _;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{gather_metrics, on_every_shard, on_home_shard};
use crate::cluster::node::ClusterShared;
use crate::metrics::latency::Summary;
use crate::metrics::{ConnKind, STANZA_KINDS, Snapshot, Stage, StageHistograms};
use crate::modules::ctx::ModuleCtx;
use crate::proto::errors::StreamErrorCondition;
use crate::proto::jid::Jid;
use crate::proto::xml::{Limits, escape, parse_element};

/// How `rjabberd ctl` exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Failed = 1,
    Usage = 2,
    Unreachable = 3,
}

/// What the server answers: the exit code, the text for people, the value for `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub code: u8,
    pub text: String,
    #[serde(default)]
    pub json: serde_json::Value,
}

impl Answer {
    pub fn ok(text: String, json: serde_json::Value) -> Answer {
        Answer {
            code: Exit::Ok as u8,
            text,
            json,
        }
    }

    /// A failure: the text, and `{"error": text}` for `--json`.
    pub fn fail(exit: Exit, text: String) -> Answer {
        Answer {
            code: exit as u8,
            json: serde_json::json!({ "error": text }),
            text,
        }
    }
}

/// The reload the server does on SIGHUP, as the pool hands it to shard 0 (admin knows no shard): the
/// report, or the error with its location.
pub type Reload = Rc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>>>>>;

/// The longest `latency --interval`: an operator's sample, not a monitoring loop (that is the
/// Prometheus endpoint's job).
pub const MAX_INTERVAL_SECS: u64 = 3600;

/// The stream error text of a kick without a reason.
pub const KICK_TEXT: &str = "Kicked by administrator";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Stats,
    ConnectedUsers,
    /// The bare JID.
    UserSessions(String),
    /// A bare JID (every session) or a full one (that session).
    Kick {
        jid: String,
        reason: Option<String>,
    },
    SendMessage {
        from: String,
        to: String,
        body: String,
    },
    RegisteredUsers(String),
    Reload,
    Latency {
        interval: Option<u64>,
    },
    ClusterStatus,
    ClusterLeave,
    Help,
}

impl Command {
    /// How long the command itself takes (beyond gathering): what the client adds to its wait.
    pub fn duration(&self) -> Duration {
        match self {
            Command::Latency {
                interval: Some(secs),
            } => Duration::from_secs(*secs),
            _ => Duration::ZERO,
        }
    }
}

/// `(usage, what it does)` of every command, for `help`.
const HELP: &[(&str, &str)] = &[
    (
        "status",
        "whether the server runs; uptime, shards, connections, sessions",
    ),
    (
        "stats",
        "registered and online users, connections, stanzas, logins, queues; per shard and total",
    ),
    ("connected-users", "every bound full JID, sorted"),
    (
        "user-sessions JID",
        "the sessions of an account: full JID, priority, availability, shard",
    ),
    (
        "kick JID [REASON]",
        "end a session (full JID) or all of an account's (bare JID) with <policy-violation/>",
    ),
    (
        "send-message FROM TO BODY",
        "send a normal message, delivered or stored offline like any other",
    ),
    ("registered-users HOST", "the accounts of a served host"),
    (
        "reload",
        "re-read the configuration file and apply its [modules] (what SIGHUP does)",
    ),
    (
        "latency [--interval SECONDS]",
        "per-stage latency percentiles per shard, since start or over the next SECONDS",
    ),
    (
        "cluster status",
        "the hosts of the cluster as this host applies its view",
    ),
    (
        "cluster leave",
        "drain this host: it leaves the cluster and its clients reconnect to the others",
    ),
    ("help", "this list"),
];

/// The command in `args`, without the options that are the client's own (`--json`).
pub fn parse(args: &[String]) -> Result<Command, String> {
    parse_with_json(args).map(|(c, _)| c)
}

/// The command in `args` and whether `--json` was given. Options may come anywhere before `--`; after
/// it everything is an argument (a message body that starts with `--`).
pub fn parse_with_json(args: &[String]) -> Result<(Command, bool), String> {
    let mut json = false;
    let mut interval = None;
    let mut words: Vec<&str> = Vec::new();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--" => {
                words.extend(rest.by_ref().map(String::as_str));
                break;
            }
            "--json" => json = true,
            "--interval" => {
                let v = rest.next().ok_or("--interval needs a number of seconds")?;
                interval = Some(v.clone());
            }
            o if o.starts_with("--interval=") => interval = Some(o["--interval=".len()..].into()),
            "-h" | "--help" => words.insert(0, "help"),
            o if o.starts_with("--") => return Err(format!("unknown option {o}")),
            w => words.push(w),
        }
    }
    let Some((&name, params)) = words.split_first() else {
        return Err("no command given".into());
    };
    // ejabberdctl spells its commands with underscores: accept those too.
    let name = name.replace('_', "-");
    let arity = |min: usize, max: usize, usage: &str| -> Result<(), String> {
        if params.len() < min || params.len() > max {
            Err(format!("usage: rjabberd ctl {usage}"))
        } else {
            Ok(())
        }
    };
    if interval.is_some() && name != "latency" {
        return Err("--interval goes with latency only".into());
    }
    let command = match name.as_str() {
        "status" => arity(0, 0, "status").map(|()| Command::Status)?,
        "stats" => arity(0, 0, "stats").map(|()| Command::Stats)?,
        "connected-users" => arity(0, 0, "connected-users").map(|()| Command::ConnectedUsers)?,
        "user-sessions" | "user-sessions-info" => {
            arity(1, 1, "user-sessions JID")?;
            let jid = jid(params[0])?;
            Command::UserSessions(jid.bare_str().to_string())
        }
        "kick" | "kick-user" | "kick-session" => {
            arity(1, 2, "kick JID [REASON]")?;
            let jid = jid(params[0])?;
            Command::Kick {
                jid: jid.as_str().to_string(),
                reason: params
                    .get(1)
                    .map(|r| r.to_string())
                    .filter(|r| !r.is_empty()),
            }
        }
        "send-message" => {
            arity(3, 3, "send-message FROM TO BODY")?;
            Command::SendMessage {
                from: jid(params[0])?.as_str().to_string(),
                to: jid(params[1])?.as_str().to_string(),
                body: params[2].to_string(),
            }
        }
        "registered-users" => {
            arity(1, 1, "registered-users HOST")?;
            let host = jid(params[0])?;
            if host.local().is_some() || host.resource().is_some() {
                return Err(format!("`{}` is not a host name", params[0]));
            }
            Command::RegisteredUsers(host.domain().to_string())
        }
        "reload" | "reload-config" => arity(0, 0, "reload").map(|()| Command::Reload)?,
        "latency" => {
            arity(0, 0, "latency [--interval SECONDS]")?;
            let interval = match interval {
                None => None,
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if (1..=MAX_INTERVAL_SECS).contains(&n) => Some(n),
                    _ => {
                        return Err(format!(
                            "--interval {v}: a whole number of seconds from 1 to {MAX_INTERVAL_SECS}"
                        ));
                    }
                },
            };
            Command::Latency { interval }
        }
        "cluster" => match params {
            ["status"] => Command::ClusterStatus,
            ["leave"] => Command::ClusterLeave,
            _ => return Err("usage: rjabberd ctl cluster status|leave".into()),
        },
        "cluster-status" => arity(0, 0, "cluster status").map(|()| Command::ClusterStatus)?,
        "help" => Command::Help,
        other => return Err(format!("unknown command `{other}`")),
    };
    Ok((command, json))
}

fn jid(s: &str) -> Result<Jid, String> {
    Jid::parse(s).map_err(|e| format!("`{s}` is not a JID: {e}"))
}

/// Runs `command` on this shard (shard 0) and answers.
pub async fn run(
    command: Command,
    ctx: &ModuleCtx,
    reload: &Reload,
    cluster: Option<&ClusterShared>,
) -> Answer {
    let result = match command {
        Command::Status => status(ctx).await,
        Command::Stats => stats(ctx).await,
        Command::ConnectedUsers => connected_users(ctx).await,
        Command::UserSessions(bare) => user_sessions(ctx, bare).await,
        Command::Kick { jid, reason } => kick(ctx, jid, reason).await,
        Command::SendMessage { from, to, body } => send_message(ctx, &from, &to, &body),
        Command::RegisteredUsers(host) => registered_users(ctx, host).await,
        Command::Reload => match reload().await {
            Ok(report) => Ok(Answer::ok(
                report.clone(),
                json!({ "reloaded": true, "report": report }),
            )),
            Err(e) => Err(Answer::fail(Exit::Failed, e)),
        },
        Command::Latency { interval } => latency(ctx, interval).await,
        Command::ClusterStatus => Ok(cluster_status(ctx, cluster)),
        Command::ClusterLeave => cluster_leave(cluster).await,
        Command::Help => Ok(help()),
    };
    result.unwrap_or_else(|a| a)
}

/// A shard that did not answer fails the command.
fn failed(e: String) -> Answer {
    Answer::fail(Exit::Failed, e)
}

fn not_served(ctx: &ModuleCtx, domain: &str) -> Option<Answer> {
    let served = ctx
        .config()
        .hosts
        .iter()
        .any(|h| h.name.get_ref().eq_ignore_ascii_case(domain));
    (!served).then(|| {
        Answer::fail(
            Exit::Usage,
            format!(
                "{domain} is not a host this server serves ({})",
                ctx.config().host_names().join(", ")
            ),
        )
    })
}

/// `rjabberd@` and the machine's name: the node, as ejabberd names its Erlang node.
pub fn node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if r == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".to_string()
    };
    format!("rjabberd@{host}")
}

/// `3d 04h 05m 06s`, leading zero units left out.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}h {m:02}m {s:02}s")
    } else if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

async fn status(ctx: &ModuleCtx) -> Result<Answer, Answer> {
    let (shards, process) = gather_metrics(ctx).await.map_err(failed)?;
    let sum = |f: &dyn Fn(&Snapshot) -> i64| shards.iter().map(f).sum::<i64>();
    let c2s = sum(&|s| s.open[ConnKind::C2s as usize]);
    let components = sum(&|s| s.open[ConnKind::Component as usize]);
    let sessions = sum(&|s| s.sessions as i64);
    let accounts = sum(&|s| s.accounts as i64);
    let node = node_name();
    let version = env!("CARGO_PKG_VERSION");
    let uptime = process.uptime_secs as u64;
    let text = format!(
        "The node {node} is started with status: started\n\
         rjabberd {version} is running in that node\n\
         uptime {}, {} shard(s), {c2s} client and {components} component connection(s), \
         {sessions} session(s) of {accounts} account(s)\n",
        human_duration(uptime),
        process.shards,
    );
    Ok(Answer::ok(
        text,
        json!({
            "node": node,
            "status": "started",
            "version": version,
            "uptime_secs": uptime,
            "shards": process.shards,
            "connections": { "c2s": c2s, "component": components },
            "sessions": sessions,
            "online_users": accounts,
        }),
    ))
}

/// One shard's figures as `stats` shows them (and their sum as the total).
#[derive(Debug, Clone, Default)]
struct ShardStats {
    shard: Option<usize>,
    online_users: u64,
    sessions: u64,
    connections_c2s: i64,
    connections_component: i64,
    stanzas_in: Vec<(String, u64)>,
    stanzas_out: Vec<(String, u64)>,
    /// `(mechanism, succeeded, failed)`.
    logins: Vec<(String, u64, u64)>,
    mesh_sent: u64,
    mesh_received: u64,
    mesh_spill_waiting: u64,
    mesh_refused: u64,
    store_queries: u64,
    store_errors: u64,
}

impl ShardStats {
    fn of(s: &Snapshot) -> ShardStats {
        let kinds = |counts: &[u64; 4]| {
            STANZA_KINDS
                .iter()
                .zip(counts)
                .map(|(k, n)| (k.to_string(), *n))
                .collect()
        };
        ShardStats {
            shard: Some(s.shard),
            online_users: s.accounts,
            sessions: s.sessions,
            connections_c2s: s.open[ConnKind::C2s as usize],
            connections_component: s.open[ConnKind::Component as usize],
            stanzas_in: kinds(&s.stanzas_in),
            stanzas_out: kinds(&s.stanzas_out),
            logins: s
                .logins
                .iter()
                .map(|(m, ok, bad)| (m.to_string(), *ok, *bad))
                .collect(),
            mesh_sent: s.mesh_sent.iter().sum(),
            mesh_received: s.mesh_received.iter().sum(),
            mesh_spill_waiting: s.mesh_spill_waiting.iter().sum(),
            mesh_refused: s.mesh_refused,
            store_queries: s.store_queries,
            store_errors: s.store_errors,
        }
    }

    fn add(&mut self, o: &ShardStats) {
        self.online_users += o.online_users;
        self.sessions += o.sessions;
        self.connections_c2s += o.connections_c2s;
        self.connections_component += o.connections_component;
        for (mine, theirs) in [
            (&mut self.stanzas_in, &o.stanzas_in),
            (&mut self.stanzas_out, &o.stanzas_out),
        ] {
            for (k, n) in theirs {
                match mine.iter_mut().find(|(m, _)| m == k) {
                    Some(slot) => slot.1 += n,
                    None => mine.push((k.clone(), *n)),
                }
            }
        }
        for (m, ok, bad) in &o.logins {
            match self.logins.iter_mut().find(|(x, ..)| x == m) {
                Some(slot) => {
                    slot.1 += ok;
                    slot.2 += bad;
                }
                None => self.logins.push((m.clone(), *ok, *bad)),
            }
        }
        self.mesh_sent += o.mesh_sent;
        self.mesh_received += o.mesh_received;
        self.mesh_spill_waiting += o.mesh_spill_waiting;
        self.mesh_refused += o.mesh_refused;
        self.store_queries += o.store_queries;
        self.store_errors += o.store_errors;
    }

    fn to_json(&self) -> serde_json::Value {
        let kinds = |v: &[(String, u64)]| -> serde_json::Map<String, serde_json::Value> {
            v.iter().map(|(k, n)| (k.clone(), json!(n))).collect()
        };
        let logins: serde_json::Map<String, serde_json::Value> = self
            .logins
            .iter()
            .map(|(m, ok, bad)| (m.clone(), json!({ "ok": ok, "failed": bad })))
            .collect();
        let mut v = json!({
            "online_users": self.online_users,
            "sessions": self.sessions,
            "connections": { "c2s": self.connections_c2s, "component": self.connections_component },
            "stanzas_in": kinds(&self.stanzas_in),
            "stanzas_out": kinds(&self.stanzas_out),
            "logins": logins,
            "mesh": {
                "sent": self.mesh_sent,
                "received": self.mesh_received,
                "spill_waiting": self.mesh_spill_waiting,
                "refused": self.mesh_refused,
            },
            "store": { "queries": self.store_queries, "errors": self.store_errors },
        });
        if let Some(shard) = self.shard {
            v["shard"] = json!(shard);
        }
        v
    }
}

/// Rows of figures under their column headers, right-aligned; `corner` heads the labels.
fn figure_table(corner: &str, columns: &[String], rows: &[(String, Vec<String>)]) -> String {
    let label_width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .chain([corner.chars().count()])
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|(_, cells)| cells[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!("{corner:label_width$}");
    for (c, w) in columns.iter().zip(&widths) {
        let _ = write!(out, "  {c:>w$}");
    }
    out.push('\n');
    for (label, cells) in rows {
        let _ = write!(out, "{label:label_width$}");
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(out, "  {c:>w$}");
        }
        out.push('\n');
    }
    out
}

async fn stats(ctx: &ModuleCtx) -> Result<Answer, Answer> {
    let (shards, process) = gather_metrics(ctx).await.map_err(failed)?;
    let hosts = ctx.config().host_names();
    let counted = hosts.clone();
    let registered = ctx
        .store()
        .run(move |db| {
            counted
                .iter()
                .map(|h| db.count(Some(h)).map(|n| (h.clone(), n)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| failed(format!("the store: {e}")))?;
    let per_shard: Vec<ShardStats> = shards.iter().map(ShardStats::of).collect();
    let mut total = ShardStats::default();
    for s in &per_shard {
        total.add(s);
    }
    let mut all = per_shard.clone();
    all.push(total.clone());
    let mut columns: Vec<String> = per_shard
        .iter()
        .map(|s| format!("shard {}", s.shard.unwrap_or_default()))
        .collect();
    columns.push("total".into());
    let row = |label: String, f: &dyn Fn(&ShardStats) -> String| -> (String, Vec<String>) {
        (label, all.iter().map(f).collect())
    };
    let mut rows = vec![
        row("online users".into(), &|s| s.online_users.to_string()),
        row("sessions".into(), &|s| s.sessions.to_string()),
        row("c2s connections".into(), &|s| s.connections_c2s.to_string()),
        row("component connections".into(), &|s| {
            s.connections_component.to_string()
        }),
    ];
    for (i, kind) in STANZA_KINDS.iter().enumerate() {
        rows.push(row(format!("stanzas in: {kind}"), &|s| {
            s.stanzas_in[i].1.to_string()
        }));
    }
    for (i, kind) in STANZA_KINDS.iter().enumerate() {
        rows.push(row(format!("stanzas out: {kind}"), &|s| {
            s.stanzas_out[i].1.to_string()
        }));
    }
    for (mechanism, ..) in &total.logins {
        let pick = |s: &ShardStats| s.logins.iter().find(|(m, ..)| m == mechanism).cloned();
        rows.push(row(format!("logins ok: {mechanism}"), &|s| {
            pick(s).map_or(0, |l| l.1).to_string()
        }));
        rows.push(row(format!("logins failed: {mechanism}"), &|s| {
            pick(s).map_or(0, |l| l.2).to_string()
        }));
    }
    rows.extend([
        row("mesh sent".into(), &|s| s.mesh_sent.to_string()),
        row("mesh received".into(), &|s| s.mesh_received.to_string()),
        row("mesh spill queue".into(), &|s| {
            s.mesh_spill_waiting.to_string()
        }),
        row("mesh refused".into(), &|s| s.mesh_refused.to_string()),
        row("store queries".into(), &|s| s.store_queries.to_string()),
        row("store errors".into(), &|s| s.store_errors.to_string()),
    ]);
    let registered_total: u64 = registered.iter().map(|(_, n)| n).sum();
    let mut text = format!(
        "registered users: {} ({registered_total} in all)\n",
        registered
            .iter()
            .map(|(h, n)| format!("{h} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        text,
        "store queue: {} waiting; uptime {}",
        process.store_queue_depth,
        human_duration(process.uptime_secs as u64)
    );
    if total.logins.is_empty() {
        text.push_str("logins: none since the start\n");
    }
    text.push('\n');
    text.push_str(&figure_table("", &columns, &rows));
    let registered_json: serde_json::Map<String, serde_json::Value> = registered
        .iter()
        .map(|(h, n)| (h.clone(), json!(n)))
        .collect();
    Ok(Answer::ok(
        text,
        json!({
            "registered_users": registered_json,
            "registered_users_total": registered_total,
            "store_queue_depth": process.store_queue_depth,
            "uptime_secs": process.uptime_secs as u64,
            "shards": per_shard.iter().map(ShardStats::to_json).collect::<Vec<_>>(),
            "total": total.to_json(),
        }),
    ))
}

/// Every session of the server: this host's, and in a cluster every other serving host's (asked
/// with a request each, §10); a host that does not answer fails the command, naming it, rather than
/// leave a list that looks whole.
async fn connected_users(ctx: &ModuleCtx) -> Result<Answer, Answer> {
    let mut all = connected_here(ctx).await.map_err(failed)?;
    for node in ctx.other_hosts() {
        let answer = ctx
            .ask_host(&node, "connected-users", bytes::Bytes::from_static(b"{}"))
            .await
            .map_err(|e| failed(format!("{node}: {e}")))?;
        let theirs: Vec<String> = serde_json::from_slice(&answer)
            .map_err(|e| failed(format!("{node} answered nonsense: {e}")))?;
        all.extend(theirs);
    }
    all.sort_unstable();
    let mut text = all.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    Ok(Answer::ok(text, json!({ "connected_users": all })))
}

async fn user_sessions(ctx: &ModuleCtx, bare: String) -> Result<Answer, Answer> {
    if let Some(a) = not_served(ctx, crate::proto::jid::domain_of(&bare)) {
        return Err(a);
    }
    let key = bare.clone();
    let (node, shard, sessions) = match ctx.home_host(&key) {
        Some(node) => {
            let body = serde_json::to_vec(&json!({ "jid": key })).unwrap_or_default();
            let answer = ctx
                .ask_host(&node, "user-sessions", body.into())
                .await
                .map_err(failed)?;
            let (shard, sessions): (usize, Vec<(String, i8, bool)>) =
                serde_json::from_slice(&answer)
                    .map_err(|e| failed(format!("{node} answered nonsense: {e}")))?;
            (Some(node), shard, sessions)
        }
        None => {
            let (shard, sessions) = sessions_here(ctx, bare).await.map_err(failed)?;
            (None, shard, sessions)
        }
    };
    // On another host of the cluster, the host is named before its shard.
    let at = match &node {
        Some(node) => format!("{node} shard {shard}"),
        None => format!("shard {shard}"),
    };
    if sessions.is_empty() {
        return Err(Answer::fail(Exit::Failed, format!("{key} has no session")));
    }
    let mut text = String::new();
    for (full, priority, available) in &sessions {
        let _ = writeln!(
            text,
            "{full}\tpriority {priority}\t{}\t{at}",
            if *available {
                "available"
            } else {
                "unavailable"
            }
        );
    }
    let list: Vec<serde_json::Value> = sessions
        .iter()
        .map(|(full, priority, available)| {
            json!({ "jid": full, "priority": priority, "available": available, "node": node, "shard": shard })
        })
        .collect();
    Ok(Answer::ok(text, json!({ "user": key, "sessions": list })))
}

async fn kick(ctx: &ModuleCtx, jid: String, reason: Option<String>) -> Result<Answer, Answer> {
    let bare = crate::proto::jid::bare_of(&jid).to_string();
    if let Some(a) = not_served(ctx, crate::proto::jid::domain_of(&bare)) {
        return Err(a);
    }
    let reason = reason.unwrap_or_else(|| KICK_TEXT.to_string());
    let ended: Vec<String> = match ctx.home_host(&bare) {
        Some(node) => {
            let body =
                serde_json::to_vec(&json!({ "jid": jid, "reason": reason })).unwrap_or_default();
            let answer = ctx
                .ask_host(&node, "kick", body.into())
                .await
                .map_err(failed)?;
            serde_json::from_slice(&answer)
                .map_err(|e| failed(format!("{node} answered nonsense: {e}")))?
        }
        None => kick_here(ctx, &jid, &reason).await.map_err(failed)?,
    };
    if ended.is_empty() {
        return Err(Answer::fail(
            Exit::Failed,
            format!("{jid} has no session: nothing kicked"),
        ));
    }
    let mut out = String::new();
    for s in &ended {
        let _ = writeln!(out, "kicked {s} ({reason})");
    }
    Ok(Answer::ok(
        out,
        json!({ "kicked": ended, "reason": reason }),
    ))
}

/// The full JID of every session homed on this host.
async fn connected_here(ctx: &ModuleCtx) -> Result<Vec<String>, String> {
    let per_shard = on_every_shard(ctx, |c| {
        c.bound_sessions()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<String>>()
    })
    .await?;
    Ok(per_shard.into_iter().flatten().collect())
}

/// The sessions of `bare` on its home shard, which is on this host: the shard, and each session's
/// full JID, priority and availability.
async fn sessions_here(
    ctx: &ModuleCtx,
    bare: String,
) -> Result<(usize, Vec<(String, i8, bool)>), String> {
    let key = bare.clone();
    on_home_shard(ctx, &key, move |home| {
        let sessions: Vec<(String, i8, bool)> = home
            .sessions(&bare)
            .iter()
            .map(|s| (s.full.to_string(), s.priority, s.available))
            .collect();
        (home.shard_id(), sessions)
    })
    .await
}

/// Ends the sessions of `jid` (all of a bare JID's) on its home shard, which is on this host, with
/// `policy-violation` and `reason`; the full JIDs it ended.
async fn kick_here(ctx: &ModuleCtx, jid: &str, reason: &str) -> Result<Vec<String>, String> {
    let bare = crate::proto::jid::bare_of(jid).to_string();
    let full = (bare != jid).then(|| jid.to_string());
    let text = reason.to_string();
    let key = bare.clone();
    on_home_shard(ctx, &key, move |home| {
        home.end_sessions(
            &bare,
            full.as_deref(),
            StreamErrorCondition::PolicyViolation,
            Some(&text),
        )
        .iter()
        .map(|s| s.to_string())
        .collect()
    })
    .await
}

/// Runs a request another host of the cluster sent this one (docs/cluster-protocol.md §10): the
/// part of `ctl kick` and `ctl user-sessions` that needs the account's home, which is here. The JID
/// is parsed again, since nothing sent is trusted to be canonical.
pub fn cluster_request(
    ctx: ModuleCtx,
    verb: String,
    body: bytes::Bytes,
) -> Pin<Box<dyn std::future::Future<Output = Result<bytes::Bytes, String>>>> {
    Box::pin(async move {
        if verb == "connected-users" {
            let here = connected_here(&ctx).await?;
            return serde_json::to_vec(&here)
                .map(Into::into)
                .map_err(|e| e.to_string());
        }
        #[derive(Deserialize)]
        struct Args {
            jid: String,
            reason: Option<String>,
        }
        let args: Args =
            serde_json::from_slice(&body).map_err(|e| format!("a bad `{verb}` request: {e}"))?;
        let jid = jid(&args.jid)?.to_string();
        let answer = match verb.as_str() {
            "user-sessions" => {
                let bare = crate::proto::jid::bare_of(&jid).to_string();
                serde_json::to_vec(&sessions_here(&ctx, bare).await?)
            }
            "kick" => {
                let reason = args.reason.unwrap_or_else(|| KICK_TEXT.to_string());
                serde_json::to_vec(&kick_here(&ctx, &jid, &reason).await?)
            }
            other => return Err(format!("unknown request `{other}`")),
        };
        answer.map(Into::into).map_err(|e| e.to_string())
    })
}

/// A `normal` message: an operator's notice is not a conversation (`chat`), and a `normal` message
/// goes where any would (RFC 6121 §8.5.2: the available resources with non-negative priority, or
/// offline storage), where a `headline` would be dropped for an offline account.
fn send_message(ctx: &ModuleCtx, from: &str, to: &str, body: &str) -> Result<Answer, Answer> {
    if let Some(a) = not_served(ctx, crate::proto::jid::domain_of(from)) {
        return Err(a);
    }
    let id = format!("ctl-{}", crate::metrics::now_ns());
    let xml = format!(
        "<message xmlns='jabber:client' type='normal' to='{}' id='{id}'><body>{}</body></message>",
        escape(to),
        escape(body)
    );
    let stanza = parse_element(xml.as_bytes(), &Limits::default()).map_err(|e| {
        Answer::fail(
            Exit::Usage,
            format!("the body cannot be carried by XML: {e}"),
        )
    })?;
    ctx.route(stanza, Arc::from(from));
    Ok(Answer::ok(
        format!("sent a normal message from {from} to {to}\n"),
        json!({ "sent": true, "from": from, "to": to, "type": "normal", "id": id }),
    ))
}

async fn registered_users(ctx: &ModuleCtx, host: String) -> Result<Answer, Answer> {
    if let Some(a) = not_served(ctx, &host) {
        return Err(a);
    }
    let asked = host.clone();
    let accounts = ctx
        .store()
        .run(move |db| db.list(Some(&asked)))
        .await
        .map_err(|e| failed(format!("the store: {e}")))?;
    let users: Vec<String> = accounts.iter().map(|(h, u)| format!("{u}@{h}")).collect();
    let mut text = users.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    Ok(Answer::ok(text, json!({ "host": host, "users": users })))
}

async fn latency(ctx: &ModuleCtx, interval: Option<u64>) -> Result<Answer, Answer> {
    let take = || on_every_shard(ctx, |c| c.snapshot().latency);
    let sample_every = ctx.snapshot().sample_every;
    if sample_every == 0 {
        let text = "latency sampling is off ([metrics] latency_sample = 0); set \
                    [metrics] latency_sample = 1 (every stanza) or N (one stanza in N) and \
                    restart the server\n"
            .to_string();
        return Ok(Answer::ok(
            text,
            json!({ "sampling": false, "sample_every": 0 }),
        ));
    }
    let mut shards = take().await.map_err(failed)?;
    if let Some(secs) = interval {
        glommio::timer::sleep(Duration::from_secs(secs)).await;
        let later = take().await.map_err(failed)?;
        shards = later
            .iter()
            .zip(&shards)
            .map(|(now, before)| now.since(before))
            .collect();
    }
    let over = match interval {
        Some(secs) => format!("over the last {secs} s"),
        None => format!(
            "since start ({} ago)",
            human_duration(ctx.started().elapsed().as_secs())
        ),
    };
    let mut text = format!(
        "per-stage latency {over}, one stanza in {sample_every} sampled, {} shard(s)\n",
        shards.len()
    );
    text.push_str(&latency_table(&shards));
    Ok(Answer::ok(
        text,
        json!({
            "sampling": true,
            "sample_every": sample_every,
            "interval_secs": interval,
            "stages": latency_json(&shards),
        }),
    ))
}

/// Merges shards' histograms.
fn merged(shards: &[StageHistograms]) -> StageHistograms {
    let mut all = StageHistograms::default();
    for s in shards {
        all.add(s);
    }
    all
}

/// A duration in the unit that keeps it short: `850 ns`, `12.3 µs`, `4.56 ms`, `1.20 s`, three
/// significant digits (the histograms hold two).
pub fn human_ns(ns: u64) -> String {
    let v = ns as f64;
    let (value, unit) = if ns < 1_000 {
        return format!("{ns} ns");
    } else if ns < 1_000_000 {
        (v / 1e3, "µs")
    } else if ns < 1_000_000_000 {
        (v / 1e6, "ms")
    } else {
        (v / 1e9, "s")
    };
    if value < 10.0 {
        format!("{value:.2} {unit}")
    } else if value < 100.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// The `latency` table: for each stage, a row per shard and one for all shards merged; `-` where a
/// stage saw nothing (the mesh of a one-shard server, say).
pub fn latency_table(shards: &[StageHistograms]) -> String {
    let all = merged(shards);
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let cells = |s: Option<Summary>| -> Vec<String> {
        match s {
            None => vec![
                "0".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
            Some(s) => vec![
                s.count.to_string(),
                human_ns(s.p50),
                human_ns(s.p90),
                human_ns(s.p99),
                human_ns(s.p999),
                human_ns(s.max),
            ],
        }
    };
    for stage in Stage::ALL {
        for (i, h) in shards.iter().enumerate() {
            let mut row = vec![i.to_string()];
            row.extend(cells(h.summary(stage)));
            rows.push((stage.label().to_string(), row));
        }
        if shards.len() > 1 {
            let mut row = vec!["all".to_string()];
            row.extend(cells(all.summary(stage)));
            rows.push((stage.label().to_string(), row));
        }
    }
    let columns: Vec<String> = ["shard", "count", "p50", "p90", "p99", "p99.9", "max"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    figure_table("stage", &columns, &rows)
}

fn latency_json(shards: &[StageHistograms]) -> serde_json::Value {
    let summary = |s: Option<Summary>| match s {
        None => json!({ "count": 0 }),
        Some(s) => json!({
            "count": s.count,
            "p50_ns": s.p50,
            "p90_ns": s.p90,
            "p99_ns": s.p99,
            "p999_ns": s.p999,
            "max_ns": s.max,
        }),
    };
    let all = merged(shards);
    let stages: serde_json::Map<String, serde_json::Value> = Stage::ALL
        .iter()
        .map(|stage| {
            (
                stage.label().to_string(),
                json!({
                    "shards": shards.iter().map(|h| summary(h.summary(*stage))).collect::<Vec<_>>(),
                    "all": summary(all.summary(*stage)),
                }),
            )
        })
        .collect();
    serde_json::Value::Object(stages)
}

fn cluster_status(ctx: &ModuleCtx, cluster: Option<&ClusterShared>) -> Answer {
    if let Some(c) = cluster {
        let view = c.view();
        let mut text = format!(
            "cluster {}: epoch {}, {} member(s) as {} applies it{}\n",
            c.name,
            view.epoch,
            view.members.len(),
            c.node,
            if view.me.is_some() {
                ""
            } else {
                " (this host is out of the cluster)"
            }
        );
        for m in &view.members {
            let _ = writeln!(
                text,
                "  {:<16} {:<22} shards {:<3} sessions {}",
                m.node, m.address, m.shards, m.sessions
            );
        }
        return Answer::ok(
            text,
            json!({
                "clustered": true,
                "cluster": c.name,
                "node": c.node,
                "epoch": view.epoch,
                "member": view.me.is_some(),
                "nodes": view.members.iter().map(|m| json!({
                    "node": m.node, "address": m.address, "shards": m.shards, "sessions": m.sessions,
                })).collect::<Vec<_>>(),
            }),
        );
    }
    let node = node_name();
    let shards = ctx.shards();
    Answer::ok(
        format!("{node} is a single host with {shards} shard(s): there is no cluster yet\n"),
        json!({
            "clustered": false,
            "nodes": [{ "node": node, "status": "started", "shards": shards }],
        }),
    )
}

/// Drains this host (`rjabberd cluster leave`): it leaves the membership, the others take its accounts,
/// and its client streams end with `<system-shutdown/>` so that the clients reconnect to the others.
/// Answers once the view without this host is applied, within 10 s.
async fn cluster_leave(cluster: Option<&ClusterShared>) -> Result<Answer, Answer> {
    let Some(c) = cluster else {
        return Err(Answer::fail(
            Exit::Failed,
            "this host is not a member of a cluster".into(),
        ));
    };
    c.leave();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.view().me.is_some() {
        if std::time::Instant::now() > deadline {
            return Err(Answer::fail(
                Exit::Failed,
                "asked to leave, but the view without this host did not come within 10 s".into(),
            ));
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let view = c.view();
    Ok(Answer::ok(
        format!(
            "{} left cluster {} at epoch {}; its clients were told to reconnect; stop it when you \
             like\n",
            c.node, c.name, view.epoch
        ),
        json!({ "left": true, "node": c.node, "epoch": view.epoch }),
    ))
}

/// The command list (answered by the client itself: it needs no server).
pub fn help() -> Answer {
    let width = HELP.iter().map(|(u, _)| u.len()).max().unwrap_or(0);
    let mut text =
        String::from("usage: rjabberd [--config FILE] ctl [--json] COMMAND [ARGS…]\n\ncommands:\n");
    for (usage, what) in HELP {
        let _ = writeln!(text, "  {usage:width$}  {what}");
    }
    text.push_str(
        "\nexit codes: 0 done, 1 the command failed, 2 usage error, 3 the server cannot be reached\n",
    );
    Answer::ok(
        text,
        json!({
            "commands": HELP.iter().map(|(u, w)| json!({ "usage": u, "what": w })).collect::<Vec<_>>(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    fn parsed(s: &[&str]) -> Result<(Command, bool), String> {
        parse_with_json(&args(s))
    }

    #[test]
    fn commands_and_their_arguments() {
        assert_eq!(parsed(&["status"]), Ok((Command::Status, false)));
        assert_eq!(parsed(&["--json", "stats"]), Ok((Command::Stats, true)));
        assert_eq!(parsed(&["stats", "--json"]), Ok((Command::Stats, true)));
        assert_eq!(
            parsed(&["connected_users"]),
            Ok((Command::ConnectedUsers, false)),
            "ejabberdctl's spelling"
        );
        assert_eq!(
            parse(&args(&["user-sessions", "Alice@LocalHost/phone"])),
            Ok(Command::UserSessions("alice@localhost".into())),
            "normalised, and the bare JID"
        );
        assert_eq!(
            parse(&args(&["kick", "alice@localhost/phone"])),
            Ok(Command::Kick {
                jid: "alice@localhost/phone".into(),
                reason: None
            })
        );
        assert_eq!(
            parse(&args(&["kick", "alice@localhost", "spam & more"])),
            Ok(Command::Kick {
                jid: "alice@localhost".into(),
                reason: Some("spam & more".into())
            })
        );
        assert_eq!(
            parse(&args(&[
                "send-message",
                "admin@localhost",
                "bob@localhost",
                "--",
                "--json is a body here"
            ])),
            Ok(Command::SendMessage {
                from: "admin@localhost".into(),
                to: "bob@localhost".into(),
                body: "--json is a body here".into()
            }),
            "`--` ends options"
        );
        assert_eq!(
            parse_with_json(&args(&[
                "send-message",
                "a@localhost",
                "b@localhost",
                "--json"
            ])),
            Err("usage: rjabberd ctl send-message FROM TO BODY".into()),
            "without `--`, `--json` is the option and the body is missing"
        );
        assert_eq!(
            parse(&args(&[
                "send-message",
                "admin@localhost",
                "--",
                "bob@localhost",
                "--json"
            ])),
            Ok(Command::SendMessage {
                from: "admin@localhost".into(),
                to: "bob@localhost".into(),
                body: "--json".into()
            })
        );
        assert_eq!(
            parse(&args(&["registered-users", "LOCALHOST"])),
            Ok(Command::RegisteredUsers("localhost".into()))
        );
        assert_eq!(
            parse(&args(&["latency", "--interval", "10"])),
            Ok(Command::Latency { interval: Some(10) })
        );
        assert_eq!(
            parse(&args(&["latency", "--interval=2"])),
            Ok(Command::Latency { interval: Some(2) })
        );
        assert_eq!(
            parse(&args(&["cluster", "status"])),
            Ok(Command::ClusterStatus)
        );
        assert_eq!(parse(&args(&["reload"])), Ok(Command::Reload));
        assert_eq!(parse(&args(&["--help"])), Ok(Command::Help));
        assert_eq!(
            Command::Latency { interval: Some(7) }.duration(),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn usage_errors_name_the_problem() {
        for (a, want) in [
            (&[][..], "no command"),
            (&["frobnicate"][..], "unknown command `frobnicate`"),
            (&["status", "now"][..], "usage: rjabberd ctl status"),
            (&["kick"][..], "usage: rjabberd ctl kick JID [REASON]"),
            (&["kick", "a@b@c"][..], "is not a JID"),
            (&["user-sessions", "@localhost"][..], "is not a JID"),
            (
                &["registered-users", "alice@localhost"][..],
                "not a host name",
            ),
            (&["latency", "--interval", "0"][..], "from 1 to 3600"),
            (&["latency", "--interval", "x"][..], "from 1 to 3600"),
            (&["latency", "--interval"][..], "needs a number"),
            (&["status", "--interval", "3"][..], "latency only"),
            (&["cluster"][..], "cluster status"),
            (&["status", "--verbose"][..], "unknown option --verbose"),
        ] {
            let err = parse(&args(a)).unwrap_err();
            assert!(err.contains(want), "{a:?}: {err}");
        }
    }

    #[test]
    fn durations_in_short_units() {
        assert_eq!(human_ns(850), "850 ns");
        assert_eq!(human_ns(1_234), "1.23 µs");
        assert_eq!(human_ns(12_345), "12.3 µs");
        assert_eq!(human_ns(123_456), "123 µs");
        assert_eq!(human_ns(4_560_000), "4.56 ms");
        assert_eq!(human_ns(1_200_000_000), "1.20 s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3_725), "1h 02m 05s");
        assert_eq!(human_duration(2 * 86_400 + 61), "2d 00h 01m 01s");
    }

    #[test]
    fn the_latency_table_has_a_row_per_stage_and_shard_and_the_merge() {
        let mut a = StageHistograms::default();
        let mut b = StageHistograms::default();
        for v in 1..=100u64 {
            a.record(Stage::Parse, v * 1_000);
            b.record(Stage::Parse, v * 100_000);
        }
        b.record(Stage::Mesh, 25_000);
        let table = latency_table(&[a.clone(), b]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 1 + Stage::ALL.len() * 3, "{table}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "stage", "shard", "count", "p50", "p90", "p99", "p99.9", "max"
            ]
        );
        let row = |stage: &str, shard: &str| -> Vec<String> {
            let line = lines
                .iter()
                .find(|l| {
                    let mut w = l.split_whitespace();
                    w.next() == Some(stage) && w.next() == Some(shard)
                })
                .unwrap_or_else(|| panic!("{stage} {shard} in\n{table}"));
            // Cells are "value unit" pairs after the stage, shard and count.
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        let s = a.summary(Stage::Parse).unwrap();
        assert_eq!(
            row("parse", "0"),
            [
                "parse".to_string(),
                "0".into(),
                "100".into(),
                human_ns(s.p50),
                human_ns(s.p90),
                human_ns(s.p99),
                human_ns(s.p999),
                human_ns(s.max)
            ]
        );
        assert!(row("parse", "0")[3].ends_with("µs"));
        let merged = row("parse", "all");
        assert_eq!(merged[2], "200");
        assert!(merged[7].ends_with("ms"), "{merged:?}");
        assert_eq!(row("mesh", "0")[2..], ["0", "-", "-", "-", "-", "-"]);
        assert_eq!(row("mesh", "1")[2], "1");
        // Every line as wide as the header: the columns line up.
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width), "{table}");
        // One shard: no merged row.
        let one = latency_table(&[StageHistograms::default()]);
        assert_eq!(one.lines().count(), 1 + Stage::ALL.len());
        assert!(!one.contains("all"));
    }
}

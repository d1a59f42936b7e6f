//! `mod_register`: in-band registration (XEP-0077). Off unless enabled. Before authentication (when
//! `allow_preauth`), a client may create an account, limited per source IP address across all shards;
//! an authenticated account may change its password or remove itself (its module data goes with it,
//! `remove_user` runs, and its sessions are closed). Accounts live in the embedded store, or with the
//! extauth program (`tryregister`, `setpass`, `removeuser`) when authentication is external.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::hooks::{self, REMOVE_USER, RemovedUser};
use super::iq::async_handler;
use super::{
    Component, HostModules, Iq, IqError, IqResult, IqType, Module, ModuleCtx, ModuleOpts, OptKind,
    OptionSpec,
};
use crate::proto::errors::{StanzaErrorCondition as Cond, StreamErrorCondition};
use crate::proto::jid::prep_local;
use crate::proto::sasl::Credentials;
use crate::proto::xml::{Element, Stanza, escape};

pub const PROTOCOLS: &[&str] = &["XEP-0077 v2.4"];

pub const NS_REGISTER: &str = "jabber:iq:register";

pub struct Register;

impl Module for Register {
    fn name(&self) -> &'static str {
        "mod_register"
    }
    fn doc(&self) -> &'static str {
        "XEP-0077 in-band registration, password change and account removal"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[
            OptionSpec {
                name: "iqdisc",
                kind: OptKind::IqDisc,
                default: "\"parallel\"",
                doc: "queueing discipline of the authenticated requests",
            },
            OptionSpec {
                name: "allow_preauth",
                kind: OptKind::Bool,
                default: "true",
                doc: "let unauthenticated streams create accounts (after TLS, with the stream feature)",
            },
            OptionSpec {
                name: "registrations_per_ip_per_hour",
                kind: OptKind::Int {
                    min: 1,
                    max: 1_000_000,
                },
                default: "5",
                doc: "accounts one IP address may create per hour (over all shards)",
            },
            OptionSpec {
                name: "min_password_length",
                kind: OptKind::Int { min: 1, max: 1024 },
                default: "8",
                doc: "shortest password accepted, in characters",
            },
            OptionSpec {
                name: "allow_remove",
                kind: OptKind::Bool,
                default: "true",
                doc: "let accounts remove themselves",
            },
        ];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<super::Registrations, String> {
        let opts = Rc::new(opts.clone());
        let handler = || {
            let opts = opts.clone();
            async_handler(move |iq| authenticated(iq, opts.clone()))
        };
        Ok(super::Registrations::new()
            .iq(Component::Local, NS_REGISTER, opts.iqdisc(), handler())
            .iq(Component::Sm, NS_REGISTER, opts.iqdisc(), handler()))
    }
}

fn fields(q: &Element) -> (Option<String>, Option<String>, bool) {
    (
        q.child("username").map(|u| u.text()),
        q.child("password").map(|p| p.text()),
        q.child("remove").is_some(),
    )
}

fn form(registered: Option<&str>) -> Element {
    let mut q = Element::new("query").with_attr("xmlns", NS_REGISTER);
    match registered {
        Some(user) => {
            q = q
                .with_child(Element::new("registered"))
                .with_child(Element::new("username").with_text(user))
                .with_child(Element::new("password"));
        }
        None => {
            q = q
                .with_child(
                    Element::new("instructions")
                        .with_text("Choose a username and password to register with this server."),
                )
                .with_child(Element::new("username"))
                .with_child(Element::new("password"));
        }
    }
    q
}

/// Requests from an authenticated account: the form, a password change, or removal.
async fn authenticated(iq: Iq, opts: Rc<ModuleOpts>) -> IqResult {
    if iq.payload.name != "query" {
        return Err(IqError::bad_request(
            "expected <query xmlns='jabber:iq:register'/>",
        ));
    }
    // Only for one's own account (the server's JID, or one's bare JID).
    if iq.to.local().is_some() && !iq.from_owner() {
        return Err(IqError::new(Cond::Forbidden));
    }
    let user = iq.from.local().unwrap_or_default().to_string();
    let host = iq.from.domain().to_string();
    if iq.type_ == IqType::Get {
        return Ok(Some(form(Some(&user))));
    }
    let (username, password, remove) = fields(&iq.payload);
    if remove {
        if !opts.bool("allow_remove") {
            return Err(IqError::new(Cond::NotAllowed));
        }
        remove_account(&iq.ctx, &user, &host).await?;
        return Ok(None);
    }
    let (Some(username), Some(password)) = (username, password) else {
        return Err(IqError::bad_request(
            "a username and a password are required",
        ));
    };
    if prep_local(&username).ok().as_deref() != Some(user.as_str()) {
        return Err(IqError::new(Cond::NotAllowed).with_text("only your own password"));
    }
    check_password(&password, &opts)?;
    let ctx = iq.ctx.clone();
    if let Some(ext) = ctx.extauth() {
        return extauth_answer(
            ext.setpass(&user, &host, &password).await,
            Cond::NotAcceptable,
        );
    }
    let iterations = ctx.config().auth.scram_iterations;
    ctx.store()
        .run(move |db| {
            let creds = new_credentials(&password, iterations)?;
            db.set_credentials(&host, &user, &creds)
        })
        .await
        .map_err(IqError::internal)?;
    Ok(None)
}

/// The answer to a request the extauth program decided: success, its refusal as `refused`, or its
/// failure.
fn extauth_answer(answer: Result<bool, crate::auth::ExtAuthError>, refused: Cond) -> IqResult {
    match answer {
        Ok(true) => Ok(None),
        Ok(false) => Err(IqError::new(refused)),
        Err(e) => Err(IqError::internal(e)),
    }
}

fn check_password(password: &str, opts: &ModuleOpts) -> Result<(), IqError> {
    let min = opts.int("min_password_length") as usize;
    if password.chars().count() < min {
        return Err(IqError::new(Cond::NotAcceptable)
            .with_text(format!("the password needs at least {min} characters")));
    }
    Ok(())
}

fn new_credentials(
    password: &str,
    iterations: u32,
) -> Result<Credentials, crate::storage::StoreError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| crate::storage::StoreError(e.to_string()))?;
    Credentials::from_password(password, &salt, iterations)
        .map_err(|e| crate::storage::StoreError(format!("unusable password: {e:?}")))
}

/// Removes an account, runs `remove_user`, and closes its sessions once the answer is written.
async fn remove_account(ctx: &ModuleCtx, user: &str, host: &str) -> Result<(), IqError> {
    let (u, h) = (user.to_string(), host.to_string());
    if let Some(ext) = ctx.extauth() {
        extauth_answer(ext.removeuser(user, host).await, Cond::NotAllowed)?;
        ctx.store()
            .run(move |db| db.data_remove_account(&h, &u))
            .await
            .map_err(IqError::internal)?;
    } else {
        ctx.store()
            .run(move |db| db.delete(&h, &u))
            .await
            .map_err(IqError::internal)?;
    }
    let mut removed = RemovedUser {
        user: user.to_string(),
        host: host.to_string(),
    };
    hooks::run(ctx, &REMOVE_USER, host, &mut removed);
    let bare = format!("{user}@{host}");
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        // After the result: it is routed to the session when the handler returns.
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let account = bare.clone();
        // The sessions live on the account's home shard.
        ctx.send_home(&bare, move |home| {
            home.kill_sessions(&account, StreamErrorCondition::NotAuthorized)
        });
    })
    .detach();
    Ok(())
}

/// Registrations per source address in the last hour. One instance counts for all shards: the one on
/// the home shard of the address (the limit is server-wide, and no lock is shared between cores).
#[derive(Default)]
struct RecentRegistrations(RefCell<HashMap<IpAddr, Vec<Instant>>>);
const WINDOW: Duration = Duration::from_secs(3600);

impl RecentRegistrations {
    /// Counts a registration from `ip` if it is under `limit` in the last hour.
    fn admit(&self, ip: IpAddr, limit: usize, now: Instant) -> bool {
        let mut map = self.0.borrow_mut();
        map.retain(|_, times| {
            times.retain(|t| now.duration_since(*t) < WINDOW);
            !times.is_empty()
        });
        let times = map.entry(ip).or_default();
        if times.len() >= limit {
            return false;
        }
        times.push(now);
        true
    }

    /// Takes back a registration counted by [`RecentRegistrations::admit`] that did not create an
    /// account.
    fn forget(&self, ip: IpAddr, at: Instant) {
        if let Some(times) = self.0.borrow_mut().get_mut(&ip)
            && let Some(pos) = times.iter().rposition(|t| *t == at)
        {
            times.remove(pos);
        }
    }
}

/// Where the count of `ip` lives.
fn limiter_key(ip: IpAddr) -> String {
    format!("registrations from {ip}")
}

/// Asks the home shard of `ip` to count a registration.
async fn admit(ctx: &ModuleCtx, ip: IpAddr, limit: usize, now: Instant) -> bool {
    let (tx, rx) = futures_channel::oneshot::channel();
    ctx.send_home(&limiter_key(ip), move |home| {
        let _ = tx.send(home.state::<RecentRegistrations>().admit(ip, limit, now));
    });
    rx.await.unwrap_or(false)
}

fn forget(ctx: &ModuleCtx, ip: IpAddr, at: Instant) {
    ctx.send_home(&limiter_key(ip), move |home| {
        home.state::<RecentRegistrations>().forget(ip, at)
    });
}

/// The hosts whose `mod_register` lets unauthenticated streams create accounts.
pub fn register_hosts(plan: &[HostModules]) -> Vec<String> {
    super::options::hosts_running(plan, "mod_register", |o| o.bool("allow_preauth"))
}

/// Answers an in-band registration request on an unauthenticated stream: the serialised IQ answer.
pub async fn preauth(ctx: &ModuleCtx, host: &str, peer: SocketAddr, iq: &Stanza) -> Vec<u8> {
    let id = iq.id().map(|i| i.into_owned()).unwrap_or_default();
    let result = preauth_result(ctx, host, peer.ip(), iq).await;
    if iq.type_().as_deref() == Some("set") || result.is_err() {
        // A peer can try at will: the line names the peer, so the log's rate limit holds it.
        let el = iq.to_element();
        let username = el.child("query").and_then(|q| fields(q).0);
        match &result {
            Ok(_) => log::info!(
                event = "registered", host = host, username = username.as_deref(),
                peer:% = peer;
                "account created by in-band registration"
            ),
            Err(e) => log::info!(
                event = "refused", reason = "registration", condition = e.condition.as_str(),
                host = host, username = username.as_deref(), peer:% = peer;
                "in-band registration refused"
            ),
        }
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"<iq id='");
    out.extend_from_slice(escape(&id).as_bytes());
    super::iq::put_answer(&mut out, result, None);
    out
}

async fn preauth_result(ctx: &ModuleCtx, host: &str, ip: IpAddr, iq: &Stanza) -> IqResult {
    let Some(opts) = ctx.module_opts(host, "mod_register") else {
        return Err(IqError::new(Cond::ServiceUnavailable));
    };
    if !opts.bool("allow_preauth") {
        return Err(IqError::new(Cond::NotAllowed));
    }
    let el = iq.to_element();
    let Some(q) = el.child("query") else {
        return Err(IqError::bad_request("no query"));
    };
    if iq.type_().as_deref() == Some("get") {
        return Ok(Some(form(None)));
    }
    let (username, password, remove) = fields(q);
    if remove {
        return Err(IqError::new(Cond::NotAuthorized));
    }
    let (Some(username), Some(password)) = (username, password) else {
        return Err(
            IqError::new(Cond::NotAcceptable).with_text("a username and a password are required")
        );
    };
    let Ok(user) = prep_local(&username) else {
        return Err(IqError::new(Cond::JidMalformed));
    };
    if user.is_empty() {
        return Err(IqError::new(Cond::NotAcceptable));
    }
    check_password(&password, &opts)?;
    let limit = opts.int("registrations_per_ip_per_hour") as usize;
    let now = Instant::now();
    if !admit(ctx, ip, limit, now).await {
        return Err(IqError::new(Cond::ResourceConstraint)
            .with_text("too many registrations from your address; try later"));
    }
    let result = create(ctx, host, user, password).await;
    if result.is_err() {
        // Only accounts actually created count against the address.
        forget(ctx, ip, now);
    }
    result
}

async fn create(ctx: &ModuleCtx, host: &str, user: String, password: String) -> IqResult {
    let host = host.to_string();
    if let Some(ext) = ctx.extauth() {
        return extauth_answer(
            ext.tryregister(&user, &host, &password).await,
            Cond::Conflict,
        );
    }
    let iterations = ctx.config().auth.scram_iterations;
    let created = ctx
        .store()
        .run(move |db| {
            if db.exists(&host, &user)? {
                return Ok(false);
            }
            let creds = new_credentials(&password, iterations)?;
            db.add(&host, &user, &creds)?;
            Ok(true)
        })
        .await
        .map_err(IqError::internal)?;
    if created {
        Ok(None)
    } else {
        Err(IqError::new(Cond::Conflict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_counts_per_address_and_forgets_after_an_hour() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        let recent = RecentRegistrations::default();
        assert!(recent.admit(a, 2, t0));
        assert!(recent.admit(a, 2, t0));
        assert!(!recent.admit(a, 2, t0));
        assert!(recent.admit(b, 2, t0));
        recent.forget(b, t0);
        assert!(
            recent.admit(b, 1, t0),
            "a forgotten registration does not count"
        );
        assert!(recent.admit(a, 2, t0 + WINDOW + Duration::from_secs(1)));
    }
}

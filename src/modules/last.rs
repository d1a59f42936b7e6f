//! `mod_last`, last activity (XEP-0012): the server's uptime, and for an account the time since its last
//! session ended (with the status it left with), recorded by an `unset_presence` hook. Only the account
//! itself may ask until rosters (presence subscriptions) exist; anyone else gets `forbidden`, as XEP-0012
//! §3 asks without a subscription.

use super::hooks::{SessionEvent, UNSET_PRESENCE};
use super::iq::{async_handler, handler};
use super::util::{get_only, iqdisc, query, unix_now};
use super::{
    Component, Flow, Iq, IqError, IqResult, Module, ModuleCtx, ModuleOpts, OptionSpec,
    Registrations,
};
use crate::proto::errors::StanzaErrorCondition as Cond;

pub const PROTOCOLS: &[&str] = &["XEP-0012 v2.0"];

pub const NS_LAST: &str = "jabber:iq:last";

pub struct Last;

impl Module for Last {
    fn name(&self) -> &'static str {
        "mod_last"
    }
    fn doc(&self) -> &'static str {
        "XEP-0012 last activity: server uptime and accounts' last logout"
    }
    fn protocols(&self) -> &'static [&'static str] {
        PROTOCOLS
    }
    fn options(&self) -> &'static [OptionSpec] {
        const O: &[OptionSpec] = &[iqdisc("\"one_queue\"")];
        O
    }
    fn start(&self, _host: &str, opts: &ModuleOpts) -> Result<Registrations, String> {
        Ok(Registrations::new()
            .iq(
                Component::Local,
                NS_LAST,
                opts.iqdisc(),
                handler(|iq| {
                    get_only(iq)?;
                    let up = iq.ctx.started().elapsed().as_secs();
                    Ok(Some(query(NS_LAST).with_attr("seconds", up.to_string())))
                }),
            )
            .iq(
                Component::Sm,
                NS_LAST,
                opts.iqdisc(),
                async_handler(account_last),
            )
            .hook(&UNSET_PRESENCE, 50, |ctx, e: &mut SessionEvent| {
                record_logout(ctx, e);
                Flow::Continue
            }))
    }
}

fn record_logout(ctx: &ModuleCtx, e: &SessionEvent) {
    // Another resource still online keeps the account active.
    let still_online = ctx
        .sessions(&format!("{}@{}", e.user, e.host))
        .iter()
        .any(|s| s.available && s.full != e.full);
    if still_online {
        return;
    }
    let value = format!("{}\n{}", unix_now(), e.status).into_bytes();
    let (host, user) = (e.host.to_string(), e.user.to_string());
    let store = ctx.store().clone();
    glommio::spawn_local(async move {
        let r = store
            .run(move |db| db.data_put(&host, &user, "last", &[(String::new(), Some(value))]))
            .await;
        if let Err(e) = r {
            log::warn!("mod_last: cannot record a logout: {e}");
        }
    })
    .detach();
}

async fn account_last(iq: Iq) -> IqResult {
    get_only(&iq)?;
    if !iq.from_owner() {
        return Err(IqError::new(Cond::Forbidden));
    }
    let online = iq
        .ctx
        .sessions(iq.to.bare_str())
        .iter()
        .any(|s| s.available);
    if online {
        return Ok(Some(query(NS_LAST).with_attr("seconds", "0")));
    }
    let (host, user) = iq.account();
    let stored = iq
        .ctx
        .store()
        .run(move |db| db.data_get(&host, &user, "last", ""))
        .await
        .map_err(IqError::internal)?;
    let Some(value) = stored else {
        return Err(IqError::new(Cond::ServiceUnavailable));
    };
    let text = String::from_utf8_lossy(&value);
    let (at, status) = text.split_once('\n').unwrap_or((&text, ""));
    let at: u64 = at.parse().map_err(IqError::internal)?;
    Ok(Some(
        query(NS_LAST)
            .with_attr("seconds", unix_now().saturating_sub(at).to_string())
            .with_text(status),
    ))
}

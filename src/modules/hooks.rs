//! Hooks (ejabberd_hooks): named points where modules run handlers in sequence-number order, per virtual
//! host, each able to stop the run (and, for a packet hook, drop the packet) or alter the event. The
//! registry is open: a hook point is a typed constant ([`HookPoint`]) that any file may declare next to
//! the code that runs it — adding one edits nothing here. The hooks the server itself runs are declared
//! below. With no handler registered for a point, asking costs a short scan of the points that have one.

use std::any::Any;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use super::ctx::ModuleCtx;
use super::iq::Component;
use crate::proto::xml::{Element, Stanza};

/// Whether a hook's later handlers (and, for packet hooks, the packet itself) go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Later handlers are skipped; a packet hook also drops the packet.
    Stop,
}

/// A hook point whose handlers receive `&mut E`.
pub struct HookPoint<E: 'static> {
    pub name: &'static str,
    _event: PhantomData<fn(&mut E)>,
}

impl<E: 'static> HookPoint<E> {
    pub const fn new(name: &'static str) -> HookPoint<E> {
        HookPoint {
            name,
            _event: PhantomData,
        }
    }
}

/// A handler of a hook point with events `E`.
pub type HookFn<E> = Rc<dyn Fn(&ModuleCtx, &mut E) -> Flow>;

/// A stanza passing a packet hook. A handler may replace `stanza` to alter what is routed.
pub struct Packet {
    pub from: String,
    pub to: String,
    pub stanza: Stanza,
}

/// A session event (`sm_register_connection`, `sm_remove_connection`, `user_available`,
/// `unset_presence`).
pub struct SessionEvent {
    pub full: Arc<str>,
    pub user: String,
    pub host: String,
    /// The `<status/>` of an unavailable presence, for `unset_presence`.
    pub status: String,
}

/// An account was removed.
pub struct RemovedUser {
    pub user: String,
    pub host: String,
}

/// A disco#info request being answered, for `disco_features`; handlers add features and XEP-0128 forms.
pub struct DiscoQuery {
    pub component: Component,
    pub host: String,
    pub from: String,
    pub node: Option<String>,
    pub features: Vec<String>,
    pub forms: Vec<Element>,
}

/// A message for an account with no available session (RFC 6121 §8.5.2.2.1), before it is bounced. A
/// handler that keeps it (stores it) returns [`Flow::Stop`]; when none does, the sender gets
/// `service-unavailable`.
pub struct OfflineMessage {
    /// The sender's full JID, as stamped.
    pub from: Arc<str>,
    pub user: String,
    pub host: String,
    pub stanza: Stanza,
    /// Sorts in the order the stanza reached its home shard.
    pub arrival: String,
}

/// A presence subscription stanza (RFC 6121 §3) about the roster of `user` and its item `contact`
/// (bare JIDs). A handler that takes it over (updates the roster, routes or delivers it itself) returns
/// [`Flow::Stop`].
pub struct SubscriptionStanza {
    pub user: String,
    pub contact: String,
    pub kind: crate::proto::subscription::Kind,
    pub stanza: Stanza,
}

/// A session sent a subscription stanza (the user's server's side, RFC 6121 Appendix A.2).
pub const OUT_SUBSCRIPTION: HookPoint<SubscriptionStanza> =
    HookPoint::new("roster_out_subscription");
/// A subscription stanza reached the home of the account it is for (the contact's server's side,
/// Appendix A.3).
pub const IN_SUBSCRIPTION: HookPoint<SubscriptionStanza> = HookPoint::new("roster_in_subscription");

/// A session's own presence changed (RFC 6121 §4.2, §4.4, §4.5): available (`initial` for its first) or
/// unavailable, explicitly or by disconnection. `stanza` is the presence as sent, copied out, without
/// `to`; for a disconnection, a plain unavailable presence.
pub struct PresenceUpdate {
    pub full: Arc<str>,
    pub user: String,
    pub host: String,
    pub available: bool,
    pub initial: bool,
    pub stanza: Stanza,
}

/// A session's own presence changed (broadcast to contacts).
pub const USER_PRESENCE: HookPoint<PresenceUpdate> = HookPoint::new("user_presence");

/// A session sent presence to someone (RFC 6121 §4.6, directed presence): available, or unavailable.
pub struct DirectedPresence {
    pub full: Arc<str>,
    pub host: String,
    /// The recipient, as addressed (prepared).
    pub to: String,
    pub available: bool,
}

/// A session sent directed presence.
pub const DIRECTED_PRESENCE: HookPoint<DirectedPresence> = HookPoint::new("directed_presence");

/// A session's presence is about to go to `recipients` (a broadcast to contacts, probes, the answer to
/// a probe, unavailable at its end): handlers remove whoever it must not reach (a blocked contact).
pub struct PresenceRecipients {
    /// The sending account's bare JID.
    pub account: String,
    pub recipients: Vec<Arc<str>>,
}

/// Presence from an account to its contacts, before it goes.
pub const PRESENCE_RECIPIENTS: HookPoint<PresenceRecipients> =
    HookPoint::new("presence_recipients");

/// A presence probe reached the home of the account it asks about (RFC 6121 §4.3.2): `prober` (a bare
/// JID) wants `user`'s current presence, to be sent to `reply_to` (the probing resource's full JID, so
/// that the prober's other resources do not get it twice).
pub struct PresenceProbe {
    pub user: String,
    pub prober: String,
    pub reply_to: String,
}

/// A probe for an account's presence.
pub const PRESENCE_PROBE: HookPoint<PresenceProbe> = HookPoint::new("presence_probe");

/// A stanza of an account some module watches (`ModuleCtx::watch`): only watched accounts' stanzas
/// pass these hooks, so that the common path stays free of them. A handler may replace `stanza`;
/// [`Flow::Stop`] means it goes no further (the handler answered, held or dropped it).
pub struct WatchedPacket {
    /// The watched account's bare JID.
    pub account: Arc<str>,
    /// The account's session concerned: the sender (`watched_send_packet`) or the one it is about to be
    /// written to (`watched_deliver_packet`); none when the stanza reached the account as a whole
    /// (`watched_receive_packet`).
    pub session: Option<Arc<str>>,
    /// The sender, as stamped.
    pub from: Arc<str>,
    pub stanza: Stanza,
}

/// What the delivery rules did with a stanza that passed `watched_receive_packet`: the sessions of the
/// account it was written to. It does not run when no session got the stanza (kept offline, bounced,
/// dropped, or answered for the account).
pub struct WatchedDelivered {
    /// The watched account's bare JID.
    pub account: Arc<str>,
    /// The sender, as stamped.
    pub from: Arc<str>,
    /// The stanza as it reached the account, before `watched_receive_packet` handlers altered it.
    pub stanza: Stanza,
    /// The full JIDs of the sessions the rules chose.
    pub sessions: Vec<Arc<str>>,
}

/// A session of a watched account sent a stanza (before routing; ejabberd's `user_send_packet` and
/// `privacy_check_packet` out).
pub const WATCHED_SEND: HookPoint<WatchedPacket> = HookPoint::new("watched_send_packet");
/// A stanza reached a watched account's home, before the delivery rules choose its sessions (also when
/// none is available: before it is stored offline).
pub const WATCHED_RECEIVE: HookPoint<WatchedPacket> = HookPoint::new("watched_receive_packet");
/// A stanza is about to be written to one session of a watched account.
pub const WATCHED_DELIVER: HookPoint<WatchedPacket> = HookPoint::new("watched_deliver_packet");
/// A stanza that reached a watched account was written to these of its sessions (carbon copies go to
/// the others).
pub const WATCHED_DELIVERED: HookPoint<WatchedDelivered> =
    HookPoint::new("watched_delivered_packet");

/// A bound session said whether its user is using it (XEP-0352 `<active/>` / `<inactive/>`), on the
/// account's home shard, where the session is. The handlers run before the stream's next element is
/// read: what `active` releases is written before any answer to what follows it.
pub struct ClientState {
    /// The account's bare JID.
    pub account: Arc<str>,
    /// The session's full JID.
    pub full: Arc<str>,
    pub active: bool,
}

/// A session's client state nonza (run by the c2s glue).
pub const CLIENT_STATE: HookPoint<ClientState> = HookPoint::new("csi_activity");

/// Every stanza the router routes to or from the host, before delivery.
pub const FILTER_PACKET: HookPoint<Packet> = HookPoint::new("filter_packet");
/// A stanza a local session sent, before routing.
pub const USER_SEND_PACKET: HookPoint<Packet> = HookPoint::new("user_send_packet");
/// A stanza about to be written to a local session.
pub const USER_RECEIVE_PACKET: HookPoint<Packet> = HookPoint::new("user_receive_packet");
/// A resource was bound.
pub const SM_REGISTER_CONNECTION: HookPoint<SessionEvent> =
    HookPoint::new("sm_register_connection");
/// A session ended.
pub const SM_REMOVE_CONNECTION: HookPoint<SessionEvent> = HookPoint::new("sm_remove_connection");
/// A session sent its first available presence.
pub const USER_AVAILABLE: HookPoint<SessionEvent> = HookPoint::new("user_available");
/// A session became unavailable (presence or disconnect), with its status text.
pub const UNSET_PRESENCE: HookPoint<SessionEvent> = HookPoint::new("unset_presence");
/// An account was removed.
pub const REMOVE_USER: HookPoint<RemovedUser> = HookPoint::new("remove_user");
/// Features (and forms) for a disco#info answer.
pub const DISCO_FEATURES: HookPoint<DiscoQuery> = HookPoint::new("disco_features");
/// A message for an account that has no available session.
pub const OFFLINE_MESSAGE: HookPoint<OfflineMessage> = HookPoint::new("offline_message");

/// A handler as a module registers it, before the framework installs it.
pub struct HookRegistration {
    pub(super) name: &'static str,
    pub(super) seq: i32,
    pub(super) handler: Rc<dyn Any>,
}

impl HookRegistration {
    pub fn new<E: 'static>(point: &HookPoint<E>, seq: i32, handler: HookFn<E>) -> Self {
        HookRegistration {
            name: point.name,
            seq,
            handler: Rc::new(handler),
        }
    }
}

#[derive(Clone)]
struct Entry {
    seq: i32,
    host: String,
    module: &'static str,
    /// A `HookFn<E>` for the point's `E`.
    handler: Rc<dyn Any>,
}

/// The handlers registered on one shard, by hook point. Only points with handlers are present. Each
/// point's list is shared (`Rc`): a run takes the list as it is and walks it with the table released,
/// and a change (a module started or stopped) writes a new list.
#[derive(Default)]
pub struct HookTable {
    points: Vec<(&'static str, Rc<Vec<Entry>>)>,
}

impl HookTable {
    fn point(&self, name: &str) -> Option<&Rc<Vec<Entry>>> {
        self.points
            .iter()
            .find(|(n, _)| std::ptr::eq(*n, name) || *n == name)
            .map(|(_, e)| e)
    }

    /// Whether any handler is registered for `point`: the check the hot path makes.
    pub fn has<E>(&self, point: &HookPoint<E>) -> bool {
        self.point(point.name).is_some()
    }

    pub(super) fn install(&mut self, host: &str, module: &'static str, reg: HookRegistration) {
        let i = match self.points.iter().position(|(n, _)| *n == reg.name) {
            Some(i) => i,
            None => {
                self.points.push((reg.name, Rc::new(Vec::new())));
                self.points.len() - 1
            }
        };
        let entries = Rc::make_mut(&mut self.points[i].1);
        entries.push(Entry {
            seq: reg.seq,
            host: host.to_string(),
            module,
            handler: reg.handler,
        });
        // Stable: equal sequence numbers keep registration order.
        entries.sort_by_key(|e| e.seq);
    }

    pub(super) fn remove(&mut self, host: &str, module: &str) {
        for (_, entries) in self.points.iter_mut() {
            if entries.iter().any(|e| e.host == host && e.module == module) {
                Rc::make_mut(entries).retain(|e| !(e.host == host && e.module == module));
            }
        }
        self.points.retain(|(_, e)| !e.is_empty());
    }

    /// The handlers of `point` for `host`, in order.
    pub fn handlers<E: 'static>(&self, point: &HookPoint<E>, host: &str) -> Vec<HookFn<E>> {
        self.point(point.name)
            .map(|entries| handlers_in(entries, host).cloned().collect())
            .unwrap_or_default()
    }
}

/// The handlers in `entries` for `host`, in order, as `HookFn<E>`.
fn handlers_in<'a, E: 'static>(
    entries: &'a [Entry],
    host: &'a str,
) -> impl Iterator<Item = &'a HookFn<E>> {
    entries
        .iter()
        .filter(move |e| e.host == host)
        .filter_map(|e| e.handler.downcast_ref::<HookFn<E>>())
}

/// Runs the handlers of `point` for `host` in order over `event`; [`Flow::Stop`] when one stopped it.
/// The point's list is taken as it is (a reference count, nothing allocated) and walked with the table
/// released, so a handler may register or run hooks itself.
pub fn run<E: 'static>(ctx: &ModuleCtx, point: &HookPoint<E>, host: &str, event: &mut E) -> Flow {
    let Some(entries) = ctx.modules().borrow().hooks().point(point.name).cloned() else {
        return Flow::Continue;
    };
    for h in handlers_in::<E>(&entries, host) {
        if h(ctx, event) == Flow::Stop {
            return Flow::Stop;
        }
    }
    Flow::Continue
}

/// Runs a packet hook for `host` over a stanza from `from`: the stanza as the handlers left it, or
/// `None` when one stopped it.
pub fn run_packet(
    ctx: &ModuleCtx,
    point: &HookPoint<Packet>,
    host: &str,
    from: &str,
    stanza: Stanza,
) -> Option<Stanza> {
    let to = stanza.to().map(|t| t.into_owned()).unwrap_or_default();
    let mut packet = Packet {
        from: from.to_string(),
        to,
        stanza,
    };
    (run(ctx, point, host, &mut packet) == Flow::Continue).then_some(packet.stanza)
}

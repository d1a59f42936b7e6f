//! IQ handlers (ejabberd's `gen_iq_handler`): dispatch of an IQ get or set addressed to the server
//! (`ejabberd_local`) or to an account's bare JID (`ejabberd_sm`) to the handler registered for the
//! namespace of its payload, under the handler's queueing discipline, behind a fault barrier that gives
//! every request exactly one answer: no handler → `service-unavailable`; not exactly one payload element
//! or a payload the handler rejects → `bad-request`; a handler error or panic → `internal-server-error`
//! for that IQ alone, and the shard keeps running. A [`Reply`] that is dropped unanswered (its task was
//! cancelled) answers `internal-server-error` itself.

use std::cell::Cell;

use super::ctx::ModuleCtx;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_lite::FutureExt;
use glommio::channels::local_channel::{LocalSender, new_bounded};

use crate::proto::errors::{StanzaErrorCondition, write_error_element};
use crate::proto::jid::Jid;
use crate::proto::xml::{Element, Limits, Stanza, escape, parse_element};

/// The two components of the guide that IQ handlers register with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// `ejabberd_local`: IQs addressed to the server's own JID.
    Local = 0,
    /// `ejabberd_sm`: IQs addressed to an account's bare JID (or without `to`, for the sender's own).
    Sm = 1,
}

/// The queueing discipline (`iqdisc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqDisc {
    /// Run inline on the routing path. A handler that awaits is continued as a task from its first await.
    NoQueue,
    /// One ordered queue per handler per shard: requests are answered one at a time, in arrival order.
    OneQueue,
    /// A task per IQ: a slow request delays no other.
    Parallel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqType {
    Get,
    Set,
}

/// An IQ request as a handler sees it.
pub struct Iq {
    pub id: String,
    pub type_: IqType,
    /// The requester (a full JID for a session).
    pub from: Jid,
    /// Whom the IQ was addressed to: the server, or an account's bare JID.
    pub to: Jid,
    /// The virtual host the handler was registered on.
    pub host: String,
    pub lang: Option<String>,
    /// The one child element of the IQ (the `SubEl` of the guide).
    pub payload: Element,
    /// The shard the handler runs on, as modules see it.
    pub ctx: ModuleCtx,
}

impl Iq {
    /// The account the IQ is addressed to, as owned `(host, username)` for the store (the username is
    /// empty for the server).
    pub fn account(&self) -> (String, String) {
        (
            self.to.domain().to_string(),
            self.to.local().unwrap_or_default().to_string(),
        )
    }

    /// Whether the requester is the account the IQ is about (same bare JID).
    pub fn from_owner(&self) -> bool {
        self.from.bare_str() == self.to.bare_str()
    }
}

/// A refused request: the stanza error sent back, optionally with the request's payload echoed (as the
/// guide's `mod_cputime` does for `set`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IqError {
    pub condition: StanzaErrorCondition,
    pub text: Option<String>,
    pub echo_payload: bool,
}

impl IqError {
    pub fn new(condition: StanzaErrorCondition) -> Self {
        IqError {
            condition,
            text: None,
            echo_payload: false,
        }
    }

    /// The payload is not what the handler accepts.
    pub fn bad_request(text: impl Into<String>) -> Self {
        IqError::new(StanzaErrorCondition::BadRequest).with_text(text)
    }

    /// The handler failed (logged; the requester sees `internal-server-error` without the detail).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        log::error!("IQ handler failed: {detail}");
        IqError::new(StanzaErrorCondition::InternalServerError)
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// Echo the request's payload before `<error/>`.
    pub fn with_payload(mut self) -> Self {
        self.echo_payload = true;
        self
    }
}

/// `Ok(Some(el))` → a result carrying `el`; `Ok(None)` → an empty result.
pub type IqResult = Result<Option<Element>, IqError>;
pub type IqFuture = Pin<Box<dyn Future<Output = IqResult>>>;
pub type IqHandler = Rc<dyn Fn(Iq) -> IqFuture>;

/// A handler that answers at once.
pub fn handler(f: impl Fn(&Iq) -> IqResult + 'static) -> IqHandler {
    Rc::new(move |iq: Iq| {
        let r = f(&iq);
        Box::pin(std::future::ready(r)) as IqFuture
    })
}

/// A handler that awaits (storage, timers).
pub fn async_handler<F, Fut>(f: F) -> IqHandler
where
    F: Fn(Iq) -> Fut + 'static,
    Fut: Future<Output = IqResult> + 'static,
{
    Rc::new(move |iq: Iq| Box::pin(f(iq)) as IqFuture)
}

/// Requests a `one_queue` handler may hold waiting before new ones get `resource-constraint`.
const ONE_QUEUE_CAP: usize = 16 * 1024;
/// Requests waiting in this shard's `one_queue` queues at which its connections pause reading: a burst
/// slows its senders through TCP instead of being refused (the mesh's policy, applied to IQ queues).
pub const ONE_QUEUE_HIGH_WATER: usize = 1024;

/// Requests waiting in one shard's `one_queue` queues, shared by the queues' consumers and the shard.
pub type Backlog = Rc<Cell<usize>>;

/// The ordered queue of one `one_queue` handler on one shard, and its consumer task.
pub struct OneQueue {
    tx: LocalSender<(Iq, Reply)>,
    backlog: Backlog,
}

impl OneQueue {
    pub(crate) fn start(handler: IqHandler, backlog: Backlog) -> Rc<OneQueue> {
        let (tx, rx) = new_bounded::<(Iq, Reply)>(ONE_QUEUE_CAP);
        let waiting = backlog.clone();
        glommio::spawn_local(async move {
            // Ends when the module stops and the sender is dropped.
            while let Some((iq, reply)) = rx.recv().await {
                waiting.set(waiting.get().saturating_sub(1));
                let result = run_guarded(&handler, iq).await;
                reply.send(result);
            }
        })
        .detach();
        Rc::new(OneQueue { tx, backlog })
    }
}

/// The one answer to a request. Dropped unanswered, it answers `internal-server-error`.
pub struct Reply {
    ctx: ModuleCtx,
    id: String,
    /// The JID the answer comes from (the request's `to`).
    replier: Arc<str>,
    /// The requester.
    requester: String,
    payload: Option<Element>,
    ns: String,
    answered: Cell<bool>,
    /// A module's handler took the request: its namespace is counted for the metrics (only those of
    /// registered handlers, so a client cannot grow the table with made-up namespaces).
    handled: bool,
}

impl Reply {
    pub fn send(self, result: IqResult) {
        self.answered.set(true);
        if self.handled {
            crate::metrics::with(|m| m.iq(&self.ns, result.is_err()));
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"<iq xmlns='jabber:client' from='");
        out.extend_from_slice(escape(&self.replier).as_bytes());
        out.extend_from_slice(b"' to='");
        out.extend_from_slice(escape(&self.requester).as_bytes());
        out.extend_from_slice(b"' id='");
        out.extend_from_slice(escape(&self.id).as_bytes());
        if let Err(e) = &result
            && e.condition == StanzaErrorCondition::InternalServerError
        {
            log::warn!(
                "IQ {} ({}) from {}: internal-server-error",
                self.id,
                self.ns,
                self.requester
            );
        }
        put_answer(&mut out, result, self.payload.as_ref());
        match parse_element(&out, &Limits::default()) {
            Ok(stanza) => self.ctx.route(stanza, self.replier.clone()),
            Err(e) => log::error!(
                "an IQ answer did not parse ({e}): {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Appends the rest of an IQ answer to its opening tag's attributes (the last one still open, `'…`):
/// `type`, then the result's payload or the error (after the request's payload when the error echoes
/// it), and the closing tag. The one writer of IQ answers, for handlers and pre-authentication requests.
pub fn put_answer(out: &mut Vec<u8>, result: IqResult, request_payload: Option<&Element>) {
    match result {
        Ok(None) => out.extend_from_slice(b"' type='result'/>"),
        Ok(Some(el)) => {
            out.extend_from_slice(b"' type='result'>");
            el.write_to(out);
            out.extend_from_slice(b"</iq>");
        }
        Err(e) => {
            out.extend_from_slice(b"' type='error'>");
            if e.echo_payload
                && let Some(p) = request_payload
            {
                p.write_to(out);
            }
            write_error_element(out, e.condition, e.text.as_deref());
            out.extend_from_slice(b"</iq>");
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.answered.get() {
            let unanswered = Reply {
                ctx: self.ctx.clone(),
                id: std::mem::take(&mut self.id),
                replier: self.replier.clone(),
                requester: std::mem::take(&mut self.requester),
                payload: None,
                ns: std::mem::take(&mut self.ns),
                answered: Cell::new(false),
                handled: self.handled,
            };
            unanswered.send(Err(IqError::new(StanzaErrorCondition::InternalServerError)));
        }
    }
}

/// Runs a handler to completion with panics caught: a panic becomes `internal-server-error`.
async fn run_guarded(handler: &IqHandler, iq: Iq) -> IqResult {
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(iq))) {
        Ok(f) => f,
        Err(_) => return Err(panicked()),
    };
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(panicked()))
}

fn panicked() -> IqError {
    log::error!("an IQ handler panicked; answered internal-server-error");
    IqError::new(StanzaErrorCondition::InternalServerError)
}

/// The namespace of an element: its own default or prefixed declaration.
pub fn namespace_of(el: &Element) -> Option<&str> {
    match el.name.split_once(':') {
        Some((prefix, _)) => el
            .attrs
            .iter()
            .find(|(n, _)| n.strip_prefix("xmlns:") == Some(prefix))
            .map(|(_, v)| v.as_str()),
        None => el.attr("xmlns"),
    }
}

/// Dispatches an IQ get or set for `component` on `host`. `from` is the requester, `to` the JID the
/// answer comes from.
pub fn dispatch(
    ctx: &ModuleCtx,
    component: Component,
    host: &str,
    stanza: &Stanza,
    from: &str,
    to: &str,
) {
    let type_ = match stanza.type_().as_deref() {
        Some("get") => IqType::Get,
        Some("set") => IqType::Set,
        _ => return,
    };
    let el = stanza.to_element();
    let mut children = el.child_elements();
    let payload = children.next().cloned();
    let extra = children.next().is_some();
    let (Ok(from_jid), Ok(to_jid)) = (Jid::parse(from), Jid::parse(to)) else {
        log::debug!("IQ with unusable addresses from {from} to {to} dropped");
        return;
    };
    let ns = payload
        .as_ref()
        .and_then(namespace_of)
        .unwrap_or_default()
        .to_string();
    let mut reply = Reply {
        ctx: ctx.clone(),
        id: stanza.id().map(|i| i.into_owned()).unwrap_or_default(),
        replier: to.into(),
        requester: from.to_string(),
        payload: payload.clone(),
        ns: ns.clone(),
        answered: Cell::new(false),
        handled: false,
    };
    // RFC 6120 §8.2.3: a get or set carries exactly one payload element.
    let Some(payload) = payload.filter(|_| !extra) else {
        reply.send(Err(IqError::bad_request(
            "an IQ get or set carries exactly one child element",
        )));
        return;
    };
    let found = ctx.modules().borrow().iq_handler(component, host, &ns);
    let Some((disc, handler, queue)) = found else {
        reply.send(Err(IqError::new(StanzaErrorCondition::ServiceUnavailable)));
        return;
    };
    reply.handled = true;
    let iq = Iq {
        id: reply.id.clone(),
        type_,
        from: from_jid,
        to: to_jid,
        host: host.to_string(),
        lang: stanza.lang().map(|l| l.into_owned()),
        payload,
        ctx: ctx.clone(),
    };
    match disc {
        IqDisc::NoQueue => {
            let fut = std::panic::catch_unwind(AssertUnwindSafe(|| handler(iq)));
            let mut fut = match fut {
                Ok(f) => f,
                Err(_) => return reply.send(Err(panicked())),
            };
            let mut cx = Context::from_waker(Waker::noop());
            match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
                Ok(Poll::Ready(result)) => reply.send(result),
                Err(_) => reply.send(Err(panicked())),
                Ok(Poll::Pending) => {
                    // Spawning polls it again at once, with a waker that works.
                    glommio::spawn_local(async move {
                        let result = AssertUnwindSafe(fut)
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| Err(panicked()));
                        reply.send(result);
                    })
                    .detach();
                }
            }
        }
        IqDisc::OneQueue => {
            let Some(queue) = queue else {
                return reply.send(Err(IqError::new(StanzaErrorCondition::InternalServerError)));
            };
            match queue.tx.try_send((iq, reply)) {
                Ok(()) => queue.backlog.set(queue.backlog.get() + 1),
                Err(e) => {
                    let (_, reply) = match e {
                        glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(item)) => {
                            item
                        }
                        glommio::GlommioError::Closed(glommio::ResourceType::Channel(item)) => item,
                        other => {
                            log::error!("one_queue send failed: {other}");
                            return;
                        }
                    };
                    reply.send(Err(IqError::new(StanzaErrorCondition::ResourceConstraint)));
                }
            }
        }
        IqDisc::Parallel => {
            glommio::spawn_local(async move {
                let result = run_guarded(&handler, iq).await;
                reply.send(result);
            })
            .detach();
        }
    }
}

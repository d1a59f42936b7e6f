//! The client session glue (ejabberd_c2s): one per client connection, on top of the stream driver. It
//! feeds the driver's events to the [`C2s`] state machine and carries out its actions: credentials are
//! looked up on the store's worker threads (or asked of the extauth program) while reading waits; after
//! SASL success the connection moves to the account's home shard; the session is bound and unbound with
//! the session manager; established stanzas go to the router; pre-authentication registration goes to
//! `mod_register`. The driver owns the socket; this file owns what the stream means.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use glommio::net::TcpStream;

use crate::mesh::{MovedConnection, Overflow, ShardMsg};
use crate::metrics::ConnKind;
use crate::modules::hooks::{self, CLIENT_STATE, ClientState};
use crate::net::driver::{self, Control, DriverEnv, Ending, Io, StreamGlue, Transport};
use crate::proto::c2s::{Action, C2s};
use crate::proto::errors::{Closing, StreamErrorCondition};
use crate::proto::jid::domain_of;
use crate::proto::sasl::{ChannelBindings, Credentials, Hash, Mechanism, PlainVerdict};
use crate::proto::xml::{Event, TargetStream, XmlError};
use crate::router::{self, Origin};
use crate::shard::Shard;
use crate::sink::{Sink, SinkId};
use crate::sm::session::{self, SessionRef};

/// Results of work done by other tasks for a connection.
enum Input {
    Credentials(Option<Credentials>),
    PlainChecked(bool),
    /// PLAIN verified, and the account's missing hash was made from the password: `Ok` with the
    /// hash's mechanism when stored, `Err` with why not. Logged; the login succeeds either way.
    PlainUpgraded {
        jid: String,
        outcome: Result<&'static str, String>,
    },
    /// Neither the store nor the extauth program could answer (down, timed out).
    Unavailable,
}

/// Serves a newly accepted client connection on `shard`.
pub fn accept(shard: Rc<Shard>, stream: TcpStream, direct_tls: bool) {
    crate::metrics::with(|m| m.accepted(ConnKind::C2s));
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let tls = direct_tls.then(|| {
        Box::new(
            rustls::ServerConnection::new(shard.server().direct.clone())
                .expect("valid TLS configuration"),
        )
    });
    let now = Instant::now();
    let c2s = C2s::new(
        shard.server().settings.clone(),
        direct_tls,
        ChannelBindings::default(),
        now,
        Box::new(random),
    );
    let deadline = Some(now + shard.server().settings.auth_timeout);
    let transport = Transport {
        stream: Io::Tcp(stream),
        peer,
        tls,
        tls_up: false,
        unparsed: BytesMut::new(),
    };
    start(shard, c2s, transport, deadline);
}

/// Takes over a client connection that moved here from another shard.
pub fn adopt(shard: Rc<Shard>, moved: MovedConnection) {
    // SAFETY: the descriptor was duplicated for this transfer and is owned by `moved.fd` alone.
    let stream = unsafe { TcpStream::from_raw_fd(moved.fd.into_raw_fd()) };
    let transport = Transport {
        stream: Io::Tcp(stream),
        peer: moved.peer,
        tls_up: moved.tls.is_some(),
        tls: moved.tls,
        unparsed: moved.unparsed,
    };
    start(shard, moved.c2s, transport, None);
}

/// Takes over a client stream tunnelled from another host: the session lives here, the socket there.
pub fn adopt_from_edge(shard: Rc<Shard>, edge: crate::cluster::tunnel::FromEdge) {
    let c2s = C2s::authenticated_elsewhere(
        shard.server().settings.clone(),
        edge.host,
        edge.user,
        &edge.mechanism,
        edge.secure,
        Instant::now(),
        Box::new(random),
    );
    let transport = Transport {
        stream: Io::Pipe(Box::new(edge.pipe)),
        peer: edge.peer,
        tls: None,
        tls_up: false,
        unparsed: edge.unparsed,
    };
    start(shard, c2s, transport, None);
}

fn start(shard: Rc<Shard>, c2s: C2s, transport: Transport, auth_deadline: Option<Instant>) {
    let sink = Rc::new(Sink::new(
        shard.config().limits.max_output_queue_bytes,
        TargetStream::CLIENT,
    ));
    let id = shard.sinks().borrow_mut().insert(sink.clone());
    // Up here and down in `finish` on the same shard: a connection that moves home counts on each
    // shard while it is there.
    crate::metrics::with(|m| m.opened(ConnKind::C2s));
    let env = DriverEnv {
        limits: shard.server().limits,
        starttls: shard.server().starttls.clone(),
        read_buf: shard.read_buf().clone(),
    };
    let glue = C2sGlue {
        peer: transport.peer,
        shard,
        id,
        c2s,
        inputs: Rc::new(RefCell::new(VecDeque::new())),
        session: None,
        auth_deadline,
        closing: None,
        killed: false,
        bound_at: None,
    };
    driver::spawn(glue, sink, transport, env);
}

fn random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the OS random source works");
}

struct C2sGlue {
    shard: Rc<Shard>,
    id: SinkId,
    peer: SocketAddr,
    c2s: C2s,
    /// Filled by lookup tasks; they wake the connection through its sink.
    inputs: Rc<RefCell<VecDeque<Input>>>,
    session: Option<SessionRef>,
    auth_deadline: Option<Instant>,
    /// Why the machine closed the stream, once it did: the reason of the logout or refusal line.
    closing: Option<Closing>,
    /// The shard ended the stream (`kill`: replaced, shutdown, a full output queue), not the client.
    killed: bool,
    /// When the session was bound, for the logout line's duration.
    bound_at: Option<Instant>,
}

impl C2sGlue {
    fn do_actions(&mut self, ctl: &mut Control) -> bool {
        let mut any = false;
        while let Some(action) = self.c2s.poll_action() {
            any = true;
            match action {
                Action::Send(bytes) => ctl.sink().send_own(bytes),
                Action::StartTls => ctl.start_tls(),
                Action::ResetParser => ctl.reset_parser(),
                Action::LookupCredentials {
                    host,
                    username,
                    plain_password,
                } => {
                    ctl.hold_reading(true);
                    self.lookup(ctl.sink().clone(), host, username, plain_password);
                }
                Action::Authentication {
                    mechanism,
                    username,
                    outcome: Err(condition),
                } => {
                    crate::metrics::with(|m| m.login(mechanism, false));
                    log::info!(
                        event = "refused", reason = "sasl", mechanism = mechanism,
                        condition = condition, username = username.as_deref(), peer:% = self.peer;
                        "authentication failed"
                    )
                }
                // The login line waits for the bind, on the home shard, where the full JID is known.
                Action::Authentication {
                    mechanism,
                    outcome: Ok(()),
                    ..
                } => crate::metrics::with(|m| m.login(mechanism, true)),
                Action::Authenticated(jid) => {
                    self.auth_deadline = None;
                    let home = self.shard.home(jid.bare_str());
                    // Another shard of this host, or a shard of another host of the cluster (the
                    // connection then stays here and its stream is tunnelled to the home).
                    if home != self.shard.local(self.shard.id()) {
                        ctl.move_to(home.shard());
                    }
                }
                Action::Bind { resource, iq } => {
                    let user = self.c2s.user().expect("bound after SASL").clone();
                    match session::bind(&self.shard, &user, resource, self.id) {
                        Ok((full, s)) => {
                            log::info!(
                                event = "login", jid = full.as_str(),
                                mechanism = self.c2s.mechanism(), tls = self.c2s.is_secure(),
                                peer:% = self.peer;
                                "session started"
                            );
                            self.c2s.bound(&iq, Ok(full));
                            self.session = Some(s);
                            self.bound_at = Some(Instant::now());
                        }
                        Err(e) => self.c2s.bound(&iq, Err(e)),
                    }
                }
                Action::Route(stanza) => {
                    if let Some(s) = &self.session {
                        router::route(&self.shard, Origin::Session(s), stanza, s.full.clone());
                    }
                }
                Action::ClientState { active } => {
                    // A bound session is on its account's home shard (the connection moved there
                    // after SASL), where the hook's handlers keep the session's state. A session
                    // replaced by a newer one with its full JID (ending with `conflict`) no longer
                    // speaks for that JID.
                    if let Some(s) = &self.session
                        && self.shard.has_hook(&CLIENT_STATE)
                        && self
                            .shard
                            .sessions()
                            .borrow()
                            .sessions(&s.bare)
                            .iter()
                            .any(|x| x.sink == s.sink)
                    {
                        let mut event = ClientState {
                            account: s.bare.clone(),
                            full: s.full.clone(),
                            active,
                        };
                        let host = domain_of(&s.bare);
                        hooks::run(&self.shard.ctx(), &CLIENT_STATE, host, &mut event);
                    }
                }
                Action::Register { host, iq } => {
                    let ctx = self.shard.ctx();
                    let sink = ctl.sink().clone();
                    let peer = self.peer;
                    glommio::spawn_local(async move {
                        let answer =
                            crate::modules::register::preauth(&ctx, &host, peer, &iq).await;
                        sink.send_bytes(&answer);
                    })
                    .detach();
                }
                Action::Close(why) => {
                    ctl.close();
                    self.closing.get_or_insert(why);
                    if self.c2s.user().is_none() && !self.killed {
                        self.log_refusal(why);
                    }
                }
            }
        }
        any
    }

    /// The `refused` line of a stream that ends before authentication, when the server ended it for a
    /// cause (a client that just leaves was not refused).
    fn log_refusal(&self, why: Closing) {
        let peer = self.peer;
        match why {
            Closing::ByPeer => {}
            Closing::AuthTimeout => log::info!(
                event = "refused", reason = "auth-timeout", peer:% = peer;
                "no authentication in time"
            ),
            Closing::TooManyAuthFailures => log::info!(
                event = "refused", reason = "too-many-auth-failures", peer:% = peer;
                "stream closed after repeated authentication failures"
            ),
            Closing::TlsRefused => log::info!(
                event = "refused", reason = "starttls", peer:% = peer;
                "STARTTLS refused"
            ),
            Closing::StreamError(c) => log::info!(
                event = "refused", reason = "stream-error", condition = c.as_str(),
                peer:% = peer;
                "stream refused before authentication"
            ),
        }
    }

    /// The `logout` line: who, from where, how long, and why the session ended as far as this
    /// connection can tell.
    fn log_logout(&self, s: &SessionRef) {
        let (reason, condition) = match self.closing {
            None => ("dropped", None),
            Some(Closing::ByPeer) => ("closed", None),
            Some(Closing::StreamError(StreamErrorCondition::Conflict)) if self.killed => {
                ("replaced", None)
            }
            Some(Closing::StreamError(StreamErrorCondition::SystemShutdown)) if self.killed => {
                ("shutdown", None)
            }
            Some(why) if self.killed => ("killed", why.condition()),
            Some(why) => ("stream-error", why.condition()),
        };
        let duration_ms = self.bound_at.map_or(0, |t| t.elapsed().as_millis() as u64);
        log::info!(
            event = "logout", jid = &*s.full, reason = reason,
            condition = condition.map(|c| c.as_str()), duration_ms = duration_ms,
            peer:% = self.peer;
            "session ended"
        );
    }

    /// Looks up credentials (and, for PLAIN, checks the password) off the reactor; the result comes back
    /// as an input.
    fn lookup(
        &self,
        sink: Rc<Sink>,
        host: String,
        username: String,
        plain_password: Option<String>,
    ) {
        let inputs = self.inputs.clone();
        let give = move |input: Input| {
            inputs.borrow_mut().push_back(input);
            sink.wake();
        };
        if let Some(extauth) = self.shard.server().extauth.clone() {
            // Only PLAIN is offered with external authentication.
            glommio::spawn_local(async move {
                let ok = match plain_password {
                    Some(p) => extauth.auth(&username, &host, &p).await,
                    None => Ok(false),
                };
                give(ok.map(Input::PlainChecked).unwrap_or_else(|e| {
                    log::warn!("{e}");
                    Input::Unavailable
                }));
            })
            .detach();
            return;
        }
        let store = self.shard.server().store.clone();
        glommio::spawn_local(async move {
            // The lookup, and for PLAIN the PBKDF2 check and any key upgrade, run on a store worker
            // thread. The upgrade is done before the answer so that the client's next login, which
            // may pick the upgraded mechanism at once, finds the keys.
            let result = store
                .run(move |db| {
                    let found = db.credentials(&host, &username)?;
                    let (Some(p), Some(found)) = (plain_password.as_deref(), &found) else {
                        return Ok(match plain_password {
                            Some(_) => Input::PlainChecked(false),
                            None => Input::Credentials(found),
                        });
                    };
                    Ok(match found.verify_plain(p) {
                        PlainVerdict::Wrong => Input::PlainChecked(false),
                        PlainVerdict::Right { completed: None } => Input::PlainChecked(true),
                        PlainVerdict::Right {
                            completed: Some(full),
                        } => {
                            let name = match found.missing_hash() {
                                Some(Hash::Sha1) => Mechanism::ScramSha1,
                                _ => Mechanism::ScramSha256,
                            }
                            .name();
                            let outcome =
                                match db.replace_credentials(&host, &username, found, &full) {
                                    Ok(true) => Ok(name),
                                    Ok(false) => Err("the credentials changed meanwhile".into()),
                                    Err(e) => Err(e.to_string()),
                                };
                            Input::PlainUpgraded {
                                jid: format!("{username}@{host}"),
                                outcome,
                            }
                        }
                    })
                })
                .await;
            give(result.unwrap_or_else(|e| {
                log::error!("credentials lookup failed: {e}");
                Input::Unavailable
            }));
        })
        .detach();
    }
}

impl StreamGlue for C2sGlue {
    fn event(&mut self, event: Event, ctl: &mut Control) {
        self.c2s.handle_event(event);
        self.do_actions(ctl);
    }

    fn parse_error(&mut self, error: XmlError, ctl: &mut Control) {
        self.c2s.handle_parse_error(error);
        self.do_actions(ctl);
    }

    fn poll(&mut self, ctl: &mut Control) -> bool {
        let mut progress = false;
        loop {
            let input = self.inputs.borrow_mut().pop_front();
            let Some(input) = input else { break };
            progress = true;
            ctl.hold_reading(false);
            match input {
                Input::Credentials(c) => self.c2s.credentials(c.as_ref()),
                Input::PlainChecked(ok) => self.c2s.plain_checked(ok),
                Input::PlainUpgraded { jid, outcome } => {
                    match outcome {
                        // No `peer`, so the per-address rate limit never holds it back: it comes
                        // once per account after a verified password, and operators count these
                        // lines to follow a migration.
                        Ok(mechanism) => log::info!(
                            event = "keys-upgraded", jid = jid.as_str(), mechanism = mechanism;
                            "keys of the missing hash made from the PLAIN password"
                        ),
                        Err(e) => log::warn!(
                            event = "keys-upgrade-failed", jid = jid.as_str(),
                            error = e.as_str(), peer:% = self.peer;
                            "the keys of the missing hash were not stored"
                        ),
                    }
                    self.c2s.plain_checked(true)
                }
                Input::Unavailable => self.c2s.credentials_unavailable(),
            }
        }
        progress | self.do_actions(ctl)
    }

    fn kill(&mut self, condition: StreamErrorCondition, text: Option<&str>, ctl: &mut Control) {
        if !self.c2s.is_closed() {
            self.killed = true;
        }
        self.c2s.stream_error(condition, text);
        self.do_actions(ctl);
    }

    fn tls_established(&mut self, tls: &rustls::ServerConnection, ctl: &mut Control) {
        let bindings = self.shard.server().certs.bindings(tls);
        self.c2s.tls_established(bindings);
        self.do_actions(ctl);
    }

    fn deadline(&self) -> Option<Instant> {
        self.auth_deadline.filter(|_| self.c2s.user().is_none())
    }

    fn timeout(&mut self, now: Instant, ctl: &mut Control) {
        self.auth_deadline = None;
        self.c2s.tick(now);
        self.do_actions(ctl);
    }

    fn backpressured(&self) -> bool {
        self.shard.backpressured()
    }

    fn release_idle(&mut self) {
        self.c2s.release_idle();
    }

    fn finish(mut self, ending: Ending) {
        self.shard.sinks().borrow_mut().remove(self.id);
        crate::metrics::with(|m| m.closed(ConnKind::C2s));
        if let Some(s) = self.session.take() {
            self.log_logout(&s);
            session::unbind(&self.shard, &s);
        }
        if let Ending::Moving { shard, detached } = ending {
            let home = self
                .c2s
                .user()
                .map(|u| self.shard.home(u.bare_str()))
                .unwrap_or_else(|| self.shard.local(shard));
            if home.host != self.shard.host_index() {
                let who = crate::cluster::tunnel::Authenticated {
                    user: self.c2s.user().map(|u| u.to_string()).unwrap_or_default(),
                    host: self.c2s.host().to_string(),
                    secure: self.c2s.is_secure(),
                    mechanism: self.c2s.mechanism().unwrap_or_default().to_string(),
                };
                crate::cluster::tunnel::relay(self.shard.clone(), home, detached, who);
                return;
            }
            let moved = MovedConnection {
                fd: detached.fd,
                peer: detached.peer,
                tls: detached.tls,
                c2s: self.c2s,
                unparsed: detached.unparsed,
            };
            let home = self.shard.local(shard);
            // A moving connection always waits (its number is bounded by the connection cap).
            let _ = self
                .shard
                .send_home(home, ShardMsg::Adopt(Box::new(moved)), Overflow::Spill);
        }
    }
}

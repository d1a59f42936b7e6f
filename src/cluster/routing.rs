//! One shard's part of the cluster (docs/cluster-protocol.md §3, §7, §9): its links to the other hosts
//! ([`ShardCluster`]: one outbound link per peer host, to shard `this shard mod S_peer` there), the
//! view it serves under, and the three ways frames meet the shard's state — [`send_remote`], the
//! cluster branch of `Shard::send_home` (a stanza for a home on another host becomes a `STANZA`, a
//! multicast a `FANOUT`, each carrying the stanza's bytes, never a re-serialised tree); [`on_frame`]
//! and [`handle_frame`], which hand what a link received to the shard it names; and [`tick`], which
//! applies each new view the membership agent publishes: the placement, the links that end (their
//! unacknowledged stanzas re-routed under the new epoch), the sessions whose home moved away (ended,
//! so that their clients reconnect to the new home), and the connections tunnelled to or from a host
//! that left. Client connections whose session lives on another host are in [`super::tunnel`].

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::node::AppliedView;
use super::state::ShardCluster;
use super::transport::{OutboundLink, serve_inbound};
use super::tunnel;
use crate::mesh::{Overflow, RemotePresence, ShardMsg};
use crate::placement::Home;
use crate::proto::cluster::handshake::Peer;
use crate::proto::cluster::wire::{
    FanoutGroup, Frame, Member, StanzaFrame, StanzaKind as WireKind, Target,
};
use crate::proto::errors::StreamErrorCondition;
use crate::proto::jid::bare_of;
use crate::proto::xml::{Stanza, StanzaKind, TargetStream, parse_element, parse_trusted};
use crate::shard::Shard;

/// The wire's name for a stanza's element (§7.1).
fn wire_kind(kind: StanzaKind) -> WireKind {
    match kind {
        StanzaKind::Message => WireKind::Message,
        StanzaKind::Presence => WireKind::Presence,
        StanzaKind::Iq => WireKind::Iq,
        StanzaKind::Other => WireKind::Other,
    }
}

/// The stanza's bytes as they travel: the element as read, with the namespaces it inherits from its
/// stream declared on it so that it stands alone; its attributes are not rewritten (`from` travels in
/// the frame and is stamped on delivery, as on the mesh).
fn standalone(stanza: &Stanza) -> Bytes {
    let mut xml = BytesMut::with_capacity(stanza.as_bytes().len() + 48);
    stanza.write_to(&mut xml, &TargetStream::STANDALONE, None, None);
    xml.freeze()
}

/// The cluster branch of `Shard::send_home` ([`crate::shard::Wiring::remote`]): `msg` for a home on
/// another host becomes a frame on this shard's link to that host. A full link applies `policy`:
/// [`Overflow::Bounce`] hands the message back (its sender is answered with `resource-constraint`),
/// [`Overflow::Spill`] drops it with an error logged, since a link's bound (§3.8) is what
/// keeps one slow host from taking this one's memory.
#[allow(clippy::result_large_err)]
pub fn send_remote(
    shard: &Rc<Shard>,
    home: Home,
    msg: ShardMsg,
    policy: Overflow,
) -> Result<(), ShardMsg> {
    let Some(cluster) = shard.cluster() else {
        log::error!(
            "a message for host {} on a host without a cluster",
            home.host
        );
        return Err(msg);
    };
    let Some((link, epoch)) = cluster.link_to_host(shard.id(), home.host) else {
        // No such member (this host is out of the cluster, or the view changed under the caller).
        return Err(msg);
    };
    let frame = match &msg {
        // A stanza for an account goes to its home; one for a component to the host it is on.
        ShardMsg::Deliver { stanza, from } | ShardMsg::ToComponent { stanza, from, .. } => {
            let Some(to) = stanza.to() else {
                return Err(msg);
            };
            let target = match &msg {
                ShardMsg::Deliver { .. } => Target::Home,
                _ => Target::Host,
            };
            Frame::Stanza(StanzaFrame {
                to_shard: home.shard as u16,
                epoch,
                target,
                from: from.to_string(),
                to: to.into_owned(),
                kind: wire_kind(stanza.kind()),
                xml: standalone(stanza),
            })
        }
        ShardMsg::Multicast { stanza, from, to } => Frame::Fanout {
            epoch,
            from: from.to_string(),
            xml: standalone(stanza),
            groups: vec![FanoutGroup {
                to_shard: home.shard as u16,
                recipients: to.iter().map(|t| t.to_string()).collect(),
            }],
        },
        _ => {
            // Module jobs and moving sockets are this host's own business; a job for a home elsewhere
            // needs the REQUEST frames of §10, which are not built.
            log::error!(
                "cluster: a shard job for an account homed on host {} cannot cross hosts yet",
                home.host
            );
            return Err(msg);
        }
    };
    match link.send(&frame) {
        Ok(()) => Ok(()),
        Err(_full) => match policy {
            Overflow::Bounce => Err(msg),
            Overflow::Spill => {
                log::error!(
                    "cluster: the link to host {} is full ({} frames); a server stanza is dropped",
                    home.host,
                    cluster.shared.link_queue
                );
                Ok(())
            }
        },
    }
}

/// A data frame a link of this shard received: handled here when it is for this shard, otherwise
/// handed to its shard over the mesh (in order: one link's frames go through one mesh channel).
pub fn on_frame(shard: &Rc<Shard>, peer: &Peer, frame: Frame) {
    let to_shard = match frame {
        // Routed from here: the home's shard is one mesh hop away whichever shard it is.
        Frame::Stanza(f) => return stanza(shard, peer, f),
        Frame::Request { id, verb, body } => {
            return super::requests::serve(shard, peer, id, verb, body);
        }
        frame @ Frame::Response { .. } => return super::requests::answered(shard, frame),
        Frame::Fanout { .. } => return fanout(shard, peer, frame),
        _ => match &frame {
            Frame::ConnOpen(c) => c.to_shard,
            Frame::ConnBound { to_shard, .. } | Frame::SessionLost { to_shard, .. } => *to_shard,
            Frame::ConnData { to_shard, .. } | Frame::ConnClose { to_shard, .. } => *to_shard,
            Frame::Route {
                domain,
                shard: at,
                up,
            } => {
                // Every shard's route table follows, naming the host the link comes from.
                let route = (*up).then(|| {
                    (
                        Arc::<str>::from(peer.node.as_str()),
                        peer.incarnation,
                        usize::from(*at),
                    )
                });
                shard
                    .routes()
                    .borrow_mut()
                    .set_remote_component(domain, route.clone());
                shard.broadcast(|| ShardMsg::RemoteRoute {
                    domain: domain.as_str().into(),
                    route: route.clone(),
                });
                return;
            }
            // Advice (§6.4, §6.5): the table decides; the agent reads it now rather than at its
            // next renewal.
            Frame::Members { epoch, .. } => {
                if let Some(cluster) = shard.cluster()
                    && *epoch > cluster.view().epoch
                {
                    cluster.shared.poke();
                }
                return;
            }
            Frame::Leaving { .. } => {
                if let Some(cluster) = shard.cluster() {
                    cluster.shared.poke();
                }
                return;
            }
            _ => return,
        },
    };
    let to = usize::from(to_shard);
    if to >= shard.shards() {
        log::warn!(
            "cluster: a frame for shard {to} of a host with {}",
            shard.shards()
        );
        return;
    }
    if to == shard.id() {
        handle_frame(shard, frame);
    } else {
        let _ = shard.send_home(
            shard.local(to),
            ShardMsg::Cluster(Box::new(frame)),
            Overflow::Spill,
        );
    }
}

/// How a stanza from `peer` goes to the accounts of one shard: to its own `to`, or to `multicast`'s
/// recipients when given. An available or unavailable presence goes as a `RemotePresence`, which
/// the receiving shard notes in its ledger (§9.2); anything else as any mesh delivery.
fn for_accounts(
    stanza: Stanza,
    from: Arc<str>,
    multicast: Option<Vec<Arc<str>>>,
    peer: &Peer,
) -> ShardMsg {
    let available = match stanza.kind() {
        StanzaKind::Presence => match stanza.type_().as_deref() {
            None => Some(true),
            Some("unavailable") => Some(false),
            Some(_) => None,
        },
        _ => None,
    };
    match (available, multicast) {
        (Some(available), multicast) => ShardMsg::RemotePresence(Box::new(RemotePresence {
            stanza,
            from,
            multicast: multicast.unwrap_or_default(),
            node: peer.node.as_str().into(),
            incarnation: peer.incarnation,
            available,
        })),
        (None, Some(to)) => ShardMsg::Multicast { stanza, from, to },
        (None, None) => ShardMsg::Deliver { stanza, from },
    }
}

/// One presence to many: each group goes to its shard as one multicast.
fn fanout(shard: &Rc<Shard>, peer: &Peer, frame: Frame) {
    let Frame::Fanout {
        from, xml, groups, ..
    } = frame
    else {
        return;
    };
    let Some(stanza) = parse(shard, &xml) else {
        return;
    };
    let from: Arc<str> = from.into();
    for g in groups {
        let to = usize::from(g.to_shard);
        if to >= shard.shards() {
            continue;
        }
        let recipients = g.recipients.into_iter().map(Arc::from).collect();
        let msg = for_accounts(stanza.clone(), from.clone(), Some(recipients), peer);
        let _ = shard.send_home(shard.local(to), msg, Overflow::Spill);
    }
}

/// A stanza another host sent: only its root tag is read, and its bytes are shared, not copied
/// (§7.1); the sending host's parser checked the rest.
fn parse(shard: &Shard, xml: &Bytes) -> Option<Stanza> {
    match parse_trusted(xml.clone(), &shard.server().limits) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("cluster: a stanza from another host does not parse ({e}); dropped");
            None
        }
    }
}

/// A frame for this shard (from a link here, or from the shard whose link received it).
pub fn handle_frame(shard: &Rc<Shard>, frame: Frame) {
    match frame {
        Frame::Route { .. } => {
            // Installed by the shard whose link received it (it knows the sending host).
            log::debug!("cluster: a ROUTE frame handed between shards is ignored");
        }
        Frame::ConnOpen(c) => {
            if let Some(edge) = tunnel::open_at_home(shard, c) {
                crate::c2s::adopt_from_edge(shard.clone(), edge);
            }
        }
        Frame::ConnData {
            direction,
            location,
            data,
            ..
        } => tunnel::data(shard, direction, &location, data),
        Frame::ConnClose {
            direction,
            location,
            end,
            ..
        } => tunnel::closed(shard, direction, &location, end),
        Frame::ConnBound { location, full, .. } => tunnel::bound_at_edge(shard, &location, full),
        Frame::SessionLost { full, .. } => crate::sm::session::lost_elsewhere(shard, &full),
        frame @ Frame::Response { .. } => super::requests::answered(shard, frame),
        other => log::debug!("cluster: frame 0x{:02x} ignored", other.kind()),
    }
}

/// A `STANZA` a link of this shard received (§7.1), routed from here to its home's shard. One for a
/// home this host does not hold under its own view is re-routed once when the sender routed it under
/// an older epoch; otherwise (this host lags, and will hold the account once it applies the sender's
/// epoch) it is delivered on the shard the sender named.
fn stanza(shard: &Rc<Shard>, peer: &Peer, f: StanzaFrame) {
    let Some(stanza) = parse(shard, &f.xml) else {
        return;
    };
    let from: Arc<str> = f.from.into();
    match f.target {
        Target::Home => {
            let home = shard.home(bare_of(&f.to));
            let epoch = shard.cluster().map_or(0, |c| c.view().epoch);
            if home.host == shard.host_index() || epoch <= f.epoch {
                let here = if home.host == shard.host_index() {
                    home
                } else if usize::from(f.to_shard) < shard.shards() {
                    shard.local(usize::from(f.to_shard))
                } else {
                    shard.local(shard.id())
                };
                let _ = shard.send_home(
                    here,
                    for_accounts(stanza, from, None, peer),
                    Overflow::Spill,
                );
            } else if let Err(ShardMsg::Deliver { stanza, from }) = send_remote(
                shard,
                home,
                ShardMsg::Deliver { stanza, from },
                Overflow::Spill,
            ) {
                crate::sm::session::deliver_local(shard, stanza, from);
            }
        }
        Target::Host => shard.route(stanza, from),
        Target::Session(_) => {
            log::debug!("cluster: a STANZA for a session location is not used by this version")
        }
    }
}

/// A presence from a session homed on another host, for accounts of this shard: noted in the ledger
/// (§9.2), then delivered as any stanza for them is.
pub fn remote_presence(shard: &Rc<Shard>, p: RemotePresence) {
    if let Some(cluster) = shard.cluster() {
        let addressed;
        let recipients = if p.multicast.is_empty() {
            addressed = p.stanza.to().map(|to| Arc::<str>::from(&*to));
            addressed.as_slice()
        } else {
            &p.multicast[..]
        };
        cluster.presence.borrow_mut().note(
            &p.from,
            &p.node,
            p.incarnation,
            recipients,
            p.available,
        );
    }
    if p.multicast.is_empty() {
        crate::sm::session::deliver_local(shard, p.stanza, p.from);
    } else {
        crate::sm::session::deliver_multicast(shard, &p.stanza, &p.from, &p.multicast);
    }
}

/// Tells the accounts of this shard that the sessions of hosts that left the view are gone: every
/// session lives at its home, so each one that sent them an available presence from a departed host
/// ended with it, also those nobody else is left to speak for (socket and home on the dead host).
fn owed_unavailable(shard: &Rc<Shard>, cluster: &ShardCluster, view: &AppliedView) {
    let owed = cluster
        .presence
        .borrow_mut()
        .departed(|node, incarnation| view.has(node, incarnation));
    if owed.is_empty() {
        return;
    }
    let Ok(unavailable) = parse_element(
        b"<presence xmlns='jabber:client' type='unavailable'/>",
        &shard.server().limits,
    ) else {
        return;
    };
    log::info!(
        "cluster: {} session(s) of departed hosts are announced unavailable to this shard's accounts",
        owed.len()
    );
    for (from, to) in owed {
        crate::sm::session::deliver_multicast(shard, &unavailable, &from, &to);
    }
}

/// Tells every other member that an external component connected to this shard (`up`) or left it, so
/// that their routers send its stanzas here (§7.3).
pub fn announce_component(shard: &Rc<Shard>, domain: &str, up: bool) {
    let Some(cluster) = shard.cluster() else {
        return;
    };
    let view = cluster.view();
    for (i, member) in view.members.iter().enumerate() {
        if Some(i) == view.me {
            continue;
        }
        announce_to(shard, cluster, member, domain, up);
    }
}

fn announce_to(shard: &Rc<Shard>, cluster: &ShardCluster, member: &Member, domain: &str, up: bool) {
    if let Some(link) = cluster.link_to(shard.id(), member) {
        let frame = Frame::Route {
            domain: domain.to_string(),
            shard: shard.id() as u16,
            up,
        };
        if link.send(&frame).is_err() {
            log::warn!(
                "cluster: the link to {} is full; it does not learn of component {domain}",
                member.node
            );
        }
    }
}

/// Starts accepting links on this shard (every shard listens on the cluster port; the kernel spreads
/// the connections).
pub fn listen(shard: &Rc<Shard>) -> Result<(), String> {
    let Some(cluster) = shard.cluster() else {
        return Ok(());
    };
    let addr = cluster.shared.listen;
    let listener = crate::net::listener::listen(addr, 128)
        .map_err(|e| format!("cluster.listen {addr}: {e}"))?;
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            let stream = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    if shard.closing() {
                        return;
                    }
                    log::warn!("cluster: accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if shard.closing() {
                return;
            }
            let Some(cluster) = shard.cluster() else {
                return;
            };
            let settings = cluster.settings();
            let streams = cluster.inbound.clone();
            let s = shard.clone();
            glommio::spawn_local(async move {
                let end = serve_inbound(stream, settings, streams, |peer, frame| {
                    on_frame(&s, peer, frame);
                })
                .await;
                log::debug!("cluster: an inbound link ended: {end}");
            })
            .detach();
        }
    })
    .detach();
    Ok(())
}

/// The shard's periodic cluster work (from its housekeeping loop): report its session count, apply a
/// new view, stop serving when the host is out or its lease is in doubt.
pub fn tick(shard: &Rc<Shard>) {
    let Some(cluster) = shard.cluster() else {
        return;
    };
    let shared = &cluster.shared;
    shared.set_sessions(shard.id(), shard.sessions().borrow().len() as u64);
    if shared.generation() != cluster.view().generation {
        apply(shard, cluster, shared.view());
    }
    if shard.id() == 0 {
        watch_members(shard, cluster);
    }
    let serving = cluster.view().me.is_some() && !shared.lease_in_doubt();
    if cluster.serving.get() && !serving {
        log::warn!(
            "shard {}: out of the cluster; its sessions end until it joins again",
            shard.id()
        );
        stop_serving(shard, cluster);
    }
    cluster.serving.set(serving);
}

/// Shard 0 keeps a link to every member (its ticks are the heartbeat) and reports the members whose
/// link has been down for four ticks as suspects (§9.1).
fn watch_members(shard: &Rc<Shard>, cluster: &Rc<ShardCluster>) {
    let view = cluster.view();
    let now = std::time::Instant::now();
    let silence = cluster.shared.tick * 4;
    let mut suspects = std::collections::BTreeSet::new();
    let mut reachable = std::collections::BTreeSet::new();
    let mut down = cluster.down_since.borrow_mut();
    down.retain(|node, _| view.members.iter().any(|m| &m.node == node));
    for (i, member) in view.members.iter().enumerate() {
        if Some(i) == view.me || member.node == view.identity.node {
            continue;
        }
        let up = cluster
            .link_to(shard.id(), member)
            .is_some_and(|l| l.is_up());
        if up {
            down.remove(&member.node);
            reachable.insert(member.node.clone());
        } else {
            let since = *down.entry(member.node.clone()).or_insert(now);
            if now.duration_since(since) >= silence {
                suspects.insert(member.node.clone());
            }
        }
    }
    if view.me.is_none() {
        // Out of the cluster: its reports would not count (§6.6); the links only say whether it may
        // rejoin.
        suspects.clear();
    }
    cluster.shared.set_links(suspects, reachable);
}

/// Applies a newly published view.
fn apply(shard: &Rc<Shard>, cluster: &Rc<ShardCluster>, view: Arc<AppliedView>) {
    let old = cluster.view.replace(view.clone());
    shard.set_placement(view.placement.clone(), view.me.unwrap_or(usize::MAX));
    if old.identity != view.identity {
        // A new incarnation: every stream starts again (§3.4), the ones this host receives too (a
        // sender's stream to the old incarnation is not one to this one: resuming it would claim
        // frames this incarnation never took).
        *cluster.settings.borrow_mut() = Rc::new(cluster.shared.link_settings(&view.identity));
        *cluster.inbound.borrow_mut() = Default::default();
    }
    // Links to hosts that are no longer members (or to an incarnation that is gone) end; what they
    // still held is routed again under the new view (§9.3).
    let ended: Vec<(String, Rc<OutboundLink>)> = {
        let mut links = cluster.links.borrow_mut();
        let gone: Vec<String> = links
            .iter()
            .filter(|(node, (inc, _))| old.identity != view.identity || !view.has(node, *inc))
            .map(|(node, _)| node.clone())
            .collect();
        gone.into_iter()
            .filter_map(|n| links.remove(&n).map(|(_, l)| (n, l)))
            .collect()
    };
    let mut rerouted = Vec::new();
    for (node, link) in ended {
        let frames = link.close_and_take();
        if !frames.is_empty() {
            log::info!(
                "cluster: {} frame(s) held for {node} are routed again at epoch {}",
                frames.len(),
                view.epoch
            );
        }
        rerouted.extend(frames);
    }
    for (_, (_, link)) in cluster.links.borrow().iter() {
        rerouted.extend(link.take_abandoned());
    }
    // A host that was out and came back as a new incarnation ended every session it held: the
    // presences they sent meanwhile are stale (their contacts have been told they are gone, and some
    // of them are back through another home), so only messages and IQs are routed again.
    let sessions_ended = old.identity != view.identity;
    for frame in rerouted {
        let presence = match &frame {
            Frame::Stanza(f) => f.kind == WireKind::Presence,
            Frame::Fanout { .. } => true,
            _ => false,
        };
        if sessions_ended && presence {
            continue;
        }
        reroute(shard, frame);
    }
    // Sessions whose home is now elsewhere end: their clients reconnect and bind at the new home.
    if view.me.is_some() {
        let moved: Vec<String> = shard
            .sessions()
            .borrow()
            .accounts()
            .filter(|bare| !shard.is_home(bare))
            .map(str::to_string)
            .collect();
        for bare in moved {
            end_account(shard, &bare);
        }
    }
    tunnel::view_changed(shard, cluster, &view);
    owed_unavailable(shard, cluster, &view);
    if shard.id() == 0 && view.epoch != old.epoch {
        advise(shard, cluster, &old, &view);
    }
    // Routes to components of hosts that left go; hosts that arrived learn this shard's components.
    shard
        .routes()
        .borrow_mut()
        .retain_remote(|node, incarnation| view.has(node, incarnation));
    let mine: Vec<String> = shard
        .server()
        .component_owners
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, (at, _))| *at == shard.id())
        .map(|(d, _)| d.clone())
        .collect();
    if !mine.is_empty() {
        for (i, member) in view.members.iter().enumerate() {
            if Some(i) == view.me || old.has(&member.node, member.incarnation) {
                continue;
            }
            for domain in &mine {
                announce_to(shard, cluster, member, domain, true);
            }
        }
    }
    if cluster.shared.applied(shard.id(), view.generation) {
        println!(
            "rjabberd: cluster: epoch {}: members {}",
            view.epoch,
            view.names()
        );
        log::info!(
            event = "cluster-view", epoch = view.epoch, members = view.names().as_str(),
            member = view.me.is_some();
            "cluster view applied"
        );
    }
}

/// Tells the other members, on shard 0's links, that the membership changed (§6.4, §6.5), so that
/// they read the table at once: `MEMBERS` while this host is a member, `LEAVING` when it has just
/// gone out (it left, or it was fenced).
fn advise(shard: &Rc<Shard>, cluster: &ShardCluster, old: &AppliedView, view: &AppliedView) {
    let frame = match (old.me, view.me) {
        (_, Some(_)) => Frame::Members {
            epoch: view.epoch,
            members: view.members.clone(),
        },
        (Some(_), None) => Frame::Leaving {
            node: cluster.shared.node.clone(),
            incarnation: old.identity.incarnation,
        },
        (None, None) => return,
    };
    for (i, member) in view.members.iter().enumerate() {
        if Some(i) == view.me {
            continue;
        }
        if let Some(link) = cluster.link_to(shard.id(), member) {
            let _ = link.send(&frame);
        }
    }
}

/// Ends every session of `bare` on this shard with `system-shutdown` (its home moved).
fn end_account(shard: &Rc<Shard>, bare: &str) {
    let sinks: Vec<_> = shard
        .sessions()
        .borrow()
        .sessions(bare)
        .iter()
        .map(|s| s.sink)
        .collect();
    for id in sinks {
        if let Some(sink) = shard.sink(id) {
            sink.kill_with_text(
                StreamErrorCondition::SystemShutdown,
                Some("the cluster moved this account to another host; reconnect"),
            );
        }
    }
}

/// This host is out of the cluster: every client stream ends, tunnelled ones too. The links stay: they
/// follow the views (a new incarnation ends them, §3.4), and shard 0 watches the others through them.
fn stop_serving(shard: &Rc<Shard>, cluster: &Rc<ShardCluster>) {
    for c in shard.sinks().borrow().all() {
        c.kill(StreamErrorCondition::SystemShutdown);
    }
    tunnel::end_all(shard, cluster);
}

/// A frame a link gave up on (§9.3): a stanza goes to its home under the current view — delivered,
/// kept offline, or (an IQ request to a host that vanished) answered by the session manager's rules
/// there; a tunnelled connection's frames are void (the connection ended with its host).
fn reroute(shard: &Rc<Shard>, frame: Frame) {
    match frame {
        Frame::Stanza(f) => {
            if let Some(stanza) = parse(shard, &f.xml) {
                let home = shard.home(bare_of(&f.to));
                let msg = ShardMsg::Deliver {
                    stanza,
                    from: f.from.into(),
                };
                if let Err(ShardMsg::Deliver { stanza, from }) =
                    shard.send_home(home, msg, Overflow::Spill)
                {
                    crate::sm::session::deliver_local(shard, stanza, from);
                }
            }
        }
        Frame::Fanout {
            from, xml, groups, ..
        } => {
            // Presence only: re-established by probes if it is lost, but routed again when it can be.
            if let Some(stanza) = parse(shard, &xml) {
                let recipients: Vec<Arc<str>> = groups
                    .into_iter()
                    .flat_map(|g| g.recipients)
                    .map(Arc::from)
                    .collect();
                shard.route_multicast(stanza, from.into(), &recipients);
            }
        }
        _ => {}
    }
}

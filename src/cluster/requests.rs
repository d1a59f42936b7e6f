//! Requests between hosts (docs/cluster-protocol.md §10): an operator's command on one host about an
//! account homed on another (`ctl kick`, `ctl user-sessions`) goes as a `REQUEST` on the asking shard's
//! link to that host, and its answer comes back as a `RESPONSE` on the answering shard's link to this
//! one. This file carries them and keeps, per shard, the requests waiting for an answer. What a verb
//! does is not here: the host's `RequestHandler` (the admin commands', installed at start) runs it,
//! so the cluster knows no command.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::mesh::{Overflow, ShardMsg};
use crate::proto::cluster::handshake::Peer;
use crate::proto::cluster::wire::{Frame, ResponseStatus};
use crate::shard::Shard;

/// How long the asking host waits for an answer: the answering host waits up to its own shard
/// timeout for the account's home shard, so a little longer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(6);

/// Asks host `node` to run `verb` with `body`; its answer, or why there is none.
pub async fn ask(shard: &Rc<Shard>, node: &str, verb: &str, body: Bytes) -> Result<Bytes, String> {
    let cluster = shard
        .cluster()
        .cloned()
        .ok_or_else(|| "this host is not in a cluster".to_string())?;
    let view = cluster.view();
    let member = view
        .members
        .iter()
        .find(|m| m.node == node)
        .cloned()
        .ok_or_else(|| format!("{node} is not a member of the cluster now"))?;
    let link = cluster
        .link_to(shard.id(), &member)
        .ok_or_else(|| format!("no link to {node}"))?;
    let (tx, rx) = futures_channel::oneshot::channel();
    let id = {
        let mut waiting = cluster.waiting.borrow_mut();
        waiting.next = (waiting.next + 1) & ((1 << 48) - 1);
        let id = ((shard.id() as u64) << 48) | waiting.next;
        waiting.by_id.insert(id, tx);
        id
    };
    let frame = Frame::Request {
        id,
        verb: verb.to_string(),
        body,
    };
    if link.send(&frame).is_err() {
        cluster.waiting.borrow_mut().by_id.remove(&id);
        return Err(format!("the link to {node} is full"));
    }
    let answer = glommio::timer::timeout(ANSWER_TIMEOUT, async { Ok(rx.await) }).await;
    cluster.waiting.borrow_mut().by_id.remove(&id);
    match answer {
        Ok(Ok((ResponseStatus::Ok, body))) => Ok(body),
        Ok(Ok((ResponseStatus::Error, body))) => Err(String::from_utf8_lossy(&body).into_owned()),
        Ok(Ok((ResponseStatus::UnknownVerb, _))) => Err(format!("{node} does not know `{verb}`")),
        Ok(Err(_)) => Err(format!("the request to {node} was dropped")),
        Err(_) => Err(format!(
            "{node} did not answer within {} s",
            ANSWER_TIMEOUT.as_secs()
        )),
    }
}

/// A `REQUEST` a link of this shard received from `peer`: run, and answered on this shard's link to
/// the asking host.
pub fn serve(shard: &Rc<Shard>, peer: &Peer, id: u64, verb: String, body: Bytes) {
    let Some(cluster) = shard.cluster().cloned() else {
        return;
    };
    let handler = cluster.shared.requests.get().copied();
    let (shard, node, incarnation) = (shard.clone(), peer.node.clone(), peer.incarnation);
    glommio::spawn_local(async move {
        let (status, body) = match handler {
            None => (ResponseStatus::UnknownVerb, Bytes::new()),
            Some(run) => match run(shard.ctx(), verb, body).await {
                Ok(answer) => (ResponseStatus::Ok, answer),
                Err(why) => (ResponseStatus::Error, Bytes::from(why)),
            },
        };
        // To the incarnation that asked: a restarted host never asked this.
        match cluster.link_to_node(shard.id(), &node, incarnation) {
            Some(link) => {
                if link.send(&Frame::Response { id, status, body }).is_err() {
                    log::warn!("cluster: the link to {node} is full; an answer to it is dropped");
                }
            }
            None => log::info!("cluster: {node} left before its request was answered"),
        }
    })
    .detach();
}

/// A `RESPONSE` for a request of this host: to the shard that asked (named in its id), which hands
/// it to the one waiting.
pub fn answered(shard: &Rc<Shard>, frame: Frame) {
    let Frame::Response { id, status, body } = frame else {
        return;
    };
    let to = (id >> 48) as usize;
    if to != shard.id() {
        if to < shard.shards() {
            let _ = shard.send_home(
                shard.local(to),
                ShardMsg::Cluster(Box::new(Frame::Response { id, status, body })),
                Overflow::Spill,
            );
        }
        return;
    }
    let Some(cluster) = shard.cluster() else {
        return;
    };
    if let Some(tx) = cluster.waiting.borrow_mut().by_id.remove(&id) {
        let _ = tx.send((status, body));
    }
}

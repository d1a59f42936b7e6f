//! What operators reach from outside while the server runs: the Prometheus endpoint ([`http`]) and, on
//! the same footing, the control socket ([`ctl`], its commands in [`commands`]). Both are served by shard 0 and learn about the other shards
//! the only way a shard may: a job sent to each over the mesh ([`on_every_shard`]) that reads that
//! shard's state where it lives and sends a copy back. Nothing here holds state of its own besides the
//! listening sockets.

pub mod commands;
pub mod ctl;
pub mod http;

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use glommio::net::{TcpListener, TcpStream};

use crate::metrics::{ProcessFigures, Snapshot};
use crate::modules::ctx::ModuleCtx;

/// Accepts on `listener` until the shard stops, answering each connection in a task of its own with
/// `answer`; `what` names the socket in the log. Both operator sockets are served this way.
pub(crate) async fn serve_each<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    closing: Rc<dyn Fn() -> bool>,
    answer: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                if closing() {
                    return;
                }
                log::warn!("{what}: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if closing() {
            return;
        }
        let answered = answer(stream);
        glommio::spawn_local(async move {
            if let Err(e) = answered.await {
                log::debug!("{what}: {e}");
            }
        })
        .detach();
    }
}

/// How long a shard may take to answer an operator's request before the request fails naming it.
pub const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `f` on every shard of this host (this one at once) and collects the answers in shard order.
/// A shard that does not answer within [`SHARD_ANSWER_TIMEOUT`] (stuck, or stopping) fails the whole
/// request with its number: a partial answer would read as a quieter server.
pub async fn on_every_shard<T, F>(ctx: &ModuleCtx, f: F) -> Result<Vec<T>, String>
where
    T: Send + 'static,
    F: Fn(&ModuleCtx) -> T + Send + Clone + 'static,
{
    let mut waits = Vec::with_capacity(ctx.shards());
    for shard in 0..ctx.shards() {
        let (tx, rx) = oneshot::channel();
        let f = f.clone();
        ctx.send_to(shard, move |there| {
            let _ = tx.send(f(there));
        });
        waits.push(rx);
    }
    let mut answers = Vec::with_capacity(waits.len());
    for (shard, rx) in waits.into_iter().enumerate() {
        match glommio::timer::timeout(SHARD_ANSWER_TIMEOUT, async { Ok(rx.await.map_err(|_| ())) })
            .await
        {
            Ok(Ok(answer)) => answers.push(answer),
            Ok(Err(())) => return Err(format!("shard {shard} dropped the request")),
            Err(_) => {
                return Err(format!(
                    "shard {shard} did not answer within {} s",
                    SHARD_ANSWER_TIMEOUT.as_secs()
                ));
            }
        }
    }
    Ok(answers)
}

/// Runs `f` on the home shard of `key` (a bare JID) and awaits its answer, within
/// [`SHARD_ANSWER_TIMEOUT`].
pub async fn on_home_shard<T, F>(ctx: &ModuleCtx, key: &str, f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(&ModuleCtx) -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    ctx.send_home(key, move |home| {
        let _ = tx.send(f(home));
    });
    match glommio::timer::timeout(SHARD_ANSWER_TIMEOUT, async { Ok(rx.await.map_err(|_| ())) })
        .await
    {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(())) => Err(format!("the home shard of {key} dropped the request")),
        Err(_) => Err(format!(
            "the home shard of {key} did not answer within {} s",
            SHARD_ANSWER_TIMEOUT.as_secs()
        )),
    }
}

/// Every shard's metrics, and the process's figures.
pub async fn gather_metrics(ctx: &ModuleCtx) -> Result<(Vec<Snapshot>, ProcessFigures), String> {
    let shards = on_every_shard(ctx, |c| c.snapshot()).await?;
    let process = ProcessFigures::read(
        ctx.started().elapsed().as_secs_f64(),
        ctx.store().queued(),
        ctx.shards(),
    );
    Ok((shards, process))
}

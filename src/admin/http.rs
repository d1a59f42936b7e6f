//! The Prometheus endpoint: `GET /metrics` on the `[metrics] listen` address, served by shard 0. One
//! request per connection (`Connection: close`), a request head of at most 8 KiB read within 5 s, and
//! nothing but `/metrics` (and `/` pointing at it): a scraper needs no more, and an endpoint this small
//! leaves nothing to exploit. Every scrape gathers a fresh snapshot from every shard over the mesh.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::metrics::exposition;
use crate::modules::ctx::ModuleCtx;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `listener` until the task is dropped (the shard stops).
pub async fn serve(listener: TcpListener, ctx: ModuleCtx, closing: Rc<dyn Fn() -> bool>) {
    super::serve_each(listener, "metrics endpoint", closing, move |stream| {
        let ctx = ctx.clone();
        async move { answer(stream, &ctx).await }
    })
    .await
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head_only: bool },
    Index,
    NotFound,
    BadMethod,
    Malformed,
}

/// Reads the request line of a complete head (`GET /metrics?x HTTP/1.1`).
fn parse_head(head: &[u8]) -> Request {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::Malformed;
    };
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Request::Malformed;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::BadMethod,
    };
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => Request::Metrics { head_only },
        "/" => Request::Index,
        _ => Request::NotFound,
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(head);
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= MAX_HEAD {
            return Ok(head);
        }
    }
}

async fn answer(mut stream: TcpStream, ctx: &ModuleCtx) -> std::io::Result<()> {
    let head = glommio::timer::timeout(READ_TIMEOUT, async {
        read_head(&mut stream).await.map_err(Into::into)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let complete = head.windows(4).any(|w| w == b"\r\n\r\n");
    let request = if complete {
        parse_head(&head)
    } else {
        Request::Malformed
    };
    let (status, content_type, body, head_only) = match request {
        Request::Metrics { head_only } => match super::gather_metrics(ctx).await {
            Ok((shards, process)) => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                exposition::render(&shards, &process),
                head_only,
            ),
            Err(e) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("{e}\n"),
                head_only,
            ),
        },
        Request::Index => (
            "200 OK",
            "text/plain; charset=utf-8",
            "rjabberd: the metrics are at /metrics\n".to_string(),
            false,
        ),
        Request::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only /metrics is served here\n".to_string(),
            false,
        ),
        Request::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET or HEAD\n".to_string(),
            false,
        ),
        Request::Malformed => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "not an HTTP/1 request\n".to_string(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let cases: [(&[u8], Request); 8] = [
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Request::Metrics { head_only: false },
            ),
            (
                b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n",
                Request::Metrics { head_only: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Request::Metrics { head_only: true },
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Request::Index),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Request::BadMethod),
            (b"GET /metrics SPDY/3\r\n\r\n", Request::Malformed),
            (b"\xff\xfe\r\n\r\n", Request::Malformed),
        ];
        for (head, want) in cases {
            assert_eq!(parse_head(head), want, "{}", String::from_utf8_lossy(head));
        }
    }
}

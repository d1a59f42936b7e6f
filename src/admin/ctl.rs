//! The control socket of `rjabberd ctl`: a Unix socket (`rjabberd.ctl` in the data directory unless
//! `[ctl] socket` says otherwise) that only root and the server's own user may use, and both ends of the
//! wire over it. The socket is made where nobody else can reach it (a private 0700 directory beside its
//! final place), set to 0600 there, and renamed into place, so there is no moment when its permissions
//! are wider; a socket file that nobody answers on (a crashed server's) is replaced, a live one is left
//! alone and the start fails. Every connection's peer credentials (`SO_PEERCRED`) are checked before
//! anything it sends is looked at. One request per connection: the client sends one JSON line
//! `{"version":1,"args":[…],"json":bool}` of at most 64 KiB within 5 s, the server answers one JSON
//! object `{"code":N,"text":"…","json":…}` and closes. A refused peer's request is read (bounded the
//! same way) and dropped unparsed. The commands themselves are in [`super::commands`].

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde::{Deserialize, Serialize};

use super::commands::{self, Answer, Command, Exit, Reload};
use crate::cluster::node::ClusterShared;
use crate::config::Config;
use crate::modules::ctx::ModuleCtx;

/// The socket's file name in the data directory.
pub const SOCKET_NAME: &str = "rjabberd.ctl";
/// The version of the request this client sends; the server answers every version it knows.
pub const WIRE_VERSION: u32 = 1;
const MAX_REQUEST: usize = 64 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client waits for an answer beyond the command's own duration (`latency --interval`).
const ANSWER_MARGIN: Duration = Duration::from_secs(30);
/// The most of an answer the client reads (a `connected-users` of a large server is big, not this big).
const MAX_ANSWER: u64 = 256 * 1024 * 1024;

/// What the client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub version: u32,
    pub args: Vec<String>,
    #[serde(default)]
    pub json: bool,
}

/// Where the socket of the server run with `config` is.
pub fn socket_path(config: &Config) -> PathBuf {
    config
        .ctl
        .socket
        .clone()
        .unwrap_or_else(|| config.data_dir.join(SOCKET_NAME))
}

/// The bound control socket and its file, which it removes when dropped (clean shutdown, or a start
/// that failed later) if the file is still this socket.
#[derive(Debug)]
pub struct CtlSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    /// Device and inode of the socket file, to recognise it at removal.
    file: (u64, u64),
}

impl CtlSocket {
    /// Binds the socket at `path` (see the module's doc for how, and why so).
    pub fn bind(path: &Path) -> Result<CtlSocket, String> {
        let shown = path.display();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        check_not_live(path)?;
        let private = parent.join(format!(".ctl.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(|e| format!("{}: {e}", private.display()))?;
        let result = (|| {
            let inside = private.join("s");
            let listener = UnixListener::bind(&inside).map_err(|e| {
                format!("control socket {shown}: {e} (a shorter `[ctl] socket` path helps)")
            })?;
            std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("control socket {shown}: chmod: {e}"))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("control socket {shown}: {e}"))?;
            // Two servers starting at once on one data directory: the lock makes the second see the
            // first's socket live instead of both replacing a stale one.
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(lock_path(path))
                .map_err(|e| format!("{}: {e}", lock_path(path).display()))?;
            // SAFETY: flock on a descriptor this function owns; it is released when `lock` closes.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(format!(
                    "{}: {}",
                    lock_path(path).display(),
                    std::io::Error::last_os_error()
                ));
            }
            check_not_live(path)?;
            std::fs::rename(&inside, path).map_err(|e| format!("control socket {shown}: {e}"))?;
            drop(lock);
            let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{shown}: {e}"))?;
            Ok(CtlSocket {
                listener: Some(listener),
                path: path.to_path_buf(),
                file: (meta.dev(), meta.ino()),
            })
        })();
        let _ = std::fs::remove_dir_all(&private);
        result
    }

    /// The listening socket, for the shard that serves it (once).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CtlSocket {
    fn drop(&mut self) {
        // Another server may have replaced a file this one left for dead: only ours is removed.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.file
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Fails when a server answers on `path`, or when `path` is something other than a socket; a socket
/// nobody answers on is stale and may be replaced.
fn check_not_live(path: &Path) -> Result<(), String> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("control socket {shown}: {e}")),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(format!(
                "control socket {shown}: exists and is not a socket; remove it or set `[ctl] socket`"
            ));
        }
        Ok(_) => {}
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "control socket {shown}: another server answers on it (one data_dir per server, or \
             set `[ctl] socket`)"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("control socket {shown}: {e}")),
    }
}

/// The uid of the process at the other end of a Unix socket (`SO_PEERCRED`: as it was at connect).
pub fn peer_uid(fd: RawFd) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Whether a peer of `uid` may use the socket of a server running as `own`.
pub fn permitted(uid: u32, own: u32) -> bool {
    uid == 0 || uid == own
}

/// Serves the control socket until the task is dropped (the shard stops). `listener` is the Unix
/// listening socket under glommio's `TcpListener`: glommio 0.9 cannot adopt a bound Unix listener, and
/// its accept (io_uring's accept on the descriptor) and its streams' reads and writes do not depend on
/// the address family.
pub async fn serve(
    listener: glommio::net::TcpListener,
    ctx: ModuleCtx,
    reload: Reload,
    cluster: Option<Arc<ClusterShared>>,
    closing: Rc<dyn Fn() -> bool>,
) {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    super::serve_each(listener, "control socket", closing, move |stream| {
        let (ctx, reload, cluster) = (ctx.clone(), reload.clone(), cluster.clone());
        async move { answer(stream, own, &ctx, &reload, cluster.as_deref()).await }
    })
    .await
}

async fn answer(
    mut stream: glommio::net::TcpStream,
    own: u32,
    ctx: &ModuleCtx,
    reload: &Reload,
    cluster: Option<&ClusterShared>,
) -> std::io::Result<()> {
    let peer = peer_uid(stream.as_raw_fd());
    // Read even from a refused peer, and drop it unparsed: closing a Unix socket with unread bytes
    // resets it, and the peer would see that instead of the refusal.
    let request = read_request(&mut stream).await;
    let answer = match peer {
        Ok(uid) if permitted(uid, own) => match request {
            Ok(request) => match commands::parse(&request.args) {
                Ok(command) => commands::run(command, ctx, reload, cluster).await,
                Err(usage) => Answer::fail(Exit::Usage, usage),
            },
            Err(e) => Answer::fail(Exit::Usage, e),
        },
        Ok(uid) => {
            log::warn!("control socket: refused uid {uid} (only root and uid {own})");
            Answer::fail(
                Exit::Unreachable,
                format!(
                    "permission denied: uid {uid} may not use this control socket (only root and \
                     uid {own}, the server's user)"
                ),
            )
        }
        Err(e) => Answer::fail(Exit::Unreachable, format!("peer credentials: {e}")),
    };
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    stream.write_all(&out).await?;
    stream.close().await
}

/// Reads the one request line, within the size and time bounds.
async fn read_request(stream: &mut glommio::net::TcpStream) -> Result<Request, String> {
    let line = glommio::timer::timeout(READ_TIMEOUT, async {
        let mut line = Vec::with_capacity(256);
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(line);
            }
            line.extend_from_slice(&buf[..n]);
            if line.contains(&b'\n') || line.len() > MAX_REQUEST {
                return Ok(line);
            }
        }
    })
    .await
    .map_err(|e| format!("no request within {} s: {e}", READ_TIMEOUT.as_secs()))?;
    decode_request(&line)
}

/// The request in a line: JSON, newline-terminated, at most [`MAX_REQUEST`] bytes.
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    let Some(end) = line.iter().position(|b| *b == b'\n') else {
        return Err(if line.len() > MAX_REQUEST {
            format!("request longer than {MAX_REQUEST} bytes")
        } else {
            "incomplete request".to_string()
        });
    };
    if end > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice(&line[..end]).map_err(|e| format!("bad request: {e}"))
}

// ---- the client's side (`rjabberd ctl`) ----

/// Where `rjabberd [--config FILE] ctl` looks for the socket. A file the server would refuse (an
/// error in `[modules]`, say) still names its data directory: `ctl reload` must reach the server to
/// have it report that error.
pub fn client_socket_path(config_file: Option<&Path>) -> Result<PathBuf, String> {
    let Some(file) = config_file else {
        return Ok(socket_path(&Config::default()));
    };
    match Config::load(file) {
        Ok(config) => Ok(socket_path(&config)),
        Err(error) => {
            let text = std::fs::read_to_string(file).map_err(|_| error.to_string())?;
            let table: toml::Table = toml::from_str(&text).map_err(|_| error.to_string())?;
            let str_at = |v: Option<&toml::Value>| v.and_then(|v| v.as_str()).map(PathBuf::from);
            let socket = str_at(table.get("ctl").and_then(|c| c.get("socket")));
            let data_dir = str_at(table.get("data_dir")).unwrap_or(Config::default().data_dir);
            Ok(socket.unwrap_or_else(|| data_dir.join(SOCKET_NAME)))
        }
    }
}

/// `rjabberd ctl ARGS…`: parses the command here (usage errors need no server), sends it, prints the
/// answer; the exit code.
pub fn client_main(config_file: Option<&Path>, args: Vec<String>) -> u8 {
    let (command, json) = match commands::parse_with_json(&args) {
        Ok(c) => c,
        Err(usage) => {
            eprintln!("rjabberd ctl: {usage}\n(`rjabberd ctl help` lists the commands)");
            return Exit::Usage as u8;
        }
    };
    if command == Command::Help {
        let a = commands::help();
        print_answer(&a, json);
        return a.code;
    }
    let path = match client_socket_path(config_file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rjabberd ctl: {e}");
            return Exit::Usage as u8;
        }
    };
    let answer = match ask(&path, &args, json, command.duration() + ANSWER_MARGIN) {
        Ok(a) => a,
        Err(e) => Answer::fail(Exit::Unreachable, e),
    };
    print_answer(&answer, json);
    answer.code
}

fn print_answer(answer: &Answer, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer.json).unwrap_or_default()
        );
    } else if answer.code == Exit::Ok as u8 {
        print!("{}", with_newline(&answer.text));
    } else {
        eprint!("rjabberd ctl: {}", with_newline(&answer.text));
    }
}

fn with_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

/// One request over a fresh connection.
pub fn ask(path: &Path, args: &[String], json: bool, wait: Duration) -> Result<Answer, String> {
    let shown = path.display();
    let mut stream = UnixStream::connect(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                " (is the server running, with this configuration?)"
            }
            std::io::ErrorKind::PermissionDenied => " (only root and the server's user may use it)",
            _ => "",
        };
        format!("cannot reach the server at {shown}: {e}{hint}")
    })?;
    stream
        .set_read_timeout(Some(wait))
        .and_then(|()| stream.set_write_timeout(Some(READ_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = Request {
        version: WIRE_VERSION,
        args: args.to_vec(),
        json,
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    // A refused peer's request is never read: the server may have answered and closed before this
    // write, which then fails while the refusal waits to be read.
    let written = stream.write_all(&line);

    let mut raw = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(|e| format!("no answer from the server at {shown}: {e}"))?;
    if raw.is_empty()
        && let Err(e) = written
    {
        return Err(format!("{shown}: {e}"));
    }
    serde_json::from_slice(&raw).map_err(|e| {
        format!(
            "the server at {shown} answered something else than an answer ({e}): {}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_bounded_json_line() {
        let r = decode_request(b"{\"version\":1,\"args\":[\"kick\",\"a@b\"],\"json\":true}\nrest")
            .unwrap();
        assert_eq!(r.args, ["kick", "a@b"]);
        assert!(r.json);
        // Fields a newer client adds are ignored; those an older one leaves out have defaults.
        let r = decode_request(b"{\"args\":[],\"colour\":\"red\"}\n").unwrap();
        assert_eq!((r.version, r.json), (0, false));
        assert!(
            decode_request(b"{\"args\":[]}")
                .unwrap_err()
                .contains("incomplete")
        );
        assert!(
            decode_request(b"[1,2]\n")
                .unwrap_err()
                .contains("bad request")
        );
        let long = format!("{{\"args\":[\"{}\"]}}\n", "x".repeat(MAX_REQUEST));
        assert!(
            decode_request(long.as_bytes())
                .unwrap_err()
                .contains("longer")
        );
    }

    #[test]
    fn only_root_and_the_servers_own_user() {
        assert!(permitted(0, 1000));
        assert!(permitted(1000, 1000));
        assert!(!permitted(65534, 1000));
        assert!(permitted(0, 0));
        assert!(!permitted(1000, 0));
    }

    #[test]
    fn the_socket_is_0600_a_live_one_is_kept_and_a_stale_one_replaced() {
        let dir = std::env::temp_dir().join(format!("rjabberd-ctl-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join(SOCKET_NAME);
        let first = CtlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let err = CtlSocket::bind(&path).unwrap_err();
        assert!(err.contains("another server answers"), "{err}");
        // A crashed server's socket: the file stays, nobody listens.
        let mut crashed = first;
        drop(crashed.take_listener());
        std::mem::forget(crashed);
        let second = CtlSocket::bind(&path).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(second);
        assert!(!path.exists(), "removed when dropped");
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(CtlSocket::bind(&path).unwrap_err().contains("not a socket"));
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".ctl."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_client_finds_the_socket_even_in_a_file_the_server_would_refuse() {
        let dir = std::env::temp_dir().join(format!("rjabberd-ctl-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "data_dir = \"/srv/x\"\n[modules]\nmod_nope = true\n").unwrap();
        assert_eq!(
            client_socket_path(Some(&file)).unwrap(),
            PathBuf::from("/srv/x/rjabberd.ctl")
        );
        std::fs::write(
            &file,
            "data_dir = \"/srv/x\"\n[ctl]\nsocket = \"/run/r.ctl\"\n",
        )
        .unwrap();
        assert_eq!(
            client_socket_path(Some(&file)).unwrap(),
            PathBuf::from("/run/r.ctl")
        );
        std::fs::write(&file, "data_dir = \n").unwrap();
        assert!(client_socket_path(Some(&file)).is_err());
        assert_eq!(
            client_socket_path(None).unwrap(),
            PathBuf::from("./data/rjabberd.ctl")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

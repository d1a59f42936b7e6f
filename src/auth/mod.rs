//! External authentication: ejabberd's extauth protocol, byte for byte, so existing scripts work
//! unchanged. Each request is a 2-byte big-endian length followed by one of `auth:User:Server:Password`,
//! `isuser:User:Server`, `setpass:User:Server:Password`, `tryregister:User:Server:Password`,
//! `removeuser:User:Server`, `removeuser3:User:Server:Password`; the answer is a 2-byte length (2) and a
//! 16-bit result, 1 for success and 0 for failure. A pool of program instances is driven from worker
//! threads fed by a crossbeam channel — never from a shard's reactor — each serving one request at a
//! time with a timeout; an instance that times out, answers garbage or dies is killed and restarted, and
//! that request fails (as a refusal) without touching any other.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A failed request: the program could not be run or did not answer properly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthError(pub String);

impl std::fmt::Display for ExtAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "extauth: {}", self.0)
    }
}

struct Request {
    command: String,
    reply: futures_channel::oneshot::Sender<Result<bool, ExtAuthError>>,
}

/// The pool of extauth program instances.
pub struct ExtAuth {
    requests: crossbeam_channel::Sender<Request>,
}

/// Requests that may wait for a free instance before new ones fail at once.
const QUEUE: usize = 4096;

impl ExtAuth {
    /// Starts `pool` worker threads, each running one instance of `program` (started at once, so a
    /// program that cannot run is reported at server start).
    pub fn start(program: &Path, pool: usize, timeout: Duration) -> Result<ExtAuth, ExtAuthError> {
        let (tx, rx) = crossbeam_channel::bounded::<Request>(QUEUE);
        for i in 0..pool.max(1) {
            let mut instance = Instance::spawn(program)?;
            let rx = rx.clone();
            let program = program.to_path_buf();
            std::thread::Builder::new()
                .name(format!("rjabberd-extauth-{i}"))
                .spawn(move || {
                    for req in rx {
                        let result = instance.call(&program, &req.command, timeout);
                        let _ = req.reply.send(result);
                    }
                })
                .map_err(|e| ExtAuthError(format!("cannot start a worker: {e}")))?;
        }
        Ok(ExtAuth { requests: tx })
    }

    /// `auth:User:Server:Password`
    pub async fn auth(
        &self,
        user: &str,
        server: &str,
        password: &str,
    ) -> Result<bool, ExtAuthError> {
        self.call(format!("auth:{user}:{server}:{password}")).await
    }

    /// `isuser:User:Server`
    pub async fn isuser(&self, user: &str, server: &str) -> Result<bool, ExtAuthError> {
        self.call(format!("isuser:{user}:{server}")).await
    }

    /// `setpass:User:Server:Password`
    pub async fn setpass(
        &self,
        user: &str,
        server: &str,
        password: &str,
    ) -> Result<bool, ExtAuthError> {
        self.call(format!("setpass:{user}:{server}:{password}"))
            .await
    }

    /// `tryregister:User:Server:Password`
    pub async fn tryregister(
        &self,
        user: &str,
        server: &str,
        password: &str,
    ) -> Result<bool, ExtAuthError> {
        self.call(format!("tryregister:{user}:{server}:{password}"))
            .await
    }

    /// `removeuser:User:Server`
    pub async fn removeuser(&self, user: &str, server: &str) -> Result<bool, ExtAuthError> {
        self.call(format!("removeuser:{user}:{server}")).await
    }

    /// `removeuser3:User:Server:Password`
    pub async fn removeuser3(
        &self,
        user: &str,
        server: &str,
        password: &str,
    ) -> Result<bool, ExtAuthError> {
        self.call(format!("removeuser3:{user}:{server}:{password}"))
            .await
    }

    /// Sends one command to a free instance and awaits its answer.
    pub async fn call(&self, command: String) -> Result<bool, ExtAuthError> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.requests
            .try_send(Request { command, reply: tx })
            .map_err(|_| ExtAuthError("too many requests waiting".into()))?;
        rx.await
            .map_err(|_| ExtAuthError("the worker is gone".into()))?
    }
}

/// One running instance of the program.
struct Instance {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Instance {
    fn spawn(program: &Path) -> Result<Instance, ExtAuthError> {
        let mut child = Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| ExtAuthError(format!("cannot run {}: {e}", program.display())))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        Ok(Instance {
            child,
            stdin,
            stdout,
        })
    }

    fn restart(&mut self, program: &Path) -> Result<(), ExtAuthError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Instance::spawn(program)?;
        Ok(())
    }

    fn call(
        &mut self,
        program: &Path,
        command: &str,
        timeout: Duration,
    ) -> Result<bool, ExtAuthError> {
        let Ok(len) = u16::try_from(command.len()) else {
            return Err(ExtAuthError("request longer than 65535 bytes".into()));
        };
        // An instance that died between requests processed nothing: start a new one and go on.
        if !matches!(self.child.try_wait(), Ok(None)) {
            log::warn!("extauth: {} exited; restarting it", program.display());
            self.restart(program)?;
        }
        let result = self.exchange(len, command, timeout);
        if let Err(e) = &result {
            log::warn!("{e}; restarting {} (the request fails)", program.display());
            if let Err(e) = self.restart(program) {
                log::error!("{e}");
            }
        }
        result
    }

    fn exchange(
        &mut self,
        len: u16,
        command: &str,
        timeout: Duration,
    ) -> Result<bool, ExtAuthError> {
        let mut frame = Vec::with_capacity(2 + command.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(command.as_bytes());
        self.stdin
            .write_all(&frame)
            .and_then(|()| self.stdin.flush())
            .map_err(|e| ExtAuthError(format!("cannot write the request: {e}")))?;
        let mut answer = [0u8; 4];
        let deadline = Instant::now() + timeout;
        let mut got = 0;
        while got < answer.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !readable(&self.stdout, left) {
                return Err(ExtAuthError(format!(
                    "no answer within {} s",
                    timeout.as_secs_f32()
                )));
            }
            match self.stdout.read(&mut answer[got..]) {
                Ok(0) => return Err(ExtAuthError("the program exited".into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ExtAuthError(format!("cannot read the answer: {e}"))),
            }
        }
        match answer {
            [0, 2, 0, 1] => Ok(true),
            [0, 2, 0, 0] => Ok(false),
            other => Err(ExtAuthError(format!("malformed answer {other:02x?}"))),
        }
    }
}

/// Waits up to `timeout` for `pipe` to have data (or end).
fn readable(pipe: &ChildStdout, timeout: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut fds, 1, ms.max(1)) };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // A signal restarts the wait (slightly longer than asked; the caller re-checks the deadline).
            return n > 0;
        }
    }
}

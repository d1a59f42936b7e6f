//! Listening sockets, and the guard that keeps a second server off our addresses. Every shard listens on
//! every configured address with a socket of its own and SO_REUSEPORT, and the kernel spreads new
//! connections among them; but Linux lets any socket of the same user into such a group, so a second
//! rjabberd started on the same address would join it quietly and take a share of the connections.
//! [`reserve`] refuses that before any shard binds. A probe binds the address *without* SO_REUSEPORT
//! (with SO_REUSEADDR, so connections left in TIME_WAIT by an earlier run do not count); Linux refuses
//! it with EADDRINUSE while any other socket listens there, SO_REUSEPORT or not. The probe then gives
//! way to a placeholder bound to the same (resolved) address with SO_REUSEPORT and *without*
//! SO_REUSEADDR, never listening (so it takes no connections), held until every shard listens: our
//! shards (same user, SO_REUSEPORT) bind beside it, while another server's probe conflicts with it as
//! with a listener. So the address is guarded from the probe on, through startup, for the server's life.
//! No single socket can be probe and placeholder at once: what refuses the probe of the next server
//! would refuse our own shards too. Two windows remain, both acceptable. Between closing the probe and
//! binding the placeholder (one close and one bind, the placeholder socket made beforehand) a second
//! server's probe could pass: only two servers started on one address in the same microseconds, not
//! the case this guard is for (a server started while another runs). And when the address still has
//! connections in TIME_WAIT from a program that listened without SO_REUSEPORT (say another XMPP server
//! stopped a minute ago), Linux refuses the strict placeholder; it then takes SO_REUSEADDR as well (as
//! before this guard), and until our shards listen another server's probe passes it. Once the shards
//! listen, every probe fails.

use std::io::ErrorKind;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Why an address cannot be ours.
#[derive(Debug)]
pub enum ListenError {
    /// Another socket holds the address: another process, or another rjabberd.
    InUse(SocketAddr),
    /// Any other failure (an address not on this host, a port below 1024 without the right, …).
    Io(SocketAddr, std::io::Error),
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenError::InUse(addr) => write!(
                f,
                "cannot listen on {addr}: the address is in use by another process \
                 (is another rjabberd running?)"
            ),
            ListenError::Io(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
        }
    }
}

impl std::error::Error for ListenError {}

/// An address checked free of other sockets and held for our shards until this is dropped (after every
/// shard listens on [`Reserved::addr`]).
#[derive(Debug)]
pub struct Reserved {
    addr: SocketAddr,
    _placeholder: Socket,
}

impl Reserved {
    /// The address to listen on: the configured one, with port 0 resolved to the port the system chose.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn socket(addr: SocketAddr) -> std::io::Result<Socket> {
    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
}

/// Checks that no other socket holds `addr` and holds it for our shards (see the module's opening).
pub fn reserve(addr: SocketAddr) -> Result<Reserved, ListenError> {
    let fail = |e: std::io::Error| {
        if e.kind() == ErrorKind::AddrInUse {
            ListenError::InUse(addr)
        } else {
            ListenError::Io(addr, e)
        }
    };
    let probe = socket(addr).map_err(fail)?;
    probe.set_reuse_address(true).map_err(fail)?;
    probe.bind(&addr.into()).map_err(fail)?;
    let actual = probe
        .local_addr()
        .map_err(fail)?
        .as_socket()
        .ok_or_else(|| ListenError::Io(addr, std::io::Error::other("no local address")))?;
    let strict = socket(addr).map_err(fail)?;
    strict.set_reuse_port(true).map_err(fail)?;
    drop(probe);
    let placeholder = match strict.bind(&actual.into()) {
        Ok(()) => strict,
        // TIME_WAIT leftovers of a listener without SO_REUSEPORT (the probe passed them).
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            let lenient = socket(addr).map_err(fail)?;
            lenient.set_reuse_port(true).map_err(fail)?;
            lenient.set_reuse_address(true).map_err(fail)?;
            lenient.bind(&actual.into()).map_err(fail)?;
            log::debug!(
                "{actual}: connections of another program in TIME_WAIT; guarded once the shards listen"
            );
            lenient
        }
        Err(e) => return Err(fail(e)),
    };
    Ok(Reserved {
        addr: actual,
        _placeholder: placeholder,
    })
}

/// A shard's listening socket: SO_REUSEPORT (every shard of this server binds the same address) and our
/// backlog (glommio's own `bind` fixes it at 1024).
pub fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let sock = listen_socket(addr, backlog)?;
    // SAFETY: the descriptor is a listening TCP socket owned by nothing else from here on.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(sock.into_raw_fd()) })
}

fn listen_socket(addr: SocketAddr, backlog: u32) -> std::io::Result<Socket> {
    let sock = socket(addr)?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn any_port() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    fn local(s: &Socket) -> SocketAddr {
        s.local_addr().unwrap().as_socket().unwrap()
    }

    fn refused(addr: SocketAddr) {
        match reserve(addr) {
            Err(ListenError::InUse(a)) => {
                assert_eq!(a, addr);
                let text = ListenError::InUse(a).to_string();
                assert!(text.contains(&addr.to_string()), "{text}");
                assert!(text.contains("in use"), "{text}");
            }
            other => panic!("{addr} reserved while held: {other:?}"),
        }
    }

    #[test]
    fn port_zero_resolves() {
        let r = reserve(any_port()).unwrap();
        assert_eq!(r.addr().ip(), any_port().ip());
        assert_ne!(r.addr().port(), 0);
    }

    #[test]
    fn a_plain_listener_refuses_the_probe() {
        // std sets SO_REUSEADDR on its listeners; a bare socket has neither option.
        let std_listener = std::net::TcpListener::bind(any_port()).unwrap();
        refused(std_listener.local_addr().unwrap());
        let bare = socket(any_port()).unwrap();
        bare.bind(&any_port().into()).unwrap();
        bare.listen(8).unwrap();
        refused(local(&bare));
    }

    #[test]
    fn a_reuseport_listener_refuses_the_probe() {
        // The bug: another rjabberd's shard (same user, SO_REUSEPORT) used to let the second one in.
        let other = listen_socket(any_port(), 8).unwrap();
        refused(local(&other));
    }

    #[test]
    fn the_shards_of_one_server_share_the_address_and_keep_it() {
        let r = reserve(any_port()).unwrap();
        let addr = r.addr();
        // During startup the placeholder alone refuses another server.
        refused(addr);
        let shard0 = listen_socket(addr, 8).unwrap();
        let shard1 = listen_socket(addr, 8).unwrap();
        assert_eq!(local(&shard0), addr);
        assert_eq!(local(&shard1), addr);
        refused(addr);
        drop(r);
        // After startup the listeners do.
        refused(addr);
        drop((shard0, shard1));
        reserve(addr).unwrap();
    }

    /// Leaves the accepted side of one connection to `listener` in TIME_WAIT (the server closes first).
    fn time_wait(listener: &Socket) {
        let mut client = std::net::TcpStream::connect(local(listener)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(accepted);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    #[test]
    fn time_wait_leftovers_do_not_count() {
        // Of an earlier rjabberd: the strict placeholder, and the guard holds through startup.
        let earlier = listen_socket(any_port(), 8).unwrap();
        let addr = local(&earlier);
        time_wait(&earlier);
        drop(earlier);
        let r = reserve(addr).unwrap();
        refused(addr);
        drop(r);
        // Of a program with SO_REUSEADDR but not SO_REUSEPORT: the lenient placeholder.
        let other = std::net::TcpListener::bind(any_port()).unwrap();
        let addr = other.local_addr().unwrap();
        let other = Socket::from(other);
        time_wait(&other);
        drop(other);
        let r = reserve(addr).unwrap();
        let _shard = listen_socket(r.addr(), 8).unwrap();
        drop(r);
        refused(addr);
    }
}

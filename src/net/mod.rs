//! The only place with sockets: the stream driver ([`driver`]) that joins a socket, rustls, the stream
//! parser and a write loop under any stream's protocol glue, TLS configuration and certificates ([`tls`]),
//! the listening sockets and the guard against a second server on the same address ([`listener`]), and
//! the file-descriptor limit. Nothing here knows what a stream means: `net` imports neither the
//! router, the session manager, the shard nor the modules.

pub mod driver;
pub mod listener;
pub mod tls;

/// Raises the open-file limit as far as the system allows: every connection is a descriptor, and the
/// default soft limit (often 1,024) would cap a server meant for 100,000 sessions per host. Root may also
/// raise the hard limit up to `fs.nr_open`.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(lim.rlim_max);
        let want = libc::rlimit {
            rlim_cur: nr_open,
            rlim_max: nr_open,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

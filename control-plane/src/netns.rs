//! Opening sockets inside another network namespace (a pod network, a pod) from a process that runs
//! in its own: a short-lived thread joins the namespace (`setns` changes only the calling thread), makes
//! the socket, and ends; the socket stays in the namespace it was made in.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Runs `f` on a thread inside network namespace `name`.
pub fn run_in<T, F>(name: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let p = path(name);
    let file = std::fs::File::open(&p).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {name} ({}): {e}", p.display()),
        )
    })?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this thread, which ends after `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot enter the network namespace: {e}"),
            ));
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// A listening TCP socket bound to `addr` inside namespace `name`, ready for tokio.
pub fn bind_in(name: &str, addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let std = run_in(name, move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    tokio::net::TcpListener::from_std(std)
}

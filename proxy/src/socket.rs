//! Sockets the proxy opens to the network, and what the kernel says about redirected ones.
//!
//! In a pod, `weft-proxy init` redirects every TCP connection leaving the pod to the proxy, except those
//! from sockets carrying the proxy's mark. So every connection the proxy itself makes (to peers, to the
//! control plane, passed-through destinations) goes through [`connect`], which sets that mark.
//!
//! Setting SO_MARK needs CAP_NET_ADMIN. A proxy run as its own user without it (as `weftctl pod run`
//! starts sidecars) is recognised by `init`'s `--proxy-uid` rule instead: an EPERM on the mark is logged
//! once and the socket goes on unmarked.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

static MARK: OnceLock<u32> = OnceLock::new();
/// Set once the kernel refused the mark: later sockets do not try again.
static MARK_REFUSED: AtomicBool = AtomicBool::new(false);

/// Sets the mark for every later [`connect`]; the first call wins (one proxy per process).
pub fn set_mark(mark: u32) {
    let _ = MARK.set(mark);
}

/// Puts the proxy's mark, when one is set, on a socket opened other than through [`connect`] (the DNS
/// forwarder's UDP sockets to upstream resolvers).
pub fn apply_mark<S: std::os::fd::AsFd>(socket: &S) -> io::Result<()> {
    let Some(mark) = MARK.get() else {
        return Ok(());
    };
    if MARK_REFUSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    match socket2::SockRef::from(socket).set_mark(*mark) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            if !MARK_REFUSED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    mark = *mark,
                    "cannot set SO_MARK (no CAP_NET_ADMIN): sockets go unmarked; interception must exclude this proxy by its user (weft-proxy init --proxy-uid)"
                );
            }
            Ok(())
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot set SO_MARK {mark}: {e}"),
        )),
    }
}

/// Connects to `addr` within `timeout`, with the proxy's mark when one is set (and allowed).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    apply_mark(&socket)?;
    let tcp = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The destination the app asked for before `init`'s REDIRECT rule sent the connection here.
pub fn original_dst(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let addr = socket2::SockRef::from(tcp).original_dst()?;
    addr.as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

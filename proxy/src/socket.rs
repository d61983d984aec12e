//! Sockets the proxy opens to the network, and what the kernel says about redirected ones.
//!
//! In a pod, `weft-proxy init` redirects every TCP connection leaving the pod to the proxy, except those
//! from sockets carrying the proxy's mark. So every connection the proxy itself makes (to peers, to the
//! control plane, passed-through destinations) goes through [`connect`], which sets that mark.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

static MARK: OnceLock<u32> = OnceLock::new();

/// Sets the mark for every later [`connect`]; the first call wins (one proxy per process).
pub fn set_mark(mark: u32) {
    let _ = MARK.set(mark);
}

/// Puts the proxy's mark, when one is set, on a socket opened other than through [`connect`] (the DNS
/// forwarder's UDP sockets to upstream resolvers).
pub fn apply_mark<S: std::os::fd::AsFd>(socket: &S) -> io::Result<()> {
    if let Some(mark) = MARK.get() {
        socket2::SockRef::from(socket)
            .set_mark(*mark)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot set SO_MARK {mark}: {e}")))?;
    }
    Ok(())
}

/// Connects to `addr` within `timeout`, with the proxy's mark when one is set.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mark) = MARK.get() {
        socket2::SockRef::from(&socket)
            .set_mark(*mark)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot set SO_MARK {mark}: {e}")))?;
    }
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

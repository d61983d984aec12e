//! Opaque TCP demo apps: an echo server that reports half-close, and a server-speaks-first banner.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{spawn_accept_loop, AppHandle};

/// Sent by [`banner`] when no text is given; shaped like an SMTP greeting, the classic protocol where
/// the server speaks first.
pub const DEFAULT_BANNER: &str = "220 weft-demo ESMTP ready\r\n";

/// Read buffer per connection: small, since demo payloads are small and tests open many connections.
const BUF_SIZE: usize = 16 * 1024;

/// The trailer [`echo`] writes after the client half-closes having sent `bytes` bytes.
pub fn eof_trailer(bytes: u64) -> String {
    format!("\n[eof after {bytes} bytes]\n")
}

/// Starts a TCP echo server on `listener`.
///
/// When the client shuts down its write side, the server writes [`eof_trailer`] and then shuts down
/// its own write side, so a test can see a half-close travel both ways.
pub fn echo(listener: TcpListener) -> AppHandle {
    spawn_accept_loop(listener, "tcp-echo", |stream, peer, _stopped| {
        echo_connection(stream, peer)
    })
}

async fn echo_connection(mut stream: TcpStream, peer: SocketAddr) {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    let result = async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
            stream.write_all(&buf[..n]).await?;
        }
        stream.write_all(eof_trailer(total).as_bytes()).await?;
        stream.shutdown().await
    }
    .await;
    match result {
        Ok(()) => tracing::debug!(%peer, total, "tcp echo: client half-closed"),
        Err(error) => tracing::debug!(%peer, total, %error, "tcp echo connection failed"),
    }
}

/// Starts a server-speaks-first app on `listener`: it writes `banner` as soon as it accepts a
/// connection, without waiting for the client, then echoes whatever the client sends.
pub fn banner(listener: TcpListener, banner: &str) -> AppHandle {
    let banner: std::sync::Arc<[u8]> = banner.as_bytes().into();
    spawn_accept_loop(listener, "tcp-banner", move |stream, peer, _stopped| {
        banner_connection(stream, peer, banner.clone())
    })
}

async fn banner_connection(mut stream: TcpStream, peer: SocketAddr, banner: std::sync::Arc<[u8]>) {
    let result = async {
        stream.write_all(&banner).await?;
        let (mut rd, mut wr) = stream.split();
        tokio::io::copy(&mut rd, &mut wr).await?;
        wr.shutdown().await
    }
    .await;
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "banner connection failed");
    }
}

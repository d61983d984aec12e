//! One HTTP/2 connection to the control plane's proxy API, over TLS that pins the mesh CA.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub type ReqBody = BoxBody<Bytes, Infallible>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot reach the control plane at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("TLS with the control plane at {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("HTTP/2 with the control plane at {addr} failed: {0}", addr = .1)]
    Http(hyper::Error, SocketAddr),
}

/// Connects and returns a request sender; the connection runs in a background task until dropped.
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<http2::SendRequest<ReqBody>, ConnError> {
    let tcp = tcp_connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| ConnError::Tls {
        addr,
        reason: "handshake timed out".into(),
    })?
    .map_err(|e| ConnError::Tls {
        addr,
        reason: tls_reason(&e),
    })?;
    let (send, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| ConnError::Http(e, addr))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control-plane connection ended");
        }
    });
    Ok(send)
}

/// The certificate chain the control plane presents, from a handshake that is failed on purpose once
/// the chain is seen (nothing is sent): for finding the root a fingerprint pins.
pub async fn probe_chain(
    addr: SocketAddr,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConnError> {
    let tcp = tcp_connect(addr).await?;
    let (config, slot) = weft_certs::pin::chain_probe();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let _ = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await;
    let chain = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    chain.ok_or_else(|| ConnError::Tls {
        addr,
        reason: "the control plane presented no certificate".into(),
    })
}

async fn tcp_connect(addr: SocketAddr) -> Result<tokio::net::TcpStream, ConnError> {
    crate::socket::connect(addr, CONNECT_TIMEOUT)
        .await
        .map_err(|e| ConnError::Connect {
            addr,
            reason: e.to_string(),
        })
}

fn tls_reason(e: &std::io::Error) -> String {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(|r| match weft_certs::verify_error(r) {
            Some(v) => v.to_string(),
            None => r.to_string(),
        })
        .unwrap_or_else(|| e.to_string())
}

pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into()).boxed()
}

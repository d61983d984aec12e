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
/// A PING goes out after this long without a frame from the control plane...
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ...and an unanswered one ends the connection after this: a control plane that stops answering
/// (stopped, or its host gone without a reset) is left within 10 s for the next address.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot reach the control plane at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("TLS with the control plane at {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    /// A `HOST:PORT` entry of `control.address` that did not resolve this time.
    #[error("cannot resolve the control plane {entry}: {reason}")]
    Resolve { entry: String, reason: String },
    /// The chain presented at `addr` does not hold the root `control.ca_fingerprint` pins.
    #[error("the control plane at {addr} is not the pinned mesh: {source}")]
    Pin {
        addr: SocketAddr,
        source: weft_certs::CertError,
    },
    /// No address of a list answered; each with its reason.
    #[error("no control plane answered: {tried}")]
    NoneAnswered { tried: String },
    #[error("HTTP/2 with the control plane at {addr} failed: {why}", addr = .1, why = describe(.0))]
    Http(hyper::Error, SocketAddr),
    /// The control plane's certificate is outside its validity by this machine's clock.
    #[error("TLS with the control plane at {addr} failed: {source}")]
    ClockSkew {
        addr: SocketAddr,
        source: super::clock::ClockSkew,
    },
}

/// An HTTP/2 connection to the control plane: requests go through `send`; the connection itself runs
/// in a background task until `send` is dropped.
pub struct Conn {
    pub send: http2::SendRequest<ReqBody>,
    pub ended: Ended,
}

/// How a connection ended, once it has. A stream on a dead connection only learns "broken pipe"; the
/// connection knows the cause (keep-alive timed out, GOAWAY, reset).
#[derive(Clone)]
pub struct Ended(tokio::sync::watch::Receiver<Option<String>>);

impl Ended {
    /// Why the connection failed, if it did within `within`.
    pub async fn reason(mut self, within: Duration) -> Option<String> {
        let r = tokio::time::timeout(within, self.0.wait_for(Option::is_some)).await;
        r.ok()?.ok()?.clone()
    }
}

/// Connects; the connection runs in a background task until the sender is dropped.
pub async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Conn, ConnError> {
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
    .map_err(|e| tls_error(addr, &e))?;
    let (send, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| ConnError::Http(e, addr))?;
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control-plane connection ended");
            let _ = tx.send(Some(describe(&e)));
        }
    });
    Ok(Conn {
        send,
        ended: Ended(rx),
    })
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

/// Why the handshake failed: the clock, when our verifier refused the control plane's certificate for
/// its dates (its own renewal keeps it valid, so the dates point at this machine's clock).
fn tls_error(addr: SocketAddr, e: &std::io::Error) -> ConnError {
    let refusal = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let verify = refusal.and_then(weft_certs::verify_error);
    if let Some(skew) = verify
        .and_then(|v| super::clock::ClockSkew::of_verify_error(v, std::time::SystemTime::now()))
    {
        return ConnError::ClockSkew { addr, source: skew };
    }
    let reason = match (verify, refusal) {
        (Some(v), _) => v.to_string(),
        (None, Some(r)) => r.to_string(),
        (None, None) => e.to_string(),
    };
    ConnError::Tls { addr, reason }
}

/// An error with its causes (`error reading a body from connection: keep-alive timed out`): hyper's
/// own message rarely says what happened.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into()).boxed()
}

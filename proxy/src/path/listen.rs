//! Pieces every listener shares: the accept loop with its connection cap, and serving one HTTP/1 or HTTP/2
//! connection with the configured limits, graceful shutdown on drain, and rejections logged and counted.

use crate::path::body::Body;
use crate::state::Proxy;
use crate::telemetry::labels::{Listener, Reason};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Caps open connections on one listener.
#[derive(Clone)]
pub struct ConnLimiter(Arc<Semaphore>);

impl ConnLimiter {
    pub fn new(max: usize) -> ConnLimiter {
        ConnLimiter(Arc::new(Semaphore::new(max)))
    }
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// Accepts until the proxy drains; every connection runs as a tracked task holding a limiter permit.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    proxy: &Arc<Proxy>,
    limiter: ConnLimiter,
    name: Listener,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = proxy.shutdown.cancelled() => break,
        };
        let (tcp, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                proxy.metrics.reject(name, Reason::AcceptError);
                tracing::warn!(listener = name.as_str(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = limiter.try_acquire() else {
            proxy.metrics.reject(name, Reason::MaxConnections);
            tracing::warn!(listener = name.as_str(), %client, "connection refused: listener is at its connection limit");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let fut = handle(tcp, client);
        proxy.tasks.spawn(async move {
            let _permit = permit;
            fut.await
        });
    }
    tracing::debug!(listener = name.as_str(), "stopped accepting");
}

/// Serves one HTTP/1 connection (with upgrades) until it closes or the proxy drains.
pub async fn http1_connection<I, S>(
    io: I,
    svc: S,
    proxy: &Arc<Proxy>,
    listener: Listener,
    client: SocketAddr,
) where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = std::convert::Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = http1_builder(proxy)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = proxy.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        report(proxy, listener, client, &e);
    }
}

/// HTTP/1 server settings shared by every listener that speaks it (data listeners, admin, health): the
/// header-read timeout (which also cuts a connection that never sends a byte) and the head size limits.
pub fn http1_builder(proxy: &Proxy) -> hyper::server::conn::http1::Builder {
    let l = &proxy.config.limits;
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(l.header_read_timeout.get())
        .max_buf_size(l.max_header_bytes)
        .max_headers(l.max_headers);
    b
}

/// Serves one HTTP/2 connection until it closes or the proxy drains (GOAWAY, then in-flight streams finish).
pub async fn http2_connection<I, S>(
    io: I,
    svc: S,
    proxy: &Arc<Proxy>,
    listener: Listener,
    client: SocketAddr,
) where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = std::convert::Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = http2_builder(proxy).serve_connection(io, svc);
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = proxy.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        report(proxy, listener, client, &e);
    }
}

/// HTTP/2 server settings shared by outbound listeners and the tunnel. The stream cap and reset limits
/// bound what one connection can make us hold (rapid reset, stream floods); header list size bounds
/// CONTINUATION floods.
pub fn http2_builder(proxy: &Proxy) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let l = &proxy.config.limits;
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(l.max_concurrent_streams)
        .max_header_list_size(l.max_header_list_bytes)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(64 * 1024)
        .keep_alive_interval(Some(l.keepalive_interval.get()))
        .keep_alive_timeout(Duration::from_secs(20))
        .enable_connect_protocol();
    b
}

/// Logs and counts a connection that ended with an error, by a bounded reason.
pub fn report(proxy: &Proxy, listener: Listener, client: SocketAddr, e: &hyper::Error) {
    let reason = if e.is_parse_too_large() {
        Reason::HeaderTooLarge
    } else if e.is_parse() || e.is_parse_status() {
        Reason::BadRequest
    } else if e.is_timeout() {
        Reason::Timeout
    } else if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        // The client went away mid-message: common and harmless, not a rejection.
        tracing::debug!(listener = listener.as_str(), %client, error = %e, "connection closed early");
        return;
    } else {
        Reason::ProtocolError
    };
    proxy.metrics.reject(listener, reason);
    tracing::info!(listener = listener.as_str(), %client, reason = reason.as_str(), error = %e, "connection rejected");
}

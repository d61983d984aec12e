//! Pieces every listener shares: the one accept loop (connection cap, what stops it, what becomes of open
//! connections then), and serving one HTTP/1 or HTTP/2 connection with the configured limits, graceful
//! shutdown on drain, and rejections logged and counted.

use crate::path::body::Body;
use crate::path::open_streams::OpenStreams;
use crate::state::Proxy;
use crate::telemetry::labels::{Listener, Reason};
use crate::telemetry::metrics::Metrics;
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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// How one listener accepts. Every TCP listener of the proxy runs [`accept`]; these are the ways they
/// differ.
pub struct Accept {
    /// The listener's name in logs and in `weft_proxy_rejections_total{listener}`.
    pub name: Listener,
    /// Open connections at most; a connection over the cap is closed at accept
    /// (`reason="max_connections"`).
    pub limiter: ConnLimiter,
    /// Accepting stops when this is cancelled; `None`: only with the runtime.
    pub stop: Option<CancellationToken>,
    /// What happens to open connections when the proxy stops.
    pub connections: Connections,
    /// Connections refused at the cap are logged at debug rather than warn.
    pub quiet_refusals: bool,
}

/// What becomes of a listener's open connections when the proxy stops.
pub enum Connections {
    /// Drained: they run as tasks of this tracker, which the drain waits for (up to `drain_timeout`).
    Drained(TaskTracker),
    /// Cut at once when this is cancelled.
    Cancelled(CancellationToken),
    /// Neither: they end on their own or with the runtime.
    Detached,
}

impl Accept {
    /// A data listener (outbound, tunnel, inbound plaintext): it stops accepting when the proxy drains,
    /// and the drain waits for its connections.
    pub fn data(proxy: &Proxy, name: Listener, limiter: ConnLimiter) -> Accept {
        Accept {
            name,
            limiter,
            stop: Some(proxy.shutdown.clone()),
            connections: Connections::Drained(proxy.tasks.clone()),
            quiet_refusals: false,
        }
    }
}

impl Connections {
    fn spawn<Fut>(&self, conn: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self {
            Connections::Drained(tasks) => {
                tasks.spawn(conn);
            }
            Connections::Cancelled(token) => {
                let token = token.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = conn => {}
                        () = token.cancelled() => {}
                    }
                });
            }
            Connections::Detached => {
                tokio::spawn(conn);
            }
        }
    }
}

/// Accepts on a data listener (capped at `limits.max_connections`) until the proxy drains (see
/// [`Accept::data`]); each connection is `handle(tcp, client, proxy)`.
pub async fn serve_data<F, Fut>(listener: TcpListener, proxy: Arc<Proxy>, name: Listener, handle: F)
where
    F: Fn(TcpStream, SocketAddr, Arc<Proxy>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limiter = ConnLimiter::new(proxy.config.limits.max_connections);
    let opts = Accept::data(&proxy, name, limiter);
    let p = proxy.clone();
    accept(listener, &proxy.metrics, opts, move |tcp, client| {
        handle(tcp, client, p.clone())
    })
    .await
}

/// The accept loop of every TCP listener: each connection runs `handle` as its own task holding a
/// limiter permit, spawned as `opts.connections` says, until `opts.stop` is cancelled.
pub async fn accept<F, Fut>(listener: TcpListener, metrics: &Metrics, opts: Accept, mut handle: F)
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = opts.name;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stopped(opts.stop.as_ref()) => break,
        };
        let (tcp, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                metrics.reject(name, Reason::AcceptError);
                tracing::warn!(listener = name.as_str(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = opts.limiter.try_acquire() else {
            metrics.reject(name, Reason::MaxConnections);
            if opts.quiet_refusals {
                tracing::debug!(listener = name.as_str(), %client, "connection refused: listener is at its connection limit");
            } else {
                tracing::warn!(listener = name.as_str(), %client, "connection refused: listener is at its connection limit");
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = handle(tcp, client);
        opts.connections.spawn(async move {
            let _permit = permit;
            conn.await
        });
    }
    tracing::debug!(listener = name.as_str(), "stopped accepting");
}

/// Resolves when `stop` is cancelled; never without one.
async fn stopped(stop: Option<&CancellationToken>) {
    match stop {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
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
    let streams = OpenStreams::default();
    let conn = http2_builder(proxy).serve_connection(io, streams.count(svc));
    tokio::pin!(conn);
    let idle = h2_idle_timeout(proxy, listener);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = proxy.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = streams.idle_for(idle) => {
            // GOAWAY: the client opens a new connection for its next request.
            proxy.metrics.reject(listener, Reason::IdleTimeout);
            tracing::debug!(listener = listener.as_str(), %client, ?idle, "HTTP/2 connection closed: no open stream for its idle timeout");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        report(proxy, listener, client, &e);
    }
}

/// How long an HTTP/2 connection of `listener` may have no open stream: peer proxies' pooled
/// connections (the tunnel) are cheap to reopen, so they go sooner than apps' connections.
fn h2_idle_timeout(proxy: &Proxy, listener: Listener) -> Duration {
    let l = &proxy.config.limits;
    match listener {
        Listener::Tunnel => l.tunnel_idle_timeout.get(),
        _ => l.h2_idle_timeout.get(),
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
        .max_frame_size(crate::path::pool::MAX_FRAME)
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

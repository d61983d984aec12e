//! Demo applications that know nothing about the mesh, and clients for them.
//!
//! These are the "apps" whose traffic Weft's proxies carry. End-to-end tests run them in-process on
//! `127.0.0.1:0`, and `examples/demo-app.rs` runs them as a standalone binary.
//!
//! - [`http::serve`]: HTTP/1.1 and HTTP/2 (h2c prior knowledge) on one port, with JSON `/info`, streaming
//!   `/echo` and `/count`, `/chunked`, `/slow`, a WebSocket echo on `/ws` and gRPC-style unary and
//!   bidirectional streaming methods (see [`grpc`]).
//! - [`tcp::echo`] and [`tcp::banner`]: opaque TCP, including half-close and server-speaks-first.
//! - [`client`]: one client per behaviour above, each bounded by a timeout so a test never hangs.

pub mod client;
pub mod grpc;
pub mod http;
pub mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Error type for bodies whose errors come from several sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running demo app. Dropping it stops the app: the accept loop, every open connection and every
/// upgraded (WebSocket) session.
#[derive(Debug)]
pub struct AppHandle {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl AppHandle {
    /// The address the app listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections the app has accepted so far (lets a test tell reuse from reconnects).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for AppHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resolves once the app that handed it out has stopped. Tasks that outlive their connection (an
/// upgraded WebSocket) select on it, so dropping the [`AppHandle`] ends them too.
#[derive(Clone, Debug)]
pub(crate) struct Stopped(watch::Receiver<()>);

impl Stopped {
    pub(crate) async fn wait(mut self) {
        // `changed` fails once the sender, owned by the accept loop, is dropped.
        while self.0.changed().await.is_ok() {}
    }
}

/// Spawns an accept loop that runs `per_conn` for each connection.
///
/// Connection tasks live in a `JoinSet` owned by the loop, so aborting the loop aborts them all.
pub(crate) fn spawn_accept_loop<F, Fut>(
    listener: TcpListener,
    kind: &'static str,
    per_conn: F,
) -> AppHandle
where
    F: Fn(TcpStream, SocketAddr, Stopped) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener
        .local_addr()
        .expect("a bound listener has a local address");
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let (_stop_tx, stop_rx) = watch::channel(());
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                res = listener.accept() => match res {
                    Ok((stream, peer)) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(app = kind, %addr, %peer, "accepted");
                        let _ = stream.set_nodelay(true);
                        conns.spawn(per_conn(stream, peer, Stopped(stop_rx.clone())));
                    }
                    Err(error) => {
                        // Usually fd exhaustion; back off briefly instead of spinning.
                        tracing::warn!(app = kind, %addr, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                // Reap finished connections so the set does not grow without bound.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    AppHandle {
        addr,
        accepted,
        task,
    }
}

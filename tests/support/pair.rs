//! A two-proxy scenario on loopback, as most data-path tests need it:
//!
//! ```text
//! test client -> client-side proxy (outbound listeners) ==mTLS HTTP/2==> server-side proxy (tunnel) -> apps
//! ```
//!
//! The server side's apps are in-process demo apps on their own ports: an HTTP app, a TCP echo and a
//! banner (server-speaks-first) service. The client side gets one outbound listener for each.

use crate::apps::{self, AppHandle};
use crate::pki::{IdentityFiles, Pki};
use crate::proxy::{ProxyBuilder, ProxyProc};
use std::net::SocketAddr;

pub struct Pair {
    pub pki: Pki,
    pub client_id: IdentityFiles,
    pub server_id: IdentityFiles,
    pub http_app: AppHandle,
    pub tcp_app: AppHandle,
    pub banner_app: AppHandle,
    pub server: ProxyProc,
    pub client: ProxyProc,
}

/// Knobs for [`Pair::start`].
#[derive(Default)]
pub struct PairOptions {
    /// Extra YAML for the client-side proxy's config.
    pub client_yaml: String,
    /// Extra YAML for the server-side proxy's config.
    pub server_yaml: String,
    /// Protocol of the HTTP listener (`auto` when empty).
    pub http_protocol: &'static str,
    /// The server-side proxy serves `POST /shutdown` on its admin port.
    pub server_admin_shutdown: bool,
}

impl Pair {
    /// Indexes into `client.outbound`.
    pub const HTTP: usize = 0;
    pub const TCP: usize = 1;
    pub const BANNER: usize = 2;

    pub async fn start() -> Pair {
        Self::start_with(PairOptions::default()).await
    }

    pub async fn start_with(opts: PairOptions) -> Pair {
        let pki = Pki::new("weft.test");
        let client_id = pki.workload("default", "frontend");
        let server_id = pki.workload("default", "backend");
        let http_app = apps::http::serve(bind().await, "backend");
        let tcp_app = apps::tcp::echo(bind().await);
        let banner_app = apps::tcp::banner(bind().await, apps::tcp::DEFAULT_BANNER);
        // The server side runs the single-threaded scheduler and the client side the multi-threaded one,
        // so every pair test covers both.
        let mut server_b = ProxyBuilder::new("server", &server_id)
            .worker_threads(1)
            .extra_yaml(&opts.server_yaml);
        if opts.server_admin_shutdown {
            server_b = server_b.admin_shutdown();
        }
        let server = spawn_blocking(move || server_b.start()).await;
        let tunnel = server.tunnel;
        let proto = if opts.http_protocol.is_empty() {
            "auto"
        } else {
            opts.http_protocol
        };
        let client_b = ProxyBuilder::new("client", &client_id)
            .outbound(tunnel, &server_id.id, http_app.addr().port(), proto)
            .outbound(tunnel, &server_id.id, tcp_app.addr().port(), "auto")
            .outbound(tunnel, &server_id.id, banner_app.addr().port(), "auto")
            .extra_yaml(&opts.client_yaml);
        let client = spawn_blocking(move || client_b.start()).await;
        Pair {
            pki,
            client_id,
            server_id,
            http_app,
            tcp_app,
            banner_app,
            server,
            client,
        }
    }

    pub fn http(&self) -> SocketAddr {
        self.client.outbound[Self::HTTP]
    }
    pub fn tcp(&self) -> SocketAddr {
        self.client.outbound[Self::TCP]
    }
    pub fn banner(&self) -> SocketAddr {
        self.client.outbound[Self::BANNER]
    }
}

pub async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app port")
}

/// Runs blocking start-up (process spawn and readiness polling) off the async runtime.
pub async fn spawn_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

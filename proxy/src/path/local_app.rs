//! Connections from the tunnel to the local app: pooled keep-alive clients per app port, one speaking
//! HTTP/1.1 and one speaking HTTP/2 prior knowledge (chosen by what the calling app spoke).

use crate::path::body::Body;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppHttp {
    Http1,
    Http2,
}

/// Pooled clients to the app. The connector dials whatever the request URI names; callers build URIs
/// from the configured app host and the target port only.
pub struct AppClients {
    h1: Client<HttpConnector, Body>,
    h2: Client<HttpConnector, Body>,
}

impl AppClients {
    pub fn new(connect_timeout: Duration) -> AppClients {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(connect_timeout));
        conn.enforce_http(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(conn.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(true)
            .http2_initial_stream_window_size(4 * 1024 * 1024)
            .http2_initial_connection_window_size(16 * 1024 * 1024)
            .build(conn);
        AppClients { h1, h2 }
    }

    pub fn client(&self, which: AppHttp) -> &Client<HttpConnector, Body> {
        match which {
            AppHttp::Http1 => &self.h1,
            AppHttp::Http2 => &self.h2,
        }
    }
}

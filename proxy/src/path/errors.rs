//! What can go wrong while forwarding, and the one function that turns it into a response.

use crate::path::body::{self, Body};
use crate::path::headers::PROXY_ERROR;
use http::{HeaderValue, Response, StatusCode};
use std::net::SocketAddr;
use weft_certs::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connect to peer {peer} timed out")]
    PeerConnectTimeout { peer: SocketAddr },
    #[error("connect to peer {peer}: {source}")]
    PeerConnect {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with peer {peer} (expected identity {expected}) failed: {reason}")]
    PeerTls {
        peer: SocketAddr,
        expected: SpiffeId,
        reason: String,
    },
    #[error("HTTP/2 handshake with peer {peer}: {source}")]
    PeerHandshake {
        peer: SocketAddr,
        source: hyper::Error,
    },
    #[error("request to peer {peer} failed: {source}")]
    PeerRequest {
        peer: SocketAddr,
        source: hyper::Error,
    },
    #[error("peer {peer} refused the stream with status {status}")]
    PeerRefused {
        peer: SocketAddr,
        status: StatusCode,
    },
    #[error("connect to local app port {port}: {source}")]
    AppConnect { port: u16, source: std::io::Error },
    #[error("connect to local app port {port} timed out")]
    AppConnectTimeout { port: u16 },
    #[error("request to local app port {port} failed: {source}")]
    AppRequest { port: u16, source: BoxedSource },
    #[error("app port {port} is not open to peers")]
    PortNotAllowed { port: u16 },
    #[error("port {port} is the proxy's own, never delivered to")]
    ProxyPort { port: u16 },
    #[error("no config from the control plane yet: inbound traffic is refused until the policies protecting this workload are known")]
    NoPolicyView,
    #[error("bad request from peer: {0}")]
    BadTunnelRequest(&'static str),
    #[error("protocol upgrade failed: {0}")]
    Upgrade(String),
    #[error("the proxy is shutting down")]
    Draining,
    #[error("no endpoint for {0}")]
    NoEndpoint(String),
    #[error("request timed out after {0:?} (the route's request timeout)")]
    RequestTimeout(std::time::Duration),
    #[error("try timed out after {0:?} (the route's per-try timeout)")]
    PerTryTimeout(std::time::Duration),
    #[error("too many requests in flight to {0} (connection pool limit): shed")]
    Overflow(String),
    #[error("request path refused: {0}")]
    BadPath(String),
    /// Refused by an authorization policy; carries the 403 to answer.
    #[error("denied by an authorization policy")]
    Denied(Box<Response<Body>>),
}

pub type BoxedSource = Box<dyn std::error::Error + Send + Sync>;

impl ForwardError {
    /// The status a client sees for this error: 502 when the far side misbehaved or refused, 503 when it
    /// cannot be reached, 504 on time-outs, 4xx for requests we will not carry.
    pub fn status(&self) -> StatusCode {
        use ForwardError::*;
        match self {
            PeerConnectTimeout { .. }
            | AppConnectTimeout { .. }
            | RequestTimeout(_)
            | PerTryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            PeerConnect { .. }
            | AppConnect { .. }
            | Draining
            | NoEndpoint(_)
            | Overflow(_)
            | NoPolicyView => StatusCode::SERVICE_UNAVAILABLE,
            PeerTls { .. }
            | PeerHandshake { .. }
            | PeerRequest { .. }
            | AppRequest { .. }
            | Upgrade(_) => StatusCode::BAD_GATEWAY,
            PeerRefused { status, .. } => *status,
            PortNotAllowed { .. } | ProxyPort { .. } => StatusCode::FORBIDDEN,
            BadTunnelRequest(_) | BadPath(_) => StatusCode::BAD_REQUEST,
            Denied(_) => StatusCode::FORBIDDEN,
        }
    }

    /// A short machine-readable reason for the `weft-proxy-error` header and for metrics labels.
    pub fn kind(&self) -> &'static str {
        use ForwardError::*;
        match self {
            PeerConnectTimeout { .. } => "peer_connect_timeout",
            PeerConnect { .. } => "peer_connect",
            PeerTls { .. } => "peer_tls",
            PeerHandshake { .. } => "peer_handshake",
            PeerRequest { .. } => "peer_request",
            PeerRefused { .. } => "peer_refused",
            AppConnect { .. } => "app_connect",
            AppConnectTimeout { .. } => "app_connect_timeout",
            AppRequest { .. } => "app_request",
            PortNotAllowed { .. } => "port_not_allowed",
            ProxyPort { .. } => "proxy_port",
            NoPolicyView => "no_config",
            BadTunnelRequest(_) => "bad_tunnel_request",
            Upgrade(_) => "upgrade",
            Draining => "draining",
            NoEndpoint(_) => "no_endpoint",
            RequestTimeout(_) => "request_timeout",
            PerTryTimeout(_) => "per_try_timeout",
            Overflow(_) => "overflow",
            BadPath(_) => "bad_path",
            Denied(_) => "denied",
        }
    }

    /// True when nothing reached the far side, so the request may be sent again on another connection.
    pub fn is_connect_failure(&self) -> bool {
        use ForwardError::*;
        matches!(
            self,
            PeerConnectTimeout { .. } | PeerConnect { .. } | PeerTls { .. } | PeerHandshake { .. }
        )
    }
}

/// The response the proxy sends in place of one it could not get. The body says it came from the proxy.
pub fn error_response(e: &ForwardError) -> Response<Body> {
    let mut resp = Response::new(body::full(format!("weft-proxy: {e}\n")));
    *resp.status_mut() = e.status();
    resp.headers_mut()
        .insert(PROXY_ERROR, HeaderValue::from_static(e.kind()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

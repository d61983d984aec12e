//! Every answer the proxy makes itself instead of carrying one: what went wrong ([`ProxyError`]) and
//! the one function that turns it into a response ([`answer`]). Each such response says where it came
//! from: a `weft-proxy-error: <kind>` header and a body that starts with `weft-proxy:`. (HTTP/1 heads
//! hyper cannot parse, or over its size limits, are answered 400/431 by hyper itself and counted in
//! `listen::report`.)

use crate::path::body::{self, Body};
use crate::path::headers::{DENIED_BY, PROXY_ERROR};
use crate::telemetry::labels::Reason;
use http::{header, HeaderValue, Response, StatusCode};
use std::net::SocketAddr;
use std::time::Duration;
use weft_certs::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
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
    #[error(
        "this proxy's certificate expired at {} and has not been renewed (is the control plane \
         reachable?): it refuses mTLS to peers until it is renewed, and never sends the request in plaintext",
        crate::control::clock::rfc3339(*.not_after)
    )]
    CertificateExpired { not_after: std::time::SystemTime },
    #[error("HTTP/2 handshake with peer {peer}: {source}")]
    PeerHandshake { peer: SocketAddr, source: h2::Error },
    #[error("request to peer {peer} failed: {source}")]
    PeerRequest { peer: SocketAddr, source: h2::Error },
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
    #[error("denied by AuthorizationPolicy {policy} ({reason})")]
    Denied {
        policy: String,
        reason: &'static str,
    },
    #[error("over the route's rate limit")]
    RateLimited { retry_after: Duration },
    #[error("CONNECT is not carried by weft-proxy listeners")]
    ConnectNotCarried,
    #[error("both Content-Length and Transfer-Encoding")]
    ConflictingFraming,
}

pub type BoxedSource = Box<dyn std::error::Error + Send + Sync>;

impl ProxyError {
    /// The status a client sees for this error: 502 when the far side misbehaved or refused, 503 when it
    /// cannot be reached, 504 on time-outs, 4xx for requests we will not carry.
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            PeerConnectTimeout { .. }
            | AppConnectTimeout { .. }
            | RequestTimeout(_)
            | PerTryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            PeerConnect { .. }
            | AppConnect { .. }
            | NoEndpoint(_)
            | Overflow(_)
            | NoPolicyView
            | CertificateExpired { .. } => StatusCode::SERVICE_UNAVAILABLE,
            PeerTls { .. } | PeerHandshake { .. } | PeerRequest { .. } | AppRequest { .. } => {
                StatusCode::BAD_GATEWAY
            }
            PeerRefused { status, .. } => *status,
            PortNotAllowed { .. } | ProxyPort { .. } => StatusCode::FORBIDDEN,
            BadTunnelRequest(_) | BadPath(_) | ConflictingFraming => StatusCode::BAD_REQUEST,
            Denied { .. } => StatusCode::FORBIDDEN,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ConnectNotCarried => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A short machine-readable reason for the `weft-proxy-error` header and for metrics labels.
    pub fn kind(&self) -> Reason {
        use ProxyError::*;
        match self {
            PeerConnectTimeout { .. } => Reason::PeerConnectTimeout,
            PeerConnect { .. } => Reason::PeerConnect,
            PeerTls { .. } => Reason::PeerTls,
            CertificateExpired { .. } => Reason::CertExpired,
            PeerHandshake { .. } => Reason::PeerHandshake,
            PeerRequest { .. } => Reason::PeerRequest,
            PeerRefused { .. } => Reason::PeerRefused,
            AppConnect { .. } => Reason::AppConnect,
            AppConnectTimeout { .. } => Reason::AppConnectTimeout,
            AppRequest { .. } => Reason::AppRequest,
            PortNotAllowed { .. } => Reason::PortNotAllowed,
            ProxyPort { .. } => Reason::ProxyPort,
            NoPolicyView => Reason::NoConfig,
            BadTunnelRequest(_) => Reason::BadTunnelRequest,
            NoEndpoint(_) => Reason::NoEndpoint,
            RequestTimeout(_) => Reason::RequestTimeout,
            PerTryTimeout(_) => Reason::PerTryTimeout,
            Overflow(_) => Reason::Overflow,
            BadPath(_) => Reason::BadPath,
            Denied { .. } => Reason::Denied,
            RateLimited { .. } => Reason::RateLimited,
            ConnectNotCarried => Reason::ConnectNotCarried,
            ConflictingFraming => Reason::BadRequest,
        }
    }

    /// True when nothing reached the far side, so the request may be sent again on another connection.
    pub fn is_connect_failure(&self) -> bool {
        use ProxyError::*;
        matches!(
            self,
            PeerConnectTimeout { .. } | PeerConnect { .. } | PeerTls { .. } | PeerHandshake { .. }
        )
    }
}

/// The response the proxy sends in place of one it could not get, or instead of carrying a request it
/// refuses. The body and the `weft-proxy-error` header say it came from the proxy.
pub fn answer(e: &ProxyError) -> Response<Body> {
    let mut resp = Response::new(body::full(format!("weft-proxy: {e}\n")));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(PROXY_ERROR, HeaderValue::from_static(e.kind().as_str()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match e {
        ProxyError::Denied { policy, .. } => {
            if let Ok(v) = HeaderValue::from_str(policy) {
                h.insert(DENIED_BY, v);
            }
        }
        ProxyError::RateLimited { retry_after } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        // The rest of the connection's bytes cannot be framed: close it.
        ProxyError::ConflictingFraming => {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let over = |ms| {
            answer(&ProxyError::RateLimited {
                retry_after: Duration::from_millis(ms),
            })
        };
        let resp = over(1500);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        assert_eq!(over(10).headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn every_answer_says_it_came_from_the_proxy() {
        let denied = answer(&ProxyError::Denied {
            policy: "default/deny-all".into(),
            reason: "no ALLOW policy matched",
        });
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert_eq!(denied.headers()[PROXY_ERROR], "denied");
        assert_eq!(denied.headers()[DENIED_BY], "default/deny-all");
        let framing = answer(&ProxyError::ConflictingFraming);
        assert_eq!(framing.status(), StatusCode::BAD_REQUEST);
        assert_eq!(framing.headers()[header::CONNECTION], "close");
        assert_eq!(framing.headers()[PROXY_ERROR], "bad_request");
        let connect = answer(&ProxyError::ConnectNotCarried);
        assert_eq!(connect.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(connect.headers().contains_key(PROXY_ERROR));
    }
}

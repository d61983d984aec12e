//! Port 15014: health and metrics (open), and the operator API under `/v1` (bearer token required).
//! The routes are listed in `weft_api::operator`.

use crate::http_util::{self, Body};
use crate::resources_api;
use crate::server::ControlPlane;
use crate::tokens::{constant_time_eq, CreateError};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use weft_api::operator::{TokenCreated, TokenRequest, WhyRequest};

const MAX_REQUEST: usize = 8 << 20;

/// Limits of the operator API and the metrics listener (each) against clients that connect and then
/// say nothing, or say it slowly.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once (weftctl, dashboards and Prometheus need a handful); more are closed at
    /// accept and logged.
    pub max_connections: usize,
    /// A request head (the first, or the next on a kept-alive connection) must arrive whole within this.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
        }
    }
}

pub async fn run(listener: TcpListener, cp: Arc<ControlPlane>) {
    crate::server::accept_loop(
        listener,
        &cp,
        "operator API",
        cp.operator_limits.max_connections,
        |tcp, addr| connection(tcp, addr, cp.clone()),
    )
    .await
}

async fn connection(tcp: tokio::net::TcpStream, addr: std::net::SocketAddr, cp: Arc<ControlPlane>) {
    let timeout = cp.operator_limits.header_timeout;
    let svc = hyper::service::service_fn(move |req| {
        let cp = cp.clone();
        async move { Ok::<_, std::convert::Infallible>(route(req, &cp).await) }
    });
    serve_http1(tcp, addr, svc, "operator", timeout).await
}

/// One plain HTTP/1 connection with the operator port's limits (header read timeout, buffer size).
async fn serve_http1<S>(
    tcp: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    svc: S,
    what: &str,
    header_timeout: Duration,
) where
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 << 10)
        .serve_connection(TokioIo::new(tcp), svc);
    if let Err(e) = conn.await {
        tracing::debug!(peer = %addr, error = %e, "{what} connection ended");
    }
}

async fn route(req: Request<Incoming>, cp: &Arc<ControlPlane>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(r) = open_endpoint(&req, cp) {
        return r;
    }
    if path.starts_with("/v1/") {
        if let Some(refusal) = unauthorized(&req, cp) {
            return refusal;
        }
        return v1(req, cp, &path).await;
    }
    not_found(&path)
}

/// Health and metrics: open to anyone who can reach the port.
fn open_endpoint(req: &Request<Incoming>, cp: &ControlPlane) -> Option<Response<Body>> {
    if req.method() != Method::GET {
        return None;
    }
    Some(match req.uri().path() {
        "/live" => http_util::text(StatusCode::OK, "live\n"),
        "/ready" if cp.shutdown.is_cancelled() => {
            http_util::text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        }
        "/ready" => http_util::text(StatusCode::OK, "ready\n"),
        "/metrics" => {
            let mut r = Response::new(http_util::full(cp.metrics.encode_all()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => return None,
    })
}

fn not_found(path: &str) -> Response<Body> {
    http_util::error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {path}"),
        vec![],
    )
}

/// `--metrics-listen`: only `/metrics`, `/live` and `/ready` (no operator API), for a Prometheus on a
/// network that must not reach the operator API.
pub async fn run_metrics(listener: TcpListener, cp: Arc<ControlPlane>) {
    let max = cp.operator_limits.max_connections;
    crate::server::accept_loop(listener, &cp, "metrics", max, |tcp, addr| {
        metrics_connection(tcp, addr, cp.clone())
    })
    .await
}

async fn metrics_connection(
    tcp: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    cp: Arc<ControlPlane>,
) {
    let timeout = cp.operator_limits.header_timeout;
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let r = open_endpoint(&req, &cp).unwrap_or_else(|| not_found(req.uri().path()));
        async move { Ok::<_, std::convert::Infallible>(r) }
    });
    serve_http1(tcp, addr, svc, "metrics", timeout).await
}

/// The 401 to answer with, unless the request carries the operator token.
fn unauthorized(req: &Request<Incoming>, cp: &ControlPlane) -> Option<Response<Body>> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), cp.operator_token.as_bytes()) => None,
        other => {
            let why = if other.is_some() {
                "the operator token is not valid"
            } else {
                "the operator API requires `Authorization: Bearer <operator token>` (the token is in <state-dir>/operator.token)"
            };
            tracing::warn!(path = %req.uri().path(), "operator request refused: {why}");
            let mut r = http_util::error(StatusCode::UNAUTHORIZED, why, vec![]);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"weft\""),
            );
            Some(r)
        }
    }
}

/// `GET /v1/mesh`: the mesh, and who leads (readers of [`weft_api::operator::MeshInfo`] ignore the
/// extra fields).
#[derive(serde::Serialize)]
struct MeshAnswer {
    #[serde(flatten)]
    info: weft_api::operator::MeshInfo,
    /// The replica id of the leader, when one is known (`null` during an election).
    leader: Option<String>,
    /// The replica id of the one that answered.
    replica: String,
}

async fn v1(req: Request<Incoming>, cp: &Arc<ControlPlane>, path: &str) -> Response<Body> {
    let segments: Vec<&str> = path
        .trim_start_matches("/v1/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["status"]) => http_util::json(StatusCode::OK, &cp.hub.status()),
        (Method::GET, ["mesh"]) => {
            let mut info = cp.mesh_info.clone();
            info.services = cp.hub.service_addresses();
            let answer = MeshAnswer {
                info,
                leader: cp.leadership.borrow().leader.clone(),
                replica: cp.leader.replica_id.clone(),
            };
            http_util::json(StatusCode::OK, &answer)
        }
        (Method::GET, ["stats"]) => crate::stats::get(&cp.stats, req.uri().query()),
        (Method::POST, ["why"]) => why(req, cp).await,
        (Method::POST, ["apply"]) => resources_api::apply(req, cp).await,
        (Method::GET, ["resources", kind]) => resources_api::get(cp, kind, None, None).await,
        (Method::GET, ["resources", kind, ns]) => {
            resources_api::get(cp, kind, Some(ns), None).await
        }
        (Method::GET, ["resources", kind, ns, name]) => {
            resources_api::get(cp, kind, Some(ns), Some(name)).await
        }
        (Method::DELETE, ["resources", kind, ns, name]) => {
            resources_api::delete(req, cp, kind, ns, name).await
        }
        (Method::GET, ["revocations"]) => {
            http_util::json(StatusCode::OK, &cp.issuer.revocations().list())
        }
        (Method::POST, ["revocations"]) => revocation(req, cp, true).await,
        (Method::POST, ["revocations", "remove"]) => revocation(req, cp, false).await,
        (Method::GET, ["tokens"]) => http_util::json(StatusCode::OK, &cp.issuer.tokens().list()),
        (Method::POST, ["tokens"]) => create_token(req, cp).await,
        (Method::DELETE, ["tokens", id]) => match cp.issuer.tokens().revoke(id) {
            Ok(info) => {
                tracing::info!(id, identity = %info.identity, "join token revoked");
                http_util::json(StatusCode::OK, &info)
            }
            Err(e) => create_error(e),
        },
        _ => http_util::error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {} {path}", req.method()),
            vec![],
        ),
    }
}

async fn create_token(req: Request<Incoming>, cp: &ControlPlane) -> Response<Body> {
    let body: TokenRequest =
        match http_util::read_json(req.into_body(), MAX_REQUEST, cp.operator_body_timeout).await {
            Ok(b) => b,
            Err(r) => return r,
        };
    let res = cp.issuer.tokens().create(&crate::tokens::NewToken {
        namespace: body.namespace,
        service_account: body.service_account,
        ttl_secs: body.ttl_secs,
        max_uses: body.max_uses,
        workload: body.workload,
        labels: body.labels,
    });
    match res {
        Ok((token, info)) => {
            tracing::info!(id = %info.id, identity = %info.identity, workload = ?info.workload, ttl_secs = info.expires_at - info.created_at, "join token created");
            http_util::json(StatusCode::CREATED, &TokenCreated { token, info })
        }
        Err(e) => {
            tracing::warn!(error = %e, "join token refused");
            create_error(e)
        }
    }
}

/// Revokes (or, with `revoke` false, lifts) a workload or identity.
async fn revocation(req: Request<Incoming>, cp: &ControlPlane, revoke: bool) -> Response<Body> {
    use crate::revocation::RevocationError;
    use weft_api::operator::RevocationTarget;
    let target: RevocationTarget =
        match http_util::read_json(req.into_body(), MAX_REQUEST, cp.operator_body_timeout).await {
            Ok(t) => t,
            Err(r) => return r,
        };
    if let RevocationTarget::Identity(id) = &target {
        if id.trust_domain() != cp.issuer.trust_domain().as_str() || id.namespace().is_none() {
            return http_util::error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{id} is not a workload identity of this mesh (spiffe://{}/ns/NS/sa/SA)",
                    cp.issuer.trust_domain()
                ),
                vec![],
            );
        }
    }
    let res = if revoke {
        cp.revoke(target)
    } else {
        cp.unrevoke(&target)
    };
    match res {
        Ok(rev) => http_util::json(StatusCode::OK, &rev),
        Err(e) => {
            let status = match &e {
                RevocationError::State(e) => return http_util::not_saved("revocation", e),
                RevocationError::AlreadyRevoked(_) => StatusCode::CONFLICT,
                RevocationError::NotRevoked(_) => StatusCode::NOT_FOUND,
                RevocationError::BadWorkload(_) => StatusCode::BAD_REQUEST,
            };
            http_util::error(status, e.to_string(), vec![])
        }
    }
}

async fn why(req: Request<Incoming>, cp: &ControlPlane) -> Response<Body> {
    let q: WhyRequest =
        match http_util::read_json(req.into_body(), MAX_REQUEST, cp.operator_body_timeout).await {
            Ok(q) => q,
            Err(r) => return r,
        };
    match cp.hub.why(&q) {
        Ok(answer) => http_util::json(StatusCode::OK, &answer),
        Err(e) if e.is_not_found() => {
            http_util::error(StatusCode::NOT_FOUND, e.to_string(), vec![])
        }
        Err(e) => http_util::error(StatusCode::BAD_REQUEST, e.to_string(), vec![]),
    }
}

fn create_error(e: CreateError) -> Response<Body> {
    let status = match &e {
        CreateError::State(e) => return http_util::not_saved("token", e),
        CreateError::Identity(_)
        | CreateError::ControlPlane(_)
        | CreateError::TooLong { .. }
        | CreateError::Claim(_) => StatusCode::BAD_REQUEST,
        CreateError::NotFound(_) => StatusCode::NOT_FOUND,
    };
    http_util::error(status, e.to_string(), vec![])
}

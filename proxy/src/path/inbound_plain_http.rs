//! HTTP from outside the mesh (PERMISSIVE plaintext inbound), carried request by request so the app
//! never sees what only the mesh may say: `x-forwarded-client-cert` (the caller's verified identity) and
//! Weft's own `weft-*` headers are removed, as the tunnel removes them from what peers' apps sent.
//! Requests with both `Content-Length` and `Transfer-Encoding` are refused (see [`crate::path::h1_guard`]);
//! authorization policies apply to each request (the caller has no identity, so it matches no `from`),
//! and route rate limits (plaintext callers share one bucket per rule, having no identity).

use crate::path::body::{self, Body};
use crate::path::detect::Detected;
use crate::path::errors::{answer, ProxyError};
use crate::path::h1_guard::{ConflictFlag, H1Guard};
use crate::path::headers;
use crate::path::local_app::AppHttp;
use crate::state::Proxy;
use crate::telemetry::labels::{Direction, Listener};
use crate::telemetry::record::Record;
use crate::traffic::mesh::MeshView;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// One plaintext connection already detected as HTTP/1 or HTTP/2 (prior knowledge).
pub async fn serve<IO>(
    io: IO,
    detected: Detected,
    client: SocketAddr,
    port: u16,
    proxy: &Arc<Proxy>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let which = match detected {
        Detected::Http2 => AppHttp::Http2,
        _ => AppHttp::Http1,
    };
    let conflict = ConflictFlag::default();
    let flag = conflict.clone();
    let p = proxy.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let proxy = p.clone();
        let conflict = flag.clone();
        async move {
            let framing_conflict =
                conflict.is_set() && req.headers().contains_key(header::TRANSFER_ENCODING);
            Ok::<_, std::convert::Infallible>(
                handle_request(req, framing_conflict, client, port, which, &proxy).await,
            )
        }
    });
    match which {
        AppHttp::Http1 => {
            let io = TokioIo::new(H1Guard::new(io, conflict));
            crate::path::listen::http1_connection(io, svc, proxy, Listener::Inbound, client).await
        }
        AppHttp::Http2 => {
            let io = TokioIo::new(io);
            crate::path::listen::http2_connection(io, svc, proxy, Listener::Inbound, client).await
        }
    }
}

/// One request from outside the mesh; its record goes out with the response.
async fn handle_request(
    mut req: Request<Incoming>,
    framing_conflict: bool,
    client: SocketAddr,
    port: u16,
    which: AppHttp,
    proxy: &Arc<Proxy>,
) -> Response<Body> {
    if framing_conflict {
        // Refused before it is a request: counted as a rejection, never as a request.
        let e = ProxyError::ConflictingFraming;
        proxy.metrics.reject(Listener::Inbound, e.kind());
        tracing::info!(%client, port, reason = e.kind().as_str(), "inbound plaintext request refused: {e}");
        return answer(&e);
    }
    let mut record = Record::http(proxy, Direction::Inbound, &mut req);
    let result = to_app(req, client, port, which, proxy, &mut record).await;
    let resp = result.unwrap_or_else(|e| refuse(proxy, client, port, &e, &mut record));
    record.respond(resp)
}

/// Answers a request the proxy will not (or could not) carry to the app: counted and logged, unless
/// the authorizer or the rate limiter already did.
fn refuse(
    proxy: &Proxy,
    client: SocketAddr,
    port: u16,
    e: &ProxyError,
    record: &mut Record,
) -> Response<Body> {
    record.failed(e);
    if !matches!(
        e,
        ProxyError::Denied { .. } | ProxyError::RateLimited { .. }
    ) {
        proxy.metrics.reject(Listener::Inbound, e.kind());
        tracing::info!(%client, port, error = %e, "inbound plaintext request refused");
    }
    answer(e)
}

/// Removes what a client outside the mesh may not say, logging a forged caller identity, and says who
/// it is from the socket (any `x-forwarded-for`/`forwarded` it sent is replaced).
fn strip_from_outside(h: &mut http::HeaderMap, client: SocketAddr, port: u16) {
    if h.contains_key(headers::XFCC) {
        tracing::info!(%client, port, "x-forwarded-client-cert from a client outside the mesh removed");
    }
    headers::strip_mesh_headers(h);
    headers::set_forwarded_for(h, client.ip());
}

/// Admitted against one mesh view (authorization, then rate limits), then carried to the app.
async fn to_app(
    mut req: Request<Incoming>,
    client: SocketAddr,
    port: u16,
    which: AppHttp,
    proxy: &Arc<Proxy>,
    record: &mut Record,
) -> Result<Response<Body>, ProxyError> {
    strip_from_outside(req.headers_mut(), client, port);
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadTunnelRequest(
            "CONNECT is not carried on the plaintext inbound path",
        ));
    }
    let mesh = proxy.mesh();
    authorize(&mut req, port, proxy, &mesh)?;
    let view = crate::traffic::route::RequestView {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    crate::traffic::ratelimit::check(proxy, &mesh, Listener::Inbound, None, port, Some(&view))?;
    drop(mesh);
    record.delivered_to(proxy.delivery.app_addr(port));
    if req.version() == Version::HTTP_11 {
        if let Some(proto) = headers::upgrade_protocol(req.headers()) {
            return Box::pin(upgrade(req, proto, port, proxy)).await;
        }
    }
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.uri = proxy.delivery.app_uri(port, &parts.uri)?;
    parts.version = match which {
        AppHttp::Http1 => Version::HTTP_11,
        AppHttp::Http2 => Version::HTTP_2,
    };
    let req = Request::from_parts(parts, record.request_body(body::boxed(body)));
    let resp = proxy.apps.send(which, req).await?;
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body))
}

/// The workload's policies for a caller without identity, on the normalised path (sent on normalised,
/// so the app sees what the policy saw), as the tunnel applies them to peers.
fn authorize(
    req: &mut Request<Incoming>,
    port: u16,
    proxy: &Proxy,
    mesh: &MeshView,
) -> Result<(), ProxyError> {
    if mesh.authorizer.is_empty() {
        return Ok(());
    }
    let path = crate::traffic::authz::normalize::normalize(req.uri().path())
        .map_err(|e| ProxyError::BadPath(e.to_string()))?;
    if path != req.uri().path() {
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        *req.uri_mut() = pq
            .parse()
            .map_err(|_| ProxyError::BadPath(format!("`{path}` is not a valid path")))?;
    }
    let method = req.method().as_str().to_string();
    let subject = crate::traffic::authz::Subject {
        source: None,
        port,
        http: Some(crate::traffic::authz::HttpSubject {
            method: &method,
            path: &path,
            headers: req.headers(),
        }),
    };
    crate::traffic::authz::authorize(proxy, mesh, &subject)
}

/// An HTTP/1.1 upgrade (WebSocket): replayed to the app on a connection of its own; on 101 both
/// upgraded streams are spliced.
async fn upgrade(
    mut req: Request<Incoming>,
    proto: String,
    port: u16,
    proxy: &Arc<Proxy>,
) -> Result<Response<Body>, ProxyError> {
    let from_client = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let h = &mut parts.headers;
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let upgrade = HeaderValue::from_str(&proto)
        .map_err(|_| ProxyError::BadTunnelRequest("bad Upgrade header"))?;
    h.insert(header::UPGRADE, upgrade);
    parts.extensions = Default::default();
    let app = proxy.delivery.app_addr(port);
    let timeout = proxy.config.limits.connect_timeout.get();
    let tcp = crate::socket::connect(app, timeout)
        .await
        .map_err(|source| ProxyError::AppConnect { port, source })?;
    let app_err = |e: hyper::Error| ProxyError::AppRequest {
        port,
        source: Box::new(e),
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(app_err)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = send
        .send_request(Request::from_parts(parts, body::empty()))
        .await
        .map_err(app_err)?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut p, b) = resp.into_parts();
        headers::strip_hop_by_hop(&mut p.headers);
        return Ok(Response::from_parts(p, body::boxed(b)));
    }
    let from_app = hyper::upgrade::on(&mut resp);
    let mut out = Response::new(body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *out.headers_mut() = std::mem::take(resp.headers_mut());
    crate::path::inbound::splice_upgraded(proxy, Listener::Inbound, (from_client, None), from_app);
    Ok(out)
}

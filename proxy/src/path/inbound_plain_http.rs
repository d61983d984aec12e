//! HTTP from outside the mesh (PERMISSIVE plaintext inbound), carried request by request so the app
//! never sees what only the mesh may say: `x-forwarded-client-cert` (the caller's verified identity) and
//! Weft's own `weft-*` headers are removed, as the tunnel removes them from what peers' apps sent.
//! Requests with both `Content-Length` and `Transfer-Encoding` are refused (see [`crate::path::h1_guard`]);
//! authorization policies apply to each request (the caller has no identity, so it matches no `from`),
//! and route rate limits (plaintext callers share one bucket per rule, having no identity).

use crate::path::body::{self, Body};
use crate::path::detect::Detected;
use crate::path::errors::{error_response, ForwardError};
use crate::path::h1_guard::{ConflictFlag, H1Guard};
use crate::path::headers;
use crate::path::local_app::AppHttp;
use crate::state::Proxy;
use crate::telemetry::metrics::Direction;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
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
            if conflict.is_set() && req.headers().contains_key(header::TRANSFER_ENCODING) {
                return Ok::<_, std::convert::Infallible>(refuse_conflicting_framing(
                    &proxy, client,
                ));
            }
            let resp = to_app(req, client, port, which, &proxy)
                .await
                .unwrap_or_else(|e| match e {
                    // Logged and counted by the authorizer.
                    ForwardError::Denied(r) => *r,
                    e => {
                        proxy.metrics.reject("inbound", e.kind());
                        tracing::info!(%client, port, error = %e, "inbound plaintext request failed");
                        error_response(&e)
                    }
                });
            proxy
                .metrics
                .count_request(Direction::inbound, resp.status());
            Ok(resp)
        }
    });
    match which {
        AppHttp::Http1 => {
            let io = TokioIo::new(H1Guard::new(io, conflict));
            crate::path::listen::http1_connection(io, svc, proxy, "inbound", client).await
        }
        AppHttp::Http2 => {
            crate::path::listen::http2_connection(TokioIo::new(io), svc, proxy, "inbound", client)
                .await
        }
    }
}

fn refuse_conflicting_framing(proxy: &Proxy, client: SocketAddr) -> Response<Body> {
    proxy.metrics.reject("inbound", "bad_request");
    tracing::info!(%client, reason = "bad_request", "inbound plaintext request refused: both Content-Length and Transfer-Encoding");
    let mut r = Response::new(body::full(
        "weft-proxy: both Content-Length and Transfer-Encoding\n",
    ));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
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

async fn to_app(
    mut req: Request<Incoming>,
    client: SocketAddr,
    port: u16,
    which: AppHttp,
    proxy: &Arc<Proxy>,
) -> Result<Response<Body>, ForwardError> {
    strip_from_outside(req.headers_mut(), client, port);
    if req.method() == Method::CONNECT {
        return Err(ForwardError::BadTunnelRequest(
            "CONNECT is not carried on the plaintext inbound path",
        ));
    }
    authorize(&mut req, port, proxy)?;
    let view = crate::traffic::route::RequestView {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    if let Some(refused) =
        crate::traffic::ratelimit::check(proxy, "inbound", None, port, Some(&view))
    {
        return Ok(refused);
    }
    if req.version() == Version::HTTP_11 {
        if let Some(proto) = headers::upgrade_protocol(req.headers()) {
            return Box::pin(upgrade(req, proto, port, proxy)).await;
        }
    }
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.uri = app_uri(&parts.uri, proxy.delivery.app_addr(port))?;
    parts.version = match which {
        AppHttp::Http1 => Version::HTTP_11,
        AppHttp::Http2 => Version::HTTP_2,
    };
    let req = Request::from_parts(parts, body::boxed(body));
    let resp = proxy
        .apps
        .client(which)
        .request(req)
        .await
        .map_err(|e| crate::path::inbound::app_request_error(port, e))?;
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body::boxed(body)))
}

/// The workload's policies for a caller without identity, on the normalised path (sent on normalised,
/// so the app sees what the policy saw), as the tunnel applies them to peers.
fn authorize(req: &mut Request<Incoming>, port: u16, proxy: &Proxy) -> Result<(), ForwardError> {
    if proxy.mesh().authorizer.is_empty() {
        return Ok(());
    }
    let path = crate::traffic::authz::normalize::normalize(req.uri().path())
        .map_err(|e| ForwardError::BadPath(e.to_string()))?;
    if path != req.uri().path() {
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        *req.uri_mut() = pq
            .parse()
            .map_err(|_| ForwardError::BadPath(format!("`{path}` is not a valid path")))?;
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
    match crate::traffic::authz::authorize(proxy, &subject) {
        None => Ok(()),
        Some(denied) => Err(ForwardError::Denied(Box::new(denied))),
    }
}

fn app_uri(uri: &Uri, app: SocketAddr) -> Result<Uri, ForwardError> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme("http")
        .authority(app.to_string())
        .path_and_query(pq)
        .build()
        .map_err(|_| ForwardError::BadTunnelRequest("request target is not a valid URI"))
}

/// An HTTP/1.1 upgrade (WebSocket): replayed to the app on a connection of its own; on 101 both
/// upgraded streams are spliced.
async fn upgrade(
    mut req: Request<Incoming>,
    proto: String,
    port: u16,
    proxy: &Arc<Proxy>,
) -> Result<Response<Body>, ForwardError> {
    let from_client = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let h = &mut parts.headers;
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let upgrade = HeaderValue::from_str(&proto)
        .map_err(|_| ForwardError::BadTunnelRequest("bad Upgrade header"))?;
    h.insert(header::UPGRADE, upgrade);
    parts.extensions = Default::default();
    let app = proxy.delivery.app_addr(port);
    let timeout = proxy.config.limits.connect_timeout.get();
    let tcp = crate::socket::connect(app, timeout)
        .await
        .map_err(|source| ForwardError::AppConnect { port, source })?;
    let app_err = |e: hyper::Error| ForwardError::AppRequest {
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
    crate::path::inbound::splice_upgraded(proxy, from_client, from_app);
    Ok(out)
}

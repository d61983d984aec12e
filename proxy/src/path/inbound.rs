//! Inbound: the tunnel port (15008). Peers connect with mutual TLS 1.3 and HTTP/2; the client's SPIFFE ID
//! comes from its verified certificate. HTTP requests go to the local app as HTTP/1.1 or HTTP/2 (whichever
//! the calling app spoke), CONNECT streams are spliced to the app port, and extended CONNECT (WebSocket)
//! is replayed to the app as an HTTP/1.1 upgrade.

use crate::path::body::{self, Body};
use crate::path::errors::{error_response, ForwardError};
use crate::path::headers::{self, ORIG_PROTO, TARGET_PORT, XFCC};
use crate::path::listen::{self, ConnLimiter};
use crate::path::local_app::AppHttp;
use crate::path::splice::splice;
use crate::state::Proxy;
use crate::telemetry::metrics::{ActiveGuard, ConnLabels, Direction};
use crate::traffic::authz;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weft_certs::SpiffeId;

/// One accepted, verified peer connection.
struct PeerConn {
    proxy: Arc<Proxy>,
    peer_addr: SocketAddr,
    peer_id: SpiffeId,
    /// `By=<our id>;URI=<peer id>`, computed once per connection.
    xfcc: HeaderValue,
}

pub async fn run(listener: TcpListener, proxy: Arc<Proxy>) {
    let limiter = ConnLimiter::new(proxy.config.limits.max_connections);
    let p = proxy.clone();
    listen::accept_loop(listener, &proxy, limiter, "tunnel", move |tcp, addr| {
        let proxy = p.clone();
        async move { handle_connection(tcp, addr, proxy).await }
    })
    .await;
}

async fn handle_connection(tcp: TcpStream, peer_addr: SocketAddr, proxy: Arc<Proxy>) {
    let acceptor = TlsAcceptor::from(proxy.identity.server_config());
    let timeout = proxy.config.limits.tls_handshake_timeout.get();
    let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            proxy.metrics.reject("tunnel", "tls_handshake_timeout");
            return tracing::info!(peer = %peer_addr, "tunnel connection refused: TLS handshake timed out");
        }
        Ok(Err(e)) => {
            proxy.metrics.tls_failure("inbound", &e);
            proxy.metrics.reject("tunnel", "tls_handshake");
            return tracing::warn!(peer = %peer_addr, error = %e, "tunnel connection refused: TLS handshake failed");
        }
        Ok(Ok(tls)) => tls,
    };
    let (peer_id, alpn_h2, peer_leaf) = {
        let conn = tls.get_ref().1;
        (
            weft_certs::tls::peer_id(conn),
            conn.alpn_protocol() == Some(b"h2"),
            crate::path::pool::peer_leaf(conn),
        )
    };
    let Some(peer_id) = peer_id else {
        proxy.metrics.reject("tunnel", "no_peer_identity");
        return tracing::warn!(peer = %peer_addr, "tunnel connection refused: no verified peer identity");
    };
    if !alpn_h2 {
        proxy.metrics.reject("tunnel", "alpn");
        // Close with close_notify, so a TLS client (or a health check) sees an orderly refusal.
        let mut tls = tls;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        // Wait (briefly) for the client's own close, so our close does not race its last bytes into a
        // reset that it would report as an unexpected EOF.
        let mut sink = [0u8; 256];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while matches!(tokio::io::AsyncReadExt::read(&mut tls, &mut sink).await, Ok(n) if n > 0)
            {
            }
        })
        .await;
        return tracing::warn!(peer = %peer_addr, %peer_id, "tunnel connection refused: ALPN h2 was not negotiated");
    }
    tracing::debug!(peer = %peer_addr, %peer_id, "tunnel connection accepted");
    let _active = ActiveGuard::new(
        &proxy.metrics,
        ConnLabels {
            direction: Direction::inbound,
            protocol: "tunnel",
        },
    );
    let xfcc = HeaderValue::from_str(&format!("By={};URI={}", proxy.identity.id(), peer_id))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    let ctx = Arc::new(PeerConn {
        proxy: proxy.clone(),
        peer_addr,
        peer_id,
        xfcc,
    });
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(handle_request(req, &ctx).await) }
    });
    // A peer revoked while connected is cut off when the list arrives, not when it next reconnects.
    tokio::select! {
        _ = listen::http2_connection(TokioIo::new(tls), svc, &proxy, "tunnel", peer_addr) => {}
        _ = proxy.peers.revoked(&peer_leaf) => {
            proxy.metrics.reject("tunnel", "revoked");
            tracing::warn!(peer = %peer_addr, "tunnel connection closed: the peer's certificate is revoked");
        }
    }
}

async fn handle_request(mut req: Request<Incoming>, ctx: &PeerConn) -> Response<Body> {
    let start = std::time::Instant::now();
    let method = req.method().clone();
    let is_connect = method == Method::CONNECT;
    let extended = req.extensions().get::<hyper::ext::Protocol>().is_some();
    // Opaque streams are logged when they end (tcp_to_app); requests when their response body does.
    let hop = (!is_connect)
        .then(|| ctx.proxy.tracer.begin(req.headers_mut()))
        .flatten();
    let span_name = format!("{} {}", method, req.uri().path());
    let log = &ctx.proxy.access_log;
    let mut entry = (!is_connect)
        .then(|| log.begin("inbound", "http"))
        .flatten()
        .map(|mut e| {
            e.request(&req);
            e.source = ctx.peer_id.to_string();
            e.destination = ctx.proxy.identity.id().to_string();
            e
        });
    let port = admit(&mut req, ctx);
    let app_port = port.as_ref().ok().copied();
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let limited = app_port.and_then(|p| rate_limited(&req, p, ctx));
    let res = match (port, limited) {
        (Err(e), _) => Err(e),
        (Ok(_), Some(refused)) => Ok(refused),
        // Boxed: these branches' futures are large and rare; unboxed they would grow every request's
        // task, which is copied when hyper spawns it.
        (Ok(port), None) if is_connect && extended => {
            Box::pin(upgrade_to_app(req, port, ctx)).await
        }
        (Ok(port), None) if is_connect => Box::pin(tcp_to_app(req, port, ctx)).await,
        (Ok(port), None) => http_to_app(req, port, ctx, entry.is_some().then_some(&counted)).await,
    };
    let resp = res.unwrap_or_else(|e| {
        if let Some(entry) = entry.as_mut() {
            entry.flags.push(e.kind());
        }
        match e {
            ForwardError::Denied(r) => *r,
            e => {
                tracing::warn!(peer = %ctx.peer_addr, peer_id = %ctx.peer_id, error = %e, "inbound request failed");
                error_response(&e)
            }
        }
    });
    ctx.proxy
        .metrics
        .count_request(Direction::inbound, resp.status());
    if let Some(hop) = hop {
        let tags = vec![
            ("http.method", method.to_string()),
            ("http.status_code", resp.status().as_u16().to_string()),
            ("weft.source", ctx.peer_id.to_string()),
        ];
        ctx.proxy.tracer.end(hop, "SERVER", span_name, tags);
    }
    if !is_connect || extended {
        record_http(ctx, &method, resp.status(), start);
    }
    match entry {
        Some(mut e) => {
            e.status = Some(resp.status().as_u16());
            if resp.status() == StatusCode::TOO_MANY_REQUESTS
                && resp
                    .headers()
                    .contains_key(crate::path::headers::PROXY_ERROR)
            {
                e.flags.push("rate_limited");
            } else if let Some(port) = app_port {
                e.upstream = Some(app_addr(ctx, port).to_string());
            }
            let log = log.clone();
            resp.map(|b| crate::telemetry::access_log::log_on_end(log, e, counted, b))
        }
        None => resp,
    }
}

/// Counts and times one HTTP request (or WebSocket) from a peer.
fn record_http(ctx: &PeerConn, method: &Method, status: StatusCode, start: std::time::Instant) {
    ctx.proxy.metrics.http_request(
        crate::telemetry::metrics::HttpLabels {
            direction: Direction::inbound,
            source_identity: ctx.peer_id.to_string(),
            destination_identity: ctx.proxy.own_id.clone(),
            destination_service: String::new(),
            destination_version: ctx.proxy.workload_version().to_string(),
            route: String::new(),
            method: crate::telemetry::metrics::method_class(method),
            status_code: status.as_u16(),
        },
        start.elapsed(),
    );
}

/// Everything a request must pass before it is carried to the app: a mesh view with this workload's
/// policies (fail closed until there is one), a target port that is the app's, and authorization.
fn admit(req: &mut Request<Incoming>, ctx: &PeerConn) -> Result<u16, ForwardError> {
    if !ctx.proxy.has_policy_view() {
        ctx.proxy.metrics.reject("tunnel", "no_config");
        tracing::warn!(peer = %ctx.peer_addr, peer_id = %ctx.peer_id, "inbound request refused: no config from the control plane yet");
        return Err(ForwardError::NoPolicyView);
    }
    let port = target_port(req, ctx)?;
    authorize(req, port, ctx)?;
    Ok(port)
}

/// The 429 when a route's rate limit refuses the request. Every kind counts: an opaque CONNECT stream
/// under the rule that routes TCP, a WebSocket as the GET the app will see.
fn rate_limited(req: &Request<Incoming>, port: u16, ctx: &PeerConn) -> Option<Response<Body>> {
    let extended = req.extensions().get::<hyper::ext::Protocol>().is_some();
    let method = if extended { &Method::GET } else { req.method() };
    let view = crate::traffic::route::RequestView {
        method,
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let opaque = req.method() == Method::CONNECT && !extended;
    let req = (!opaque).then_some(&view);
    crate::traffic::ratelimit::check(&ctx.proxy, "tunnel", Some(&ctx.peer_id), port, req)
}

/// Applies the workload's authorization policies. An HTTP request's path is normalised first (and sent
/// on normalised, so the app sees what the policy saw); a path that cannot be is refused with 400.
fn authorize(req: &mut Request<Incoming>, port: u16, ctx: &PeerConn) -> Result<(), ForwardError> {
    if ctx.proxy.mesh().authorizer.is_empty() {
        return Ok(());
    }
    let opaque =
        req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_none();
    let path = if opaque {
        None
    } else {
        let p = authz::normalize::normalize(req.uri().path())
            .map_err(|e| ForwardError::BadPath(e.to_string()))?;
        set_path(req, &p);
        Some(p)
    };
    let method = req.method().as_str().to_string();
    let subject = authz::Subject {
        source: Some(&ctx.peer_id),
        port,
        http: path.as_deref().map(|path| authz::HttpSubject {
            method: &method,
            path,
            headers: req.headers(),
        }),
    };
    match authz::authorize(&ctx.proxy, &subject) {
        None => Ok(()),
        Some(denied) => Err(ForwardError::Denied(Box::new(denied))),
    }
}

/// Replaces the request's path, keeping its query.
fn set_path(req: &mut Request<Incoming>, path: &str) {
    if req.uri().path() == path {
        return;
    }
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(p) = pq.parse() {
        parts.path_and_query = Some(p);
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

/// The app port: a CONNECT's authority port, else the `weft-target-port` header. Never one of the
/// proxy's own ports; only ports the config allows (all, when the list is empty).
fn target_port(req: &Request<Incoming>, ctx: &PeerConn) -> Result<u16, ForwardError> {
    let port = if req.method() == Method::CONNECT
        && req.extensions().get::<hyper::ext::Protocol>().is_none()
    {
        req.uri().port_u16()
    } else {
        req.headers()
            .get(TARGET_PORT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let port = port
        .filter(|p| *p != 0)
        .ok_or(ForwardError::BadTunnelRequest("no target port"))?;
    if let Err(refusal) = ctx.proxy.delivery.check(port) {
        ctx.proxy.metrics.reject("tunnel", refusal.reason());
        tracing::warn!(peer = %ctx.peer_addr, peer_id = %ctx.peer_id, port, reason = refusal.reason(), "inbound request refused: the target port is not the app's");
        return Err(match refusal {
            crate::path::deliver::Refusal::ProxyPort => ForwardError::ProxyPort { port },
            crate::path::deliver::Refusal::NotAllowed => ForwardError::PortNotAllowed { port },
        });
    }
    Ok(port)
}

fn app_addr(ctx: &PeerConn, port: u16) -> SocketAddr {
    ctx.proxy.delivery.app_addr(port)
}

async fn connect_app(ctx: &PeerConn, port: u16) -> Result<TcpStream, ForwardError> {
    let timeout = ctx.proxy.config.limits.connect_timeout.get();
    match tokio::time::timeout(timeout, TcpStream::connect(app_addr(ctx, port))).await {
        Err(_) => Err(ForwardError::AppConnectTimeout { port }),
        Ok(Err(source)) => Err(ForwardError::AppConnect { port, source }),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// An HTTP request for the app, sent through the pooled client in the app's own HTTP version.
async fn http_to_app(
    req: Request<Incoming>,
    port: u16,
    ctx: &PeerConn,
    count: Option<&Arc<std::sync::atomic::AtomicU64>>,
) -> Result<Response<Body>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    let which = match parts.headers.get(ORIG_PROTO) {
        Some(v) if v == "1.1" => AppHttp::Http1,
        _ => AppHttp::Http2,
    };
    prepare_for_app(&mut parts, port, which, ctx)?;
    let body = match count {
        Some(c) => crate::telemetry::access_log::count_request(body::boxed(body), c.clone()),
        None => body::boxed(body),
    };
    let req = Request::from_parts(parts, body);
    let resp = ctx
        .proxy
        .apps
        .client(which)
        .request(req)
        .await
        .map_err(|e| app_request_error(port, e))?;
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_2;
    Ok(Response::from_parts(parts, body::boxed(body)))
}

/// A failed request to the local app: 502 when it could not be reached, else the request's own error.
pub(crate) fn app_request_error(port: u16, e: hyper_util::client::legacy::Error) -> ForwardError {
    if e.is_connect() {
        let source = std::error::Error::source(&e)
            .map(|s| std::io::Error::other(s.to_string()))
            .unwrap_or_else(|| std::io::Error::other("connect failed"));
        return ForwardError::AppConnect { port, source };
    }
    ForwardError::AppRequest {
        port,
        source: Box::new(e),
    }
}

fn prepare_for_app(
    parts: &mut http::request::Parts,
    port: u16,
    which: AppHttp,
    ctx: &PeerConn,
) -> Result<(), ForwardError> {
    let authority = parts.uri.authority().map(|a| a.to_string());
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(app_addr(ctx, port).to_string())
        .path_and_query(pq)
        .build()
        .map_err(|_| ForwardError::BadTunnelRequest("request target is not a valid URI"))?;
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    headers::strip_mesh_headers(h);
    h.insert(XFCC, ctx.xfcc.clone());
    if which == AppHttp::Http1 {
        parts.version = Version::HTTP_11;
        if let Some(a) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            h.insert(header::HOST, a);
        }
    } else {
        parts.version = Version::HTTP_2;
    }
    Ok(())
}

/// A CONNECT stream: connect to the app port first (so a refused port is a refused stream), answer 200,
/// then copy bytes both ways.
async fn tcp_to_app(
    mut req: Request<Incoming>,
    port: u16,
    ctx: &PeerConn,
) -> Result<Response<Body>, ForwardError> {
    let mut app = connect_app(ctx, port).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let metrics = ctx.proxy.metrics.clone();
    let (peer_addr, peer_id) = (ctx.peer_addr, ctx.peer_id.clone());
    let log = ctx.proxy.access_log.clone();
    let entry = log.begin("inbound", "tcp").map(|mut e| {
        e.source = peer_id.to_string();
        e.destination = ctx.proxy.identity.id().to_string();
        e.upstream = Some(app_addr(ctx, port).to_string());
        e
    });
    ctx.proxy.tasks.spawn(async move {
        let _active = ActiveGuard::new(
            &metrics,
            ConnLabels {
                direction: Direction::inbound,
                protocol: "tcp",
            },
        );
        match on_upgrade.await {
            Ok(stream) => {
                let res = splice(&mut TokioIo::new(stream), &mut app, &metrics, Direction::inbound).await;
                tracing::debug!(peer = %peer_addr, %peer_id, port, result = ?res, "inbound tcp stream done");
                if let Some(mut e) = entry {
                    e.tcp_result(&res);
                    log.write(e);
                }
            }
            Err(e) => tracing::debug!(peer = %peer_addr, error = %e, "CONNECT stream did not open"),
        }
    });
    Ok(Response::new(body::empty()))
}

/// Extended CONNECT (`:protocol`, e.g. websocket): replay it to the app as an HTTP/1.1 upgrade on a fresh
/// connection, answer 200 with the app's 101 headers, then splice both upgraded streams.
async fn upgrade_to_app(
    mut req: Request<Incoming>,
    port: u16,
    ctx: &PeerConn,
) -> Result<Response<Body>, ForwardError> {
    let proto = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let from_peer = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    prepare_for_app(&mut parts, port, AppHttp::Http1, ctx)?;
    parts.method = Method::GET;
    parts.extensions = Default::default();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = pq
        .parse()
        .map_err(|_| ForwardError::BadTunnelRequest("bad path"))?;
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let upgrade = HeaderValue::from_str(&proto)
        .map_err(|_| ForwardError::BadTunnelRequest("bad :protocol"))?;
    parts.headers.insert(header::UPGRADE, upgrade);

    let app = connect_app(ctx, port).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(app))
        .await
        .map_err(|e| ForwardError::AppRequest {
            port,
            source: Box::new(e),
        })?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = send
        .send_request(Request::from_parts(parts, body::empty()))
        .await
        .map_err(|e| ForwardError::AppRequest {
            port,
            source: Box::new(e),
        })?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut p, b) = resp.into_parts();
        headers::strip_hop_by_hop(&mut p.headers);
        return Ok(Response::from_parts(p, body::boxed(b)));
    }
    let from_app = hyper::upgrade::on(&mut resp);
    let mut out = Response::new(body::empty());
    *out.headers_mut() = std::mem::take(resp.headers_mut());
    headers::strip_hop_by_hop(out.headers_mut());
    splice_upgraded(&ctx.proxy, from_peer, from_app);
    Ok(out)
}

/// Once both sides of an upgrade (the caller's and the app's) are through, carries the bytes between
/// them as an inbound stream, tracked so a drain waits for it.
pub(crate) fn splice_upgraded(
    proxy: &Proxy,
    caller: hyper::upgrade::OnUpgrade,
    app: hyper::upgrade::OnUpgrade,
) {
    let metrics = proxy.metrics.clone();
    proxy.tasks.spawn(async move {
        if let Ok((c, a)) = tokio::try_join!(caller, app) {
            let _ = splice(
                &mut TokioIo::new(c),
                &mut TokioIo::new(a),
                &metrics,
                Direction::inbound,
            )
            .await;
        }
    });
}

//! Outbound: the app's connections, from an explicit local listener or intercepted (redirected by
//! `weft-proxy init` to the transparent listener, where the original destination says where they were
//! going). Each connection is detected (HTTP/1, HTTP/2, TLS or opaque), then carried to a peer over the
//! shared mTLS HTTP/2 connection: HTTP requests as HTTP/2 requests (each routed on its own), upgrades
//! (WebSocket) as extended CONNECT streams, opaque TCP as a CONNECT stream. Intercepted connections to
//! destinations outside the mesh pass through, or are refused under `REGISTRY_ONLY`.

use crate::path::body::{self, Body, Guarded};
use crate::path::detect::{detect, Detected, Rewind};
use crate::path::errors::{error_response, ForwardError};
use crate::path::h1_guard::{ConflictFlag, H1Guard};
use crate::path::headers::{self, ORIG_PROTO, TARGET_PORT};
use crate::path::listen::{self, ConnLimiter};
use crate::path::splice::splice;
use crate::state::Proxy;
use crate::telemetry::access_log::{self, CallInfo};
use crate::telemetry::metrics::{ActiveGuard, ConnLabels, Direction, HttpLabels};
use crate::traffic::dispatch::Plan;
use crate::traffic::mesh::Destination;
use crate::traffic::route::RequestView;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use weft_api::resources::{OutboundTrafficPolicy, PortProtocol};
use weft_api::{AppProtocol, OutboundListener, Target};

/// Where one connection's traffic goes: an explicit listener's, or an intercepted connection's.
struct Listener {
    name: String,
    target: Target,
    protocol: AppProtocol,
    proxy: Arc<Proxy>,
    /// A fixed peer's plan, made once per listener.
    fixed: Option<Plan>,
}

impl Listener {
    fn new(name: String, target: Target, protocol: AppProtocol, proxy: Arc<Proxy>) -> Listener {
        let fixed = match &target {
            Target::Fixed(up) => Some(Plan::fixed(&proxy, up.clone())),
            Target::Service { .. } => None,
        };
        Listener {
            name,
            target,
            protocol,
            proxy,
            fixed,
        }
    }

    /// Where this request (or, with `req` absent, this connection) may go: the fixed peer, or the ready
    /// endpoints of the backend the service's routes choose in the current mesh view.
    fn plan(&self, req: Option<&RequestView<'_>>) -> Result<Plan, ForwardError> {
        match &self.target {
            Target::Fixed(up) => Ok(match &self.fixed {
                Some(p) => p.clone(),
                None => Plan::fixed(&self.proxy, up.clone()),
            }),
            Target::Service {
                namespace,
                name,
                port,
            } => {
                let routed = self.proxy.mesh().route(namespace, name, *port, req)?;
                Ok(Plan::routed(&self.proxy, routed))
            }
        }
    }
}

/// Accepts connections until shutdown.
pub async fn run(listener: TcpListener, spec: OutboundListener, target: Target, proxy: Arc<Proxy>) {
    let ctx = Arc::new(Listener::new(
        spec.display_name(),
        target,
        spec.protocol,
        proxy.clone(),
    ));
    let limiter = ConnLimiter::new(proxy.config.limits.max_connections);
    listen::accept_loop(listener, &proxy, limiter, "outbound", move |tcp, client| {
        let ctx = ctx.clone();
        async move { handle_connection(tcp, client, ctx).await }
    })
    .await;
}

/// The transparent listener: accepts the app's redirected connections until shutdown.
pub async fn run_intercepted(listener: TcpListener, proxy: Arc<Proxy>) {
    let limiter = ConnLimiter::new(proxy.config.limits.max_connections);
    let p = proxy.clone();
    listen::accept_loop(listener, &proxy, limiter, "outbound", move |tcp, client| {
        let proxy = p.clone();
        async move { intercepted_connection(tcp, client, proxy).await }
    })
    .await;
}

async fn intercepted_connection(tcp: TcpStream, client: SocketAddr, proxy: Arc<Proxy>) {
    let dst = match crate::socket::original_dst(&tcp) {
        Ok(d) => d,
        Err(e) => {
            proxy.metrics.reject("outbound", "no_original_dst");
            return tracing::warn!(%client, error = %e, "connection closed: no original destination (was it redirected by `weft-proxy init`?)");
        }
    };
    if is_own_listener(&proxy, dst) {
        proxy.metrics.reject("outbound", "loop");
        return tracing::warn!(%client, %dst, "connection closed: it was addressed to the proxy's own listener");
    }
    let mesh = proxy.mesh();
    let (target, protocol) = match mesh.destination(dst) {
        Destination::Service {
            namespace,
            name,
            port,
            protocol,
        } => (
            Target::Service {
                namespace,
                name,
                port,
            },
            declared(protocol),
        ),
        Destination::Pod(up) => (Target::Fixed(up), AppProtocol::Auto),
        Destination::Outside => {
            let policy = mesh.mesh.outbound_traffic_policy;
            drop(mesh);
            return pass_through(tcp, client, dst, policy, &proxy).await;
        }
    };
    drop(mesh);
    let ctx = Arc::new(Listener::new(dst.to_string(), target, protocol, proxy));
    handle_connection(tcp, client, ctx).await
}

/// A `Service` port that declares its protocol skips detection.
fn declared(p: PortProtocol) -> AppProtocol {
    match p {
        PortProtocol::Auto => AppProtocol::Auto,
        PortProtocol::Http | PortProtocol::Http2 | PortProtocol::Grpc => AppProtocol::Http,
        PortProtocol::Tcp => AppProtocol::Tcp,
    }
}

/// A connection to one of the proxy's own intercept ports would loop back into it forever.
fn is_own_listener(proxy: &Proxy, dst: SocketAddr) -> bool {
    proxy.config.interception.as_ref().is_some_and(|i| {
        (dst.port() == i.outbound.port() || dst.port() == i.inbound.port())
            && (dst.ip().is_loopback() || dst.ip().is_unspecified())
    })
}

/// A destination outside the mesh: connected to directly (plain TCP, the proxy's mark set so it is not
/// redirected again), unless the mesh allows only registry destinations.
async fn pass_through(
    mut tcp: TcpStream,
    client: SocketAddr,
    dst: SocketAddr,
    policy: OutboundTrafficPolicy,
    proxy: &Proxy,
) {
    if policy == OutboundTrafficPolicy::RegistryOnly {
        proxy.metrics.reject("outbound", "registry_only");
        return tracing::info!(%client, %dst, "connection refused: destination is not in the mesh registry (outboundTrafficPolicy REGISTRY_ONLY)");
    }
    let _active = ActiveGuard::new(
        &proxy.metrics,
        ConnLabels {
            direction: Direction::outbound,
            protocol: "passthrough",
        },
    );
    let timeout = proxy.config.limits.connect_timeout.get();
    let mut upstream = match crate::socket::connect(dst, timeout).await {
        Ok(u) => u,
        Err(e) => {
            proxy.metrics.reject("outbound", "passthrough_connect");
            return tracing::info!(%client, %dst, error = %e, "pass-through connect failed");
        }
    };
    tracing::debug!(%client, %dst, "passing through (destination outside the mesh)");
    match splice(&mut tcp, &mut upstream, &proxy.metrics, Direction::outbound).await {
        Ok((sent, received)) => tracing::debug!(%client, %dst, sent, received, "pass-through done"),
        Err(e) => tracing::debug!(%client, %dst, error = %e, "pass-through ended with an error"),
    }
}

async fn handle_connection(tcp: TcpStream, client: SocketAddr, ctx: Arc<Listener>) {
    let limits = &ctx.proxy.config.limits;
    let (detected, io) = match ctx.protocol {
        AppProtocol::Tcp => (Detected::Opaque, Rewind::new(Default::default(), tcp)),
        AppProtocol::Auto => match detect(tcp, limits.detect_timeout.get()).await {
            Ok(d) => d,
            Err(e) => {
                return tracing::debug!(%client, error = %e, "client went away during detection")
            }
        },
        AppProtocol::Http => match detect(tcp, limits.header_read_timeout.get()).await {
            // Declared HTTP: let the HTTP/1 parser answer whatever arrived (400 for garbage).
            Ok((Detected::Opaque, io)) => (Detected::Http1, io),
            Ok(d) => d,
            Err(e) => {
                return tracing::debug!(%client, error = %e, "client went away during detection")
            }
        },
    };
    let protocol = match detected {
        Detected::Http1 => "http1",
        Detected::Http2 => "http2",
        Detected::Tls => "tls",
        Detected::Opaque => "tcp",
    };
    if detected == Detected::Tls {
        let sni = crate::path::detect::sni(io.prefix());
        tracing::debug!(listener = %ctx.name, %client, sni = sni.as_deref().unwrap_or("-"), "app's own TLS: carried opaque");
    }
    let _active = ActiveGuard::new(
        &ctx.proxy.metrics,
        ConnLabels {
            direction: Direction::outbound,
            protocol,
        },
    );
    match detected {
        Detected::Opaque | Detected::Tls => proxy_tcp(io, client, &ctx).await,
        Detected::Http2 => {
            let svc_ctx = ctx.clone();
            let svc = hyper::service::service_fn(move |req| {
                let ctx = svc_ctx.clone();
                async move { Ok::<_, std::convert::Infallible>(forward_http(req, client, &ctx).await) }
            });
            listen::http2_connection(TokioIo::new(io), svc, &ctx.proxy, "outbound", client).await
        }
        Detected::Http1 => {
            let conflict = ConflictFlag::default();
            let io = TokioIo::new(H1Guard::new(io, conflict.clone()));
            let svc_ctx = ctx.clone();
            let svc = hyper::service::service_fn(move |req| {
                let ctx = svc_ctx.clone();
                let conflict = conflict.clone();
                async move {
                    if conflict.is_set() && req.headers().contains_key(header::TRANSFER_ENCODING) {
                        return Ok(refuse_conflicting_framing(&ctx, client));
                    }
                    Ok::<_, std::convert::Infallible>(forward_http(req, client, &ctx).await)
                }
            });
            listen::http1_connection(io, svc, &ctx.proxy, "outbound", client).await
        }
    }
}

/// A request with both Content-Length and Transfer-Encoding: answered 400 and the connection closed.
fn refuse_conflicting_framing(ctx: &Listener, client: SocketAddr) -> Response<Body> {
    ctx.proxy.metrics.reject("outbound", "bad_request");
    tracing::info!(listener = %ctx.name, %client, reason = "bad_request", "request refused: both Content-Length and Transfer-Encoding");
    let mut r = status_response(
        StatusCode::BAD_REQUEST,
        "both Content-Length and Transfer-Encoding",
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Opaque TCP: one CONNECT stream to a peer, bytes copied both ways until both sides are done.
async fn proxy_tcp(mut io: Rewind<TcpStream>, client: SocketAddr, ctx: &Listener) {
    let log = &ctx.proxy.access_log;
    let mut entry = log.begin("outbound", "tcp").map(|mut e| {
        e.source = ctx.proxy.identity.id().to_string();
        e.destination = destination_label(&ctx.target);
        e
    });
    let mut fail = |kind: &'static str| {
        ctx.proxy.metrics.reject("outbound", kind);
        if let Some(mut e) = entry.take() {
            e.flags.push(kind);
            log.write(e);
        }
    };
    let plan = match ctx.plan(None) {
        Ok(p) => p,
        Err(e) => {
            fail(e.kind());
            return tracing::warn!(listener = %ctx.name, %client, error = %e, "tcp connection closed");
        }
    };
    let Ok(_slot) = plan.dest.connection_slot() else {
        fail("overflow");
        return tracing::warn!(listener = %ctx.name, %client, destination = %plan.what, "tcp connection closed: the destination's connection limit is reached");
    };
    let (mut stream, _stream_slot, up) = match crate::traffic::dispatch::connect_tcp(
        &ctx.proxy, &plan,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            fail(e.kind());
            return tracing::warn!(listener = %ctx.name, %client, destination = %plan.what, error = %e, "cannot open tcp stream");
        }
    };
    let res = splice(
        &mut io,
        &mut stream,
        &ctx.proxy.metrics,
        Direction::outbound,
    )
    .await;
    match &res {
        Ok((sent, received)) => {
            tracing::debug!(listener = %ctx.name, %client, sent, received, "tcp stream done")
        }
        Err(e) => {
            tracing::debug!(listener = %ctx.name, %client, error = %e, "tcp stream ended with an error")
        }
    }
    if let Some(mut e) = entry {
        e.upstream = Some(up.peer.to_string());
        e.upstream_identity = Some(up.identity.to_string());
        e.tcp_result(&res);
        log.write(e);
    }
}

/// One HTTP request from the app, sent on as an HTTP/2 request to the peer.
async fn forward_http(
    mut req: Request<Incoming>,
    client: SocketAddr,
    ctx: &Listener,
) -> Response<Body> {
    let start = std::time::Instant::now();
    let method = req.method().clone();
    let log = &ctx.proxy.access_log;
    let request_bytes = Arc::new(AtomicU64::new(0));
    let hop = ctx.proxy.tracer.begin(req.headers_mut());
    let span_name = format!(
        "{} {}",
        req.method(),
        req.uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string))
            .unwrap_or_default()
    );
    let mut entry = log.begin("outbound", "http").map(|mut e| {
        e.request(&req);
        e.source = ctx.proxy.identity.id().to_string();
        e.destination = destination_label(&ctx.target);
        e
    });
    let resp = match headers::upgrade_protocol(req.headers()) {
        Some(proto) if req.version() == Version::HTTP_11 => {
            Box::pin(forward_upgrade(&mut req, proto, client, ctx)).await
        }
        _ => forward_plain(req, client, ctx, entry.is_some().then_some(&request_bytes)).await,
    };
    let resp = resp.unwrap_or_else(|e| {
        ctx.proxy.metrics.reject("outbound", e.kind());
        if let Some(entry) = entry.as_mut() {
            entry.flags.push(e.kind());
        }
        tracing::warn!(listener = %ctx.name, %client, error = %e, "request failed");
        error_response(&e)
    });
    ctx.proxy
        .metrics
        .count_request(Direction::outbound, resp.status());
    let info = resp.extensions().get::<CallInfo>();
    if let Some(hop) = hop {
        let mut tags = vec![
            ("http.method", method.to_string()),
            ("http.status_code", resp.status().as_u16().to_string()),
            ("weft.destination", destination_label(&ctx.target)),
        ];
        if let Some(up) = info.and_then(|i| i.upstream) {
            tags.push(("peer.address", up.to_string()));
        }
        if let Some(v) = info.and_then(|i| i.version.clone()) {
            tags.push(("weft.destination_version", v));
        }
        ctx.proxy.tracer.end(hop, "CLIENT", span_name, tags);
    }
    ctx.proxy.metrics.http_request(
        HttpLabels {
            direction: Direction::outbound,
            source_identity: ctx.proxy.own_id.clone(),
            destination_identity: info
                .and_then(|i| i.upstream_identity.clone())
                .unwrap_or_default(),
            destination_service: match &ctx.target {
                Target::Service {
                    namespace, name, ..
                } => format!("{namespace}/{name}"),
                Target::Fixed(_) => String::new(),
            },
            destination_version: info.and_then(|i| i.version.clone()).unwrap_or_default(),
            route: info.and_then(|i| i.route.clone()).unwrap_or_default(),
            method: crate::telemetry::metrics::method_class(&method),
            status_code: resp.status().as_u16(),
        },
        start.elapsed(),
    );
    match entry {
        Some(mut e) => {
            e.status = Some(resp.status().as_u16());
            if let Some(info) = resp.extensions().get::<CallInfo>() {
                e.call(info);
            }
            let log = log.clone();
            resp.map(|b| access_log::log_on_end(log, e, request_bytes, b))
        }
        None => resp,
    }
}

/// What the access log names as an outbound request's destination.
fn destination_label(t: &Target) -> String {
    match t {
        Target::Fixed(up) => up.peer.to_string(),
        Target::Service {
            namespace, name, ..
        } => format!("{namespace}/{name}"),
    }
}

async fn forward_plain(
    req: Request<Incoming>,
    client: SocketAddr,
    ctx: &Listener,
    count: Option<&Arc<AtomicU64>>,
) -> Result<Response<Body>, ForwardError> {
    if req.method() == Method::CONNECT {
        return Ok(status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not carried by weft-proxy listeners",
        ));
    }
    let (mut parts, body) = req.into_parts();
    let plan = ctx.plan(Some(&RequestView::of(&parts)))?;
    let orig_h1 = parts.version != Version::HTTP_2;
    prepare_for_peer(&mut parts, client, &fallback_authority(&ctx.target))?;
    if orig_h1 {
        parts
            .headers
            .insert(ORIG_PROTO, HeaderValue::from_static("1.1"));
    }
    let body = match count {
        Some(c) => access_log::count_request(body::boxed(body), c.clone()),
        None => body::boxed(body),
    };
    // Boxed: the dispatch future (tries, retries, timeouts) is large; unboxed it would be moved with
    // every request's future.
    let resp = Box::pin(crate::traffic::dispatch::send(
        &ctx.proxy, plan, parts, body, client,
    ))
    .await?;
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body))
}

/// HTTP/1.1 Upgrade (WebSocket): carried as an extended CONNECT (RFC 8441) stream; the server side replays
/// the upgrade to its app and both sides splice once it answers 101.
async fn forward_upgrade(
    req: &mut Request<Incoming>,
    proto: String,
    client: SocketAddr,
    ctx: &Listener,
) -> Result<Response<Body>, ForwardError> {
    let plan = {
        let view = RequestView {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        ctx.plan(Some(&view))?
    };
    let Some((up, flight)) =
        ctx.proxy
            .balancer
            .choose(&plan.candidates, &[], plan.dest.policy.ejection)
    else {
        return Err(ForwardError::NoEndpoint(format!(
            "{} (no ready endpoint left)",
            plan.what
        )));
    };
    drop(flight);
    let downstream = hyper::upgrade::on(&mut *req);
    let mut parts = Request::new(()).into_parts().0;
    parts.uri = req.uri().clone();
    parts.headers = std::mem::take(req.headers_mut());
    prepare_for_peer(&mut parts, client, &fallback_authority(&ctx.target))?;
    parts
        .headers
        .insert(TARGET_PORT, HeaderValue::from(up.target_port));
    parts.method = Method::CONNECT;
    parts
        .extensions
        .insert(hyper::ext::Protocol::from(proto.as_str()));
    let (mut resp, slot) = ctx
        .proxy
        .peers
        .send_raw(&up, Request::from_parts(parts, body::empty()))
        .await?;
    if resp.status() != StatusCode::OK {
        // The app refused the upgrade: pass its answer on as a plain response.
        return Ok(resp.map(|b| body::boxed(Guarded::new(b, slot))));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let mut out = Response::new(body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *out.headers_mut() = std::mem::take(resp.headers_mut());
    headers::strip_hop_by_hop(out.headers_mut());
    out.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&proto) {
        out.headers_mut().insert(header::UPGRADE, v);
    }
    let metrics = ctx.proxy.metrics.clone();
    let name = ctx.name.clone();
    ctx.proxy.tasks.spawn(async move {
        let _slot = slot;
        match tokio::try_join!(downstream, upstream) {
            Ok((d, u)) => {
                let _ = splice(
                    &mut TokioIo::new(d),
                    &mut TokioIo::new(u),
                    &metrics,
                    Direction::outbound,
                )
                .await;
            }
            Err(e) => {
                tracing::debug!(listener = %name, %client, error = %e, "upgrade did not complete")
            }
        }
    });
    Ok(out)
}

/// Turns an app's request head into the head of an HTTP/2 request to the peer (the target port header
/// is set per try, as endpoints of a fallback service may differ).
fn prepare_for_peer(
    parts: &mut http::request::Parts,
    client: SocketAddr,
    fallback: &str,
) -> Result<(), ForwardError> {
    let authority = authority_of(parts, fallback);
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|_| ForwardError::BadTunnelRequest("request target is not a valid URI"))?;
    parts.version = Version::HTTP_2;
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    headers::strip_mesh_headers(h);
    headers::set_forwarded_for(h, client.ip());
    h.remove(header::HOST);
    Ok(())
}

/// The authority of a request that names none (HTTP/1.0 without Host): the service's name, or the
/// fixed peer's target.
fn fallback_authority(t: &Target) -> String {
    match t {
        Target::Fixed(up) => format!("{}:{}", up.peer.ip(), up.target_port),
        Target::Service {
            namespace,
            name,
            port,
        } => format!("{name}.{namespace}.svc:{port}"),
    }
}

/// The request's authority: the URI's (HTTP/2, absolute-form), else the Host header, else `fallback`.
fn authority_of(parts: &http::request::Parts, fallback: &str) -> String {
    if let Some(a) = parts.uri.authority() {
        return a.to_string();
    }
    if let Some(h) = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        if h.parse::<http::uri::Authority>().is_ok() {
            return h.to_string();
        }
    }
    fallback.to_string()
}

pub fn status_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(format!("weft-proxy: {text}\n")));
    *r.status_mut() = status;
    r
}

//! Inbound: the tunnel port (15008). Peers connect with mutual TLS 1.3 and HTTP/2; the client's SPIFFE ID
//! comes from its verified certificate. HTTP requests go to the local app as HTTP/1.1 or HTTP/2 (whichever
//! the calling app spoke), CONNECT streams are spliced to the app port, and extended CONNECT (WebSocket)
//! is replayed to the app as an HTTP/1.1 upgrade.

use crate::path::body::{self, Body};
use crate::path::errors::{answer, ProxyError};
use crate::path::headers::{self, ORIG_PROTO, TARGET_PORT, XFCC};
use crate::path::listen;
use crate::path::local_app::AppHttp;
use crate::path::open_streams::StreamOpen;
use crate::path::splice::{splice, Splice};
use crate::state::Proxy;
use crate::telemetry::labels::{ConnProtocol, Direction, Listener, Reason};
use crate::telemetry::metrics::{ActiveGuard, ConnLabels};
use crate::telemetry::record::Record;
use crate::traffic::authz;
use crate::traffic::mesh::MeshView;
use crate::traffic::route::RequestView;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use weft_certs::SpiffeId;

/// One accepted tunnel: a peer proxy's verified mTLS connection.
struct TunnelConn {
    proxy: Arc<Proxy>,
    peer_addr: SocketAddr,
    peer_id: SpiffeId,
    /// `By=<our id>;URI=<peer id>`, computed once per connection.
    xfcc: HeaderValue,
}

/// What a peer's request asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// An HTTP request for the app.
    Request,
    /// A CONNECT stream: opaque TCP to an app port.
    Stream,
    /// An extended CONNECT (`:protocol`, e.g. websocket): an HTTP/1.1 upgrade for the app.
    Upgrade,
}

impl Ask {
    fn of<B>(req: &Request<B>) -> Ask {
        match (
            req.method() == Method::CONNECT,
            req.extensions().get::<hyper::ext::Protocol>().is_some(),
        ) {
            (false, _) => Ask::Request,
            (true, false) => Ask::Stream,
            (true, true) => Ask::Upgrade,
        }
    }
}

/// The tunnel listener: accepts peers' connections until shutdown.
pub async fn run(listener: TcpListener, proxy: Arc<Proxy>) {
    listen::serve_data(listener, proxy, Listener::Tunnel, handle_connection).await;
}

async fn handle_connection(tcp: TcpStream, peer_addr: SocketAddr, proxy: Arc<Proxy>) {
    let Some((tls, peer_id, peer_leaf)) = accept_tls(tcp, peer_addr, &proxy).await else {
        return;
    };
    tracing::debug!(peer = %peer_addr, %peer_id, "tunnel connection accepted");
    let _active = ActiveGuard::new(
        &proxy.metrics,
        ConnLabels {
            direction: Direction::Inbound,
            protocol: ConnProtocol::Tunnel,
        },
    );
    let xfcc = HeaderValue::from_str(&format!("By={};URI={}", proxy.identity.id(), peer_id))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    let ctx = Arc::new(TunnelConn {
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
        _ = listen::http2_connection(TokioIo::new(tls), svc, &proxy, Listener::Tunnel, peer_addr) => {}
        _ = proxy.peers.revoked(&peer_leaf) => {
            proxy.metrics.reject(Listener::Tunnel, Reason::Revoked);
            tracing::warn!(peer = %peer_addr, "tunnel connection closed: the peer's certificate is revoked");
        }
    }
}

/// The TLS handshake with client-certificate verification, within its time limit: the stream, the
/// peer's verified SPIFFE ID and its leaf certificate (DER). Refusals are logged and counted.
async fn accept_tls(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    proxy: &Proxy,
) -> Option<(TlsStream<TcpStream>, SpiffeId, Vec<u8>)> {
    let acceptor = TlsAcceptor::from(proxy.identity.server_config());
    let timeout = proxy.config.limits.tls_handshake_timeout.get();
    let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            proxy
                .metrics
                .reject(Listener::Tunnel, Reason::TlsHandshakeTimeout);
            tracing::info!(peer = %peer_addr, "tunnel connection refused: TLS handshake timed out");
            return None;
        }
        Ok(Err(e)) => {
            proxy.metrics.tls_failure(Direction::Inbound, &e);
            proxy.metrics.reject(Listener::Tunnel, Reason::TlsHandshake);
            tracing::warn!(peer = %peer_addr, error = %e, "tunnel connection refused: TLS handshake failed");
            return None;
        }
        Ok(Ok(tls)) => tls,
    };
    let mut tls = tls;
    // As the client side's: bulk streams towards the peer go out in whole frames, not split writes.
    tls.get_mut()
        .1
        .set_buffer_limit(Some(crate::path::pool::TLS_SEND_BUFFER));
    let conn = tls.get_ref().1;
    let (peer_id, alpn_h2) = (
        weft_certs::tls::peer_id(conn),
        conn.alpn_protocol() == Some(b"h2"),
    );
    let peer_leaf = crate::path::pool::peer_leaf(conn);
    let Some(peer_id) = peer_id else {
        proxy
            .metrics
            .reject(Listener::Tunnel, Reason::NoPeerIdentity);
        tracing::warn!(peer = %peer_addr, "tunnel connection refused: no verified peer identity");
        return None;
    };
    if !alpn_h2 {
        proxy.metrics.reject(Listener::Tunnel, Reason::Alpn);
        close_politely(tls).await;
        tracing::warn!(peer = %peer_addr, %peer_id, "tunnel connection refused: ALPN h2 was not negotiated");
        return None;
    }
    Some((tls, peer_id, peer_leaf))
}

/// Closes with close_notify, so a TLS client (or a health check) sees an orderly refusal, then waits
/// (briefly) for the client's own close, so our close does not race its last bytes into a reset that
/// it would report as an unexpected EOF.
async fn close_politely(mut tls: TlsStream<TcpStream>) {
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while matches!(tokio::io::AsyncReadExt::read(&mut tls, &mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// One request (or stream) from a peer: admitted against one mesh view, then carried to the app.
/// Its record goes out with the response (a stream's, with the stream's task).
async fn handle_request(mut req: Request<Incoming>, ctx: &TunnelConn) -> Response<Body> {
    let ask = Ask::of(&req);
    let mut record = match ask {
        Ask::Stream => Record::tcp(&ctx.proxy, Direction::Inbound, true),
        Ask::Request | Ask::Upgrade => Record::http(&ctx.proxy, Direction::Inbound, &mut req),
    };
    record.from_peer(&ctx.peer_id);
    let result = match admit(&mut req, ask, ctx) {
        Err(e) => Err(e),
        Ok(port) => {
            record.delivered_to(app_addr(ctx, port));
            match ask {
                Ask::Stream => return Box::pin(tcp_to_app(req, port, ctx, record)).await,
                // Boxed: large and rare; unboxed it would grow every request's task.
                Ask::Upgrade => Box::pin(upgrade_to_app(req, port, ctx)).await,
                Ask::Request => http_to_app(req, port, ctx, &record).await,
            }
        }
    };
    let resp = result.unwrap_or_else(|e| refuse(ctx, &e, &mut record));
    record.respond(resp)
}

/// Answers a request the proxy will not (or could not) carry to the app. Refusals by `admit` (denials,
/// rate limits, ports, no config yet) were logged where they were decided.
fn refuse(ctx: &TunnelConn, e: &ProxyError, record: &mut Record) -> Response<Body> {
    record.failed(e);
    let logged = matches!(
        e,
        ProxyError::Denied { .. }
            | ProxyError::RateLimited { .. }
            | ProxyError::ProxyPort { .. }
            | ProxyError::PortNotAllowed { .. }
            | ProxyError::NoPolicyView
    );
    if !logged {
        tracing::warn!(peer = %ctx.peer_addr, peer_id = %ctx.peer_id, error = %e, "inbound request failed");
    }
    answer(e)
}

/// Everything a request must pass before it is carried to the app, against one mesh view: a view with
/// this workload's policies (fail closed until there is one), a target port that is the app's,
/// authorization, and the route rate limits of this workload's services (every kind counts: an opaque
/// stream under the rule that routes TCP, a WebSocket as the GET the app will see).
fn admit(req: &mut Request<Incoming>, ask: Ask, ctx: &TunnelConn) -> Result<u16, ProxyError> {
    if !ctx.proxy.has_policy_view() {
        ctx.proxy.metrics.reject(Listener::Tunnel, Reason::NoConfig);
        tracing::warn!(peer = %ctx.peer_addr, peer_id = %ctx.peer_id, "inbound request refused: no config from the control plane yet");
        return Err(ProxyError::NoPolicyView);
    }
    let mesh = ctx.proxy.mesh();
    let port = target_port(req, ask, ctx)?;
    authorize(req, ask, port, ctx, &mesh)?;
    let method = if ask == Ask::Upgrade {
        &Method::GET
    } else {
        req.method()
    };
    let view = RequestView {
        method,
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let view = (ask != Ask::Stream).then_some(&view);
    let source = Some(&ctx.peer_id);
    crate::traffic::ratelimit::check(&ctx.proxy, &mesh, Listener::Tunnel, source, port, view)?;
    Ok(port)
}

/// Applies the workload's authorization policies. An HTTP request's path is normalised first (and sent
/// on normalised, so the app sees what the policy saw); a path that cannot be is refused with 400.
fn authorize(
    req: &mut Request<Incoming>,
    ask: Ask,
    port: u16,
    ctx: &TunnelConn,
    mesh: &MeshView,
) -> Result<(), ProxyError> {
    if mesh.authorizer.is_empty() {
        return Ok(());
    }
    let path = if ask == Ask::Stream {
        None
    } else {
        let p = authz::normalize::normalize(req.uri().path())
            .map_err(|e| ProxyError::BadPath(e.to_string()))?;
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
    authz::authorize(&ctx.proxy, mesh, &subject)
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
fn target_port(req: &Request<Incoming>, ask: Ask, ctx: &TunnelConn) -> Result<u16, ProxyError> {
    let port = if ask == Ask::Stream {
        req.uri().port_u16()
    } else {
        req.headers()
            .get(TARGET_PORT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let port = port
        .filter(|p| *p != 0)
        .ok_or(ProxyError::BadTunnelRequest("no target port"))?;
    if let Err(refusal) = ctx.proxy.delivery.check(port) {
        let reason = refusal.reason();
        ctx.proxy.metrics.reject(Listener::Tunnel, reason);
        tracing::warn!(peer = %ctx.peer_addr, peer_id = %ctx.peer_id, port, reason = reason.as_str(), "inbound request refused: the target port is not the app's");
        return Err(refusal.error(port));
    }
    Ok(port)
}

fn app_addr(ctx: &TunnelConn, port: u16) -> SocketAddr {
    ctx.proxy.delivery.app_addr(port)
}

async fn connect_app(ctx: &TunnelConn, port: u16) -> Result<TcpStream, ProxyError> {
    let timeout = ctx.proxy.config.limits.connect_timeout.get();
    match tokio::time::timeout(timeout, TcpStream::connect(app_addr(ctx, port))).await {
        Err(_) => Err(ProxyError::AppConnectTimeout { port }),
        Ok(Err(source)) => Err(ProxyError::AppConnect { port, source }),
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
    ctx: &TunnelConn,
    record: &Record,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let which = match parts.headers.get(ORIG_PROTO) {
        Some(v) if v == "1.1" => AppHttp::Http1,
        _ => AppHttp::Http2,
    };
    prepare_for_app(&mut parts, port, which, ctx)?;
    let req = Request::from_parts(parts, record.request_body(body::boxed(body)));
    let resp = ctx.proxy.apps.send(which, req).await?;
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_2;
    Ok(Response::from_parts(parts, body))
}

fn prepare_for_app(
    parts: &mut http::request::Parts,
    port: u16,
    which: AppHttp,
    ctx: &TunnelConn,
) -> Result<(), ProxyError> {
    let authority = parts.uri.authority().cloned();
    parts.uri = ctx.proxy.delivery.app_uri(port, &parts.uri)?;
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    headers::strip_mesh_headers(h);
    h.insert(XFCC, ctx.xfcc.clone());
    if which == AppHttp::Http1 {
        parts.version = Version::HTTP_11;
        if let Some(a) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            h.insert(header::HOST, a);
        }
    } else {
        parts.version = Version::HTTP_2;
    }
    Ok(())
}

/// A CONNECT stream: connect to the app port first (so a refused port is a refused stream), answer 200,
/// then copy bytes both ways. The stream's record goes with it and is written when it ends.
async fn tcp_to_app(
    mut req: Request<Incoming>,
    port: u16,
    ctx: &TunnelConn,
    mut record: Record,
) -> Response<Body> {
    let mut app = match connect_app(ctx, port).await {
        Ok(app) => app,
        Err(e) => {
            let refused = refuse(ctx, &e, &mut record);
            return record.respond(refused);
        }
    };
    record.status(StatusCode::OK);
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The stream stays open on the peer's connection until the splice ends.
    let open = StreamOpen::take(&mut req);
    let metrics = ctx.proxy.metrics.clone();
    let how = Splice::new(&ctx.proxy, Direction::Inbound, Listener::Tunnel);
    let (peer_addr, peer_id) = (ctx.peer_addr, ctx.peer_id.clone());
    ctx.proxy.tasks.spawn(async move {
        let _open = open;
        let _active = ActiveGuard::new(
            &metrics,
            ConnLabels {
                direction: Direction::Inbound,
                protocol: ConnProtocol::Tcp,
            },
        );
        match on_upgrade.await {
            Ok(stream) => {
                let res = splice(&mut TokioIo::new(stream), &mut app, &metrics, how).await;
                tracing::debug!(peer = %peer_addr, %peer_id, port, result = ?res, "inbound tcp stream done");
                record.streamed(&res);
            }
            Err(e) => tracing::debug!(peer = %peer_addr, error = %e, "CONNECT stream did not open"),
        }
    });
    Response::new(body::empty())
}

/// Extended CONNECT (`:protocol`, e.g. websocket): replay it to the app as an HTTP/1.1 upgrade on a fresh
/// connection, answer 200 with the app's 101 headers, then splice both upgraded streams.
async fn upgrade_to_app(
    mut req: Request<Incoming>,
    port: u16,
    ctx: &TunnelConn,
) -> Result<Response<Body>, ProxyError> {
    let proto = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let from_peer = hyper::upgrade::on(&mut req);
    let open = StreamOpen::take(&mut req);
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
        .map_err(|_| ProxyError::BadTunnelRequest("bad path"))?;
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let upgrade =
        HeaderValue::from_str(&proto).map_err(|_| ProxyError::BadTunnelRequest("bad :protocol"))?;
    parts.headers.insert(header::UPGRADE, upgrade);

    let app = connect_app(ctx, port).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(app))
        .await
        .map_err(|e| ProxyError::AppRequest {
            port,
            source: Box::new(e),
        })?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = send
        .send_request(Request::from_parts(parts, body::empty()))
        .await
        .map_err(|e| ProxyError::AppRequest {
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
    splice_upgraded(&ctx.proxy, Listener::Tunnel, (from_peer, open), from_app);
    Ok(out)
}

/// Once both sides of an upgrade (the caller's and the app's) are through, carries the bytes between
/// them as an inbound stream of `listener`, tracked so a drain waits for it. The caller's HTTP/2 stream
/// mark (if any) is kept until the splice ends.
pub(crate) fn splice_upgraded(
    proxy: &Proxy,
    listener: Listener,
    (caller, open): (hyper::upgrade::OnUpgrade, Option<StreamOpen>),
    app: hyper::upgrade::OnUpgrade,
) {
    let metrics = proxy.metrics.clone();
    let how = Splice::new(proxy, Direction::Inbound, listener);
    proxy.tasks.spawn(async move {
        let _open = open;
        if let Ok((c, a)) = tokio::try_join!(caller, app) {
            let (mut c, mut a) = (TokioIo::new(c), TokioIo::new(a));
            let _ = splice(&mut c, &mut a, &metrics, how).await;
        }
    });
}

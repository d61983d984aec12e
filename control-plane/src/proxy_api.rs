//! Port 15010: the API proxies use, over TLS that presents the control plane's certificate.
//!
//! `POST /v1/certificate` signs a CSR for a join token or, with a client certificate, renews that
//! certificate's identity. `POST /v1/stream` (client certificate required) registers the proxy's workload
//! and carries snapshots one way and ACK/NACK/readiness/request counts the other (see `weft_api::control`).

use crate::http_util::{self, Body};
use crate::open_streams::OpenStreams;
use crate::rope::Rope;
use crate::server::ControlPlane;
use futures_util::stream;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weft_api::control::{
    CertificateRequest, FrameDecoder, FromProxy, Hello, MIN_PROTOCOL_VERSION, PATH_CERTIFICATE,
    PATH_STREAM, PROTOCOL_VERSION,
};
use weft_certs::SpiffeId;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REQUEST: usize = 64 << 10;
/// A certificate request's body must arrive within this (a slow body must not hold a slot forever).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first message of a config stream. A real hello (name, a few labels, address, ports) is a few
/// hundred bytes; 16 KiB leaves room for many labels and refuses anything built to exhaust memory.
pub const MAX_HELLO: usize = 16 << 10;
/// Later messages: the largest is a stats report of `MAX_STATS_ENTRIES` entries (about 200 KiB).
pub const MAX_STREAM_MESSAGE: usize = 1 << 20;
/// How long after its expiry a proxy's certificate still authenticates a renewal (and nothing else):
/// a proxy whose certificate expired while the control plane was down renews as soon as it is back,
/// instead of needing a new join token. Its revocation records are kept as long (docs/security.md).
pub const EXPIRED_RENEWAL_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Who is on the other end of one connection.
struct Peer {
    addr: SocketAddr,
    id: Option<SpiffeId>,
    cert_not_after: Option<u64>,
    /// The client certificate's serial (lowercase hex): for revocation, and what a workload claim is
    /// bound to.
    serial: Option<String>,
    /// The client certificate has expired (it is within [`EXPIRED_RENEWAL_GRACE`]): it may renew, and
    /// do nothing else.
    expired: bool,
}

pub async fn run(listener: TcpListener, cp: Arc<ControlPlane>) {
    let acceptor = TlsAcceptor::from(cp.proxy_tls.clone());
    let limits = cp.api_limits;
    tracing::info!(
        max_connections = limits.max_connections,
        max_per_client = limits.max_per_client,
        "proxy API connection limits"
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let clients = Arc::new(ClientCounts::default());
    let refusals = RefusalLog::default();
    loop {
        let (tcp, addr) = tokio::select! {
            _ = cp.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, typically: wait for connections to close.
                    tracing::warn!(error = %e, "accept failed on the proxy API");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(client) = clients.clone().try_add(addr.ip(), limits.max_per_client) else {
            refusals.note(&cp, addr, "per_client_limit");
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refusals.note(&cp, addr, "limit");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let fut = connection(tcp, addr, acceptor.clone(), cp.clone());
        cp.tasks.spawn(async move {
            fut.await;
            drop((permit, client));
        });
    }
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    cp: Arc<ControlPlane>,
) {
    let limits = cp.api_limits;
    let Some(tls) = accept_tls(tcp, addr, &acceptor, &cp).await else {
        return;
    };
    let conn = tls.get_ref().1;
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let cert_not_after = leaf.and_then(|leaf| not_after(leaf.as_ref()));
    let peer = Arc::new(Peer {
        addr,
        id: weft_certs::tls::peer_id(conn),
        cert_not_after,
        serial: leaf.and_then(|leaf| weft_certs::leaf_serial_hex(leaf.as_ref())),
        expired: cert_not_after.is_some_and(|t| t < crate::tokens::now_secs()),
    });
    let requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc_cp = cp.clone();
    let (svc_peer, svc_requested) = (peer.clone(), requested.clone());
    let streams = OpenStreams::default();
    let svc_streams = streams.clone();
    let svc = hyper::service::service_fn(move |req| {
        svc_requested.store(true, std::sync::atomic::Ordering::Relaxed);
        let (cp, peer) = (svc_cp.clone(), svc_peer.clone());
        let open = svc_streams.open();
        async move {
            let resp = route(req, &cp, &peer).await;
            Ok::<_, std::convert::Infallible>(open.until_body_ends(resp))
        }
    });
    let conn = http2_builder().serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    let no_streams = streams.idle_for(limits.idle_timeout);
    tokio::pin!(no_streams);
    let mut going_away = false;
    let idle = tokio::time::sleep(limits.first_request_timeout);
    tokio::pin!(idle);
    let mut revocations = cp.revocations_changed.subscribe();
    let mut idle_armed = true;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %addr, error = %e, "proxy API connection ended");
                }
                return;
            }
            _ = &mut idle, if idle_armed => {
                idle_armed = false;
                if !requested.load(std::sync::atomic::Ordering::Relaxed) {
                    cp.metrics.api_refused("idle");
                    return tracing::info!(peer = %addr, timeout = ?limits.first_request_timeout, "proxy API: closed, no request");
                }
            }
            () = &mut no_streams, if !going_away => {
                // GOAWAY; a stream in flight is never cut, and the proxy reconnects when it needs to.
                going_away = true;
                cp.metrics.api_refused("idle");
                tracing::debug!(peer = %addr, timeout = ?limits.idle_timeout, "proxy API: connection closed, no open stream");
                conn.as_mut().graceful_shutdown();
            }
            Ok(()) = revocations.changed() => {
                if peer.serial.as_deref().is_some_and(|s| cp.issuer.revocations().is_denied(s)) {
                    cp.metrics.api_refused("revoked");
                    return tracing::warn!(peer = %addr, id = ?peer.id.as_ref().map(|i| i.to_string()), "proxy API: connection closed, its certificate is revoked");
                }
            }
            _ = cp.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                return;
            }
        }
    }
}

/// The TLS handshake, within its timeout and with ALPN h2; failures are logged and counted.
async fn accept_tls(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: &TlsAcceptor,
    cp: &ControlPlane,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let tls =
        match tokio::time::timeout(cp.api_limits.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let revoked = matches!(
                    e.get_ref()
                        .and_then(|i| i.downcast_ref::<rustls::Error>())
                        .and_then(weft_certs::verify_error),
                    Some(weft_certs::VerifyError::Revoked { .. })
                );
                cp.metrics
                    .api_refused(if revoked { "revoked" } else { "handshake" });
                tracing::info!(peer = %addr, error = %e, "proxy API: TLS handshake failed");
                return None;
            }
            Err(_) => {
                cp.metrics.api_refused("handshake_timeout");
                tracing::info!(peer = %addr, "proxy API: TLS handshake timed out");
                return None;
            }
        };
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        cp.metrics.api_refused("handshake");
        tracing::info!(peer = %addr, "proxy API: refused, ALPN h2 not negotiated");
        return None;
    }
    Some(tls)
}

/// HTTP/2 for proxies: a handful of streams each (the config stream and a renewal), small headers, and
/// bounds on the reset floods (rapid reset) a hostile client could send.
fn http2_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(16)
        .max_header_list_size(16 << 10)
        .max_pending_accept_reset_streams(Some(16))
        .max_local_error_reset_streams(Some(64))
        .max_send_buf_size(256 << 10);
    builder
}

/// The leaf's expiry (unix seconds).
fn not_after(der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// The proxy API's bodies: a snapshot frame is one chunk of shared pieces ([`Rope`]).
type ApiBody = BoxBody<Rope, std::convert::Infallible>;

fn rope_body(resp: Response<Body>) -> Response<ApiBody> {
    resp.map(|b| b.map_frame(|f| f.map_data(Rope::from)).boxed())
}

async fn route(req: Request<Incoming>, cp: &Arc<ControlPlane>, peer: &Peer) -> Response<ApiBody> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::POST, PATH_CERTIFICATE) => certificate(req, cp, peer).await,
        (&Method::POST, PATH_STREAM) => match &peer.id {
            Some(_) if peer.expired => {
                cp.metrics.refused("cert_expired");
                tracing::info!(peer = %peer.addr, "config stream refused: the client certificate has expired; it may only renew");
                http_util::error(
                    StatusCode::FORBIDDEN,
                    "the client certificate has expired: renew it first (POST /v1/certificate)",
                    vec![],
                )
            }
            Some(id) => return config_stream(req, cp, peer, id.clone()).await,
            None => http_util::error(
                StatusCode::FORBIDDEN,
                "the config stream requires a client certificate",
                vec![],
            ),
        },
        _ => http_util::error(StatusCode::NOT_FOUND, "no such endpoint", vec![]),
    };
    rope_body(resp)
}

async fn certificate(req: Request<Incoming>, cp: &ControlPlane, peer: &Peer) -> Response<Body> {
    let read = http_util::read_json(req.into_body(), MAX_REQUEST, REQUEST_TIMEOUT);
    let body: CertificateRequest = match read.await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if peer.expired {
        tracing::info!(peer = %peer.addr, id = ?peer.id.as_ref().map(|i| i.to_string()), not_after = ?peer.cert_not_after,
            "renewal with an expired certificate (within the grace for a control plane that was away)");
    }
    let res = match (&peer.id, &body.token) {
        (Some(id), _) => cp.issuer.renew(id, peer.serial.as_deref(), &body.csr_pem),
        (None, Some(token)) => cp.issuer.join(token, &body.csr_pem),
        (None, None) => Err(crate::issuer::IssueError::NoCredential),
    };
    match res {
        Ok(cert) => http_util::json(StatusCode::OK, &cert),
        Err(e) => {
            tracing::warn!(peer = %peer.addr, id = ?peer.id.as_ref().map(|i| i.to_string()), error = %e, "certificate request refused");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
            http_util::error(status, e.to_string(), vec![])
        }
    }
}

async fn config_stream(
    req: Request<Incoming>,
    cp: &Arc<ControlPlane>,
    peer: &Peer,
    id: SpiffeId,
) -> Response<ApiBody> {
    match open_stream(req, cp, peer, id).await {
        Ok(outbox) => snapshots_body(outbox),
        Err(refused) => rope_body(refused),
    }
}

/// Reads the hello, registers the proxy and starts reading its messages; its outbox, or the refusal.
async fn open_stream(
    req: Request<Incoming>,
    cp: &Arc<ControlPlane>,
    peer: &Peer,
    id: SpiffeId,
) -> Result<Arc<crate::hub::Outbox>, Response<Body>> {
    let mut body = req.into_body();
    let mut decoder = FrameDecoder::with_limit(MAX_HELLO);
    let hello = match read_hello(&mut body, &mut decoder).await {
        Ok(h) => h,
        Err(reason) => return Err(bad_stream(peer, reason)),
    };
    decoder.set_limit(MAX_STREAM_MESSAGE);
    let protocol = hello.protocol;
    let reg = match registration(hello, &id, peer.serial.as_deref(), cp) {
        Ok(r) => r,
        Err((reason, e)) => {
            cp.metrics.registration_refused(reason);
            return Err(bad_stream(peer, e));
        }
    };
    let key = format!("{}/{}", reg.namespace, reg.registration.name);
    if let Err(e) = check_revocation(cp, peer, &id, &key) {
        tracing::warn!(peer = %peer.addr, proxy = %key, reason = %e, "config stream refused");
        cp.metrics.refused("revoked");
        return Err(http_util::error(StatusCode::FORBIDDEN, e, vec![]));
    }
    let connected = match cp.hub.settings.presence {
        // Taking the name through every replica is an etcd transaction: off the async workers.
        Some(_) => {
            let (hub, not_after) = (cp.hub.clone(), peer.cert_not_after);
            match tokio::task::spawn_blocking(move || hub.connect(reg, not_after, protocol)).await {
                Ok(r) => r,
                Err(e) => {
                    let e = e.to_string();
                    return Err(http_util::error(StatusCode::SERVICE_UNAVAILABLE, e, vec![]));
                }
            }
        }
        None => cp.hub.connect(reg, peer.cert_not_after, protocol),
    };
    let (conn_id, outbox) = match connected {
        Ok(x) => x,
        Err(e) => {
            cp.metrics.registration_refused("name_taken");
            tracing::warn!(peer = %peer.addr, error = %e, "config stream refused");
            return Err(http_util::error(
                StatusCode::CONFLICT,
                e.to_string(),
                vec![],
            ));
        }
    };
    tracing::info!(proxy = %key, %id, peer = %peer.addr, "proxy connected");
    let stream = ProxyStream {
        key,
        conn_id,
        identity: id,
        addr: peer.addr,
    };
    cp.tasks
        .spawn(stream.read_until_closed(cp.clone(), body, decoder));
    Ok(outbox)
}

/// The first message of a config stream, which must be a `hello`, within its time and size limits.
async fn read_hello(body: &mut Incoming, decoder: &mut FrameDecoder) -> Result<Hello, String> {
    match tokio::time::timeout(HELLO_TIMEOUT, read_message(body, decoder)).await {
        Ok(Ok(Some(FromProxy::Hello(h)))) => Ok(h),
        Ok(Ok(Some(other))) => Err(format!("expected hello first, got {other:?}")),
        Ok(Ok(None)) => Err("stream ended before hello".into()),
        Ok(Err(e)) => Err(format!("hello refused: {e}")),
        Err(_) => Err(format!("no hello within {HELLO_TIMEOUT:?}")),
    }
}

/// One registered proxy's side of its config stream: acks, readiness and request counts.
struct ProxyStream {
    key: String,
    conn_id: u64,
    identity: SpiffeId,
    addr: SocketAddr,
}

impl ProxyStream {
    async fn read_until_closed(
        self,
        cp: Arc<ControlPlane>,
        mut body: Incoming,
        mut decoder: FrameDecoder,
    ) {
        let (hub, key, conn_id) = (&cp.hub, &self.key, self.conn_id);
        let reason = loop {
            match read_message(&mut body, &mut decoder).await {
                Ok(Some(FromProxy::Ack { version })) => hub.ack(key, conn_id, version),
                Ok(Some(FromProxy::Nack { version, reason })) => {
                    hub.nack(key, conn_id, version, reason)
                }
                Ok(Some(FromProxy::Ready { ready })) => hub.set_ready(key, conn_id, ready),
                Ok(Some(FromProxy::Stats(report))) => {
                    let reach = |ns: &str, svc: &str, subset: Option<&str>| {
                        hub.may_reach(&self.identity, ns, svc, subset)
                    };
                    cp.stats
                        .update(key, &self.identity, conn_id, report, &cp.metrics, reach)
                }
                Ok(Some(FromProxy::Hello(_))) => break "a second hello".to_string(),
                Ok(None) => break "stream closed".to_string(),
                Err(e) => break e,
            }
        };
        tracing::info!(proxy = %key, peer = %self.addr, %reason, "proxy disconnected");
        cp.stats.remove(key, conn_id);
        hub.disconnect(key, conn_id);
    }
}

/// Each snapshot goes out as one body chunk of pieces; the large shared sections are written from one
/// copy for all.
fn snapshots_body(outbox: Arc<crate::hub::Outbox>) -> Response<ApiBody> {
    let frames = stream::unfold(outbox, |outbox| async move {
        let frame = outbox.next().await?;
        let chunk = Frame::data(Rope::from(frame.into_chunks()));
        Some((Ok::<_, std::convert::Infallible>(chunk), outbox))
    });
    Response::new(BodyExt::boxed(StreamBody::new(frames)))
}

/// What a proxy may register: its namespace is its certificate's, its service account is never the
/// control plane's, and a certificate bound to a workload claim registers exactly that workload. On
/// refusal: a metrics label and the reason, naming the field and the identity.
fn registration(
    hello: Hello,
    id: &SpiffeId,
    serial: Option<&str>,
    cp: &ControlPlane,
) -> Result<crate::hub::Registered, (&'static str, String)> {
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.protocol) {
        return Err((
            "protocol",
            format!(
                "protocol {} is not spoken here (this control plane speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})",
                hello.protocol
            ),
        ));
    }
    if id.trust_domain() != cp.issuer.trust_domain().as_str() {
        return Err((
            "trust_domain",
            format!("{id} is not in this mesh's trust domain"),
        ));
    }
    if *id == crate::state_dir::control_plane_id(cp.issuer.trust_domain()) {
        return Err((
            "control_plane_identity",
            format!("{id} is the control plane's own identity; no workload registers with it"),
        ));
    }
    let namespace = id.namespace().ok_or_else(|| {
        (
            "not_a_workload",
            format!("{id} is not a workload identity (no /ns/.../sa/...)"),
        )
    })?;
    crate::claims::check_workload_name(&hello.workload.name)
        .map_err(|e| ("bad_name", format!("workload.name: {e}")))?;
    cp.issuer
        .claims()
        .check(serial, id, &hello.workload)
        .map_err(|e| (e.label(), e.to_string()))?;
    Ok(crate::hub::Registered {
        namespace: namespace.to_string(),
        identity: id.clone(),
        registration: hello.workload,
    })
}

/// A revoked certificate, identity or workload registers nothing; otherwise the certificate is bound to
/// the workload it registers as (so revoking the workload reaches it and its renewals).
fn check_revocation(
    cp: &ControlPlane,
    peer: &Peer,
    id: &SpiffeId,
    key: &str,
) -> Result<(), String> {
    let mut rev = cp.issuer.revocations();
    if let Some(serial) = peer.serial.as_deref().filter(|s| rev.is_denied(s)) {
        return Err(format!("certificate {serial} is revoked"));
    }
    if let Some(target) = rev.revoked_target(id, Some(key)) {
        return Err(format!("{target} is revoked; `weftctl unrevoke` lifts it"));
    }
    if let Some(serial) = &peer.serial {
        if let Err(e) = rev.bind_workload(serial, key) {
            tracing::warn!(proxy = %key, error = %e, "cannot record which certificate the workload holds");
        }
    }
    Ok(())
}

fn bad_stream(peer: &Peer, reason: String) -> Response<Body> {
    tracing::warn!(peer = %peer.addr, %reason, "config stream refused");
    http_util::error(StatusCode::BAD_REQUEST, reason, vec![])
}

async fn read_message(
    body: &mut Incoming,
    decoder: &mut FrameDecoder,
) -> Result<Option<FromProxy>, String> {
    loop {
        match decoder.next::<FromProxy>() {
            Ok(Some(m)) => return Ok(Some(m)),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match body.frame().await {
            None => return decoder.finish().map(|_| None).map_err(|e| e.to_string()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
        }
    }
}

// === connection limits ===

/// Limits of the proxy API against clients that connect and then do nothing, or connect too often.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once, from everyone; a mesh of a few thousand proxies stays well under it.
    pub max_connections: usize,
    /// Connections at once from one client address (a node's proxies behind one NAT count together).
    pub max_per_client: usize,
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A connection that sends no request within this is closed.
    pub first_request_timeout: Duration,
    /// A connection with no open stream for this long is closed with GOAWAY (a proxy's config stream
    /// keeps its connection open; a connection left after a certificate request goes).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_per_client: 64,
            handshake_timeout: Duration::from_secs(5),
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// File descriptors kept for everything but proxy API connections (state files, the operator API).
const RESERVED_FILES: u64 = 256;

impl Limits {
    /// Raises the open-file limit to its hard limit and keeps `max_connections` below it, so a flood
    /// meets our limit rather than the kernel's (where accept fails for everyone).
    pub fn fitted_to_open_files(mut self) -> Limits {
        let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(error) => {
                tracing::warn!(%error, "cannot read or raise RLIMIT_NOFILE");
                return self;
            }
        };
        let room = open_files.saturating_sub(RESERVED_FILES).max(16);
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        if self.max_connections > room {
            tracing::warn!(
                asked = self.max_connections,
                open_files,
                using = room,
                "proxy API connection limit lowered to fit the open-file limit"
            );
            self.max_connections = room;
        }
        self.max_per_client = self.max_per_client.min(self.max_connections);
        self
    }
}

/// Open connections per client address.
#[derive(Default)]
struct ClientCounts(std::sync::Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`ClientCounts`], given back on drop.
struct ClientSlot(Arc<ClientCounts>, IpAddr);

impl ClientCounts {
    fn try_add(self: Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        drop(m);
        Some(ClientSlot(self, ip))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Counts every refused connection and logs them at most once a second: a flood must not flood the log.
#[derive(Default)]
struct RefusalLog {
    last: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

impl RefusalLog {
    fn note(&self, cp: &ControlPlane, addr: SocketAddr, reason: &'static str) {
        cp.metrics.api_refused(reason);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (since, n) = last.get_or_insert((std::time::Instant::now(), 0));
        *n += 1;
        if *n == 1 || since.elapsed() >= Duration::from_secs(1) {
            tracing::warn!(peer = %addr, reason, refused = *n, "proxy API connection refused: connection limit reached");
            *last = Some((std::time::Instant::now(), 0));
        }
    }
}

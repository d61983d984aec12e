//! Port 15010: the API proxies use, over TLS that presents the control plane's certificate.
//!
//! `POST /v1/certificate` signs a CSR for a join token or, with a client certificate, renews that
//! certificate's identity. `POST /v1/stream` (client certificate required) registers the proxy's workload
//! and carries snapshots one way and ACK/NACK/readiness/request counts the other (see `weft_api::control`).

use crate::http_util::{self, Body};
use crate::server::ControlPlane;
use futures_util::{stream, StreamExt as _};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weft_api::control::{
    CertificateRequest, FrameDecoder, FromProxy, Hello, PATH_CERTIFICATE, PATH_STREAM,
    PROTOCOL_VERSION,
};
use weft_certs::SpiffeId;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REQUEST: usize = 64 << 10;
/// Connections at once; a mesh of a few thousand proxies stays well under it.
const MAX_CONNECTIONS: usize = 20_000;

/// Who is on the other end of one connection.
struct Peer {
    addr: SocketAddr,
    id: Option<SpiffeId>,
    cert_not_after: Option<u64>,
    /// The client certificate's serial (lowercase hex): what a workload claim is bound to.
    serial: Option<String>,
}

pub async fn run(listener: TcpListener, cp: Arc<ControlPlane>) {
    let acceptor = TlsAcceptor::from(cp.proxy_tls.clone());
    crate::server::accept_loop(listener, &cp, "proxy API", MAX_CONNECTIONS, |tcp, addr| {
        connection(tcp, addr, acceptor.clone(), cp.clone())
    })
    .await
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    cp: Arc<ControlPlane>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return tracing::info!(peer = %addr, error = %e, "proxy API: TLS handshake failed")
        }
        Err(_) => return tracing::info!(peer = %addr, "proxy API: TLS handshake timed out"),
    };
    let conn = tls.get_ref().1;
    if conn.alpn_protocol() != Some(b"h2") {
        return tracing::info!(peer = %addr, "proxy API: refused, ALPN h2 not negotiated");
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| leaf_facts(leaf.as_ref()));
    let peer = Arc::new(Peer {
        addr,
        id: weft_certs::tls::peer_id(conn),
        cert_not_after: leaf.as_ref().map(|(n, _)| *n),
        serial: leaf.map(|(_, s)| s),
    });
    let svc_cp = cp.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (cp, peer) = (svc_cp.clone(), peer.clone());
        async move { Ok::<_, std::convert::Infallible>(route(req, &cp, &peer).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(16)
        .max_header_list_size(16 << 10);
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            tracing::debug!(peer = %addr, error = %e, "proxy API connection ended");
        },
        _ = cp.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// The leaf's expiry (unix seconds) and serial (lowercase hex).
fn leaf_facts(der: &[u8]) -> Option<(u64, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some((not_after, crate::issuer::serial_hex(cert.raw_serial())))
}

async fn route(req: Request<Incoming>, cp: &Arc<ControlPlane>, peer: &Peer) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, PATH_CERTIFICATE) => certificate(req, cp, peer).await,
        (&Method::POST, PATH_STREAM) => match &peer.id {
            Some(id) => config_stream(req, cp, peer, id.clone()).await,
            None => http_util::error(
                StatusCode::FORBIDDEN,
                "the config stream requires a client certificate",
                vec![],
            ),
        },
        _ => http_util::error(StatusCode::NOT_FOUND, "no such endpoint", vec![]),
    }
}

async fn certificate(req: Request<Incoming>, cp: &ControlPlane, peer: &Peer) -> Response<Body> {
    let body: CertificateRequest = match http_util::read_json(req.into_body(), MAX_REQUEST).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
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
) -> Response<Body> {
    let mut body = req.into_body();
    let mut decoder = FrameDecoder::default();
    let hello =
        match tokio::time::timeout(HELLO_TIMEOUT, read_message(&mut body, &mut decoder)).await {
            Ok(Ok(Some(FromProxy::Hello(h)))) => h,
            Ok(Ok(Some(other))) => {
                return bad_stream(peer, format!("expected hello first, got {other:?}"))
            }
            Ok(Ok(None)) => return bad_stream(peer, "stream ended before hello".into()),
            Ok(Err(e)) => return bad_stream(peer, e),
            Err(_) => return bad_stream(peer, format!("no hello within {HELLO_TIMEOUT:?}")),
        };
    let reg = match registration(hello, &id, peer.serial.as_deref(), cp) {
        Ok(r) => r,
        Err((reason, e)) => {
            cp.metrics.registration_refused(reason);
            return bad_stream(peer, e);
        }
    };
    let key = format!("{}/{}", reg.namespace, reg.registration.name);
    let (conn_id, outbox) = match cp.hub.connect(reg, peer.cert_not_after) {
        Ok(x) => x,
        Err(e) => {
            cp.metrics.registration_refused("name_taken");
            tracing::warn!(peer = %peer.addr, error = %e, "config stream refused");
            return http_util::error(StatusCode::CONFLICT, e.to_string(), vec![]);
        }
    };
    tracing::info!(proxy = %key, %id, peer = %peer.addr, "proxy connected");
    let hub = cp.hub.clone();
    let addr = peer.addr;
    let identity = id.clone();
    let cp_stats = cp.clone();
    cp.tasks.spawn(async move {
        let reason = loop {
            match read_message(&mut body, &mut decoder).await {
                Ok(Some(FromProxy::Ack { version })) => hub.ack(&key, conn_id, version),
                Ok(Some(FromProxy::Nack { version, reason })) => {
                    hub.nack(&key, conn_id, version, reason)
                }
                Ok(Some(FromProxy::Ready { ready })) => hub.set_ready(&key, conn_id, ready),
                Ok(Some(FromProxy::Stats(report))) => {
                    let reach = |ns: &str, svc: &str, subset: Option<&str>| {
                        hub.may_reach(&identity, ns, svc, subset)
                    };
                    let metrics = &cp_stats.metrics;
                    cp_stats
                        .stats
                        .update(&key, &identity, conn_id, report, metrics, reach)
                }
                Ok(Some(FromProxy::Hello(_))) => break "a second hello".to_string(),
                Ok(None) => break "stream closed".to_string(),
                Err(e) => break e,
            }
        };
        tracing::info!(proxy = %key, peer = %addr, %reason, "proxy disconnected");
        cp_stats.stats.remove(&key, conn_id);
        hub.disconnect(&key, conn_id);
    });
    // Each snapshot goes out as its pieces; the shared sections are written from one copy for all.
    let frames = stream::unfold(outbox, |outbox| async move {
        let frame = outbox.next().await?;
        let pieces = frame
            .0
            .into_iter()
            .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)));
        Some((stream::iter(pieces), outbox))
    })
    .flatten();
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
    if hello.protocol != PROTOCOL_VERSION {
        return Err((
            "protocol",
            format!(
                "protocol {} is not spoken here (this control plane speaks {PROTOCOL_VERSION})",
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

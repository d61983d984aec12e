//! The client side of the peer hop: one mutual-TLS HTTP/2 connection per peer proxy, multiplexing every
//! request and every opaque TCP stream. A second connection is opened only when every open one carries its
//! stream limit; a closed or failed connection is dropped and the next request reconnects.

use crate::path::body::{self, Body, Guarded};
use crate::path::errors::ProxyError;
use crate::telemetry::metrics::{Direction, Metrics};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use weft_api::Upstream;
use weft_certs::{Identity, SpiffeId};

/// Settings for peer connections.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub max_streams_per_connection: usize,
}

/// Flow-control windows for the peer hop. Loopback and pod networks have a large bandwidth-delay
/// product; the 64 KiB HTTP/2 default caps a bulk stream at a few hundred Mbit/s.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Largest DATA frame either side of the peer hop accepts (both proxies advertise it; see
/// `listen::http2_builder`). h2 writes one frame per write to TLS, so this, with a splice's 256 KiB
/// reads, sets how many bytes one socket write carries on a bulk stream: 256 KiB frames cut the
/// tunnel's writes and the app-side writes behind it 4x against 64 KiB (docs/performance.md, L4).
pub const MAX_FRAME: u32 = 256 * 1024;

/// Unsent TLS bytes rustls may hold per peer connection (its default is 64 KiB). One frame write is a
/// frame plus its 9-byte header; under the default, a 64 KiB frame did not fit, so its last bytes went
/// out as a separate 31-byte record in a second `writev`. Room for two whole frames keeps each frame
/// one write.
pub(crate) const TLS_SEND_BUFFER: usize = 2 * MAX_FRAME as usize;

#[derive(Clone, PartialEq, Eq, Hash)]
struct PeerKey {
    addr: SocketAddr,
    identity: SpiffeId,
}

struct Peer {
    key: PeerKey,
    tls: TlsConnector,
    conns: Mutex<Vec<PooledConn>>,
}

#[derive(Clone)]
struct PooledConn {
    send: http2::SendRequest<Body>,
    streams: Arc<AtomicUsize>,
    /// When the peer's leaf on this connection expires: no new request goes on it after that (a new
    /// handshake sees the peer's current leaf); requests under way finish.
    peer_not_after: Option<std::time::SystemTime>,
}

impl PooledConn {
    /// Usable for a new request at `now` (the mesh's clock; X.509 times are whole seconds, and a leaf
    /// is valid through its `notAfter` second).
    fn usable(&self, now: std::time::SystemTime) -> bool {
        !self.send.is_closed()
            && self
                .peer_not_after
                .is_none_or(|t| now < t + Duration::from_secs(1))
    }
}

/// A stream slot on one peer connection, released on drop (when the response body or tunnel ends).
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All peer connections of one proxy.
pub struct PeerPool {
    identity: Identity,
    settings: PeerSettings,
    metrics: Arc<Metrics>,
    peers: std::sync::RwLock<HashMap<PeerKey, Arc<Peer>>>,
    /// Bumped when the revocation list changes: open connections (both directions) re-check their peer.
    revocations: tokio::sync::watch::Sender<u64>,
}

impl PeerPool {
    pub fn new(identity: Identity, settings: PeerSettings, metrics: Arc<Metrics>) -> PeerPool {
        PeerPool {
            identity,
            settings,
            metrics,
            peers: Default::default(),
            revocations: tokio::sync::watch::channel(0).0,
        }
    }

    /// Tells open connections that the revocation list changed.
    pub fn revocations_changed(&self) {
        self.revocations.send_modify(|n| *n += 1);
    }

    /// Resolves once the revocation list holds `peer_leaf` (a connection's peer certificate, DER): the
    /// caller then closes that connection. Pending forever if it never does.
    pub async fn revoked(&self, peer_leaf: &[u8]) {
        until_revoked(
            &self.identity,
            peer_leaf,
            self.revocations.subscribe(),
            &self.metrics,
        )
        .await
    }

    /// Sends an HTTP request to the peer and returns its response; the response body holds the stream
    /// slot, so the slot is free again exactly when the response stream ends.
    pub async fn send(
        &self,
        up: &Upstream,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        self.send_with(up, req, None).await
    }

    /// [`PeerPool::send`] with the destination's own connect timeout, when it sets one.
    pub async fn send_with(
        &self,
        up: &Upstream,
        req: Request<Body>,
        connect_timeout: Option<Duration>,
    ) -> Result<Response<Body>, ProxyError> {
        let (resp, slot) = self.send_raw_with(up, req, connect_timeout).await?;
        Ok(resp.map(|b| body::boxed(Guarded::new(b, slot))))
    }

    /// Opens a CONNECT stream (or, with `protocol`, an extended CONNECT) and returns it as a byte stream.
    pub async fn connect_tcp(
        &self,
        up: &Upstream,
        connect_timeout: Option<Duration>,
    ) -> Result<(TokioIo<Upgraded>, StreamSlot), ProxyError> {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{}:{}", up.peer.ip(), up.target_port))
            .body(body::empty())
            .map_err(|_| ProxyError::BadTunnelRequest("cannot build CONNECT request"))?;
        let (resp, slot) = self.send_raw_with(up, req, connect_timeout).await?;
        if resp.status() != StatusCode::OK {
            return Err(ProxyError::PeerRefused {
                peer: up.peer,
                status: resp.status(),
            });
        }
        let upgraded =
            hyper::upgrade::on(resp)
                .await
                .map_err(|source| ProxyError::PeerRequest {
                    peer: up.peer,
                    source,
                })?;
        Ok((TokioIo::new(upgraded), slot))
    }

    /// A request that never reached a connection that then closed is sent again on a fresh one.
    pub async fn send_raw(
        &self,
        up: &Upstream,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, StreamSlot), ProxyError> {
        self.send_raw_with(up, req, None).await
    }

    async fn send_raw_with(
        &self,
        up: &Upstream,
        mut req: Request<Body>,
        connect_timeout: Option<Duration>,
    ) -> Result<(Response<Incoming>, StreamSlot), ProxyError> {
        let peer = self.peer(up);
        let mut retried = false;
        loop {
            let (mut conn, slot) = self.checkout(&peer, connect_timeout).await?;
            match conn.send.try_send_request(req).await {
                Ok(resp) => return Ok((resp, slot)),
                Err(mut e) => match e.take_message() {
                    Some(back) if !retried => {
                        tracing::debug!(peer = %up.peer, error = %e.into_error(), "peer connection closed before the request was sent; retrying on a new one");
                        req = back;
                        retried = true;
                    }
                    _ => {
                        return Err(ProxyError::PeerRequest {
                            peer: up.peer,
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
    }

    fn peer(&self, up: &Upstream) -> Arc<Peer> {
        let key = PeerKey {
            addr: up.peer,
            identity: up.identity.clone(),
        };
        if let Some(p) = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return p.clone();
        }
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        peers
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Peer {
                    tls: TlsConnector::from(self.identity.client_config(&key.identity)),
                    key,
                    conns: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Picks an open connection with a free stream slot, connecting when there is none. The lock is held
    /// while connecting so that concurrent requests share the one new connection.
    async fn checkout(
        &self,
        peer: &Peer,
        connect_timeout: Option<Duration>,
    ) -> Result<(PooledConn, StreamSlot), ProxyError> {
        // Fail closed: peers refuse an expired leaf, and open connections made with it must not carry
        // new requests either. Nothing goes out in plaintext instead.
        if let Some(not_after) = self.identity.expired_at() {
            return Err(ProxyError::CertificateExpired { not_after });
        }
        let mut conns = peer.conns.lock().await;
        let now = self.identity.mesh_now();
        conns.retain(|c| c.usable(now));
        let max = self.settings.max_streams_per_connection;
        for c in conns.iter() {
            if c.streams.fetch_add(1, Ordering::Relaxed) < max {
                return Ok((c.clone(), StreamSlot(c.streams.clone())));
            }
            c.streams.fetch_sub(1, Ordering::Relaxed);
        }
        let c = self.connect(peer, connect_timeout).await?;
        c.streams.fetch_add(1, Ordering::Relaxed);
        conns.push(c.clone());
        let slot = StreamSlot(c.streams.clone());
        Ok((c, slot))
    }

    async fn connect(
        &self,
        peer: &Peer,
        connect_timeout: Option<Duration>,
    ) -> Result<PooledConn, ProxyError> {
        let addr = peer.key.addr;
        let s = &self.settings;
        let timeout = connect_timeout.unwrap_or(s.connect_timeout);
        let tcp = match crate::socket::connect(addr, timeout).await {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ProxyError::PeerConnectTimeout { peer: addr })
            }
            Err(source) => return Err(ProxyError::PeerConnect { peer: addr, source }),
            Ok(tcp) => tcp,
        };
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls_err = |reason: String| ProxyError::PeerTls {
            peer: addr,
            expected: peer.key.identity.clone(),
            reason,
        };
        let mut tls =
            match tokio::time::timeout(s.handshake_timeout, peer.tls.connect(name, tcp)).await {
                Err(_) => return Err(tls_err("handshake timed out".into())),
                Ok(Err(e)) => {
                    self.metrics.tls_failure(Direction::Outbound, &e);
                    return Err(tls_err(tls_reason(&e)));
                }
                Ok(Ok(tls)) => tls,
            };
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(tls_err("peer did not negotiate ALPN h2".into()));
        }
        tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
        let leaf = peer_leaf(tls.get_ref().1);
        let peer_not_after = weft_certs::leaf_not_after(&leaf);
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .keep_alive_interval(s.keepalive_interval)
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| ProxyError::PeerHandshake { peer: addr, source })?;
        self.metrics.peer_connections_opened.inc();
        let identity = peer.key.identity.clone();
        let (revocations, metrics, id) = (
            self.revocations.subscribe(),
            self.metrics.clone(),
            self.identity.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(peer = %addr, %identity, error = %e, "peer connection ended with an error");
                },
                _ = until_revoked(&id, &leaf, revocations, &metrics) => {
                    tracing::warn!(peer = %addr, %identity, "peer connection closed: the peer's certificate is revoked");
                }
            }
        });
        tracing::debug!(peer = %addr, identity = %peer.key.identity, "peer connection established");
        Ok(PooledConn {
            send,
            streams: Arc::new(AtomicUsize::new(0)),
            peer_not_after,
        })
    }
}

/// The peer's leaf certificate (DER) of an established connection (empty if it presented none).
pub fn peer_leaf(conn: &rustls::CommonState) -> Vec<u8> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default()
}

/// Resolves once `leaf` is on `identity`'s revocation list (counting it), waiting for list changes.
async fn until_revoked(
    identity: &Identity,
    leaf: &[u8],
    mut changes: tokio::sync::watch::Receiver<u64>,
    metrics: &Metrics,
) {
    loop {
        if identity.is_revoked(leaf) {
            metrics.revoked_peer_refused();
            return;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The verifier's own words when it refused the peer (e.g. "identity mismatch: expected A but peer
/// presented B"), otherwise the TLS error as rustls reports it.
fn tls_reason(e: &std::io::Error) -> String {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(weft_certs::verify_error)
        .map(|v| v.to_string())
        .unwrap_or_else(|| e.to_string())
}

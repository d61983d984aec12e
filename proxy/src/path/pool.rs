//! The client side of the peer hop: one mutual-TLS HTTP/2 connection per peer proxy, multiplexing every
//! request and every opaque TCP stream. A second connection is opened only when every open one carries its
//! stream limit; a closed or failed connection is dropped and the next request reconnects.

use crate::path::body::{self, Body, Guarded};
use crate::path::errors::ProxyError;
use crate::path::peer_h2::{self, ConnEnd, ConnState, H2Settings, Pipe, RecvBody, Release, Tunnel};
use crate::telemetry::metrics::{Direction, Metrics};
use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
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
    send: SendRequest<Bytes>,
    state: Arc<ConnState>,
    /// The last handle's drop wakes the connection's task, so it closes once its streams end.
    _release: Arc<Release>,
    streams: Arc<AtomicUsize>,
    /// When the peer's leaf on this connection expires: no new request goes on it after that (a new
    /// handshake sees the peer's current leaf); requests under way finish.
    peer_not_after: Option<std::time::SystemTime>,
}

impl PooledConn {
    /// Usable for a new request at `now` (the mesh's clock; X.509 times are whole seconds, and a leaf
    /// is valid through its `notAfter` second).
    fn usable(&self, now: std::time::SystemTime) -> bool {
        !self.state.is_closed()
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

    /// [`PeerPool::send`] with the destination's own connect timeout, when it sets one. An extended
    /// CONNECT the peer accepts comes back with a [`PeerUpgrade`] holding the stream.
    pub async fn send_with(
        &self,
        up: &Upstream,
        req: Request<Body>,
        connect_timeout: Option<Duration>,
    ) -> Result<Response<Body>, ProxyError> {
        let Sent { resp, tx, slot } = self.send_raw(up, req, connect_timeout).await?;
        let (mut head, rx) = resp.into_parts();
        if let (Some(tx), StatusCode::OK) = (tx, head.status) {
            let upgrade = PeerUpgrade(Arc::new(std::sync::Mutex::new(Some((
                Tunnel::new(tx, rx),
                slot,
            )))));
            head.extensions.insert(upgrade);
            return Ok(Response::from_parts(head, body::empty()));
        }
        let body = RecvBody::new(rx, &head.headers);
        Ok(Response::from_parts(
            head,
            body::boxed(Guarded::new(body, slot)),
        ))
    }

    /// Opens a CONNECT stream and returns it as a byte stream.
    pub async fn connect_tcp(
        &self,
        up: &Upstream,
        connect_timeout: Option<Duration>,
    ) -> Result<(Tunnel, StreamSlot), ProxyError> {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{}:{}", up.peer.ip(), up.target_port))
            .body(body::empty())
            .map_err(|_| ProxyError::BadTunnelRequest("cannot build CONNECT request"))?;
        let Sent { resp, tx, slot } = self.send_raw(up, req, connect_timeout).await?;
        if resp.status() != StatusCode::OK {
            return Err(ProxyError::PeerRefused {
                peer: up.peer,
                status: resp.status(),
            });
        }
        let tx = tx.ok_or(ProxyError::BadTunnelRequest(
            "CONNECT stream without a sender",
        ))?;
        Ok((Tunnel::new(tx, resp.into_body()), slot))
    }

    /// Opens a stream for `req` and waits for the response head. The request's body is sent while
    /// waiting; what is left of it when the head arrives is sent on by a task of its own.
    async fn send_raw(
        &self,
        up: &Upstream,
        req: Request<Body>,
        connect_timeout: Option<Duration>,
    ) -> Result<Sent, ProxyError> {
        let peer = self.peer(up);
        let (parts, body) = req.into_parts();
        let connect = parts.method == Method::CONNECT;
        let eos = !connect && body.is_end_stream();
        let (mut send, slot) = self.ready(&peer, connect_timeout).await?;
        let failed = |source| ProxyError::PeerRequest {
            peer: up.peer,
            source,
        };
        let (fut, tx) = send
            .send_request(Request::from_parts(parts, ()), eos)
            .map_err(failed)?;
        let (resp, tx) = if connect {
            (fut.await.map_err(failed)?, Some(tx))
        } else if eos {
            (fut.await.map_err(failed)?, None)
        } else {
            let resp = send_body_while_waiting(fut, Pipe::new(body, tx), up.peer).await;
            (resp.map_err(failed)?, None)
        };
        Ok(Sent { resp, tx, slot })
    }

    /// A connection ready for a new stream. One that turns out closed (the peer went away between
    /// requests) is dropped and a fresh one tried once: nothing was sent on it.
    async fn ready(
        &self,
        peer: &Peer,
        connect_timeout: Option<Duration>,
    ) -> Result<(SendRequest<Bytes>, StreamSlot), ProxyError> {
        let mut retried = false;
        loop {
            let (conn, slot) = self.checkout(peer, connect_timeout).await?;
            let mut send = conn.send;
            match poll_fn(|cx| send.poll_ready(cx)).await {
                Ok(()) => return Ok((send, slot)),
                Err(e) if !retried => {
                    conn.state.mark_closed();
                    tracing::debug!(peer = %peer.key.addr, error = %e, "peer connection closed before the request was sent; retrying on a new one");
                    retried = true;
                }
                Err(source) => {
                    return Err(ProxyError::PeerRequest {
                        peer: peer.key.addr,
                        source,
                    })
                }
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
        let h2 = self.h2_settings();
        let (send, conn) = peer_h2::handshake(tls, &h2)
            .await
            .map_err(|source| ProxyError::PeerHandshake { peer: addr, source })?;
        self.metrics.peer_connections_opened.inc();
        let identity = peer.key.identity.clone();
        let state = Arc::new(ConnState::default());
        let (revocations, metrics, id, driven) = (
            self.revocations.subscribe(),
            self.metrics.clone(),
            self.identity.clone(),
            state.clone(),
        );
        // The revocation watch lives in a task of its own, so the connection's task polls nothing
        // but the connection on each wake-up.
        let revoked = state.clone();
        let watch = tokio::spawn(async move {
            until_revoked(&id, &leaf, revocations, &metrics).await;
            revoked.revoke();
        });
        tokio::spawn(async move {
            match peer_h2::drive(conn, driven, &h2).await {
                Err(ConnEnd::Revoked) => {
                    tracing::warn!(peer = %addr, %identity, "peer connection closed: the peer's certificate is revoked");
                }
                Err(e) => {
                    tracing::debug!(peer = %addr, %identity, error = %e, "peer connection ended with an error");
                }
                Ok(()) => {}
            }
            watch.abort();
        });
        tracing::debug!(peer = %addr, identity = %peer.key.identity, "peer connection established");
        Ok(PooledConn {
            send,
            _release: Arc::new(Release(state.clone())),
            state,
            streams: Arc::new(AtomicUsize::new(0)),
            peer_not_after,
        })
    }

    fn h2_settings(&self) -> H2Settings {
        H2Settings {
            stream_window: STREAM_WINDOW,
            connection_window: CONNECTION_WINDOW,
            max_frame: MAX_FRAME,
            max_send_buffer: TLS_SEND_BUFFER,
            keepalive_interval: self.settings.keepalive_interval,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
        }
    }
}

/// How long a keep-alive PING may go unanswered before the connection is taken for dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A response head from the peer, its stream, and (for CONNECT) the stream's sending half.
struct Sent {
    resp: Response<RecvStream>,
    tx: Option<SendStream<Bytes>>,
    slot: StreamSlot,
}

/// On the response to an extended CONNECT the peer accepted: the stream as a byte stream, with its slot
/// on the connection (taken once, by whoever splices it).
#[derive(Clone)]
pub struct PeerUpgrade(Arc<std::sync::Mutex<Option<(Tunnel, StreamSlot)>>>);

impl PeerUpgrade {
    pub fn take(&self) -> Option<(Tunnel, StreamSlot)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Sends the request body while waiting for the response head; if the head comes first, the rest of
/// the body goes on in a task of its own (a peer may answer before it has read everything).
async fn send_body_while_waiting(
    mut response: ResponseFuture,
    mut pipe: Pipe,
    peer: SocketAddr,
) -> Result<Response<RecvStream>, h2::Error> {
    let mut piped = false;
    let resp = poll_fn(|cx| {
        if !piped {
            if let Poll::Ready(r) = Pin::new(&mut pipe).poll(cx) {
                piped = true;
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "request body not sent whole");
                }
            }
        }
        Pin::new(&mut response).poll(cx)
    })
    .await?;
    if !piped {
        tokio::spawn(async move {
            if let Err(e) = pipe.await {
                tracing::debug!(%peer, error = %e, "request body not sent whole");
            }
        });
    }
    Ok(resp)
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

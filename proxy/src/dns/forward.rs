//! Relays questions about names outside the mesh to the configured upstream resolvers.
//!
//! Deliberately small: the client's message goes out byte for byte (so its id, flags, EDNS options and
//! 0x20 case are preserved), over the transport the client used, from a fresh socket per question (so a
//! reply can only come from the upstream it was sent to, and ids of different clients cannot collide).
//! Upstreams are tried in order, each for at most `timeout`; at most `max_in_flight` questions are out at
//! once. No cache: the upstream or the app's own resolver keeps one. Every socket carries the proxy's
//! mark (`interception.mark`), so the pod's own port-53 redirect lets the proxy's questions out.

use hickory_proto::op::{Header, MessageType};
use hickory_proto::serialize::binary::BinDecodable;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The transport a question arrived on; it is forwarded on the same one, so a truncated UDP answer
/// makes the client retry over TCP, which is then forwarded over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Why forwarding a question failed (the client gets SERVFAIL).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0} questions are already being forwarded")]
    Busy(usize),
    #[error("upstream {upstream}: no answer within {timeout:?}")]
    Timeout {
        upstream: SocketAddr,
        timeout: Duration,
    },
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {upstream}: the reply's id or header does not match the question")]
    BadReply { upstream: SocketAddr },
    #[error("a question of {0} bytes does not fit a TCP message")]
    TooLong(usize),
    #[error("no upstream resolvers are configured")]
    NoUpstreams,
}

/// Largest reply read from an upstream over UDP: the most a client can ask for with EDNS.
const MAX_UDP_REPLY: usize = 65_535;

/// The upstream resolvers and the bounds on asking them.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

/// A reserved place among the questions in flight; forwarding holds it until the answer is in.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration, max_in_flight: usize) -> Forwarder {
        Forwarder {
            upstreams,
            timeout,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// A place for one more question, or `Busy` when `max_in_flight` are out.
    pub fn reserve(&self) -> Result<Slot, ProxyError> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map(Slot)
            .map_err(|_| ProxyError::Busy(self.max_in_flight))
    }

    /// The first upstream's reply to `query` (the client's message as received), or the last failure.
    pub async fn forward(
        &self,
        _slot: Slot,
        query: &[u8],
        id: u16,
        transport: Transport,
    ) -> Result<Vec<u8>, ProxyError> {
        let mut last = None;
        for &upstream in &self.upstreams {
            let attempt = async {
                match transport {
                    Transport::Udp => self.over_udp(upstream, query, id).await,
                    Transport::Tcp => self.over_tcp(upstream, query, id).await,
                }
            };
            let result = match tokio::time::timeout(self.timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::Timeout {
                    upstream,
                    timeout: self.timeout,
                }),
            };
            match result {
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    tracing::debug!(error = %e, "dns: upstream failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ProxyError::NoUpstreams))
    }

    async fn over_udp(
        &self,
        upstream: SocketAddr,
        query: &[u8],
        id: u16,
    ) -> Result<Vec<u8>, ProxyError> {
        let io = |source| ProxyError::Io { upstream, source };
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local).await.map_err(io)?;
        crate::socket::apply_mark(&sock).map_err(io)?;
        sock.connect(upstream).await.map_err(io)?;
        sock.send(query).await.map_err(io)?;
        let mut buf = vec![0u8; MAX_UDP_REPLY];
        // A connected socket only hears from `upstream`; a datagram that is not the reply to this id
        // (a late answer to nothing we asked) is skipped until the attempt's timeout.
        loop {
            let n = sock.recv(&mut buf).await.map_err(io)?;
            let reply = buf.get(..n).unwrap_or_default();
            if is_reply_to(reply, id) {
                return Ok(reply.to_vec());
            }
            tracing::debug!(%upstream, "dns: skipped a datagram that is not the reply");
        }
    }

    async fn over_tcp(
        &self,
        upstream: SocketAddr,
        query: &[u8],
        id: u16,
    ) -> Result<Vec<u8>, ProxyError> {
        let io = |source| ProxyError::Io { upstream, source };
        let len = u16::try_from(query.len()).map_err(|_| ProxyError::TooLong(query.len()))?;
        let mut tcp = crate::socket::connect(upstream, self.timeout)
            .await
            .map_err(io)?;
        let mut out = Vec::with_capacity(query.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(query);
        tcp.write_all(&out).await.map_err(io)?;
        let n = tcp.read_u16().await.map_err(io)?;
        let mut reply = vec![0u8; usize::from(n)];
        tcp.read_exact(&mut reply).await.map_err(io)?;
        if !is_reply_to(&reply, id) {
            return Err(ProxyError::BadReply { upstream });
        }
        Ok(reply)
    }
}

/// A response (QR set) carrying the question's id.
fn is_reply_to(reply: &[u8], id: u16) -> bool {
    Header::from_bytes(reply)
        .map(|h| h.metadata.id == id && h.metadata.message_type == MessageType::Response)
        .unwrap_or(false)
}

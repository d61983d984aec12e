//! The responder's listeners: UDP and TCP (each message behind a two-byte length, RFC 1035 4.2.2) on
//! one address. Each question goes to a [`Lookup`], so the server knows nothing of how the proxy keeps
//! its mesh view; names that are not the mesh's go to the [`Forwarder`] when there is one.
//!
//! Nothing a client sends can panic the server or make it hold unbounded state: messages over
//! [`MAX_QUERY_BYTES`] are dropped, a packet without a DNS header is dropped, one whose header parses but
//! whose body does not gets FORMERR, TCP connections are capped and closed when idle, forwarded questions
//! are capped. Every rejection is logged at debug and counted in `weft_proxy_rejections_total
//! {listener="dns"}`; every answer in `weft_proxy_dns_queries_total{result}`.

use super::forward::{Forwarder, Slot, Transport};
use super::metrics::QueryResult;
use super::names::Answer;
use crate::path::listen::{self, Accept, ConnLimiter, Connections};
use crate::telemetry::labels::{Listener, Reason};
use crate::telemetry::metrics::Metrics;
use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// Answers one question: the name as asked (any case, trailing dot) and its type.
pub type Lookup = Arc<dyn Fn(&str, RecordType) -> Answer + Send + Sync>;

/// Largest question accepted, on either transport. Real questions are one name plus an EDNS record, well
/// under 512 bytes; 4 KiB leaves room for large EDNS options and bounds what one datagram can make us
/// parse.
pub const MAX_QUERY_BYTES: usize = 4096;

/// The payload size advertised in our own EDNS record: the size the 2020 DNS flag day settled on, which
/// fits an unfragmented datagram on any common path. Local answers are a few dozen bytes.
const EDNS_PAYLOAD: u16 = 1232;

/// The label for this listener in `weft_proxy_rejections_total`.
const LISTENER: Listener = Listener::Dns;

/// Bounds and answer settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// TTL of mesh answers, in seconds.
    pub ttl: u32,
    /// Open TCP connections; more are closed at accept.
    pub max_tcp_connections: usize,
    /// A TCP connection that sends no complete question for this long is closed.
    pub tcp_idle_timeout: Duration,
}

/// What to do with one received message.
pub(crate) enum Step {
    Reply(Vec<u8>),
    /// Not answerable (no header, a response, too large): nothing is sent back.
    Drop,
    Forward(Slot, Box<Message>),
}

/// The responder: what answers names, where other names go, and the bounds.
pub struct Server {
    lookup: Lookup,
    forwarder: Option<Forwarder>,
    settings: Settings,
    metrics: Arc<Metrics>,
}

impl Server {
    pub fn new(
        lookup: Lookup,
        forwarder: Option<Forwarder>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Arc<Server> {
        Arc::new(Server {
            lookup,
            forwarder,
            settings,
            metrics,
        })
    }

    fn reject(&self, reason: Reason, peer: SocketAddr) {
        tracing::debug!(%peer, reason = reason.as_str(), "dns: message rejected");
        self.metrics.reject(LISTENER, reason);
    }

    /// Decides what `packet` gets without waiting on anything; only forwarding waits.
    pub(crate) fn decide(&self, packet: &[u8], peer: SocketAddr) -> Step {
        if packet.len() > MAX_QUERY_BYTES {
            self.reject(Reason::TooLarge, peer);
            return Step::Drop;
        }
        let Ok(header) = Header::from_bytes(packet) else {
            self.reject(Reason::Malformed, peer);
            return Step::Drop;
        };
        if header.metadata.message_type != MessageType::Query {
            // Never answer a response: two responders could otherwise bounce packets forever.
            self.reject(Reason::NotAQuery, peer);
            return Step::Drop;
        }
        let req = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "dns: question does not parse");
                return self.error(
                    &header.metadata,
                    None,
                    ResponseCode::FormErr,
                    QueryResult::FormErr,
                );
            }
        };
        if req.metadata.op_code != OpCode::Query {
            return self.error(
                &req.metadata,
                Some(&req),
                ResponseCode::NotImp,
                QueryResult::NotImp,
            );
        }
        let [q] = req.queries.as_slice() else {
            // RFC 9619: a query has exactly one question.
            return self.error(
                &req.metadata,
                Some(&req),
                ResponseCode::FormErr,
                QueryResult::FormErr,
            );
        };
        let qtype = q.query_type();
        if q.query_class() != DNSClass::IN || matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return self.error(
                &req.metadata,
                Some(&req),
                ResponseCode::Refused,
                QueryResult::Refused,
            );
        }
        let name = q.name().to_ascii();
        let (code, record, result) = match (self.lookup)(&name, qtype) {
            Answer::Address(ip) => {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                let r = Record::from_rdata(q.name().clone(), self.settings.ttl, rdata);
                (ResponseCode::NoError, Some(r), QueryResult::Answered)
            }
            Answer::NoData => (ResponseCode::NoError, None, QueryResult::NoData),
            Answer::NxDomain => (ResponseCode::NXDomain, None, QueryResult::NxDomain),
            Answer::NotMesh => return self.not_mesh(req, peer),
        };
        let mut m = response(&req);
        m.metadata.authoritative = true;
        m.metadata.response_code = code;
        m.answers.extend(record);
        self.encode(m, result)
    }

    /// A name that is not the mesh's: relayed when there are upstreams, NXDOMAIN when there are none.
    fn not_mesh(&self, req: Message, peer: SocketAddr) -> Step {
        let Some(f) = &self.forwarder else {
            // The proxy is the pod's only resolver and has nowhere to ask: for this pod the name does
            // not exist. Not authoritative, so nothing downstream treats it as such.
            let mut m = response(&req);
            m.metadata.response_code = ResponseCode::NXDomain;
            return self.encode(m, QueryResult::NxDomain);
        };
        match f.reserve() {
            Ok(slot) => Step::Forward(slot, Box::new(req)),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "dns: not forwarded");
                self.metrics.reject(LISTENER, Reason::MaxForwards);
                self.error(
                    &req.metadata,
                    Some(&req),
                    ResponseCode::ServFail,
                    QueryResult::ForwardFailed,
                )
            }
        }
    }

    /// Relays a question to the upstreams; SERVFAIL when none answers.
    async fn forward(
        &self,
        slot: Slot,
        req: &Message,
        packet: &[u8],
        transport: Transport,
        peer: SocketAddr,
    ) -> Option<Vec<u8>> {
        let f = self.forwarder.as_ref()?;
        match f.forward(slot, packet, req.metadata.id, transport).await {
            Ok(reply) => {
                self.metrics.dns.query(QueryResult::Forwarded);
                Some(reply)
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "dns: forwarding failed");
                match self.error(
                    &req.metadata,
                    Some(req),
                    ResponseCode::ServFail,
                    QueryResult::ForwardFailed,
                ) {
                    Step::Reply(r) => Some(r),
                    _ => None,
                }
            }
        }
    }

    /// An error reply echoing the question (when it parsed) and the request's id, opcode, RD and CD.
    fn error(
        &self,
        meta: &Metadata,
        req: Option<&Message>,
        code: ResponseCode,
        result: QueryResult,
    ) -> Step {
        let mut m = match req {
            Some(r) => response(r),
            None => Message::response(meta.id, meta.op_code),
        };
        m.metadata.recursion_desired = meta.recursion_desired;
        m.metadata.response_code = code;
        self.encode(m, result)
    }

    fn encode(&self, mut m: Message, result: QueryResult) -> Step {
        m.metadata.recursion_available = self.forwarder.is_some();
        match m.to_vec() {
            Ok(bytes) => {
                self.metrics.dns.query(result);
                Step::Reply(bytes)
            }
            Err(e) => {
                tracing::warn!(error = %e, "dns: cannot encode a reply");
                self.metrics.reject(LISTENER, Reason::EncodeError);
                Step::Drop
            }
        }
    }
}

/// The skeleton of a reply to `req`: its id, opcode, RD/CD bits, its question, and an EDNS record when
/// the question had one (RFC 6891 6.1.1).
fn response(req: &Message) -> Message {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata = Metadata::response_from_request(&req.metadata);
    m.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(edns);
    }
    m
}

/// Serves `udp` and `tcp` until `shutdown` is cancelled. Open TCP connections are closed then too;
/// forwarded UDP questions already out finish within the forward timeout.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    server: Arc<Server>,
    shutdown: CancellationToken,
) {
    tokio::join!(
        serve_udp(Arc::new(udp), server.clone(), shutdown.clone()),
        serve_tcp(tcp, server, shutdown)
    );
}

// === UDP ===

async fn serve_udp(sock: Arc<UdpSocket>, server: Arc<Server>, shutdown: CancellationToken) {
    // One byte over the limit, so a datagram that is too large is seen as such rather than cut short.
    let mut buf = vec![0u8; MAX_QUERY_BYTES + 1];
    loop {
        let received = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            _ = shutdown.cancelled() => break,
        };
        let (n, peer) = match received {
            Ok(r) => r,
            Err(e) => {
                // Errors on an unconnected UDP socket are transient (ICMP errors, buffer pressure).
                tracing::debug!(error = %e, "dns: udp receive failed");
                server.metrics.reject(LISTENER, Reason::ReceiveError);
                continue;
            }
        };
        let packet = buf.get(..n).unwrap_or_default();
        match server.decide(packet, peer) {
            Step::Reply(reply) => send_udp(&sock, &reply, peer).await,
            Step::Drop => {}
            Step::Forward(slot, req) => {
                let (sock, server, packet) = (sock.clone(), server.clone(), packet.to_vec());
                tokio::spawn(async move {
                    if let Some(reply) = server
                        .forward(slot, &req, &packet, Transport::Udp, peer)
                        .await
                    {
                        send_udp(&sock, &reply, peer).await;
                    }
                });
            }
        }
    }
    tracing::debug!("dns: udp listener stopped");
}

async fn send_udp(sock: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    if let Err(e) = sock.send_to(reply, peer).await {
        tracing::debug!(%peer, error = %e, "dns: udp send failed");
    }
}

// === TCP ===

async fn serve_tcp(listener: TcpListener, server: Arc<Server>, shutdown: CancellationToken) {
    let opts = Accept {
        name: LISTENER,
        limiter: ConnLimiter::new(server.settings.max_tcp_connections),
        stop: Some(shutdown.clone()),
        // A connection holds nothing worth finishing: at most a question that is asked again.
        connections: Connections::Cancelled(shutdown),
        // Like every other refusal here: an app's flood of lookups must not flood the log.
        quiet_refusals: true,
    };
    let metrics = server.metrics.clone();
    listen::accept(listener, &metrics, opts, move |stream, peer| {
        let server = server.clone();
        async move { tcp_connection(stream, peer, &server).await }
    })
    .await;
}

/// Answers the questions on one connection in order until the client closes it, goes idle, or sends
/// something that is not a question.
async fn tcp_connection(mut stream: TcpStream, peer: SocketAddr, server: &Server) {
    let idle = server.settings.tcp_idle_timeout;
    loop {
        let len = match tokio::time::timeout(idle, stream.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            Ok(Err(_)) => return, // closed by the client
            Err(_) => return server.reject(Reason::IdleTimeout, peer),
        };
        if len > MAX_QUERY_BYTES {
            return server.reject(Reason::TooLarge, peer);
        }
        let mut packet = vec![0u8; len];
        match tokio::time::timeout(idle, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return server.reject(Reason::Truncated, peer),
            Err(_) => return server.reject(Reason::IdleTimeout, peer),
        }
        let reply = match server.decide(&packet, peer) {
            Step::Reply(r) => r,
            Step::Drop => return,
            Step::Forward(slot, req) => {
                match server
                    .forward(slot, &req, &packet, Transport::Tcp, peer)
                    .await
                {
                    Some(r) => r,
                    None => return,
                }
            }
        };
        // A reply read from an upstream over TCP fits a length prefix; anything else is a bug upstream.
        let Ok(n) = u16::try_from(reply.len()) else {
            return server.reject(Reason::ReplyTooLarge, peer);
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&reply);
        match tokio::time::timeout(idle, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => return server.reject(Reason::IdleTimeout, peer),
        }
    }
}

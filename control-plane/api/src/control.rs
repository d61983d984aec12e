//! The proxy ↔ control plane protocol on port 15010 (see `docs/control-protocol.md`).
//!
//! Two HTTP/2 endpoints over TLS that pins the mesh CA:
//! * `POST /v1/certificate`: a CSR, authenticated by a join token (first start) or by the proxy's
//!   current certificate (renewal). The answer is the signed chain and the trust bundle.
//! * `POST /v1/stream`: one long-lived bidirectional stream per proxy, mutual TLS required. Both bodies
//!   are sequences of frames: a 4-byte big-endian length, then that many bytes of JSON. The proxy sends
//!   [`FromProxy`] messages, the control plane [`FromControl`] messages.
//!
//! A framed protocol over hyper rather than gRPC: both ends are ours, the messages are few and small, and
//! it keeps protobuf code generation (and `protoc`) out of the build. JSON frames can be read in a packet
//! capture or produced by a test client in a few lines.

use crate::resources::{
    AuthorizationPolicySpec, Document, HttpRouteSpec, Labels, MeshConfigSpec, ServicePort,
    TrafficPolicy,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::IpAddr;
use weft_certs::SpiffeId;

pub const PATH_CERTIFICATE: &str = "/v1/certificate";
pub const PATH_STREAM: &str = "/v1/stream";
/// Bumped on incompatible changes; a control plane refuses a `Hello` with a protocol it does not speak.
/// 2: snapshots may carry services as changes (`servicesChanged`, `servicesRemoved`).
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest protocol a control plane still speaks (to a proxy of 1 it sends whole services lists).
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// The first protocol whose proxies take `servicesChanged` / `servicesRemoved`.
pub const PROTOCOL_SERVICE_CHANGES: u32 = 2;
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 16 << 20;

// === certificates ===

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateRequest {
    pub csr_pem: String,
    /// The join token; absent on renewal, where the client certificate authenticates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateResponse {
    /// Leaf first, then intermediates (root excluded).
    pub chain_pem: String,
    pub bundle_pem: String,
}

/// The body of every non-2xx answer on either port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// What was wrong, for a human.
    pub error: String,
    /// Several problems at once (e.g. every bad document of an apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

// === the config stream ===

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum FromProxy {
    /// First message on a stream.
    Hello(Hello),
    /// The snapshot with this version is applied.
    Ack { version: u64 },
    /// The snapshot with this version was refused; the proxy keeps what it had.
    Nack { version: u64, reason: String },
    /// The app's readiness changed.
    Ready { ready: bool },
    /// What this proxy has seen of its destinations so far (sent about once a second, when it changed).
    Stats(StatsReport),
}

/// Upper bounds, in milliseconds, of the latency buckets of every [`StatsEntry`]; one last bucket
/// counts what is slower than all of them.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];
/// Most entries one report carries; a proxy calling more destinations leaves the rest out (and says how
/// many), so one report stays well under 200 KiB.
pub const MAX_STATS_ENTRIES: usize = 1000;

/// A proxy's cumulative counts per destination service and subset, since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatsReport {
    /// How long the proxy has been counting: its counters start at zero when it starts, so a reader of
    /// cumulative counts can tell a restart from a quiet spell.
    pub counting_ms: u64,
    pub entries: Vec<StatsEntry>,
    /// Entries left out over [`MAX_STATS_ENTRIES`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatsEntry {
    pub namespace: String,
    pub service: String,
    /// The subset (endpoints' `version` label) the route sent the requests to; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    pub requests: u64,
    /// Answers with a 5xx status, the proxy's own included.
    pub failures: u64,
    /// `LATENCY_BUCKETS_MS.len() + 1` counts (not cumulative): time to the response head.
    pub buckets: Vec<u64>,
}

impl StatsEntry {
    /// The shape the protocol promises: one count per bucket, no more failures (or bucket counts)
    /// than requests.
    pub fn is_well_formed(&self) -> bool {
        self.buckets.len() == LATENCY_BUCKETS_MS.len() + 1
            && self.failures <= self.requests
            && self
                .buckets
                .iter()
                .try_fold(0u64, |sum, b| sum.checked_add(*b))
                .is_some_and(|sum| sum <= self.requests)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Hello {
    pub protocol: u32,
    pub proxy_version: String,
    pub workload: Registration,
    /// The version the proxy is serving (from its cache), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_version: Option<u64>,
}

/// What a proxy says about its workload. Namespace and service account come from its certificate, never
/// from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Registration {
    /// Unique within the namespace (a pod name).
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    pub address: IpAddr,
    pub tunnel_port: u16,
    /// The app's ports.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// The app's readiness probe passed.
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum FromControl {
    Snapshot(Snapshot),
}

/// A versioned view of the mesh for one proxy, applied on top of the one the proxy holds. A section (or
/// service) is left out only when it is the same in the last snapshot the proxy acknowledged and in
/// every later one sent to it, so whichever of those it holds, the result is the same; the first
/// snapshot on a stream carries every section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Snapshot {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshConfigSpec>,
    /// Every service: replaces the proxy's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceView>>,
    /// Services that changed, each replacing (or adding) the one of its namespace and name; never in
    /// the same snapshot as `services`. Sent only to proxies of protocol 2 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services_changed: Option<Vec<ServiceView>>,
    /// Services gone; one the proxy does not have is no error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services_removed: Option<Vec<ServiceRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Document<HttpRouteSpec>>>,
    /// The policies that apply to this proxy's workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<Document<AuthorizationPolicySpec>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle_pem: Option<String>,
    /// Serials (lowercase hex) of revoked workload certificates: peers refuse them even though they chain
    /// to the bundle and have not expired. Sorted; the whole list each time it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_serials: Option<Vec<String>>,
}

/// Names one service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

/// A service as a proxy sees it: its ports and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceView {
    pub name: String,
    pub namespace: String,
    pub ports: Vec<ServicePort>,
    /// Stable virtual address, once allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<IpAddr>,
    pub endpoints: Vec<Endpoint>,
    /// The service's `trafficPolicy`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// The registered proxy's workload name, or the static `Workload`'s name.
    pub workload: String,
    pub address: IpAddr,
    /// The peer proxy's tunnel port; absent for a plaintext endpoint outside the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_port: Option<u16>,
    /// The identity the endpoint must present (always set when `tunnelPort` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
    #[serde(default)]
    pub labels: Labels,
    pub ready: bool,
}

// === framing ===

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// One message as a frame: length prefix + JSON.
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    let json = serde_json::to_vec(msg).expect("protocol messages always serialize");
    let mut out = BytesMut::with_capacity(4 + json.len());
    out.put_u32(json.len() as u32);
    out.extend_from_slice(&json);
    out.freeze()
}

/// Buffer a decoder keeps between messages; a larger one is let go once it is empty.
const KEPT_CAPACITY: usize = 16 << 10;

/// Reassembles frames from body chunks of any size, refusing a frame over its limit as soon as the
/// length prefix announces it (nothing of it is buffered first).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::with_limit(MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames over `limit` bytes (at most [`MAX_FRAME`]).
    pub fn with_limit(limit: usize) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            limit: limit.min(MAX_FRAME),
        }
    }

    /// Changes the limit for the frames still to come (e.g. after a small first message).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_FRAME);
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, if one is buffered.
    // Not an Iterator: each call may fail and picks its message type.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.limit {
            return Err(FrameError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let frame = self.buf.split_to(len);
        if self.buf.is_empty() && self.buf.capacity() > KEPT_CAPACITY {
            // One large message must not cost a long-lived stream its size for as long as it lives.
            self.buf = BytesMut::new();
        }
        Ok(Some(serde_json::from_slice(&frame)?))
    }

    /// Call when the body ends: leftover bytes mean the peer stopped mid-frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_chunking() {
        let msgs = vec![
            FromProxy::Ack { version: 7 },
            FromProxy::Nack {
                version: 8,
                reason: "bad".into(),
            },
            FromProxy::Ready { ready: true },
            FromProxy::Stats(StatsReport {
                counting_ms: 1500,
                entries: vec![StatsEntry {
                    namespace: "default".into(),
                    service: "reviews".into(),
                    subset: Some("v2".into()),
                    requests: 3,
                    failures: 1,
                    buckets: vec![0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
                }],
                omitted: 0,
            }),
        ];
        let wire: Vec<u8> = msgs.iter().flat_map(|m| encode(m).to_vec()).collect();
        for chunk in [1, 3, 5, wire.len()] {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                d.push(c);
                while let Some(m) = d.next::<FromProxy>().unwrap() {
                    got.push(m);
                }
            }
            d.finish().unwrap();
            assert_eq!(got, msgs);
        }
    }

    #[test]
    fn stats_entries_are_checked_for_shape() {
        let mut e = StatsEntry {
            namespace: "default".into(),
            service: "reviews".into(),
            subset: None,
            requests: 2,
            failures: 1,
            buckets: vec![0; LATENCY_BUCKETS_MS.len() + 1],
        };
        assert!(e.is_well_formed());
        e.failures = 3;
        assert!(!e.is_well_formed(), "more failures than requests");
        e.failures = 0;
        e.buckets[0] = 5;
        assert!(!e.is_well_formed(), "more bucket counts than requests");
        e.buckets = vec![0; 3];
        assert!(!e.is_well_formed(), "wrong number of buckets");
        e.buckets = vec![u64::MAX; LATENCY_BUCKETS_MS.len() + 1];
        assert!(!e.is_well_formed(), "overflowing sum");
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut d = FrameDecoder::default();
        d.push(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert!(matches!(
            d.next::<FromProxy>(),
            Err(FrameError::TooLarge { .. })
        ));
        let mut d = FrameDecoder::with_limit(100);
        d.push(&101u32.to_be_bytes());
        let e = d.next::<FromProxy>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "frame of 101 bytes is over the 100-byte limit"
        );
        let mut d = FrameDecoder::default();
        d.push(&encode(&FromProxy::Ack { version: 1 })[..6]);
        assert!(d.next::<FromProxy>().unwrap().is_none());
        assert!(matches!(d.finish(), Err(FrameError::Truncated(6))));
    }

    #[test]
    fn a_large_message_does_not_keep_its_buffer() {
        let big = FromProxy::Nack {
            version: 1,
            reason: "x".repeat(200 << 10),
        };
        let mut d = FrameDecoder::default();
        d.push(&encode(&big));
        assert_eq!(d.next::<FromProxy>().unwrap(), Some(big));
        assert!(d.buf.capacity() <= KEPT_CAPACITY, "{}", d.buf.capacity());
        // A partial message after it keeps what it needs.
        let ack = encode(&FromProxy::Ack { version: 2 });
        d.push(&ack[..3]);
        assert!(d.next::<FromProxy>().unwrap().is_none());
        d.push(&ack[3..]);
        assert_eq!(
            d.next::<FromProxy>().unwrap(),
            Some(FromProxy::Ack { version: 2 })
        );
    }
}

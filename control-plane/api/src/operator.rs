//! The operator HTTP API on port 15014 that `weftctl` speaks (see `docs/control-protocol.md`).
//!
//! Every `/v1/...` request carries `Authorization: Bearer <operator token>`; without it the answer is 401.
//! Errors use [`crate::control::ErrorBody`].
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | POST | `/v1/apply?dryRun=&wait=` | [`ApplyRequest`] → [`ApplyResponse`] |
//! | GET | `/v1/resources/{kind}[/{namespace}[/{name}]]` | → `[resource JSON]` |
//! | DELETE | `/v1/resources/{kind}/{namespace}/{name}?wait=` | → [`ApplyResponse`] |
//! | POST | `/v1/tokens` | [`TokenRequest`] → [`TokenCreated`] |
//! | GET | `/v1/tokens` | → `[TokenInfo]` |
//! | DELETE | `/v1/tokens/{id}` | → [`TokenInfo`] |
//! | GET | `/v1/status` | → [`Status`] |
//! | GET | `/v1/mesh` | → [`MeshInfo`] |
//! | GET | `/v1/stats?namespace=&service=` | → [`ServiceStats`] |
//! | POST | `/v1/why` | [`WhyRequest`] → [`WhyAnswer`] |
//! | POST | `/v1/revocations` | [`RevocationTarget`] → [`Revocation`] |
//! | GET | `/v1/revocations` | → `[Revocation]` |
//! | POST | `/v1/revocations/remove` | [`RevocationTarget`] → [`Revocation`] (the one lifted) |

use crate::resources::{Labels, ResourceKey};
use serde::{Deserialize, Serialize};
use weft_certs::SpiffeId;

/// YAML documents as the operator wrote them: the server parses them so its errors name file and line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest {
    pub files: Vec<SourceFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// As the operator named it (`-` for stdin).
    pub name: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub key: ResourceKey,
    pub action: ChangeAction,
    /// Unified-style diff of the YAML (`-` old, `+` new lines); empty when unchanged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diff: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    pub dry_run: bool,
    /// The store revision this change produced (unchanged on a dry run or a no-op).
    pub revision: u64,
    pub changes: Vec<Change>,
    /// Present when the caller asked to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// How a change reached the proxies it affects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub revision: u64,
    /// Every proxy whose view changed, with where it stands.
    pub proxies: Vec<ProxyRollout>,
    /// True when every affected proxy acked before the deadline.
    pub complete: bool,
    pub waited_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRollout {
    /// `namespace/name`.
    pub proxy: String,
    pub version: u64,
    #[serde(flatten)]
    pub state: RolloutState,
    /// The control-plane replica holding its config stream (replicas sharing etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum RolloutState {
    Acked,
    Nacked { reason: String },
    Pending,
    Disconnected,
}

/// What a revocation covers: one registered workload (`namespace/name`), or every workload of an
/// identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum RevocationTarget {
    Workload { namespace: String, name: String },
    Identity(SpiffeId),
}

impl std::fmt::Display for RevocationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevocationTarget::Workload { namespace, name } => {
                write!(f, "workload {namespace}/{name}")
            }
            RevocationTarget::Identity(id) => write!(f, "identity {id}"),
        }
    }
}

/// A revocation in force and the certificates it denies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub target: RevocationTarget,
    /// Unix seconds.
    pub revoked_at: u64,
    /// The unexpired certificates it denies (peers refuse them; they cannot renew).
    pub serials: Vec<RevokedCertificate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedCertificate {
    /// Lowercase hex.
    pub serial: String,
    pub identity: SpiffeId,
    /// `namespace/name`, once the certificate's holder registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Unix seconds; the entry is dropped after it.
    pub not_after: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenRequest {
    pub namespace: String,
    pub service_account: String,
    /// Seconds until the token expires.
    pub ttl_secs: u64,
    /// How many certificates the token may obtain; without it, any number until it expires (every
    /// replica of a workload may share one). The pod runner asks for 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
    /// Workload claim: a proxy that joined with this token may register only this workload name...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// ...with exactly these labels (only together with `workload`).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    /// The secret: shown once, never stored in clear.
    pub token: String,
    pub info: TokenInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub namespace: String,
    pub service_account: String,
    pub identity: SpiffeId,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: u64,
    pub revoked: bool,
    /// Certificates issued with it.
    pub uses: u64,
    /// The most it may issue; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
    /// The only workload name its certificates may register; absent: any name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The exact labels that workload must register (with `workload`).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub revision: u64,
    pub proxies: Vec<ProxyStatus>,
    /// The replica that answered (replicas sharing etcd; absent with the state directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// `namespace/name`.
    pub proxy: String,
    pub identity: SpiffeId,
    pub address: std::net::IpAddr,
    pub connected: bool,
    pub ready: bool,
    /// The last version sent to it, and the last it acked. Versions are the numbering of the replica
    /// holding its stream (`replica`); compare proxies of several replicas by their revisions.
    pub sent_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<Nack>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<u64>,
    /// Milliseconds since the control plane last heard from it.
    pub last_seen_ms: u64,
    /// The control-plane replica holding its config stream (replicas sharing etcd; absent with the
    /// state directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// With replicas: the store revision of the last config sent to it...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_revision: Option<u64>,
    /// ...and the highest revision whose config it holds (acked). Revisions are shared by every
    /// replica, unlike versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_revision: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    pub version: u64,
    pub reason: String,
    /// With replicas: the store revision of the config it refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// `GET /v1/mesh`: what a pod runner needs to start a sidecar, and the services' virtual IPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshInfo {
    pub trust_domain: String,
    /// The root CA's fingerprint, for `control.ca_fingerprint` (format `sha256:AB:CD:...`).
    pub ca_fingerprint: String,
    pub bundle_pem: String,
    /// Where proxies reach the proxy API (the first of `proxy_addresses` when there are several).
    pub proxy_address: std::net::SocketAddr,
    /// Every replica's proxy API address, when `--api-advertise` names more than one (absent otherwise,
    /// so one-address meshes answer as before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_addresses: Vec<std::net::SocketAddr>,
    #[serde(default)]
    pub services: Vec<ServiceAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAddress {
    pub namespace: String,
    pub name: String,
    pub vip: std::net::IpAddr,
}

/// `GET /v1/stats?namespace=NS&service=NAME`: what the connected proxies report of their requests to one
/// service, cumulative since each proxy started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStats {
    pub namespace: String,
    pub service: String,
    /// Upper bounds of the latency buckets, in milliseconds; the last bucket has none.
    pub bucket_bounds_ms: Vec<u64>,
    /// Connected proxies whose latest report has requests to this service.
    pub proxies_reporting: usize,
    /// Per subset, summed over the reporting proxies.
    pub subsets: Vec<SubsetStats>,
    /// Per reporting proxy, so a reader of deltas can tell a proxy's restart from a quiet spell.
    pub by_proxy: Vec<ProxyStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubsetStats {
    /// Absent for requests sent without a subset (a route without one, or no route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    pub requests: u64,
    /// Answers with status 5xx (the proxy's own included).
    pub failures: u64,
    /// One count per bucket of `bucketBoundsMs`, plus the last.
    pub buckets: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStats {
    /// `namespace/name` of the reporting proxy.
    pub proxy: String,
    /// The identity of its certificate: every count it reports is of its own requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
    /// How long this proxy has been counting (its counters start at zero when it starts), as of the
    /// control plane's answer.
    pub counting_ms: u64,
    pub subsets: Vec<SubsetStats>,
}

/// `POST /v1/why`: how the mesh would treat a request from one identity to one service, as the control
/// plane sees it now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhyRequest {
    /// The caller: `namespace/serviceAccount` or a SPIFFE ID.
    pub from: String,
    /// The service: `namespace/name`.
    pub to: String,
    /// The service port; absent: its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Ask about an opaque TCP connection rather than an HTTP request.
    #[serde(default)]
    pub tcp: bool,
    /// HTTP method (default `GET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path with an optional query (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Request headers, `name: value` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhyAnswer {
    /// The caller's SPIFFE ID.
    pub source: String,
    /// Registered workloads with that identity (`namespace/name`).
    pub source_workloads: Vec<String>,
    /// `namespace/name:port`.
    pub service: String,
    /// `GET /path` for HTTP, `tcp` for an opaque connection.
    pub request: String,
    pub route: WhyRoute,
    /// The endpoints the chosen backends have, each with its authorization decision.
    pub endpoints: Vec<WhyEndpoint>,
    /// `allowed`, `denied`, `partly denied` or `no endpoint`.
    pub verdict: String,
    /// One sentence saying why.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhyRoute {
    /// The rule that takes the request (`namespace/route rules[i]`), if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why that rule, or why none.
    pub reason: String,
    pub backends: Vec<WhyBackend>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhyBackend {
    /// `namespace/name:port`.
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Share of the rule's weight in percent; 100 without a rule.
    pub percent: f64,
    /// The backend a sticky rule's session key lands on.
    #[serde(default)]
    pub chosen: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhyEndpoint {
    /// `namespace/name` of the workload.
    pub workload: String,
    pub address: std::net::IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub ready: bool,
    /// `allowed`, `denied`, `bad path` (400 before any policy) or `not checked` (no sidecar).
    pub decision: String,
    /// The path the policies were matched against (normalised), when policies apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_path: Option<String>,
    /// What enforcing and audit policies decide, and each policy's match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<crate::authz::Explanation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

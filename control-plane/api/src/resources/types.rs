//! The five resource kinds, in the shape operators know from Kubernetes and the Gateway API.
//!
//! Every document is `apiVersion` / `kind` / `metadata` / `spec`. Field names are camelCase on the wire
//! (YAML and JSON alike) and unknown fields are refused, so a typo is an error rather than a silent no-op.

use crate::duration::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// The only `apiVersion` this release understands.
pub const API_VERSION: &str = "weft.dev/v1";

/// Labels and selectors: ordered, so encodings (and diffs) are stable.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Service,
    Workload,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    AuthorizationPolicy,
    MeshConfig,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::MeshConfig,
        Kind::Service,
        Kind::Workload,
        Kind::HttpRoute,
        Kind::AuthorizationPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Workload => "Workload",
            Kind::HttpRoute => "HTTPRoute",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::MeshConfig => "MeshConfig",
        }
    }

    /// Accepts the kind as written in documents and the lower-case forms operators type
    /// (`service`, `services`, `svc`, `httproute`, `authorizationpolicy`, `meshconfig`, ...).
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let k = match lower.trim_end_matches('s') {
            "service" | "svc" => Kind::Service,
            "workload" | "wl" => Kind::Workload,
            "httproute" | "route" => Kind::HttpRoute,
            "authorizationpolicy" | "authorizationpolicie" | "policy" | "policie" => {
                Kind::AuthorizationPolicy
            }
            "meshconfig" => Kind::MeshConfig,
            _ => return None,
        };
        Some(k)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_namespace() -> String {
    "default".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Labels,
}

/// One resource document with a typed spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document<S> {
    pub api_version: String,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: S,
}

/// Any resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Service(Document<ServiceSpec>),
    Workload(Document<WorkloadSpec>),
    HttpRoute(Document<HttpRouteSpec>),
    AuthorizationPolicy(Document<AuthorizationPolicySpec>),
    MeshConfig(Document<MeshConfigSpec>),
}

/// What names a resource: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

// === Service ===

/// How a port's traffic is treated. `auto` detects per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Auto,
    Http,
    Http2,
    Grpc,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// The port the workload listens on; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    #[serde(default)]
    pub protocol: PortProtocol,
}

impl ServicePort {
    /// How the port's traffic is treated: its `protocol` when given, else what its name announces as
    /// Istio reads port names (`http`, `http-web`, `http2`, `grpc`, `grpc-api`, `tcp-db`: the first
    /// `-`-separated word; `grpc-web` is HTTP), else detection per connection. A declared protocol
    /// spares every connection the detection window, and a keep-alive connection whose client was slow
    /// to write its first request from being carried as one opaque stream to one endpoint.
    pub fn effective_protocol(&self) -> PortProtocol {
        if self.protocol != PortProtocol::Auto {
            return self.protocol;
        }
        let name = self.name.as_deref().unwrap_or("");
        if name == "grpc-web" || name.starts_with("grpc-web-") {
            return PortProtocol::Http;
        }
        match name.split('-').next().unwrap_or("") {
            "http" => PortProtocol::Http,
            "http2" => PortProtocol::Http2,
            "grpc" => PortProtocol::Grpc,
            "tcp" => PortProtocol::Tcp,
            _ => PortProtocol::Auto,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub ports: Vec<ServicePort>,
    /// Workloads (registered proxies and static `Workload`s) in the same namespace whose labels include
    /// all of these are the service's endpoints.
    #[serde(default)]
    pub selector: Labels,
    /// Service accounts (in the service's namespace) whose registered proxies may be its endpoints;
    /// absent: the service's own name. Static `Workload`s are selected by labels alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<String>>,
    /// How callers' proxies treat traffic to this service: connect timeout and retries, connection
    /// pool limits, outlier ejection, retry budget. Absent fields take the defaults in docs/traffic.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// What every caller applies to traffic towards one service (the destination's side of resilience).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Time allowed to open a connection to one endpoint (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Opaque TCP: further endpoints tried when a connect fails (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// The bulkhead: per caller proxy, towards this service. Excess is shed at once with 503.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    /// Concurrent opaque TCP connections (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Concurrent HTTP requests in flight (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// HTTP requests allowed to wait for a free slot when `maxRequests` are in flight (default 1024);
    /// beyond that a request is shed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
}

/// Endpoints that keep failing are taken out of rotation for a while.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (or failed connects) that eject an endpoint (default 5; 0 turns
    /// ejection off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<u32>,
    /// First ejection's length; each further ejection of the same endpoint is one more of these
    /// (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Longest ejection (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<Duration>,
    /// Most of the service's endpoints ejected at once, in percent (default 50); one endpoint may
    /// always be ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Retries towards this service may add at most `percent` of its requests, plus
/// `minRetriesPerSecond`, averaged over the last 10 seconds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
}

// === Workload: an endpoint outside the mesh, or a VM with its own proxy ===

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub address: IpAddr,
    /// The mesh identity's service account, when the workload runs a Weft proxy; its SPIFFE ID is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<serviceAccount>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Its proxy's tunnel port (with `serviceAccount`); without one, traffic goes to it in plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_port: Option<u16>,
}

// === HTTPRoute (Gateway API shape) ===

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// The service whose traffic this route governs.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one match selects the rule; no matches means every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    pub backend_refs: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Sticky splits: requests with the same header or cookie value go to the same backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
    /// Local rate limit, enforced by the destination's proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// What answers when the backends have no healthy endpoint left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionPersistenceType {
    Header,
    Cookie,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionPersistence {
    #[serde(rename = "type")]
    pub kind: SessionPersistenceType,
    /// The header or cookie whose value is hashed.
    pub session_name: String,
}

/// A token bucket: `requests` per `per`, bursts up to `burst` (default `requests`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    pub requests: u32,
    #[serde(default = "default_rate_period")]
    pub per: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per calling identity instead of one for everyone (per destination proxy).
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_source: bool,
}

fn default_rate_period() -> Duration {
    Duration::from_secs(1)
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Exactly one of a static response or another service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fallback {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<StaticResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<FallbackBackend>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticResponse {
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderValue>,
}

fn default_fallback_status() -> u16 {
    200
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FallbackBackend {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(rename = "type", default = "default_path_type")]
    pub kind: PathMatchType,
    pub value: String,
}

fn default_path_type() -> PathMatchType {
    PathMatchType::PathPrefix
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// A header or query parameter match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueMatch {
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// A service.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A subset of the service's endpoints: those labelled `version: <subset>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Relative weight among the rule's backends.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteFilter {
    #[serde(rename = "type")]
    pub kind: RouteFilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteFilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<Duration>,
    /// Longest pause between two pieces of the response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
}

/// Without one, a rule retries twice on failed connects and 502/503/504, idempotent methods only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first try (default 2; 0 turns retries off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// First backoff; doubled each retry up to `maxBackoff`, with full jitter (default 25ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
    /// Default 250ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Duration>,
    /// Statuses retried besides failed connects (default 502, 503, 504).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    /// gRPC status names retried (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_codes: Vec<String>,
    /// Retry non-idempotent methods (POST, PATCH) too.
    #[serde(default, skip_serializing_if = "is_false")]
    pub non_idempotent: bool,
}

/// gRPC status names and their numbers, as `grpc-status` carries them.
pub const GRPC_CODES: [(&str, u8); 17] = [
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

/// The number of a gRPC status name (`UNAVAILABLE` → 14).
pub fn grpc_code(name: &str) -> Option<u8> {
    GRPC_CODES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

// === AuthorizationPolicy ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    /// Log and count what would be denied; deny nothing.
    Audit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workloads in the policy's namespace it applies to; absent means all of them. A policy in the
    /// root namespace (MeshConfig `rootNamespace`, default `weft-system`) applies mesh-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    pub action: PolicyAction,
    #[serde(default)]
    pub mode: PolicyMode,
    /// A request matching any rule is subject to `action`. No rules: matches nothing for ALLOW
    /// (so an empty ALLOW policy is a default-deny), everything for DENY.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: Labels,
}

/// A rule matches when any `from` matches (or there is none) and any `to` matches (or there is none).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicySource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyOperation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySource {
    /// SPIFFE IDs, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// `namespace/serviceAccount`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyOperation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
}

// === MeshConfig (one per mesh, named `default`) ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inbound plaintext from non-mesh clients is refused.
    #[default]
    Strict,
    /// Inbound plaintext from non-mesh clients is accepted.
    Permissive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Destinations outside the registry pass through.
    #[default]
    AllowAny,
    /// Destinations outside the registry are refused.
    RegistryOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// Fixed when the control plane first starts; a different value later is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Lifetime of workload certificates (default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_ttl: Option<Duration>,
    #[serde(default)]
    pub mtls_mode: MtlsMode,
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// How long a disconnected proxy's workload stays registered (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_grace_period: Option<Duration>,
    /// Namespace whose AuthorizationPolicies apply mesh-wide (default `weft-system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: Option<&str>, protocol: PortProtocol) -> ServicePort {
        ServicePort {
            name: name.map(str::to_string),
            port: 80,
            target_port: None,
            protocol,
        }
    }

    #[test]
    fn a_port_name_announces_its_protocol_unless_one_is_declared() {
        let named = |n: &str| port(Some(n), PortProtocol::Auto).effective_protocol();
        assert_eq!(named("http"), PortProtocol::Http);
        assert_eq!(named("http-web"), PortProtocol::Http);
        assert_eq!(named("http2"), PortProtocol::Http2);
        assert_eq!(named("grpc-api"), PortProtocol::Grpc);
        assert_eq!(named("grpc-web"), PortProtocol::Http);
        assert_eq!(named("tcp-db"), PortProtocol::Tcp);
        assert_eq!(named("https"), PortProtocol::Auto);
        assert_eq!(named("web"), PortProtocol::Auto);
        assert_eq!(named("httpx"), PortProtocol::Auto);
        assert_eq!(
            port(None, PortProtocol::Auto).effective_protocol(),
            PortProtocol::Auto
        );
        assert_eq!(
            port(Some("http"), PortProtocol::Tcp).effective_protocol(),
            PortProtocol::Tcp
        );
    }
}

//! Prometheus metrics served on the health port's `/metrics`. Every rejection the proxy makes is counted
//! here with a reason label, as well as logged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use super::labels::{
    AuthzMode, ConnProtocol, Direction, Flow, Listener, MethodClass, Reason, RetryResult,
    TlsFailure,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: Direction,
    pub protocol: ConnProtocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub listener: Listener,
    pub reason: Reason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    /// `outbound` when this proxy dialled, `inbound` when it accepted.
    pub side: Direction,
    pub reason: TlsFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// One HTTP request as both sides of a hop count it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub direction: Direction,
    /// The caller's SPIFFE ID.
    pub source_identity: String,
    /// The answering side's SPIFFE ID (outbound: the endpoint's, empty when none was reached).
    pub destination_identity: String,
    /// `namespace/name` of the service called (outbound; empty for a fixed peer and inbound).
    pub destination_service: String,
    /// The `version` of the endpoints that answered (outbound: the routed subset; inbound: this
    /// workload's `version` label).
    pub destination_version: String,
    /// The route rule that took the request (`namespace/route rules[i]` or its name), if any.
    pub route: String,
    /// GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT, or other.
    pub method: MethodClass,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: Direction,
    pub destination_service: String,
    pub destination_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub policy: String,
    pub mode: AuthzMode,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub result: RetryResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub direction: Direction,
    pub flow: Flow,
}

pub struct Metrics {
    registry: Registry,
    pub connections_opened: Family<ConnLabels, Counter>,
    pub connections_active: Family<ConnLabels, Gauge>,
    pub connections_closed: Family<ConnLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub rejections: Family<RejectLabels, Counter>,
    pub tls_handshake_failures: Family<TlsLabels, Counter>,
    /// Peers refused or cut off because their certificate is on the revocation list.
    pub revoked_peers_refused: Counter,
    pub tcp_bytes: Family<BytesLabels, Counter>,
    pub peer_connections_opened: Counter,
    /// Endpoints taken out of rotation by outlier detection.
    pub ejections: Counter,
    pub access_log_dropped: Counter,
    pub spans_exported: Counter,
    pub spans_dropped: Counter,
    retries: Family<RetryLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_latency: Family<LatencyLabels, Histogram>,
    authz_denials: Family<DenialLabels, Counter>,
    config_version: Gauge,
    config_updates: Family<ResultLabels, Counter>,
    cert_expiry: Gauge,
    cert_renewals: Family<ResultLabels, Counter>,
    control_connected: Gauge,
    dns_queries: Family<ResultLabels, Counter>,
    /// `requests{status_code="200"}` per direction, looked up once: the family's map hashes its labels
    /// on every access, and 200 is nearly every request.
    ok: [Counter; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft_proxy");
        let m = Metrics {
            connections_opened: Default::default(),
            connections_active: Default::default(),
            connections_closed: Default::default(),
            requests: Default::default(),
            rejections: Default::default(),
            tls_handshake_failures: Default::default(),
            revoked_peers_refused: Default::default(),
            tcp_bytes: Default::default(),
            peer_connections_opened: Default::default(),
            ejections: Default::default(),
            access_log_dropped: Default::default(),
            spans_exported: Default::default(),
            spans_dropped: Default::default(),
            retries: Default::default(),
            http_requests: Default::default(),
            http_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            authz_denials: Default::default(),
            config_version: Default::default(),
            config_updates: Default::default(),
            cert_expiry: Default::default(),
            cert_renewals: Default::default(),
            control_connected: Default::default(),
            dns_queries: Default::default(),
            registry: Registry::default(),
            ok: Default::default(),
        };
        registry.register(
            "connections_opened",
            "Connections accepted, by direction (outbound listener or inbound tunnel) and detected protocol",
            m.connections_opened.clone(),
        );
        registry.register(
            "connections_active",
            "Connections open now",
            m.connections_active.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed (by either side, or refused after accepting)",
            m.connections_closed.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests forwarded, by direction and response status",
            m.requests.clone(),
        );
        registry.register(
            "rejections",
            "Connections or requests refused by a limit or a protocol check, by listener and reason",
            m.rejections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the peer hop that failed, by side and reason",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "revoked_peers_refused",
            "Peer-hop connections refused at the handshake or closed because the peer's certificate is revoked",
            m.revoked_peers_refused.clone(),
        );
        registry.register(
            "tcp_bytes",
            "Bytes carried on opaque TCP streams",
            m.tcp_bytes.clone(),
        );
        registry.register(
            "peer_connections_opened",
            "mTLS HTTP/2 connections opened to peer proxies",
            m.peer_connections_opened.clone(),
        );
        registry.register(
            "ejections",
            "Endpoints ejected by outlier detection (consecutive 5xx or failed connects)",
            m.ejections.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by direction, source and destination identity, destination service and \
             version, route, method and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response head, by direction and destination",
            m.http_latency.clone(),
        );
        registry.register(
            "authz_denials",
            "Requests and connections refused by an AuthorizationPolicy (mode enforce), or that an audit-mode \
             policy would refuse (mode audit), by policy",
            m.authz_denials.clone(),
        );
        registry.register(
            "spans_exported",
            "Spans the collector accepted",
            m.spans_exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans dropped: the export queue was full, or the collector failed or was away",
            m.spans_dropped.clone(),
        );
        registry.register(
            "retries",
            "Retry decisions, by result (sent, budget_exhausted, attempts_exhausted, not_retryable)",
            m.retries.clone(),
        );
        registry.register(
            "config_version",
            "Version of the config from the control plane in force",
            m.config_version.clone(),
        );
        registry.register(
            "config_updates",
            "Snapshots from the control plane, by result (ack, nack)",
            m.config_updates.clone(),
        );
        registry.register(
            "cert_expiry_timestamp_seconds",
            "When the proxy's certificate expires (Unix time)",
            m.cert_expiry.clone(),
        );
        registry.register(
            "cert_renewals",
            "Certificate renewals, by result (ok, failed, unusable)",
            m.cert_renewals.clone(),
        );
        registry.register(
            "control_connected",
            "1 while the config stream to the control plane is open",
            m.control_connected.clone(),
        );
        registry.register(
            "dns_queries",
            "Questions the DNS responder answered, by result (answered, nodata, nxdomain, forwarded, \
             forward_failed, formerr, notimp, refused)",
            m.dns_queries.clone(),
        );
        let ok = [Direction::Outbound, Direction::Inbound].map(|direction| {
            m.requests
                .get_or_create(&RequestLabels {
                    direction,
                    status_code: 200,
                })
                .clone()
        });
        Metrics { registry, ok, ..m }
    }

    pub fn count_request(&self, direction: Direction, status: http::StatusCode) {
        if status == http::StatusCode::OK {
            self.ok[direction as usize].inc();
        } else {
            self.requests
                .get_or_create(&RequestLabels {
                    direction,
                    status_code: status.as_u16(),
                })
                .inc();
        }
    }

    pub fn reject(&self, listener: Listener, reason: Reason) {
        self.rejections
            .get_or_create(&RejectLabels { listener, reason })
            .inc();
    }

    /// Counts and times one HTTP request.
    pub fn http_request(&self, labels: HttpLabels, elapsed: std::time::Duration) {
        self.http_latency
            .get_or_create(&LatencyLabels {
                direction: labels.direction,
                destination_service: labels.destination_service.clone(),
                destination_version: labels.destination_version.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.http_requests.get_or_create(&labels).inc();
    }

    pub fn authz_denial(&self, policy: &str, mode: AuthzMode) {
        self.authz_denials
            .get_or_create(&DenialLabels {
                policy: policy.to_string(),
                mode,
            })
            .inc();
    }

    pub fn retry(&self, result: RetryResult) {
        self.retries.get_or_create(&RetryLabels { result }).inc();
    }

    pub fn tls_failure(&self, side: Direction, err: &std::io::Error) {
        let reason = TlsFailure::of(err);
        if reason == TlsFailure::Revoked {
            self.revoked_peer_refused();
        }
        self.tls_handshake_failures
            .get_or_create(&TlsLabels { side, reason })
            .inc();
    }

    /// A peer refused (handshake) or cut off (open connection) for a revoked certificate.
    pub fn revoked_peer_refused(&self) {
        self.revoked_peers_refused.inc();
    }

    pub fn set_config_version(&self, v: u64) {
        self.config_version
            .set(i64::try_from(v).unwrap_or(i64::MAX));
    }

    pub fn config_update(&self, result: &'static str) {
        self.config_updates
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn set_cert_expiry(&self, t: std::time::SystemTime) {
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.cert_expiry
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    pub fn cert_renewal(&self, result: &'static str) {
        self.cert_renewals
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn set_control_connected(&self, up: bool) {
        self.control_connected.set(i64::from(up));
    }

    pub fn dns_query(&self, result: &'static str) {
        self.dns_queries
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A small, bounded set of label values for TLS failures (the error text itself goes to the log).
/// Counts a connection as active until dropped, then as closed, so every exit path is counted.
pub struct ActiveGuard {
    active: Gauge,
    closed: Counter,
}

impl ActiveGuard {
    pub fn new(m: &Metrics, labels: ConnLabels) -> ActiveGuard {
        m.connections_opened.get_or_create(&labels).inc();
        let active = m.connections_active.get_or_create(&labels).clone();
        active.inc();
        let closed = m.connections_closed.get_or_create(&labels).clone();
        ActiveGuard { active, closed }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.active.dec();
        self.closed.inc();
    }
}

//! Prometheus metrics served on the health port's `/metrics`. Every rejection the proxy makes is counted
//! here with a reason label, as well as logged. The DNS responder, the control-plane tasks and the span
//! exporter register their own metrics ([`crate::dns::metrics`], [`crate::control::metrics`],
//! [`super::trace::Metrics`]); [`Metrics`] holds them as fields, all in one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

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
    retries: Family<RetryLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_latency: Family<LatencyLabels, Histogram>,
    authz_denials: Family<DenialLabels, Counter>,
    /// Spans exported and dropped.
    pub trace: super::trace::Metrics,
    /// The config in force, the config stream, the certificate.
    pub control: crate::control::metrics::Metrics,
    /// The DNS responder's answers.
    pub dns: crate::dns::metrics::Metrics,
    /// `requests{status_code="200"}` per direction, looked up once: the family's map hashes its labels
    /// on every access, and 200 is nearly every request.
    ok: [Counter; 2],
    /// The HTTP series used last, found again without hashing their labels.
    recent: super::series::RecentSeries,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft_proxy");
        let mut m = Metrics::unregistered();
        // Registration order is the order families appear in on `/metrics`.
        m.register_connections(&mut registry);
        m.register_requests(&mut registry);
        m.trace = super::trace::Metrics::new(&mut registry);
        registry.register(
            "retries",
            "Retry decisions, by result (sent, budget_exhausted, attempts_exhausted, not_retryable)",
            m.retries.clone(),
        );
        m.control = crate::control::metrics::Metrics::new(&mut registry);
        m.dns = crate::dns::metrics::Metrics::new(&mut registry);
        m.ok = [Direction::Outbound, Direction::Inbound].map(|direction| {
            m.requests
                .get_or_create(&RequestLabels {
                    direction,
                    status_code: 200,
                })
                .clone()
        });
        m.registry = registry;
        m
    }

    /// Every metric, in no registry yet.
    fn unregistered() -> Metrics {
        Metrics {
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
            retries: Default::default(),
            http_requests: Default::default(),
            http_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            authz_denials: Default::default(),
            trace: Default::default(),
            control: Default::default(),
            dns: Default::default(),
            registry: Registry::default(),
            ok: Default::default(),
            recent: Default::default(),
        }
    }

    /// Connections, rejections, the peer hop, TCP bytes, ejections and the access log.
    fn register_connections(&self, registry: &mut Registry) {
        registry.register(
            "connections_opened",
            "Connections accepted, by direction (outbound listener or inbound tunnel) and detected protocol",
            self.connections_opened.clone(),
        );
        registry.register(
            "connections_active",
            "Connections open now",
            self.connections_active.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed (by either side, or refused after accepting)",
            self.connections_closed.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests forwarded, by direction and response status",
            self.requests.clone(),
        );
        registry.register(
            "rejections",
            "Connections or requests refused by a limit or a protocol check, by listener and reason",
            self.rejections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on the peer hop that failed, by side and reason",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            "revoked_peers_refused",
            "Peer-hop connections refused at the handshake or closed because the peer's certificate is revoked",
            self.revoked_peers_refused.clone(),
        );
        registry.register(
            "tcp_bytes",
            "Bytes carried on opaque TCP streams",
            self.tcp_bytes.clone(),
        );
        registry.register(
            "peer_connections_opened",
            "mTLS HTTP/2 connections opened to peer proxies",
            self.peer_connections_opened.clone(),
        );
        registry.register(
            "ejections",
            "Endpoints ejected by outlier detection (consecutive 5xx or failed connects)",
            self.ejections.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            self.access_log_dropped.clone(),
        );
    }

    /// Per-request counts and latency, and authorization denials.
    fn register_requests(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP requests by direction, source and destination identity, destination service and \
             version, route, method and status",
            self.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response head, by direction and destination",
            self.http_latency.clone(),
        );
        registry.register(
            "authz_denials",
            "Requests and connections refused by an AuthorizationPolicy (mode enforce), or that an audit-mode \
             policy would refuse (mode audit), by policy",
            self.authz_denials.clone(),
        );
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
    pub fn http_request(&self, labels: super::series::HttpLabelsRef<'_>, elapsed: Duration) {
        self.recent.observe(
            &self.http_requests,
            &self.http_latency,
            labels,
            elapsed.as_secs_f64(),
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::metrics::{ConfigUpdate, Renewal};
    use crate::dns::metrics::QueryResult;

    /// Every family `/metrics` had before its metrics moved to the modules that own them, with its type:
    /// dashboards, alerts and tests scrape these names.
    const FAMILIES: &[(&str, &str)] = &[
        ("connections_opened", "counter"),
        ("connections_active", "gauge"),
        ("connections_closed", "counter"),
        ("requests", "counter"),
        ("rejections", "counter"),
        ("tls_handshake_failures", "counter"),
        ("revoked_peers_refused", "counter"),
        ("tcp_bytes", "counter"),
        ("peer_connections_opened", "counter"),
        ("ejections", "counter"),
        ("access_log_dropped", "counter"),
        ("http_requests", "counter"),
        ("http_request_duration_seconds", "histogram"),
        ("authz_denials", "counter"),
        ("spans_exported", "counter"),
        ("spans_dropped", "counter"),
        ("retries", "counter"),
        ("config_version", "gauge"),
        ("config_updates", "counter"),
        ("cert_expiry_timestamp_seconds", "gauge"),
        ("cert_renewals", "counter"),
        ("cert_expired", "gauge"),
        ("clock_skew_seconds", "gauge"),
        ("clock_skew_errors", "counter"),
        ("control_connected", "gauge"),
        ("control_plane", "gauge"),
        ("control_failovers", "counter"),
        ("dns_queries", "counter"),
    ];

    #[test]
    fn every_family_keeps_its_name_and_type() {
        let text = Metrics::new().encode();
        for (name, kind) in FAMILIES {
            let line = format!("# TYPE weft_proxy_{name} {kind}\n");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(
            families,
            FAMILIES.len(),
            "a family was added: list it here\n{text}"
        );
    }

    /// The families that moved to their modules, as they were encoded before: help, label names, values.
    #[test]
    fn moved_families_encode_as_before() {
        let m = Metrics::new();
        for r in QueryResult::ALL {
            m.dns.query(r);
        }
        m.control.config_update(ConfigUpdate::Ack);
        m.control.config_update(ConfigUpdate::Nack);
        for r in [Renewal::Ok, Renewal::Failed, Renewal::Unusable] {
            m.control.cert_renewal(r);
        }
        m.control.set_config_version(7);
        m.control
            .set_cert_expiry(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000));
        m.control.set_connected(true);
        m.trace.spans_exported.inc_by(3);
        m.trace.spans_dropped.inc_by(2);
        let text = m.encode();
        let expected = [
            "# HELP weft_proxy_spans_exported Spans the collector accepted.",
            "weft_proxy_spans_exported_total 3",
            "# HELP weft_proxy_spans_dropped Spans dropped: the export queue was full, or the collector \
             failed or was away.",
            "weft_proxy_spans_dropped_total 2",
            "# HELP weft_proxy_config_version Version of the config from the control plane in force.",
            "weft_proxy_config_version 7",
            "# HELP weft_proxy_config_updates Snapshots from the control plane, by result (ack, nack).",
            "weft_proxy_config_updates_total{result=\"ack\"} 1",
            "weft_proxy_config_updates_total{result=\"nack\"} 1",
            "# HELP weft_proxy_cert_expiry_timestamp_seconds When the proxy's certificate expires (Unix \
             time).",
            "weft_proxy_cert_expiry_timestamp_seconds 1000",
            "# HELP weft_proxy_cert_renewals Certificate renewals, by result (ok, failed, unusable).",
            "weft_proxy_cert_renewals_total{result=\"ok\"} 1",
            "weft_proxy_cert_renewals_total{result=\"failed\"} 1",
            "weft_proxy_cert_renewals_total{result=\"unusable\"} 1",
            "# HELP weft_proxy_control_connected 1 while the config stream to the control plane is open.",
            "weft_proxy_control_connected 1",
            "# HELP weft_proxy_dns_queries Questions the DNS responder answered, by result (answered, \
             nodata, nxdomain, forwarded, forward_failed, formerr, notimp, refused).",
            "weft_proxy_dns_queries_total{result=\"answered\"} 1",
            "weft_proxy_dns_queries_total{result=\"nodata\"} 1",
            "weft_proxy_dns_queries_total{result=\"nxdomain\"} 1",
            "weft_proxy_dns_queries_total{result=\"forwarded\"} 1",
            "weft_proxy_dns_queries_total{result=\"forward_failed\"} 1",
            "weft_proxy_dns_queries_total{result=\"formerr\"} 1",
            "weft_proxy_dns_queries_total{result=\"notimp\"} 1",
            "weft_proxy_dns_queries_total{result=\"refused\"} 1",
        ];
        for line in expected {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}

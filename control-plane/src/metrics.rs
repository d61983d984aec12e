//! Prometheus metrics of the control plane, served on the operator port's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    connected: Gauge,
    push_cycle: Histogram,
    snapshots_sent: Counter,
    acks: Family<ResultLabels, Counter>,
    certificates: Family<KindLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    applies: Family<ResultLabels, Counter>,
    revocations: Family<KindLabels, Counter>,
    revoked_serials: Gauge,
    api_refused: Family<ReasonLabels, Counter>,
    serving_rotations: Family<ResultLabels, Counter>,
    registrations_refused: Family<ReasonLabels, Counter>,
    stats_dropped: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft_control");
        let m = Metrics {
            registry: Registry::default(),
            connected: Gauge::default(),
            push_cycle: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            snapshots_sent: Counter::default(),
            acks: Family::default(),
            certificates: Family::default(),
            refused: Family::default(),
            applies: Family::default(),
            revocations: Family::default(),
            revoked_serials: Gauge::default(),
            api_refused: Family::default(),
            serving_rotations: Family::default(),
            registrations_refused: Family::default(),
            stats_dropped: Family::default(),
        };
        registry.register(
            "proxies_connected",
            "Proxies with an open config stream",
            m.connected.clone(),
        );
        registry.register(
            "push_cycle_seconds",
            "Time to compute and queue one push to every affected proxy",
            m.push_cycle.clone(),
        );
        registry.register(
            "snapshots_sent",
            "Snapshots queued to proxies",
            m.snapshots_sent.clone(),
        );
        registry.register(
            "snapshot_replies",
            "Snapshot replies from proxies, by result (ack, nack)",
            m.acks.clone(),
        );
        registry.register(
            "certificates_issued",
            "Workload certificates signed, by kind (join, join_replay, renew)",
            m.certificates.clone(),
        );
        registry.register(
            "certificate_requests_refused",
            "Certificate requests refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "applies",
            "Resource changes requested, by result (applied, unchanged, refused)",
            m.applies.clone(),
        );
        registry.register(
            "revocations",
            "Revocations made and lifted, by kind (revoke, unrevoke)",
            m.revocations.clone(),
        );
        registry.register(
            "revoked_serials",
            "Unexpired workload certificates on the deny list pushed to every proxy",
            m.revoked_serials.clone(),
        );
        registry.register(
            "proxy_api_connections_refused",
            "Proxy API connections closed before serving, by reason (per_client_limit, limit, \
             handshake_timeout, handshake, idle, revoked)",
            m.api_refused.clone(),
        );
        registry.register(
            "serving_certificate_renewals",
            "Renewals of the proxy API's own certificate, by result (ok, failed)",
            m.serving_rotations.clone(),
        );
        registry.register(
            "registrations_refused",
            "Config streams refused at registration, by reason",
            m.registrations_refused.clone(),
        );
        registry.register(
            "stats_entries_dropped",
            "Request-count entries from proxies that were not kept, by reason",
            m.stats_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn set_connected(&self, n: usize) {
        self.connected.set(n as i64);
    }
    pub fn observe_cycle(&self, d: Duration) {
        self.push_cycle.observe(d.as_secs_f64());
    }
    pub fn pushed(&self, n: usize) {
        self.snapshots_sent.inc_by(n as u64);
    }
    pub fn ack(&self, result: &'static str) {
        self.acks.get_or_create(&ResultLabels { result }).inc();
    }
    pub fn certificate(&self, kind: &'static str) {
        self.certificates.get_or_create(&KindLabels { kind }).inc();
    }
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }
    pub fn revocation(&self, kind: &'static str) {
        self.revocations.get_or_create(&KindLabels { kind }).inc();
    }
    pub fn set_revoked_serials(&self, n: usize) {
        self.revoked_serials.set(n as i64);
    }
    pub fn api_refused(&self, reason: &'static str) {
        self.api_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
    pub fn serving_rotation(&self, result: &'static str) {
        self.serving_rotations
            .get_or_create(&ResultLabels { result })
            .inc();
    }
    pub fn registration_refused(&self, reason: &'static str) {
        self.registrations_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
    pub fn stats_dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.stats_dropped
                .get_or_create(&ReasonLabels { reason })
                .inc_by(n);
        }
    }
    pub fn apply(&self, result: &'static str) {
        self.applies.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

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
    /// The leader's families, after the others on `/metrics` ([`Metrics::encode_all`]): the first
    /// registry's families keep their place.
    leadership: Registry,
    connected: Gauge,
    push_cycle: Histogram,
    snapshots_sent: Counter,
    acks: Family<ResultLabels, Counter>,
    certificates: Family<KindLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    applies: Family<ResultLabels, Counter>,
    revocations: Family<KindLabels, Counter>,
    revoked_serials: Gauge,
    leader: Gauge,
    swept: Family<KindLabels, Counter>,
    api_refused: Family<ReasonLabels, Counter>,
    serving_rotations: Family<ResultLabels, Counter>,
    registrations_refused: Family<ReasonLabels, Counter>,
    stats_dropped: Family<ReasonLabels, Counter>,
    resources_refused: Family<ReasonLabels, Counter>,
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
            leadership: Registry::default(),
            connected: Gauge::default(),
            push_cycle: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            snapshots_sent: Counter::default(),
            acks: Family::default(),
            certificates: Family::default(),
            refused: Family::default(),
            applies: Family::default(),
            revocations: Family::default(),
            revoked_serials: Gauge::default(),
            leader: Gauge::default(),
            swept: Family::default(),
            api_refused: Family::default(),
            serving_rotations: Family::default(),
            registrations_refused: Family::default(),
            stats_dropped: Family::default(),
            resources_refused: Family::default(),
        };
        // Registration order is the order of `/metrics`.
        m.register_push(&mut registry);
        m.register_certificates(&mut registry);
        m.register_resources(&mut registry);
        m.register_proxy_api(&mut registry);
        registry.register(
            "resource_documents_refused",
            "Applies and reloads refused before their documents were parsed or while they were read, \
             by reason (depth, nodes, alias, document_bytes, documents, deadline, busy)",
            m.resources_refused.clone(),
        );
        let mut leadership = Registry::with_prefix("weft_control");
        leadership.register(
            "leader",
            "1 while this replica is the elected leader (it runs the expiry sweep), else 0",
            m.leader.clone(),
        );
        leadership.register(
            "expired_records_swept",
            "Expired records the leader's sweep deleted, by kind (token, claim, issued)",
            m.swept.clone(),
        );
        Metrics {
            registry,
            leadership,
            ..m
        }
    }

    /// The config stream: connected proxies, push cycles, snapshots and their replies.
    fn register_push(&self, registry: &mut Registry) {
        registry.register(
            "proxies_connected",
            "Proxies with an open config stream",
            self.connected.clone(),
        );
        registry.register(
            "push_cycle_seconds",
            "Time to compute and queue one push to every affected proxy",
            self.push_cycle.clone(),
        );
        registry.register(
            "snapshots_sent",
            "Snapshots queued to proxies",
            self.snapshots_sent.clone(),
        );
        registry.register(
            "snapshot_replies",
            "Snapshot replies from proxies, by result (ack, nack)",
            self.acks.clone(),
        );
    }

    /// Workload certificates signed and refused.
    fn register_certificates(&self, registry: &mut Registry) {
        registry.register(
            "certificates_issued",
            "Workload certificates signed, by kind (join, join_replay, renew)",
            self.certificates.clone(),
        );
        registry.register(
            "certificate_requests_refused",
            "Certificate requests refused, by reason",
            self.refused.clone(),
        );
    }

    /// Operator changes: resources applied, revocations.
    fn register_resources(&self, registry: &mut Registry) {
        registry.register(
            "applies",
            "Resource changes requested, by result (applied, unchanged, refused)",
            self.applies.clone(),
        );
        registry.register(
            "revocations",
            "Revocations made and lifted, by kind (revoke, unrevoke)",
            self.revocations.clone(),
        );
        registry.register(
            "revoked_serials",
            "Unexpired workload certificates on the deny list pushed to every proxy",
            self.revoked_serials.clone(),
        );
    }

    /// The proxy API itself: connections refused, its own certificate, registrations, stats intake.
    fn register_proxy_api(&self, registry: &mut Registry) {
        registry.register(
            "proxy_api_connections_refused",
            "Proxy API connections closed before serving, by reason (per_client_limit, limit, \
             handshake_timeout, handshake, idle, revoked)",
            self.api_refused.clone(),
        );
        registry.register(
            "serving_certificate_renewals",
            "Renewals of the proxy API's own certificate, by result (ok, failed)",
            self.serving_rotations.clone(),
        );
        registry.register(
            "registrations_refused",
            "Config streams refused at registration, by reason",
            self.registrations_refused.clone(),
        );
        registry.register(
            "stats_entries_dropped",
            "Request-count entries from proxies that were not kept, by reason",
            self.stats_dropped.clone(),
        );
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
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
    pub fn swept(&self, kind: &'static str, n: usize) {
        self.swept
            .get_or_create(&KindLabels { kind })
            .inc_by(n as u64);
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
    /// A change refused by a limit on its documents, or for time, or for too many at once.
    pub fn resource_refused(&self, reason: &'static str) {
        self.resources_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
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

    /// Every family, the leader's last: what `/metrics` serves.
    pub fn encode_all(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &self.leadership);
        let _ = encode_eof(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_keeps_its_name_help_and_place() {
        // Dashboards and tests scrape these names; the order is the order of registration.
        let want = [
            "# HELP weft_control_proxies_connected Proxies with an open config stream.",
            "# HELP weft_control_push_cycle_seconds Time to compute and queue one push to every affected proxy.",
            "# HELP weft_control_snapshots_sent Snapshots queued to proxies.",
            "# HELP weft_control_snapshot_replies Snapshot replies from proxies, by result (ack, nack).",
            "# HELP weft_control_certificates_issued Workload certificates signed, by kind (join, join_replay, renew).",
            "# HELP weft_control_certificate_requests_refused Certificate requests refused, by reason.",
            "# HELP weft_control_applies Resource changes requested, by result (applied, unchanged, refused).",
            "# HELP weft_control_revocations Revocations made and lifted, by kind (revoke, unrevoke).",
            "# HELP weft_control_revoked_serials Unexpired workload certificates on the deny list pushed to every proxy.",
            "# HELP weft_control_proxy_api_connections_refused Proxy API connections closed before serving, by reason (per_client_limit, limit, handshake_timeout, handshake, idle, revoked).",
            "# HELP weft_control_serving_certificate_renewals Renewals of the proxy API's own certificate, by result (ok, failed).",
            "# HELP weft_control_registrations_refused Config streams refused at registration, by reason.",
            "# HELP weft_control_stats_entries_dropped Request-count entries from proxies that were not kept, by reason.",
            "# HELP weft_control_resource_documents_refused Applies and reloads refused before their documents were parsed or while they were read, by reason (depth, nodes, alias, document_bytes, documents, deadline, busy).",
        ];
        let text = Metrics::new().encode();
        let help: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP")).collect();
        assert_eq!(help, want);
    }

    #[test]
    fn metrics_serves_every_family_with_the_leaders_last_and_one_eof() {
        let m = Metrics::new();
        m.set_leader(true);
        m.swept("token", 2);
        let text = m.encode_all();
        let help: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP")).collect();
        let first: Vec<String> = m
            .encode()
            .lines()
            .filter(|l| l.starts_with("# HELP"))
            .map(str::to_string)
            .collect();
        assert_eq!(help[..first.len()], first[..]);
        assert!(
            help[first.len()].starts_with("# HELP weft_control_leader "),
            "{text}"
        );
        assert!(text.contains("\nweft_control_leader 1\n"), "{text}");
        assert!(
            text.contains("weft_control_expired_records_swept_total{kind=\"token\"} 2"),
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("# EOF\n"));
    }
}

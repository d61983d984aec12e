//! What the control-plane tasks report: the config in force and its updates, the config stream's state,
//! and the certificate's expiry and renewals.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::time::{SystemTime, UNIX_EPOCH};

/// What became of a snapshot from the control plane.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ConfigUpdate {
    Ack,
    Nack,
}

impl ConfigUpdate {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigUpdate::Ack => "ack",
            ConfigUpdate::Nack => "nack",
        }
    }
}

impl EncodeLabelValue for ConfigUpdate {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// How one certificate renewal ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Renewal {
    Ok,
    /// The control plane was not reached or refused.
    Failed,
    /// A certificate came back but could not be used.
    Unusable,
}

impl Renewal {
    pub fn as_str(self) -> &'static str {
        match self {
            Renewal::Ok => "ok",
            Renewal::Failed => "failed",
            Renewal::Unusable => "unusable",
        }
    }
}

impl EncodeLabelValue for Renewal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpdateLabels {
    result: ConfigUpdate,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenewalLabels {
    result: Renewal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaneLabels {
    address: String,
}

#[derive(Clone, Default)]
pub struct Metrics {
    control_plane: Family<PlaneLabels, Gauge>,
    failovers: Counter,
    config_version: Gauge,
    config_updates: Family<UpdateLabels, Counter>,
    cert_expiry: Gauge,
    cert_renewals: Family<RenewalLabels, Counter>,
    cert_expired: Gauge,
    clock_skew: Gauge,
    clock_skew_errors: Counter,
    connected: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
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
            "cert_expired",
            "1 while the proxy's certificate has expired and it refuses mTLS to peers until it renews",
            m.cert_expired.clone(),
        );
        registry.register(
            "clock_skew_seconds",
            "How far this machine's clock runs ahead of the control plane's (negative: behind), \
             measured on the last certificate issued",
            m.clock_skew.clone(),
        );
        registry.register(
            "clock_skew_errors",
            "Certificate requests that failed because this machine's clock is too far from the control plane's",
            m.clock_skew_errors.clone(),
        );
        registry.register(
            "control_connected",
            "1 while the config stream to the control plane is open",
            m.connected.clone(),
        );
        registry.register(
            "control_plane",
            "1 for the control-plane address the config stream is open to, 0 for those it was open to before",
            m.control_plane.clone(),
        );
        registry.register(
            "control_failovers",
            "Moves from one control-plane address to another after the one in use was lost",
            m.failovers.clone(),
        );
        m
    }

    /// The config stream opened to (`true`) or closed on (`false`) `address`.
    pub fn set_control_plane(&self, address: std::net::SocketAddr, open: bool) {
        self.control_plane
            .get_or_create(&PlaneLabels {
                address: address.to_string(),
            })
            .set(i64::from(open));
    }

    pub fn failover(&self) {
        self.failovers.inc();
    }

    pub fn set_config_version(&self, v: u64) {
        self.config_version
            .set(i64::try_from(v).unwrap_or(i64::MAX));
    }

    pub fn config_update(&self, result: ConfigUpdate) {
        self.config_updates
            .get_or_create(&UpdateLabels { result })
            .inc();
    }

    pub fn set_cert_expiry(&self, t: SystemTime) {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.cert_expiry
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    pub fn cert_renewal(&self, result: Renewal) {
        self.cert_renewals
            .get_or_create(&RenewalLabels { result })
            .inc();
    }

    pub fn set_cert_expired(&self, expired: bool) {
        self.cert_expired.set(i64::from(expired));
    }

    pub fn set_clock_skew(&self, seconds: i64) {
        self.clock_skew.set(seconds);
    }

    pub fn clock_skew_error(&self) {
        self.clock_skew_errors.inc();
    }

    /// Whether the config stream to the control plane is open.
    pub fn set_connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }
}

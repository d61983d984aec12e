//! The workload this proxy sits beside (`workload:`) and how its readiness is probed.

use super::Invalid;
use serde::{Deserialize, Serialize};
use weft_api::Duration;

/// The workload this proxy sits beside, as registered with the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Unique in its namespace (a pod name).
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The identity asked for: `spiffe://<trust domain>/ns/<namespace>/sa/<service_account>`.
    pub service_account: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The address peers reach this proxy's tunnel on.
    pub address: std::net::IpAddr,
    /// The app's ports.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// How the app's readiness is checked; without one the app counts as ready.
    #[serde(default)]
    pub readiness: Option<ReadinessProbe>,
}

fn default_namespace() -> String {
    "default".into()
}

/// An HTTP GET (2xx/3xx = ready) or a TCP connect to the app, every `period`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessProbe {
    #[serde(default)]
    pub http: Option<HttpProbe>,
    #[serde(default)]
    pub tcp: Option<TcpProbe>,
    #[serde(default = "default_probe_period")]
    pub period: Duration,
    #[serde(default = "default_probe_timeout")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub port: u16,
    #[serde(default = "default_probe_path")]
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    pub port: u16,
}

fn default_probe_period() -> Duration {
    Duration::from_secs(1)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_probe_path() -> String {
    "/".into()
}

impl WorkloadConfig {
    /// A readiness probe is one kind of probe.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        match &self.readiness {
            Some(p) if p.http.is_some() == p.tcp.is_some() => Err(Invalid::new(
                "workload.readiness",
                "give exactly one of `http` and `tcp`",
            )),
            _ => Ok(()),
        }
    }
}

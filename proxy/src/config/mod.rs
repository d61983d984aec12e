//! The proxy's bootstrap file (`weft-proxy run --config FILE`): identity files, the ports it serves,
//! explicit outbound listeners and limits. Parsed strictly (unknown fields refused) and then validated;
//! every error names the file, line, field and reason.
//!
//! One module per section, each with its types and its own rules: `identity` (certificate files or a
//! control plane), `workload`, `tunnel`, `admin`, `outbound`, `interception`, `limits`, `dns`,
//! `access_log` and `trace` (`tracing:`); `ports` holds the rule across sections (no two listeners on
//! one port). Rules are checked on the typed value; a broken one names its field, and the field is then
//! found in the file's text (the walk the control plane uses for resource files), so it carries the
//! line and column an operator has to edit.

mod access_log;
mod admin;
mod control_address;
mod dns;
mod identity;
mod interception;
mod limits;
mod outbound;
mod ports;
mod trace;
mod tunnel;
mod workload;

pub use access_log::AccessLogConfig;
pub use admin::AdminConfig;
pub use control_address::{ControlAddress, ControlAddresses};
pub use dns::DnsConfig;
pub use identity::{ControlConfig, IdentityFiles};
pub use interception::{InterceptionConfig, DEFAULT_MARK};
pub use limits::Limits;
pub use outbound::OutboundList;
pub use trace::{TraceFormat, TracingConfig};
pub use tunnel::TunnelConfig;
pub use workload::{HttpProbe, ReadinessProbe, TcpProbe, WorkloadConfig};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use weft_api::resources::DocSource;
use weft_api::{Duration, YamlError};

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not YAML of the right shape (located by the parser).
    #[error(transparent)]
    Parse(#[from] YamlError),
    /// The file parses but breaks a rule; located at the offending field.
    #[error(transparent)]
    Invalid(YamlError),
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Identity from files (explicit mode). Exactly one of `identity` and `control`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityFiles>,
    /// Identity and config from a control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlConfig>,
    /// The workload registered with the control plane (with `control`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadConfig>,
    #[serde(default)]
    pub tunnel: TunnelConfig,
    /// Admin endpoint (`/config`, `/identity`, `POST /shutdown` when enabled); loopback only. Either an
    /// address or `{listen, shutdown}`. Default `127.0.0.1:15000`, shutdown off.
    #[serde(default = "admin::default_admin")]
    pub admin: AdminConfig,
    /// Health endpoint (`/ready`, `/live`, `/metrics`). Default `0.0.0.0:15020`.
    #[serde(default = "default_health")]
    pub health: SocketAddr,
    /// Explicit local listeners.
    #[serde(default)]
    pub outbound: OutboundList,
    /// Transparent mode: listeners for the app's traffic that `weft-proxy init` redirects here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interception: Option<InterceptionConfig>,
    #[serde(default)]
    pub limits: Limits,
    /// On SIGTERM, how long in-flight requests and streams get to finish before the proxy exits.
    #[serde(default = "default_drain")]
    pub drain_timeout: Duration,
    /// The DNS responder; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    /// One JSON line per request and per TCP connection; absent: no access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
    /// Spans of each request, exported to a collector; absent: trace headers pass untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
}

fn default_health() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15020))
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}
fn default_sample() -> f64 {
    1.0
}

impl ProxyConfig {
    /// Reads, parses and validates `path`; relative identity paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file = path.display().to_string();
        let mut cfg: ProxyConfig = weft_api::yaml::from_str(&file, &text)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        cfg.validate()
            .map_err(|e| ConfigError::Invalid(e.located(&file, &text)))?;
        Ok(cfg)
    }

    /// Relative paths of files the proxy reads or writes are relative to the config file's directory.
    fn resolve_paths(&mut self, base: &Path) {
        let mut paths: Vec<&mut PathBuf> = Vec::new();
        if let Some(id) = self.identity.as_mut() {
            paths.extend([&mut id.cert, &mut id.key, &mut id.bundle]);
        }
        if let Some(c) = self.control.as_mut() {
            paths.push(&mut c.state_dir);
            paths.extend(c.ca_bundle.as_mut());
            paths.extend(c.token_file.as_mut());
        }
        if let Some(a) = self.access_log.as_mut() {
            if a.path.as_os_str() != "-" {
                paths.push(&mut a.path);
            }
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Each section's rules, then the rules across sections: no two listeners on one port, limits
    /// that make sense. The first broken rule is the answer.
    fn validate(&self) -> Result<(), Invalid> {
        let has_control = self.control.is_some();
        identity::check_sources(self)?;
        if let Some(c) = &self.control {
            c.check()?;
        }
        if let Some(w) = &self.workload {
            w.check()?;
        }
        if let Some(i) = &self.interception {
            i.check(has_control)?;
        }
        self.outbound.check(has_control)?;
        if let Some(a) = &self.access_log {
            a.check()?;
        }
        if let Some(t) = &self.tracing {
            t.check()?;
        }
        if let Some(d) = &self.dns {
            d.check()?;
        }
        ports::check(self)?;
        self.admin.check()?;
        self.limits.check()
    }
}

/// A rule the parsed file breaks: the dotted path of the field (`outbound[0].listen`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Invalid {
    field: String,
    reason: String,
}

impl Invalid {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The error for `file`, at the line and column where the field is written in `text`; a field the
    /// file leaves out (a default) is placed at the deepest part of its path that is written.
    fn located(self, file: &str, text: &str) -> YamlError {
        let docs = weft_api::yaml::split_documents(text);
        let source = docs
            .iter()
            .find(|d| !d.is_empty())
            .map_or_else(|| DocSource::detached(1), DocSource::new);
        let at = source.locate(&self.field);
        YamlError {
            file: file.to_string(),
            line: Some(at.line),
            column: Some(at.column),
            field: self.field,
            reason: self.reason,
        }
    }
}

/// Sampling rates are fractions.
fn check_fraction(field: &str, v: f64) -> Result<(), Invalid> {
    if (0.0..=1.0).contains(&v) {
        return Ok(());
    }
    Err(Invalid::new(
        field,
        format!("{v} is not a fraction between 0 and 1"),
    ))
}

#[cfg(test)]
mod tests;

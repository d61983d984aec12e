//! Span export (`tracing:`).

use super::{check_fraction, default_sample, Invalid};
use serde::{Deserialize, Serialize};
use weft_api::Duration;

/// Span export (`tracing:`). See docs/proxy-config.md ("Tracing").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where batches of spans are POSTed: a Zipkin `/api/v2/spans` or an OTLP/HTTP `/v1/traces` URL.
    pub collector: String,
    #[serde(default)]
    pub format: TraceFormat,
    /// Fraction of the traces this proxy starts that are recorded (default 1); an incoming trace's
    /// sampled flag is followed.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Longest a span waits in a batch (default 1s).
    #[serde(default = "default_flush")]
    pub flush_interval: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    /// Zipkin v2 JSON.
    #[default]
    Zipkin,
    /// OTLP/HTTP with JSON encoding.
    Otlp,
}

fn default_flush() -> Duration {
    Duration::from_secs(1)
}

impl TracingConfig {
    /// A sampling fraction, a plain-HTTP collector the exporter can POST to, and batches that flush.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        check_fraction("tracing.sample", self.sample)?;
        match self.collector.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {}
            _ => {
                return Err(Invalid::new(
                    "tracing.collector",
                    format!("`{}` is not an http:// URL", self.collector),
                ))
            }
        }
        if self.flush_interval.get().is_zero() {
            return Err(Invalid::new(
                "tracing.flush_interval",
                "must be longer than 0",
            ));
        }
        Ok(())
    }
}

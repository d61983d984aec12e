//! The access log (`access_log:`).

use super::{check_fraction, default_sample, Invalid};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The access log (`access_log:`). Fields of each line: docs/proxy-config.md ("Access log").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file to append to, or `-` (the default) for standard output.
    #[serde(default = "default_access_log_path")]
    pub path: PathBuf,
    /// Fraction of successful requests logged, 0 to 1 (default 1). Failures are always logged.
    #[serde(default = "default_sample")]
    pub sample: f64,
}

fn default_access_log_path() -> PathBuf {
    PathBuf::from("-")
}

impl AccessLogConfig {
    pub(super) fn check(&self) -> Result<(), Invalid> {
        check_fraction("access_log.sample", self.sample)
    }
}

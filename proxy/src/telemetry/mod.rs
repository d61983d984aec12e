//! What the proxy tells operators: Prometheus metrics, the access log, trace spans, and the per-version
//! request stats reported to the control plane.

pub mod access_log;
pub mod labels;
pub mod metrics;
pub mod record;
pub mod series;
pub mod stats;
pub mod trace;

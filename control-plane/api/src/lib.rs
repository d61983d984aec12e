//! Types shared by the Weft proxy and control plane: what an outbound listener forwards to, durations as
//! operators write them, and the one place YAML is parsed.

pub mod duration;
pub mod outbound;
pub mod yaml;

pub use duration::Duration;
pub use outbound::{AppProtocol, OutboundListener, Upstream};
pub use yaml::YamlError;

//! Types shared by the Weft proxy and control plane: mesh resources, the proxy ↔ control plane protocol,
//! the operator API, what an outbound listener forwards to, durations as operators write them, and the one
//! place YAML is parsed.

pub mod control;
pub mod duration;
pub mod operator;
pub mod outbound;
pub mod persist;
pub mod resources;
pub mod yaml;

pub use duration::Duration;
pub use outbound::{AppProtocol, OutboundListener, Target, Upstream};
pub use yaml::YamlError;

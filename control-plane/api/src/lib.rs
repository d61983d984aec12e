//! Types shared by the Weft proxy and control plane: mesh resources, how routes and authorization
//! policies decide (one copy for the proxy that enforces and the control plane that explains), the proxy ↔ control plane protocol,
//! the operator API, what an outbound listener forwards to, durations as operators write them, and the one
//! place YAML is parsed.

pub mod authz;
pub mod control;
pub mod duration;
pub mod operator;
pub mod outbound;
pub mod persist;
pub mod resources;
pub mod routing;
pub mod yaml;
pub mod yaml_limits;

pub use duration::Duration;
pub use outbound::{AppProtocol, OutboundListener, Target, Upstream};
pub use yaml::YamlError;

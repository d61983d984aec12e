//! Transparent interception (`interception:`): the listeners `weft-proxy init` redirects the app's
//! traffic to, and the socket mark that keeps the proxy's own traffic out of the redirect.

use super::Invalid;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Transparent interception in a pod (see docs/interception.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptionConfig {
    /// Where the app's redirected outgoing TCP arrives. Default `0.0.0.0:15001`.
    #[serde(default = "default_intercept_outbound")]
    pub outbound: SocketAddr,
    /// Where redirected incoming TCP from outside the mesh arrives. Default `0.0.0.0:15006`.
    #[serde(default = "default_intercept_inbound")]
    pub inbound: SocketAddr,
    /// SO_MARK on every socket the proxy opens to the network, so `init`'s rules let it through
    /// unredirected. Must match `weft-proxy init --mark`. Default 1337.
    #[serde(default = "default_mark")]
    pub mark: u32,
    /// Overrides the mesh's `mtlsMode` for this workload: `STRICT` refuses plaintext on `inbound`,
    /// `PERMISSIVE` delivers it to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls_mode: Option<weft_api::resources::MtlsMode>,
}

/// The socket mark `weft-proxy init` exempts by default.
pub const DEFAULT_MARK: u32 = 1337;

fn default_intercept_outbound() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15001))
}
fn default_intercept_inbound() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15006))
}
fn default_mark() -> u32 {
    DEFAULT_MARK
}

impl InterceptionConfig {
    /// Intercepted destinations are resolved from the mesh, and the mark must single something out.
    pub(super) fn check(&self, has_control: bool) -> Result<(), Invalid> {
        if !has_control {
            return Err(Invalid::new(
                "interception",
                "transparent mode needs `control` (destinations are resolved from the mesh)",
            ));
        }
        if self.mark == 0 {
            return Err(Invalid::new(
                "interception.mark",
                "must be non-zero (0 is every unmarked socket)",
            ));
        }
        Ok(())
    }
}

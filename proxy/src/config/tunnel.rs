//! The tunnel (`tunnel:`): where peers connect, and where inbound traffic is delivered.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The tunnel (server side of the peer hop).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Where peers connect (mTLS + HTTP/2). Default `0.0.0.0:15008`.
    #[serde(default = "default_tunnel_listen")]
    pub listen: SocketAddr,
    /// Host inbound traffic (tunnel and plaintext) is delivered to; the port comes from the request.
    /// Default: the workload's `address` with a `workload` section (peers then reach only what the app
    /// serves on the pod's address, never its loopback), else `127.0.0.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_host: Option<std::net::IpAddr>,
    /// App ports peers may reach; empty means any port.
    #[serde(default)]
    pub allowed_ports: Vec<u16>,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            listen: default_tunnel_listen(),
            app_host: None,
            allowed_ports: Vec::new(),
        }
    }
}

fn default_tunnel_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15008))
}

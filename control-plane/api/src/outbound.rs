//! What an outbound listener forwards to. In explicit mode these come from the proxy's config file; the
//! control plane fills the same structures later.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use weft_certs::SpiffeId;

/// How the outbound side treats bytes from the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Peek at the first bytes: HTTP/1, HTTP/2 prior knowledge, otherwise opaque TCP. A client that sends
    /// nothing within the detection window (server-speaks-first protocols) is treated as opaque.
    #[default]
    Auto,
    /// HTTP/1.1 or HTTP/2 (detected from the preface), no opaque fallback.
    Http,
    /// Opaque TCP, carried as an HTTP/2 CONNECT stream; no detection delay.
    Tcp,
}

/// The far end of a listener: a peer proxy's tunnel, the identity it must present, and the app port
/// behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// The peer proxy's tunnel address (mTLS + HTTP/2).
    pub peer: SocketAddr,
    /// The SPIFFE ID the peer must present; any other identity is refused.
    pub identity: SpiffeId,
    /// The app port on the peer's side that traffic is delivered to.
    pub target_port: u16,
}

/// One explicit local listener: `listen -> upstream`, named either directly (`peer`, `identity`,
/// `target_port`) or as a mesh service (`service`, `port`) resolved from the control plane's config on each
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundListener {
    /// A name for logs and metrics; defaults to the listen address.
    #[serde(default)]
    pub name: Option<String>,
    /// Local address the app connects to.
    pub listen: SocketAddr,
    /// The peer proxy's tunnel address (mTLS + HTTP/2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    /// The SPIFFE ID the peer must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
    /// The app port on the peer's side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// A mesh service (with a control plane): its endpoints come from the pushed config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The service's namespace (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `auto` (default), `http` or `tcp`.
    #[serde(default)]
    pub protocol: AppProtocol,
}

/// Where a listener's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Fixed(Upstream),
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
}

impl OutboundListener {
    /// The listener's target, or why its fields do not name one.
    pub fn target(&self) -> Result<Target, String> {
        match (self, &self.service) {
            (
                OutboundListener {
                    peer: Some(peer),
                    identity: Some(identity),
                    target_port: Some(target_port),
                    service: None,
                    port: None,
                    ..
                },
                _,
            ) => Ok(Target::Fixed(Upstream {
                peer: *peer,
                identity: identity.clone(),
                target_port: *target_port,
            })),
            (
                OutboundListener {
                    peer: None,
                    identity: None,
                    target_port: None,
                    port: Some(port),
                    ..
                },
                Some(name),
            ) => Ok(Target::Service {
                namespace: self.namespace.clone().unwrap_or_else(|| "default".into()),
                name: name.clone(),
                port: *port,
            }),
            _ => Err(
                "give either `peer`, `identity` and `target_port`, or `service` and `port`".into(),
            ),
        }
    }

    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.listen.to_string())
    }
}

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

/// One explicit local listener: `listen -> upstream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundListener {
    /// A name for logs and metrics; defaults to the listen address.
    #[serde(default)]
    pub name: Option<String>,
    /// Local address the app connects to.
    pub listen: SocketAddr,
    /// The peer proxy's tunnel address (mTLS + HTTP/2).
    pub peer: SocketAddr,
    /// The SPIFFE ID the peer must present.
    pub identity: SpiffeId,
    /// The app port on the peer's side.
    pub target_port: u16,
    /// `auto` (default), `http` or `tcp`.
    #[serde(default)]
    pub protocol: AppProtocol,
}

impl OutboundListener {
    pub fn upstream(&self) -> Upstream {
        Upstream {
            peer: self.peer,
            identity: self.identity.clone(),
            target_port: self.target_port,
        }
    }

    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.listen.to_string())
    }
}

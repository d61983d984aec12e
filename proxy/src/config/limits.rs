//! Limits (`limits:`): what one client or peer can make the proxy hold.

use super::Invalid;
use serde::{Deserialize, Serialize};
use weft_api::Duration;

/// Limits that bound what one client or peer can make the proxy hold. Every limit hit is logged and
/// counted in `weft_proxy_rejections_total`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections per listener (outbound listeners and the tunnel each); excess is closed at accept.
    pub max_connections: usize,
    /// Open connections on the admin port and on the health port (each); excess is closed at accept.
    /// They share `header_read_timeout`, so a client that sends no complete request head is cut.
    pub max_admin_connections: usize,
    /// Bytes of HTTP/1 request head (request line + headers); larger heads get 431.
    pub max_header_bytes: usize,
    /// Number of HTTP/1 request headers; more get 431.
    pub max_headers: usize,
    /// Time allowed to receive a complete HTTP/1 request head; then the connection is closed.
    pub header_read_timeout: Duration,
    /// HTTP/2 concurrent streams we accept per connection (from apps and from peers).
    pub max_concurrent_streams: u32,
    /// HTTP/2 header list size in bytes we accept.
    pub max_header_list_bytes: u32,
    /// Time allowed for a peer's TLS handshake on the tunnel.
    pub tls_handshake_timeout: Duration,
    /// Time allowed to connect to a peer or to the local app.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections are pinged at this interval and closed if no answer arrives.
    pub keepalive_interval: Duration,
    /// An opaque stream (TCP, a CONNECT stream, an upgraded WebSocket, a pass-through connection) on
    /// which no byte moves either way for this long is closed.
    pub idle_timeout: Duration,
    /// An HTTP/2 connection from an app or an outside client (outbound listeners, 15001, plaintext
    /// inbound) with no open stream for this long is closed with GOAWAY; streams in flight finish.
    /// PINGs alone do not keep it open. Envoy's `idle_timeout` default.
    pub h2_idle_timeout: Duration,
    /// The same for a peer proxy's connection to the tunnel. Shorter: a peer's pool keeps its
    /// connection open while idle, and reopening one costs a handshake (about a millisecond), while
    /// each idle one holds a slot of `max_connections` and TLS state on both sides.
    pub tunnel_idle_timeout: Duration,
    /// How long `auto` listeners wait for the client's first bytes before treating it as opaque TCP
    /// (server-speaks-first protocols pay this once per connection).
    pub detect_timeout: Duration,
    /// Streams per peer connection before a second connection is opened.
    pub max_streams_per_peer_connection: usize,
    /// Largest compiled regular expression a pushed route may use; a route over it is refused (NACK).
    pub max_regex_bytes: usize,
    /// Request bodies up to this size are kept so a failed try can be retried; larger ones stream and
    /// are not retried.
    pub retry_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_admin_connections: 128,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1_000,
            max_header_list_bytes: 64 * 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            h2_idle_timeout: Duration::from_secs(3600),
            tunnel_idle_timeout: Duration::from_secs(300),
            detect_timeout: Duration::from_millis(100),
            max_streams_per_peer_connection: 1_000,
            max_regex_bytes: 64 * 1024,
            retry_buffer_bytes: 64 * 1024,
        }
    }
}

impl Limits {
    /// Counts that must allow something, and a head buffer hyper can work with.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        for (name, v) in [
            ("limits.max_connections", self.max_connections),
            ("limits.max_admin_connections", self.max_admin_connections),
            ("limits.max_header_bytes", self.max_header_bytes),
            ("limits.max_headers", self.max_headers),
            (
                "limits.max_streams_per_peer_connection",
                self.max_streams_per_peer_connection,
            ),
        ] {
            if v == 0 {
                return Err(Invalid::new(name, "must be greater than 0"));
            }
        }
        if self.max_header_bytes < 8192 {
            return Err(Invalid::new(
                "limits.max_header_bytes",
                "must be at least 8192 (the HTTP/1 parser's minimum buffer)",
            ));
        }
        for (name, v) in [
            ("limits.idle_timeout", self.idle_timeout),
            ("limits.h2_idle_timeout", self.h2_idle_timeout),
            ("limits.tunnel_idle_timeout", self.tunnel_idle_timeout),
        ] {
            if v.get().is_zero() {
                return Err(Invalid::new(name, "must be greater than 0"));
            }
        }
        if self.max_concurrent_streams == 0 {
            return Err(Invalid::new(
                "limits.max_concurrent_streams",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

//! Header rules at the proxy's edges: hop-by-hop headers never cross a hop, headers the mesh uses between
//! its own proxies are removed from anything an app sent, and `x-forwarded-for` is set from the socket,
//! never taken from the client.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

/// Between proxies: the app port on the peer's side that a request is for.
pub const TARGET_PORT: HeaderName = HeaderName::from_static("weft-target-port");
/// Between proxies: the HTTP version the client app spoke (`1.1`), so the server side can talk to its app
/// the same way. Absent means HTTP/2.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("weft-orig-proto");
/// On responses the proxy made itself: why (so an app can tell a proxy error from its peer's answer).
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("weft-proxy-error");
/// On a 403: the policy that refused the request.
pub const DENIED_BY: HeaderName = HeaderName::from_static("weft-denied-by");
/// Set by the server-side proxy for its app: who called (`By=<own id>;URI=<peer id>`), as Envoy and Istio do.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers defined as hop-by-hop (RFC 9110 7.6.1) plus the de facto ones.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];

/// Removes hop-by-hop headers, including those the `Connection` header names. `TE: trailers` survives:
/// gRPC servers require it and it is the one TE value HTTP/2 allows.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names first: most messages carry none of these, and each removal by name hashes.
    if !h.keys().any(|k| *k == header::TE || HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(name);
    }
    let te_trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false)
    });
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes what only the mesh may set, whatever an app (or a peer's app) put there.
pub fn strip_mesh_headers(h: &mut HeaderMap) {
    const MESH: [HeaderName; 4] = [TARGET_PORT, ORIG_PROTO, PROXY_ERROR, XFCC];
    // Removing by name outright: a request from a peer always carries some of these, and scanning
    // every name first cost more than the four lookups.
    for name in MESH {
        h.remove(name);
    }
}

/// Replaces any client-supplied `x-forwarded-for`/`forwarded` with the address the socket saw.
pub fn set_forwarded_for(h: &mut HeaderMap, client: IpAddr) {
    h.remove(FORWARDED);
    if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
        // insert replaces every earlier value.
        h.insert(XFF, v);
    }
}

/// True for an HTTP/1.1 request asking to switch protocols (WebSocket and friends).
pub fn upgrade_protocol(h: &HeaderMap) -> Option<String> {
    let conn_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !conn_upgrade {
        return None;
    }
    h.get(header::UPGRADE)?
        .to_str()
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert!(
            h.get("x-secret").is_none()
                && h.get(KEEP_ALIVE).is_none()
                && h.get(header::CONNECTION).is_none()
        );
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-app").unwrap(), "kept");
    }

    #[test]
    fn forwarded_for_is_replaced_not_appended() {
        let mut h = HeaderMap::new();
        h.insert(XFF, HeaderValue::from_static("6.6.6.6"));
        h.insert(FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        set_forwarded_for(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h.get(XFF).unwrap(), "127.0.0.1");
        assert!(h.get(FORWARDED).is_none());
    }

    #[test]
    fn mesh_headers_from_apps_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            XFCC,
            HeaderValue::from_static("URI=spiffe://evil/ns/x/sa/y"),
        );
        h.insert(TARGET_PORT, HeaderValue::from_static("22"));
        strip_mesh_headers(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert_eq!(upgrade_protocol(&h), None);
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_protocol(&h).as_deref(), Some("websocket"));
    }
}

//! Where traffic from peers and from outside the mesh is delivered: the app's host (the pod's own
//! address, never its loopback, when the proxy sits beside a registered workload) and the ports that are
//! never the app's (the proxy's own). A peer that names one of those is refused, logged and counted, so
//! no caller can reach the admin port, the DNS responder or a listener of the proxy through it.

use crate::config::ProxyConfig;
use crate::path::errors::ProxyError;
use crate::telemetry::labels::Reason;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The proxy's well-known ports, refused as targets whatever this proxy's config says: admin, outbound
/// and inbound interception, tunnel, health, DNS.
pub const WELL_KNOWN_PROXY_PORTS: [u16; 6] = [15000, 15001, 15006, 15008, 15020, 15053];

/// Why a target port was refused (the `reason` label of `weft_proxy_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// One of the proxy's own ports.
    ProxyPort,
    /// Not in `tunnel.allowed_ports`.
    NotAllowed,
}

impl Refusal {
    pub fn reason(self) -> Reason {
        match self {
            Refusal::ProxyPort => Reason::ProxyPort,
            Refusal::NotAllowed => Reason::PortNotAllowed,
        }
    }

    /// The error a request for `port` is answered with.
    pub fn error(self, port: u16) -> ProxyError {
        match self {
            Refusal::ProxyPort => ProxyError::ProxyPort { port },
            Refusal::NotAllowed => ProxyError::PortNotAllowed { port },
        }
    }
}

/// The delivery rules of one proxy, computed once from its config.
#[derive(Debug, Clone)]
pub struct Delivery {
    host: IpAddr,
    /// `host:` as an authority spells it (`[::1]:` for IPv6), so a request's URI for the app is built
    /// without formatting the address on every request.
    host_prefix: String,
    own_ports: Vec<u16>,
    allowed: Vec<u16>,
}

impl Delivery {
    pub fn new(c: &ProxyConfig) -> Delivery {
        let host = c
            .tunnel
            .app_host
            .or_else(|| c.workload.as_ref().map(|w| w.address))
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut own_ports: Vec<u16> = WELL_KNOWN_PROXY_PORTS.to_vec();
        let mut add = |a: SocketAddr| own_ports.push(a.port());
        add(c.tunnel.listen);
        add(c.admin.listen);
        add(c.health);
        if let Some(i) = &c.interception {
            add(i.outbound);
            add(i.inbound);
        }
        if let Some(d) = &c.dns {
            add(d.listen);
        }
        for o in &c.outbound.0 {
            add(o.listen);
        }
        own_ports.retain(|p| *p != 0);
        own_ports.sort_unstable();
        own_ports.dedup();
        Delivery {
            host,
            host_prefix: match host {
                IpAddr::V4(a) => format!("{a}:"),
                IpAddr::V6(a) => format!("[{a}]:"),
            },
            own_ports,
            allowed: c.tunnel.allowed_ports.clone(),
        }
    }

    /// The app's address for `port`.
    pub fn app_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.host, port)
    }

    /// The URI of a request for the app on `port`: `http://host:port` and the request's own path and
    /// query (`/` when it had none).
    pub fn app_uri(&self, port: u16, original: &Uri) -> Result<Uri, ProxyError> {
        let mut authority = String::with_capacity(self.host_prefix.len() + 5);
        authority.push_str(&self.host_prefix);
        push_decimal(&mut authority, port);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(
            Authority::from_maybe_shared(Bytes::from(authority)).map_err(|_| {
                ProxyError::BadTunnelRequest("app address is not a valid authority")
            })?,
        );
        parts.path_and_query = Some(
            original
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts)
            .map_err(|_| ProxyError::BadTunnelRequest("request target is not a valid URI"))
    }

    /// Whether traffic for `port` may be delivered to the app.
    pub fn check(&self, port: u16) -> Result<(), Refusal> {
        if self.own_ports.binary_search(&port).is_ok() {
            return Err(Refusal::ProxyPort);
        }
        if !self.allowed.is_empty() && !self.allowed.contains(&port) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }
}

/// `n` in decimal, without the formatting machinery (this runs for every request).
fn push_decimal(out: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|d| char::from(*d)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> ProxyConfig {
        weft_api::yaml::from_str("test.yaml", yaml).unwrap()
    }

    const EXPLICIT: &str = "identity: {cert: a, key: b, bundle: c}\ntunnel: {listen: 127.0.0.1:25008}\nadmin: 127.0.0.1:25000\nhealth: 127.0.0.1:25020\n";

    #[test]
    fn the_app_uri_names_the_app_address_and_keeps_path_and_query() {
        let d = Delivery::new(&config(EXPLICIT));
        for port in [1, 9, 10, 80, 8080, 10000, 65535] {
            let uri = d.app_uri(port, &"/a/b?c=d".parse().unwrap()).unwrap();
            assert_eq!(uri.to_string(), format!("http://127.0.0.1:{port}/a/b?c=d"));
        }
        let origin_less: Uri = "http://example.com".parse().unwrap();
        assert_eq!(
            d.app_uri(80, &origin_less).unwrap().to_string(),
            "http://127.0.0.1:80/"
        );
        let v6 = Delivery::new(&config(&EXPLICIT.replace(
            "{listen: 127.0.0.1:25008}",
            "{listen: 127.0.0.1:25008, app_host: \"::1\"}",
        )));
        let uri = v6.app_uri(8443, &"/x".parse().unwrap()).unwrap();
        assert_eq!(uri.to_string(), "http://[::1]:8443/x");
        assert_eq!(uri.authority().unwrap().port_u16(), Some(8443));
    }

    #[test]
    fn explicit_mode_delivers_to_loopback_and_refuses_its_own_ports() {
        let d = Delivery::new(&config(EXPLICIT));
        assert_eq!(d.app_addr(8080), "127.0.0.1:8080".parse().unwrap());
        for p in [
            25008, 25000, 25020, 15000, 15001, 15006, 15008, 15020, 15053,
        ] {
            assert_eq!(d.check(p), Err(Refusal::ProxyPort), "port {p}");
        }
        assert_eq!(d.check(8080), Ok(()));
    }

    #[test]
    fn a_workload_is_reached_on_its_own_address() {
        let yaml = "control: {address: 198.18.0.1:15010, ca_fingerprint: x, state_dir: s}\nworkload: {name: a, service_account: a, address: 198.18.0.7}\ndns: {listen: 127.0.0.1:5353}\n";
        let d = Delivery::new(&config(yaml));
        assert_eq!(d.app_addr(8080), "198.18.0.7:8080".parse().unwrap());
        assert_eq!(d.check(5353), Err(Refusal::ProxyPort));
        let pinned = config(&format!(
            "{yaml}tunnel: {{app_host: 10.1.2.3, allowed_ports: [80]}}\n"
        ));
        let d = Delivery::new(&pinned);
        assert_eq!(d.app_addr(80), "10.1.2.3:80".parse().unwrap());
        assert_eq!(d.check(81), Err(Refusal::NotAllowed));
    }
}

//! The DNS responder (`dns:`).

use super::Invalid;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use weft_api::Duration;

/// The DNS responder (`dns:`); without the section the proxy answers no DNS. Apps reach it through
/// `weft-proxy init`'s port-53 redirect. See docs/proxy-config.md ("DNS") for the names it answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP, on the same address. Default `127.0.0.1:15053`.
    #[serde(default = "default_dns_listen")]
    pub listen: SocketAddr,
    /// Resolvers (`ip:port`) asked about names outside the mesh, in order, each for at most
    /// `forward_timeout`. Empty (the default): such names get NXDOMAIN.
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
    /// The domain under which `<service>.<namespace>.svc.<cluster_domain>` resolves. Default
    /// `cluster.local`.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// TTL of mesh answers, whole seconds, at most 1h. Default 5s: VIPs are stable, but services come
    /// and go.
    #[serde(default = "default_dns_ttl")]
    pub ttl: Duration,
    /// Time one upstream gets to answer before the next is tried; SERVFAIL when none answers.
    /// Default 2s.
    #[serde(default = "default_forward_timeout")]
    pub forward_timeout: Duration,
    /// Questions relayed upstream at once; further ones get SERVFAIL. Default 256.
    #[serde(default = "default_max_forwards")]
    pub max_forwards: usize,
    /// Open TCP connections; further ones are closed at accept. Default 64.
    #[serde(default = "default_dns_max_tcp")]
    pub max_tcp_connections: usize,
    /// A TCP connection with no complete question for this long is closed. Default 10s.
    #[serde(default = "default_dns_idle")]
    pub tcp_idle_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: default_dns_listen(),
            upstreams: Vec::new(),
            cluster_domain: default_cluster_domain(),
            ttl: default_dns_ttl(),
            forward_timeout: default_forward_timeout(),
            max_forwards: default_max_forwards(),
            max_tcp_connections: default_dns_max_tcp(),
            tcp_idle_timeout: default_dns_idle(),
        }
    }
}

fn default_dns_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15053))
}
fn default_cluster_domain() -> String {
    "cluster.local".into()
}
fn default_dns_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_forward_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_max_forwards() -> usize {
    256
}
fn default_dns_max_tcp() -> usize {
    64
}
fn default_dns_idle() -> Duration {
    Duration::from_secs(10)
}

impl DnsConfig {
    /// The section's own rules: a domain that names something, resolvers that are not this responder,
    /// a TTL resolvers can cache and limits that allow something.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        check_domain(&self.cluster_domain)
            .map_err(|reason| Invalid::new("dns.cluster_domain", reason))?;
        for (i, u) in self.upstreams.iter().enumerate() {
            let field = format!("dns.upstreams[{i}]");
            if u.port() == 0 || u.ip().is_unspecified() {
                return Err(Invalid::new(
                    field,
                    format!("{u} is not an address a resolver answers on"),
                ));
            }
            if *u == self.listen {
                return Err(Invalid::new(
                    field,
                    format!("{u} is this responder's own address"),
                ));
            }
        }
        let ttl = self.ttl.get();
        if ttl.subsec_nanos() != 0 || ttl > std::time::Duration::from_secs(3600) {
            return Err(Invalid::new("dns.ttl", "must be whole seconds, at most 1h"));
        }
        for (name, v) in [
            ("dns.max_forwards", self.max_forwards),
            ("dns.max_tcp_connections", self.max_tcp_connections),
        ] {
            if v == 0 {
                return Err(Invalid::new(name, "must be greater than 0"));
            }
        }
        for (name, v) in [
            ("dns.forward_timeout", self.forward_timeout),
            ("dns.tcp_idle_timeout", self.tcp_idle_timeout),
        ] {
            if v.get().is_zero() {
                return Err(Invalid::new(name, "must be longer than 0"));
            }
        }
        Ok(())
    }
}

/// A DNS domain name in presentation form: labels of letters, digits and `-`, one trailing dot allowed.
fn check_domain(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return Err(format!("\"{name}\" must be 1 to 253 characters"));
    }
    for label in bare.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(format!(
                "\"{name}\" has label \"{label}\"; labels are 1-63 letters, digits or '-' (not at either end)"
            ));
        }
    }
    Ok(())
}

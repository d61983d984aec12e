//! Pod networks and pod namespaces, built with the `ip` tool (iproute2).
//!
//! A pod network is a network namespace of its own (`weft-<network>`, never the root namespace) holding
//! a bridge with the gateway address. A pod is a namespace `weft-<network>-<pod>` with one veth into that
//! bridge, an address from the network's range and a default route via the gateway. The veth is created
//! from inside the bridge namespace with its far end placed straight into the pod, so nothing ever
//! appears in the root namespace. Shelling out to `ip` keeps us on the interface every operator knows
//! (and can replay by hand) instead of a netlink client of our own.

use std::net::Ipv4Addr;
use std::process::Command;

pub const BRIDGE: &str = "weft0";
/// Linux interface names are at most 15 bytes.
const IFNAMSIZ: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`ip` not found: install iproute2 (Debian: apt-get install iproute2)")]
    NoIpTool,
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// An IPv4 pod range; the first host is the gateway. Stored on disk as its text (`198.18.1.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodCidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for PodCidr {
    type Err = NetError;
    fn from_str(s: &str) -> Result<PodCidr, NetError> {
        let bad = || {
            NetError::Invalid(format!(
                "`{s}` is not an IPv4 range such as 198.18.0.0/16 (prefix 8-28)"
            ))
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=28).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(PodCidr {
            base: Ipv4Addr::from(u32::from(a) & mask),
            prefix,
        })
    }
}

impl TryFrom<String> for PodCidr {
    type Error = NetError;
    fn try_from(s: String) -> Result<PodCidr, NetError> {
        s.parse()
    }
}

impl From<PodCidr> for String {
    fn from(c: PodCidr) -> String {
        c.to_string()
    }
}

impl std::fmt::Display for PodCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl PodCidr {
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }
    /// Host `i` of the range (1 is the gateway); `None` past its end.
    pub fn host(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + i)
    }
    pub fn last_host(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }
}

pub fn network_ns(network: &str) -> String {
    format!("weft-{network}")
}

/// Whether the network's namespace is there.
pub fn exists(network: &str) -> bool {
    crate::netns::exists(&network_ns(network))
}

pub fn pod_ns(network: &str, pod: &str) -> String {
    format!("weft-{network}-{pod}")
}

/// Names that become parts of namespace names: short, lower-case DNS labels.
pub fn check_name(what: &str, s: &str) -> Result<(), NetError> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NetError::Invalid(format!(
            "{what} `{s}`: use 1-40 lower-case letters, digits and '-'"
        )))
    }
}

/// The bridge-side veth name for a pod namespace: `wv` + a hash, within IFNAMSIZ.
pub fn veth_name(pod_ns: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    pod_ns.hash(&mut h);
    let name = format!("wv{:010x}", h.finish() & 0xff_ffff_ffff);
    debug_assert!(name.len() <= IFNAMSIZ);
    name
}

pub fn ip(args: &[&str]) -> Result<String, NetError> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            NetError::NoIpTool
        } else {
            NetError::Ip {
                args: args.join(" "),
                stderr: e.to_string(),
            }
        }
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Creates the pod network if it is not there (idempotent).
pub fn ensure_network(network: &str, cidr: PodCidr) -> Result<bool, NetError> {
    let ns = network_ns(network);
    if crate::netns::exists(&ns) {
        return Ok(false);
    }
    ip(&["netns", "add", &ns])?;
    let gw = format!("{}/{}", cidr.gateway(), cidr.prefix);
    let steps: [&[&str]; 4] = [
        &["-n", &ns, "link", "set", "lo", "up"],
        &["-n", &ns, "link", "add", BRIDGE, "type", "bridge"],
        &["-n", &ns, "addr", "add", &gw, "dev", BRIDGE],
        &["-n", &ns, "link", "set", BRIDGE, "up"],
    ];
    for step in steps {
        if let Err(e) = ip(step) {
            let _ = ip(&["netns", "del", &ns]);
            return Err(e);
        }
    }
    Ok(true)
}

pub fn delete_network(network: &str) -> Result<(), NetError> {
    let ns = network_ns(network);
    if crate::netns::exists(&ns) {
        ip(&["netns", "del", &ns])?;
    }
    Ok(())
}

/// Builds a pod's namespace with `addr` on its `eth0`, attached to the bridge in namespace `net` (the
/// network's own, or a node's) whose gateway is the first address of `cidr`.
pub fn create_pod(
    network: &str,
    pod: &str,
    net: &str,
    cidr: PodCidr,
    addr: Ipv4Addr,
) -> Result<(), NetError> {
    let ns = pod_ns(network, pod);
    let veth = veth_name(&ns);
    ip(&["netns", "add", &ns])?;
    let cidr_addr = format!("{addr}/{}", cidr.prefix);
    let gw = cidr.gateway().to_string();
    let steps: [&[&str]; 7] = [
        &[
            "-n", net, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
        &["-n", net, "link", "set", &veth, "master", BRIDGE, "up"],
        &["-n", &ns, "link", "set", "lo", "up"],
        &["-n", &ns, "addr", "add", &cidr_addr, "dev", "eth0"],
        &["-n", &ns, "link", "set", "eth0", "up"],
        &["-n", &ns, "route", "add", "default", "via", &gw],
        &["-n", &ns, "link", "show", "eth0"],
    ];
    for step in steps {
        if let Err(e) = ip(step) {
            delete_pod(network, pod);
            return Err(e);
        }
    }
    Ok(())
}

/// Removes a pod's namespace (its veth goes with it) and its /etc/netns files; never fails loudly,
/// since it runs on every way out.
pub fn delete_pod(network: &str, pod: &str) {
    let ns = pod_ns(network, pod);
    if crate::netns::exists(&ns) {
        if let Err(e) = ip(&["netns", "del", &ns]) {
            tracing::warn!(namespace = %ns, error = %e, "cannot delete the pod's network namespace");
        }
    }
    let _ = std::fs::remove_dir_all(etc_dir(&ns));
}

/// `ip netns exec` bind-mounts files from here over /etc for processes in the namespace.
pub fn etc_dir(ns: &str) -> std::path::PathBuf {
    std::path::PathBuf::from("/etc/netns").join(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ranges() {
        let c: PodCidr = "198.18.7.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "198.18.0.0/16");
        assert_eq!(c.gateway(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(c.last_host(), 65534);
        assert!("198.18.0.0/30".parse::<PodCidr>().is_err());
        assert!(check_name("pod", "reviews-v1").is_ok());
        for bad in ["", "Reviews", "a_b", "-a", &"x".repeat(41)] {
            assert!(check_name("pod", bad).is_err(), "{bad}");
        }
        let v = veth_name("weft-demo-reviews-v1");
        assert!(v.len() <= IFNAMSIZ && v.starts_with("wv"), "{v}");
        assert_ne!(v, veth_name("weft-demo-reviews-v2"));
    }
}

//! Several simulated nodes in one pod network (docs/pods.md, "Several nodes").
//!
//! A node stands for one machine: a namespace `weft-<network>.<node>` with a pod bridge of its own
//! (`weft0`, the first address of the node's /24) and an uplink into the underlay, a bridge in the
//! network's own namespace `weft-<network>`. The network's range is cut into /24s: the first is the
//! underlay, node *i* gets the *i*-th after it. Every node forwards and routes each other node's /24 via
//! that node's underlay address, so pods reach pods on other nodes with their own source address (no
//! NAT). The `.` in a node's namespace name is never in a pod's (pod names are DNS labels), so node and
//! pod namespaces cannot collide.

use super::network::{ensure_network, ip, network_ns, NetError, PodCidr, BRIDGE};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Enough for any simulation on one machine; each node is a /24 of the network's range.
pub const MAX_NODES: u32 = 64;
/// The node's side of its link into the underlay.
pub const UPLINK: &str = "uplink";

/// One node of a network, as recorded in `<run-dir>/<network>/nodes.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `node1`, `node2`, ...
    pub name: String,
    /// 1-based; the node's /24 is the `index`-th after the underlay's.
    pub index: u32,
    /// `weft-<network>.<name>`.
    pub namespace: String,
    /// The node's pod range; its first address is the node's bridge (its pods' gateway).
    pub range: PodCidr,
    /// The node's address on the underlay (its uplink).
    pub underlay: Ipv4Addr,
}

impl Node {
    /// The node's own address on its pod bridge: where a process run on the node listens for pods.
    pub fn address(&self) -> Ipv4Addr {
        self.range.gateway()
    }
}

pub fn node_ns(network: &str, node: &str) -> String {
    format!("weft-{network}.{node}")
}

/// The underlay: the first /24 of the network's range.
pub fn underlay_range(cidr: PodCidr) -> PodCidr {
    PodCidr {
        base: cidr.base,
        prefix: 24,
    }
}

/// The underlay bridge's port for node `index` (in the underlay namespace; within IFNAMSIZ).
fn underlay_port(index: u32) -> String {
    format!("wu{index}")
}

/// The nodes `count` nodes of network `network` over `cidr` get.
pub fn plan(network: &str, cidr: PodCidr, count: u32) -> Result<Vec<Node>, NetError> {
    if !(1..=MAX_NODES).contains(&count) {
        return Err(NetError::Invalid(format!(
            "--nodes {count}: give 1 to {MAX_NODES} nodes"
        )));
    }
    let slices = if cidr.prefix <= 24 {
        1u64 << (24 - cidr.prefix)
    } else {
        0
    };
    if slices < u64::from(count) + 1 {
        return Err(NetError::Invalid(format!(
            "{cidr} holds {slices} /24s: {count} nodes need {} (one for the underlay, one per node); give a wider --cidr",
            count + 1
        )));
    }
    let underlay = underlay_range(cidr);
    Ok((1..=count)
        .map(|index| {
            let name = format!("node{index}");
            Node {
                namespace: node_ns(network, &name),
                range: PodCidr {
                    base: Ipv4Addr::from(u32::from(cidr.base) + index * 256),
                    prefix: 24,
                },
                underlay: underlay.host(1 + index),
                name,
                index,
            }
        })
        .collect())
}

/// Builds the underlay and every node not there yet (idempotent); a node that fails is removed again.
pub fn create(network: &str, cidr: PodCidr, nodes: &[Node]) -> Result<(), NetError> {
    ensure_network(network, underlay_range(cidr))?;
    for node in nodes {
        if crate::netns::exists(&node.namespace) {
            continue;
        }
        if let Err(e) = create_node(network, nodes, node) {
            let _ = ip(&["netns", "del", &node.namespace]);
            return Err(e);
        }
    }
    Ok(())
}

fn create_node(network: &str, all: &[Node], node: &Node) -> Result<(), NetError> {
    let under = network_ns(network);
    let ns = node.namespace.as_str();
    let port = underlay_port(node.index);
    let gw = format!("{}/{}", node.address(), node.range.prefix);
    let uplink = format!("{}/24", node.underlay);
    ip(&["netns", "add", ns])?;
    let steps: [&[&str]; 8] = [
        &["-n", ns, "link", "set", "lo", "up"],
        &["-n", ns, "link", "add", BRIDGE, "type", "bridge"],
        &["-n", ns, "addr", "add", &gw, "dev", BRIDGE],
        &["-n", ns, "link", "set", BRIDGE, "up"],
        &[
            "-n", &under, "link", "add", &port, "type", "veth", "peer", "name", UPLINK, "netns", ns,
        ],
        &["-n", &under, "link", "set", &port, "master", BRIDGE, "up"],
        &["-n", ns, "addr", "add", &uplink, "dev", UPLINK],
        &["-n", ns, "link", "set", UPLINK, "up"],
    ];
    for step in steps {
        ip(step)?;
    }
    for other in all.iter().filter(|o| o.index != node.index) {
        let (dst, via) = (other.range.to_string(), other.underlay.to_string());
        ip(&["-n", ns, "route", "add", &dst, "via", &via, "dev", UPLINK])?;
    }
    // A node is a router between its pods and the other nodes.
    crate::netns::run_in(ns, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).map_err(
        |source| NetError::Io {
            what: format!("turning IP forwarding on in {ns}"),
            source,
        },
    )
}

/// Removes the nodes' namespaces (their uplinks go with them); the underlay is the network's namespace.
pub fn delete(nodes: &[Node]) -> Result<(), NetError> {
    for node in nodes {
        if crate::netns::exists(&node.namespace) {
            ip(&["netns", "del", &node.namespace])?;
        }
    }
    Ok(())
}

/// Cuts `node` off the underlay (`connected` false: its port on the underlay bridge goes down, so
/// nothing reaches it or leaves it towards other nodes) or joins it again. Its pods and routes stay.
pub fn set_connected(network: &str, node: &Node, connected: bool) -> Result<(), NetError> {
    let state = if connected { "up" } else { "down" };
    let port = underlay_port(node.index);
    ip(&["-n", &network_ns(network), "link", "set", &port, state])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_a_slash_24_each_after_the_underlay() {
        let cidr: PodCidr = "198.18.0.0/16".parse().unwrap();
        let nodes = plan("lab", cidr, 3).unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].name, "node1");
        assert_eq!(nodes[0].namespace, "weft-lab.node1");
        assert_eq!(nodes[0].range.to_string(), "198.18.1.0/24");
        assert_eq!(nodes[0].address(), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(nodes[0].underlay, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(nodes[2].range.to_string(), "198.18.3.0/24");
        assert_eq!(nodes[2].underlay, Ipv4Addr::new(198, 18, 0, 4));
        assert_eq!(underlay_range(cidr).to_string(), "198.18.0.0/24");
        assert!(underlay_port(MAX_NODES).len() <= 15);
        let json = serde_json::to_string(&nodes[1]).unwrap();
        assert!(json.contains("\"range\":\"198.18.2.0/24\""), "{json}");
        assert_eq!(serde_json::from_str::<Node>(&json).unwrap(), nodes[1]);
    }

    #[test]
    fn too_many_nodes_for_the_range_are_refused() {
        let small: PodCidr = "198.18.0.0/23".parse().unwrap();
        assert_eq!(plan("lab", small, 1).unwrap().len(), 1);
        let e = plan("lab", small, 2).unwrap_err().to_string();
        assert!(e.contains("holds 2 /24s: 2 nodes need 3"), "{e}");
        let tiny: PodCidr = "198.18.0.0/25".parse().unwrap();
        assert!(plan("lab", tiny, 1).is_err());
        let wide: PodCidr = "198.18.0.0/16".parse().unwrap();
        assert!(plan("lab", wide, 0).is_err());
        assert!(plan("lab", wide, MAX_NODES + 1).is_err());
    }
}

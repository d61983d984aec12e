//! A pod network of several simulated nodes for end-to-end tests (docs/pods.md, "Several nodes"):
//! `weftctl network create --nodes N` with a unique name, a real `weft-control` whose proxy API runs on
//! node 1, pods placed with `weftctl pod run --node`, and partitions of one node from the others.
//!
//! It is a [`PodMesh`], so everything is removed on drop (also on panic): the runners, the pods, every
//! node's namespace, the underlay, and any namespace whose name starts with the network's.

use crate::bins::bin;
use crate::control::ControlProc;
use crate::pki::TempDir;
use crate::pods::{text, unique_network, PodHandle, PodMesh};
use std::net::SocketAddr;
use std::process::Command;

/// Where weft-control's proxy API listens: node 1's own address (its pod bridge), routed from every
/// node and pod.
pub const NODE1_API: ([u8; 4], u16) = ([198, 18, 1, 1], 15010);

impl PodMesh {
    /// A network of `count` nodes (`node1`..), each with its own /24 of 198.18.0.0/16, and a control
    /// plane whose proxy API runs on node 1.
    pub fn with_nodes(tag: &str, count: u32) -> PodMesh {
        let network = unique_network(tag);
        let run_dir = TempDir::new(&format!("pods-{network}"));
        let out = Command::new(bin("weftctl"))
            .args(["network", "create", &network, "--nodes", &count.to_string()])
            .arg("--run-dir")
            .arg(run_dir.path())
            .output()
            .expect("run weftctl network create");
        assert!(out.status.success(), "network create: {}", text(&out));
        let netns = format!("weft-{network}.node1");
        let started = std::panic::catch_unwind(|| {
            ControlProc::start_in_netns(&network, &netns, SocketAddr::from(NODE1_API))
        });
        match started {
            Ok(control) => PodMesh::assemble(network, run_dir, control),
            Err(panic) => {
                // No mesh owns the network yet: remove it here.
                let _ = Command::new(bin("weftctl"))
                    .args(["network", "delete", &network, "--force", "--run-dir"])
                    .arg(run_dir.path())
                    .output();
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Cuts `node` off the other nodes until the returned guard is healed or dropped.
    pub fn partition(&self, node: &str) -> Partition<'_> {
        self.weftctl_ok(&["network", "partition", &self.network, "--node", node]);
        Partition {
            mesh: self,
            node: node.to_string(),
            healed: false,
        }
    }
}

/// A node cut off the underlay; healed on [`Partition::heal`] or on drop (also on panic).
pub struct Partition<'a> {
    mesh: &'a PodMesh,
    node: String,
    healed: bool,
}

impl Partition<'_> {
    pub fn heal(mut self) {
        self.mesh
            .weftctl_ok(&["network", "heal", &self.mesh.network, "--node", &self.node]);
        self.healed = true;
    }
}

impl Drop for Partition<'_> {
    fn drop(&mut self) {
        if !self.healed {
            let _ = self
                .mesh
                .weftctl()
                .args(["network", "heal", &self.mesh.network, "--node", &self.node])
                .output();
        }
    }
}

/// `curl` from a pod (intercepted like its app): the status code (0 when no HTTP answer came within
/// `max_secs`) and the body.
pub fn curl(mesh: &PodMesh, pod: &PodHandle, max_secs: u32, args: &[&str]) -> (u16, String) {
    let max = max_secs.to_string();
    let mut cmd = vec!["curl", "-s", "--max-time", &max, "-w", "\n%{http_code}"];
    cmd.extend_from_slice(args);
    let out = mesh.exec(pod, &cmd);
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The peer addresses of the connections established to `pod`'s tunnel port (15008), as the pod's
/// kernel sees them: the addresses the calling sidecars' packets arrived with.
pub fn tunnel_peers(mesh: &PodMesh, pod: &PodHandle) -> Vec<String> {
    let out = mesh.exec_ok(
        pod,
        &["ss", "-Htn", "state", "established", "( sport = :15008 )"],
    );
    out.lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|peer| peer.rsplit_once(':').map(|(ip, _)| ip.to_string()))
        .collect()
}

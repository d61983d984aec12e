//! Local pods: network namespaces with a sidecar, on one machine (see docs/pods.md).

pub mod network;
pub mod nodes;
pub mod record;
pub mod runner;
pub mod sandbox;
mod supervise;
pub mod users;

use network::PodCidr;
use record::NetworkDir;
use std::path::Path;
use std::time::{Duration, Instant};

pub const DEFAULT_RUN_DIR: &str = "/run/weft";

/// `weftctl pod list`: one line per pod, in every network under `run_dir` (or just `network`).
pub fn list(run_dir: &Path, network: Option<&str>) -> String {
    let mut out =
        String::from("NAME\tNETWORK\tNAMESPACE\tADDRESS\tUSER\tLABELS\tRUNNER\tAGE\tSTATE\tNODE\n");
    let now = record::now();
    for net in networks(run_dir, network) {
        for p in NetworkDir::new(run_dir, &net).pods() {
            let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let state = if record::alive(p.runner_pid) {
                "running"
            } else {
                "stale (runner gone; `weftctl pod delete` cleans up)"
            };
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}s\t{state}\t{}\n",
                p.name,
                p.network,
                p.namespace,
                p.address,
                p.app_user
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| "-".into()),
                labels.join(","),
                p.runner_pid,
                now.saturating_sub(p.started),
                p.node.as_deref().unwrap_or("-"),
            ));
        }
    }
    out
}

fn networks(run_dir: &Path, only: Option<&str>) -> Vec<String> {
    if let Some(n) = only {
        return vec![n.to_string()];
    }
    let mut out: Vec<String> = std::fs::read_dir(run_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("pods").is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `weftctl pod delete`: asks the pod's runner to stop (it drains and tears down) and waits; if the
/// runner is gone, removes what it left.
pub fn delete(run_dir: &Path, network: Option<&str>, name: &str) -> Result<String, String> {
    let found = networks(run_dir, network).into_iter().find_map(|net| {
        NetworkDir::new(run_dir, &net)
            .pods()
            .into_iter()
            .find(|p| p.name == name)
    });
    let Some(pod) = found else {
        return Err(format!("no pod named {name} under {}", run_dir.display()));
    };
    let dir = NetworkDir::new(run_dir, &pod.network).pod_dir(name);
    if record::alive(pod.runner_pid) {
        // SAFETY: a signal to the runner process named in the pod's record.
        unsafe { libc::kill(pod.runner_pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        while dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !dir.exists() {
            return Ok(format!("pod {name} stopped and removed\n"));
        }
    }
    for pid in [pod.app_pid, pod.sidecar_pid, Some(pod.runner_pid)]
        .into_iter()
        .flatten()
        .filter(|p| record::alive(*p))
    {
        // SAFETY: processes named in the pod's record, whose runner did not clean up.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    // A uid of the apps' range was the pod's own: what its app left running goes too.
    if let Some(user) = pod.app_user.filter(|u| users::APP_UIDS.contains(&u.uid)) {
        users::kill_left(Path::new(users::CLAIMS_DIR), user);
    }
    network::delete_pod(&pod.network, name);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!("pod {name} removed (its runner was gone)\n"))
}

/// `weftctl network create`: one bridge for every pod, or with `nodes` that many nodes (see
/// [`nodes`]). Idempotent; a network that exists with another range or node count is refused.
pub fn network_create(
    run_dir: &Path,
    name: &str,
    cidr: PodCidr,
    node_count: Option<u32>,
) -> Result<String, String> {
    network::check_name("network", name).map_err(|e| e.to_string())?;
    let planned = match node_count {
        Some(n) => nodes::plan(name, cidr, n).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let dir = NetworkDir::new(run_dir, name);
    let _lock = dir
        .lock()
        .map_err(|e| format!("{}: {e}", dir.dir.display()))?;
    if let Some(existing) = dir.cidr() {
        if existing != cidr {
            return Err(format!("network {name} already exists with {existing}"));
        }
        let had = dir.nodes().len();
        if had != planned.len() {
            return Err(format!(
                "network {name} already exists with {had} node(s), not {}",
                planned.len()
            ));
        }
    }
    let ns = network::network_ns(name);
    if !planned.is_empty() {
        let existed = network::exists(name);
        nodes::create(name, cidr, &planned).map_err(|e| e.to_string())?;
        dir.set_cidr(cidr).map_err(|e| e.to_string())?;
        dir.set_nodes(&planned).map_err(|e| e.to_string())?;
        let verb = if existed { "exists" } else { "created" };
        return Ok(format!(
            "network {name} {verb}: underlay namespace {ns}, bridge {} on {}\n{}",
            network::BRIDGE,
            nodes::underlay_range(cidr),
            node_table(name, &dir)
        ));
    }
    let created = network::ensure_network(name, cidr).map_err(|e| e.to_string())?;
    dir.set_cidr(cidr).map_err(|e| e.to_string())?;
    Ok(if created {
        format!(
            "network {name} created: namespace {ns}, bridge {}, gateway {}/{}\n",
            network::BRIDGE,
            cidr.gateway(),
            cidr.prefix
        )
    } else {
        format!("network {name} exists (namespace {ns})\n")
    })
}

/// `weftctl network partition|heal NAME --node NODE`.
pub fn network_connect(
    run_dir: &Path,
    name: &str,
    node: &str,
    connected: bool,
) -> Result<String, String> {
    let dir = NetworkDir::new(run_dir, name);
    let all = dir.nodes();
    let Some(n) = all.iter().find(|n| n.name == node) else {
        let names: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
        return Err(format!(
            "network {name} has no node {node} (its nodes: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    };
    nodes::set_connected(name, n, connected).map_err(|e| e.to_string())?;
    Ok(if connected {
        format!("node {node} of {name} rejoined the underlay\n")
    } else {
        format!("node {node} of {name} cut off the underlay: its pods reach only each other\n")
    })
}

/// One line per node: its name, namespace, pod range, address, underlay address and pods.
fn node_table(network: &str, dir: &NetworkDir) -> String {
    let pods = dir.pods();
    let mut out = String::from("NODE\tNETWORK\tNAMESPACE\tPOD-RANGE\tADDRESS\tUNDERLAY\tPODS\n");
    for n in dir.nodes() {
        let here = pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(n.name.as_str()))
            .count();
        out.push_str(&format!(
            "{}\t{network}\t{}\t{}\t{}\t{}\t{here}\n",
            n.name,
            n.namespace,
            n.range,
            n.address(),
            n.underlay
        ));
    }
    out
}

/// `weftctl network delete`: refused while pods run, unless `force` (then they are deleted first).
pub fn network_delete(run_dir: &Path, name: &str, force: bool) -> Result<String, String> {
    let dir = NetworkDir::new(run_dir, name);
    let pods = dir.pods();
    if !pods.is_empty() && !force {
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        return Err(format!(
            "network {name} still has pods ({}); delete them or pass --force",
            names.join(", ")
        ));
    }
    for p in &pods {
        delete(run_dir, Some(name), &p.name)?;
    }
    nodes::delete(&dir.nodes()).map_err(|e| e.to_string())?;
    network::delete_network(name).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir.dir);
    Ok(format!("network {name} deleted\n"))
}

/// `weftctl network list`: the networks, then the nodes of those that have several.
pub fn network_list(run_dir: &Path) -> String {
    let mut out = String::from("NETWORK\tNAMESPACE\tRANGE\tPODS\n");
    let mut node_lines = String::new();
    for net in networks(run_dir, None) {
        let dir = NetworkDir::new(run_dir, &net);
        out.push_str(&format!(
            "{net}\t{}\t{}\t{}\n",
            network::network_ns(&net),
            dir.cidr()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "?".into()),
            dir.pods().len()
        ));
        if !dir.nodes().is_empty() {
            let table = node_table(&net, &dir);
            let rows = table.split_once('\n').map(|(_, r)| r).unwrap_or_default();
            if node_lines.is_empty() {
                node_lines.push_str(table.lines().next().unwrap_or_default());
                node_lines.push('\n');
            }
            node_lines.push_str(rows);
        }
    }
    if !node_lines.is_empty() {
        out.push('\n');
        out.push_str(&node_lines);
    }
    out
}

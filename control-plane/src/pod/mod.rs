//! Local pods: network namespaces with a sidecar, on one machine (see docs/pods.md).

pub mod network;
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
        String::from("NAME\tNETWORK\tNAMESPACE\tADDRESS\tUSER\tLABELS\tRUNNER\tAGE\tSTATE\n");
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
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}s\t{state}\n",
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

/// `weftctl network create`.
pub fn network_create(run_dir: &Path, name: &str, cidr: PodCidr) -> Result<String, String> {
    network::check_name("network", name).map_err(|e| e.to_string())?;
    let dir = NetworkDir::new(run_dir, name);
    let _lock = dir
        .lock()
        .map_err(|e| format!("{}: {e}", dir.dir.display()))?;
    if let Some(existing) = dir.cidr() {
        if existing != cidr {
            return Err(format!("network {name} already exists with {existing}"));
        }
    }
    let created = network::ensure_network(name, cidr).map_err(|e| e.to_string())?;
    dir.set_cidr(cidr).map_err(|e| e.to_string())?;
    let ns = network::network_ns(name);
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
    network::delete_network(name).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir.dir);
    Ok(format!("network {name} deleted\n"))
}

/// `weftctl network list`.
pub fn network_list(run_dir: &Path) -> String {
    let mut out = String::from("NETWORK\tNAMESPACE\tRANGE\tPODS\n");
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
    }
    out
}

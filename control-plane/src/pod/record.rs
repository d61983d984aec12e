//! What the pod runners of one network share on disk: `<run-dir>/<network>/` holds a lock file, the
//! network's range, its nodes when it has several (`nodes.json`), and one directory per pod (`pods/<name>/`: `pod.json`, the sidecar's config, token,
//! state and logs). Addresses are handed out under the lock, so runners started together never collide.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::network::PodCidr;
use super::nodes::Node;
use super::sandbox::RunAs;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub name: String,
    pub network: String,
    pub netns: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub address: Ipv4Addr,
    /// The node the pod runs on, in a network of several nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The `weftctl pod run` process that owns the pod.
    pub runner_pid: u32,
    #[serde(default)]
    pub sidecar_pid: Option<u32>,
    #[serde(default)]
    pub app_pid: Option<u32>,
    /// The user and group the app runs as (allocated per pod unless `--user` was given).
    #[serde(default)]
    pub app_user: Option<RunAs>,
    /// Unix seconds.
    pub started: u64,
    pub command: Vec<String>,
}

pub struct NetworkDir {
    pub dir: PathBuf,
}

/// An exclusive lock on a file, released on drop.
pub struct Lock(std::fs::File);

impl Lock {
    /// Takes over a file already locked with flock.
    pub(super) fn new(f: std::fs::File) -> Lock {
        Lock(f)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: flock on an fd we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl NetworkDir {
    pub fn new(run_dir: &Path, network: &str) -> NetworkDir {
        NetworkDir {
            dir: run_dir.join(network),
        }
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }

    pub fn pod_dir(&self, pod: &str) -> PathBuf {
        self.pods_dir().join(pod)
    }

    pub fn lock(&self) -> std::io::Result<Lock> {
        std::fs::create_dir_all(self.pods_dir())?;
        lock_file(&self.dir.join("lock"))
    }

    /// The network's range, written by whoever created it.
    pub fn cidr(&self) -> Option<PodCidr> {
        std::fs::read_to_string(self.dir.join("cidr"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn set_cidr(&self, cidr: PodCidr) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.dir.join("cidr"), format!("{cidr}\n"))
    }

    /// The network's nodes; empty for a single-node network.
    pub fn nodes(&self) -> Vec<Node> {
        std::fs::read(self.dir.join("nodes.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn set_nodes(&self, nodes: &[Node]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join("nodes.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(nodes).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, self.dir.join("nodes.json"))
    }

    /// Every pod record (unreadable ones skipped).
    pub fn pods(&self) -> Vec<PodRecord> {
        let Ok(entries) = std::fs::read_dir(self.pods_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<PodRecord> = entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("pod.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn write(&self, rec: &PodRecord) -> std::io::Result<()> {
        let dir = self.pod_dir(&rec.name);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("pod.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, dir.join("pod.json"))
    }

    /// The lowest free host address (the gateway excluded); call under the lock.
    pub fn free_address(&self, cidr: PodCidr) -> Option<Ipv4Addr> {
        let used: Vec<Ipv4Addr> = self.pods().iter().map(|p| p.address).collect();
        (2..=cidr.last_host())
            .map(|i| cidr.host(i))
            .find(|a| !used.contains(a))
    }
}

/// An exclusive lock on `path` (created if absent), waiting for whoever holds it.
fn lock_file(path: &Path) -> std::io::Result<Lock> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on an fd we own; blocks until the other runner is done with its step.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Lock(f))
}

/// Whether a process is still there.
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    pid != 0 && unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

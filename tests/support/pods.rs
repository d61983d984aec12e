//! A mesh of local pods for end-to-end tests: a pod network with a unique name, a real `weft-control`
//! whose proxy API lives in that network, and pods started with the real `weftctl pod run`.
//!
//! Everything is removed on drop (also on panic): runners are stopped, then every namespace whose name
//! starts with the test's network prefix is deleted and its /etc/netns files removed, and leftover
//! processes are killed.

use crate::bins::{bin, workspace_root};
use crate::control::ControlProc;
use crate::pki::TempDir;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether this machine can run pod tests: root, `ip` and `iptables`. Missing pieces skip the test
/// with a message, or fail it when `WEFT_E2E_REQUIRE=1`.
pub fn available(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root");
    }
    for tool in ["ip", "iptables", "iptables-restore"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            missing.push(tool);
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: needs {} for network-namespace pods",
        missing.join(", ")
    );
    if std::env::var("WEFT_E2E_REQUIRE").as_deref() == Ok("1") {
        panic!("{msg} (WEFT_E2E_REQUIRE=1)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

pub struct PodMesh {
    pub network: String,
    pub run_dir: TempDir,
    pub control: ControlProc,
    runners: Vec<(String, Child)>,
    others: Vec<Child>,
}

/// A running `weftctl pod run`.
pub struct PodHandle {
    pub name: String,
    pub netns: String,
    pub address: String,
}

impl PodMesh {
    /// A new network `tag`-unique for this process and its control plane.
    pub fn new(tag: &str) -> PodMesh {
        let network = unique_network(tag);
        let run_dir = TempDir::new(&format!("pods-{network}"));
        let out = Command::new(bin("weftctl"))
            .args(["network", "create", &network, "--run-dir"])
            .arg(run_dir.path())
            .output()
            .expect("run weftctl network create");
        assert!(out.status.success(), "network create: {}", text(&out));
        let control = ControlProc::start_in_netns(
            &network,
            &format!("weft-{network}"),
            SocketAddr::from(([198, 18, 0, 1], 15010)),
        );
        PodMesh::assemble(network, run_dir, control)
    }

    /// A mesh over a network made elsewhere (tests/support/nodes.rs), removed on drop like any.
    pub(crate) fn assemble(network: String, run_dir: TempDir, control: ControlProc) -> PodMesh {
        PodMesh {
            network,
            run_dir,
            control,
            runners: Vec::new(),
            others: Vec::new(),
        }
    }

    /// `weftctl` with this mesh's server, token and run directory.
    pub fn weftctl(&self) -> Command {
        let mut c = Command::new(bin("weftctl"));
        c.env("WEFT_SERVER", format!("http://{}", self.control.operator))
            .env(
                "WEFT_TOKEN_FILE",
                self.control.state_dir().join("operator.token"),
            )
            .env("WEFT_RUN_DIR", self.run_dir.path());
        c
    }

    /// `weftctl ARGS`, panicking unless it exits 0; returns stdout and stderr.
    pub fn weftctl_ok(&self, args: &[&str]) -> String {
        let out = self.weftctl().args(args).output().expect("run weftctl");
        assert!(
            out.status.success(),
            "weftctl {}: {}",
            args.join(" "),
            text(&out)
        );
        text(&out)
    }

    /// `weftctl apply -f -` of `yaml`; panics when refused.
    pub fn apply(&self, yaml: &str) -> String {
        use std::io::Write as _;
        let mut child = self
            .weftctl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weftctl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write yaml");
        let out = child.wait_with_output().expect("weftctl apply");
        assert!(out.status.success(), "apply refused: {}", text(&out));
        text(&out)
    }

    /// Starts a pod and returns at once (for apps that exit by themselves).
    pub fn pod_no_wait(&mut self, name: &str, flags: &[&str], command: &[&str]) {
        let log = self.run_dir.path().join(format!("runner-{name}.log"));
        let file = std::fs::File::create(&log).expect("runner log");
        let child = self
            .weftctl()
            .args(["pod", "run", "--network", &self.network, "--name", name])
            .args(flags)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("spawn weftctl pod run");
        self.runners.push((name.to_string(), child));
    }

    /// A namespace on the pod network with no sidecar and no rules: a client outside the mesh.
    pub fn outside(&mut self, name: &str, addr: &str) -> PodHandle {
        let net = format!("weft-{}", self.network);
        let ns = format!("{net}-{name}");
        let veth = format!("wo{}", std::process::id() % 100_000_000);
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &ns],
            vec![
                "-n", &net, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
            vec!["-n", &net, "link", "set", &veth, "master", "weft0", "up"],
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec!["-n", &ns, "link", "set", "eth0", "up"],
        ];
        let cidr = format!("{addr}/16");
        let mut all = steps;
        all.push(vec!["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
        for args in all {
            let out = Command::new("ip").args(&args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                text(&out)
            );
        }
        PodHandle {
            name: name.to_string(),
            netns: ns,
            address: addr.to_string(),
        }
    }

    /// A TCP connection made from inside `pod`'s network namespace by the test itself (a socket stays
    /// in the namespace it was made in): the pod's own rules intercept it as they would its app's.
    pub fn connect_from(&self, pod: &PodHandle, addr: SocketAddr) -> std::io::Result<TcpStream> {
        use std::os::fd::AsRawFd as _;
        let path = format!("/var/run/netns/{}", pod.netns);
        // A thread of its own enters the namespace and ends there, so the test's threads never move.
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)?;
                // SAFETY: setns on an open namespace file; it changes only this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
        })
    }

    /// Starts a long-running process in `pod`'s namespace, killed when the mesh is dropped.
    pub fn spawn_in(&mut self, pod: &PodHandle, command: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &pod.netns])
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in namespace");
        self.others.push(child);
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Starts a pod running `command` (a path under target/ or a system tool) and waits until its app
    /// has started (which the runner does only once the sidecar is ready).
    pub fn pod(&mut self, name: &str, flags: &[&str], command: &[&str]) -> PodHandle {
        self.pod_no_wait(name, flags, command);
        let log = self.run_dir.path().join(format!("runner-{name}.log"));
        let record = self
            .run_dir
            .path()
            .join(&self.network)
            .join("pods")
            .join(name)
            .join("pod.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rec: Option<serde_json::Value> = std::fs::read(&record)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(rec) = rec.filter(|r| r["appPid"].is_number()) {
                if flags.contains(&"--port") {
                    self.wait_endpoint_ready(name);
                }
                return PodHandle {
                    name: name.to_string(),
                    netns: rec["netns"].as_str().unwrap_or_default().to_string(),
                    address: rec["address"].as_str().unwrap_or_default().to_string(),
                };
            }
            if let Some((_, c)) = self.runners.iter_mut().find(|(n, _)| n == name) {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "pod {name} runner exited ({status}):\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "pod {name} did not start its app within 60s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the pod's workload is ready in the registry and every connected proxy has acked the
    /// latest config it was sent (so callers see the new endpoint).
    pub fn wait_endpoint_ready(&self, name: &str) {
        let key = format!("default/{name}");
        let settled = |s: &serde_json::Value| {
            let proxies = s["proxies"].as_array().cloned().unwrap_or_default();
            let ready = proxies
                .iter()
                .any(|p| p["proxy"] == key.as_str() && p["ready"] == true);
            ready
                && proxies
                    .iter()
                    .filter(|p| p["connected"] == true)
                    .all(|p| p["ackedVersion"] == p["sentVersion"])
        };
        self.control.wait_status(Duration::from_secs(30), settled);
        // The push of the readiness change follows a short debounce: check again after it.
        std::thread::sleep(Duration::from_millis(300));
        self.control.wait_status(Duration::from_secs(30), settled);
    }

    /// Runs `command` inside `pod`'s namespace (as a second process of that pod: intercepted too).
    pub fn exec(&self, pod: &PodHandle, command: &[&str]) -> Output {
        let mut c = Command::new("timeout");
        c.arg("60")
            .args(["ip", "netns", "exec", &pod.netns])
            .args(command)
            .stdin(Stdio::null());
        c.output().expect("ip netns exec")
    }

    /// Like [`exec`], panicking unless it succeeds; returns stdout.
    pub fn exec_ok(&self, pod: &PodHandle, command: &[&str]) -> String {
        let out = self.exec(pod, command);
        assert!(
            out.status.success(),
            "`{}` in pod {} failed: {}",
            command.join(" "),
            pod.name,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The runner's exit code once it has stopped (bounded wait).
    pub fn wait_runner(&mut self, name: &str, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let (_, c) = self.runners.iter_mut().find(|(n, _)| n == name)?;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn runner_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.run_dir.path().join(format!("runner-{name}.log")))
            .unwrap_or_default()
    }

    pub fn sidecar_log(&self, name: &str) -> String {
        self.pod_file(name, "sidecar.log")
    }

    /// The pod's sidecar access log, one parsed JSON object per line.
    pub fn access_log(&self, name: &str) -> Vec<serde_json::Value> {
        self.pod_file(name, "access.log")
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line {l:?}: {e}"))
            })
            .collect()
    }

    fn pod_file(&self, name: &str, file: &str) -> String {
        std::fs::read_to_string(
            self.run_dir
                .path()
                .join(&self.network)
                .join("pods")
                .join(name)
                .join(file),
        )
        .unwrap_or_default()
    }

    /// Namespaces of this mesh still present.
    pub fn namespaces(&self) -> Vec<String> {
        namespaces_with_prefix(&format!("weft-{}", self.network))
    }
}

/// `tag` plus this process's id and a counter: network names no other test uses.
pub(crate) fn unique_network(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// An example binary (`shop`, `demo-app`), built with the tests.
pub fn example(name: &str) -> String {
    let exe = bin("weftctl");
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let p = dir.join("examples").join(name);
    if !p.is_file() {
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(workspace_root())
            .args(["build", "--quiet", "--example", name])
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "cannot build example {name}"
        );
    }
    p.display().to_string()
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Drop for PodMesh {
    fn drop(&mut self) {
        for c in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, c) in &mut self.runners {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, c) in &mut self.runners {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self
            .weftctl()
            .args(["network", "delete", &self.network, "--force"])
            .output();
        for ns in self.namespaces() {
            let _ = Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            // SAFETY: a process left in the test's own namespace.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&ns));
        }
    }
}

//! Running the real `weft-proxy` binary in tests: a builder that writes its config file, starts it,
//! waits for `/ready`, and kills it on drop (so a panicking test leaves no process behind).

use crate::bins::bin;
use crate::net::{free_addr, http_get};
use crate::pki::{IdentityFiles, TempDir};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use weft_certs::SpiffeId;

pub struct Outbound {
    pub listen: SocketAddr,
    pub peer: SocketAddr,
    pub identity: SpiffeId,
    pub target_port: u16,
    pub protocol: &'static str,
}

pub struct ProxyBuilder {
    name: String,
    identity: IdentityFiles,
    tunnel: SocketAddr,
    outbound: Vec<Outbound>,
    allowed_ports: Vec<u16>,
    extra: String,
    worker_threads: Option<usize>,
    admin_shutdown: bool,
}

impl ProxyBuilder {
    pub fn new(name: &str, identity: &IdentityFiles) -> ProxyBuilder {
        ProxyBuilder {
            name: name.to_string(),
            identity: identity.clone(),
            tunnel: free_addr(),
            outbound: Vec::new(),
            allowed_ports: Vec::new(),
            extra: String::new(),
            worker_threads: None,
            admin_shutdown: false,
        }
    }

    /// Adds an outbound listener on a fresh loopback port.
    pub fn outbound(
        mut self,
        peer: SocketAddr,
        identity: &SpiffeId,
        target_port: u16,
        protocol: &'static str,
    ) -> Self {
        self.outbound.push(Outbound {
            listen: free_addr(),
            peer,
            identity: identity.clone(),
            target_port,
            protocol,
        });
        self
    }

    /// Extra top-level YAML appended to the config (e.g. a `limits:` block or `drain_timeout: 5s`).
    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        if !yaml.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// Runs the proxy with `--worker-threads n` (1 selects the single-threaded scheduler).
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = Some(n);
        self
    }

    /// Serves `POST /shutdown` on the admin port (`admin: {listen, shutdown: true}`; off by default).
    pub fn admin_shutdown(mut self) -> Self {
        self.admin_shutdown = true;
        self
    }

    /// App ports peers may reach through the tunnel (all when never called).
    pub fn allowed_ports(mut self, ports: &[u16]) -> Self {
        self.allowed_ports = ports.to_vec();
        self
    }

    /// Listens for peers on `addr` instead of a fresh port (to restart a proxy in place).
    pub fn with_tunnel(mut self, addr: SocketAddr) -> Self {
        self.tunnel = addr;
        self
    }

    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel
    }

    /// Starts the proxy and waits until it is ready. Test ports are picked free but can be taken by a
    /// test running alongside before the proxy binds them: a start that fails on a taken port is retried
    /// with fresh ports (read the addresses from the returned [`ProxyProc`]).
    pub fn start(mut self) -> ProxyProc {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut p = self.launch_once();
            match p.try_wait_ready(Duration::from_secs(20)) {
                Ok(()) => return p,
                Err(log) if attempt < 4 && log.contains("Address already in use") => {
                    self.tunnel = free_addr();
                    for o in &mut self.outbound {
                        o.listen = free_addr();
                    }
                }
                Err(log) => panic!("weft-proxy {} did not become ready:\n{log}", p.name),
            }
        }
    }

    fn launch_once(&self) -> ProxyProc {
        let dir = TempDir::new(&format!("proxy-{}", self.name));
        let admin = free_addr();
        let health = free_addr();
        let admin_yaml = if self.admin_shutdown {
            format!("{{listen: {admin}, shutdown: true}}")
        } else {
            admin.to_string()
        };
        let mut yaml = format!(
            "identity:\n  cert: {}\n  key: {}\n  bundle: {}\ntunnel:\n  listen: {}\nadmin: {admin_yaml}\nhealth: {health}\n",
            self.identity.cert.display(),
            self.identity.key.display(),
            self.identity.bundle.display(),
            self.tunnel
        );
        if !self.allowed_ports.is_empty() {
            let list: Vec<String> = self.allowed_ports.iter().map(|p| p.to_string()).collect();
            yaml = yaml.replacen(
                &format!("  listen: {}\n", self.tunnel),
                &format!(
                    "  listen: {}\n  allowed_ports: [{}]\n",
                    self.tunnel,
                    list.join(", ")
                ),
                1,
            );
        }
        if !self.outbound.is_empty() {
            yaml.push_str("outbound:\n");
            for o in &self.outbound {
                yaml.push_str(&format!(
                    "  - listen: {}\n    peer: {}\n    identity: {}\n    target_port: {}\n    protocol: {}\n",
                    o.listen, o.peer, o.identity, o.target_port, o.protocol
                ));
            }
        }
        yaml.push_str(&self.extra);
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, &yaml).expect("write proxy config");
        launch(Launch {
            name: self.name.clone(),
            config,
            dir,
            tunnel: self.tunnel,
            admin,
            health,
            outbound: self.outbound.iter().map(|o| o.listen).collect(),
            id: self.identity.id.clone(),
            worker_threads: self.worker_threads,
            env: Vec::new(),
        })
    }
}

/// Everything needed to start a proxy from a config file already written into `dir`.
pub struct Launch {
    pub name: String,
    pub config: PathBuf,
    pub dir: TempDir,
    pub tunnel: SocketAddr,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub outbound: Vec<SocketAddr>,
    pub id: SpiffeId,
    pub worker_threads: Option<usize>,
    pub env: Vec<(String, String)>,
}

/// Starts `weft-proxy run` (without waiting for it to be ready); its log goes to `proxy.log` in the dir.
pub fn launch(l: Launch) -> ProxyProc {
    launch_wrapped(l, &[])
}

/// As `launch`, through `wrapper` (a command that ends by exec'ing its arguments, so the pid is the
/// proxy's), e.g. `unshare -m` with a hosts file of the test's own.
pub fn launch_wrapped(l: Launch, wrapper: &[String]) -> ProxyProc {
    let log_path = l.dir.path().join("proxy.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("create log");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin("weft-proxy"));
            c
        }
        None => Command::new(bin("weft-proxy")),
    };
    cmd.args(["run", "--config"]).arg(&l.config);
    if let Some(n) = l.worker_threads {
        cmd.arg("--worker-threads").arg(n.to_string());
    }
    let child = cmd
        .env(
            "WEFT_LOG",
            std::env::var("WEFT_TEST_PROXY_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn weft-proxy");
    ProxyProc {
        name: l.name,
        child,
        tunnel: l.tunnel,
        admin: l.admin,
        health: l.health,
        outbound: l.outbound,
        id: l.id,
        log_path,
        config: l.config,
        _dir: l.dir,
    }
}

pub struct ProxyProc {
    pub name: String,
    child: Child,
    pub id: SpiffeId,
    pub tunnel: SocketAddr,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub outbound: Vec<SocketAddr>,
    pub log_path: PathBuf,
    pub config: PathBuf,
    _dir: TempDir,
}

impl ProxyProc {
    /// Waits until `/ready` answers 200; the log when the proxy exits or time runs out.
    pub fn try_wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "exited during start-up ({status}):\n{}",
                    self.log()
                ));
            }
            if matches!(http_get(self.health, "/ready"), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {timeout:?}:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/ready` answers 200; panics with the log if the proxy exits or time runs out.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "weft-proxy {} exited during start-up ({status}):\n{}",
                    self.name,
                    self.log()
                );
            }
            if matches!(http_get(self.health, "/ready"), Ok((200, _))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weft-proxy {} not ready within {timeout:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn metrics(&self) -> String {
        http_get(self.health, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Sum of every sample of `name` whose label set contains all of `labels` (e.g. `reason="max_connections"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    /// Peak resident memory since the process started (the kernel's high-water mark).
    pub fn hwm_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resident memory now.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Takes the proxy's directory (config, cache, log) so it outlives this process, e.g. to start the
    /// proxy again in place.
    pub fn take_dir(&mut self) -> TempDir {
        std::mem::replace(&mut self._dir, TempDir::new("spent"))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- weft-proxy {} log ---\n{}", self.name, self.log());
        }
    }
}

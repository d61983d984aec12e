//! Running the real `weft-control` binary in tests: start on fresh ports with a temporary state
//! directory, talk to its operator API, kill it (gracefully or with SIGKILL) and restart it in place.

use crate::bins::bin;
use crate::net::free_addr;
use crate::pki::TempDir;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_certs::{Credential, Identity, KeyAndCsr, SpiffeId, TrustBundle, Validity};

pub struct ControlProc {
    child: Option<Child>,
    /// A file system of its own under the state directory (unmounted before `state` is removed).
    pub small_fs: Option<crate::fs_fault::SmallFs>,
    pub api: SocketAddr,
    pub operator: SocketAddr,
    pub state: TempDir,
    pub config_dir: Option<PathBuf>,
    pub log_path: PathBuf,
    pub extra_args: Vec<String>,
    starts: usize,
    /// Another control plane's state directory, used instead of one of its own.
    shared_state: Option<PathBuf>,
    /// The network namespace it runs in (`ip netns exec`), with the operator API listening there on
    /// `operator_listen` and `operator` a forwarder to it (tests/support/replicas.rs).
    netns: Option<(String, SocketAddr)>,
}

impl ControlProc {
    pub fn start(tag: &str) -> ControlProc {
        Self::start_with(tag, None, &[])
    }

    pub fn start_with(tag: &str, config_dir: Option<PathBuf>, args: &[&str]) -> ControlProc {
        Self::start_full(tag, config_dir, args, free_addr())
    }

    /// A replica of `first`'s mesh with a state directory of its own and `args` (e.g. `--store`
    /// and `--store-key-file`): the CA and the operator token come from the shared store, nothing
    /// is copied from `first` (which stays a parameter for the callers' sake: the mesh is the one
    /// the store in `args` holds).
    pub fn start_replica(tag: &str, _first: &ControlProc, args: &[&str]) -> ControlProc {
        Self::start_with(tag, None, args)
    }

    /// A control plane with `args` on the proxy API address `api` (another control plane's, once
    /// that one is gone: its proxies reconnect to it) and a state directory of its own.
    pub fn start_at(tag: &str, args: &[&str], api: SocketAddr) -> ControlProc {
        Self::start_full(tag, None, args, api)
    }

    /// A control plane whose state directory is a tmpfs of `kib` KiB (see `fs_fault`); `None` when
    /// the test must skip.
    pub fn start_on_small_fs(tag: &str, kib: u64) -> Option<ControlProc> {
        let state = TempDir::new(&format!("control-{tag}"));
        let small_fs = crate::fs_fault::SmallFs::mount(&state.path().join("state"), kib, tag)?;
        let mut cp = ControlProc::unstarted(state, None, &[], free_addr());
        cp.small_fs = Some(small_fs);
        cp.spawn();
        Some(cp)
    }

    /// The proxy API inside a pod network's namespace, on `api` (its gateway address), and the metrics
    /// listener there too (port 15014 of the same address) for a Prometheus on that network.
    pub fn start_in_netns(tag: &str, netns: &str, api: SocketAddr) -> ControlProc {
        let metrics = SocketAddr::new(api.ip(), 15014).to_string();
        Self::start_full(
            tag,
            None,
            &["--api-netns", netns, "--metrics-listen", &metrics],
            api,
        )
    }

    fn start_full(
        tag: &str,
        config_dir: Option<PathBuf>,
        args: &[&str],
        api: SocketAddr,
    ) -> ControlProc {
        let state = TempDir::new(&format!("control-{tag}"));
        let mut cp = ControlProc::unstarted(state, config_dir, args, api);
        cp.spawn();
        cp
    }

    fn unstarted(
        state: TempDir,
        config_dir: Option<PathBuf>,
        args: &[&str],
        api: SocketAddr,
    ) -> ControlProc {
        ControlProc {
            child: None,
            small_fs: None,
            api,
            operator: free_addr(),
            log_path: state.path().join("control.log"),
            state,
            config_dir,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            starts: 0,
            shared_state: None,
            netns: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        match &self.shared_state {
            Some(dir) => dir.clone(),
            None => self.state.path().join("state"),
        }
    }

    /// A control plane on `api` serving `other`'s state directory (the mesh's CA, tokens, resources
    /// and registry): another replica's address taking over once `other` is gone. Its log and ports
    /// are its own.
    pub fn start_sharing(tag: &str, other: &ControlProc, api: SocketAddr) -> ControlProc {
        let mut cp = ControlProc::unstarted(
            TempDir::new(&format!("control-{tag}")),
            other.config_dir.clone(),
            &[],
            api,
        );
        cp.extra_args = other.extra_args.clone();
        cp.shared_state = Some(other.state_dir());
        cp.spawn();
        cp
    }

    /// A control plane running inside `netns` (a node of a pod network) with `args`: its proxy API
    /// on `api` and its operator API on `operator_listen`, both in that namespace, reached by the test
    /// through `operator` (a forwarder into the namespace).
    pub fn start_in_node(
        tag: &str,
        netns: &str,
        (api, operator_listen, operator): (SocketAddr, SocketAddr, SocketAddr),
        args: &[&str],
    ) -> ControlProc {
        let mut cp =
            ControlProc::unstarted(TempDir::new(&format!("control-{tag}")), None, args, api);
        cp.operator = operator;
        cp.netns = Some((netns.to_string(), operator_listen));
        cp.spawn();
        cp
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open control log");
        let (mut cmd, operator_listen) = match &self.netns {
            Some((netns, listen)) => {
                // `ip netns exec` execs the binary in place: the child is weft-control itself.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(bin("weft-control"));
                (c, *listen)
            }
            None => (Command::new(bin("weft-control")), self.operator),
        };
        cmd.arg("--state-dir")
            .arg(self.state_dir())
            .args(["--trust-domain", "mesh.test"])
            .arg("--api-listen")
            .arg(self.api.to_string())
            .arg("--operator-listen")
            .arg(operator_listen.to_string())
            .args(&self.extra_args);
        if let Some(d) = &self.config_dir {
            cmd.arg("--config-dir").arg(d);
        }
        let child = cmd
            .env("WEFT_LOG", "info,weft_control=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn weft-control");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20));
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "weft-control exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            if matches!(self.request("GET", "/ready", None, false), Ok((200, _))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weft-control not ready within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn operator_token(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("operator.token"))
            .expect("operator token")
            .trim()
            .to_string()
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.state_dir().join("ca/bundle.crt")
    }

    /// One operator API request; `auth` adds the operator token. Returns status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        auth: bool,
    ) -> std::io::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect_timeout(&self.operator, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let body = body.unwrap_or("");
        let auth = if auth {
            format!("Authorization: Bearer {}\r\n", self.operator_token())
        } else {
            String::new()
        };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.operator,
            body.len()
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// An authenticated request whose answer must be 2xx; returns the JSON.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let (status, text) = self
            .request(method, path, body, true)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status}: {text}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// `POST /v1/apply` of one document file, waiting up to `wait_ms` for the proxies' acks; returns
    /// the answer (with its `rollout`).
    pub fn apply_file(&self, name: &str, text: &str, wait_ms: u64) -> serde_json::Value {
        let body = serde_json::json!({ "files": [{ "name": name, "text": text }] }).to_string();
        self.api("POST", &format!("/v1/apply?wait={wait_ms}"), Some(&body))
    }

    /// `weftctl ARGS` (the real binary) against this control plane: exit code, stdout, stderr.
    pub fn weftctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = std::process::Command::new(crate::bins::bin("weftctl"))
            .args(args)
            .env("WEFT_SERVER", format!("http://{}", self.operator))
            .env("WEFT_TOKEN_FILE", self.state_dir().join("operator.token"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A join token for `ns/sa`.
    pub fn token(&self, ns: &str, sa: &str, ttl_secs: u64) -> String {
        let body =
            format!(r#"{{"namespace":"{ns}","serviceAccount":"{sa}","ttlSecs":{ttl_secs}}}"#);
        self.api("POST", "/v1/tokens", Some(&body))["token"]
            .as_str()
            .expect("token")
            .to_string()
    }

    pub fn control_id(&self) -> SpiffeId {
        SpiffeId::parse("spiffe://mesh.test/ns/weft-system/sa/weft-control").expect("valid id")
    }

    /// A workload identity signed offline by this control plane's CA (as an operator could with
    /// `weftctl cert issue`), for simulated proxies.
    pub fn offline_identity(&self, ns: &str, sa: &str, ttl: Duration) -> Identity {
        let ca_dir = weft_control::ca_dir::CaDir::open(&self.state_dir().join("ca")).expect("CA");
        let id = SpiffeId::parse(&format!("spiffe://mesh.test/ns/{ns}/sa/{sa}")).expect("id");
        let kc = KeyAndCsr::generate(&id).expect("csr");
        let chain = ca_dir
            .ca
            .sign_csr(kc.csr_pem(), &id, Validity::starting_now(ttl))
            .expect("sign");
        let bundle = TrustBundle::from_pem_file(&self.bundle_path()).expect("bundle");
        Identity::new(
            Credential::from_pem(&chain, kc.key_pem()).expect("cred"),
            bundle,
        )
        .expect("identity")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Starts again on the same state directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Waits (bounded) until `f` holds for the operator API's `/v1/status`.
    pub fn wait_status(
        &self,
        timeout: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.api("GET", "/v1/status", None);
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "status never matched: {s:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ControlProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

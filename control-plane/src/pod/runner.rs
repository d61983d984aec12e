//! `weftctl pod run`: the single-machine equivalent of sidecar injection.
//!
//! Order matters and is the point: namespace and address, name resolution files, a join token, the
//! sidecar's config, `weft-proxy init` (interception), the sidecar, *wait until it is ready*, and only
//! then the app. When the app exits (or the runner is told to stop), the sidecar drains and exits, the
//! rules are removed and the namespace deleted. A failure at any step undoes the steps before it.
//!
//! The app and the sidecar run as users of their own with no capabilities (see [`super::sandbox`]);
//! unless `--user` is given, each pod's app gets a uid no other live pod's app has ([`super::users`]).
//! A sidecar that dies while the app runs is restarted (its identity is cached in its state
//! directory); if it cannot be, the pod stops rather than run with interception pointing at nothing.

use super::network::{self, NetError, PodCidr};
use super::record::{self, NetworkDir, PodRecord};
use super::sandbox::{self, RunAs};
use super::supervise::supervise;
pub use super::supervise::EXIT_SIDECAR_LOST;
use super::users;
use crate::cli::client::{Client, ClientError};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use weft_api::operator::{MeshInfo, TokenCreated, TokenRequest};

pub const DEFAULT_CIDR: &str = "198.18.0.0/16";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SIDECAR_DRAIN: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Control(#[from] ClientError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the sidecar did not become ready: {reason}\n--- last lines of {log} ---\n{tail}")]
    SidecarNotReady {
        reason: String,
        log: String,
        tail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PodError {
    let what = what.into();
    move |source| PodError::Io { what, source }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub network: String,
    pub cidr: Option<PodCidr>,
    /// The node to run on, in a network of several nodes (`weftctl network create --nodes`).
    pub node: Option<String>,
    pub run_dir: PathBuf,
    pub name: String,
    pub namespace: String,
    pub service_account: Option<String>,
    pub service: Option<String>,
    pub labels: Vec<(String, String)>,
    pub ports: Vec<u16>,
    pub mtls_mode: Option<String>,
    pub readiness_http: Option<String>,
    /// Fraction of successful requests in the sidecar's access log (`access.log` in the pod's
    /// directory); 0 turns it off.
    pub access_log_sample: f64,
    /// Where the sidecar sends its spans, if anywhere.
    pub trace_collector: Option<String>,
    /// `zipkin` or `otlp`.
    pub trace_format: &'static str,
    /// `limits:` of the sidecar's config, KEY=VALUE as given (checked by the sidecar).
    pub proxy_limits: Vec<(String, String)>,
    pub proxy_bin: Option<PathBuf>,
    /// The app's user and group; `None`: one of its own, allocated from [`users::APP_UIDS`].
    pub user: Option<RunAs>,
    /// The sidecar's user and group (exempt from interception by `init --proxy-uid`).
    pub proxy_user: RunAs,
    pub command: Vec<String>,
}

impl RunOptions {
    fn service_account(&self) -> String {
        self.service_account
            .clone()
            .or_else(|| self.service.clone())
            .unwrap_or_else(|| self.name.clone())
    }
    fn labels(&self) -> BTreeMap<String, String> {
        let mut l: BTreeMap<String, String> = self.labels.iter().cloned().collect();
        if let Some(s) = &self.service {
            l.entry("app".into()).or_insert_with(|| s.clone());
        }
        l
    }
}

/// The pod's pieces, torn down in reverse on drop (every way out, including errors).
pub(super) struct Pod {
    network: String,
    name: String,
    netns: String,
    dir: PathBuf,
    /// The whole network's range (every node's pods): what interception treats as the mesh.
    mesh_cidr: PodCidr,
    proxy_bin: PathBuf,
    proxy_user: RunAs,
    pub(super) sidecar: Option<Child>,
    pub(super) app: Option<Child>,
    /// The app's user: `--user`, else allocated for this pod.
    app_user: RunAs,
    /// The claim on `app_user` when it was allocated for this pod alone (then its processes die with
    /// the pod); released after them.
    own_user: Option<users::Claim>,
    intercepting: bool,
}

impl Drop for Pod {
    fn drop(&mut self) {
        for child in [self.app.as_mut(), self.sidecar.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.start_kill();
        }
        if self.own_user.is_some() {
            sandbox::kill_all_of(self.app_user);
        }
        if self.intercepting {
            let _ = std::process::Command::new("ip")
                .args(["netns", "exec", &self.netns])
                .arg(&self.proxy_bin)
                .args(["init", "--cleanup"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        network::delete_pod(&self.network, &self.name);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the pod until its app exits; returns the app's exit code.
pub async fn run(client: &Client, o: RunOptions) -> Result<i32, PodError> {
    network::check_name("network", &o.network)?;
    network::check_name("pod name", &o.name)?;
    network::check_name("namespace", &o.namespace)?;
    if o.command.is_empty() {
        return Err(PodError::Invalid(
            "give the app's command after `--`".into(),
        ));
    }
    let proxy_bin = proxy_binary(o.proxy_bin.as_deref())?;
    check_users(&o, &proxy_bin)?;
    let info: MeshInfo = client.get("/v1/mesh").await?;
    let sa = o.service_account();
    let token: TokenCreated = client
        .post(
            "/v1/tokens",
            // Single use, short-lived, and bound to this pod's name and labels.
            &TokenRequest {
                namespace: o.namespace.clone(),
                service_account: sa.clone(),
                ttl_secs: 120,
                max_uses: Some(1),
                workload: Some(o.name.clone()),
                labels: o.labels(),
            },
            Duration::from_secs(10),
        )
        .await?;

    let mut pod = create(&o, &proxy_bin)?;
    sandbox::check_reachable(&pod.dir, o.proxy_user).map_err(PodError::Invalid)?;
    if o.user.is_none() {
        check_app(&o, pod.app_user)?;
    }
    let address = read_record(&pod)?.address;
    write_name_files(&pod.netns, &o, address)?;
    let config = write_sidecar_files(&pod.dir, &o, &sa, address, &info, &token)?;
    sandbox::hand_pod_dir_to(&pod.dir, o.proxy_user).map_err(io(format!(
        "handing {} to the sidecar's user",
        pod.dir.display()
    )))?;
    init_interception(&pod)?;
    pod.intercepting = true;
    pod.sidecar = Some(start_sidecar(&pod, &config, false)?);
    update_record(&pod, |r| {
        r.sidecar_pid = pod.sidecar.as_ref().and_then(Child::id)
    })?;
    wait_ready(&mut pod, READY_TIMEOUT).await?;
    eprintln!(
        "pod {}: sidecar ready ({}, uid {}), address {address}; starting the app as {}",
        o.name, info.trust_domain, o.proxy_user.uid, pod.app_user
    );
    pod.app = Some(start_app(&pod, pod.app_user, &o.command)?);
    update_record(&pod, |r| r.app_pid = pod.app.as_ref().and_then(Child::id))?;
    let code = supervise(&mut pod, &o, &config).await;
    stop_sidecar(&mut pod).await;
    Ok(code)
}

/// The app and the sidecar need users of their own, and each must be able to run its program (an
/// allocated app user is checked once the pod has it).
fn check_users(o: &RunOptions, proxy_bin: &Path) -> Result<(), PodError> {
    if let Some(user) = o.user.filter(|u| u.uid == o.proxy_user.uid) {
        return Err(PodError::Invalid(format!(
            "--user {user} is the sidecar's user: its traffic would skip interception; give the app another uid"
        )));
    }
    let range = format!("{}-{}", users::APP_UIDS.start(), users::APP_UIDS.end());
    if let Some(user) = o.user.filter(|u| users::APP_UIDS.contains(&u.uid)) {
        return Err(PodError::Invalid(format!(
            "--user {user} is in {range}, the uids the runner gives pods' apps; leave --user out for one of those, or give a uid outside it"
        )));
    }
    if users::APP_UIDS.contains(&o.proxy_user.uid) {
        return Err(PodError::Invalid(format!(
            "--proxy-user {} is in {range}, the uids the runner gives pods' apps; give the sidecar a uid outside it",
            o.proxy_user
        )));
    }
    if sandbox::resolve("setpriv").is_none() {
        return Err(PodError::Invalid(
            "setpriv not found on PATH: install util-linux (it drops the app's and the sidecar's privileges)".into(),
        ));
    }
    let proxy = proxy_bin.display().to_string();
    sandbox::check_executable(&proxy, o.proxy_user)
        .map_err(|e| PodError::Invalid(format!("the sidecar: {e}")))?;
    match o.user {
        Some(user) => check_app(o, user),
        None => Ok(()),
    }
}

fn check_app(o: &RunOptions, user: RunAs) -> Result<(), PodError> {
    sandbox::check_executable(&o.command[0], user)
        .map_err(|e| PodError::Invalid(format!("the app: {e}")))?;
    Ok(())
}

fn proxy_binary(given: Option<&Path>) -> Result<PathBuf, PodError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("weft-proxy")));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("weft-proxy"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            PodError::Invalid(
                "weft-proxy not found beside weftctl or on PATH; give --proxy-bin".into(),
            )
        })
}

/// Namespace, veth, address and app user, under the network's lock.
fn create(o: &RunOptions, proxy_bin: &Path) -> Result<Pod, PodError> {
    let dir = NetworkDir::new(&o.run_dir, &o.network);
    let _lock = dir
        .lock()
        .map_err(io(format!("locking {}", dir.dir.display())))?;
    let place = placement(o, &dir)?;
    clear_stale(o, &dir)?;
    let address = dir
        .free_address(place.range)
        .ok_or_else(|| PodError::Invalid(format!("no free address left in {}", place.range)))?;
    let (app_user, claim) = match o.user {
        Some(user) => (user, None),
        None => {
            let c = claim_user()?;
            (c.user, Some(c))
        }
    };
    let netns = network::pod_ns(&o.network, &o.name);
    let pod = Pod {
        network: o.network.clone(),
        name: o.name.clone(),
        netns: netns.clone(),
        dir: dir.pod_dir(&o.name),
        mesh_cidr: place.mesh,
        proxy_bin: proxy_bin.to_path_buf(),
        proxy_user: o.proxy_user,
        sidecar: None,
        app: None,
        app_user,
        own_user: claim,
        intercepting: false,
    };
    let rec = PodRecord {
        name: o.name.clone(),
        network: o.network.clone(),
        netns,
        namespace: o.namespace.clone(),
        service_account: o.service_account(),
        labels: o.labels(),
        address,
        node: o.node.clone(),
        runner_pid: std::process::id(),
        sidecar_pid: None,
        app_pid: None,
        app_user: Some(app_user),
        started: record::now(),
        command: o.command.clone(),
    };
    // The record first: it holds the address for the next runner even while the namespace is built.
    dir.write(&rec).map_err(io("writing the pod record"))?;
    network::create_pod(&o.network, &o.name, &place.bridge_ns, place.range, address)?;
    Ok(pod)
}

/// Where a pod attaches: the bridge's namespace, the range its address comes from (gateway first),
/// and the range of the whole network.
struct Placement {
    bridge_ns: String,
    range: PodCidr,
    mesh: PodCidr,
}

/// The network's own bridge, or with `--node` that node's (the network must have been created with
/// nodes, and a network with nodes needs `--node`).
fn placement(o: &RunOptions, dir: &NetworkDir) -> Result<Placement, PodError> {
    let nodes = dir.nodes();
    let Some(want) = &o.node else {
        if let Some(first) = nodes.first() {
            let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(PodError::Invalid(format!(
                "network {} has nodes ({}): give --node, e.g. --node {}",
                o.network,
                names.join(", "),
                first.name
            )));
        }
        let cidr = network_range(o, dir)?;
        return Ok(Placement {
            bridge_ns: network::network_ns(&o.network),
            range: cidr,
            mesh: cidr,
        });
    };
    let mesh = dir.cidr().filter(|_| !nodes.is_empty()).ok_or_else(|| {
        PodError::Invalid(format!(
            "network {} has no nodes; create it with `weftctl network create {} --nodes N` first",
            o.network, o.network
        ))
    })?;
    if let Some(c) = o.cidr.filter(|c| *c != mesh) {
        return Err(PodError::Invalid(format!(
            "network {} already uses {mesh}, not {c}",
            o.network
        )));
    }
    let node = nodes.iter().find(|n| &n.name == want).ok_or_else(|| {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        PodError::Invalid(format!(
            "network {} has no node {want} (its nodes: {})",
            o.network,
            names.join(", ")
        ))
    })?;
    if !crate::netns::exists(&node.namespace) {
        return Err(PodError::Invalid(format!(
            "node {want}'s namespace {} is gone; `weftctl network delete {}` and create it again",
            node.namespace, o.network
        )));
    }
    Ok(Placement {
        bridge_ns: node.namespace.clone(),
        range: node.range,
        mesh,
    })
}

/// A uid of the pod's own, held until the runner ends.
fn claim_user() -> Result<users::Claim, PodError> {
    let dir = Path::new(users::CLAIMS_DIR);
    users::claim(dir)
        .map_err(io(format!("claiming a uid in {}", dir.display())))?
        .ok_or_else(|| {
            PodError::Invalid(format!(
                "no free app uid left in {}-{}: each runs a pod's app or another process; give --user",
                users::APP_UIDS.start(),
                users::APP_UIDS.end()
            ))
        })
}

/// The network's range (created with it if absent); a different `--cidr` than it has is refused.
fn network_range(o: &RunOptions, dir: &NetworkDir) -> Result<PodCidr, PodError> {
    let cidr = match (o.cidr, dir.cidr()) {
        (Some(c), Some(existing)) if c != existing => {
            return Err(PodError::Invalid(format!(
                "network {} already uses {existing}, not {c}",
                o.network
            )))
        }
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => DEFAULT_CIDR.parse()?,
    };
    if network::ensure_network(&o.network, cidr)? {
        eprintln!("pod network {} created ({cidr})", o.network);
    }
    dir.set_cidr(cidr)
        .map_err(io("writing the network's range"))?;
    Ok(cidr)
}

/// A pod of the same name: refused while its runner lives, else its leftovers are removed.
fn clear_stale(o: &RunOptions, dir: &NetworkDir) -> Result<(), PodError> {
    if let Some(old) = dir.pods().into_iter().find(|p| p.name == o.name) {
        if record::alive(old.runner_pid) {
            return Err(PodError::Invalid(format!(
                "pod {} already runs (runner pid {}); `weftctl pod delete {}` first",
                o.name, old.runner_pid, o.name
            )));
        }
        // A runner that died without cleaning up: take its leftovers down first.
        if let Some(user) = old.app_user.filter(|u| users::APP_UIDS.contains(&u.uid)) {
            users::kill_left(Path::new(users::CLAIMS_DIR), user);
        }
        network::delete_pod(&o.network, &o.name);
        let _ = std::fs::remove_dir_all(dir.pod_dir(&o.name));
    }
    Ok(())
}

fn read_record(pod: &Pod) -> Result<PodRecord, PodError> {
    let bytes = std::fs::read(pod.dir.join("pod.json")).map_err(io("reading the pod record"))?;
    serde_json::from_slice(&bytes).map_err(|e| PodError::Invalid(format!("pod record: {e}")))
}

pub(super) fn update_record(pod: &Pod, f: impl FnOnce(&mut PodRecord)) -> Result<(), PodError> {
    let mut rec = read_record(pod)?;
    f(&mut rec);
    let dir = NetworkDir {
        dir: pod
            .dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    dir.write(&rec).map_err(io("writing the pod record"))
}

/// `/etc/netns/<ns>/{hosts,resolv.conf}`: `ip netns exec` mounts them over /etc for the pod's
/// processes, so they ask the sidecar's DNS responder.
fn write_name_files(netns: &str, o: &RunOptions, address: Ipv4Addr) -> Result<(), PodError> {
    let etc = network::etc_dir(netns);
    std::fs::create_dir_all(&etc).map_err(io(format!("creating {}", etc.display())))?;
    // The sidecar answers (init redirects port 53 to its responder); ndots:2 sends bare `reviews`
    // and `reviews.other` through the search list first.
    let resolv = format!(
        "# written by weftctl pod run: the sidecar answers mesh names\nnameserver 127.0.0.1\nsearch {ns}.svc svc\noptions ndots:2\n",
        ns = o.namespace
    );
    std::fs::write(etc.join("resolv.conf"), resolv).map_err(io("writing resolv.conf"))?;
    write_in_place(&etc.join("hosts"), &hosts_file(&o.name, address))
}

/// The pod's hosts file: loopback and the pod's own name; service names come from the sidecar's DNS
/// responder, which follows the mesh as it changes.
pub fn hosts_file(pod: &str, address: Ipv4Addr) -> String {
    format!("# written by weftctl pod run\n127.0.0.1\tlocalhost\n{address}\t{pod}\n")
}

/// Rewrites a file keeping its inode: the pod's /etc/hosts is a bind mount of it.
fn write_in_place(path: &Path, text: &str) -> Result<(), PodError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io(format!("writing {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io(format!("writing {}", path.display())))
}

fn write_sidecar_files(
    dir: &Path,
    o: &RunOptions,
    sa: &str,
    address: Ipv4Addr,
    info: &MeshInfo,
    token: &TokenCreated,
) -> Result<PathBuf, PodError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let token_path = dir.join("token");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&token_path)
        .map_err(io("writing the join token"))?;
    f.write_all(token.token.as_bytes())
        .map_err(io("writing the join token"))?;
    let labels: Vec<String> = o
        .labels()
        .iter()
        .map(|(k, v)| format!("{}: {}", json(k), json(v)))
        .collect();
    let ports: Vec<String> = o.ports.iter().map(u16::to_string).collect();
    let readiness = match (&o.readiness_http, o.ports.first()) {
        (Some(path), Some(p)) => format!(
            "\n  readiness: {{http: {{port: {p}, path: {}}}}}",
            json(path)
        ),
        (None, Some(p)) => format!("\n  readiness: {{tcp: {{port: {p}}}}}"),
        _ => String::new(),
    };
    let mtls = o
        .mtls_mode
        .as_ref()
        .map(|m| format!("\n  mtls_mode: {m}"))
        .unwrap_or_default();
    let optional = optional_sections(o, dir);
    let yaml = format!(
        "# written by weftctl pod run\n\
control:\n  address: {addr}\n  ca_fingerprint: {fp}\n  token_file: {token}\n  state_dir: {state}\n\
workload:\n  name: {name}\n  namespace: {ns}\n  service_account: {sa}\n  labels: {{{labels}}}\n  address: {address}\n  ports: [{ports}]{readiness}\n\
interception:\n  outbound: 0.0.0.0:15001\n  inbound: 0.0.0.0:15006\n  mark: 1337{mtls}\n\
dns:\n  listen: 127.0.0.1:15053\n{optional}",
        addr = control_address(info),
        fp = json(&info.ca_fingerprint),
        token = json(&token_path.display().to_string()),
        state = json(&dir.join("proxy").display().to_string()),
        name = o.name,
        ns = o.namespace,
        labels = labels.join(", "),
        ports = ports.join(", "),
    );
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, yaml).map_err(io("writing the sidecar's config"))?;
    Ok(path)
}

/// `control.address`: the one address, written as before, or every replica's as a list.
fn control_address(info: &MeshInfo) -> String {
    match info.proxy_addresses.as_slice() {
        [] | [_] => info.proxy_address.to_string(),
        many => {
            let all: Vec<String> = many.iter().map(|a| json(&a.to_string())).collect();
            format!("[{}]", all.join(", "))
        }
    }
}

/// The sidecar config's sections that only some pods have: access log, tracing, limits.
fn optional_sections(o: &RunOptions, dir: &Path) -> String {
    let access_log = if o.access_log_sample > 0.0 {
        format!(
            "access_log:\n  path: {}\n  sample: {}\n",
            json(&dir.join("access.log").display().to_string()),
            o.access_log_sample
        )
    } else {
        String::new()
    };
    let tracing = o
        .trace_collector
        .as_ref()
        .map(|c| {
            format!(
                "tracing:\n  collector: {}\n  format: {}\n",
                json(c),
                o.trace_format
            )
        })
        .unwrap_or_default();
    let limits: String = o
        .proxy_limits
        .iter()
        .map(|(k, v)| format!("  {k}: {v}\n"))
        .collect();
    let limits = if limits.is_empty() {
        limits
    } else {
        format!("limits:\n{limits}")
    };
    format!("{access_log}{tracing}{limits}")
}

/// A YAML-safe scalar (JSON strings are YAML).
fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `ip netns exec` (which also mounts the pod's /etc/netns files), then `setpriv` down to `who`.
fn in_pod_as(pod: &Pod, who: RunAs) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &pod.netns])
        .args(sandbox::setpriv_args(who));
    c
}

fn init_interception(pod: &Pod) -> Result<(), PodError> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .arg(&pod.proxy_bin)
        .arg("init")
        .arg(format!("--proxy-uid={}", pod.proxy_user.uid))
        .arg(format!("--mesh-cidrs={}", pod.mesh_cidr))
        .output()
        .map_err(io("running weft-proxy init"))?;
    if !out.status.success() {
        return Err(PodError::Invalid(format!(
            "weft-proxy init failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Starts the sidecar as its own user; a restart appends to the log the first start began.
pub(super) fn start_sidecar(pod: &Pod, config: &Path, restart: bool) -> Result<Child, PodError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(restart)
        .write(true)
        .truncate(!restart)
        .open(pod.dir.join("sidecar.log"))
        .map_err(io("creating sidecar.log"))?;
    let err = log.try_clone().map_err(io("creating sidecar.log"))?;
    in_pod_as(pod, pod.proxy_user)
        .arg(&pod.proxy_bin)
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(io("starting the sidecar"))
}

pub(super) async fn wait_ready(pod: &mut Pod, timeout: Duration) -> Result<(), PodError> {
    let started = Instant::now();
    let log = pod.dir.join("sidecar.log");
    let not_ready = |reason: String| PodError::SidecarNotReady {
        reason,
        log: log.display().to_string(),
        tail: tail(&log, 20),
    };
    loop {
        if let Some(sidecar) = pod.sidecar.as_mut() {
            if let Ok(Some(status)) = sidecar.try_wait() {
                return Err(not_ready(format!("it exited ({status})")));
            }
        }
        let ns = pod.netns.clone();
        let ready = tokio::task::spawn_blocking(move || ready_in(&ns))
            .await
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(not_ready(format!(
                "GET /ready on 127.0.0.1:15020 inside the pod did not answer 200 within {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /ready` on the sidecar's health port, from inside the pod's namespace.
pub fn ready_in(netns: &str) -> bool {
    let conn = crate::netns::run_in(netns, || {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], 15020)),
            Duration::from_millis(500),
        )
    });
    let Ok(mut s) = conn else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn start_app(pod: &Pod, who: RunAs, command: &[String]) -> Result<Child, PodError> {
    let mut c = in_pod_as(pod, who);
    c.args(command).kill_on_drop(true);
    c.spawn()
        .map_err(io(format!("starting the app `{}`", command.join(" "))))
}

/// SIGTERM: the sidecar reports not-ready, drains in-flight work and exits.
async fn stop_sidecar(pod: &mut Pod) {
    let Some(sidecar) = pod.sidecar.as_mut() else {
        return;
    };
    if let Some(pid) = sidecar.id() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    if tokio::time::timeout(SIDECAR_DRAIN, sidecar.wait())
        .await
        .is_err()
    {
        let _ = sidecar.start_kill();
        let _ = sidecar.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_names_the_pod_only() {
        let h = hosts_file("web", Ipv4Addr::new(198, 18, 0, 2));
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("198.18.0.2\tweb\n"));
        assert_eq!(h.lines().filter(|l| !l.starts_with('#')).count(), 2);
    }

    #[test]
    fn the_sidecar_gets_every_advertised_control_plane() {
        let one: std::net::SocketAddr = "198.18.0.1:15010".parse().unwrap();
        let mut info = MeshInfo {
            trust_domain: "t.local".into(),
            ca_fingerprint: String::new(),
            bundle_pem: String::new(),
            proxy_address: one,
            proxy_addresses: Vec::new(),
            services: Vec::new(),
        };
        assert_eq!(control_address(&info), "198.18.0.1:15010");
        info.proxy_addresses = vec![one, "198.18.1.1:15010".parse().unwrap()];
        assert_eq!(
            control_address(&info),
            r#"["198.18.0.1:15010", "198.18.1.1:15010"]"#
        );
    }
}

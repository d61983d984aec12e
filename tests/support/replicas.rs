//! A replicated mesh on three simulated nodes for fault tests (issue 18, "Several nodes"): a network
//! of 3 nodes (`weftctl network create --nodes 3`), and on each node one member of a 3-member etcd
//! cluster (Debian's `etcd-server`) and one `weft-control` replica, both run inside the node's
//! namespace (`ip netns exec weft-NAME.node<i>`) so that a partition cuts them off like a machine.
//! Every replica is given all three members (`--store etcd://...`), one shared `--store-key-file` and
//! all three proxy API addresses (`--api-advertise`), so `weftctl pod run --node` gives each sidecar
//! the three of them.
//!
//! A replica's operator API listens on loopback inside its node; the test reaches it through a
//! forwarder on the test's own loopback that connects from inside the node's namespace
//! ([`Forward`]), so `weftctl` and the test talk to it as an operator on that machine would.
//!
//! Everything is removed on drop, also on panic: replicas and etcd members killed, then the pods,
//! every namespace of the network and the temporary directories (the [`PodMesh`] inside).
//!
//! Faults: [`Replicas::kill9_replica`], [`Replicas::pause_replica`] (SIGSTOP),
//! [`Replicas::restart_replica`], [`Replicas::kill9_etcd`], [`Replicas::restart_etcd`],
//! [`PodMesh::partition`] (through `mesh`), [`Replicas::stop_all`] and [`Replicas::start_all`].

use crate::bins::bin;
use crate::control::ControlProc;
use crate::pki::TempDir;
use crate::pods::{text, unique_network, PodHandle, PodMesh};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Nodes, etcd members and replicas: one of each per node.
pub const NODES: usize = 3;

/// Node `i`'s own address (its pod bridge), 1-based as the nodes' names.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, u8::try_from(i).expect("a few nodes"), 1)
}

/// Replica `i`'s proxy API (on its node's address, reached from every pod and node).
pub fn api_addr(i: usize) -> SocketAddr {
    SocketAddr::from((node_ip(i), 15010))
}

fn etcd_client(i: usize) -> SocketAddr {
    SocketAddr::from((node_ip(i), 2379))
}

fn etcd_peer(i: usize) -> SocketAddr {
    SocketAddr::from((node_ip(i), 2380))
}

/// Where each replica's operator API listens inside its node.
const OPERATOR_IN_NODE: ([u8; 4], u16) = ([127, 0, 0, 1], 15014);

/// A TCP connection opened from inside network namespace `netns` (by a thread that enters it and
/// ends there: the socket stays in that namespace, the test's other threads never move).
pub fn connect_in(netns: &str, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/var/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(&path)?;
            // SAFETY: setns on an open namespace file; it changes only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            TcpStream::connect_timeout(&addr, timeout)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
    })
}

/// A listener on the test's loopback whose connections are relayed to `target` inside `netns`.
pub struct Forward {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Forward {
    pub fn start(netns: &str, target: SocketAddr) -> Forward {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a forwarder");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (netns, done) = (netns.to_string(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let netns = netns.clone();
                std::thread::spawn(move || relay(conn, &netns, target));
            }
        });
        Forward { addr, stop }
    }
}

/// Copies both ways between `conn` and a new connection to `target` in `netns` until either ends.
fn relay(conn: TcpStream, netns: &str, target: SocketAddr) {
    let Ok(upstream) = connect_in(netns, target, Duration::from_secs(2)) else {
        return; // Dropping `conn` closes it: the caller sees the replica as down.
    };
    let (Ok(mut conn_r), Ok(mut up_w)) = (conn.try_clone(), upstream.try_clone()) else {
        return;
    };
    let (mut up_r, mut conn_w) = (upstream, conn);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut conn_r, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut up_r, &mut conn_w);
    let _ = conn_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so it sees the flag and ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// One member of the 3-member etcd cluster, run inside its node's namespace; its data stays in the
/// harness's temporary directory across kills and restarts.
pub struct EtcdMember {
    pub index: usize,
    netns: String,
    dir: PathBuf,
    cluster: String,
    token: String,
    child: Option<Child>,
}

impl EtcdMember {
    fn name(&self) -> String {
        format!("m{}", self.index)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts it without waiting: a member alone has no quorum and reports unhealthy.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd log");
        let client = format!("http://{}", etcd_client(self.index));
        let peer = format!("http://{}", etcd_peer(self.index));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(crate::etcd::etcd_binary().expect("etcd"))
            .args(["--name", &self.name()])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    /// `GET PATH` on its client port, from inside its node: the whole answer, `None` when it
    /// does not answer.
    fn http_get(&self, path: &str) -> Option<String> {
        let addr = etcd_client(self.index);
        let mut s = connect_in(&self.netns, addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        Some(buf)
    }

    /// Whether it answers `/health` with `true` (it is part of a quorum).
    pub fn healthy(&self) -> bool {
        self.http_get("/health")
            .is_some_and(|b| b.contains("\"health\":\"true\""))
    }

    /// Whether it is the cluster's raft leader (its `etcd_server_is_leader` metric).
    pub fn is_leader(&self) -> bool {
        self.http_get("/metrics")
            .is_some_and(|b| b.lines().any(|l| l.trim() == "etcd_server_is_leader 1"))
    }

    /// Waits (bounded) until it reports healthy.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd {} exited ({status}):\n{}", self.name(), self.log());
            }
            if self.healthy() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "etcd {} not healthy within {timeout:?}:\n{}",
                self.name(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL; its data stays.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The mesh: 3 nodes, 3 etcd members, 3 replicas, and the pods started on it. Fields drop in order:
/// replicas, then etcd, then the pod mesh (pods, namespaces), then forwarders and files.
pub struct Replicas {
    /// Replica `i` (0-based) is `slots[i]`, except the one `mesh.control` holds (`front`), through
    /// which `weftctl` and `mesh.pod` go.
    slots: Vec<Option<ControlProc>>,
    front: usize,
    pub etcd: Vec<EtcdMember>,
    pub mesh: PodMesh,
    _forwards: Vec<Forward>,
    _dir: TempDir,
}

impl Replicas {
    /// The whole mesh, or `None` (the test skips) when etcd is not installed and `WEFT_E2E_REQUIRE`
    /// is not set. Pod support is the caller's check ([`crate::pods::available`]).
    pub fn start(tag: &str) -> Option<Replicas> {
        if !crate::etcd::available(tag) {
            return None;
        }
        let network = unique_network(tag);
        let run_dir = TempDir::new(&format!("pods-{network}"));
        let out = Command::new(bin("weftctl"))
            .args(["network", "create", &network, "--nodes", &NODES.to_string()])
            .arg("--run-dir")
            .arg(run_dir.path())
            .output()
            .expect("run weftctl network create");
        assert!(out.status.success(), "network create: {}", text(&out));
        let started = std::panic::catch_unwind(|| Pieces::start(&network));
        match started {
            Ok(mut p) => {
                let first = p.replicas.remove(0);
                let mut slots: Vec<Option<ControlProc>> = vec![None];
                slots.extend(p.replicas.into_iter().map(Some));
                Some(Replicas {
                    slots,
                    front: 0,
                    etcd: p.etcd,
                    mesh: PodMesh::assemble(network, run_dir, first),
                    _forwards: p.forwards,
                    _dir: p.dir,
                })
            }
            Err(panic) => {
                // No mesh owns the network yet: remove it here (processes in it died with `Pieces`).
                let _ = Command::new(bin("weftctl"))
                    .args(["network", "delete", &network, "--force", "--run-dir"])
                    .arg(run_dir.path())
                    .output();
                std::panic::resume_unwind(panic)
            }
        }
    }

    pub fn netns(&self, node: usize) -> String {
        format!("weft-{}.node{node}", self.mesh.network)
    }

    /// Replica `i` (0-based: replica `i` runs on node `i + 1`).
    pub fn replica(&self, i: usize) -> &ControlProc {
        match &self.slots[i] {
            Some(cp) => cp,
            None => &self.mesh.control,
        }
    }

    pub fn replica_mut(&mut self, i: usize) -> &mut ControlProc {
        match &mut self.slots[i] {
            Some(cp) => cp,
            None => &mut self.mesh.control,
        }
    }

    /// Makes replica `i` the one `weftctl` (and so `mesh.pod`, `mesh.apply`) talks to.
    pub fn use_replica(&mut self, i: usize) {
        if i == self.front {
            return;
        }
        let mut cp = self.slots[i].take().expect("replica in its slot");
        std::mem::swap(&mut cp, &mut self.mesh.control);
        self.slots[self.front] = Some(cp);
        self.front = i;
    }

    /// Whether replica `i`'s process is running (not killed by the test).
    pub fn alive(&self, i: usize) -> bool {
        self.replica(i).pid().is_some()
    }

    pub fn kill9_replica(&mut self, i: usize) {
        self.replica_mut(i).kill9();
    }

    /// SIGSTOP (`resume` true: SIGCONT): the process stays, its connections stay open, it answers
    /// nothing.
    pub fn pause_replica(&self, i: usize, resume: bool) {
        let pid = self.replica(i).pid().expect("replica running") as libc::pid_t;
        let sig = if resume { libc::SIGCONT } else { libc::SIGSTOP };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, sig) };
    }

    /// Starts replica `i` again (killed first if running) and waits until it is ready.
    pub fn restart_replica(&mut self, i: usize) {
        self.replica_mut(i).restart();
    }

    /// Member `i` (0-based: on node `i + 1`).
    pub fn kill9_etcd(&mut self, i: usize) {
        self.etcd[i].kill9();
    }

    /// Starts member `i` again on its data; returns how long it took to report healthy (rejoined).
    pub fn restart_etcd(&mut self, i: usize) -> Duration {
        self.etcd[i].kill9();
        self.etcd[i].spawn();
        self.etcd[i].wait_healthy(Duration::from_secs(30))
    }

    /// The member (0-based) that leads the etcd cluster now, if one does.
    pub fn etcd_leader(&self) -> Option<usize> {
        self.etcd.iter().position(EtcdMember::is_leader)
    }

    /// Kills every replica and every etcd member (SIGKILL); pods and their sidecars stay.
    pub fn stop_all(&mut self) {
        for i in 0..NODES {
            self.kill9_replica(i);
        }
        for m in &mut self.etcd {
            m.kill9();
        }
    }

    /// Starts every etcd member, waits for the cluster, then every replica (each waited ready).
    pub fn start_all(&mut self) {
        for m in &mut self.etcd {
            m.spawn();
        }
        for m in &mut self.etcd {
            m.wait_healthy(Duration::from_secs(30));
        }
        for i in 0..NODES {
            self.replica_mut(i).restart();
        }
    }

    /// The replicas a workload's sidecar tries, in its order (0-based indices): the proxy's own
    /// rendezvous order over the three advertised addresses.
    pub fn order_of(namespace: &str, service_account: &str, name: &str) -> Vec<usize> {
        let addrs: Vec<SocketAddr> = (1..=NODES).map(api_addr).collect();
        let seed = weft_proxy::control::planes::seed(namespace, service_account, name);
        weft_proxy::control::planes::order(addrs.clone(), &seed, None, false)
            .into_iter()
            .filter_map(|a| addrs.iter().position(|x| *x == a))
            .collect()
    }

    /// The first name `PREFIX<n>` (service account `sa`, or the name itself when `None`) whose
    /// sidecar's order over the replicas is `order`: a pod placed on the replicas the test means.
    pub fn name_with_order(prefix: &str, sa: Option<&str>, order: [usize; NODES]) -> String {
        (0..10_000)
            .map(|n| format!("{prefix}{n}"))
            .find(|name| Self::order_of("default", sa.unwrap_or(name), name) == order)
            .expect("some name has every order")
    }

    /// Starts a pod on `node` (1-based) through the real `weftctl pod run --node` and waits like
    /// `PodMesh::pod`, asking the replica its sidecar picks (the first one running in its order).
    pub fn pod(&mut self, name: &str, node: usize, flags: &[&str], command: &[&str]) -> PodHandle {
        let sa = flags
            .iter()
            .position(|f| *f == "--service")
            .and_then(|i| flags.get(i + 1))
            .map_or(name, |s| *s);
        let first = Self::order_of("default", sa, name)
            .into_iter()
            .find(|i| self.alive(*i))
            .expect("a replica running");
        self.use_replica(first);
        let node = format!("node{node}");
        let flags = [&["--node", node.as_str()][..], flags].concat();
        self.mesh.pod(name, &flags, command)
    }

    /// `GET /v1/status` of replica `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        self.replica(i).api("GET", "/v1/status", None)
    }

    /// The replicas (0-based) with `default/NAME` connected, by their `/v1/status` (each lists the
    /// whole mesh, every row under the replica holding it: only its own rows count).
    pub fn connected_to(&self, name: &str) -> Vec<usize> {
        let key = format!("default/{name}");
        (0..NODES)
            .filter(|i| self.alive(*i))
            .filter(|i| {
                let s = self.status(*i);
                s["proxies"].as_array().is_some_and(|ps| {
                    ps.iter().any(|p| {
                        p["proxy"] == key.as_str()
                            && p["connected"] == true
                            && p["replica"] == s["replica"]
                    })
                })
            })
            .collect()
    }
}

/// What [`Replicas::start`] builds before the pod mesh owns the network; dropped (processes
/// killed) if any step panics.
struct Pieces {
    replicas: Vec<ControlProc>,
    etcd: Vec<EtcdMember>,
    forwards: Vec<Forward>,
    dir: TempDir,
}

impl Pieces {
    fn start(network: &str) -> Pieces {
        let dir = TempDir::new(&format!("replicas-{network}"));
        let netns = |i: usize| format!("weft-{network}.node{i}");
        let cluster = (1..=NODES)
            .map(|i| format!("m{i}=http://{}", etcd_peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut p = Pieces {
            replicas: Vec::new(),
            etcd: Vec::new(),
            forwards: Vec::new(),
            dir,
        };
        for i in 1..=NODES {
            let member_dir = p.dir.path().join(format!("etcd-m{i}"));
            std::fs::create_dir_all(&member_dir).expect("etcd dir");
            let mut m = EtcdMember {
                index: i,
                netns: netns(i),
                dir: member_dir,
                cluster: cluster.clone(),
                token: network.to_string(),
                child: None,
            };
            m.spawn();
            p.etcd.push(m);
        }
        for m in &mut p.etcd {
            m.wait_healthy(Duration::from_secs(30));
        }
        let key = p.dir.path().join("store.key");
        weft_control::store_key::generate(&key).expect("write a store key");
        let store = format!(
            "etcd://{}",
            (1..=NODES)
                .map(|i| etcd_client(i).to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let advertise = (1..=NODES)
            .map(|i| api_addr(i).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let key = key.display().to_string();
        for i in 1..=NODES {
            let operator = SocketAddr::from(OPERATOR_IN_NODE);
            let forward = Forward::start(&netns(i), operator);
            let args = [
                "--store",
                store.as_str(),
                "--store-key-file",
                key.as_str(),
                "--api-advertise",
                advertise.as_str(),
            ];
            let cp = ControlProc::start_in_node(
                &format!("{network}-r{i}"),
                &netns(i),
                (api_addr(i), operator, forward.addr),
                &args,
            );
            p.forwards.push(forward);
            p.replicas.push(cp);
        }
        p
    }
}

/// A bounded request loop from one pod: `shop load` runs of a few requests each, one after another
/// with a short pause, from `client`'s namespace (intercepted like its app) until stopped, or at
/// most `MAX_RUNS` runs or `MAX_TIME`.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<LoadResult>>,
}

/// What a [`Load`] sent: requests, failures, and the first few failure messages.
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    pub sent: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    pub runs: u64,
}

const MAX_RUNS: u64 = 3_000;
const MAX_TIME: Duration = Duration::from_secs(150);
const PER_RUN: u32 = 10;

impl Load {
    /// Starts the loop from `client` to `url`.
    pub fn start(client: &PodHandle, url: &str) -> Load {
        let shop = crate::pods::example("shop");
        let (netns, url) = (client.netns.clone(), url.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut r = LoadResult::default();
            while !done.load(Ordering::SeqCst) && r.runs < MAX_RUNS && started.elapsed() < MAX_TIME
            {
                r.runs += 1;
                one_run(&netns, &shop, &url, &mut r);
                std::thread::sleep(Duration::from_millis(50));
            }
            r
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the loop (after the run under way) and returns what it sent.
    pub fn stop(mut self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("load thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One `shop load --count PER_RUN`, added to `r`; a run that does not report counts all its
/// requests as failed.
fn one_run(netns: &str, shop: &str, url: &str, r: &mut LoadResult) {
    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", netns, shop, "load"])
        .args(["--url", url, "--count", &PER_RUN.to_string()])
        .stdin(Stdio::null())
        .output();
    let parsed = out.as_ref().ok().and_then(|o| {
        let stdout = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str::<serde_json::Value>(stdout.lines().last()?).ok()
    });
    match parsed {
        Some(v) => {
            let failed = v["failed"].as_u64().unwrap_or(u64::from(PER_RUN));
            r.sent += v["sent"].as_u64().unwrap_or(u64::from(PER_RUN));
            r.failed += failed;
            if failed > 0 && r.errors.len() < 10 {
                let stderr = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
                r.errors.push(stderr.unwrap_or_default());
            }
        }
        None => {
            r.sent += u64::from(PER_RUN);
            r.failed += u64::from(PER_RUN);
            if r.errors.len() < 10 {
                r.errors.push(format!("shop load did not report: {out:?}"));
            }
        }
    }
}

//! Config-push benchmark across control-plane replicas: N simulated proxies (real protocol clients in
//! this process, each with its own mutual-TLS connection and a certificate from the mesh CA) spread over
//! `REPLICAS` real `weft-control` replicas on one real etcd, one route change at a time applied through
//! replica 0; then the same fleet on one `weft-control` on its state directory, in the same run.
//!
//! `cargo bench -p weft --bench control_replicas` (env: `PROXIES=10000`, `ROUNDS=5`, `REPLICAS=3`,
//! `STORES=etcd,dir`; `PROXIES=300 ROUNDS=2` checks the wiring in about a minute). Each proxy connects
//! to the replica its own rendezvous order puts first (`weft_proxy::control::planes::order`, what a
//! real sidecar given every replica's address does). Prints, per store: p50/p99 of the time from
//! sending the change until each proxy has it ("deliver"), until the last proxy answered it with its
//! ACK ("all acked", per round, from the simulated proxies' own answers), and until the `apply` with
//! `wait` returned (replica 0's own view of the rollout); then each process's RSS, high-water mark
//! and CPU per change (every replica, etcd, this process).

#[path = "push_common.rs"]
mod push_common;

use futures_util::StreamExt as _;
use push_common::{
    cpu_ms, memory_mib, percentile, registration, route_yaml, services_yaml, settle, SERVICES,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft::control::ControlProc;
use weft::control_sim::{Reply, SimProxy};
use weft::etcd::EtcdProc;
use weft_certs::{
    CertificateAuthority, Credential, Identity, KeyAndCsr, SpiffeId, TrustBundle, TrustDomain,
    Validity,
};

/// Proxies connecting at once (TLS handshakes in flight), as a fleet rolling out would.
const CONNECTING: usize = 100;
/// Connection attempts per proxy after the first (a refused or timed-out handshake is tried again).
const CONNECT_TRIES: usize = 4;
/// Open files this process needs besides one per simulated proxy.
const SPARE_FILES: u64 = 1024;

#[derive(Clone, Copy, PartialEq)]
enum Store {
    Etcd,
    Dir,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Etcd => "etcd",
            Store::Dir => "dir",
        }
    }
}

struct Knobs {
    proxies: usize,
    rounds: usize,
    replicas: usize,
    stores: Vec<Store>,
}

fn knobs() -> Knobs {
    let num = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    let stores = std::env::var("STORES").unwrap_or_else(|_| "etcd,dir".into());
    Knobs {
        proxies: num("PROXIES", 10_000),
        rounds: num("ROUNDS", 5),
        replicas: num("REPLICAS", 3),
        stores: stores
            .split(',')
            .filter_map(|s| match s.trim() {
                "etcd" => Some(Store::Etcd),
                "dir" => Some(Store::Dir),
                _ => None,
            })
            .collect(),
    }
}

fn main() {
    let k = knobs();
    // One socket per simulated proxy: lift the soft limit to the hard one, and say so if short.
    let files = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    assert!(
        files >= k.proxies as u64 + SPARE_FILES,
        "RLIMIT_NOFILE is {files} at most: {} proxies need {} (raise the hard limit, ulimit -Hn)",
        k.proxies,
        k.proxies as u64 + SPARE_FILES
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "control-plane push across replicas: {} proxies, {SERVICES} services, {} route changes, \
         mutual TLS, debounce 100ms, {} CPUs, RLIMIT_NOFILE {files}",
        k.proxies,
        k.rounds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut results = Vec::new();
    for &store in &k.stores {
        let replicas = if store == Store::Etcd { k.replicas } else { 1 };
        results.push(rt.block_on(run(store, replicas, k.proxies, k.rounds)));
    }
    print_tables(&results);
}

/// The control planes of one store, and the identities their proxies present.
struct Fleet {
    cps: Vec<Arc<ControlProc>>,
    /// Dropped after the replicas (fields drop in order).
    etcd: Option<EtcdProc>,
    /// One per service account `default/svc-K`.
    identities: Vec<Identity>,
}

/// Starts the control planes (replicas one after another: the first creates the mesh CA), applies
/// the services through the first and waits until every replica holds them.
fn start_fleet(store: Store, replicas: usize) -> Fleet {
    // Every simulated proxy connects from this one address: lift the per-client connection limit.
    let mut args: Vec<String> = [
        "--grace-period",
        "60s",
        "--api-max-connections-per-client",
        "100000",
    ]
    .map(String::from)
    .to_vec();
    let etcd = (store == Store::Etcd).then(|| {
        let etcd = EtcdProc::start("bench-replicas")
            .expect("etcd is not installed (apt-get install etcd-server)");
        let key = etcd.key_file().to_string_lossy().into_owned();
        args.extend(["--store".into(), etcd.url(), "--store-key-file".into(), key]);
        etcd
    });
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cps: Vec<Arc<ControlProc>> = (0..replicas)
        .map(|i| Arc::new(ControlProc::start_with(&format!("bench-{i}"), None, &args)))
        .collect();
    cps[0].apply_file("services.yaml", &services_yaml(), 0);
    for cp in &cps {
        wait_services(cp, Duration::from_secs(30));
    }
    let identities = match &etcd {
        Some(etcd) => etcd_identities(etcd),
        None => {
            let ca = weft_control::ca_dir::CaDir::open(&cps[0].state_dir().join("ca"))
                .expect("the state directory's CA");
            let bundle = std::fs::read_to_string(cps[0].bundle_path()).expect("trust bundle");
            identities(&ca.ca, &bundle)
        }
    };
    Fleet {
        cps,
        etcd,
        identities,
    }
}

/// Waits (bounded) until `cp` holds every service.
fn wait_services(cp: &ControlProc, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = cp.api("GET", "/v1/resources/Service", None);
        if got.as_array().map_or(0, Vec::len) == SERVICES {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "services never reached a replica"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The mesh CA as every replica reads it from etcd (opened with the store key), for certificates an
/// operator would sign offline.
fn etcd_identities(etcd: &EtcdProc) -> Vec<Identity> {
    use weft_control::backend::etcd::{EtcdBackend, EtcdOptions};
    let backend = EtcdBackend::connect(&EtcdOptions {
        endpoints: vec![etcd.client.to_string()],
        prefix: "/weft/".into(),
        ..Default::default()
    })
    .expect("connect to etcd");
    let key = weft_control::store_key::StoreKey::read(&etcd.key_file()).expect("store key");
    let td = TrustDomain::new("mesh.test").expect("trust domain");
    let secrets = weft_control::shared_ca::load_or_create(
        &backend,
        &key,
        Some(&td),
        Duration::from_secs(3600),
    )
    .expect("the mesh CA in etcd");
    identities(&secrets.ca, &secrets.bundle_pem)
}

/// A certificate for each service account `default/svc-K`, signed by `ca`.
fn identities(ca: &CertificateAuthority, bundle_pem: &str) -> Vec<Identity> {
    let bundle = TrustBundle::from_pem(bundle_pem).expect("trust bundle");
    (0..SERVICES)
        .map(|i| {
            let id =
                SpiffeId::parse(&format!("spiffe://mesh.test/ns/default/sa/svc-{i}")).expect("id");
            let kc = KeyAndCsr::generate(&id).expect("csr");
            let validity = Validity::starting_now(Duration::from_secs(3600));
            let chain = ca.sign_csr(kc.csr_pem(), &id, validity).expect("sign");
            let cred = Credential::from_pem(&chain, kc.key_pem()).expect("credential");
            Identity::new(cred, bundle.clone()).expect("identity")
        })
        .collect()
}

/// Which replica each proxy connects to: the first of its own rendezvous order over every replica's
/// address, as a sidecar given all of them picks.
fn first_picks(addrs: &[SocketAddr], n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let sa = format!("svc-{}", i % SERVICES);
            let seed = weft_proxy::control::planes::seed("default", &sa, &registration(i).name);
            let first = weft_proxy::control::planes::order(addrs.to_vec(), &seed, None, false)[0];
            addrs.iter().position(|a| *a == first).expect("one of them")
        })
        .collect()
}

/// Connects simulated proxy `i` to replica `pick`; a sidecar whose handshake times out on a busy
/// control plane tries again, and so does this.
async fn connect_one(fleet: &Fleet, i: usize, pick: usize) -> anyhow::Result<SimProxy> {
    let (api, identity) = (fleet.cps[pick].api, &fleet.identities[i % SERVICES]);
    let control_id = fleet.cps[0].control_id();
    let mut tries = 0;
    loop {
        let options = push_common::sim_options();
        let reg = registration(i);
        match SimProxy::connect_with(api, identity, &control_id, reg, Reply::Ack, options).await {
            Err(e) if tries < CONNECT_TRIES => {
                tries += 1;
                eprintln!("proxy {i}: connect failed ({e}); trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            done => break done,
        }
    }
}

/// Connects `n` simulated proxies, `CONNECTING` at a time, each to its first pick.
async fn connect_fleet(fleet: &Fleet, picks: &[usize]) -> Vec<SimProxy> {
    let connects = (picks.iter().enumerate()).map(|(i, &pick)| connect_one(fleet, i, pick));
    let sims: Vec<anyhow::Result<SimProxy>> = futures_util::stream::iter(connects)
        .buffered(CONNECTING)
        .collect()
        .await;
    sims.into_iter()
        .map(|s| s.expect("connect a simulated proxy"))
        .collect()
}

/// Proxies whose stream ended connect again to the same replica, as a sidecar does when its stream
/// is lost; says how many and why (the simulated side's error, the replicas' `proxy disconnected`
/// reasons). Returns how many reconnected.
async fn reconnect_ended(fleet: &Fleet, picks: &[usize], sims: &mut [SimProxy]) -> usize {
    let ended: Vec<(usize, String)> = (sims.iter().enumerate())
        .filter_map(|(i, s)| Some((i, s.seen.lock().expect("lock").ended.clone()?)))
        .collect();
    if ended.is_empty() {
        return 0;
    }
    let mut logged: std::collections::BTreeMap<String, usize> = Default::default();
    for cp in &fleet.cps {
        for line in cp
            .log()
            .lines()
            .filter(|l| l.contains("proxy disconnected"))
        {
            let reason = line.split("reason=").nth(1).unwrap_or("?");
            *logged.entry(reason.to_string()).or_default() += 1;
        }
    }
    let first: Vec<&str> = ended.iter().take(3).map(|(_, e)| e.as_str()).collect();
    eprintln!(
        "{} streams ended (first: {first:?}); the replicas logged disconnects {logged:?}; \
         connecting them again",
        ended.len()
    );
    for (i, _) in &ended {
        let sim = connect_one(fleet, *i, picks[*i]).await;
        sims[*i] = sim.expect("connect a simulated proxy again");
    }
    ended.len()
}

/// What one round measured, in milliseconds from sending the change.
struct Round {
    /// When each proxy had the change.
    deliver: Vec<f64>,
    /// When the last proxy had answered it.
    all_acked: f64,
    /// When the `apply` with `wait` returned.
    applied: f64,
    /// Proxies in the rollout the `apply` waited for.
    rollout_proxies: usize,
}

/// One route change through replica 0; waits (bounded) until every proxy answered it.
async fn round(fleet: &Fleet, sims: &[SimProxy], i: usize) -> Round {
    let before: Vec<usize> = sims.iter().map(SimProxy::snapshot_count).collect();
    let cp = fleet.cps[0].clone();
    let text = route_yaml(10 + (i as u32 % 2) * 40);
    let t0 = Instant::now();
    let resp = tokio::task::spawn_blocking(move || cp.apply_file("route.yaml", &text, 30_000))
        .await
        .expect("apply");
    let applied = t0.elapsed();
    let rollout = &resp["rollout"];
    let states = rollout["proxies"].as_array().cloned().unwrap_or_default();
    let acked = states.iter().filter(|p| p["state"] == "acked").count();
    if rollout["complete"] != true {
        let ended: Vec<String> = (sims.iter())
            .filter_map(|s| s.seen.lock().expect("lock").ended.clone())
            .take(3)
            .collect();
        eprintln!(
            "change {i}: the apply's rollout is incomplete: {acked} of {} acked after {} ms; \
             simulated proxies whose stream ended (first 3): {ended:?}",
            states.len(),
            rollout["waitedMs"]
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // A proxy whose stream ends meanwhile reconnects before the next change; this one leaves it out.
    let waiting = |s: &SimProxy, b: usize| {
        let seen = s.seen.lock().expect("lock");
        seen.answered.len() <= b && seen.ended.is_none()
    };
    loop {
        let missing = (sims.iter().zip(&before))
            .filter(|(s, &b)| waiting(s, b))
            .count();
        if missing == 0 {
            break;
        }
        if Instant::now() >= deadline {
            let ended = sims
                .iter()
                .filter(|s| s.seen.lock().expect("lock").ended.is_some());
            panic!(
                "{missing} proxies never answered change {i} ({} streams ended)",
                ended.count()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ms = |at: Instant| at.duration_since(t0).as_secs_f64() * 1000.0;
    let (mut deliver, mut all_acked) = (Vec::with_capacity(sims.len()), 0f64);
    let mut lost = 0;
    for (s, &b) in sims.iter().zip(&before) {
        let seen = s.seen.lock().expect("lock");
        match (seen.arrivals.get(b), seen.answered.get(b)) {
            (Some(&arrived), Some(&answered)) => {
                deliver.push(ms(arrived));
                all_acked = all_acked.max(ms(answered));
            }
            _ => lost += 1,
        }
    }
    if lost > 0 {
        eprintln!("change {i}: {lost} proxies' streams ended before they had it (left out)");
    }
    Round {
        deliver,
        all_acked,
        applied: applied.as_secs_f64() * 1000.0,
        rollout_proxies: states.len(),
    }
}

/// One process's figures.
struct Proc {
    name: String,
    /// Proxies connected to it, and p50/p99 of their delivery times (replicas only).
    proxies: Option<(usize, f64, f64)>,
    rss: f64,
    hwm: f64,
    cpu_per_change: f64,
    idle_cpu_per_s: f64,
}

struct StoreResult {
    store: Store,
    replicas: usize,
    proxies: usize,
    deliver: Vec<f64>,
    all_acked: Vec<f64>,
    applied: Vec<f64>,
    procs: Vec<Proc>,
}

/// The processes measured: every replica, etcd, and this one (`None`).
fn pids(fleet: &Fleet) -> Vec<(String, Option<u32>)> {
    let mut out: Vec<(String, Option<u32>)> = (fleet.cps.iter().enumerate())
        .map(|(i, cp)| (format!("replica-{i}"), cp.pid()))
        .collect();
    if let Some(etcd) = &fleet.etcd {
        out.push(("etcd".into(), etcd.pid()));
    }
    out.push(("bench".into(), None));
    out
}

/// How many proxies replica `replica` served, and p50/p99 of their delivery times over every round.
fn replica_deliveries(rounds: &[Round], picks: &[usize], replica: usize) -> (usize, f64, f64) {
    let mut mine: Vec<f64> = rounds
        .iter()
        .flat_map(|r| r.deliver.iter().zip(picks))
        .filter(|(_, &p)| p == replica)
        .map(|(d, _)| *d)
        .collect();
    let n = picks.iter().filter(|&&p| p == replica).count();
    (n, percentile(&mut mine, 0.50), percentile(&mut mine, 0.99))
}

fn cpu_all(pids: &[(String, Option<u32>)]) -> Vec<f64> {
    pids.iter().map(|(_, pid)| cpu_ms(*pid)).collect()
}

async fn run(store: Store, replicas: usize, n: usize, rounds: usize) -> StoreResult {
    let fleet = tokio::task::spawn_blocking(move || start_fleet(store, replicas))
        .await
        .expect("start the control planes");
    let addrs: Vec<SocketAddr> = fleet.cps.iter().map(|cp| cp.api).collect();
    let picks = first_picks(&addrs, n);
    let started = Instant::now();
    let mut sims = connect_fleet(&fleet, &picks).await;
    let connected = started.elapsed();
    let within = Duration::from_secs(120) + Duration::from_millis(30) * n as u32;
    settle(&sims, within).await;
    for _ in 0..3 {
        if reconnect_ended(&fleet, &picks, &mut sims).await == 0 {
            break;
        }
        settle(&sims, within).await;
    }
    eprintln!(
        "{}: {n} proxies connected in {:.1} s, settled after {:.1} s",
        store.name(),
        connected.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let pids = pids(&fleet);
    // The fleet at rest (HTTP/2 keep-alives, nothing to push): the CPU every change adds to.
    let idle_window = Duration::from_secs(2);
    let idle_before = cpu_all(&pids);
    tokio::time::sleep(idle_window).await;
    let cpu_before = cpu_all(&pids);
    let mut done = Vec::with_capacity(rounds);
    for i in 0..rounds {
        if reconnect_ended(&fleet, &picks, &mut sims).await > 0 {
            settle(&sims, within).await;
        }
        done.push(round(&fleet, &sims, i).await);
        // Lets the last acks reach the replicas before the next change.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu_after = cpu_all(&pids);
    eprintln!(
        "{}: the apply waited for {} proxies' acks (replica 0's view)",
        store.name(),
        done.first().map_or(0, |r| r.rollout_proxies)
    );
    let procs = pids
        .iter()
        .enumerate()
        .map(|(i, (name, pid))| {
            let (rss, hwm) = memory_mib(pid.unwrap_or(std::process::id()));
            Proc {
                name: name.clone(),
                proxies: (i < replicas).then(|| replica_deliveries(&done, &picks, i)),
                rss,
                hwm,
                cpu_per_change: (cpu_after[i] - cpu_before[i]) / rounds as f64,
                idle_cpu_per_s: (cpu_before[i] - idle_before[i]) / idle_window.as_secs_f64(),
            }
        })
        .collect();
    drop(sims);
    drop(fleet);
    StoreResult {
        store,
        replicas,
        proxies: n,
        deliver: done
            .iter()
            .flat_map(|r| r.deliver.iter().copied())
            .collect(),
        all_acked: done.iter().map(|r| r.all_acked).collect(),
        applied: done.iter().map(|r| r.applied).collect(),
        procs,
    }
}

fn print_tables(results: &[StoreResult]) {
    println!(
        "{:<6} {:>8} {:>8} {:>12} {:>12} {:>14} {:>14} {:>12} {:>12}",
        "store",
        "replicas",
        "proxies",
        "deliver p50",
        "deliver p99",
        "all acked p50",
        "all acked p99",
        "apply p50",
        "apply p99"
    );
    for r in results {
        let (mut d, mut a, mut w) = (r.deliver.clone(), r.all_acked.clone(), r.applied.clone());
        println!(
            "{:<6} {:>8} {:>8} {:>9.1} ms {:>9.1} ms {:>11.1} ms {:>11.1} ms {:>9.1} ms {:>9.1} ms",
            r.store.name(),
            r.replicas,
            r.proxies,
            percentile(&mut d, 0.50),
            percentile(&mut d, 0.99),
            percentile(&mut a, 0.50),
            percentile(&mut a, 0.99),
            percentile(&mut w, 0.50),
            percentile(&mut w, 0.99),
        );
    }
    println!(
        "{:<6} {:<10} {:>8} {:>12} {:>12} {:>9} {:>9} {:>14} {:>14}",
        "store",
        "process",
        "proxies",
        "deliver p50",
        "deliver p99",
        "RSS MiB",
        "HWM MiB",
        "CPU ms/change",
        "idle CPU ms/s"
    );
    for r in results {
        for p in &r.procs {
            let (n, p50, p99) = match p.proxies {
                Some((n, p50, p99)) => (
                    n.to_string(),
                    format!("{p50:.1} ms"),
                    format!("{p99:.1} ms"),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            println!(
                "{:<6} {:<10} {:>8} {:>12} {:>12} {:>9.1} {:>9.1} {:>14.1} {:>14.1}",
                r.store.name(),
                p.name,
                n,
                p50,
                p99,
                p.rss,
                p.hwm,
                p.cpu_per_change,
                p.idle_cpu_per_s
            );
        }
    }
}

//! Sidecars with several control-plane addresses (`control.address` a list, or a name resolving to
//! several): they move to the next when theirs is killed or goes silent, serving throughout, and take
//! changes from the new one; they join past addresses that are down, silent or not the mesh's control
//! plane; `--api-advertise` given twice reaches `GET /v1/mesh`.
//!
//! Two control planes never serve one state directory at once here: the second starts on the first's
//! directory once the first is dead (or stopped), standing for a replica at another address.

use http::{Method, StatusCode};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft::apps::{client, http as http_app};
use weft::control::ControlProc;
use weft::mesh::{backend_service, MeshProxyBuilder};
use weft::net::free_addr;
use weft::pki::TempDir;
use weft::proxy::ProxyProc;

const ROUTE: &str = "apiVersion: weft.dev/v1
kind: HTTPRoute
metadata:
  name: backend
spec:
  parentRefs:
    - name: backend
  rules:
    - matches:
        - path: {type: PathPrefix, value: /after-failover}
      backendRefs:
        - name: backend
          weight: 1
";

/// A backend proxy in front of an app and a frontend proxy with a listener for it, both given
/// `control` as their `control.address` (and `hosts` as /etc/hosts, when set).
struct Pair {
    _app: weft::apps::AppHandle,
    backend: ProxyProc,
    frontend: ProxyProc,
}

impl Pair {
    async fn start(cp: &ControlProc, control: &str, hosts: Option<PathBuf>, extra: &str) -> Pair {
        let app = http_app::serve_on_loopback("backend");
        let resources = format!("{}{extra}", backend_service(app.addr().port()));
        cp.apply_file("mesh.yaml", &resources, 0);
        let with = |b: MeshProxyBuilder| {
            let b = b.control_address(control);
            match &hosts {
                Some(h) => b.hosts_file(h.clone()),
                None => b,
            }
        };
        let backend = with(
            MeshProxyBuilder::new(cp, "backend-1", "default", "backend")
                .token(&cp.token("default", "backend", 600))
                .app_port(app.addr().port()),
        )
        .start();
        let frontend = with(
            MeshProxyBuilder::new(cp, "frontend-1", "default", "frontend")
                .token(&cp.token("default", "frontend", 600))
                .service("backend", 9080, "http"),
        )
        .start();
        let pair = Pair {
            _app: app,
            backend,
            frontend,
        };
        pair.wait_routable().await;
        pair
    }

    fn proxies(&self) -> [&ProxyProc; 2] {
        [&self.backend, &self.frontend]
    }

    async fn wait_routable(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = get(self.frontend.outbound[0]).await {
                if r == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "backend never reachable\nfrontend:\n{}\nbackend:\n{}",
                self.frontend.log(),
                self.backend.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Both proxies said they moved from `from` to `to`, their stream is open to `to`, and each
    /// counted one failover.
    fn assert_moved(&self, from: SocketAddr, to: SocketAddr, within: Duration) {
        for p in self.proxies() {
            let line = format!("control plane failover from={from} to={to}");
            assert!(
                p.wait_log(&line, within),
                "{} never logged `{line}`:\n{}",
                p.name,
                p.log()
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            let on = format!("address=\"{to}\"");
            while p.metric("weft_proxy_control_plane", &[&on]) != 1.0 {
                assert!(Instant::now() < deadline, "{}", p.metrics());
                std::thread::sleep(Duration::from_millis(50));
            }
            let was = format!("address=\"{from}\"");
            assert_eq!(p.metric("weft_proxy_control_plane", &[&was]), 0.0);
            assert_eq!(p.metric("weft_proxy_control_failovers_total", &[]), 1.0);
        }
    }
}

async fn get(addr: SocketAddr) -> anyhow::Result<StatusCode> {
    let r = client::http1(addr, Method::GET, "/info", &[], bytes::Bytes::new()).await?;
    Ok(r.status)
}

/// Requests one after another until `stop` (at most 60 s and 100,000 requests): (ok, failures).
async fn steady_load(
    addr: SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, Vec<String>) {
    let (mut ok, mut failed) = (0u64, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !*stop.borrow() && Instant::now() < deadline && ok + (failed.len() as u64) < 100_000 {
        match get(addr).await {
            Ok(StatusCode::OK) => ok += 1,
            Ok(s) => failed.push(s.to_string()),
            Err(e) => failed.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, failed)
}

/// A route applied through `cp` with a wait is acknowledged by both proxies, which then serve it.
fn assert_change_acked(cp: &ControlProc, pair: &Pair) {
    let resp = cp.apply_file("route.yaml", ROUTE, 15_000);
    let rollout = &resp["rollout"];
    assert_eq!(rollout["complete"], true, "{resp:#}");
    let acked: Vec<&str> = rollout["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "acked")
        .filter_map(|p| p["proxy"].as_str())
        .collect();
    assert!(
        acked.contains(&"default/frontend-1") && acked.contains(&"default/backend-1"),
        "{resp:#}"
    );
    let (_, config) = weft::net::http_get(pair.frontend.admin, "/config").unwrap();
    assert!(config.contains("/after-failover"), "{config}");
}

/// Leaves of 20 s: renewal (at 60-70% of that) must happen through the list during the test.
const SHORT_LEAVES: &str = "---
apiVersion: weft.dev/v1
kind: MeshConfig
metadata:
  name: default
spec:
  certificateTtl: 20s
";

/// Control plane on `a`; the pair connected; kill -9 it and start one on `b` with the same state:
/// the pair moves to `b` under a request loop that fails nothing, a change through `b` is acked, and
/// (with `renews`: 20 s leaves) each proxy renews its certificate with `b`.
async fn killed_and_replaced(
    tag: &str,
    (a, b): (SocketAddr, SocketAddr),
    control: &str,
    hosts: Option<PathBuf>,
    renews: bool,
) {
    let mut cp_a = ControlProc::start_with(&format!("{tag}-a"), None, &[]);
    if cp_a.api != a {
        cp_a.kill9();
        cp_a.api = a;
        cp_a.restart();
    }
    let extra = if renews { SHORT_LEAVES } else { "" };
    let pair = Pair::start(&cp_a, control, hosts, extra).await;
    for p in pair.proxies() {
        assert!(p.wait_log(
            &format!("config stream open control={a}"),
            Duration::from_secs(10)
        ));
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(steady_load(pair.frontend.outbound[0], stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cp_a.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cp_b =
        tokio::task::block_in_place(|| ControlProc::start_sharing(&format!("{tag}-b"), &cp_a, b));
    tokio::task::block_in_place(|| pair.assert_moved(a, b, Duration::from_secs(30)));
    tokio::task::block_in_place(|| assert_change_acked(&cp_b, &pair));
    if renews {
        // Only `b` is up: a renewal that succeeds now went through the list to it.
        let renewals =
            |p: &ProxyProc| p.metric("weft_proxy_cert_renewals_total", &["result=\"ok\""]);
        let before: Vec<f64> = pair.proxies().iter().map(|p| renewals(p)).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while pair
            .proxies()
            .iter()
            .zip(&before)
            .any(|(p, b)| renewals(p) <= *b)
        {
            assert!(
                Instant::now() < deadline,
                "no renewal through {b}:\n{}",
                pair.frontend.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 100, "too little traffic to judge: {ok}");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok
    );
    println!("{tag}: moved {a} -> {b} under {ok} requests, 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_fails_over_to_the_next_control_plane_serving_throughout() {
    let (a, b) = (free_addr(), free_addr());
    killed_and_replaced("fo-list", (a, b), &format!("[{a}, {b}]"), None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_two_addresses_fails_over_the_same_way() {
    // One port on two loopback addresses, both under one name in the proxies' hosts file.
    let port = free_addr().port();
    let a = SocketAddr::from(([127, 0, 0, 2], port));
    let b = SocketAddr::from(([127, 0, 0, 3], port));
    let dir = TempDir::new("fo-hosts");
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1\tlocalhost\n127.0.0.2\tcontrol.failover.test\n127.0.0.3\tcontrol.failover.test\n",
    )
    .unwrap();
    let control = format!("control.failover.test:{port}");
    killed_and_replaced("fo-name", (a, b), &control, Some(hosts), false).await;
}

/// A TCP listener that accepts and then says nothing (a peer that is there but never answers), and
/// counts what it accepted.
struct Silent {
    addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Silent {
    fn start() -> Silent {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded: the test's proxies make a handful of attempts.
            for s in l.incoming().take(64).flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        });
        Silent { addr, accepted }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A TLS server with a certificate from the mesh's own CA for another identity than the control
/// plane's; counts the handshakes that completed (none should: the proxy refuses its identity).
struct Impostor {
    addr: SocketAddr,
    handshakes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    attempts: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Impostor {
    async fn start(cp: &ControlProc) -> Impostor {
        let identity = cp.offline_identity("weft-system", "impostor", Duration::from_secs(600));
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config_optional_client());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (done, tried) = (handshakes.clone(), attempts.clone());
        tokio::spawn(async move {
            for _ in 0..64 {
                let Ok((s, _)) = l.accept().await else { return };
                tried.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if acceptor.accept(s).await.is_ok() {
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        Impostor {
            addr,
            handshakes,
            attempts,
        }
    }
}

/// A workload name whose order of `addrs` ends with `last`: it meets every other address first.
fn name_meeting_last(sa: &str, addrs: &[SocketAddr], last: SocketAddr) -> String {
    (0..1000)
        .map(|i| format!("{sa}-{i}"))
        .find(|name| {
            let seed = weft_proxy::control::planes::seed("default", sa, name);
            weft_proxy::control::planes::order(addrs.to_vec(), &seed, None, false).last()
                == Some(&last)
        })
        .expect("some name orders the good address last")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_goes_past_addresses_that_are_down_silent_or_not_the_control_plane() {
    let cp = ControlProc::start("fo-join");
    // Another mesh's control plane: the right SPIFFE ID from a CA that is not the pinned one.
    let foreign = ControlProc::start("fo-join-foreign");
    let impostor = Impostor::start(&cp).await;
    let silent = Silent::start();
    let down = free_addr();
    let list = [down, silent.addr, impostor.addr, foreign.api, cp.api];
    let name = name_meeting_last("frontend", &list, cp.api);
    let control = format!(
        "[{}]",
        list.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let started = Instant::now();
    let proxy = MeshProxyBuilder::new(&cp, &name, "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .control_address(&control)
        .start();
    let took = started.elapsed();
    let log = proxy.log();
    assert!(log.contains("joined the mesh"), "{log}");
    assert!(
        log.contains(&format!("config stream open control={}", cp.api)),
        "{log}"
    );
    // The silent one held the join for its TLS handshake timeout (5 s), no longer.
    assert!(silent.accepted() >= 1, "the silent address was never tried");
    assert!(took < Duration::from_secs(20), "joined after {took:?}");
    // The impostor and the foreign control plane were tried and refused: no handshake completed
    // with the impostor, nothing registered with the foreign control plane.
    assert!(
        impostor.attempts.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the impostor was never tried"
    );
    assert_eq!(
        impostor
            .handshakes
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let status = foreign.api("GET", "/v1/status", None);
    assert_eq!(
        status["proxies"].as_array().map(Vec::len),
        Some(0),
        "{status:#}"
    );
    cp.wait_status(Duration::from_secs(10), |s| {
        s["proxies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["connected"] == true))
    });
    // Joining is not a failover: the proxy never used another address.
    assert_eq!(proxy.metric("weft_proxy_control_failovers_total", &[]), 0.0);
    println!("joined past 4 bad addresses in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_that_stops_answering_is_left_within_ten_seconds() {
    let (a, b) = (free_addr(), free_addr());
    let mut cp_a = ControlProc::start_with("fo-silent-a", None, &[]);
    cp_a.kill9();
    cp_a.api = a;
    cp_a.restart();
    let pair = Pair::start(&cp_a, &format!("[{a}, {b}]"), None, "").await;
    for p in pair.proxies() {
        assert!(p.wait_log(
            &format!("config stream open control={a}"),
            Duration::from_secs(10)
        ));
    }
    // Stopped, not killed: its connections stay open and answer nothing (no reset, no GOAWAY).
    let pid = cp_a.pid().expect("running") as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let stopped = Instant::now();
    let cp_b = tokio::task::block_in_place(|| ControlProc::start_sharing("fo-silent-b", &cp_a, b));
    tokio::task::block_in_place(|| pair.assert_moved(a, b, Duration::from_secs(20)));
    let took = stopped.elapsed();
    // 5 s without a frame, 5 s for the PING's answer, then at once to the next address; slack for
    // a busy machine.
    assert!(took < Duration::from_secs(16), "left after {took:?}");
    for p in pair.proxies() {
        assert!(p.log().contains("keep-alive"), "{}", p.log());
    }
    tokio::task::block_in_place(|| assert_change_acked(&cp_b, &pair));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    cp_a.kill9();
    println!("left a silent control plane after {took:?}");
}

#[test]
fn every_advertised_address_reaches_get_mesh() {
    let (a, b) = (free_addr(), free_addr());
    let advertise = format!("{a},{b}");
    let cp = ControlProc::start_with("fo-advertise", None, &["--api-advertise", &advertise]);
    let mesh = cp.api("GET", "/v1/mesh", None);
    assert_eq!(mesh["proxyAddress"], a.to_string(), "{mesh:#}");
    assert_eq!(
        mesh["proxyAddresses"],
        serde_json::json!([a.to_string(), b.to_string()]),
        "{mesh:#}"
    );
    // The flag given twice says the same.
    let c = free_addr();
    let again = ControlProc::start_with(
        "fo-advertise-2",
        None,
        &[
            "--api-advertise",
            &a.to_string(),
            "--api-advertise",
            &c.to_string(),
        ],
    );
    let mesh = again.api("GET", "/v1/mesh", None);
    assert_eq!(
        mesh["proxyAddresses"],
        serde_json::json!([a.to_string(), c.to_string()])
    );
    // One address: the answer as before, with no list.
    let one = ControlProc::start_with("fo-advertise-1", None, &["--api-advertise", &a.to_string()]);
    let mesh = one.api("GET", "/v1/mesh", None);
    assert_eq!(mesh["proxyAddress"], a.to_string());
    assert!(mesh.get("proxyAddresses").is_none(), "{mesh:#}");
}

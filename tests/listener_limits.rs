//! The proxy's own listeners against unauthenticated clients, with real `weft-proxy` processes: floods
//! of idle and slow-header connections on the health and admin ports, the open-file limit, and inbound traffic before a control-plane proxy has its first config (refused,
//! never allowed by an empty policy set). Every wait is bounded.

use bytes::Bytes;
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft::apps;
use weft::net::{closed_within, connect_tcp as connect, free_addr, http_get, wait_for_port};
use weft::pki::{Pki, TempDir};
use weft::proxy::{launch, Launch, ProxyBuilder, ProxyProc};

const CAP: usize = 8;

/// `CAP` connections that never finish a request head: half send nothing, half stop mid-head.
async fn hold_cap(addr: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for i in 0..CAP {
        let mut s = connect(addr).await;
        if i % 2 == 1 {
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .expect("partial head");
        }
        held.push(s);
        // Sequential accepts, so these are the ones holding the slots.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held
}

/// A GET on a fresh connection that must answer 200 within a second.
fn prompt_get(addr: SocketAddr, path: &str) -> String {
    let started = Instant::now();
    let (status, body) = http_get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "GET {path} took {:?}",
        started.elapsed()
    );
    body
}

async fn flood_then_recover(p: &ProxyProc, addr: SocketAddr, listener: &str, paths: &[&str]) {
    let mut held = hold_cap(addr).await;
    // Beyond the cap: closed at accept.
    for i in 0..CAP {
        let mut s = connect(addr).await;
        assert!(
            closed_within(&mut s, Duration::from_millis(800)).await,
            "{listener}: connection {} beyond the cap of {CAP} was not closed",
            CAP + i
        );
    }
    // The held ones are cut by the header-read timeout (1s here).
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(4)).await,
            "{listener}: held connection {i} (idle or slow head) was not cut"
        );
    }
    // A new client is served at once.
    for path in paths {
        prompt_get(addr, path);
    }
    let refused = p.metric(
        "weft_proxy_rejections_total",
        &[
            &format!("listener=\"{listener}\""),
            "reason=\"max_connections\"",
        ],
    );
    assert!(
        refused >= CAP as f64,
        "{listener}: {refused} counted as max_connections\n{}",
        p.metrics()
    );
    assert!(
        p.log().contains("listener is at its connection limit"),
        "{listener}: the cap is logged"
    );
}

#[tokio::test]
async fn health_and_admin_floods_are_capped_and_cut_and_probes_still_answer() {
    let pki = Pki::new("weft.test");
    let b = ProxyBuilder::new("flooded", &pki.workload("default", "api"))
        .extra_yaml("limits:\n  max_admin_connections: 8\n  header_read_timeout: 1s\n");
    let p = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();
    let (health, admin) = (p.health, p.admin);
    flood_then_recover(&p, health, "health", &["/ready", "/metrics", "/live"]).await;
    flood_then_recover(&p, admin, "admin", &["/config", "/identity"]).await;
    let slow = p.metric(
        "weft_proxy_rejections_total",
        &["listener=\"health\"", "reason=\"timeout\""],
    );
    assert!(slow >= 1.0, "slow heads counted as timeouts: {slow}");
}

/// The test process lowers its own soft limit; weft-proxy and weft-control inherit it and must raise it.
#[test]
fn open_file_limit_is_raised_to_the_hard_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only touch the struct passed.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let hard = lim.rlim_max;
    assert!(hard > 512, "the hard limit here is {hard}");
    lim.rlim_cur = 256;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let p = ProxyBuilder::new("nofile", &Pki::new("weft.test").workload("default", "api")).start();
    assert_eq!(soft_nofile(p.pid()), hard, "weft-proxy");
    let control = weft::control::ControlProc::start("nofile");
    assert_eq!(
        soft_nofile(control.pid().expect("running")),
        hard,
        "weft-control"
    );
}

fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("soft limit in {line:?}"))
}

/// A proxy run by a control plane that has not answered yet (its certificate is cached, its config
/// is not): peers' requests get 503 with the reason, TCP streams are refused, plaintext is closed,
/// nothing reaches the app.
#[tokio::test]
async fn before_its_first_config_a_proxy_refuses_inbound() {
    let pki = Pki::new("weft.test");
    let server = pki.workload("default", "api");
    let frontend = pki.workload("default", "frontend");
    let http_app = apps::http::serve(weft::pair::bind().await, "api");
    let tcp_app = apps::tcp::echo(weft::pair::bind().await);
    // A control plane that never answers: the listener is bound but nothing accepts.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new("noconfig");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::copy(&server.cert, state.join("cert.pem")).unwrap();
    std::fs::copy(&server.key, state.join("key.pem")).unwrap();
    std::fs::copy(&server.bundle, state.join("bundle.pem")).unwrap();
    let (tunnel, admin, health) = (free_addr(), free_addr(), free_addr());
    let (intercept_out, intercept_in) = (free_addr(), free_addr());
    let yaml = format!(
        "control:\n  address: {}\n  ca_bundle: {}\n  server_identity: spiffe://weft.test/ns/weft-system/sa/weft-control\n  state_dir: {}\n\
workload:\n  name: api\n  service_account: api\n  address: 127.0.0.1\n  ports: [{}, {}]\n\
tunnel:\n  listen: {tunnel}\nadmin: {admin}\nhealth: {health}\n\
interception:\n  outbound: {intercept_out}\n  inbound: {intercept_in}\n  mtls_mode: PERMISSIVE\n",
        silent.local_addr().unwrap(),
        server.bundle.display(),
        state.display(),
        http_app.addr().port(),
        tcp_app.addr().port(),
    );
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let p = launch(Launch {
        name: "noconfig".into(),
        config,
        dir,
        tunnel,
        admin,
        health,
        outbound: Vec::new(),
        id: server.id.clone(),
        worker_threads: None,
        env: Vec::new(),
    });
    assert!(
        wait_for_port(tunnel, Duration::from_secs(20)),
        "tunnel not up:\n{}",
        p.log()
    );
    let b = ProxyBuilder::new("caller", &frontend)
        .outbound(tunnel, &server.id, http_app.addr().port(), "auto")
        .outbound(tunnel, &server.id, tcp_app.addr().port(), "auto");
    let caller = tokio::task::spawn_blocking(move || b.start())
        .await
        .unwrap();

    let r = apps::client::http1(caller.outbound[0], Method::GET, "/info", &[], Bytes::new())
        .await
        .expect("an answer");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(
        r.text().contains("no config from the control plane"),
        "{}",
        r.text()
    );
    let echoed = apps::client::tcp_half_close(caller.outbound[1], b"secret").await;
    assert!(
        !matches!(&echoed, Ok(b) if b.starts_with(b"secret")),
        "a TCP stream reached the app: {echoed:?}"
    );
    assert!(
        p.metric(
            "weft_proxy_rejections_total",
            &["listener=\"tunnel\"", "reason=\"no_config\""]
        ) >= 2.0,
        "{}",
        p.metrics()
    );
    assert!(p.log().contains("no config from the control plane yet"));
    // Plaintext (PERMISSIVE) on the intercepted-inbound listener: closed before anything is read.
    let mut plain = connect(intercept_in).await;
    let _ = plain
        .write_all(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(closed_within(&mut plain, Duration::from_secs(2)).await);
    assert_eq!(
        p.metric(
            "weft_proxy_rejections_total",
            &["listener=\"inbound\"", "reason=\"no_config\""]
        ),
        1.0,
        "{}",
        p.metrics()
    );
    assert_eq!(http_get(health, "/ready").map(|r| r.0).ok(), Some(503));
}

/// An opaque TCP stream through the pair on which nothing moves for `limits.idle_timeout` is closed
/// (on both sides of the hop, counted); one that keeps talking, with every gap under the limit, is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_opaque_stream_is_closed_after_the_idle_timeout() {
    let idle = "limits:\n  idle_timeout: 1s\n".to_string();
    let p = weft::pair::Pair::start_with(weft::pair::PairOptions {
        client_yaml: idle.clone(),
        server_yaml: idle,
        ..Default::default()
    })
    .await;
    let mut talking = connect(p.tcp()).await;
    let mut silent = connect(p.tcp()).await;
    let mut buf = [0u8; 16];
    for s in [&mut talking, &mut silent] {
        s.write_all(b"hi").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(&buf[..n], b"hi");
    }
    let started = Instant::now();
    // 2.4 s of traffic on one, every gap 200 ms; nothing on the other.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        talking.write_all(b"x").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), talking.read(&mut buf))
            .await
            .expect("a talking stream stays open")
            .unwrap();
        assert_eq!(&buf[..n], b"x", "a talking stream stays open");
    }
    assert!(
        closed_within(&mut silent, Duration::from_millis(500)).await,
        "the silent stream is closed after {:?}",
        started.elapsed()
    );
    let idle_closed =
        |p: &ProxyProc| p.metric("weft_proxy_rejections_total", &["reason=\"idle_timeout\""]);
    assert!(idle_closed(&p.client) >= 1.0, "{}", p.client.metrics());
    assert!(idle_closed(&p.server) >= 1.0, "{}", p.server.metrics());
}

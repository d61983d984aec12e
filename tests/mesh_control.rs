//! Control plane + real proxies + real apps: identity issued by the control plane and verified end to end,
//! join-token refusals, config pushed and acknowledged, a bad file in the watched directory, the control
//! plane killed under traffic, a proxy restarted without the control plane, and rotation of short leaves
//! under continuous traffic.

use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use weft::apps::{client, http as http_app};
use weft::control::ControlProc;
use weft::mesh::{backend_service, MeshProxyBuilder};
use weft::pki::TempDir;
use weft::proxy::ProxyProc;

/// A control plane with the `backend` service, a backend proxy in front of an app, and a frontend proxy
/// with a listener for the service.
struct Mesh {
    cp: ControlProc,
    backend_app: weft::apps::AppHandle,
    backend: ProxyProc,
    frontend: ProxyProc,
}

impl Mesh {
    async fn start(tag: &str, cp_args: &[&str], cert_ttl: Option<&str>) -> Mesh {
        let cp = ControlProc::start_with(tag, None, cp_args);
        let backend_app = http_app::serve_on_loopback("backend");
        let mut resources = backend_service(backend_app.addr().port());
        if let Some(ttl) = cert_ttl {
            resources.push_str(&format!(
                "---\napiVersion: weft.dev/v1\nkind: MeshConfig\nmetadata:\n  name: default\nspec:\n  certificateTtl: {ttl}\n"
            ));
        }
        cp.apply_file("mesh.yaml", &resources, 0);
        let backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
            .token(&cp.token("default", "backend", 600))
            .app_port(backend_app.addr().port())
            .start();
        let frontend = MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
            .token(&cp.token("default", "frontend", 600))
            .service("backend", 9080, "http")
            .start();
        let m = Mesh {
            cp,
            backend_app,
            backend,
            frontend,
        };
        m.wait_routable().await;
        m
    }

    fn listener(&self) -> SocketAddr {
        self.frontend.outbound[0]
    }

    /// Waits until a request through the frontend reaches the backend app.
    async fn wait_routable(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client::http1(
                self.listener(),
                Method::GET,
                "/info",
                &[],
                bytes::Bytes::new(),
            )
            .await
            {
                if r.status == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "backend never reachable through the mesh\nfrontend:\n{}\nbackend:\n{}\ncontrol:\n{}",
                self.frontend.log(),
                self.backend.log(),
                self.cp.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends requests one after another until `stop`, counting failures (bounded by time and count).
async fn steady_load(
    addr: SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, u64, Vec<String>) {
    let (mut ok, mut failed, mut why) = (0u64, 0u64, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !*stop.borrow() && Instant::now() < deadline && ok + failed < 200_000 {
        match client::http1(addr, Method::GET, "/info", &[], bytes::Bytes::new()).await {
            Ok(r) if r.status == StatusCode::OK => ok += 1,
            Ok(r) => {
                failed += 1;
                why.push(format!("{} {}", r.status, r.text()));
            }
            Err(e) => {
                failed += 1;
                why.push(e.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, failed, why)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_is_issued_by_the_control_plane_and_verified_end_to_end() {
    let m = Mesh::start("e2e-id", &[], None).await;
    let r = client::http1(m.listener(), Method::GET, "/info", &[], bytes::Bytes::new())
        .await
        .unwrap();
    let info = r.json().unwrap();
    assert_eq!(info["app"], "backend");
    let xfcc = info["headers"]["x-forwarded-client-cert"].as_str().unwrap();
    assert!(
        xfcc.contains("URI=spiffe://mesh.test/ns/default/sa/frontend")
            && xfcc.contains("By=spiffe://mesh.test/ns/default/sa/backend"),
        "{xfcc}"
    );
    let (_, id) = weft::net::http_get(m.frontend.admin, "/identity").unwrap();
    assert!(
        id.contains("spiffe://mesh.test/ns/default/sa/frontend"),
        "{id}"
    );
    let status = m.cp.wait_status(Duration::from_secs(5), |s| {
        s["proxies"].as_array().unwrap().len() == 2
    });
    for p in status["proxies"].as_array().unwrap() {
        assert_eq!(p["connected"], true, "{p}");
        assert!(p["ackedVersion"].is_u64(), "{p}");
    }
    assert!(m.backend_app.accepted() >= 1);
}

fn refused_start(cp: &ControlProc, sa: &str, token: &str, tag: &str) -> (Option<i32>, String) {
    let mut p = MeshProxyBuilder::new(cp, tag, "default", sa)
        .token(token)
        .launch();
    let status = p.wait_exit(Duration::from_secs(20));
    (status.and_then(|s| s.code()), p.log())
}

#[test]
fn wrong_identity_expired_and_revoked_tokens_are_refused_with_the_reason() {
    let cp = ControlProc::start("e2e-refuse");
    // A token for `reviews` used by a proxy asking to be `admin`.
    let token = cp.token("default", "reviews", 600);
    let (code, log) = refused_start(&cp, "admin", &token, "wrong-id");
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("sa/admin") && log.contains("sa/reviews"),
        "{log}"
    );
    assert!(cp.log().contains("certificate request refused"));

    let expired = cp.token("default", "reviews", 0);
    let (code, log) = refused_start(&cp, "reviews", &expired, "expired");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("expired"), "{log}");

    let revoked = cp.token("default", "reviews", 600);
    let id = revoked.split('.').nth(1).unwrap().to_string();
    cp.api("DELETE", &format!("/v1/tokens/{id}"), None);
    let (code, log) = refused_start(&cp, "reviews", &revoked, "revoked");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("revoked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_reaches_every_proxy_and_is_acked() {
    let m = Mesh::start("e2e-route", &[], None).await;
    let route = "apiVersion: weft.dev/v1
kind: HTTPRoute
metadata:
  name: backend
spec:
  parentRefs:
    - name: backend
  rules:
    - matches:
        - path: {type: PathPrefix, value: /v2}
      backendRefs:
        - name: backend
          weight: 1
";
    let resp = m.cp.apply_file("route.yaml", route, 10_000);
    let rollout = &resp["rollout"];
    assert_eq!(rollout["complete"], true, "{resp:#}");
    let acked: Vec<&str> = rollout["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "acked")
        .map(|p| p["proxy"].as_str().unwrap())
        .collect();
    assert!(
        acked.contains(&"default/frontend-1") && acked.contains(&"default/backend-1"),
        "{resp:#}"
    );
    let (_, config) = weft::net::http_get(m.frontend.admin, "/config").unwrap();
    assert!(config.contains("/v2"), "{config}");
    // The same document again changes nothing and pushes nothing.
    let again = m.cp.apply_file("route.yaml", route, 10_000);
    assert_eq!(again["changes"][0]["action"], "unchanged", "{again:#}");
    assert!(again["rollout"].is_null(), "{again:#}");
}

/// A WebSocket upgrade is planned and dispatched like any request: the route rule that takes it edits
/// its answer, and it is counted under that rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_routed_and_dispatched_like_any_request() {
    let m = Mesh::start("e2e-ws-route", &[], None).await;
    let route = "apiVersion: weft.dev/v1
kind: HTTPRoute
metadata:
  name: backend
spec:
  parentRefs:
    - name: backend
  rules:
    - matches:
        - path: {type: PathPrefix, value: /ws}
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {add: [{name: x-served-by, value: weft-ws}]}
      backendRefs:
        - name: backend
";
    let resp = m.cp.apply_file("route.yaml", route, 10_000);
    assert_eq!(resp["rollout"]["complete"], true, "{resp:#}");
    let (echoes, head) = client::websocket_exchange(m.listener(), &["one", "two"])
        .await
        .unwrap();
    assert_eq!(echoes, ["one", "two"]);
    assert!(
        head.iter()
            .any(|(k, v)| k == "x-served-by" && v == "weft-ws"),
        "the route's response edit is on the 101: {head:?}"
    );
    let counted = m.frontend.metric(
        "weft_proxy_http_requests_total",
        &[
            "direction=\"outbound\"",
            "route=\"default/backend rules[0]\"",
            "status_code=\"101\"",
        ],
    );
    assert_eq!(counted, 1.0, "{}", m.frontend.metrics());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_in_the_watched_directory_is_refused_and_traffic_keeps_flowing() {
    let dir = TempDir::new("watched");
    let backend_app = http_app::serve_on_loopback("backend");
    std::fs::write(
        dir.path().join("10-services.yaml"),
        backend_service(backend_app.addr().port()),
    )
    .unwrap();
    let cp = ControlProc::start_with("e2e-dir", Some(dir.path().to_path_buf()), &[]);
    let _backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
        .token(&cp.token("default", "backend", 600))
        .app_port(backend_app.addr().port())
        .start();
    let frontend = MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .service("backend", 9080, "http")
        .start();
    let listener = frontend.outbound[0];
    wait_ok(listener).await;
    let revision = cp.api("GET", "/v1/status", None)["revision"].clone();

    // Line 6 names a field Service does not have.
    write_file(
        &dir.path().join("20-bad.yaml"),
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: ratings\nspec:\n  prots:\n    - port: 9080\n",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cp.log().contains("20-bad.yaml:6") {
        assert!(
            Instant::now() < deadline,
            "refusal not logged:\n{}",
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cp.log().contains("prots"), "{}", cp.log());
    assert_eq!(cp.api("GET", "/v1/status", None)["revision"], revision);
    for _ in 0..20 {
        let r = client::http1(listener, Method::GET, "/info", &[], bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    // Fixed, it is picked up within a second.
    let t0 = Instant::now();
    write_file(
        &dir.path().join("20-bad.yaml"),
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: ratings\nspec:\n  ports:\n    - port: 9080\n",
    );
    loop {
        let (status, _) = cp
            .request("GET", "/v1/resources/service/default/ratings", None, true)
            .unwrap();
        if status == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "fixed file not picked up:\n{}",
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_ok(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client::http1(addr, Method::GET, "/info", &[], bytes::Bytes::new()).await {
            if r.status == StatusCode::OK {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_under_traffic_fails_no_request_and_proxies_resync() {
    let mut m = Mesh::start("e2e-kill", &[], None).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(steady_load(m.listener(), stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.cp.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cp = &mut m.cp;
    tokio::task::block_in_place(|| cp.restart());
    // Proxies reconnect (with backoff) and acknowledge the new control plane's snapshot.
    let status = m.cp.wait_status(Duration::from_secs(30), |s| {
        let p = s["proxies"].as_array().unwrap();
        p.len() == 2
            && p.iter()
                .all(|x| x["connected"] == true && x["ackedVersion"].is_u64())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let (ok, failed, why) = load.await.unwrap();
    assert!(ok > 100, "too little traffic to judge: {ok}");
    assert_eq!(failed, 0, "failed requests: {why:?}");
    assert_eq!(status["proxies"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_while_the_control_plane_is_down_serves_from_its_cache() {
    let cp = ControlProc::start("e2e-cache");
    let backend_app = http_app::serve_on_loopback("backend");
    cp.apply_file("mesh.yaml", &backend_service(backend_app.addr().port()), 0);
    let _backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
        .token(&cp.token("default", "backend", 600))
        .app_port(backend_app.addr().port())
        .start();
    let dir = TempDir::new("frontend-cache");
    let builder = || {
        MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
            .token(&cp.token("default", "frontend", 600))
            .service("backend", 9080, "http")
    };
    let mut frontend = builder().in_dir(dir).start();
    let listener = frontend.outbound[0];
    wait_ok(listener).await;
    // Take the control plane away, then restart the frontend proxy in place (same cache, same ports).
    let mut cp = cp;
    cp.kill9();
    frontend.sigterm();
    frontend.wait_exit(Duration::from_secs(10));
    let (tunnel, admin, health, id) = (
        frontend.tunnel,
        frontend.admin,
        frontend.health,
        frontend.id.clone(),
    );
    let dir = frontend.take_dir();
    drop(frontend);
    let mut again = weft::proxy::launch(weft::proxy::Launch {
        name: "frontend-again".into(),
        config: dir.path().join("proxy.yaml"),
        dir,
        tunnel,
        admin,
        health,
        outbound: vec![listener],
        id,
        worker_threads: None,
        env: Vec::new(),
    });
    again.wait_ready(Duration::from_secs(20));
    wait_ok(listener).await;
    assert!(again.log().contains("cache"), "{}", again.log());
    let r = client::http1(listener, Method::GET, "/info", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.json().unwrap()["app"], "backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_of_ten_second_leaves_under_continuous_traffic_fails_no_request() {
    let m = Mesh::start("e2e-rotate", &[], Some("10s")).await;
    let serial = |p: &ProxyProc| {
        let (_, id) = weft::net::http_get(p.admin, "/identity").unwrap();
        serde_json::from_str::<serde_json::Value>(&id).unwrap()["serial"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = (serial(&m.frontend), serial(&m.backend));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(steady_load(m.listener(), stop));
    // Two full lifetimes: each proxy renews at about 2/3 of 10 s, so at least twice.
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop_tx.send(true).unwrap();
    let (ok, failed, why) = load.await.unwrap();
    let last = (serial(&m.frontend), serial(&m.backend));
    assert_ne!(
        first.0,
        last.0,
        "frontend never renewed:\n{}",
        m.frontend.log()
    );
    assert_ne!(
        first.1,
        last.1,
        "backend never renewed:\n{}",
        m.backend.log()
    );
    assert!(ok > 500, "too little traffic to judge: {ok}");
    assert_eq!(failed, 0, "failed requests during rotation: {why:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_names_a_proxy_that_refuses_a_change_and_that_proxy_keeps_its_config() {
    let cp = ControlProc::start("e2e-nack");
    let backend_app = http_app::serve_on_loopback("backend");
    cp.apply_file("mesh.yaml", &backend_service(backend_app.addr().port()), 0);
    let _backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
        .token(&cp.token("default", "backend", 600))
        .app_port(backend_app.addr().port())
        .start();
    // This proxy accepts only small regular expressions.
    let frontend = MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .service("backend", 9080, "http")
        .extra_yaml("limits:\n  max_regex_bytes: 2000")
        .start();
    wait_ok(frontend.outbound[0]).await;
    let route = "apiVersion: weft.dev/v1
kind: HTTPRoute
metadata:
  name: backend
spec:
  parentRefs:
    - name: backend
  rules:
    - matches:
        - path: {type: RegularExpression, value: \"/[a-z]{300}\"}
      backendRefs:
        - name: backend
";
    let dir = TempDir::new("nack-route");
    let file = dir.path().join("route.yaml");
    std::fs::write(&file, route).unwrap();
    let (code, out, err) = tokio::task::block_in_place(|| {
        cp.weftctl(&["apply", "-f", file.to_str().unwrap(), "--timeout", "10s"])
    });
    assert_eq!(code, Some(3), "{out}\n{err}");
    assert!(out.contains("httproute default/backend created"), "{out}");
    assert!(out.contains("NOT confirmed: acked by 1/2"), "{out}");
    assert!(
        out.contains("default/frontend-1: NACK:") && out.contains("regex"),
        "{out}"
    );
    // The refusing proxy kept its config: still no route there, traffic still flows.
    let (_, config) = weft::net::http_get(frontend.admin, "/config").unwrap();
    assert!(!config.contains("[a-z]{300}"), "{config}");
    wait_ok(frontend.outbound[0]).await;
    let (code, out, _) = tokio::task::block_in_place(|| cp.weftctl(&["status"]));
    assert_eq!(code, Some(0));
    assert!(
        out.contains("default/frontend-1") && out.contains("regex"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_can_pin_the_mesh_ca_by_fingerprint() {
    let cp = ControlProc::start("e2e-pin");
    let backend_app = http_app::serve_on_loopback("backend");
    cp.apply_file("mesh.yaml", &backend_service(backend_app.addr().port()), 0);
    let fingerprint = std::fs::read_to_string(cp.state_dir().join("ca/fingerprint"))
        .unwrap()
        .trim()
        .to_string();
    let bundle = weft_certs::TrustBundle::from_pem_file(&cp.bundle_path()).unwrap();
    assert_eq!(
        fingerprint,
        weft_certs::pin::fingerprint(bundle.roots()[0].as_ref())
    );
    let _backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
        .token(&cp.token("default", "backend", 600))
        .ca_fingerprint(&fingerprint)
        .app_port(backend_app.addr().port())
        .start();
    let frontend = MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .ca_fingerprint(&fingerprint)
        .service("backend", 9080, "http")
        .start();
    wait_ok(frontend.outbound[0]).await;
    // Another fingerprint: the control plane is not trusted, nothing is sent, the proxy says why.
    let wrong = format!("sha256:{}", ["AB"; 32].join(":"));
    let mut p = MeshProxyBuilder::new(&cp, "stranger", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .ca_fingerprint(&wrong)
        .launch();
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(20)));
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", p.log());
    assert!(p.log().contains("pinned fingerprint"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_follows_its_apps_readiness_probe() {
    let Mesh {
        cp,
        backend_app,
        backend: _backend,
        frontend,
    } = Mesh::start("e2e-ready", &[], None).await;
    let port = backend_app.addr().port();
    // The app goes away: its proxy's probe fails, the endpoint is withdrawn, callers get a clear 503.
    drop(backend_app);
    let status = tokio::task::block_in_place(|| {
        cp.wait_status(Duration::from_secs(10), |s| {
            s["proxies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["proxy"] == "default/backend-1" && p["ready"] == false)
        })
    });
    assert!(status["proxies"].as_array().unwrap().len() == 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client::http1(
            frontend.outbound[0],
            Method::GET,
            "/info",
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
        // Until the frontend has the new endpoints, the backend's proxy answers that its app is gone
        // (and the frontend may eject the endpoint for it); then the frontend has no ready endpoint.
        if r.headers
            .get("weft-proxy-error")
            .is_some_and(|v| v == "no_endpoint")
            && r.text().contains("no ready endpoint")
        {
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still routed to a failing app: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back again on the same port: ready, routed.
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    l.set_nonblocking(true).unwrap();
    let _again = http_app::serve(tokio::net::TcpListener::from_std(l).unwrap(), "backend");
    wait_ok(frontend.outbound[0]).await;
}

fn service_yaml(name: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  ports:\n    - name: http\n      port: 9080\n  selector:\n    app: {name}\n"
    )
}

/// A proxy whose cache directory fills up keeps applying (and acknowledging) the configs it is sent and
/// keeps serving, says why it could not cache them, never leaves a partial file (the last cached config
/// stays whole), and caches again once space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_whose_cache_directory_is_full_keeps_serving_and_caches_again_later() {
    let cp = ControlProc::start("e2e-cache-full");
    let backend_app = http_app::serve_on_loopback("backend");
    let port = backend_app.addr().port();
    cp.apply_file("mesh.yaml", &backend_service(port), 0);
    let _backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
        .token(&cp.token("default", "backend", 600))
        .app_port(port)
        .start();
    let dir = TempDir::new("frontend-full");
    let cache = dir.path().join("cache");
    let Some(fs) = weft::fs_fault::SmallFs::mount(&cache, 1024, "proxy-cache-full") else {
        return;
    };
    let frontend = MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .service("backend", 9080, "http")
        .in_dir(dir)
        .start();
    let listener = frontend.outbound[0];
    wait_ok(listener).await;
    let snapshot = cache.join("snapshot.json");
    let cached = std::fs::read(&snapshot).unwrap();

    fs.fill();
    cp.apply_file("extra.yaml", &service_yaml("extra"), 5000);
    wait_ok(listener).await;
    assert!(
        frontend.log().contains("cannot cache the config"),
        "{}",
        frontend.log()
    );
    assert_eq!(std::fs::read(&snapshot).unwrap(), cached);
    assert_eq!(fs.temp_files(), Vec::<std::path::PathBuf>::new());

    fs.free();
    cp.apply_file("later.yaml", &service_yaml("later"), 5000);
    let now = String::from_utf8(std::fs::read(&snapshot).unwrap()).unwrap();
    assert!(now.contains("later") && now.contains("extra"), "{now}");
    wait_ok(listener).await;
    drop(fs);
}

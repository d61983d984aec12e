//! Revocation, the control plane's own certificate, and the proxy API under hostile load, with the real
//! control plane and real proxies: a revoked workload is refused by its peers within one push and cannot
//! renew while the others keep working; a revoked identity cannot join until unrevoked; the serving
//! certificate of port 15010 rotates while proxies stay connected; a flood of idle and half-open
//! connections does not stop joins, renewals or `weftctl status`; an oversized hello is refused.

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use weft::apps::{client, http as http_app};
use weft::control::ControlProc;
use weft::mesh::{backend_service, MeshProxyBuilder};
use weft::proxy::ProxyProc;
use weft_api::control::{
    encode, CertificateRequest, FromProxy, Hello, Registration, PATH_CERTIFICATE, PATH_STREAM,
    PROTOCOL_VERSION,
};
use weft_certs::{Credential, Identity, KeyAndCsr, TrustBundle};

fn mesh_config(ttl: &str) -> String {
    format!("---\napiVersion: weft.dev/v1\nkind: MeshConfig\nmetadata:\n  name: default\nspec:\n  certificateTtl: {ttl}\n")
}

fn apply(cp: &ControlProc, text: &str) {
    let body = serde_json::json!({ "files": [{ "name": "mesh.yaml", "text": text }] }).to_string();
    cp.api("POST", "/v1/apply?wait=0", Some(&body));
}

async fn get_ok(addr: SocketAddr) -> bool {
    matches!(
        client::http1(addr, Method::GET, "/info", &[], Bytes::new()).await,
        Ok(r) if r.status == StatusCode::OK
    )
}

/// Waits (bounded) until a request through `addr` succeeds.
async fn wait_ok(addr: SocketAddr, what: &str, logs: &[&ProxyProc]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get_ok(addr).await {
        let all: Vec<String> = logs.iter().map(|p| p.log()).collect();
        assert!(
            Instant::now() < deadline,
            "{what} never routable:\n{}",
            all.join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The credential a mesh proxy keeps in its cache directory (next to its config).
fn cached_identity(p: &ProxyProc) -> Identity {
    let cache = p.config.parent().unwrap().join("cache");
    let cred = Credential::from_pem_files(&cache.join("cert.pem"), &cache.join("key.pem")).unwrap();
    let bundle = TrustBundle::from_pem_file(&cache.join("bundle.pem")).unwrap();
    Identity::new(cred, bundle).unwrap()
}

/// Opens an HTTP/2 connection to the proxy API with `identity` as the client certificate.
async fn api_conn(
    cp: &ControlProc,
    identity: &Identity,
) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, String> {
    let tcp = tokio::net::TcpStream::connect(cp.api)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(identity.client_config(&cp.control_id()))
        .connect(
            rustls::pki_types::ServerName::IpAddress(cp.api.ip().into()),
            tcp,
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// A renewal by `identity` (its certificate authenticates): `Ok(status, body)` or why it failed.
async fn renew(cp: &ControlProc, identity: &Identity) -> Result<(u16, String), String> {
    let attempt = async {
        let mut send = api_conn(cp, identity).await?;
        let csr = KeyAndCsr::generate(&identity.id()).unwrap();
        let body = serde_json::to_vec(&CertificateRequest {
            csr_pem: csr.csr_pem().to_string(),
            token: None,
        })
        .unwrap();
        let req = http::Request::post(format!("https://{}{PATH_CERTIFICATE}", cp.api))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

fn connected(cp: &ControlProc, proxy: &str) -> Option<bool> {
    let status = cp.api("GET", "/v1/status", None);
    status["proxies"]
        .as_array()?
        .iter()
        .find(|p| p["proxy"] == proxy)
        .and_then(|p| p["connected"].as_bool())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_workload_is_refused_by_peers_within_a_push_and_cannot_renew() {
    let cp = ControlProc::start("revoke-workload");
    let backend_app = http_app::serve_on_loopback("backend");
    apply(&cp, &backend_service(backend_app.addr().port()));
    let backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
        .token(&cp.token("default", "backend", 600))
        .app_port(backend_app.addr().port())
        .label("app", "backend")
        .start();
    let revoked = MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .service("backend", 9080, "http")
        .start();
    let other = MeshProxyBuilder::new(&cp, "shop-1", "default", "shop")
        .token(&cp.token("default", "shop", 600))
        .service("backend", 9080, "http")
        .start();
    let (r_addr, o_addr) = (revoked.outbound[0], other.outbound[0]);
    wait_ok(r_addr, "backend via frontend-1", &[&revoked, &backend]).await;
    wait_ok(o_addr, "backend via shop-1", &[&other, &backend]).await;
    // The revoked proxy's own certificate renews before revocation (so the refusal below is the revocation).
    let stolen = cached_identity(&revoked);
    let before = renew(&cp, &stolen).await;
    assert!(matches!(before, Ok((200, _))), "renewal before: {before:?}");

    let (code, out, err) = cp.weftctl(&["revoke", "workload", "default/frontend-1"]);
    assert_eq!(code, Some(0), "revoke: {out}{err}");
    assert!(out.contains("default/frontend-1"), "{out}");
    let revoked_at = Instant::now();

    // Within one push the backend refuses frontend-1's certificate (and any connection it had is closed).
    loop {
        if !get_ok(r_addr).await {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "frontend-1 still reaches the backend 5 s after revocation\nbackend:\n{}\ncontrol:\n{}",
            backend.log(),
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert!(!get_ok(r_addr).await, "a revoked workload got through");
    }
    assert!(
        backend.wait_log("revoked", Duration::from_secs(5)),
        "the backend does not say why it refused:\n{}",
        backend.log()
    );
    assert!(
        backend.metric("weft_proxy_revoked_peers_refused_total", &[]) >= 1.0,
        "refusals not counted:\n{}",
        backend.metrics()
    );
    // Everyone else keeps working.
    for _ in 0..20 {
        assert!(
            get_ok(o_addr).await,
            "shop-1 lost the backend after an unrelated revocation"
        );
    }
    // Its renewal is refused, its config stream closed, and the operator can see the revocation.
    let after = renew(&cp, &stolen).await;
    assert!(
        !matches!(after, Ok((200, _))),
        "a revoked certificate renewed: {after:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    // Its config stream closed and it left the registry (it cannot come back: 15010 refuses it).
    while connected(&cp, "default/frontend-1").is_some() {
        assert!(
            Instant::now() < deadline,
            "the revoked proxy is still registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cp.log().contains("revoked"), "{}", cp.log());
    let (code, out, err) = cp.weftctl(&["revoke", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("default/frontend-1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_drops_its_open_connection_to_a_revoked_server() {
    let cp = ControlProc::start("revoke-server");
    let backend_app = http_app::serve_on_loopback("backend");
    apply(&cp, &backend_service(backend_app.addr().port()));
    let backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
        .token(&cp.token("default", "backend", 600))
        .app_port(backend_app.addr().port())
        .label("app", "backend")
        .start();
    let frontend = MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .service("backend", 9080, "http")
        .start();
    wait_ok(
        frontend.outbound[0],
        "backend via frontend-1",
        &[&frontend, &backend],
    )
    .await;
    let (code, out, err) = cp.weftctl(&["revoke", "workload", "default/backend-1"]);
    assert_eq!(code, Some(0), "revoke: {out}{err}");
    // The frontend's pooled connection to the backend is closed when the list arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    while frontend.metric("weft_proxy_revoked_peers_refused_total", &[]) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the frontend kept its connection to a revoked server:\n{}",
            frontend.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(frontend.log().contains("revoked"), "{}", frontend.log());
    assert!(
        !get_ok(frontend.outbound[0]).await,
        "a revoked server was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_identity_cannot_join_until_unrevoked() {
    let cp = ControlProc::start("revoke-identity");
    let (code, out, err) = cp.weftctl(&[
        "revoke",
        "identity",
        "spiffe://mesh.test/ns/default/sa/frontend",
    ]);
    assert_eq!(code, Some(0), "revoke: {out}{err}");
    // A join for the revoked identity is refused with the reason (the proxy stops: nothing to retry).
    let mut p = MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .launch();
    let refused = p.try_wait_ready(Duration::from_secs(10));
    assert!(refused.is_err(), "a revoked identity joined");
    assert!(
        p.log().contains("is revoked"),
        "the refusal does not say why:\n{}",
        p.log()
    );
    // Other identities are unaffected.
    MeshProxyBuilder::new(&cp, "shop-1", "default", "shop")
        .token(&cp.token("default", "shop", 600))
        .start();
    let (code, out, err) = cp.weftctl(&[
        "unrevoke",
        "identity",
        "--namespace",
        "default",
        "--service-account",
        "frontend",
    ]);
    assert_eq!(code, Some(0), "unrevoke: {out}{err}");
    let (_, out, _) = cp.weftctl(&["revoke", "list", "-o", "json"]);
    assert_eq!(out.trim(), "[]");
    MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .start();
}

/// The fingerprint of the certificate the proxy API serves right now.
async fn served_fingerprint(cp: &ControlProc) -> String {
    let bundle = TrustBundle::from_pem_file(&cp.bundle_path()).unwrap();
    let tcp = tokio::net::TcpStream::connect(cp.api).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(weft_certs::tls::bootstrap_client_config(
        bundle,
        &cp.control_id(),
    ))
    .connect(
        rustls::pki_types::ServerName::IpAddress(cp.api.ip().into()),
        tcp,
    )
    .await
    .expect("the served certificate verifies");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    weft_certs::pin::fingerprint(leaf.as_ref())
}

/// Replaces the control plane's serving certificate (while it is stopped) with one that expires in `ttl`,
/// as a long-running control plane's would eventually; returns its fingerprint.
fn short_serving_certificate(cp: &ControlProc, ttl: Duration) -> String {
    let state = cp.state_dir();
    let ca = weft_control::ca_dir::CaDir::open(&state.join("ca")).unwrap();
    let id = cp.control_id();
    let kc = KeyAndCsr::generate(&id).unwrap();
    let chain = ca
        .ca
        .sign_csr(
            kc.csr_pem(),
            &id,
            weft_certs::Validity {
                not_before: std::time::SystemTime::now(),
                not_after: std::time::SystemTime::now() + ttl,
            },
        )
        .unwrap();
    let chain = chain + &ca.ca.root_pem();
    std::fs::write(state.join("control.key"), kc.key_pem()).unwrap();
    std::fs::write(state.join("control.crt"), &chain).unwrap();
    let cred = Credential::from_pem(&chain, kc.key_pem()).unwrap();
    weft_certs::pin::fingerprint(cred.chain()[0].as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_rotates_while_proxies_stay_connected() {
    let mut cp = ControlProc::start("serving-rotation");
    cp.terminate();
    let first = short_serving_certificate(&cp, Duration::from_secs(9));
    let started = Instant::now();
    cp.restart();
    assert_eq!(
        served_fingerprint(&cp).await,
        first,
        "the short certificate is not served"
    );
    let backend_app = http_app::serve_on_loopback("backend");
    apply(
        &cp,
        &(backend_service(backend_app.addr().port()) + &mesh_config("6s")),
    );
    let backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
        .token(&cp.token("default", "backend", 600))
        .app_port(backend_app.addr().port())
        .label("app", "backend")
        .start();
    // Renewed at about two thirds of its 9 s, before it expires.
    loop {
        if served_fingerprint(&cp).await != first {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "the serving certificate did not renew before it expired:\n{}",
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Past the first certificate's expiry: a proxy joins, the one from before still renews and serves.
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewals = backend.log().matches("certificate renewed").count();
    let frontend = MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .service("backend", 9080, "http")
        .start();
    wait_ok(
        frontend.outbound[0],
        "backend via frontend-1",
        &[&frontend, &backend],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.log().matches("certificate renewed").count() <= renewals {
        assert!(
            Instant::now() < deadline,
            "the proxy connected before the rotation no longer renews:\n{}",
            backend.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(connected(&cp, "default/backend-1"), Some(true));
    assert_eq!(connected(&cp, "default/frontend-1"), Some(true));
    // The connection the backend opened before the rotation was never dropped.
    assert_eq!(
        backend.log().matches("config stream open").count(),
        1,
        "{}",
        backend.log()
    );
}

/// Holds `n` connections to `target` from `source` for as long as the returned task runs, opening a new
/// one whenever the control plane closes one; half of them stop in the middle of a TLS ClientHello.
fn flood(source: std::net::IpAddr, target: SocketAddr, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            set.spawn(async move {
                for _ in 0..10_000 {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    if sock.bind(SocketAddr::new(source, 0)).is_err() {
                        return;
                    }
                    if let Ok(mut tcp) = sock.connect(target).await {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        if i % 2 == 1 {
                            // A TLS record header announcing a ClientHello that never comes.
                            let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
                        }
                        let mut buf = [0u8; 64];
                        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                    // Back again a moment later, as a patient attacker would.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
        while set.join_next().await.is_some() {}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_and_half_open_connections_does_not_stop_joins_or_renewals() {
    // A control plane started with the common default of 1024 open files.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let ours = lim.rlim_cur;
    lim.rlim_cur = 1024.min(lim.rlim_max);
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let cp = ControlProc::start("api-flood");
    lim.rlim_cur = ours;
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };

    let backend_app = http_app::serve_on_loopback("backend");
    apply(
        &cp,
        &(backend_service(backend_app.addr().port()) + &mesh_config("6s")),
    );
    let attacker = flood("127.0.0.2".parse().unwrap(), cp.api, 1500);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
        .token(&cp.token("default", "backend", 600))
        .app_port(backend_app.addr().port())
        .label("app", "backend")
        .launch();
    let mut backend = backend;
    if let Err(e) = backend.try_wait_ready(Duration::from_secs(8)) {
        panic!("no join under the flood: {e}\ncontrol:\n{}", cp.log());
    }
    let frontend = MeshProxyBuilder::new(&cp, "frontend-1", "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .service("backend", 9080, "http")
        .start();
    wait_ok(
        frontend.outbound[0],
        "backend via frontend-1",
        &[&frontend, &backend],
    )
    .await;
    assert!(
        backend.wait_log("certificate renewed", Duration::from_secs(10)),
        "no renewal under the flood:\n{}",
        backend.log()
    );
    let (code, out, err) = cp.weftctl(&["status"]);
    assert_eq!(code, Some(0), "status under the flood: {out}{err}");
    assert!(out.contains("default/backend-1"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let (_, metrics) = cp.request("GET", "/metrics", None, false).unwrap();
    assert!(
        metrics.contains(
            "weft_control_proxy_api_connections_refused_total{reason=\"per_client_limit\"}"
        ),
        "the flood's extra connections are not counted:\n{metrics}"
    );
    attacker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_hello_is_refused_with_a_clear_error() {
    let cp = ControlProc::start("hello-bound");
    let id = cp.offline_identity("default", "big", Duration::from_secs(3600));
    let registration = |labels: weft_api::resources::Labels| Registration {
        name: "big-1".into(),
        labels,
        address: "127.0.0.1".parse().unwrap(),
        tunnel_port: 15008,
        ports: vec![8080],
        ready: true,
    };
    let mut labels = weft_api::resources::Labels::default();
    labels.insert("junk".into(), "x".repeat(200 << 10));
    let hello = FromProxy::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        proxy_version: "test".into(),
        workload: registration(labels),
        applied_version: None,
    });
    let mut send = api_conn(&cp, &id).await.unwrap();
    let req = http::Request::post(format!("https://{}{PATH_STREAM}", cp.api))
        .body(Full::new(encode(&hello)))
        .unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .expect("an answer")
        .expect("a response");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("hello") && text.contains("limit"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(cp.log().contains("config stream refused"), "{}", cp.log());
    // A real-sized hello is still fine.
    let sim = weft::control_sim::SimProxy::connect(
        cp.api,
        &id,
        &cp.control_id(),
        registration(Default::default()),
        weft::control_sim::Reply::Ack,
    )
    .await;
    assert!(sim.is_ok(), "{:?}", sim.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_request_is_closed_but_a_config_stream_stays() {
    let cp = ControlProc::start("api-idle");
    let id = cp.offline_identity("default", "idle", Duration::from_secs(3600));
    // A full mutual-TLS connection that never sends a request.
    let idle = api_conn(&cp, &id).await.unwrap();
    let mut sim = weft::control_sim::SimProxy::connect(
        cp.api,
        &id,
        &cp.control_id(),
        Registration {
            name: "idle-1".into(),
            labels: Default::default(),
            address: "127.0.0.1".parse().unwrap(),
            tunnel_port: 15008,
            ports: vec![8080],
            ready: true,
        },
        weft::control_sim::Reply::Ack,
    )
    .await
    .unwrap();
    assert!(sim.wait_snapshots(1, Duration::from_secs(5)).await);
    let started = Instant::now();
    while !idle.is_closed() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "an idle connection was kept:\n{}",
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stream opened at the start is past the same deadline and still open.
    assert!(
        sim.seen.lock().unwrap().ended.is_none(),
        "the config stream was closed with the idle connection"
    );
    assert_eq!(connected(&cp, "default/idle-1"), Some(true));
    let (_, metrics) = cp.request("GET", "/metrics", None, false).unwrap();
    assert!(
        metrics.contains("weft_control_proxy_api_connections_refused_total{reason=\"idle\"} 1"),
        "{metrics}"
    );
}

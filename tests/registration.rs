//! Identity decides what a workload may register: a Service takes registered endpoints only from the
//! service accounts it names, a join token's workload claims bind the name and labels a proxy may
//! register, a registered name cannot be taken by another identity, single-use tokens are spent only by
//! an issued certificate (the key whose answer was lost may ask again), the control plane's own identity is never issued, and request counts are kept
//! only as their reporter can have carried them. Real `weft-control`, real TLS, real pods.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;
use weft::control::ControlProc;
use weft::control_sim::{Reply, SimProxy};
use weft::pods::{available, example, PodMesh};
use weft_api::control::{
    CertificateRequest, CertificateResponse, FromProxy, Registration, StatsEntry, StatsReport,
    LATENCY_BUCKETS_MS, PATH_CERTIFICATE,
};
use weft_certs::{Credential, Identity, KeyAndCsr, SpiffeId, TrustBundle};

const SHOP: &str = include_str!("../examples/shop/services.yaml");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://mesh.test/ns/{ns}/sa/{sa}")).unwrap()
}

fn registration(name: &str, labels: &[(&str, &str)], ip: &str) -> Registration {
    Registration {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        address: ip.parse().unwrap(),
        tunnel_port: 15008,
        ports: vec![9080],
        ready: true,
    }
}

/// `POST /v1/certificate` as a proxy sends it: with `token` on join, or authenticated by `current`
/// (renewal). Returns the status and the body.
async fn certificate(
    cp: &ControlProc,
    csr_pem: &str,
    token: Option<&str>,
    current: Option<&Identity>,
) -> (u16, String) {
    let bundle = TrustBundle::from_pem_file(&cp.bundle_path()).unwrap();
    let tls = match current {
        Some(me) => me.client_config(&cp.control_id()),
        None => weft_certs::tls::bootstrap_client_config(bundle, &cp.control_id()),
    };
    let tcp = tokio::net::TcpStream::connect(cp.api).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(cp.api.ip().into());
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let body = serde_json::to_vec(&CertificateRequest {
        csr_pem: csr_pem.to_string(),
        token: token.map(str::to_string),
    })
    .unwrap();
    let req = http::Request::post(format!("https://{}{PATH_CERTIFICATE}", cp.api))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Joins as `who` with `token`: the identity the control plane issued.
async fn join(cp: &ControlProc, token: &str, who: &SpiffeId) -> Identity {
    let kc = KeyAndCsr::generate(who).unwrap();
    let (status, body) = certificate(cp, kc.csr_pem(), Some(token), None).await;
    assert_eq!(status, 200, "join as {who}: {body}");
    identity(cp, &body, &kc)
}

fn identity(cp: &ControlProc, body: &str, kc: &KeyAndCsr) -> Identity {
    let resp: CertificateResponse = serde_json::from_str(body).unwrap();
    let bundle = TrustBundle::from_pem_file(&cp.bundle_path()).unwrap();
    Identity::new(
        Credential::from_pem(&resp.chain_pem, kc.key_pem()).unwrap(),
        bundle,
    )
    .unwrap()
}

/// Waits (bounded) until the only registered proxy is disconnected, letting this runtime close it.
async fn wait_disconnected(cp: &ControlProc) {
    wait_disconnected_named(cp, "").await
}

/// Waits (bounded) until proxy `key` (any, when empty) is registered and disconnected.
async fn wait_disconnected_named(cp: &ControlProc, key: &str) {
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = cp.api("GET", "/v1/status", None);
        let proxies = s["proxies"].as_array().cloned().unwrap_or_default();
        let gone = proxies
            .iter()
            .any(|p| (key.is_empty() || p["proxy"] == key) && p["connected"] == false);
        if gone {
            return;
        }
    }
    panic!("proxy {key:?} never disconnected");
}

async fn sim(cp: &ControlProc, who: &Identity, reg: Registration) -> anyhow::Result<SimProxy> {
    SimProxy::connect(cp.api, who, &cp.control_id(), reg, Reply::Ack).await
}

#[test]
fn a_pod_claiming_another_service_gets_none_of_its_traffic() {
    if !available("registration") {
        return;
    }
    let shop = example("shop");
    let mut mesh = PodMesh::new("claim");
    mesh.apply(SHOP);
    let port = ["--port", "9080"];
    mesh.pod(
        "reviews-v1",
        &[
            &["--service", "reviews", "--label", "version=v1"][..],
            &port,
        ]
        .concat(),
        &[&shop, "reviews", "--version", "v1"],
    );
    // The frontend's identity, dressed up as reviews v2: registered, but no Service takes it.
    mesh.pod(
        "impostor",
        &[
            &[
                "--service-account",
                "frontend",
                "--service",
                "reviews",
                "--label",
                "version=v2",
            ][..],
            &port,
        ]
        .concat(),
        &[&shop, "reviews", "--version", "impostor"],
    );
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    let out = mesh.exec_ok(
        &client,
        &[
            &shop,
            "load",
            "--url",
            "http://reviews:9080/",
            "--count",
            "40",
        ],
    );
    let split: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    assert_eq!(split["failed"], 0, "{split}");
    assert_eq!(
        split["versions"]["v1"], 40,
        "every call lands on v1: {split}"
    );
    let why = mesh.weftctl_ok(&["why", "--from", "default/client", "--to", "reviews"]);
    assert!(!why.contains("impostor"), "{why}");
    // Once the Service names the frontend's account, the operator has said so: it serves.
    let mut svc = SHOP.split("---").nth(1).unwrap().to_string();
    svc.push_str("  serviceAccounts: [reviews, frontend]\n");
    mesh.apply(&svc);
    let why = mesh.weftctl_ok(&["why", "--from", "default/client", "--to", "reviews"]);
    assert!(why.contains("impostor"), "{why}");
}

#[test]
fn a_registered_name_cannot_be_taken_by_another_identity_while_it_is_away() {
    let mut cp = ControlProc::start("takeover");
    let rt = runtime();
    let intruder = rt.block_on(async {
        let reviews = join(
            &cp,
            &cp.token("default", "reviews", 600),
            &id("default", "reviews"),
        )
        .await;
        let intruder = join(
            &cp,
            &cp.token("default", "intruder", 600),
            &id("default", "intruder"),
        )
        .await;
        let held = sim(
            &cp,
            &reviews,
            registration("reviews-1", &[("app", "reviews")], "198.18.0.2"),
        )
        .await
        .unwrap();
        drop(held);
        wait_disconnected(&cp).await;
        let err = sim(
            &cp,
            &intruder,
            registration("reviews-1", &[("app", "reviews")], "198.18.0.9"),
        )
        .await
        .err()
        .expect("the name is held while its proxy is away");
        let err = err.to_string();
        assert!(err.contains("already registered"), "{err}");
        assert!(err.contains("sa/intruder"), "{err}");
        // Its holder comes back to it.
        let back = sim(
            &cp,
            &reviews,
            registration("reviews-1", &[("app", "reviews")], "198.18.0.2"),
        )
        .await
        .unwrap();
        drop(back);
        wait_disconnected(&cp).await;
        intruder
    });
    drop(rt);
    assert!(cp.log().contains("config stream refused"), "{}", cp.log());
    // A restarted control plane restores the registry, and with it who holds the name.
    cp.restart();
    let rt = runtime();
    rt.block_on(async {
        let err = sim(
            &cp,
            &intruder,
            registration("reviews-1", &[("app", "reviews")], "198.18.0.9"),
        )
        .await
        .err()
        .expect("the restored name is still held");
        assert!(err.to_string().contains("already registered"), "{err}");
    });
}

#[test]
fn a_token_with_workload_claims_registers_only_that_workload_even_after_renewal_and_restart() {
    let mut cp = ControlProc::start("claims");
    let body = r#"{"namespace":"default","serviceAccount":"reviews","ttlSecs":600,
        "workload":"reviews-1","labels":{"app":"reviews","version":"v1"}}"#;
    let token = cp.api("POST", "/v1/tokens", Some(body))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let me = id("default", "reviews");
    let rt = runtime();
    let renewed = rt.block_on(async {
        let joined = join(&cp, &token, &me).await;
        let v1 = [("app", "reviews"), ("version", "v1")];
        for (reg, field) in [
            (
                registration("reviews-2", &v1, "198.18.0.2"),
                "workload.name",
            ),
            (
                registration(
                    "reviews-1",
                    &[("app", "reviews"), ("version", "v2")],
                    "198.18.0.2",
                ),
                "workload.labels",
            ),
        ] {
            let err = sim(&cp, &joined, reg)
                .await
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(field), "{err}");
            assert!(err.contains("sa/reviews"), "{err}");
        }
        drop(
            sim(&cp, &joined, registration("reviews-1", &v1, "198.18.0.2"))
                .await
                .unwrap(),
        );
        // A renewed certificate carries the claims forward.
        let kc = KeyAndCsr::generate(&me).unwrap();
        let (status, body) = certificate(&cp, kc.csr_pem(), None, Some(&joined)).await;
        assert_eq!(status, 200, "{body}");
        identity(&cp, &body, &kc)
    });
    drop(rt);
    cp.restart();
    let rt = runtime();
    rt.block_on(async {
        let err = sim(
            &cp,
            &renewed,
            registration("other", &[("app", "reviews")], "198.18.0.3"),
        )
        .await
        .err()
        .expect("claims survive a restart")
        .to_string();
        assert!(err.contains("workload.name"), "{err}");
    });
    let metrics = cp.request("GET", "/metrics", None, false).unwrap().1;
    assert!(
        metrics.contains("weft_control_registrations_refused"),
        "{metrics}"
    );
}

#[test]
fn a_refused_csr_does_not_spend_a_single_use_token() {
    let cp = ControlProc::start("reserve");
    let body = r#"{"namespace":"default","serviceAccount":"pod-a","ttlSecs":120,"maxUses":1}"#;
    let token = cp.api("POST", "/v1/tokens", Some(body))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let rt = runtime();
    rt.block_on(async {
        let wrong = KeyAndCsr::generate(&id("default", "admin")).unwrap();
        let (status, body) = certificate(&cp, wrong.csr_pem(), Some(&token), None).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("sa/admin"), "{body}");
        let right = KeyAndCsr::generate(&id("default", "pod-a")).unwrap();
        let (status, body) = certificate(&cp, right.csr_pem(), Some(&token), None).await;
        assert_eq!(
            status, 200,
            "the refused CSR did not use the token up: {body}"
        );
        let again = KeyAndCsr::generate(&id("default", "pod-a")).unwrap();
        let (status, body) = certificate(&cp, again.csr_pem(), Some(&token), None).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("already used 1 time"), "{body}");
    });
    let tokens = cp.api("GET", "/v1/tokens", None);
    assert_eq!(tokens[0]["uses"], 1, "{tokens}");
}

/// `POST /v1/certificate` whose answer is lost: the control plane answers, the caller drops the
/// connection without reading the certificate.
async fn certificate_lost(cp: &ControlProc, csr_pem: &str, token: &str) {
    let bundle = TrustBundle::from_pem_file(&cp.bundle_path()).unwrap();
    let tls = weft_certs::tls::bootstrap_client_config(bundle, &cp.control_id());
    let tcp = tokio::net::TcpStream::connect(cp.api).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(cp.api.ip().into());
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let body = serde_json::to_vec(&CertificateRequest {
        csr_pem: csr_pem.to_string(),
        token: Some(token.to_string()),
    })
    .unwrap();
    let req = http::Request::post(format!("https://{}{PATH_CERTIFICATE}", cp.api))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    // The connection is cut before the certificate is read.
    conn.abort();
    drop(resp);
}

#[test]
fn a_lost_answer_does_not_burn_a_single_use_token_for_the_key_that_asked() {
    let mut cp = ControlProc::start("lost");
    let body = r#"{"namespace":"default","serviceAccount":"pod-l","ttlSecs":120,"maxUses":1}"#;
    let token = cp.api("POST", "/v1/tokens", Some(body))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let me = id("default", "pod-l");
    let kc = KeyAndCsr::generate(&me).unwrap();
    runtime().block_on(certificate_lost(&cp, kc.csr_pem(), &token));
    let tokens = cp.api("GET", "/v1/tokens", None);
    assert_eq!(
        tokens[0]["uses"], 1,
        "the lost answer spent the use: {tokens}"
    );
    // What spent it is saved with the token: a restart in between changes nothing.
    cp.restart();
    runtime().block_on(async {
        let (status, body) = certificate(&cp, kc.csr_pem(), Some(&token), None).await;
        assert_eq!(
            status, 200,
            "the key that spent the token asks again: {body}"
        );
        let again = identity(&cp, &body, &kc);
        assert_eq!(again.id(), me);
        // The answer again is a certificate that works: it renews.
        let next = KeyAndCsr::generate(&me).unwrap();
        let (status, body) = certificate(&cp, next.csr_pem(), None, Some(&again)).await;
        assert_eq!(status, 200, "renewal with the replayed certificate: {body}");
        let thief = KeyAndCsr::generate(&me).unwrap();
        let (status, body) = certificate(&cp, thief.csr_pem(), Some(&token), None).await;
        assert_eq!(
            status, 403,
            "another key must find the token used up: {body}"
        );
        assert!(body.contains("already used 1 time"), "{body}");
    });
    let tokens = cp.api("GET", "/v1/tokens", None);
    assert_eq!(tokens[0]["uses"], 1, "a replay counts no use: {tokens}");
    let metrics = cp.request("GET", "/metrics", None, false).unwrap().1;
    assert!(metrics.contains(r#"kind="join_replay""#), "{metrics}");
    assert!(cp.log().contains("answered again"), "{}", cp.log());
}

#[test]
fn a_proxy_restarted_during_its_join_asks_again_with_its_kept_key_and_joins() {
    use std::os::unix::fs::PermissionsExt as _;
    let cp = ControlProc::start("lost-proxy");
    let body = r#"{"namespace":"default","serviceAccount":"pod-k","ttlSecs":120,"maxUses":1}"#;
    let token = cp.api("POST", "/v1/tokens", Some(body))["token"]
        .as_str()
        .unwrap()
        .to_string();
    // An earlier start kept its join key, was answered, and stopped before reading the answer.
    let dir = weft::pki::TempDir::new("lost-proxy");
    let state = dir.path().join("cache");
    std::fs::create_dir_all(&state).unwrap();
    let kc = KeyAndCsr::generate(&id("default", "pod-k")).unwrap();
    let kept = state.join("join-key.pem");
    std::fs::write(&kept, kc.key_pem()).unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o600)).unwrap();
    runtime().block_on(certificate_lost(&cp, kc.csr_pem(), &token));
    let mut proxy = weft::mesh::MeshProxyBuilder::new(&cp, "pod-k-1", "default", "pod-k")
        .token(&token)
        .in_dir(dir)
        .launch();
    proxy.wait_ready(Duration::from_secs(30));
    let key = std::fs::read_to_string(state.join("key.pem")).unwrap();
    assert_eq!(key, kc.key_pem(), "the certificate is for the kept key");
    assert!(!kept.exists(), "the kept join key is removed once joined");
    assert!(
        proxy.log().contains("kept from an unfinished join"),
        "{}",
        proxy.log()
    );
    let tokens = cp.api("GET", "/v1/tokens", None);
    assert_eq!(tokens[0]["uses"], 1, "{tokens}");
}

#[test]
fn the_control_planes_identity_and_long_lived_tokens_are_refused() {
    let cp = ControlProc::start("cpid");
    for (body, want) in [
        (
            r#"{"namespace":"weft-system","serviceAccount":"weft-control","ttlSecs":60}"#,
            "weft-control",
        ),
        (
            r#"{"namespace":"default","serviceAccount":"reviews","ttlSecs":2592000}"#,
            "at most",
        ),
    ] {
        let (status, text) = cp.request("POST", "/v1/tokens", Some(body), true).unwrap();
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(want), "{text}");
    }
    assert!(cp
        .api("GET", "/v1/tokens", None)
        .as_array()
        .unwrap()
        .is_empty());
}

fn entry(service: &str, subset: &str, requests: u64, failures: u64) -> StatsEntry {
    StatsEntry {
        namespace: "default".into(),
        service: service.into(),
        subset: Some(subset.into()),
        requests,
        failures,
        buckets: vec![0; LATENCY_BUCKETS_MS.len() + 1],
    }
}

fn stats(counting_ms: u64, entries: Vec<StatsEntry>) -> FromProxy {
    FromProxy::Stats(StatsReport {
        counting_ms,
        entries,
        omitted: 0,
    })
}

const REVIEWS_FOR_FRONTEND: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  ports: [{port: 9080}]\n  selector: {app: reviews}\n---\napiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: reviews-callers}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  action: ALLOW\n  rules:\n    - from: [{principals: [\"spiffe://mesh.test/ns/default/sa/frontend\"]}]\n";

/// Under its own name, `evil` reports errors from a service whose policy refuses it whatever it asks,
/// absurd counts and counters that run backwards; none of it may be kept.
async fn report_made_up_counts(cp: &ControlProc, evil: &Identity) -> SimProxy {
    let own = sim(
        cp,
        evil,
        registration("evil-1", &[("app", "evil")], "198.18.0.10"),
    )
    .await
    .unwrap();
    for report in [
        stats(1_000, vec![entry("ratings", "v1", 10, 0)]),
        stats(1_500, vec![entry("ratings", "v1", 5, 5)]),
        stats(
            2_000,
            vec![
                entry("ratings", "v1", 10, 0),
                entry("ratings", "v2", 1 << 40, 1 << 40),
                entry("reviews", "v2", 900, 900),
            ],
        ),
    ] {
        own.send(&report).await.unwrap();
    }
    own
}

#[test]
fn request_counts_are_kept_only_as_their_reporter_can_have_carried_them() {
    let cp = ControlProc::start("stats");
    let files =
        serde_json::json!({"files": [{"name": "reviews.yaml", "text": REVIEWS_FOR_FRONTEND}]});
    cp.api("POST", "/v1/apply?wait=1000", Some(&files.to_string()));
    let rt = runtime();
    rt.block_on(async {
        let token = |sa: &str| cp.token("default", sa, 600);
        let reviews = join(&cp, &token("reviews"), &id("default", "reviews")).await;
        let frontend = join(&cp, &token("frontend"), &id("default", "frontend")).await;
        let evil = join(&cp, &token("evil"), &id("default", "evil")).await;
        let v2 = [("app", "reviews"), ("version", "v2")];
        let _reviews = sim(&cp, &reviews, registration("reviews-v2", &v2, "198.18.0.3"))
            .await
            .unwrap();
        let fe = [("app", "frontend")];
        let caller = sim(
            &cp,
            &frontend,
            registration("frontend-1", &fe, "198.18.0.2"),
        )
        .await
        .unwrap();
        drop(caller);
        wait_disconnected_named(&cp, "default/frontend-1").await;
        // Another identity speaking as the frontend's proxy, to roll v2 back with its errors.
        let posing = sim(&cp, &evil, registration("frontend-1", &fe, "198.18.0.9")).await;
        if let Ok(p) = &posing {
            let _ = p
                .send(&stats(60_000, vec![entry("reviews", "v2", 5000, 5000)]))
                .await;
        }
        let caller = sim(
            &cp,
            &frontend,
            registration("frontend-1", &fe, "198.18.0.2"),
        )
        .await
        .unwrap();
        caller
            .send(&stats(60_000, vec![entry("reviews", "v2", 100, 0)]))
            .await
            .unwrap();
        let _own = report_made_up_counts(&cp, &evil).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = cp.api("GET", "/v1/stats?service=reviews", None);
        assert_eq!(got["proxiesReporting"], 1, "{got}");
        assert_eq!(got["subsets"][0]["requests"], 100, "{got}");
        assert_eq!(got["subsets"][0]["failures"], 0, "{got}");
        assert_eq!(
            got["byProxy"][0]["identity"], "spiffe://mesh.test/ns/default/sa/frontend",
            "{got}"
        );
        let ratings = cp.api("GET", "/v1/stats?service=ratings", None);
        let subsets = ratings["subsets"].as_array().unwrap();
        assert_eq!(subsets.len(), 1, "{ratings}");
        assert_eq!(subsets[0]["subset"], "v1", "{ratings}");
        assert_eq!(subsets[0]["requests"], 10, "{ratings}");
        assert_eq!(subsets[0]["failures"], 0, "{ratings}");
    });
    let metrics = cp.request("GET", "/metrics", None, false).unwrap().1;
    for reason in ["unreachable", "backwards", "implausible"] {
        let line = format!("weft_control_stats_entries_dropped_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

/// A certificate request's body is bounded (64 KiB, 413 beyond), and one just under the bound that
/// holds no valid CSR is refused as soon as it is read: neither costs more than reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_certificate_requests_are_refused_at_once() {
    let cp = ControlProc::start("csr-bounds");
    let token = cp.token("default", "big", 60);
    let started = std::time::Instant::now();
    let (status, body) = certificate(&cp, &"A".repeat(70 << 10), Some(&token), None).await;
    assert_eq!(status, 413, "{body}");
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        "QUFBQUFB\n".repeat(6000)
    );
    let (status, body) = certificate(&cp, &pem, Some(&token), None).await;
    assert!((400..500).contains(&status), "{status}: {body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A real request with the same token still joins.
    let who = SpiffeId::parse("spiffe://mesh.test/ns/default/sa/big").unwrap();
    join(&cp, &token, &who).await;
}

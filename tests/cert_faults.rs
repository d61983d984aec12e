//! Certificates against time, with the real binaries: a leaf expiring while the control plane is down
//! (warned and counted before, refused closed at expiry, never sent in plaintext, renewed at once when
//! the control plane returns, the proxy running throughout), and proxies whose clocks are off from the
//! control plane's (libfaketime): 30 s either way works; 10 min either way is a clear error, counted,
//! that fixing the clock cures.

use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use weft::apps::{client, http as http_app};
use weft::control::ControlProc;
use weft::mesh::{backend_service, MeshProxyBuilder};
use weft::pki::{IdentityFiles, TempDir};
use weft::proxy::ProxyProc;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// libfaketime's path; `None` (the test skips) when it is missing, a failure under WEFT_E2E_REQUIRE=1.
fn libfaketime() -> Option<&'static str> {
    if Path::new(LIBFAKETIME).exists() {
        return Some(LIBFAKETIME);
    }
    let msg = format!("{LIBFAKETIME} is missing: install Debian's `faketime` (tests/run.sh does)");
    assert!(
        std::env::var("WEFT_E2E_REQUIRE").as_deref() != Ok("1"),
        "{msg} (WEFT_E2E_REQUIRE=1)"
    );
    eprintln!("skipping: {msg}");
    None
}

/// A control plane issuing `ttl` leaves, the `backend` service, and a backend proxy in front of an app.
fn backend_mesh(tag: &str, ttl: &str) -> (ControlProc, weft::apps::AppHandle, ProxyProc) {
    let cp = ControlProc::start(tag);
    let app = http_app::serve_on_loopback("backend");
    let mut resources = backend_service(app.addr().port());
    resources.push_str(&format!(
        "---\napiVersion: weft.dev/v1\nkind: MeshConfig\nmetadata:\n  name: default\nspec:\n  certificateTtl: {ttl}\n"
    ));
    let body = serde_json::json!({ "files": [{ "name": "mesh.yaml", "text": resources }] });
    cp.api("POST", "/v1/apply?wait=0", Some(&body.to_string()));
    let backend = MeshProxyBuilder::new(&cp, "backend-1", "default", "backend")
        .token(&cp.token("default", "backend", 600))
        .app_port(app.addr().port())
        .start();
    (cp, app, backend)
}

/// A frontend proxy (identity `default/frontend`) with a listener for the backend.
fn frontend(cp: &ControlProc, name: &str) -> MeshProxyBuilder {
    MeshProxyBuilder::new(cp, name, "default", "frontend")
        .token(&cp.token("default", "frontend", 600))
        .service("backend", 9080, "http")
}

async fn get(addr: SocketAddr) -> Result<client::ResponseSummary, String> {
    client::http1(addr, Method::GET, "/info", &[], bytes::Bytes::new())
        .await
        .map_err(|e| e.to_string())
}

/// Waits until a request through `p` reaches the backend; the time it took.
async fn wait_ok(p: &ProxyProc, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let last = get(p.outbound[0]).await;
        if matches!(&last, Ok(r) if r.status == StatusCode::OK) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{} never reached the backend (last: {:?}):\n{}",
            p.name,
            last.map(|r| format!("{} {}", r.status, r.text())),
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `f` holds for `p`'s metrics.
fn wait_metric(p: &ProxyProc, what: &str, timeout: Duration, f: impl Fn(&ProxyProc) -> bool) {
    let deadline = Instant::now() + timeout;
    while !f(p) {
        assert!(
            Instant::now() < deadline,
            "{}: {what} not seen within {timeout:?}\n{}\n{}",
            p.name,
            p.metrics(),
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests a proxy carried in from peers (or plaintext clients) to its app.
fn inbound(p: &ProxyProc) -> f64 {
    p.metric(
        "weft_proxy_http_requests_total",
        &[r#"direction="inbound""#],
    )
}

fn log_lines(p: &ProxyProc, needle: &str) -> Vec<String> {
    p.log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_with_the_control_plane_down_fails_closed_and_renews_at_once_on_its_return(
) {
    let (mut cp, _app, backend) = backend_mesh("cert-expiry", "20s");
    let mut front = frontend(&cp, "frontend-1").start();
    wait_ok(&front, Duration::from_secs(20)).await;
    let pid = front.pid();
    cp.kill9();

    // (a) Well before expiry: a warning at each failed renewal with what is left, and the metrics.
    assert!(
        front.wait_log(
            "certificate renewal failed; retrying",
            Duration::from_secs(20)
        ),
        "{}",
        front.log()
    );
    let warning = log_lines(&front, "certificate renewal failed; retrying").remove(0);
    assert!(warning.contains("expires_in"), "{warning}");
    let expiry = front.metric("weft_proxy_cert_expiry_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "warned {:.0} s before expiry", expiry - now);
    eprintln!("first warning {:.1} s before expiry", expiry - now);
    assert!(front.metric("weft_proxy_cert_renewals_total", &[r#"result="failed""#]) >= 1.0);
    assert_eq!(front.metric("weft_proxy_cert_expired", &[]), 0.0);

    // (b) At expiry: fail closed, with a clear answer, nothing reaching the app.
    wait_metric(&front, "cert_expired 1", Duration::from_secs(30), |p| {
        p.metric("weft_proxy_cert_expired", &[]) == 1.0
    });
    // The backend app's own connection count also moves with its readiness probe: count the requests
    // the backend's proxy carried in instead.
    let delivered = inbound(&backend);
    let r = get(front.outbound[0]).await.expect("an answer");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.headers["weft-proxy-error"], "cert_expired");
    assert!(r.text().contains("certificate expired"), "{}", r.text());
    assert!(
        r.text().contains("never sends the request in plaintext"),
        "{}",
        r.text()
    );
    assert_eq!(
        inbound(&backend),
        delivered,
        "nothing may reach the peer's app"
    );
    assert!(front.metric("weft_proxy_rejections_total", &[r#"reason="cert_expired""#]) >= 1.0);
    assert_eq!(
        log_lines(&front, "certificate expired and could not be renewed").len(),
        1,
        "said once"
    );
    // The peer refuses the expired leaf itself (not only this proxy holding back), once its clock is
    // past the leaf's notAfter (whole seconds: X.509 times have no finer resolution).
    let past = std::time::UNIX_EPOCH + Duration::from_secs_f64(expiry + 1.5);
    if let Ok(wait) = past.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let cache = front.config.parent().unwrap().join("cache");
    let files = IdentityFiles {
        id: front.id.clone(),
        cert: cache.join("cert.pem"),
        key: cache.join("key.pem"),
        bundle: cp.bundle_path(),
    };
    let probe = weft::tls_probe::probe(backend.tunnel, Some(&files)).await;
    assert!(
        probe.is_err(),
        "the peer accepted an expired leaf: {probe:?}"
    );
    wait_metric(
        &backend,
        "tls failure: expired",
        Duration::from_secs(5),
        |p| {
            p.metric(
                "weft_proxy_tls_handshake_failures_total",
                &[r#"reason="expired""#],
            ) >= 1.0
        },
    );
    assert_eq!(inbound(&backend), delivered);
    // Still running; local health and admin still answer.
    assert!(front.is_running());
    assert_eq!(weft::net::http_get(front.health, "/live").unwrap().0, 200);
    assert_eq!(
        weft::net::http_get(front.admin, "/identity").unwrap().0,
        200
    );

    // (c) The control plane returns: renewed within about a second, traffic flows, no restart.
    let opened = front.metric("weft_proxy_peer_connections_opened_total", &[]);
    cp.restart();
    let back = Instant::now();
    // The proxy retries every second; the bound leaves room for a control plane slow to answer on a
    // busy machine (typically 0.3 s).
    wait_metric(&front, "cert_expired 0", Duration::from_secs(10), |p| {
        p.metric("weft_proxy_cert_expired", &[]) == 0.0
    });
    let renewed_in = back.elapsed();
    eprintln!("renewed {renewed_in:?} after the control plane was back");
    // The backend renews in the same second; until it has, its expired leaf would be refused and its
    // endpoint ejected for a while (see docs/security.md).
    wait_metric(
        &backend,
        "backend cert_expired 0",
        Duration::from_secs(10),
        |p| p.metric("weft_proxy_cert_expired", &[]) == 0.0,
    );
    wait_ok(&front, Duration::from_secs(10)).await;
    assert!(inbound(&backend) > delivered);
    // On a new connection: the one made before expiry, with the peer's expired leaf, is not reused.
    assert!(front.metric("weft_proxy_peer_connections_opened_total", &[]) > opened);
    assert_eq!(front.pid(), pid);
    assert!(front
        .log()
        .contains("certificate renewed after it had expired"));
    assert!(cp.log().contains("renewal with an expired certificate"));
}

/// Environment that runs a proxy `offset` off (libfaketime: "-30s", "+600"...), its timers unaffected.
fn skewed(b: MeshProxyBuilder, lib: &str, offset: &str) -> MeshProxyBuilder {
    b.env("LD_PRELOAD", lib)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_30_s_behind_or_ahead_of_the_control_plane_join_renew_and_serve() {
    let Some(lib) = libfaketime() else { return };
    let (cp, _app, _backend) = backend_mesh("skew-30", "20s");
    let behind = skewed(frontend(&cp, "behind-1"), lib, "-30s").start();
    let ahead = skewed(frontend(&cp, "ahead-1"), lib, "+30s").start();
    for (p, want) in [(&behind, -30.0), (&ahead, 30.0)] {
        wait_ok(p, Duration::from_secs(20)).await;
        let skew = p.metric("weft_proxy_clock_skew_seconds", &[]);
        assert!((skew - want).abs() <= 2.0, "{}: skew {skew}", p.name);
    }
    let started = Instant::now();
    for p in [&behind, &ahead] {
        assert!(
            p.wait_log("certificate renewed", Duration::from_secs(25)),
            "{}",
            p.log()
        );
        wait_ok(p, Duration::from_secs(5)).await;
    }
    // Renewal follows the issued lifetime, not the skewed clock: no storm of renewals.
    let elapsed = started.elapsed();
    for p in [&behind, &ahead] {
        let ok = p.metric("weft_proxy_cert_renewals_total", &[r#"result="ok""#]);
        assert!((1.0..=3.0).contains(&ok), "{}: {ok} renewals", p.name);
        assert_eq!(p.metric("weft_proxy_clock_skew_errors_total", &[]), 0.0);
        assert_eq!(p.metric("weft_proxy_cert_expired", &[]), 0.0);
    }
    eprintln!("both renewed and served within {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_10_minutes_off_is_a_clear_error_that_fixing_the_clock_cures() {
    let Some(lib) = libfaketime() else { return };
    let (cp, _app, _backend) = backend_mesh("skew-600", "20s");
    let dir = TempDir::new("skew-clock");
    let clock = dir.path().join("offset");
    let set = |offset: &str| std::fs::write(&clock, offset).expect("write the offset");
    set("-600");
    let mut p = frontend(&cp, "frontend-1")
        .env("LD_PRELOAD", lib)
        .env("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap())
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .launch();

    // Joining 10 min behind: the control plane's certificate is not valid yet by this clock.
    assert!(
        p.wait_log("check the clock (NTP)", Duration::from_secs(15)),
        "{}",
        p.log()
    );
    let line = log_lines(&p, "check the clock (NTP)").remove(0);
    assert!(line.contains("not valid before"), "{line}");
    assert!(line.contains("this machine's clock says"), "{line}");
    set("+0");
    p.wait_ready(Duration::from_secs(15));
    wait_ok(&p, Duration::from_secs(15)).await;

    // 10 min ahead when renewing: the issued certificate shows it; refused, counted, retried.
    set("+600");
    assert!(
        p.wait_log("s ahead of the control plane's", Duration::from_secs(25)),
        "{}",
        p.log()
    );
    assert!(p.metric("weft_proxy_clock_skew_errors_total", &[]) >= 1.0);
    // 10 min behind when renewing: the control plane's certificate is not valid yet.
    let before = log_lines(&p, "not valid before").len();
    set("-600");
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_lines(&p, "not valid before").len() == before {
        assert!(Instant::now() < deadline, "{}", p.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let errors = p.metric("weft_proxy_clock_skew_errors_total", &[]);
    assert!(errors >= 2.0, "{errors}");

    // The clock fixed: renewed, and traffic flows again, without a restart.
    let renewed = log_lines(&p, "certificate renewed").len();
    set("+0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_lines(&p, "certificate renewed").len() == renewed {
        assert!(Instant::now() < deadline, "{}", p.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_ok(&p, Duration::from_secs(10)).await;
    assert!(p.is_running());
}

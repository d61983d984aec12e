//! Traffic management between real pods, against backends that misbehave on command
//! (`examples/chaos.rs`): split accuracy, sticky splits, zero errors while weights move, retries and
//! their budget, timeouts, outlier ejection and return, bulkheads, rate limits, fallbacks and TCP connect
//! retries. Needs root, `ip` and `iptables` (see `weft::pods::available`). docs/traffic.md is the spec.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft::pods::{available, example, PodHandle, PodMesh};

fn service(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 9080, protocol: http}}]\n  selector: {{app: {name}}}\n{extra}"
    )
}

/// A `chaos serve` pod of `svc` labelled `version`.
fn backend(mesh: &mut PodMesh, pod: &str, svc: &str, version: &str, flags: &[&str]) -> PodHandle {
    let chaos = example("chaos");
    let mut cmd = vec![
        chaos.as_str(),
        "serve",
        "--listen",
        "0.0.0.0:9080",
        "--version",
        version,
    ];
    cmd.extend_from_slice(flags);
    let label = format!("version={version}");
    mesh.pod(
        pod,
        &["--service", svc, "--label", &label, "--port", "9080"],
        &cmd,
    )
}

/// Runs `chaos load` in `pod` and returns its summary.
/// 2,000 requests from 2,000 different users (`x-user` varies), 8 at a time.
const USERS_2000: &[&str] = &[
    "--requests",
    "2000",
    "--concurrency",
    "8",
    "--vary-header",
    "x-user",
];

fn load(mesh: &PodMesh, pod: &PodHandle, url: &str, args: &[&str]) -> Value {
    let chaos = example("chaos");
    let mut cmd = vec![chaos.as_str(), "load", "--url", url];
    cmd.extend_from_slice(args);
    let out = mesh.exec_ok(pod, &cmd);
    serde_json::from_str(out.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{out}: {e}"))
}

fn stats(mesh: &PodMesh, pod: &PodHandle) -> Value {
    let out = mesh.exec_ok(pod, &["curl", "-s", "127.0.0.1:9080/_chaos/stats"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"))
}

fn arrivals(mesh: &PodMesh, pod: &PodHandle) -> u64 {
    stats(mesh, pod)["requests"].as_u64().unwrap_or(0)
}

fn set_mode(mesh: &PodMesh, pod: &PodHandle, mode: &str) {
    mesh.exec_ok(
        pod,
        &[
            "curl",
            "-sf",
            "-X",
            "POST",
            "-d",
            mode,
            "127.0.0.1:9080/_chaos/mode",
        ],
    );
}

fn count(v: &Value, key: &str, item: &str) -> u64 {
    v[key][item].as_u64().unwrap_or(0)
}

/// Waits until `ok` holds for a fresh summary (a pushed change has reached the client's sidecar).
fn until(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within 10s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn splits_are_accurate_sticky_and_shift_without_errors() {
    if !available("traffic") {
        return;
    }
    let mut mesh = PodMesh::new("split");
    mesh.apply(&service("reviews", ""));
    backend(&mut mesh, "reviews-v1", "reviews", "v1", &[]);
    backend(&mut mesh, "reviews-v2", "reviews", "v2", &[]);
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    let url = "http://reviews:9080/";

    mesh.weftctl_ok(&["shift", "reviews", "v1=90", "v2=10"]);
    let split = load(
        &mesh,
        &client,
        url,
        &["--requests", "10000", "--concurrency", "16"],
    );
    assert_eq!(count(&split, "by_status", "200"), 10_000, "{split}");
    let v2 = count(&split, "by_version", "v2") as f64 / 100.0;
    assert!(
        (8.0..=12.0).contains(&v2),
        "90/10 over 10,000 gave v2 {v2}%: {split}"
    );

    // Continuous load while the weights move and move back: no request fails.
    let chaos = example("chaos");
    let background = Command::new("ip")
        .args(["netns", "exec", &client.netns, &chaos, "load", "--url", url])
        .args([
            "--requests",
            "100000000",
            "--concurrency",
            "4",
            "--duration",
            "8",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("background load");
    std::thread::sleep(Duration::from_secs(1));
    for step in [
        &["shift", "reviews", "v1=50", "v2=50"][..],
        &["shift", "reviews", "v2=100"],
        &["rollback", "reviews"],
    ] {
        let out = mesh.weftctl_ok(step);
        let ms = out
            .split("proxies in ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no ack time in {out}"));
        assert!(
            ms < 1000,
            "{step:?} took {ms} ms to be acked everywhere: {out}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let out = background.wait_with_output().expect("background load");
    let during: Value = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{out:?}: {e}"));
    let sent = during["sent"].as_u64().unwrap_or(0);
    assert!(sent > 500, "too little load to mean anything: {during}");
    assert_eq!(
        count(&during, "by_status", "200"),
        sent,
        "every request succeeds: {during}"
    );
    assert_eq!(during["transport_errors"], 0, "{during}");
    assert!(count(&during, "by_version", "v1") > 0 && count(&during, "by_version", "v2") > 0);

    // A/B by header and sticky splits.
    mesh.apply(&sticky_route(90, 10));
    until(
        || {
            load(
                &mesh,
                &client,
                url,
                &["--requests", "50", "--header", "x-user-group:beta"],
            )["by_version"]["v2"]
                == 50
        },
        "the beta header rule",
    );
    let alice = load(
        &mesh,
        &client,
        url,
        &["--requests", "200", "--header", "x-user:alice"],
    );
    let one_version = alice["by_version"].as_object().map(|m| m.len());
    assert_eq!(one_version, Some(1), "one user, one version: {alice}");
    let before = load(&mesh, &client, url, USERS_2000);
    let v2 = count(&before, "by_version", "v2");
    assert!(
        (120..=280).contains(&v2),
        "sticky 90/10 over 2000 users gave v2 {v2}: {before}"
    );
    mesh.apply(&sticky_route(80, 20));
    until(
        || count(&load(&mesh, &client, url, USERS_2000), "by_version", "v2") > 300,
        "the 80/20 weights",
    );
    let after = load(&mesh, &client, url, USERS_2000);
    let users = |v: &Value, version: &str| -> Vec<String> {
        v["by_user"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, x)| *x == version)
                    .map(|(u, _)| u.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let was_v2 = users(&before, "v2");
    let now_v2 = users(&after, "v2");
    assert!(
        now_v2.len() > was_v2.len(),
        "{} then {}",
        was_v2.len(),
        now_v2.len()
    );
    let moved_back: Vec<_> = was_v2.iter().filter(|u| !now_v2.contains(u)).collect();
    assert!(
        moved_back.is_empty(),
        "users on v2 must stay there when v2 grows: {moved_back:?}"
    );
}

fn sticky_route(v1: u32, v2: u32) -> String {
    [
        "apiVersion: weft.dev/v1",
        "kind: HTTPRoute",
        "metadata: {name: reviews}",
        "spec:",
        "  parentRefs: [{name: reviews}]",
        "  rules:",
        "  - matches: [{headers: [{name: x-user-group, value: beta}]}]",
        "    backendRefs: [{name: reviews, subset: v2}]",
        "  - sessionPersistence: {type: Header, sessionName: x-user}",
        "    backendRefs:",
        &format!("    - {{name: reviews, subset: v1, weight: {v1}}}"),
        &format!("    - {{name: reviews, subset: v2, weight: {v2}}}"),
        "",
    ]
    .join("\n")
}

/// No ejection (so every try reaches the one endpoint) and a budget whose floor is small enough to see.
const ONE_ENDPOINT: &str = "  trafficPolicy:\n    outlierDetection: {consecutiveErrors: 0}\n    retryBudget: {percent: 20, minRetriesPerSecond: 1}\n";

fn route(name: &str, rule: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{name: {name}}}]\n  rules:\n  - backendRefs: [{{name: {name}}}]\n{rule}"
    )
}

#[test]
fn retries_are_counted_budgeted_and_timeouts_are_the_proxys() {
    if !available("traffic") {
        return;
    }
    let mut mesh = PodMesh::new("retry");
    mesh.apply(&service("flaky", ONE_ENDPOINT));
    mesh.apply(&service("slow", ONE_ENDPOINT));
    let flaky = backend(
        &mut mesh,
        "flaky",
        "flaky",
        "v1",
        &["--fail-percent", "100", "--status", "503"],
    );
    let slow = backend(&mut mesh, "slow", "slow", "v1", &["--delay-ms", "1000"]);
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    let flaky_url = "http://flaky:9080/";

    // Default policy: two retries of a 503 for an idempotent method; the backend sees every try.
    let r = load(&mesh, &client, flaky_url, &["--requests", "5"]);
    assert_eq!(count(&r, "by_status", "503"), 5, "{r}");
    assert_eq!(r["retries"], 10, "{r}");
    assert_eq!(arrivals(&mesh, &flaky), 15);
    let r = load(
        &mesh,
        &client,
        flaky_url,
        &["--requests", "3", "--method", "POST"],
    );
    assert_eq!(r["retries"], 0, "POST is not retried by default: {r}");
    assert_eq!(arrivals(&mesh, &flaky), 18);

    // Configured codes: 500 retried (three times), 503 no longer.
    mesh.apply(&route("flaky", "    retry: {attempts: 3, codes: [500]}\n"));
    set_mode(&mesh, &flaky, r#"{"fail_percent":100,"status":500}"#);
    until(
        || load(&mesh, &client, flaky_url, &["--requests", "1"])["retries"] == 3,
        "codes: [500]",
    );
    set_mode(&mesh, &flaky, r#"{"fail_percent":100,"status":503}"#);
    let r = load(&mesh, &client, flaky_url, &["--requests", "3"]);
    assert_eq!(r["retries"], 0, "{r}");

    // gRPC: a trailers-only UNAVAILABLE is retried when the policy names it.
    mesh.apply(&route(
        "flaky",
        "    retry: {attempts: 2, grpcCodes: [UNAVAILABLE]}\n",
    ));
    set_mode(&mesh, &flaky, r#"{"fail_percent":100,"grpc_status":14}"#);
    until(
        || load(&mesh, &client, flaky_url, &["--requests", "1"])["retries"] == 2,
        "grpcCodes: [UNAVAILABLE]",
    );
    set_mode(&mesh, &flaky, r#"{"fail_percent":100,"grpc_status":3}"#);
    let r = load(&mesh, &client, flaky_url, &["--requests", "2"]);
    assert_eq!(r["retries"], 0, "INVALID_ARGUMENT is not retried: {r}");
    set_mode(&mesh, &flaky, r#"{"fail_percent":100,"status":503}"#);

    // The budget: under a backend failing every request, retries stay near 20% of requests.
    mesh.apply(&route("flaky", "    retry: {attempts: 2}\n"));
    std::thread::sleep(Duration::from_millis(500));
    mesh.exec_ok(
        &flaky,
        &[
            "curl",
            "-sf",
            "-X",
            "POST",
            "127.0.0.1:9080/_chaos/reset-stats",
        ],
    );
    let started = Instant::now();
    let r = load(
        &mesh,
        &client,
        flaky_url,
        &["--requests", "400", "--concurrency", "4"],
    );
    let secs = started.elapsed().as_secs_f64();
    let seen = arrivals(&mesh, &flaky) as f64;
    let bound = 400.0 * 1.2 + (secs + 10.0) + 20.0;
    assert_eq!(count(&r, "by_status", "503"), 400, "{r}");
    assert!(
        seen <= bound,
        "{seen} arrivals for 400 requests (bound {bound:.0}): a retry storm"
    );
    assert!(seen >= 420.0, "some retries are still made: {seen}");

    // Timeouts answered by the proxy, marked as its own.
    mesh.apply(&route("slow", "    timeouts: {request: 300ms}\n"));
    until(
        || {
            count(
                &load(&mesh, &client, "http://slow:9080/", &["--requests", "1"]),
                "proxy_errors",
                "request_timeout",
            ) == 1
        },
        "the request timeout",
    );
    let r = load(&mesh, &client, "http://slow:9080/", &["--requests", "3"]);
    assert_eq!(count(&r, "by_status", "504"), 3, "{r}");
    assert!(
        r["max_ms"].as_f64().unwrap_or(1e9) < 900.0,
        "answered at the timeout: {r}"
    );
    mesh.apply(&route("slow", "    timeouts: {request: 5s, backendRequest: 200ms}\n    retry: {attempts: 2, backoff: 10ms}\n"));
    until(
        || {
            count(
                &load(&mesh, &client, "http://slow:9080/", &["--requests", "1"]),
                "proxy_errors",
                "per_try_timeout",
            ) == 1
        },
        "the per-try timeout",
    );
    let before = arrivals(&mesh, &slow);
    let r = load(&mesh, &client, "http://slow:9080/", &["--requests", "2"]);
    assert_eq!(count(&r, "proxy_errors", "per_try_timeout"), 2, "{r}");
    assert_eq!(
        arrivals(&mesh, &slow) - before,
        6,
        "three tries per request reach the backend"
    );

    // A response body that stops: without an idle timeout the client waits for as long as it is
    // willing to; with one, the proxy ends the response when no byte has come for that long.
    set_mode(&mesh, &slow, r#"{"fail_percent": 100, "stall_body": true}"#);
    let fetch = || {
        let out = mesh.exec(
            &client,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{time_total}",
                "--max-time",
                "3",
                "http://slow:9080/",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let secs: f64 = text
            .split(' ')
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        (out.status.code(), text, secs)
    };
    mesh.apply(&route("slow", "    timeouts: {request: 30s}\n"));
    until(
        || fetch().0 == Some(28),
        "a stalled body without an idle timeout",
    );
    mesh.apply(&route(
        "slow",
        "    timeouts: {request: 30s, idle: 400ms}\n",
    ));
    until(|| fetch().0 != Some(28), "the idle timeout");
    let (code, text, secs) = fetch();
    assert!(text.starts_with("200 "), "the head came through: {text}");
    assert!(
        matches!(code, Some(18) | Some(56)),
        "the body was cut short (curl exit {code:?}): {text}"
    );
    assert!(
        (0.3..2.0).contains(&secs),
        "cut at the idle timeout: {text}"
    );
}

#[test]
fn outliers_are_ejected_and_return_bulkheads_shed_and_fallbacks_answer() {
    if !available("traffic") {
        return;
    }
    let mut mesh = PodMesh::new("eject");
    mesh.apply(&service(
        "pool",
        "  trafficPolicy:\n    outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 2s, maxEjectionPercent: 50}\n",
    ));
    mesh.apply(&service(
        "solo",
        "  trafficPolicy:\n    outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 2s, maxEjectionPercent: 100}\n",
    ));
    mesh.apply(&service(
        "narrow",
        "  trafficPolicy:\n    connectionPool: {maxRequests: 2, maxPendingRequests: 0}\n",
    ));
    mesh.apply(&service("gone", ""));
    mesh.apply(&route(
        "gone",
        "    fallback:\n      response: {status: 200, body: degraded, headers: [{name: x-degraded, value: \"1\"}]}\n",
    ));
    mesh.apply(&service("gone2", ""));
    mesh.apply(&route(
        "gone2",
        "    fallback:\n      backendRef: {name: pool}\n",
    ));
    let good = backend(&mut mesh, "good", "pool", "v1", &[]);
    let bad = backend(
        &mut mesh,
        "bad",
        "pool",
        "v1",
        &["--fail-percent", "100", "--status", "503"],
    );
    let solo = backend(
        &mut mesh,
        "solo",
        "solo",
        "v1",
        &["--fail-percent", "100", "--status", "503"],
    );
    backend(&mut mesh, "narrow", "narrow", "v1", &["--delay-ms", "500"]);
    let narrow = mesh.pod("client", &[], &["sleep", "600"]);
    let client = &narrow;

    // The fast-failing endpoint does not win the balancer for being fast: it gets a handful of tries,
    // and those are retried on the good one.
    let r = load(
        &mesh,
        client,
        "http://pool:9080/",
        &["--requests", "200", "--concurrency", "2"],
    );
    assert_eq!(count(&r, "by_status", "200"), 200, "{r}");
    let (g, b) = (arrivals(&mesh, &good), arrivals(&mesh, &bad));
    assert!(b <= 10 && g >= 200, "good {g}, bad {b}");

    // Ejection: consecutive failures take the endpoint out (here the only one: nothing is left, so the
    // proxy answers at once), and it comes back after its ejection time.
    let r = load(&mesh, client, "http://solo:9080/", &["--requests", "1"]);
    assert_eq!(count(&r, "by_status", "503"), 1, "{r}");
    assert_eq!(arrivals(&mesh, &solo), 3, "three failed tries in a row");
    let r = load(&mesh, client, "http://solo:9080/", &["--requests", "10"]);
    assert_eq!(count(&r, "proxy_errors", "no_endpoint"), 10, "ejected: {r}");
    assert_eq!(
        arrivals(&mesh, &solo),
        3,
        "nothing reaches an ejected endpoint"
    );
    let metrics = mesh.exec_ok(client, &["curl", "-s", "127.0.0.1:15020/metrics"]);
    assert!(
        metrics.lines().any(|l| l == "weft_proxy_ejections_total 1"),
        "{metrics}"
    );
    set_mode(&mesh, &solo, r#"{"fail_percent":0}"#);
    std::thread::sleep(Duration::from_millis(2200));
    let r = load(&mesh, client, "http://solo:9080/", &["--requests", "10"]);
    assert_eq!(
        count(&r, "by_status", "200"),
        10,
        "back after the ejection time: {r}"
    );
    assert_eq!(arrivals(&mesh, &solo), 13);

    // The bulkhead sheds at once instead of queueing.
    let r = load(
        &mesh,
        client,
        "http://narrow:9080/",
        &["--requests", "10", "--concurrency", "10"],
    );
    let shed = count(&r, "proxy_errors", "overflow");
    assert!(shed >= 6, "{r}");
    assert_eq!(count(&r, "by_status", "503"), shed, "{r}");
    let narrow_pod = mesh_pod(&mesh, "narrow");
    assert!(
        stats(&mesh, &narrow_pod)["max_in_flight"]
            .as_u64()
            .unwrap_or(99)
            <= 2
    );
    assert!(
        r["p50_ms"].as_f64().unwrap_or(1e9) < 400.0,
        "shed requests are answered at once: {r}"
    );

    // Header modifiers: what the app receives, what the client gets back.
    mesh.apply(&route(
        "pool",
        "    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {set: [{name: x-test-canary, value: \"yes\"}], remove: [x-test-secret]}\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {add: [{name: x-served-by, value: weft}]}\n",
    ));
    until(
        || {
            let out = mesh.exec_ok(
                client,
                &[
                    "curl",
                    "-s",
                    "-i",
                    "-H",
                    "x-test-secret: 1",
                    "http://pool:9080/",
                ],
            );
            let out = out.to_ascii_lowercase();
            out.contains("x-echoed-canary: yes")
                && out.contains("x-served-by: weft")
                && !out.contains("x-echoed-secret")
        },
        "the route's header modifiers",
    );

    // A fallback service takes the requests of a service with no endpoint.
    let out = mesh.exec_ok(client, &["curl", "-s", "-i", "http://gone2:9080/"]);
    let lower = out.to_ascii_lowercase();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        lower.contains("weft-proxy-fallback: default/pool") && lower.contains("x-version: v1"),
        "{out}"
    );

    // No endpoint at all: the route's fallback answers.
    let out = mesh.exec_ok(client, &["curl", "-s", "-i", "http://gone:9080/"]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("weft-proxy-fallback: response"),
        "{out}"
    );
    assert!(
        out.to_ascii_lowercase().contains("x-degraded: 1") && out.ends_with("degraded"),
        "{out}"
    );
}

fn mesh_pod(mesh: &PodMesh, name: &str) -> PodHandle {
    PodHandle {
        name: name.to_string(),
        netns: format!("weft-{}-{name}", mesh.network),
        address: String::new(),
    }
}

#[test]
fn rate_limits_answer_429_per_route_and_per_caller() {
    if !available("traffic") {
        return;
    }
    let mut mesh = PodMesh::new("rate");
    mesh.apply(&service("api", ""));
    mesh.apply(&route(
        "api",
        "    rateLimit: {requests: 5, per: 1s, burst: 5, perSource: true}\n",
    ));
    backend(&mut mesh, "api", "api", "v1", &[]);
    let a = mesh.pod("caller-a", &["--service-account", "a"], &["sleep", "600"]);
    let b = mesh.pod("caller-b", &["--service-account", "b"], &["sleep", "600"]);
    let url = "http://api:9080/";
    until(
        || {
            count(
                &load(&mesh, &a, url, &["--requests", "20"]),
                "by_status",
                "429",
            ) > 0
        },
        "the rate limit",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    let r = load(&mesh, &a, url, &["--requests", "50"]);
    let refill = (started.elapsed().as_secs_f64() * 5.0).ceil() as u64;
    let ok = count(&r, "by_status", "200");
    assert!(
        (5..=5 + refill).contains(&ok),
        "5 per second, burst 5, {refill} refilled: {r}"
    );
    assert_eq!(count(&r, "by_status", "429"), 50 - ok, "{r}");
    assert_eq!(
        r["retry_after_seen"],
        50 - ok,
        "every 429 says when to retry: {r}"
    );
    assert_eq!(count(&r, "proxy_errors", "rate_limited"), 50 - ok);
    let r = load(&mesh, &b, url, &["--requests", "5"]);
    assert_eq!(
        count(&r, "by_status", "200"),
        5,
        "another caller has its own bucket: {r}"
    );
}

#[test]
fn opaque_tcp_moves_on_from_a_refusing_endpoint_and_caps_connections() {
    if !available("traffic") {
        return;
    }
    let chaos = example("chaos");
    let mut mesh = PodMesh::new("tcpr");
    mesh.apply(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  ports: [{port: 7000, protocol: tcp}]\n  selector: {app: echo}\n",
    );
    mesh.pod(
        "echo-good",
        &["--service", "echo", "--port", "9080", "--port", "7000"],
        &[
            &chaos,
            "serve",
            "--version",
            "good",
            "--tcp-listen",
            "0.0.0.0:7000",
        ],
    );
    // Ready (its HTTP port answers) but nothing listens on 7000.
    mesh.pod(
        "echo-broken",
        &["--service", "echo", "--port", "9080", "--port", "7000"],
        &[&chaos, "serve", "--version", "broken"],
    );
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    for _ in 0..12 {
        let got = mesh.exec_ok(&client, &[&chaos, "tcp", "--addr", "echo:7000"]);
        assert_eq!(
            got.trim(),
            "good",
            "every connection lands on the endpoint that takes it"
        );
    }

    // maxConnections: with two connections held open, a third is closed by the caller's sidecar, and
    // once they are gone connections go through again.
    mesh.apply(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: narrow}\nspec:\n  ports: [{port: 7000, protocol: tcp}]\n  selector: {app: echo}\n  serviceAccounts: [echo]\n  trafficPolicy:\n    connectionPool: {maxConnections: 2}\n",
    );
    let tcp = |mesh: &PodMesh| mesh.exec(&client, &[&chaos, "tcp", "--addr", "narrow:7000"]);
    until(|| tcp(&mesh).status.success(), "the narrow service");
    let hold = "exec 3<>/dev/tcp/narrow/7000; read -r banner <&3; sleep 4";
    for _ in 0..2 {
        mesh.spawn_in(&client, &["bash", "-c", hold]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let third = tcp(&mesh);
    assert!(
        !third.status.success(),
        "a third connection while two are held: {third:?}"
    );
    assert!(
        mesh.sidecar_log("client")
            .contains("the destination's connection limit is reached"),
        "the refusal is logged"
    );
    until(
        || tcp(&mesh).status.success(),
        "connections after the holders left",
    );
}

//! What the sidecars say about the traffic they carry: Prometheus metrics whose values match the
//! requests sent, and access-log lines that parse and match them, on both sides of a hop. Real pods
//! (needs root, `ip` and `iptables`; see `weft::pods::available`).

use serde_json::Value;
use std::time::{Duration, Instant};
use weft::pods::{available, example, PodHandle, PodMesh};

const SERVICES: &str = "\
apiVersion: weft.dev/v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 8080, protocol: http}]
  selector: {app: web}
";

/// The value of the metric line with this name whose labels include every one of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The `web` service's pod: demo-app answering HTTP on 8080, labelled `version`.
fn web_pod(mesh: &mut PodMesh, app: &str, version: &str) -> PodHandle {
    let label = format!("version={version}");
    mesh.pod(
        "web",
        &["--service", "web", "--port", "8080", "--label", &label],
        &[app, "http", "--listen", "0.0.0.0:8080", "--name", "web"],
    )
}

fn scrape(mesh: &PodMesh, pod: &PodHandle) -> String {
    mesh.exec_ok(pod, &["curl", "-s", "127.0.0.1:15020/metrics"])
}

#[test]
fn metrics_and_access_logs_match_the_traffic_sent() {
    if !available("telemetry") {
        return;
    }
    let app = example("demo-app");
    let mut mesh = PodMesh::new("telem");
    mesh.apply(SERVICES);
    let web = web_pod(&mut mesh, &app, "v3");
    let client = mesh.pod(
        "client",
        &["--service-account", "client"],
        &["sleep", "600"],
    );
    let td = "spiffe://mesh.test/ns/default/sa";
    let (gets, posts) = (17, 5);
    for i in 0..gets {
        mesh.exec_ok(
            &client,
            &[
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                &format!("http://web:8080/item/{i}"),
            ],
        );
    }
    for _ in 0..posts {
        mesh.exec_ok(
            &client,
            &[
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "-d",
                "x=1",
                "http://web:8080/count",
            ],
        );
    }

    let out = scrape(&mesh, &client);
    let name = "weft_proxy_http_requests_total";
    let sent = |method: &str| {
        metric(
            &out,
            name,
            &[
                ("direction", "outbound"),
                ("source_identity", &format!("{td}/client")),
                ("destination_identity", &format!("{td}/web")),
                ("destination_service", "default/web"),
                ("method", method),
                ("status_code", "200"),
            ],
        )
    };
    assert_eq!(sent("GET"), Some(gets as f64), "{out}");
    assert_eq!(sent("POST"), Some(posts as f64), "{out}");
    let timed = metric(
        &out,
        "weft_proxy_http_request_duration_seconds_count",
        &[
            ("direction", "outbound"),
            ("destination_service", "default/web"),
        ],
    );
    assert_eq!(timed, Some((gets + posts) as f64), "{out}");
    // Each curl opened one connection to the client's sidecar and closed it.
    let conns = |text: &str, what: &str| {
        metric(
            text,
            &format!("weft_proxy_connections_{what}"),
            &[("direction", "outbound"), ("protocol", "http1")],
        )
    };
    assert_eq!(
        conns(&out, "opened_total"),
        Some((gets + posts) as f64),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = scrape(&mesh, &client);
        if conns(&now, "closed_total") == Some((gets + posts) as f64) {
            assert_eq!(conns(&now, "active"), Some(0.0), "{now}");
            break;
        }
        assert!(Instant::now() < deadline, "closed connections: {now}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let inb = scrape(&mesh, &web);
    let got = metric(
        &inb,
        name,
        &[
            ("direction", "inbound"),
            ("source_identity", &format!("{td}/client")),
            ("destination_version", "v3"),
            ("method", "GET"),
        ],
    );
    assert_eq!(got, Some(gets as f64), "{inb}");

    // One access-log line per request on each side, matching what was sent.
    let lines = wait_lines(&mesh, "client", gets + posts);
    let items: Vec<&Value> = lines
        .iter()
        .filter(|l| l["path"].as_str().is_some_and(|p| p.starts_with("/item/")))
        .collect();
    assert_eq!(items.len(), gets, "{lines:?}");
    for (i, l) in items.iter().enumerate() {
        assert_eq!(l["path"], format!("/item/{i}"), "{l}");
        assert_eq!(l["method"], "GET");
        assert_eq!(l["status"], 200);
        assert_eq!(l["destination"], "default/web");
        assert!(l["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{l}");
    }
    let forms: Vec<&Value> = lines.iter().filter(|l| l["path"] == "/count").collect();
    assert_eq!(forms.len(), posts);
    assert!(
        forms
            .iter()
            .all(|l| l["bytes_received"] == 3 && l["method"] == "POST"),
        "{forms:?}"
    );
    let served = wait_lines(&mesh, "web", gets + posts);
    assert!(served
        .iter()
        .all(|l| l["direction"] == "inbound" && l["source"] == format!("{td}/client")));
}

fn wait_lines(mesh: &PodMesh, pod: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = mesh.access_log(pod);
        if lines.len() >= n || Instant::now() > deadline {
            assert_eq!(lines.len(), n, "{pod}: {lines:?}");
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `promtool check rules` on the shipped alert rules.
#[test]
fn the_shipped_alert_rules_pass_promtool() {
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/prometheus/weft-alerts.yml"
    );
    let out = match std::process::Command::new("promtool")
        .args(["check", "rules", rules])
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            let msg = format!("promtool not found ({e}); install Debian's `prometheus` package");
            if std::env::var("WEFT_E2E_REQUIRE").as_deref() == Ok("1") {
                panic!("{msg} (WEFT_E2E_REQUIRE=1)");
            }
            return eprintln!("SKIPPED {msg}");
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");
}

/// A real Prometheus, in the pod network's own namespace, scrapes the sidecars and answers a query about
/// the traffic; the shipped alert rules load.
#[test]
fn a_real_prometheus_scrapes_the_sidecars_and_answers_queries() {
    if !available("telemetry") {
        return;
    }
    if std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        let msg = "prometheus not found: install Debian's `prometheus` package";
        if std::env::var("WEFT_E2E_REQUIRE").as_deref() == Ok("1") {
            panic!("{msg} (WEFT_E2E_REQUIRE=1)");
        }
        return eprintln!("SKIPPED {msg}");
    }
    let app = example("demo-app");
    let mut mesh = PodMesh::new("prom");
    mesh.apply(SERVICES);
    let web = web_pod(&mut mesh, &app, "v1");
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    for _ in 0..12 {
        mesh.exec_ok(
            &client,
            &["curl", "-sf", "-o", "/dev/null", "http://web:8080/x"],
        );
    }

    let dir = mesh.run_dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/prometheus/weft-alerts.yml"
    );
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{rules:?}]\n\
scrape_configs:\n  - job_name: weft-proxies\n    static_configs:\n      - targets: [\"{}:15020\", \"{}:15020\"]\n  - job_name: weft-control\n    static_configs:\n      - targets: [\"198.18.0.1:15014\"]\n",
        web.address, client.address
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let bridge = PodHandle {
        name: "prometheus".into(),
        netns: format!("weft-{}", mesh.network),
        address: "127.0.0.1".into(),
    };
    let config_flag = format!("--config.file={}", dir.join("prometheus.yml").display());
    let data_flag = format!("--storage.tsdb.path={}", dir.join("data").display());
    mesh.spawn_in(
        &bridge,
        &[
            "prometheus",
            &config_flag,
            &data_flag,
            "--web.listen-address=127.0.0.1:9090",
        ],
    );
    let query = |q: &str| -> Value {
        let out = mesh.exec(
            &bridge,
            &[
                "curl",
                "-s",
                "--get",
                "--data-urlencode",
                &format!("query={q}"),
                "http://127.0.0.1:9090/api/v1/query",
            ],
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let q = "sum(weft_proxy_http_requests_total{direction=\"outbound\",destination_service=\"default/web\",status_code=\"200\"})";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = query(q);
        let got = v["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string);
        if got.as_deref() == Some("12") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not answer 12 for {q}: {v}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Both sidecars and the control plane scraped (each target's first scrape may come a moment apart);
    // the control plane's own series: two proxies connected, two certificates issued on joining.
    for (q, want) in [
        ("sum(up{job=\"weft-proxies\"})", "2"),
        ("sum(up{job=\"weft-control\"})", "1"),
        ("weft_control_proxies_connected", "2"),
        (
            "sum(weft_control_certificates_issued_total{kind=\"join\"})",
            "2",
        ),
    ] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = query(q);
            if v["data"]["result"][0]["value"][1] == want {
                break;
            }
            assert!(Instant::now() < deadline, "{q} should be {want}: {v}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // The metrics listener serves nothing else: the operator API is not reachable from the pods.
    let v1 = mesh.exec(
        &client,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://198.18.0.1:15014/v1/status",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&v1.stdout), "404");
    let rules_out = mesh.exec_ok(
        &bridge,
        &["curl", "-s", "http://127.0.0.1:9090/api/v1/rules"],
    );
    assert!(
        rules_out.contains("WeftServiceErrorRateHigh"),
        "{rules_out}"
    );
}

/// Spans as a collector received them: every span of every batch, Zipkin v2 JSON batches as they are
/// and OTLP/HTTP JSON batches read into the same shape (traceId, id, parentId, kind, service, tags).
fn spans(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|batch| match batch.get("resourceSpans") {
            Some(rs) => otlp_as_zipkin(rs),
            None => batch.as_array().cloned().unwrap_or_default(),
        })
        .collect()
}

fn otlp_as_zipkin(resource_spans: &Value) -> Vec<Value> {
    let attrs = |list: &Value| -> serde_json::Map<String, Value> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["key"].as_str().unwrap_or("").to_string(),
                    a["value"]["stringValue"].clone(),
                )
            })
            .collect()
    };
    let mut out = Vec::new();
    for rs in resource_spans.as_array().into_iter().flatten() {
        let service = attrs(&rs["resource"]["attributes"])["service.name"].clone();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let kind = match s["kind"].as_u64() {
                    Some(2) => "SERVER",
                    Some(3) => "CLIENT",
                    _ => "?",
                };
                out.push(serde_json::json!({
                    "traceId": s["traceId"],
                    "id": s["spanId"],
                    "parentId": s["parentSpanId"],
                    "kind": kind,
                    "localEndpoint": {"serviceName": service},
                    "tags": attrs(&s["attributes"]),
                    "otlp": true,
                }));
            }
        }
    }
    out
}

/// A trace id survives two hops (client → frontend → reviews, the app passing the context on as
/// traced apps do), each sidecar records a span whose parent is the previous hop's, and the spans
/// arrive at a collector (the client's as OTLP/HTTP JSON, the others' as Zipkin v2); a request without a trace gets one started, named in the access log.
#[test]
fn trace_ids_survive_two_hops_and_spans_reach_the_collector() {
    if !available("telemetry") {
        return;
    }
    let shop = example("shop");
    let chaos = example("chaos");
    let mut mesh = PodMesh::new("trace");
    mesh.apply(include_str!("../examples/shop/services.yaml"));
    let out = mesh.run_dir.path().join("spans.jsonl");
    let collector = mesh.outside("collector", "198.18.0.250");
    mesh.spawn_in(
        &collector,
        &[
            &chaos,
            "collect",
            "--listen",
            "0.0.0.0:9411",
            "--out",
            &out.display().to_string(),
        ],
    );
    let url = "http://198.18.0.250:9411/api/v2/spans";
    let flags =
        |svc: &'static str, port: &'static str, extra: &[&'static str]| -> Vec<&'static str> {
            let mut f = vec!["--service", svc, "--port", port, "--trace-collector", url];
            f.extend_from_slice(extra);
            f
        };
    mesh.pod(
        "reviews",
        &flags("reviews", "9080", &["--label", "version=v1"]),
        &[&shop, "reviews", "--version", "v1"],
    );
    mesh.pod(
        "frontend",
        &flags("frontend", "8080", &[]),
        &[&shop, "frontend"],
    );
    // The client's sidecar exports OTLP/HTTP JSON, the others Zipkin v2: both reach the collector.
    let otlp_url = "http://198.18.0.250:9411/v1/traces";
    let client = mesh.pod(
        "client",
        &["--trace-collector", otlp_url, "--trace-format", "otlp"],
        &["sleep", "600"],
    );

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    mesh.exec_ok(
        &client,
        &[
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "-H",
            &format!("traceparent: 00-{trace}-{caller_span}-01"),
            "http://frontend:8080/",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mine = loop {
        let mine: Vec<Value> = spans(&out)
            .into_iter()
            .filter(|s| s["traceId"] == trace)
            .collect();
        if mine.len() >= 4 || Instant::now() > deadline {
            break mine;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        mine.len(),
        4,
        "client out, frontend in and out, reviews in: {mine:#?}"
    );
    let find = |service: &str, kind: &str| -> &Value {
        mine.iter()
            .find(|s| s["localEndpoint"]["serviceName"] == service && s["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} span from {service}: {mine:#?}"))
    };
    let client_out = find("client", "CLIENT");
    let frontend_in = find("frontend", "SERVER");
    let frontend_out = find("frontend", "CLIENT");
    let reviews_in = find("reviews", "SERVER");
    assert_eq!(client_out["parentId"], caller_span);
    assert_eq!(frontend_in["parentId"], client_out["id"]);
    assert_eq!(frontend_out["parentId"], frontend_in["id"]);
    assert_eq!(reviews_in["parentId"], frontend_out["id"]);
    assert_eq!(client_out["tags"]["http.status_code"], "200");
    assert_eq!(client_out["otlp"], true, "the client's span came as OTLP");
    assert!(
        frontend_in.get("otlp").is_none(),
        "the frontend's as Zipkin"
    );

    // No trace header: the first sidecar starts one, and its access log names it.
    mesh.exec_ok(
        &client,
        &[
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "http://frontend:8080/?new",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logged = mesh.access_log("client");
        let line = logged.iter().find(|l| l["path"] == "/?new");
        let id = line
            .and_then(|l| l["trace_id"].as_str())
            .map(str::to_string);
        if let Some(id) = id {
            assert!(id != trace && id.len() == 32, "{line:?}");
            if spans(&out)
                .iter()
                .filter(|s| s["traceId"] == id.as_str())
                .count()
                >= 4
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no new trace: {logged:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `weftctl stat` and `weftctl top` show, per version, what the calling proxies measured: the failing
/// version stands out.
#[test]
fn weftctl_top_shows_a_failing_version() {
    if !available("telemetry") {
        return;
    }
    let chaos = example("chaos");
    let mut mesh = PodMesh::new("top");
    mesh.apply(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  ports: [{port: 9080, protocol: http}]\n  selector: {app: reviews}\n  trafficPolicy: {outlierDetection: {consecutiveErrors: 0}}\n",
    );
    // (No ejection: the failing version keeps its share, so its success rate is what it answers.)
    for (v, fail) in [("v1", "0"), ("v2", "40")] {
        let label = format!("version={v}");
        mesh.pod(
            &format!("reviews-{v}"),
            &["--service", "reviews", "--label", &label, "--port", "9080"],
            &[
                &chaos,
                "serve",
                "--version",
                v,
                "--fail-percent",
                fail,
                "--status",
                "500",
            ],
        );
    }
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    mesh.weftctl_ok(&["shift", "reviews", "v1=50", "v2=50"]);
    mesh.spawn_in(
        &client,
        &[
            &chaos,
            "load",
            "--url",
            "http://reviews:9080/",
            "--requests",
            "100000",
            "--duration",
            "20",
            "--pause-ms",
            "5",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));

    let json = mesh.weftctl_ok(&["stat", "reviews", "--window", "3s", "-o", "json"]);
    let rows: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    let row = |v: &str| {
        rows.as_array()
            .and_then(|r| r.iter().find(|r| r["version"] == v).cloned())
            .unwrap_or_else(|| panic!("no {v} row: {rows}"))
    };
    let (v1, v2) = (row("v1"), row("v2"));
    assert!(
        v1["requestsPerSecond"].as_f64().unwrap_or(0.0) > 5.0,
        "{v1}"
    );
    assert_eq!(v1["successRate"], 1.0, "{v1}");
    let failing = v2["successRate"].as_f64().unwrap_or(1.0);
    assert!((0.35..0.85).contains(&failing), "v2 fails about 40%: {v2}");
    assert!(v1["p99"].is_object(), "{v1}");

    let top = mesh.weftctl_ok(&[
        "top",
        "reviews",
        "--interval",
        "2s",
        "--iterations",
        "2",
        "--no-clear",
    ]);
    let lines: Vec<&str> = top.lines().filter(|l| l.starts_with("reviews")).collect();
    assert_eq!(lines.len(), 4, "two refreshes of two versions:\n{top}");
    let v2_line = lines
        .iter()
        .rev()
        .find(|l| l.contains(" v2 "))
        .copied()
        .unwrap_or_default();
    let pct: f64 = v2_line
        .split_whitespace()
        .nth(3)
        .and_then(|s| s.trim_end_matches('%').parse().ok())
        .unwrap_or(100.0);
    assert!(pct < 90.0, "top shows v2 failing: {top}");
}

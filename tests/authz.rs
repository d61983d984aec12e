//! Authorization by identity between real pods: AuthorizationPolicies allow and deny exactly as written
//! (identity, method, path, header, port), deny wins, audit mode refuses nothing and counts, paths are
//! normalised before matching (and encoded separators refused), and opaque TCP is authorized on
//! identity and port. Needs root, `ip` and `iptables` (see `weft::pods::available`).

use std::time::{Duration, Instant};
use weft::pods::{available, example, PodHandle, PodMesh};

const SERVICES: &str = "\
apiVersion: weft.dev/v1
kind: Service
metadata: {name: api}
spec:
  ports: [{port: 8080, protocol: http}]
  selector: {app: api}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: echo}
spec:
  ports: [{port: 9000, protocol: tcp}]
  selector: {app: echo}
";

const POLICIES: &str = "\
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: api-callers}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - from: [{serviceAccounts: [default/reviews]}]
    to: [{methods: [GET], paths: [/ratings/*]}]
  - from: [{principals: [spiffe://mesh.test/ns/default/sa/frontend]}]
    to: [{headers: [{name: x-role, value: admin}]}]
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-secrets}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - to: [{paths: [/ratings/secret, /ratings/secret/*]}]
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: trial-deny}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  mode: audit
  rules:
  - to: [{paths: [/ratings/audited]}]
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: echo-callers}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{serviceAccounts: [default/reviews]}]
    to: [{ports: [9000]}]
";

/// `curl` from a pod: status code and response headers.
fn curl(mesh: &PodMesh, pod: &PodHandle, args: &[&str]) -> (u16, String) {
    let mut cmd = vec![
        "curl",
        "-s",
        "--path-as-is",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--max-time",
        "5",
    ];
    cmd.extend_from_slice(args);
    let out = mesh.exec_ok(pod, &cmd);
    let status = out
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out.to_ascii_lowercase())
}

#[test]
fn policies_allow_and_deny_by_identity_method_path_header_and_port() {
    if !available("authz") {
        return;
    }
    let app = example("demo-app");
    let mut mesh = PodMesh::new("authz");
    mesh.apply(SERVICES);
    let api = mesh.pod(
        "api",
        &["--service", "api", "--port", "8080"],
        &[&app, "http", "--listen", "0.0.0.0:8080", "--name", "api"],
    );
    mesh.pod(
        "echo",
        &["--service", "echo", "--port", "9000"],
        &[&app, "tcp-echo", "--listen", "0.0.0.0:9000"],
    );
    let reviews = mesh.pod(
        "reviews",
        &["--service-account", "reviews"],
        &["sleep", "600"],
    );
    let frontend = mesh.pod(
        "frontend",
        &["--service-account", "frontend"],
        &["sleep", "600"],
    );
    mesh.apply(POLICIES);

    let url = |path: &str| format!("http://api:8080{path}");
    // The policy reaches the api's sidecar: a denied call is refused.
    wait_for(|| curl(&mesh, &frontend, &[&url("/x")]).0 == 403);

    let (s, h) = curl(&mesh, &reviews, &[&url("/ratings/1")]);
    assert_eq!(s, 200, "{h}");
    let (s, h) = curl(&mesh, &reviews, &["-X", "POST", &url("/ratings/1")]);
    assert_eq!(s, 403, "method not allowed by the rule: {h}");
    assert!(h.contains("weft-denied-by: default/api-callers"), "{h}");
    let (s, h) = curl(&mesh, &reviews, &[&url("/reviews/1")]);
    assert_eq!(s, 403, "path outside the rule: {h}");
    let (s, h) = curl(&mesh, &frontend, &[&url("/ratings/1")]);
    assert_eq!(s, 403, "identity outside the rule: {h}");
    let (s, h) = curl(
        &mesh,
        &frontend,
        &["-H", "x-role: admin", &url("/anything")],
    );
    assert_eq!(s, 200, "header rule: {h}");

    // Deny wins, whatever the spelling of the path.
    for path in [
        "/ratings/secret",
        "/ratings/secret/x",
        "/ratings/x/../secret",
        "//ratings//secret",
        "/ratings/./secret",
        "/ratings/%73ecret",
        "/ratings/%2e%2e/ratings/secret",
        "/ratings/secret?x=1",
    ] {
        let (s, h) = curl(&mesh, &reviews, &[&url(path)]);
        assert_eq!(s, 403, "{path}: {h}");
        assert!(
            h.contains("weft-denied-by: default/no-secrets"),
            "{path}: {h}"
        );
    }
    for path in [
        "/ratings%2fsecret",
        "/ratings/%2F../secret",
        "/ratings/%5csecret",
    ] {
        let (s, h) = curl(&mesh, &reviews, &[&url(path)]);
        assert_eq!(s, 400, "encoded separators are refused: {path}: {h}");
    }

    // Audit mode: allowed, and counted as a would-be denial.
    let (s, h) = curl(&mesh, &reviews, &[&url("/ratings/audited")]);
    assert_eq!(s, 200, "{h}");
    let metrics = mesh.exec_ok(&api, &["curl", "-s", "127.0.0.1:15020/metrics"]);
    let line = |policy: &str, mode: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("weft_proxy_authz_denials_total")
                    && l.contains(&format!("policy=\"{policy}\""))
                    && l.contains(&format!("mode=\"{mode}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
    };
    assert_eq!(
        line("default/trial-deny", "audit").as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert!(
        line("default/no-secrets", "enforce").is_some_and(|n| n.parse::<u32>().unwrap_or(0) >= 8),
        "{metrics}"
    );

    why_agrees_with_the_sidecars(&mesh, &reviews, &frontend);

    // Opaque TCP: identity and port decide; a denied stream is closed.
    let ok = mesh.exec(&reviews, &[&app, "tcp", "echo:9000"]);
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("got them back"),
        "reviews may use echo: {ok:?}"
    );
    let refused = mesh.exec(&frontend, &[&app, "tcp", "echo:9000"]);
    assert!(
        !String::from_utf8_lossy(&refused.stdout).contains("got them back"),
        "frontend may not: {refused:?}"
    );
    assert!(mesh
        .sidecar_log("echo")
        .contains("request denied by authorization policy"));
}

/// `weftctl why` explains, from the control plane's view, exactly what the sidecars do: for each request
/// its verdict matches the status curl gets through the real pods, and the policy it names is the one in
/// `weft-denied-by`.
fn why_agrees_with_the_sidecars(mesh: &PodMesh, reviews: &PodHandle, frontend: &PodHandle) {
    let cases: &[(&PodHandle, &str, &str, &str, Option<&str>)] = &[
        (reviews, "reviews", "GET", "/ratings/1", None),
        (reviews, "reviews", "POST", "/ratings/1", None),
        (reviews, "reviews", "GET", "/ratings/x/../secret", None),
        (reviews, "reviews", "GET", "/ratings%2fsecret", None),
        (reviews, "reviews", "GET", "/ratings/audited", None),
        (frontend, "frontend", "GET", "/ratings/1", None),
        (
            frontend,
            "frontend",
            "GET",
            "/anything",
            Some("x-role: admin"),
        ),
    ];
    for (pod, sa, method, path, header) in cases {
        let from = format!("default/{sa}");
        let mut args = vec![
            "why", "--from", &from, "--to", "api", "--method", method, "--path", path, "-o", "json",
        ];
        if let Some(h) = header {
            args.extend(["-H", h]);
        }
        let out = mesh.weftctl().args(&args).output().expect("run weftctl");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("weftctl {args:?}: {e}: {out:?}"));
        let verdict = answer["verdict"].as_str().unwrap_or("");
        assert_eq!(
            out.status.code(),
            Some(if verdict == "allowed" { 0 } else { 6 }),
            "{answer:#}"
        );

        let mut curl_args = vec!["-X", method];
        if let Some(h) = header {
            curl_args.extend(["-H", h]);
        }
        let url = format!("http://api:8080{path}");
        curl_args.push(&url);
        let (status, headers) = curl(mesh, pod, &curl_args);
        let endpoint = &answer["endpoints"][0];
        match status {
            200 => assert_eq!(verdict, "allowed", "{method} {path}: {answer:#}"),
            403 => {
                assert_eq!(verdict, "denied", "{method} {path}: {answer:#}");
                let policy = endpoint["authorization"]["decision"]["policy"]
                    .as_str()
                    .unwrap_or("?");
                assert!(
                    headers.contains(&format!("weft-denied-by: {policy}")),
                    "why names {policy}: {headers}"
                );
            }
            400 => assert_eq!(endpoint["decision"], "bad path", "{answer:#}"),
            other => panic!("{method} {path}: unexpected status {other}: {headers}"),
        }
    }

    // The table form names the rule that decided, the identity and the audit policy.
    let out = mesh
        .weftctl()
        .args([
            "why",
            "--from",
            "default/reviews",
            "--to",
            "api",
            "--path",
            "/ratings/audited",
        ])
        .output()
        .expect("run weftctl");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    for want in [
        "request   GET /ratings/audited to default/api:8080",
        "from      spiffe://mesh.test/ns/default/sa/reviews (workloads default/reviews)",
        "allowed by default/api-callers rules[0] (matched an ALLOW policy)",
        "policy default/trial-deny DENY (audit): rules[0] matches",
        "note: audit mode: would be denied by default/trial-deny rules[0]",
        "verdict   allowed",
    ] {
        assert!(table.contains(want), "missing {want:?} in:\n{table}");
    }
    // An opaque connection on the TCP service: identity and port.
    let out = mesh
        .weftctl()
        .args(["why", "--from", "default/frontend", "--to", "echo"])
        .output()
        .expect("run weftctl");
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{table}");
    assert!(
        table.contains("request   tcp to default/echo:9000"),
        "{table}"
    );
    assert!(
        table.contains("denied by default/echo-callers (no ALLOW policy matched)"),
        "{table}"
    );
    // A service that does not exist is an error naming it.
    let out = mesh
        .weftctl()
        .args(["why", "--from", "default/frontend", "--to", "nope"])
        .output()
        .expect("run weftctl");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no service default/nope"),
        "{out:?}"
    );
}

fn wait_for(mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "policy not in force after 10s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

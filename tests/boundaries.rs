//! A hostile caller against a pod's boundaries, with real pods, sidecars, interception and
//! `weft-control`: another pod's app (through its own sidecar and the mTLS tunnel) and a client outside
//! the mesh (plaintext, PERMISSIVE) try the pod's loopback services, its sidecar's admin port, DNS
//! responder and listeners, and forge the headers only the mesh may set; then method case and rate
//! limits on WebSocket, TCP streams and plaintext. Needs root, `ip` and `iptables` (see `weft::pods::available`).

use std::time::{Duration, Instant};
use weft::pods::{available, example, text, PodHandle, PodMesh};

const API: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: api}\nspec:\n  ports: [{port: 8080, protocol: http}]\n  selector: {app: api}\n";

/// A TCP DNS question (A api.default.svc.cluster.local) to ADDR PORT: prints `answered` when any answer
/// comes back, `no answer` when the connection is closed or refused.
const DNS_QUERY: &str = r#"
import socket, struct, sys
name = b"".join(bytes([len(p)]) + p.encode() for p in "api.default.svc.cluster.local".split("."))
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x00\x01\x00\x01"
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    s.settimeout(3)
    s.sendall(struct.pack(">H", len(q)) + q)
    d = s.recv(512)
except Exception:
    d = b""
print("answered" if len(d) > 2 else "no answer")
"#;

/// `curl` from a pod: the status code (0 when no HTTP answer came) and the body.
fn curl(mesh: &PodMesh, pod: &PodHandle, args: &[&str]) -> (u16, String) {
    let mut cmd = vec!["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}"];
    cmd.extend_from_slice(args);
    let out = mesh.exec(pod, &cmd);
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn dns(mesh: &PodMesh, pod: &PodHandle, addr: &str) -> String {
    mesh.exec_ok(pod, &["python3", "-c", DNS_QUERY, addr, "15053"])
        .trim()
        .to_string()
}

/// Sum of `name` samples in `pod`'s sidecar metrics carrying every one of `labels`.
fn metric(mesh: &PodMesh, pod: &PodHandle, name: &str, labels: &[&str]) -> f64 {
    let out = mesh.exec_ok(pod, &["curl", "-s", "http://127.0.0.1:15020/metrics"]);
    out.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within 15s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pod `api` (PERMISSIVE, so the outside client gets in at all) serves 8080 on its address and a
/// secret on 127.0.0.1:9999 only.
fn target(mesh: &mut PodMesh, app: &str) -> PodHandle {
    mesh.apply(API);
    let api = mesh.pod(
        "api",
        &[
            "--service",
            "api",
            "--port",
            "8080",
            "--mtls-mode",
            "PERMISSIVE",
        ],
        &[app, "http", "--listen", "0.0.0.0:8080", "--name", "api"],
    );
    mesh.spawn_in(
        &api,
        &[
            app,
            "http",
            "--listen",
            "127.0.0.1:9999",
            "--name",
            "loopback-secret",
        ],
    );
    // The secret is there for the pod itself.
    let (s, body) = curl(mesh, &api, &["http://127.0.0.1:9999/info"]);
    assert!(s == 200 && body.contains("loopback-secret"), "{s} {body}");
    api
}

#[test]
fn a_peer_pod_reaches_only_the_apps_ports_on_the_pods_address() {
    if !available("boundaries") {
        return;
    }
    let app = example("demo-app");
    let mut mesh = PodMesh::new("bpeer");
    let api = target(&mut mesh, &app);
    let attacker = mesh.pod("attacker", &[], &["sleep", "600"]);
    let b = &api.address;

    // Normal traffic goes through.
    let (s, body) = curl(&mesh, &attacker, &["http://api:8080/info"]);
    assert!(s == 200 && body.contains("\"app\":\"api\""), "{s} {body}");

    let (s, body) = curl(
        &mesh,
        &attacker,
        &["-X", "POST", &format!("http://{b}:15000/shutdown")],
    );
    assert_eq!(s, 403, "POST /shutdown on the peer's admin port: {body}");
    let (s, body) = curl(&mesh, &attacker, &[&format!("http://{b}:15000/config")]);
    assert_eq!(s, 403, "the peer's /config: {body}");
    assert!(!body.contains("state_dir"), "{body}");
    // (15020 and 15008 are reached directly, never through the tunnel: health and peers' tunnels.)
    for port in ["15001", "15006"] {
        let (s, body) = curl(&mesh, &attacker, &[&format!("http://{b}:{port}/metrics")]);
        assert_eq!(s, 403, "the peer's sidecar port {port}: {body}");
    }
    let (s, body) = curl(&mesh, &attacker, &[&format!("http://{b}:9999/info")]);
    assert!(
        s != 200 && !body.contains("loopback-secret"),
        "a service bound to the peer's loopback: {s} {body}"
    );
    assert_eq!(
        dns(&mesh, &attacker, b),
        "no answer",
        "the peer's DNS responder"
    );

    // The sidecar is still up and serving, and said what it refused.
    std::thread::sleep(Duration::from_millis(500));
    let (s, _) = curl(&mesh, &api, &["http://127.0.0.1:15020/ready"]);
    assert_eq!(s, 200, "the target's sidecar is still ready");
    let (s, _) = curl(&mesh, &attacker, &["http://api:8080/info"]);
    assert_eq!(s, 200, "and still carries traffic");
    let refused = metric(
        &mesh,
        &api,
        "weft_proxy_rejections_total",
        &["listener=\"tunnel\"", "reason=\"proxy_port\""],
    );
    assert!(refused >= 5.0, "proxy_port refusals counted: {refused}");
    assert!(
        mesh.sidecar_log("api")
            .contains("the target port is not the app's"),
        "{}",
        mesh.sidecar_log("api")
    );
}

#[test]
fn an_outside_client_gets_neither_loopback_nor_sidecar_nor_forged_headers_through() {
    if !available("boundaries") {
        return;
    }
    let app = example("demo-app");
    let mut mesh = PodMesh::new("bout");
    let api = target(&mut mesh, &app);
    let outside = mesh.outside("stranger", "198.18.255.241");
    let b = &api.address;

    // Forged identity and mesh headers are removed before the app sees the request; others pass.
    let (s, body) = curl(
        &mesh,
        &outside,
        &[
            "-H",
            "x-forwarded-client-cert: By=spiffe://mesh.test/ns/default/sa/api;URI=spiffe://mesh.test/ns/default/sa/admin",
            "-H",
            "weft-target-port: 15000",
            "-H",
            "weft-orig-proto: 1.1",
            "-H",
            "x-benign: kept",
            "-H",
            "x-forwarded-for: 10.9.9.9",
            &format!("http://{b}:8080/info"),
        ],
    );
    assert_eq!(s, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).expect("the app's /info");
    let headers = &info["headers"];
    assert_eq!(headers["x-benign"], "kept", "{body}");
    assert_eq!(
        headers["x-forwarded-for"], "198.18.255.241",
        "from the socket: {body}"
    );
    for forged in [
        "x-forwarded-client-cert",
        "weft-target-port",
        "weft-orig-proto",
    ] {
        assert!(
            headers.get(forged).is_none(),
            "{forged} reached the app: {body}"
        );
    }
    assert!(mesh
        .sidecar_log("api")
        .contains("x-forwarded-client-cert from a client outside the mesh removed"));

    // The pod's loopback and the sidecar's own ports.
    let (s, body) = curl(&mesh, &outside, &[&format!("http://{b}:9999/info")]);
    assert!(
        s != 200 && !body.contains("loopback-secret"),
        "a service bound to the pod's loopback: {s} {body}"
    );
    assert_eq!(
        dns(&mesh, &outside, b),
        "no answer",
        "the pod's DNS responder"
    );
    for port in ["15000", "15001", "15006"] {
        let (s, body) = curl(
            &mesh,
            &outside,
            &["-X", "POST", &format!("http://{b}:{port}/shutdown")],
        );
        assert_eq!(s, 0, "the sidecar's port {port} answered: {body}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let (s, _) = curl(&mesh, &api, &["http://127.0.0.1:15020/ready"]);
    assert_eq!(s, 200, "the sidecar is still ready");
    let (s, body) = curl(&mesh, &outside, &[&format!("http://{b}:8080/info")]);
    assert_eq!(s, 200, "normal plaintext still works: {body}");
    let refused = metric(
        &mesh,
        &api,
        "weft_proxy_rejections_total",
        &["listener=\"inbound\"", "reason=\"proxy_port\""],
    );
    assert!(refused >= 2.0, "proxy_port refusals counted: {refused}");
}

#[test]
fn deny_by_method_holds_whatever_the_case_and_rate_limits_count_websockets_and_tcp() {
    if !available("boundaries") {
        return;
    }
    let app = example("demo-app");
    let mut mesh = PodMesh::new("bmeth");
    mesh.apply(&format!(
        "{API}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: echo}}\nspec:\n  ports: [{{port: 9000, protocol: tcp}}]\n  selector: {{app: echo}}\n"
    ));
    let api = mesh.pod(
        "api",
        &[
            "--service",
            "api",
            "--port",
            "8080",
            "--mtls-mode",
            "PERMISSIVE",
        ],
        &[&app, "http", "--listen", "0.0.0.0:8080", "--name", "api"],
    );
    mesh.pod(
        "echo",
        &["--service", "echo", "--port", "9000"],
        &[&app, "tcp-echo", "--listen", "0.0.0.0:9000"],
    );
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    mesh.apply(
        "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-delete}\nspec:\n  selector: {matchLabels: {app: api}}\n  action: DENY\n  rules:\n  - to: [{methods: [DELETE]}]\n",
    );
    until("the DENY policy", || {
        curl(&mesh, &client, &["-X", "DELETE", "http://api:8080/x"]).0 == 403
    });
    for m in ["delete", "DeLeTe", "DELETE"] {
        let (s, body) = curl(&mesh, &client, &["-X", m, "http://api:8080/x"]);
        assert_eq!(s, 403, "{m} got through DENY [DELETE]: {body}");
    }
    assert_eq!(curl(&mesh, &client, &["http://api:8080/x"]).0, 200);
    // The same from outside the mesh (PERMISSIVE plaintext), request by request.
    let outside = mesh.outside("stranger", "198.18.255.242");
    let plain = format!("http://{}:8080/x", api.address);
    for m in ["DELETE", "delete", "DeLeTe"] {
        let (s, body) = curl(&mesh, &outside, &["-X", m, &plain]);
        assert_eq!(s, 403, "plaintext {m} got through DENY [DELETE]: {body}");
    }
    assert_eq!(curl(&mesh, &outside, &[&plain]).0, 200, "plaintext GET");
    let why = mesh
        .weftctl()
        .args(["why", "--from", "default/client", "--to", "api"])
        .args(["--method", "delete", "--path", "/x"])
        .output()
        .expect("weftctl why");
    assert_eq!(
        why.status.code(),
        Some(6),
        "weftctl why agrees: {}",
        text(&why)
    );
    assert!(text(&why).contains("no-delete"), "{}", text(&why));

    // One token a minute, a burst of two: the third WebSocket and the third TCP stream are refused.
    for svc in ["api", "echo"] {
        mesh.apply(&format!(
            "apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata: {{name: {svc}}}\nspec:\n  parentRefs: [{{name: {svc}}}]\n  rules:\n  - backendRefs: [{{name: {svc}}}]\n    rateLimit: {{requests: 1, per: 60s, burst: 2}}\n"
        ));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let ws = |mesh: &PodMesh| text(&mesh.exec(&client, &[&app, "ws", "api:8080"]));
    let tcp = |mesh: &PodMesh| text(&mesh.exec(&client, &[&app, "tcp", "echo:9000"]));
    let ws_ok: Vec<bool> = (0..4).map(|_| ws(&mesh).contains("echoed")).collect();
    let tcp_ok: Vec<bool> = (0..4)
        .map(|_| tcp(&mesh).contains("got them back"))
        .collect();
    assert_eq!(
        ws_ok,
        [true, true, false, false],
        "WebSockets under the limit"
    );
    assert_eq!(
        tcp_ok,
        [true, true, false, false],
        "TCP streams under the limit"
    );
    // Plaintext from outside the mesh (PERMISSIVE) draws from the same bucket: no way around it.
    let (s, body) = curl(&mesh, &outside, &[&plain]);
    assert_eq!(s, 429, "plaintext past the rate limit: {body}");
    for pod in ["api", "echo"] {
        assert!(
            mesh.sidecar_log(pod)
                .contains("over the route's rate limit"),
            "{pod}: {}",
            mesh.sidecar_log(pod)
        );
    }
}

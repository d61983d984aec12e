//! `weft-control migrate --from-state-dir DIR --to etcd://...` (docs/operations.md "Moving a mesh
//! to etcd"): a mesh on a state directory with a real sidecar, an applied route and a partly used
//! join token moves to a real etcd; a replica started on it has the same CA, accepts the sidecar's
//! certificate (no new join), serves the route and keeps the token's count. Refused while the
//! control plane runs, and into a prefix that already holds a mesh.

use std::process::Command;
use std::time::{Duration, Instant};
use weft::bins::bin;
use weft::control::ControlProc;
use weft::etcd::EtcdProc;
use weft::mesh::MeshProxyBuilder;

const ROUTE: &str = "apiVersion: weft.dev/v1
kind: HTTPRoute
metadata:
  name: to-api
  namespace: default
spec:
  parentRefs:
    - name: api
  rules:
    - matches:
        - path: {type: PathPrefix, value: /migrated}
      backendRefs:
        - name: api
";

const SERVICE: &str = "apiVersion: weft.dev/v1
kind: Service
metadata:
  name: api
  namespace: default
spec:
  ports:
    - name: http
      port: 9080
      protocol: http
";

/// Runs `weft-control migrate`; returns (exit code, stdout + stderr).
fn migrate(from: &std::path::Path, etcd: &EtcdProc, prefix: &str) -> (Option<i32>, String) {
    let out = Command::new(bin("weft-control"))
        .arg("migrate")
        .arg("--from-state-dir")
        .arg(from)
        .args(["--to", &etcd.url(), "--etcd-prefix", prefix])
        .arg("--store-key-file")
        .arg(etcd.key_file())
        .output()
        .expect("run weft-control migrate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn wait_for(what: &str, within: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric_sum(cp: &ControlProc, prefix: &str) -> f64 {
    let (_, body) = weft::net::http_get(cp.operator, "/metrics").expect("metrics");
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The mesh before the move: a route, a sidecar joined with a limited token (one use of three),
/// and a revocation. Returns the sidecar and the token's id.
fn old_mesh(old: &ControlProc) -> (weft::proxy::ProxyProc, String) {
    old.apply_file("svc.yaml", SERVICE, 0);
    old.apply_file("route.yaml", ROUTE, 0);
    let body = r#"{"namespace":"default","serviceAccount":"web","ttlSecs":600,"maxUses":3}"#;
    let token = old.api("POST", "/v1/tokens", Some(body))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let proxy = MeshProxyBuilder::new(old, "web-1", "default", "web")
        .token(&token)
        .start();
    wait_for(
        "the route reaches the sidecar",
        Duration::from_secs(10),
        || proxy_config(&proxy).contains("/migrated"),
    );
    old.api("POST", "/v1/revocations", Some(GONE));
    (proxy, token.split('.').nth(1).unwrap().to_string())
}

/// Each service's virtual IP as `GET /v1/mesh` answers it.
fn service_addresses(cp: &ControlProc) -> Vec<(String, String)> {
    let mesh = cp.api("GET", "/v1/mesh", None);
    let services = mesh["services"].as_array().cloned().unwrap_or_default();
    services
        .iter()
        .map(|s| (s["name"].to_string(), s["vip"].to_string()))
        .collect()
}

const GONE: &str = r#"{"workload":{"namespace":"default","name":"gone-1"}}"#;

fn proxy_config(proxy: &weft::proxy::ProxyProc) -> String {
    weft::net::http_get(proxy.admin, "/config")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// What the replica on etcd must hold: the route, the token's count, the revocation (which can be
/// lifted there for good, across a restart).
fn check_moved(mut replica: ControlProc, token_id: &str) {
    let routes = replica.api("GET", "/v1/resources/HTTPRoute", None);
    assert!(routes.to_string().contains("to-api"), "{routes}");
    let tokens = replica.api("GET", "/v1/tokens", None);
    let t = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == token_id)
        .unwrap_or_else(|| panic!("{tokens}"));
    assert_eq!(
        (t["uses"].as_u64(), t["maxUses"].as_u64()),
        (Some(1), Some(3))
    );
    let listed = replica.api("GET", "/v1/revocations", None);
    assert!(listed.to_string().contains("gone-1"), "{listed}");
    replica.api("POST", "/v1/revocations/remove", Some(GONE));
    replica.restart();
    let listed = replica.api("GET", "/v1/revocations", None);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}

#[test]
fn a_state_directory_mesh_moves_to_etcd_keeping_identities_routes_and_token_counts() {
    let Some(etcd) = EtcdProc::start("migrate") else {
        return;
    };
    let mut old = ControlProc::start("migrate-dir");
    let (proxy, token_id) = old_mesh(&old);
    let fingerprint = old.api("GET", "/v1/mesh", None)["caFingerprint"].clone();
    let vips = service_addresses(&old);
    assert!(!vips.is_empty());
    let state = old.state_dir();

    // Refused while the control plane serves the directory.
    let (code, text) = migrate(&state, &etcd, "/migrated/");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("stop it before migrating"), "{text}");

    assert_eq!(old.terminate(), Some(0), "{}", old.log());
    let (code, text) = migrate(&state, &etcd, "/migrated/");
    assert_eq!(code, Some(0), "{text}");
    println!("{text}");
    // Again into the same prefix: refused, naming what is there.
    let (code, again) = migrate(&state, &etcd, "/migrated/");
    assert_eq!(code, Some(1), "{again}");
    assert!(again.contains("/migrated/"), "{again}");

    // A replica on etcd, on the old control plane's address: the sidecar comes back to it with the
    // certificate it holds.
    let (store, key) = (etcd.url(), etcd.key_file());
    let args = [
        "--store",
        store.as_str(),
        "--etcd-prefix",
        "/migrated/",
        "--store-key-file",
        key.to_str().unwrap(),
    ];
    let replica = ControlProc::start_at("migrate-etcd", &args, old.api);
    assert_eq!(
        replica.api("GET", "/v1/mesh", None)["caFingerprint"],
        fingerprint
    );
    replica.wait_status(Duration::from_secs(30), |s| {
        s["proxies"].as_array().is_some_and(|p| {
            p.iter()
                .any(|x| x["proxy"] == "default/web-1" && x["connected"] == true)
        })
    });
    assert_eq!(
        metric_sum(&replica, "weft_control_certificates_issued_total"),
        0.0,
        "the sidecar joined again:\n{}",
        replica.log()
    );
    assert!(proxy_config(&proxy).contains("/migrated"));
    // Every service keeps its address: taken from the moved table, not claimed anew.
    assert_eq!(service_addresses(&replica), vips);
    assert!(
        !replica.log().contains("service address assigned"),
        "{}",
        replica.log()
    );
    check_moved(replica, &token_id);
}

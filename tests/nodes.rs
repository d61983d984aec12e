//! A mesh across several simulated nodes (docs/pods.md, "Several nodes"): three node namespaces with
//! pod bridges of their own, routed to each other over an underlay with no NAT, weft-control's proxy API
//! on node 1, and pods on every node started by the real `weftctl pod run --node`. Traffic between pods
//! on different nodes goes through both sidecars over mTLS with the caller's own address and identity,
//! a shift is acked on every node, a hostile peer on another node still gets only the app's port, a
//! partitioned node is cut off until healed, and delete leaves no namespace. Needs root, `ip` and
//! `iptables` (see `weft::pods::available`).

use std::time::{Duration, Instant};
use weft::nodes::{curl, tunnel_peers};
use weft::pods::{available, example, text, PodHandle, PodMesh};

const SHOP: &str = include_str!("../examples/shop/services.yaml");

fn route(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata: {{name: reviews}}\nspec:\n  parentRefs: [{{name: reviews}}]\n  rules:\n    - backendRefs:\n        - {{name: reviews, subset: v1, weight: {v1}}}\n        - {{name: reviews, subset: v2, weight: {v2}}}\n"
    )
}

/// `shop load` from `client` to the frontend: `{sent, failed, versions}`.
fn load(mesh: &PodMesh, client: &PodHandle, count: u32) -> serde_json::Value {
    let shop = example("shop");
    let count = count.to_string();
    let out = mesh.exec_ok(
        client,
        &[
            &shop,
            "load",
            "--url",
            "http://frontend:8080/",
            "--count",
            &count,
        ],
    );
    let json = out.lines().last().unwrap_or_default();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("load output {out:?}: {e}"))
}

fn assert_in(pod: &PodHandle, range: &str) {
    assert!(
        pod.address.starts_with(range),
        "pod {} got {}, not an address of {range}0/24",
        pod.name,
        pod.address
    );
}

/// The shop spread over three nodes: ratings on node 1, the client and reviews v1 on node 2, the
/// frontend and reviews v2 on node 3.
fn shop_on_three_nodes(mesh: &mut PodMesh) -> [PodHandle; 4] {
    let shop = example("shop");
    mesh.apply(SHOP);
    mesh.apply(&route(0, 100));
    let ratings = mesh.pod(
        "ratings",
        &["--node", "node1", "--service", "ratings", "--port", "9080"],
        &[&shop, "ratings"],
    );
    let svc = ["--service", "reviews", "--port", "9080"];
    mesh.pod(
        "reviews-v1",
        &[&["--node", "node2", "--label", "version=v1"][..], &svc].concat(),
        &[&shop, "reviews", "--version", "v1"],
    );
    let reviews_v2 = mesh.pod(
        "reviews-v2",
        &[&["--node", "node3", "--label", "version=v2"][..], &svc].concat(),
        &[
            &shop,
            "reviews",
            "--version",
            "v2",
            "--ratings",
            "http://ratings:9080",
        ],
    );
    let frontend = mesh.pod(
        "frontend",
        &["--node", "node3", "--service", "frontend", "--port", "8080"],
        &[&shop, "frontend"],
    );
    let client = mesh.pod("client", &["--node", "node2"], &["sleep", "600"]);
    [ratings, reviews_v2, frontend, client]
}

#[test]
fn pods_on_three_nodes_call_each_other_through_the_mesh_with_their_own_addresses() {
    if !available("nodes") {
        return;
    }
    let mut mesh = PodMesh::with_nodes("nd", 3);
    let list = mesh.weftctl_ok(&["network", "list"]);
    for (node, range) in [
        ("node1", "198.18.1.0/24"),
        ("node2", "198.18.2.0/24"),
        ("node3", "198.18.3.0/24"),
    ] {
        let ns = format!("weft-{}.{node}", mesh.network);
        assert!(
            list.lines()
                .any(|l| l.starts_with(node) && l.contains(&ns) && l.contains(range)),
            "{node} {range} not listed:\n{list}"
        );
    }
    // The control plane runs on node 1 and tells pod runners so.
    let info = mesh.control.api("GET", "/v1/mesh", None);
    assert_eq!(info["proxyAddress"], "198.18.1.1:15010", "{info}");
    let [ratings, reviews_v2, frontend, client] = shop_on_three_nodes(&mut mesh);
    assert_in(&ratings, "198.18.1.");
    assert_in(&client, "198.18.2.");
    assert_in(&frontend, "198.18.3.");

    // Node 2 -> node 3 -> node 3 -> node 1, each hop with its caller's identity.
    let td = "spiffe://mesh.test/ns/default/sa";
    let hops = mesh.exec_ok(
        &client,
        &[&example("shop"), "call", "--url", "http://frontend:8080/"],
    );
    for want in [
        format!("frontend was called by {td}/client"),
        format!("reviews v2 was called by {td}/frontend"),
        format!("ratings was called by {td}/reviews"),
    ] {
        assert!(hops.contains(&want), "missing {want:?} in:\n{hops}");
    }
    let run = load(&mesh, &client, 200);
    assert_eq!(run["failed"], 0, "{run}");
    assert_eq!(run["versions"]["v2"], 200, "{run}");

    // No NAT: the callee pods' kernels see the calling pods' own addresses on their tunnel ports.
    let peers = tunnel_peers(&mesh, &frontend);
    assert!(
        peers.contains(&client.address),
        "frontend's tunnel peers {peers:?} lack the client's {}",
        client.address
    );
    let peers = tunnel_peers(&mesh, &ratings);
    assert!(
        peers.contains(&reviews_v2.address),
        "ratings' tunnel peers {peers:?} lack reviews-v2's {}",
        reviews_v2.address
    );

    shift_is_acked_on_every_node(&mesh, &client);
    refusals_and_delete(&mesh);
}

/// A 50/50 shift between reviews v1 (node 2) and v2 (node 3), acked by every sidecar (on all three
/// nodes), then followed by the traffic.
fn shift_is_acked_on_every_node(mesh: &PodMesh, client: &PodHandle) {
    let shifted = mesh.weftctl_ok(&["shift", "reviews", "v1=50", "v2=50"]);
    assert!(
        shifted.contains("reviews: v1=0 v2=100 -> v1=50 v2=50") && shifted.contains("acked by"),
        "{shifted}"
    );
    let pods = ["ratings", "reviews-v1", "reviews-v2", "frontend", "client"];
    mesh.control.wait_status(Duration::from_secs(30), |s| {
        let proxies = s["proxies"].as_array().cloned().unwrap_or_default();
        pods.iter().all(|name| {
            proxies.iter().any(|p| {
                p["proxy"] == format!("default/{name}").as_str()
                    && p["connected"] == true
                    && p["ackedVersion"] == p["sentVersion"]
            })
        })
    });
    let run = load(mesh, client, 200);
    assert_eq!(run["failed"], 0, "{run}");
    let (v1, v2) = (
        run["versions"]["v1"].as_u64().unwrap_or(0),
        run["versions"]["v2"].as_u64().unwrap_or(0),
    );
    assert!(
        v1 + v2 == 200 && (50..=150).contains(&v1),
        "50/50 gave v1 {v1} v2 {v2}: {run}"
    );
}

/// A pod without `--node`, and delete while pods run, are refused; delete --force removes every
/// namespace of the network (pods, nodes, underlay).
fn refusals_and_delete(mesh: &PodMesh) {
    let out = mesh
        .weftctl()
        .args(["pod", "run", "--network", &mesh.network, "--name", "lost"])
        .args(["--", "true"])
        .output()
        .expect("weftctl pod run");
    assert!(
        !out.status.success()
            && text(&out).contains("has nodes (node1, node2, node3): give --node"),
        "{}",
        text(&out)
    );
    let out = mesh
        .weftctl()
        .args(["network", "delete", &mesh.network])
        .output()
        .expect("weftctl network delete");
    assert!(
        !out.status.success() && text(&out).contains("still has pods"),
        "{}",
        text(&out)
    );
    assert_eq!(
        mesh.namespaces().len(),
        1 + 3 + 5,
        "{:?}",
        mesh.namespaces()
    );
    mesh.weftctl_ok(&["network", "delete", &mesh.network, "--force"]);
    assert_eq!(mesh.namespaces(), Vec::<String>::new());
}

const SERVICES: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: api}\nspec:\n  ports: [{port: 8080, protocol: http}]\n  selector: {app: api}\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: near}\nspec:\n  ports: [{port: 8080, protocol: http}]\n  selector: {app: near}\n";

fn http_pod(mesh: &mut PodMesh, app: &str, name: &str, node: &str) -> PodHandle {
    mesh.pod(
        name,
        &["--node", node, "--service", name, "--port", "8080"],
        &[app, "http", "--listen", "0.0.0.0:8080", "--name", name],
    )
}

/// Polls `curl` from `pod` until it answers 200 (bounded).
fn until_ok(mesh: &PodMesh, pod: &PodHandle, url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (s, body) = curl(mesh, pod, 5, &[url]);
        if s == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} from {} not 200 within {within:?}: {s} {body}",
            pod.name
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_peer_on_another_node_gets_only_the_apps_port_and_a_partitioned_node_is_cut_off_until_healed() {
    if !available("nodes") {
        return;
    }
    let app = example("demo-app");
    let mut mesh = PodMesh::with_nodes("ndp", 3);
    mesh.apply(SERVICES);
    let near = http_pod(&mut mesh, &app, "near", "node1");
    let api = http_pod(&mut mesh, &app, "api", "node3");
    mesh.spawn_in(
        &api,
        &[
            &app,
            "http",
            "--listen",
            "127.0.0.1:9999",
            "--name",
            "loopback-secret",
        ],
    );
    let caller = mesh.pod("caller", &["--node", "node2"], &["sleep", "600"]);
    assert_in(&near, "198.18.1.");
    assert_in(&api, "198.18.3.");
    let (s, body) = curl(&mesh, &caller, 5, &["http://api:8080/info"]);
    assert!(s == 200 && body.contains("\"app\":\"api\""), "{s} {body}");

    // The hostile-pod guarantees hold across nodes: the caller's sidecar carries everything it sends,
    // and the callee's sidecar delivers only to the app's port on the pod's address.
    let b = &api.address;
    let (s, body) = curl(&mesh, &caller, 5, &[&format!("http://{b}:15000/config")]);
    assert_eq!(s, 403, "the node-3 pod's admin port from node 2: {body}");
    for port in ["15001", "15006"] {
        let (s, body) = curl(&mesh, &caller, 5, &[&format!("http://{b}:{port}/metrics")]);
        assert_eq!(s, 403, "the node-3 pod's sidecar port {port}: {body}");
    }
    let (s, body) = curl(&mesh, &caller, 5, &[&format!("http://{b}:9999/info")]);
    assert!(
        s != 200 && !body.contains("loopback-secret"),
        "a service on the node-3 pod's loopback: {s} {body}"
    );

    // Node 3 cut off: node 2 no longer reaches it, but still reaches node 1; healed, it does again.
    let cut = mesh.partition("node3");
    let started = Instant::now();
    let (s, body) = curl(&mesh, &caller, 5, &["http://api:8080/info"]);
    assert!(
        s != 200,
        "node 2 reached node 3 while partitioned ({:?}): {s} {body}",
        started.elapsed()
    );
    let (s, body) = curl(&mesh, &caller, 5, &["http://near:8080/info"]);
    assert!(
        s == 200 && body.contains("\"app\":\"near\""),
        "node 2 to node 1 during the partition: {s} {body}"
    );
    cut.heal();
    until_ok(
        &mesh,
        &caller,
        "http://api:8080/info",
        Duration::from_secs(60),
    );
    let (s, _) = curl(&mesh, &caller, 5, &["http://near:8080/info"]);
    assert_eq!(s, 200, "node 2 to node 1 after the heal");
}

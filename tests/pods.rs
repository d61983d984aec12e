//! Pods as network namespaces with transparent interception: apps that know nothing of the mesh talk
//! through their sidecars with mutual TLS. Real `weft-control`, `weftctl pod run`, `weft-proxy init`
//! (iptables), namespaces, veths and a bridge. Needs root, `ip` and `iptables` (see
//! `weft::pods::available`).

use std::time::{Duration, Instant};
use weft::pods::{available, example, text, PodMesh};

const SHOP: &str = include_str!("../examples/shop/services.yaml");

fn route(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata: {{name: reviews}}\nspec:\n  parentRefs: [{{name: reviews}}]\n  rules:\n    - backendRefs:\n        - {{name: reviews, subset: v1, weight: {v1}}}\n        - {{name: reviews, subset: v2, weight: {v2}}}\n"
    )
}

/// What the frontend's sidecar knew and did, for a failed split assertion: its last log lines and
/// access-log lines (route, upstream).
fn routing_evidence(mesh: &PodMesh) -> String {
    let log = mesh.sidecar_log("frontend");
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    let last: Vec<String> = mesh
        .access_log("frontend")
        .iter()
        .rev()
        .take(3)
        .map(|l| l.to_string())
        .collect();
    format!(
        "frontend sidecar log (newest first):\n{}\nfrontend access log (newest first):\n{}",
        tail.join("\n"),
        last.join("\n")
    )
}

fn load(
    mesh: &PodMesh,
    client: &weft::pods::PodHandle,
    count: u32,
    extra: &[&str],
) -> serde_json::Value {
    let shop = example("shop");
    let count = count.to_string();
    let mut args = vec![
        shop.as_str(),
        "load",
        "--url",
        "http://frontend:8080/",
        "--count",
        &count,
    ];
    args.extend_from_slice(extra);
    let out = mesh.exec_ok(client, &args);
    let json = out.lines().last().unwrap_or_default();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("load output {out:?}: {e}"))
}

#[test]
fn shop_calls_carry_each_callers_identity_and_follow_a_traffic_shift() {
    if !available("pods") {
        return;
    }
    let shop = example("shop");
    let mut mesh = PodMesh::new("shop");
    mesh.apply(SHOP);
    let port = ["--port", "9080"];
    mesh.pod(
        "ratings",
        &[&["--service", "ratings"][..], &port].concat(),
        &[&shop, "ratings"],
    );
    mesh.pod(
        "reviews-v1",
        &[
            &["--service", "reviews", "--label", "version=v1"][..],
            &port,
        ]
        .concat(),
        &[&shop, "reviews", "--version", "v1"],
    );
    mesh.pod(
        "reviews-v2",
        &[
            &["--service", "reviews", "--label", "version=v2"][..],
            &port,
        ]
        .concat(),
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
        &["--service", "frontend", "--port", "8080"],
        &[&shop, "frontend"],
    );
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    let td = "spiffe://mesh.test/ns/default/sa";

    mesh.apply(&route(0, 100));
    let hops = mesh.exec_ok(&client, &[&shop, "call", "--url", "http://frontend:8080/"]);
    for want in [
        format!("frontend was called by {td}/client"),
        format!("reviews v2 was called by {td}/frontend"),
        format!("ratings was called by {td}/reviews"),
    ] {
        assert!(hops.contains(&want), "missing {want:?} in:\n{hops}");
    }
    assert_access_logged(&mesh, td, &frontend.address);

    // One-command shifting: a canary split, then back to where it was.
    let shifted = mesh.weftctl_ok(&["shift", "reviews", "v1=90", "v2=10"]);
    assert!(
        shifted.contains("reviews: v1=0 v2=100 -> v1=90 v2=10"),
        "{shifted}"
    );
    let split = load(&mesh, &client, 400, &[]);
    assert_eq!(split["failed"], 0, "{split}");
    let v2 = split["versions"]["v2"].as_u64().unwrap_or(0);
    assert!(
        (16..=64).contains(&v2),
        "90/10 gave v2 {v2} of 400: {split}"
    );
    let back = mesh.weftctl_ok(&["rollback", "reviews"]);
    assert!(
        back.contains("reviews: v1=90 v2=10 -> v1=0 v2=100"),
        "{back}"
    );
    let split = load(&mesh, &client, 100, &[]);
    assert_eq!(
        split["versions"]["v2"],
        100,
        "{split}\nrollback said: {back}\n{}",
        routing_evidence(&mesh)
    );

    // A/B by header: beta users on v2, everyone else on v1.
    mesh.weftctl_ok(&["shift", "reviews", "--header", "x-user-group=beta", "v2"]);
    mesh.weftctl_ok(&["shift", "reviews", "v1=100"]);
    let beta = load(&mesh, &client, 50, &["-H", "x-user-group:beta"]);
    assert_eq!(beta["versions"]["v2"], 50, "{beta}");
    let others = load(&mesh, &client, 50, &[]);
    assert_eq!(others["versions"]["v1"], 50, "{others}");
}

/// The call just made appears in both sidecars' access logs, as each side saw it.
fn assert_access_logged(mesh: &PodMesh, td: &str, frontend: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = mesh.access_log("client");
        let inb = mesh.access_log("frontend");
        let sent = out.iter().find(|l| l["destination"] == "default/frontend");
        let got = inb
            .iter()
            .find(|l| l["direction"] == "inbound" && l["source"] == format!("{td}/client"));
        if let (Some(sent), Some(got)) = (sent, got) {
            assert_eq!(sent["direction"], "outbound", "{sent}");
            assert_eq!(sent["method"], "GET", "{sent}");
            assert_eq!(sent["path"], "/", "{sent}");
            assert_eq!(sent["status"], 200, "{sent}");
            assert_eq!(sent["source"], format!("{td}/client"), "{sent}");
            assert_eq!(
                sent["upstream_identity"],
                format!("{td}/frontend"),
                "{sent}"
            );
            assert!(sent["bytes_sent"].as_u64().unwrap_or(0) > 0, "{sent}");
            assert_eq!(got["destination"], format!("{td}/frontend"), "{got}");
            assert_eq!(got["status"], 200, "{got}");
            // Delivered to the pod's own address, never to its loopback.
            assert_eq!(got["upstream"], format!("{frontend}:8080"), "{got}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no access log lines for the call: client {out:?} frontend {inb:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn grpc_tcp_server_first_names_and_direct_pod_addresses_are_all_intercepted() {
    if !available("pods") {
        return;
    }
    let app = example("demo-app");
    let mut mesh = PodMesh::new("proto");
    mesh.apply(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 8080}]\n  selector: {app: web}\n---\n\
apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  ports: [{port: 9000}]\n  selector: {app: echo}\n---\n\
apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: smtp}\nspec:\n  ports: [{port: 2525}]\n  selector: {app: smtp}\n---\n\
apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: smtp-declared}\nspec:\n  ports: [{port: 2525, protocol: tcp}]\n  selector: {app: smtp}\n  serviceAccounts: [smtp]\n",
    );
    let web = mesh.pod(
        "web",
        &["--service", "web", "--port", "8080"],
        &[&app, "http", "--listen", "0.0.0.0:8080", "--name", "web"],
    );
    mesh.pod(
        "echo",
        &["--service", "echo", "--port", "9000"],
        &[&app, "tcp-echo", "--listen", "0.0.0.0:9000"],
    );
    mesh.pod(
        "smtp",
        &["--service", "smtp", "--port", "2525"],
        &[&app, "banner", "--listen", "0.0.0.0:2525"],
    );
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    let me = "spiffe://mesh.test/ns/default/sa/client";

    // Names: every form resolves to the service's virtual IP.
    let vips: Vec<String> = [
        "web",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
    ]
    .iter()
    .map(|n| {
        let out = mesh.exec_ok(&client, &["getent", "hosts", n]);
        out.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    })
    .collect();
    assert!(vips[0].starts_with("198.19."), "{vips:?}");
    assert!(vips.iter().all(|v| v == &vips[0]), "{vips:?}");

    // HTTP by name; the server side sees the caller's identity.
    let get = mesh.exec_ok(&client, &[&app, "get", "web:8080", "/info"]);
    assert!(
        get.contains("-> 200") && get.contains(&format!("URI={me}")),
        "{get}"
    );
    // An app that dials a pod address directly is still carried by the mesh (with mTLS).
    let direct = mesh.exec_ok(
        &client,
        &[&app, "get", &format!("{}:8080", web.address), "/info"],
    );
    assert!(direct.contains(&format!("URI={me}")), "{direct}");

    let grpc = mesh.exec_ok(&client, &[&app, "grpc", "web:8080"]);
    assert!(grpc.contains("status=0") && grpc.contains("chat"), "{grpc}");
    let tcp = mesh.exec_ok(&client, &[&app, "tcp", "echo:9000"]);
    assert!(tcp.contains("got them back"), "{tcp}");

    // Server speaks first: the banner arrives with no configuration, at most one detection window
    // (100 ms) plus the tunnel hop late; a port that declares `protocol: tcp` skips the window.
    // Best of three, to keep a busy machine's scheduling out.
    let first_byte = |host: &str| {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let b = mesh.exec_ok(&client, &[&app, "banner-read", &format!("{host}:2525")]);
            assert!(b.contains("220 weft-demo ESMTP ready"), "{b}");
            let ms: f64 = b
                .rsplit("after ")
                .next()
                .and_then(|s| s.trim().trim_end_matches("ms").trim().parse().ok())
                .unwrap_or_else(|| panic!("no timing in {b:?}"));
            best = best.min(ms);
        }
        best
    };
    let detected = first_byte("smtp");
    assert!(
        detected >= 90.0,
        "the banner came before the detection window closed: {detected} ms"
    );
    assert!(
        detected < 400.0,
        "first byte {detected} ms after connect; the window is 100 ms"
    );
    let declared = first_byte("smtp-declared");
    assert!(
        declared < 90.0,
        "a declared tcp port still waited {declared} ms"
    );
    eprintln!(
        "server-first first byte: {detected:.1} ms detected (window 100 ms), {declared:.1} ms declared tcp"
    );
}

#[test]
fn strict_refuses_plaintext_permissive_delivers_it_and_registry_only_blocks_outside() {
    if !available("pods") {
        return;
    }
    let app = example("demo-app");
    let mut mesh = PodMesh::new("mtls");
    mesh.apply(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 8080}]\n  selector: {app: web}\n",
    );
    let strict = mesh.pod(
        "strict",
        &["--service", "web", "--port", "8080"],
        &[&app, "http", "--listen", "0.0.0.0:8080", "--name", "strict"],
    );
    let open = mesh.pod(
        "open",
        &["--port", "8080", "--mtls-mode", "PERMISSIVE"],
        &[&app, "http", "--listen", "0.0.0.0:8080", "--name", "open"],
    );
    // A workload outside the mesh: a pod whose app bypasses its sidecar entirely is not possible, so
    // the outside client is a plain namespace on the same bridge, with no sidecar and no rules.
    let outside = mesh.outside("outside", "198.18.255.250");
    let refused = mesh.exec(
        &outside,
        &[&app, "get", &format!("{}:8080", strict.address), "/info"],
    );
    assert!(
        !refused.status.success(),
        "STRICT pod answered plaintext: {}",
        text(&refused)
    );
    assert!(mesh.sidecar_log("strict").contains("mTLS is STRICT"));
    let ok = mesh.exec_ok(
        &outside,
        &[&app, "get", &format!("{}:8080", open.address), "/info"],
    );
    assert!(
        ok.contains("-> 200") && ok.contains("x-forwarded-client-cert=-"),
        "{ok}"
    );

    // Outside the registry: passed through by default, refused under REGISTRY_ONLY.
    mesh.spawn_in(&outside, &[&app, "tcp-echo", "--listen", "0.0.0.0:7000"]);
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    let target = "198.18.255.250:7000";
    let tcp = mesh.exec_ok(&client, &[&app, "tcp", target]);
    assert!(tcp.contains("got them back"), "{tcp}");
    mesh.apply(
        "apiVersion: weft.dev/v1\nkind: MeshConfig\nmetadata: {name: default}\nspec:\n  outboundTrafficPolicy: REGISTRY_ONLY\n",
    );
    let blocked = mesh.exec(&client, &[&app, "tcp", target]);
    let out = text(&blocked);
    assert!(
        !out.contains("got them back"),
        "REGISTRY_ONLY let it through: {out}"
    );
    assert!(mesh.sidecar_log("client").contains("REGISTRY_ONLY"));
}

#[test]
fn app_starts_after_its_sidecar_and_teardown_leaves_nothing_behind() {
    if !available("pods") {
        return;
    }
    let mut mesh = PodMesh::new("life");
    // The app checks that its sidecar already answers ready, and exits with a code that says so.
    let check = "curl -sf -o /dev/null http://127.0.0.1:15020/ready && exit 7 || exit 9";
    mesh.pod_no_wait("early", &[], &["sh", "-c", check]);
    assert_eq!(
        mesh.wait_runner("early", Duration::from_secs(60)),
        Some(7),
        "{}",
        mesh.runner_log("early")
    );

    let long = mesh.pod("long", &[], &["sleep", "600"]);
    assert!(mesh.namespaces().contains(&long.netns));
    let rules = mesh.exec_ok(&long, &["iptables-save", "-t", "nat"]);
    assert!(
        rules.contains("WEFT_OUTPUT") && rules.contains("WEFT_INBOUND"),
        "{rules}"
    );
    let list = mesh
        .weftctl()
        .args(["pod", "list"])
        .output()
        .expect("pod list");
    assert!(
        text(&list).contains("long") && text(&list).contains("running"),
        "{}",
        text(&list)
    );
    let del = mesh
        .weftctl()
        .args(["pod", "delete", "long"])
        .output()
        .expect("pod delete");
    assert!(del.status.success(), "{}", text(&del));
    // The runner passed SIGTERM to its app and exits with the app's status (128 + 15).
    assert_eq!(mesh.wait_runner("long", Duration::from_secs(30)), Some(143));
    let left: Vec<String> = mesh
        .namespaces()
        .into_iter()
        .filter(|n| n != &format!("weft-{}", mesh.network))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let procs = std::process::Command::new("pgrep")
        .args(["-f", &mesh.run_dir.path().display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&procs.stdout).trim().is_empty(),
        "processes left: {}",
        text(&procs)
    );
    assert!(!mesh
        .run_dir
        .path()
        .join(&mesh.network)
        .join("pods/long")
        .exists());
    assert!(!std::path::Path::new("/etc/netns")
        .join(&long.netns)
        .exists());
}

/// A bare namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("weft-{tag}{}", std::process::id() % 100_000);
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip netns add");
        assert!(out.status.success(), "{}", text(&out));
        Netns(name)
    }

    fn run(&self, program: &str, args: &[&str], env_path: Option<&str>) -> std::process::Output {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.0]);
        if let Some(p) = env_path {
            // The program's PATH only (`ip` itself must still be found).
            c.arg("env").arg(format!("PATH={p}"));
        }
        c.arg(program).args(args);
        c.output().expect("ip netns exec")
    }

    /// Both tables init writes to (nat and filter).
    fn rules(&self) -> String {
        let out = self.run("iptables-save", &[], None);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Netns {
    fn ipv6_disabled(&self) -> String {
        let out = self.run("sysctl", &["-n", "net.ipv6.conf.all.disable_ipv6"], None);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
fn init_is_idempotent_cleans_up_and_names_what_is_missing() {
    if !available("pods") {
        return;
    }
    let proxy = weft::bins::bin("weft-proxy").display().to_string();
    let ns = Netns::new("init");
    let before = ns.rules();

    let dry = ns.run(
        &proxy,
        &["init", "--dry-run", "--exclude-outbound-ports", "5432"],
        None,
    );
    assert!(dry.status.success(), "{}", text(&dry));
    let printed = String::from_utf8_lossy(&dry.stdout);
    assert!(
        printed.contains("-A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN"),
        "{printed}"
    );
    assert!(printed.contains("REDIRECT --to-ports 15001"), "{printed}");
    assert!(
        printed.contains("-A WEFT_FILTER_OUT -j REJECT"),
        "{printed}"
    );
    assert!(
        printed.contains("sysctl -w net.ipv6.conf.all.disable_ipv6=1"),
        "{printed}"
    );
    assert_eq!(ns.rules(), before, "--dry-run changed the rules");
    assert_eq!(ns.ipv6_disabled(), "0", "--dry-run turned IPv6 off");

    let first = ns.run(&proxy, &["init"], None);
    assert!(first.status.success(), "{}", text(&first));
    let installed = ns.rules();
    assert!(
        installed.contains("-A OUTPUT -j WEFT_OUTPUT"),
        "{installed}"
    );
    assert!(
        installed.contains("-A PREROUTING -p tcp -j WEFT_INBOUND"),
        "{installed}"
    );
    for jump in ["-A OUTPUT -j WEFT_FILTER_OUT", "-A INPUT -j WEFT_FILTER_IN"] {
        assert!(installed.contains(jump), "{jump}: {installed}");
    }
    assert_eq!(ns.ipv6_disabled(), "1", "init left IPv6 on");
    let again = ns.run(&proxy, &["init"], None);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(ns.rules(), installed, "a second init changed the rules");

    for _ in 0..2 {
        let clean = ns.run(&proxy, &["init", "--cleanup"], None);
        assert!(clean.status.success(), "{}", text(&clean));
        assert!(!ns.rules().contains("WEFT"), "{}", ns.rules());
        assert_eq!(ns.ipv6_disabled(), "0", "cleanup left IPv6 off");
    }

    let no_tools = ns.run(&proxy, &["init"], Some("/nonexistent"));
    assert_eq!(no_tools.status.code(), Some(3), "{}", text(&no_tools));
    assert!(
        text(&no_tools).contains("install iptables"),
        "{}",
        text(&no_tools)
    );
    let unprivileged = ns.run(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            &proxy,
            "init",
        ],
        None,
    );
    assert_eq!(
        unprivileged.status.code(),
        Some(4),
        "{}",
        text(&unprivileged)
    );
    assert!(
        text(&unprivileged).contains("CAP_NET_ADMIN"),
        "{}",
        text(&unprivileged)
    );
}

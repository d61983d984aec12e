//! The real `weft-control` process: its state directory, the operator API's authentication, identity
//! issuance and the config stream, observed through simulated proxies that speak the real protocol.

use std::time::Duration;
use weft::control::ControlProc;
use weft::control_sim::{Reply, SimProxy};
use weft_api::control::Registration;

fn registration(name: &str, app: &str, ip: &str) -> Registration {
    Registration {
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        address: ip.parse().unwrap(),
        tunnel_port: 15008,
        ports: vec![9080],
        ready: true,
    }
}

async fn sim(
    cp: &ControlProc,
    identity: &weft_certs::Identity,
    reg: Registration,
    reply: Reply,
) -> anyhow::Result<SimProxy> {
    SimProxy::connect(cp.api, identity, &cp.control_id(), reg, reply).await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn operator_api_requires_the_operator_token() {
    let cp = ControlProc::start("auth");
    let (status, body) = cp.request("GET", "/v1/status", None, false).unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("operator.token"), "{body}");
    let mut s = std::net::TcpStream::connect(cp.operator).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        "0".repeat(64)
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert_eq!(cp.request("GET", "/v1/status", None, true).unwrap().0, 200);
    // Health and metrics stay open for probes and Prometheus.
    assert_eq!(cp.request("GET", "/ready", None, false).unwrap().0, 200);
    let (status, metrics) = cp.request("GET", "/metrics", None, false).unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("weft_control_proxies_connected"),
        "{metrics}"
    );
}

#[test]
fn state_is_reused_across_restarts_and_damage_stops_start_up() {
    let mut cp = ControlProc::start("state");
    let bundle = std::fs::read_to_string(cp.bundle_path()).unwrap();
    let token = cp.operator_token();
    let _join = cp.token("default", "reviews", 3600);
    cp.restart();
    assert_eq!(std::fs::read_to_string(cp.bundle_path()).unwrap(), bundle);
    assert_eq!(cp.operator_token(), token);
    let tokens = cp.api("GET", "/v1/tokens", None);
    assert_eq!(tokens.as_array().unwrap().len(), 1, "{tokens}");

    // A damaged state file is reported with its path; the control plane does not start on it.
    cp.kill9();
    let path = cp.state_dir().join("tokens.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let out = std::process::Command::new(weft::bins::bin("weft-control"))
        .arg("--state-dir")
        .arg(cp.state_dir())
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--operator-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("tokens.json") && log.contains("damaged"),
        "{log}"
    );
}

#[test]
fn proxies_register_receive_snapshots_and_their_nacks_are_reported() {
    let cp = ControlProc::start("stream");
    let rt = runtime();
    rt.block_on(async {
        let reviews = cp.offline_identity("default", "reviews", Duration::from_secs(600));
        let ratings = cp.offline_identity("default", "ratings", Duration::from_secs(600));
        let mut a = sim(
            &cp,
            &reviews,
            registration("reviews-1", "reviews", "198.18.0.2"),
            Reply::Ack,
        )
        .await
        .unwrap();
        let mut b = sim(
            &cp,
            &ratings,
            registration("ratings-1", "ratings", "198.18.0.3"),
            Reply::Nack("route regex too large for this proxy".into()),
        )
        .await
        .unwrap();
        assert!(a.wait_snapshots(1, Duration::from_secs(5)).await);
        assert!(b.wait_snapshots(1, Duration::from_secs(5)).await);
        let (_, first) = a.last().unwrap();
        // The first snapshot on a stream carries every section.
        assert!(first.mesh.is_some() && first.services.is_some() && first.routes.is_some());
        assert!(first
            .trust_bundle_pem
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
    });
    let status = cp.wait_status(Duration::from_secs(5), |s| {
        let p = s["proxies"].as_array().unwrap();
        p.len() == 2
            && p.iter()
                .any(|x| x["proxy"] == "default/reviews-1" && x["ackedVersion"].is_u64())
            && p.iter().any(|x| x["lastNack"]["reason"].as_str().is_some())
    });
    let proxies = status["proxies"].as_array().unwrap();
    let b = proxies
        .iter()
        .find(|x| x["proxy"] == "default/ratings-1")
        .unwrap();
    assert_eq!(b["identity"], "spiffe://mesh.test/ns/default/sa/ratings");
    assert!(b["ackedVersion"].is_null(), "{b}");
    assert!(
        b["lastNack"]["reason"]
            .as_str()
            .unwrap()
            .contains("regex too large"),
        "{b}"
    );
    assert!(b["certNotAfter"].as_u64().unwrap() > 0);
}

#[test]
fn a_name_held_by_another_identity_is_refused_and_a_lost_proxy_leaves_after_the_grace_period() {
    let cp = ControlProc::start_with("grace", None, &["--grace-period", "1s"]);
    let rt = runtime();
    rt.block_on(async {
        let reviews = cp.offline_identity("default", "reviews", Duration::from_secs(600));
        let intruder = cp.offline_identity("default", "intruder", Duration::from_secs(600));
        let a = sim(
            &cp,
            &reviews,
            registration("reviews-1", "reviews", "198.18.0.2"),
            Reply::Ack,
        )
        .await
        .unwrap();
        let err = sim(
            &cp,
            &intruder,
            registration("reviews-1", "reviews", "198.18.0.9"),
            Reply::Ack,
        )
        .await
        .err()
        .expect("a second identity cannot take the name");
        assert!(err.to_string().contains("already registered"), "{err}");
        drop(a);
    });
    // The runtime owns the connection; dropping it closes the socket.
    drop(rt);
    cp.wait_status(Duration::from_secs(10), |s| {
        s["proxies"].as_array().unwrap().is_empty()
    });
    assert!(cp
        .log()
        .contains("disconnected for longer than the grace period"));
}

#[test]
fn the_shipped_example_resources_apply_cleanly() {
    let cp = ControlProc::start("examples");
    let dir = weft::bins::workspace_root().join("examples/resources");
    let files: Vec<serde_json::Value> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            serde_json::json!({
                "name": p.display().to_string(),
                "text": std::fs::read_to_string(&p).unwrap(),
            })
        })
        .collect();
    let body = serde_json::json!({ "files": files }).to_string();
    let resp = cp.api("POST", "/v1/apply?wait=1000", Some(&body));
    let changes = resp["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 6, "{resp:#}");
    assert!(changes.iter().all(|c| c["action"] == "created"), "{resp:#}");
    let routes = cp.api("GET", "/v1/resources/httproute", None);
    assert_eq!(
        routes[0]["spec"]["rules"][1]["backendRefs"][1]["weight"],
        10
    );
}

#[test]
fn a_change_is_pushed_only_to_the_proxies_whose_view_it_changes() {
    let cp = ControlProc::start("scoped");
    let rt = runtime();
    rt.block_on(async {
        let reviews = cp.offline_identity("default", "reviews", Duration::from_secs(600));
        let ratings = cp.offline_identity("default", "ratings", Duration::from_secs(600));
        let mut a = sim(&cp, &reviews, registration("reviews-1", "reviews", "198.18.0.2"), Reply::Ack)
            .await
            .unwrap();
        let mut b = sim(&cp, &ratings, registration("ratings-1", "ratings", "198.18.0.3"), Reply::Ack)
            .await
            .unwrap();
        assert!(a.wait_snapshots(1, Duration::from_secs(5)).await);
        assert!(b.wait_snapshots(1, Duration::from_secs(5)).await);
        // Let the registrations' pushes settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (na, nb) = (a.snapshot_count(), b.snapshot_count());
        // A policy selecting only `app: ratings` changes only that proxy's view.
        let policy = "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ratings-only\nspec:\n  selector:\n    matchLabels:\n      app: ratings\n  action: DENY\n";
        let body = serde_json::json!({"files": [{"name": "p.yaml", "text": policy}]}).to_string();
        let resp = tokio::task::spawn_blocking({
            let api = cp.operator;
            let token = cp.operator_token();
            move || post_apply(api, &token, &body)
        })
        .await
        .unwrap();
        let pushed: Vec<&str> = resp["rollout"]["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["proxy"].as_str().unwrap())
            .collect();
        assert_eq!(pushed, ["default/ratings-1"], "{resp:#}");
        assert!(b.wait_snapshots(nb + 1, Duration::from_secs(5)).await);
        let (_, s) = b.last().unwrap();
        // Only the changed section travels.
        assert!(s.policies.is_some() && s.services.is_none() && s.routes.is_none(), "{s:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.snapshot_count(), na, "an unaffected proxy was sent a snapshot");
    });
}

/// `POST /v1/apply?wait=5000` from a blocking context.
fn post_apply(api: std::net::SocketAddr, token: &str, body: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).unwrap();
    write!(
        s,
        "POST /v1/apply?wait=5000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let json = out.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn sigterm_stops_the_control_plane_cleanly_and_help_explains_it() {
    let mut cp = ControlProc::start("sigterm");
    assert_eq!(cp.terminate(), Some(0), "{}", cp.log());
    assert!(cp.log().contains("stopped"), "{}", cp.log());
    for bin in ["weft-control", "weftctl"] {
        let out = std::process::Command::new(weft::bins::bin(bin))
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && help.contains("Exit codes"),
            "{bin}: {help}"
        );
    }
}

/// A client that sends an operator request's head and then trickles its body holds its connection no
/// longer than `--operator-body-timeout` (then 408), and meanwhile `/live`, `token create` and reads
/// answer at once.
#[test]
fn a_slow_operator_body_gets_408_and_never_delays_the_others() {
    use std::io::{Read, Write};
    let cp = ControlProc::start_with("slow-body", None, &["--operator-body-timeout", "3s"]);
    let mut slow = std::net::TcpStream::connect(cp.operator).unwrap();
    let head = format!(
        "POST /v1/apply HTTP/1.1\r\nHost: weft\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{\"files\":",
        cp.operator_token()
    );
    slow.write_all(head.as_bytes()).unwrap();
    let started = std::time::Instant::now();
    let (live, _) = weft::net::http_get(cp.operator, "/live").unwrap();
    assert_eq!(live, 200);
    let token = cp.token("default", "web", 60);
    assert!(!token.is_empty());
    let tokens = cp.api("GET", "/v1/tokens", None);
    assert!(tokens.to_string().contains("web"), "{tokens}");
    // All that was answered while the slow request still waits for its body.
    slow.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let pending = slow.read(&mut byte);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slow request was answered before the others finished ({:?}): {pending:?}",
        started.elapsed()
    );
    slow.set_nonblocking(false).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "408 after {:?}",
        started.elapsed()
    );
}

fn service_doc(name: &str) -> String {
    let yaml = format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  ports:\n    - name: http\n      port: 9080\n  selector:\n    app: {name}\n"
    );
    serde_json::json!({ "files": [{ "name": format!("{name}.yaml"), "text": yaml }] }).to_string()
}

fn service_names(cp: &ControlProc) -> Vec<String> {
    let list = cp.api("GET", "/v1/resources/service", None);
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// A state directory that fills up, or turns read-only: a change is refused with an answer that says so
/// (507, 503) and names the file, nothing is left half-written, what was applied before is still
/// served, and the same change goes through once space or write access is back. A restart then finds
/// the last saved state.
#[test]
fn a_full_or_read_only_state_directory_refuses_changes_loses_nothing_and_recovers() {
    let Some(mut cp) = ControlProc::start_on_small_fs("state-full", 2048) else {
        return;
    };
    cp.api("POST", "/v1/apply", Some(&service_doc("alpha")));
    let state_file = cp.state_dir().join("resources.json");
    let saved_before = std::fs::read(&state_file).unwrap();

    let fs = cp.small_fs.as_ref().unwrap();
    fs.fill();
    let (status, body) = cp
        .request("POST", "/v1/apply", Some(&service_doc("beta")), true)
        .unwrap();
    assert_eq!(status, 507, "{body}");
    assert!(
        body.contains("No space left on device") && body.contains("resources.json"),
        "{body}"
    );
    let body = serde_json::json!({"namespace": "default", "serviceAccount": "web", "ttlSecs": 60});
    let (status, answer) = cp
        .request("POST", "/v1/tokens", Some(&body.to_string()), true)
        .unwrap();
    assert_eq!(
        status, 507,
        "a token that cannot be saved is not handed out: {answer}"
    );
    assert_eq!(weft::net::http_get(cp.operator, "/live").unwrap().0, 200);
    assert_eq!(service_names(&cp), ["alpha"]);
    assert_eq!(std::fs::read(&state_file).unwrap(), saved_before);
    assert_eq!(fs.temp_files(), Vec::<std::path::PathBuf>::new());
    assert!(cp.log().contains("not saved"), "{}", cp.log());

    fs.free();
    cp.api("POST", "/v1/apply", Some(&service_doc("beta")));
    fs.read_only(true);
    let (status, body) = cp
        .request("POST", "/v1/apply", Some(&service_doc("gamma")), true)
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Read-only file system"), "{body}");
    assert_eq!(service_names(&cp), ["alpha", "beta"]);
    fs.read_only(false);
    cp.api("POST", "/v1/apply", Some(&service_doc("gamma")));

    cp.restart();
    assert_eq!(service_names(&cp), ["alpha", "beta", "gamma"]);
}

/// Waits until neither observer has received anything for 300 ms (at most 15 s); their snapshot counts.
async fn quiet(a: &SimProxy, b: &SimProxy) -> (usize, usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut counts = (a.snapshot_count(), b.snapshot_count());
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = (a.snapshot_count(), b.snapshot_count());
        if now == counts || std::time::Instant::now() > deadline {
            return now;
        }
        counts = now;
    }
}

/// A proxy of protocol 2 is sent only the services that changed (and those removed); one of protocol
/// 1 the whole list each time. Through a churn of registrations, readiness flips and disconnects,
/// with pushes every few milliseconds overtaking unacknowledged ones, both hold exactly the same
/// services whenever the mesh is quiet.
#[test]
fn services_go_as_changes_and_add_up_to_the_whole_list() {
    use weft::control_sim::Options;
    use weft_api::control::FromProxy;
    let cp = ControlProc::start_with(
        "changes",
        None,
        &["--debounce", "3ms", "--grace-period", "300ms"],
    );
    let names: Vec<String> = (0..6).map(|i| format!("svc-{i}")).collect();
    for name in &names {
        cp.api("POST", "/v1/apply", Some(&service_doc(name)));
    }
    let rt = runtime();
    rt.block_on(async {
        let observer = cp.offline_identity("default", "observer", Duration::from_secs(600));
        let ids: Vec<_> = names
            .iter()
            .map(|n| cp.offline_identity("default", n, Duration::from_secs(600)))
            .collect();
        let reg = |name: &str, ip: &str| registration(name, "observer", ip);
        let changes = sim(&cp, &observer, reg("watch-2", "198.18.1.2"), Reply::Ack)
            .await
            .unwrap();
        let whole = SimProxy::connect_with(
            cp.api,
            &observer,
            &cp.control_id(),
            reg("watch-1", "198.18.1.1"),
            Reply::Ack,
            Options {
                protocol: 1,
                ..Options::default()
            },
        )
        .await
        .unwrap();
        let mut live: Vec<SimProxy> = Vec::new();
        for round in 0..6u8 {
            for i in 0..6u8 {
                let k = (round as usize + i as usize * 5) % names.len();
                let name = format!("{}-{round}-{i}", names[k]);
                let ip = format!("198.18.{}.{}", 10 + round, 10 + i);
                let r = registration(&name, &names[k], &ip);
                live.push(sim(&cp, &ids[k], r, Reply::Ack).await.unwrap());
                if i % 2 == 1 {
                    let p = &live[live.len() - 2];
                    p.send(&FromProxy::Ready { ready: i % 4 == 1 })
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(u64::from(i * 3 % 7))).await;
            }
            if round % 2 == 1 {
                live.drain(..4); // Disconnected: gone once the grace period ends.
            }
            quiet(&changes, &whole).await;
            let (held, expected) = (changes.held(), whole.held());
            assert_eq!(
                held, expected,
                "round {round}: the changes do not add up to the whole list"
            );
            let endpoints: usize = expected.iter().map(|s| s.endpoints.len()).sum();
            assert!(
                endpoints > 0,
                "round {round}: no endpoints at all: {expected:?}"
            );
            let (_, last) = changes.last().unwrap();
            assert!(
                last.services.is_none() && last.services_changed.is_some(),
                "round {round}: {last:?}"
            );
            let (_, last) = whole.last().unwrap();
            assert!(
                last.services.is_some() && last.services_changed.is_none(),
                "round {round}: {last:?}"
            );
        }
        assert!(
            changes.seen.lock().unwrap().ended.is_none()
                && whole.seen.lock().unwrap().ended.is_none()
        );
    });
}

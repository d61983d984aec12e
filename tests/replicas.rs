//! Faults of a replicated control plane on three simulated nodes (issue 18, "Several nodes";
//! docs/operations.md, "Faults"): 3 etcd members and 3 `weft-control` replicas, one of each per node
//! (tests/support/replicas.rs), pods on every node started by the real `weftctl pod run --node`, and
//! a bounded request loop between pods on different nodes running from before each fault until after
//! its checks. Each test asserts that no request in flight failed and prints what it measured.
//!
//! 1. kill -9 the replica the sidecars use: they move to the next one, a shift through a surviving
//!    replica is acked, a new pod joins;
//! 2. kill -9 one etcd member: applies keep working on the quorum, the member restarted rejoins;
//! 3. a node cut off: the majority side applies, the cut-off replica refuses writes naming etcd, and
//!    after the heal every replica holds one CA and one revision history without the refused write;
//! 4. every replica and every etcd member killed and started again, pods staying: the same CA,
//!    resources, revision and tokens, proxies back, traffic served throughout from the last config.
//!
//! The pods of most tests are named so that their sidecars pick the replicas in the same order (they
//! all use one replica at a time); one test spreads them over the three replicas (endpoints and acks
//! across replicas, from the shared registry) and kills the client's.
//!
//! Needs root, `ip`, `iptables` and etcd (`weft::pods::available`, `weft::etcd::available`).

use std::time::{Duration, Instant};
use weft::nodes::curl;
use weft::pods::{available, example, PodHandle};
use weft::replicas::{api_addr, Load, LoadResult, Replicas};

const SERVICE: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: api}\nspec:\n  ports: [{port: 8080, protocol: http}]\n  selector: {app: api}\n";

fn route(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata: {{name: api}}\nspec:\n  parentRefs: [{{name: api}}]\n  rules:\n    - backendRefs:\n        - {{name: api, subset: v1, weight: {v1}}}\n        - {{name: api, subset: v2, weight: {v2}}}\n"
    )
}

fn service(name: &str) -> String {
    format!("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 8080, protocol: http}}]\n  selector: {{app: {name}}}\n")
}

const URL: &str = "http://api:8080/info";

/// The mesh of a test: the client pod and the names of every pod.
struct Shop {
    r: Replicas,
    client: PodHandle,
    pods: Vec<String>,
}

/// Where a test's pods go: (node, the order of replicas its sidecar tries) for the client and for
/// the two versions of `api`.
struct Placement {
    client: (usize, [usize; 3]),
    v1: (usize, [usize; 3]),
    v2: (usize, [usize; 3]),
}

/// Every sidecar tries replica 0, then 1, then 2: they all use the same replica at any time.
const TOGETHER: [usize; 3] = [0, 1, 2];

fn shop(tag: &str, at: &Placement) -> Option<Shop> {
    if !available(tag) {
        return None;
    }
    let mut r = Replicas::start(tag)?;
    r.mesh.apply(SERVICE);
    r.mesh.apply(&route(100, 0));
    let app = example("demo-app");
    let mut pods = Vec::new();
    for (version, (node, order)) in [("v1", at.v1), ("v2", at.v2)] {
        let name = Replicas::name_with_order(&format!("api-{version}-"), Some("api"), order);
        let label = format!("version={version}");
        let flags = ["--service", "api", "--label", &label, "--port", "8080"];
        let cmd = [
            app.as_str(),
            "http",
            "--listen",
            "0.0.0.0:8080",
            "--name",
            &name,
        ];
        r.pod(&name, node, &flags, &cmd);
        pods.push(name);
    }
    let (node, order) = at.client;
    let name = Replicas::name_with_order("client-", None, order);
    let client = r.pod(&name, node, &[], &["sleep", "600"]);
    pods.push(name);
    until_ok(&r, &client, Duration::from_secs(30));
    Some(Shop { r, client, pods })
}

/// Polls `curl` from `pod` to the api until it answers 200 (bounded).
fn until_ok(r: &Replicas, pod: &PodHandle, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (s, body) = curl(&r.mesh, pod, 5, &[URL]);
        if s == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{URL} from {} not 200 within {within:?}: {s} {body}",
            pod.name
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// No request in flight failed, and there were enough of them to judge.
fn assert_no_failures(what: &str, run: &LoadResult) {
    assert!(
        run.sent >= 50,
        "{what}: too little traffic to judge: {run:?}"
    );
    assert_eq!(run.failed, 0, "{what}: failed requests: {run:?}");
}

/// Waits until `pod`'s sidecar logged its move from replica `from` to replica `to` (0-based);
/// returns how long after `since` it was seen.
fn wait_moved(s: &Shop, pod: &str, (from, to): (usize, usize), since: Instant) -> Duration {
    let line = format!(
        "control plane failover from={} to={}",
        api_addr(from + 1),
        api_addr(to + 1)
    );
    loop {
        if s.r.mesh.sidecar_log(pod).contains(&line) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(40),
            "{pod} never logged `{line}`:\n{}",
            s.r.mesh.sidecar_log(pod)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `weftctl shift api v1=V1 v2=V2` through replica `via`: (acked, total, how long it took).
fn shift(r: &mut Replicas, via: usize, v1: u32, v2: u32) -> (u64, u64, Duration) {
    r.use_replica(via);
    let started = Instant::now();
    let (a, b) = (format!("v1={v1}"), format!("v2={v2}"));
    let out = r.mesh.weftctl_ok(&["shift", "api", &a, &b]);
    let took = started.elapsed();
    let counts = out
        .split_once("acked by ")
        .and_then(|(_, rest)| rest.split_once(" proxies"))
        .and_then(|(n, _)| n.split_once('/'))
        .and_then(|(a, t)| Some((a.parse().ok()?, t.parse().ok()?)));
    let (acked, total) = counts.unwrap_or_else(|| panic!("shift through {via}: {out}"));
    (acked, total, took)
}

/// `GET /v1/mesh`'s CA fingerprint of replica `i`.
fn fingerprint(r: &Replicas, i: usize) -> String {
    r.replica(i).api("GET", "/v1/mesh", None)["caFingerprint"]
        .as_str()
        .expect("caFingerprint")
        .to_string()
}

/// The names of the services replica `i` holds.
fn services(r: &Replicas, i: usize) -> Vec<String> {
    let v = r.replica(i).api("GET", "/v1/resources/service", None);
    let mut names: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("services: {v}"))
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

fn apply_body(name: &str, yaml: &str) -> String {
    serde_json::json!({ "files": [{ "name": name, "text": yaml }] }).to_string()
}

/// An apply through replica `i`: (status, body, how long it took).
fn apply_via(r: &Replicas, i: usize, name: &str, yaml: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let (status, body) = r
        .replica(i)
        .request("POST", "/v1/apply", Some(&apply_body(name, yaml)), true)
        .unwrap_or_else(|e| panic!("apply through replica {i}: {e}"));
    (status, body, started.elapsed())
}

#[test]
fn kill9_of_the_replica_the_sidecars_use_moves_them_and_fails_no_request() {
    let at = Placement {
        client: (2, TOGETHER),
        v1: (3, TOGETHER),
        v2: (1, TOGETHER),
    };
    kill9_replica("rk", &at, 1);
}

#[test]
fn kill9_of_a_replica_with_sidecars_spread_over_replicas_is_acked_by_every_proxy() {
    let at = Placement {
        client: (2, [0, 1, 2]),
        v1: (3, [1, 2, 0]),
        v2: (1, [2, 0, 1]),
    };
    kill9_replica("rks", &at, 2);
}

/// Kills replica 0 (which the client uses) under the request loop: the sidecars on it move to
/// replica 1, a shift through replica `via` is acked by every proxy, a new pod joins past the dead
/// replica and reaches the api, and no request fails.
fn kill9_replica(tag: &str, at: &Placement, via: usize) {
    let Some(mut s) = shop(tag, at) else { return };
    let on_0: Vec<String> = s
        .pods
        .iter()
        .filter(|p| s.r.connected_to(p) == [0])
        .cloned()
        .collect();
    assert!(on_0.contains(&s.client.name), "{on_0:?}");
    let load = Load::start(&s.client, URL);
    std::thread::sleep(Duration::from_secs(1));
    s.r.kill9_replica(0);
    let killed = Instant::now();
    let moved: Vec<Duration> = on_0
        .iter()
        .map(|p| wait_moved(&s, p, (0, 1), killed))
        .collect();
    let (acked, total, took) = shift(&mut s.r, via, 50, 50);
    assert_eq!(
        (acked, total),
        (3, 3),
        "the shift through replica {via} was not acked by every proxy"
    );
    let name = Replicas::name_with_order("late-", None, TOGETHER);
    let joining = Instant::now();
    let late = s.r.pod(&name, 1, &[], &["sleep", "600"]);
    let joined = joining.elapsed();
    until_ok(&s.r, &late, Duration::from_secs(30));
    assert_eq!(s.r.connected_to(&name), [1], "the new pod's replica");
    std::thread::sleep(Duration::from_millis(500));
    let run = load.stop();
    assert_no_failures(tag, &run);
    println!(
        "{tag}: replica 1 killed; {} sidecars moved to replica 2 within {:?} (slowest {:?}); \
         shift through replica {} acked by {acked}/{total} in {took:?}; a new pod joined in \
         {joined:?}; {} requests sent, {} failed",
        moved.len(),
        moved,
        moved.iter().max(),
        via + 1,
        run.sent,
        run.failed
    );
}

#[test]
fn kill9_of_the_etcd_leader_keeps_applies_working_and_it_rejoins() {
    let at = Placement {
        client: (1, TOGETHER),
        v1: (2, TOGETHER),
        v2: (3, TOGETHER),
    };
    let Some(mut s) = shop("ek", &at) else { return };
    let leader = s.r.etcd_leader().expect("an etcd leader");
    let load = Load::start(&s.client, URL);
    std::thread::sleep(Duration::from_secs(1));
    // The worst member to lose: the two left elect a leader before anything is written.
    s.r.kill9_etcd(leader);
    let (elected, refused) = apply_until_saved(&s.r, 0, &service("member-down"));
    // Then every replica writes at once, with the quorum of two.
    let mut applies = Vec::new();
    for i in 0..3 {
        let (status, body, took) = apply_via(&s.r, i, "down.yaml", &service(&format!("down-{i}")));
        assert_eq!(
            status,
            200,
            "apply through replica {} with a member down: {body}",
            i + 1
        );
        applies.push(took);
    }
    let (acked, total, shift_took) = shift(&mut s.r, 0, 50, 50);
    assert_eq!((acked, total), (3, 3), "the shift with a member down");
    let rejoined = s.r.restart_etcd(leader);
    // The restarted member is part of the quorum again: with another one gone now, writes need it.
    let other = (leader + 1) % 3;
    s.r.kill9_etcd(other);
    let (with_it, refused_again) = apply_until_saved(&s.r, 2, &service("member-back"));
    let want = ["member-down", "down-0", "down-1", "down-2", "member-back"];
    for i in 0..3 {
        wait_services(&s.r, i, &want);
    }
    let other_rejoined = s.r.restart_etcd(other);
    std::thread::sleep(Duration::from_millis(500));
    let run = load.stop();
    assert_no_failures("ek", &run);
    println!(
        "ek: etcd leader m{} killed; the first apply was saved after {elected:?} ({} refused \
         meanwhile: {refused:?}); then applies through replicas 1-3 took {applies:?} and a shift \
         was acked by {acked}/{total} in {shift_took:?}; m{} restarted healthy in {rejoined:?}; \
         with m{} killed next an apply was saved after {with_it:?} ({} refused), m{} back in \
         {other_rejoined:?}; {} requests sent, {} failed",
        leader + 1,
        refused.len(),
        leader + 1,
        other + 1,
        refused_again.len(),
        other + 1,
        run.sent,
        run.failed
    );
}

/// Applies `yaml` through replica `i` until it is saved (at most 20 s); every refusal before must
/// be a 503 naming etcd with nothing changed. Returns how long it took and the refusals.
fn apply_until_saved(r: &Replicas, i: usize, yaml: &str) -> (Duration, Vec<String>) {
    let started = Instant::now();
    let mut refused = Vec::new();
    loop {
        let (status, body, took) = apply_via(r, i, "retry.yaml", yaml);
        if status == 200 {
            return (started.elapsed(), refused);
        }
        assert!(
            status == 503 && body.contains("etcd") && body.contains("nothing was changed"),
            "apply through replica {}: {status} {body}",
            i + 1
        );
        refused.push(format!("503 after {took:?}"));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing saved through replica {} within 20 s: {refused:?}, last {body}",
            i + 1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (bounded) until replica `i` holds every service of `want`.
fn wait_services(r: &Replicas, i: usize, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let names = services(r, i);
        if want.iter().all(|w| names.iter().any(|n| n == w)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {} holds {names:?}, not all of {want:?}",
            i + 1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_cut_off_leaves_one_ca_and_one_history_and_its_replica_refuses_writes() {
    let at = Placement {
        client: (1, TOGETHER),
        v1: (2, TOGETHER),
        v2: (2, TOGETHER),
    };
    let Some(s) = shop("np", &at) else { return };
    let fp = fingerprint(&s.r, 0);
    for i in 1..3 {
        assert_eq!(fingerprint(&s.r, i), fp, "replica {} before the cut", i + 1);
    }
    let load = Load::start(&s.client, URL);
    std::thread::sleep(Duration::from_secs(1));
    let cut = s.r.mesh.partition("node3");
    // The cut-off replica cannot reach a quorum: refused, naming etcd, nothing saved.
    let (status, refused, refused_in) = apply_via(&s.r, 2, "cut.yaml", &service("cut-off-write"));
    assert_eq!(status, 503, "the cut-off replica took a write: {refused}");
    assert!(refused.contains("etcd"), "{refused}");
    // The majority side writes (a call that went to the cut-off member before the replica took it
    // out of its set is refused, nothing saved: counted).
    let (majority_in, majority_refused) = apply_until_saved(&s.r, 0, &service("majority"));
    let revision = s.r.status(0)["revision"].as_u64().expect("revision");
    let majority = wait_same_history(&s.r, &[0, 1], revision, Instant::now());
    let healing = Instant::now();
    cut.heal();
    let converged = wait_same_history(&s.r, &[0, 1, 2], revision, healing);
    let names = services(&s.r, 0);
    for i in 0..3 {
        assert_eq!(services(&s.r, i), names, "replica {} after the heal", i + 1);
        assert_eq!(fingerprint(&s.r, i), fp, "replica {} after the heal", i + 1);
    }
    assert!(names.iter().any(|n| n == "majority"), "{names:?}");
    assert!(!names.iter().any(|n| n == "cut-off-write"), "{names:?}");
    std::thread::sleep(Duration::from_millis(500));
    let run = load.stop();
    assert_no_failures("np", &run);
    println!(
        "np: node3 cut off; its replica refused a write in {refused_in:?} ({}); replica 1 \
         applied after {majority_in:?} ({} refused before), replica 2 had it {majority:?} later); after the heal replica 3 reached revision {revision} in \
         {converged:?}; one CA {fp}; {} requests sent between node 1 and node 2, {} failed",
        refused.trim(),
        majority_refused.len(),
        run.sent,
        run.failed
    );
}

/// Waits (bounded) until each of `replicas` reports `revision`; returns how long after `since`.
fn wait_same_history(r: &Replicas, replicas: &[usize], revision: u64, since: Instant) -> Duration {
    loop {
        let revisions: Vec<Option<u64>> = replicas
            .iter()
            .map(|i| r.status(*i)["revision"].as_u64())
            .collect();
        if revisions.iter().all(|v| *v == Some(revision)) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "revisions {revisions:?}, not all {revision}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn everything_restarted_keeps_the_state_and_pods_serve_throughout() {
    let at = Placement {
        client: (3, TOGETHER),
        v1: (1, TOGETHER),
        v2: (2, TOGETHER),
    };
    let Some(mut s) = shop("ra", &at) else { return };
    s.r.replica(1).token("default", "kept", 3600);
    let before = snapshot(&s.r);
    let load = Load::start(&s.client, URL);
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    s.r.stop_all();
    // Down for a while: the sidecars serve from their last config.
    std::thread::sleep(Duration::from_secs(3));
    s.r.start_all();
    let down = stopped.elapsed();
    let restarted = Instant::now();
    for i in 0..3 {
        assert_eq!(
            snapshot_of(&s.r, i),
            before,
            "replica {} after the restart",
            i + 1
        );
    }
    let back: Vec<Duration> = s
        .pods
        .iter()
        .map(|p| wait_connected(&s.r, p, restarted))
        .collect();
    // The sidecars may have come back to different replicas: the shift is acked by every proxy
    // through any replica (each replica publishes where its proxies stand).
    let (acked, total, took) = shift(&mut s.r, 0, 50, 50);
    assert_eq!((acked, total), (3, 3), "the shift after the restart");
    std::thread::sleep(Duration::from_millis(500));
    let run = load.stop();
    assert_no_failures("ra", &run);
    println!(
        "ra: every replica and etcd member killed and started again (control plane down \
         {down:?}); state intact; sidecars reconnected within {back:?}; a shift acked by \
         {acked}/{total} in {took:?}; {} requests sent, {} failed",
        run.sent, run.failed
    );
}

/// What must survive a restart, as replica 0 answers it.
/// The state every replica agrees on (bounded wait: a change made through one replica reaches the
/// others through their etcd watch, a moment later).
fn snapshot(r: &Replicas) -> serde_json::Value {
    let since = Instant::now();
    loop {
        let first = snapshot_of(r, 0);
        if (1..3).all(|i| snapshot_of(r, i) == first) {
            return first;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "the replicas do not agree: {first} / {} / {}",
            snapshot_of(r, 1),
            snapshot_of(r, 2)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replica `i`'s CA fingerprint, revision, services and join tokens (id and uses).
fn snapshot_of(r: &Replicas, i: usize) -> serde_json::Value {
    let tokens = r.replica(i).api("GET", "/v1/tokens", None);
    let mut tokens: Vec<(String, u64)> = tokens
        .as_array()
        .unwrap_or_else(|| panic!("tokens: {tokens}"))
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap_or_default().to_string(),
                t["uses"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    tokens.sort();
    serde_json::json!({
        "ca": fingerprint(r, i),
        "revision": r.status(i)["revision"],
        "services": services(r, i),
        "tokens": tokens,
    })
}

/// Waits (bounded) until `pod`'s sidecar is connected to some replica; returns how long after
/// `since`.
fn wait_connected(r: &Replicas, pod: &str, since: Instant) -> Duration {
    loop {
        if !r.connected_to(pod).is_empty() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "{pod} never reconnected:\n{}",
            r.mesh.sidecar_log(pod)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

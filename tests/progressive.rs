//! Progressive delivery end to end: `weftctl shift reviews --to v2` against real pods (network
//! namespaces, sidecars, `weft-control`), watching the counts the load pod's sidecar reports. A failing
//! v2 is rolled back after its first step; a healthy one is promoted; too little traffic and Ctrl-C
//! roll back too. Needs root, `ip` and `iptables` (see `weft::pods::available`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};
use weft::pods::{available, example, text, PodHandle, PodMesh};

/// Outlier ejection is off: the test fails v2 and then heals it, and an ejected v2 would keep failing
/// (503 no endpoint) for the ejection time after it healed.
const REVIEWS: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  ports: [{port: 9080}]\n  selector: {app: reviews}\n  trafficPolicy:\n    outlierDetection: {consecutiveErrors: 0}\n";

/// No weftctl run here should take longer; a hung one is killed and fails the test.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// v2 up by 25% every 2 s, rolled back past 5% errors or a 2 s p99.
const QUARTER_STEPS: &[&str] = &[
    "--to",
    "v2",
    "--step",
    "25",
    "--interval",
    "2s",
    "--max-error-rate",
    "5%",
    "--max-p99",
    "2s",
];

#[test]
fn a_failing_version_is_rolled_back_and_a_healthy_one_promoted() {
    if !available("progressive") {
        return;
    }
    let chaos = example("chaos");
    let mut mesh = PodMesh::new("prog");
    mesh.apply(REVIEWS);
    let mut pods = Vec::new();
    for (name, version) in [("reviews-v1", "v1"), ("reviews-v2", "v2")] {
        let pod = mesh.pod(
            name,
            &[
                "--service",
                "reviews",
                "--label",
                &format!("version={version}"),
                "--port",
                "9080",
            ],
            &[
                &chaos,
                "serve",
                "--listen",
                "0.0.0.0:9080",
                "--version",
                version,
            ],
        );
        pods.push(pod);
    }
    let v2 = pods.pop().expect("the v2 pod");
    set_fail_percent(&mesh, &v2, 50);
    mesh.weftctl_ok(&["shift", "reviews", "v1=100"]);
    // Steady traffic from a client pod, whose sidecar counts what it sends to each version.
    mesh.pod(
        "load",
        &[],
        &[
            &chaos,
            "load",
            "--url",
            "http://reviews:9080/",
            "--requests",
            "100000000",
            "--concurrency",
            "2",
            "--duration",
            "600",
            "--pause-ms",
            "2",
        ],
    );
    wait_for_reports(&mesh);
    for (path, auth, want) in [
        ("/v1/stats?namespace=default&service=reviews", false, 401),
        ("/v1/stats?namespace=default", true, 400),
        ("/v1/stats?service=Reviews", true, 400),
    ] {
        let (status, body) = mesh
            .control
            .request("GET", path, None, auth)
            .expect("operator request");
        assert_eq!(status, want, "{path}: {body}");
    }

    // v2 answers half of its requests with 500: the first step's window is over 5%.
    let out = shift(&mesh, QUARTER_STEPS);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(4), "{all}");
    assert!(
        all.contains("step 1/4: reviews: v1=100 -> v1=75 v2=25"),
        "{all}"
    );
    assert!(
        !all.contains("step 2/4"),
        "went past the failing step: {all}"
    );
    assert!(
        all.contains("error rate") && all.contains("--max-error-rate 5%"),
        "{all}"
    );
    assert!(all.contains("p99 ≤"), "the window's p99 is shown: {all}");
    assert!(all.contains("rolled back"), "{all}");
    assert_eq!(weights(&mesh), [("v1".to_string(), 100)], "{all}");

    // Too little traffic to judge (nobody sends a million requests in a second): rolled back.
    let out = shift(
        &mesh,
        &[
            "--to",
            "v2",
            "--step",
            "50",
            "--interval",
            "1s",
            "--min-requests",
            "1000000",
            "--max-idle-intervals",
            "2",
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(5), "{all}");
    assert!(all.contains("waiting another interval (1/2)"), "{all}");
    assert!(all.contains("too little traffic"), "{all}");
    assert_eq!(weights(&mesh), [("v1".to_string(), 100)], "{all}");

    // Healthy v2: every step passes and v2 ends with all the traffic.
    set_fail_percent(&mesh, &v2, 0);
    let out = shift(&mesh, QUARTER_STEPS);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for step in [
        "step 1/4: reviews: v1=100 -> v1=75 v2=25",
        "step 4/4: reviews: v1=25 v2=75 -> v1=0 v2=100",
        "promoted: reviews v1=0 v2=100",
    ] {
        assert!(all.contains(step), "missing {step:?}: {all}");
    }
    assert_eq!(all.matches(": within limits").count(), 4, "{all}");
    assert_eq!(
        weights(&mesh),
        [("v1".to_string(), 0), ("v2".to_string(), 100)]
    );
    // `weftctl rollback` after a promotion goes back to where the shift began.
    let back = mesh.weftctl_ok(&["rollback", "reviews"]);
    assert!(back.contains("reviews: v1=0 v2=100 -> v1=100"), "{back}");

    // Ctrl-C during a step: rolled back, exit 130.
    let (code, all) = interrupted_shift(&mesh);
    assert_eq!(code, Some(130), "{all}");
    assert!(
        all.contains("interrupted") && all.contains("rolled back"),
        "{all}"
    );
    assert_eq!(weights(&mesh), [("v1".to_string(), 100)], "{all}");
}

/// Changes what the chaos server in `pod` fails, from inside its own namespace (loopback is not
/// intercepted).
fn set_fail_percent(mesh: &PodMesh, pod: &PodHandle, percent: u8) {
    let body = format!(r#"{{"fail_percent": {percent}, "status": 500}}"#);
    mesh.exec_ok(
        pod,
        &[
            "curl",
            "-sf",
            "-X",
            "POST",
            "http://127.0.0.1:9080/_chaos/mode",
            "-d",
            &body,
        ],
    );
}

/// Waits until the load pod's sidecar has reported requests to reviews.
fn wait_for_reports(mesh: &PodMesh) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = mesh
            .control
            .api("GET", "/v1/stats?namespace=default&service=reviews", None);
        let requests = stats["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["requests"].as_u64())
            .sum::<u64>();
        if requests > 0 && stats["proxiesReporting"] == 1 {
            assert_eq!(stats["byProxy"][0]["proxy"], "default/load", "{stats}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no request counts reported: {stats}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `weftctl shift reviews ARGS`, bounded by [`RUN_LIMIT`].
fn shift(mesh: &PodMesh, args: &[&str]) -> Output {
    let child = mesh
        .weftctl()
        .args(["shift", "reviews"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weftctl shift");
    let out = finish(child);
    // Shown with --nocapture: what an operator would have seen.
    eprintln!("$ weftctl shift reviews {}\n{}", args.join(" "), text(&out));
    out
}

fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + RUN_LIMIT;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("weftctl output");
            panic!("weftctl shift ran over {RUN_LIMIT:?}: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("weftctl output")
}

/// Starts a slow shift, sends SIGINT once its first step is taken; exit code and all output.
fn interrupted_shift(mesh: &PodMesh) -> (Option<i32>, String) {
    let mut child = mesh
        .weftctl()
        .args([
            "shift",
            "reviews",
            "--to",
            "v2",
            "--step",
            "50",
            "--interval",
            "60s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weftctl shift");
    let stdout = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read weftctl output");
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("step 1/2:") {
            break;
        }
    }
    assert!(seen.contains("step 1/2:"), "no first step: {seen}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = finish(child);
    (out.status.code(), format!("{seen}{}", text(&out)))
}

/// The catch-all split of the reviews route.
fn weights(mesh: &PodMesh) -> Vec<(String, u64)> {
    let out = mesh.weftctl_ok(&["get", "route", "reviews", "-o", "json"]);
    let route: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("route JSON {out:?}: {e}"));
    route["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["matches"].as_array().is_none_or(Vec::is_empty))
        .flat_map(|r| r["backendRefs"].as_array().cloned().unwrap_or_default())
        .map(|b| {
            (
                b["subset"].as_str().unwrap_or_default().to_string(),
                b["weight"].as_u64().unwrap_or(1),
            )
        })
        .collect()
}

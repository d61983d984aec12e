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
    let web = mesh.pod(
        "web",
        &[
            "--service",
            "web",
            "--port",
            "8080",
            "--label",
            "version=v3",
        ],
        &[&app, "http", "--listen", "0.0.0.0:8080", "--name", "web"],
    );
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

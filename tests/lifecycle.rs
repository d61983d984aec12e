//! The proxy as an operator meets it: readiness, admin endpoints (writes off by default), bad config
//! files, graceful drain on SIGTERM, and memory that stays flat while a large body streams through.

use bytes::Bytes;
use http::{Method, StatusCode};
use std::process::Command;
use std::time::{Duration, Instant};
use weft::bins::bin;
use weft::net::{http_get, http_post};
use weft::pair::{Pair, PairOptions};
use weft::pki::Pki;
use weft::proxy::ProxyBuilder;

#[tokio::test]
async fn admin_and_health_endpoints() {
    let p = Pair::start().await;
    let (status, body) = http_get(p.server.admin, "/identity").unwrap();
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["spiffe_id"], p.server_id.id.as_str());
    let expires = doc["expires_in_seconds"].as_u64().unwrap();
    assert!(expires > 3000 && expires <= 3600, "{doc}");

    let (status, body) = http_get(p.client.admin, "/config").unwrap();
    assert_eq!(status, 200);
    let cfg: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cfg["outbound"][0]["identity"], p.server_id.id.as_str());
    assert_eq!(cfg["outbound"][0]["target_port"], p.http_app.addr().port());

    assert_eq!(http_get(p.client.health, "/live").unwrap().0, 200);
    assert_eq!(http_get(p.client.health, "/ready").unwrap().0, 200);
    let r = weft::apps::client::http1(p.http(), Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let metrics = p.client.metrics();
    assert!(
        metrics.contains("weft_proxy_requests_total{direction=\"outbound\",status_code=\"200\"} 1"),
        "{metrics}"
    );
}

/// POST /shutdown (and any write) needs `admin.shutdown`: the app in the pod reaches this port.
#[test]
fn admin_writes_are_off_by_default() {
    let mut p =
        ProxyBuilder::new("admin", &Pki::new("weft.test").workload("default", "api")).start();
    let (status, body) = http_post(p.admin, "/shutdown").expect("POST /shutdown");
    assert_eq!(status, 405, "POST /shutdown without admin.shutdown: {body}");
    assert!(
        body.contains("admin.shutdown"),
        "the refusal says how to enable it: {body}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        matches!(http_get(p.health, "/ready"), Ok((200, _))),
        "still serving after a refused shutdown:\n{}",
        p.log()
    );
    assert!(p.is_running(), "the proxy must still run");
    let (status, _) = http_post(p.admin, "/config").expect("POST /config");
    assert_eq!(status, 405, "no write of any kind");
    assert_eq!(
        p.metric(
            "weft_proxy_rejections_total",
            &["listener=\"admin\"", "reason=\"write_disabled\""]
        ),
        2.0
    );
    assert!(p.log().contains("admin write refused"), "{}", p.log());
    assert_eq!(
        http_get(p.admin, "/config").unwrap().0,
        200,
        "reads still work"
    );
}

#[test]
fn bad_config_files_are_refused_with_file_line_and_field() {
    let dir = weft::pki::TempDir::new("badcfg");
    let cases = [
        ("outbound:\n  - listen: 127.0.0.1:1\n    peer: nowhere\n", 3, "outbound[0].peer"),
        (
            "identity:\n  cert: a\n  key: b\n  bundle: c\noutbound:\n  - listen: 127.0.0.1:1\n    peer: 127.0.0.1:2\n    identity: spiffe://UPPER/x\n    target_port: 1\n",
            8,
            "outbound[0].identity",
        ),
        ("identity:\n  cert: a\n  key: b\n  bundle: c\n  colour: red\n", 5, "identity.colour"),
        ("identity:\n  cert: a\n  key: b\n  bundle: c\nlimits:\n  connect_timeout: soon\n", 6, "limits.connect_timeout"),
        // Rules checked after parsing name the line of the field too.
        ("identity:\n  cert: a\n  key: b\n  bundle: c\nlimits:\n  connect_timeout: 1s\n  max_headers: 0\n", 7, "limits.max_headers"),
        (
            "identity:\n  cert: a\n  key: b\n  bundle: c\noutbound:\n  - listen: 127.0.0.1:1\n    peer: 127.0.0.1:2\n    identity: spiffe://weft.local/x\n    target_port: 1\n  - listen: 127.0.0.1:2\n    peer: 127.0.0.1:2\n    identity: spiffe://weft.local/x\n    target_port: 0\n",
            13,
            "outbound[1].target_port",
        ),
    ];
    for (i, (yaml, line, field)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        for sub in ["check", "run"] {
            let out = Command::new(bin("weft-proxy"))
                .args([sub, "--config"])
                .arg(&path)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{sub} {yaml}: {err}");
            assert!(
                err.contains(&format!("bad{i}.yaml:{line}:")),
                "names the file and line: {err}"
            );
            assert!(err.contains(field), "names the field {field}: {err}");
        }
    }
    // Identity files that do not exist are named too.
    let path = dir.path().join("missing.yaml");
    std::fs::write(
        &path,
        "identity:\n  cert: nope.crt\n  key: nope.key\n  bundle: nope.pem\n",
    )
    .unwrap();
    let out = Command::new(bin("weft-proxy"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope.crt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_explains_itself() {
    let out = Command::new(bin("weft-proxy"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in ["run", "check", "15008", "Exit codes"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut p = Pair::start_with(PairOptions {
        client_yaml: "drain_timeout: 10s\n".into(),
        server_yaml: "drain_timeout: 10s\n".into(),
        ..Default::default()
    })
    .await;
    let http = p.http();
    let slow = tokio::spawn(async move {
        weft::apps::client::http1(http, Method::GET, "/slow?ms=1500", &[], Bytes::new()).await
    });
    // A TCP stream that is open across the signal finishes too.
    let tcp = p.tcp();
    let stream = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
        s.write_all(b"before").await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.write_all(b"-after").await.unwrap();
        s.shutdown().await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.server.sigterm();
    p.client.sigterm();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        http_get(p.client.health, "/ready").map(|r| r.0).ok(),
        Some(503),
        "draining proxies report not ready"
    );
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "slept 1500 ms");
    let echoed = stream.await.unwrap();
    assert!(
        echoed.starts_with(b"before-after"),
        "{:?}",
        String::from_utf8_lossy(&echoed)
    );
    let started = Instant::now();
    for proc in [&mut p.client, &mut p.server] {
        let status = proc
            .wait_exit(Duration::from_secs(10))
            .expect("exits after draining");
        assert_eq!(status.code(), Some(0), "{}", proc.log());
        assert!(proc.log().contains("drained"), "{}", proc.log());
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // New connections are refused once it is gone.
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[tokio::test]
async fn drain_deadline_cuts_what_is_left_and_exits_nonzero() {
    let mut p = Pair::start_with(PairOptions {
        server_yaml: "drain_timeout: 1s\n".into(),
        server_admin_shutdown: true,
        ..Default::default()
    })
    .await;
    let http = p.http();
    let slow = tokio::spawn(async move {
        weft::apps::client::http1(http, Method::GET, "/slow?ms=5000", &[], Bytes::new()).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = http_post(p.server.admin, "/shutdown").unwrap();
    assert_eq!(status, 200);
    let code = p
        .server
        .wait_exit(Duration::from_secs(5))
        .expect("exits at the deadline")
        .code();
    assert_eq!(
        code,
        Some(1),
        "exit code 1 tells the operator work was cut off"
    );
    let r = slow.await.unwrap();
    assert!(r.map(|r| r.status != StatusCode::OK).unwrap_or(true));
}

/// Streams 1 GiB through the pair and samples both proxies' RSS: it must stay flat (bodies are streamed
/// under HTTP/2 flow control, never buffered whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_one_gib_upload_keeps_rss_flat() {
    let p = Pair::start().await;
    // Warm up so pools and buffers exist before the baseline.
    weft::apps::client::upload(p.http(), "/count", 8 << 20, 64 * 1024)
        .await
        .unwrap();
    let base = (p.client.rss_kib(), p.server.rss_kib());
    const GIB: u64 = 1 << 30;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(240), upload_unbounded(p.http(), GIB))
        .await
        .expect("1 GiB upload finishes within 4 minutes");
    let elapsed = started.elapsed();
    assert_eq!(r["bytes"], GIB);
    // The kernel's high-water mark covers every moment of the upload, not just our samples.
    let peak = (p.client.hwm_kib(), p.server.hwm_kib());
    eprintln!(
        "1 GiB in {elapsed:?} ({:.0} MiB/s); RSS KiB client {} -> {}, server {} -> {}",
        1024.0 / elapsed.as_secs_f64(),
        base.0,
        peak.0,
        base.1,
        peak.1
    );
    for (name, before, after) in [("client", base.0, peak.0), ("server", base.1, peak.1)] {
        assert!(
            after < before + 48 * 1024,
            "{name} proxy RSS grew from {before} KiB to {after} KiB"
        );
    }
}

async fn upload_unbounded(addr: std::net::SocketAddr, bytes: u64) -> serde_json::Value {
    let limit = Duration::from_secs(240);
    let r = weft::apps::client::upload_within(addr, "/count", bytes, 256 * 1024, limit)
        .await
        .expect("upload");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json().unwrap()
}

//! Every listener's three bounds (docs/limits.md), checked the same way on each, with the real
//! `weft-proxy` and `weft-control` and short limits set through their real config (`limits:`, `dns:`,
//! flags):
//!
//! 1. trickle: a request head (or a TLS ClientHello, or a DNS question) sent one byte every 400 ms is
//!    cut off at the header-read / handshake timeout, not served forever;
//! 2. idle: a connection that says nothing, and one whose exchange (HTTP/1 keep-alive request, HTTP/2
//!    stream, DNS question) has finished, is closed after its idle timeout;
//! 3. cap: connections up to the cap are accepted, the next is closed at once and counted (or, for the
//!    operator and metrics listeners, logged), and the listener serves again once they close.
//!
//! Every limit is [`LIMIT`]; a listener without its bound (or with a much longer one) fails here.
//! The intercepted listeners (15001, 15006) are the same code behind `SO_ORIGINAL_DST` and need pods.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft::control::ControlProc;
use weft::net::{closed_within, connect_tcp as connect, free_addr, http_get};
use weft::pair::{Pair, PairOptions};
use weft::pki::IdentityFiles;
use weft::proxy::ProxyProc;
use weft::tls_probe;

/// Every header-read, handshake and idle timeout of the listeners under test.
const LIMIT: Duration = Duration::from_secs(2);
/// Every connection cap of the listeners under test.
const CAP: usize = 4;
/// Scheduling slack on a busy machine: a bound holds if the close comes within `LIMIT + SLACK`.
const SLACK: Duration = Duration::from_secs(3);
/// One byte every this long when trickling.
const DRIP: Duration = Duration::from_millis(400);

/// What a listener speaks, and so how each check talks to it.
#[derive(Clone)]
enum Speaks {
    /// HTTP/1 (and, with `h2`, HTTP/2 with prior knowledge) in plaintext; `path` answers.
    Http { path: &'static str, h2: bool },
    /// TLS 1.3 with ALPN h2, presenting this certificate (or none).
    TlsH2 { client: Option<IdentityFiles> },
    /// DNS over TCP.
    DnsTcp,
    /// Opaque TCP to an echo app: bytes move, so there is no head to trickle.
    Echo,
}

/// Where a refusal at the cap shows.
#[derive(Clone, Copy)]
enum Counted<'a> {
    /// `weft_proxy_rejections_total{listener, reason="max_connections"}`.
    Proxy(&'a ProxyProc, &'static str),
    /// `weft_control_proxy_api_connections_refused_total{reason="limit" or "per_client_limit"}`.
    ControlApi(&'a ControlProc),
    /// The control plane's log line for this listener's cap.
    ControlLog(&'a ControlProc, &'static str),
}

struct Case<'a> {
    name: &'static str,
    addr: SocketAddr,
    speaks: Speaks,
    refused: Counted<'a>,
}

// === the three checks ===

/// (1) A head sent one byte every [`DRIP`] is cut off within `LIMIT + SLACK`.
async fn trickle(c: &Case<'_>) {
    let bytes = match &c.speaks {
        Speaks::Http { .. } => {
            let mut head = b"GET / HTTP/1.1\r\nHost: weft.test\r\nX-Slow: ".to_vec();
            head.extend(std::iter::repeat_n(b'a', 100));
            head
        }
        Speaks::TlsH2 { client } => tls_probe::client_hello(client.as_ref()),
        Speaks::DnsTcp => dns_question_tcp(),
        Speaks::Echo => return,
    };
    assert!(DRIP * bytes.len() as u32 > (LIMIT + SLACK) * 2);
    let mut s = connect(c.addr).await;
    let started = Instant::now();
    let mut buf = [0u8; 512];
    for b in bytes {
        if s.write_all(&[b]).await.is_err() {
            break;
        }
        match tokio::time::timeout(DRIP, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            // An answer before the close (408, a TLS alert): read on until it closes.
            Ok(Ok(_)) | Err(_) => {}
        }
        assert!(
            started.elapsed() < LIMIT + SLACK,
            "{}: a head trickled for {:?} is still being read (limit {LIMIT:?})",
            c.name,
            started.elapsed()
        );
    }
    let took = started.elapsed();
    assert!(
        took < LIMIT + SLACK,
        "{}: trickled head cut after {took:?}",
        c.name
    );
}

/// (2) A connection that says nothing, and one whose exchange has finished, are closed after the
/// idle (or header-read, or handshake) timeout: not before half of it, and within `LIMIT + SLACK`.
async fn idle(c: &Case<'_>) {
    let mut silent = connect(c.addr).await;
    let started = Instant::now();
    let closed = closed_within(&mut silent, LIMIT + SLACK).await;
    assert!(
        closed,
        "{}: a silent connection is still open after {:?}",
        c.name,
        started.elapsed()
    );
    assert!(
        started.elapsed() >= LIMIT / 2,
        "{}: a silent connection was closed after only {:?}",
        c.name,
        started.elapsed()
    );
    let after_exchange = match &c.speaks {
        Speaks::Http { path, h2 } => {
            let h1 = idle_after_h1(c.addr, path).await;
            if *h2 {
                let h2 = idle_after_h2_plain(c.addr, path).await;
                assert_closed_in_time(c.name, "an HTTP/2 connection after its stream", h2);
            }
            h1
        }
        Speaks::TlsH2 { client } => idle_after_h2_tls(c.addr, client.as_ref()).await,
        Speaks::DnsTcp => idle_after_dns(c.addr).await,
        Speaks::Echo => idle_after_echo(c.addr).await,
    };
    assert_closed_in_time(c.name, "a connection after its exchange", after_exchange);
}

/// (3) `CAP` held connections are accepted, the next is closed at once and counted, and once they
/// close the listener serves again.
async fn cap(c: &Case<'_>) {
    let before = refusals(c.refused);
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(connect(c.addr).await);
        // Sequential accepts, so these are the ones holding the slots.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut extra = connect(c.addr).await;
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(LIMIT / 2, extra.read(&mut buf)).await;
    assert!(
        matches!(got, Ok(Ok(0)) | Ok(Err(_))),
        "{}: connection {} beyond the cap of {CAP} was not closed at accept: {got:?}",
        c.name,
        CAP + 1
    );
    for s in &mut held {
        let mut b = [0u8; 1];
        let open = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await;
        assert!(open.is_err(), "{}: a held connection was closed", c.name);
    }
    drop(held);
    assert!(
        eventually(Duration::from_secs(5), || refusals(c.refused) > before).await,
        "{}: the refusal at the cap is not counted ({before} before)",
        c.name
    );
    served(c).await;
}

// === per-protocol exchanges ===

fn assert_closed_in_time(name: &str, what: &str, took: Option<Duration>) {
    match took {
        Some(t) => assert!(t >= LIMIT / 2, "{name}: {what} was closed after only {t:?}"),
        None => panic!("{name}: {what} is still open {:?} later", LIMIT + SLACK),
    }
}

/// A keep-alive GET, answered; then how long until the server closes the connection.
async fn idle_after_h1(addr: SocketAddr, path: &str) -> Option<Duration> {
    let io = TokioIo::new(connect(addr).await);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("HTTP/1 handshake");
    let conn = tokio::spawn(conn);
    let resp = send.send_request(get(addr, path)).await.expect("an answer");
    resp.into_body().collect().await.expect("the body");
    closed_after(conn).await
}

/// One HTTP/2 stream (prior knowledge), finished; then how long until the server closes.
async fn idle_after_h2_plain(addr: SocketAddr, path: &str) -> Option<Duration> {
    let io = TokioIo::new(connect(addr).await);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let resp = send.send_request(get(addr, path)).await.expect("an answer");
    resp.into_body().collect().await.expect("the body");
    closed_after(conn).await
}

async fn idle_after_h2_tls(addr: SocketAddr, client: Option<&IdentityFiles>) -> Option<Duration> {
    let (mut send, conn) = tls_probe::h2_connect(addr, client).await.expect("TLS + h2");
    let req = http::Request::builder()
        .uri(format!("http://{addr}/nothing-here"))
        // On the tunnel: an app port nothing listens on (502); elsewhere ignored.
        .header("weft-target-port", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("an answer");
    resp.into_body().collect().await.expect("the body");
    closed_after(conn).await
}

async fn idle_after_dns(addr: SocketAddr) -> Option<Duration> {
    let mut s = connect(addr).await;
    s.write_all(&dns_question_tcp()).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.expect("an answer's length");
    let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).await.expect("an answer");
    let started = Instant::now();
    closed_within(&mut s, LIMIT + SLACK)
        .await
        .then(|| started.elapsed())
}

async fn idle_after_echo(addr: SocketAddr) -> Option<Duration> {
    let mut s = connect(addr).await;
    echo(&mut s).await;
    let started = Instant::now();
    closed_within(&mut s, LIMIT + SLACK)
        .await
        .then(|| started.elapsed())
}

/// A fresh connection is served, within a few seconds of the held ones closing (the proxy frees a
/// slot when it sees the close: at once for a head, after both halves for an opaque stream).
async fn served(c: &Case<'_>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout(Duration::from_secs(3), serve_once(c)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) if Instant::now() < deadline => {
                eprintln!("{}: not served yet: {e}", c.name);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(e)) => panic!("{}: not served after the cap check: {e}", c.name),
            Err(_) => panic!("{}: not served after the cap check: timed out", c.name),
        }
    }
}

async fn serve_once(c: &Case<'_>) -> Result<(), String> {
    match &c.speaks {
        Speaks::Http { path, .. } => {
            let (status, body) = http_get(c.addr, path).map_err(|e| e.to_string())?;
            if status >= 500 {
                return Err(format!("GET {path}: {status} {body}"));
            }
        }
        Speaks::TlsH2 { client } => {
            let (mut send, _conn) = tls_probe::h2_connect(c.addr, client.as_ref()).await?;
            let req = http::Request::builder()
                .uri(format!("http://{}/", c.addr))
                .header("weft-target-port", "1")
                .body(Empty::<Bytes>::new())
                .unwrap();
            send.send_request(req).await.map_err(|e| e.to_string())?;
        }
        Speaks::DnsTcp => {
            let mut s = connect(c.addr).await;
            s.write_all(&dns_question_tcp())
                .await
                .map_err(|e| e.to_string())?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        }
        Speaks::Echo => {
            let mut s = connect(c.addr).await;
            s.write_all(b"hi").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            if &buf != b"hi" {
                return Err(format!("echoed {buf:?}"));
            }
        }
    }
    Ok(())
}

async fn echo(s: &mut TcpStream) {
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&buf, b"hi");
}

fn get(addr: SocketAddr, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", "weft.test")
        .body(Empty::new())
        .unwrap()
}

/// A question for an A record, framed for TCP (two length bytes first).
fn dns_question_tcp() -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["reviews", "default", "svc", "cluster", "local"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(q);
    framed
}

// === plumbing ===

/// How long until a client connection's task ends (the server closed it), if within `LIMIT + SLACK`.
async fn closed_after<E>(conn: tokio::task::JoinHandle<Result<(), E>>) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(LIMIT + SLACK, conn)
        .await
        .ok()
        .map(|_| started.elapsed())
}

async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

fn refusals(c: Counted<'_>) -> f64 {
    match c {
        Counted::Proxy(p, listener) => p.metric(
            "weft_proxy_rejections_total",
            &[
                &format!("listener=\"{listener}\""),
                "reason=\"max_connections\"",
            ],
        ),
        Counted::ControlApi(cp) => control_metric(
            cp,
            "weft_control_proxy_api_connections_refused_total",
            // `limit` or `per_client_limit` (from one address, the smaller of the two caps).
            "limit\"}",
        ),
        Counted::ControlLog(cp, needle) => cp.log().matches(needle).count() as f64,
    }
}

fn control_metric(cp: &ControlProc, name: &str, label: &str) -> f64 {
    let Ok((200, text)) = http_get(cp.operator, "/metrics") else {
        return 0.0;
    };
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs every check of every case, then fails with the list of those that failed (so one run shows
/// every listener without a bound, not just the first).
async fn run_table(cases: &[Case<'_>]) {
    use futures_util::FutureExt;
    use std::panic::AssertUnwindSafe;
    let mut failed = Vec::new();
    for c in cases {
        for (check, fut) in [
            ("trickle", trickle(c).boxed()),
            ("idle", idle(c).boxed()),
            ("cap", cap(c).boxed()),
        ] {
            eprintln!("{}: {check}", c.name);
            if let Err(panic) = AssertUnwindSafe(fut).catch_unwind().await {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failed.push(format!("{} / {check}: {why}", c.name));
                // Let the listener's held connections time out before the next check.
                tokio::time::sleep(LIMIT + SLACK).await;
            }
        }
    }
    assert!(failed.is_empty(), "failed checks:\n{}", failed.join("\n"));
}

// === the tables ===

fn limits_yaml() -> String {
    let l = format!("{}ms", LIMIT.as_millis());
    format!(
        "limits:\n  max_connections: {CAP}\n  max_admin_connections: {CAP}\n  header_read_timeout: {l}\n  \
         idle_timeout: {l}\n  h2_idle_timeout: {l}\n  tunnel_idle_timeout: {l}\n  tls_handshake_timeout: {l}\n"
    )
}

/// The proxy's listeners: outbound (an HTTP one and a TCP one), the tunnel, admin, health and DNS over
/// TCP, each with every limit at [`LIMIT`] and every cap at [`CAP`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_listener_cuts_trickles_closes_idle_connections_and_caps() {
    let dns = free_addr();
    let l = format!("{}ms", LIMIT.as_millis());
    let p = Pair::start_with(PairOptions {
        client_yaml: limits_yaml(),
        server_yaml: format!(
            "{}dns:\n  listen: {dns}\n  tcp_idle_timeout: {l}\n  max_tcp_connections: {CAP}\n",
            limits_yaml()
        ),
        http_protocol: "http",
        ..Default::default()
    })
    .await;
    let mesh_client = p.client_id.clone();
    let (client, server) = (&p.client, &p.server);
    let http = |path| Speaks::Http { path, h2: false };
    let cases = [
        Case {
            name: "outbound HTTP listener",
            addr: p.http(),
            speaks: Speaks::Http {
                path: "/info",
                h2: true,
            },
            refused: Counted::Proxy(client, "outbound"),
        },
        Case {
            name: "outbound TCP listener",
            addr: p.tcp(),
            speaks: Speaks::Echo,
            refused: Counted::Proxy(client, "outbound"),
        },
        Case {
            name: "tunnel",
            addr: server.tunnel,
            speaks: Speaks::TlsH2 {
                client: Some(mesh_client),
            },
            refused: Counted::Proxy(server, "tunnel"),
        },
        Case {
            name: "admin",
            addr: server.admin,
            speaks: http("/config"),
            refused: Counted::Proxy(server, "admin"),
        },
        Case {
            name: "health",
            addr: server.health,
            speaks: http("/ready"),
            refused: Counted::Proxy(server, "health"),
        },
        Case {
            name: "DNS over TCP",
            addr: dns,
            speaks: Speaks::DnsTcp,
            refused: Counted::Proxy(server, "dns"),
        },
    ];
    run_table(&cases).await;
}

/// The control plane's listeners: the proxy API (TLS, HTTP/2), the operator API and the metrics
/// listener, with every limit at [`LIMIT`] and every cap at [`CAP`] through `weft-control`'s flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_plane_listener_cuts_trickles_closes_idle_connections_and_caps() {
    let metrics = free_addr();
    let (l, cap) = (format!("{}ms", LIMIT.as_millis()), CAP.to_string());
    let args: Vec<String> = [
        "--api-max-connections",
        &cap,
        "--api-handshake-timeout",
        &l,
        "--api-idle-timeout",
        &l,
        "--operator-max-connections",
        &cap,
        "--operator-header-timeout",
        &l,
        "--metrics-listen",
        &metrics.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cp = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ControlProc::start_with("timeouts", None, &args)
    })
    .await
    .unwrap();
    let http = |path| Speaks::Http { path, h2: false };
    let cases = [
        Case {
            name: "proxy API",
            addr: cp.api,
            speaks: Speaks::TlsH2 { client: None },
            refused: Counted::ControlApi(&cp),
        },
        Case {
            name: "operator API",
            addr: cp.operator,
            speaks: http("/live"),
            refused: Counted::ControlLog(&cp, "operator API connection refused"),
        },
        Case {
            name: "metrics listener",
            addr: metrics,
            speaks: http("/live"),
            refused: Counted::ControlLog(&cp, "metrics connection refused"),
        },
    ];
    run_table(&cases).await;
}

// === clients of the proxy react to a GOAWAY ===

/// A peer proxy closes idle pooled connections (`tunnel_idle_timeout`, here 300 ms) with GOAWAY; the
/// calling proxy's pool opens a new one, and a request sent as the old one goes away is never failed.
/// The gaps between requests straddle the timeout so some race the GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_closing_idle_pooled_connections_fails_no_request() {
    let p = Pair::start_with(PairOptions {
        server_yaml: "limits:\n  tunnel_idle_timeout: 300ms\n".into(),
        http_protocol: "http",
        ..Default::default()
    })
    .await;
    let gaps = [
        250u64, 290, 310, 330, 350, 370, 390, 420, 300, 340, 380, 500, 700,
    ];
    for (i, gap) in gaps.iter().enumerate() {
        let r = weft::apps::client::http1(p.http(), http::Method::GET, "/info", &[], Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", p.client.log()));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        tokio::time::sleep(Duration::from_millis(*gap)).await;
    }
    let opened = p
        .client
        .metric("weft_proxy_peer_connections_opened_total", &[]);
    assert!(opened >= 3.0, "pooled connections opened: {opened}");
    let closed = p.server.metric(
        "weft_proxy_rejections_total",
        &["listener=\"tunnel\"", "reason=\"idle_timeout\""],
    );
    assert!(closed >= 2.0, "idle tunnel connections closed: {closed}");
}

/// An app that sends GOAWAY after every response (as an app with a short idle timeout would): the
/// proxy's HTTP/2 connection to it is replaced, and no request of a steady stream fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_sending_goaway_fails_no_request() {
    let pki = weft::pki::Pki::new("weft.test");
    let (client_id, server_id) = (
        pki.workload("default", "frontend"),
        pki.workload("default", "backend"),
    );
    let app = goaway_after_each_response(weft::pair::bind().await);
    let server_b = weft::proxy::ProxyBuilder::new("server", &server_id);
    let server = weft::pair::spawn_blocking(move || server_b.start()).await;
    let client_b = weft::proxy::ProxyBuilder::new("client", &client_id).outbound(
        server.tunnel,
        &server_id.id,
        app.port(),
        "http",
    );
    let client = weft::pair::spawn_blocking(move || client_b.start()).await;
    let io = TokioIo::new(connect(client.outbound[0]).await);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    for i in 0..200 {
        let resp = send
            .send_request(get(client.outbound[0], "/"))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(status, 200, "request {i}: {body:?}\n{}", server.log());
    }
}

/// An HTTP/2 (prior knowledge) app that answers `ok` and then closes the connection gracefully.
fn goaway_after_each_response(listener: tokio::net::TcpListener) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let answered = std::sync::Arc::new(tokio::sync::Notify::new());
                let a = answered.clone();
                let svc = hyper::service::service_fn(move |_req| {
                    a.notify_one();
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = answered.notified() => {}
                }
                // A moment later, so the GOAWAY sometimes crosses the next request.
                let lag = Duration::from_micros(rand_lag());
                let _ = tokio::time::timeout(lag, conn.as_mut()).await;
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            });
        }
    });
    addr
}

/// 0 to 1.5 ms, different each call (no RNG crate needed for this).
fn rand_lag() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) % 1500
}

/// A TCP stream through the tunnel (a CONNECT stream) is an open stream for as long as it lasts, even
/// silent: its connection is not counted idle, and the stream still carries bytes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tcp_stream_keeps_its_tunnel_connection_from_idling() {
    let p = Pair::start_with(PairOptions {
        server_yaml: "limits:\n  tunnel_idle_timeout: 300ms\n".into(),
        ..Default::default()
    })
    .await;
    let mut s = connect(p.tcp()).await;
    echo(&mut s).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    echo(&mut s).await;
    let closed = p.server.metric(
        "weft_proxy_rejections_total",
        &["listener=\"tunnel\"", "reason=\"idle_timeout\""],
    );
    assert_eq!(
        closed, 0.0,
        "the stream's tunnel connection was taken for idle"
    );
    drop(s);
    assert!(
        eventually(Duration::from_secs(3), || p.server.metric(
            "weft_proxy_rejections_total",
            &["listener=\"tunnel\"", "reason=\"idle_timeout\""],
        ) >= 1.0)
        .await,
        "once the stream ends its connection goes idle and is closed"
    );
}

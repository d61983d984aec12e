//! A backend that misbehaves on command, and a load client that counts what came back: the parts the
//! traffic-management tests and experiments are made of. Plain HTTP/1.1, no knowledge of the mesh.
//!
//! ```text
//! chaos serve --listen 0.0.0.0:9080 --version v2 [--fail-percent 100 --status 503] [--delay-ms 500]
//! curl -X POST localhost:9080/_chaos/mode -d '{"fail_percent": 50, "status": 500}'   # change faults
//! curl localhost:9080/_chaos/stats            # requests seen (retries show up as extra arrivals)
//! chaos load --url http://reviews:9080/ --requests 1000 --concurrency 8   # one JSON summary line
//! ```
//!
//! Faults: `fail_percent` of requests answered with `status` (or, with `grpc_status`, a trailers-only
//! gRPC error); `delay_ms` before answering; `stall` never answers; `stall_body` answers 200 with the
//! first bytes of a body it never finishes; `reset` closes the connection without an answer. Request headers named `x-test-*` are answered as `x-echoed-*`.

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "A backend that fails on command, and a load client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer every request with its version, unless a fault applies.
    Serve {
        #[arg(long, default_value = "0.0.0.0:9080")]
        listen: SocketAddr,
        #[arg(long)]
        version: String,
        #[arg(long, default_value_t = 0)]
        fail_percent: u8,
        #[arg(long, default_value_t = 503)]
        status: u16,
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Also a TCP server that writes `<version>\n` on connect, then echoes.
        #[arg(long)]
        tcp_listen: Option<SocketAddr>,
    },
    /// Send requests and print one JSON line: counts by status, version and proxy error, latency.
    Load {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        requests: u64,
        #[arg(long, default_value_t = 1)]
        concurrency: u64,
        /// Stop after this many seconds even if not all requests were sent.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// NAME:VALUE, repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Give each request its own value of this header (`user-<n>`), as if from many users.
        #[arg(long)]
        vary_header: Option<String>,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Pause between requests of one worker.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Open a TCP connection: print the server's first line, check one echo, exit 0.
    Tcp {
        #[arg(long)]
        addr: String,
    },
    /// A stand-in trace collector: appends the body of every POST to a file, one line each.
    Collect {
        #[arg(long, default_value = "0.0.0.0:9411")]
        listen: SocketAddr,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Mode {
    fail_percent: u8,
    status: u16,
    delay_ms: u64,
    stall: bool,
    stall_body: bool,
    reset: bool,
    grpc_status: Option<u8>,
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    by_method: Mutex<BTreeMap<String, u64>>,
}

struct Server {
    version: String,
    mode: Mutex<Mode>,
    stats: Stats,
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve {
            listen,
            version,
            fail_percent,
            status,
            delay_ms,
            tcp_listen,
        } => {
            let mode = Mode {
                fail_percent,
                status,
                delay_ms,
                ..Mode::default()
            };
            serve(listen, version, mode, tcp_listen).await
        }
        Command::Tcp { addr } => tcp_check(&addr).await,
        Command::Collect { listen, out } => collect(listen, out).await,
        Command::Load {
            url,
            requests,
            concurrency,
            duration,
            headers,
            vary_header,
            method,
            pause_ms,
        } => {
            let plan = LoadPlan {
                url,
                requests,
                concurrency: concurrency.max(1),
                limit: Duration::from_secs_f64(duration),
                headers: parse_headers(&headers),
                vary_header,
                method,
                pause: Duration::from_millis(pause_ms),
            };
            load(plan).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    listen: SocketAddr,
    version: String,
    mode: Mode,
    tcp: Option<SocketAddr>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    if let Some(addr) = tcp {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tokio::spawn(tcp_banner_echo(l, version.clone()));
    }
    println!("chaos {version} listening on {}", listener.local_addr()?);
    let server = Arc::new(Server {
        version,
        mode: Mutex::new(mode),
        stats: Stats::default(),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let server = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { server.handle(req).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// What the backend answers with: whole bodies, or (`stall_body`) one that never ends.
type ChaosBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A fault that ends the connection without an answer (`reset`) comes back as an error, which makes
/// hyper close the connection.
#[derive(Debug)]
struct Reset;
impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset on command")
    }
}
impl std::error::Error for Reset {}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<ChaosBody>, Reset> {
        if req.uri().path().starts_with("/_chaos/") {
            return Ok(self.control(req).await.map(BodyExt::boxed));
        }
        let s = &self.stats;
        s.requests.fetch_add(1, Ordering::Relaxed);
        *s.by_method
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(req.method().to_string())
            .or_default() += 1;
        let now = s.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        s.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let answer = self.answer(req).await;
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        answer
    }

    async fn answer(&self, req: Request<Incoming>) -> Result<Response<ChaosBody>, Reset> {
        let mode = self.mode.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Request headers `x-test-*` come back as `x-echoed-*`, to show what reached the app.
        let echoed: Vec<(http::HeaderName, http::HeaderValue)> = req
            .headers()
            .iter()
            .filter_map(|(n, v)| {
                let rest = n.as_str().strip_prefix("x-test-")?;
                let name =
                    http::HeaderName::from_bytes(format!("x-echoed-{rest}").as_bytes()).ok()?;
                Some((name, v.clone()))
            })
            .collect();
        // Read the body, so a retried request is seen whole.
        let _ = req.into_body().collect().await;
        if mode.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(mode.delay_ms)).await;
        }
        let fails = mode.fail_percent > 0 && rand_percent() < mode.fail_percent;
        if fails && mode.stall {
            std::future::pending::<()>().await;
        }
        if fails && mode.reset {
            return Err(Reset);
        }
        if fails && mode.stall_body {
            use futures_util::StreamExt as _;
            let first = futures_util::stream::once(async {
                Ok(hyper::body::Frame::data(Bytes::from_static(
                    b"{\"partial\":",
                )))
            });
            let body =
                http_body_util::StreamBody::new(first.chain(futures_util::stream::pending()));
            return Ok(Response::new(BodyExt::boxed(body)));
        }
        let mut resp = Response::new(Full::new(Bytes::from(format!(
            "{{\"version\":\"{}\"}}",
            self.version
        ))));
        if fails {
            match mode.grpc_status {
                Some(code) => {
                    resp.headers_mut()
                        .insert("grpc-status", http::HeaderValue::from(u16::from(code)));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                }
                None => {
                    *resp.status_mut() =
                        StatusCode::from_u16(mode.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
                }
            }
        }
        for (n, v) in echoed {
            resp.headers_mut().append(n, v);
        }
        resp.headers_mut().insert(
            "x-version",
            http::HeaderValue::from_str(&self.version)
                .unwrap_or(http::HeaderValue::from_static("?")),
        );
        Ok(resp.map(BodyExt::boxed))
    }

    async fn control(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json_resp = |v: serde_json::Value| Response::new(Full::new(Bytes::from(v.to_string())));
        match (method.as_str(), path.as_str()) {
            ("POST", "/_chaos/mode") => match serde_json::from_slice::<Mode>(&body) {
                Ok(m) => {
                    *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = m.clone();
                    json_resp(json!(m))
                }
                Err(e) => {
                    let mut r = json_resp(json!({ "error": e.to_string() }));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r
                }
            },
            ("GET", "/_chaos/mode") => {
                json_resp(json!(*self.mode.lock().unwrap_or_else(|e| e.into_inner())))
            }
            ("GET", "/_chaos/stats") => {
                let s = &self.stats;
                json_resp(json!({
                    "version": self.version,
                    "requests": s.requests.load(Ordering::Relaxed),
                    "in_flight": s.in_flight.load(Ordering::Relaxed),
                    "max_in_flight": s.max_in_flight.load(Ordering::Relaxed),
                    "by_method": *s.by_method.lock().unwrap_or_else(|e| e.into_inner()),
                }))
            }
            ("POST", "/_chaos/reset-stats") => {
                let s = &self.stats;
                s.requests.store(0, Ordering::Relaxed);
                s.max_in_flight.store(0, Ordering::Relaxed);
                s.by_method
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                json_resp(json!({ "ok": true }))
            }
            _ => {
                let mut r = json_resp(json!({ "error": "unknown control path" }));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        }
    }
}

fn rand_percent() -> u8 {
    rand::random::<u8>() % 100
}

async fn tcp_banner_echo(l: tokio::net::TcpListener, version: String) {
    use tokio::io::AsyncWriteExt;
    while let Ok((mut s, _)) = l.accept().await {
        let v = version.clone();
        tokio::spawn(async move {
            if s.write_all(format!("{v}\n").as_bytes()).await.is_ok() {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
    }
}

struct LoadPlan {
    url: String,
    requests: u64,
    concurrency: u64,
    limit: Duration,
    headers: Vec<(String, String)>,
    vary_header: Option<String>,
    method: String,
    pause: Duration,
}

#[derive(Default, Serialize)]
struct Summary {
    sent: u64,
    by_status: BTreeMap<u16, u64>,
    by_version: BTreeMap<String, u64>,
    /// `weft-proxy-error` values seen.
    proxy_errors: BTreeMap<String, u64>,
    transport_errors: u64,
    retry_after_seen: u64,
    /// Sum of the `weft-proxy-retries` values seen.
    retries: u64,
    /// With `--vary-header`: the version each user got last.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    by_user: BTreeMap<String, String>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    #[serde(skip)]
    latencies: Vec<f64>,
    #[serde(skip)]
    first_error: Option<String>,
}

async fn load(plan: LoadPlan) -> Result<()> {
    let plan = Arc::new(plan);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicU64::new(0));
    let summary = Arc::new(Mutex::new(Summary::default()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..plan.concurrency {
        let (plan, client, next, summary) =
            (plan.clone(), client.clone(), next.clone(), summary.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= plan.requests || started.elapsed() >= plan.limit {
                    return;
                }
                one(&plan, &client, n, &summary).await;
                if !plan.pause.is_zero() {
                    tokio::time::sleep(plan.pause).await;
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let mut s = std::mem::take(&mut *summary.lock().unwrap_or_else(|e| e.into_inner()));
    s.latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if s.latencies.is_empty() {
            return 0.0;
        }
        let i = ((s.latencies.len() as f64 * p).ceil() as usize).clamp(1, s.latencies.len()) - 1;
        (s.latencies[i] * 100.0).round() / 100.0
    };
    s.p50_ms = pct(0.5);
    s.p99_ms = pct(0.99);
    s.max_ms = pct(1.0);
    if let Some(e) = &s.first_error {
        eprintln!("chaos: first transport error: {e}");
    }
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

async fn one(
    plan: &LoadPlan,
    client: &Client<HttpConnector, Full<Bytes>>,
    n: u64,
    summary: &Mutex<Summary>,
) {
    let mut req = Request::builder()
        .method(plan.method.as_str())
        .uri(&plan.url);
    for (k, v) in &plan.headers {
        req = req.header(k, v);
    }
    let user = plan.vary_header.as_ref().map(|h| (h, format!("user-{n}")));
    if let Some((h, u)) = &user {
        req = req.header(h.as_str(), u.as_str());
    }
    let body = if plan.method == "GET" {
        Bytes::new()
    } else {
        Bytes::from_static(b"payload")
    };
    let Ok(req) = req.body(Full::new(body)) else {
        return;
    };
    let t = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        let resp = client.request(req).await?;
        let (parts, body) = resp.into_parts();
        let _ = body.collect().await;
        Ok::<_, hyper_util::client::legacy::Error>(parts)
    })
    .await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut s = summary.lock().unwrap_or_else(|e| e.into_inner());
    s.sent += 1;
    match result {
        Ok(Ok(parts)) => {
            s.latencies.push(ms);
            *s.by_status.entry(parts.status.as_u16()).or_default() += 1;
            let h = &parts.headers;
            let text = |name: &str| {
                h.get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            if let Some(v) = text("x-version") {
                *s.by_version.entry(v.clone()).or_default() += 1;
                if let Some((_, u)) = user {
                    s.by_user.insert(u, v);
                }
            }
            if let Some(e) = text("weft-proxy-error") {
                *s.proxy_errors.entry(e).or_default() += 1;
            }
            if h.contains_key(http::header::RETRY_AFTER) {
                s.retry_after_seen += 1;
            }
            s.retries += text("weft-proxy-retries")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        Ok(Err(e)) => {
            s.transport_errors += 1;
            s.first_error.get_or_insert_with(|| format!("{e:?}"));
        }
        Err(_) => {
            s.transport_errors += 1;
            s.first_error
                .get_or_insert_with(|| "no answer within 30s".into());
        }
    }
}

async fn collect(listen: SocketAddr, out: std::path::PathBuf) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("collector listening on {}", listener.local_addr()?);
    let out = Arc::new(Mutex::new(out));
    loop {
        let (tcp, _) = listener.accept().await?;
        let out = out.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let out = out.clone();
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut line = String::from_utf8_lossy(&body).replace('\n', " ");
                    line.push('\n');
                    // Held while writing: batches from several proxies arrive at once, and their lines
                    // must not interleave.
                    let path = out.lock().unwrap_or_else(|e| e.into_inner());
                    use std::io::Write as _;
                    if let Ok(mut f) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&*path)
                    {
                        let _ = f.write_all(line.as_bytes());
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"{}",
                    ))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn tcp_check(addr: &str) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .context("connect timed out")?
    .with_context(|| format!("connect {addr}"))?;
    let mut r = tokio::io::BufReader::new(stream);
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut banner))
        .await
        .context("no banner within 10s")??;
    anyhow::ensure!(!banner.is_empty(), "closed before the banner");
    r.get_mut().write_all(b"ping\n").await?;
    let mut echo = String::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut echo))
        .await
        .context("no echo within 10s")??;
    anyhow::ensure!(echo == "ping\n", "echo was {echo:?}");
    println!("{}", banner.trim());
    Ok(())
}

fn parse_headers(headers: &[String]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|h| h.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect()
}

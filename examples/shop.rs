//! A small three-service shop for the demo: `frontend` calls `reviews`, and reviews v2 calls `ratings`.
//! Plain HTTP/1.1 programs that know nothing of the mesh: they call each other by service name
//! (`http://reviews:9080`) and report, in their JSON answer, who called them as the standard
//! `x-forwarded-client-cert` header says (absent outside a mesh).
//!
//! ```text
//! shop ratings  --listen 0.0.0.0:9080
//! shop reviews  --listen 0.0.0.0:9080 --version v2 --ratings http://ratings:9080
//! shop frontend --listen 0.0.0.0:8080 --reviews http://reviews:9080
//! shop load     --url http://frontend:8080/ --count 200      # prints the split of reviews versions
//! shop call     --url http://frontend:8080/                  # prints every hop of one request
//! ```

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "shop",
    about = "Mesh-unaware demo services: frontend -> reviews (-> ratings)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve GET / by calling the reviews service.
    Frontend {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "http://reviews:9080")]
        reviews: String,
    },
    /// Serve GET /reviews; with --ratings, also calls the ratings service.
    Reviews {
        #[arg(long, default_value = "0.0.0.0:9080")]
        listen: SocketAddr,
        #[arg(long)]
        version: String,
        #[arg(long)]
        ratings: Option<String>,
    },
    /// Serve GET /ratings.
    Ratings {
        #[arg(long, default_value = "0.0.0.0:9080")]
        listen: SocketAddr,
    },
    /// Send COUNT requests to URL (at most --seconds), print how many each reviews version answered.
    Load {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 200)]
        count: u32,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Extra request header NAME:VALUE.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// One request to URL; prints each hop's service, version and caller.
    Call {
        #[arg(long)]
        url: String,
    },
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(Duration::from_secs(3)));
    Client::builder(TokioExecutor::new()).build(c)
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Frontend { listen, reviews } => {
            let upstream = format!("{}/reviews", reviews.trim_end_matches('/'));
            serve(listen, "frontend", None, Some(upstream)).await
        }
        Command::Reviews {
            listen,
            version,
            ratings,
        } => {
            let upstream = ratings.map(|r| format!("{}/ratings", r.trim_end_matches('/')));
            serve(listen, "reviews", Some(version), upstream).await
        }
        Command::Ratings { listen } => serve(listen, "ratings", None, None).await,
        Command::Load {
            url,
            count,
            seconds,
            headers,
        } => load(&url, count, Duration::from_secs(seconds), &headers).await,
        Command::Call { url } => call(&url).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Service {
    name: &'static str,
    version: Option<String>,
    upstream: Option<String>,
    client: HttpClient,
}

async fn serve(
    listen: SocketAddr,
    name: &'static str,
    version: Option<String>,
    upstream: Option<String>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("{name} listening on {}", listener.local_addr()?);
    let svc = Arc::new(Service {
        name,
        version,
        upstream,
        client: client(),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |req| {
                let svc = svc.clone();
                async move { Ok::<_, std::convert::Infallible>(svc.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), handler)
                .await;
        });
    }
}

impl Service {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let caller = caller(req.headers());
        let mut answer = json!({ "service": self.name, "caller": caller });
        if let Some(v) = &self.version {
            answer["version"] = json!(v);
        }
        if self.name == "ratings" {
            answer["stars"] = json!(4);
        }
        let mut status = StatusCode::OK;
        if let Some(url) = &self.upstream {
            match get_json(&self.client, url, &forwarded(req.headers())).await {
                Ok(v) => answer["upstream"] = v,
                Err(e) => {
                    status = StatusCode::BAD_GATEWAY;
                    answer["error"] = json!(format!("{url}: {e:#}"));
                }
            }
        }
        let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// The calling workload's identity, from the `x-forwarded-client-cert` header's `URI=` element.
fn caller(headers: &http::HeaderMap) -> String {
    headers
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').find_map(|kv| kv.strip_prefix("URI=")))
        .unwrap_or("(no client certificate: plaintext)")
        .to_string()
}

/// Headers an app passes on to the services it calls: `x-user-*` (so routing by header works end to
/// end) and the trace context (so one trace spans every hop), as any traced app does.
fn forwarded(headers: &http::HeaderMap) -> Vec<(String, String)> {
    const TRACE: [&str; 7] = [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
    ];
    headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-user-") || TRACE.contains(&n.as_str()))
        .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

async fn get_json(client: &HttpClient, url: &str, headers: &[(String, String)]) -> Result<Value> {
    let mut req = Request::get(url);
    for (n, v) in headers {
        req = req.header(n, v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .with_context(|| format!("bad URL {url}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .context("timed out")??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).context("answer is not JSON")
}

fn parse_headers(headers: &[String]) -> Result<Vec<(String, String)>> {
    headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("header {h:?}: expected NAME:VALUE"))
        })
        .collect()
}

/// The reviews version in a frontend answer.
fn reviews_version(v: &Value) -> Option<&str> {
    let mut hop = v;
    loop {
        if hop["service"] == "reviews" {
            return hop["version"].as_str();
        }
        hop = hop.get("upstream")?;
    }
}

async fn load(url: &str, count: u32, limit: Duration, headers: &[String]) -> Result<()> {
    let headers = parse_headers(headers)?;
    let client = client();
    let started = Instant::now();
    let mut versions: BTreeMap<String, u32> = BTreeMap::new();
    let mut failed = 0u32;
    let mut sent = 0u32;
    while sent < count && started.elapsed() < limit {
        sent += 1;
        match get_json(&client, url, &headers).await {
            Ok(v) => {
                let version = reviews_version(&v).unwrap_or("none").to_string();
                *versions.entry(version).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("shop: request failed: {e:#}");
                }
            }
        }
    }
    let split: Vec<String> = versions
        .iter()
        .map(|(v, n)| format!("{v}={n} ({:.0}%)", 100.0 * f64::from(*n) / f64::from(sent)))
        .collect();
    println!(
        "{sent} requests in {:.1}s: {} failed; reviews {}",
        started.elapsed().as_secs_f64(),
        failed,
        split.join(" ")
    );
    println!(
        "{}",
        json!({ "sent": sent, "failed": failed, "versions": versions })
    );
    Ok(())
}

async fn call(url: &str) -> Result<()> {
    let v = get_json(&client(), url, &[]).await?;
    let mut hop = Some(&v);
    while let Some(h) = hop {
        let name = h["service"].as_str().unwrap_or("?");
        let version = h["version"]
            .as_str()
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        println!(
            "  {name}{version} was called by {}",
            h["caller"].as_str().unwrap_or("?")
        );
        hop = h.get("upstream");
    }
    Ok(())
}

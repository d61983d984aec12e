//! The demo apps as a standalone binary, plus one-line clients for a demo narration.
//!
//! ```text
//! demo-app http --listen 127.0.0.1:8080 --name backend-a
//! demo-app get 127.0.0.1:15001 /info --h2
//! ```
//!
//! Servers run until SIGTERM or Ctrl-C and then exit 0. Logs go to stderr (`RUST_LOG` filters them);
//! servers print `listening on ADDR` on stdout once bound, so a script can pass port 0 and read the
//! port back.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{HeaderValue, Method};
use tokio::net::TcpListener;
use weft::apps::{self, client, AppHandle};

#[derive(Parser, Debug)]
#[command(
    name = "demo-app",
    about = "Mesh-unaware demo applications for Weft, and clients that print one line per result"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve HTTP/1.1 and HTTP/2 (h2c) on one port: /info (JSON), /echo, /count, /chunked, /slow,
    /// /ws (WebSocket echo) and gRPC-style /weft.demo.Echo/{Unary,Chat}.
    Http {
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
        #[arg(long)]
        listen: SocketAddr,
        /// Name sent back in every `x-app-name` header and in /info.
        #[arg(long, value_parser = parse_app_name)]
        name: String,
    },
    /// Serve a TCP echo; on client half-close it writes "[eof after N bytes]" and closes its side.
    TcpEcho {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Serve a server-speaks-first TCP app: sends a banner line on connect, then echoes.
    Banner {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Banner line to send; "\r\n" is appended.
        #[arg(long, default_value = "220 weft-demo ESMTP ready")]
        text: String,
    },
    /// HTTP request to ADDR PATH; prints status, answering app and, for /info, the mesh headers
    /// the app saw (x-forwarded-client-cert, x-forwarded-for).
    Get {
        /// Address to connect to (host:port).
        addr: String,
        /// Request path, e.g. /info.
        #[arg(default_value = "/info")]
        path: String,
        /// Use HTTP/2 prior knowledge instead of HTTP/1.1.
        #[arg(long)]
        h2: bool,
        /// Extra request header as NAME:VALUE, repeatable (e.g. `-H host:backend.demo` to pick
        /// the destination an outbound proxy routes to).
        #[arg(short = 'H', long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// gRPC-style calls over HTTP/2: a unary echo, a unary call that fails on purpose, and a
    /// bidirectional chat of three messages.
    Grpc {
        /// Address to connect to (host:port).
        addr: String,
    },
    /// WebSocket echo of three messages over an HTTP/1.1 upgrade of GET /ws.
    Ws {
        /// Address to connect to (host:port).
        addr: String,
    },
    /// Raw TCP: sends a payload, half-closes and prints what came back (expects `tcp-echo`).
    Tcp {
        /// Address to connect to (host:port).
        addr: String,
    },
    /// Connects without sending anything and prints the first line the server sends, with the time
    /// from the start of the connect to that line.
    BannerRead {
        /// Address to connect to (host:port).
        addr: String,
    },
}

fn parse_header(header: &str) -> Result<(String, String), String> {
    let (name, value) = header
        .split_once(':')
        .ok_or_else(|| format!("expected NAME:VALUE, got {header:?}"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

fn parse_app_name(name: &str) -> Result<String, String> {
    match HeaderValue::from_str(name) {
        Ok(_) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err("must be non-empty printable ASCII (it is sent as a header value)".to_owned()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo-app: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Http { listen, name } => {
            let listener = bind(listen).await?;
            serve_until_signal(apps::http::serve(listener, &name), "http").await
        }
        Command::TcpEcho { listen } => {
            let listener = bind(listen).await?;
            serve_until_signal(apps::tcp::echo(listener), "tcp-echo").await
        }
        Command::Banner { listen, text } => {
            let listener = bind(listen).await?;
            let banner = format!("{text}\r\n");
            serve_until_signal(apps::tcp::banner(listener, &banner), "banner").await
        }
        Command::Get {
            addr,
            path,
            h2,
            headers,
        } => get(resolve(&addr).await?, &path, h2, &headers).await,
        Command::Grpc { addr } => grpc(resolve(&addr).await?).await,
        Command::Ws { addr } => ws(resolve(&addr).await?).await,
        Command::Tcp { addr } => tcp(resolve(&addr).await?).await,
        Command::BannerRead { addr } => {
            let addr = resolve(&addr).await?;
            let started = std::time::Instant::now();
            let line = client::read_banner(addr, Duration::from_secs(5)).await?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            println!("banner: {line:?} after {ms:.1} ms");
            Ok(())
        }
    }
}

// === Servers ===

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

async fn serve_until_signal(app: AppHandle, kind: &str) -> Result<()> {
    println!("listening on {}", app.addr());
    tracing::info!(app = kind, addr = %app.addr(), "serving");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        res = tokio::signal::ctrl_c() => {
            res.context("waiting for Ctrl-C")?;
            "SIGINT"
        }
    };
    tracing::info!(app = kind, signal, accepted = app.accepted(), "stopping");
    Ok(())
}

// === Clients ===

async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr:?} (expected host:port)"))?
        .next()
        .with_context(|| format!("{addr:?} resolved to no address"))
}

async fn get(addr: SocketAddr, path: &str, h2: bool, headers: &[(String, String)]) -> Result<()> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let resp = if h2 {
        client::h2(addr, Method::GET, path, &headers, Bytes::new()).await?
    } else {
        client::http1(addr, Method::GET, path, &headers, Bytes::new()).await?
    };
    let mut line = format!(
        "GET {path} -> {} ({:?}) app={}",
        resp.status,
        resp.version,
        resp.app_name().unwrap_or("-")
    );
    match resp.json() {
        Ok(info) if info.get("headers").is_some() => {
            let seen = |name: &str| match &info["headers"][name] {
                serde_json::Value::Null => "-".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            line += &format!(
                " peer={} x-forwarded-client-cert={} x-forwarded-for={}",
                info["peer"].as_str().unwrap_or("-"),
                seen("x-forwarded-client-cert"),
                seen("x-forwarded-for"),
            );
        }
        // Short text bodies (`slept 200 ms`, errors) are the point of the call, so show them.
        _ => match std::str::from_utf8(&resp.body) {
            Ok(text) if text.len() <= 100 => line += &format!(" body={:?}", text.trim_end()),
            _ => line += &format!(" body={} bytes", resp.body.len()),
        },
    }
    println!("{line}");
    Ok(())
}

async fn grpc(addr: SocketAddr) -> Result<()> {
    let unary = client::grpc_unary(addr, b"hello").await?;
    let failed = client::grpc_unary(addr, apps::grpc::FAIL_PAYLOAD).await?;
    let chat = client::grpc_chat(addr, &["one", "two", "three"]).await?;
    let message = unary
        .message
        .map(|m| String::from_utf8_lossy(&m).into_owned());
    println!(
        "grpc: unary {message:?} status={} | fail status={} ({}) | chat {:?} status={}",
        unary.grpc_status,
        failed.grpc_status,
        failed.grpc_message.as_deref().unwrap_or("-"),
        chat.replies,
        chat.grpc_status,
    );
    Ok(())
}

async fn ws(addr: SocketAddr) -> Result<()> {
    let sent = ["hello", "from", "weft"];
    let echoes = client::websocket_echo(addr, &sent).await?;
    println!(
        "websocket: sent {} messages, echoed {:?}",
        sent.len(),
        echoes
    );
    Ok(())
}

async fn tcp(addr: SocketAddr) -> Result<()> {
    let payload = b"hello over tcp";
    let got = client::tcp_half_close(addr, payload).await?;
    let trailer = got.strip_prefix(&payload[..]).map(String::from_utf8_lossy);
    match trailer {
        Some(trailer) => println!(
            "tcp: sent {} bytes and half-closed; got them back, then {:?} and EOF",
            payload.len(),
            trailer.trim()
        ),
        None => println!(
            "tcp: sent {} bytes and half-closed; got {} bytes: {:?}",
            payload.len(),
            got.len(),
            String::from_utf8_lossy(&got)
        ),
    }
    Ok(())
}

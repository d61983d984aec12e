//! The app's readiness probe: an HTTP GET (2xx or 3xx is ready) or a TCP connect, every `period`.

use crate::config::ReadinessProbe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub async fn run(probe: ReadinessProbe, ready: watch::Sender<bool>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(probe.period.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = check(&probe).await;
        if *ready.borrow() != ok {
            tracing::info!(ready = ok, "app readiness changed");
            let _ = ready.send(ok);
        }
    }
}

async fn check(probe: &ReadinessProbe) -> bool {
    let timeout = probe.timeout.get();
    let attempt = async {
        if let Some(tcp) = &probe.tcp {
            return TcpStream::connect(("127.0.0.1", tcp.port)).await.is_ok();
        }
        match &probe.http {
            Some(h) => http_ok(h.port, &h.path).await.unwrap_or(false),
            None => true,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

async fn http_ok(port: u16, path: &str) -> std::io::Result<bool> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: weft-probe\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await?;
    // "HTTP/1.1 200"
    let code = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
    Ok((200..400).contains(&code))
}

//! Hostile clients against real proxies: HTTP/1 request-smuggling shapes, oversized and slow request
//! heads, floods of garbage connections, the connection cap, and plaintext on the mTLS tunnel port.
//! Every exchange is raw bytes over a loopback socket and bounded in time, so a misbehaving proxy fails
//! a test rather than hanging it.

use bytes::Bytes;
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use weft::apps::{client, tcp};
use weft::pair::{Pair, PairOptions};
use weft::proxy::ProxyProc;

// === raw-socket helpers ===

/// How a raw connection ended from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The proxy closed it (EOF).
    Closed,
    /// The proxy reset it, or a write failed because it was gone.
    Reset,
    /// Still open when we stopped waiting.
    Open,
}

/// What came back on one raw connection.
#[derive(Debug)]
struct Reply {
    bytes: Vec<u8>,
    end: End,
    /// From the end of our write to the end of the connection (or to giving up).
    after: Duration,
}

impl Reply {
    fn status(&self) -> Option<u16> {
        // `HTTP/1.x NNN`: hyper answers an HTTP/1.0 request's parse error in either version.
        let rest = self.bytes.strip_prefix(b"HTTP/1.")?;
        std::str::from_utf8(rest.get(2..5)?).ok()?.parse().ok()
    }

    fn body(&self) -> &[u8] {
        let at = self.bytes.windows(4).position(|w| w == b"\r\n\r\n");
        at.map(|i| &self.bytes[i + 4..]).unwrap_or_default()
    }

    /// The body with chunked framing removed when the response is chunked (`None` if the framing is
    /// broken).
    fn decoded_body(&self) -> Option<Vec<u8>> {
        let head_end = self.bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&self.bytes[..head_end]).to_ascii_lowercase();
        let mut rest = self.body();
        if !head.contains("transfer-encoding: chunked") {
            return Some(rest.to_vec());
        }
        let mut out = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = std::str::from_utf8(&rest[..line_end])
                .ok()?
                .split(';')
                .next()?
                .trim();
            let size = usize::from_str_radix(size, 16).ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                return Some(out);
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
    }

    fn closed(&self) -> bool {
        self.end != End::Open
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.bytes[..self.bytes.len().min(400)];
        write!(
            f,
            "{:?} after {:?}: {:?}",
            self.end,
            self.after,
            String::from_utf8_lossy(shown)
        )
    }
}

/// Shows request bytes in failure messages without flooding them.
fn shown(req: &[u8]) -> String {
    let text = String::from_utf8_lossy(&req[..req.len().min(300)]).into_owned();
    format!(
        "{text:?}{}",
        if req.len() > 300 {
            format!(" ... ({} bytes)", req.len())
        } else {
            String::new()
        }
    )
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Sends `request` on a fresh connection and reads until the proxy closes it or `wait` passes. Reading
/// runs alongside writing, so a proxy that answers early (431) is heard even if it stops reading.
async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Reply {
    let stream = connect(addr).await;
    let (mut rd, mut wr) = stream.into_split();
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        let ok = wr.write_all(&request).await.is_ok();
        let _ = sent_tx.send(Instant::now());
        // Keep the write half open: a half-close could itself end the exchange.
        (ok, wr)
    });
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 16 * 1024];
    let end = loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => break End::Open,
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break End::Reset,
        }
    };
    let ended = Instant::now();
    let sent = sent_rx.await.unwrap_or(ended);
    let (wrote, _wr) = writer.await.expect("writer task");
    let end = if end == End::Open && !wrote {
        End::Reset
    } else {
        end
    };
    Reply {
        bytes,
        end,
        after: ended.saturating_duration_since(sent),
    }
}

/// Waits (bounded) until `f` is true; returns its last value.
async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rejections(p: &ProxyProc, listener: &str, reason: &str) -> f64 {
    let l = format!("listener=\"{listener}\"");
    let r = format!("reason=\"{reason}\"");
    if reason.is_empty() {
        p.metric("weft_proxy_rejections_total", &[&l])
    } else {
        p.metric("weft_proxy_rejections_total", &[&l, &r])
    }
}

fn requests(p: &ProxyProc, direction: &str) -> f64 {
    p.metric(
        "weft_proxy_requests_total",
        &[&format!("direction=\"{direction}\"")],
    )
}

/// A deterministic byte source (xorshift64*), so a failing flood can be replayed exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A TLS record header announcing a 512-byte ClientHello, the start of that ClientHello, then nothing.
fn half_client_hello(rng: &mut Rng) -> Vec<u8> {
    let mut v = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    v.extend(rng.bytes(32));
    v
}

const PLAIN_HTTP: &[u8] = b"GET /info HTTP/1.1\r\nHost: backend\r\nweft-target-port: 80\r\n\r\n";
/// The HTTP/2 connection preface followed by an empty SETTINGS frame (h2c prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

async fn assert_pair_serves(p: &Pair, when: &str) {
    let r = client::http1(p.http(), Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("{when}: HTTP request through the pair failed: {e:#}"));
    assert_eq!(r.status, StatusCode::OK, "{when}: {}", r.text());
    assert_eq!(r.app_name(), Some("backend"), "{when}");
    let payload = vec![b'w'; 10_000];
    let got = client::tcp_half_close(p.tcp(), &payload)
        .await
        .unwrap_or_else(|e| panic!("{when}: TCP exchange through the pair failed: {e:#}"));
    let trailer = tcp::eof_trailer(payload.len() as u64);
    assert_eq!(
        got.len(),
        payload.len() + trailer.len(),
        "{when}: TCP echo came back short"
    );
    assert!(
        got.ends_with(trailer.as_bytes()),
        "{when}: TCP echo lost its trailer"
    );
}

// === 1. request smuggling ===

/// Framing a conforming server must refuse with 400 (RFC 9112 §6.3, §5.1, §5.5): a proxy that forwards
/// any of these lets two hops disagree about where a request ends.
const MUST_REJECT: &[(&str, &[u8])] = &[
    (
        "Content-Length together with Transfer-Encoding: chunked",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nG",
    ),
    (
        "Transfer-Encoding: chunked, then Content-Length",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\nConnection: close\r\n\r\n0\r\n\r\nG",
    ),
    (
        "two different Content-Length headers",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!",
    ),
    (
        "Content-Length: +5",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nContent-Length: +5\r\nConnection: close\r\n\r\nhello",
    ),
    (
        "Content-Length: 5, 6",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nContent-Length: 5, 6\r\nConnection: close\r\n\r\nhello!",
    ),
    (
        "Content-Length:  0x5",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nContent-Length:  0x5\r\nConnection: close\r\n\r\nhello",
    ),
    (
        "Content-Length: -1",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nContent-Length: -1\r\nConnection: close\r\n\r\nhello",
    ),
    (
        "Transfer-Encoding with chunked not last",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "whitespace between header name and colon",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nContent-Length : 5\r\nConnection: close\r\n\r\nhello",
    ),
    (
        "control byte \\x01 in a header value",
        b"GET /info HTTP/1.1\r\nHost: backend\r\nX-Note: a\x01b\r\nConnection: close\r\n\r\n",
    ),
    (
        "bare CR in a header value",
        b"GET /info HTTP/1.1\r\nHost: backend\r\nX-Note: a\rb\r\nConnection: close\r\n\r\n",
    ),
];

/// Shapes RFC 9112 lets a server either refuse or read in one well-defined way. Each sends the chunked
/// (or 5-byte) body `hello` to `/echo`; the proxy must answer 400, or deliver exactly `hello`.
const REJECT_OR_CONSISTENT: &[(&str, &[u8])] = &[
    (
        "Transfer-Encoding: gzip, chunked",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding: chunked with trailing whitespace",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked \r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding: CHUNKED",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "Content-Length: 5, 5",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello",
    ),
    (
        "two equal Content-Length headers",
        b"POST /echo HTTP/1.1\r\nHost: backend\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    ),
    (
        "Transfer-Encoding on HTTP/1.0",
        b"POST /echo HTTP/1.0\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
];

#[tokio::test]
async fn smuggling_shapes_get_400_and_never_reach_the_app() {
    let p = Pair::start().await;
    let wait = Duration::from_secs(5);
    let mut failures = Vec::new();
    let mut answered_400 = 0;
    for (name, req) in MUST_REJECT {
        let before = (
            requests(&p.client, "outbound"),
            requests(&p.server, "inbound"),
        );
        let reply = exchange(p.http(), req, wait).await;
        let after = (
            requests(&p.client, "outbound"),
            requests(&p.server, "inbound"),
        );
        if reply.status() == Some(400) {
            answered_400 += 1;
        }
        if reply.status() != Some(400) || !reply.closed() {
            failures.push(format!("{name}: sent {}\n    got {reply}", shown(req)));
        }
        if after != before {
            failures.push(format!(
                "{name}: the request was forwarded (client outbound / server inbound requests {before:?} -> {after:?})"
            ));
        }
    }
    let accepted = p.http_app.accepted();
    if accepted != 0 {
        failures.push(format!(
            "the app accepted {accepted} connection(s) while only malformed requests were sent"
        ));
    }
    // Every 400 is counted as a rejection.
    let want = answered_400 as f64;
    if !eventually(Duration::from_secs(2), || {
        rejections(&p.client, "outbound", "bad_request") >= want
    })
    .await
    {
        let counted = rejections(&p.client, "outbound", "bad_request");
        failures.push(format!(
            "weft_proxy_rejections_total{{listener=\"outbound\",reason=\"bad_request\"}} is {counted}, want >= {want}"
        ));
    }

    for (name, req) in REJECT_OR_CONSISTENT {
        let reply = exchange(p.http(), req, wait).await;
        let consistent =
            reply.status() == Some(200) && reply.decoded_body().as_deref() == Some(&b"hello"[..]);
        if !(reply.status() == Some(400) || consistent) {
            failures.push(format!(
                "{name}: want 400 or 200 echoing exactly `hello`; sent {}\n    got {reply}",
                shown(req)
            ));
        }
    }

    assert_pair_serves(&p, "after the smuggling attempts").await;
    assert!(
        failures.is_empty(),
        "{} smuggling check(s) failed:\n  {}\n--- client proxy log (tail) ---\n{}",
        failures.len(),
        failures.join("\n  "),
        tail(&p.client.log(), 40)
    );
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// === 2. oversized heads ===

#[tokio::test]
async fn oversized_heads_get_431_and_are_counted() {
    let p = Pair::start().await;
    let wait = Duration::from_secs(5);
    let huge = format!(
        "GET /info HTTP/1.1\r\nHost: backend\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let mut many = String::from("GET /info HTTP/1.1\r\nHost: backend\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");

    let too_large = || rejections(&p.client, "outbound", "header_too_large");
    let before = too_large();
    for (name, req) in [("a 70 KiB header", &huge), ("150 headers", &many)] {
        let reply = exchange(p.http(), req.as_bytes(), wait).await;
        assert_eq!(
            reply.status(),
            Some(431),
            "{name}: sent {}\n got {reply}",
            shown(req.as_bytes())
        );
        assert!(
            reply.closed(),
            "{name}: connection left open after 431: {reply}"
        );
    }
    assert!(
        eventually(Duration::from_secs(2), || too_large() >= before + 2.0).await,
        "rejections{{listener=\"outbound\",reason=\"header_too_large\"}} went {before} -> {}; metrics:\n{}",
        too_large(),
        p.client.metrics()
    );
    assert_eq!(
        p.http_app.accepted(),
        0,
        "an oversized head reached the app"
    );

    // Below the limits, large heads still pass.
    let big_ok = "b".repeat(30 * 1024);
    let r = client::http1(
        p.http(),
        Method::GET,
        "/info",
        &[("x-big", &big_ok)],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a 30 KiB header is within max_header_bytes: {}",
        r.text()
    );
    let names: Vec<String> = (0..50).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = client::http1(p.http(), Method::GET, "/info", &headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        r.status,
        StatusCode::OK,
        "50 headers are within max_headers: {}",
        r.text()
    );
}

// === 3. slow loris ===

#[tokio::test]
async fn slow_loris_heads_are_closed_by_header_read_timeout() {
    let p = Pair::start_with(PairOptions {
        client_yaml: "limits:\n  header_read_timeout: 1s\n".into(),
        ..Default::default()
    })
    .await;
    let addr = p.http();

    // A head that stops half way.
    let stalled = async {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n";
        (
            head.to_vec(),
            exchange(addr, head, Duration::from_secs(6)).await,
        )
    };
    // A head that keeps coming, one byte every 200 ms: the timeout bounds the whole head, not each read.
    let dripping = async {
        let mut s = connect(addr).await;
        let mut sent = b"GET / HTTP/1.1\r\nHost: x\r\nX-Drip: ".to_vec();
        s.write_all(&sent).await.expect("write head");
        let start = Instant::now();
        let mut bytes = Vec::new();
        let mut buf = [0u8; 1024];
        let end = loop {
            if start.elapsed() > Duration::from_secs(6) {
                break End::Open;
            }
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) => break End::Closed,
                Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => break End::Reset,
                Err(_) => {
                    if s.write_all(b"a").await.is_err() {
                        break End::Reset;
                    }
                    sent.push(b'a');
                }
            }
        };
        let reply = Reply {
            bytes,
            end,
            after: start.elapsed(),
        };
        (sent, reply)
    };
    let timeouts = || rejections(&p.client, "outbound", "timeout");
    let before = timeouts();
    let (stalled, dripping) = tokio::join!(stalled, dripping);
    for (name, (req, reply)) in [("stalled head", stalled), ("dripping head", dripping)] {
        assert!(
            reply.closed() && reply.after < Duration::from_secs(4),
            "{name}: the proxy should close it about 1 s after the head started; sent {}\n got {reply}\n--- client log ---\n{}",
            shown(&req),
            tail(&p.client.log(), 30)
        );
        assert!(
            reply.after >= Duration::from_millis(500),
            "{name}: closed before the timeout could fire: {reply}"
        );
        assert!(
            reply.bytes.is_empty() || reply.status() == Some(408),
            "{name}: only 408 or a bare close are acceptable: {reply}"
        );
    }
    assert!(
        eventually(Duration::from_secs(2), || timeouts() >= before + 2.0).await,
        "rejections{{listener=\"outbound\",reason=\"timeout\"}} did not count both slow heads:\n{}",
        p.client.metrics()
    );
    assert_eq!(p.http_app.accepted(), 0, "a slow head reached the app");
    assert_pair_serves(&p, "after the slow heads").await;
}

// === 4. garbage flood ===

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Tunnel,
    Http,
    Tcp,
}

#[derive(Debug)]
enum Garbage {
    Random(usize),
    HalfHello,
    PlainHttp,
    H2Preface,
}

/// What one garbage connection observed.
struct Outcome {
    target: Target,
    kind: &'static str,
    connected: bool,
    /// The tunnel answered something that looks like HTTP (it must only ever speak TLS).
    http_reply: Option<String>,
}

async fn garbage_connection(
    addr: SocketAddr,
    target: Target,
    payload: Vec<u8>,
    kind: &'static str,
) -> Outcome {
    let mut out = Outcome {
        target,
        kind,
        connected: false,
        http_reply: None,
    };
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
    else {
        return out;
    };
    out.connected = true;
    let _ = s.write_all(&payload).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > 64 * 1024 {
            break;
        }
    }
    if target == Target::Tunnel
        && (got.starts_with(b"HTTP/") || got.windows(5).any(|w| w == b"HTTP/"))
    {
        out.http_reply = Some(String::from_utf8_lossy(&got[..got.len().min(200)]).into_owned());
    }
    out
}

/// Opens `n` connections to `addr` that send nothing, at most 100 connecting at once.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let count = (n - chunk * 100).min(100);
        let mut set = JoinSet::new();
        for _ in 0..count {
            set.spawn(async move {
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
            });
        }
        while let Some(r) = set.join_next().await {
            match r.expect("connect task") {
                Ok(Ok(s)) => out.push(s),
                Ok(Err(e)) => panic!("idle connection to {addr}: {e}"),
                Err(_) => panic!("idle connection to {addr} timed out"),
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_garbage_connections_leave_the_pair_serving() {
    const IDLE_TUNNEL: usize = 200;
    const IDLE_HTTP: usize = 50;
    const IDLE_TCP: usize = 50;
    let started = Instant::now();
    let mut p = Pair::start_with(PairOptions {
        server_yaml: "limits:\n  tls_handshake_timeout: 2s\n".into(),
        ..Default::default()
    })
    .await;

    // 300 idle sockets, held for the rest of the test.
    let idle_since = Instant::now();
    let mut idle_tunnel = idle_connections(p.server.tunnel, IDLE_TUNNEL).await;
    let idle_http = idle_connections(p.http(), IDLE_HTTP).await;
    let idle_tcp = idle_connections(p.tcp(), IDLE_TCP).await;

    // 700 active garbage connections: 350 random-byte ones spread over all three listeners, 350 broken
    // TLS or plaintext ones on the tunnel.
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut jobs = Vec::new();
    for i in 0..350 {
        let target = [Target::Tunnel, Target::Tunnel, Target::Http, Target::Tcp][i % 4];
        jobs.push((target, Garbage::Random(1 + (rng.next() % 2048) as usize)));
    }
    for i in 0..350 {
        let g = match i % 7 {
            0..=3 => Garbage::HalfHello,
            4 | 5 => Garbage::PlainHttp,
            _ => Garbage::H2Preface,
        };
        jobs.push((Target::Tunnel, g));
    }
    // Interleave kinds so every wave mixes them.
    for i in (1..jobs.len()).rev() {
        jobs.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let addr_of = |t: Target| match t {
        Target::Tunnel => p.server.tunnel,
        Target::Http => p.http(),
        Target::Tcp => p.tcp(),
    };
    let limit = Arc::new(Semaphore::new(100));
    let mut flood = JoinSet::new();
    for (target, g) in jobs {
        let (payload, kind) = match g {
            Garbage::Random(n) => (rng.bytes(n), "random"),
            Garbage::HalfHello => (half_client_hello(&mut rng), "half-hello"),
            Garbage::PlainHttp => (PLAIN_HTTP.to_vec(), "plain-http"),
            Garbage::H2Preface => (H2_PREFACE.to_vec(), "h2-preface"),
        };
        let addr = addr_of(target);
        let limit = limit.clone();
        flood.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore");
            garbage_connection(addr, target, payload, kind).await
        });
    }

    // Real traffic while the flood runs: the client proxy has to open its first peer connection now.
    let during = async {
        for _ in 0..3 {
            assert_pair_serves(&p, "during the garbage flood").await;
        }
    };
    let collect = async {
        let mut outcomes = Vec::new();
        while let Some(o) = flood.join_next().await {
            outcomes.push(o.expect("garbage task"));
        }
        outcomes
    };
    let (outcomes, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(collect, during)
    })
    .await
    .expect("the garbage flood did not finish within 20 s");

    assert_pair_serves(&p, "after the garbage flood").await;
    assert!(
        p.server.is_running(),
        "server-side proxy died:\n{}",
        tail(&p.server.log(), 40)
    );
    assert!(
        p.client.is_running(),
        "client-side proxy died:\n{}",
        tail(&p.client.log(), 40)
    );

    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    assert_eq!(
        count(&|o| o.connected),
        700,
        "every garbage connection should at least connect"
    );
    let http_replies: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.http_reply.as_ref().map(|r| format!("{}: {r:?}", o.kind)))
        .collect();
    assert!(
        http_replies.is_empty(),
        "the tunnel answered plaintext with HTTP: {http_replies:?}"
    );

    // Every tunnel connection that never finished a handshake is refused and counted: the active garbage
    // as a TLS failure, the idle ones when tls_handshake_timeout (2 s) ends them.
    let tunnel_garbage = count(&|o| o.target == Target::Tunnel) as f64;
    let not_tls = count(&|o| matches!(o.kind, "plain-http" | "h2-preface")) as f64;
    let want_rejections = tunnel_garbage + IDLE_TUNNEL as f64;
    let server = &p.server;
    let counted = eventually(Duration::from_secs(5), || {
        rejections(server, "tunnel", "") >= want_rejections
            && server.metric(
                "weft_proxy_tls_handshake_failures_total",
                &["side=\"inbound\""],
            ) >= tunnel_garbage
            && rejections(server, "tunnel", "tls_handshake_timeout") >= IDLE_TUNNEL as f64
    })
    .await;
    let metrics: String = server
        .metrics()
        .lines()
        .filter(|l| l.contains("rejections") || l.contains("tls"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!(
        "flood done in {:?}; tunnel counters:\n{metrics}",
        started.elapsed()
    );
    assert!(
        counted,
        "tunnel counters short of {tunnel_garbage} garbage + {IDLE_TUNNEL} idle connections:\n{metrics}"
    );
    let not_tls_counted = server.metric(
        "weft_proxy_tls_handshake_failures_total",
        &["side=\"inbound\"", "reason=\"not_tls\""],
    );
    assert!(
        not_tls_counted >= not_tls,
        "{not_tls} plaintext connections, reason=\"not_tls\" counted {not_tls_counted}:\n{metrics}"
    );

    // The idle tunnel sockets were closed by the proxy (its handshake timeout), not left to pile up.
    let mut still_open = 0;
    for s in idle_tunnel.iter_mut() {
        let left = (idle_since + Duration::from_secs(4)).saturating_duration_since(Instant::now());
        let mut b = [0u8; 64];
        if tokio::time::timeout(left.max(Duration::from_millis(10)), s.read(&mut b))
            .await
            .is_err()
        {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "idle tunnel sockets still open 4 s after connecting (tls_handshake_timeout is 2 s)"
    );
    drop((idle_tunnel, idle_http, idle_tcp));
    assert_pair_serves(&p, "after dropping the idle sockets").await;
    assert!(
        p.server.is_running() && p.client.is_running(),
        "a proxy died at the end"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "heavy flood test took {:?}",
        started.elapsed()
    );
}

// === 5. connection cap ===

#[tokio::test]
async fn connection_cap_refuses_excess_then_recovers() {
    let p = Pair::start_with(PairOptions {
        server_yaml: "limits:\n  max_connections: 20\n".into(),
        ..Default::default()
    })
    .await;
    // Sequential connects, so the proxy accepts them in this order.
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(connect(p.server.tunnel).await);
    }
    let mut set = JoinSet::new();
    for (i, mut s) in conns.into_iter().enumerate() {
        set.spawn(async move {
            let mut b = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(1), s.read(&mut b))
                .await
                .is_ok();
            (i, closed, s)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r.expect("read task"));
    }
    results.sort_by_key(|r| r.0);
    let closed: Vec<usize> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
    assert_eq!(
        closed,
        (20..40).collect::<Vec<_>>(),
        "with max_connections 20, exactly connections 20..40 should be closed at once"
    );
    let refused = rejections(&p.server, "tunnel", "max_connections");
    assert!(
        refused >= 20.0,
        "rejections{{listener=\"tunnel\",reason=\"max_connections\"}} = {refused}"
    );
    assert!(
        p.server.log().contains("connection limit"),
        "the cap should be logged:\n{}",
        tail(&p.server.log(), 20)
    );

    // At the cap a peer cannot get in either: the client side reports an error, not a hang.
    let r = client::http1(p.http(), Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap();
    assert!(
        r.status.is_server_error(),
        "request while the tunnel is full: {} {}",
        r.status,
        r.text()
    );

    drop(results);
    let mut last = String::new();
    let mut ok = false;
    for _ in 0..50 {
        match client::http1(p.http(), Method::GET, "/info", &[], Bytes::new()).await {
            Ok(r) if r.status == StatusCode::OK => {
                ok = true;
                break;
            }
            Ok(r) => last = format!("{} {}", r.status, r.text()),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok,
        "the pair did not serve again after the idle connections closed; last: {last}"
    );
    assert_pair_serves(&p, "after the cap was released").await;
}

// === 6. plaintext on the tunnel ===

#[tokio::test]
async fn plaintext_to_the_tunnel_is_refused() {
    let p = Pair::start().await;
    let before = p.server.metric(
        "weft_proxy_tls_handshake_failures_total",
        &["side=\"inbound\"", "reason=\"not_tls\""],
    );
    for (name, req) in [("HTTP/1.1", PLAIN_HTTP), ("HTTP/2 preface", H2_PREFACE)] {
        let reply = exchange(p.server.tunnel, req, Duration::from_secs(5)).await;
        assert!(
            reply.closed(),
            "{name}: the tunnel kept a plaintext connection open: {reply}"
        );
        let looks_http = reply.bytes.windows(5).any(|w| w == b"HTTP/")
            // An HTTP/2 server's first frame is SETTINGS (type 4 at offset 3).
            || (reply.bytes.len() >= 9 && reply.bytes[3] == 0x04);
        assert!(
            !looks_http,
            "{name}: the tunnel answered plaintext with HTTP: {reply}"
        );
        assert!(
            reply.bytes.is_empty() || reply.bytes[0] == 0x15,
            "{name}: only a TLS alert (or nothing) may come back: {reply}"
        );
    }
    assert!(
        eventually(Duration::from_secs(2), || {
            p.server.metric(
                "weft_proxy_tls_handshake_failures_total",
                &["side=\"inbound\"", "reason=\"not_tls\""],
            ) >= before + 2.0
        })
        .await,
        "tls_handshake_failures{{side=\"inbound\",reason=\"not_tls\"}} did not count both:\n{}",
        p.server.metrics()
    );
    assert!(rejections(&p.server, "tunnel", "tls_handshake") >= 2.0);
    assert_eq!(
        p.http_app.accepted(),
        0,
        "plaintext on the tunnel reached the app"
    );
    assert_pair_serves(&p, "after plaintext on the tunnel").await;
}

//! HTTP/2 floods against a real proxy: rapid reset, CONTINUATION, PING and too many streams. Frames are
//! written raw to an outbound listener speaking HTTP/2 prior knowledge (the tunnel's HTTP/2 server is
//! built by the same function, `serve::http2_builder`). Each flood must be bounded: the proxy ends the
//! connection or refuses the excess, its memory stays small, and it keeps serving others.

use bytes::Bytes;
use http::{Method, StatusCode};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft::apps::client;
use weft::pair::Pair;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://backend/slow?ms=2000`: indexed :method GET, :scheme http, literal :path and
/// :authority with indexed names.
fn request_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    b.push(0x04); // literal without indexing, name = static index 4 (:path)
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b.push(0x01); // :authority
    b.push(7);
    b.extend_from_slice(b"backend");
    b
}

/// One literal header (new name, without indexing) of about `size` bytes.
fn filler_header(i: usize, size: usize) -> Vec<u8> {
    let name = format!("x-filler-{i}");
    let value = "v".repeat(size.min(126));
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

async fn open(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// Reads frames until the connection ends or `limit` passes; returns the frame types seen (in order)
/// and whether the proxy closed the connection.
async fn drain_frames(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut kinds = Vec::new();
    let deadline = Instant::now() + limit;
    let mut chunk = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 9 {
            let len = ((buf[0] as usize) << 16) | ((buf[1] as usize) << 8) | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            kinds.push(buf[3]);
            buf.drain(..9 + len);
        }
    };
    (kinds, closed)
}

async fn still_serves(p: &Pair) {
    let r = client::http1(p.http(), Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        p.client.rss_kib() < 128 * 1024,
        "client proxy RSS {} KiB",
        p.client.rss_kib()
    );
}

/// The ended connection is logged and counted as a rejection.
async fn assert_counted(p: &Pair) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while p
        .client
        .metric("weft_proxy_rejections_total", &["listener=\"outbound\""])
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "not counted:\n{}",
            p.client.metrics()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        p.client.log().contains("connection rejected"),
        "{}",
        p.client.log()
    );
}

#[tokio::test]
async fn rapid_reset_ends_the_connection() {
    let p = Pair::start().await;
    let mut s = open(p.http()).await;
    let block = request_block("/slow?ms=2000");
    let mut burst = Vec::new();
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let _ = s.write_all(&burst).await; // the proxy may close mid-write
    let (kinds, closed) = drain_frames(&mut s, Duration::from_secs(10)).await;
    assert!(
        kinds.contains(&GOAWAY) && closed,
        "rapid reset must end in GOAWAY and close: {kinds:?} closed={closed}"
    );
    still_serves(&p).await;
    assert_counted(&p).await;
}

#[tokio::test]
async fn continuation_flood_is_cut_off() {
    let p = Pair::start().await;
    let mut s = open(p.http()).await;
    let _ = s
        .write_all(&frame(HEADERS, END_STREAM, 1, &request_block("/info")))
        .await;
    let started = Instant::now();
    let mut sent = 0usize;
    // 20 MiB of header bytes in CONTINUATION frames, far beyond the 64 KiB header list limit.
    for i in 0..160_000usize {
        if s.write_all(&frame(CONTINUATION, 0, 1, &filler_header(i, 120)))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let (kinds, closed) = drain_frames(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed || kinds.contains(&GOAWAY) || kinds.contains(&RST_STREAM),
        "{kinds:?}"
    );
    assert!(
        sent < 160_000,
        "the proxy kept reading an endless header block ({sent} frames)"
    );
    still_serves(&p).await;
    assert_counted(&p).await;
}

#[tokio::test]
async fn ping_flood_stays_bounded() {
    let p = Pair::start().await;
    let before = p.client.rss_kib();
    let mut s = open(p.http()).await;
    // 200,000 PINGs without reading a single ACK: the proxy must not queue an answer for each.
    let mut burst = Vec::new();
    for i in 0..200_000u64 {
        burst.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    let write = tokio::time::timeout(Duration::from_secs(15), s.write_all(&burst)).await;
    let grown = p.client.rss_kib().saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "RSS grew {grown} KiB under a PING flood (write finished: {write:?})"
    );
    drop(s);
    still_serves(&p).await;
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let p = weft::pair::Pair::start_with(weft::pair::PairOptions {
        client_yaml: "limits:\n  max_concurrent_streams: 20\n".into(),
        ..Default::default()
    })
    .await;
    let mut s = open(p.http()).await;
    let block = request_block("/slow?ms=3000");
    let mut burst = Vec::new();
    for i in 0..100u32 {
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block));
    }
    s.write_all(&burst).await.unwrap();
    let (kinds, _) = drain_frames(&mut s, Duration::from_secs(2)).await;
    let refused = kinds.iter().filter(|k| **k == RST_STREAM).count();
    assert!(
        refused >= 80 || kinds.contains(&GOAWAY),
        "streams beyond max_concurrent_streams=20 must be refused: {refused} RST_STREAM in {kinds:?}"
    );
    still_serves(&p).await;
}

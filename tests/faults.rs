//! Faults operators meet at 3 a.m., with real proxies: a backend killed mid-stream over HTTP/1.1,
//! HTTP/2, gRPC streaming and opaque TCP must end the caller's stream at once with an error (never a
//! hang, never a clean end that would pass a truncated answer off as whole), and a request to a backend
//! that is gone is retried only when its method allows it.

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft::apps::client::{self, StreamEnd, StreamInFlight};
use weft::apps::grpc;
use weft::pair::Pair;
use weft::proxy::ProxyProc;

/// Longest a caller may wait to learn its backend is gone (the proxies learn it from a closed socket).
const AT_ONCE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_stream_ends_every_callers_stream_with_an_error_at_once() {
    let Pair {
        http_app,
        tcp_app,
        client: _client,
        server: _server,
        pki: _pki,
        client_id: _client_id,
        server_id: _server_id,
        banner_app: _banner_app,
    } = Pair::start().await;
    let (http, tcp) = (_client.outbound[Pair::HTTP], _client.outbound[Pair::TCP]);
    let mut streams = Vec::new();
    for (what, version, chat) in [
        ("HTTP/1.1 echo", Version::HTTP_11, false),
        ("HTTP/2 echo", Version::HTTP_2, false),
        ("gRPC chat", Version::HTTP_2, true),
    ] {
        let mut s = StreamInFlight::open(http, version, chat).await.unwrap();
        assert_eq!(s.status, StatusCode::OK, "{what}");
        let first = if chat {
            grpc::encode(b"one")
        } else {
            Bytes::from_static(b"one")
        };
        s.round(first).await.unwrap();
        streams.push((what, s));
    }
    let mut opaque = TcpStream::connect(tcp).await.unwrap();
    opaque.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(AT_ONCE, opaque.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"hi");

    // The backend dies: its listener and every open connection go at once.
    drop(http_app);
    drop(tcp_app);
    let killed = Instant::now();
    for (what, s) in streams {
        match s.end(AT_ONCE).await {
            StreamEnd::Error(_) => {}
            StreamEnd::Ended(Some(status)) if chat_failed(&status) => {}
            other => panic!("{what}: the caller got {other:?} after its backend died"),
        }
    }
    let end = tokio::time::timeout(AT_ONCE, opaque.read(&mut buf)).await;
    assert!(
        matches!(end, Ok(Ok(0)) | Ok(Err(_))),
        "opaque TCP: {end:?} after its backend died"
    );
    assert!(killed.elapsed() < AT_ONCE, "took {:?}", killed.elapsed());
}

/// A gRPC stream that ended with trailers must say it failed.
fn chat_failed(status: &str) -> bool {
    status != "0"
}

/// With the backend gone, the server side answers 503 (nothing listens); a GET is retried by the
/// client side's default policy, a POST is not: it reaches the server side exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_a_backend_that_is_gone_only_idempotent_requests_are_retried() {
    let Pair {
        http_app,
        client,
        server,
        pki: _pki,
        client_id: _client_id,
        server_id: _server_id,
        tcp_app: _tcp_app,
        banner_app: _banner_app,
    } = Pair::start().await;
    let http = client.outbound[Pair::HTTP];
    let ok = client::http1(http, Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    drop(http_app);

    let tries = |method: Method| {
        let (client, server) = (&client, &server);
        async move {
            let before = (arrived(server), retried(client));
            let r = client::http1(http, method, "/count", &[], Bytes::from_static(b"x"))
                .await
                .unwrap();
            assert!(
                r.status.is_server_error(),
                "{:?}: {}",
                r.status,
                r.body.len()
            );
            (arrived(server) - before.0, retried(client) - before.1)
        }
    };
    let (post_arrivals, post_retries) = tries(Method::POST).await;
    assert_eq!(
        (post_arrivals, post_retries),
        (1.0, 0.0),
        "a POST is sent once"
    );
    let (get_arrivals, get_retries) = tries(Method::GET).await;
    assert!(
        get_arrivals > 1.0 && get_retries >= 1.0,
        "a GET is retried: {get_arrivals} arrivals, {get_retries} retries"
    );
}

fn arrived(server: &ProxyProc) -> f64 {
    server.metric("weft_proxy_requests_total", &["direction=\"inbound\""])
}

fn retried(client: &ProxyProc) -> f64 {
    client.metric("weft_proxy_retries_total", &["result=\"sent\""])
}

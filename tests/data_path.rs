//! The data path between two real proxies: every protocol the issue lists, carried over one mTLS HTTP/2
//! connection, checked by what the apps on either side see.

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use std::time::Duration;
use weft::apps::{client, tcp};
use weft::pair::Pair;

#[tokio::test]
async fn http1_keepalive_chunked_and_identity() {
    let p = Pair::start().await;
    let mut conn = client::Http1Conn::connect(p.http()).await.unwrap();
    for i in 0..5 {
        let r = conn
            .send(Method::GET, &format!("/info?i={i}"), &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let info = r.json().unwrap();
        assert_eq!(info["app"], "backend");
        assert_eq!(
            info["version"], "HTTP/1.1",
            "the app spoke HTTP/1.1, so its server gets HTTP/1.1"
        );
        let xfcc = info["headers"]["x-forwarded-client-cert"].as_str().unwrap();
        assert!(xfcc.contains(&format!("URI={}", p.client_id.id)), "{xfcc}");
        assert!(xfcc.contains(&format!("By={}", p.server_id.id)), "{xfcc}");
    }
    assert!(!conn.is_closed(), "client keep-alive connection stays open");
    assert_eq!(
        p.http_app.accepted(),
        1,
        "the server side pools its connection to the app"
    );

    // Chunked both ways, streamed.
    let r = conn
        .send(
            Method::GET,
            "/chunked?chunks=50&size=1000",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.body.len(), 50_000);
    let up = client::upload(p.http(), "/count", 3_000_000, 16 * 1024)
        .await
        .unwrap();
    assert_eq!(up.json().unwrap()["bytes"], 3_000_000);
    let body = Bytes::from(vec![b'x'; 200_000]);
    let r = conn
        .send(Method::POST, "/echo", &[], body.clone())
        .await
        .unwrap();
    assert_eq!(r.body, body);
    assert_eq!(
        p.client
            .metric("weft_proxy_peer_connections_opened_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn hop_by_hop_and_forwarded_headers() {
    let p = Pair::start().await;
    let r = client::http1(
        p.http(),
        Method::GET,
        "/info",
        &[
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-forwarded-for", "6.6.6.6"),
            (
                "x-forwarded-client-cert",
                "URI=spiffe://evil.example/ns/x/sa/y",
            ),
            ("weft-target-port", "22"),
            ("x-end-to-end", "kept"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    let h = &r.json().unwrap()["headers"];
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "weft-target-port",
    ] {
        assert!(h.get(gone).is_none(), "{gone} crossed the proxies: {h}");
    }
    assert_eq!(h["x-end-to-end"], "kept");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "client-supplied x-forwarded-for must not survive"
    );
    let xfcc = h["x-forwarded-client-cert"].as_str().unwrap();
    assert!(!xfcc.contains("evil"), "{xfcc}");
}

#[tokio::test]
async fn http2_prior_knowledge_and_grpc() {
    let p = Pair::start().await;
    let r = client::h2(p.http(), Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json().unwrap()["version"],
        "HTTP/2.0",
        "an h2 client's server gets h2"
    );

    let unary = client::grpc_unary(p.http(), b"hello").await.unwrap();
    assert_eq!(unary.message.as_deref(), Some(&b"echo: hello"[..]));
    assert_eq!(unary.grpc_status, "0");

    let failed = client::grpc_unary(p.http(), b"fail").await.unwrap();
    assert_eq!(
        failed.grpc_status, "3",
        "grpc-status trailer crosses both proxies"
    );
    assert_eq!(failed.grpc_message.as_deref(), Some("asked to fail"));

    let chat = client::grpc_chat(p.http(), &["one", "two", "three"])
        .await
        .unwrap();
    assert_eq!(chat.replies, ["echo: one", "echo: two", "echo: three"]);
    assert_eq!(chat.grpc_status, "0");
}

#[tokio::test]
async fn websocket_upgrade() {
    let p = Pair::start().await;
    let echoed = client::websocket_echo(p.http(), &["ping", "über", "last"])
        .await
        .unwrap();
    assert_eq!(echoed, ["ping", "über", "last"]);
}

#[tokio::test]
async fn opaque_tcp_half_close() {
    let p = Pair::start().await;
    let payload = vec![7u8; 100_000];
    let got = client::tcp_half_close(p.tcp(), &payload).await.unwrap();
    let trailer = tcp::eof_trailer(payload.len() as u64);
    assert_eq!(got.len(), payload.len() + trailer.len());
    assert!(
        got.ends_with(trailer.as_bytes()),
        "the app saw our half-close and could still answer"
    );
}

#[tokio::test]
async fn server_speaks_first() {
    let p = Pair::start().await;
    let started = std::time::Instant::now();
    let banner = client::read_banner(p.banner(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(banner, tcp::DEFAULT_BANNER.trim_end());
    // The detection window (100 ms by default) is the only wait; no multi-second stall.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "banner took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn many_requests_and_streams_share_one_peer_connection() {
    let p = Pair::start().await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (http, tcp) = (p.http(), p.tcp());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let r = client::http1(http, Method::GET, "/info", &[], Bytes::new())
                    .await
                    .unwrap();
                assert_eq!(r.status, StatusCode::OK);
            } else {
                let got = client::tcp_half_close(tcp, b"abc").await.unwrap();
                assert!(got.starts_with(b"abc"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        p.client
            .metric("weft_proxy_peer_connections_opened_total", &[]),
        1.0
    );
    assert_eq!(
        p.server.metric(
            "weft_proxy_connections_opened_total",
            &["protocol=\"tunnel\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn second_peer_connection_only_at_the_stream_limit() {
    let p = weft::pair::Pair::start_with(weft::pair::PairOptions {
        client_yaml: "limits:\n  max_streams_per_peer_connection: 2\n".into(),
        ..Default::default()
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let http = p.http();
        tasks.push(tokio::spawn(async move {
            client::http1(http, Method::GET, "/slow?ms=400", &[], Bytes::new())
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    let opened = p
        .client
        .metric("weft_proxy_peer_connections_opened_total", &[]);
    assert_eq!(
        opened, 3.0,
        "5 concurrent streams at 2 per connection need 3 connections"
    );
}

#[tokio::test]
async fn reconnects_after_the_peer_restarts() {
    let mut p = Pair::start().await;
    let r = client::http1(p.http(), Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // Kill the server side hard and start a new one on the same tunnel port.
    p.server.kill();
    let (server_id, tunnel) = (p.server_id.clone(), p.server.tunnel);
    p.server = weft::pair::spawn_blocking(move || {
        weft::proxy::ProxyBuilder::new("server-2", &server_id)
            .with_tunnel(tunnel)
            .start()
    })
    .await;
    let r = client::http1(p.http(), Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.version, Version::HTTP_11);
}

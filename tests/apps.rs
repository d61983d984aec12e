//! The demo apps against their own clients, no proxy in between: the bottom rung that the
//! end-to-end tests build on.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode, Version};
use tokio::net::TcpListener;
use weft::apps::{self, client, AppHandle};

/// Bound on each whole test; the clients' own timeouts should fire first.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

async fn within<F: Future<Output = Result<()>>>(test: F) -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .context("test timed out")?
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

async fn http_app(name: &str) -> AppHandle {
    apps::http::serve(listener().await, name)
}

fn header<'a>(resp: &'a client::ResponseSummary, name: &str) -> Option<&'a str> {
    resp.headers.get(name).and_then(|v| v.to_str().ok())
}

// === HTTP ===

#[tokio::test]
async fn info_over_http1_describes_the_request() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let mut conn = client::Http1Conn::connect(app.addr()).await?;
        let resp = conn
            .send(
                Method::GET,
                "/info?x=1",
                &[("x-test", "a"), ("x-multi", "1"), ("x-multi", "2")],
                Bytes::new(),
            )
            .await?;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.version, Version::HTTP_11);
        assert_eq!(resp.app_name(), Some("alpha"));
        let info = resp.json()?;
        assert_eq!(info["app"], "alpha");
        assert_eq!(info["method"], "GET");
        assert_eq!(info["path"], "/info");
        assert_eq!(info["query"], "x=1");
        assert_eq!(info["version"], "HTTP/1.1");
        assert_eq!(info["headers"]["x-test"], "a");
        assert_eq!(info["headers"]["x-multi"], serde_json::json!(["1", "2"]));
        assert_eq!(info["headers"]["host"], app.addr().to_string());
        assert_eq!(info["peer"], conn.local_addr().to_string());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn unknown_get_paths_answer_info_and_other_methods_404() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let resp = client::http1(app.addr(), Method::GET, "/some/where", &[], Bytes::new()).await?;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.json()?["path"], "/some/where");
        let resp = client::http1(app.addr(), Method::PUT, "/info", &[], Bytes::new()).await?;
        assert_eq!(resp.status, StatusCode::NOT_FOUND);
        assert_eq!(resp.app_name(), Some("alpha"));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn info_over_h2_prior_knowledge() -> Result<()> {
    within(async {
        let app = http_app("beta").await;
        let resp = client::h2(app.addr(), Method::GET, "/info", &[], Bytes::new()).await?;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.version, Version::HTTP_2);
        assert_eq!(resp.app_name(), Some("beta"));
        let info = resp.json()?;
        assert_eq!(info["version"], "HTTP/2.0");
        assert_eq!(info["app"], "beta");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn http1_keep_alive_reuses_one_connection() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let mut conn = client::Http1Conn::connect(app.addr()).await?;
        for _ in 0..3 {
            let resp = conn.send(Method::GET, "/info", &[], Bytes::new()).await?;
            assert_eq!(resp.json()?["peer"], conn.local_addr().to_string());
        }
        assert!(!conn.is_closed());
        assert_eq!(app.accepted(), 1);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn echo_streams_the_body_back_chunked() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let body = Bytes::from_static(b"hello weft");
        let resp = client::http1(
            app.addr(),
            Method::POST,
            "/echo",
            &[("content-type", "text/plain")],
            body.clone(),
        )
        .await?;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.body, body);
        assert_eq!(header(&resp, "transfer-encoding"), Some("chunked"));
        assert_eq!(header(&resp, "content-type"), Some("text/plain"));

        let resp = client::h2(app.addr(), Method::POST, "/echo", &[], body.clone()).await?;
        assert_eq!(resp.body, body);

        let resp = client::upload(app.addr(), "/echo", 300_000, 16 * 1024).await?;
        assert_eq!(resp.body.len(), 300_000);
        assert!(resp.body.starts_with(b"abcdefghijklmnopqrstuvwxyzabc"));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn count_reads_a_large_streamed_upload() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let total = 8 * 1024 * 1024 + 7;
        let resp = client::upload(app.addr(), "/count", total, 64 * 1024).await?;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.json()?["bytes"], total);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn chunked_response_has_the_requested_shape() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let resp = client::http1(
            app.addr(),
            Method::GET,
            "/chunked?chunks=5&size=3",
            &[],
            Bytes::new(),
        )
        .await?;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(header(&resp, "transfer-encoding"), Some("chunked"));
        assert_eq!(resp.text(), "aaabbbcccdddeee");

        let resp = client::h2(
            app.addr(),
            Method::GET,
            "/chunked?chunks=30&size=1",
            &[],
            Bytes::new(),
        )
        .await?;
        assert_eq!(resp.text(), "abcdefghijklmnopqrstuvwxyzabcd");

        let resp = client::http1(
            app.addr(),
            Method::GET,
            "/chunked?chunks=x",
            &[],
            Bytes::new(),
        )
        .await?;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn slow_waits_before_answering() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let start = Instant::now();
        let resp = client::http1(app.addr(), Method::GET, "/slow?ms=50", &[], Bytes::new()).await?;
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.text(), "slept 50 ms");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn websocket_echoes_messages() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let echoes = client::websocket_echo(app.addr(), &["one", "two", "three"]).await?;
        assert_eq!(echoes, ["one", "two", "three"]);

        // No upgrade on HTTP/2 (the demo does not implement RFC 8441).
        let resp = client::h2(app.addr(), Method::GET, "/ws", &[], Bytes::new()).await?;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST);
        Ok(())
    })
    .await
}

// === gRPC ===

#[tokio::test]
async fn grpc_unary_echoes_and_fails_on_request() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let ok = client::grpc_unary(app.addr(), b"hello").await?;
        assert_eq!(ok.message.as_deref(), Some(&b"echo: hello"[..]));
        assert_eq!(ok.grpc_status, "0");
        assert_eq!(ok.grpc_message, None);

        let failed = client::grpc_unary(app.addr(), b"fail").await?;
        assert_eq!(failed.message, None);
        assert_eq!(failed.grpc_status, "3");
        assert_eq!(failed.grpc_message.as_deref(), Some("asked to fail"));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn grpc_chat_interleaves_replies() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let chat = client::grpc_chat(app.addr(), &["a", "bb", "ccc"]).await?;
        assert_eq!(chat.replies, ["echo: a", "echo: bb", "echo: ccc"]);
        assert_eq!(chat.grpc_status, "0");

        let empty = client::grpc_chat(app.addr(), &[]).await?;
        assert!(empty.replies.is_empty());
        assert_eq!(empty.grpc_status, "0");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn grpc_rejects_other_content_types() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let resp = client::h2(
            app.addr(),
            Method::POST,
            apps::grpc::UNARY_PATH,
            &[("content-type", "application/json")],
            Bytes::from_static(b"{}"),
        )
        .await?;
        assert_eq!(resp.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        Ok(())
    })
    .await
}

#[test]
fn grpc_decoder_reassembles_split_and_merged_messages() {
    let mut wire = apps::grpc::encode(b"first").to_vec();
    wire.extend_from_slice(&apps::grpc::encode(b""));
    wire.extend_from_slice(&apps::grpc::encode(b"third"));
    let mut decoder = apps::grpc::Decoder::default();
    let mut messages = Vec::new();
    for byte in wire.chunks(3) {
        decoder.push(byte);
        while let Some(msg) = decoder.next_message().unwrap() {
            messages.push(msg);
        }
    }
    assert_eq!(messages, [&b"first"[..], b"", b"third"]);
    decoder.finish().unwrap();

    decoder.push(&[0, 0, 0]);
    assert!(decoder.finish().is_err());
    let mut compressed = apps::grpc::Decoder::default();
    compressed.push(&[1, 0, 0, 0, 0]);
    assert_eq!(
        compressed.next_message(),
        Err(apps::grpc::DecodeError::Compressed)
    );
}

// === TCP ===

#[tokio::test]
async fn tcp_echo_reports_half_close() -> Result<()> {
    within(async {
        let app = apps::tcp::echo(listener().await);
        let got = client::tcp_half_close(app.addr(), b"ping").await?;
        assert_eq!(got, b"ping\n[eof after 4 bytes]\n");

        // Large enough to fill socket buffers if the client did not read while writing.
        let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let got = client::tcp_half_close(app.addr(), &payload).await?;
        let trailer = apps::tcp::eof_trailer(payload.len() as u64);
        ensure!(
            got.len() == payload.len() + trailer.len(),
            "got {} bytes",
            got.len()
        );
        assert!(got.starts_with(&payload));
        assert!(got.ends_with(trailer.as_bytes()));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn banner_is_sent_before_the_client_speaks() -> Result<()> {
    within(async {
        let app = apps::tcp::banner(listener().await, apps::tcp::DEFAULT_BANNER);
        let line = client::read_banner(app.addr(), Duration::from_secs(5)).await?;
        assert_eq!(line, "220 weft-demo ESMTP ready");

        // After the banner it echoes.
        let got = client::tcp_half_close(app.addr(), b"EHLO test\r\n").await?;
        assert_eq!(got, b"220 weft-demo ESMTP ready\r\nEHLO test\r\n");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn read_banner_times_out_on_a_silent_server() -> Result<()> {
    within(async {
        // The echo app never speaks first.
        let app = apps::tcp::echo(listener().await);
        let err = client::read_banner(app.addr(), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no banner"), "{err:#}");
        Ok(())
    })
    .await
}

// === Lifecycle ===

#[tokio::test]
async fn dropping_the_handle_stops_the_app_and_its_connections() -> Result<()> {
    within(async {
        let app = http_app("alpha").await;
        let addr = app.addr();
        let mut conn = client::Http1Conn::connect(addr).await?;
        conn.send(Method::GET, "/info", &[], Bytes::new()).await?;

        drop(app);
        // Abort is asynchronous: wait until the listener is gone.
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
        let res = conn.send(Method::GET, "/info", &[], Bytes::new()).await;
        assert!(res.is_err(), "open connection survived the app: {res:?}");
        Ok(())
    })
    .await
}

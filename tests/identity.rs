//! Identity on the peer hop: the client side refuses a peer presenting the wrong SPIFFE ID, and the tunnel
//! refuses clients without a certificate, with an expired one, from another CA, or speaking plaintext.

use bytes::Bytes;
use http::{Method, StatusCode};
use std::time::Duration;
use weft::pair::{bind, spawn_blocking, Pair};
use weft::pki::Pki;
use weft::proxy::ProxyBuilder;
use weft::tls_probe::probe;

#[tokio::test]
async fn client_side_refuses_a_peer_with_the_wrong_identity() {
    let p = Pair::start().await;
    let expected = p.pki.id("default", "payments");
    let tunnel = p.server.tunnel;
    let port = p.http_app.addr().port();
    let client_id = p.client_id.clone();
    let exp = expected.clone();
    let client = spawn_blocking(move || {
        ProxyBuilder::new("client-wrong-id", &client_id)
            .outbound(tunnel, &exp, port, "auto")
            .start()
    })
    .await;
    let r = weft::apps::client::http1(client.outbound[0], Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.headers["weft-proxy-error"], "peer_tls");
    let body = r.text();
    assert!(
        body.contains(expected.as_str()) && body.contains(p.server_id.id.as_str()),
        "{body}"
    );
    assert!(
        client.wait_log(expected.as_str(), Duration::from_secs(5)),
        "the log names the expected identity:\n{}",
        client.log()
    );
    assert!(
        client.log().contains(p.server_id.id.as_str()),
        "and the presented one:\n{}",
        client.log()
    );
    assert_eq!(p.http_app.accepted(), 0, "nothing reached the app");

    // Opaque TCP to the same wrong peer is closed without a byte.
    let tcp_client = spawn_blocking({
        let (client_id, exp) = (p.client_id.clone(), expected.clone());
        let port = p.tcp_app.addr().port();
        move || {
            ProxyBuilder::new("client-wrong-id-tcp", &client_id)
                .outbound(tunnel, &exp, port, "tcp")
                .start()
        }
    })
    .await;
    let got = weft::apps::client::tcp_half_close(tcp_client.outbound[0], b"hello").await;
    assert!(
        matches!(&got, Ok(b) if b.is_empty()) || got.is_err(),
        "{got:?}"
    );
}

#[tokio::test]
async fn tunnel_refuses_clients_it_must_not_trust() {
    let p = Pair::start().await;
    let tunnel = p.server.tunnel;
    // Sanity: the legitimate client identity gets through the same probe.
    let ok = probe(tunnel, Some(&p.client_id)).await;
    assert!(matches!(ok, Ok(s) if s != 0), "{ok:?}");

    let no_cert = probe(tunnel, None).await;
    assert!(no_cert.is_err(), "no client certificate: {no_cert:?}");

    let expired = p.pki.expired("default", "frontend");
    let r = probe(tunnel, Some(&expired)).await;
    assert!(r.is_err(), "expired certificate: {r:?}");

    let other = Pki::new("weft.test");
    let stranger = other.workload("default", "frontend");
    let r = probe(tunnel, Some(&stranger)).await;
    assert!(r.is_err(), "certificate from another CA: {r:?}");

    let other_td = Pki::new("elsewhere.test");
    let r = probe(tunnel, Some(&other_td.workload("default", "frontend"))).await;
    assert!(r.is_err(), "another trust domain: {r:?}");

    let failures = p.server.metric(
        "weft_proxy_tls_handshake_failures_total",
        &["side=\"inbound\""],
    );
    assert!(
        failures >= 4.0,
        "every refusal is counted (got {failures}):\n{}",
        p.server.metrics()
    );
    assert!(
        p.server.log().contains("TLS handshake failed"),
        "{}",
        p.server.log()
    );
    assert_eq!(p.http_app.accepted(), 0);
}

#[tokio::test]
async fn plaintext_to_the_tunnel_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Pair::start().await;
    for payload in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(p.server.tunnel)
            .await
            .unwrap();
        s.write_all(payload).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            !buf.starts_with(b"HTTP/"),
            "plaintext got an HTTP answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    assert!(
        p.server
            .metric("weft_proxy_rejections_total", &["listener=\"tunnel\""])
            >= 2.0
    );
}

#[tokio::test]
async fn tunnel_only_reaches_allowed_ports() {
    let pki = Pki::new("weft.test");
    let server_id = pki.workload("default", "backend");
    let client_id = pki.workload("default", "frontend");
    let allowed = weft::apps::http::serve(bind().await, "allowed");
    let closed = weft::apps::http::serve(bind().await, "closed");
    let ports = [allowed.addr().port()];
    let server = spawn_blocking({
        let s = server_id.clone();
        move || {
            ProxyBuilder::new("server", &s)
                .allowed_ports(&ports)
                .start()
        }
    })
    .await;
    let client = spawn_blocking({
        let (tunnel, sid) = (server.tunnel, server_id.id.clone());
        let (a, c) = (allowed.addr().port(), closed.addr().port());
        move || {
            ProxyBuilder::new("client", &client_id)
                .outbound(tunnel, &sid, a, "auto")
                .outbound(tunnel, &sid, c, "auto")
                .start()
        }
    })
    .await;
    let ok = weft::apps::client::http1(client.outbound[0], Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    let no = weft::apps::client::http1(client.outbound[1], Method::GET, "/info", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(no.status, StatusCode::FORBIDDEN, "{}", no.text());
    assert_eq!(closed.accepted(), 0);
}

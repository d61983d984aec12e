//! Connections from the tunnel to the local app: kept-alive HTTP/1.1 connections per app port, and one
//! multiplexed HTTP/2 (prior knowledge) connection per port, chosen by what the calling app spoke.
//!
//! A pool of its own rather than hyper-util's pooled client: the app is one host with a handful of
//! ports, and the generic pool (connections keyed by scheme and authority through SipHash, a checkout
//! future, a task spawned per request to hand the connection back) cost ~10,000 instructions per
//! request, 13% of the server side's (docs/performance.md). Here a connection goes back to its port's
//! idle list when the response body ends, and a request that a reused connection could not even send
//! (the app closed it while it was idle) is sent again on another.

use crate::path::body::{self, Body, BoxError};
use crate::path::errors::ProxyError;
use http::uri::{Parts, PathAndQuery};
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::io::{Error, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppHttp {
    Http1,
    Http2,
}

/// How long a kept-alive connection to the app may sit unused before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per app port; more are closed when their response ends.
const MAX_IDLE_PER_PORT: usize = 128;

/// Clients to the app. The app's address is the delivery's; callers give the request's URI as
/// `Delivery::app_uri` builds it (`http://app-host:port/path`).
pub struct AppClients {
    host: IpAddr,
    connect_timeout: Duration,
    h1: Arc<Mutex<IdleH1>>,
    h2: Mutex<HashMap<u16, http2::SendRequest<Body>>>,
}

#[derive(Default)]
struct IdleH1 {
    by_port: HashMap<u16, Vec<(http1::SendRequest<Body>, Instant)>>,
    /// A task closes connections idle for longer than [`IDLE_TIMEOUT`]; started with the first one.
    sweeping: bool,
}

impl IdleH1 {
    fn sweep(&mut self) {
        for list in self.by_port.values_mut() {
            list.retain(|(conn, since)| since.elapsed() < IDLE_TIMEOUT && !conn.is_closed());
        }
        self.by_port.retain(|_, list| !list.is_empty());
    }
}

/// Every third of the idle timeout, closes the idle connections past it; ends with the clients.
async fn sweep_idle(idle: Weak<Mutex<IdleH1>>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 3);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(idle) = idle.upgrade() else { return };
        idle.lock().unwrap_or_else(|p| p.into_inner()).sweep();
    }
}

impl AppClients {
    pub fn new(host: IpAddr, connect_timeout: Duration) -> AppClients {
        AppClients {
            host,
            connect_timeout,
            h1: Default::default(),
            h2: Default::default(),
        }
    }

    /// Sends `req` to the app in the given HTTP version and returns its response.
    pub async fn send(
        &self,
        which: AppHttp,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let Some(port) = req.uri().port_u16() else {
            return Err(ProxyError::BadTunnelRequest("app URI without a port"));
        };
        match which {
            AppHttp::Http1 => self.send_h1(port, req).await,
            AppHttp::Http2 => self.send_h2(port, req).await,
        }
    }

    async fn send_h1(&self, port: u16, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let mut req = origin_form(req);
        loop {
            let (mut conn, reused) = match self.idle_h1(port).await {
                Some(conn) => (conn, true),
                // Boxed: connecting is rare, and its future would make every request's larger.
                None => (Box::pin(self.connect_h1(port)).await?, false),
            };
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok(self.hand_back_after(port, conn, resp)),
                Err(mut e) => match e.take_message() {
                    // Never sent: the app had closed the idle connection; another one takes it.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(request_error(port, e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to `port` that is open and ready now. One that is not
    /// ready is still sending an earlier request's body (the app answered before reading it all):
    /// waiting for it would make this request wait on another client, so it is dropped instead, and
    /// its task finishes that exchange and closes it.
    async fn idle_h1(&self, port: u16) -> Option<http1::SendRequest<Body>> {
        loop {
            let (mut conn, since) = {
                let mut idle = self.h1.lock().unwrap_or_else(|p| p.into_inner());
                idle.by_port.get_mut(&port)?.pop()?
            };
            if since.elapsed() < IDLE_TIMEOUT && !conn.is_closed() && ready_now(&mut conn).await {
                return Some(conn);
            }
        }
    }

    async fn connect_h1(&self, port: u16) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = self.connect(port).await?;
        let (send, conn) = http1::handshake(io)
            .await
            .map_err(|e| request_error(port, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(port, error = %e, "connection to the app ended with an error");
            }
        });
        Ok(send)
    }

    /// The response, with a body that hands the connection back to the idle list when it ends.
    fn hand_back_after(
        &self,
        port: u16,
        conn: http1::SendRequest<Body>,
        resp: Response<Incoming>,
    ) -> Response<Body> {
        let back = HandBack {
            idle: self.h1.clone(),
            port,
            conn,
        };
        if resp.body().is_end_stream() {
            back.give();
            return resp.map(body::boxed);
        }
        resp.map(|inner| {
            body::boxed(Returning {
                inner,
                back: Some(back),
            })
        })
    }

    async fn send_h2(
        &self,
        port: u16,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let mut retried = false;
        loop {
            // A retry connects anew (replacing the port's connection), never the one that refused.
            let mut conn = match self.open_h2(port).filter(|_| !retried) {
                Some(conn) => conn,
                None => Box::pin(self.connect_h2(port)).await?,
            };
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(body::boxed)),
                Err(mut e) => match e.take_message() {
                    // Never sent: the app closed the connection (an idle timeout's GOAWAY) as the
                    // request was handed to it; a new connection takes it.
                    Some(unsent) if !retried => {
                        req = unsent;
                        retried = true;
                    }
                    _ => return Err(request_error(port, e.into_error())),
                },
            }
        }
    }

    fn open_h2(&self, port: u16) -> Option<http2::SendRequest<Body>> {
        let mut conns = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        match conns.get(&port) {
            Some(c) if !c.is_closed() => Some(c.clone()),
            Some(_) => conns.remove(&port).and(None),
            None => None,
        }
    }

    async fn connect_h2(&self, port: u16) -> Result<http2::SendRequest<Body>, ProxyError> {
        let io = self.connect(port).await?;
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .handshake(io)
            .await
            .map_err(|e| request_error(port, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(port, error = %e, "HTTP/2 connection to the app ended with an error");
            }
        });
        self.h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port, send.clone());
        Ok(send)
    }

    async fn connect(&self, port: u16) -> Result<TokioIo<TcpStream>, ProxyError> {
        let addr = SocketAddr::new(self.host, port);
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => return Err(ProxyError::AppConnect { port, source }),
            Err(_) => {
                let source = Error::new(ErrorKind::TimedOut, "connect timed out");
                return Err(ProxyError::AppConnect { port, source });
            }
        };
        let _ = tcp.set_nodelay(true);
        Ok(TokioIo::new(tcp))
    }
}

/// Whether `conn` takes a request now, without waiting.
async fn ready_now(conn: &mut http1::SendRequest<Body>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(matches!(conn.poll_ready(cx), Poll::Ready(Ok(()))))).await
}

fn request_error(port: u16, e: hyper::Error) -> ProxyError {
    ProxyError::AppRequest {
        port,
        source: Box::new(e),
    }
}

/// HTTP/1.1 requests carry the origin form (`/path?query`) and the authority in `Host`.
fn origin_form(mut req: Request<Body>) -> Request<Body> {
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let mut parts = Parts::default();
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req
}

/// An HTTP/1.1 connection on its way back to its port's idle list.
struct HandBack {
    idle: Arc<Mutex<IdleH1>>,
    port: u16,
    conn: http1::SendRequest<Body>,
}

impl HandBack {
    fn give(self) {
        if self.conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if !idle.sweeping {
            idle.sweeping = true;
            tokio::spawn(sweep_idle(Arc::downgrade(&self.idle)));
        }
        let list = idle.by_port.entry(self.port).or_default();
        if list.len() < MAX_IDLE_PER_PORT {
            list.push((self.conn, Instant::now()));
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body from the app that hands its connection back when it ends (and only then: a
    /// body dropped early leaves the connection mid-response, and it is closed with the sender).
    struct Returning {
        #[pin]
        inner: Incoming,
        back: Option<HandBack>,
    }
}

impl HttpBody for Returning {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let res = this.inner.as_mut().poll_frame(cx);
        match &res {
            // HTTP/2 senders stop polling once the body says it has ended, so the last frame hands
            // the connection back as well as the end does.
            Poll::Ready(None) | Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                if let Some(back) = this.back.take() {
                    back.give();
                }
            }
            Poll::Ready(Some(Err(_))) => drop(this.back.take()),
            _ => {}
        }
        res.map(|r| r.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// An app that answers `GET /n` with `n` bytes and counts the connections it accepted; with
    /// `close_idle` it closes each connection after its first response without saying so (as an app
    /// whose keep-alive timeout passes just after it answered).
    async fn app(h2: bool, close_idle: bool) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp, h2, close_idle));
            }
        });
        (port, accepted)
    }

    async fn serve(tcp: TcpStream, h2: bool, close_idle: bool) {
        if close_idle {
            return answer_once_then_close(tcp).await;
        }
        let svc = service_fn(|req: Request<Incoming>| async move {
            let n: usize = req.uri().path()[1..].parse().unwrap_or(0);
            Ok::<_, std::convert::Infallible>(Response::new(body::full(vec![b'x'; n])))
        });
        let io = TokioIo::new(tcp);
        if h2 {
            let b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let _ = b.serve_connection(io, svc).await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        }
    }

    /// One response that says nothing of closing (so the client keeps the connection), then a close.
    async fn answer_once_then_close(mut tcp: TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 4096];
        let Ok(len) = tcp.read(&mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..len]);
        let path = head.split(' ').nth(1).unwrap_or("/0");
        let n: usize = path[1..].parse().unwrap_or(0);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n{}",
            "x".repeat(n)
        );
        let _ = tcp.write_all(resp.as_bytes()).await;
    }

    fn get(port: u16, n: usize) -> Request<Body> {
        let uri = format!("http://127.0.0.1:{port}/{n}");
        Request::get(uri).body(body::empty()).unwrap()
    }

    async fn read(resp: Response<Body>) -> usize {
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    fn clients() -> AppClients {
        AppClients::new(Ipv4Addr::LOCALHOST.into(), Duration::from_secs(2))
    }

    #[tokio::test]
    async fn http1_connections_are_kept_alive_and_reused() {
        let (port, accepted) = app(false, false).await;
        let apps = clients();
        for n in [0, 10, 100_000, 5] {
            let resp = apps.send(AppHttp::Http1, get(port, n)).await.unwrap();
            assert_eq!(read(resp).await, n);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// What an HTTP/2 sender does with a body: frames until it says it has ended, then drop it.
    async fn read_until_end_stream(resp: Response<Body>) -> usize {
        let mut body = resp.into_body();
        let mut len = 0;
        while !body.is_end_stream() {
            match body.frame().await {
                Some(Ok(f)) => len += f.into_data().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        len
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_hands_the_connection_back_even_if_never_polled_past_it() {
        let (port, accepted) = app(false, false).await;
        let apps = clients();
        for n in [3, 200_000, 1] {
            let resp = apps.send(AppHttp::Http1, get(port, n)).await.unwrap();
            assert_eq!(read_until_end_stream(resp).await, n);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_while_idle_is_not_a_failed_request() {
        let (port, accepted) = app(false, true).await;
        let apps = clients();
        for n in 1..=5 {
            let resp = apps.send(AppHttp::Http1, get(port, n)).await.unwrap();
            assert_eq!(read(resp).await, n);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_body_dropped_early_closes_its_connection_and_the_next_request_works() {
        let (port, accepted) = app(false, false).await;
        let apps = clients();
        let resp = apps
            .send(AppHttp::Http1, get(port, 1_000_000))
            .await
            .unwrap();
        drop(resp);
        let resp = apps.send(AppHttp::Http1, get(port, 3)).await.unwrap();
        assert_eq!(read(resp).await, 3);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_http1_requests_each_get_a_connection() {
        let (port, accepted) = app(false, false).await;
        let apps = Arc::new(clients());
        let sends = (0..4).map(|_| {
            let apps = apps.clone();
            tokio::spawn(async move { apps.send(AppHttp::Http1, get(port, 7)).await })
        });
        // All four heads first, bodies read after: no connection is free before then.
        let mut resps = Vec::new();
        for s in sends {
            resps.push(s.await.unwrap().unwrap());
        }
        for r in resps {
            assert_eq!(read(r).await, 7);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        let resp = apps.send(AppHttp::Http1, get(port, 2)).await.unwrap();
        assert_eq!(read(resp).await, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    /// A request body sent in pieces from a channel, open until `tx` is dropped.
    fn streamed(port: u16, path: &str) -> (Request<Body>, tokio::sync::mpsc::Sender<bytes::Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, BoxError>(Frame::data(chunk)), rx))
        });
        let uri = format!("http://127.0.0.1:{port}{path}");
        let req = Request::post(uri)
            .body(body::boxed(http_body_util::StreamBody::new(frames)))
            .unwrap();
        (req, tx)
    }

    /// An app that echoes request bodies as they arrive.
    async fn echo_app() -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(req.into_body()))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn a_request_body_streams_to_the_app_while_its_response_streams_back() {
        let port = echo_app().await;
        let apps = clients();
        let (req, tx) = streamed(port, "/echo");
        let sending = tokio::spawn(async move {
            for i in 0..64u8 {
                tx.send(bytes::Bytes::from(vec![i; 8192])).await.unwrap();
            }
        });
        let resp = apps.send(AppHttp::Http1, req).await.unwrap();
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        sending.await.unwrap();
        assert_eq!(got.len(), 64 * 8192);
        assert!(got
            .chunks(8192)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8)));
        let resp = apps.send(AppHttp::Http1, get(port, 0)).await.unwrap();
        assert_eq!(
            read(resp).await,
            0,
            "the connection is reused after a streamed exchange"
        );
    }

    /// An app that answers as soon as it has read a request's head, never reading its body.
    async fn early_answer_app() -> (u16, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = tcp.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            let _ = tcp.write_all(ok).await;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn a_connection_still_sending_a_body_is_not_handed_to_the_next_request() {
        let (port, accepted) = early_answer_app().await;
        let apps = clients();
        let (req, tx) = streamed(port, "/upload");
        tx.send(bytes::Bytes::from_static(b"part")).await.unwrap();
        let resp = apps.send(AppHttp::Http1, req).await.unwrap();
        assert_eq!(read(resp).await, 0);
        // The first request's body is still open (its client is slow): the next one must not wait
        // for it.
        let next = tokio::time::timeout(
            Duration::from_secs(5),
            apps.send(AppHttp::Http1, get(port, 0)),
        )
        .await
        .expect("the next request waited for another client's body");
        assert_eq!(read(next.unwrap()).await, 0);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        drop(tx);
    }

    #[tokio::test]
    async fn http2_requests_share_one_connection() {
        let (port, accepted) = app(true, false).await;
        let apps = clients();
        for n in [1, 70_000, 0] {
            let resp = apps.send(AppHttp::Http2, get(port, n)).await.unwrap();
            assert_eq!(read(resp).await, n);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error_naming_it() {
        let port = {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let e = clients()
            .send(AppHttp::Http1, get(port, 1))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ProxyError::AppConnect { port: p, .. } if p == port),
            "{e}"
        );
    }

    #[test]
    fn http1_requests_go_in_origin_form_with_the_authority_as_host() {
        let req = origin_form(get(8080, 1));
        assert_eq!(req.uri().to_string(), "/1");
        assert_eq!(req.headers()[header::HOST], "127.0.0.1:8080");
        let mut kept = get(8080, 1);
        kept.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("reviews:9080"));
        assert_eq!(origin_form(kept).headers()[header::HOST], "reviews:9080");
    }
}

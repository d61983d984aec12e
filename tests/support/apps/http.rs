//! The demo HTTP app: HTTP/1.1 and HTTP/2 prior knowledge (h2c) on one port.
//!
//! Every response carries `x-app-name: <name>`, so a test can tell which backend answered.
//!
//! | route | behaviour |
//! | --- | --- |
//! | `GET /info`, any other `GET` | JSON: app, method, path, query, version, headers, peer |
//! | `POST /echo` | streams the request body back as it arrives (chunked on HTTP/1.1) |
//! | `POST /count` | reads the body incrementally, answers `{"bytes":N}` |
//! | `GET /chunked?chunks=N&size=M` | N chunks of M bytes, chunk `i` filled with `b'a' + i % 26` |
//! | `GET /slow?ms=N` | waits N ms, then answers `slept N ms` |
//! | `GET /ws` | WebSocket (HTTP/1.1 upgrade) echoing text and binary messages |
//! | `POST` [`grpc::UNARY_PATH`], [`grpc::CHAT_PATH`] | gRPC-style methods, see [`grpc`] |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{grpc, spawn_accept_loop, AppHandle, BoxError, Stopped};

/// Names the app that answered; set on every response.
pub const APP_NAME_HEADER: HeaderName = HeaderName::from_static("x-app-name");

/// Response body type of every route.
pub(crate) type AppBody = UnsyncBoxBody<Bytes, BoxError>;

struct App {
    name: String,
    name_header: HeaderValue,
}

/// Starts the HTTP app on `listener`, answering as `name`.
///
/// # Panics
///
/// If `name` is not a valid header value (it is sent as `x-app-name`), or outside a tokio runtime.
pub fn serve(listener: TcpListener, name: &str) -> AppHandle {
    let name_header = HeaderValue::from_str(name)
        .unwrap_or_else(|_| panic!("app name {name:?} is not a valid header value"));
    let app = Arc::new(App {
        name: name.to_owned(),
        name_header,
    });
    spawn_accept_loop(listener, "http", move |stream, peer, stopped| {
        serve_connection(app.clone(), stream, peer, stopped)
    })
}

/// Starts the HTTP app on a free loopback port, answering as `name`.
///
/// # Panics
///
/// If no loopback port can be bound, or as [`serve`].
pub fn serve_on_loopback(name: &str) -> AppHandle {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.set_nonblocking(true).expect("non-blocking listener");
    serve(TcpListener::from_std(l).expect("listener into tokio"), name)
}

async fn serve_connection(app: Arc<App>, stream: TcpStream, peer: SocketAddr, stopped: Stopped) {
    let service = service_fn(move |req| {
        let app = app.clone();
        let stopped = stopped.clone();
        async move { Ok::<_, Infallible>(app.handle(req, peer, stopped).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(error) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, %error, "http connection ended with an error");
    }
}

impl App {
    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        stopped: Stopped,
    ) -> Response<AppBody> {
        tracing::debug!(app = %self.name, method = %req.method(), uri = %req.uri(), version = ?req.version(), %peer, "request");
        let mut resp = self.route(req, peer, stopped).await;
        resp.headers_mut()
            .insert(APP_NAME_HEADER, self.name_header.clone());
        resp
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        stopped: Stopped,
    ) -> Response<AppBody> {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/ws") => websocket(req, stopped),
            (&Method::GET, "/chunked") => chunked(&req),
            (&Method::GET, "/slow") => slow(&req).await,
            (&Method::GET | &Method::HEAD, _) => self.info(&req, peer),
            (&Method::POST, "/echo") => echo(req),
            (&Method::POST, "/count") => count(req).await,
            (&Method::POST, grpc::UNARY_PATH) => grpc::unary(req).await,
            (&Method::POST, grpc::CHAT_PATH) => grpc::chat(req),
            _ => text(
                StatusCode::NOT_FOUND,
                format!("no route for {} {}\n", req.method(), path),
            ),
        }
    }

    fn info(&self, req: &Request<Incoming>, peer: SocketAddr) -> Response<AppBody> {
        let mut headers = Map::new();
        for name in req.headers().keys() {
            let mut values: Vec<Value> = req
                .headers()
                .get_all(name)
                .iter()
                .map(|v| Value::from(String::from_utf8_lossy(v.as_bytes())))
                .collect();
            let value = if values.len() == 1 {
                values.remove(0)
            } else {
                Value::Array(values)
            };
            headers.insert(name.as_str().to_owned(), value);
        }
        let body = json!({
            "app": self.name,
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "query": req.uri().query(),
            "version": format!("{:?}", req.version()),
            "headers": headers,
            "peer": peer.to_string(),
        });
        let mut resp = full(StatusCode::OK, body.to_string());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// A complete plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AppBody> {
    let mut resp = full(status, body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<AppBody> {
    let body = Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

/// The integer query parameter `key`, or the message for a 400 naming it.
fn query_u64(req: &Request<Incoming>, key: &str) -> Result<u64, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| format!("query parameter {key}=<integer> is required\n"))
}

/// `POST /echo`. The request body is wrapped as a stream so the response has no size hint: hyper
/// then always uses chunked encoding on HTTP/1.1, even when the request had a content-length.
fn echo(req: Request<Incoming>) -> Response<AppBody> {
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let frames = TryStreamExt::map_err(BodyStream::new(req.into_body()), BoxError::from);
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    if let Some(content_type) = content_type {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    resp
}

/// `POST /count`: counts body bytes frame by frame, never holding more than one frame.
async fn count(req: Request<Incoming>) -> Response<AppBody> {
    let mut body = req.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                }
            }
            Err(error) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("request body failed after {bytes} bytes: {error}\n"),
                )
            }
        }
    }
    let mut resp = full(StatusCode::OK, json!({ "bytes": bytes }).to_string());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `GET /chunked?chunks=N&size=M`: chunks are generated as the body is polled.
fn chunked(req: &Request<Incoming>) -> Response<AppBody> {
    let (chunks, size) = match (query_u64(req, "chunks"), query_u64(req, "size")) {
        (Ok(chunks), Ok(size)) => (chunks, size as usize),
        (Err(msg), _) | (_, Err(msg)) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let frames = futures_util::stream::iter(0..chunks).map(move |i| {
        let fill = b'a' + (i % 26) as u8;
        Ok::<_, BoxError>(Frame::data(Bytes::from(vec![fill; size])))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// `GET /slow?ms=N`: an in-flight request that a draining proxy must let finish.
async fn slow(req: &Request<Incoming>) -> Response<AppBody> {
    let ms = match query_u64(req, "ms") {
        Ok(ms) => ms,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    text(StatusCode::OK, format!("slept {ms} ms"))
}

/// `GET /ws`: answers the HTTP/1.1 upgrade, then echoes on the upgraded connection in its own task.
fn websocket(mut req: Request<Incoming>, stopped: Stopped) -> Response<AppBody> {
    let has_token = |name: HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    let is_upgrade = req.version() == http::Version::HTTP_11
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket");
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY);
    let (true, Some(key)) = (is_upgrade, key) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected an HTTP/1.1 WebSocket upgrade\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let session = async {
            match on_upgrade.await {
                Ok(upgraded) => websocket_echo(TokioIo::new(upgraded)).await,
                Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
            }
        };
        tokio::select! {
            () = session => {}
            () = stopped.wait() => {}
        }
    });
    let mut resp = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    resp
}

async fn websocket_echo<S>(io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    // tungstenite answers pings and the peer's close frame itself; reading until the stream ends
    // flushes those replies.
    while let Some(msg) = ws.next().await {
        let reply = match msg {
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => msg,
            Ok(_) => continue,
            Err(error) => {
                tracing::debug!(%error, "websocket session failed");
                return;
            }
        };
        if let Err(error) = ws.send(reply).await {
            tracing::debug!(%error, "websocket send failed");
            return;
        }
    }
}

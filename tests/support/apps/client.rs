//! Clients for the demo apps. Each call is bounded by [`TIMEOUT`] (or an explicit timeout) so a
//! broken proxy fails a test instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Channel, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::grpc;
use super::http::APP_NAME_HEADER;
use super::BoxError;

/// Upper bound on any one client call. Generous next to the sub-second calls tests make, short enough
/// that a stuck proxy fails the test quickly.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Request body type the clients send.
pub type ClientBody = UnsyncBoxBody<Bytes, BoxError>;

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    bounded_by(TIMEOUT, what, fut).await
}

async fn bounded_by<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {limit:?}"))?
}

fn full_body(body: Bytes) -> ClientBody {
    Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What a test usually wants to know about a response, with the body read in full.
#[derive(Debug, Clone)]
pub struct ResponseSummary {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ResponseSummary {
    /// The `x-app-name` of the app that answered.
    pub fn app_name(&self) -> Option<&str> {
        self.headers
            .get(APP_NAME_HEADER)
            .and_then(|v| v.to_str().ok())
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (e.g. the `/info` route).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.text()))
    }

    async fn read(resp: Response<Incoming>) -> Result<Self> {
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .with_context(|| format!("reading {} response body", parts.status))?
            .to_bytes();
        Ok(Self {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }
}

fn build_request(
    uri: String,
    method: Method,
    headers: &[(&str, &str)],
    body: ClientBody,
) -> Result<Request<ClientBody>> {
    let mut req = Request::builder()
        .method(method)
        .uri(&uri)
        .body(body)
        .with_context(|| format!("building request for {uri}"))?;
    for (name, value) in headers {
        let name = HeaderName::try_from(*name).with_context(|| format!("header name {name:?}"))?;
        let value =
            HeaderValue::try_from(*value).with_context(|| format!("header value {value:?}"))?;
        req.headers_mut().append(name, value);
    }
    Ok(req)
}

// === HTTP/1.1 ===

/// One HTTP/1.1 connection, kept open across requests (to observe keep-alive and connection reuse).
#[derive(Debug)]
pub struct Http1Conn {
    addr: SocketAddr,
    local_addr: SocketAddr,
    sender: http1::SendRequest<ClientBody>,
    conn: JoinHandle<()>,
    timeout: Duration,
}

impl Http1Conn {
    /// Connects to `addr` and performs the (trivial) HTTP/1 handshake.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        bounded("HTTP/1.1 connect", async {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            let local_addr = stream.local_addr()?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
            let conn = tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%error, "client HTTP/1.1 connection failed");
                }
            });
            Ok(Self {
                addr,
                local_addr,
                sender,
                conn,
                timeout: TIMEOUT,
            })
        })
        .await
    }

    /// The client side of the connection; the app reports it as `peer` when reached directly.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the server (or a proxy) has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request on this connection and reads the whole response. A `host` header is added
    /// unless `headers` has one.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<ResponseSummary> {
        let req = build_request(path.to_owned(), method, headers, full_body(body))?;
        self.send_request(req).await
    }

    /// Sends a prepared request; see [`Http1Conn::send`].
    pub async fn send_request(&mut self, mut req: Request<ClientBody>) -> Result<ResponseSummary> {
        if !req.headers().contains_key(header::HOST) {
            let host = HeaderValue::try_from(self.addr.to_string())?;
            req.headers_mut().insert(header::HOST, host);
        }
        let what = format!("HTTP/1.1 {} {}", req.method(), req.uri());
        bounded_by(self.timeout, &what.clone(), async {
            self.sender
                .ready()
                .await
                .with_context(|| format!("{what}: connection closed"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .with_context(|| what.clone())?;
            ResponseSummary::read(resp).await
        })
        .await
    }
}

impl Drop for Http1Conn {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// One request over a fresh HTTP/1.1 connection.
pub async fn http1(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<ResponseSummary> {
    Http1Conn::connect(addr)
        .await?
        .send(method, path, headers, body)
        .await
}

/// `POST`s `total_bytes` to `path` over HTTP/1.1 with chunked encoding, in chunks of `chunk` bytes
/// generated as the connection asks for them (the body is never held whole).
pub async fn upload(
    addr: SocketAddr,
    path: &str,
    total_bytes: u64,
    chunk: usize,
) -> Result<ResponseSummary> {
    upload_within(addr, path, total_bytes, chunk, TIMEOUT).await
}

/// [`upload`] with its own time limit, for bodies too large for [`TIMEOUT`].
pub async fn upload_within(
    addr: SocketAddr,
    path: &str,
    total_bytes: u64,
    chunk: usize,
    limit: Duration,
) -> Result<ResponseSummary> {
    ensure!(chunk > 0, "upload chunk size must be positive");
    // One chunk's worth of pattern, sliced per frame: `Bytes::slice` shares it instead of copying.
    let pattern: Bytes = (0..chunk).map(|i| b'a' + (i % 26) as u8).collect();
    let frames = futures_util::stream::unfold(total_bytes, move |left| {
        let pattern = pattern.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk as u64) as usize;
            Some((
                Ok::<_, BoxError>(Frame::data(pattern.slice(..n))),
                left - n as u64,
            ))
        }
    });
    let body = StreamBody::new(frames).boxed_unsync();
    let req = build_request(path.to_owned(), Method::POST, &[], body)?;
    let mut conn = Http1Conn::connect(addr).await?;
    conn.timeout = limit;
    conn.send_request(req).await
}

// === HTTP/2 ===

async fn h2_connect(addr: SocketAddr) -> Result<http2::SendRequest<ClientBody>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .context("HTTP/2 handshake")?;
    // The connection task ends by itself once every `SendRequest` and stream is dropped.
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "client HTTP/2 connection failed");
        }
    });
    Ok(sender)
}

/// One request over a fresh HTTP/2 prior-knowledge (h2c) connection.
pub async fn h2(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<ResponseSummary> {
    let what = format!("HTTP/2 {method} {path}");
    bounded(&what.clone(), async {
        let mut sender = h2_connect(addr).await?;
        let req = build_request(
            format!("http://{addr}{path}"),
            method,
            headers,
            full_body(body),
        )?;
        let resp = sender.send_request(req).await.context(what)?;
        ResponseSummary::read(resp).await
    })
    .await
}

// === gRPC ===

/// Result of [`grpc_unary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcUnaryReply {
    /// The one reply message, if the server sent one.
    pub message: Option<Bytes>,
    /// `grpc-status` from the trailers (or from the headers, for a trailers-only response).
    pub grpc_status: String,
    pub grpc_message: Option<String>,
}

/// Result of [`grpc_chat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcChatReply {
    /// Replies in arrival order, one per message sent.
    pub replies: Vec<String>,
    pub grpc_status: String,
}

fn grpc_request(addr: SocketAddr, path: &str, body: ClientBody) -> Result<Request<ClientBody>> {
    build_request(
        format!("http://{addr}{path}"),
        Method::POST,
        &[("content-type", grpc::CONTENT_TYPE), ("te", "trailers")],
        body,
    )
}

/// Reads a gRPC response body: messages as they complete, then the trailers.
struct GrpcReader {
    body: Incoming,
    decoder: grpc::Decoder,
    trailers: Option<HeaderMap>,
}

impl GrpcReader {
    fn new(resp: Response<Incoming>) -> Result<(HeaderMap, Self)> {
        let (parts, body) = resp.into_parts();
        ensure!(
            parts.status == StatusCode::OK,
            "gRPC call answered HTTP {}",
            parts.status
        );
        let reader = Self {
            body,
            decoder: grpc::Decoder::default(),
            trailers: None,
        };
        Ok((parts.headers, reader))
    }

    /// The next message, or `None` once the body has ended (trailers, if any, are then stored).
    async fn next_message(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(msg) = self.decoder.next_message()? {
                return Ok(Some(msg));
            }
            match self.body.frame().await {
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
                Some(frame) => match frame.context("reading gRPC response")?.into_data() {
                    Ok(data) => self.decoder.push(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
            }
        }
    }

    /// Reads to the end and returns `(grpc-status, grpc-message)`, looking in the trailers and then in
    /// the response headers (a trailers-only response).
    async fn status(mut self, headers: &HeaderMap) -> Result<(String, Option<String>)> {
        if let Some(extra) = self.next_message().await? {
            bail!("unexpected extra gRPC message {extra:?}");
        }
        let trailers = self.trailers.as_ref();
        let get = |name: &str| {
            trailers
                .and_then(|t| t.get(name))
                .or_else(|| headers.get(name))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let status = get("grpc-status").context("gRPC response has no grpc-status")?;
        Ok((status, get("grpc-message")))
    }
}

/// Calls [`grpc::UNARY_PATH`] with `payload` over a fresh HTTP/2 connection.
pub async fn grpc_unary(addr: SocketAddr, payload: &[u8]) -> Result<GrpcUnaryReply> {
    bounded("gRPC unary call", async {
        let mut sender = h2_connect(addr).await?;
        let req = grpc_request(addr, grpc::UNARY_PATH, full_body(grpc::encode(payload)))?;
        let resp = sender.send_request(req).await.context("gRPC unary call")?;
        let (headers, mut reader) = GrpcReader::new(resp)?;
        let message = reader.next_message().await?;
        let (grpc_status, grpc_message) = reader.status(&headers).await?;
        Ok(GrpcUnaryReply {
            message,
            grpc_status,
            grpc_message,
        })
    })
    .await
}

/// Calls [`grpc::CHAT_PATH`], sending each message only after the reply to the previous one has
/// arrived; this only completes if both directions really stream at once.
pub async fn grpc_chat(addr: SocketAddr, messages: &[&str]) -> Result<GrpcChatReply> {
    bounded("gRPC chat call", async {
        let mut sender = h2_connect(addr).await?;
        let (mut tx, body) = Channel::<Bytes, BoxError>::new(1);
        let req = grpc_request(addr, grpc::CHAT_PATH, body.boxed_unsync())?;
        let resp = sender.send_request(req).await.context("gRPC chat call")?;
        let (headers, mut reader) = GrpcReader::new(resp)?;
        let mut replies = Vec::with_capacity(messages.len());
        for msg in messages {
            tx.send_data(grpc::encode(msg.as_bytes()))
                .await
                .context("request stream closed early")?;
            let reply = reader
                .next_message()
                .await?
                .with_context(|| format!("stream ended before the reply to {msg:?}"))?;
            replies.push(String::from_utf8_lossy(&reply).into_owned());
        }
        // Ends the request stream; the server then sends its trailers.
        drop(tx);
        let (grpc_status, _) = reader.status(&headers).await?;
        Ok(GrpcChatReply {
            replies,
            grpc_status,
        })
    })
    .await
}

// === WebSocket ===

/// Opens a WebSocket to `/ws`, sends each message as text and waits for its echo before sending the
/// next, then closes cleanly. Returns the echoes.
pub async fn websocket_echo(addr: SocketAddr, messages: &[&str]) -> Result<Vec<String>> {
    Ok(websocket_exchange(addr, messages).await?.0)
}

/// [`websocket_echo`], also returning the headers of the handshake's 101 answer (lower-case names).
pub async fn websocket_exchange(
    addr: SocketAddr,
    messages: &[&str],
) -> Result<(Vec<String>, Vec<(String, String)>)> {
    bounded("websocket echo", async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut ws, answer) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
            .await
            .context("websocket handshake")?;
        let head: Vec<(String, String)> = answer
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let mut echoes = Vec::with_capacity(messages.len());
        for msg in messages {
            ws.send(Message::text(*msg)).await?;
            loop {
                match ws.next().await.context("websocket closed early")?? {
                    Message::Text(text) => {
                        echoes.push(text.as_str().to_owned());
                        break;
                    }
                    Message::Binary(bin) => {
                        echoes.push(String::from_utf8_lossy(&bin).into_owned());
                        break;
                    }
                    Message::Close(frame) => bail!("websocket closed early: {frame:?}"),
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
        }
        ws.close(None).await.context("sending websocket close")?;
        // Wait for the server's close reply so the exchange finishes cleanly.
        while let Some(msg) = ws.next().await {
            msg.context("awaiting websocket close reply")?;
        }
        Ok((echoes, head))
    })
    .await
}

// === TCP ===

/// Connects, writes `payload`, shuts down the write side, and returns everything received until the
/// server closes. Against [`super::tcp::echo`] that is `payload` followed by its EOF trailer.
pub async fn tcp_half_close(addr: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    bounded("tcp half-close exchange", async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        // Read concurrently with writing: a large payload would otherwise fill both socket buffers
        // while the echo waits for us to read.
        let (mut rd, mut wr) = stream.split();
        let write = async {
            wr.write_all(payload).await?;
            wr.shutdown().await
        };
        let mut received = Vec::new();
        let read = rd.read_to_end(&mut received);
        let (written, read) = tokio::join!(write, read);
        written.context("writing payload")?;
        read.context("reading reply")?;
        Ok(received)
    })
    .await
}

/// Connects and, sending nothing, reads the first line the server sends (line ending removed).
pub async fn read_banner(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let read = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .await
            .context("reading banner")?;
        ensure!(!line.is_empty(), "connection closed before any banner");
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| anyhow!("no banner from {addr} within {timeout:?}"))?
}

// === A stream in flight ===

/// How a stream in flight ended once its backend went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The response body ended with an error (a reset, a cut connection).
    Error(String),
    /// The response body ended cleanly (for gRPC: its trailers carried this `grpc-status`).
    Ended(Option<String>),
    /// Nothing happened within the wait: the caller would hang.
    Hung,
}

/// A `POST` streaming both ways (`/echo`, or the gRPC chat with `grpc`), one round at a time, so a test
/// can take the backend away between rounds and see what the caller gets.
pub struct StreamInFlight {
    tx: http_body_util::channel::Sender<Bytes, BoxError>,
    body: Incoming,
    pub status: StatusCode,
    /// Keeps an HTTP/1 connection's task alive.
    _conn: Option<JoinHandle<()>>,
}

impl StreamInFlight {
    /// Opens the stream over HTTP/1.1 (`version` HTTP_11) or HTTP/2 prior knowledge.
    pub async fn open(addr: SocketAddr, version: Version, grpc_chat: bool) -> Result<Self> {
        bounded("opening a stream", async {
            let (tx, body) = Channel::<Bytes, BoxError>::new(1);
            let body = body.boxed_unsync();
            let req = if grpc_chat {
                grpc_request(addr, grpc::CHAT_PATH, body)?
            } else {
                build_request(format!("http://{addr}/echo"), Method::POST, &[], body)?
            };
            let (resp, conn) = if version == Version::HTTP_2 {
                let mut sender = h2_connect(addr).await?;
                (sender.send_request(req).await?, None)
            } else {
                let stream = TcpStream::connect(addr).await?;
                let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (sender.send_request(req).await?, Some(task))
            };
            Ok(StreamInFlight {
                tx,
                status: resp.status(),
                body: resp.into_body(),
                _conn: conn,
            })
        })
        .await
    }

    /// Sends `chunk` and reads until as many bytes came back.
    pub async fn round(&mut self, chunk: Bytes) -> Result<()> {
        bounded("a round on the stream", async {
            let want = chunk.len();
            self.tx
                .send_data(chunk)
                .await
                .context("request stream closed")?;
            let mut got = 0;
            while got < want {
                let frame = self.body.frame().await.context("stream ended")??;
                got += frame.data_ref().map_or(0, |d| d.len());
            }
            Ok(())
        })
        .await
    }

    /// Waits up to `within` for the response to end, reading whatever still arrives.
    pub async fn end(mut self, within: Duration) -> StreamEnd {
        let ending = async {
            loop {
                match self.body.frame().await {
                    None => return StreamEnd::Ended(None),
                    Some(Err(e)) => return StreamEnd::Error(e.to_string()),
                    Some(Ok(f)) => {
                        if let Ok(trailers) = f.into_trailers() {
                            let status = trailers
                                .get("grpc-status")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            return StreamEnd::Ended(status);
                        }
                    }
                }
            }
        };
        tokio::time::timeout(within, ending)
            .await
            .unwrap_or(StreamEnd::Hung)
    }
}

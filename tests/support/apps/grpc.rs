//! gRPC-style methods served by [`super::http::serve`], and the message framing shared with
//! [`super::client`].
//!
//! This is not a full gRPC implementation: payloads are raw bytes rather than protobuf, and
//! compression is not supported. It speaks the wire format a proxy has to carry, though: HTTP/2,
//! `content-type: application/grpc`, 5-byte length-prefixed messages and `grpc-status` trailers.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};

use super::http::{text, AppBody};
use super::BoxError;

/// Unary method: one request message, one reply `echo: <payload>`. The payload `fail` gets
/// `grpc-status: 3` and no message instead.
pub const UNARY_PATH: &str = "/weft.demo.Echo/Unary";
/// Bidirectional streaming method: each request message is answered with `echo: <payload>` as soon as
/// it arrives; `grpc-status: 0` follows once the request stream ends.
pub const CHAT_PATH: &str = "/weft.demo.Echo/Chat";
/// The payload that makes [`UNARY_PATH`] fail.
pub const FAIL_PAYLOAD: &[u8] = b"fail";

pub const CONTENT_TYPE: &str = "application/grpc";

/// `OK`
pub const STATUS_OK: &str = "0";
/// `INVALID_ARGUMENT`
pub const STATUS_INVALID_ARGUMENT: &str = "3";

/// Largest message either side accepts. The demo payloads are tiny; the cap only stops a corrupt
/// length prefix from making a reader buffer without bound.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
const PREFIX_LEN: usize = 5;

/// Frames `payload` as one uncompressed length-prefixed message.
pub fn encode(payload: &[u8]) -> Bytes {
    let len = u32::try_from(payload.len()).expect("gRPC message fits in u32");
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + payload.len());
    buf.put_u8(0);
    buf.put_u32(len);
    buf.put_slice(payload);
    buf.freeze()
}

/// Why a message stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The compressed flag was set; this demo never negotiates compression.
    Compressed,
    /// The length prefix exceeds [`MAX_MESSAGE`].
    TooLarge(usize),
    /// The stream ended partway through a message.
    Truncated { buffered: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Compressed => write!(f, "compressed gRPC messages are not supported"),
            Self::TooLarge(len) => {
                write!(f, "gRPC message of {len} bytes exceeds {MAX_MESSAGE}")
            }
            Self::Truncated { buffered } => {
                write!(
                    f,
                    "stream ended inside a gRPC message ({buffered} bytes buffered)"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reassembles length-prefixed messages from data frames that may split or merge them.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, or `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if self.buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(DecodeError::Compressed);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(DecodeError::TooLarge(len));
        }
        if self.buf.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Checks that the stream did not end partway through a message.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            buffered => Err(DecodeError::Truncated { buffered }),
        }
    }
}

fn echo_reply(payload: &[u8]) -> Bytes {
    let mut reply = BytesMut::with_capacity(6 + payload.len());
    reply.put_slice(b"echo: ");
    reply.put_slice(payload);
    encode(&reply)
}

fn status_trailers(status: &'static str, message: Option<&str>) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    if let Some(message) = message.and_then(|m| HeaderValue::from_str(m).ok()) {
        trailers.insert("grpc-message", message);
    }
    trailers
}

fn grpc_response(body: AppBody) -> Response<AppBody> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    resp
}

fn frames_body(frames: Vec<Frame<Bytes>>) -> AppBody {
    StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok::<_, BoxError>),
    ))
    .boxed_unsync()
}

/// Whether the request claims to be gRPC; gRPC servers answer anything else with 415.
fn is_grpc(req: &http::Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(CONTENT_TYPE))
}

fn not_grpc() -> Response<AppBody> {
    text(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "expected content-type application/grpc\n",
    )
}

/// [`UNARY_PATH`]: reads the whole (small) request, then answers with one message and trailers.
pub(crate) async fn unary(req: http::Request<Incoming>) -> Response<AppBody> {
    if !is_grpc(&req) {
        return not_grpc();
    }
    let body = match Limited::new(req.into_body(), PREFIX_LEN + MAX_MESSAGE)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return text(StatusCode::BAD_REQUEST, format!("request body: {error}\n")),
    };
    let mut decoder = Decoder::default();
    decoder.push(&body);
    let frames = match (decoder.next_message(), decoder.finish()) {
        (Ok(Some(payload)), _) if payload == FAIL_PAYLOAD => vec![Frame::trailers(
            status_trailers(STATUS_INVALID_ARGUMENT, Some("asked to fail")),
        )],
        (Ok(Some(payload)), Ok(())) => vec![
            Frame::data(echo_reply(&payload)),
            Frame::trailers(status_trailers(STATUS_OK, None)),
        ],
        (Ok(Some(_)), Err(_)) => vec![Frame::trailers(status_trailers(
            STATUS_INVALID_ARGUMENT,
            Some("expected exactly one message"),
        ))],
        (Ok(None), _) => vec![Frame::trailers(status_trailers(
            STATUS_INVALID_ARGUMENT,
            Some("expected one message"),
        ))],
        (Err(error), _) => vec![Frame::trailers(status_trailers(
            STATUS_INVALID_ARGUMENT,
            Some(&error.to_string()),
        ))],
    };
    grpc_response(frames_body(frames))
}

/// State of one [`CHAT_PATH`] call, driven by polls of the response body.
struct Chat {
    request: Incoming,
    decoder: Decoder,
    replies: VecDeque<Bytes>,
    request_done: bool,
    finished: bool,
}

impl Chat {
    /// The next response frame. Reading the request only when the response wants a frame keeps this
    /// task-free and gives natural backpressure: a client that stops reading replies stops being read.
    async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(reply) = self.replies.pop_front() {
                return Some(Ok(Frame::data(reply)));
            }
            if self.request_done {
                self.finished = true;
                let trailers = match self.decoder.finish() {
                    Ok(()) => status_trailers(STATUS_OK, None),
                    Err(error) => {
                        status_trailers(STATUS_INVALID_ARGUMENT, Some(&error.to_string()))
                    }
                };
                return Some(Ok(Frame::trailers(trailers)));
            }
            match self.request.frame().await {
                None => self.request_done = true,
                Some(Err(error)) => {
                    self.finished = true;
                    tracing::debug!(%error, "gRPC chat request failed");
                    return Some(Err(error.into()));
                }
                Some(Ok(frame)) => {
                    // Request trailers carry nothing this demo uses.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    self.decoder.push(&data);
                    loop {
                        match self.decoder.next_message() {
                            Ok(Some(payload)) => self.replies.push_back(echo_reply(&payload)),
                            Ok(None) => break,
                            Err(error) => {
                                self.finished = true;
                                return Some(Ok(Frame::trailers(status_trailers(
                                    STATUS_INVALID_ARGUMENT,
                                    Some(&error.to_string()),
                                ))));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`CHAT_PATH`]: answers each message as it arrives, then sends trailers when the request ends.
pub(crate) fn chat(req: http::Request<Incoming>) -> Response<AppBody> {
    if !is_grpc(&req) {
        return not_grpc();
    }
    let chat = Chat {
        request: req.into_body(),
        decoder: Decoder::default(),
        replies: VecDeque::new(),
        request_done: false,
        finished: false,
    };
    let frames = futures_util::stream::unfold(chat, |mut chat| async move {
        let frame = chat.next_frame().await?;
        Some((frame, chat))
    });
    grpc_response(StreamBody::new(frames).boxed_unsync())
}

//! The client side of one peer connection, on the `h2` crate itself rather than hyper's HTTP/2 client.
//!
//! Why not hyper's client: it hands every request through a channel to the connection's task, which
//! spawns one more task per request to wait for the response and send it back through a oneshot, and it
//! carries an upgraded stream's writes through another task. Here the request's own task opens the
//! stream, awaits the response and reads the body; the connection's task only reads and writes the
//! socket. That took a spawn, two channels and two task wake-ups out of every request (docs/performance.md,
//! "the peer hop on h2").
//!
//! What hyper did that this module now does: flow-control bookkeeping for request bodies (reserve,
//! wait for capacity, send) and response bodies (release what was read), keep-alive PINGs that close a
//! dead connection, waking a parked connection when its last handle goes, and CONNECT streams as byte
//! streams.

use crate::path::body::{Body, BoxError};
use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use h2::client::{Connection, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Clone, Copy)]
/// HTTP/2 settings of a peer connection (the server side advertises the same, `listen::http2_builder`).
pub struct H2Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame: u32,
    /// Bytes h2 buffers per stream before a sender waits for the socket: room for two whole frames.
    pub max_send_buffer: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// A response header block longer than this is refused (as hyper's client did).
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Opens HTTP/2 on `io` and returns the request handle and the connection, which must be driven by
/// [`drive`] on a task of its own.
pub async fn handshake<T>(
    io: T,
    s: &H2Settings,
) -> Result<(SendRequest<Bytes>, Connection<T, Bytes>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    h2::client::Builder::new()
        .initial_window_size(s.stream_window)
        .initial_connection_window_size(s.connection_window)
        .max_frame_size(s.max_frame)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(s.max_send_buffer)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake(io)
        .await
}

/// Shared between a connection's task, its keep-alive task and its pool entry. Plain flags and one
/// waker: the connection's task checks them on every wake-up, where a `select!` over a `Notify` and a
/// timer cost ~1,000 instructions per request (docs/performance.md, step 8).
#[derive(Default)]
pub struct ConnState {
    closed: AtomicBool,
    /// Set by the keep-alive task when a PING went unanswered.
    dead: AtomicBool,
    /// Set when the peer's certificate turns up on the revocation list.
    revoked: AtomicBool,
    driver: AtomicWaker,
}

impl ConnState {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Keeps the pool from handing the connection out again.
    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Closes the connection now, streams and all: its peer is no longer to be trusted.
    pub fn revoke(&self) {
        self.mark_closed();
        self.revoked.store(true, Ordering::Release);
        self.driver.wake();
    }
}

/// Held by every handle to a connection; when the last one goes, the connection's task is woken so the
/// connection closes as soon as its last stream ends (h2 does not wake a parked connection for this).
pub struct Release(pub Arc<ConnState>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.driver.wake();
    }
}

/// Why a connection's task ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnEnd {
    #[error(transparent)]
    H2(#[from] h2::Error),
    #[error("no PING answer within {0:?}")]
    KeepaliveTimeout(Duration),
    #[error("the peer's certificate is revoked")]
    Revoked,
}

/// Drives the connection until it closes. A keep-alive task sends a PING every `keepalive_interval`;
/// one unanswered for `keepalive_timeout` closes the connection (its streams fail and the pool
/// reconnects).
pub async fn drive<T>(
    mut conn: Connection<T, Bytes>,
    state: Arc<ConnState>,
    s: &H2Settings,
) -> Result<(), ConnEnd>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(pings) = conn.ping_pong() {
        tokio::spawn(keepalive(
            pings,
            state.clone(),
            s.keepalive_interval,
            s.keepalive_timeout,
        ));
    }
    let end = std::future::poll_fn(|cx| {
        state.driver.register(cx.waker());
        if state.dead.load(Ordering::Acquire) {
            return Poll::Ready(Err(ConnEnd::KeepaliveTimeout(s.keepalive_timeout)));
        }
        if state.revoked.load(Ordering::Acquire) {
            return Poll::Ready(Err(ConnEnd::Revoked));
        }
        // Polled again after the last handle went, the connection sees that and closes once idle.
        Pin::new(&mut conn).poll(cx).map_err(ConnEnd::from)
    })
    .await;
    state.mark_closed();
    end
}

async fn keepalive(
    mut pings: h2::PingPong,
    state: Arc<ConnState>,
    every: Duration,
    patience: Duration,
) {
    while !state.is_closed() {
        tokio::time::sleep(every).await;
        // An error means the connection is gone: its own task reports why.
        if pings.send_ping(h2::Ping::opaque()).is_err() {
            return;
        }
        let pong = std::future::poll_fn(|cx| pings.poll_pong(cx));
        match tokio::time::timeout(patience, pong).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                state.dead.store(true, Ordering::Release);
                state.driver.wake();
                return;
            }
        }
    }
}

/// A response body read straight from the peer's stream, giving flow-control credit back as it is read.
pub struct RecvBody {
    stream: RecvStream,
    size: SizeHint,
    data_done: bool,
}

impl RecvBody {
    pub fn new(stream: RecvStream, headers: &HeaderMap) -> RecvBody {
        let mut size = SizeHint::default();
        if let Some(n) = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            size.set_exact(n);
        }
        RecvBody {
            stream,
            size,
            data_done: false,
        }
    }
}

impl HttpBody for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

/// Sends a request body on its stream as flow control allows, then ends the stream (with trailers when
/// the body has them). A body that fails resets the stream, so the peer does not wait for the rest.
pub struct Pipe {
    body: Body,
    tx: SendStream<Bytes>,
    pending: Option<Bytes>,
}

/// How a request body's sending ended (logged at debug by whoever spawned it).
#[derive(Debug, thiserror::Error)]
pub enum PipeEnd {
    #[error("the request body failed: {0}")]
    Body(BoxError),
    #[error("the peer's stream failed: {0}")]
    Stream(h2::Error),
    #[error("the peer reset the stream ({0:?})")]
    Reset(Reason),
}

impl Pipe {
    pub fn new(body: Body, tx: SendStream<Bytes>) -> Pipe {
        Pipe {
            body,
            tx,
            pending: None,
        }
    }

    /// Sends what flow control allows of the chunk on hand; Ready once all of it went out.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipeEnd>> {
        while let Some(chunk) = self.pending.as_mut() {
            if chunk.is_empty() {
                self.pending = None;
                break;
            }
            self.tx.reserve_capacity(chunk.len());
            match ready!(self.tx.poll_capacity(cx)) {
                // No capacity yet, with a waker registered: asked again below.
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let part = chunk.split_to(n.min(chunk.len()));
                    self.tx.send_data(part, false).map_err(PipeEnd::Stream)?;
                }
                Some(Err(e)) => return Poll::Ready(Err(PipeEnd::Stream(e))),
                None => return Poll::Ready(Err(self.reset_reason(cx))),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn reset_reason(&mut self, cx: &mut Context<'_>) -> PipeEnd {
        match self.tx.poll_reset(cx) {
            Poll::Ready(Ok(r)) => PipeEnd::Reset(r),
            Poll::Ready(Err(e)) => PipeEnd::Stream(e),
            Poll::Pending => PipeEnd::Reset(Reason::STREAM_CLOSED),
        }
    }
}

impl Future for Pipe {
    type Output = Result<(), PipeEnd>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            // The peer may answer and reset before taking the whole body (a 413, say): stop then.
            if let Poll::Ready(r) = this.tx.poll_reset(cx) {
                return Poll::Ready(Err(r.map_or_else(PipeEnd::Stream, PipeEnd::Reset)));
            }
            ready!(this.poll_send_pending(cx))?;
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                None => {
                    this.tx
                        .send_data(Bytes::new(), true)
                        .map_err(PipeEnd::Stream)?;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => {
                    this.tx.send_reset(Reason::CANCEL);
                    return Poll::Ready(Err(PipeEnd::Body(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pending = Some(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.tx.send_trailers(trailers).map_err(PipeEnd::Stream)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
            }
        }
    }
}

/// A CONNECT stream to the peer as a byte stream (opaque TCP and HTTP/1.1 upgrades).
pub struct Tunnel {
    tx: SendStream<Bytes>,
    rx: RecvStream,
    buf: Bytes,
}

impl Tunnel {
    pub fn new(tx: SendStream<Bytes>, rx: RecvStream) -> Tunnel {
        Tunnel {
            tx,
            rx,
            buf: Bytes::new(),
        }
    }
}

fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.buf.is_empty() {
            match ready!(self.rx.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => self.buf = data,
                Some(Err(e)) => {
                    return Poll::Ready(match e.reason() {
                        Some(Reason::NO_ERROR) | Some(Reason::CANCEL) => Ok(()),
                        Some(Reason::STREAM_CLOSED) => {
                            Err(io::Error::new(io::ErrorKind::BrokenPipe, e))
                        }
                        _ => Err(io_error(e)),
                    })
                }
            }
        }
        let n = self.buf.len().min(out.remaining());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        // Credit goes back as the bytes are taken, so a slow reader slows the peer's sender.
        let _ = self.rx.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.tx.reserve_capacity(data.len());
        let mut capacity = ready!(self.tx.poll_capacity(cx));
        while let Some(Ok(0)) = capacity {
            capacity = ready!(self.tx.poll_capacity(cx));
        }
        let sent = match capacity {
            Some(Ok(n)) => {
                let n = n.min(data.len());
                self.tx
                    .send_data(Bytes::copy_from_slice(&data[..n]), false)
                    .ok()
                    .map(|()| n)
            }
            Some(Err(_)) | None => None,
        };
        if let Some(n) = sent {
            return Poll::Ready(Ok(n));
        }
        // The stream is gone: its reset says why.
        Poll::Ready(Err(match ready!(self.tx.poll_reset(cx)) {
            Ok(Reason::NO_ERROR) | Ok(Reason::CANCEL) | Ok(Reason::STREAM_CLOSED) => {
                io::ErrorKind::BrokenPipe.into()
            }
            Ok(reason) => io::Error::other(h2::Error::from(reason)),
            Err(e) => io_error(e),
        }))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes what is queued as the connection's task runs; nothing is held back here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            self.tx
                .send_data(Bytes::new(), true)
                .or_else(|e| match e.reason() {
                    // Already ended or reset by the peer: nothing left to close.
                    Some(_) => Ok(()),
                    None => Err(io_error(e)),
                }),
        )
    }
}

//! Copying bytes both ways between two streams, with half-close carried across (EOF on one side shuts
//! down writing on the other), bytes counted, and an idle timeout: a stream on which no byte has moved
//! either way for `limits.idle_timeout` is closed, so a silent peer or app cannot hold it forever.

use crate::state::Proxy;
use crate::telemetry::labels::{Listener, Reason};
use crate::telemetry::metrics::{BytesLabels, Direction, Flow, Metrics};
use std::io::{Error, ErrorKind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Which stream this is, for its counters, and how long it may stay silent.
#[derive(Clone, Copy, Debug)]
pub struct Splice {
    pub direction: Direction,
    pub listener: Listener,
    pub idle: Duration,
}

impl Splice {
    pub fn new(proxy: &Proxy, direction: Direction, listener: Listener) -> Splice {
        Splice {
            direction,
            listener,
            idle: proxy.config.limits.idle_timeout.get(),
        }
    }
}

/// Copies until both directions are done. Returns (bytes a→b, bytes b→a), or `ErrorKind::TimedOut`
/// when nothing moved for `how.idle` (counted as `reason="idle_timeout"`).
pub async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    metrics: &Metrics,
    how: Splice,
) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let mut watched = Watched {
        inner: a,
        activity: &activity,
    };
    let res = tokio::select! {
        r = copy_both(&mut watched, b) => r,
        _ = activity.silent_for(how.idle) => {
            metrics.reject(how.listener, Reason::IdleTimeout);
            Err(Error::new(ErrorKind::TimedOut, format!("no bytes either way for {:?}", how.idle)))
        }
    };
    if let Ok((sent, received)) = res {
        let flow = |flow| BytesLabels {
            direction: how.direction,
            flow,
        };
        metrics
            .tcp_bytes
            .get_or_create(&flow(Flow::Sent))
            .inc_by(sent);
        metrics
            .tcp_bytes
            .get_or_create(&flow(Flow::Received))
            .inc_by(received);
    }
    res
}

/// Copy buffer sizes per direction. A stream starts with the smallest and moves up one size each time
/// a read fills the whole buffer (more was waiting): request/response traffic keeps 16 KiB per
/// direction, a bulk stream reaches 256 KiB reads and writes, which means fewer system calls, several
/// TLS records per socket write and large HTTP/2 DATA frames. Buffers never shrink.
const BUF_SIZES: [usize; 3] = [16 * 1024, 64 * 1024, 256 * 1024];

/// One direction's buffer: bytes `pos..cap` were read and not yet written. As tokio's
/// `copy_bidirectional`, but the buffer grows (see [`BUF_SIZES`]).
struct CopyBuf {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    amt: u64,
    read_done: bool,
    need_flush: bool,
    /// The last read filled the whole buffer; the next empty buffer is a larger one.
    filled_up: bool,
}

impl CopyBuf {
    fn new() -> CopyBuf {
        CopyBuf {
            buf: vec![0; BUF_SIZES[0]].into_boxed_slice(),
            pos: 0,
            cap: 0,
            amt: 0,
            read_done: false,
            need_flush: false,
            filled_up: false,
        }
    }

    /// Moves to the next size; only while empty, so no bytes move.
    fn grow(&mut self) {
        self.filled_up = false;
        if let Some(&next) = BUF_SIZES.iter().find(|&&s| s > self.buf.len()) {
            self.buf = vec![0; next].into_boxed_slice();
        }
    }

    fn poll_fill<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
    ) -> Poll<std::io::Result<()>> {
        let mut buf = ReadBuf::new(&mut self.buf);
        buf.set_filled(self.cap);
        loop {
            match reader.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Err(e)) if e.kind() == ErrorKind::Interrupted => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => break,
            }
        }
        let filled = buf.filled().len();
        self.read_done = filled == self.cap;
        self.filled_up = filled == self.buf.len();
        self.cap = filled;
        Poll::Ready(Ok(()))
    }

    /// Writes what is buffered; while the writer is not ready, reads on into the free space.
    fn poll_write_out<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<std::io::Result<usize>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match writer
                .as_mut()
                .poll_write(cx, &self.buf[self.pos..self.cap])
            {
                Poll::Ready(Err(e)) if e.kind() == ErrorKind::Interrupted => continue,
                Poll::Pending => {
                    if !self.read_done && self.cap < self.buf.len() {
                        ready!(self.poll_fill(cx, reader.as_mut()))?;
                    }
                    return Poll::Pending;
                }
                res => return res,
            }
        }
    }

    /// Copies until the reader's EOF, then flushes; the number of bytes copied.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<std::io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        // Yields to the scheduler when the task's budget is spent, so one busy stream cannot hold a
        // worker thread.
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            if self.cap < self.buf.len() && !self.read_done {
                match self.poll_fill(cx, reader.as_mut()) {
                    Poll::Ready(r) => {
                        coop.made_progress();
                        r?;
                    }
                    Poll::Pending if self.pos == self.cap => {
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            coop.made_progress();
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
            while self.pos < self.cap {
                let n = ready!(self.poll_write_out(cx, reader.as_mut(), writer.as_mut()))?;
                coop.made_progress();
                if n == 0 {
                    return Poll::Ready(Err(Error::new(
                        ErrorKind::WriteZero,
                        "write zero byte into writer",
                    )));
                }
                self.pos += n;
                self.amt += n as u64;
                self.need_flush = true;
            }
            if self.pos == self.cap && self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                coop.made_progress();
                return Poll::Ready(Ok(self.amt));
            }
            // Empty again: start from the front, in a larger buffer if the last read filled this one.
            if self.pos == self.cap {
                self.pos = 0;
                self.cap = 0;
                if self.filled_up {
                    self.grow();
                }
            }
        }
    }
}

/// One direction of a splice: copying, then shutting the writer down (half-close carried across),
/// then done with its byte count.
enum Transfer {
    Running(CopyBuf),
    ShuttingDown(u64),
    Done(u64),
}

impl Transfer {
    fn poll<A, B>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut A,
        w: &mut B,
    ) -> Poll<std::io::Result<u64>>
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let (mut r, mut w) = (Pin::new(r), Pin::new(w));
        loop {
            match self {
                Transfer::Running(buf) => {
                    let n = ready!(buf.poll_copy(cx, r.as_mut(), w.as_mut()))?;
                    *self = Transfer::ShuttingDown(n);
                }
                Transfer::ShuttingDown(n) => {
                    ready!(w.as_mut().poll_shutdown(cx))?;
                    *self = Transfer::Done(*n);
                }
                Transfer::Done(n) => return Poll::Ready(Ok(*n)),
            }
        }
    }
}

/// Both directions until both are done: (bytes a→b, bytes b→a); the first error ends both.
async fn copy_both<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (
        Transfer::Running(CopyBuf::new()),
        Transfer::Running(CopyBuf::new()),
    );
    std::future::poll_fn(|cx| {
        let ab = a_to_b.poll(cx, a, b)?;
        let ba = b_to_a.poll(cx, b, a)?;
        Poll::Ready(Ok((ready!(ab), ready!(ba))))
    })
    .await
}

/// When bytes last moved on a stream. Every byte of both directions passes through one side's reads
/// and writes, so watching that side is enough.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn silent_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

struct Watched<'a, S: ?Sized> {
    inner: &'a mut S,
    activity: &'a Activity,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn how(idle_ms: u64) -> Splice {
        Splice {
            direction: Direction::Outbound,
            listener: Listener::Outbound,
            idle: Duration::from_millis(idle_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_is_closed_after_the_idle_timeout_and_counted() {
        let metrics = Metrics::new();
        let (mut a, mut a_far) = tokio::io::duplex(1024);
        let (mut b, mut b_far) = tokio::io::duplex(1024);
        let talker = async {
            // Talks every 300 ms for 3 s (each gap under the 1 s limit), then falls silent.
            for _ in 0..10 {
                a_far.write_all(b"x").await.unwrap();
                let mut one = [0u8; 1];
                b_far.read_exact(&mut one).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            std::future::pending::<()>().await
        };
        let started = Instant::now();
        let res = tokio::select! {
            r = splice(&mut a, &mut b, &metrics, how(1000)) => r,
            _ = talker => unreachable!(),
        };
        let err = res.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        let lasted = started.elapsed();
        assert!(
            lasted >= Duration::from_millis(3700) && lasted < Duration::from_millis(4500),
            "closed after {lasted:?}: activity must push the deadline back"
        );
        assert!(metrics.encode().contains(
            "weft_proxy_rejections_total{listener=\"outbound\",reason=\"idle_timeout\"} 1"
        ));
    }

    /// Runs one direction's copy from `reader` to a sink; the copy's byte count and buffer size.
    async fn copy_one(reader: &[u8]) -> (u64, usize, Vec<u8>) {
        let mut buf = CopyBuf::new();
        let (mut r, mut w) = (reader, Vec::new());
        let n = std::future::poll_fn(|cx| buf.poll_copy(cx, Pin::new(&mut r), Pin::new(&mut w)))
            .await
            .unwrap();
        (n, buf.buf.len(), w)
    }

    #[tokio::test]
    async fn a_bulk_stream_grows_its_buffer_and_a_small_one_does_not() {
        let bulk: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (n, size, out) = copy_one(&bulk).await;
        assert_eq!(
            (n, size),
            (bulk.len() as u64, BUF_SIZES[BUF_SIZES.len() - 1])
        );
        assert!(
            out == bulk,
            "bytes arrive intact and in order across the resizes"
        );

        let (n, size, _) = copy_one(b"ping").await;
        assert_eq!((n, size), (4, BUF_SIZES[0]));
    }

    #[tokio::test]
    async fn a_bulk_stream_through_small_pipes_arrives_whole_both_ways() {
        let metrics = Metrics::new();
        let (mut a, mut a_far) = tokio::io::duplex(4096);
        let (mut b, mut b_far) = tokio::io::duplex(4096);
        let up: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let down: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
        let ends = async {
            let (mut a_read, mut a_write) = tokio::io::split(&mut a_far);
            let (mut b_read, mut b_write) = tokio::io::split(&mut b_far);
            let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
            tokio::join!(
                async {
                    a_write.write_all(&up).await.unwrap();
                    a_write.shutdown().await.unwrap();
                },
                async {
                    b_write.write_all(&down).await.unwrap();
                    b_write.shutdown().await.unwrap();
                },
                async { b_read.read_to_end(&mut got_up).await.unwrap() },
                async { a_read.read_to_end(&mut got_down).await.unwrap() },
            );
            (got_up, got_down)
        };
        let (res, (got_up, got_down)) =
            tokio::join!(splice(&mut a, &mut b, &metrics, how(60_000)), ends);
        assert_eq!(res.unwrap(), (up.len() as u64, down.len() as u64));
        assert!(got_up == up && got_down == down);
    }

    #[tokio::test]
    async fn a_finished_stream_counts_its_bytes() {
        let metrics = Metrics::new();
        let (mut a, mut a_far) = tokio::io::duplex(1024);
        let (mut b, mut b_far) = tokio::io::duplex(1024);
        let ends = async {
            a_far.write_all(b"hello").await.unwrap();
            a_far.shutdown().await.unwrap();
            let mut got = Vec::new();
            b_far.read_to_end(&mut got).await.unwrap();
            b_far.write_all(b"back").await.unwrap();
            b_far.shutdown().await.unwrap();
            let mut back = Vec::new();
            a_far.read_to_end(&mut back).await.unwrap();
            (got, back)
        };
        let (res, (got, back)) = tokio::join!(splice(&mut a, &mut b, &metrics, how(1000)), ends);
        assert_eq!(res.unwrap(), (5, 4));
        assert_eq!((&got[..], &back[..]), (&b"hello"[..], &b"back"[..]));
    }
}

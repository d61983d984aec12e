//! Copying bytes both ways between two streams, with half-close carried across (EOF on one side shuts
//! down writing on the other), bytes counted, and an idle timeout: a stream on which no byte has moved
//! either way for `limits.idle_timeout` is closed, so a silent peer or app cannot hold it forever.

use crate::state::Proxy;
use crate::telemetry::labels::{Listener, Reason};
use crate::telemetry::metrics::{BytesLabels, Direction, Flow, Metrics};
use std::io::{Error, ErrorKind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Per-direction copy buffer. 64 KiB lets one read fill several TLS records for bulk streams; small
/// messages never fill it.
const BUF: usize = 64 * 1024;

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
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut watched, b, BUF, BUF);
    let res = tokio::select! {
        r = copy => r,
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

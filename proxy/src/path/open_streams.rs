//! The idle timeout of an HTTP/2 connection: hyper keeps a connection that answers PINGs open forever,
//! so each served HTTP/2 connection counts its open streams and is closed with GOAWAY (graceful: a
//! stream in flight is never cut) once none has been open for its idle timeout (`limits.h2_idle_timeout`,
//! `limits.tunnel_idle_timeout`).
//!
//! A stream is open from its request until its response body ends or is dropped; a CONNECT or
//! extended-CONNECT stream until its splice ends (its handler keeps the [`StreamOpen`] it finds in the
//! request's extensions). Counting is two relaxed atomics per stream and no wake-ups: the watcher looks
//! at the counts a few times per timeout rather than being told of every change.

use crate::path::body::Guarded;
use http::{Request, Response};
use hyper::service::Service;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Checks of the counts per idle timeout: a connection is closed between 1 and 1 + 1/CHECKS idle
/// timeouts after its last stream ended.
const CHECKS: u32 = 4;

#[derive(Default)]
struct Counts {
    /// Streams (and clones of their [`StreamOpen`]) alive now.
    open: AtomicUsize,
    /// Streams ever opened: a stream that opened and closed between two checks still moves it.
    opened: AtomicU64,
}

/// The open streams of one HTTP/2 connection.
#[derive(Clone, Default)]
pub struct OpenStreams(Arc<Counts>);

/// One open stream: the connection counts it as open until this (and every clone) is dropped.
pub struct StreamOpen(Arc<Counts>);

impl Clone for StreamOpen {
    fn clone(&self) -> Self {
        self.0.open.fetch_add(1, Ordering::Relaxed);
        StreamOpen(self.0.clone())
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamOpen {
    /// The stream mark a counted connection put on a CONNECT request (none on HTTP/1): the handler,
    /// whose stream outlives the response, keeps it until the stream ends.
    pub fn take<B>(req: &mut Request<B>) -> Option<StreamOpen> {
        req.extensions_mut().remove::<StreamOpen>()
    }
}

impl OpenStreams {
    fn open(&self) -> StreamOpen {
        self.0.opened.fetch_add(1, Ordering::Relaxed);
        self.0.open.fetch_add(1, Ordering::Relaxed);
        StreamOpen(self.0.clone())
    }

    /// Wraps `svc` so that every request it serves counts as an open stream.
    pub fn count<S>(&self, svc: S) -> Counted<S> {
        Counted {
            inner: svc,
            streams: self.clone(),
        }
    }

    /// Resolves once no stream has been open for `idle` (checked `CHECKS` times per `idle`).
    pub async fn idle_for(&self, idle: Duration) {
        let period = idle / CHECKS;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // `opened` when the current quiet run began; `u64::MAX`: a stream was open at the last check.
        let mut run_from = 0;
        let mut quiet = 0;
        loop {
            tick.tick().await;
            let open = self.0.open.load(Ordering::Relaxed);
            let opened = self.0.opened.load(Ordering::Relaxed);
            if open == 0 && opened == run_from {
                quiet += 1;
                if quiet >= CHECKS {
                    return;
                }
            } else {
                run_from = if open == 0 { opened } else { u64::MAX };
                quiet = 0;
            }
        }
    }
}

/// A service whose requests count as open streams of one connection (see [`OpenStreams::count`]).
pub struct Counted<S> {
    inner: S,
    streams: OpenStreams,
}

impl<S, B, RB> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<Guarded<RB, StreamOpen>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        let open = self.streams.open();
        // Only a CONNECT stream outlives its response; marking every request would allocate its
        // extension map on the hot path.
        if req.method() == http::Method::CONNECT {
            req.extensions_mut().insert(open.clone());
        }
        CountedFuture {
            inner: self.inner.call(req),
            open: Some(open),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Counted`]: the response body carries the stream's mark.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        open: Option<StreamOpen>,
    }
}

impl<F, RB, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<Guarded<RB, StreamOpen>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.inner.poll(cx))?;
        let open = this
            .open
            .take()
            .expect("CountedFuture polled after completion");
        Poll::Ready(Ok(resp.map(|b| Guarded::new(b, open))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_a_full_timeout_without_an_open_stream() {
        let streams = OpenStreams::default();
        let idle = Duration::from_secs(100);
        let started = tokio::time::Instant::now();
        streams.idle_for(idle).await;
        assert_eq!(started.elapsed(), idle, "never used: closed at the timeout");

        let s = streams.open();
        let held = s.clone();
        drop(s);
        let w = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle_for(idle).await }
        });
        tokio::time::sleep(idle * 3).await;
        assert!(!w.is_finished(), "a stream is still open");
        drop(held);
        let closed_at = tokio::time::Instant::now();
        w.await.unwrap();
        let quiet = closed_at.elapsed();
        assert!(quiet >= idle && quiet <= idle + idle / CHECKS, "{quiet:?}");

        // A stream that opens and ends between two checks restarts the count.
        let w = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle_for(idle).await }
        });
        tokio::time::sleep(idle * 3 / 4 + Duration::from_secs(1)).await;
        drop(streams.open());
        let last = tokio::time::Instant::now();
        w.await.unwrap();
        assert!(last.elapsed() >= idle, "{:?}", last.elapsed());
    }
}

//! The idle timeout of a proxy API connection: hyper keeps an HTTP/2 connection that answers PINGs
//! open forever, so each connection counts its open streams (a stream is open from its request until
//! its response body is dropped) and is closed with GOAWAY once none has been open for
//! `--api-idle-timeout`. The proxy's `path::open_streams` does the same for its listeners.

use http::Response;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Checks of the counts per idle timeout: a connection is closed between 1 and 1 + 1/CHECKS idle
/// timeouts after its last stream ended.
const CHECKS: u32 = 4;

#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    /// Streams ever opened: one that opened and closed between two checks still moves it.
    opened: AtomicU64,
}

/// The open streams of one connection.
#[derive(Clone, Default)]
pub struct OpenStreams(Arc<Counts>);

/// One open stream, counted until dropped.
pub struct StreamOpen(Arc<Counts>);

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamOpen {
    /// `resp` with a body that keeps the stream counted until it is dropped (the config stream's
    /// body lives as long as the stream).
    pub fn until_body_ends<D: bytes::Buf + Send + 'static>(
        self,
        resp: Response<BoxBody<D, std::convert::Infallible>>,
    ) -> Response<BoxBody<D, std::convert::Infallible>> {
        resp.map(|b| {
            b.map_frame(move |f| {
                let _open = &self;
                f
            })
            .boxed()
        })
    }
}

impl OpenStreams {
    pub fn open(&self) -> StreamOpen {
        self.0.opened.fetch_add(1, Ordering::Relaxed);
        self.0.open.fetch_add(1, Ordering::Relaxed);
        StreamOpen(self.0.clone())
    }

    /// Resolves once no stream has been open for `idle` (checked `CHECKS` times per `idle`).
    pub async fn idle_for(&self, idle: Duration) {
        let period = idle / CHECKS;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // `opened` when the current quiet run began; `u64::MAX`: a stream was open at the last check.
        let (mut run_from, mut quiet) = (0, 0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_a_full_timeout_without_an_open_stream() {
        let streams = OpenStreams::default();
        let idle = Duration::from_secs(100);
        let held = streams.open();
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
    }
}

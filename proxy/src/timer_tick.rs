//! A one-second tick that keeps tokio's timer driver planning to wake within a second.
//!
//! Why: every HTTP/1 request arms hyper's header-read timeout (`limits.header_read_timeout`, 10 s)
//! anew. When no other timer is due sooner, that deadline is earlier than the wake-up the driver
//! planned when it last parked, and tokio then wakes the driver at once: a write to its eventfd and
//! one more `epoll_wait` per request (docs/performance.md). With a wake-up planned within a second,
//! a 10 s deadline never moves it, so the per-request cost goes, for one wake-up a second.

use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

pub async fn run(shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

//! Retries: which answers are worth another try, how long to wait before it, and keeping the request
//! body so it can be sent again. The budget that bounds retries per destination is tower's `TpsBudget`
//! (see `traffic/destination.rs`).

use crate::path::body::{Body, BoxError};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use rand::Rng;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use weft_api::resources::{grpc_code, RetryPolicy};

const DEFAULT_ATTEMPTS: u32 = 2;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(250);
const DEFAULT_CODES: [u16; 3] = [502, 503, 504];

/// A route rule's retry policy with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRule {
    pub attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    codes: Vec<u16>,
    grpc_codes: Vec<u8>,
    non_idempotent: bool,
}

impl Default for RetryRule {
    fn default() -> Self {
        RetryRule::from_policy(None)
    }
}

impl RetryRule {
    pub fn from_policy(p: Option<&RetryPolicy>) -> RetryRule {
        let p = p.cloned().unwrap_or_default();
        RetryRule {
            attempts: p.attempts.unwrap_or(DEFAULT_ATTEMPTS),
            backoff: p.backoff.map_or(DEFAULT_BACKOFF, |d| d.get()),
            max_backoff: p
                .max_backoff
                .map_or(DEFAULT_MAX_BACKOFF, |d| d.get())
                .max(p.backoff.map_or(Duration::ZERO, |d| d.get())),
            codes: if p.codes.is_empty() {
                DEFAULT_CODES.to_vec()
            } else {
                p.codes.clone()
            },
            grpc_codes: p.grpc_codes.iter().filter_map(|n| grpc_code(n)).collect(),
            non_idempotent: p.non_idempotent,
        }
    }

    /// Whether a request with this method may be sent twice.
    pub fn allows_method(&self, m: &Method) -> bool {
        self.non_idempotent
            || matches!(
                *m,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            )
    }

    /// Whether an answer asks for another try: a listed status, or a listed gRPC status in a
    /// trailers-only answer (where `grpc-status` arrives with the head).
    pub fn retriable(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if self.codes.contains(&status.as_u16()) {
            return true;
        }
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u8>().ok())
            .is_some_and(|c| self.grpc_codes.contains(&c))
    }

    /// The pause before retry number `n` (1-based): full jitter over a capped exponential.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let ms = exp.as_micros().min(u128::from(u64::MAX)) as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(rand::thread_rng().gen_range(0..=ms))
    }
}

/// A request body that can be sent again. The first try streams it as it arrives (a client streaming
/// or chatting over one request is never held back) while a copy of each frame is kept, up to a limit.
/// A try that ends early hands the unread rest back, so the next try sends the copy and then the rest.
/// Past the limit the copy is dropped and the request can no longer be retried.
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    kept: Vec<Frame<Bytes>>,
    size: usize,
    limit: usize,
    /// More than `limit` bytes went by: no copy.
    overflow: bool,
    /// The original body ended (every frame is in `kept`, unless `overflow`).
    complete: bool,
    /// The unread rest of the original body, while no try is reading it.
    rest: Option<Body>,
}

/// Why a body cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotKept {
    TooLarge,
}

impl Replay {
    /// A body announced (by `content_length`) as larger than `limit` is never copied.
    pub fn new(body: Body, content_length: Option<u64>, limit: usize) -> Replay {
        let overflow = content_length.is_some_and(|n| n > limit as u64);
        // A body already at its end (a GET's) is complete from the start, so tries send none.
        let complete = body.is_end_stream();
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                kept: Vec::new(),
                size: 0,
                limit,
                overflow,
                complete,
                rest: (!complete).then_some(body),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body for the next try, or why there can be none: the copy was dropped (too large), or the last
    /// try still holds the unread rest.
    pub fn take(&mut self) -> Result<Body, NotKept> {
        let s = self.lock();
        if s.overflow && (s.size > 0 || s.rest.is_none()) {
            return Err(NotKept::TooLarge);
        }
        if !s.complete && s.rest.is_none() {
            return Err(NotKept::TooLarge);
        }
        drop(s);
        Ok(ReplayBody {
            shared: self.shared.clone(),
            next: 0,
            reading: None,
        }
        .boxed())
    }

    /// Whether a copy is still kept (nothing past the limit went by).
    pub fn too_large(&self) -> bool {
        self.lock().overflow
    }
}

struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Kept frames already sent by this try.
    next: usize,
    /// The original body, while this try reads it.
    reading: Option<Body>,
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        if !s.overflow && this.next < s.kept.len() {
            let f = clone_frame(&s.kept[this.next]);
            this.next += 1;
            return Poll::Ready(Some(Ok(f)));
        }
        if s.complete {
            return Poll::Ready(None);
        }
        if this.reading.is_none() {
            this.reading = s.rest.take();
        }
        drop(s);
        let Some(body) = this.reading.as_mut() else {
            return Poll::Ready(Some(Err("request body is held by another try".into())));
        };
        let polled = Pin::new(body).poll_frame(cx);
        let mut s = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                let len = f.data_ref().map_or(0, |d| d.len());
                s.size += len;
                if s.size > s.limit {
                    s.overflow = true;
                    s.kept.clear();
                } else if !s.overflow {
                    s.kept.push(clone_frame(f));
                    this.next = s.kept.len();
                }
            }
            Poll::Ready(None) => s.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.complete && (s.overflow || self.next >= s.kept.len())
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if let Some(body) = self.reading.take() {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            s.rest = Some(body);
        }
    }
}

fn clone_frame(f: &Frame<Bytes>) -> Frame<Bytes> {
    match (f.data_ref(), f.trailers_ref()) {
        (Some(d), _) => Frame::data(d.clone()),
        (None, Some(t)) => Frame::trailers(t.clone()),
        _ => Frame::data(Bytes::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::duration::Duration as D;

    #[test]
    fn defaults_retry_gateway_errors_on_idempotent_methods() {
        let r = RetryRule::default();
        assert_eq!(r.attempts, 2);
        let h = HeaderMap::new();
        for (code, want) in [
            (502, true),
            (503, true),
            (504, true),
            (500, false),
            (429, false),
        ] {
            assert_eq!(
                r.retriable(StatusCode::from_u16(code).unwrap(), &h),
                want,
                "{code}"
            );
        }
        assert!(r.allows_method(&Method::GET) && r.allows_method(&Method::PUT));
        assert!(!r.allows_method(&Method::POST) && !r.allows_method(&Method::PATCH));
    }

    #[test]
    fn configured_codes_grpc_codes_and_methods() {
        let r = RetryRule::from_policy(Some(&RetryPolicy {
            codes: vec![500],
            grpc_codes: vec!["UNAVAILABLE".into()],
            non_idempotent: true,
            ..Default::default()
        }));
        let mut h = HeaderMap::new();
        assert!(r.retriable(StatusCode::INTERNAL_SERVER_ERROR, &h));
        assert!(!r.retriable(StatusCode::SERVICE_UNAVAILABLE, &h));
        h.insert("grpc-status", "14".parse().unwrap());
        assert!(r.retriable(StatusCode::OK, &h));
        h.insert("grpc-status", "13".parse().unwrap());
        assert!(!r.retriable(StatusCode::OK, &h));
        assert!(r.allows_method(&Method::POST));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let r = RetryRule::from_policy(Some(&RetryPolicy {
            backoff: Some(D::from_millis(10)),
            max_backoff: Some(D::from_millis(40)),
            ..Default::default()
        }));
        for n in 1..20 {
            let cap = Duration::from_millis((10u64 << (n - 1).min(10)).min(40));
            for _ in 0..50 {
                assert!(r.backoff(n) <= cap, "retry {n}");
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| r.backoff(3)).collect();
        assert!(spread.len() > 10, "full jitter spreads the pauses");
    }

    fn chunks(n: u8, size: usize) -> Body {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..n)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + i; size]))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed()
    }

    #[tokio::test]
    async fn small_bodies_replay_whole() {
        let mut r = Replay::new(chunks(3, 4), None, 16);
        for _ in 0..3 {
            let b = r.take().unwrap().collect().await.unwrap().to_bytes();
            assert_eq!(&b[..], b"aaaabbbbcccc");
        }
    }

    #[tokio::test]
    async fn a_try_that_stops_early_hands_the_rest_to_the_next() {
        let mut r = Replay::new(chunks(3, 4), None, 16);
        let mut first = r.take().unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().unwrap(), &b"aaaa"[..]);
        drop(first);
        let b = r.take().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"aaaabbbbcccc", "the copy, then the unread rest");
    }

    #[tokio::test]
    async fn a_body_held_by_a_try_cannot_be_replayed() {
        let mut r = Replay::new(chunks(3, 4), None, 16);
        let mut first = r.take().unwrap();
        let _ = first.frame().await;
        assert!(r.take().is_err(), "the first try still reads the original");
    }

    #[tokio::test]
    async fn large_bodies_stream_whole_and_are_not_replayed() {
        let mut r = Replay::new(chunks(10, 8), None, 16);
        let all = r.take().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 80, "every byte is sent");
        assert!(r.too_large());
        assert_eq!(r.take().err(), Some(NotKept::TooLarge));
        let mut r = Replay::new(chunks(1, 100), Some(100), 16);
        assert!(r.too_large(), "announced too large: never copied");
        let all = r.take().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 100);
        assert!(r.take().is_err());
    }
}

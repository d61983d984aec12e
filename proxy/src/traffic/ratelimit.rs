//! Local rate limits, enforced where requests arrive: a route rule's `rateLimit` is a token bucket in
//! each proxy of the destination service (one per calling identity with `perSource`). Over the limit,
//! the request is answered 429 with `Retry-After` and never reaches the app. Every kind of arrival
//! takes a token: HTTP requests, WebSocket upgrades (as the GET the app sees) and opaque CONNECT
//! streams (under the rule that routes TCP: one without matches).
//!
//! A token bucket is a few lines; written here rather than taken from `tower::limit::RateLimit`, which
//! delays requests instead of refusing them, so that the refusal can say when to come back and buckets
//! can be keyed by caller with a bound on how many are kept.

use crate::path::errors::ProxyError;
use crate::state::Proxy;
use crate::telemetry::metrics::{Listener, Reason};
use crate::traffic::mesh::MeshView;
use crate::traffic::route::RequestView;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use weft_api::resources::RateLimit;
use weft_certs::SpiffeId;

/// Buckets kept at once; beyond this, full (idle) buckets are dropped first.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    rule: String,
    source: Option<SpiffeId>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    stamp: Instant,
    /// The limit the bucket was made for; a changed limit starts a new bucket.
    limit: RateLimit,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<Key, Bucket>>,
}

impl RateLimiter {
    /// Takes one token from the bucket of (`rule`, `source`), or says how long until one is there.
    fn take(
        &self,
        rule: &str,
        source: Option<&SpiffeId>,
        limit: &RateLimit,
        now: Instant,
    ) -> Result<(), Duration> {
        let rate = f64::from(limit.requests) / limit.per.get().as_secs_f64();
        let burst = f64::from(limit.burst.unwrap_or(limit.requests));
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_BUCKETS {
            map.retain(|_, b| {
                refilled(b, now) < f64::from(b.limit.burst.unwrap_or(b.limit.requests))
            });
        }
        let key = Key {
            rule: rule.to_string(),
            source: source.cloned(),
        };
        let b = map.entry(key).or_insert_with(|| Bucket {
            tokens: burst,
            stamp: now,
            limit: limit.clone(),
        });
        if b.limit != *limit {
            *b = Bucket {
                tokens: burst,
                stamp: now,
                limit: limit.clone(),
            };
        }
        b.tokens = refilled(b, now).min(burst);
        b.stamp = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
    }
}

fn refilled(b: &Bucket, now: Instant) -> f64 {
    let rate = f64::from(b.limit.requests) / b.limit.per.get().as_secs_f64();
    b.tokens + now.saturating_duration_since(b.stamp).as_secs_f64() * rate
}

/// Refuses (with the 429's error) a request arriving from `source` (absent: plaintext from outside the mesh, which shares
/// one bucket per rule) on `listener` at app port `target_port`, when a rate limit of a route of this
/// workload's services refuses it. An opaque stream (`req` absent, a CONNECT or a plaintext connection)
/// takes one token of the rule that would route it: a rule without matches.
pub fn check(
    proxy: &Proxy,
    mesh: &MeshView,
    listener: Listener,
    source: Option<&SpiffeId>,
    target_port: u16,
    req: Option<&RequestView<'_>>,
) -> Result<(), ProxyError> {
    if !mesh.has_rate_limits() {
        return Ok(());
    }
    let now = Instant::now();
    for (svc, port) in mesh.own_services(&proxy.identity.id(), None, target_port) {
        let Some(policy) = mesh.rule_policy(svc, port, req) else {
            continue;
        };
        let Some(limit) = &policy.rate_limit else {
            continue;
        };
        let who = limit.per_source.then_some(source).flatten();
        if let Err(wait) = proxy.rate_limits.take(&policy.name, who, limit, now) {
            proxy.metrics.reject(listener, Reason::RateLimited);
            let source = source.map_or("(plaintext)", |s| s.as_str());
            tracing::info!(source, rule = %policy.name, retry_after_ms = wait.as_millis() as u64, "request refused: over the route's rate limit");
            return Err(ProxyError::RateLimited { retry_after: wait });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::duration::Duration as D;

    fn limit(requests: u32, burst: Option<u32>) -> RateLimit {
        RateLimit {
            requests,
            per: D::from_secs(1),
            burst,
            per_source: false,
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let r = RateLimiter::default();
        let l = limit(5, Some(10));
        let t0 = Instant::now();
        let passed = (0..50)
            .filter(|_| r.take("a", None, &l, t0).is_ok())
            .count();
        assert_eq!(passed, 10, "the burst");
        let wait = r.take("a", None, &l, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(200) && wait > Duration::from_millis(150));
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..50)
            .filter(|_| r.take("a", None, &l, t1).is_ok())
            .count();
        assert_eq!(passed, 5, "one second's worth");
    }

    #[test]
    fn sources_have_their_own_buckets() {
        let r = RateLimiter::default();
        let l = limit(1, None);
        let a = SpiffeId::parse("spiffe://weft.local/ns/default/sa/a").unwrap();
        let b = SpiffeId::parse("spiffe://weft.local/ns/default/sa/b").unwrap();
        let now = Instant::now();
        assert!(r.take("x", Some(&a), &l, now).is_ok());
        assert!(r.take("x", Some(&a), &l, now).is_err());
        assert!(r.take("x", Some(&b), &l, now).is_ok());
    }
}

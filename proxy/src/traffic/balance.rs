//! Endpoint choice: power of two choices over peak-EWMA latency, and outlier ejection.
//!
//! Each endpoint (by peer address) keeps a latency estimate that jumps up to a slow answer at once and
//! decays back slowly, and a count of requests in flight; its cost is the two multiplied. Two candidates
//! are drawn at random and the cheaper one wins. A failure counts as a [`FAILURE_PENALTY`] answer, so an
//! endpoint that answers fast with errors loses instead of winning. Consecutive failures eject an endpoint
//! for a while (longer each time), never more than a cap of the pool at once.
//!
//! Written here rather than with tower's p2c `Balance`: that drives a `Discover` stream of services and
//! measures time to the response future, with no notion of a fast 503 being a failure, and it cannot limit
//! the choice to the subset a route picked for one request.

use crate::telemetry::metrics::Metrics;
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_api::resources::OutlierDetection;
use weft_api::Upstream;

/// How a failed answer counts in the latency estimate.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// How fast an estimate forgets: after this long without news it has decayed to about a third.
const DECAY: Duration = Duration::from_secs(5);
/// Estimate for an endpoint with no answers yet.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// Endpoints whose state is kept; the oldest unused go first beyond this.
const MAX_TRACKED: usize = 10_000;

/// The outlier detector's settings, with the defaults of docs/traffic.md filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub consecutive_errors: u32,
    pub base: Duration,
    pub max: Duration,
    pub max_percent: u32,
}

impl Ejection {
    pub fn from_policy(p: Option<&OutlierDetection>) -> Ejection {
        let p = p.cloned().unwrap_or_default();
        Ejection {
            consecutive_errors: p.consecutive_errors.unwrap_or(5),
            base: p
                .base_ejection_time
                .map_or(Duration::from_secs(30), |d| d.get()),
            max: p
                .max_ejection_time
                .map_or(Duration::from_secs(300), |d| d.get()),
            max_percent: p.max_ejection_percent.unwrap_or(50),
        }
    }

    /// Most endpoints of a pool of `n` ejected at once; one may always be.
    fn cap(&self, n: usize) -> usize {
        if self.max_percent == 0 {
            return 0;
        }
        (n * self.max_percent as usize / 100).max(1)
    }
}

/// How one try went, as far as the endpoint's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx, or a try that timed out.
    Failure,
    /// A 429: penalised in the latency estimate, but no sign of a broken endpoint.
    Throttled,
    /// Nothing reached the endpoint.
    ConnectFailure,
}

#[derive(Debug)]
struct Health {
    /// Peak-EWMA estimate in nanoseconds, as of `stamp`.
    rtt_ns: f64,
    stamp: Instant,
    consecutive_failures: u32,
    /// Times ejected; each ejection lasts this many base times.
    ejections: u32,
    ejected_until: Option<Instant>,
    last_used: Instant,
}

#[derive(Debug)]
struct EndpointState {
    in_flight: AtomicU32,
    health: Mutex<Health>,
}

impl EndpointState {
    fn new(now: Instant) -> EndpointState {
        EndpointState {
            in_flight: AtomicU32::new(0),
            health: Mutex::new(Health {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                stamp: now,
                consecutive_failures: 0,
                ejections: 0,
                ejected_until: None,
                last_used: now,
            }),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.health().ejected_until.is_some_and(|t| t > now)
    }

    /// The estimate decayed to `now`, times the load.
    fn cost(&self, now: Instant) -> f64 {
        let h = self.health();
        let age = now.saturating_duration_since(h.stamp).as_secs_f64();
        let rtt = h.rtt_ns * (-age / DECAY.as_secs_f64()).exp();
        rtt * f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }
}

/// Every endpoint's latency and health, shared by all requests of the proxy.
pub struct Balancer {
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
    metrics: Arc<Metrics>,
}

/// One try in flight to an endpoint; report how it went with [`InFlight::finish`]. Dropped unfinished
/// (the request was cancelled), it counts as nothing.
pub struct InFlight {
    state: Arc<EndpointState>,
    peer: SocketAddr,
    start: Instant,
    /// The pool the endpoint was chosen from, for the ejection cap.
    pool: Arc<[Upstream]>,
    ejection: Ejection,
    balancer: Arc<Balancer>,
    finished: bool,
}

impl Balancer {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Balancer> {
        Arc::new(Balancer {
            endpoints: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn state(&self, peer: SocketAddr, now: Instant) -> Arc<EndpointState> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&peer) {
            let idle = Duration::from_secs(600);
            map.retain(|_, s| now.saturating_duration_since(s.health().last_used) < idle);
        }
        map.entry(peer)
            .or_insert_with(|| Arc::new(EndpointState::new(now)))
            .clone()
    }

    /// Picks one of `candidates` (ready endpoints of the routed subset): not ejected, not in `tried` when
    /// another is left, the cheaper of two random ones. `None` when every candidate is ejected.
    pub fn choose(
        self: &Arc<Self>,
        candidates: &Arc<[Upstream]>,
        tried: &[SocketAddr],
        ejection: Ejection,
    ) -> Option<(Upstream, InFlight)> {
        let now = Instant::now();
        if candidates.len() == 1 {
            let state = self.state(candidates[0].peer, now);
            if state.is_ejected(now) {
                return None;
            }
            return Some(self.start(candidates, 0, state, ejection, now));
        }
        let states: Vec<(usize, Arc<EndpointState>)> = candidates
            .iter()
            .enumerate()
            .map(|(i, u)| (i, self.state(u.peer, now)))
            .filter(|(_, s)| !s.is_ejected(now))
            .collect();
        let fresh: Vec<&(usize, Arc<EndpointState>)> = states
            .iter()
            .filter(|(i, _)| !tried.contains(&candidates[*i].peer))
            .collect();
        let pool: Vec<&(usize, Arc<EndpointState>)> = if fresh.is_empty() {
            states.iter().collect()
        } else {
            fresh
        };
        let (i, state) = match pool.len() {
            0 => return None,
            1 => pool[0].clone(),
            n => {
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..n);
                let b = (a + rng.gen_range(1..n)) % n;
                let (ca, cb) = (pool[a].1.cost(now), pool[b].1.cost(now));
                if ca <= cb {
                    pool[a].clone()
                } else {
                    pool[b].clone()
                }
            }
        };
        Some(self.start(candidates, i, state, ejection, now))
    }

    fn start(
        self: &Arc<Self>,
        candidates: &Arc<[Upstream]>,
        i: usize,
        state: Arc<EndpointState>,
        ejection: Ejection,
        now: Instant,
    ) -> (Upstream, InFlight) {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.health().last_used = now;
        let up = candidates[i].clone();
        let flight = InFlight {
            state,
            peer: up.peer,
            start: now,
            pool: candidates.clone(),
            ejection,
            balancer: self.clone(),
            finished: false,
        };
        (up, flight)
    }

    /// Drops what is known about `peer` (it came back ready: a new start).
    pub fn forget(&self, peer: SocketAddr) {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&peer);
    }

    /// Endpoints of `pool` ejected right now.
    fn ejected_in(&self, pool: &[Upstream], now: Instant) -> usize {
        let map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        pool.iter()
            .filter(|u| map.get(&u.peer).is_some_and(|s| s.is_ejected(now)))
            .count()
    }
}

impl InFlight {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Records how the try went: its latency (or the failure penalty) and the failure streak.
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        let now = Instant::now();
        let rtt = match outcome {
            Outcome::Success => now.saturating_duration_since(self.start),
            Outcome::Failure | Outcome::ConnectFailure | Outcome::Throttled => FAILURE_PENALTY,
        };
        let eject = {
            let mut h = self.state.health();
            observe(&mut h, rtt, now);
            match outcome {
                Outcome::Success => {
                    h.consecutive_failures = 0;
                    // A success long after the last ejection ended earns back one step of its length.
                    if h.ejected_until
                        .is_some_and(|t| now > t + self.ejection.base)
                    {
                        h.ejections = h.ejections.saturating_sub(1);
                        h.ejected_until = None;
                    }
                    false
                }
                Outcome::Throttled => false,
                Outcome::Failure | Outcome::ConnectFailure => {
                    h.consecutive_failures += 1;
                    let threshold = self.ejection.consecutive_errors;
                    threshold > 0
                        && h.consecutive_failures >= threshold
                        && h.ejected_until.is_none_or(|t| t <= now)
                }
            }
        };
        if eject {
            self.eject(now);
        }
    }

    fn eject(&self, now: Instant) {
        let cap = self.ejection.cap(self.pool.len());
        if self.balancer.ejected_in(&self.pool, now) >= cap {
            tracing::info!(peer = %self.peer, cap, "outlier not ejected: the pool's ejection cap is reached");
            return;
        }
        let mut h = self.state.health();
        h.ejections = h.ejections.saturating_add(1);
        let length = (self.ejection.base * h.ejections).min(self.ejection.max);
        h.ejected_until = Some(now + length);
        h.consecutive_failures = 0;
        drop(h);
        self.balancer.metrics.ejections.inc();
        tracing::warn!(peer = %self.peer, seconds = length.as_secs_f64(), "endpoint ejected after consecutive failures");
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        let _ = self.finished;
    }
}

/// Peak EWMA: a slower answer than the estimate replaces it; a faster one pulls it down by a weight that
/// grows with the time since the last answer.
fn observe(h: &mut Health, rtt: Duration, now: Instant) {
    let sample = rtt.as_nanos() as f64;
    let age = now.saturating_duration_since(h.stamp).as_secs_f64();
    let keep = (-age / DECAY.as_secs_f64()).exp();
    h.rtt_ns = if sample > h.rtt_ns {
        sample
    } else {
        h.rtt_ns * keep + sample * (1.0 - keep)
    };
    h.stamp = now;
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_certs::SpiffeId;

    fn ups(n: u16) -> Arc<[Upstream]> {
        (0..n)
            .map(|i| Upstream {
                peer: SocketAddr::from(([198, 18, 0, 10 + i as u8], 15008)),
                identity: SpiffeId::parse("spiffe://weft.local/ns/default/sa/reviews").unwrap(),
                target_port: 9080,
            })
            .collect()
    }

    fn ejection(errors: u32) -> Ejection {
        Ejection {
            consecutive_errors: errors,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_percent: 50,
        }
    }

    fn run(
        b: &Arc<Balancer>,
        c: &Arc<[Upstream]>,
        bad: SocketAddr,
        n: usize,
    ) -> HashMap<SocketAddr, usize> {
        let mut got = HashMap::new();
        for _ in 0..n {
            let (up, f) = b.choose(c, &[], ejection(0)).unwrap();
            *got.entry(up.peer).or_default() += 1;
            f.finish(if up.peer == bad {
                Outcome::Failure
            } else {
                Outcome::Success
            });
        }
        got
    }

    #[test]
    fn a_fast_failing_endpoint_does_not_win() {
        let b = Balancer::new(Arc::new(Metrics::new()));
        let c = ups(2);
        let got = run(&b, &c, c[1].peer, 1000);
        let bad = got.get(&c[1].peer).copied().unwrap_or(0);
        assert!(bad < 100, "failing endpoint got {bad} of 1000");
    }

    #[test]
    fn consecutive_failures_eject_within_the_cap() {
        let b = Balancer::new(Arc::new(Metrics::new()));
        let c = ups(4);
        for peer in [c[0].peer, c[1].peer, c[2].peer] {
            for _ in 0..3 {
                let one: Arc<[Upstream]> =
                    Arc::from([c.iter().find(|u| u.peer == peer).unwrap().clone()]);
                let (_, mut f) = b.choose(&one, &[], ejection(3)).unwrap();
                // The pool is the whole service for the cap, as in real use.
                f.pool = c.clone();
                f.finish(Outcome::Failure);
            }
        }
        let now = Instant::now();
        assert_eq!(b.ejected_in(&c, now), 2, "50% of 4");
        for _ in 0..50 {
            let (up, f) = b.choose(&c, &[], ejection(3)).unwrap();
            assert!(up.peer == c[2].peer || up.peer == c[3].peer);
            drop(f);
        }
    }

    #[test]
    fn a_single_endpoint_can_be_ejected_and_none_is_left() {
        let b = Balancer::new(Arc::new(Metrics::new()));
        let c = ups(1);
        for _ in 0..2 {
            let (_, f) = b.choose(&c, &[], ejection(2)).unwrap();
            f.finish(Outcome::ConnectFailure);
        }
        assert!(b.choose(&c, &[], ejection(2)).is_none());
    }

    #[test]
    fn a_retry_prefers_an_untried_endpoint() {
        let b = Balancer::new(Arc::new(Metrics::new()));
        let c = ups(3);
        for _ in 0..50 {
            let (up, _f) = b.choose(&c, &[c[0].peer, c[1].peer], ejection(0)).unwrap();
            assert_eq!(up.peer, c[2].peer);
        }
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays() {
        let now = Instant::now();
        let mut h = EndpointState::new(now).health.into_inner().unwrap();
        observe(&mut h, Duration::from_millis(100), now);
        assert_eq!(h.rtt_ns as u64, 100_000_000);
        observe(
            &mut h,
            Duration::from_millis(1),
            now + Duration::from_secs(10),
        );
        assert!(h.rtt_ns < 20_000_000.0, "{}", h.rtt_ns);
    }
}

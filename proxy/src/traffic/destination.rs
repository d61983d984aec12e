//! What this proxy keeps per destination service: its `trafficPolicy` with defaults filled in, the
//! bulkhead (in-flight requests, waiting requests, opaque connections) and the retry budget.
//!
//! The bulkhead is a semaphore plus a bounded count of waiters rather than tower's `ConcurrencyLimit`,
//! which queues without bound: here a request past `maxPendingRequests` must be refused at once. The
//! budget is tower's `TpsBudget`.

use crate::traffic::balance::Ejection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::retry::budget::{Budget, TpsBudget};
use weft_api::resources::TrafficPolicy;

const DEFAULT_LIMIT: u32 = 1024;
const DEFAULT_CONNECT_RETRIES: u32 = 2;
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A service's `trafficPolicy`, every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub connect_timeout: Option<Duration>,
    pub connect_retries: u32,
    pub ejection: Ejection,
    max_connections: u32,
    max_requests: u32,
    max_pending: u32,
    budget_percent: u32,
    budget_min_per_sec: u32,
}

impl Policy {
    pub fn from_spec(p: Option<&TrafficPolicy>) -> Policy {
        let p = p.cloned().unwrap_or_default();
        let pool = p.connection_pool.unwrap_or_default();
        let budget = p.retry_budget.unwrap_or_default();
        Policy {
            connect_timeout: p.connect_timeout.map(|d| d.get()),
            connect_retries: p.connect_retries.unwrap_or(DEFAULT_CONNECT_RETRIES),
            ejection: Ejection::from_policy(p.outlier_detection.as_ref()),
            max_connections: pool.max_connections.unwrap_or(DEFAULT_LIMIT),
            max_requests: pool.max_requests.unwrap_or(DEFAULT_LIMIT),
            max_pending: pool.max_pending_requests.unwrap_or(DEFAULT_LIMIT),
            budget_percent: budget.percent.unwrap_or(20),
            budget_min_per_sec: budget.min_retries_per_second.unwrap_or(10),
        }
    }
}

/// One destination service's live state.
pub struct DestState {
    pub policy: Policy,
    requests: Arc<Semaphore>,
    waiting: AtomicUsize,
    connections: Arc<Semaphore>,
    budget: TpsBudget,
}

/// The bulkhead is full: the request or connection is refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed;

impl DestState {
    fn new(policy: Policy) -> DestState {
        DestState {
            requests: Arc::new(Semaphore::new(policy.max_requests as usize)),
            connections: Arc::new(Semaphore::new(policy.max_connections as usize)),
            waiting: AtomicUsize::new(0),
            budget: TpsBudget::new(
                BUDGET_WINDOW,
                policy.budget_min_per_sec,
                policy.budget_percent as f32 / 100.0,
            ),
            policy,
        }
    }

    /// A slot for one HTTP request: at once when one is free, after waiting when fewer than
    /// `maxPendingRequests` already wait, else [`Shed`].
    pub async fn request_slot(&self) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(p) = self.requests.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.policy.max_pending as usize {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed);
        }
        let permit = self.requests.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit.map_err(|_| Shed)
    }

    /// A slot for one opaque TCP connection, or [`Shed`].
    pub fn connection_slot(&self) -> Result<OwnedSemaphorePermit, Shed> {
        self.connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Shed)
    }

    /// Every first try earns retry budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Spends budget on a retry; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

/// Destinations by namespace and name. A changed policy replaces the state (requests in flight keep
/// their slots in the old one).
#[derive(Default)]
pub struct Destinations {
    /// By namespace, then name: a request's lookup borrows its `&str`s; keys are built only for a new
    /// destination.
    by_name: Mutex<HashMap<String, HashMap<String, Arc<DestState>>>>,
}

impl Destinations {
    pub fn get(&self, namespace: &str, name: &str, spec: Option<&TrafficPolicy>) -> Arc<DestState> {
        let policy = Policy::from_spec(spec);
        let mut map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(namespace).and_then(|m| m.get(name)) {
            if d.policy == policy {
                return d.clone();
            }
        }
        let d = Arc::new(DestState::new(policy));
        map.entry(namespace.to_string())
            .or_default()
            .insert(name.to_string(), d.clone());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::resources::{ConnectionPool, RetryBudget};

    fn state(max_requests: u32, max_pending: u32) -> DestState {
        DestState::new(Policy::from_spec(Some(&TrafficPolicy {
            connection_pool: Some(ConnectionPool {
                max_requests: Some(max_requests),
                max_pending_requests: Some(max_pending),
                max_connections: Some(1),
            }),
            retry_budget: Some(RetryBudget {
                percent: Some(20),
                min_retries_per_second: Some(0),
            }),
            ..Default::default()
        })))
    }

    #[tokio::test]
    async fn the_bulkhead_sheds_past_its_waiters() {
        let d = Arc::new(state(2, 1));
        let a = d.request_slot().await.unwrap();
        let _b = d.request_slot().await.unwrap();
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.request_slot().await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            d.request_slot().await.err(),
            Some(Shed),
            "one waiter is the limit"
        );
        drop(a);
        assert!(waiter.await.unwrap(), "the waiter gets the freed slot");
        let _c = d.connection_slot().unwrap();
        assert_eq!(d.connection_slot().err(), Some(Shed));
    }

    #[test]
    fn the_budget_allows_a_fraction_of_requests() {
        let d = state(1, 0);
        for _ in 0..100 {
            d.deposit();
        }
        let granted = (0..100).take_while(|_| d.withdraw()).count();
        assert!(
            (15..=25).contains(&granted),
            "{granted} retries for 100 requests"
        );
    }
}

//! What this proxy has seen of each destination service and version (subset): requests, failures and a
//! latency histogram, cumulative since start. Reported to the control plane, which uses it to watch a
//! progressive shift.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in milliseconds; a last, unbounded bucket follows.
pub const BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatsKey {
    pub namespace: String,
    pub service: String,
    /// The `version` label of the endpoints the request went to (the route's subset), if any.
    pub subset: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    /// Answers with status 5xx, including the proxy's own (no endpoint, timeouts, shed).
    pub failures: u64,
    /// `BUCKETS_MS.len() + 1` counters; the last counts requests slower than every bound.
    pub buckets: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct UpstreamStats {
    by_key: Mutex<HashMap<StatsKey, Counts>>,
}

impl UpstreamStats {
    /// Counts one finished request (its response head received or made by the proxy).
    pub fn record(&self, key: &StatsKey, status: u16, elapsed: Duration) {
        let ms = elapsed.as_millis();
        let bucket = BUCKETS_MS
            .iter()
            .position(|&b| ms <= u128::from(b))
            .unwrap_or(BUCKETS_MS.len());
        let mut map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let c = match map.get_mut(key) {
            Some(c) => c,
            None => map.entry(key.clone()).or_insert_with(|| Counts {
                buckets: vec![0; BUCKETS_MS.len() + 1],
                ..Counts::default()
            }),
        };
        c.requests += 1;
        if status >= 500 {
            c.failures += 1;
        }
        c.buckets[bucket] += 1;
    }

    /// Every key's counts, sorted by key.
    pub fn snapshot(&self) -> Vec<(StatsKey, Counts)> {
        let map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_buckets() {
        let s = UpstreamStats::default();
        let k = StatsKey {
            namespace: "default".into(),
            service: "reviews".into(),
            subset: Some("v2".into()),
        };
        s.record(&k, 200, Duration::from_micros(900));
        s.record(&k, 503, Duration::from_millis(30));
        s.record(&k, 200, Duration::from_secs(60));
        let snap = s.snapshot();
        assert_eq!(snap.len(), 1);
        let c = &snap[0].1;
        assert_eq!((c.requests, c.failures), (3, 1));
        assert_eq!(c.buckets[0], 1, "0.9 ms is within 1 ms");
        assert_eq!(c.buckets[5], 1, "30 ms is within 50 ms");
        assert_eq!(c.buckets[BUCKETS_MS.len()], 1, "60 s is past every bound");
    }
}

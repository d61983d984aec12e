//! What the new subset did during a step, from the proxies' cumulative counts (`GET /v1/stats`):
//! per-proxy deltas between two answers, summed into the step's window, and the verdict against the
//! thresholds.
//!
//! Counts are cumulative per proxy since it started, so a delta is "now minus before" per proxy. A proxy
//! that restarted in between (its `countingMs` is shorter than the time since the earlier answer allows)
//! or whose counts went down starts again from zero: everything it reports now is new. A proxy not seen
//! before is new if it has been counting only since about the earlier answer; otherwise (its stream was
//! down, or it had not called the service yet) it only sets its baseline, since its old counts cannot be
//! told apart from the new.

use super::plan::Percent;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use weft_api::operator::{ServiceStats, SubsetStats};

/// Reports reach the control plane about once a second: allow that much disagreement between clocks.
const REPORT_SLACK_MS: u64 = 1_500;
/// The percentile watched.
const QUANTILE: f64 = 0.99;

/// Requests, failures and latency buckets of one subset over some time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub failures: u64,
    pub buckets: Vec<u64>,
}

impl Counts {
    fn from_stats(s: &SubsetStats) -> Counts {
        Counts {
            requests: s.requests,
            failures: s.failures,
            buckets: s.buckets.clone(),
        }
    }

    /// `self - before`, or `None` when any count went down (a reset).
    fn since(&self, before: &Counts) -> Option<Counts> {
        let buckets = self
            .buckets
            .iter()
            .zip(before.buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.checked_sub(*b))
            .collect::<Option<Vec<u64>>>()?;
        Some(Counts {
            requests: self.requests.checked_sub(before.requests)?,
            failures: self.failures.checked_sub(before.failures)?,
            buckets,
        })
    }

    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(*b);
        }
    }

    /// Failures per request; 0 without requests.
    pub fn error_rate(&self) -> f64 {
        match self.requests {
            0 => 0.0,
            n => self.failures as f64 / n as f64,
        }
    }
}

/// One subset's counts per proxy, at one answer of the control plane.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    proxies: BTreeMap<String, (u64, Counts)>,
}

impl Sample {
    /// `subset`'s counts in `stats`, per reporting proxy (with how long each has counted).
    pub fn of(stats: &ServiceStats, subset: &str) -> Sample {
        Sample::of_subset(stats, Some(subset))
    }

    /// Like [`Sample::of`]; `None` is the requests routed to the service as a whole (no subset).
    pub fn of_subset(stats: &ServiceStats, subset: Option<&str>) -> Sample {
        let proxies = stats
            .by_proxy
            .iter()
            .map(|p| {
                let counts = p
                    .subsets
                    .iter()
                    .find(|s| s.subset.as_deref() == subset)
                    .map(Counts::from_stats)
                    .unwrap_or_default();
                (p.proxy.clone(), (p.counting_ms, counts))
            })
            .collect();
        Sample { proxies }
    }

    /// What happened between `before` and this sample, taken `elapsed` later.
    pub fn since(&self, before: &Sample, elapsed: Duration) -> Counts {
        let elapsed_ms = elapsed.as_millis() as u64;
        let mut total = Counts::default();
        for (proxy, (counting_ms, now)) in &self.proxies {
            let delta = match before.proxies.get(proxy) {
                Some((was_counting, was)) => {
                    let restarted =
                        counting_ms.saturating_add(REPORT_SLACK_MS) < was_counting + elapsed_ms;
                    match now.since(was) {
                        Some(d) if !restarted => d,
                        _ => now.clone(),
                    }
                }
                None if *counting_ms <= elapsed_ms + REPORT_SLACK_MS => now.clone(),
                None => Counts::default(),
            };
            total.add(&delta);
        }
        total
    }
}

/// Where the 99th percentile lies, as far as the buckets tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum P99 {
    /// In the bucket with this upper bound (ms).
    AtMost(u64),
    /// Slower than the last bound (ms).
    Over(u64),
}

impl fmt::Display for P99 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            P99::AtMost(ms) => write!(f, "p99 ≤ {}", weft_api::Duration::from_millis(*ms)),
            P99::Over(ms) => write!(f, "p99 > {}", weft_api::Duration::from_millis(*ms)),
        }
    }
}

/// The bucket holding the `QUANTILE`-th request (ranked by latency), named by its upper bound;
/// `None` without requests.
pub fn p99(buckets: &[u64], bounds_ms: &[u64]) -> Option<P99> {
    quantile(buckets, bounds_ms, QUANTILE)
}

/// The bucket holding the `q`-th request (0 < q ≤ 1), named by its upper bound.
pub fn quantile(buckets: &[u64], bounds_ms: &[u64], q: f64) -> Option<P99> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(match bounds_ms.get(i) {
                Some(b) => P99::AtMost(*b),
                None => P99::Over(bounds_ms.last().copied().unwrap_or(0)),
            });
        }
    }
    None
}

/// The limits a step must stay within.
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub max_error_rate: Percent,
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
}

/// What a step's window says.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within every threshold.
    Pass,
    /// Too few requests to tell yet.
    TooFew,
    /// The error rate (a fraction) is over `--max-error-rate`.
    ErrorRate(f64),
    /// The p99 bucket lies above `--max-p99`.
    Latency(P99),
}

pub fn judge(window: &Counts, bounds_ms: &[u64], t: &Thresholds) -> Verdict {
    if window.requests < t.min_requests.max(1) {
        return Verdict::TooFew;
    }
    let rate = window.error_rate();
    if rate > t.max_error_rate.fraction() {
        return Verdict::ErrorRate(rate);
    }
    if let (Some(max), Some(p)) = (t.max_p99, p99(&window.buckets, bounds_ms)) {
        let max_ms = max.as_millis() as u64;
        let over = match p {
            P99::AtMost(bound) => bound > max_ms,
            P99::Over(_) => true,
        };
        if over {
            return Verdict::Latency(p);
        }
    }
    Verdict::Pass
}

/// The largest bucket bound not above `max` (ms): p99 is known only to a bucket, so a step passes only
/// while the p99 bucket's upper bound is at most `max`, that is at most this bound.
pub fn effective_p99_limit(max: Duration, bounds_ms: &[u64]) -> Option<u64> {
    let max_ms = max.as_millis() as u64;
    bounds_ms.iter().copied().filter(|b| *b <= max_ms).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::control::LATENCY_BUCKETS_MS;
    use weft_api::operator::ProxyStats;

    const B: &[u64] = &LATENCY_BUCKETS_MS;

    fn buckets(at: &[(usize, u64)]) -> Vec<u64> {
        let mut b = vec![0; B.len() + 1];
        for (i, n) in at {
            b[*i] = *n;
        }
        b
    }

    #[test]
    fn p99_is_the_upper_bound_of_its_bucket() {
        assert_eq!(p99(&buckets(&[]), B), None);
        // 100 requests: the 99th is in the 5 ms bucket when 99 are at most 5 ms.
        assert_eq!(p99(&buckets(&[(2, 99), (7, 1)]), B), Some(P99::AtMost(5)));
        // 98 fast, 2 slow: the 99th is slow.
        assert_eq!(p99(&buckets(&[(2, 98), (7, 2)]), B), Some(P99::AtMost(250)));
        assert_eq!(p99(&buckets(&[(0, 1)]), B), Some(P99::AtMost(1)));
        assert_eq!(
            p99(&buckets(&[(2, 1), (12, 1)]), B),
            Some(P99::Over(10_000))
        );
        assert_eq!(P99::AtMost(250).to_string(), "p99 ≤ 250ms");
        assert_eq!(P99::AtMost(2500).to_string(), "p99 ≤ 2500ms");
        assert_eq!(P99::Over(10_000).to_string(), "p99 > 10s");
    }

    fn counts(requests: u64, failures: u64) -> Counts {
        Counts {
            requests,
            failures,
            buckets: buckets(&[(3, requests)]),
        }
    }

    fn stats(proxies: &[(&str, u64, u64, u64)]) -> ServiceStats {
        ServiceStats {
            namespace: "default".into(),
            service: "reviews".into(),
            bucket_bounds_ms: B.to_vec(),
            proxies_reporting: proxies.len(),
            subsets: Vec::new(),
            by_proxy: proxies
                .iter()
                .map(|(name, counting_ms, requests, failures)| ProxyStats {
                    proxy: name.to_string(),
                    identity: None,
                    counting_ms: *counting_ms,
                    subsets: vec![
                        SubsetStats {
                            subset: Some("v2".into()),
                            requests: *requests,
                            failures: *failures,
                            buckets: buckets(&[(3, *requests)]),
                        },
                        SubsetStats {
                            subset: Some("v1".into()),
                            requests: 1000,
                            failures: 0,
                            buckets: buckets(&[(3, 1000)]),
                        },
                    ],
                })
                .collect(),
        }
    }

    const TEN_S: Duration = Duration::from_secs(10);

    #[test]
    fn deltas_per_proxy_are_summed() {
        let a = Sample::of(&stats(&[("a", 60_000, 100, 1), ("b", 90_000, 50, 0)]), "v2");
        let b = Sample::of(
            &stats(&[("a", 70_000, 130, 4), ("b", 100_000, 60, 0)]),
            "v2",
        );
        let d = b.since(&a, TEN_S);
        assert_eq!((d.requests, d.failures), (40, 3));
        assert_eq!(d.buckets[3], 40);
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero() {
        let a = Sample::of(&stats(&[("a", 60_000, 100, 1)]), "v2");
        // Counting for 4 s where 70 s were due: it restarted; its 30 requests are all new, even
        // though 30 < 100 is not what gives it away here.
        let b = Sample::of(&stats(&[("a", 4_000, 30, 2)]), "v2");
        assert_eq!(b.since(&a, TEN_S), counts(30, 2));
        // A restart that ran up more than before is caught by the clock alone.
        let b = Sample::of(&stats(&[("a", 9_000, 500, 0)]), "v2");
        assert_eq!(b.since(&a, TEN_S), counts(500, 0));
    }

    #[test]
    fn a_decrease_is_a_reset_whatever_the_clock_says() {
        let a = Sample::of(&stats(&[("a", 60_000, 100, 10)]), "v2");
        let b = Sample::of(&stats(&[("a", 70_000, 120, 5)]), "v2");
        assert_eq!(b.since(&a, TEN_S), counts(120, 5));
    }

    #[test]
    fn a_new_proxy_counts_only_if_it_is_new() {
        let a = Sample::of(&stats(&[("a", 60_000, 100, 0)]), "v2");
        // Started since the first answer: all of its counts are new.
        let b = Sample::of(
            &stats(&[("a", 70_000, 100, 0), ("new", 8_000, 25, 1)]),
            "v2",
        );
        assert_eq!(b.since(&a, TEN_S), counts(25, 1));
        // Counting for an hour but absent before (its stream was down): only a baseline.
        let c = Sample::of(
            &stats(&[("a", 70_000, 100, 0), ("back", 3_600_000, 900, 9)]),
            "v2",
        );
        assert_eq!(c.since(&a, TEN_S), counts(0, 0));
        // ... from which the next interval counts.
        let d = Sample::of(
            &stats(&[("a", 80_000, 100, 0), ("back", 3_610_000, 910, 9)]),
            "v2",
        );
        assert_eq!(d.since(&c, TEN_S), counts(10, 0));
    }

    #[test]
    fn a_proxy_that_went_away_contributes_nothing() {
        let a = Sample::of(
            &stats(&[("a", 60_000, 100, 0), ("gone", 60_000, 100, 50)]),
            "v2",
        );
        let b = Sample::of(&stats(&[("a", 70_000, 110, 0)]), "v2");
        assert_eq!(b.since(&a, TEN_S), counts(10, 0));
    }

    #[test]
    fn a_subset_first_seen_counts_in_full() {
        let mut first = stats(&[("a", 60_000, 0, 0)]);
        first.by_proxy[0].subsets.remove(0); // "a" has called only v1 so far
        let a = Sample::of(&first, "v2");
        let b = Sample::of(&stats(&[("a", 70_000, 12, 1)]), "v2");
        assert_eq!(b.since(&a, TEN_S), counts(12, 1));
    }

    fn limits(max_p99_ms: Option<u64>) -> Thresholds {
        Thresholds {
            max_error_rate: "5%".parse().unwrap(),
            max_p99: max_p99_ms.map(Duration::from_millis),
            min_requests: 20,
        }
    }

    #[test]
    fn verdicts() {
        let t = limits(Some(250));
        assert_eq!(judge(&counts(19, 0), B, &t), Verdict::TooFew);
        assert_eq!(judge(&counts(0, 0), B, &limits(None)), Verdict::TooFew);
        assert_eq!(
            judge(&counts(100, 5), B, &t),
            Verdict::Pass,
            "5% is not over 5%"
        );
        assert_eq!(judge(&counts(100, 6), B, &t), Verdict::ErrorRate(0.06));
        let mut slow = counts(100, 0);
        slow.buckets = buckets(&[(3, 90), (8, 10)]);
        assert_eq!(judge(&slow, B, &t), Verdict::Latency(P99::AtMost(500)));
        assert_eq!(judge(&slow, B, &limits(Some(500))), Verdict::Pass);
        assert_eq!(
            judge(&slow, B, &limits(None)),
            Verdict::Pass,
            "no latency limit"
        );
        let mut stuck = counts(100, 0);
        stuck.buckets = buckets(&[(3, 98), (12, 2)]);
        assert_eq!(
            judge(&stuck, B, &limits(Some(60_000))),
            Verdict::Latency(P99::Over(10_000)),
            "past the last bound is over any limit"
        );
        // Errors are judged before latency.
        let mut both = slow.clone();
        both.failures = 50;
        assert_eq!(judge(&both, B, &t), Verdict::ErrorRate(0.5));
    }

    #[test]
    fn the_p99_limit_in_effect_is_a_bucket_bound() {
        assert_eq!(
            effective_p99_limit(Duration::from_millis(250), B),
            Some(250)
        );
        assert_eq!(
            effective_p99_limit(Duration::from_millis(200), B),
            Some(100)
        );
        assert_eq!(effective_p99_limit(Duration::from_secs(2), B), Some(1000));
        assert_eq!(effective_p99_limit(Duration::from_micros(500), B), None);
    }
}

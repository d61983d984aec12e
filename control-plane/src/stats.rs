//! The latest request counts each connected proxy reported on its config stream, and `GET /v1/stats`,
//! which sums them for one service. The control plane keeps no history: the counts are cumulative in
//! the proxies, so a reader (`weftctl shift --to`) takes deltas between two answers.
//!
//! A proxy's counts are dropped when its stream ends: a proxy that is gone carries no fresh news, and
//! when it comes back its report replaces the old one anyway.
//!
//! Every count is the reporter's own: a report has no source field, so it is attributed to the
//! identity of the certificate the stream was opened with (and the name that identity registered,
//! which no other identity can take). So that one workload cannot promote or roll back another's
//! release with made-up numbers, a series is kept only when it is plausible: well formed, counters
//! that never run backwards on one stream, no faster growth than [`MAX_RATE`] requests a second, and a
//! destination whose policies do not refuse the reporter outright (its requests never got there).
//! What is left out is logged and counted (`weft_control_stats_entries_dropped`).

use crate::http_util::{self, Body};
use http::{Response, StatusCode};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use weft_api::control::{StatsEntry, StatsReport, LATENCY_BUCKETS_MS, MAX_STATS_ENTRIES};
use weft_api::operator::{ProxyStats, ServiceStats, SubsetStats};
use weft_api::resources::dns_label;
use weft_certs::SpiffeId;

/// Most requests a second one proxy can have sent to one subset; counts growing faster are not real.
pub const MAX_RATE: u64 = 100_000;

type Series = (String, String, Option<String>);

struct Reported {
    /// The stream the report came on; a newer stream of the same proxy replaces it.
    conn_id: u64,
    /// The reporter's certificate identity.
    identity: SpiffeId,
    /// When the proxy's counters started, on this control plane's clock.
    counting_since: Instant,
    /// By (namespace, service), each subset's counts.
    services: BTreeMap<(String, String), Vec<SubsetStats>>,
}

#[derive(Default)]
pub struct StatsStore {
    by_proxy: Mutex<BTreeMap<String, Reported>>,
}

impl StatsStore {
    /// Keeps `report` as proxy `key`'s latest (on stream `conn_id`, by `identity`). Entries that break
    /// the protocol's shape, are over [`MAX_STATS_ENTRIES`], run backwards or grow implausibly fast are
    /// left out (a series that ran backwards keeps its previous counts), logged and counted.
    pub fn update(
        &self,
        key: &str,
        identity: &SpiffeId,
        conn_id: u64,
        report: StatsReport,
        metrics: &crate::metrics::Metrics,
        may_reach: impl Fn(&str, &str, Option<&str>) -> bool,
    ) {
        let now = Instant::now();
        // Asked before the store is locked: answering takes the registry's lock.
        let mut unreachable: Vec<Series> = Vec::new();
        for e in report.entries.iter().take(MAX_STATS_ENTRIES) {
            let series = (e.namespace.clone(), e.service.clone(), e.subset.clone());
            if !unreachable.contains(&series)
                && !may_reach(&e.namespace, &e.service, e.subset.as_deref())
            {
                unreachable.push(series);
            }
        }
        let counting_since = now
            .checked_sub(Duration::from_millis(report.counting_ms))
            .unwrap_or(now);
        let mut map = self.by_proxy.lock().unwrap_or_else(|e| e.into_inner());
        let previous: BTreeMap<Series, SubsetStats> = map
            .get(key)
            .filter(|r| r.conn_id == conn_id)
            .map(flatten)
            .unwrap_or_default();
        let mut kept = Judged::default();
        for e in report.entries.iter().take(MAX_STATS_ENTRIES) {
            let series = (e.namespace.clone(), e.service.clone(), e.subset.clone());
            if unreachable.contains(&series) {
                kept.unreachable += 1;
                continue;
            }
            kept.judge(e, &previous, report.counting_ms);
        }
        kept.over_cap = report.entries.len().saturating_sub(MAX_STATS_ENTRIES) as u64;
        kept.log_and_count(key, identity, metrics);
        let mut services: BTreeMap<(String, String), Vec<SubsetStats>> = BTreeMap::new();
        for ((ns, svc, _), stats) in kept.series {
            services.entry((ns, svc)).or_default().push(stats);
        }
        map.insert(
            key.to_string(),
            Reported {
                conn_id,
                identity: identity.clone(),
                counting_since,
                services,
            },
        );
    }

    /// Proxy `key`'s stream `conn_id` ended.
    pub fn remove(&self, key: &str, conn_id: u64) {
        let mut map = self.by_proxy.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|r| r.conn_id == conn_id) {
            map.remove(key);
        }
    }

    /// What the connected proxies report of `namespace/service`.
    pub fn service(&self, namespace: &str, service: &str) -> ServiceStats {
        let map = self.by_proxy.lock().unwrap_or_else(|e| e.into_inner());
        let want = (namespace.to_string(), service.to_string());
        let by_proxy: Vec<ProxyStats> = map
            .iter()
            .filter_map(|(proxy, r)| {
                let subsets = r.services.get(&want)?;
                Some(ProxyStats {
                    proxy: proxy.clone(),
                    identity: Some(r.identity.clone()),
                    counting_ms: r.counting_since.elapsed().as_millis() as u64,
                    subsets: subsets.clone(),
                })
            })
            .collect();
        ServiceStats {
            namespace: namespace.to_string(),
            service: service.to_string(),
            bucket_bounds_ms: LATENCY_BUCKETS_MS.to_vec(),
            proxies_reporting: by_proxy.len(),
            subsets: sum(&by_proxy),
            by_proxy,
        }
    }
}

/// Each series of a stored report with its counts.
fn flatten(r: &Reported) -> BTreeMap<Series, SubsetStats> {
    r.services
        .iter()
        .flat_map(|((ns, svc), subsets)| {
            subsets
                .iter()
                .map(move |s| ((ns.clone(), svc.clone(), s.subset.clone()), s.clone()))
        })
        .collect()
}

/// One report's series sorted into kept and left out.
#[derive(Default)]
struct Judged {
    series: BTreeMap<Series, SubsetStats>,
    malformed: u64,
    backwards: u64,
    implausible: u64,
    over_cap: u64,
    /// Series of destinations whose policies refuse the reporter whatever it asks.
    unreachable: u64,
}

impl Judged {
    fn judge(
        &mut self,
        e: &StatsEntry,
        previous: &BTreeMap<Series, SubsetStats>,
        counting_ms: u64,
    ) {
        let series = (e.namespace.clone(), e.service.clone(), e.subset.clone());
        if !e.is_well_formed() || self.series.contains_key(&series) {
            self.malformed += 1;
            return;
        }
        let before = previous.get(&series);
        if let Some(b) = before {
            if e.requests < b.requests || e.failures < b.failures {
                self.backwards += 1;
                self.series.insert(series, b.clone());
                return;
            }
        }
        // Cumulative since the proxy started: at most MAX_RATE a second over its counting time.
        let allowed = MAX_RATE.saturating_mul(counting_ms / 1000 + 1);
        if e.requests > allowed {
            self.implausible += 1;
            if let Some(b) = before {
                self.series.insert(series, b.clone());
            }
            return;
        }
        self.series.insert(
            series,
            SubsetStats {
                subset: e.subset.clone(),
                requests: e.requests,
                failures: e.failures,
                buckets: e.buckets.clone(),
            },
        );
    }

    fn log_and_count(&self, key: &str, identity: &SpiffeId, metrics: &crate::metrics::Metrics) {
        let counts = [
            ("malformed", self.malformed),
            ("backwards", self.backwards),
            ("implausible", self.implausible),
            ("over_cap", self.over_cap),
            ("unreachable", self.unreachable),
        ];
        for (reason, n) in counts {
            metrics.stats_dropped(reason, n);
        }
        if counts.iter().any(|(_, n)| *n > 0) {
            tracing::warn!(
                proxy = key,
                %identity,
                malformed = self.malformed,
                backwards = self.backwards,
                implausible = self.implausible,
                over_cap = self.over_cap,
                unreachable = self.unreachable,
                "request counts left out"
            );
        }
    }
}

/// Each subset's counts summed over the proxies (saturating: counts from a misbehaving proxy must not
/// panic the control plane).
fn sum(proxies: &[ProxyStats]) -> Vec<SubsetStats> {
    let mut total: BTreeMap<Option<String>, SubsetStats> = BTreeMap::new();
    for s in proxies.iter().flat_map(|p| &p.subsets) {
        let t = total
            .entry(s.subset.clone())
            .or_insert_with(|| SubsetStats {
                subset: s.subset.clone(),
                buckets: vec![0; LATENCY_BUCKETS_MS.len() + 1],
                ..SubsetStats::default()
            });
        t.requests = t.requests.saturating_add(s.requests);
        t.failures = t.failures.saturating_add(s.failures);
        for (t, b) in t.buckets.iter_mut().zip(&s.buckets) {
            *t = t.saturating_add(*b);
        }
    }
    total.into_values().collect()
}

/// `GET /v1/stats?namespace=NS&service=NAME` (namespace defaults to `default`).
pub fn get(store: &StatsStore, query: Option<&str>) -> Response<Body> {
    let mut namespace = "default".to_string();
    let mut service = None;
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("namespace", v)) => namespace = v.to_string(),
            Some(("service", v)) => service = Some(v.to_string()),
            _ => {}
        }
    }
    let Some(service) = service else {
        return http_util::error(
            StatusCode::BAD_REQUEST,
            "give the service: /v1/stats?namespace=NS&service=NAME",
            vec![],
        );
    };
    for (what, v) in [("namespace", &namespace), ("service", &service)] {
        if let Err(e) = dns_label(v) {
            return http_util::error(
                StatusCode::BAD_REQUEST,
                format!("{what} {v:?}: {e}"),
                vec![],
            );
        }
    }
    http_util::json(StatusCode::OK, &store.service(&namespace, &service))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(service: &str, subset: &str, requests: u64, failures: u64) -> StatsEntry {
        let mut buckets = vec![0; LATENCY_BUCKETS_MS.len() + 1];
        buckets[3] = requests;
        StatsEntry {
            namespace: "default".into(),
            service: service.into(),
            subset: Some(subset.into()),
            requests,
            failures,
            buckets,
        }
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://t.local/ns/default/sa/{sa}")).unwrap()
    }

    fn update(s: &StatsStore, key: &str, conn_id: u64, report: StatsReport) {
        let sa = key.rsplit('/').next().unwrap();
        s.update(
            key,
            &id(sa),
            conn_id,
            report,
            &crate::metrics::Metrics::new(),
            |_, _, subset| subset != Some("denied"),
        );
    }

    fn report(entries: Vec<StatsEntry>) -> StatsReport {
        StatsReport {
            counting_ms: 5000,
            entries,
            omitted: 0,
        }
    }

    #[test]
    fn sums_per_subset_over_proxies_and_keeps_each_proxys_counts() {
        let s = StatsStore::default();
        update(
            &s,
            "default/a",
            1,
            report(vec![
                entry("reviews", "v1", 10, 1),
                entry("ratings", "v1", 7, 0),
            ]),
        );
        update(
            &s,
            "default/b",
            2,
            report(vec![
                entry("reviews", "v1", 5, 0),
                entry("reviews", "v2", 4, 4),
            ]),
        );
        let got = s.service("default", "reviews");
        assert_eq!(got.proxies_reporting, 2);
        let v1 = &got.subsets[0];
        assert_eq!(
            (v1.subset.as_deref(), v1.requests, v1.failures),
            (Some("v1"), 15, 1)
        );
        assert_eq!(v1.buckets[3], 15);
        assert_eq!(got.subsets[1].failures, 4);
        assert_eq!(got.by_proxy.len(), 2);
        assert!(got.by_proxy[0].counting_ms >= 5000);
        assert_eq!(s.service("default", "ratings").proxies_reporting, 1);
        assert_eq!(s.service("shop", "reviews").proxies_reporting, 0);
    }

    #[test]
    fn a_proxy_is_forgotten_when_its_stream_ends_but_not_for_an_older_stream() {
        let s = StatsStore::default();
        update(
            &s,
            "default/a",
            1,
            report(vec![entry("reviews", "v1", 1, 0)]),
        );
        update(
            &s,
            "default/a",
            2,
            report(vec![entry("reviews", "v1", 2, 0)]),
        );
        s.remove("default/a", 1);
        assert_eq!(s.service("default", "reviews").subsets[0].requests, 2);
        s.remove("default/a", 2);
        assert_eq!(s.service("default", "reviews").proxies_reporting, 0);
    }

    #[test]
    fn counters_that_run_backwards_or_grow_too_fast_keep_their_last_counts() {
        let s = StatsStore::default();
        update(
            &s,
            "default/a",
            1,
            report(vec![entry("reviews", "v2", 10, 0)]),
        );
        update(
            &s,
            "default/a",
            1,
            report(vec![entry("reviews", "v2", 5, 5)]),
        );
        let got = s.service("default", "reviews");
        assert_eq!((got.subsets[0].requests, got.subsets[0].failures), (10, 0));
        assert_eq!(got.by_proxy[0].identity, Some(id("a")));
        update(
            &s,
            "default/a",
            1,
            report(vec![entry("reviews", "denied", 5, 5)]),
        );
        assert_eq!(
            s.service("default", "reviews").subsets.len(),
            0,
            "unreachable"
        );
        update(
            &s,
            "default/a",
            1,
            report(vec![entry("reviews", "v2", 10, 0)]),
        );
        let huge = entry("reviews", "v2", MAX_RATE * 100, 0);
        update(&s, "default/a", 1, report(vec![huge.clone()]));
        assert_eq!(s.service("default", "reviews").subsets[0].requests, 10);
        // A new stream starts afresh (the proxy restarted), still within the rate.
        update(
            &s,
            "default/a",
            2,
            report(vec![entry("reviews", "v2", 3, 0)]),
        );
        assert_eq!(s.service("default", "reviews").subsets[0].requests, 3);
        let mut long = report(vec![huge]);
        long.counting_ms = 200_000;
        update(&s, "default/a", 2, long);
        assert_eq!(
            s.service("default", "reviews").subsets[0].requests,
            MAX_RATE * 100
        );
    }

    #[test]
    fn malformed_entries_and_entries_over_the_cap_are_left_out() {
        let s = StatsStore::default();
        let mut bad = entry("reviews", "v2", 1, 0);
        bad.buckets.pop();
        let mut entries = vec![bad, entry("reviews", "v1", 3, 0)];
        entries.extend((0..MAX_STATS_ENTRIES).map(|i| entry(&format!("svc{i}"), "v1", 1, 0)));
        update(&s, "default/a", 1, report(entries));
        let got = s.service("default", "reviews");
        assert_eq!(got.subsets.len(), 1, "{got:?}");
        assert_eq!(got.subsets[0].requests, 3);
        let last = format!("svc{}", MAX_STATS_ENTRIES - 1);
        assert_eq!(
            s.service("default", &last).proxies_reporting,
            0,
            "over the cap"
        );
    }
}

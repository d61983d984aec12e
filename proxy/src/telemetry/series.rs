//! The counter and histogram of the HTTP label sets used last, found again without copying or hashing
//! a label. A prometheus-client family finds a series by hashing its whole label set (SipHash over
//! two identities, a service, a version and a route: ~1,500 instructions per lookup, two lookups per
//! request, after five label strings were copied to make the key); most requests repeat a label set
//! used a moment ago, so a short list compared field by field finds it first.

use super::labels::{Direction, MethodClass};
use super::metrics::{HttpLabels, LatencyLabels};
use crate::traffic::service_name::ServiceName;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Mutex;

/// Label sets remembered; past it, the least recently found one makes room.
const RECENT: usize = 8;

/// One request's labels, borrowed from its record.
pub struct HttpLabelsRef<'a> {
    pub direction: Direction,
    pub source_identity: &'a str,
    pub destination_identity: &'a str,
    pub destination_service: Option<&'a ServiceName>,
    pub destination_version: &'a str,
    pub route: &'a str,
    pub method: MethodClass,
    pub status_code: u16,
}

impl HttpLabelsRef<'_> {
    fn matches(&self, l: &HttpLabels) -> bool {
        self.status_code == l.status_code
            && self.direction == l.direction
            && self.method == l.method
            && self.source_identity == l.source_identity
            && self.destination_identity == l.destination_identity
            && self.destination_version == l.destination_version
            && self.route == l.route
            && service_is(self.destination_service, &l.destination_service)
    }

    pub fn owned(&self) -> HttpLabels {
        HttpLabels {
            direction: self.direction,
            source_identity: self.source_identity.to_string(),
            destination_identity: self.destination_identity.to_string(),
            destination_service: self
                .destination_service
                .map(ToString::to_string)
                .unwrap_or_default(),
            destination_version: self.destination_version.to_string(),
            route: self.route.to_string(),
            method: self.method,
            status_code: self.status_code,
        }
    }
}

/// Whether `label` is the service's `namespace/name` (or empty for none), without formatting it.
fn service_is(service: Option<&ServiceName>, label: &str) -> bool {
    match service {
        None => label.is_empty(),
        Some(s) => {
            label.len() == s.namespace.len() + 1 + s.name.len()
                && label.starts_with(s.namespace.as_str())
                && label[s.namespace.len()..].starts_with('/')
                && label.ends_with(s.name.as_str())
        }
    }
}

struct Series {
    labels: HttpLabels,
    requests: Counter,
    latency: Histogram,
}

/// The recently used HTTP series, most recent first.
#[derive(Default)]
pub struct RecentSeries {
    list: Mutex<Vec<Series>>,
}

impl RecentSeries {
    /// Counts one request and its latency in the families, through the remembered series when the
    /// label set was used lately.
    pub fn observe(
        &self,
        requests: &Family<HttpLabels, Counter>,
        latency: &Family<LatencyLabels, Histogram>,
        labels: HttpLabelsRef<'_>,
        seconds: f64,
    ) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = list.iter().position(|s| labels.matches(&s.labels)) {
            let s = &list[i];
            s.requests.inc();
            s.latency.observe(seconds);
            if i > 0 {
                list[..=i].rotate_right(1);
            }
            return;
        }
        let owned = labels.owned();
        let series = Series {
            requests: requests.get_or_create(&owned).clone(),
            latency: latency
                .get_or_create(&LatencyLabels {
                    direction: owned.direction,
                    destination_service: owned.destination_service.clone(),
                    destination_version: owned.destination_version.clone(),
                })
                .clone(),
            labels: owned,
        };
        series.requests.inc();
        series.latency.observe(seconds);
        list.truncate(RECENT - 1);
        list.insert(0, series);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;
    use std::time::Duration;

    fn labels<'a>(
        service: Option<&'a ServiceName>,
        route: &'a str,
        status: u16,
    ) -> HttpLabelsRef<'a> {
        HttpLabelsRef {
            direction: Direction::Outbound,
            source_identity: "spiffe://td/ns/a/sa/b",
            destination_identity: "",
            destination_service: service,
            destination_version: "v1",
            route,
            method: MethodClass::Get,
            status_code: status,
        }
    }

    fn count(text: &str, prefix: &str, needles: &[&str]) -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    #[test]
    fn every_request_is_counted_in_its_own_series_however_many_label_sets_take_turns() {
        let m = Metrics::new();
        let (shop, cart) = (
            ServiceName::new("shop", "reviews"),
            ServiceName::new("shop", "cart"),
        );
        let routes: Vec<String> = (0..20).map(|i| format!("shop/r rules[{i}]")).collect();
        for round in 0..3 {
            m.http_request(labels(Some(&shop), "", 200), Duration::from_millis(1));
            m.http_request(labels(Some(&cart), "", 200), Duration::from_millis(1));
            m.http_request(labels(Some(&shop), "", 503), Duration::from_millis(1));
            for r in &routes[..10 + round] {
                m.http_request(labels(None, r, 200), Duration::from_millis(1));
            }
        }
        let text = m.encode();
        let total = "weft_proxy_http_requests_total{";
        let shop_label = "destination_service=\"shop/reviews\"";
        assert_eq!(count(&text, total, &[shop_label, "status_code=\"200\""]), 3);
        assert_eq!(count(&text, total, &[shop_label, "status_code=\"503\""]), 3);
        assert_eq!(count(&text, total, &["shop/cart"]), 3);
        assert_eq!(count(&text, total, &["route=\"shop/r rules[0]\""]), 3);
        assert_eq!(count(&text, total, &["route=\"shop/r rules[11]\""]), 1);
        assert_eq!(count(&text, total, &[]), 3 * 3 + 10 + 11 + 12);
        let latency = "weft_proxy_http_request_duration_seconds_count{";
        assert_eq!(count(&text, latency, &[shop_label]), 6);
    }

    #[test]
    fn a_service_label_is_namespace_slash_name_exactly() {
        let s = ServiceName::new("shop", "reviews");
        assert!(service_is(Some(&s), "shop/reviews"));
        for other in [
            "shop/review",
            "sho/previews",
            "shopreviews",
            "shop/reviewsx",
            "",
            "/",
        ] {
            assert!(!service_is(Some(&s), other), "{other}");
        }
        assert!(service_is(None, ""));
        assert!(!service_is(None, "shop/reviews"));
    }
}

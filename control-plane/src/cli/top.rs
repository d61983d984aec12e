//! `weftctl stat` and `weftctl top`: per service and version, the request rate, success rate and
//! latency percentiles that the calling proxies measured, from two answers of `GET /v1/stats` a window
//! apart (the counts are cumulative; see `progressive::window` for how restarts are handled).
//! Percentiles are the upper bounds of the latency buckets they fall in.

use super::args::{ListFormat, StatArgs, TopArgs};
use super::client::{segment, Client};
use super::commands::{CommandError, Reply};
use super::progressive::window::{quantile, Counts, Sample, P99};
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};
use weft_api::operator::ServiceStats;
use weft_api::resources::Kind;

/// One service version's figures over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub service: String,
    /// The subset (`version`); `None` for requests routed to the whole service.
    pub version: Option<String>,
    pub rps: f64,
    /// Non-5xx answers per request; `None` without requests.
    pub success: Option<f64>,
    pub p50: Option<P99>,
    pub p95: Option<P99>,
    pub p99: Option<P99>,
}

/// The services to show: the one named, or every service of the namespace.
async fn services(
    client: &Client,
    ns: &str,
    one: Option<&str>,
) -> Result<Vec<String>, CommandError> {
    if let Some(s) = one {
        return Ok(vec![s.to_string()]);
    }
    let path = format!("/v1/resources/{}/{}", Kind::Service.as_str(), segment(ns));
    let found: Vec<serde_json::Value> = client.get(&path).await?;
    Ok(found
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

async fn snapshot(
    client: &Client,
    ns: &str,
    names: &[String],
) -> Result<Vec<ServiceStats>, CommandError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = format!(
            "/v1/stats?namespace={}&service={}",
            segment(ns),
            segment(name)
        );
        out.push(client.get(&path).await?);
    }
    Ok(out)
}

/// The rows for what happened between two snapshots taken `elapsed` apart.
pub fn rows(before: &[ServiceStats], after: &[ServiceStats], elapsed: Duration) -> Vec<Row> {
    let mut rows = Vec::new();
    for now in after {
        let was = before
            .iter()
            .find(|b| b.service == now.service && b.namespace == now.namespace);
        let mut subsets: Vec<Option<String>> =
            now.subsets.iter().map(|s| s.subset.clone()).collect();
        subsets.sort();
        subsets.dedup();
        for subset in subsets {
            let later = Sample::of_subset(now, subset.as_deref());
            let earlier = was
                .map(|w| Sample::of_subset(w, subset.as_deref()))
                .unwrap_or_default();
            let c: Counts = later.since(&earlier, elapsed);
            let secs = elapsed.as_secs_f64().max(0.001);
            let bounds = &now.bucket_bounds_ms;
            rows.push(Row {
                service: now.service.clone(),
                version: subset,
                rps: c.requests as f64 / secs,
                success: (c.requests > 0).then(|| 1.0 - c.error_rate()),
                p50: quantile(&c.buckets, bounds, 0.50),
                p95: quantile(&c.buckets, bounds, 0.95),
                p99: quantile(&c.buckets, bounds, 0.99),
            });
        }
    }
    rows
}

fn ms(p: Option<P99>) -> String {
    match p {
        None => "-".into(),
        Some(P99::AtMost(ms)) => format!("≤{ms}ms"),
        Some(P99::Over(ms)) => format!(">{ms}ms"),
    }
}

fn ms_json(p: Option<P99>) -> serde_json::Value {
    match p {
        None => serde_json::Value::Null,
        Some(P99::AtMost(ms)) => json!({"atMostMs": ms}),
        Some(P99::Over(ms)) => json!({"overMs": ms}),
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<20} {:<10} {:>9} {:>9} {:>10} {:>10} {:>10}\n",
        "SERVICE", "VERSION", "RPS", "SUCCESS", "P50", "P95", "P99"
    );
    for r in rows {
        let success = r
            .success
            .map(|s| format!("{:.2}%", s * 100.0))
            .unwrap_or_else(|| "-".into());
        out += &format!(
            "{:<20} {:<10} {:>9.1} {:>9} {:>10} {:>10} {:>10}\n",
            r.service,
            r.version.as_deref().unwrap_or("-"),
            r.rps,
            success,
            ms(r.p50),
            ms(r.p95),
            ms(r.p99)
        );
    }
    out
}

pub fn to_json(rows: &[Row]) -> serde_json::Value {
    json!(rows
        .iter()
        .map(|r| json!({
            "service": r.service,
            "version": r.version,
            "requestsPerSecond": r.rps,
            "successRate": r.success,
            "p50": ms_json(r.p50),
            "p95": ms_json(r.p95),
            "p99": ms_json(r.p99),
        }))
        .collect::<Vec<_>>())
}

/// `weftctl stat`: one window, printed once.
pub async fn stat(client: &Client, a: StatArgs) -> Result<Reply, CommandError> {
    let names = services(client, &a.namespace, a.service.as_deref()).await?;
    let window = a.window.get();
    let before = snapshot(client, &a.namespace, &names).await?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let after = snapshot(client, &a.namespace, &names).await?;
    let rows = rows(&before, &after, t.elapsed());
    Ok(Reply::out(match a.output {
        ListFormat::Table => table(&rows),
        ListFormat::Json => format!("{:#}\n", to_json(&rows)),
    }))
}

/// `weftctl top`: a window every `--interval`, the screen redrawn each time, until Ctrl-C (or
/// `--iterations`).
pub async fn top(client: &Client, a: TopArgs, out: &mut dyn Write) -> Result<Reply, CommandError> {
    let names = services(client, &a.namespace, a.service.as_deref()).await?;
    let mut before = snapshot(client, &a.namespace, &names).await?;
    let mut t = Instant::now();
    let mut n = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(a.interval.get()) => {}
            _ = tokio::signal::ctrl_c() => return Ok(Reply::out(String::new())),
        }
        let after = snapshot(client, &a.namespace, &names).await?;
        let rows = rows(&before, &after, t.elapsed());
        let clear = if a.no_clear { "" } else { "\x1b[2J\x1b[H" };
        let _ = write!(
            out,
            "{clear}weftctl top — namespace {}, every {}, as the calling proxies measure it\n\n{}\n",
            a.namespace,
            a.interval,
            table(&rows)
        );
        let _ = out.flush();
        before = after;
        t = Instant::now();
        n += 1;
        if a.iterations.is_some_and(|max| n >= max) {
            return Ok(Reply::out(String::new()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::operator::{ProxyStats, SubsetStats};

    fn stats(counting_ms: u64, requests: u64, failures: u64, fast: u64) -> ServiceStats {
        let subset = |v: &str, r: u64, f: u64, fast: u64| SubsetStats {
            subset: Some(v.into()),
            requests: r,
            failures: f,
            buckets: vec![fast, r - fast],
        };
        let subsets = vec![
            subset("v1", requests, 0, requests),
            subset("v2", requests, failures, fast),
        ];
        ServiceStats {
            namespace: "default".into(),
            service: "reviews".into(),
            bucket_bounds_ms: vec![10],
            proxies_reporting: 1,
            subsets: subsets.clone(),
            by_proxy: vec![ProxyStats {
                proxy: "default/client".into(),
                identity: None,
                counting_ms,
                subsets,
            }],
        }
    }

    #[test]
    fn a_failing_version_shows_in_its_row() {
        let rows = rows(
            &[stats(60_000, 100, 0, 100)],
            &[stats(62_000, 300, 100, 150)],
            Duration::from_secs(2),
        );
        assert_eq!(rows.len(), 2);
        let v1 = &rows[0];
        assert_eq!(
            (v1.version.as_deref(), v1.rps, v1.success),
            (Some("v1"), 100.0, Some(1.0))
        );
        assert_eq!(v1.p99, Some(P99::AtMost(10)));
        let v2 = &rows[1];
        assert_eq!(v2.success, Some(0.5));
        assert_eq!(
            v2.p50,
            Some(P99::Over(10)),
            "50 of the window's 200 were fast"
        );
        let text = table(&rows);
        assert!(text.contains("50.00%"), "{text}");
    }
}

//! Trace propagation and spans. Each hop reads the caller's trace context (W3C `traceparent` /
//! `tracestate`, or B3 in its single `b3` or multi `x-b3-*` form), starts a trace when none came in,
//! records a span of its own and hands the next hop a context whose parent is that span, in the same
//! header forms it received (W3C when none). Finished spans go through a bounded queue to an exporter task
//! that posts them in batches to the configured collector (Zipkin v2 JSON or OTLP/HTTP JSON); a full
//! queue or an absent collector drops spans and counts them, never holding a request back.

use crate::config::{TraceFormat, TracingConfig};
use crate::telemetry::metrics::Metrics as ProxyMetrics;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

const QUEUE: usize = 2048;
const BATCH: usize = 256;

/// The trace context a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// 32 hex digits.
    pub trace_id: String,
    /// The caller's span (16 hex digits), absent at the start of a trace.
    pub parent_id: Option<String>,
    pub sampled: bool,
    /// How it arrived, so it is passed on the same way.
    pub form: Form,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    W3c,
    B3Single,
    B3Multi,
}

impl Context {
    /// The context in `h`, if any: W3C first, then B3 single, then B3 multi.
    pub fn extract(h: &HeaderMap) -> Option<Context> {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        if let Some(tp) = get("traceparent") {
            let parts: Vec<&str> = tp.trim().split('-').collect();
            if let [version, trace, span, flags] = parts[..] {
                if version.len() == 2
                    && version != "ff"
                    && is_hex(trace, 32)
                    && is_hex(span, 16)
                    && is_hex(flags, 2)
                    && !is_zero(trace)
                    && !is_zero(span)
                {
                    return Some(Context {
                        trace_id: trace.to_ascii_lowercase(),
                        parent_id: Some(span.to_ascii_lowercase()),
                        sampled: u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1),
                        form: Form::W3c,
                    });
                }
            }
        }
        if let Some(b3) = get("b3") {
            let parts: Vec<&str> = b3.trim().split('-').collect();
            if parts.len() >= 2 && is_b3_trace(parts[0]) && is_hex(parts[1], 16) {
                return Some(Context {
                    trace_id: widen(parts[0]),
                    parent_id: Some(parts[1].to_ascii_lowercase()),
                    sampled: parts.get(2).is_none_or(|s| *s == "1" || *s == "d"),
                    form: Form::B3Single,
                });
            }
        }
        let (trace, span) = (get("x-b3-traceid")?, get("x-b3-spanid")?);
        if !is_b3_trace(trace) || !is_hex(span, 16) {
            return None;
        }
        Some(Context {
            trace_id: widen(trace),
            parent_id: Some(span.to_ascii_lowercase()),
            sampled: get("x-b3-sampled").is_none_or(|s| s == "1" || s == "true")
                || get("x-b3-flags") == Some("1"),
            form: Form::B3Multi,
        })
    }

    /// A new trace, sampled at `rate`.
    pub fn start(rate: f64) -> Context {
        Context {
            trace_id: random_hex(16),
            parent_id: None,
            sampled: rate >= 1.0 || rand::random::<f64>() < rate,
            form: Form::W3c,
        }
    }

    /// Writes the context for the next hop, whose parent is `span_id`; `tracestate` passes unchanged.
    pub fn inject(&self, span_id: &str, h: &mut HeaderMap) {
        let flag = if self.sampled { "1" } else { "0" };
        let set = |h: &mut HeaderMap, n: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(n, v);
            }
        };
        match self.form {
            Form::W3c => set(
                h,
                "traceparent",
                format!("00-{}-{span_id}-0{flag}", self.trace_id),
            ),
            Form::B3Single => set(h, "b3", format!("{}-{span_id}-{flag}", self.trace_id)),
            Form::B3Multi => {
                set(h, "x-b3-traceid", self.trace_id.clone());
                set(h, "x-b3-spanid", span_id.to_string());
                if let Some(p) = &self.parent_id {
                    set(h, "x-b3-parentspanid", p.clone());
                }
                set(h, "x-b3-sampled", flag.to_string());
            }
        }
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

fn is_b3_trace(s: &str) -> bool {
    (is_hex(s, 16) || is_hex(s, 32)) && !is_zero(s)
}

/// B3 allows 64-bit trace ids; spans are exported with 128-bit ones, left-padded as the spec says.
fn widen(s: &str) -> String {
    format!("{:0>32}", s.to_ascii_lowercase())
}

pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// One hop's record of a request.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    /// `CLIENT` (outbound) or `SERVER` (inbound).
    pub kind: &'static str,
    pub name: String,
    pub start: SystemTime,
    pub duration: Duration,
    pub tags: Vec<(&'static str, String)>,
}

/// What became of the spans: exported, or dropped.
#[derive(Clone, Default)]
pub struct Metrics {
    pub spans_exported: Counter,
    pub spans_dropped: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.register(
            "spans_exported",
            "Spans the collector accepted",
            m.spans_exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans dropped: the export queue was full, or the collector failed or was away",
            m.spans_dropped.clone(),
        );
        m
    }
}

/// Where spans go: nowhere without a `tracing:` section.
pub struct Tracer {
    tx: Option<mpsc::Sender<Span>>,
    pub sample: f64,
    metrics: Metrics,
}

impl Tracer {
    /// Starts the exporter task (on the current runtime) when a collector is configured.
    pub fn start(
        cfg: Option<&TracingConfig>,
        service: String,
        metrics: Arc<ProxyMetrics>,
    ) -> Tracer {
        let metrics = metrics.trace.clone();
        let Some(cfg) = cfg else {
            return Tracer {
                tx: None,
                sample: 0.0,
                metrics,
            };
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let exporter = Exporter {
            url: cfg.collector.clone(),
            format: cfg.format,
            service,
            metrics: metrics.clone(),
        };
        tokio::spawn(exporter.run(rx, cfg.flush_interval.get()));
        Tracer {
            tx: Some(tx),
            sample: cfg.sample,
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a finished span; drops (and counts) it when the exporter is behind.
    pub fn record(&self, span: Span) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(span).is_err() {
            self.metrics.spans_dropped.inc();
        }
    }
}

/// A hop's span while its request is in flight.
pub struct Hop {
    ctx: Context,
    span_id: String,
    start: SystemTime,
}

impl Hop {
    pub fn trace_id(&self) -> &str {
        &self.ctx.trace_id
    }
}

impl Tracer {
    /// Reads (or starts) the request's trace and rewrites its headers so the next hop's parent is this
    /// hop's span. `None` when tracing is off (the headers are left as they are).
    pub fn begin(&self, h: &mut HeaderMap) -> Option<Hop> {
        if !self.enabled() {
            return None;
        }
        let ctx = Context::extract(h).unwrap_or_else(|| Context::start(self.sample));
        let span_id = random_hex(8);
        ctx.inject(&span_id, h);
        Some(Hop {
            ctx,
            span_id,
            start: SystemTime::now(),
        })
    }

    /// Records the hop's span (lasting `duration`, to the response head), if its trace is sampled.
    pub fn end(
        &self,
        hop: Hop,
        kind: &'static str,
        name: String,
        tags: Vec<(&'static str, String)>,
        duration: Duration,
    ) {
        if !hop.ctx.sampled {
            return;
        }
        self.record(Span {
            trace_id: hop.ctx.trace_id,
            span_id: hop.span_id,
            parent_id: hop.ctx.parent_id,
            kind,
            name,
            start: hop.start,
            duration,
            tags,
        });
    }
}

struct Exporter {
    url: String,
    format: TraceFormat,
    service: String,
    metrics: Metrics,
}

impl Exporter {
    async fn run(self, mut rx: mpsc::Receiver<Span>, every: Duration) {
        let client = Client::builder(TokioExecutor::new()).build(ExportConnector);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let first = tokio::select! {
                s = rx.recv() => s,
            };
            let Some(first) = first else { return };
            batch.push(first);
            let deadline = tokio::time::sleep(every);
            tokio::pin!(deadline);
            while batch.len() < BATCH {
                tokio::select! {
                    s = rx.recv() => match s {
                        Some(s) => batch.push(s),
                        None => break,
                    },
                    _ = &mut deadline => break,
                }
            }
            let spans = std::mem::take(&mut batch);
            self.post(&client, spans).await;
        }
    }

    async fn post(&self, client: &Client<ExportConnector, Full<Bytes>>, spans: Vec<Span>) {
        let n = spans.len() as u64;
        let body = match self.format {
            TraceFormat::Zipkin => zipkin(&self.service, &spans),
            TraceFormat::Otlp => otlp(&self.service, &spans),
        };
        let req = Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        let Ok(req) = req else {
            let _ = self.metrics.spans_dropped.inc_by(n);
            return;
        };
        match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
            Ok(Ok(r)) if r.status().is_success() => {
                self.metrics.spans_exported.inc_by(n);
            }
            Ok(Ok(r)) => {
                let _ = self.metrics.spans_dropped.inc_by(n);
                tracing::debug!(status = %r.status(), collector = %self.url, "span export refused");
            }
            Ok(Err(e)) => {
                let _ = self.metrics.spans_dropped.inc_by(n);
                tracing::debug!(error = %e, collector = %self.url, "span export failed");
            }
            Err(_) => {
                let _ = self.metrics.spans_dropped.inc_by(n);
                tracing::debug!(collector = %self.url, "span export timed out");
            }
        }
    }
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Zipkin v2 JSON: a list of spans.
fn zipkin(service: &str, spans: &[Span]) -> Value {
    Value::Array(
        spans
            .iter()
            .map(|s| {
                let tags: serde_json::Map<String, Value> = s
                    .tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
                    .collect();
                let mut v = json!({
                    "traceId": s.trace_id,
                    "id": s.span_id,
                    "kind": s.kind,
                    "name": s.name,
                    "timestamp": micros(s.start),
                    "duration": s.duration.as_micros().max(1) as u64,
                    "localEndpoint": {"serviceName": service},
                    "tags": tags,
                });
                if let Some(p) = &s.parent_id {
                    v["parentId"] = json!(p);
                }
                v
            })
            .collect(),
    )
}

/// OTLP/HTTP JSON (`/v1/traces`): one resource, one scope.
fn otlp(service: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let start = micros(s.start) * 1000;
            let attrs: Vec<Value> = s
                .tags
                .iter()
                .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
                .collect();
            json!({
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "parentSpanId": s.parent_id.clone().unwrap_or_default(),
                "name": s.name,
                "kind": if s.kind == "SERVER" { 2 } else { 3 },
                "startTimeUnixNano": start.to_string(),
                "endTimeUnixNano": (start + s.duration.as_nanos() as u64).to_string(),
                "attributes": attrs,
            })
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "weft-proxy"}, "spans": spans}],
    }]})
}

/// The exporter's connections: plain TCP with the proxy's mark (so a sidecar's own export is not
/// redirected back into it).
#[derive(Clone)]
struct ExportConnector;

impl tower::Service<http::Uri> for ExportConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1").to_string();
            let port = uri.port_u16().unwrap_or(80);
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{host}: no address")))?;
            let tcp = crate::socket::connect(addr, Duration::from_secs(5)).await?;
            Ok(hyper_util::rt::TokioIo::new(tcp))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn reads_w3c_and_both_b3_forms() {
        let w3c = Context::extract(&headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]))
        .unwrap();
        assert_eq!(w3c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(w3c.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(w3c.sampled && w3c.form == Form::W3c);
        let single =
            Context::extract(&headers(&[("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-0")])).unwrap();
        assert_eq!(single.trace_id, "000000000000000080f198ee56343ba8");
        assert!(!single.sampled && single.form == Form::B3Single);
        let multi = Context::extract(&headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ]))
        .unwrap();
        assert_eq!(multi.form, Form::B3Multi);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(
                Context::extract(&headers(&[("traceparent", bad)])),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn passes_the_context_on_in_the_form_it_came() {
        let mut h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        let c = Context::extract(&h).unwrap();
        c.inject("1111111111111111", &mut h);
        assert_eq!(
            h["b3"],
            "80f198ee56343ba864fe8b2a57d3eff7-1111111111111111-1"
        );
        let mut h = HeaderMap::new();
        let c = Context::start(1.0);
        c.inject("2222222222222222", &mut h);
        let again = Context::extract(&h).unwrap();
        assert_eq!(again.trace_id, c.trace_id);
        assert_eq!(again.parent_id.as_deref(), Some("2222222222222222"));
    }

    /// A collector on a real socket that hands over each POSTed body.
    async fn collector() -> (std::net::SocketAddr, mpsc::Receiver<(String, Value)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let _ = tx.send((path, v)).await;
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
                );
            }
        });
        (addr, rx)
    }

    fn config(url: String, format: TraceFormat) -> TracingConfig {
        TracingConfig {
            collector: url,
            format,
            sample: 1.0,
            flush_interval: weft_api::Duration::from_millis(50),
        }
    }

    fn hop(tracer: &Tracer, parent: &str) -> String {
        let mut h = headers(&[(
            "traceparent",
            &format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{parent}-01"),
        )]);
        let hop = tracer.begin(&mut h).unwrap();
        tracer.end(
            hop,
            "SERVER",
            "GET /x".into(),
            vec![("http.status_code", "200".into())],
            Duration::from_millis(1),
        );
        Context::extract(&h).unwrap().parent_id.unwrap()
    }

    #[tokio::test]
    async fn spans_reach_an_otlp_collector_in_batches() {
        let (addr, mut rx) = collector().await;
        let metrics = Arc::new(ProxyMetrics::new());
        let cfg = config(format!("http://{addr}/v1/traces"), TraceFormat::Otlp);
        let tracer = Tracer::start(Some(&cfg), "reviews".into(), metrics.clone());
        let a = hop(&tracer, "00f067aa0ba902b7");
        let b = hop(&tracer, &a);
        let (path, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(path, "/v1/traces");
        let rs = &body["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "reviews"}})
        );
        let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2, "one batch: {body:#}");
        assert_eq!(spans[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(spans[0]["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(spans[0]["spanId"], a.as_str());
        assert_eq!(spans[1]["parentSpanId"], a.as_str());
        assert_eq!(spans[1]["spanId"], b.as_str());
        assert_eq!(spans[0]["kind"], 2, "SPAN_KIND_SERVER");
        let start: u64 = spans[0]["startTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let end: u64 = spans[0]["endTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(end >= start && start > 1_600_000_000_000_000_000);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metrics.trace.spans_exported.get() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "spans_exported not counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_collector_drops_and_counts_without_slowing_the_caller() {
        // A port nothing listens on.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let metrics = Arc::new(ProxyMetrics::new());
        let cfg = config(format!("http://{addr}/api/v2/spans"), TraceFormat::Zipkin);
        let tracer = Tracer::start(Some(&cfg), "reviews".into(), metrics.clone());
        let n = QUEUE as u64 * 2;
        for _ in 0..n {
            hop(&tracer, "00f067aa0ba902b7");
        }
        // Recording never waited on the exporter: more spans than the queue holds went somewhere at once.
        assert!(metrics.trace.spans_dropped.get() > 0, "a full queue drops");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while metrics.trace.spans_dropped.get() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "every span dropped and counted: {} of {n}",
                metrics.trace.spans_dropped.get()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(metrics.trace.spans_exported.get(), 0);
    }
}

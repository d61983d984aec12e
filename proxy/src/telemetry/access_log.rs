//! Access log: one JSON line per HTTP request (written when its response body ends) and per TCP
//! connection, on each side of the hop, made from the request's record (`telemetry::record`). Lines go through a bounded queue to a writer thread, so a slow
//! disk or a full pipe never holds a request back: when the queue is full the line is dropped and
//! counted (`weft_proxy_access_log_dropped_total`).

use crate::config::AccessLogConfig;
use crate::path::body::{Body, BoxError};
use crate::telemetry::labels::{Direction, LogFlag, LogProtocol};
use crate::telemetry::metrics::Metrics;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde::Serialize;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

const QUEUE: usize = 4096;

/// What one request or connection looked like. Filled in along the path; written once.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub time: String,
    pub direction: Direction,
    pub protocol: LogProtocol,
    /// The caller's SPIFFE ID (inbound: the verified peer; outbound: this proxy's own).
    pub source: String,
    /// Outbound: the destination service (`namespace/name`) or address; inbound: this proxy's identity.
    pub destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub duration_ms: f64,
    /// From the client: request body (HTTP) or bytes sent on (TCP).
    pub bytes_received: u64,
    /// To the client: response body (HTTP) or bytes sent back (TCP).
    pub bytes_sent: u64,
    pub retries: u32,
    /// Why the proxy answered or acted itself: `request_timeout`, `per_try_timeout`, `no_endpoint`,
    /// `overflow`, `rate_limited`, `fallback`, `retry_budget_exhausted`, `body_not_retried`, ...
    pub flags: Vec<LogFlag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip)]
    start: Option<Instant>,
}

pub struct AccessLog {
    tx: Option<SyncSender<Vec<u8>>>,
    sample: f64,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Off when `cfg` is absent; otherwise a writer thread appending to the file (or stdout for `-`).
    pub fn start(
        cfg: Option<&AccessLogConfig>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<AccessLog> {
        let Some(cfg) = cfg else {
            return Ok(AccessLog {
                tx: None,
                sample: 0.0,
                metrics,
            });
        };
        let out: Box<dyn Write + Send> = if cfg.path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&cfg.path)?,
            )
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(AccessLog {
            tx: Some(tx),
            sample: cfg.sample,
            metrics,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// A new entry, timed from now; `None` when the log is off.
    pub fn begin(&self, direction: Direction, protocol: LogProtocol) -> Option<Entry> {
        self.tx.as_ref()?;
        Some(Entry {
            time: now_rfc3339(),
            direction,
            protocol,
            source: String::new(),
            destination: String::new(),
            destination_version: None,
            upstream: None,
            upstream_identity: None,
            method: None,
            authority: None,
            path: None,
            status: None,
            duration_ms: 0.0,
            bytes_received: 0,
            bytes_sent: 0,
            retries: 0,
            flags: Vec::new(),
            trace_id: None,
            start: Some(Instant::now()),
        })
    }

    /// Writes the entry: always when something went wrong (5xx or a flag), else by the sample rate.
    pub fn write(&self, mut e: Entry) {
        let Some(tx) = &self.tx else { return };
        let bad = e.status.is_some_and(|s| s >= 500) || !e.flags.is_empty();
        if !bad && self.sample < 1.0 && rand::random::<f64>() >= self.sample {
            return;
        }
        if let Some(start) = e.start {
            e.duration_ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        }
        let Ok(mut line) = serde_json::to_vec(&e) else {
            return;
        };
        line.push(b'\n');
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(line) {
            self.metrics.access_log_dropped.inc();
        }
    }
}

fn write_lines(rx: std::sync::mpsc::Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(&more);
        }
        let _ = out.flush();
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The trace id of a W3C `traceparent` or B3 header, if the request carries one.
pub fn trace_id(h: &http::HeaderMap) -> Option<String> {
    if let Some(tp) = h.get("traceparent").and_then(|v| v.to_str().ok()) {
        let id = tp.split('-').nth(1)?;
        return (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| id.to_string());
    }
    if let Some(id) = h.get("x-b3-traceid").and_then(|v| v.to_str().ok()) {
        return Some(id.to_string());
    }
    let b3 = h.get("b3")?.to_str().ok()?;
    b3.split('-').next().map(str::to_string)
}

impl Entry {
    /// Fills in what a request head says.
    pub fn request<B>(&mut self, req: &http::Request<B>) {
        self.method = Some(req.method().to_string());
        self.authority = req.uri().authority().map(|a| a.to_string()).or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
        self.path = req.uri().path_and_query().map(|p| p.as_str().to_string());
        self.trace_id = trace_id(req.headers());
    }
}

/// Counts the bytes of a request body as they pass.
pub fn count_request(body: Body, counter: Arc<AtomicU64>) -> Body {
    http_body_util::BodyExt::boxed(Counted {
        inner: body,
        bytes: counter,
    })
}

pin_project_lite::pin_project! {
    struct Counted<B> {
        #[pin]
        inner: B,
        bytes: Arc<AtomicU64>,
    }
}

impl<B: HttpBody<Data = Bytes, Error = BoxError>> HttpBody for Counted<B> {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                this.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_from_w3c_and_b3() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut h = http::HeaderMap::new();
        h.insert(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
        assert_eq!(trace_id(&http::HeaderMap::new()), None);
    }
}

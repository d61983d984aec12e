//! Record once: all that telemetry says about one request or opaque stream (its metrics, its access-log
//! line, its span and the per-version stats reported upstream) comes from one [`Record`], filled in as
//! the request goes and written when the record is dropped, so every exit path is counted exactly once.
//!
//! An HTTP request's record rides in its response body ([`Record::respond`]) and is written as the last
//! frame goes out (or when the body is dropped unfinished); an opaque stream's record goes with the
//! stream's task and is written when the stream ends. Latency and span durations are measured to the
//! response head; the access log's duration runs to the last byte.

use crate::path::body::{Body, BoxError};
use crate::path::errors::ProxyError;
use crate::state::Proxy;
use crate::telemetry::access_log::{count_request, Entry};
use crate::telemetry::labels::{Direction, Flag, LogFlag, LogProtocol, MethodClass, Reason};
use crate::telemetry::series::HttpLabelsRef;
use crate::telemetry::trace::Hop;
use crate::traffic::plan::{Destination, Plan};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use weft_api::Upstream;

/// One request (or opaque stream) as telemetry sees it.
pub struct Record {
    proxy: Arc<Proxy>,
    direction: Direction,
    /// HTTP requests are counted and timed as such; opaque streams only logged (and, inbound,
    /// counted as the CONNECT request they arrived as).
    http: bool,
    counts_request: bool,
    start: Instant,
    method: Option<Method>,
    /// The response status and the time it took to get there.
    head: Option<(StatusCode, Duration)>,
    /// The caller's SPIFFE ID.
    source: String,
    /// Outbound: the service (or peer) the caller asked for; inbound: none (this proxy answers).
    destination: Option<Destination>,
    /// The answering side's SPIFFE ID (outbound: the endpoint's once one answered).
    destination_identity: String,
    /// Outbound: the version (subset) the routes chose; inbound: this workload's `version` label.
    version: Option<String>,
    /// Outbound: the per-version stats key of the backend the routes chose.
    stats: Option<crate::telemetry::stats::StatsKey>,
    /// Where the bytes went: the peer proxy (outbound) or the app's address (inbound).
    upstream: Option<SocketAddr>,
    route: Option<String>,
    retries: u32,
    flags: Vec<LogFlag>,
    span: Option<(Hop, String)>,
    /// Present only while the access log is on.
    log: Option<LogPart>,
}

/// What only the access log needs (not gathered when it is off).
struct LogPart {
    entry: Entry,
    request_bytes: Arc<AtomicU64>,
    bytes_sent: u64,
}

impl Record {
    /// An HTTP request arriving: its trace hop begins (the headers now name this hop's span) and, with
    /// the access log on, its method, authority, path and trace id are noted.
    pub fn http<B>(proxy: &Arc<Proxy>, direction: Direction, req: &mut Request<B>) -> Record {
        let mut r = Record::new(proxy, direction, true, true);
        r.method = Some(req.method().clone());
        if let Some(hop) = proxy.tracer.begin(req.headers_mut()) {
            r.span = Some((hop, span_name(direction, req)));
        }
        if let Some(log) = &mut r.log {
            log.entry.request(req);
        }
        r
    }

    /// An opaque stream. `counts_request`: it arrived as a CONNECT request that the request counters
    /// count (inbound).
    pub fn tcp(proxy: &Arc<Proxy>, direction: Direction, counts_request: bool) -> Record {
        Record::new(proxy, direction, false, counts_request)
    }

    fn new(proxy: &Arc<Proxy>, direction: Direction, http: bool, counts: bool) -> Record {
        let protocol = if http {
            LogProtocol::Http
        } else {
            LogProtocol::Tcp
        };
        let (source, destination_identity) = match direction {
            Direction::Outbound => (proxy.own_id.clone(), String::new()),
            Direction::Inbound => (String::new(), proxy.own_id.clone()),
        };
        Record {
            proxy: proxy.clone(),
            direction,
            http,
            counts_request: counts,
            start: Instant::now(),
            method: None,
            head: None,
            source,
            destination: None,
            destination_identity,
            version: None,
            stats: None,
            upstream: None,
            route: None,
            retries: 0,
            flags: Vec::new(),
            span: None,
            log: proxy
                .access_log
                .begin(direction, protocol)
                .map(|entry| LogPart {
                    entry,
                    request_bytes: Arc::new(AtomicU64::new(0)),
                    bytes_sent: 0,
                }),
        }
    }

    /// Inbound: the verified peer that called, and this workload's version.
    pub fn from_peer(&mut self, peer: &weft_certs::SpiffeId) {
        self.source = peer.to_string();
        self.version = Some(self.proxy.workload_version().to_string());
    }

    /// Outbound: what the caller asked for (a listener's service or peer).
    pub fn destination(&mut self, d: Destination) {
        self.destination = Some(d);
    }

    /// Outbound: the request's plan (the version its routes chose and the rule that took it).
    pub fn plan(&mut self, plan: &Plan) {
        if let Destination::Service { subset, .. } = &plan.destination {
            self.version = subset.clone();
        }
        self.stats = plan.stats_key();
        self.route = (!plan.rule.name.is_empty()).then(|| plan.rule.name.clone());
    }

    /// Outbound: the endpoint that answered (the last one tried).
    pub fn upstream(&mut self, up: &Upstream) {
        self.upstream = Some(up.peer);
        self.destination_identity = up.identity.to_string();
    }

    /// Inbound: the app address the request was delivered to.
    pub fn delivered_to(&mut self, app: SocketAddr) {
        self.upstream = Some(app);
    }

    pub fn retries(&mut self, n: u32) {
        self.retries = n;
    }

    pub fn flag(&mut self, f: impl Into<LogFlag>) {
        self.flags.push(f.into());
    }

    /// The proxy answered with `e` instead of carrying the request.
    pub fn failed(&mut self, e: &ProxyError) {
        self.flag(e.kind());
    }

    /// The request's body, counted for the access log when it is on.
    pub fn request_body(&self, body: Body) -> Body {
        match &self.log {
            Some(log) => count_request(body, log.request_bytes.clone()),
            None => body,
        }
    }

    /// An opaque stream ended: `(bytes sent on, bytes sent back)` or its error.
    pub fn streamed(&mut self, r: &std::io::Result<(u64, u64)>) {
        match r {
            Ok((on, back)) => {
                if let Some(log) = &mut self.log {
                    log.request_bytes.store(*on, Ordering::Relaxed);
                    log.bytes_sent = *back;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => self.flag(Reason::IdleTimeout),
            Err(_) => self.flag(Flag::ConnectionError),
        }
    }

    /// The response head is ready: the record goes with its body and is written when the body ends.
    pub fn respond(mut self, resp: Response<Body>) -> Response<Body> {
        self.status(resp.status());
        resp.map(|inner| {
            crate::path::body::boxed(Recorded {
                empty: inner.is_end_stream(),
                inner,
                record: Some(self),
            })
        })
    }

    /// The status the caller got (a stream's head, or a request's when its body is not followed).
    pub fn status(&mut self, status: StatusCode) {
        self.head = Some((status, self.start.elapsed()));
    }

    fn write(&mut self) {
        let (status, to_head) = self.head.unwrap_or((StatusCode::OK, self.start.elapsed()));
        let proxy = self.proxy.clone();
        if self.counts_request {
            proxy.metrics.count_request(self.direction, status);
        }
        if self.http {
            proxy
                .metrics
                .http_request(self.http_labels(status), to_head);
            if let Some(key) = &self.stats {
                proxy.upstream_stats.record(key, status.as_u16(), to_head);
            }
        }
        if let Some((hop, name)) = self.span.take() {
            let tags = self.span_tags(status);
            let kind = match self.direction {
                Direction::Outbound => "CLIENT",
                Direction::Inbound => "SERVER",
            };
            proxy.tracer.end(hop, kind, name, tags, to_head);
        }
        if let Some(log) = self.log.take() {
            let entry = self.entry(log, self.head.map(|(s, _)| s));
            proxy.access_log.write(entry);
        }
    }

    fn http_labels(&self, status: StatusCode) -> HttpLabelsRef<'_> {
        HttpLabelsRef {
            direction: self.direction,
            source_identity: &self.source,
            destination_identity: &self.destination_identity,
            destination_service: match &self.destination {
                Some(Destination::Service { service, .. }) => Some(service),
                _ => None,
            },
            destination_version: self.version.as_deref().unwrap_or_default(),
            route: self.route.as_deref().unwrap_or_default(),
            method: self
                .method
                .as_ref()
                .map_or(MethodClass::Other, MethodClass::of),
            status_code: status.as_u16(),
        }
    }

    fn span_tags(&self, status: StatusCode) -> Vec<(&'static str, String)> {
        let method = self.method.as_ref().map_or("", |m| m.as_str()).to_string();
        let mut tags = vec![
            ("http.method", method),
            ("http.status_code", status.as_u16().to_string()),
        ];
        match self.direction {
            Direction::Outbound => {
                tags.push(("weft.destination", self.destination_label()));
                if let Some(up) = self.upstream {
                    tags.push(("peer.address", up.to_string()));
                }
                if let Some(v) = &self.version {
                    tags.push(("weft.destination_version", v.clone()));
                }
            }
            Direction::Inbound => tags.push(("weft.source", self.source.clone())),
        }
        tags
    }

    /// The access log's `destination`: outbound the service (or peer) called, inbound this proxy.
    fn destination_label(&self) -> String {
        match &self.destination {
            Some(Destination::Service { service, .. }) => service.to_string(),
            Some(Destination::Peer(peer)) => peer.to_string(),
            None => self.destination_identity.clone(),
        }
    }

    fn entry(&self, log: LogPart, status: Option<StatusCode>) -> Entry {
        let mut e = log.entry;
        e.source = self.source.clone();
        e.destination = match self.direction {
            Direction::Outbound => self.destination_label(),
            Direction::Inbound => self.destination_identity.clone(),
        };
        if self.direction == Direction::Outbound {
            e.destination_version = self.version.clone();
            e.upstream_identity =
                (!self.destination_identity.is_empty()).then(|| self.destination_identity.clone());
        }
        e.upstream = self.upstream.map(|u| u.to_string());
        e.status = status.filter(|_| self.http).map(|s| s.as_u16());
        e.retries = self.retries;
        e.flags = self.flags.clone();
        e.bytes_received = log.request_bytes.load(Ordering::Relaxed);
        e.bytes_sent = log.bytes_sent;
        e
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.write();
    }
}

/// The span's name: `METHOD authority` on the calling side, `METHOD path` on the answering side.
fn span_name<B>(direction: Direction, req: &Request<B>) -> String {
    let what = match direction {
        Direction::Outbound => req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or_default(),
        Direction::Inbound => req.uri().path(),
    };
    format!("{} {what}", req.method())
}

pin_project_lite::pin_project! {
    /// A response body carrying its request's record: written as the last frame is handed on (so it
    /// is counted before the caller can see the end), on an error, or when dropped unfinished.
    struct Recorded<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
        // Nothing to send: hyper may drop it unpolled, which is not a caller that went away.
        empty: bool,
    }
    impl<B> PinnedDrop for Recorded<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut r) = this.record.take() {
                if !*this.empty {
                    r.flag(Flag::DownstreamClosed);
                }
            }
        }
    }
}

impl<B: HttpBody<Data = Bytes, Error = BoxError>> HttpBody for Recorded<B> {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(log)) = (
                    f.data_ref(),
                    this.record.as_mut().and_then(|r| r.log.as_mut()),
                ) {
                    log.bytes_sent += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.record.take();
                }
            }
            Poll::Ready(None) => {
                this.record.take();
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut rec) = this.record.take() {
                    rec.flag(Flag::ResponseBodyError);
                }
            }
            Poll::Pending => {}
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
    use std::time::Duration;

    /// A proxy that logs every line to `log`.
    fn proxy(log: &std::path::Path) -> Arc<Proxy> {
        let identity = crate::test_identity::web();
        let yaml = format!(
            "identity: {{cert: a, key: b, bundle: c}}\ntunnel: {{listen: 127.0.0.1:0}}\n\
             admin: 127.0.0.1:0\nhealth: 127.0.0.1:0\naccess_log: {{path: {}}}\n",
            log.display()
        );
        let cfg = weft_api::yaml::from_str("proxy.yaml", &yaml).unwrap();
        Proxy::new(cfg, identity).unwrap()
    }

    fn lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..100 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= n {
                return text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("fewer than {n} lines in {}", path.display());
    }

    fn log_path(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("weft-record-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[tokio::test]
    async fn a_line_per_response_when_its_body_ends() {
        let path = log_path("line");
        let proxy = proxy(&path);
        let mut req = Request::get("/item/1").body(()).unwrap();
        let record = Record::http(&proxy, Direction::Inbound, &mut req);
        let counted = record.request_body(crate::path::body::full("1234567"));
        let _ = http_body_util::BodyExt::collect(counted).await.unwrap();
        let resp = record.respond(Response::new(crate::path::body::full("hello")));
        assert_eq!(resp.status(), StatusCode::OK);
        let got = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&got[..], b"hello");
        let v = &lines(&path, 1)[0];
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_sent"], 5);
        assert_eq!(v["bytes_received"], 7);
        assert_eq!(v["method"], "GET");
        assert_eq!(v["direction"], "inbound");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(v["flags"].as_array().unwrap().is_empty(), "{v}");
        let _ = std::fs::remove_file(&path);
    }

    /// Every exit counts once: an answered request, one whose caller went away mid-body, and a refusal.
    #[tokio::test]
    async fn every_exit_path_is_recorded_exactly_once() {
        let path = log_path("exits");
        let proxy = proxy(&path);
        let requests = |p: &Proxy| {
            let text = p.metrics.encode();
            text.lines()
                .filter(|l| l.starts_with("weft_proxy_http_requests_total{"))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum::<f64>()
        };
        let mut req = Request::get("/a").body(()).unwrap();
        let record = Record::http(&proxy, Direction::Outbound, &mut req);
        let resp = record.respond(Response::new(crate::path::body::full("done")));
        let mut body = resp.into_body();
        let last = http_body_util::BodyExt::frame(&mut body).await;
        assert!(last.is_some_and(|f| f.is_ok_and(|f| f.is_data())));
        // Counted as the last frame is handed on, before the caller could see the end.
        assert_eq!(requests(&proxy), 1.0);
        drop(body);
        assert_eq!(requests(&proxy), 1.0);

        let mut req = Request::get("/b").body(()).unwrap();
        let record = Record::http(&proxy, Direction::Outbound, &mut req);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let streaming =
            http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(tokio_stream_like(rx)));
        drop(record.respond(Response::new(streaming)));
        drop(tx);
        assert_eq!(requests(&proxy), 2.0);

        let mut req = Request::get("/c").body(()).unwrap();
        let mut record = Record::http(&proxy, Direction::Outbound, &mut req);
        let e = ProxyError::ConnectNotCarried;
        record.failed(&e);
        drop(record.respond(crate::path::errors::answer(&e)));
        assert_eq!(requests(&proxy), 3.0);

        let all = lines(&path, 3);
        assert_eq!(all[1]["flags"][0], "downstream_closed", "{}", all[1]);
        assert_eq!(all[2]["flags"][0], "connect_not_carried", "{}", all[2]);
        assert_eq!(all[2]["status"], 405);
        let _ = std::fs::remove_file(&path);
    }

    /// A receiver as a stream of frames, without pulling in a stream crate for one test.
    fn tokio_stream_like(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

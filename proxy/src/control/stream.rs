//! The config stream: registers the workload, applies snapshots (ACK) or refuses them with the reason
//! (NACK, nothing changes), reports readiness and, once a second when they changed, the request counts
//! per destination (`weftctl shift --to` watches them), and reconnects when the control plane goes away:
//! at once to the next address of `control.address` (see `planes`), with capped backoff between rounds
//! that reach none. The proxy keeps serving with what it has meanwhile.

use super::cache::Cache;
use super::conn::{self, ReqBody};
use super::metrics::ConfigUpdate;
use super::Settings;
use crate::state::Proxy;
use crate::traffic::mesh::MeshView;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use weft_api::control::{
    encode, FrameDecoder, FromControl, FromProxy, Hello, Registration, Snapshot, StatsEntry,
    StatsReport, MAX_STATS_ENTRIES, PATH_STREAM, PROTOCOL_VERSION,
};

const RECONNECT_CAP: Duration = Duration::from_secs(10);
/// How often the request counts are looked at; they are sent only when they changed.
const STATS_EVERY: Duration = Duration::from_secs(1);

pub async fn run(proxy: Arc<Proxy>, settings: Settings, mut ready: watch::Receiver<bool>) {
    let cache = Cache::new(&settings.control.state_dir);
    // This task starts with the proxy, so its age is how long the request counters have counted.
    let started = std::time::Instant::now();
    let mut attempt = 0u32;
    let mut last_error = String::new();
    loop {
        let connected_at = std::time::Instant::now();
        let mut reached = None;
        let result = session(&proxy, &settings, &cache, &mut ready, started, &mut reached).await;
        proxy.metrics.control.set_connected(false);
        if proxy.shutdown.is_cancelled() {
            return;
        }
        if let Some(addr) = reached {
            // Lost: the next round starts at the address after this one.
            proxy.metrics.control.set_control_plane(addr, false);
            let reason = result
                .as_ref()
                .err()
                .map_or("closed by the control plane", |e| e);
            settings.planes.left(addr, reason);
        }
        match result {
            Ok(()) => tracing::info!("config stream closed by the control plane; reconnecting"),
            Err(e) if e != last_error => {
                tracing::warn!(error = %e, "config stream unavailable; serving the last good config and retrying");
                last_error = e;
            }
            Err(e) => tracing::debug!(error = %e, "config stream still unavailable"),
        }
        if connected_at.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
        // Between rounds only: a round itself tries every address without a pause.
        let pause = super::backoff(attempt, RECONNECT_CAP);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = proxy.shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One connection's worth of stream, to the first control plane of a round that answers (`reached`);
/// returns when it ends.
async fn session(
    proxy: &Arc<Proxy>,
    settings: &Settings,
    cache: &Cache,
    ready: &mut watch::Receiver<bool>,
    started: std::time::Instant,
    reached: &mut Option<std::net::SocketAddr>,
) -> Result<(), String> {
    let tls = proxy.identity.client_config(&settings.server_id);
    let (conn::Conn { mut send, ended }, addr) = settings
        .planes
        .connect(tls)
        .await
        .map_err(|e| e.to_string())?;
    *reached = Some(addr);
    let (out, body) = Outgoing::new();
    let applied = proxy.mesh().version;
    let hello = FromProxy::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        proxy_version: env!("CARGO_PKG_VERSION").to_string(),
        workload: registration(settings, *ready.borrow() && !proxy.shutdown.is_cancelled()),
        applied_version: (applied > 0).then_some(applied),
    });
    out.send(&hello).await?;
    let req = Request::post(format!("https://{addr}{PATH_STREAM}"))
        .body(body)
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| conn::describe(&e))?;
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    tracing::info!(control = %addr, "config stream open");
    proxy.metrics.control.set_connected(true);
    proxy.metrics.control.set_control_plane(addr, true);
    let stream = Open {
        proxy,
        settings,
        cache,
        out,
    };
    let result = stream.serve(resp.into_body(), ready, started).await;
    match result {
        // What the stream saw is often only "broken pipe"; the connection says why.
        Err(e) => match ended.reason(Duration::from_millis(200)).await {
            Some(why) if !e.contains(&why) => Err(format!("{e} ({why})")),
            _ => Err(e),
        },
        ok => ok,
    }
}

/// Why the control plane did not open the stream: its status and what it said.
async fn refusal(resp: http::Response<hyper::body::Incoming>) -> String {
    let status = resp.status();
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    format!(
        "the control plane refused the stream ({status}): {}",
        text.trim()
    )
}

/// The proxy's half of the stream: messages become frames of the request body.
struct Outgoing {
    tx: mpsc::Sender<Bytes>,
}

impl Outgoing {
    /// The sender, and the request body that carries what it sends.
    fn new() -> (Outgoing, ReqBody) {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let body: ReqBody = StreamBody::new(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move {
                let b = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(b)), rx))
            },
        )))
        .boxed();
        (Outgoing { tx }, body)
    }

    async fn send(&self, m: &FromProxy) -> Result<(), String> {
        self.tx
            .send(encode(m))
            .await
            .map_err(|_| "stream closed".to_string())
    }
}

/// A stream the control plane accepted.
struct Open<'a> {
    proxy: &'a Arc<Proxy>,
    settings: &'a Settings,
    cache: &'a Cache,
    out: Outgoing,
}

impl Open<'_> {
    /// Answers each snapshot that arrives, and sends readiness changes and request counts, until the
    /// stream ends or the proxy shuts down.
    async fn serve(
        &self,
        mut body: hyper::body::Incoming,
        ready: &mut watch::Receiver<bool>,
        started: std::time::Instant,
    ) -> Result<(), String> {
        let proxy = self.proxy;
        let mut decoder = FrameDecoder::default();
        let mut stats_tick = tokio::time::interval(STATS_EVERY);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What this stream last carried: a new stream starts from nothing (the control plane forgot us).
        let mut stats_sent: Vec<StatsEntry> = Vec::new();
        loop {
            while let Some(msg) = decoder.next::<FromControl>().map_err(|e| e.to_string())? {
                let FromControl::Snapshot(s) = msg;
                let reply = apply(proxy, self.settings, self.cache, s);
                self.out.send(&reply).await?;
            }
            tokio::select! {
                frame = body.frame() => match frame {
                    None => return decoder.finish().map_err(|e| e.to_string()),
                    Some(Err(e)) => return Err(conn::describe(&e)),
                    Some(Ok(f)) => {
                        if let Ok(data) = f.into_data() {
                            decoder.push(&data);
                        }
                    }
                },
                _ = stats_tick.tick() => {
                    let report = stats_report(proxy, started.elapsed());
                    if report.entries != stats_sent {
                        stats_sent = report.entries.clone();
                        self.out.send(&FromProxy::Stats(report)).await?;
                    }
                }
                changed = ready.changed() => {
                    if changed.is_ok() {
                        let r = *ready.borrow();
                        self.out.send(&FromProxy::Ready { ready: r }).await?;
                    }
                }
                _ = proxy.shutdown.cancelled() => {
                    // Draining: stop receiving new traffic before the listeners close.
                    let _ = self.out.send(&FromProxy::Ready { ready: false }).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Ok(());
                }
            }
        }
    }
}

/// The cumulative counts, sorted by destination, at most [`MAX_STATS_ENTRIES`] of them.
fn stats_report(proxy: &Proxy, counting: Duration) -> StatsReport {
    let all = proxy.upstream_stats.snapshot();
    let omitted = all.len().saturating_sub(MAX_STATS_ENTRIES) as u64;
    let entries = all
        .into_iter()
        .take(MAX_STATS_ENTRIES)
        .map(|(k, c)| StatsEntry {
            namespace: k.namespace,
            service: k.service,
            subset: k.subset,
            requests: c.requests,
            failures: c.failures,
            buckets: c.buckets,
        })
        .collect();
    StatsReport {
        counting_ms: counting.as_millis() as u64,
        entries,
        omitted,
    }
}

fn registration(settings: &Settings, ready: bool) -> Registration {
    let w = &settings.workload;
    Registration {
        name: w.name.clone(),
        labels: w.labels.clone(),
        address: w.address,
        tunnel_port: settings.tunnel_port,
        ports: w.ports.clone(),
        ready,
    }
}

/// Merges, checks and swaps in one snapshot; the answer to send back.
fn apply(proxy: &Proxy, settings: &Settings, cache: &Cache, s: Snapshot) -> FromProxy {
    let version = s.version;
    let view = match proxy
        .mesh()
        .merge(s, &settings.trust_domain, settings.max_regex_bytes)
    {
        Ok(v) => v,
        Err(reason) => {
            proxy.metrics.control.config_update(ConfigUpdate::Nack);
            tracing::warn!(version, %reason, "snapshot refused (NACK); keeping the current config");
            return FromProxy::Nack { version, reason };
        }
    };
    if let Err(reason) = adopt_bundle(proxy, cache, &view) {
        proxy.metrics.control.config_update(ConfigUpdate::Nack);
        tracing::warn!(version, %reason, "snapshot refused (NACK); keeping the current config");
        return FromProxy::Nack { version, reason };
    }
    if let Err(e) = cache.save_snapshot(&view.to_snapshot()) {
        tracing::warn!(error = %e, "cannot cache the config; a restart without the control plane would start empty");
    }
    super::revoked::adopt(proxy, &view);
    let services = view.services.len();
    proxy.set_mesh(view);
    proxy.metrics.control.config_update(ConfigUpdate::Ack);
    proxy.metrics.control.set_config_version(version);
    tracing::info!(version, services, "config applied");
    FromProxy::Ack { version }
}

/// A pushed trust bundle replaces ours, if our own certificate still chains to it.
fn adopt_bundle(proxy: &Proxy, cache: &Cache, view: &MeshView) -> Result<(), String> {
    let Some(pem) = &view.trust_bundle_pem else {
        return Ok(());
    };
    if proxy.identity.bundle().to_pem().trim() == pem.trim() {
        return Ok(());
    }
    let bundle = weft_certs::TrustBundle::from_pem(pem).map_err(|e| e.to_string())?;
    let cred = (*proxy.identity.credential()).clone();
    proxy.identity.update(cred, bundle).map_err(|e| {
        format!("the pushed trust bundle does not cover this proxy's certificate: {e}")
    })?;
    if let Err(e) = cache.save_bundle(pem) {
        tracing::warn!(error = %e, "cannot cache the trust bundle");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_proxys_latency_buckets_are_the_protocols() {
        // The control plane refuses entries of another shape; one list of bounds for both sides.
        assert_eq!(
            crate::telemetry::stats::BUCKETS_MS,
            weft_api::control::LATENCY_BUCKETS_MS
        );
    }
}

//! What every part of a running proxy shares: its config, identity, metrics, peer connections, app
//! clients and the shutdown signal.

use crate::config::ProxyConfig;
use crate::path::local_app::AppClients;
use crate::path::pool::{PeerPool, PeerSettings};
use crate::telemetry::metrics::Metrics;
use crate::traffic::mesh::MeshView;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_certs::Identity;

pub struct Proxy {
    pub config: ProxyConfig,
    /// Where inbound traffic goes, and the ports it may never go to.
    pub delivery: crate::path::deliver::Delivery,
    pub identity: Identity,
    pub metrics: Arc<Metrics>,
    pub peers: PeerPool,
    pub apps: AppClients,
    /// Requests, failures and latency per destination service and version (reported upstream).
    pub upstream_stats: crate::telemetry::stats::UpstreamStats,
    /// Endpoint latency and health, for choosing among a service's endpoints.
    pub balancer: Arc<crate::traffic::balance::Balancer>,
    /// Per destination service: bulkhead and retry budget.
    pub destinations: crate::traffic::destination::Destinations,
    /// Token buckets of the rate limits this proxy enforces as a destination.
    pub rate_limits: crate::traffic::ratelimit::RateLimiter,
    pub access_log: Arc<crate::telemetry::access_log::AccessLog>,
    pub tracer: crate::telemetry::trace::Tracer,
    /// This proxy's SPIFFE ID as text (it never changes, renewals keep it), for labels and logs.
    pub own_id: String,
    /// Cancelled when the proxy starts draining: listeners stop accepting, connections finish up.
    pub shutdown: CancellationToken,
    /// Every connection task, so draining can wait for them.
    pub tasks: TaskTracker,
    ready: AtomicBool,
    /// A mesh view has been applied (from the control plane or the cache).
    mesh_loaded: AtomicBool,
    /// The mesh as the control plane last described it (empty in explicit mode).
    mesh: ArcSwap<MeshView>,
}

impl Proxy {
    /// Fails only when the access log file cannot be opened.
    pub fn new(config: ProxyConfig, identity: Identity) -> std::io::Result<Arc<Proxy>> {
        let metrics = Arc::new(Metrics::new());
        let access_log = Arc::new(crate::telemetry::access_log::AccessLog::start(
            config.access_log.as_ref(),
            metrics.clone(),
        )?);
        let l = &config.limits;
        let settings = PeerSettings {
            connect_timeout: l.connect_timeout.get(),
            handshake_timeout: l.tls_handshake_timeout.get(),
            keepalive_interval: l.keepalive_interval.get(),
            max_streams_per_connection: l.max_streams_per_peer_connection,
        };
        let tracer = crate::telemetry::trace::Tracer::start(
            config.tracing.as_ref(),
            identity
                .id()
                .service_account()
                .unwrap_or("weft-proxy")
                .to_string(),
            metrics.clone(),
        );
        let delivery = crate::path::deliver::Delivery::new(&config);
        Ok(Arc::new(Proxy {
            tracer,
            apps: AppClients::new(delivery.app_addr(0).ip(), l.connect_timeout.get()),
            delivery,
            own_id: identity.id().to_string(),
            peers: PeerPool::new(identity.clone(), settings, metrics.clone()),
            upstream_stats: Default::default(),
            balancer: crate::traffic::balance::Balancer::new(metrics.clone()),
            destinations: Default::default(),
            rate_limits: Default::default(),
            access_log,
            identity,
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ready: AtomicBool::new(false),
            mesh_loaded: AtomicBool::new(false),
            mesh: ArcSwap::from_pointee(MeshView::default()),
            config,
        }))
    }

    /// The current mesh view; a request keeps the `Arc` it got for as long as it needs it.
    pub fn mesh(&self) -> Arc<MeshView> {
        self.mesh.load_full()
    }

    pub fn set_mesh(&self, view: MeshView) {
        // An endpoint that comes back ready starts afresh: not ejected for what it did before.
        for peer in view.newly_ready(&self.mesh.load()) {
            self.balancer.forget(peer);
        }
        self.mesh.store(Arc::new(view));
        self.mesh_loaded.store(true, Ordering::Relaxed);
    }

    /// False while a proxy run by a control plane has no mesh view yet (neither pushed nor cached):
    /// until then it knows none of the policies that protect its app, so inbound traffic is refused.
    pub fn has_policy_view(&self) -> bool {
        self.config.control.is_none() || self.mesh_loaded.load(Ordering::Relaxed)
    }

    /// This workload's `version` label (empty without one).
    pub fn workload_version(&self) -> &str {
        self.config
            .workload
            .as_ref()
            .and_then(|w| w.labels.get("version"))
            .map_or("", String::as_str)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Ready to carry the app's traffic: every listener bound, not draining, and (with a control plane)
    /// a mesh view applied, so a pod's app never starts before its destinations resolve.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.shutdown.is_cancelled()
            && self.has_policy_view()
    }
}

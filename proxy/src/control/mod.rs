//! The proxy's side of the control plane: its identity (join, renewal), its config stream (snapshots in,
//! ACK/NACK out), the cache that lets it start without the control plane, and the app's readiness probe.

pub mod bootstrap;
pub mod cache;
pub mod clock;
pub mod conn;
pub mod metrics;
pub mod planes;
pub mod probe;
pub mod renew;
pub mod revoked;
pub mod stream;

use crate::config::{ControlConfig, ProxyConfig, WorkloadConfig};
use crate::state::Proxy;
use planes::ControlPlanes;
use std::sync::Arc;
use std::time::Duration;
use weft_certs::{SpiffeId, TrustBundle, TrustDomain};

/// What the control-plane tasks need to know, resolved once at start.
#[derive(Clone)]
pub struct Settings {
    pub control: ControlConfig,
    /// `control.address`, resolved at each attempt: the join, the stream and renewal connect through it.
    pub planes: Arc<ControlPlanes>,
    pub workload: WorkloadConfig,
    pub trust_domain: TrustDomain,
    /// Who the control plane must be.
    pub server_id: SpiffeId,
    /// The pinned mesh CA, for the first connection (before we have an identity of our own).
    pub pinned: TrustBundle,
    pub max_regex_bytes: usize,
    /// Registered so peers know where this proxy's tunnel listens.
    pub tunnel_port: u16,
}

impl Settings {
    /// The control-plane settings of `cfg` (none in explicit mode). With a CA fingerprint and no cached
    /// bundle, asks the control plane for its chain (waiting up to `patience`) to find the pinned root.
    pub async fn load(cfg: &ProxyConfig, patience: Duration) -> anyhow::Result<Option<Settings>> {
        let (Some(control), Some(workload)) = (&cfg.control, &cfg.workload) else {
            return Ok(None);
        };
        let entries = control
            .address
            .parse()
            .map_err(|(field, reason)| anyhow::anyhow!("{field}: {reason}"))?;
        // Who this workload is (identity and name): its own order of the control planes.
        let seed = planes::seed(
            &workload.namespace,
            &workload.service_account,
            &workload.name,
        );
        let planes = ControlPlanes::new(entries, seed);
        let pinned = match (&control.ca_bundle, &control.ca_fingerprint) {
            (Some(path), _) => TrustBundle::from_pem_file(path)?,
            (None, Some(fp)) => pinned_root(control, &planes, fp, patience).await?,
            (None, None) => anyhow::bail!("no ca_bundle or ca_fingerprint"),
        };
        let trust_domain = match (&control.server_identity, pinned.trust_domains().first()) {
            (Some(id), _) => id.to_trust_domain(),
            (None, Some(td)) => td.clone(),
            (None, None) => anyhow::bail!(
                "the pinned mesh CA names no trust domain; set control.server_identity"
            ),
        };
        let server_id = match &control.server_identity {
            Some(id) => id.clone(),
            None => SpiffeId::for_workload(&trust_domain, "weft-system", "weft-control")?,
        };
        Ok(Some(Settings {
            control: control.clone(),
            planes,
            workload: workload.clone(),
            trust_domain,
            server_id,
            pinned,
            max_regex_bytes: cfg.limits.max_regex_bytes,
            tunnel_port: cfg.tunnel.listen.port(),
        }))
    }

    /// The identity this proxy asks for.
    pub fn workload_id(&self) -> anyhow::Result<SpiffeId> {
        Ok(SpiffeId::for_workload(
            &self.trust_domain,
            &self.workload.namespace,
            &self.workload.service_account,
        )?)
    }
}

/// The root the fingerprint pins: from the cached bundle when it holds it, else from the chain of the
/// first control plane whose root matches (a probing handshake that sends nothing).
async fn pinned_root(
    control: &ControlConfig,
    planes: &ControlPlanes,
    fingerprint: &str,
    patience: Duration,
) -> anyhow::Result<TrustBundle> {
    let pin = weft_certs::pin::parse_fingerprint(fingerprint)?;
    if let Ok(Some((_, cached))) = cache::Cache::new(&control.state_dir).credential() {
        if let Ok(b) = weft_certs::pin::bundle_from_chain(cached.roots(), &pin) {
            return Ok(b);
        }
    }
    let deadline = tokio::time::Instant::now() + patience;
    let mut attempt = 0;
    loop {
        let probe = |addr| async move {
            let chain = conn::probe_chain(addr).await?;
            weft_certs::pin::bundle_from_chain(&chain, &pin)
                .map_err(|source| conn::ConnError::Pin { addr, source })
        };
        match planes.first(probe).await {
            Ok((bundle, addr)) => {
                tracing::info!(fingerprint, control = %addr, "mesh CA found by its fingerprint");
                return Ok(bundle);
            }
            // The only control plane is not the pinned mesh: waiting will not change that.
            Err(conn::ConnError::Pin { source, .. }) => return Err(source.into()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "waiting for the control plane to read its CA")
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(backoff(attempt, Duration::from_secs(5))).await;
        attempt += 1;
    }
}

/// Serves the cached config (if any) until the control plane answers, then starts the background tasks:
/// renewal, the config stream, the readiness probe.
pub fn start(proxy: &Arc<Proxy>, settings: Settings) {
    let control = &proxy.metrics.control;
    settings.planes.attach_metrics(control.clone());
    control.set_cert_expiry(proxy.identity.credential().not_after());
    control.set_clock_skew(proxy.identity.clock_offset_secs());
    control.set_cert_expired(proxy.identity.expired_at().is_some());
    match cache::Cache::new(&settings.control.state_dir).snapshot() {
        Ok(Some(s)) => {
            let version = s.version;
            match crate::traffic::mesh::MeshView::default().merge(
                s,
                &settings.trust_domain,
                settings.max_regex_bytes,
            ) {
                Ok(view) => {
                    tracing::info!(
                        version,
                        services = view.services.len(),
                        "serving the cached config until the control plane answers"
                    );
                    revoked::adopt(proxy, &view);
                    proxy.set_mesh(view);
                    proxy.metrics.control.set_config_version(version);
                }
                Err(e) => tracing::warn!(error = %e, "cached config is not usable; starting empty"),
            }
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "cached config is damaged; starting empty"),
    }
    spawn(proxy, settings);
}

fn spawn(proxy: &Arc<Proxy>, settings: Settings) {
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(settings.workload.readiness.is_none());
    if let Some(probe) = settings.workload.readiness.clone() {
        tokio::spawn(probe::run(probe, ready_tx, proxy.shutdown.clone()));
    }
    tokio::spawn(renew::run(proxy.clone(), settings.clone()));
    tokio::spawn(stream::run(proxy.clone(), settings, ready_rx));
}

/// Capped exponential backoff with full jitter: 100 ms doubling to `cap`.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    use rand::Rng as _;
    let base = Duration::from_millis(100).saturating_mul(1u32 << attempt.min(16));
    let ceiling = base.min(cap);
    let ms = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let cap = std::time::Duration::from_secs(10);
        for attempt in 0..30 {
            let d = super::backoff(attempt, cap);
            assert!(d <= cap, "{d:?}");
            assert!(d >= std::time::Duration::from_millis(50), "{d:?}");
        }
        assert!(super::backoff(20, cap) >= cap / 2);
    }
}

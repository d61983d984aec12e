//! Certificate renewal: at about two thirds of the remaining lifetime (with jitter, so a fleet does not
//! renew in step), authenticated by the current certificate, for the same identity. New handshakes use
//! the new leaf; connections already open keep theirs.

use super::bootstrap;
use super::cache::Cache;
use super::metrics::Renewal;
use super::Settings;
use crate::state::Proxy;
use rand::Rng as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use weft_certs::KeyAndCsr;

pub async fn run(proxy: Arc<Proxy>, settings: Settings) {
    let cache = Cache::new(&settings.control.state_dir);
    loop {
        let wait = next_renewal(proxy.identity.credential().not_after());
        tracing::debug!(?wait, "next certificate renewal");
        tokio::select! {
            _ = proxy.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        renew(&proxy, &settings, &cache).await;
    }
}

/// When to renew a leaf expiring at `not_after`: 60–70% of the way from now.
pub fn next_renewal(not_after: SystemTime) -> Duration {
    let left = not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let fraction = rand::thread_rng().gen_range(0.60..0.70);
    left.mul_f64(fraction)
}

/// Tries until it succeeds or the proxy stops; backs off between failures.
async fn renew(proxy: &Proxy, settings: &Settings, cache: &Cache) {
    let id = proxy.identity.id();
    let mut attempt = 0;
    loop {
        let tls = proxy.identity.client_config(&settings.server_id);
        let res = match KeyAndCsr::generate(&id) {
            Ok(key) => bootstrap::request(settings, tls, &key, None, cache).await,
            Err(e) => Err(bootstrap::BootstrapError::Other(e.to_string())),
        };
        match res {
            Ok((cred, bundle)) => {
                let serial = cred.serial_hex();
                let not_after = cred.not_after();
                match proxy.identity.update(cred, bundle) {
                    Ok(()) => {
                        proxy.metrics.control.cert_renewal(Renewal::Ok);
                        proxy.metrics.control.set_cert_expiry(not_after);
                        return tracing::info!(%id, %serial, "certificate renewed");
                    }
                    Err(e) => {
                        proxy.metrics.control.cert_renewal(Renewal::Unusable);
                        tracing::error!(%id, error = %e, "renewed certificate is not usable");
                    }
                }
            }
            Err(e) => {
                proxy.metrics.control.cert_renewal(Renewal::Failed);
                let left = proxy
                    .identity
                    .credential()
                    .not_after()
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tracing::warn!(%id, error = %e, expires_in = ?left, "certificate renewal failed; retrying");
            }
        }
        let pause = super::backoff(attempt, Duration::from_secs(5));
        attempt += 1;
        tokio::select! {
            _ = proxy.shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

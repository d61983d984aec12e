//! The control plane's own serving certificate (port 15010, identity `weft-system/weft-control`) renews
//! while it runs, at two thirds of its lifetime, like a proxy's leaf. The proxy API's TLS config reads
//! the credential from the shared [`weft_certs::Identity`] on every handshake, so a renewal reaches new
//! connections at once and never drops an open one (those keep the keys they were made with).
//!
//! The same task refreshes the revocation list now and then, so serials whose certificates expired leave
//! the list pushed to proxies.

use crate::server::ControlPlane;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use weft_certs::ca::CLOCK_SKEW_ALLOWANCE;
use weft_certs::Credential;

/// How often expired serials are dropped from the pushed revocation list.
const REVOCATION_REFRESH: Duration = Duration::from_secs(60);
/// Pause after a failed renewal; the current certificate still serves meanwhile.
const RETRY: Duration = Duration::from_secs(5);

pub async fn run(cp: Arc<ControlPlane>) {
    let mut failed = false;
    loop {
        let due = renewal_due(&cp.serving.credential());
        let until_due = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let wait = if failed { RETRY } else { until_due }.min(REVOCATION_REFRESH);
        tokio::select! {
            _ = cp.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        cp.apply_revocations();
        if SystemTime::now() < renewal_due(&cp.serving.credential()) {
            continue;
        }
        match renew(&cp) {
            Ok(serial) => {
                failed = false;
                cp.metrics.serving_rotation("ok");
                tracing::info!(%serial, ttl = ?cp.serving_ttl, "serving certificate renewed");
            }
            Err(e) => {
                failed = true;
                cp.metrics.serving_rotation("failed");
                tracing::error!(error = %format!("{e:#}"), "cannot renew the serving certificate; retrying");
            }
        }
    }
}

/// Two thirds into the certificate's life, counted from when it was issued (its not-before is set back
/// by the clock-skew allowance).
fn renewal_due(cred: &Credential) -> SystemTime {
    let issued = cred.not_before() + CLOCK_SKEW_ALLOWANCE;
    let life = cred
        .not_after()
        .duration_since(issued)
        .unwrap_or(Duration::ZERO);
    issued + life * 2 / 3
}

fn renew(cp: &ControlPlane) -> anyhow::Result<String> {
    let (chain, key) =
        crate::state_dir::issue_serving(&cp.state_dir, cp.issuer.ca(), cp.serving_ttl)?;
    let cred = Credential::from_pem(&chain, &key)?;
    let serial = cred.serial_hex();
    cp.serving.update(cred, (*cp.serving.bundle()).clone())?;
    Ok(serial)
}

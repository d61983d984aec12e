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
use weft_certs::Credential;

/// How often expired serials are dropped from the pushed revocation list.
const REVOCATION_REFRESH: Duration = Duration::from_secs(60);
/// Pause after a failed renewal; the current certificate still serves meanwhile.
const RETRY: Duration = Duration::from_secs(5);

pub async fn run(cp: Arc<ControlPlane>) {
    let mut failed = false;
    loop {
        let due = renewal_due(&cp.serving.credential(), cp.serving_ttl);
        let until_due = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let wait = if failed { RETRY } else { until_due }.min(REVOCATION_REFRESH);
        tokio::select! {
            _ = cp.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        cp.apply_revocations();
        if SystemTime::now() < renewal_due(&cp.serving.credential(), cp.serving_ttl) {
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

/// When a third of the certificate's life is left. Its life is counted as at most the configured
/// lifetime: leaves we sign have their not-before set back by the clock-skew allowance, which is not life
/// to count (with a lifetime of seconds it would be most of it).
fn renewal_due(cred: &Credential, ttl: Duration) -> SystemTime {
    let life = cred
        .not_after()
        .duration_since(cred.not_before())
        .unwrap_or(Duration::ZERO)
        .min(ttl);
    cred.not_after() - life / 3
}

fn renew(cp: &ControlPlane) -> anyhow::Result<String> {
    let (chain, key) =
        crate::state_dir::issue_serving(&cp.state_dir, cp.issuer.ca(), cp.serving_ttl)?;
    let cred = Credential::from_pem(&chain, &key)?;
    let serial = cred.serial_hex();
    cp.serving.update(cred, (*cp.serving.bundle()).clone())?;
    Ok(serial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_certs::{CertificateAuthority, KeyAndCsr, SpiffeId, TrustDomain, Validity};

    fn cred(validity: Validity) -> Credential {
        let td = TrustDomain::new("t.local").unwrap();
        let ca = CertificateAuthority::new_root(
            &td,
            Validity::starting_now(Duration::from_secs(86_400)),
        )
        .unwrap();
        let id = SpiffeId::parse("spiffe://t.local/ns/weft-system/sa/weft-control").unwrap();
        let kc = KeyAndCsr::generate(&id).unwrap();
        let chain = ca.sign_csr(kc.csr_pem(), &id, validity).unwrap();
        Credential::from_pem(&chain, kc.key_pem()).unwrap()
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_life_left() {
        let secs = |n| Duration::from_secs(n);
        // Our own 6 s leaf, set back by the skew allowance: due 2 s before it expires, not at once.
        let c = cred(Validity::starting_now(secs(6)));
        let left = c
            .not_after()
            .duration_since(renewal_due(&c, secs(6)))
            .unwrap();
        assert_eq!(left.as_secs(), 2);
        // A leaf with no allowance (issued elsewhere) and a long configured lifetime.
        let now = SystemTime::now();
        let c = cred(Validity {
            not_before: now,
            not_after: now + secs(9),
        });
        let left = c
            .not_after()
            .duration_since(renewal_due(&c, secs(90 * 86_400)))
            .unwrap();
        assert_eq!(left.as_secs(), 3);
    }
}

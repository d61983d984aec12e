//! Certificate renewal: at about two thirds of the remaining lifetime (with jitter, so a fleet does not
//! renew in step), authenticated by the current certificate, for the same identity. New handshakes use
//! the new leaf; connections already open keep theirs. Renewal goes to the control plane in use, or
//! the next of `control.address` that answers (`planes`), like the config stream.
//!
//! Times are on the mesh's clock (this machine's, corrected by the skew measured on the last
//! certificate), and never count more than the lifetime the leaf was issued with, so a skewed clock
//! neither renews constantly nor too late. While renewal fails every retry is logged with `expires_in`;
//! retries come at most 5 s apart, and at most 1 s apart once less than 20 s are left or the
//! certificate has expired, so a returning control plane is used within about a second. At expiry the
//! proxy refuses mTLS to peers (`ProxyError::CertificateExpired`), logs it once and sets
//! `weft_proxy_cert_expired`; it keeps running and renews as soon as it can.

use super::bootstrap::{self, BootstrapError};
use super::cache::Cache;
use super::clock::Skew;
use super::metrics::Renewal;
use super::Settings;
use crate::state::Proxy;
use rand::Rng as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use weft_certs::ca::CLOCK_SKEW_ALLOWANCE;
use weft_certs::{Credential, KeyAndCsr};

/// The longest pause between renewal attempts.
const RETRY_CAP: Duration = Duration::from_secs(5);
/// The pause once expiry is near or past: renewal must follow the control plane's return at once.
const RETRY_CAP_NEAR_EXPIRY: Duration = Duration::from_secs(1);
/// How often an expired proxy repeats that it is still expired (it retries every second).
const EXPIRED_LOG_EVERY: Duration = Duration::from_secs(10);

pub async fn run(proxy: Arc<Proxy>, settings: Settings) {
    let cache = Cache::new(&settings.control.state_dir);
    loop {
        let wait = next_renewal(&proxy.identity.credential(), proxy.identity.mesh_now());
        tracing::debug!(?wait, "next certificate renewal");
        tokio::select! {
            _ = proxy.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        renew(&proxy, &settings, &cache).await;
    }
}

/// When to renew `cred`: 60–70% of the way from `now` (the mesh's clock) to its expiry, counting no
/// more than the lifetime it was issued with.
pub fn next_renewal(cred: &Credential, now: SystemTime) -> Duration {
    let left = cred
        .not_after()
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .min(issued_life(cred));
    let fraction = rand::thread_rng().gen_range(0.60..0.70);
    left.mul_f64(fraction)
}

/// The lifetime a leaf was issued with: the control plane sets `notBefore` back by the skew allowance,
/// which is not life to count.
pub fn issued_life(cred: &Credential) -> Duration {
    let life = cred
        .not_after()
        .duration_since(cred.not_before())
        .unwrap_or(Duration::ZERO);
    if life > CLOCK_SKEW_ALLOWANCE {
        life - CLOCK_SKEW_ALLOWANCE
    } else {
        life
    }
}

/// The pause after failed attempt number `attempt`, with `left` of the certificate's life remaining.
fn retry_pause(attempt: u32, left: Duration) -> Duration {
    let cap = if left < Duration::from_secs(20) {
        RETRY_CAP_NEAR_EXPIRY
    } else {
        RETRY_CAP
    };
    super::backoff(attempt, cap).min(left.max(RETRY_CAP_NEAR_EXPIRY))
}

/// Tries until it succeeds or the proxy stops; backs off between failures.
async fn renew(proxy: &Proxy, settings: &Settings, cache: &Cache) {
    let mut attempt = 0;
    let mut expiry = ExpiryLog::default();
    loop {
        let outcome = attempt_once(proxy, settings, cache).await;
        if outcome.is_ok() {
            if expiry.expired.is_some() {
                tracing::info!(id = %proxy.identity.id(), "certificate renewed after it had expired: mTLS to peers works again");
            }
            proxy.metrics.control.set_cert_expired(false);
            return;
        }
        let left = left_of(proxy);
        if let Err(Some(e)) = outcome {
            expiry.failed(proxy, &e, left);
        }
        expiry.check(proxy);
        let pause = retry_pause(attempt, left);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = proxy.shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// What is left of the current certificate's life, on the mesh's clock.
fn left_of(proxy: &Proxy) -> Duration {
    proxy
        .identity
        .credential()
        .not_after()
        .duration_since(proxy.identity.mesh_now())
        .unwrap_or(Duration::ZERO)
}

/// One renewal: `Err(Some(e))` when it failed to get a certificate, `Err(None)` when one came back
/// that could not be used (logged here).
async fn attempt_once(
    proxy: &Proxy,
    settings: &Settings,
    cache: &Cache,
) -> Result<(), Option<BootstrapError>> {
    let id = proxy.identity.id();
    let tls = proxy.identity.client_config(&settings.server_id);
    let key = KeyAndCsr::generate(&id).map_err(|e| Some(BootstrapError::Other(e.to_string())))?;
    let (cred, bundle, skew) = bootstrap::request(settings, tls, &key, None, cache)
        .await
        .map_err(Some)?;
    let serial = cred.serial_hex();
    let not_after = cred.not_after();
    match proxy.identity.update(cred, bundle) {
        Ok(()) => {
            adopt_skew(proxy, skew);
            proxy.metrics.control.cert_renewal(Renewal::Ok);
            proxy.metrics.control.set_cert_expiry(not_after);
            tracing::info!(%id, %serial, clock_offset_s = skew.seconds(), "certificate renewed");
            Ok(())
        }
        Err(e) => {
            proxy.metrics.control.cert_renewal(Renewal::Unusable);
            tracing::error!(%id, error = %e, "renewed certificate is not usable");
            Err(None)
        }
    }
}

/// Checks certificates on the control plane's clock from now on.
pub fn adopt_skew(proxy: &Proxy, skew: Skew) {
    proxy.identity.set_clock_offset(skew.ahead(), skew.behind());
    proxy.metrics.control.set_clock_skew(skew.seconds());
}

/// What the renewal loop has said about expiry, so it is said once (or now and then), not every second.
#[derive(Default)]
struct ExpiryLog {
    /// Since when (this loop's clock) the certificate has been expired.
    expired: Option<std::time::Instant>,
    last_said: Option<std::time::Instant>,
}

impl ExpiryLog {
    fn failed(&mut self, proxy: &Proxy, e: &BootstrapError, left: Duration) {
        let id = proxy.identity.id();
        proxy.metrics.control.cert_renewal(Renewal::Failed);
        if e.is_clock_skew() {
            proxy.metrics.control.clock_skew_error();
            return tracing::error!(%id, error = %e, expires_in = ?left, "certificate renewal failed: this machine's clock is off; retrying");
        }
        let due = self
            .last_said
            .is_none_or(|t| t.elapsed() >= EXPIRED_LOG_EVERY);
        if self.expired.is_none() || due {
            self.last_said = Some(std::time::Instant::now());
            tracing::warn!(%id, error = %e, expires_in = ?left, "certificate renewal failed; retrying");
        }
    }

    /// Notes the moment the certificate expires (once), and sets the gauge.
    fn check(&mut self, proxy: &Proxy) {
        let Some(not_after) = proxy.identity.expired_at() else {
            return;
        };
        proxy.metrics.control.set_cert_expired(true);
        if self.expired.is_none() {
            self.expired = Some(std::time::Instant::now());
            tracing::error!(
                id = %proxy.identity.id(),
                not_after = %super::clock::rfc3339(not_after),
                "certificate expired and could not be renewed: mTLS to peers is refused (never sent in plaintext) until it is; retrying every second"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_certs::{CertificateAuthority, SpiffeId, TrustDomain, Validity};

    fn leaf(ttl: Duration) -> Credential {
        let td = TrustDomain::new("t.local").unwrap();
        let ca = CertificateAuthority::new_root(&td, Validity::starting_now(ttl * 10)).unwrap();
        let id = SpiffeId::parse("spiffe://t.local/ns/default/sa/web").unwrap();
        let kc = KeyAndCsr::generate(&id).unwrap();
        let chain = ca
            .sign_csr(kc.csr_pem(), &id, Validity::starting_now(ttl))
            .unwrap();
        Credential::from_pem(&chain, kc.key_pem()).unwrap()
    }

    #[test]
    fn renewal_counts_only_the_issued_life_whatever_the_clock_says() {
        let cred = leaf(Duration::from_secs(20));
        assert_eq!(issued_life(&cred).as_secs(), 20);
        let now = SystemTime::now();
        // A clock 30 s behind sees 50 s left; renewal still comes within 70% of the 20 s issued.
        let behind = next_renewal(&cred, now - Duration::from_secs(30));
        assert!(behind <= Duration::from_secs(14), "{behind:?}");
        assert!(behind >= Duration::from_secs(11), "{behind:?}");
        // Past expiry: at once.
        assert_eq!(
            next_renewal(&cred, now + Duration::from_secs(60)),
            Duration::ZERO
        );
    }

    #[test]
    fn retries_come_within_a_second_near_and_after_expiry() {
        for attempt in [0, 3, 10, 30] {
            assert!(retry_pause(attempt, Duration::ZERO) <= Duration::from_secs(1));
            assert!(retry_pause(attempt, Duration::from_secs(10)) <= Duration::from_secs(1));
            assert!(retry_pause(attempt, Duration::from_secs(3600)) <= RETRY_CAP);
        }
        assert!(retry_pause(30, Duration::from_secs(3600)) >= RETRY_CAP / 2);
    }
}

//! The proxy's first identity: from the cache when a usable certificate is there, else a join token and
//! a CSR sent to the control plane over TLS that pins the mesh CA. The key is made here and never sent.

use super::cache::Cache;
use super::clock::{ClockSkew, Skew};
use super::conn::{self, ConnError};
use super::Settings;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use weft_api::control::{CertificateRequest, CertificateResponse, ErrorBody, PATH_CERTIFICATE};
use weft_certs::{Credential, Identity, KeyAndCsr, SpiffeId, TrustBundle};

/// Why a certificate was not obtained.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The control plane said no; retrying with the same credential will not help.
    #[error("the control plane refused the certificate request ({status}): {reason}")]
    Refused { status: StatusCode, reason: String },
    #[error(transparent)]
    Unreachable(#[from] ConnError),
    /// The certificate came back, but this machine's clock is too far from the control plane's for it
    /// to work; it is not used. Fixing the clock fixes the next attempt.
    #[error(transparent)]
    ClockSkew(#[from] ClockSkew),
    #[error("{0}")]
    Other(String),
}

impl BootstrapError {
    /// Whether the clock, rather than the network or the control plane, is to blame.
    pub fn is_clock_skew(&self) -> bool {
        matches!(
            self,
            BootstrapError::ClockSkew(_) | BootstrapError::Unreachable(ConnError::ClockSkew { .. })
        )
    }
}

/// Where the identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Joined,
}

/// The identity to start with. Without a cached certificate and with the control plane unreachable,
/// keeps trying (with backoff) until `give_up` passes; a refusal is final.
pub async fn identity(
    settings: &Settings,
    give_up: Duration,
) -> anyhow::Result<(Identity, Source)> {
    let id = settings.workload_id()?;
    let cache = Cache::new(&settings.control.state_dir);
    match cache.credential() {
        Ok(Some((cred, bundle))) if cred.id() == &id && cred.not_after() > SystemTime::now() => {
            tracing::info!(%id, serial = %cred.serial_hex(), "identity from the cache");
            return Ok((Identity::new(cred, bundle)?, Source::Cache));
        }
        Ok(Some((cred, _))) if cred.id() != &id => {
            tracing::warn!(cached = %cred.id(), wanted = %id, "cached certificate is for another identity; joining again")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cached certificate is not usable; joining again"),
    }
    let token = join_token(settings)?;
    let key = join_key(&id, &cache)?;
    let deadline = tokio::time::Instant::now() + give_up;
    let mut attempt = 0;
    loop {
        match join(settings, &key, &token, &cache).await {
            Ok(identity) => {
                cache.clear_join_key();
                return Ok((identity, Source::Joined));
            }
            Err(e) if e.is_clock_skew() && tokio::time::Instant::now() < deadline => {
                tracing::error!(error = %e, "cannot join: this machine's clock is off; retrying");
            }
            Err(BootstrapError::Unreachable(e)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "waiting for the control plane");
            }
            Err(e) => {
                if matches!(e, BootstrapError::Refused { .. }) {
                    cache.clear_join_key();
                }
                return Err(e.into());
            }
        }
        tokio::time::sleep(super::backoff(attempt, Duration::from_secs(5))).await;
        attempt += 1;
    }
}

/// The key to join with: the one kept by an earlier start whose join did not finish, else a new one,
/// kept (0600) before it is first sent. Every attempt asks for this key, so when an answer is lost the
/// control plane can tell the retry from another holder of a single-use token and answer it again.
fn join_key(id: &SpiffeId, cache: &Cache) -> anyhow::Result<KeyAndCsr> {
    match cache.join_key() {
        Ok(Some(pem)) => match KeyAndCsr::from_key_pem(id, &pem) {
            Ok(key) => {
                tracing::info!(%id, "joining with the key kept from an unfinished join");
                return Ok(key);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the kept join key is not usable; making a new one")
            }
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the kept join key; making a new one"),
    }
    let key = KeyAndCsr::generate(id)?;
    if let Err(e) = cache.save_join_key(key.key_pem()) {
        // Still usable for this start's retries, which keep it in memory.
        tracing::warn!(error = %e, "cannot keep the join key; a restart during the join makes a new one");
    }
    Ok(key)
}

fn join_token(settings: &Settings) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("WEFT_JOIN_TOKEN") {
        return Ok(t.trim().to_string());
    }
    match &settings.control.token_file {
        Some(path) => Ok(std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the join token {}: {e}", path.display()))?
            .trim()
            .to_string()),
        None => anyhow::bail!(
            "no cached certificate and no join token: set control.token_file or WEFT_JOIN_TOKEN"
        ),
    }
}

async fn join(
    settings: &Settings,
    key: &KeyAndCsr,
    token: &str,
    cache: &Cache,
) -> Result<Identity, BootstrapError> {
    let id = key.id();
    let tls = weft_certs::bootstrap_client_config(settings.pinned.clone(), &settings.server_id);
    let (cred, bundle, skew) = request(settings, tls, key, Some(token), cache).await?;
    tracing::info!(%id, serial = %cred.serial_hex(), clock_offset_s = skew.seconds(), "joined the mesh: certificate issued by the control plane");
    let identity = Identity::new(cred, bundle).map_err(|e| BootstrapError::Other(e.to_string()))?;
    identity.set_clock_offset(skew.ahead(), skew.behind());
    Ok(identity)
}

/// Sends the CSR of `key` (with `token` on join; the TLS client certificate authenticates a renewal) to
/// the first control plane of `settings.planes` that answers, caches and returns the issued credential,
/// with how far this machine's clock is from the control plane's. A credential that shows a skew beyond
/// the leeway is neither cached nor returned.
pub async fn request(
    settings: &Settings,
    tls: Arc<rustls::ClientConfig>,
    key: &KeyAndCsr,
    token: Option<&str>,
    cache: &Cache,
) -> Result<(Credential, TrustBundle, Skew), BootstrapError> {
    let other = |e: &dyn std::fmt::Display| BootstrapError::Other(e.to_string());
    let body = CertificateRequest {
        csr_pem: key.csr_pem().to_string(),
        token: token.map(str::to_string),
    };
    let sent_at = SystemTime::now();
    let (conn::Conn { mut send, .. }, addr) = settings.planes.connect_for_request(tls).await?;
    let req = Request::post(format!("https://{addr}{PATH_CERTIFICATE}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(conn::full(
            serde_json::to_vec(&body).map_err(|e| other(&e))?,
        ))
        .map_err(|e| other(&e))?;
    let lost = |e: hyper::Error| BootstrapError::Unreachable(ConnError::Http(e, addr));
    let resp = send.send_request(req).await.map_err(lost)?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(lost)?.to_bytes();
    if !status.is_success() {
        let reason = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        return Err(BootstrapError::Refused { status, reason });
    }
    let cert: CertificateResponse = serde_json::from_slice(&bytes).map_err(|e| other(&e))?;
    let cred = Credential::from_pem(&cert.chain_pem, key.key_pem()).map_err(|e| other(&e))?;
    let skew = Skew::of(&cred, sent_at, SystemTime::now());
    skew.check()?;
    let bundle = TrustBundle::from_pem(&cert.bundle_pem).map_err(|e| other(&e))?;
    if let Err(e) = cache.save_credential(&cert.chain_pem, key.key_pem(), &cert.bundle_pem) {
        tracing::warn!(error = %e, "cannot cache the certificate; a restart will need the control plane");
    }
    Ok((cred, bundle, skew))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_join_key_is_kept_0600_and_asked_for_again_until_the_join_ends() {
        let dir = std::env::temp_dir().join(format!("weft-join-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Cache::new(&dir.join("state"));
        let id = SpiffeId::parse("spiffe://t.local/ns/default/sa/pod").unwrap();
        let first = join_key(&id, &cache).unwrap();
        let mode = std::fs::metadata(dir.join("state/join-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let fp = |k: &KeyAndCsr| weft_certs::csr_key_sha256(k.csr_pem()).unwrap();
        // A restart during the join asks for the same key.
        assert_eq!(fp(&join_key(&id, &cache).unwrap()), fp(&first));
        cache.clear_join_key();
        assert_ne!(fp(&join_key(&id, &cache).unwrap()), fp(&first));
        // A damaged kept key is replaced, not fatal.
        std::fs::write(dir.join("state/join-key.pem"), "garbage").unwrap();
        assert!(join_key(&id, &cache).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

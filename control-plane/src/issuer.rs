//! Workload certificate issuance: a CSR plus a join token (first start) or the proxy's current
//! certificate (renewal) becomes a short-lived leaf for exactly the identity that credential allows.

use crate::metrics::Metrics;
use crate::revocation::Revocations;
use crate::tokens::{TokenError, TokenStore};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weft_api::control::CertificateResponse;
use weft_certs::{CertError, CertificateAuthority, SpiffeId, TrustDomain, Validity};

pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("a join token is required (no client certificate was presented)")]
    NoCredential,
    #[error("the CSR asks for {requested}, but the {by} allows only {allowed}")]
    OtherIdentity {
        requested: String,
        allowed: SpiffeId,
        by: &'static str,
    },
    #[error("renewal by {0} refused: it is not a workload identity of this mesh")]
    NotAWorkload(SpiffeId),
    #[error("{target} is revoked; `weftctl unrevoke` lifts it")]
    Revoked {
        target: weft_api::operator::RevocationTarget,
    },
    #[error("renewal refused: certificate {serial} is revoked")]
    RevokedCertificate { serial: String },
    #[error("the CSR is not usable: {0}")]
    BadCsr(CertError),
    #[error("signing failed: {0}")]
    Sign(CertError),
    #[error("cannot record the issued certificate: {0}")]
    Record(String),
}

impl IssueError {
    /// Refusals of the caller's credential are 403; a malformed request 400; our own failure 500.
    pub fn status(&self) -> u16 {
        match self {
            IssueError::BadCsr(_) => 400,
            IssueError::Sign(_) | IssueError::Record(_) => 500,
            _ => 403,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            IssueError::Token(t) => t.label(),
            IssueError::NoCredential => "no_credential",
            IssueError::OtherIdentity { .. } => "other_identity",
            IssueError::NotAWorkload(_) => "not_a_workload",
            IssueError::Revoked { .. } | IssueError::RevokedCertificate { .. } => "revoked",
            IssueError::BadCsr(_) => "bad_csr",
            IssueError::Sign(_) => "sign_failed",
            IssueError::Record(_) => "record_failed",
        }
    }
}

pub struct Issuer {
    ca: CertificateAuthority,
    bundle_pem: String,
    tokens: Mutex<TokenStore>,
    revocations: Mutex<Revocations>,
    ttl: Mutex<Duration>,
    metrics: Arc<Metrics>,
}

impl Issuer {
    pub fn new(
        ca: CertificateAuthority,
        bundle_pem: String,
        tokens: TokenStore,
        revocations: Revocations,
        metrics: Arc<Metrics>,
    ) -> Issuer {
        Issuer {
            ca,
            bundle_pem,
            tokens: Mutex::new(tokens),
            revocations: Mutex::new(revocations),
            ttl: Mutex::new(DEFAULT_TTL),
            metrics,
        }
    }

    /// The mesh CA, for the control plane's own serving certificate.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        self.ca.trust_domain()
    }

    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    pub fn tokens(&self) -> std::sync::MutexGuard<'_, TokenStore> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn revocations(&self) -> std::sync::MutexGuard<'_, Revocations> {
        self.revocations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaf lifetime for certificates issued from now on (MeshConfig `certificateTtl`).
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().unwrap_or_else(|e| e.into_inner()) = ttl;
    }

    fn ttl(&self) -> Duration {
        *self.ttl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// First certificate: the token decides the identity.
    pub fn join(&self, token: &str, csr_pem: &str) -> Result<CertificateResponse, IssueError> {
        let res = self
            .tokens()
            .redeem(token)
            .map_err(IssueError::from)
            .and_then(|info| {
                self.check_not_revoked(&info.identity)?;
                self.sign(csr_pem, &info.identity, "join token", None)
            });
        self.count(&res, "join");
        res
    }

    /// Renewal: the current certificate (`serial`, lowercase hex) decides the identity; a revoked one
    /// renews nothing, and the new leaf keeps the workload the current one was bound to.
    pub fn renew(
        &self,
        peer: &SpiffeId,
        serial: Option<&str>,
        csr_pem: &str,
    ) -> Result<CertificateResponse, IssueError> {
        let res = if peer.trust_domain() != self.trust_domain().as_str()
            || peer.namespace().is_none()
            || peer.service_account().is_none()
        {
            Err(IssueError::NotAWorkload(peer.clone()))
        } else {
            self.check_renewable(peer, serial)
                .and_then(|workload| self.sign(csr_pem, peer, "current certificate", workload))
        };
        self.count(&res, "renew");
        res
    }

    fn check_not_revoked(&self, id: &SpiffeId) -> Result<(), IssueError> {
        match self.revocations().revoked_target(id, None) {
            Some(target) => Err(IssueError::Revoked {
                target: target.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The workload the renewing certificate is bound to, unless it or its identity is revoked.
    fn check_renewable(
        &self,
        peer: &SpiffeId,
        serial: Option<&str>,
    ) -> Result<Option<String>, IssueError> {
        let rev = self.revocations();
        if let Some(serial) = serial.filter(|s| rev.is_denied(s)) {
            return Err(IssueError::RevokedCertificate {
                serial: serial.to_string(),
            });
        }
        let workload = serial.and_then(|s| rev.workload_of(s));
        match rev.revoked_target(peer, workload.as_deref()) {
            Some(target) => Err(IssueError::Revoked {
                target: target.clone(),
            }),
            None => Ok(workload),
        }
    }

    fn count(&self, res: &Result<CertificateResponse, IssueError>, kind: &'static str) {
        match res {
            Ok(_) => self.metrics.certificate(kind),
            Err(e) => {
                tracing::warn!(kind, error = %e, "certificate request refused");
                self.metrics.refused(e.label());
            }
        }
    }

    fn sign(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        by: &'static str,
        workload: Option<String>,
    ) -> Result<CertificateResponse, IssueError> {
        let chain = self
            .ca
            .sign_csr(csr_pem, id, Validity::starting_now(self.ttl()))
            .map_err(|e| match e {
                CertError::CsrOtherIdentity { requested, .. } => IssueError::OtherIdentity {
                    requested,
                    allowed: id.clone(),
                    by,
                },
                e @ (CertError::CsrSignature
                | CertError::CsrKey { .. }
                | CertError::Parse { .. }
                | CertError::NoPem { .. }
                | CertError::Pem { .. }) => IssueError::BadCsr(e),
                e => IssueError::Sign(e),
            })?;
        // Unrecorded, a leaf could not be revoked: refuse to hand it out.
        let (serial, not_after) = leaf_facts(&chain)
            .ok_or_else(|| IssueError::Record("the signed leaf does not parse".into()))?;
        {
            // Recorded and checked under one lock: a revocation made while this request was signed
            // either saw the record (and denies it) or is seen here.
            let mut rev = self.revocations();
            rev.record(serial.clone(), id.clone(), workload, not_after)
                .map_err(|e| IssueError::Record(e.to_string()))?;
            if rev.is_denied(&serial) {
                return Err(IssueError::RevokedCertificate { serial });
            }
        }
        tracing::info!(%id, by, %serial, ttl = ?self.ttl(), "certificate issued");
        Ok(CertificateResponse {
            chain_pem: chain,
            bundle_pem: self.bundle_pem.clone(),
        })
    }
}

/// Serial (lowercase hex) and not-after (Unix seconds) of the first certificate of a PEM chain.
fn leaf_facts(chain_pem: &str) -> Option<(String, u64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    let serial = weft_certs::leaf_serial_hex(&pem.contents)?;
    Some((
        serial,
        u64::try_from(cert.validity().not_after.timestamp()).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_certs::KeyAndCsr;

    fn issuer(name: &str) -> Issuer {
        let td = TrustDomain::new("t.local").unwrap();
        let ca = CertificateAuthority::new_root(
            &td,
            Validity::starting_now(Duration::from_secs(3600 * 24 * 30)),
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("weft-issuer-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("t.json"));
        let tokens = TokenStore::open(dir.join("t.json"), td).unwrap();
        let bundle = ca.cert_pem();
        Issuer::new(
            ca,
            bundle,
            tokens,
            Revocations::open(None).unwrap(),
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn token_binds_the_identity() {
        let iss = issuer("bind");
        let (tok, info) = iss.tokens().create("default", "reviews", 60, None).unwrap();
        let good = KeyAndCsr::generate(&info.identity).unwrap();
        let cert = iss.join(&tok, good.csr_pem()).unwrap();
        assert!(cert.chain_pem.contains("BEGIN CERTIFICATE"));

        let other = SpiffeId::parse("spiffe://t.local/ns/default/sa/admin").unwrap();
        let bad = KeyAndCsr::generate(&other).unwrap();
        let e = iss.join(&tok, bad.csr_pem()).unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(e.to_string().contains("sa/admin"), "{e}");
        assert!(e.to_string().contains("sa/reviews"), "{e}");
    }

    #[test]
    fn renewal_keeps_the_identity() {
        let iss = issuer("renew");
        let me = SpiffeId::parse("spiffe://t.local/ns/default/sa/reviews").unwrap();
        let csr = KeyAndCsr::generate(&me).unwrap();
        assert!(iss.renew(&me, None, csr.csr_pem()).is_ok());
        let other = SpiffeId::parse("spiffe://t.local/ns/default/sa/x").unwrap();
        assert!(matches!(
            iss.renew(&other, None, csr.csr_pem()),
            Err(IssueError::OtherIdentity { .. })
        ));
        let foreign = SpiffeId::parse("spiffe://elsewhere/ns/default/sa/reviews").unwrap();
        assert!(matches!(
            iss.renew(&foreign, None, csr.csr_pem()),
            Err(IssueError::NotAWorkload(_))
        ));
    }
}

//! Workload certificate issuance: a CSR plus a join token (first start) or the proxy's current
//! certificate (renewal) becomes a short-lived leaf for exactly the identity that credential allows.

use crate::metrics::Metrics;
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
    #[error("the CSR is not usable: {0}")]
    BadCsr(CertError),
    #[error("signing failed: {0}")]
    Sign(CertError),
}

impl IssueError {
    /// Refusals of the caller's credential are 403; a malformed request 400; our own failure 500.
    pub fn status(&self) -> u16 {
        match self {
            IssueError::BadCsr(_) => 400,
            IssueError::Sign(_) => 500,
            _ => 403,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            IssueError::Token(t) => t.label(),
            IssueError::NoCredential => "no_credential",
            IssueError::OtherIdentity { .. } => "other_identity",
            IssueError::NotAWorkload(_) => "not_a_workload",
            IssueError::BadCsr(_) => "bad_csr",
            IssueError::Sign(_) => "sign_failed",
        }
    }
}

pub struct Issuer {
    ca: CertificateAuthority,
    bundle_pem: String,
    tokens: Mutex<TokenStore>,
    ttl: Mutex<Duration>,
    metrics: Arc<Metrics>,
}

impl Issuer {
    pub fn new(
        ca: CertificateAuthority,
        bundle_pem: String,
        tokens: TokenStore,
        metrics: Arc<Metrics>,
    ) -> Issuer {
        Issuer {
            ca,
            bundle_pem,
            tokens: Mutex::new(tokens),
            ttl: Mutex::new(DEFAULT_TTL),
            metrics,
        }
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
            .and_then(|info| self.sign(csr_pem, &info.identity, "join token"));
        self.count(&res, "join");
        res
    }

    /// Renewal: the current certificate decides the identity.
    pub fn renew(&self, peer: &SpiffeId, csr_pem: &str) -> Result<CertificateResponse, IssueError> {
        let res = if peer.trust_domain() != self.trust_domain().as_str()
            || peer.namespace().is_none()
            || peer.service_account().is_none()
        {
            Err(IssueError::NotAWorkload(peer.clone()))
        } else {
            self.sign(csr_pem, peer, "current certificate")
        };
        self.count(&res, "renew");
        res
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
        tracing::info!(%id, by, ttl = ?self.ttl(), "certificate issued");
        Ok(CertificateResponse {
            chain_pem: chain,
            bundle_pem: self.bundle_pem.clone(),
        })
    }
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
        Issuer::new(ca, bundle, tokens, Arc::new(Metrics::new()))
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
        assert!(iss.renew(&me, csr.csr_pem()).is_ok());
        let other = SpiffeId::parse("spiffe://t.local/ns/default/sa/x").unwrap();
        assert!(matches!(
            iss.renew(&other, csr.csr_pem()),
            Err(IssueError::OtherIdentity { .. })
        ));
        let foreign = SpiffeId::parse("spiffe://elsewhere/ns/default/sa/reviews").unwrap();
        assert!(matches!(
            iss.renew(&foreign, csr.csr_pem()),
            Err(IssueError::NotAWorkload(_))
        ));
    }
}

//! Workload certificate issuance: a CSR plus a join token (first start) or the proxy's current
//! certificate (renewal) becomes a short-lived leaf for exactly the identity that credential allows.

use crate::claims::{Claim, ClaimStore};
use crate::metrics::Metrics;
use crate::persist::StateError;
use crate::revocation::Revocations;
use crate::state_dir::control_plane_id;
use crate::tokens::{Grant, TokenError, TokenStore};
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
    #[error("{0} is the control plane's own identity: it is never issued")]
    ControlPlane(SpiffeId),
    #[error("cannot record the issued certificate: {0}")]
    Record(String),
    #[error("the certificate was not issued: {0}")]
    NotRecorded(StateError),
    #[error("the signed certificate cannot be read back")]
    LeafUnreadable,
}

impl IssueError {
    /// Refusals of the caller's credential are 403; a malformed request 400; our own failure 500.
    pub fn status(&self) -> u16 {
        match self {
            IssueError::BadCsr(_) => 400,
            IssueError::Token(TokenError::Store(_)) => 503,
            IssueError::Sign(_)
            | IssueError::Record(_)
            | IssueError::NotRecorded(_)
            | IssueError::LeafUnreadable => 500,
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
            IssueError::ControlPlane(_) => "control_plane_identity",
            IssueError::NotRecorded(_) => "not_recorded",
            IssueError::LeafUnreadable => "leaf_unreadable",
        }
    }
}

pub struct Issuer {
    ca: CertificateAuthority,
    bundle_pem: String,
    tokens: Mutex<TokenStore>,
    claims: Mutex<ClaimStore>,
    revocations: Mutex<Revocations>,
    ttl: Mutex<Duration>,
    metrics: Arc<Metrics>,
}

impl Issuer {
    pub fn new(
        ca: CertificateAuthority,
        bundle_pem: String,
        tokens: TokenStore,
        claims: ClaimStore,
        revocations: Revocations,
        metrics: Arc<Metrics>,
    ) -> Issuer {
        Issuer {
            ca,
            bundle_pem,
            tokens: Mutex::new(tokens),
            claims: Mutex::new(claims),
            revocations: Mutex::new(revocations),
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

    /// The mesh CA, for the control plane's own serving certificate.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    pub fn tokens(&self) -> std::sync::MutexGuard<'_, TokenStore> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn claims(&self) -> std::sync::MutexGuard<'_, ClaimStore> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
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

    /// First certificate: the token decides the identity. The token's use is held while signing and
    /// counted only once the certificate (and its workload claim) is recorded, with the key it was
    /// issued for. The key that spent a single-use token may ask again (its answer was lost): it is
    /// issued a new certificate, as the first one was, and no further use is counted.
    pub fn join(&self, token: &str, csr_pem: &str) -> Result<CertificateResponse, IssueError> {
        // An unreadable CSR has no key to match; signing refuses it below with the reason.
        let key = weft_certs::csr_key_sha256(csr_pem).ok();
        let res = self.tokens().reserve(token, key.as_deref());
        let (res, kind) = match res {
            Err(e) => (Err(IssueError::from(e)), "join"),
            Ok(Grant::Replay(info)) => {
                let res = self.issue_for_token(&info, csr_pem);
                if res.is_ok() {
                    tracing::info!(token = %info.id, identity = %info.identity,
                        "join token answered again for the key that spent it (its answer was lost)");
                }
                (res, "join_replay")
            }
            Ok(Grant::Use(info)) => (
                self.issue_and_commit(&info, csr_pem, key.as_deref()),
                "join",
            ),
        };
        self.count(&res, kind);
        res
    }

    /// Signs for a held use of token `info` and counts it, or gives the use back on failure.
    fn issue_and_commit(
        &self,
        info: &weft_api::operator::TokenInfo,
        csr_pem: &str,
        key: Option<&str>,
    ) -> Result<CertificateResponse, IssueError> {
        let issued = self.issue_for_token(info, csr_pem);
        let mut tokens = self.tokens();
        match (issued, key) {
            (Ok(cert), Some(key)) => {
                tokens
                    .commit(&info.id, key)
                    .map(|_| cert)
                    .map_err(|e| match e {
                        crate::tokens::CommitError::Token(t) => IssueError::Token(t),
                        crate::tokens::CommitError::State(e) => IssueError::NotRecorded(e),
                    })
            }
            (Ok(_), None) => {
                // Signing verified the CSR, so its key was readable: not reached.
                tokens.release(&info.id);
                Err(IssueError::Record(
                    "the CSR's public key cannot be read".into(),
                ))
            }
            (Err(e), _) => {
                tokens.release(&info.id);
                Err(e)
            }
        }
    }

    fn issue_for_token(
        &self,
        info: &weft_api::operator::TokenInfo,
        csr_pem: &str,
    ) -> Result<CertificateResponse, IssueError> {
        self.refuse_control_plane(&info.identity)?;
        // Revocation names a workload as `<namespace>/<name>`, as registration binds it.
        let workload = info
            .workload
            .as_ref()
            .map(|w| format!("{}/{w}", info.namespace));
        self.check_not_revoked(&info.identity, workload.as_deref())?;
        let cert = self.sign(csr_pem, &info.identity, "join token", workload)?;
        if let Some(workload) = &info.workload {
            let claim = Claim {
                identity: info.identity.clone(),
                workload: workload.clone(),
                labels: info.labels.clone(),
                not_after: 0,
            };
            self.bind(&cert, claim)?;
        }
        Ok(cert)
    }

    /// Renewal: the current certificate decides the identity, and its workload claim (if any) passes to
    /// the new one. `serial` is the current certificate's.
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
            self.refuse_control_plane(peer).and_then(|_| {
                let workload = self.check_renewable(peer, serial)?;
                let claim = serial.and_then(|s| self.claims().get(s).cloned());
                let cert = self.sign(csr_pem, peer, "current certificate", workload)?;
                match claim {
                    Some(c) => self.bind(&cert, c).map(|_| cert),
                    None => Ok(cert),
                }
            })
        };
        self.count(&res, "renew");
        res
    }

    fn check_not_revoked(&self, id: &SpiffeId, workload: Option<&str>) -> Result<(), IssueError> {
        match self.revocations().revoked_target(id, workload) {
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

    /// The control plane's identity is its own: no proxy may hold it, whatever credential it shows.
    fn refuse_control_plane(&self, id: &SpiffeId) -> Result<(), IssueError> {
        if *id == control_plane_id(self.trust_domain()) {
            return Err(IssueError::ControlPlane(id.clone()));
        }
        Ok(())
    }

    /// Records `claim` for the leaf of `cert`; an error withholds the certificate.
    fn bind(&self, cert: &CertificateResponse, mut claim: Claim) -> Result<(), IssueError> {
        let (serial, not_after) = leaf_serial(&cert.chain_pem).ok_or(IssueError::LeafUnreadable)?;
        claim.not_after = not_after;
        self.claims()
            .bind(&serial, claim)
            .map_err(IssueError::NotRecorded)
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
        let (serial, not_after) = leaf_serial(&chain)
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

/// The serial (lowercase hex) and expiry (unix seconds) of the first certificate in `chain_pem`.
pub fn leaf_serial(chain_pem: &str) -> Option<(String, u64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some((serial_hex(cert.raw_serial()), not_after))
}

/// A serial number as the claims store keys it.
pub fn serial_hex(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
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
        let _ = std::fs::remove_file(dir.join("c.json"));
        let tokens = TokenStore::open(dir.join("t.json"), td).unwrap();
        let claims = ClaimStore::open(dir.join("c.json")).unwrap();
        let bundle = ca.cert_pem();
        Issuer::new(
            ca,
            bundle,
            tokens,
            claims,
            Revocations::open(None).unwrap(),
            Arc::new(Metrics::new()),
        )
    }

    fn new_token(sa: &str, max_uses: Option<u64>) -> crate::tokens::NewToken {
        crate::tokens::NewToken {
            namespace: "default".into(),
            service_account: sa.into(),
            ttl_secs: 60,
            max_uses,
            ..Default::default()
        }
    }

    #[test]
    fn token_binds_the_identity() {
        let iss = issuer("bind");
        let (tok, info) = iss.tokens().create(&new_token("reviews", None)).unwrap();
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

    #[test]
    fn a_refused_csr_leaves_a_single_use_token_for_the_next_request() {
        let iss = issuer("reserve");
        let (tok, info) = iss.tokens().create(&new_token("pod", Some(1))).unwrap();
        let wrong = SpiffeId::parse("spiffe://t.local/ns/default/sa/admin").unwrap();
        let bad = KeyAndCsr::generate(&wrong).unwrap();
        assert!(iss.join(&tok, bad.csr_pem()).is_err());
        let good = KeyAndCsr::generate(&info.identity).unwrap();
        assert!(iss.join(&tok, good.csr_pem()).is_ok());
        let another = KeyAndCsr::generate(&info.identity).unwrap();
        assert!(matches!(
            iss.join(&tok, another.csr_pem()),
            Err(IssueError::Token(TokenError::UsedUp { uses: 1, .. }))
        ));
    }

    #[test]
    fn a_lost_answer_is_issued_again_to_the_same_key_with_its_claim_and_record() {
        let iss = issuer("replay");
        let mut req = new_token("pod", Some(1));
        req.workload = Some("pod-1".into());
        let (tok, info) = iss.tokens().create(&req).unwrap();
        let kc = KeyAndCsr::generate(&info.identity).unwrap();
        let lost = iss.join(&tok, kc.csr_pem()).unwrap();
        let again = iss.join(&tok, kc.csr_pem()).unwrap();
        let (lost_serial, _) = leaf_serial(&lost.chain_pem).unwrap();
        let (serial, _) = leaf_serial(&again.chain_pem).unwrap();
        assert_ne!(serial, lost_serial, "a new certificate is signed");
        weft_certs::Credential::from_pem(&again.chain_pem, kc.key_pem()).unwrap();
        assert_eq!(iss.claims().get(&serial).unwrap().workload, "pod-1");
        assert_eq!(
            iss.revocations().workload_of(&serial).as_deref(),
            Some("default/pod-1")
        );
        assert_eq!(iss.tokens().list()[0].uses, 1, "a replay counts no use");
        let text = iss.metrics.encode();
        assert!(text.contains("join_replay"), "{text}");
        // Anyone else holding the token finds it used up; a revoked identity is not answered again.
        let thief = KeyAndCsr::generate(&info.identity).unwrap();
        assert!(matches!(
            iss.join(&tok, thief.csr_pem()),
            Err(IssueError::Token(TokenError::UsedUp { uses: 1, .. }))
        ));
        // A revoked workload or identity is not answered again.
        assert!(!iss.revocations().is_denied(&serial));
        for target in [
            weft_api::operator::RevocationTarget::Workload {
                namespace: "default".into(),
                name: "pod-1".into(),
            },
            weft_api::operator::RevocationTarget::Identity(info.identity.clone()),
        ] {
            iss.revocations().revoke(target).unwrap();
            assert!(
                iss.revocations().is_denied(&serial),
                "the replayed leaf is denied"
            );
            assert!(matches!(
                iss.join(&tok, kc.csr_pem()),
                Err(IssueError::Revoked { .. })
            ));
        }
    }

    #[test]
    fn a_use_that_cannot_be_saved_fails_the_join() {
        let iss = issuer("unsaved");
        let (tok, info) = iss.tokens().create(&new_token("pod", Some(1))).unwrap();
        // The token file's place becomes a directory: the count cannot be written.
        let path = std::env::temp_dir().join(format!("weft-issuer-{}-unsaved", std::process::id()));
        std::fs::remove_file(path.join("t.json")).unwrap();
        std::fs::create_dir_all(path.join("t.json")).unwrap();
        let csr = KeyAndCsr::generate(&info.identity).unwrap();
        let e = iss.join(&tok, csr.csr_pem()).unwrap_err();
        assert_eq!(e.status(), 500, "{e}");
        assert_eq!(iss.tokens().list()[0].uses, 0);
        std::fs::remove_dir(path.join("t.json")).unwrap();
    }

    #[test]
    fn the_control_planes_identity_is_never_issued() {
        let iss = issuer("cp");
        let cp = control_plane_id(iss.trust_domain());
        let csr = KeyAndCsr::generate(&cp).unwrap();
        assert!(matches!(
            iss.renew(&cp, None, csr.csr_pem()),
            Err(IssueError::ControlPlane(_))
        ));
        let mut req = new_token("weft-control", None);
        req.namespace = "weft-system".into();
        assert!(iss.tokens().create(&req).is_err());
    }

    #[test]
    fn a_claim_follows_the_certificate_through_renewal() {
        let iss = issuer("claim");
        let mut req = new_token("reviews", Some(1));
        req.workload = Some("reviews-1".into());
        req.labels = [("app".to_string(), "reviews".to_string())].into();
        let (tok, info) = iss.tokens().create(&req).unwrap();
        let csr = KeyAndCsr::generate(&info.identity).unwrap();
        let first = iss.join(&tok, csr.csr_pem()).unwrap();
        let (serial, _) = leaf_serial(&first.chain_pem).unwrap();
        assert_eq!(iss.claims().get(&serial).unwrap().workload, "reviews-1");
        let renewed = iss
            .renew(&info.identity, Some(&serial), csr.csr_pem())
            .unwrap();
        let (serial2, _) = leaf_serial(&renewed.chain_pem).unwrap();
        assert_ne!(serial, serial2);
        let first_claim = iss.claims().get(&serial).cloned();
        let carried = iss.claims().get(&serial2).cloned();
        assert_eq!(carried.map(|c| c.workload), first_claim.map(|c| c.workload));
    }
}

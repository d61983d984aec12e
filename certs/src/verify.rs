//! The SPIFFE-aware certificate verifiers of the peer hop, for both ends of the handshake.
//!
//! A peer is accepted when webpki builds a path from its leaf to a root of the *current* trust bundle (with
//! the EKU its role needs, at the handshake's time), and the leaf then names exactly one SPIFFE ID, in our
//! trust domain, equal to the expected one on the client side. Refusals carry a [`VerifyError`] inside the
//! rustls error so the reason reaches the log.

use crate::bundle::TrustBundle;
use crate::error::VerifyError;
use crate::revoked::RevokedSerials;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::tls::Shared;
use crate::x509;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::certificate::X509Certificate;

/// The role the peer plays, which decides the EKU its leaf needs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PeerRole {
    Server,
    Client,
}

impl PeerRole {
    fn usage(self) -> webpki::KeyUsage {
        match self {
            PeerRole::Server => webpki::KeyUsage::server_auth(),
            PeerRole::Client => webpki::KeyUsage::client_auth(),
        }
    }

    fn eku_name(self) -> &'static str {
        match self {
            PeerRole::Server => "serverAuth",
            PeerRole::Client => "clientAuth",
        }
    }
}

/// What a leaf must satisfy beyond chaining to the bundle.
pub(crate) struct Policy<'a> {
    pub role: PeerRole,
    /// Our trust domain; the peer's must be the same.
    pub trust_domain: &'a TrustDomain,
    /// The exact identity the peer must present (client side only).
    pub expected: Option<&'a SpiffeId>,
    /// Leaf serials to refuse (none for a bootstrapping client, which has no list yet).
    pub revoked: Option<&'a RevokedSerials>,
}

/// Verifies a presented chain and returns the peer's SPIFFE ID.
pub(crate) fn verify_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    policy: &Policy<'_>,
    now: UnixTime,
    provider: &CryptoProvider,
) -> Result<SpiffeId, VerifyError> {
    verify_chain_with_grace(
        end_entity,
        intermediates,
        bundle,
        policy,
        now,
        provider,
        Duration::ZERO,
    )
}

/// As [`verify_chain`], accepting a chain that expired at most `grace` before `now` (the control plane
/// lets a proxy renew a certificate that expired while it was unreachable).
pub(crate) fn verify_chain_with_grace(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    policy: &Policy<'_>,
    now: UnixTime,
    provider: &CryptoProvider,
    grace: Duration,
) -> Result<SpiffeId, VerifyError> {
    // The chain first: nothing in an unauthenticated leaf is worth reading.
    check_path(
        end_entity,
        intermediates,
        bundle,
        policy.role,
        now,
        provider,
        grace,
    )?;
    let leaf = x509::parse(end_entity, || "the leaf certificate".to_owned())
        .map_err(|e| VerifyError::Other(e.to_string()))?;
    check_leaf_usage(&leaf)?;
    let id = x509::spiffe_id(&leaf)?;
    check_identity(&id, policy)?;
    check_revoked(&leaf, &id, policy)?;
    Ok(id)
}

fn check_revoked(
    leaf: &X509Certificate<'_>,
    id: &SpiffeId,
    policy: &Policy<'_>,
) -> Result<(), VerifyError> {
    let Some(revoked) = policy.revoked.filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let serial = x509::serial_hex(leaf);
    if revoked.contains(&serial) {
        tracing::warn!(presented = %id, %serial, "refusing a revoked peer certificate");
        return Err(VerifyError::Revoked {
            presented: id.clone(),
            serial,
        });
    }
    Ok(())
}

fn check_path(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    role: PeerRole,
    now: UnixTime,
    provider: &CryptoProvider,
    grace: Duration,
) -> Result<(), VerifyError> {
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| from_webpki(e, role))?;
    let at = |time: UnixTime| {
        cert.verify_for_usage(
            provider.signature_verification_algorithms.all,
            bundle.anchors(),
            intermediates,
            time,
            role.usage(),
            None,
            None,
        )
        .map(|_| ())
    };
    match at(now) {
        // Within the grace, the chain is checked as at the moment it expired: every other check
        // (signatures, usage, the rest of the chain's validity) still applies.
        Err(webpki::Error::CertExpired { not_after, .. })
            if now.as_secs().saturating_sub(not_after.as_secs()) <= grace.as_secs() =>
        {
            at(not_after)
        }
        other => other,
    }
    .map_err(|e| from_webpki(e, role))
}

/// webpki leaves the leaf's keyUsage and (for some paths) CA flag alone; a TLS leaf needs both right.
fn check_leaf_usage(leaf: &X509Certificate<'_>) -> Result<(), VerifyError> {
    if x509::is_ca(leaf) {
        return Err(VerifyError::IsCa);
    }
    match leaf.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() => Err(VerifyError::BadKeyUsage {
            detail: format!("keyUsage lacks digitalSignature (has {})", ku.value),
        }),
        Ok(_) => Ok(()),
        Err(e) => Err(VerifyError::BadKeyUsage {
            detail: format!("bad keyUsage extension: {e}"),
        }),
    }
}

fn check_identity(id: &SpiffeId, policy: &Policy<'_>) -> Result<(), VerifyError> {
    if id.trust_domain() != policy.trust_domain.as_str() {
        tracing::warn!(
            expected_trust_domain = %policy.trust_domain,
            presented = %id,
            "refusing peer from another trust domain"
        );
        return Err(VerifyError::WrongTrustDomain {
            expected: policy.trust_domain.clone(),
            presented: id.clone(),
        });
    }
    match policy.expected {
        Some(expected) if expected != id => {
            tracing::warn!(%expected, presented = %id, "peer identity mismatch; refusing");
            Err(VerifyError::IdentityMismatch {
                expected: expected.clone(),
                presented: id.clone(),
            })
        }
        _ => Ok(()),
    }
}

fn from_webpki(e: webpki::Error, role: PeerRole) -> VerifyError {
    #[allow(deprecated)] // Older webpki variants may still be produced; map them the same way.
    match e {
        webpki::Error::CertExpired { not_after, .. } => VerifyError::Expired {
            not_after: system_time(not_after),
        },
        webpki::Error::CertNotValidYet { not_before, .. } => VerifyError::NotYetValid {
            not_before: system_time(not_before),
        },
        webpki::Error::UnknownIssuer => VerifyError::UnknownIssuer,
        webpki::Error::CaUsedAsEndEntity => VerifyError::IsCa,
        webpki::Error::InvalidSignatureForPublicKey => VerifyError::BadSignature,
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            VerifyError::BadKeyUsage {
                detail: format!("extended key usage lacks {}", role.eku_name()),
            }
        }
        other => VerifyError::Other(format!("{other:?}")),
    }
}

fn system_time(t: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.as_secs())
}

/// Wraps the reason so rustls carries it: `CertificateError::Other` keeps any error type intact.
pub(crate) fn to_rustls(e: VerifyError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General(
        "TLS 1.2 signatures are refused: the peer hop is TLS 1.3 only".to_owned(),
    )
}

// === client side: verifying the server ===

/// What a verifier trusts: the live bundle of an identity (follows rotation), or a fixed bundle (a proxy
/// bootstrapping, before it has an identity of its own).
pub(crate) enum Trust {
    Live(Arc<Shared>),
    Fixed {
        bundle: Arc<TrustBundle>,
        trust_domain: TrustDomain,
    },
}

impl Trust {
    fn bundle(&self) -> Arc<TrustBundle> {
        match self {
            Trust::Live(shared) => shared.bundle(),
            Trust::Fixed { bundle, .. } => bundle.clone(),
        }
    }

    fn trust_domain(&self) -> &TrustDomain {
        match self {
            Trust::Live(shared) => &shared.trust_domain,
            Trust::Fixed { trust_domain, .. } => trust_domain,
        }
    }

    /// `now` on the mesh's clock, once this identity knows how far off ours is.
    fn mesh_time(&self, now: UnixTime) -> UnixTime {
        match self {
            Trust::Live(shared) => shared.mesh_time(now),
            Trust::Fixed { .. } => now,
        }
    }

    fn revoked(&self) -> Option<Arc<RevokedSerials>> {
        match self {
            Trust::Live(shared) => Some(shared.revoked()),
            Trust::Fixed { .. } => None,
        }
    }
}

/// Checks the server against the bundle and one expected identity.
pub(crate) struct ServerVerifier {
    pub trust: Trust,
    pub expected: SpiffeId,
    pub provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("trust_domain", self.trust.trust_domain())
            .field("expected", &self.expected)
            .finish()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The SPIFFE ID replaces the server name: the peer's address says nothing about who it is.
        let revoked = self.trust.revoked();
        let policy = Policy {
            role: PeerRole::Server,
            trust_domain: self.trust.trust_domain(),
            expected: Some(&self.expected),
            revoked: revoked.as_deref(),
        };
        let bundle = self.trust.bundle();
        verify_chain(
            end_entity,
            intermediates,
            &bundle,
            &policy,
            self.trust.mesh_time(now),
            &self.provider,
        )
        .map_err(to_rustls)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === server side: verifying the client ===

/// Requires a client certificate from the current bundle naming a SPIFFE ID in our trust domain (or, when
/// not `mandatory`, verifies one only if it is presented).
pub(crate) struct ClientVerifier {
    pub shared: Arc<Shared>,
    pub provider: Arc<CryptoProvider>,
    pub mandatory: bool,
    /// How long after expiry a client certificate is still accepted (zero on the peer hop).
    pub expired_grace: Duration,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("ours", &self.shared.id)
            .finish()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Every peer has exactly one credential; hints would only leak the bundle's subjects.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let revoked = self.shared.revoked();
        let policy = Policy {
            role: PeerRole::Client,
            trust_domain: &self.shared.trust_domain,
            expected: None,
            revoked: Some(&revoked),
        };
        let bundle = self.shared.bundle();
        verify_chain_with_grace(
            end_entity,
            intermediates,
            &bundle,
            &policy,
            self.shared.mesh_time(now),
            &self.provider,
            self.expired_grace,
        )
        .map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

//! Entry points for the fuzz targets (`fuzz/`) and their corpus tests: the crate-private certificate
//! reading and chain verification, on bytes a peer or a file supplies.

use crate::bundle::TrustBundle;
use crate::error::{CertError, VerifyError};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::verify::{verify_chain, PeerRole, Policy};
use crate::x509;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::time::SystemTime;

/// What the crate reads from one certificate.
#[derive(Debug)]
pub struct CertFacts {
    pub spiffe_id: Result<SpiffeId, VerifyError>,
    pub ca_trust_domain: Result<TrustDomain, CertError>,
    pub is_ca: bool,
    pub path_len: Option<u32>,
    pub self_signed: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial_hex: String,
}

/// Parses one DER certificate and reads every fact the crate asks of one.
pub fn certificate(der: &[u8]) -> Result<CertFacts, CertError> {
    let der = CertificateDer::from(der);
    let cert = x509::parse(&der, || "the certificate".to_owned())?;
    Ok(CertFacts {
        spiffe_id: x509::spiffe_id(&cert),
        ca_trust_domain: x509::ca_trust_domain(&cert),
        is_ca: x509::is_ca(&cert),
        path_len: x509::path_len(&cert),
        self_signed: x509::is_self_signed(&cert),
        not_before: x509::not_before(&cert),
        not_after: x509::not_after(&cert),
        serial_hex: x509::serial_hex(&cert),
    })
}

/// Verifies a chain a peer presented, as the verifiers of the peer hop do (`server`: the peer is the
/// server), at `now`.
pub fn verify_peer(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    trust_domain: &TrustDomain,
    server: bool,
    now: SystemTime,
) -> Result<SpiffeId, VerifyError> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(VerifyError::Other("no certificate".to_owned()));
    };
    let policy = Policy {
        role: if server {
            PeerRole::Server
        } else {
            PeerRole::Client
        },
        trust_domain,
        expected: None,
        revoked: None,
    };
    verify_chain(
        leaf,
        intermediates,
        bundle,
        &policy,
        UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        ),
        &x509::provider(),
    )
}

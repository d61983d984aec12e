//! Reading certificates: PEM in and out, and the few X.509 facts the rest of the crate asks about.

use crate::error::{CertError, VerifyError};
use crate::spiffe::{SpiffeId, TrustDomain};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));

/// The one crypto provider of the crate; never the process default, which another crate may have set.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    PROVIDER.clone()
}

/// Every `CERTIFICATE` block of `pem`, in order; at least one.
pub(crate) fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(CertError::NoPem {
            what,
            label: "CERTIFICATE",
        });
    }
    Ok(certs)
}

pub(crate) fn cert_to_pem(der: &CertificateDer<'_>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.as_ref()), config)
}

pub(crate) fn certs_to_pem<'a>(ders: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    ders.into_iter().map(cert_to_pem).collect()
}

/// Parses one certificate; `what` names it in the error ("certificate 2 of the trust bundle").
pub(crate) fn parse<'a>(
    der: &'a CertificateDer<'_>,
    what: impl FnOnce() -> String,
) -> Result<X509Certificate<'a>, CertError> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(CertError::Parse {
            what: what(),
            detail: format!("{} trailing bytes after the certificate", rest.len()),
        }),
        Err(e) => Err(CertError::Parse {
            what: what(),
            detail: e.to_string(),
        }),
    }
}

/// The URI SANs of a certificate, in order.
pub(crate) fn uri_sans<'a>(cert: &X509Certificate<'a>) -> Result<Vec<&'a str>, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName extension: {e}"))?;
    let Some(san) = san else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect())
}

/// The SPIFFE ID of a leaf: exactly one URI SAN, and it must parse.
pub(crate) fn spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, VerifyError> {
    let uris = uri_sans(cert).map_err(VerifyError::Other)?;
    match uris.as_slice() {
        [] => Err(VerifyError::NoUriSan),
        [uri] => SpiffeId::parse(uri).map_err(|reason| VerifyError::NotSpiffe {
            uri: (*uri).to_owned(),
            reason,
        }),
        several => Err(VerifyError::SeveralUriSans {
            count: several.len(),
        }),
    }
}

/// The trust domain a Weft CA certificate names with its URI SAN `spiffe://<td>`.
pub(crate) fn ca_trust_domain(cert: &X509Certificate<'_>) -> Result<TrustDomain, CertError> {
    let id = spiffe_id(cert).map_err(|e| CertError::NoTrustDomain {
        detail: e.to_string(),
    })?;
    if !id.path().is_empty() {
        return Err(CertError::NoTrustDomain {
            detail: format!("its URI SAN {id} has a path; a CA names only spiffe://<trust-domain>"),
        });
    }
    Ok(id.to_trust_domain())
}

pub(crate) fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// The pathLenConstraint of a CA certificate, if it has one.
pub(crate) fn path_len(cert: &X509Certificate<'_>) -> Option<u32> {
    match cert.basic_constraints() {
        Ok(Some(bc)) => bc.value.path_len_constraint,
        _ => None,
    }
}

/// A self-signed certificate: issuer equals subject and its own key verifies its signature.
pub(crate) fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.issuer() == cert.subject() && cert.verify_signature(None).is_ok()
}

pub(crate) fn not_before(cert: &X509Certificate<'_>) -> SystemTime {
    system_time(cert.validity().not_before)
}

pub(crate) fn not_after(cert: &X509Certificate<'_>) -> SystemTime {
    system_time(cert.validity().not_after)
}

fn system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    match u64::try_from(secs) {
        Ok(after) => UNIX_EPOCH + Duration::from_secs(after),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// Seconds since the epoch, negative before it: the resolution of X.509 validity times.
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// The serial number in lowercase hex, without separators.
pub(crate) fn serial_hex(cert: &X509Certificate<'_>) -> String {
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

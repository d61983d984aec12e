//! A workload's key pair and certificate signing request. The key is generated here and never leaves the
//! process that made it; only the CSR goes to the control plane.

use crate::ca::new_key;
use crate::error::CertError;
use crate::spiffe::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use sha2::{Digest, Sha256};
use std::fmt;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

/// A fresh ECDSA P-256 key and a CSR for one SPIFFE ID.
pub struct KeyAndCsr {
    id: SpiffeId,
    csr_pem: String,
    key_pem: String,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("KeyAndCsr")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl KeyAndCsr {
    /// Generates a key and a CSR whose only requested SAN is the URI `id`.
    pub fn generate(id: &SpiffeId) -> Result<KeyAndCsr, CertError> {
        Self::for_key(id, new_key("a workload key")?)
    }

    /// A CSR for `id` with a key kept from before (PEM PKCS#8 ECDSA P-256), so that a request repeated
    /// after a lost answer carries the same public key.
    pub fn from_key_pem(id: &SpiffeId, key_pem: &str) -> Result<KeyAndCsr, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Key {
            what: "workload",
            detail: e.to_string(),
        })?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CertError::Key {
                what: "workload",
                detail: "not an ECDSA P-256 key".to_owned(),
            });
        }
        Self::for_key(id, key)
    }

    fn for_key(id: &SpiffeId, key: KeyPair) -> Result<KeyAndCsr, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = id
            .as_str()
            .try_into()
            .map_err(|source| CertError::Generate {
                what: "a CSR",
                source,
            })?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|source| CertError::Generate {
                what: "a CSR",
                source,
            })?;
        Ok(KeyAndCsr {
            id: id.clone(),
            csr_pem: csr,
            key_pem: key.serialize_pem(),
        })
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The CSR, PEM `CERTIFICATE REQUEST`.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The private key, PEM PKCS#8 (`PRIVATE KEY`).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// The SHA-256 (lowercase hex) of the SubjectPublicKeyInfo of a CSR whose signature verifies: what
/// names the key that asked, whatever else the CSR says.
pub fn csr_key_sha256(csr_pem: &str) -> Result<String, CertError> {
    let der = crate::ca::csr_der(csr_pem)?;
    let (_, csr) =
        X509CertificationRequest::from_der(der.as_ref()).map_err(|e| CertError::Parse {
            what: "the CSR".to_owned(),
            detail: e.to_string(),
        })?;
    csr.verify_signature()
        .map_err(|_| CertError::CsrSignature)?;
    let spki = csr.certification_request_info.subject_pki.raw;
    Ok(Sha256::digest(spki)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    #[test]
    fn csr_requests_exactly_the_id_and_is_self_signed() {
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").expect("id");
        let req = KeyAndCsr::generate(&id).expect("generate");
        assert!(req.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let der = ::pem::parse(req.csr_pem()).expect("pem");
        assert_eq!(der.tag(), "CERTIFICATE REQUEST");
        let (_, csr) = X509CertificationRequest::from_der(der.contents()).expect("parse");
        csr.verify_signature().expect("self-signature");
        let names: Vec<_> = csr
            .requested_extensions()
            .expect("extension request")
            .filter_map(|ext| match ext {
                ParsedExtension::SubjectAlternativeName(san) => Some(san.general_names.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(names, vec![GeneralName::URI("spiffe://td/ns/a/sa/b")]);
        assert!(!format!("{req:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_kept_key_gives_a_csr_with_the_same_public_key() {
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").expect("id");
        let first = KeyAndCsr::generate(&id).expect("generate");
        let again = KeyAndCsr::from_key_pem(&id, first.key_pem()).expect("from key");
        let other = KeyAndCsr::generate(&id).expect("generate");
        let fp = |k: &KeyAndCsr| csr_key_sha256(k.csr_pem()).expect("fingerprint");
        assert_eq!(fp(&first), fp(&again));
        assert_ne!(fp(&first), fp(&other));
        assert_eq!(fp(&first).len(), 64);
        assert!(KeyAndCsr::from_key_pem(&id, "not a key").is_err());
        assert!(matches!(
            csr_key_sha256("nonsense"),
            Err(CertError::NoPem { .. })
        ));
    }
}

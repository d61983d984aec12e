//! Test helpers: leaves built exactly as a test says, including the deliberately bad ones that
//! [`CertificateAuthority::sign_csr`] would never issue (no URI SAN, several, wrong usages, CA:true, ...).
//!
//! Compiled for this crate's own tests and, for other crates, behind the `testing` feature.

use crate::ca::{new_key, CertificateAuthority, LeafTemplate, Validity};
use crate::spiffe::SpiffeId;
use std::time::Duration;

/// How to build a leaf. [`LeafSpec::for_id`] gives a normal workload leaf; change fields to break it.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// URI SANs, in order.
    pub uris: Vec<String>,
    /// DNS SANs, after the URIs.
    pub dns: Vec<String>,
    /// EKU serverAuth.
    pub server_auth: bool,
    /// EKU clientAuth. With neither EKU the extension is left out.
    pub client_auth: bool,
    /// keyUsage digitalSignature; when false the extension still exists but says keyEncipherment.
    pub digital_signature: bool,
    /// basicConstraints CA:true (pathlen 0) instead of CA:false.
    pub is_ca: bool,
    pub validity: Validity,
}

impl LeafSpec {
    /// A normal leaf for `id`, valid for an hour from now.
    pub fn for_id(id: &SpiffeId) -> LeafSpec {
        LeafSpec {
            uris: vec![id.as_str().to_owned()],
            dns: Vec::new(),
            server_auth: true,
            client_auth: true,
            digital_signature: true,
            is_ca: false,
            validity: Validity::starting_now(Duration::from_secs(3600)),
        }
    }
}

/// Builds the leaf `spec` describes with a fresh P-256 key, signed by `ca` without any policy check.
/// Returns (leaf followed by `ca`'s chain, PKCS#8 key), both PEM.
///
/// # Panics
/// If signing fails (a URI or DNS name that is not IA5, or an empty validity window): test input errors.
pub fn issue(ca: &CertificateAuthority, spec: &LeafSpec) -> (String, String) {
    let key = new_key("a test leaf key").unwrap_or_else(|e| panic!("{e}"));
    let template = LeafTemplate {
        uris: spec.uris.clone(),
        dns: &spec.dns,
        server_auth: spec.server_auth,
        client_auth: spec.client_auth,
        digital_signature: spec.digital_signature,
        is_ca: spec.is_ca,
        validity: spec.validity,
    };
    let leaf = ca
        .issue_leaf(&key, &template)
        .unwrap_or_else(|e| panic!("cannot issue test leaf {spec:?}: {e}"));
    (leaf + &ca.chain_pem(), key.serialize_pem())
}

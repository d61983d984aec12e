//! The mesh certificate authority: a root (or an intermediate under one) that signs workload CSRs.
//!
//! This is the only place that holds a signing key. Leaves carry exactly one URI SAN, the workload's SPIFFE
//! ID, and nothing else a peer could mistake for an identity.

use crate::error::CertError;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use std::fmt;
use std::time::{Duration, SystemTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// How far back `not_before` is set, so a peer whose clock runs a little behind still accepts a new leaf.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// The validity window of a certificate to be issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From now (less [`CLOCK_SKEW_ALLOWANCE`]) until now + `ttl`.
    pub fn starting_now(ttl: Duration) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + ttl,
        }
    }

    fn check_not_empty(&self) -> Result<(), CertError> {
        if x509::unix_secs(self.not_before) >= x509::unix_secs(self.not_after) {
            return Err(CertError::EmptyValidity {
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        Ok(())
    }

    /// Whether this window lies within `outer`, at the one-second resolution of X.509 times.
    fn check_within(&self, outer: &Validity) -> Result<(), CertError> {
        let inside = x509::unix_secs(self.not_before) >= x509::unix_secs(outer.not_before)
            && x509::unix_secs(self.not_after) <= x509::unix_secs(outer.not_after);
        if !inside {
            return Err(CertError::ValidityOutsideCa {
                not_before: self.not_before,
                not_after: self.not_after,
                ca_not_before: outer.not_before,
                ca_not_after: outer.not_after,
            });
        }
        Ok(())
    }
}

/// A CA that can sign workload leaves (and intermediates). Holds its private key.
pub struct CertificateAuthority {
    td: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    /// Own certificate and the intermediates above it; empty for a root, which is never sent.
    chain: Vec<CertificateDer<'static>>,
    /// Unknown only for an intermediate loaded from a chain that stops below the root.
    root: Option<CertificateDer<'static>>,
    validity: Validity,
    path_len: Option<u32>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.td)
            .field("is_root", &self.chain.is_empty())
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A self-signed root: ECDSA P-256, CA:true, keyCertSign + cRLSign, URI SAN `spiffe://<td>`.
    pub fn new_root(td: &TrustDomain, validity: Validity) -> Result<Self, CertError> {
        validity.check_not_empty()?;
        let key = new_key("the root CA key")?;
        let params = ca_params(td, &validity, "root", BasicConstraints::Unconstrained)?;
        let cert = params.self_signed(&key).map_err(|source| CertError::Sign {
            what: format!("the root CA certificate of {td}"),
            source,
        })?;
        let der = cert.der().clone();
        Self::assemble(Issuer::new(params, key), der.clone(), Vec::new(), Some(der))
    }

    /// An intermediate CA (pathlen 0) signed by this CA, in the same trust domain.
    pub fn new_intermediate(&self, validity: Validity) -> Result<CertificateAuthority, CertError> {
        validity.check_not_empty()?;
        validity.check_within(&self.validity)?;
        if self.path_len == Some(0) {
            return Err(CertError::PathLenExhausted {
                td: self.td.clone(),
            });
        }
        let key = new_key("the intermediate CA key")?;
        let params = ca_params(
            &self.td,
            &validity,
            "intermediate",
            BasicConstraints::Constrained(0),
        )?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CertError::Sign {
                what: format!("an intermediate CA certificate of {}", self.td),
                source,
            })?;
        let der = cert.der().clone();
        let chain = std::iter::once(der.clone())
            .chain(self.chain.iter().cloned())
            .collect();
        Self::assemble(Issuer::new(params, key), der, chain, self.root.clone())
    }

    /// Loads a CA from its certificate chain and PKCS#8 key.
    ///
    /// The chain starts with the CA's own certificate. A root is that one certificate alone; an
    /// intermediate is followed by the CAs above it, optionally up to and including the self-signed root
    /// ([`full_chain_pem`](Self::full_chain_pem) writes it; [`chain_pem`](Self::chain_pem) does not). Each
    /// certificate must be signed by the next.
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let certs = x509::certs_from_pem(cert_chain_pem, "CA certificate chain")?;
        check_chain_order(&certs)?;
        let own = &certs[0];
        let parsed = x509::parse(own, || "the CA certificate".to_owned())?;
        if !x509::is_ca(&parsed) {
            return Err(CertError::NotCa {
                what: "the first certificate of the CA chain".to_owned(),
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Key {
            what: "CA",
            detail: e.to_string(),
        })?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(CertError::KeyMismatch {
                what: "the CA certificate".to_owned(),
            });
        }
        let (chain, root) = split_root(&certs, x509::is_self_signed(&parsed))?;
        let issuer = Issuer::from_ca_cert_der(own, key).map_err(|e| CertError::Parse {
            what: "the CA certificate".to_owned(),
            detail: e.to_string(),
        })?;
        Self::assemble(issuer, own.clone(), chain, root)
    }

    fn assemble(
        issuer: Issuer<'static, KeyPair>,
        cert: CertificateDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        root: Option<CertificateDer<'static>>,
    ) -> Result<Self, CertError> {
        let parsed = x509::parse(&cert, || "the CA certificate".to_owned())?;
        let td = x509::ca_trust_domain(&parsed)?;
        let validity = Validity {
            not_before: x509::not_before(&parsed),
            not_after: x509::not_after(&parsed),
        };
        let path_len = x509::path_len(&parsed);
        Ok(CertificateAuthority {
            td,
            issuer,
            cert,
            chain,
            root,
            validity,
            path_len,
        })
    }

    /// The CA's own certificate.
    pub fn cert_pem(&self) -> String {
        x509::cert_to_pem(&self.cert)
    }

    /// The CA's private key, PKCS#8.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA's own certificate followed by the intermediates above it, root excluded: what a leaf's chain
    /// carries after the leaf. Empty for a root CA.
    pub fn chain_pem(&self) -> String {
        x509::certs_to_pem(&self.chain)
    }

    /// The root at the top of this CA's chain (the CA itself for a root). Empty only for an intermediate
    /// loaded by [`from_pem`](Self::from_pem) from a chain without its root: keep the bundle separately then.
    pub fn root_pem(&self) -> String {
        self.root
            .as_ref()
            .map(x509::cert_to_pem)
            .unwrap_or_default()
    }

    /// Own certificate, intermediates and (if known) the root: everything [`from_pem`](Self::from_pem)
    /// can read back.
    pub fn full_chain_pem(&self) -> String {
        if self.chain.is_empty() {
            return self.root_pem();
        }
        self.chain_pem() + &self.root_pem()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The CA's own validity; every certificate it issues must lie within it.
    pub fn validity(&self) -> Validity {
        self.validity
    }

    /// Signs a workload CSR for `id`.
    ///
    /// The CSR must carry a valid self-signature and an ECDSA P-256 key, and may request no identity other
    /// than `id` (a CSR requesting none is fine). The leaf gets the CSR's key, `id` as its only SAN, CA:false,
    /// digitalSignature, serverAuth + clientAuth and a random serial. Returns the leaf followed by this CA's
    /// chain, root excluded, as PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        validity: Validity,
    ) -> Result<String, CertError> {
        if id.trust_domain() != self.td.as_str() {
            return Err(CertError::WrongTrustDomain {
                ca: self.td.clone(),
                id: id.clone(),
            });
        }
        validity.check_not_empty()?;
        validity.check_within(&self.validity)?;
        let public_key = read_csr(csr_pem, id)?;
        let spec = LeafTemplate::workload(id, validity);
        let leaf = self.issue_leaf(&public_key, &spec)?;
        Ok(leaf + &self.chain_pem())
    }

    /// Signs a leaf built exactly as `spec` says; returns the leaf's PEM alone. No policy checks: `sign_csr`
    /// does those, and the test helpers rely on their absence.
    pub(crate) fn issue_leaf(
        &self,
        public_key: &impl PublicKeyData,
        spec: &LeafTemplate<'_>,
    ) -> Result<String, CertError> {
        let params = leaf_params(spec)?;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|source| CertError::Sign {
                what: format!("a leaf for {}", spec.uris.join(", ")),
                source,
            })?;
        Ok(cert.pem())
    }
}

// === leaf construction ===

/// Everything that varies between leaves. Workload leaves always use [`LeafTemplate::workload`].
pub(crate) struct LeafTemplate<'a> {
    pub uris: Vec<String>,
    pub dns: &'a [String],
    pub server_auth: bool,
    pub client_auth: bool,
    pub digital_signature: bool,
    pub is_ca: bool,
    pub validity: Validity,
}

impl LeafTemplate<'static> {
    pub(crate) fn workload(id: &SpiffeId, validity: Validity) -> Self {
        LeafTemplate {
            uris: vec![id.as_str().to_owned()],
            dns: &[],
            server_auth: true,
            client_auth: true,
            digital_signature: true,
            is_ca: false,
            validity,
        }
    }
}

fn leaf_params(spec: &LeafTemplate<'_>) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    // SPIFFE leaves identify by URI SAN only; an empty subject keeps nothing else to match on.
    params.distinguished_name = DistinguishedName::new();
    params.not_before = spec.validity.not_before.into();
    params.not_after = spec.validity.not_after.into();
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    params.is_ca = if spec.is_ca {
        IsCa::Ca(BasicConstraints::Constrained(0))
    } else {
        IsCa::ExplicitNoCa
    };
    // Without digitalSignature we still write the extension (keyEncipherment), so it is present but wrong.
    params.key_usages = if spec.digital_signature {
        vec![KeyUsagePurpose::DigitalSignature]
    } else {
        vec![KeyUsagePurpose::KeyEncipherment]
    };
    if spec.server_auth {
        params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.client_auth {
        params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ClientAuth);
    }
    for uri in &spec.uris {
        params.subject_alt_names.push(SanType::URI(ia5(uri)?));
    }
    for dns in spec.dns {
        params.subject_alt_names.push(SanType::DnsName(ia5(dns)?));
    }
    Ok(params)
}

fn ca_params(
    td: &TrustDomain,
    validity: &Validity,
    role: &str,
    constraints: BasicConstraints,
) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    let serial = random_serial()?;
    // Part of the serial in the name keeps two CAs of one trust domain apart: path building matches
    // issuers by name, and a rotated root must not look like the one it replaces.
    let tag: String = serial
        .as_ref()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Weft");
    dn.push(DnType::CommonName, format!("Weft {role} CA for {td} {tag}"));
    params.distinguished_name = dn;
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(serial);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = vec![SanType::URI(ia5(td.id().as_str())?)];
    Ok(params)
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, CertError> {
    rcgen::string::Ia5String::try_from(s).map_err(|source| CertError::Sign {
        what: format!("a certificate naming \"{s}\""),
        source,
    })
}

pub(crate) fn new_key(what: &'static str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CertError::Generate { what, source })
}

/// 128 random bits, top bit clear so the DER INTEGER stays positive (RFC 5280 allows up to 20 octets).
fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    x509::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CertError::Random)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

// === CSR reading ===

/// Checks a CSR and returns its public key.
fn read_csr(csr_pem: &str, id: &SpiffeId) -> Result<rcgen::SubjectPublicKeyInfo, CertError> {
    let der = csr_der(csr_pem)?;
    let csr = match X509CertificationRequest::from_der(der.as_ref()) {
        Ok((_, csr)) => csr,
        Err(e) => {
            return Err(CertError::Parse {
                what: "the CSR".to_owned(),
                detail: e.to_string(),
            })
        }
    };
    csr.verify_signature()
        .map_err(|_| CertError::CsrSignature)?;
    check_requested_names(&csr, id)?;
    let spki =
        rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
            .map_err(|e| CertError::CsrKey {
                detail: e.to_string(),
            })?;
    if spki.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(CertError::CsrKey {
            detail: format!("{:?}", spki.algorithm()),
        });
    }
    Ok(spki)
}

pub(crate) fn csr_der(csr_pem: &str) -> Result<CertificateSigningRequestDer<'static>, CertError> {
    use rustls_pki_types::pem::{Error, PemObject};
    CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| match e {
        Error::NoItemsFound => CertError::NoPem {
            what: "CSR",
            label: "CERTIFICATE REQUEST",
        },
        source => CertError::Pem {
            what: "CSR",
            source,
        },
    })
}

/// A CSR may ask for `id` or for nothing; any other requested name is refused, not silently dropped, so a
/// confused or hostile client learns why.
fn check_requested_names(
    csr: &X509CertificationRequest<'_>,
    id: &SpiffeId,
) -> Result<(), CertError> {
    let Some(extensions) = csr.requested_extensions() else {
        return Ok(());
    };
    for ext in extensions {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::URI(uri) if *uri == id.as_str() => {}
                other => {
                    return Err(CertError::CsrOtherIdentity {
                        id: id.clone(),
                        requested: describe_name(other),
                    })
                }
            }
        }
    }
    Ok(())
}

fn describe_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(uri) => format!("URI {uri}"),
        GeneralName::DNSName(dns) => format!("DNS name {dns}"),
        GeneralName::RFC822Name(mail) => format!("email {mail}"),
        GeneralName::IPAddress(ip) => format!("IP address {ip:02x?}"),
        other => format!("{other:?}"),
    }
}

// === chain loading ===

/// Each certificate of a CA chain must be signed by the next one.
fn check_chain_order(certs: &[CertificateDer<'static>]) -> Result<(), CertError> {
    for (index, pair) in certs.windows(2).enumerate() {
        let what = |i: usize| move || format!("certificate {} of the CA chain", i + 1);
        let child = x509::parse(&pair[0], what(index))?;
        let parent = x509::parse(&pair[1], what(index + 1))?;
        if child.verify_signature(Some(parent.public_key())).is_err() {
            return Err(CertError::ChainOrder {
                index: index + 1,
                next: index + 2,
            });
        }
    }
    Ok(())
}

/// Splits a loaded chain into (own + intermediates, root if present).
fn split_root(
    certs: &[CertificateDer<'static>],
    own_is_self_signed: bool,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        Option<CertificateDer<'static>>,
    ),
    CertError,
> {
    match certs {
        [root] if own_is_self_signed => Ok((Vec::new(), Some(root.clone()))),
        [_, rest @ ..] if own_is_self_signed => {
            Err(CertError::RootWithExtras { extra: rest.len() })
        }
        [below @ .., last] if !below.is_empty() => {
            let parsed = x509::parse(last, || "the last certificate of the CA chain".to_owned())?;
            if x509::is_self_signed(&parsed) {
                Ok((below.to_vec(), Some(last.clone())))
            } else {
                Ok((certs.to_vec(), None))
            }
        }
        _ => Ok((certs.to_vec(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::KeyAndCsr;
    use crate::Credential;
    use x509_parser::certificate::X509Certificate;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn td() -> TrustDomain {
        TrustDomain::new("weft.test").expect("valid td")
    }

    fn root() -> CertificateAuthority {
        CertificateAuthority::new_root(&td(), Validity::starting_now(30 * DAY)).expect("root")
    }

    fn workload(name: &str) -> SpiffeId {
        SpiffeId::for_workload(&td(), "default", name).expect("valid id")
    }

    fn parse_pem_chain(pem: &str) -> Vec<CertificateDer<'static>> {
        x509::certs_from_pem(pem, "test chain").expect("pem")
    }

    #[test]
    fn root_is_a_self_signed_ca_naming_its_trust_domain() {
        let ca = root();
        assert_eq!(ca.trust_domain(), &td());
        assert_eq!(ca.chain_pem(), "");
        assert_eq!(ca.root_pem(), ca.cert_pem());
        let der = &parse_pem_chain(&ca.cert_pem())[0];
        let cert = x509::parse(der, String::new).expect("parse");
        assert!(x509::is_ca(&cert));
        assert!(x509::is_self_signed(&cert));
        assert_eq!(
            x509::uri_sans(&cert).expect("sans"),
            vec!["spiffe://weft.test"]
        );
        let ku = cert.key_usage().expect("ku").expect("present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
    }

    #[test]
    fn intermediate_chains_to_root_with_pathlen_zero() {
        let root = root();
        let int = root
            .new_intermediate(Validity::starting_now(10 * DAY))
            .expect("intermediate");
        assert_eq!(int.root_pem(), root.cert_pem());
        assert_eq!(int.chain_pem(), int.cert_pem());
        let der = &parse_pem_chain(&int.cert_pem())[0];
        let cert = x509::parse(der, String::new).expect("parse");
        assert!(x509::is_ca(&cert));
        assert_eq!(x509::path_len(&cert), Some(0));
        let root_der = &parse_pem_chain(&root.cert_pem())[0];
        let root_cert = x509::parse(root_der, String::new).expect("parse");
        assert!(cert.verify_signature(Some(root_cert.public_key())).is_ok());

        let err = int
            .new_intermediate(Validity::starting_now(DAY))
            .expect_err("pathlen 0");
        assert!(matches!(err, CertError::PathLenExhausted { .. }), "{err}");
    }

    #[test]
    fn intermediate_outside_root_validity_is_refused() {
        let root = root();
        let err = root
            .new_intermediate(Validity::starting_now(60 * DAY))
            .expect_err("longer than root");
        assert!(matches!(err, CertError::ValidityOutsideCa { .. }), "{err}");
        assert!(
            err.to_string().contains("outside the CA's own validity"),
            "{err}"
        );
    }

    #[test]
    fn csr_round_trip_gives_a_workload_leaf() {
        let ca = root();
        let id = workload("web");
        let req = KeyAndCsr::generate(&id).expect("csr");
        let chain = ca
            .sign_csr(req.csr_pem(), &id, Validity::starting_now(DAY))
            .expect("sign");
        let certs = parse_pem_chain(&chain);
        assert_eq!(certs.len(), 1, "a root CA adds no chain");
        let leaf = x509::parse(&certs[0], String::new).expect("parse");
        assert_leaf_is_workload(&leaf, &id);

        let cred = Credential::from_pem(&chain, req.key_pem()).expect("credential");
        assert_eq!(cred.id(), &id);
        assert_eq!(cred.serial_hex().len(), 32);
    }

    fn assert_leaf_is_workload(leaf: &X509Certificate<'_>, id: &SpiffeId) {
        assert_eq!(x509::uri_sans(leaf).expect("sans"), vec![id.as_str()]);
        let san = leaf
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert_eq!(san.value.general_names.len(), 1, "only the URI SAN");
        assert!(!x509::is_ca(leaf));
        let bc = leaf.basic_constraints().expect("bc").expect("present");
        assert!(!bc.value.ca);
        let ku = leaf.key_usage().expect("ku").expect("present");
        assert!(ku.critical && ku.value.digital_signature());
        let eku = leaf
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.server_auth && eku.client_auth);
    }

    #[test]
    fn serials_are_random() {
        let ca = root();
        let id = workload("web");
        let req = KeyAndCsr::generate(&id).expect("csr");
        let serial = |_| {
            let chain = ca
                .sign_csr(req.csr_pem(), &id, Validity::starting_now(DAY))
                .expect("sign");
            Credential::from_pem(&chain, req.key_pem())
                .expect("credential")
                .serial_hex()
        };
        let serials: Vec<String> = (0..2).map(serial).collect();
        assert_ne!(serials[0], serials[1], "same key, different serials");
    }

    #[test]
    fn intermediate_signed_leaf_carries_the_intermediate() {
        let root = root();
        let int = root
            .new_intermediate(Validity::starting_now(10 * DAY))
            .expect("intermediate");
        let id = workload("api");
        let req = KeyAndCsr::generate(&id).expect("csr");
        let chain = int
            .sign_csr(req.csr_pem(), &id, Validity::starting_now(DAY))
            .expect("sign");
        let certs = parse_pem_chain(&chain);
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1], parse_pem_chain(&int.cert_pem())[0]);
    }

    #[test]
    fn csr_asking_for_another_identity_is_refused() {
        let ca = root();
        let asked = workload("admin");
        let req = KeyAndCsr::generate(&asked).expect("csr");
        let err = ca
            .sign_csr(req.csr_pem(), &workload("web"), Validity::starting_now(DAY))
            .expect_err("other identity");
        assert!(matches!(err, CertError::CsrOtherIdentity { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("spiffe://weft.test/ns/default/sa/admin"),
            "{message}"
        );
    }

    #[test]
    fn csr_asking_for_a_dns_name_is_refused() {
        let key = new_key("test key").expect("key");
        let params = CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let err = root()
            .sign_csr(&csr, &workload("web"), Validity::starting_now(DAY))
            .expect_err("dns name");
        assert!(err.to_string().contains("DNS name evil.example"), "{err}");
    }

    #[test]
    fn csr_without_san_gets_the_id() {
        let key = new_key("test key").expect("key");
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let id = workload("web");
        let chain = root()
            .sign_csr(&csr, &id, Validity::starting_now(DAY))
            .expect("sign");
        let cred = Credential::from_pem(&chain, &key.serialize_pem()).expect("credential");
        assert_eq!(cred.id(), &id);
    }

    #[test]
    fn tampered_csr_is_refused() {
        let req = KeyAndCsr::generate(&workload("web")).expect("csr");
        let der = csr_der(req.csr_pem()).expect("der");
        let mut bytes = der.as_ref().to_vec();
        // The last byte belongs to the signature's s value; changing it keeps the DER well formed.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bytes));
        let err = root()
            .sign_csr(&pem, &workload("web"), Validity::starting_now(DAY))
            .expect_err("tampered");
        assert!(matches!(err, CertError::CsrSignature), "{err}");
    }

    #[test]
    fn sign_refuses_bad_input_with_reasons() {
        let ca = root();
        let id = workload("web");
        let req = KeyAndCsr::generate(&id).expect("csr");
        let other_td = SpiffeId::parse("spiffe://other.test/ns/default/sa/web").expect("id");
        let cases: Vec<(&str, SpiffeId, Validity, &str)> = vec![
            (
                "not pem",
                id.clone(),
                Validity::starting_now(DAY),
                "no CERTIFICATE REQUEST PEM block",
            ),
            (
                req.csr_pem(),
                other_td,
                Validity::starting_now(DAY),
                "another trust domain",
            ),
            (
                req.csr_pem(),
                id.clone(),
                Validity::starting_now(365 * DAY),
                "outside the CA's own validity",
            ),
            (
                req.csr_pem(),
                id.clone(),
                Validity {
                    not_before: SystemTime::now(),
                    not_after: SystemTime::now() - DAY,
                },
                "is empty",
            ),
        ];
        for (csr, id, validity, reason) in cases {
            let err = ca.sign_csr(csr, &id, validity).expect_err(reason);
            assert!(err.to_string().contains(reason), "{err} lacks {reason:?}");
        }
    }

    #[test]
    fn from_pem_round_trips_root_and_intermediate() {
        let root = root();
        let loaded = CertificateAuthority::from_pem(&root.full_chain_pem(), &root.key_pem())
            .expect("load root");
        assert_eq!(loaded.cert_pem(), root.cert_pem());
        assert_eq!(loaded.root_pem(), root.cert_pem());
        assert_eq!(loaded.chain_pem(), "");
        assert_eq!(loaded.trust_domain(), root.trust_domain());

        let int = root
            .new_intermediate(Validity::starting_now(10 * DAY))
            .expect("intermediate");
        let loaded = CertificateAuthority::from_pem(&int.full_chain_pem(), &int.key_pem())
            .expect("load intermediate");
        assert_eq!(loaded.chain_pem(), int.chain_pem());
        assert_eq!(loaded.root_pem(), root.cert_pem());
        assert_eq!(loaded.validity(), int.validity());

        // Without its root the intermediate still signs; only the root is unknown.
        let rootless = CertificateAuthority::from_pem(&int.chain_pem(), &int.key_pem())
            .expect("load intermediate without root");
        assert_eq!(rootless.chain_pem(), int.chain_pem());
        assert_eq!(rootless.root_pem(), "");
        assert_eq!(rootless.full_chain_pem(), int.chain_pem());

        // A loaded CA signs leaves that chain like the original's.
        let id = workload("web");
        let req = KeyAndCsr::generate(&id).expect("csr");
        let chain = loaded
            .sign_csr(req.csr_pem(), &id, Validity::starting_now(DAY))
            .expect("sign");
        assert_eq!(parse_pem_chain(&chain).len(), 2);
    }

    #[test]
    fn from_pem_refuses_bad_input() {
        let other = root();
        let root = root();
        let int = root
            .new_intermediate(Validity::starting_now(10 * DAY))
            .expect("intermediate");
        let cases: Vec<(String, String, &str)> = vec![
            (root.cert_pem(), other.key_pem(), "does not match"),
            (
                int.chain_pem() + &other.cert_pem(),
                int.key_pem(),
                "not signed by certificate 2",
            ),
            (
                root.cert_pem() + &other.cert_pem(),
                root.key_pem(),
                "not signed by certificate 2",
            ),
            (
                root.cert_pem(),
                "garbage".to_owned(),
                "private key of the CA",
            ),
            (String::new(), root.key_pem(), "no CERTIFICATE PEM block"),
        ];
        for (chain, key, reason) in cases {
            let err = CertificateAuthority::from_pem(&chain, &key).expect_err(reason);
            assert!(err.to_string().contains(reason), "{err} lacks {reason:?}");
        }
    }

    #[test]
    fn from_pem_refuses_a_leaf() {
        let ca = root();
        let id = workload("web");
        let req = KeyAndCsr::generate(&id).expect("csr");
        let chain = ca
            .sign_csr(req.csr_pem(), &id, Validity::starting_now(DAY))
            .expect("sign");
        let err = CertificateAuthority::from_pem(&(chain + &ca.cert_pem()), req.key_pem())
            .expect_err("leaf is no CA");
        assert!(matches!(err, CertError::NotCa { .. }), "{err}");
    }
}

//! Errors of the identity crate. Each names the ID, file or certificate it is about and what was wrong.

use crate::spiffe::{SpiffeId, TrustDomain};
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

/// Why a string is not a SPIFFE ID (or a trust domain, or a workload name).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("invalid SPIFFE ID \"\": it is empty")]
    Empty,
    #[error("invalid SPIFFE ID \"{prefix}...\": it is {len} bytes long; the limit is 2048")]
    TooLong { prefix: String, len: usize },
    #[error("invalid SPIFFE ID \"{id}\": it must start with the scheme \"spiffe://\" (lowercase)")]
    BadScheme { id: String },
    #[error("invalid SPIFFE ID \"{id}\": trust domain is empty")]
    EmptyTrustDomain { id: String },
    #[error("invalid SPIFFE ID \"{id}\": trust domain is {len} bytes long; the limit is 255")]
    TrustDomainTooLong { id: String, len: usize },
    #[error("invalid SPIFFE ID \"{id}\": trust domain has a port; SPIFFE IDs allow none")]
    Port { id: String },
    #[error("invalid SPIFFE ID \"{id}\": trust domain has userinfo ('@'); SPIFFE IDs allow none")]
    Userinfo { id: String },
    #[error(
        "invalid SPIFFE ID \"{id}\": trust domain has character '{ch}' at {pos}; \
         allowed are lowercase letters, digits, '.', '-', '_'"
    )]
    BadTrustDomainChar { id: String, ch: char, pos: usize },
    #[error(
        "invalid SPIFFE ID \"{id}\": it has a query or fragment ('{ch}' at {pos}); SPIFFE IDs allow neither"
    )]
    QueryOrFragment { id: String, ch: char, pos: usize },
    #[error("invalid SPIFFE ID \"{id}\": path ends with '/'")]
    TrailingSlash { id: String },
    #[error("invalid SPIFFE ID \"{id}\": path has an empty segment at {pos}")]
    EmptySegment { id: String, pos: usize },
    #[error("invalid SPIFFE ID \"{id}\": path has a \"{segment}\" segment at {pos}; relative segments are not allowed")]
    DotSegment {
        id: String,
        segment: String,
        pos: usize,
    },
    #[error(
        "invalid SPIFFE ID \"{id}\": path has character '{ch}' at {pos}; \
         allowed are letters, digits, '.', '-', '_'"
    )]
    BadPathChar { id: String, ch: char, pos: usize },
    #[error("invalid {field} \"{value}\" for a workload SPIFFE ID: {reason}")]
    BadWorkloadName {
        field: &'static str,
        value: String,
        reason: String,
    },
}

/// Why a peer certificate (or our own leaf, checked the same way) was refused.
///
/// `Debug` prints the same text as `Display`: rustls formats `CertificateError::Other` with `{:?}`, and the
/// reason must survive into the handshake error that the proxy logs.
#[derive(thiserror::Error, Clone)]
pub enum VerifyError {
    #[error("certificate has no URI SAN; a SPIFFE ID is required")]
    NoUriSan,
    #[error("certificate has {count} URI SANs; exactly one SPIFFE ID is allowed")]
    SeveralUriSans { count: usize },
    #[error("certificate URI SAN \"{uri}\" is not a SPIFFE ID: {reason}")]
    NotSpiffe { uri: String, reason: SpiffeIdError },
    #[error(
        "wrong trust domain: expected \"{expected}\" but peer presented {presented} (trust domain \"{}\")",
        .presented.trust_domain()
    )]
    WrongTrustDomain {
        expected: TrustDomain,
        presented: SpiffeId,
    },
    #[error("identity mismatch: expected {expected} but peer presented {presented}")]
    IdentityMismatch {
        expected: SpiffeId,
        presented: SpiffeId,
    },
    #[error("certificate expired: a certificate in the chain was valid until {}", rfc3339(*.not_after))]
    Expired { not_after: SystemTime },
    #[error("certificate not valid yet: a certificate in the chain is valid from {}", rfc3339(*.not_before))]
    NotYetValid { not_before: SystemTime },
    #[error("certificate key usage does not allow this: {detail}")]
    BadKeyUsage { detail: String },
    #[error("certificate does not chain to a root of the trust bundle (unknown issuer)")]
    UnknownIssuer,
    #[error(
        "certificate signature does not verify with its issuer's key \
         (forged, or signed by another CA that has the same name as a trusted one)"
    )]
    BadSignature,
    #[error("certificate is a CA (basicConstraints CA:true) but was presented as a leaf")]
    IsCa,
    #[error("certificate revoked: {presented} (serial {serial}) is on the mesh's revocation list")]
    Revoked { presented: SpiffeId, serial: String },
    #[error("certificate refused: {0}")]
    Other(String),
}

impl fmt::Debug for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// PEM, parse, sign and I/O errors of the CA, CSR, bundle and credential code.
#[derive(thiserror::Error, Debug)]
pub enum CertError {
    #[error("invalid CA fingerprint {input:?}: {reason}")]
    BadFingerprint { input: String, reason: String },
    #[error("no certificate the server presented has the pinned fingerprint (it presented {presented:?})")]
    PinMismatch { presented: Vec<String> },
    #[error(
        "the certificate with the pinned fingerprint is not a self-signed CA (pin the mesh's root)"
    )]
    PinNotRoot,
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    InFile {
        path: PathBuf,
        source: Box<CertError>,
    },
    #[error("cannot decode the PEM of the {what}: {source}")]
    Pem {
        what: &'static str,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the {what} has no {label} PEM block")]
    NoPem {
        what: &'static str,
        label: &'static str,
    },
    #[error("cannot parse {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("{what} is not a CA certificate (basicConstraints CA:true is missing)")]
    NotCa { what: String },
    #[error("cannot load the private key of the {what}: {detail}")]
    Key { what: &'static str, detail: String },
    #[error("the private key does not match the public key of {what}")]
    KeyMismatch { what: String },
    #[error("cannot generate {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("the system random number generator failed")]
    Random,
    #[error("cannot sign {what}: {source}")]
    Sign { what: String, source: rcgen::Error },
    #[error("{what} has no usable SPIFFE ID: {source}")]
    NoSpiffeId { what: String, source: VerifyError },
    #[error("CA certificate names no trust domain: {detail}")]
    NoTrustDomain { detail: String },
    #[error("the CA certificate is a self-signed root but {extra} more certificate(s) follow it")]
    RootWithExtras { extra: usize },
    #[error("certificate {index} of the CA chain is not signed by certificate {next}")]
    ChainOrder { index: usize, next: usize },
    #[error("CA of trust domain {td} has pathlen 0 and cannot sign another CA")]
    PathLenExhausted { td: TrustDomain },
    #[error("CSR signature does not verify with the CSR's own public key")]
    CsrSignature,
    #[error(
        "CSR for {id} asks for a different identity ({requested}); only {id} may be requested"
    )]
    CsrOtherIdentity { id: SpiffeId, requested: String },
    #[error("CSR key is not ECDSA P-256 ({detail}); Weft issues only ECDSA P-256 leaves")]
    CsrKey { detail: String },
    #[error("the CA of trust domain {ca} cannot sign {id}, which is in another trust domain")]
    WrongTrustDomain { ca: TrustDomain, id: SpiffeId },
    #[error(
        "validity {} .. {} is empty: not_before must come before not_after",
        rfc3339(*.not_before), rfc3339(*.not_after)
    )]
    EmptyValidity {
        not_before: SystemTime,
        not_after: SystemTime,
    },
    #[error(
        "requested validity {} .. {} lies outside the CA's own validity {} .. {}",
        rfc3339(*.not_before), rfc3339(*.not_after), rfc3339(*.ca_not_before), rfc3339(*.ca_not_after)
    )]
    ValidityOutsideCa {
        not_before: SystemTime,
        not_after: SystemTime,
        ca_not_before: SystemTime,
        ca_not_after: SystemTime,
    },
    #[error("the trust bundle has no certificates")]
    EmptyBundle,
    #[error("credential for {id} does not verify against the trust bundle: {source}")]
    NotTrusted { id: SpiffeId, source: VerifyError },
    #[error("credential for {id} is outside the trust bundle's trust domain(s) {}", .bundle.join(", "))]
    TrustDomainMismatch { id: SpiffeId, bundle: Vec<String> },
    #[error("cannot replace identity {current} with a credential for {new}; the identity of a proxy is fixed")]
    IdentityChanged { current: SpiffeId, new: SpiffeId },
    #[error(transparent)]
    SpiffeId(#[from] SpiffeIdError),
}

impl CertError {
    /// Wraps this error with the file it came from (unless it already names one).
    pub(crate) fn in_file(self, path: &std::path::Path) -> CertError {
        match self {
            CertError::Read { .. } | CertError::InFile { .. } => self,
            other => CertError::InFile {
                path: path.to_owned(),
                source: Box::new(other),
            },
        }
    }
}

/// RFC 3339 in UTC, whole seconds: X.509 times have no finer resolution.
pub fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    dt.replace_nanosecond(0)
        .ok()
        .and_then(|dt| {
            dt.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{dt}"))
}

//! Weft identities: SPIFFE IDs, the mesh certificate authority, CSR signing, trust bundles and the rustls
//! configuration of the peer hop (TLS 1.3 only, ALPN `h2`, SPIFFE-aware verifiers on both sides).
//!
//! Only this crate holds signing keys. The proxy gets a [`tls::Identity`]: a live, swappable credential that
//! can build client and server configurations but cannot sign anything.

pub mod bundle;
pub mod ca;
pub mod credential;
pub mod csr;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod pin;
pub mod revoked;
pub mod spiffe;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
mod verify;
mod x509;

#[cfg(test)]
mod handshake_tests;

pub use bundle::TrustBundle;
pub use ca::{CertificateAuthority, Validity};
pub use credential::Credential;
pub use csr::{csr_key_sha256, KeyAndCsr};
pub use error::{rfc3339, CertError, SpiffeIdError, VerifyError};
pub use revoked::{leaf_not_after, leaf_serial_hex, RevokedSerials};
pub use spiffe::{SpiffeId, TrustDomain};
pub use tls::{bootstrap_client_config, peer_id, verify_error, Identity};

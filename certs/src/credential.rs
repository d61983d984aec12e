//! A workload credential: leaf chain and private key, loaded from PEM, with the facts rotation needs (its
//! SPIFFE ID and validity).

use crate::error::CertError;
use crate::spiffe::SpiffeId;
use crate::x509;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// A leaf chain and its private key. Cheap to clone.
#[derive(Clone)]
pub struct Credential {
    id: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
    serial_hex: String,
    /// Chain and loaded signing key, ready for rustls.
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("serial", &self.serial_hex)
            .field("not_after", &crate::error::rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

/// What the chain says, before the key is loaded.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    id: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
    serial_hex: String,
}

impl Credential {
    /// Loads a leaf chain (leaf first) and its private key (PKCS#8, SEC1 or PKCS#1 PEM). The leaf must carry
    /// exactly one URI SAN that is a SPIFFE ID, and the key must be the leaf's.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Credential, CertError> {
        let leaf = Leaf::read(chain_pem)?;
        let key = read_key(key_pem)?;
        Credential::assemble(leaf, key)
    }

    /// As [`from_pem`](Self::from_pem), from files; errors name the file they are about.
    pub fn from_pem_files(chain: &Path, key: &Path) -> Result<Credential, CertError> {
        let leaf = Leaf::read(&read_file(chain)?).map_err(|e| e.in_file(chain))?;
        let key_der = read_key(&read_file(key)?).map_err(|e| e.in_file(key))?;
        Credential::assemble(leaf, key_der).map_err(|e| e.in_file(key))
    }

    fn assemble(leaf: Leaf, key: PrivateKeyDer<'static>) -> Result<Credential, CertError> {
        let provider = x509::provider();
        let certified =
            CertifiedKey::from_der(leaf.chain, key, &provider).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch {
                    what: format!("the leaf certificate for {}", leaf.id),
                },
                other => CertError::Key {
                    what: "credential",
                    detail: other.to_string(),
                },
            })?;
        Ok(Credential {
            id: leaf.id,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            serial_hex: leaf.serial_hex,
            certified: Arc::new(certified),
        })
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf's serial number, lowercase hex.
    pub fn serial_hex(&self) -> String {
        self.serial_hex.clone()
    }

    /// The chain as loaded: leaf first, then the intermediates (a CA-issued chain never includes the root).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

impl Leaf {
    fn read(chain_pem: &str) -> Result<Leaf, CertError> {
        let chain = x509::certs_from_pem(chain_pem, "certificate chain")?;
        let parsed = x509::parse(&chain[0], || "the leaf certificate".to_owned())?;
        let id = x509::spiffe_id(&parsed).map_err(|source| CertError::NoSpiffeId {
            what: "the leaf certificate".to_owned(),
            source,
        })?;
        let not_before = x509::not_before(&parsed);
        let not_after = x509::not_after(&parsed);
        let serial_hex = x509::serial_hex(&parsed);
        Ok(Leaf {
            chain,
            id,
            not_before,
            not_after,
            serial_hex,
        })
    }
}

fn read_key(key_pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoPem {
            what: "credential key",
            label: "PRIVATE KEY",
        },
        source => CertError::Pem {
            what: "credential key",
            source,
        },
    })
}

fn read_file(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CertificateAuthority, Validity};
    use crate::csr::KeyAndCsr;
    use crate::error::VerifyError;
    use crate::spiffe::TrustDomain;
    use crate::testing::{issue, LeafSpec};
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn ca() -> CertificateAuthority {
        let td = TrustDomain::new("weft.test").expect("td");
        CertificateAuthority::new_root(&td, Validity::starting_now(30 * DAY)).expect("root")
    }

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://weft.test/ns/default/sa/web").expect("id")
    }

    #[test]
    fn knows_its_id_validity_and_chain() {
        let ca = ca();
        let int = ca
            .new_intermediate(Validity::starting_now(10 * DAY))
            .expect("int");
        let req = KeyAndCsr::generate(&id()).expect("csr");
        let validity = Validity::starting_now(DAY);
        let chain = int.sign_csr(req.csr_pem(), &id(), validity).expect("sign");
        let cred = Credential::from_pem(&chain, req.key_pem()).expect("credential");
        assert_eq!(cred.id(), &id());
        assert_eq!(cred.chain().len(), 2);
        assert_eq!(
            x509::unix_secs(cred.not_before()),
            x509::unix_secs(validity.not_before)
        );
        assert_eq!(
            x509::unix_secs(cred.not_after()),
            x509::unix_secs(validity.not_after)
        );
        assert!(format!("{cred:?}").contains("spiffe://weft.test/ns/default/sa/web"));
    }

    #[test]
    fn refuses_a_key_that_is_not_the_leafs() {
        let ca = ca();
        let req = KeyAndCsr::generate(&id()).expect("csr");
        let other = KeyAndCsr::generate(&id()).expect("csr");
        let chain = ca
            .sign_csr(req.csr_pem(), &id(), Validity::starting_now(DAY))
            .expect("sign");
        let err = Credential::from_pem(&chain, other.key_pem()).expect_err("wrong key");
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    /// Whether an error is the expected variant.
    type Matches = fn(&VerifyError) -> bool;

    #[test]
    fn refuses_leaves_without_a_single_spiffe_id() {
        let ca = ca();
        let cases: Vec<(Vec<&str>, Matches)> = vec![
            (vec![], |e| matches!(e, VerifyError::NoUriSan)),
            (vec!["spiffe://weft.test/a", "spiffe://weft.test/b"], |e| {
                matches!(e, VerifyError::SeveralUriSans { count: 2 })
            }),
            (vec!["https://weft.test/a"], |e| {
                matches!(e, VerifyError::NotSpiffe { .. })
            }),
        ];
        for (uris, expected) in cases {
            let mut spec = LeafSpec::for_id(&id());
            spec.uris = uris.iter().map(|u| u.to_string()).collect();
            spec.dns = vec!["web.example".to_owned()];
            let (chain, key) = issue(&ca, &spec);
            match Credential::from_pem(&chain, &key) {
                Err(CertError::NoSpiffeId { source, .. }) => {
                    assert!(expected(&source), "{uris:?}: {source}")
                }
                other => panic!("{uris:?}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("weft-certs-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = ca();
        let req = KeyAndCsr::generate(&id()).expect("csr");
        let chain = ca
            .sign_csr(req.csr_pem(), &id(), Validity::starting_now(DAY))
            .expect("sign");
        let chain_path = dir.join("chain.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&chain_path, &chain).expect("write");
        std::fs::write(&key_path, "no key here").expect("write");
        let err = Credential::from_pem_files(&chain_path, &key_path).expect_err("bad key");
        let message = err.to_string();
        assert!(
            message.contains("key.pem") && message.contains("PRIVATE KEY"),
            "{message}"
        );

        let err =
            Credential::from_pem_files(&dir.join("absent.pem"), &key_path).expect_err("absent");
        assert!(err.to_string().contains("absent.pem"), "{err}");

        std::fs::write(&key_path, req.key_pem()).expect("write");
        let cred = Credential::from_pem_files(&chain_path, &key_path).expect("good");
        assert_eq!(cred.id(), &id());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

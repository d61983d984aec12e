//! Trust bundles: the root certificates a proxy accepts peers from. A bundle may hold several roots so the
//! CA itself can rotate: old and new roots are trusted side by side until every leaf has moved over.

use crate::error::CertError;
use crate::spiffe::TrustDomain;
use crate::x509;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use std::fmt;
use std::path::Path;

/// One or more root certificates, each a CA.
#[derive(Clone)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    /// Parsed once here rather than per handshake.
    anchors: Vec<TrustAnchor<'static>>,
    /// Trust domains named by the roots' `spiffe://<td>` URI SANs, sorted; empty when none names one.
    trust_domains: Vec<TrustDomain>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.roots.len())
            .field("trust_domains", &self.trust_domains)
            .finish()
    }
}

impl TrustBundle {
    /// Every `CERTIFICATE` block of `pem`; at least one, and each a CA certificate.
    pub fn from_pem(pem: &str) -> Result<TrustBundle, CertError> {
        let mut bundle = TrustBundle {
            roots: Vec::new(),
            anchors: Vec::new(),
            trust_domains: Vec::new(),
        };
        bundle.add_pem(pem)?;
        Ok(bundle)
    }

    pub fn from_pem_file(path: &Path) -> Result<TrustBundle, CertError> {
        let pem = std::fs::read_to_string(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })?;
        TrustBundle::from_pem(&pem).map_err(|e| e.in_file(path))
    }

    /// Adds the roots in `pem` (duplicates are ignored). Nothing is added if any of them is refused.
    pub fn add_pem(&mut self, pem: &str) -> Result<(), CertError> {
        let certs = x509::certs_from_pem(pem, "trust bundle")?;
        let mut added = Vec::with_capacity(certs.len());
        for (i, der) in certs.into_iter().enumerate() {
            let what = || format!("certificate {} of the trust bundle", i + 1);
            let root = Root::read(der, what)?;
            added.push(root);
        }
        for root in added {
            self.insert(root);
        }
        Ok(())
    }

    fn insert(&mut self, root: Root) {
        if self.roots.contains(&root.der) {
            return;
        }
        self.roots.push(root.der);
        self.anchors.push(root.anchor);
        if let Some(td) = root.trust_domain {
            if let Err(pos) = self.trust_domains.binary_search(&td) {
                self.trust_domains.insert(pos, td);
            }
        }
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The trust domains the roots name (URI SAN `spiffe://<td>`), sorted; empty if none does.
    pub fn trust_domains(&self) -> &[TrustDomain] {
        &self.trust_domains
    }

    pub fn to_pem(&self) -> String {
        x509::certs_to_pem(&self.roots)
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

struct Root {
    der: CertificateDer<'static>,
    anchor: TrustAnchor<'static>,
    trust_domain: Option<TrustDomain>,
}

impl Root {
    fn read(der: CertificateDer<'static>, what: impl Fn() -> String) -> Result<Root, CertError> {
        let parsed = x509::parse(&der, &what)?;
        if !x509::is_ca(&parsed) {
            return Err(CertError::NotCa { what: what() });
        }
        // A root from elsewhere may name no trust domain; it is still a valid anchor.
        let trust_domain = x509::ca_trust_domain(&parsed).ok();
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| CertError::Parse {
                what: what(),
                detail: e.to_string(),
            })?
            .to_owned();
        Ok(Root {
            der,
            anchor,
            trust_domain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CertificateAuthority, Validity};
    use crate::csr::KeyAndCsr;
    use crate::spiffe::SpiffeId;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn root(td: &str) -> CertificateAuthority {
        let td = TrustDomain::new(td).expect("td");
        CertificateAuthority::new_root(&td, Validity::starting_now(DAY)).expect("root")
    }

    #[test]
    fn holds_several_roots_and_their_trust_domains() {
        let a = root("a.test");
        let b = root("b.test");
        let mut bundle = TrustBundle::from_pem(&a.root_pem()).expect("bundle");
        assert_eq!(bundle.len(), 1);
        bundle
            .add_pem(&(b.root_pem() + &a.root_pem()))
            .expect("add");
        assert_eq!(bundle.len(), 2, "duplicate root ignored");
        assert!(!bundle.is_empty());
        let names: Vec<_> = bundle
            .trust_domains()
            .iter()
            .map(|td| td.as_str())
            .collect();
        assert_eq!(names, vec!["a.test", "b.test"]);
        let again = TrustBundle::from_pem(&bundle.to_pem()).expect("round trip");
        assert_eq!(again.roots(), bundle.roots());
    }

    #[test]
    fn refuses_empty_and_leaf_input() {
        let err = TrustBundle::from_pem("").expect_err("empty");
        assert!(
            err.to_string().contains("no CERTIFICATE PEM block"),
            "{err}"
        );

        let ca = root("a.test");
        let id = SpiffeId::parse("spiffe://a.test/ns/x/sa/y").expect("id");
        let req = KeyAndCsr::generate(&id).expect("csr");
        let leaf = ca
            .sign_csr(req.csr_pem(), &id, Validity::starting_now(DAY / 2))
            .expect("sign");
        let err = TrustBundle::from_pem(&(ca.root_pem() + &leaf)).expect_err("leaf");
        assert_eq!(
            err.to_string(),
            "certificate 2 of the trust bundle is not a CA certificate (basicConstraints CA:true is missing)"
        );
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("weft-certs-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = dir.join("missing.pem");
        let err = TrustBundle::from_pem_file(&missing).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "not pem").expect("write");
        let err = TrustBundle::from_pem_file(&bad).expect_err("bad");
        assert!(err.to_string().contains("bad.pem"), "{err}");

        let good = dir.join("good.pem");
        std::fs::write(&good, root("a.test").root_pem()).expect("write");
        assert_eq!(TrustBundle::from_pem_file(&good).expect("good").len(), 1);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

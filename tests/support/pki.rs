//! Test certificates: a mesh CA and workload identities written to a temporary directory, made with the
//! real `weft-certs` code (key and CSR generated locally, CSR signed by the CA).

use std::path::{Path, PathBuf};
use std::time::Duration;
use weft_certs::testing::{self, LeafSpec};
use weft_certs::{CertificateAuthority, KeyAndCsr, SpiffeId, TrustDomain, Validity};

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "weft-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("WEFT_KEEP_TEMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Paths of one workload identity.
#[derive(Clone, Debug)]
pub struct IdentityFiles {
    pub id: SpiffeId,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

pub struct Pki {
    pub dir: TempDir,
    pub ca: CertificateAuthority,
    pub trust_domain: TrustDomain,
}

impl Pki {
    pub fn new(trust_domain: &str) -> Pki {
        let td: TrustDomain = trust_domain.parse().expect("trust domain");
        let ca = CertificateAuthority::new_root(
            &td,
            Validity::starting_now(Duration::from_secs(86_400)),
        )
        .expect("root CA");
        let dir = TempDir::new("pki");
        std::fs::write(dir.path().join("bundle.pem"), ca.root_pem()).expect("write bundle");
        Pki {
            dir,
            ca,
            trust_domain: td,
        }
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.dir.path().join("bundle.pem")
    }

    pub fn id(&self, ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::for_workload(&self.trust_domain, ns, sa).expect("spiffe id")
    }

    /// A normal workload identity for `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn workload(&self, ns: &str, sa: &str) -> IdentityFiles {
        let id = self.id(ns, sa);
        let kc = KeyAndCsr::generate(&id).expect("key and CSR");
        let chain = self
            .ca
            .sign_csr(
                kc.csr_pem(),
                &id,
                Validity::starting_now(Duration::from_secs(3600)),
            )
            .expect("sign CSR");
        self.write(&format!("{ns}-{sa}"), id, &chain, kc.key_pem())
    }

    /// A leaf built exactly as `spec` says (expired, wrong usage, ...), signed by this CA.
    pub fn custom(&self, name: &str, id: SpiffeId, spec: &LeafSpec) -> IdentityFiles {
        let (chain, key) = testing::issue(&self.ca, spec);
        self.write(name, id, &chain, &key)
    }

    /// An identity whose certificate claims `id` but says so only in `ttl`-bounded validity in the past.
    pub fn expired(&self, ns: &str, sa: &str) -> IdentityFiles {
        let id = self.id(ns, sa);
        let now = std::time::SystemTime::now();
        let mut spec = LeafSpec::for_id(&id);
        spec.validity = Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        };
        self.custom(&format!("{ns}-{sa}-expired"), id, &spec)
    }

    fn write(&self, name: &str, id: SpiffeId, chain: &str, key: &str) -> IdentityFiles {
        let cert = self.dir.path().join(format!("{name}.crt"));
        let keyp = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, chain).expect("write cert");
        std::fs::write(&keyp, key).expect("write key");
        IdentityFiles {
            id,
            cert,
            key: keyp,
            bundle: self.bundle_path(),
        }
    }
}

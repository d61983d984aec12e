//! A mesh CA kept in a directory: `ca.crt` (the CA's certificate chain), `ca.key` (its private key, mode
//! 0600) and `bundle.crt` (the trust bundle proxies are given). Files are written atomically (temp file,
//! fsync, rename) so a crash never leaves a torn CA behind.

use crate::persist::with_suffix;
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use weft_certs::{CertificateAuthority, KeyAndCsr, SpiffeId, TrustDomain, Validity};

pub struct CaDir {
    pub dir: PathBuf,
    pub ca: CertificateAuthority,
}

impl CaDir {
    /// Creates a root CA (and, with `intermediate`, an intermediate that signs leaves) in `dir`.
    /// Refuses to overwrite an existing CA.
    pub fn init(
        dir: &Path,
        td: &TrustDomain,
        validity: Duration,
        intermediate: bool,
    ) -> anyhow::Result<CaDir> {
        if dir.join("ca.key").exists() {
            bail!(
                "{} already holds a CA (ca.key exists); refusing to overwrite it",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let root = CertificateAuthority::new_root(td, Validity::starting_now(validity))?;
        let bundle = root.cert_pem();
        let ca = if intermediate {
            // The intermediate's validity must sit inside the root's.
            root.new_intermediate(Validity::starting_now(
                validity.saturating_sub(Duration::from_secs(3600)),
            ))?
        } else {
            root
        };
        let chain = if intermediate {
            ca.chain_pem()
        } else {
            ca.cert_pem()
        };
        write_atomic(&dir.join("ca.crt"), chain.as_bytes(), 0o644)?;
        write_atomic(&dir.join("ca.key"), ca.key_pem().as_bytes(), 0o600)?;
        write_atomic(&dir.join("bundle.crt"), bundle.as_bytes(), 0o644)?;
        Ok(CaDir {
            dir: dir.to_path_buf(),
            ca,
        })
    }

    pub fn open(dir: &Path) -> anyhow::Result<CaDir> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).with_context(|| {
                format!("cannot read {} (run `weftctl ca init` first?)", p.display())
            })
        };
        let ca = CertificateAuthority::from_pem(&read("ca.crt")?, &read("ca.key")?)
            .with_context(|| format!("CA in {} is not usable", dir.display()))?;
        Ok(CaDir {
            dir: dir.to_path_buf(),
            ca,
        })
    }

    /// Issues a workload certificate: the key and CSR are made locally (as a proxy would), the CA signs
    /// the CSR. Writes `<out>.crt` (leaf + chain), `<out>.key` (0600) and copies the bundle to `<out>-bundle.crt`.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration, out: &Path) -> anyhow::Result<IssuedFiles> {
        if id.trust_domain() != self.ca.trust_domain().to_string() {
            bail!(
                "{id} is not in this CA's trust domain {} (CA in {})",
                self.ca.trust_domain(),
                self.dir.display()
            );
        }
        let kc = KeyAndCsr::generate(id)?;
        let chain = self
            .ca
            .sign_csr(kc.csr_pem(), id, Validity::starting_now(ttl))?;
        let files = IssuedFiles {
            cert: with_suffix(out, ".crt"),
            key: with_suffix(out, ".key"),
            bundle: with_suffix(out, "-bundle.crt"),
        };
        if let Some(parent) = files.cert.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        write_atomic(&files.cert, chain.as_bytes(), 0o644)?;
        write_atomic(&files.key, kc.key_pem().as_bytes(), 0o600)?;
        let bundle = std::fs::read(self.dir.join("bundle.crt"))
            .with_context(|| format!("cannot read {}", self.dir.join("bundle.crt").display()))?;
        write_atomic(&files.bundle, &bundle, 0o644)?;
        Ok(files)
    }
}

pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// Writes `bytes` to `path` atomically (see [`crate::persist::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    Ok(crate::persist::write_atomic(path, bytes, mode)?)
}

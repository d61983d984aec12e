//! What the proxy keeps on disk so a restart needs no control plane: its key (0600), certificate chain,
//! trust bundle, and the last snapshot it applied (checksummed; a damaged copy is reported, not used).
//! While it joins, the key it asks a certificate for (`join-key.pem`, 0600), so that a retry, even after
//! a restart, asks for the same key and the control plane can answer again a join whose answer was lost.

use std::path::{Path, PathBuf};
use weft_api::control::Snapshot;
use weft_api::persist;
use weft_certs::{Credential, TrustBundle};

const JOIN_KEY: &str = "join-key.pem";

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The cached credential and bundle, if all three files are there.
    pub fn credential(&self) -> anyhow::Result<Option<(Credential, TrustBundle)>> {
        let (cert, key, bundle) = (
            self.path("cert.pem"),
            self.path("key.pem"),
            self.path("bundle.pem"),
        );
        if !(cert.exists() && key.exists() && bundle.exists()) {
            return Ok(None);
        }
        let cred = Credential::from_pem_files(&cert, &key)?;
        let bundle = TrustBundle::from_pem_file(&bundle)?;
        Ok(Some((cred, bundle)))
    }

    pub fn save_credential(
        &self,
        chain_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        persist::write_atomic(&self.path("key.pem"), key_pem.as_bytes(), 0o600)?;
        persist::write_atomic(&self.path("cert.pem"), chain_pem.as_bytes(), 0o644)?;
        persist::write_atomic(&self.path("bundle.pem"), bundle_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    /// The key kept for a join still under way, if any.
    pub fn join_key(&self) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(self.path(JOIN_KEY)) {
            Ok(pem) => Ok(Some(pem)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps the key of a join before it is first sent.
    pub fn save_join_key(&self, key_pem: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        persist::write_atomic(&self.path(JOIN_KEY), key_pem.as_bytes(), 0o600)?;
        Ok(())
    }

    /// The join is over (its key is now `key.pem`, or it was refused for good).
    pub fn clear_join_key(&self) {
        if let Err(e) = std::fs::remove_file(self.path(JOIN_KEY)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "cannot remove the join key");
            }
        }
    }

    pub fn save_bundle(&self, bundle_pem: &str) -> anyhow::Result<()> {
        persist::write_atomic(&self.path("bundle.pem"), bundle_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    pub fn snapshot(&self) -> Result<Option<Snapshot>, persist::StateError> {
        persist::read_json(&self.path("snapshot.json"))
    }

    pub fn save_snapshot(&self, s: &Snapshot) -> Result<(), persist::StateError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| persist::StateError::Io {
            action: "create",
            path: self.dir.clone(),
            source,
        })?;
        persist::write_json(&self.path("snapshot.json"), s, 0o600)
    }
}

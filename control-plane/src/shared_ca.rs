//! With `--store etcd://...`, the mesh CA and the operator token live in etcd, shared by every
//! replica: `<prefix>secrets/ca` (certificate, trust bundle and the CA key sealed with the
//! `--store-key-file` key, see [`crate::store_key`]) and `<prefix>secrets/operator-token` (sealed
//! too). The first replica to start on an empty prefix creates both in one compare-and-swap on
//! "absent"; one that loses that race reads and uses the winner's, so every replica has one CA.
//! The CA key is never written in the clear on this path (not in etcd, not in the state directory).

use crate::backend::etcd::EtcdBackend;
use crate::persist::StateError;
use crate::store_key::{Sealed, StoreKey};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use weft_certs::{CertError, CertificateAuthority, TrustDomain, Validity};

/// Names under `<prefix>secrets/` (also the associated data each is sealed under).
const CA: &str = "ca";
const TOKEN: &str = "operator-token";

/// What every replica on one etcd prefix shares.
pub struct SharedSecrets {
    pub ca: CertificateAuthority,
    /// The CA's certificate chain and the trust bundle proxies are given.
    pub chain_pem: String,
    pub bundle_pem: String,
    pub operator_token: String,
}

#[derive(Serialize, Deserialize)]
struct StoredCa {
    trust_domain: String,
    chain_pem: String,
    bundle_pem: String,
    key: Sealed,
}

#[derive(Debug, thiserror::Error)]
pub enum SharedCaError {
    #[error(transparent)]
    Store(#[from] StateError),
    #[error("the key in {} does not decrypt the {what} stored in etcd at {key} (every replica of a mesh must be given the same --store-key-file)", .file.display())]
    WrongKey {
        file: PathBuf,
        what: &'static str,
        key: String,
    },
    #[error("the value stored in etcd at {key} is damaged: {reason}")]
    Damaged { key: String, reason: String },
    #[error("trust domain {asked} was asked for, but the CA stored in etcd at {key} is for {stored}; the trust domain is fixed when the mesh is created")]
    TrustDomain {
        asked: TrustDomain,
        stored: String,
        key: String,
    },
    #[error("cannot create the mesh CA: {0}")]
    Create(#[from] CertError),
    #[error("the CA and the operator token in etcd under {prefix} were only partly created; remove both keys to have them made again")]
    Partial { prefix: String },
    #[error("no mesh CA is stored in etcd at {key}: nothing to re-seal (check --store and --etcd-prefix)")]
    NoMesh { key: String },
    #[error("the CA or the operator token in etcd under {prefix} changed while they were re-sealed; nothing was written, run the rotation again")]
    Changed { prefix: String },
}

/// The mesh CA and operator token in etcd: read, or created when absent (trust domain `td`, else
/// the default). `td` must match a stored CA's.
pub fn load_or_create(
    etcd: &EtcdBackend,
    key: &StoreKey,
    td: Option<&TrustDomain>,
    validity: Duration,
) -> Result<SharedSecrets, SharedCaError> {
    if let Some(found) = load(etcd, key, td)? {
        tracing::info!(at = %etcd.secret_key(CA), "using the mesh CA stored in etcd");
        return Ok(found);
    }
    let td = td
        .cloned()
        .unwrap_or_else(crate::state_dir::default_trust_domain);
    let ca = CertificateAuthority::new_root(&td, Validity::starting_now(validity))?;
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = hex::encode(raw);
    let made = SharedSecrets {
        chain_pem: ca.full_chain_pem(),
        bundle_pem: ca.root_pem(),
        ca,
        operator_token: token,
    };
    let created = create(etcd, key, &td, &made)?;
    if created {
        tracing::info!(trust_domain = %td, at = %etcd.secret_key(CA), "created the mesh CA and the operator credential in etcd");
        return Ok(made);
    }
    tracing::info!("another replica created the mesh CA first; using it");
    load(etcd, key, Some(&td))?.ok_or_else(|| SharedCaError::Partial {
        prefix: etcd.secret_key(""),
    })
}

/// Re-seals the stored CA key and operator token, opened with `old`, under `new`, in one
/// compare-and-swap transaction on both (the store key rotation); the CA itself is unchanged.
pub fn rotate(etcd: &EtcdBackend, old: &StoreKey, new: &StoreKey) -> Result<(), SharedCaError> {
    let (ca_at, token_at) = (etcd.secret_key(CA), etcd.secret_key(TOKEN));
    let (ca_raw, ca_rev) = etcd
        .get_secret_at(CA)?
        .ok_or_else(|| SharedCaError::NoMesh { key: ca_at.clone() })?;
    let (token_raw, token_rev) = etcd.get_secret_at(TOKEN)?.ok_or(SharedCaError::Partial {
        prefix: etcd.secret_key(""),
    })?;
    let damaged = |key: &str, reason: String| SharedCaError::Damaged {
        key: key.to_string(),
        reason,
    };
    let wrong_key = |what, at: &str| SharedCaError::WrongKey {
        file: old.path().to_path_buf(),
        what,
        key: at.to_string(),
    };
    let mut stored: StoredCa =
        serde_json::from_slice(&ca_raw).map_err(|e| damaged(&ca_at, e.to_string()))?;
    let ca_key = old
        .open(CA, &stored.key)
        .map_err(|_| wrong_key("CA", &ca_at))?;
    let sealed: Sealed =
        serde_json::from_slice(&token_raw).map_err(|e| damaged(&token_at, e.to_string()))?;
    let token = old
        .open(TOKEN, &sealed)
        .map_err(|_| wrong_key("operator token", &token_at))?;
    stored.key = new.seal(CA, &ca_key);
    let replaced = etcd.replace_secrets(vec![
        (CA, serde_json::to_vec(&stored).expect("serializes"), ca_rev),
        (
            TOKEN,
            serde_json::to_vec(&new.seal(TOKEN, &token)).expect("serializes"),
            token_rev,
        ),
    ])?;
    if !replaced {
        return Err(SharedCaError::Changed {
            prefix: etcd.secret_key(""),
        });
    }
    tracing::info!(at = %ca_at, new = %new.path().display(), "the CA key and the operator token are sealed under the new store key");
    Ok(())
}

/// Writes the mesh CA (its key sealed with `key`) and the operator token into etcd in one
/// transaction, if neither is there yet; `false` (nothing written) when one is.
pub fn create(
    etcd: &EtcdBackend,
    key: &StoreKey,
    td: &TrustDomain,
    secrets: &SharedSecrets,
) -> Result<bool, StateError> {
    let stored = StoredCa {
        trust_domain: td.to_string(),
        chain_pem: secrets.chain_pem.clone(),
        bundle_pem: secrets.bundle_pem.clone(),
        key: key.seal(CA, secrets.ca.key_pem().as_bytes()),
    };
    etcd.create_secrets(vec![
        (CA, serde_json::to_vec(&stored).expect("serializes")),
        (
            TOKEN,
            serde_json::to_vec(&key.seal(TOKEN, secrets.operator_token.as_bytes()))
                .expect("serializes"),
        ),
    ])
}

/// The stored CA and token; `None` when neither is stored yet.
pub fn load(
    etcd: &EtcdBackend,
    key: &StoreKey,
    td: Option<&TrustDomain>,
) -> Result<Option<SharedSecrets>, SharedCaError> {
    let (ca_at, token_at) = (etcd.secret_key(CA), etcd.secret_key(TOKEN));
    let (ca_raw, token_raw) = match (etcd.get_secret(CA)?, etcd.get_secret(TOKEN)?) {
        (None, None) => return Ok(None),
        (Some(c), Some(t)) => (c, t),
        _ => {
            return Err(SharedCaError::Partial {
                prefix: etcd.secret_key(""),
            })
        }
    };
    let damaged = |key: &str, reason: String| SharedCaError::Damaged {
        key: key.to_string(),
        reason,
    };
    let stored: StoredCa =
        serde_json::from_slice(&ca_raw).map_err(|e| damaged(&ca_at, e.to_string()))?;
    if let Some(asked) = td.filter(|t| t.to_string() != stored.trust_domain) {
        return Err(SharedCaError::TrustDomain {
            asked: asked.clone(),
            stored: stored.trust_domain,
            key: ca_at,
        });
    }
    let wrong_key = |what, at: &str| SharedCaError::WrongKey {
        file: key.path().to_path_buf(),
        what,
        key: at.to_string(),
    };
    let key_pem = key
        .open(CA, &stored.key)
        .map_err(|_| wrong_key("CA", &ca_at))?;
    let key_pem = String::from_utf8(key_pem).map_err(|_| damaged(&ca_at, "key not PEM".into()))?;
    let ca = CertificateAuthority::from_pem(&stored.chain_pem, &key_pem)
        .map_err(|e| damaged(&ca_at, e.to_string()))?;
    let sealed: Sealed =
        serde_json::from_slice(&token_raw).map_err(|e| damaged(&token_at, e.to_string()))?;
    let token = key
        .open(TOKEN, &sealed)
        .map_err(|_| wrong_key("operator token", &token_at))?;
    let operator_token =
        String::from_utf8(token).map_err(|_| damaged(&token_at, "not text".into()))?;
    Ok(Some(SharedSecrets {
        ca,
        chain_pem: stored.chain_pem,
        bundle_pem: stored.bundle_pem,
        operator_token,
    }))
}

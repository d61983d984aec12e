//! `weft-control migrate --from-state-dir DIR --to etcd://...`: moves a mesh kept in a state
//! directory into etcd, without reissuing an identity. Everything is copied as stored: resources
//! with their revision, join tokens with their use counts, issued certificates and revocations,
//! claims, service addresses (in the layout replicas agree on, one pair of keys per service), then
//! the mesh CA (its key sealed under the store key) and the operator token, last, in one
//! transaction. The registry is not copied: on etcd each workload's entry lives on the lease of the
//! replica its proxy is connected to, so proxies register again as they reconnect.
//!
//! It refuses a state directory a control plane is serving (its lock, [`crate::state_lock`]) and a
//! target prefix that holds anything already (naming the key), so it never merges two meshes.

use crate::backend::dir::DirBackend;
use crate::backend::etcd::{EtcdBackend, EtcdOptions};
use crate::backend::{Backend as _, Collection, Expect, WriteError, WHOLE};
use crate::persist::StateError;
use crate::shared_ca::SharedSecrets;
use crate::store_key::StoreKey;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}; stop it before migrating")]
    InUse(#[source] crate::state_lock::LockError),
    #[error(transparent)]
    Lock(crate::state_lock::LockError),
    #[error("{dir} holds no mesh: {reason}")]
    NoMesh { dir: PathBuf, reason: String },
    #[error("{store} already holds a mesh or other data ({key} exists): migrate into an empty --etcd-prefix")]
    TargetNotEmpty { store: String, key: String },
    #[error(transparent)]
    Key(#[from] crate::store_key::KeyFileError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot copy {collection}/{key}: {source}")]
    Copy {
        collection: &'static str,
        key: String,
        source: WriteError,
    },
}

/// What was copied: records per collection, and the CA's fingerprint.
#[derive(Debug)]
pub struct Summary {
    pub records: BTreeMap<&'static str, usize>,
    pub ca_fingerprint: String,
    pub store: String,
}

/// Moves the mesh in `from` into etcd (`to`), its CA key sealed with the key in `key_file`.
pub fn migrate(
    from: &std::path::Path,
    to: &EtcdOptions,
    key_file: &std::path::Path,
) -> Result<Summary, MigrateError> {
    let _lock = crate::state_lock::exclusive(from).map_err(|e| match e {
        crate::state_lock::LockError::Held { .. } => MigrateError::InUse(e),
        e => MigrateError::Lock(e),
    })?;
    let key = StoreKey::read(key_file)?;
    let (td, secrets) = read_secrets(from)?;
    let etcd = EtcdBackend::connect(to)?;
    if let Some(found) = etcd.first_key()? {
        return Err(MigrateError::TargetNotEmpty {
            store: etcd.describe(),
            key: found,
        });
    }
    let source = DirBackend::new(from);
    let mut records = BTreeMap::new();
    for c in Collection::ALL {
        let n = match c {
            Collection::Registry => continue,
            Collection::Vips => copy_vips(&source, &etcd)?,
            c => copy(&source, &etcd, c)?,
        };
        records.insert(c.name(), n);
    }
    if !crate::shared_ca::create(&etcd, &key, &td, &secrets)? {
        return Err(MigrateError::TargetNotEmpty {
            store: etcd.describe(),
            key: etcd.secret_key("ca"),
        });
    }
    let ca_fingerprint = pem_fingerprint(&secrets.bundle_pem);
    Ok(Summary {
        records,
        ca_fingerprint,
        store: etcd.describe(),
    })
}

/// The CA (certificate chain, key, bundle) and the operator token of the state directory.
fn read_secrets(
    dir: &std::path::Path,
) -> Result<(weft_certs::TrustDomain, SharedSecrets), MigrateError> {
    let no_mesh = |reason: String| MigrateError::NoMesh {
        dir: dir.to_path_buf(),
        reason,
    };
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| no_mesh(format!("cannot read {name}: {e}")))
    };
    let (chain_pem, bundle_pem) = (read("ca/ca.crt")?, read("ca/bundle.crt")?);
    let ca = weft_certs::CertificateAuthority::from_pem(&chain_pem, &read("ca/ca.key")?)
        .map_err(|e| no_mesh(format!("its CA is not usable: {e}")))?;
    let operator_token = read("operator.token")?.trim().to_string();
    let td = ca.trust_domain().clone();
    Ok((
        td,
        SharedSecrets {
            ca,
            chain_pem,
            bundle_pem,
            operator_token,
        },
    ))
}

/// Copies one collection as stored (each key of a keyed one); returns how many records.
fn copy(source: &DirBackend, etcd: &EtcdBackend, c: Collection) -> Result<usize, MigrateError> {
    let records: Vec<(String, Vec<u8>)> = if c.keyed() {
        source
            .list(c)?
            .records
            .into_iter()
            .map(|(k, r)| (k, r.value))
            .collect()
    } else {
        source
            .get(c, WHOLE)?
            .map(|r| vec![(WHOLE.to_string(), r.value)])
            .unwrap_or_default()
    };
    for (key, value) in &records {
        etcd.put(c, key, value, Expect::Absent)
            .map_err(|source| MigrateError::Copy {
                collection: c.name(),
                key: key.clone(),
                source,
            })?;
    }
    Ok(records.len())
}

/// Copies the service address table into the agreed layout; returns how many addresses.
fn copy_vips(source: &DirBackend, etcd: &EtcdBackend) -> Result<usize, MigrateError> {
    let table: BTreeMap<String, std::net::Ipv4Addr> =
        match crate::backend::get_json(source, Collection::Vips)? {
            Some((t, _)) => t,
            None => BTreeMap::new(),
        };
    crate::vips::seed_agreed(etcd, &table).map_err(MigrateError::State)
}

/// The fingerprint of the first certificate in `pem` (as `GET /v1/mesh` shows it).
fn pem_fingerprint(pem: &str) -> String {
    weft_certs::TrustBundle::from_pem(pem)
        .ok()
        .and_then(|b| {
            b.roots()
                .first()
                .map(|r| weft_certs::pin::fingerprint(r.as_ref()))
        })
        .unwrap_or_default()
}

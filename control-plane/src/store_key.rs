//! The key that encrypts the control plane's secrets at rest in a shared store (etcd): 32 bytes read
//! from `--store-key-file`, given to every replica and never written to the store, a log or an error.
//!
//! Sealing is AES-256-GCM (aws-lc-rs, already the TLS provider) with a random 96-bit nonce per value
//! and the value's name as associated data, so a sealed value moved under another name does not open.

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The key's length in bytes.
pub const KEY_LEN: usize = 32;
/// The algorithm's name in sealed values (so a later one can be told apart).
const ALG: &str = "AES-256-GCM";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the store key file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store key file {} is mode {mode:o}: it must be readable by its owner only (chmod 600 {})", .path.display(), .path.display())]
    Mode { path: PathBuf, mode: u32 },
    #[error("the store key file {} is owned by uid {owner}, not by the user weft-control runs as (uid {user})", .path.display())]
    Owner {
        path: PathBuf,
        owner: u32,
        user: u32,
    },
    #[error("the store key file {} holds {len} bytes: a store key is {KEY_LEN} raw bytes or {} hex digits", .path.display(), KEY_LEN * 2)]
    Length { path: PathBuf, len: usize },
    #[error("cannot write the store key file {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A sealed value as kept in the store: algorithm, nonce and ciphertext with its tag (hex).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sealed {
    pub alg: String,
    pub nonce: String,
    pub sealed: String,
}

/// A sealed value does not open under this key (another key, or it was altered).
#[derive(Debug, thiserror::Error)]
#[error("the value does not open with this key")]
pub struct OpenFailed;

/// The key and the file it came from (for messages; the bytes are never shown).
pub struct StoreKey {
    key: RandomizedNonceKey,
    path: PathBuf,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreKey({})", self.path.display())
    }
}

impl StoreKey {
    /// Reads `path`: owned by this user, no access for group or others, 32 raw bytes or 64 hex
    /// digits (a trailing newline allowed).
    pub fn read(path: &Path) -> Result<StoreKey, KeyFileError> {
        let read_err = |source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Mode {
                path: path.to_path_buf(),
                mode,
            });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let user = unsafe { libc::geteuid() };
        if meta.uid() != user {
            return Err(KeyFileError::Owner {
                path: path.to_path_buf(),
                owner: meta.uid(),
                user,
            });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let raw = decode_key(&bytes).ok_or(KeyFileError::Length {
            path: path.to_path_buf(),
            len: bytes.len(),
        })?;
        Ok(StoreKey::from_bytes(&raw, path))
    }

    fn from_bytes(raw: &[u8; KEY_LEN], path: &Path) -> StoreKey {
        StoreKey {
            key: RandomizedNonceKey::new(&AES_256_GCM, raw).expect("a 32-byte AES-256 key"),
            path: path.to_path_buf(),
        }
    }

    /// The file the key was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seals `plain` under `name` (associated data: it must be opened under the same name).
    pub fn seal(&self, name: &str, plain: &[u8]) -> Sealed {
        let mut buf = plain.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(name.as_bytes()), &mut buf)
            .expect("AES-GCM sealing of a small value does not fail");
        Sealed {
            alg: ALG.to_string(),
            nonce: hex::encode(nonce.as_ref()),
            sealed: hex::encode(buf),
        }
    }

    /// Opens what [`StoreKey::seal`] sealed under `name`.
    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<Vec<u8>, OpenFailed> {
        if sealed.alg != ALG {
            return Err(OpenFailed);
        }
        let nonce: [u8; NONCE_LEN] = hex::decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(OpenFailed)?;
        let mut buf = hex::decode(&sealed.sealed).map_err(|_| OpenFailed)?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .map_err(|_| OpenFailed)?;
        Ok(plain.to_vec())
    }
}

/// 32 raw bytes, or 64 hex digits with optional surrounding whitespace.
fn decode_key(bytes: &[u8]) -> Option<[u8; KEY_LEN]> {
    if bytes.len() == KEY_LEN {
        return bytes.try_into().ok();
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    hex::decode(text).ok()?.try_into().ok()
}

/// Writes a new random key to `path` as 64 hex digits, mode 0600; refuses to replace a file.
pub fn generate(path: &Path) -> Result<(), KeyFileError> {
    let write_err = |source| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut raw = [0u8; KEY_LEN];
    aws_lc_rs::rand::fill(&mut raw)
        .map_err(|_| write_err(std::io::Error::other("no randomness")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    f.write_all(format!("{}\n", hex::encode(raw)).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weft-store-key-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_generated_key_seals_and_opens_and_another_key_or_name_does_not_open() {
        let dir = temp("seal");
        let (a, b) = (dir.join("a.key"), dir.join("b.key"));
        generate(&a).unwrap();
        generate(&b).unwrap();
        assert!(
            generate(&a).is_err(),
            "an existing key file is never replaced"
        );
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (ka, kb) = (StoreKey::read(&a).unwrap(), StoreKey::read(&b).unwrap());
        let sealed = ka.seal("ca.key", b"-----BEGIN PRIVATE KEY-----");
        assert!(!sealed.sealed.contains(&hex::encode(b"PRIVATE KEY")));
        assert_eq!(
            ka.open("ca.key", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(kb.open("ca.key", &sealed).is_err());
        assert!(ka.open("operator.token", &sealed).is_err());
        assert_ne!(ka.seal("ca.key", b"x").nonce, ka.seal("ca.key", b"x").nonce);
        assert!(!format!("{ka:?}").contains(&std::fs::read_to_string(&a).unwrap()[..8]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_file_open_to_others_or_of_the_wrong_length_is_refused_naming_it() {
        let dir = temp("refuse");
        let raw = dir.join("raw.key");
        std::fs::write(&raw, [7u8; KEY_LEN]).unwrap();
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o400)).unwrap();
        StoreKey::read(&raw).unwrap();
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = StoreKey::read(&raw).unwrap_err().to_string();
        assert!(
            e.contains(&raw.display().to_string()) && e.contains("644"),
            "{e}"
        );
        let short = dir.join("short.key");
        std::fs::write(&short, "abcd\n").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = StoreKey::read(&short).unwrap_err().to_string();
        assert!(
            e.contains(&short.display().to_string()) && e.contains("5 bytes"),
            "{e}"
        );
        let e = StoreKey::read(&dir.join("none")).unwrap_err().to_string();
        assert!(e.contains("none"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

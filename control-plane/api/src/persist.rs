//! State files that must survive a restart, written so a crash never leaves a torn file behind and a
//! damaged one is noticed rather than silently replaced.
//!
//! A state file is one header line, `weft-state v1 len=<bytes> sha256=<hex>`, followed by the JSON payload.
//! Reading checks the length (torn write) and the digest (corruption) before parsing.

use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::path::{Path, PathBuf};

const MAGIC: &str = "weft-state v1";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged: {reason}; restore it from a backup or move it away to start without it"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("record {0} is no longer there")]
    Gone(String),
    /// The store is a service (etcd) that did not answer: nothing was read or written.
    #[error("{store} is unavailable: {reason}")]
    Unavailable { store: String, reason: String },
    /// A record read from a store service is damaged (named by its key).
    #[error("{key} in {store} is damaged: {reason}")]
    CorruptRecord {
        store: String,
        key: String,
        reason: String,
    },
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a mix: temp file,
/// fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let tmp = with_suffix(path, ".tmp");
    if let Err(source) = write_synced(&tmp, bytes, mode) {
        // A partial temp file (a full disk) is removed: it would hold space and is never read.
        let _ = std::fs::remove_file(&tmp);
        return Err(StateError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        });
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        StateError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        }
    })?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            // Makes the rename itself durable; a failure here loses nothing already written.
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn write_synced(tmp: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

impl StateError {
    /// What kind of storage failure this is, for the answer an operator gets.
    pub fn storage(&self) -> Storage {
        let source = match self {
            StateError::Io { source, .. } => source,
            StateError::Unavailable { .. } => return Storage::Unavailable,
            _ => return Storage::Other,
        };
        match source.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Storage::Full,
            std::io::ErrorKind::ReadOnlyFilesystem => Storage::ReadOnly,
            _ => Storage::Other,
        }
    }
}

/// Why a state file could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// No space (or quota) left: 507 to the operator; it passes when space returns.
    Full,
    /// The file system is read-only: 503; it passes when it is writable again.
    ReadOnly,
    /// The store service (etcd) does not answer: 503; it passes when it is reachable again.
    Unavailable,
    Other,
}

/// Serializes `value` into a checksummed state file.
pub fn write_json<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), StateError> {
    write_payload(path, &to_payload(value), mode)
}

/// The JSON payload [`write_json`] writes for `value` (what a storage backend holds as a record).
pub fn to_payload<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("state types always serialize")
}

/// Writes an already serialized JSON payload as a checksummed state file.
pub fn write_payload(path: &Path, payload: &[u8], mode: u32) -> Result<(), StateError> {
    let digest = hex::encode(Sha256::digest(payload));
    let mut out = format!("{MAGIC} len={} sha256={digest}\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    write_atomic(path, &out, mode)
}

/// Reads a state file written by [`write_json`]. `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let Some(payload) = read_payload(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&payload)
        .map(Some)
        .map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("its content does not parse: {e}"),
        })
}

/// The checked JSON payload of a state file written by [`write_payload`]. `Ok(None)` when it does not
/// exist.
pub fn read_payload(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let payload = check_envelope(&bytes).map_err(corrupt)?;
    Ok(Some(payload.to_vec()))
}

/// Returns the payload if the header's length and digest match it.
fn check_envelope(bytes: &[u8]) -> Result<&[u8], String> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line (empty or truncated file)")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "header is not text")?;
    let rest = header
        .strip_prefix(MAGIC)
        .ok_or_else(|| format!("header {header:?} is not `{MAGIC} ...`"))?;
    let mut len = None;
    let mut sha = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("len=") {
            len = v.parse::<usize>().ok();
        } else if let Some(v) = part.strip_prefix("sha256=") {
            sha = Some(v);
        }
    }
    let (len, sha) = len.zip(sha).ok_or("header lacks len= or sha256=")?;
    let payload = &bytes[nl + 1..];
    if payload.len() != len {
        return Err(format!(
            "torn write: header promises {len} bytes, file holds {}",
            payload.len()
        ));
    }
    if hex::encode(Sha256::digest(payload)) != sha {
        return Err("checksum mismatch: the content changed after it was written".into());
    }
    Ok(payload)
}

pub fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of the test's own, removed when the test ends: a process id alone is reused, and a
    /// file left by an earlier run would be read as this run's.
    struct Tmp(PathBuf);

    impl Tmp {
        fn file(&self) -> PathBuf {
            self.0.join("state.json")
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmp(name: &str) -> Tmp {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "weft-persist-{}-{nanos}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }

    #[test]
    fn round_trip_and_missing() {
        let dir = tmp("rt");
        let p = dir.file();
        assert!(read_json::<Vec<u32>>(&p).unwrap().is_none());
        write_json(&p, &vec![1u32, 2, 3], 0o600).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), Some(vec![1, 2, 3]));
    }

    #[test]
    fn torn_and_corrupt_files_are_refused_with_the_path() {
        let dir = tmp("bad");
        let p = dir.file();
        write_json(&p, &vec!["a".to_string(); 50], 0o600).unwrap();
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 7]).unwrap();
        let e = read_json::<Vec<String>>(&p).unwrap_err().to_string();
        assert!(e.contains("torn write") && e.contains("state.json"), "{e}");

        let mut flipped = full.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x01;
        std::fs::write(&p, &flipped).unwrap();
        let e = read_json::<Vec<String>>(&p).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");

        std::fs::write(&p, b"").unwrap();
        let e = read_json::<Vec<String>>(&p).unwrap_err().to_string();
        assert!(e.contains("no header"), "{e}");
    }
}

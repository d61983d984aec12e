//! The lock a control plane serving a state directory holds on it (`DIR/weft-control.lock`, an
//! flock), so `weft-control migrate` can refuse to copy a state directory that is still being
//! written. Serving takes it shared (several control planes may serve one directory, a standby
//! taking over); migrating takes it exclusive. The kernel drops it when the process goes, however it
//! ends, so a killed control plane leaves no stale lock.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "weft-control.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Someone holds it the other way.
    #[error("{} is locked: {held_by}", .path.display())]
    Held {
        path: PathBuf,
        held_by: &'static str,
    },
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

fn take(dir: &Path, op: i32, held_by: &'static str) -> Result<StateLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let open_err = |source| LockError::Open {
        path: path.clone(),
        source,
    };
    if !path.exists() {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(open_err)?;
    }
    // Held open read-only: a file open for writing would keep the state directory's file system
    // from being remounted read-only.
    let file = std::fs::File::open(&path).map_err(open_err)?;
    // SAFETY: flock on an fd we own; LOCK_NB returns at once when it is held the other way.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        return Err(LockError::Held { path, held_by });
    }
    Ok(StateLock { _file: file })
}

/// Taken by a control plane serving `dir`, for as long as it runs.
pub fn serving(dir: &Path) -> Result<StateLock, LockError> {
    take(
        dir,
        libc::LOCK_SH,
        "it is being migrated (weft-control migrate)",
    )
}

/// Taken by `weft-control migrate`: fails while a control plane serves `dir`.
pub fn exclusive(dir: &Path) -> Result<StateLock, LockError> {
    take(
        dir,
        libc::LOCK_EX,
        "a weft-control is running on this state directory",
    )
}

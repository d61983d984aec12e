//! Each pod's app gets a user of its own (see docs/pods.md, "Users and permissions"): with one shared
//! uid, apps of different pods could signal and trace each other, read each other's
//! `/proc/<pid>/environ` and open each other's private files. The runner hands out uids from
//! [`APP_UIDS`] (above normal accounts, so no `/etc/passwd` entry is needed) and records the choice in
//! `pod.json` (`appUser`).
//!
//! A uid is claimed with an flock on `CLAIMS_DIR/<uid>` that the runner holds for the pod's life: the
//! claim is host-wide (runners of every network and run directory see it), atomic, and gone when the
//! runner is, however it ends. A uid that still owns a process is skipped too: a leftover of a pod
//! whose runner was killed hard keeps its uid out of use.

use super::record::Lock;
use super::sandbox::RunAs;
use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::Path;

/// The uids (and gids) handed out to pods' apps; `--user` may not name one.
pub const APP_UIDS: RangeInclusive<u32> = 200_000..=265_535;

/// Where runners claim uids (tmpfs: claims do not outlive a boot, and a dead runner's lock is free).
pub const CLAIMS_DIR: &str = "/run/weft-app-uids";

/// A uid held for one pod: released when dropped (or when the runner dies).
pub struct Claim {
    pub user: RunAs,
    _lock: Lock,
}

/// Claims the lowest uid of [`APP_UIDS`] that no runner holds and that owns no process.
pub fn claim(dir: &Path) -> std::io::Result<Option<Claim>> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let taken = process_uids();
    for uid in APP_UIDS.filter(|u| !taken.contains(u)) {
        if let Some(lock) = try_lock(&dir.join(uid.to_string()))? {
            return Ok(Some(Claim {
                user: RunAs { uid, gid: uid },
                _lock: lock,
            }));
        }
    }
    Ok(None)
}

/// Kills what still runs as `user`, a uid of [`APP_UIDS`] whose runner is gone, unless a runner holds
/// it again (then its processes are that pod's). Returns whether it did.
pub fn kill_left(dir: &Path, user: RunAs) -> bool {
    match try_lock(&dir.join(user.uid.to_string())) {
        Ok(Some(_held)) => {
            super::sandbox::kill_all_of(user);
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(%user, error = %e, "cannot check the uid's claim; its processes are left");
            false
        }
    }
}

/// An exclusive lock on `path` if no one holds it.
fn try_lock(path: &Path) -> std::io::Result<Option<Lock>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on an fd we own; LOCK_NB returns at once when another runner holds it.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(Lock::new(f)));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// The uids that own a process on this host (the owner of `/proc/<pid>`).
fn process_uids() -> BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_pid))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.uid())
        .collect()
}

fn is_pid(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_freed_uids_are_used_again() {
        // SAFETY: getuid has no preconditions.
        assert!(process_uids().contains(&unsafe { libc::getuid() }));
        let dir = std::env::temp_dir().join(format!("weft-uid-claims-{}", std::process::id()));
        let a = claim(&dir).unwrap().expect("a free uid");
        assert!(APP_UIDS.contains(&a.user.uid) && a.user.gid == a.user.uid);
        let b = claim(&dir).unwrap().expect("a second uid");
        assert!(b.user.uid > a.user.uid, "{} then {}", a.user, b.user);
        let first = a.user.uid;
        drop(a);
        let c = claim(&dir).unwrap().expect("the freed uid");
        assert_eq!(c.user.uid, first);
        // A held uid is not someone's leftovers.
        assert!(!kill_left(&dir, b.user));
        drop((b, c));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Each pod's app gets a user of its own (see docs/pods.md, "Users and permissions"): with one shared
//! uid, apps of different pods could signal and trace each other, read each other's
//! `/proc/<pid>/environ` and open each other's private files. The runner hands out uids from
//! [`APP_UIDS`] (above normal accounts, so no `/etc/passwd` entry is needed), unique among the live pods
//! of every network under the run directory, under a lock of the run directory (`users.lock`), and
//! records the choice in `pod.json` (`appUser`) where the next runner sees it.

use super::record::{self, Lock, NetworkDir};
use super::sandbox::RunAs;
use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// The uids (and gids) handed out to pods' apps.
pub const APP_UIDS: RangeInclusive<u32> = 200_000..=265_535;

/// Locks the run directory's uid allocation; hold it until the pod's record (with its uid) is written.
pub fn lock(run_dir: &Path) -> std::io::Result<Lock> {
    std::fs::create_dir_all(run_dir)?;
    record::lock_file(&run_dir.join("users.lock"))
}

/// A user no live pod of any network under `run_dir` runs its app as, and that owns no process (a
/// leftover of a pod whose runner was killed keeps its uid out of reach). Call under [`lock`].
pub fn allocate(run_dir: &Path) -> Option<RunAs> {
    let mut taken = pod_uids(run_dir);
    taken.extend(process_uids());
    let uid = first_free(&taken)?;
    Some(RunAs { uid, gid: uid })
}

/// The lowest uid of [`APP_UIDS`] not in `taken` (freed uids are used again).
fn first_free(taken: &BTreeSet<u32>) -> Option<u32> {
    APP_UIDS.into_iter().find(|u| !taken.contains(u))
}

/// The app uids of pods whose runner is alive, in every network under `run_dir`.
fn pod_uids(run_dir: &Path) -> BTreeSet<u32> {
    super::networks(run_dir, None)
        .iter()
        .flat_map(|net| NetworkDir::new(run_dir, net).pods())
        .filter(|p| record::alive(p.runner_pid))
        .filter_map(|p| p.app_user.map(|u| u.uid))
        .collect()
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
    fn the_lowest_free_uid_is_handed_out() {
        let first = *APP_UIDS.start();
        assert_eq!(first_free(&BTreeSet::new()), Some(first));
        let taken: BTreeSet<u32> = [first, first + 1, first + 3].into();
        assert_eq!(first_free(&taken), Some(first + 2));
        let all: BTreeSet<u32> = APP_UIDS.collect();
        assert_eq!(first_free(&all), None);
    }

    #[test]
    fn uids_owning_processes_are_skipped() {
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert!(process_uids().contains(&me));
        let run_dir = std::env::temp_dir().join(format!("weft-users-{}", std::process::id()));
        let got = allocate(&run_dir).expect("a free uid");
        assert!(APP_UIDS.contains(&got.uid) && got.gid == got.uid, "{got}");
        let _ = std::fs::remove_dir_all(&run_dir);
    }
}

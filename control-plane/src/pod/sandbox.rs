//! What keeps a pod's app in its place: the users the app and the sidecar run as, the capabilities
//! they lose, and who may read the pod's files (see docs/pods.md, "Users and permissions").
//!
//! The app runs as an unprivileged user with no capabilities (by default one of its own per pod, see
//! [`super::users`]), so it can neither change the pod's rules, mark its sockets, nor read the
//! sidecar's key and token, nor touch another pod's app; the sidecar runs as a user of its own (which
//! `init` exempts from interception, shared by every pod's sidecar) with no capabilities either.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The sidecar's default user and group (Istio's 1337).
pub const DEFAULT_PROXY_UID: u32 = 1337;

/// A user and group to run as (`UID[:GID]`; the group defaults to the uid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl std::str::FromStr for RunAs {
    type Err = String;
    fn from_str(s: &str) -> Result<RunAs, String> {
        let num = |part: &str, what: &str| {
            part.parse::<u32>()
                .map_err(|_| format!("`{s}`: the {what} must be a number (UID[:GID])"))
        };
        let (uid, gid) = match s.split_once(':') {
            Some((u, g)) => (num(u, "uid")?, num(g, "gid")?),
            None => {
                let u = num(s, "uid")?;
                (u, u)
            }
        };
        if uid == 0 || gid == 0 {
            return Err(format!(
                "`{s}`: root (uid or gid 0) owns the mesh's keys and the pod's rules; give an unprivileged user"
            ));
        }
        Ok(RunAs { uid, gid })
    }
}

impl std::fmt::Display for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// `setpriv` arguments that become `who` with no supplementary groups, no capabilities (inheritable,
/// ambient and bounding set) and no way to gain any (no_new_privs), then run the program after `--`.
pub fn setpriv_args(who: RunAs) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={}", who.uid),
        format!("--regid={}", who.gid),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--ambient-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

/// SIGKILL to every process running as `who`, sent as that user: `kill -1` reaches exactly the
/// processes it may signal, its own. Only for a uid nothing else uses (a pod's own app user): what
/// the app left running (a child it detached) goes with the pod instead of outliving it.
pub fn kill_all_of(who: RunAs) {
    let done = std::process::Command::new("setpriv")
        .args(setpriv_args(who))
        .args(["sh", "-c", "kill -s KILL -- -1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Err(e) = done {
        tracing::warn!(user = %who, error = %e, "cannot kill the processes the app left");
    }
}

/// Where `program` is found (a path as given, else the first match on PATH).
pub fn resolve(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether `who` may run `program`: every directory on the way searchable and the file executable
/// by that user (by owner, group or other bits, as the kernel decides). The error names the step.
pub fn check_executable(program: &str, who: RunAs) -> Result<PathBuf, String> {
    let path = resolve(program).ok_or_else(|| format!("`{program}` not found on PATH"))?;
    let abs = std::path::absolute(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = std::fs::metadata(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", abs.display()));
    }
    for dir in abs.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !allowed(&m, who, 0o1) {
            return Err(format!(
                "{} cannot be run by uid {}: the directory {} is not searchable by that user (mode {:o}); put the program somewhere it can reach",
                abs.display(),
                who.uid,
                dir.display(),
                m.mode() & 0o7777
            ));
        }
    }
    if !allowed(&meta, who, 0o1) {
        return Err(format!(
            "{} is not executable by uid {} (mode {:o}, owner {})",
            abs.display(),
            who.uid,
            meta.mode() & 0o7777,
            meta.uid()
        ));
    }
    Ok(abs)
}

/// The permission bits (`bit` 1 = execute, 4 = read) that apply to `who` for a file.
fn allowed(m: &std::fs::Metadata, who: RunAs, bit: u32) -> bool {
    let mode = m.mode();
    if m.uid() == who.uid {
        mode & (bit << 6) != 0
    } else if m.gid() == who.gid {
        mode & (bit << 3) != 0
    } else {
        mode & bit != 0
    }
}

/// The pod's directory and what the runner wrote into it become the sidecar's, readable by no one
/// else (0700): the app cannot read its sidecar's token, key or config. `pods/` above it lists no
/// names to other users (0711). `sidecar.log` and `pod.json` stay the runner's (it opens the log for
/// the sidecar, and the record names the pids `weftctl pod delete` signals).
pub fn hand_pod_dir_to(dir: &Path, proxy: RunAs) -> std::io::Result<()> {
    use std::os::unix::fs::chown;
    if let Some(pods) = dir.parent() {
        std::fs::set_permissions(pods, std::fs::Permissions::from_mode(0o711))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    chown(dir, Some(proxy.uid), Some(proxy.gid))?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        if !matches!(entry.file_name().to_str(), Some("sidecar.log" | "pod.json")) {
            chown(entry.path(), Some(proxy.uid), Some(proxy.gid))?;
        }
    }
    Ok(())
}

/// Whether the sidecar's user can reach its pod directory (every directory above it searchable).
pub fn check_reachable(dir: &Path, proxy: RunAs) -> Result<(), String> {
    for d in dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(d) else {
            continue;
        };
        if !allowed(&m, proxy, 0o1) {
            return Err(format!(
                "the sidecar's user (uid {}) cannot reach {}: {} is not searchable by it (mode {:o}); use a --run-dir it can traverse",
                proxy.uid,
                dir.display(),
                d.display(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse_and_root_is_refused() {
        assert_eq!(
            "1001".parse::<RunAs>().unwrap(),
            RunAs {
                uid: 1001,
                gid: 1001
            }
        );
        assert_eq!(
            "1001:2000".parse::<RunAs>().unwrap(),
            RunAs {
                uid: 1001,
                gid: 2000
            }
        );
        for bad in ["0", "0:5", "5:0", "root", "1001:", ":5"] {
            assert!(bad.parse::<RunAs>().is_err(), "{bad}");
        }
        assert!("0".parse::<RunAs>().unwrap_err().contains("root"));
    }

    #[test]
    fn setpriv_drops_everything() {
        let a = setpriv_args(RunAs { uid: 7, gid: 8 }).join(" ");
        assert_eq!(
            a,
            "setpriv --reuid=7 --regid=8 --clear-groups --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs --"
        );
    }

    #[test]
    fn executables_are_checked_for_the_user() {
        let who = RunAs {
            uid: 4242,
            gid: 4242,
        };
        assert!(check_executable("sh", who).is_ok());
        let dir = std::env::temp_dir().join(format!("weft-sandbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = dir.join("prog");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_executable(prog.to_str().unwrap(), who).unwrap_err();
        assert!(e.contains("not executable by uid 4242"), "{e}");
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_executable(prog.to_str().unwrap(), who).unwrap_err();
        assert!(e.contains("not searchable"), "{e}");
        assert!(check_executable("no-such-program-anywhere", who)
            .unwrap_err()
            .contains("not found"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Locating the workspace's real binaries. The first call in a test process runs `cargo build --bins`
//! once, so a test never runs a stale binary; `WEFT_SKIP_BUILD=1` skips that when the caller already built.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Path of a workspace binary (`weft-proxy`, `weftctl`), built in the same profile as the tests.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        if std::env::var_os("WEFT_SKIP_BUILD").is_some() {
            return Ok(());
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--quiet", "--bins", "--workspace"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build --bins failed: {s}")),
            Err(e) => Err(format!("cannot run cargo: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let p = target_dir().join(profile).join(name);
    assert!(
        exists(&p),
        "{} not found; run `cargo build --bins` first",
        p.display()
    );
    p
}

fn exists(p: &Path) -> bool {
    p.metadata().map(|m| m.is_file()).unwrap_or(false)
}

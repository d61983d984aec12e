//! The watched configuration directory (`--config-dir`): every `*.yaml` / `*.yml` file in it, read again
//! whenever anything in the directory changes.
//!
//! Uses `notify` (inotify on Linux) rather than polling, so a change is picked up within the debounce
//! (200 ms) rather than a polling period. Editors that save by rename, and `kubectl`-style tools that swap
//! a symlinked directory, both produce events on the directory itself, which is what is watched.

use notify::{RecursiveMode, Watcher as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use weft_api::operator::SourceFile;

const DEBOUNCE: Duration = Duration::from_millis(200);
/// A larger file is not read (the directory is refused, the last good state stays): twice the largest
/// apply, far above any real resource file.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads every resource file in `dir`, sorted by name.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<SourceFile>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p)?.len();
            if len > MAX_FILE_BYTES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: {len} bytes; the limit is {MAX_FILE_BYTES} bytes per file",
                        p.display()
                    ),
                ));
            }
            Ok(SourceFile {
                text: std::fs::read_to_string(&p)?,
                name: p.display().to_string(),
            })
        })
        .collect()
}

/// Watches `dir` and calls `on_change` with its full contents after each burst of changes (and once at
/// start). Runs until the returned guard is dropped.
pub fn watch(
    dir: PathBuf,
    mut on_change: impl FnMut(std::io::Result<Vec<SourceFile>>) + Send + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.kind.is_access() => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(e) => tracing::warn!(error = %e, "config directory watch error"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    on_change(read_all(&dir));
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Gather the rest of the burst (an editor's write + rename, a `cp` of several files).
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            // Reading and checking the files takes a blocking-pool thread, not a runtime worker.
            let d = dir.clone();
            let run = tokio::task::spawn_blocking(move || {
                on_change(read_all(&d));
                on_change
            });
            match run.await {
                Ok(f) => on_change = f,
                Err(e) => return tracing::error!(error = %e, "config directory reload failed"),
            }
        }
    });
    Ok(watcher)
}

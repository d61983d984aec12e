//! A small file system of its own for a test's state directory (a tmpfs of a fixed size, mounted on a
//! directory of the test's), so a test can fill it up or make it read-only and give it back. Unmounted
//! on drop, also on panic. Needs root (mount); under `WEFT_E2E_REQUIRE=1` its absence fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallFs {
    dir: PathBuf,
    filler: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `kib` KiB on `dir` (created if missing). `None` (the test skips) when this
    /// machine cannot mount one and `WEFT_E2E_REQUIRE` is not set.
    pub fn mount(dir: &Path, kib: u64, test: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).expect("create mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700")])
            .arg(format!("weft-test-{test}"))
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs {
                dir: dir.to_path_buf(),
                filler: dir.join(".filler"),
            }),
            other => {
                let msg = format!("{test}: cannot mount a tmpfs (needs root): {other:?}");
                if std::env::var("WEFT_E2E_REQUIRE").as_deref() == Ok("1") {
                    panic!("{msg} (WEFT_E2E_REQUIRE=1)");
                }
                eprintln!("SKIPPED {msg}");
                None
            }
        }
    }

    /// Writes a filler file until the file system says it is full.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(&self.filler).expect("create filler");
        let block = vec![0u8; 4096];
        loop {
            match f.write_all(&block).and_then(|_| f.sync_all()) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
                Err(e) => panic!("filling {}: {e}", self.dir.display()),
            }
        }
    }

    /// Gives the space back.
    pub fn free(&self) {
        std::fs::remove_file(&self.filler).expect("remove filler");
    }

    pub fn read_only(&self, ro: bool) {
        let opt = if ro { "remount,ro" } else { "remount,rw" };
        let ok = Command::new("mount")
            .args(["-o", opt])
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount -o {opt} {}", self.dir.display());
    }

    /// Files left whose names end in `.tmp` (a write that failed half-way must not leave one).
    pub fn temp_files(&self) -> Vec<PathBuf> {
        walk(&self.dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
            .collect()
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

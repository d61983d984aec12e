//! The resource files `apply -f` sends: files as named, every `*.yaml` / `*.yml` directly inside a
//! directory (sorted by name), or stdin for `-`. Texts go to the control plane unparsed, so its errors
//! point at the operator's own file and line.

use std::io::Read;
use std::path::{Path, PathBuf};
use weft_api::operator::SourceFile;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not UTF-8 text", .path.display())]
    NotText { path: PathBuf },
    #[error("{} holds no *.yaml or *.yml file (subdirectories are not read)", .dir.display())]
    EmptyDir { dir: PathBuf },
    #[error("cannot read stdin: {0}")]
    Stdin(std::io::Error),
    #[error("`-` (stdin) can be given only once")]
    StdinTwice,
}

/// Reads every source named on the command line, in order; a file reached twice is sent once.
pub fn collect(paths: &[PathBuf], stdin: &mut dyn Read) -> Result<Vec<SourceFile>, FilesError> {
    let mut out = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut stdin_used = false;
    for p in paths {
        if p.as_os_str() == "-" {
            if std::mem::replace(&mut stdin_used, true) {
                return Err(FilesError::StdinTwice);
            }
            out.push(read_stdin(stdin)?);
            continue;
        }
        let files = if is_dir(p)? {
            dir_files(p)?
        } else {
            vec![p.clone()]
        };
        for f in files {
            // Canonical paths catch `dir` and `dir/a.yaml`, or `./a.yaml` and `a.yaml`.
            let id = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
            if !seen.contains(&id) {
                seen.push(id);
                out.push(read_file(&f)?);
            }
        }
    }
    Ok(out)
}

fn is_dir(p: &Path) -> Result<bool, FilesError> {
    std::fs::metadata(p)
        .map(|m| m.is_dir())
        .map_err(|source| FilesError::Read {
            path: p.to_path_buf(),
            source,
        })
}

/// `*.yaml` and `*.yml` files directly inside `dir`, sorted by name.
fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, FilesError> {
    let read_err = |source| FilesError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        // `is_file` follows symlinks, as mounted config directories use them.
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(FilesError::EmptyDir {
            dir: dir.to_path_buf(),
        });
    }
    files.sort();
    Ok(files)
}

fn read_file(path: &Path) -> Result<SourceFile, FilesError> {
    let bytes = std::fs::read(path).map_err(|source| FilesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| FilesError::NotText {
        path: path.to_path_buf(),
    })?;
    Ok(SourceFile {
        name: path.display().to_string(),
        text,
    })
}

fn read_stdin(stdin: &mut dyn Read) -> Result<SourceFile, FilesError> {
    let mut bytes = Vec::new();
    stdin.read_to_end(&mut bytes).map_err(FilesError::Stdin)?;
    let text = String::from_utf8(bytes).map_err(|_| FilesError::NotText { path: "-".into() })?;
    Ok(SourceFile {
        name: "-".into(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("weftctl-files-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names(files: &[SourceFile], base: &Path) -> Vec<String> {
        files
            .iter()
            .map(|f| {
                f.name
                    .strip_prefix(&format!("{}/", base.display()))
                    .unwrap_or(&f.name)
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_directory_gives_its_yaml_files_sorted_and_not_its_subdirectories() {
        let d = Dir::new("dir");
        d.write("b.yml", "b");
        d.write("a.yaml", "a");
        d.write("notes.txt", "x");
        d.write("c.yaml.bak", "x");
        d.write("sub/d.yaml", "d");
        std::fs::create_dir_all(d.0.join("e.yaml")).unwrap(); // a directory named like a file
        let got = collect(std::slice::from_ref(&d.0), &mut std::io::empty()).unwrap();
        assert_eq!(names(&got, &d.0), ["a.yaml", "b.yml"]);
        assert_eq!(got[0].text, "a");
    }

    #[test]
    fn files_keep_their_names_and_order_and_are_sent_once() {
        let d = Dir::new("order");
        let z = d.write("z.yaml", "z");
        let a = d.write("a.yaml", "a");
        let got = collect(
            &[z.clone(), a.clone(), z.clone(), d.0.clone()],
            &mut std::io::empty(),
        )
        .unwrap();
        assert_eq!(names(&got, &d.0), ["z.yaml", "a.yaml"]);
        assert_eq!(got[0].name, z.display().to_string());
    }

    #[test]
    fn stdin_is_read_once_and_named_dash() {
        let d = Dir::new("stdin");
        let a = d.write("a.yaml", "a");
        let mut input: &[u8] = b"kind: Service\n";
        let got = collect(&[a, "-".into()], &mut input).unwrap();
        assert_eq!(got[1].name, "-");
        assert_eq!(got[1].text, "kind: Service\n");
        let mut input: &[u8] = b"x";
        assert!(matches!(
            collect(&["-".into(), "-".into()], &mut input),
            Err(FilesError::StdinTwice)
        ));
    }

    #[test]
    fn problems_name_the_path() {
        let d = Dir::new("bad");
        let e = collect(std::slice::from_ref(&d.0), &mut std::io::empty())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds no *.yaml") && e.contains(&d.0.display().to_string()),
            "{e}"
        );

        let missing = d.0.join("missing.yaml");
        let e = collect(std::slice::from_ref(&missing), &mut std::io::empty())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");

        let bin = d.0.join("bin.yaml");
        std::fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
        let e = collect(std::slice::from_ref(&bin), &mut std::io::empty())
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("{} is not UTF-8 text", bin.display()));

        let mut input: &[u8] = &[0xff];
        let e = collect(&["-".into()], &mut input).unwrap_err().to_string();
        assert_eq!(e, "- is not UTF-8 text");
    }
}

//! Rotating the store key (`weft-control store-key rotate --old FILE --new FILE --store etcd://...`,
//! docs/operations.md "Rotating the store key"): against a real etcd and a real replica, the CA key
//! and the operator token are re-sealed under the new key in one transaction; a replica restarted
//! with the old key is refused naming the file, with the new one it serves the same CA and operator
//! token, and a rotation whose --old key is not the one in use is refused, naming that file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft::bins::bin;
use weft::control::ControlProc;
use weft::etcd::EtcdProc;
use weft::net::free_addr;
use weft::pki::TempDir;

const PREFIX: &str = "/rotate/";

fn rotate(etcd: &EtcdProc, old: &Path, new: &Path) -> (Option<i32>, String) {
    let out = Command::new(bin("weft-control"))
        .args(["store-key", "rotate", "--old"])
        .arg(old)
        .arg("--new")
        .arg(new)
        .args(["--store", &etcd.url(), "--etcd-prefix", PREFIX])
        .output()
        .expect("run weft-control store-key rotate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Starts a replica expected to refuse; returns its exit code and stderr.
fn refused(etcd: &EtcdProc, key: &Path) -> (Option<i32>, String) {
    let dir = TempDir::new("rotate-refused");
    let mut child = Command::new(bin("weft-control"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--store", &etcd.url(), "--etcd-prefix", PREFIX])
        .arg("--store-key-file")
        .arg(key)
        .args(["--api-listen", &free_addr().to_string()])
        .args(["--operator-listen", &free_addr().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft-control");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("weft-control with the old key did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

#[test]
fn a_rotated_store_key_opens_the_mesh_and_the_old_one_is_refused_naming_its_file() {
    let Some(etcd) = EtcdProc::start("rotate") else {
        return;
    };
    let old = etcd.key_file();
    let keys = TempDir::new("rotate-keys");
    let new = keys.path().join("new.key");
    weft_control::store_key::generate(&new).unwrap();
    let args = |key: &Path| -> Vec<String> {
        vec![
            "--store".into(),
            etcd.url(),
            "--etcd-prefix".into(),
            PREFIX.into(),
            "--store-key-file".into(),
            key.to_string_lossy().into_owned(),
        ]
    };
    let old_args = args(&old);
    let old_args: Vec<&str> = old_args.iter().map(String::as_str).collect();
    let mut cp = ControlProc::start_with("rotate-a", None, &old_args);
    let mesh = cp.api("GET", "/v1/mesh", None);
    let token = cp.operator_token();

    // A rotation naming a key that is not the one in use is refused, naming that file.
    let (code, text) = rotate(&etcd, &new, &old);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&new.display().to_string()) && text.contains("does not decrypt"),
        "{text}"
    );

    let (code, text) = rotate(&etcd, &old, &new);
    assert_eq!(code, Some(0), "{text}");
    println!("{text}");

    // The running replica keeps serving; restarted with the old key it is refused.
    cp.api("GET", "/v1/status", None);
    cp.kill9();
    let (code, err) = refused(&etcd, &old);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "the key in {} does not decrypt the CA stored in etcd",
            old.display()
        )),
        "{err}"
    );

    // With the new key: the same CA and the same operator token.
    let new_args = args(&new);
    cp.extra_args = new_args;
    cp.restart();
    let again = cp.api("GET", "/v1/mesh", None);
    assert_eq!(again["caFingerprint"], mesh["caFingerprint"]);
    assert_eq!(cp.operator_token(), token);
}

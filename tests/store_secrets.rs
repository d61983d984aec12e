//! The mesh CA and the operator token in etcd (`--store etcd://... --store-key-file FILE`): two
//! replicas started at once on an empty prefix end with one CA and one operator token, and a proxy
//! that joined through one renews through the other; the CA key in etcd is sealed (no PEM, no key
//! bytes); a replica with no key file, a wrong key, a key file open to others or of the wrong
//! length refuses to start, naming the file (and one asking for another trust domain, naming it).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft::bins::bin;
use weft::control::ControlProc;
use weft::etcd::EtcdProc;
use weft::mesh::MeshProxyBuilder;
use weft::net::free_addr;
use weft::pki::TempDir;
use weft_control::backend::etcd::{EtcdBackend, EtcdOptions};
use weft_control::store_key::{Sealed, StoreKey};

fn args<'a>(store: &'a str, prefix: &'a str, key: &'a Path) -> [&'a str; 6] {
    [
        "--store",
        store,
        "--etcd-prefix",
        prefix,
        "--store-key-file",
        key.to_str().unwrap(),
    ]
}

fn ca_fingerprint(cp: &ControlProc) -> String {
    let mesh = cp.api("GET", "/v1/mesh", None);
    let fp = mesh["caFingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(fp.starts_with("sha256:"), "{mesh}");
    fp
}

/// Leaves of 20 s, so the proxy renews (at 60-70% of that) during the test.
const SHORT_LEAVES: &str = "apiVersion: weft.dev/v1
kind: MeshConfig
metadata:
  name: default
spec:
  certificateTtl: 20s
";

#[test]
fn two_replicas_started_at_once_on_an_empty_prefix_share_one_ca_and_one_operator_token() {
    let Some(etcd) = EtcdProc::start("secrets-race") else {
        return;
    };
    let (store, key) = (etcd.url(), etcd.key_file());
    let args = args(&store, "/race/", &key);
    let (mut a, mut b) = std::thread::scope(|s| {
        let a = s.spawn(|| ControlProc::start_with("race-a", None, &args));
        let b = s.spawn(|| ControlProc::start_with("race-b", None, &args));
        (a.join().unwrap(), b.join().unwrap())
    });

    // One CA: the same fingerprint in both logs and in both `GET /v1/mesh`; exactly one created it.
    let fp = ca_fingerprint(&a);
    assert_eq!(ca_fingerprint(&b), fp);
    for cp in [&a, &b] {
        assert!(cp.log().contains(&fp), "{}", cp.log());
        let local_key = cp.state_dir().join("ca/ca.key");
        assert!(!local_key.exists(), "{} was written", local_key.display());
    }
    let created = [&a, &b]
        .iter()
        .filter(|cp| {
            cp.log()
                .contains("created the mesh CA and the operator credential in etcd")
        })
        .count();
    assert_eq!(created, 1, "A:\n{}\nB:\n{}", a.log(), b.log());

    // One operator token: A's is accepted by B.
    let token = a.operator_token();
    assert_eq!(b.operator_token(), token);
    let (status, text) = b.request("GET", "/v1/tokens", None, true).unwrap();
    assert_eq!(status, 200, "{text}");

    let renewed_through = renews_through_the_other(&mut a, &mut b);
    println!("one CA {fp}; the proxy renewed through {renewed_through}");
}

/// A proxy given both addresses joins through one with a token made on `a`; with that replica gone
/// it moves to the other, which trusts its certificate and renews it. Returns the other's address.
fn renews_through_the_other(a: &mut ControlProc, b: &mut ControlProc) -> std::net::SocketAddr {
    a.api(
        "POST",
        "/v1/apply",
        Some(
            &serde_json::json!({"files": [{"name": "mesh.yaml", "text": SHORT_LEAVES}]})
                .to_string(),
        ),
    );
    let addrs = format!("[{}, {}]", a.api, b.api);
    let proxy = MeshProxyBuilder::new(a, "client-1", "default", "client")
        .control_address(&addrs)
        .token(&a.token("default", "client", 600))
        .start();
    // Which of the two it joined through (its order of addresses is its own).
    let open_on = |cp: &ControlProc| format!("config stream open control={}", cp.api);
    let deadline = Instant::now() + Duration::from_secs(10);
    let on_a = loop {
        let log = proxy.log();
        if log.contains(&open_on(a)) || log.contains(&open_on(b)) {
            break log.contains(&open_on(a));
        }
        assert!(Instant::now() < deadline, "no config stream:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (first, other) = if on_a { (a, &*b) } else { (b, &*a) };
    let renewed_before = proxy.metric("weft_proxy_cert_renewals_total", &["result=\"ok\""]);
    first.kill9();
    let moved = format!("control plane failover from={} to={}", first.api, other.api);
    assert!(
        proxy.wait_log(&moved, Duration::from_secs(20)),
        "{}",
        proxy.log()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.metric("weft_proxy_cert_renewals_total", &["result=\"ok\""]) <= renewed_before {
        assert!(
            Instant::now() < deadline,
            "no renewal through {}:\n{}\n{}",
            other.api,
            proxy.log(),
            other.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    other.api
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs weft-control with `extra` on etcd and waits for it to exit (it must, within 20 s).
fn refused(store: &str, extra: &[&str]) -> (i32, String) {
    let dir = TempDir::new("control-refused");
    let mut child = Command::new(bin("weft-control"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--store", store, "--etcd-prefix", "/sealed/"])
        .args(["--api-listen", &free_addr().to_string()])
        .args(["--operator-listen", &free_addr().to_string()])
        .args(extra)
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
            panic!("weft-control {extra:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

fn store_key(out: &Path) -> std::process::Output {
    Command::new(bin("weft-control"))
        .args(["store-key", "--out"])
        .arg(out)
        .output()
        .expect("run weft-control store-key")
}

/// The CA key as sealed in etcd, opened with `key`: its DER bytes and PEM body lines.
fn opened_ca_key(raw: &[u8], key: &StoreKey) -> (Vec<u8>, Vec<String>) {
    let stored: serde_json::Value = serde_json::from_slice(raw).unwrap();
    let sealed: Sealed = serde_json::from_value(stored["key"].clone()).unwrap();
    let pem = String::from_utf8(key.open("ca", &sealed).unwrap()).unwrap();
    let der = rustls_pemfile::private_key(&mut pem.as_bytes())
        .unwrap()
        .expect("a private key");
    let lines = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect();
    (der.secret_der().to_vec(), lines)
}

#[test]
fn the_ca_key_is_sealed_in_etcd_and_a_replica_without_the_right_key_refuses_to_start() {
    let Some(etcd) = EtcdProc::start("secrets-sealed") else {
        return;
    };
    let dir = TempDir::new("store-keys");
    let key_path = dir.path().join("store.key");
    let made = store_key(&key_path);
    assert!(made.status.success(), "{made:?}");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        !store_key(&key_path).status.success(),
        "a key file was replaced"
    );

    let store = etcd.url();
    let a = ControlProc::start_with("sealed-a", None, &args(&store, "/sealed/", &key_path));
    assert!(!a.state_dir().join("ca/ca.key").exists());

    // The raw values in etcd: no PEM, no key bytes (raw or hex), no operator token in the clear.
    let etcd_client = EtcdBackend::connect(&EtcdOptions {
        endpoints: vec![etcd.client.to_string()],
        prefix: "/sealed/".into(),
        ..Default::default()
    })
    .unwrap();
    let raw = etcd_client
        .get_secret("ca")
        .unwrap()
        .expect("the CA in etcd");
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let (der, lines) = opened_ca_key(&raw, &StoreKey::read(&key_path).unwrap());
    assert!(!raw.windows(16).any(|w| der.windows(16).any(|d| d == w)));
    assert!(!text.contains(&hex(&der[der.len() - 32..])), "{text}");
    for line in lines {
        assert!(!text.contains(&line), "PEM line {line} in {text}");
    }
    let token = etcd_client
        .get_secret("operator-token")
        .unwrap()
        .expect("the token in etcd");
    assert!(!String::from_utf8_lossy(&token).contains(&a.operator_token()));

    assert_refusals(&store, dir.path(), &key_path);

    // The right key still opens it: a second replica starts and shares the CA.
    let b = ControlProc::start_with("sealed-b", None, &args(&store, "/sealed/", &key_path));
    assert_eq!(ca_fingerprint(&b), ca_fingerprint(&a));
}

/// Exit code non-zero, and the message names the flag or the file: no key file, another key, a key
/// file open to others, one of the wrong length; and the right key with another trust domain.
fn assert_refusals(store: &str, dir: &Path, key_path: &Path) {
    let right = key_path.to_str().unwrap();
    let (code, err) = refused(
        store,
        &["--store-key-file", right, "--trust-domain", "other.test"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("trust domain other.test was asked for")
            && err.contains("/sealed/secrets/ca is for mesh.test"),
        "{err}"
    );

    let (code, err) = refused(store, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--store-key-file"), "{err}");

    let other = dir.join("other.key");
    assert!(store_key(&other).status.success());
    let (code, err) = refused(store, &["--store-key-file", other.to_str().unwrap()]);
    assert_ne!(code, 0);
    let want = format!(
        "the key in {} does not decrypt the CA stored in etcd at /sealed/secrets/ca",
        other.display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains(&std::fs::read_to_string(&other).unwrap().trim()[..16]));

    let open: PathBuf = dir.join("open.key");
    std::fs::copy(key_path, &open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = refused(store, &["--store-key-file", open.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&open.display().to_string()) && err.contains("644"),
        "{err}"
    );

    let short = dir.join("short.key");
    std::fs::write(&short, [1u8; 16]).unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = refused(store, &["--store-key-file", short.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&short.display().to_string()) && err.contains("16 bytes"),
        "{err}"
    );
}

//! The control plane's state directory: created on first start, reused by every later one.
//!
//! ```text
//! DIR/ca/ca.crt, ca.key, bundle.crt   mesh CA (root, or intermediate + root)
//! DIR/operator.token                  bearer credential for the operator API (0600)
//! DIR/control.crt, control.key        the control plane's own serving certificate (renewed while running)
//! DIR/revocations.json                issued leaf serials and the revocations in force
//! DIR/tokens.json                     join tokens (secrets hashed)
//! DIR/claims.json                     workload claims bound to certificate serials
//! DIR/resources.json                  resources applied through the API
//! DIR/registry.json                   registered workloads, kept across restarts
//! ```
//! With `--store etcd://...` the CA and the operator token live in etcd ([`crate::shared_ca`]); the
//! directory then holds the serving credential and copies of `ca/ca.crt`, `ca/bundle.crt` and
//! `operator.token` (for weftctl on the same machine), never `ca/ca.key`.
//!
//! JSON state files are checksummed (see [`crate::persist`]); a damaged one stops start-up with its path.
//!
//! Every start tightens the directory to 0700 (and `ca/` too) and the key and token files to 0600, so a
//! workload on the same machine reads none of it; what had to be changed is logged.

use crate::ca_dir::CaDir;
use crate::persist;
use anyhow::{bail, Context as _};
use rand::RngCore as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use weft_certs::{Credential, Identity, KeyAndCsr, SpiffeId, TrustBundle, TrustDomain, Validity};

/// The control plane's own identity, under the trust domain: `spiffe://<td>/ns/weft-system/sa/weft-control`.
pub fn control_plane_id(td: &TrustDomain) -> SpiffeId {
    SpiffeId::for_workload(td, "weft-system", "weft-control")
        .expect("fixed, valid namespace and service account")
}

pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of the serving certificate; it is renewed at two thirds of it while running.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

pub struct StateDir {
    pub dir: PathBuf,
    pub ca: CaDir,
    pub trust_domain: TrustDomain,
    pub bundle_pem: String,
    pub operator_token: String,
    /// Serving credential: leaf, CA chain and the root (so a proxy pinning the root's fingerprint finds it).
    pub serving: Identity,
}

impl StateDir {
    /// Opens `dir`, creating what is missing. `td` (from the flag or MeshConfig) must match the CA's
    /// trust domain when the CA already exists.
    /// `serving_ttl` is the lifetime of a newly issued serving certificate.
    pub fn open_or_init(
        dir: &Path,
        td: Option<&TrustDomain>,
        serving_ttl: Duration,
    ) -> anyhow::Result<StateDir> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        tighten(dir, 0o700)?;
        let ca_dir = dir.join("ca");
        let ca = if ca_dir.join("ca.key").exists() {
            let ca = CaDir::open(&ca_dir)?;
            if let Some(td) = td {
                if td != ca.ca.trust_domain() {
                    bail!(
                        "trust domain {td} was asked for, but the CA in {} is for {}; the trust domain is fixed when the state directory is created",
                        ca_dir.display(),
                        ca.ca.trust_domain()
                    );
                }
            }
            ca
        } else {
            let td = td.cloned().unwrap_or_else(default_trust_domain);
            tracing::info!(trust_domain = %td, dir = %ca_dir.display(), "creating the mesh CA");
            CaDir::init(&ca_dir, &td, CA_VALIDITY, false)?
        };
        let bundle_path = ca_dir.join("bundle.crt");
        let bundle_pem = std::fs::read_to_string(&bundle_path)
            .with_context(|| format!("cannot read {}", bundle_path.display()))?;
        let operator_token = operator_token(&dir.join("operator.token"))?;
        Self::finish(dir, ca, bundle_pem, operator_token, serving_ttl)
    }

    /// Opens `dir` for a replica whose CA and operator token live in a shared store (etcd): the
    /// directory keeps its own serving credential, and copies of what is not secret or what weftctl
    /// on this machine reads (`ca/ca.crt`, `ca/bundle.crt`, `operator.token`), rewritten from the
    /// store at every start. The CA key is never written here.
    pub fn open_shared(
        dir: &Path,
        shared: crate::shared_ca::SharedSecrets,
        serving_ttl: Duration,
    ) -> anyhow::Result<StateDir> {
        let ca_dir = dir.join("ca");
        std::fs::create_dir_all(&ca_dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        tighten(dir, 0o700)?;
        if ca_dir.join("ca.key").exists() {
            tracing::warn!(path = %ca_dir.join("ca.key").display(), "a CA key in the state directory is ignored: the mesh CA is the one stored in etcd");
        }
        persist::write_atomic(&ca_dir.join("ca.crt"), shared.chain_pem.as_bytes(), 0o644)?;
        persist::write_atomic(
            &ca_dir.join("bundle.crt"),
            shared.bundle_pem.as_bytes(),
            0o644,
        )?;
        persist::write_atomic(
            &dir.join("operator.token"),
            format!("{}\n", shared.operator_token).as_bytes(),
            0o600,
        )?;
        let ca = CaDir {
            dir: ca_dir,
            ca: shared.ca,
        };
        Self::finish(
            dir,
            ca,
            shared.bundle_pem,
            shared.operator_token,
            serving_ttl,
        )
    }

    /// The serving credential (reused or issued from `ca`) and the rest, once the CA is known.
    fn finish(
        dir: &Path,
        ca: CaDir,
        bundle_pem: String,
        operator_token: String,
        serving_ttl: Duration,
    ) -> anyhow::Result<StateDir> {
        let trust_domain = ca.ca.trust_domain().clone();
        let bundle = TrustBundle::from_pem(&bundle_pem)
            .with_context(|| format!("{} is damaged", ca.dir.join("bundle.crt").display()))?;
        let (serving_chain_pem, serving_key_pem) = serving_credential(dir, &ca, serving_ttl)?;
        tighten_secrets(dir)?;
        let serving = Identity::new(
            Credential::from_pem(&serving_chain_pem, &serving_key_pem)?,
            bundle,
        )?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            ca,
            trust_domain,
            bundle_pem,
            operator_token,
            serving,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Files holding secrets: private keys, the operator credential, join tokens.
const SECRETS: [&str; 4] = ["ca/ca.key", "control.key", "operator.token", "tokens.json"];

/// Sets `path`'s mode to `mode` when it allows anyone else more; says so.
fn tighten(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let old = meta.permissions().mode() & 0o7777;
    if old & !mode == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot restrict {} to {mode:o}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{old:o}"),
        now = format!("{mode:o}"),
        "state file or directory was readable by others; restricted"
    );
    Ok(())
}

fn tighten_secrets(dir: &Path) -> anyhow::Result<()> {
    tighten(&dir.join("ca"), 0o700)?;
    for name in SECRETS {
        tighten(&dir.join(name), 0o600)?;
    }
    Ok(())
}

pub fn default_trust_domain() -> TrustDomain {
    TrustDomain::new("cluster.local").expect("valid trust domain")
}

fn operator_token(path: &Path) -> anyhow::Result<String> {
    if path.exists() {
        let t = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let t = t.trim().to_string();
        if t.len() < 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "{} is damaged (expected 64 hex digits); move it away to have a new one made",
                path.display()
            );
        }
        return Ok(t);
    }
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = hex::encode(raw);
    persist::write_atomic(path, format!("{token}\n").as_bytes(), 0o600)?;
    tracing::info!(path = %path.display(), "created the operator credential");
    Ok(token)
}

/// The serving certificate (chain PEM, key PEM), reused while more than a third of its life is left
/// (and no more than `ttl`).
fn serving_credential(dir: &Path, ca: &CaDir, ttl: Duration) -> anyhow::Result<(String, String)> {
    let (crt, key) = (dir.join("control.crt"), dir.join("control.key"));
    if crt.exists() && key.exists() {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let (chain_pem, key_pem) = (read(&crt)?, read(&key)?);
        let cred = Credential::from_pem(&chain_pem, &key_pem)
            .with_context(|| format!("{} or {} is damaged", crt.display(), key.display()))?;
        let life = cred
            .not_after()
            .duration_since(cred.not_before())
            .unwrap_or_default();
        let left = cred
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // A credential from another CA (a directory reused for another mesh) is replaced.
        let same_ca = chain_pem.contains(ca.ca.root_pem().trim());
        if same_ca && left > life / 3 && left <= ttl + Duration::from_secs(60) {
            return Ok((chain_pem, key_pem));
        }
        if same_ca {
            tracing::info!("serving certificate is near its expiry (or longer-lived than asked); issuing a new one");
        } else {
            tracing::info!("serving certificate was issued by another CA; issuing a new one");
        }
    }
    issue_serving(dir, &ca.ca, ttl)
}

/// Signs a new serving certificate for the control plane's identity, lasting `ttl`, and saves it
/// (key first, so the files never pair a new certificate with an old key).
pub fn issue_serving(
    dir: &Path,
    ca: &weft_certs::CertificateAuthority,
    ttl: Duration,
) -> anyhow::Result<(String, String)> {
    let (crt, key) = (dir.join("control.crt"), dir.join("control.key"));
    let id = control_plane_id(ca.trust_domain());
    let kc = KeyAndCsr::generate(&id)?;
    let chain = ca.sign_csr(kc.csr_pem(), &id, Validity::starting_now(ttl))?;
    let chain = chain + &ca.root_pem();
    persist::write_atomic(&key, kc.key_pem().as_bytes(), 0o600)?;
    persist::write_atomic(&crt, chain.as_bytes(), 0o644)?;
    Ok((chain, kc.key_pem().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_and_later_starts_reuse() {
        let dir = std::env::temp_dir().join(format!("weft-statedir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let td = TrustDomain::new("mesh.test").unwrap();
        let a = StateDir::open_or_init(&dir, Some(&td), SERVING_VALIDITY).unwrap();
        let b = StateDir::open_or_init(&dir, None, SERVING_VALIDITY).unwrap();
        assert_eq!(a.operator_token, b.operator_token);
        assert_eq!(a.bundle_pem, b.bundle_pem);
        assert_eq!(
            a.serving.credential().serial_hex(),
            b.serving.credential().serial_hex()
        );
        assert_eq!(b.serving.id(), control_plane_id(&td));
        let other = TrustDomain::new("other.test").unwrap();
        let e = StateDir::open_or_init(&dir, Some(&other), SERVING_VALIDITY)
            .err()
            .unwrap();
        assert!(e.to_string().contains("fixed"), "{e}");
        std::fs::write(dir.join("operator.token"), "x").unwrap();
        let e = StateDir::open_or_init(&dir, None, SERVING_VALIDITY)
            .err()
            .unwrap();
        assert!(e.to_string().contains("operator.token"), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn start_up_restricts_the_directory_and_its_secrets() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("weft-statedir-perm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StateDir::open_or_init(&dir, None, SERVING_VALIDITY).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let loosen = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        assert_eq!(mode(&dir), 0o700);
        loosen(&dir, 0o777);
        loosen(&dir.join("ca"), 0o755);
        for f in ["ca/ca.key", "operator.token", "control.key"] {
            loosen(&dir.join(f), 0o644);
        }
        StateDir::open_or_init(&dir, None, SERVING_VALIDITY).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca")), 0o700);
        for f in ["ca/ca.key", "operator.token", "control.key"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert_eq!(
            mode(&dir.join("ca/ca.crt")),
            0o644,
            "certificates stay readable"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

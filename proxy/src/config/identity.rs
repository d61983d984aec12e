//! Where the proxy's identity comes from: certificate files (`identity:`, explicit mode) or a control
//! plane (`control:`, which also needs the `workload` to register).

use super::control_address::ControlAddresses;
use super::{Invalid, ProxyConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Files that make up the proxy's identity. Relative paths are relative to the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFiles {
    /// PEM: the leaf certificate followed by any intermediates.
    pub cert: PathBuf,
    /// PEM: the leaf's PKCS#8 private key.
    pub key: PathBuf,
    /// PEM: the trust bundle (one or more root certificates).
    pub bundle: PathBuf,
}

/// Where identity and config come from when a control plane runs the mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The control plane's proxy API (TLS): `IP:PORT`, `HOST:PORT` (resolved at each connect attempt,
    /// to any number of addresses) or a list of them, for control-plane replicas. The proxy spreads
    /// its first pick, fails over to the next on loss, and checks the same identity on every one.
    pub address: ControlAddresses,
    /// PEM bundle of the mesh CA: pins who the control plane may be. This, or `ca_fingerprint`.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// SHA-256 fingerprint of the mesh CA's root certificate (`sha256:AB:CD:...`, as weft-control logs
    /// it at start): the root is taken from the control plane's chain only if it matches.
    #[serde(default)]
    pub ca_fingerprint: Option<String>,
    /// The identity the control plane must present; default
    /// `spiffe://<trust domain>/ns/weft-system/sa/weft-control`.
    #[serde(default)]
    pub server_identity: Option<weft_certs::SpiffeId>,
    /// A file holding the join token (or set `WEFT_JOIN_TOKEN`); needed only without a cached certificate.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where the key (0600), certificate, bundle and the last good config are kept across restarts,
    /// and the key of a join under way (0600), so a retry after a lost answer asks for the same key.
    pub state_dir: PathBuf,
}

impl ControlConfig {
    /// Every address entry parses, the mesh CA is pinned exactly one way, and a fingerprint reads as one.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        self.address
            .parse()
            .map_err(|(field, reason)| Invalid::new(field, reason))?;
        match (&self.ca_bundle, &self.ca_fingerprint) {
            (Some(_), None) => Ok(()),
            (None, Some(fp)) => weft_certs::pin::parse_fingerprint(fp)
                .map(|_| ())
                .map_err(|e| Invalid::new("control.ca_fingerprint", e.to_string())),
            _ => Err(Invalid::new(
                "control",
                "pin the mesh CA with exactly one of `ca_bundle` and `ca_fingerprint`",
            )),
        }
    }
}

/// Exactly one source of identity, and a `workload` exactly when that source is a control plane.
pub(super) fn check_sources(cfg: &ProxyConfig) -> Result<(), Invalid> {
    match (&cfg.identity, &cfg.control, &cfg.workload) {
        (Some(_), None, None) | (None, Some(_), Some(_)) => Ok(()),
        (None, None, _) => Err(Invalid::new(
            "identity",
            "give `identity` (certificate files) or `control` (a control plane)",
        )),
        (Some(_), Some(_), _) => Err(Invalid::new(
            "control",
            "`identity` and `control` exclude each other",
        )),
        (None, Some(_), None) => Err(Invalid::new(
            "workload",
            "with `control`, `workload` says what to register",
        )),
        (Some(_), None, Some(_)) => Err(Invalid::new(
            "workload",
            "`workload` is registered with a control plane; add `control`",
        )),
    }
}

//! Workload claims bound to certificates: a proxy that joined with a token naming a workload (and its
//! labels) may register only that workload, with exactly those labels.
//!
//! The claim is bound to the serial number of the certificate the token obtained, carried to each
//! renewed certificate's serial, and persisted (`<state-dir>/claims.json`, one entry per serial; on
//! etcd one key per serial, `<prefix>claims/<serial>`), so a restart keeps it. Bindings are dropped
//! by the leader's sweep once their certificate can no longer renew (a day after it expired,
//! `EXPIRED_RENEWAL_GRACE`). A certificate with no binding (joined with
//! a token without a claim, or issued offline by the operator) is limited only by its identity.

use crate::backend::election::{LeaderGuard, LedError};
use crate::backend::{self, dir::DirBackend, Collection, Expect, SharedBackend, WriteError};
use crate::persist::StateError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use weft_api::control::Registration;
use weft_api::resources::Labels;
use weft_certs::SpiffeId;

/// What one certificate may register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    pub identity: SpiffeId,
    pub workload: String,
    pub labels: Labels,
    /// The certificate's expiry (unix seconds): the binding goes with it.
    pub not_after: u64,
}

/// Why a registration is refused; each names the field and the identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error(
        "workload.name {asked:?} is refused for {identity}: its join token allows only {allowed:?}"
    )]
    Name {
        identity: SpiffeId,
        asked: String,
        allowed: String,
    },
    #[error("workload.labels {asked} are refused for {identity}: its join token allows exactly {allowed}")]
    Labels {
        identity: SpiffeId,
        asked: String,
        allowed: String,
    },
}

impl ClaimError {
    pub fn label(&self) -> &'static str {
        match self {
            ClaimError::Name { .. } => "claim_name",
            ClaimError::Labels { .. } => "claim_labels",
        }
    }
}

/// A workload name: what a pod name may be (lowercase letters, digits, '-', '.'; at most 253).
pub fn check_workload_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "workload name {name:?} must be lowercase letters, digits, '-' or '.'"
        ))
    }
}

pub struct ClaimStore {
    store: SharedBackend,
    /// By certificate serial (lowercase hex).
    by_serial: BTreeMap<String, Claim>,
}

impl ClaimStore {
    pub fn open(path: PathBuf) -> Result<ClaimStore, StateError> {
        ClaimStore::open_in(Arc::new(DirBackend::file(Collection::Claims, path)))
    }

    pub fn open_in(store: SharedBackend) -> Result<ClaimStore, StateError> {
        let by_serial = read_all(&*store)?;
        Ok(ClaimStore { store, by_serial })
    }

    /// Reads the claims again (another replica bound some).
    pub fn reload(&mut self) -> Result<(), StateError> {
        self.by_serial = read_all(&*self.store)?;
        Ok(())
    }

    /// Binds `claim` to the certificate `serial`, durably: an error means the certificate must not be
    /// handed out (it would carry no claim). Each serial is its own record, written only if absent,
    /// so binds through several replicas at once all land.
    pub fn bind(&mut self, serial: &str, claim: Claim) -> Result<(), StateError> {
        let payload = weft_api::persist::to_payload(&claim);
        match self
            .store
            .put(Collection::Claims, serial, &payload, Expect::Absent)
        {
            Ok(_) => {}
            // A serial is issued once; the same binding made again (a retried write) is no change.
            Err(WriteError::Conflict(_)) => {
                let stored = self.store.get(Collection::Claims, serial)?;
                let same = stored
                    .map(|r| {
                        backend::parse::<Claim>(&*self.store, Collection::Claims, serial, &r.value)
                    })
                    .transpose()?
                    .is_some_and(|c| c == claim);
                if !same {
                    return Err(StateError::Gone(format!(
                        "claims/{serial} (bound to another claim meanwhile)"
                    )));
                }
            }
            Err(WriteError::State(e)) => return Err(e),
        }
        self.by_serial.insert(serial.to_string(), claim);
        Ok(())
    }

    /// Deletes the bindings of certificates past renewal (a day after they expired) from the store:
    /// the leader's sweep, each delete guarded by `guard`. Returns how many went.
    pub fn sweep(&mut self, now: u64, guard: &LeaderGuard) -> Result<usize, LedError> {
        let grace = crate::proxy_api::EXPIRED_RENEWAL_GRACE.as_secs();
        let listing = self.store.list(Collection::Claims)?;
        let mut swept = 0;
        for (serial, rec) in listing.records {
            let Ok(claim) =
                backend::parse::<Claim>(&*self.store, Collection::Claims, &serial, &rec.value)
            else {
                continue;
            };
            if claim.not_after.saturating_add(grace) > now {
                continue;
            }
            match self.store.delete_led(
                Collection::Claims,
                &serial,
                Expect::Version(rec.version),
                guard,
            ) {
                Ok(()) => {
                    self.by_serial.remove(&serial);
                    swept += 1;
                }
                Err(LedError::Write(WriteError::Conflict(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(swept)
    }

    pub fn get(&self, serial: &str) -> Option<&Claim> {
        self.by_serial.get(serial)
    }

    /// Checks a registration by the certificate `serial` of `identity` against its claim, if any.
    pub fn check(
        &self,
        serial: Option<&str>,
        identity: &SpiffeId,
        reg: &Registration,
    ) -> Result<(), ClaimError> {
        let Some(claim) = serial.and_then(|s| self.get(s)) else {
            return Ok(());
        };
        if reg.name != claim.workload {
            return Err(ClaimError::Name {
                identity: identity.clone(),
                asked: reg.name.clone(),
                allowed: claim.workload.clone(),
            });
        }
        if reg.labels != claim.labels {
            return Err(ClaimError::Labels {
                identity: identity.clone(),
                asked: show(&reg.labels),
                allowed: show(&claim.labels),
            });
        }
        Ok(())
    }
}

/// Writes each claim of the one record (an older etcd store) as its own key, if absent, then
/// removes the record. Left for the next read when etcd fails meanwhile.
fn split_whole(store: &dyn crate::backend::Backend, all: &BTreeMap<String, Claim>, version: u64) {
    let written = all.iter().all(|(serial, claim)| {
        let payload = weft_api::persist::to_payload(claim);
        matches!(
            store.put(Collection::Claims, serial, &payload, Expect::Absent),
            Ok(_) | Err(WriteError::Conflict(_))
        )
    });
    if written {
        let _ = store.delete(
            Collection::Claims,
            crate::backend::WHOLE,
            Expect::Version(version),
        );
    }
}

/// Every claim stored, one record per serial.
fn read_all(store: &dyn crate::backend::Backend) -> Result<BTreeMap<String, Claim>, StateError> {
    let mut out = BTreeMap::new();
    for (serial, rec) in store.list(Collection::Claims)?.records {
        // An etcd store written when the claims were one record (`claims/all`): read as it is.
        if serial == crate::backend::WHOLE {
            if let Ok(all) = serde_json::from_slice::<BTreeMap<String, Claim>>(&rec.value) {
                split_whole(store, &all, rec.version);
                out.extend(all);
                continue;
            }
        }
        out.insert(
            serial.clone(),
            backend::parse(store, Collection::Claims, &serial, &rec.value)?,
        );
    }
    Ok(out)
}

fn show(labels: &Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::now_secs;

    fn reg(name: &str, labels: &[(&str, &str)]) -> Registration {
        Registration {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            address: "198.18.0.2".parse().unwrap(),
            tunnel_port: 15008,
            ports: vec![],
            ready: true,
        }
    }

    #[test]
    fn a_bound_certificate_registers_only_its_claim_and_the_binding_persists() {
        let dir = std::env::temp_dir().join(format!("weft-claims-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("claims.json");
        let _ = std::fs::remove_file(&path);
        let id = SpiffeId::parse("spiffe://t.local/ns/default/sa/reviews").unwrap();
        let mut store = ClaimStore::open(path.clone()).unwrap();
        let claim = Claim {
            identity: id.clone(),
            workload: "reviews-1".into(),
            labels: reg("", &[("app", "reviews")]).labels,
            not_after: now_secs() + 600,
        };
        store.bind("0a", claim.clone()).unwrap();
        let expired = Claim {
            not_after: 1,
            ..claim
        };
        store.bind("0b", expired).unwrap();
        assert!(store.get("0b").is_some(), "pruned on the next bind");
        let store = ClaimStore::open(path).unwrap();
        let ok = reg("reviews-1", &[("app", "reviews")]);
        assert_eq!(store.check(Some("0a"), &id, &ok), Ok(()));
        let e = store
            .check(Some("0a"), &id, &reg("reviews-2", &[("app", "reviews")]))
            .unwrap_err();
        assert!(e.to_string().contains("workload.name"), "{e}");
        assert!(e.to_string().contains("sa/reviews"), "{e}");
        let e = store
            .check(Some("0a"), &id, &reg("reviews-1", &[("app", "x")]))
            .unwrap_err();
        assert!(e.to_string().contains("{app=x}"), "{e}");
        assert_eq!(store.check(Some("ff"), &id, &ok), Ok(()), "no binding");
        assert_eq!(store.check(None, &id, &ok), Ok(()));
    }
}

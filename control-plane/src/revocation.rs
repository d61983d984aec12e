//! Which workload certificates the control plane issued, and which of them are revoked.
//!
//! Every signed leaf is recorded (serial, identity, not-after, and the workload once its holder registers;
//! a renewal inherits the workload of the certificate that asked). Revoking a workload or an identity
//! denies its unexpired serials; the deny list goes to every proxy in its snapshot, to the control plane's
//! own verifier (port 15010), and refuses renewals. An identity or workload stays revoked until lifted, so
//! a new join or registration for it is refused too. Both lists are persisted: one record in the state
//! directory, one key per entry on etcd (`entries`); the leader's sweep drops records a day after
//! their certificate expired (`EXPIRED_RENEWAL_GRACE`: until then an
//! expired certificate may still ask to renew, and a revoked one must be refused). The deny list pushed
//! to proxies holds only unexpired serials, since peers refuse an expired leaf anyway.

use crate::backend::election::{LeaderGuard, LedError};
use crate::backend::{self, dir::DirBackend, Collection, Expect, SharedBackend, WriteError, WHOLE};
use crate::persist::StateError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use weft_api::operator::{Revocation, RevocationTarget, RevokedCertificate};
use weft_certs::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("{0} is already revoked")]
    AlreadyRevoked(RevocationTarget),
    #[error("{0} is not revoked")]
    NotRevoked(RevocationTarget),
    #[error("workload {0:?} must be NAMESPACE/NAME")]
    BadWorkload(String),
    #[error("cannot save the revocation list: {0}")]
    State(#[from] StateError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Issued {
    serial: String,
    identity: SpiffeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workload: Option<String>,
    not_after: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Revoked {
    target: RevocationTarget,
    revoked_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    issued: Vec<Issued>,
    revoked: Vec<Revoked>,
}

pub struct Revocations {
    store: Option<SharedBackend>,
    state: State,
}

/// `namespace/name` as a revocation target.
pub fn workload_target(key: &str) -> Result<RevocationTarget, RevocationError> {
    match key.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(RevocationTarget::Workload {
                namespace: ns.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(RevocationError::BadWorkload(key.to_string())),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Issued {
    fn covered_by(&self, target: &RevocationTarget) -> bool {
        match target {
            RevocationTarget::Identity(id) => &self.identity == id,
            RevocationTarget::Workload { namespace, name } => {
                self.workload.as_deref() == Some(&format!("{namespace}/{name}"))
            }
        }
    }
}

impl Revocations {
    /// Opens the list persisted at `path` (a new one if absent; `None`: kept in memory only).
    pub fn open(path: Option<PathBuf>) -> Result<Revocations, StateError> {
        Revocations::open_in(
            path.map(|p| Arc::new(DirBackend::file(Collection::Revocations, p)) as SharedBackend),
        )
    }

    /// [`Revocations::open`] on a storage backend (`None`: kept in memory only).
    pub fn open_in(store: Option<SharedBackend>) -> Result<Revocations, StateError> {
        let mut r = Revocations {
            store,
            state: State::default(),
        };
        r.reload()?;
        Ok(r)
    }

    /// Reads the lists again (another replica changed them).
    pub fn reload(&mut self) -> Result<(), StateError> {
        if let Some(b) = &self.store {
            self.state = if b.shared() {
                entries::read(&**b)?
            } else {
                backend::get_json(&**b, Collection::Revocations)?
                    .map(|(s, _)| s)
                    .unwrap_or_default()
            };
            self.prune(now());
        }
        Ok(())
    }

    /// The store when it keeps one key per entry (etcd), else `None` (the whole record is saved).
    fn keyed(&self) -> Option<&SharedBackend> {
        self.store.as_ref().filter(|b| b.shared())
    }

    /// Saves the issued certificate `serial` (its own key on etcd, the whole lists otherwise).
    fn save_issued(&self, serial: &str, expect: Expect) -> Result<(), StateError> {
        match (self.keyed(), self.issued(serial)) {
            (Some(b), Some(i)) => {
                entries::put_issued(&**b, i, expect).map_err(WriteError::into_state)
            }
            (Some(_), None) => Ok(()),
            (None, _) => self.save(),
        }
    }

    fn save(&self) -> Result<(), StateError> {
        match &self.store {
            Some(b) => backend::put_json(&**b, Collection::Revocations, &self.state).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Drops the records of certificates past use: expired longer ago than a renewal may follow
    /// expiry, so a revoked workload's expired certificate cannot renew either.
    fn prune(&mut self, now: u64) {
        let grace = crate::proxy_api::EXPIRED_RENEWAL_GRACE.as_secs();
        self.state
            .issued
            .retain(|i| i.not_after.saturating_add(grace) > now);
    }

    /// Drops from the store the records of certificates past use (the leader's sweep, guarded by
    /// `guard`; otherwise they went only with the next write); returns how many went.
    pub fn sweep(&mut self, now: u64, guard: &LeaderGuard) -> Result<usize, LedError> {
        let Some(b) = self.store.clone() else {
            self.prune(now);
            return Ok(0);
        };
        if b.shared() {
            let swept = entries::sweep(&*b, now, guard)?;
            self.prune(now);
            return Ok(swept);
        }
        let Some(rec) = b.get(Collection::Revocations, WHOLE)? else {
            return Ok(0);
        };
        let stored: State = backend::parse(&*b, Collection::Revocations, WHOLE, &rec.value)?;
        let before = stored.issued.len();
        let mut next = Revocations {
            store: None,
            state: stored,
        };
        next.prune(now);
        let swept = before - next.state.issued.len();
        if swept > 0 {
            let payload = weft_api::persist::to_payload(&next.state);
            match b.put_led(
                Collection::Revocations,
                WHOLE,
                &payload,
                Expect::Version(rec.version),
                guard,
            ) {
                Ok(_) => {}
                // Changed meanwhile: the next sweep prunes what is then stored.
                Err(LedError::Write(WriteError::Conflict(_))) => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        self.state = next.state;
        Ok(swept)
    }

    /// Records a newly signed leaf; `workload` is inherited from the certificate that renewed it.
    pub fn record(
        &mut self,
        serial: String,
        identity: SpiffeId,
        workload: Option<String>,
        not_after: u64,
    ) -> Result<(), StateError> {
        self.prune(now());
        self.state.issued.push(Issued {
            serial: serial.clone(),
            identity,
            workload,
            not_after,
        });
        let saved = self.save_issued(&serial, Expect::Absent);
        if saved.is_err() && self.keyed().is_some() {
            // Not stored as its own entry: not held either (the next reload would drop it).
            self.state.issued.pop();
        }
        saved
    }

    /// The workload a serial was bound to, if any.
    pub fn workload_of(&self, serial: &str) -> Option<String> {
        self.issued(serial).and_then(|i| i.workload.clone())
    }

    fn issued(&self, serial: &str) -> Option<&Issued> {
        self.state.issued.iter().find(|i| i.serial == serial)
    }

    /// Binds a serial to the workload its holder registered as (so revoking the workload denies it).
    pub fn bind_workload(&mut self, serial: &str, workload: &str) -> Result<(), StateError> {
        let Some(i) = self.state.issued.iter_mut().find(|i| i.serial == serial) else {
            return Ok(()); // Issued elsewhere (e.g. offline by an operator): nothing to bind.
        };
        if i.workload.as_deref() == Some(workload) {
            return Ok(());
        }
        i.workload = Some(workload.to_string());
        self.save_issued(serial, Expect::Any)
    }

    /// The revocation in force that covers this identity or workload, if any.
    pub fn revoked_target(
        &self,
        id: &SpiffeId,
        workload: Option<&str>,
    ) -> Option<&RevocationTarget> {
        self.state
            .revoked
            .iter()
            .map(|r| &r.target)
            .find(|t| match t {
                RevocationTarget::Identity(rid) => rid == id,
                RevocationTarget::Workload { namespace, name } => {
                    workload == Some(format!("{namespace}/{name}").as_str())
                }
            })
    }

    /// Whether `serial` is denied: it belongs to a revoked identity or workload.
    pub fn is_denied(&self, serial: &str) -> bool {
        self.issued(serial)
            .is_some_and(|i| self.state.revoked.iter().any(|r| i.covered_by(&r.target)))
    }

    /// Every unexpired denied serial, sorted (the snapshot's `revokedSerials`).
    pub fn denied_serials(&self) -> Vec<String> {
        let now = now();
        let mut out: Vec<String> = self
            .state
            .issued
            .iter()
            .filter(|i| i.not_after > now)
            .filter(|i| self.state.revoked.iter().any(|r| i.covered_by(&r.target)))
            .map(|i| i.serial.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn revoke(&mut self, target: RevocationTarget) -> Result<Revocation, RevocationError> {
        if self.state.revoked.iter().any(|r| r.target == target) {
            return Err(RevocationError::AlreadyRevoked(target));
        }
        let revoked = Revoked {
            target: target.clone(),
            revoked_at: now(),
        };
        if let Some(b) = self.keyed() {
            match entries::put_revoked(&**b, &revoked) {
                Ok(()) => {}
                // Revoked through another replica meanwhile.
                Err(WriteError::Conflict(_)) => {
                    self.reload()?;
                    return Err(RevocationError::AlreadyRevoked(target));
                }
                Err(WriteError::State(e)) => return Err(e.into()),
            }
            self.state.revoked.push(revoked);
            return Ok(self.view(self.state.revoked.last().expect("just pushed")));
        }
        self.state.revoked.push(revoked);
        if let Err(e) = self.save() {
            // Not in force unless it survives a restart: an operator must not believe it holds.
            self.state.revoked.pop();
            return Err(e.into());
        }
        Ok(self.view(self.state.revoked.last().expect("just pushed")))
    }

    pub fn unrevoke(&mut self, target: &RevocationTarget) -> Result<Revocation, RevocationError> {
        let Some(pos) = self.state.revoked.iter().position(|r| &r.target == target) else {
            return Err(RevocationError::NotRevoked(target.clone()));
        };
        let view = self.view(&self.state.revoked[pos]);
        let removed = self.state.revoked.remove(pos);
        let saved = match self.keyed() {
            Some(b) => entries::delete_revoked(&**b, target).map_err(WriteError::into_state),
            None => self.save(),
        };
        if let Err(e) = saved {
            self.state.revoked.insert(pos, removed);
            return Err(e.into());
        }
        Ok(view)
    }

    pub fn list(&self) -> Vec<Revocation> {
        self.state.revoked.iter().map(|r| self.view(r)).collect()
    }

    fn view(&self, r: &Revoked) -> Revocation {
        let now = now();
        Revocation {
            target: r.target.clone(),
            revoked_at: r.revoked_at,
            serials: self
                .state
                .issued
                .iter()
                .filter(|i| i.not_after > now && i.covered_by(&r.target))
                .map(|i| RevokedCertificate {
                    serial: i.serial.clone(),
                    identity: i.identity.clone(),
                    workload: i.workload.clone(),
                    not_after: i.not_after,
                })
                .collect(),
        }
    }
}

mod entries;

// === applying revocations ===

impl crate::server::ControlPlane {
    /// Revokes `target` and makes it hold at once: the deny list reaches the proxy API's verifier and the
    /// next push, and the revoked workloads leave the registry (their config streams close).
    pub fn revoke(&self, target: RevocationTarget) -> Result<Revocation, RevocationError> {
        let rev = self.issuer.revocations().revoke(target)?;
        self.metrics.revocation("revoke");
        tracing::warn!(target = %rev.target, certificates = rev.serials.len(), "revoked");
        self.apply_revocations();
        let removed = self.hub.remove_revoked(|key, reg| match &rev.target {
            RevocationTarget::Identity(id) => &reg.identity == id,
            RevocationTarget::Workload { namespace, name } => {
                key.as_str() == format!("{namespace}/{name}")
            }
        });
        for key in removed {
            tracing::warn!(proxy = %key, target = %rev.target, "workload removed from the registry and its config stream closed: revoked");
        }
        Ok(rev)
    }

    pub fn unrevoke(&self, target: &RevocationTarget) -> Result<Revocation, RevocationError> {
        let rev = self.issuer.revocations().unrevoke(target)?;
        self.metrics.revocation("unrevoke");
        tracing::info!(target = %rev.target, "revocation lifted");
        self.apply_revocations();
        Ok(rev)
    }

    /// Hands the current deny list to the proxy API's verifier, its open connections and the push.
    pub fn apply_revocations(&self) {
        let serials = self.issuer.revocations().denied_serials();
        self.metrics.set_revoked_serials(serials.len());
        self.serving
            .set_revoked(weft_certs::RevokedSerials::new(&serials));
        self.revocations_changed.send_modify(|n| *n += 1);
        self.hub.set_revoked(serials);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://t.local/ns/default/sa/{sa}")).unwrap()
    }

    #[test]
    fn revoking_denies_unexpired_serials_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("weft-revocation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("revocations.json");
        let _ = std::fs::remove_file(&path);
        let far = now() + 3600;
        let mut r = Revocations::open(Some(path.clone())).unwrap();
        r.record("aa".into(), id("web"), None, far).unwrap();
        r.bind_workload("aa", "default/web-1").unwrap();
        r.record("bb".into(), id("web"), r.workload_of("aa"), far)
            .unwrap();
        r.record("cc".into(), id("web"), None, far).unwrap();
        r.record("dd".into(), id("api"), None, far).unwrap();
        r.record(
            "ee".into(),
            id("web"),
            Some("default/web-1".into()),
            now() - 1,
        )
        .unwrap();
        let target = workload_target("default/web-1").unwrap();
        let rev = r.revoke(target.clone()).unwrap();
        assert_eq!(rev.serials.len(), 2, "{rev:?}");
        assert!(matches!(
            r.revoke(target.clone()),
            Err(RevocationError::AlreadyRevoked(_))
        ));
        let r = Revocations::open(Some(path.clone())).unwrap();
        assert_eq!(
            r.denied_serials(),
            vec!["aa", "bb"],
            "the expired one is gone"
        );
        assert!(r.is_denied("bb") && !r.is_denied("cc") && !r.is_denied("dd"));
        assert!(r
            .revoked_target(&id("web"), Some("default/web-1"))
            .is_some());
        assert!(r
            .revoked_target(&id("web"), Some("default/web-2"))
            .is_none());

        let mut r = r;
        r.revoke(RevocationTarget::Identity(id("web"))).unwrap();
        assert_eq!(r.denied_serials(), vec!["aa", "bb", "cc"]);
        r.unrevoke(&RevocationTarget::Identity(id("web"))).unwrap();
        r.unrevoke(&target).unwrap();
        assert!(r.denied_serials().is_empty());
        assert!(matches!(
            r.unrevoke(&target),
            Err(RevocationError::NotRevoked(_))
        ));
        assert!(workload_target("nope").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_expired_certificate_stays_denied_for_renewal_while_it_may_ask() {
        let mut r = Revocations::open(None).unwrap();
        r.record(
            "aa".into(),
            id("web"),
            Some("default/web-1".into()),
            now() - 600,
        )
        .unwrap();
        let grace = crate::proxy_api::EXPIRED_RENEWAL_GRACE.as_secs();
        r.record("bb".into(), id("web"), None, now() - grace - 1)
            .unwrap();
        // Recording prunes.
        r.record("cc".into(), id("api"), None, now() + 3600)
            .unwrap();
        r.revoke(workload_target("default/web-1").unwrap()).unwrap();
        // Refused if it asks to renew, but not pushed: peers refuse an expired leaf anyway.
        assert!(r.is_denied("aa"));
        assert_eq!(r.workload_of("aa").as_deref(), Some("default/web-1"));
        assert!(r.denied_serials().is_empty());
        // Past the grace the record goes.
        assert!(r.workload_of("bb").is_none() && r.issued("bb").is_none());
    }
}

//! The revocation lists on a shared store (etcd): one key per entry, so changes made through
//! several replicas at once all land. `<prefix>revocations/i:<serial>` is an issued certificate,
//! `<prefix>revocations/r:<target>` a revocation in force (`r:identity:<spiffe id>` or
//! `r:workload:<namespace>/<name>`). Creating a revocation is a write only if absent (two replicas
//! revoking the same target at once: one wins, the other finds it already revoked); lifting one
//! deletes its key. The state directory keeps its one `revocations.json`, as before.

use super::{Issued, Revoked, State};
use crate::backend::election::{LeaderGuard, LedError};
use crate::backend::{self, Backend, Collection, Expect, WriteError, WHOLE};
use crate::persist::StateError;
use weft_api::operator::RevocationTarget;

const ISSUED: &str = "i:";
const REVOKED: &str = "r:";

/// The key of an issued certificate.
pub(super) fn issued_key(serial: &str) -> String {
    format!("{ISSUED}{serial}")
}

/// The key of a revocation.
pub(super) fn revoked_key(target: &RevocationTarget) -> String {
    match target {
        RevocationTarget::Identity(id) => format!("{REVOKED}identity:{id}"),
        RevocationTarget::Workload { namespace, name } => {
            format!("{REVOKED}workload:{namespace}/{name}")
        }
    }
}

/// Every entry stored, revocations in the order they were made.
pub(super) fn read(b: &dyn Backend) -> Result<State, StateError> {
    let mut state = State::default();
    for (key, rec) in b.list(Collection::Revocations)?.records {
        if key == WHOLE {
            // Written when the lists were one record (an older etcd store, or `weft-control
            // migrate` copying `revocations.json`): its entries become keys of their own.
            let old: State = backend::parse(b, Collection::Revocations, &key, &rec.value)?;
            split_whole(b, &old, rec.version);
            state.issued.extend(old.issued);
            state.revoked.extend(old.revoked);
        } else if key.starts_with(ISSUED) {
            state.issued.push(backend::parse(
                b,
                Collection::Revocations,
                &key,
                &rec.value,
            )?);
        } else if key.starts_with(REVOKED) {
            state.revoked.push(backend::parse(
                b,
                Collection::Revocations,
                &key,
                &rec.value,
            )?);
        }
    }
    state.revoked.sort_by_key(|r| r.revoked_at);
    Ok(state)
}

/// Writes each entry of the one-record lists as its own key (if absent: another replica may be
/// doing the same), then removes the record. Left for the next read when etcd fails meanwhile.
fn split_whole(b: &dyn Backend, old: &State, version: u64) {
    let written = old
        .issued
        .iter()
        .map(|i| put_issued(b, i, Expect::Absent))
        .chain(old.revoked.iter().map(|r| put_revoked(b, r)))
        .all(|r| matches!(r, Ok(()) | Err(WriteError::Conflict(_))));
    if written {
        let _ = b.delete(Collection::Revocations, WHOLE, Expect::Version(version));
    } else {
        tracing::warn!("the revocation lists' one record is not split into keys yet; trying again at the next read");
    }
}

pub(super) fn put_issued(
    b: &dyn Backend,
    issued: &Issued,
    expect: Expect,
) -> Result<(), WriteError> {
    let payload = weft_api::persist::to_payload(issued);
    b.put(
        Collection::Revocations,
        &issued_key(&issued.serial),
        &payload,
        expect,
    )
    .map(|_| ())
}

/// Creates the revocation's key if absent: a conflict means it is already revoked.
pub(super) fn put_revoked(b: &dyn Backend, revoked: &Revoked) -> Result<(), WriteError> {
    let payload = weft_api::persist::to_payload(revoked);
    b.put(
        Collection::Revocations,
        &revoked_key(&revoked.target),
        &payload,
        Expect::Absent,
    )
    .map(|_| ())
}

pub(super) fn delete_revoked(b: &dyn Backend, target: &RevocationTarget) -> Result<(), WriteError> {
    b.delete(Collection::Revocations, &revoked_key(target), Expect::Any)
}

/// Deletes the issued certificates past use (see [`super::Revocations::sweep`]), each guarded.
pub(super) fn sweep(b: &dyn Backend, now: u64, guard: &LeaderGuard) -> Result<usize, LedError> {
    let grace = crate::proxy_api::EXPIRED_RENEWAL_GRACE.as_secs();
    let mut swept = 0;
    for (key, rec) in b.list(Collection::Revocations)?.records {
        if !key.starts_with(ISSUED) {
            continue;
        }
        let Ok(i) = backend::parse::<Issued>(b, Collection::Revocations, &key, &rec.value) else {
            continue;
        };
        if i.not_after.saturating_add(grace) > now {
            continue;
        }
        match b.delete_led(
            Collection::Revocations,
            &key,
            Expect::Version(rec.version),
            guard,
        ) {
            Ok(()) => swept += 1,
            Err(LedError::Write(WriteError::Conflict(_))) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(swept)
}

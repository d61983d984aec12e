//! The hub with other replicas on etcd (see [`crate::presence`]): the workloads they hold join this
//! replica's views, names are taken with a compare-and-swap through every replica, this replica's
//! workloads and rollout state are written for the others, and a rollout waits for their proxies.

use super::{count_connected, lock, Hub, ProxyEntry, ProxyKey, RegisterError, Registered};
use crate::backend::etcd::Follow;
use crate::presence::{Claimed, Presence, ProxyAck, RegistryEntry, ReplicaAcks, ACKS_DEBOUNCE};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use weft_api::operator::{ProxyRollout, RolloutState};
use weft_certs::SpiffeId;

/// How often registry writes that failed (etcd away) are tried again.
const RETRY_TICK: Duration = Duration::from_secs(1);

/// Where one proxy stands in store revisions, which every replica shares (push versions are each
/// replica's own).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Revisions {
    /// The highest revision whose view it acked (or was found to hold already).
    current: u64,
    /// The revision and version of the last push it was sent.
    pushed: u64,
    pushed_version: u64,
    /// The revision the newest view sent to it is what it should hold at.
    wanted: u64,
    /// The revision of its last NACK.
    nack: Option<u64>,
}

impl Revisions {
    pub(super) fn pushed(&mut self, revision: u64, version: u64) {
        self.pushed = revision;
        self.pushed_version = version;
        self.wanted = revision;
    }

    /// A cycle at `revision` found nothing new for it.
    pub(super) fn unchanged(&mut self, revision: u64, nothing_pending: bool) {
        self.wanted = revision;
        if nothing_pending {
            self.current = self.current.max(revision);
        }
    }

    /// It acked a push made at `revision`; `newest`: the last one sent.
    pub(super) fn acked(&mut self, revision: u64, newest: bool) {
        let now = if newest {
            revision.max(self.wanted)
        } else {
            revision
        };
        self.current = self.current.max(now);
    }

    pub(super) fn nacked(&mut self, revision: u64) {
        self.nack = Some(revision);
    }

    /// The revision of the last push it was sent (meaningful once something was sent).
    pub(super) fn sent(&self) -> u64 {
        self.pushed
    }

    /// The highest revision whose view it holds (meaningful once it acked something).
    pub(super) fn held(&self) -> u64 {
        self.current
    }

    pub(super) fn nack(&self) -> Option<u64> {
        self.nack
    }
}

/// What other replicas share: the workloads they hold and where their proxies stand.
#[derive(Debug, Default)]
pub(super) struct Remote {
    /// By key: the entry and its version in etcd (never one of this replica's own).
    workloads: BTreeMap<ProxyKey, (RegistryEntry, u64)>,
    /// By replica id (not this one).
    acks: BTreeMap<String, ReplicaAcks>,
    /// This replica's keys to delete (their workloads left), with the version held.
    released: Vec<(ProxyKey, u64)>,
}

impl Remote {
    pub(super) fn identity(&self, key: &str) -> Option<&SpiffeId> {
        self.workloads.get(key).map(|(e, _)| &e.workload.identity)
    }

    pub(super) fn workloads(&self) -> impl Iterator<Item = (&ProxyKey, &Registered)> {
        self.workloads.iter().map(|(k, (e, _))| (k, &e.workload))
    }

    /// The workloads other replicas hold, each with where its proxy stands as its replica last
    /// published (`None` until it did).
    pub(super) fn held_elsewhere(
        &self,
    ) -> impl Iterator<Item = (&ProxyKey, &RegistryEntry, Option<&ProxyAck>)> {
        self.workloads.iter().map(|(k, (e, _))| {
            let ack = self.acks.get(&e.replica).and_then(|a| a.proxies.get(k));
            (k, e, ack)
        })
    }

    /// `key` is held here now.
    pub(super) fn forget(&mut self, key: &str) {
        self.workloads.remove(key);
    }

    pub(super) fn release(&mut self, removed: impl IntoIterator<Item = (ProxyKey, Option<u64>)>) {
        self.released
            .extend(removed.into_iter().filter_map(|(k, held)| Some((k, held?))));
    }

    /// Other replicas' proxies a change at `revision` went to, with where each stands.
    fn affected<'a>(
        &'a self,
        revision: u64,
        local: &'a BTreeMap<ProxyKey, ProxyEntry>,
    ) -> impl Iterator<Item = (&'a String, &'a ProxyKey, &'a ProxyAck)> + 'a {
        self.acks
            .iter()
            .flat_map(|(replica, acks)| acks.proxies.iter().map(move |(k, a)| (replica, k, a)))
            .filter(move |(replica, key, a)| {
                // Its proxy moved here, or to a third replica (the registry says which).
                let here = local.get(*key).is_some_and(|e| e.conn.is_some());
                let moved = self
                    .workloads
                    .get(*key)
                    .is_some_and(|(w, _)| &w.replica != *replica);
                a.pushed >= revision && !here && !moved
            })
    }

    /// Whether `replica` holds the stream of a connected proxy, as the registry says.
    fn serves(&self, replica: &str) -> bool {
        self.workloads
            .values()
            .any(|(w, _)| w.replica == replica && w.connected)
    }

    /// True once every other replica with connected proxies pushed `revision` and none of its
    /// proxies that change went to is still pending. A replica that died stops counting once its
    /// proxies are registered through another (or its lease expired).
    pub(super) fn settled(&self, revision: u64, local: &BTreeMap<ProxyKey, ProxyEntry>) -> bool {
        self.acks
            .iter()
            .all(|(replica, a)| a.covered >= revision || !self.serves(replica))
            && self
                .affected(revision, local)
                .all(|(_, _, a)| !matches!(state(a, revision), RolloutState::Pending))
    }

    pub(super) fn rollout(
        &self,
        revision: u64,
        local: &BTreeMap<ProxyKey, ProxyEntry>,
    ) -> Vec<ProxyRollout> {
        self.affected(revision, local)
            .map(|(replica, key, a)| ProxyRollout {
                proxy: key.clone(),
                version: a.version,
                state: state(a, revision),
                replica: Some(replica.clone()),
            })
            .collect()
    }
}

fn state(a: &ProxyAck, revision: u64) -> RolloutState {
    match &a.nack {
        _ if a.current >= revision => RolloutState::Acked,
        Some((r, reason)) if *r >= revision => RolloutState::Nacked {
            reason: reason.clone(),
        },
        _ if !a.connected => RolloutState::Disconnected,
        _ => RolloutState::Pending,
    }
}

/// A registry write to make: key, entry, version held, whether to take it over.
type Write = (ProxyKey, RegistryEntry, Option<u64>, bool);

impl Hub {
    /// This replica's id when replicas share etcd.
    pub(super) fn replica_id(&self) -> Option<String> {
        self.settings
            .presence
            .as_ref()
            .map(|p| p.replica().to_string())
    }

    /// Takes `key` through every replica (nothing to do without etcd): its version in etcd and
    /// what was written. Unreachable etcd is not a refusal: the key is written once it answers.
    pub(super) fn claim_in_mesh(
        &self,
        key: &str,
        reg: &Registered,
        cert_not_after: Option<u64>,
    ) -> Result<(Option<u64>, Option<RegistryEntry>), RegisterError> {
        let Some(p) = &self.settings.presence else {
            return Ok((None, None));
        };
        let entry = RegistryEntry {
            workload: reg.clone(),
            replica: p.replica().to_string(),
            connected: true,
            cert_not_after,
            disconnected_at: None,
        };
        match p.claim(key, &entry) {
            Ok(Claimed::Held(v)) => Ok((Some(v), Some(entry))),
            Ok(Claimed::Taken(holder)) => Err(RegisterError::NameTaken {
                key: key.to_string(),
                holder,
                presented: reg.identity.clone(),
            }),
            Ok(Claimed::Moved) | Err(_) => {
                tracing::warn!(
                    proxy = key,
                    "cannot write the workload to the registry in etcd now; trying again"
                );
                Ok((None, None))
            }
        }
    }

    /// Writes this replica's workloads that changed (and deletes those that left) in etcd. One
    /// another replica took meanwhile (its proxy moved) is dropped here.
    pub(super) fn publish_registry(&self, p: &Presence) {
        let (writes, released) = {
            let mut st = lock(&self.state);
            if !st.registry_dirty && st.remote.released.is_empty() {
                return;
            }
            st.registry_dirty = false;
            let writes: Vec<Write> = st
                .proxies
                .iter()
                .filter_map(|(k, e)| {
                    let want = RegistryEntry {
                        workload: e.reg.clone(),
                        replica: p.replica().to_string(),
                        connected: e.conn.is_some(),
                        cert_not_after: e.cert_not_after,
                        disconnected_at: disconnected_at(e),
                    };
                    let take_over = e.conn.is_some() && e.held.is_none();
                    (e.published.as_ref() != Some(&want))
                        .then(|| (k.clone(), want, e.held, take_over))
                })
                .collect();
            (writes, std::mem::take(&mut st.remote.released))
        };
        let mut retry: Vec<(ProxyKey, u64)> = Vec::new();
        for (key, held) in released {
            if let Err(e) = p.release(&key, held) {
                tracing::warn!(proxy = %key, error = %e, "cannot remove the workload from the registry in etcd; trying again");
                retry.push((key, held));
            }
        }
        let results: Vec<_> = writes
            .into_iter()
            .map(|(key, want, held, take_over)| {
                let r = if take_over {
                    p.claim(&key, &want)
                } else {
                    p.update(&key, &want, held)
                };
                (key, want, held, r)
            })
            .collect();
        let mut st = lock(&self.state);
        st.remote.released.extend(retry);
        let mut lost = false;
        for (key, want, held, r) in results {
            let Some(e) = st.proxies.get_mut(&key).filter(|e| e.held == held) else {
                continue; // Changed meanwhile (reconnected): the next round writes it.
            };
            match r {
                Ok(Claimed::Held(v)) => {
                    e.held = Some(v);
                    e.published = Some(want);
                }
                Ok(Claimed::Taken(_) | Claimed::Moved) => {
                    if let Some((_, ob)) = &e.conn {
                        ob.close();
                    }
                    st.proxies.remove(&key);
                    tracing::info!(proxy = %key, "workload held through another replica now; dropped here");
                    lost = true;
                }
                Err(err) => {
                    st.registry_dirty = true;
                    tracing::warn!(proxy = %key, error = %err, "cannot write the workload to the registry in etcd; trying again");
                }
            }
        }
        if lost {
            self.metrics.set_connected(count_connected(&st));
            drop(st);
            self.bump_progress();
            self.mark_dirty();
        }
    }

    /// A change to the registry in etcd.
    pub(super) fn apply_registry(&self, me: &str, msg: Follow) {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let changed = match msg {
            Follow::Reset(all) => {
                st.remote.workloads.clear();
                let present: BTreeSet<&String> = all.iter().map(|(k, _, _)| k).collect();
                for (k, e) in st.proxies.iter_mut() {
                    // Not there any more (the lease expired meanwhile): written again.
                    if e.held.is_some() && !present.contains(k) {
                        e.held = None;
                        e.published = None;
                        st.registry_dirty = true;
                    }
                }
                for (k, v, ver) in &all {
                    merge(st, me, k, v, *ver);
                }
                true
            }
            Follow::Put(k, v, ver) => merge(st, me, &k, &v, ver),
            Follow::Delete(k, rev) => {
                let was = st.remote.workloads.remove(&k).is_some();
                if let Some(e) = st.proxies.get_mut(&k) {
                    if e.held.is_some_and(|h| h < rev) {
                        e.held = None;
                        e.published = None;
                        st.registry_dirty = true;
                    }
                }
                was
            }
        };
        if changed {
            self.metrics.set_connected(count_connected(st));
            drop(guard);
            self.mark_dirty();
            self.bump_progress();
        }
    }

    /// A change to other replicas' rollout state in etcd.
    pub(super) fn apply_acks(&self, me: &str, msg: Follow) {
        let parse = |v: &[u8]| serde_json::from_slice::<ReplicaAcks>(v).ok();
        {
            let mut st = lock(&self.state);
            let acks = &mut st.remote.acks;
            match msg {
                Follow::Reset(all) => {
                    acks.clear();
                    for (k, v, _) in all {
                        if let (true, Some(a)) = (k != me, parse(&v)) {
                            acks.insert(k, a);
                        }
                    }
                }
                Follow::Put(k, v, _) => {
                    if let (true, Some(a)) = (k != me, parse(&v)) {
                        acks.insert(k, a);
                    }
                }
                Follow::Delete(k, _) => {
                    acks.remove(&k);
                }
            }
        }
        self.bump_progress();
    }

    /// Where this replica's proxies stand, for the others.
    fn local_acks(&self) -> ReplicaAcks {
        let st = lock(&self.state);
        ReplicaAcks {
            covered: st.covered,
            proxies: st
                .proxies
                .iter()
                .map(|(k, e)| {
                    let r = &e.revisions;
                    let nack = r.nack.zip(e.last_nack.as_ref());
                    let ack = ProxyAck {
                        current: r.current,
                        pushed: r.pushed,
                        version: r.pushed_version,
                        nack: nack.map(|(revision, n)| (revision, n.reason.clone())),
                        connected: e.conn.is_some(),
                        nack_version: nack.map(|(_, n)| n.version),
                    };
                    (k.clone(), ack)
                })
                .collect(),
        }
    }

    /// Waits (at most `within`) until every workload this replica holds in the registry was taken
    /// over through another replica (its proxy moved there after this one closed its stream).
    pub async fn wait_moved(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if lock(&self.state).proxies.values().all(|e| e.held.is_none()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every key must be written again (a new lease replaced one that expired).
    fn forget_held(&self) {
        let mut st = lock(&self.state);
        for e in st.proxies.values_mut() {
            e.held = None;
            e.published = None;
        }
        st.registry_dirty = true;
        drop(st);
        self.mark_dirty();
    }

    /// Follows the registry and the other replicas' rollout state in etcd, and writes this
    /// replica's rollout state (debounced), until `stop`.
    pub async fn run_mesh(
        self: Arc<Self>,
        p: Arc<Presence>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut registry = p.etcd.follow("registry/");
        let mut acks = p.etcd.follow("acks/");
        let mut renewed = p.session.renewed();
        let mut progress = self.progress.subscribe();
        let mut tick = tokio::time::interval(RETRY_TICK);
        let mut last: Option<ReplicaAcks> = None;
        let mut publish_at: Option<tokio::time::Instant> = None;
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(m) = registry.recv() => self.apply_registry(p.replica(), m),
                Some(m) = acks.recv() => self.apply_acks(p.replica(), m),
                Ok(()) = renewed.changed() => {
                    self.forget_held();
                    last = None;
                    publish_at = Some(tokio::time::Instant::now());
                }
                Ok(()) = progress.changed(), if publish_at.is_none() => {
                    publish_at = Some(tokio::time::Instant::now() + ACKS_DEBOUNCE);
                }
                _ = tokio::time::sleep_until(publish_at.unwrap_or_else(far)), if publish_at.is_some() => {
                    publish_at = None;
                    progress.borrow_and_update();
                    last = self.publish_acks(&p, last).await;
                }
                _ = tick.tick() => {
                    if lock(&self.state).registry_dirty {
                        self.mark_dirty();
                    }
                    if last.is_none() {
                        publish_at = Some(tokio::time::Instant::now());
                    }
                }
            }
        }
    }

    /// Writes this replica's rollout state if it changed since `last` (what was written); returns
    /// what is written now (`None` when the write failed: tried again).
    async fn publish_acks(
        self: &Arc<Self>,
        p: &Arc<Presence>,
        last: Option<ReplicaAcks>,
    ) -> Option<ReplicaAcks> {
        let now = self.local_acks();
        if last.as_ref() == Some(&now) {
            return last;
        }
        let p = p.clone();
        let written = tokio::task::spawn_blocking(move || p.publish_acks(&now).map(|()| now)).await;
        match written {
            Ok(Ok(now)) => Some(now),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot write this replica's rollout state to etcd; trying again");
                None
            }
            Err(_) => None,
        }
    }
}

/// When a disconnected proxy's stream ended, in Unix seconds for the other replicas (which cannot
/// read this one's `Instant`s): as already written, else converted once, so that the entry is not
/// written again for a converted value a second off.
fn disconnected_at(e: &ProxyEntry) -> Option<u64> {
    if e.conn.is_some() {
        return None;
    }
    if let Some(written) = e.published.as_ref().and_then(|p| p.disconnected_at) {
        return Some(written);
    }
    let at = e.disconnected_at?;
    let then = std::time::SystemTime::now().checked_sub(at.elapsed())?;
    Some(then.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
}

/// Merges another replica's registry entry; true if the views change.
fn merge(st: &mut super::State, me: &str, key: &str, value: &[u8], version: u64) -> bool {
    // `all` (the whole-registry record of the state-directory layout) is no entry.
    let Ok(entry) = serde_json::from_slice::<RegistryEntry>(value) else {
        return false;
    };
    if entry.replica == me {
        return false;
    }
    if let Some(e) = st.proxies.get(key) {
        if e.held.is_some_and(|h| h >= version) {
            return false; // Older than what this replica holds.
        }
        // Its proxy moved to another replica.
        if let Some((_, ob)) = &e.conn {
            ob.close();
        }
        st.proxies.remove(key);
        tracing::info!(proxy = %key, replica = %entry.replica, "workload now held through another replica");
    }
    st.remote
        .workloads
        .insert(key.to_string(), (entry, version));
    true
}

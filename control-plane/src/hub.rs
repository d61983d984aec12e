//! The registry of connected proxies and the config push.
//!
//! Every change (resources applied, a proxy registering, readiness, a disconnect) marks the hub dirty. A
//! single push task waits a short debounce, then computes each proxy's view as sections (mesh config,
//! services with endpoints, routes, the policies for its workload, trust bundle, revoked serials). Each section is encoded
//! once per cycle and compared by digest: a proxy whose view did not change is not sent anything; one whose
//! view changed gets a snapshot with the sections that differ from any view it may hold (the one it last
//! acknowledged or one sent since), services as the ones that changed when it takes changes.
//!
//! Versions are cycle numbers seeded from the clock, so they keep increasing across restarts.

use crate::view::{self, MeshResources, SectionDigests};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use weft_api::control::Registration;
use weft_api::operator::{Nack, ProxyRollout, ProxyStatus, Rollout, RolloutState, Status};
use weft_certs::SpiffeId;

/// `namespace/name` of a registered proxy.
pub type ProxyKey = String;

mod mesh;
mod status;

/// Where frames for one connected proxy wait to be written. Holds only the newest: a snapshot supersedes
/// an unsent older one (both are relative to what the proxy acknowledged).
#[derive(Default)]
pub struct Outbox {
    slot: Mutex<Option<view::Frame>>,
    notify: Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl Outbox {
    fn put(&self, frame: view::Frame) {
        *lock(&self.slot) = Some(frame);
        self.notify.notify_one();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// The next frame to send; `None` once the hub dropped this connection.
    pub async fn next(&self) -> Option<view::Frame> {
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(f) = lock(&self.slot).take() {
                return Some(f);
            }
            self.notify.notified().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving rather than cascade.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registration as persisted, so a restarted control plane keeps endpoints while proxies reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub namespace: String,
    pub identity: SpiffeId,
    pub registration: Registration,
}

struct ProxyEntry {
    reg: Registered,
    conn: Option<(u64, Arc<Outbox>)>,
    /// Since when it is disconnected; removed after the grace period.
    disconnected_at: Option<Instant>,
    last_seen: Instant,
    cert_not_after: Option<u64>,
    /// The full view each unacknowledged version carries, by version, with the store revision
    /// its cycle included.
    sent: VecDeque<(u64, SectionDigests, u64)>,
    /// Older sent versions were dropped from `sent` (at [`SENT_KEPT`]): what the proxy holds is not
    /// known until it acks one still there, so it gets whole snapshots meanwhile.
    unsure: bool,
    /// It speaks a protocol that takes services as changes.
    takes_changes: bool,
    sent_version: u64,
    acked: Option<(u64, SectionDigests)>,
    last_nack: Option<Nack>,
    /// Where it stands in store revisions (shared by every replica, unlike versions).
    revisions: mesh::Revisions,
    /// The version of its key in the mesh-wide registry, and what was last written there.
    held: Option<u64>,
    published: Option<crate::presence::RegistryEntry>,
}

/// Unacknowledged snapshots remembered per proxy (a proxy that stopped acking does not grow this).
const SENT_KEPT: usize = 16;

impl ProxyEntry {
    fn new(
        reg: Registered,
        conn: Option<(u64, Arc<Outbox>)>,
        cert_not_after: Option<u64>,
        protocol: u32,
    ) -> ProxyEntry {
        ProxyEntry {
            reg,
            conn,
            disconnected_at: None,
            last_seen: Instant::now(),
            cert_not_after,
            sent: VecDeque::new(),
            unsure: false,
            takes_changes: protocol >= weft_api::control::PROTOCOL_SERVICE_CHANGES,
            sent_version: 0,
            acked: None,
            last_nack: None,
            revisions: Default::default(),
            held: None,
            published: None,
        }
    }

    /// The views it may hold when its next frame arrives: the acknowledged one or any sent since
    /// (it applies them in order; a NACKed one is not among them). Empty when unknown.
    fn may_hold(&self) -> Vec<&SectionDigests> {
        match (&self.acked, self.unsure) {
            (Some((_, acked)), false) => std::iter::once(acked)
                .chain(self.sent.iter().map(|(_, d, _)| d))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn remember_sent(&mut self, version: u64, digests: SectionDigests, revision: u64) {
        self.sent.push_back((version, digests, revision));
        if self.sent.len() > SENT_KEPT {
            self.sent.pop_front();
            self.unsure = true;
        }
    }

    fn status(&self, key: &str, now: Instant) -> ProxyStatus {
        ProxyStatus {
            proxy: key.to_string(),
            identity: self.reg.identity.clone(),
            address: self.reg.registration.address,
            connected: self.conn.is_some(),
            ready: self.reg.registration.ready,
            sent_version: self.sent_version,
            acked_version: self.acked.as_ref().map(|(v, _)| *v),
            last_nack: self.last_nack.clone(),
            cert_not_after: self.cert_not_after,
            // A connected proxy is seen continuously (HTTP/2 keep-alive pings on its stream).
            last_seen_ms: match self.conn {
                Some(_) => 0,
                None => now.duration_since(self.last_seen).as_millis() as u64,
            },
            // Filled in by `status::of` when replicas share etcd.
            replica: None,
            sent_revision: None,
            acked_revision: None,
        }
    }

    fn rollout_state(&self, version: u64) -> RolloutState {
        match (&self.acked, &self.last_nack) {
            (Some((v, _)), _) if *v >= version => RolloutState::Acked,
            (_, Some(n)) if n.version >= version => RolloutState::Nacked {
                reason: n.reason.clone(),
            },
            _ if self.conn.is_none() => RolloutState::Disconnected,
            _ => RolloutState::Pending,
        }
    }
}

/// What one push cycle did, kept for rollout queries.
struct Cycle {
    /// The highest store revision the cycle included.
    revision: u64,
    version: u64,
    pushed: Vec<ProxyKey>,
}

struct State {
    resources: Arc<MeshResources>,
    /// Revision of `resources`.
    revision: u64,
    /// Highest revision a finished cycle included.
    covered: u64,
    bundle_pem: Arc<str>,
    proxies: BTreeMap<ProxyKey, ProxyEntry>,
    cycles: VecDeque<Cycle>,
    registry_dirty: bool,
    /// Service virtual IPs, kept in step with `resources`.
    vips: crate::vips::Vips,
    /// Revoked leaf serials every proxy must refuse (sorted).
    revoked: Arc<Vec<String>>,
    /// What other replicas share on etcd: their workloads and where their proxies stand.
    remote: mesh::Remote,
}

pub struct Hub {
    state: Mutex<State>,
    dirty: Notify,
    /// Bumped on every ack, nack, disconnect and finished cycle; rollout waiters watch it.
    progress: watch::Sender<u64>,
    next_conn: AtomicU64,
    last_version: AtomicU64,
    pub settings: HubSettings,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Compiled policy sets for [`Hub::may_reach`].
    reach: crate::reach::ReachCache,
}

#[derive(Debug, Clone)]
pub struct HubSettings {
    pub debounce: Duration,
    /// How long a disconnected proxy stays registered, unless MeshConfig `proxyGracePeriod` says otherwise.
    pub grace_period: Duration,
    /// Where the registry and the service address table are kept (`None`: in memory only).
    pub store: Option<crate::backend::SharedBackend>,
    pub trust_domain: weft_certs::TrustDomain,
    /// Where service virtual IPs come from.
    pub vip_range: crate::vips::Ipv4Range,
    /// This replica's session when replicas share etcd: the registry, service addresses and
    /// rollouts are then the mesh's, not this replica's alone.
    pub presence: Option<Arc<crate::presence::Presence>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("workload {key} is already registered by {holder}; {presented} cannot take its name")]
    NameTaken {
        key: String,
        holder: SpiffeId,
        presented: SpiffeId,
    },
}

const CYCLES_KEPT: usize = 256;

impl Hub {
    pub fn new(
        resources: MeshResources,
        revision: u64,
        bundle_pem: String,
        restored: Vec<Registered>,
        settings: HubSettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Hub> {
        let now = Instant::now();
        let proxies = restored
            .into_iter()
            .map(|reg| {
                let key = format!("{}/{}", reg.namespace, reg.registration.name);
                let entry = ProxyEntry {
                    disconnected_at: Some(now),
                    ..ProxyEntry::new(reg, None, None, 0)
                };
                (key, entry)
            })
            .collect();
        let mut vips = match &settings.presence {
            Some(p) => crate::vips::Vips::agreed(settings.vip_range, p.etcd.clone()),
            None => crate::vips::Vips::load_in(settings.vip_range, settings.store.clone()),
        };
        vips.sync(service_names(&resources));
        Arc::new(Hub {
            state: Mutex::new(State {
                vips,
                resources: Arc::new(resources),
                revision,
                covered: revision,
                bundle_pem: bundle_pem.into(),
                proxies,
                cycles: VecDeque::new(),
                registry_dirty: false,
                revoked: Arc::new(Vec::new()),
                remote: Default::default(),
            }),
            dirty: Notify::new(),
            progress: watch::channel(0).0,
            next_conn: AtomicU64::new(1),
            last_version: AtomicU64::new(0),
            reach: Default::default(),
            settings,
            metrics,
        })
    }

    fn mark_dirty(&self) {
        self.dirty.notify_one();
    }

    fn bump_progress(&self) {
        self.progress.send_modify(|n| *n += 1);
    }

    /// New resources (already validated and stored) at `revision`.
    pub fn set_resources(&self, resources: MeshResources, revision: u64) {
        let mut st = lock(&self.state);
        st.vips.sync(service_names(&resources));
        st.resources = Arc::new(resources);
        st.revision = revision;
        drop(st);
        self.mark_dirty();
    }

    /// A new list of revoked serials for every proxy (pushed only if it changed).
    pub fn set_revoked(&self, serials: Vec<String>) {
        let mut st = lock(&self.state);
        if *st.revoked == serials {
            return;
        }
        st.revoked = Arc::new(serials);
        drop(st);
        self.mark_dirty();
    }

    /// Ends the config streams of registered workloads `revoked` says are revoked and removes them from
    /// the registry at once (not after the grace period: peers would refuse them meanwhile). Their
    /// proxies cannot register again (their certificate or identity is refused). Returns their keys.
    pub fn remove_revoked(
        &self,
        revoked: impl Fn(&ProxyKey, &Registered) -> bool,
    ) -> Vec<ProxyKey> {
        let mut st = lock(&self.state);
        let mut removed = Vec::new();
        st.proxies.retain(|key, e| {
            if !revoked(key, &e.reg) {
                return true;
            }
            if let Some((_, ob)) = &e.conn {
                ob.close();
            }
            removed.push((key.clone(), e.held));
            false
        });
        if !removed.is_empty() {
            st.registry_dirty = true;
            st.remote.release(removed.iter().cloned());
            self.metrics.set_connected(count_connected(&st));
            drop(st);
            self.bump_progress();
            self.mark_dirty();
        }
        removed.into_iter().map(|(k, _)| k).collect()
    }

    /// Reads the service address table again (another replica changed it) and pushes if it changed.
    pub fn reload_vips(&self) {
        if lock(&self.state).vips.reload() {
            self.mark_dirty();
        }
    }

    pub fn set_bundle(&self, bundle_pem: String) {
        lock(&self.state).bundle_pem = bundle_pem.into();
        self.mark_dirty();
    }

    /// Every service that has a virtual IP.
    pub fn service_addresses(&self) -> Vec<weft_api::operator::ServiceAddress> {
        let st = lock(&self.state);
        st.resources
            .services
            .iter()
            .filter_map(|s| {
                let (ns, name) = (&s.metadata.namespace, &s.metadata.name);
                Some(weft_api::operator::ServiceAddress {
                    namespace: ns.clone(),
                    name: name.clone(),
                    vip: st.vips.get(ns, name)?.into(),
                })
            })
            .collect()
    }

    /// How a request from one identity to one service would be treated, from the current resources and
    /// registry (`POST /v1/why`).
    pub fn why(
        &self,
        q: &weft_api::operator::WhyRequest,
    ) -> Result<weft_api::operator::WhyAnswer, crate::why::WhyError> {
        let td = &self.settings.trust_domain;
        let (resources, services, workloads) = {
            let st = lock(&self.state);
            let registered = st.registered();
            let services = view::services_view(&st.resources, &registered, td, &st.vips);
            let workloads: Vec<(String, SpiffeId)> = st
                .proxies
                .iter()
                .map(|(k, e)| (k, &e.reg))
                .chain(st.remote.workloads())
                .map(|(k, reg)| (k.clone(), reg.identity.clone()))
                .collect();
            (st.resources.clone(), services, workloads)
        };
        crate::why::explain(&resources, &services, &workloads, td, q)
    }

    /// Whether requests from `source` can have reached `ns/service` (its `subset`) past the
    /// authorization policies of at least one of its endpoints (see [`crate::reach`]). An unknown
    /// service counts as reachable: nothing says otherwise.
    pub fn may_reach(
        &self,
        source: &SpiffeId,
        ns: &str,
        service: &str,
        subset: Option<&str>,
    ) -> bool {
        let (resources, revision, labels) = {
            let st = lock(&self.state);
            let registered = st.registered();
            let Some(found) =
                view::endpoint_labels(&st.resources, &registered, ns, service, subset)
            else {
                return true;
            };
            let mut labels: Vec<weft_api::resources::Labels> = Vec::new();
            for l in found {
                if !labels.contains(l) {
                    labels.push(l.clone());
                }
            }
            (st.resources.clone(), st.revision, labels)
        };
        self.reach
            .any_admits(&resources, revision, ns, &labels, source)
    }

    pub fn revision(&self) -> u64 {
        lock(&self.state).revision
    }

    /// A proxy's stream opened. Replaces an older connection of the same workload (a restarted proxy).
    pub fn connect(
        &self,
        reg: Registered,
        cert_not_after: Option<u64>,
        protocol: u32,
    ) -> Result<(u64, Arc<Outbox>), RegisterError> {
        let key = format!("{}/{}", reg.namespace, reg.registration.name);
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::default());
        lock(&self.state).check_name(&key, &reg.identity)?;
        // Through every replica: a compare-and-swap on the workload's key in etcd.
        let (held, published) = self.claim_in_mesh(&key, &reg, cert_not_after)?;
        let mut st = lock(&self.state);
        st.check_name(&key, &reg.identity)?;
        if let Some((_, ob)) = st.proxies.get(&key).and_then(|old| old.conn.as_ref()) {
            ob.close();
        }
        st.remote.forget(&key);
        let conn = Some((conn_id, outbox.clone()));
        let entry = ProxyEntry {
            held,
            published,
            ..ProxyEntry::new(reg, conn, cert_not_after, protocol)
        };
        st.proxies.insert(key, entry);
        st.registry_dirty = true;
        self.metrics.set_connected(count_connected(&st));
        drop(st);
        self.mark_dirty();
        Ok((conn_id, outbox))
    }

    /// The stream `conn_id` of `key` ended.
    pub fn disconnect(&self, key: &str, conn_id: u64) {
        let mut st = lock(&self.state);
        let Some(e) = st.proxies.get_mut(key) else {
            return;
        };
        if e.conn.as_ref().map(|(id, _)| *id) != Some(conn_id) {
            return; // A newer connection already replaced it.
        }
        if let Some((_, ob)) = e.conn.take() {
            ob.close();
        }
        e.disconnected_at = Some(Instant::now());
        e.last_seen = Instant::now();
        if self.settings.presence.is_some() {
            // Other replicas show it disconnected.
            st.registry_dirty = true;
        }
        self.metrics.set_connected(count_connected(&st));
        drop(st);
        self.bump_progress();
        // Endpoints stay for the grace period; the push task removes them when it expires.
        self.mark_dirty();
    }

    fn with_live<R>(
        &self,
        key: &str,
        conn_id: u64,
        f: impl FnOnce(&mut ProxyEntry) -> R,
    ) -> Option<R> {
        let mut st = lock(&self.state);
        let e = st.proxies.get_mut(key)?;
        if e.conn.as_ref().map(|(id, _)| *id) != Some(conn_id) {
            return None;
        }
        e.last_seen = Instant::now();
        Some(f(e))
    }

    pub fn ack(&self, key: &str, conn_id: u64, version: u64) {
        let known = self.with_live(key, conn_id, |e| {
            while let Some((v, _, _)) = e.sent.front() {
                if *v >= version {
                    break;
                }
                e.sent.pop_front();
            }
            match e.sent.front() {
                Some((v, digests, revision)) if *v == version => {
                    e.acked = Some((version, digests.clone()));
                    e.unsure = false;
                    e.revisions.acked(*revision, e.sent.len() == 1);
                    e.sent.pop_front();
                    true
                }
                _ => false,
            }
        });
        match known {
            Some(true) => {
                self.metrics.ack("ack");
                self.bump_progress();
            }
            Some(false) => {
                tracing::warn!(
                    proxy = key,
                    version,
                    "ack for a version not sent or no longer kept"
                )
            }
            None => {}
        }
    }

    pub fn nack(&self, key: &str, conn_id: u64, version: u64, reason: String) {
        tracing::warn!(proxy = key, version, %reason, "proxy refused a snapshot (NACK)");
        let found = self.with_live(key, conn_id, |e| {
            if let Some((_, _, revision)) = e.sent.iter().find(|(v, _, _)| *v == version) {
                e.revisions.nacked(*revision);
            }
            e.sent.retain(|(v, _, _)| *v != version);
            e.last_nack = Some(Nack {
                version,
                reason,
                revision: None,
            });
        });
        if found.is_some() {
            self.metrics.ack("nack");
            self.bump_progress();
        }
    }

    pub fn set_ready(&self, key: &str, conn_id: u64, ready: bool) {
        let changed = self.with_live(key, conn_id, |e| {
            let changed = e.reg.registration.ready != ready;
            e.reg.registration.ready = ready;
            changed
        });
        if changed == Some(true) {
            tracing::info!(proxy = key, ready, "workload readiness changed");
            lock(&self.state).registry_dirty = true;
            self.mark_dirty();
        }
    }

    /// Ends every config stream (shutdown): proxies reconnect to the next control plane.
    pub fn close_all(&self) {
        let st = lock(&self.state);
        for e in st.proxies.values() {
            if let Some((_, ob)) = &e.conn {
                ob.close();
            }
        }
    }

    /// Every proxy of the mesh: this replica's, and with replicas on etcd those other replicas hold.
    pub fn status(&self) -> Status {
        let replica = self.replica_id();
        let st = lock(&self.state);
        status::of(&st, replica.as_deref(), Instant::now())
    }

    /// Runs push cycles until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut grace_tick = tokio::time::interval(Duration::from_millis(500));
        grace_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.dirty.notified() => {}
                _ = grace_tick.tick() => {
                    if !self.expire_disconnected() {
                        continue;
                    }
                }
            }
            // Changes arriving in the window join this cycle.
            tokio::time::sleep(self.settings.debounce).await;
            let started = Instant::now();
            self.cycle();
            self.metrics.observe_cycle(started.elapsed());
            match self.settings.presence.clone() {
                // etcd calls block: off the async workers.
                Some(p) => {
                    let hub = self.clone();
                    let _ = tokio::task::spawn_blocking(move || hub.publish_registry(&p)).await;
                }
                None => self.persist_registry(),
            }
        }
    }

    /// Removes proxies disconnected for longer than the grace period. True if any went.
    fn expire_disconnected(&self) -> bool {
        let grace = {
            let st = lock(&self.state);
            st.resources
                .mesh
                .proxy_grace_period
                .map(|g| g.get())
                .unwrap_or(self.settings.grace_period)
        };
        let mut st = lock(&self.state);
        let mut removed = Vec::new();
        st.proxies.retain(|key, e| {
            let keep = e.disconnected_at.is_none_or(|t| t.elapsed() < grace);
            if !keep {
                tracing::info!(proxy = %key, "workload removed: disconnected for longer than the grace period");
                removed.push((key.clone(), e.held));
            }
            keep
        });
        if removed.is_empty() {
            return false;
        }
        st.registry_dirty = true;
        st.remote.release(removed);
        true
    }

    fn next_version(&self) -> u64 {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let prev = self.last_version.load(Ordering::Relaxed);
        let v = clock.max(prev + 1);
        self.last_version.store(v, Ordering::Relaxed);
        v
    }

    /// One push: compute every proxy's view, send what changed.
    fn cycle(&self) {
        let mut st = lock(&self.state);
        let version = self.next_version();
        let shared = {
            let registered = st.registered();
            let td = &self.settings.trust_domain;
            view::SharedSections::build(
                &st.resources,
                &registered,
                td,
                &st.bundle_pem,
                &st.vips,
                &st.revoked,
            )
        };
        let mut policy_cache = view::PolicyCache::default();
        let mut changes = view::ChangeCache::default();
        let resources = st.resources.clone();
        let mut pushed = Vec::new();
        let revision = st.revision;
        for (key, e) in st.proxies.iter_mut() {
            let Some((_, outbox)) = &e.conn else {
                continue;
            };
            let policies = policy_cache.for_workload(&resources, &e.reg);
            let digests = shared.digests(&policies);
            let last_sent = e
                .sent
                .back()
                .map(|(_, d, _)| d)
                .or(e.acked.as_ref().map(|(_, d)| d));
            if last_sent == Some(&digests) {
                // What it holds (or is about to ack) is already what this revision wants.
                e.revisions.unchanged(revision, e.sent.is_empty());
                continue;
            }
            let changes = e.takes_changes.then_some(&mut changes);
            let frame = shared.frame(version, &policies, &e.may_hold(), changes);
            outbox.put(frame);
            e.remember_sent(version, digests, revision);
            e.revisions.pushed(revision, version);
            e.sent_version = version;
            pushed.push(key.clone());
        }
        st.covered = revision;
        if !pushed.is_empty() {
            tracing::info!(version, revision, proxies = pushed.len(), "pushed config");
            self.metrics.pushed(pushed.len());
        }
        st.cycles.push_back(Cycle {
            revision,
            version,
            pushed,
        });
        while st.cycles.len() > CYCLES_KEPT {
            st.cycles.pop_front();
        }
        drop(st);
        self.bump_progress();
    }

    fn persist_registry(&self) {
        let Some(store) = &self.settings.store else {
            return;
        };
        let regs: Vec<Registered> = {
            let mut st = lock(&self.state);
            if !st.registry_dirty {
                return;
            }
            st.registry_dirty = false;
            st.proxies.values().map(|e| e.reg.clone()).collect()
        };
        if let Err(e) =
            crate::backend::put_json(&**store, crate::backend::Collection::Registry, &regs)
        {
            tracing::warn!(error = %e, "cannot persist the workload registry");
        }
    }

    /// Waits until the change that produced `revision` reached every proxy it affects (each acked,
    /// nacked or disconnected), or `timeout` passes.
    pub async fn rollout(&self, revision: u64, timeout: Duration) -> Rollout {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut progress = self.progress.subscribe();
        loop {
            if self.settled(revision) {
                break;
            }
            if tokio::time::timeout_at(deadline, progress.changed())
                .await
                .is_err()
            {
                break;
            }
            // A thousand acks arrive within milliseconds: look once per burst, not once per ack.
            tokio::time::sleep(Duration::from_millis(2)).await;
            progress.borrow_and_update();
        }
        match self.rollout_now(revision, started) {
            Some((r, _)) => r,
            None => Rollout {
                revision,
                proxies: Vec::new(),
                complete: false,
                waited_ms: started.elapsed().as_millis() as u64,
            },
        }
    }

    /// True once a push cycle included `revision` and no proxy it went to is still pending.
    fn settled(&self, revision: u64) -> bool {
        let st = lock(&self.state);
        if st.covered < revision {
            return false;
        }
        let Some(cycle) = st.cycles.iter().find(|c| c.revision >= revision) else {
            return false;
        };
        let local = cycle.pushed.iter().all(|key| {
            st.proxies
                .get(key)
                .is_none_or(|e| !matches!(e.rollout_state(cycle.version), RolloutState::Pending))
        });
        local && st.remote.settled(revision, &st.proxies)
    }

    /// Where the rollout of `revision` stands, and whether it is settled (no proxy still pending);
    /// `None` until a push cycle included it.
    fn rollout_now(&self, revision: u64, started: Instant) -> Option<(Rollout, bool)> {
        let st = lock(&self.state);
        if st.covered < revision {
            return None;
        }
        let cycle = st.cycles.iter().find(|c| c.revision >= revision)?;
        let proxies: Vec<ProxyRollout> = cycle
            .pushed
            .iter()
            .map(|key| {
                let state = match st.proxies.get(key) {
                    Some(e) => e.rollout_state(cycle.version),
                    None => RolloutState::Disconnected,
                };
                ProxyRollout {
                    proxy: key.clone(),
                    version: cycle.version,
                    state,
                    replica: self.replica_id(),
                }
            })
            .chain(st.remote.rollout(revision, &st.proxies))
            .collect();
        let complete = proxies
            .iter()
            .all(|p| matches!(p.state, RolloutState::Acked));
        let settled = proxies
            .iter()
            .all(|p| !matches!(p.state, RolloutState::Pending));
        let rollout = Rollout {
            revision,
            complete,
            proxies,
            waited_ms: started.elapsed().as_millis() as u64,
        };
        Some((rollout, settled))
    }
}

fn service_names(res: &MeshResources) -> impl Iterator<Item = (&str, &str)> {
    res.services
        .iter()
        .map(|s| (s.metadata.namespace.as_str(), s.metadata.name.as_str()))
}

impl State {
    /// Refuses `key` to `identity` while another identity holds it here or through another replica
    /// (connected, within the grace period, or restored from the persisted registry): a name is not
    /// free for another identity while its proxy is away.
    fn check_name(&self, key: &str, identity: &SpiffeId) -> Result<(), RegisterError> {
        let holder = match self.proxies.get(key) {
            Some(old) => Some(&old.reg.identity),
            None => self.remote.identity(key),
        };
        match holder {
            Some(holder) if holder != identity => Err(RegisterError::NameTaken {
                key: key.to_string(),
                holder: holder.clone(),
                presented: identity.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Every registered workload: this replica's, then those held through other replicas.
    fn registered(&self) -> Vec<&Registered> {
        self.proxies
            .values()
            .map(|e| &e.reg)
            .chain(self.remote.workloads().map(|(_, reg)| reg))
            .collect()
    }
}

fn count_connected(st: &State) -> usize {
    st.proxies.values().filter(|e| e.conn.is_some()).count()
}

//! The singletons of the control plane, run by the elected leader only (the election itself is the
//! backend's: [`crate::backend::election`]).
//!
//! Today that is the expiry sweep: every `--sweep-interval` the leader deletes join tokens expired
//! for longer than `--expired-token-retention`, and drops the claims and issued-certificate records
//! past renewal (a day after their certificate expired), which were otherwise pruned only with the
//! next write. Each of those writes is guarded by the leader's election key, so a replica that lost
//! the leadership without knowing it yet cannot make them.
//!
//! Not a singleton: each replica's own serving certificate. Every replica holds its own key (it never
//! leaves the replica), has it issued from the shared CA at start and renews it itself; a leader
//! could not do it for the others. Rotating the mesh CA, when it is built, is the leader's.

use crate::backend::election::{Election, LeaderGuard, Leadership};
use crate::server::ControlPlane;
use std::sync::Arc;
use std::time::Duration;

/// How the leader's singletons run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This replica's id: the value of the election key while it leads, shown in `GET /v1/mesh`.
    pub replica_id: String,
    /// The election lease's time to live: a killed leader is replaced within it.
    pub lease_ttl: Duration,
    /// How often the leader sweeps expired records.
    pub sweep_interval: Duration,
    /// How long an expired join token is kept (listed, and refused as expired) before the sweep.
    pub token_retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            replica_id: default_replica_id(),
            lease_ttl: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(60),
            token_retention: Duration::from_secs(3600),
        }
    }
}

/// `<hostname>/<pid>`: unique among replicas at any moment, and says where to look.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "weft-control".to_string());
    format!("{host}/{}", std::process::id())
}

/// Follows the election until shutdown: tells of every change (log, `weft_control_leader`), sweeps
/// while leading, and resigns on shutdown so another replica takes over at once.
pub async fn run(cp: Arc<ControlPlane>, mut election: Election) {
    let mut changes = election.subscribe();
    let mut tick = tokio::time::interval(cp.leader.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was = Leadership::default();
    loop {
        let now = changes.borrow_and_update().clone();
        report(&cp, &was, &now);
        was = now;
        tokio::select! {
            _ = cp.shutdown.cancelled() => break,
            r = changes.changed() => if r.is_err() { break },
            _ = tick.tick(), if was.leading() => {
                let (cp2, guard) = (cp.clone(), was.guard.clone());
                if let Some(guard) = guard {
                    // The sweep blocks on the store (each call bounded): off the async workers.
                    let _ = tokio::task::spawn_blocking(move || sweep(&cp2, &guard)).await;
                }
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || election.resign()).await;
    cp.metrics.set_leader(false);
}

/// Logs a change of leader and sets the gauge.
fn report(cp: &ControlPlane, was: &Leadership, now: &Leadership) {
    cp.metrics.set_leader(now.leading());
    if now.leading() && !was.leading() {
        tracing::info!(replica = %cp.leader.replica_id, "became leader");
    } else if was.leading() && !now.leading() {
        tracing::warn!(replica = %cp.leader.replica_id, "no longer leader");
    }
    if now.leader != was.leader && !now.leading() {
        match &now.leader {
            Some(leader) => tracing::info!(leader = %leader, "leader is now {leader}"),
            None => tracing::info!("no leader known (the election is being held again)"),
        }
    }
}

/// One sweep of expired records, each kind on its own (one failing does not stop the others).
fn sweep(cp: &ControlPlane, guard: &LeaderGuard) {
    let now = crate::tokens::now_secs();
    let retention = cp.leader.token_retention.as_secs();
    // One lock at a time, each taken and released in its own statement.
    let tokens = cp.issuer.tokens().sweep(now, retention, guard);
    let claims = cp.issuer.claims().sweep(now, guard);
    let issued = cp.issuer.revocations().sweep(now, guard);
    for (kind, r) in [("token", tokens), ("claim", claims), ("issued", issued)] {
        match r {
            Ok(0) => {}
            Ok(n) => {
                cp.metrics.swept(kind, n);
                tracing::info!(kind, count = n, "swept expired records as leader");
            }
            Err(e) => {
                tracing::warn!(kind, error = %e, "expiry sweep not done; trying again next period")
            }
        }
    }
}

//! The leader election on etcd: the replica that creates `<prefix>leader` (if absent, on a lease of
//! its own, its replica id as the value) leads, keeps the lease alive, and revokes it when it stops,
//! so the key goes at once and another replica takes it. One killed outright leaves the key until
//! its lease expires (within `--leader-lease-ttl`: the lease is a second shorter). The others watch the key and try again the
//! moment it is deleted.
//!
//! A create-if-absent key rather than etcd's election API (`Campaign`): its campaign is one call that
//! blocks inside etcd until the caller leads, which fits neither the bounded calls every other store
//! access makes here nor a replica that must notice it was cut off; the key is read, watched and
//! compared with the same primitives as every record, and its value names the leader for
//! `GET /v1/mesh`.
//!
//! A leader that cannot renew its lease steps down before the lease can have expired in etcd (it
//! counts from the moment it sent the last renewal that was answered), and every write it makes as
//! leader is guarded by the key's create revision in the same transaction
//! ([`crate::backend::election`]), so a replica cut off from etcd never writes as leader after
//! another one took over.

use super::{EtcdBackend, CALL_TIMEOUT};
use crate::backend::election::{Election, LeaderGuard, Leadership};
use etcd_client::{
    Client, Compare, CompareOp, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a candidate waits before trying again after etcd failed it.
const RETRY: Duration = Duration::from_secs(1);

impl EtcdBackend {
    /// The election key: its value is the leader's replica id.
    pub fn election_key(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// Stands for leader as `id` on a lease of `ttl` until the returned election is resigned.
    pub(super) fn start_election(&self, id: &str, ttl: Duration) -> Election {
        let (state, changes) = watch::channel(Leadership::default());
        let stop = CancellationToken::new();
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let candidate = Candidate {
            client: self.client.clone(),
            key: self.election_key(),
            id: id.to_string(),
            // A second shorter than asked: etcd finds an expired lease up to half a second late,
            // and the deletion still has to reach the others, who should lead within `ttl`.
            ttl_secs: i64::try_from(ttl.as_secs().saturating_sub(1).max(2)).unwrap_or(9),
            state,
            stop: stop.clone(),
        };
        self.runtime().spawn(async move {
            candidate.run().await;
            let _ = done_tx.send(());
        });
        let resign = move || {
            stop.cancel();
            let _ = done_rx.recv_timeout(CALL_TIMEOUT + Duration::from_secs(1));
        };
        Election::new(changes, Box::new(resign))
    }
}

struct Candidate {
    client: Client,
    key: String,
    id: String,
    ttl_secs: i64,
    state: watch::Sender<Leadership>,
    stop: CancellationToken,
}

/// One etcd call, bounded like every other.
async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

impl Candidate {
    async fn run(mut self) {
        while !self.stop.is_cancelled() {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "leader election: etcd failed a step; trying again");
                self.state.send_replace(Leadership::default());
                tokio::select! {
                    _ = self.stop.cancelled() => {}
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
        self.state.send_replace(Leadership::default());
    }

    /// Tries to take the key once: leads until the lease is lost, or follows until the key goes.
    async fn round(&mut self) -> Result<(), String> {
        // The lease is counted from before it was asked for: etcd's clock starts later than ours.
        let asked = Instant::now();
        let lease = bounded(self.client.lease_grant(self.ttl_secs, None)).await?;
        let put = PutOptions::new().with_lease(lease.id());
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                self.key.clone(),
                self.id.clone(),
                Some(put),
            )])
            .or_else(vec![TxnOp::get(self.key.clone(), None)]);
        let resp = match bounded(self.client.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                self.revoke(lease.id()).await;
                return Err(e);
            }
        };
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            let valid_until = asked + Duration::from_secs(lease.ttl().max(0).unsigned_abs());
            return self.lead(lease.id(), revision, valid_until).await;
        }
        self.revoke(lease.id()).await;
        let leader = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        });
        match leader {
            Some(leader) => self.follow(leader, revision).await,
            // Deleted between the compare and the read: try again at once.
            None => Ok(()),
        }
    }

    async fn revoke(&mut self, lease: i64) {
        if let Err(e) = bounded(self.client.lease_revoke(lease)).await {
            tracing::debug!(error = %e, "leader election: lease not revoked; it expires by itself");
        }
    }

    /// Leads until the lease cannot be kept, the key goes, or the candidacy ends.
    async fn lead(
        &mut self,
        lease: i64,
        revision: i64,
        mut valid_until: Instant,
    ) -> Result<(), String> {
        self.state.send_replace(Leadership {
            leader: Some(self.id.clone()),
            guard: Some(LeaderGuard {
                key: self.key.clone(),
                revision,
            }),
        });
        let period = Duration::from_secs(self.ttl_secs.unsigned_abs()) / 3;
        // Stepping down this long before the lease could expire leaves room for a clock drift and
        // for a sweep already under way to finish its call.
        let margin = period / 2 + Duration::from_millis(500);
        let mut keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        let mut watch: Option<WatchStream> = None;
        let mut tick = tokio::time::interval(period);
        let why = loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    self.revoke(lease).await;
                    tracing::info!("resigned the leadership: the lease is revoked for another replica to take over");
                    return Ok(());
                }
                _ = tick.tick() => {
                    if Instant::now() + margin >= valid_until {
                        break "its lease could not be renewed in time (etcd unreachable?)";
                    }
                    match self.renew(lease, &mut keeper).await {
                        Ok(Some(until)) => valid_until = until,
                        Ok(None) => break "its lease expired",
                        Err(e) => tracing::warn!(error = %e, "leader lease not renewed; trying again"),
                    }
                    if watch.is_none() {
                        watch = self.watch_key(revision).await;
                    }
                }
                gone = key_deleted(&mut watch) => if gone {
                    break "the election key was deleted";
                },
            }
        };
        self.state.send_replace(Leadership::default());
        tracing::warn!(reason = why, "stepping down as leader");
        self.revoke(lease).await;
        Ok(())
    }

    /// Renews the lease once: until when it holds, or `None` when etcd says it is gone.
    async fn renew(
        &mut self,
        lease: i64,
        keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    ) -> Result<Option<Instant>, String> {
        if keeper.is_none() {
            *keeper = Some(bounded(self.client.lease_keep_alive(lease)).await?);
        }
        let Some((k, stream)) = keeper.as_mut() else {
            return Err("no keep-alive stream".into());
        };
        let sent = Instant::now();
        let answer = bounded(async {
            k.keep_alive().await?;
            stream.message().await
        })
        .await;
        match answer {
            Ok(Some(r)) if r.ttl() > 0 => {
                Ok(Some(sent + Duration::from_secs(r.ttl().unsigned_abs())))
            }
            Ok(Some(_)) => Ok(None),
            Ok(None) | Err(_) => {
                // A broken stream is opened again on the next renewal.
                *keeper = None;
                Err(answer
                    .err()
                    .unwrap_or_else(|| "keep-alive stream closed".into()))
            }
        }
    }

    /// Watches the election key from just after `revision` (`None` if etcd does not answer).
    async fn watch_key(&mut self, revision: i64) -> Option<WatchStream> {
        let opts = WatchOptions::new().with_start_revision(revision + 1);
        bounded(self.client.watch(self.key.clone(), Some(opts)))
            .await
            .ok()
    }

    /// Follows `leader` until the election key is deleted (or the watch is lost: then the key is
    /// read again), telling of the leader when it changed.
    async fn follow(&mut self, leader: String, revision: i64) -> Result<(), String> {
        self.state.send_replace(Leadership {
            leader: Some(leader),
            guard: None,
        });
        let mut watch = Some(
            bounded(self.client.watch(
                self.key.clone(),
                Some(WatchOptions::new().with_start_revision(revision + 1)),
            ))
            .await?,
        );
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = key_deleted_or_lost(&mut watch) => {}
        }
        Ok(())
    }
}

/// Waits for the next watch answer: `true` when it deletes the key. A lost watch is dropped (and
/// waits forever, until it is opened again).
async fn key_deleted(watch: &mut Option<WatchStream>) -> bool {
    let Some(w) = watch.as_mut() else {
        return std::future::pending().await;
    };
    match w.message().await {
        Ok(Some(resp)) if !resp.canceled() => resp
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete),
        _ => {
            *watch = None;
            false
        }
    }
}

/// Waits until the key is deleted or the watch is lost (either way the key is read again).
async fn key_deleted_or_lost(watch: &mut Option<WatchStream>) {
    while watch.is_some() {
        if key_deleted(watch).await {
            return;
        }
    }
}

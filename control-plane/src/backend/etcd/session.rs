//! A replica's session on etcd, and the few key operations the mesh-wide registry, service
//! addresses and rollout state need beyond [`crate::backend::Backend`].
//!
//! A session is an etcd lease of the replica's own (granted at start, kept alive every third of
//! [`SESSION_TTL`], revoked on a graceful shutdown) and a presence key `<prefix>replicas/<id>`
//! holding what the replica advertises. Keys written with the lease vanish when the replica is gone
//! (killed, cut off from etcd) for longer than the TTL. A lease etcd let expire while the replica
//! lived (a long partition) is replaced by a new one and announced on [`ReplicaSession::renewed`],
//! so its owner writes its keys again. Leader election keeps a lease of its own: this one is only
//! the replica's presence.
//!
//! Values are written in the head format of every record (`v` + bytes, never split: these values
//! are small), so [`crate::backend::Backend::get`] and `list` read them too.

use super::{EtcdBackend, CALL_TIMEOUT};
use crate::backend::Expect;
use crate::persist::StateError;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a replica's keys outlive it: a dead replica's workloads leave the registry within this.
pub const SESSION_TTL: Duration = Duration::from_secs(10);
/// How long to wait before trying again after losing etcd (keep-alive, follow).
const RETRY: Duration = Duration::from_secs(1);

/// One replica's lease and presence key. See the module doc.
#[derive(Debug)]
pub struct ReplicaSession {
    id: String,
    lease: Arc<AtomicI64>,
    renewed: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
}

impl ReplicaSession {
    /// The replica's id (the last part of its presence key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lease its keys are written with now.
    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// Bumped when a new lease replaced one etcd let expire: every leased key must be written again.
    pub fn renewed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.renewed.subscribe()
    }
}

/// What [`EtcdBackend::follow`] reports about the keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// Every key and value (after the key's prefix) with its version: what is held must be replaced
    /// by this (sent first, and again after the watch reconnected).
    Reset(Vec<(String, Vec<u8>, u64)>),
    Put(String, Vec<u8>, u64),
    /// A key removed at this store revision.
    Delete(String, u64),
}

fn head(value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 1);
    v.push(b'v');
    v.extend_from_slice(value);
    v
}

/// The bytes of an inline head (`None` for a split record: not written by these helpers).
fn inline(head: &[u8]) -> Option<&[u8]> {
    head.strip_prefix(b"v")
}

fn version(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

async fn grant(
    client: &mut Client,
    presence_key: &str,
    info: &[u8],
    ttl: Duration,
) -> Result<i64, etcd_client::Error> {
    let secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(10);
    let lease = client.lease_grant(secs, None).await?.id();
    client
        .put(
            presence_key,
            head(info),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    Ok(lease)
}

enum KeepEnd {
    Stopped,
    Expired,
}

/// Keeps `lease` alive until stopped, or until etcd says it expired.
async fn keep_once(
    client: &mut Client,
    lease: i64,
    ttl: Duration,
    stop: &CancellationToken,
) -> Result<KeepEnd, String> {
    let (mut keeper, mut stream) = client
        .lease_keep_alive(lease)
        .await
        .map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(KeepEnd::Stopped),
            _ = tick.tick() => {}
        }
        keeper.keep_alive().await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(CALL_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() <= 0 => return Ok(KeepEnd::Expired),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Err("the keep-alive stream ended".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no keep-alive answer within {CALL_TIMEOUT:?}")),
        }
    }
}

struct Keeper {
    client: Client,
    lease: Arc<AtomicI64>,
    presence_key: String,
    info: Vec<u8>,
    ttl: Duration,
    renewed: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
}

impl Keeper {
    async fn run(mut self) {
        loop {
            let lease = self.lease.load(Ordering::Relaxed);
            match keep_once(&mut self.client, lease, self.ttl, &self.stop).await {
                Ok(KeepEnd::Stopped) => return,
                Ok(KeepEnd::Expired) => {
                    match grant(&mut self.client, &self.presence_key, &self.info, self.ttl).await {
                        Ok(new) => {
                            tracing::warn!(key = %self.presence_key, "replica lease expired in etcd; granted a new one and writing this replica's keys again");
                            self.lease.store(new, Ordering::Relaxed);
                            self.renewed.send_modify(|n| *n += 1);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot grant a new replica lease; trying again")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replica lease keep-alive lost; trying again")
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

impl EtcdBackend {
    /// The full key of `sub` (`registry/ns/name`, `replicas/<id>`, ...) under the prefix.
    fn sub_key(&self, sub: &str) -> String {
        format!("{}{sub}", self.prefix)
    }

    /// Grants the replica's lease, writes its presence key `<prefix>replicas/<id>` holding `info`,
    /// and keeps the lease alive until [`EtcdBackend::end_session`].
    pub fn start_session(
        &self,
        id: &str,
        info: &[u8],
        ttl: Duration,
    ) -> Result<Arc<ReplicaSession>, StateError> {
        let presence_key = self.sub_key(&format!("replicas/{id}"));
        let lease = {
            let (key, info) = (presence_key.clone(), info.to_vec());
            self.call(move |mut c| async move { grant(&mut c, &key, &info, ttl).await })?
        };
        let session = Arc::new(ReplicaSession {
            id: id.to_string(),
            lease: Arc::new(AtomicI64::new(lease)),
            renewed: tokio::sync::watch::channel(0).0,
            stop: CancellationToken::new(),
        });
        let keeper = Keeper {
            client: self.client.clone(),
            lease: session.lease.clone(),
            presence_key,
            info: info.to_vec(),
            ttl,
            renewed: session.renewed.clone(),
            stop: session.stop.clone(),
        };
        self.runtime().spawn(keeper.run());
        Ok(session)
    }

    /// Stops keeping the session alive and revokes its lease: its keys go at once.
    pub fn end_session(&self, session: &ReplicaSession) -> Result<(), StateError> {
        session.stop.cancel();
        let lease = session.lease();
        self.call(move |mut c| async move { c.lease_revoke(lease).await })?;
        Ok(())
    }

    /// The value and version under `sub`.
    pub fn get_key(&self, sub: &str) -> Result<Option<(Vec<u8>, u64)>, StateError> {
        let key = self.sub_key(sub);
        let mut resp = self.call(move |mut c| async move { c.get(key, None).await })?;
        Ok(resp.take_kvs().into_iter().next().and_then(|kv| {
            let value = inline(kv.value())?.to_vec();
            Some((value, version(kv.mod_revision())))
        }))
    }

    /// Every key under `sub` (as the part after it), with its value and version.
    pub fn list_keys(&self, sub: &str) -> Result<Vec<(String, Vec<u8>, u64)>, StateError> {
        let prefix = self.sub_key(sub);
        let mut resp = self.call({
            let prefix = prefix.clone();
            move |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .filter_map(|kv| entry(&prefix, kv.key(), kv.value(), kv.mod_revision()))
            .collect())
    }

    /// Writes `value` under `sub` with the session's lease (`None`: no lease) if `expect` holds;
    /// the new version, or `None` when it did not hold.
    pub fn put_key(
        &self,
        sub: &str,
        value: &[u8],
        expect: Expect,
        session: Option<&ReplicaSession>,
    ) -> Result<Option<u64>, StateError> {
        let key = self.sub_key(sub);
        let options = session.map(|s| PutOptions::new().with_lease(s.lease()));
        let txn = Txn::new()
            .when(self.compare(&key, expect))
            .and_then(vec![TxnOp::put(key.clone(), head(value), options)]);
        let resp = self.call(move |mut c| async move { c.txn(txn).await })?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| version(h.revision()))))
    }

    /// Creates every `(sub, value)` in one transaction if none exists yet; false (nothing written)
    /// when one does.
    pub fn create_keys(&self, values: Vec<(String, Vec<u8>)>) -> Result<bool, StateError> {
        let (compares, puts): (Vec<Compare>, Vec<TxnOp>) = values
            .into_iter()
            .map(|(sub, value)| {
                let key = self.sub_key(&sub);
                (
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    TxnOp::put(key, head(&value), None),
                )
            })
            .unzip();
        let txn = Txn::new().when(compares).and_then(puts);
        let resp = self.call(move |mut c| async move { c.txn(txn).await })?;
        Ok(resp.succeeded())
    }

    /// Deletes every `sub` in one transaction if the first holds exactly `first_value`; false when
    /// it does not (someone else changed it).
    pub fn delete_keys_if(&self, subs: &[String], first_value: &[u8]) -> Result<bool, StateError> {
        let Some(first) = subs.first() else {
            return Ok(true);
        };
        let compare = Compare::value(self.sub_key(first), CompareOp::Equal, head(first_value));
        let deletes = subs
            .iter()
            .map(|s| TxnOp::delete(self.sub_key(s), None))
            .collect::<Vec<_>>();
        let txn = Txn::new().when(vec![compare]).and_then(deletes);
        let resp = self.call(move |mut c| async move { c.txn(txn).await })?;
        Ok(resp.succeeded())
    }

    /// Deletes `sub` if `expect` holds; false when it did not.
    pub fn delete_key(&self, sub: &str, expect: Expect) -> Result<bool, StateError> {
        let key = self.sub_key(sub);
        let txn = Txn::new()
            .when(self.compare(&key, expect))
            .and_then(vec![TxnOp::delete(key, None)]);
        let resp = self.call(move |mut c| async move { c.txn(txn).await })?;
        Ok(resp.succeeded())
    }

    /// Follows the keys under `sub` until the receiver is dropped: a [`Follow::Reset`] with all of
    /// them first (and again after a lost watch), then each change.
    pub fn follow(&self, sub: &str) -> tokio::sync::mpsc::UnboundedReceiver<Follow> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = self.client.clone();
        let prefix = self.sub_key(sub);
        self.runtime().spawn(async move {
            while !tx.is_closed() {
                if let Err(e) = follow_once(client.clone(), &prefix, &tx).await {
                    tracing::warn!(prefix, error = %e, "etcd watch lost; reading again");
                }
                tokio::time::sleep(RETRY).await;
            }
        });
        rx
    }
}

fn entry(prefix: &str, key: &[u8], value: &[u8], rev: i64) -> Option<(String, Vec<u8>, u64)> {
    let key = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    Some((key.to_string(), inline(value)?.to_vec(), version(rev)))
}

async fn follow_once(
    mut client: Client,
    prefix: &str,
    tx: &tokio::sync::mpsc::UnboundedSender<Follow>,
) -> Result<(), String> {
    let listed = tokio::time::timeout(
        CALL_TIMEOUT,
        client.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let all = listed
        .kvs()
        .iter()
        .filter_map(|kv| entry(prefix, kv.key(), kv.value(), kv.mod_revision()))
        .collect();
    if tx.send(Follow::Reset(all)).is_err() {
        return Ok(());
    }
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = client
        .watch(prefix, Some(options))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(resp) = stream.message().await.map_err(|e| e.to_string())? {
        if resp.canceled() {
            return Err("the watch was cancelled (compacted)".into());
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(prefix)) else {
                continue;
            };
            let msg = match event.event_type() {
                EventType::Delete => Follow::Delete(key.to_string(), version(kv.mod_revision())),
                EventType::Put => match inline(kv.value()) {
                    Some(v) => Follow::Put(key.to_string(), v.to_vec(), version(kv.mod_revision())),
                    None => continue,
                },
            };
            if tx.send(msg).is_err() {
                return Ok(());
            }
        }
    }
    Err("the watch stream ended".into())
}

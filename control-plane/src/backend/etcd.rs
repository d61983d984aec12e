//! etcd v3 as a [`Backend`], so several control-plane replicas share one state.
//!
//! Keys, under the prefix (`--etcd-prefix`, default `/weft/`):
//! - `<prefix><collection>/<key>`: a record's head, whose mod_revision is the record's version. Its
//!   value is `v` followed by the record, or `c` followed by a manifest when the record is split;
//! - `<prefix>secrets/<name>`: the mesh CA (its key sealed, see [`crate::shared_ca`]) and the operator
//!   token, created once by the first replica;
//! - `<prefix>chunks/<collection>/<key>/<nonce>/<index>`: the pieces of a record over [`CHUNK`]
//!   bytes (etcd refuses a request over 1.5 MiB by default; a mesh of thousands of services is more).
//!   A write puts the new pieces under a fresh nonce, then swaps the head; pieces of the head it
//!   replaced are deleted after. A reader takes the pieces at the revision it read the head at, so it
//!   never mixes two writes.
//! - `<prefix>replicas/<id>`, `<prefix>registry/<ns>/<name>`, `<prefix>acks/<id>`,
//!   `<prefix>vips/svc/...` and `<prefix>vips/addr/...`: each replica's session and what replicas share
//!   key by key (see [`session`] and [`crate::presence`]).
//!
//! Every write is one transaction comparing the head's revision (create_revision 0 for "absent",
//! mod_revision for "this version"): a write on a stale read fails as a [`Conflict`].
//!
//! The client runs on a runtime thread of its own; each call waits for its answer at most
//! [`CALL_TIMEOUT`] and a call etcd does not answer is `StateError::Unavailable` naming etcd, which
//! the operator API answers 503. Proxies are served from what the replica holds meanwhile.

mod campaign;
mod session;
pub use session::{Follow, ReplicaSession, SESSION_TTL};

use super::election::{Election, LeaderGuard, LedError};
use super::{Backend, Collection, Conflict, Expect, Listing, Record, WriteError};
use crate::persist::StateError;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// The longest a caller waits for etcd; past it the call is `StateError::Unavailable`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest record kept in the head key itself; larger ones are split into pieces this size.
pub const CHUNK: usize = 1024 * 1024;
/// How long the watch waits before it connects again after losing etcd.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// Where etcd is and how to reach it (named as etcdctl names them).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// CA bundle that signed the members' certificates (`--etcd-cacert`): connect with TLS.
    pub cacert: Option<PathBuf>,
    /// Client certificate and key (`--etcd-cert`, `--etcd-key`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd user (`--etcd-user`) and the file holding its password (`--etcd-password-file`).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Prefix of every key (`--etcd-prefix`).
    pub prefix: String,
}

/// `etcd://host:2379[,host:2379...]` as endpoints.
pub fn parse_url(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix("etcd://")?;
    let endpoints: Vec<String> = rest
        .split(',')
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty())
        .collect();
    (!endpoints.is_empty() && endpoints.iter().all(|e| e.contains(':'))).then_some(endpoints)
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    nonce: String,
    count: usize,
    len: usize,
    sha256: String,
}

pub struct EtcdBackend {
    /// Dropped in the background (see `Drop`), so a backend may be dropped inside async code.
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    endpoints: String,
    changes: tokio::sync::broadcast::Sender<Collection>,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn unavailable(endpoints: &str, reason: impl std::fmt::Display) -> StateError {
    StateError::Unavailable {
        store: format!("etcd at {endpoints}"),
        reason: reason.to_string(),
    }
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, StateError> {
    std::fs::read(path).map_err(|source| StateError::Io {
        action: "read",
        path: path.clone(),
        source,
    })
}

fn connect_options(opts: &EtcdOptions) -> Result<ConnectOptions, StateError> {
    let mut co = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), CALL_TIMEOUT)
        // A member cut off from the others refuses at once (and ends a watch on it) rather than
        // holding the call: the call and the watch go to another member.
        .with_require_leader(true);
    if let Some(ca) = &opts.cacert {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read_file(ca)?));
        if let (Some(cert), Some(key)) = (&opts.cert, &opts.key) {
            tls = tls.identity(Identity::from_pem(read_file(cert)?, read_file(key)?));
        }
        co = co.with_tls(tls);
    }
    if let Some(user) = &opts.user {
        let password = match &opts.password_file {
            Some(p) => String::from_utf8_lossy(&read_file(p)?)
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            None => String::new(),
        };
        co = co.with_user(user.clone(), password);
    }
    Ok(co)
}

impl EtcdBackend {
    /// Connects and checks that etcd answers (a replica does not start on a store it cannot read).
    pub fn connect(opts: &EtcdOptions) -> Result<EtcdBackend, StateError> {
        let scheme = if opts.cacert.is_some() {
            "https"
        } else {
            "http"
        };
        let urls: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let endpoints = urls.join(",");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weft-etcd")
            .enable_all()
            .build()
            .map_err(|e| unavailable(&endpoints, format!("cannot start its client: {e}")))?;
        let co = connect_options(opts)?;
        let client = {
            let (urls, co) = (urls.clone(), co.clone());
            wait(&runtime, &endpoints, async move {
                Client::connect(urls, Some(co)).await
            })?
        };
        let backend = EtcdBackend {
            runtime: Some(runtime),
            client,
            prefix: opts.prefix.clone(),
            endpoints,
            changes: tokio::sync::broadcast::channel(256).0,
        };
        let probe = backend.key(Collection::Resources, "");
        let read = backend.call(move |mut c| async move {
            c.get(
                probe,
                Some(GetOptions::new().with_keys_only().with_limit(1)),
            )
            .await
        })?;
        // Watched from just after the revision this probe read, so a change made between connecting
        // and the watch being open is still announced (components read their state after this).
        let seen = read.header().map_or(0, |h| h.revision());
        let moved = std::sync::Arc::new(tokio::sync::Notify::new());
        backend.start_watch(seen + 1, moved.clone());
        let probe = backend.key(Collection::Resources, "");
        let members = super::members::Members {
            urls,
            options: co,
            probe,
            moved,
        };
        members.watch(backend.runtime(), backend.client.clone());
        Ok(backend)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the backend")
    }

    /// Runs one etcd call on the client's runtime and waits for it at most [`CALL_TIMEOUT`].
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        wait(self.runtime(), &self.endpoints, f(self.client.clone()))
    }

    fn key(&self, collection: Collection, key: &str) -> String {
        format!("{}{}/{key}", self.prefix, collection.name())
    }

    /// The full etcd key of a value kept outside every collection, under `<prefix>secrets/` (the
    /// shared CA and the operator token; the watch announces no collection for them).
    pub fn secret_key(&self, name: &str) -> String {
        format!("{}secrets/{name}", self.prefix)
    }

    /// The value stored under [`EtcdBackend::secret_key`] `name`, as stored.
    pub fn get_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        let key = self.secret_key(name);
        let mut resp = self.call(move |mut c| async move { c.get(key, None).await })?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.value().to_vec()))
    }

    /// The value stored under [`EtcdBackend::secret_key`] `name` and its mod revision.
    pub fn get_secret_at(&self, name: &str) -> Result<Option<(Vec<u8>, i64)>, StateError> {
        let key = self.secret_key(name);
        let mut resp = self.call(move |mut c| async move { c.get(key, None).await })?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// Replaces every `(name, value, revision)` in one transaction if each is still at the mod
    /// revision it was read at; `false` (nothing written) when one changed meanwhile.
    pub fn replace_secrets(&self, values: Vec<(&str, Vec<u8>, i64)>) -> Result<bool, StateError> {
        let (compares, puts): (Vec<Compare>, Vec<TxnOp>) = values
            .into_iter()
            .map(|(name, value, revision)| {
                let key = self.secret_key(name);
                (
                    Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                    TxnOp::put(key, value, None),
                )
            })
            .unzip();
        let txn = Txn::new().when(compares).and_then(puts);
        let resp = self.call(move |mut c| async move { c.txn(txn).await })?;
        Ok(resp.succeeded())
    }

    /// The first key under the prefix, if any: whether a mesh (or anything) is stored there.
    pub fn first_key(&self) -> Result<Option<String>, StateError> {
        let prefix = self.prefix.clone();
        let mut resp = self.call(move |mut c| async move {
            c.get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(1),
                ),
            )
            .await
        })?;
        Ok(resp
            .take_kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned()))
    }

    /// Writes every `(name, value)` in one transaction if none of them exists yet; `false` (and
    /// nothing written) when one does: another replica created them first.
    pub fn create_secrets(&self, values: Vec<(&str, Vec<u8>)>) -> Result<bool, StateError> {
        let (compares, puts): (Vec<Compare>, Vec<TxnOp>) = values
            .into_iter()
            .map(|(name, value)| {
                let key = self.secret_key(name);
                (
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    TxnOp::put(key, value, None),
                )
            })
            .unzip();
        let txn = Txn::new().when(compares).and_then(puts);
        let resp = self.call(move |mut c| async move { c.txn(txn).await })?;
        Ok(resp.succeeded())
    }

    fn chunks(&self, collection: Collection, key: &str) -> String {
        format!("{}chunks/{}/{key}/", self.prefix, collection.name())
    }

    fn corrupt(&self, collection: Collection, key: &str, reason: impl Into<String>) -> StateError {
        StateError::CorruptRecord {
            store: format!("etcd at {}", self.endpoints),
            key: self.key(collection, key),
            reason: reason.into(),
        }
    }

    /// The record a head holds, reading its pieces at `revision` when it was split.
    fn decode(
        &self,
        collection: Collection,
        key: &str,
        head: &[u8],
        revision: i64,
    ) -> Result<Vec<u8>, StateError> {
        match head.split_first() {
            Some((b'v', value)) => Ok(value.to_vec()),
            Some((b'c', manifest)) => {
                let m: Manifest = serde_json::from_slice(manifest)
                    .map_err(|e| self.corrupt(collection, key, format!("bad manifest: {e}")))?;
                let prefix = format!("{}{}/", self.chunks(collection, key), m.nonce);
                let mut resp = self.call(move |mut c| async move {
                    c.get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_revision(revision)),
                    )
                    .await
                })?;
                let mut pieces: Vec<(Vec<u8>, Vec<u8>)> = resp
                    .take_kvs()
                    .into_iter()
                    .map(|kv| kv.into_key_value())
                    .collect();
                pieces.sort();
                let value: Vec<u8> = pieces.into_iter().flat_map(|(_, v)| v).collect();
                if value.len() != m.len || hex::encode(Sha256::digest(&value)) != m.sha256 {
                    return Err(self.corrupt(
                        collection,
                        key,
                        format!(
                            "its {} pieces do not add up to what its head names",
                            m.count
                        ),
                    ));
                }
                Ok(value)
            }
            _ => Err(self.corrupt(collection, key, "unknown head format")),
        }
    }

    /// The head value for `value`: inline, or a manifest of pieces written first under a new nonce.
    fn encode(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
    ) -> Result<(Vec<u8>, Option<String>), StateError> {
        if value.len() <= CHUNK {
            let mut head = Vec::with_capacity(value.len() + 1);
            head.push(b'v');
            head.extend_from_slice(value);
            return Ok((head, None));
        }
        let mut raw = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
        let nonce = hex::encode(raw);
        let base = format!("{}{nonce}/", self.chunks(collection, key));
        let pieces: Vec<Vec<u8>> = value.chunks(CHUNK).map(<[u8]>::to_vec).collect();
        let count = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            let k = format!("{base}{i:06}");
            self.call(move |mut c| async move { c.put(k, piece, None).await })?;
        }
        let manifest = Manifest {
            nonce: nonce.clone(),
            count,
            len: value.len(),
            sha256: hex::encode(Sha256::digest(value)),
        };
        let mut head = vec![b'c'];
        head.extend(serde_json::to_vec(&manifest).expect("a manifest serializes"));
        Ok((head, Some(nonce)))
    }

    /// Deletes the pieces of `key` other than those of `keep` (after its head moved on).
    fn drop_pieces(&self, collection: Collection, key: &str, keep: Option<&str>) {
        let prefix = self.chunks(collection, key);
        let keep = keep.map(|n| format!("{prefix}{n}/"));
        let listed = self.call({
            let prefix = prefix.clone();
            move |mut c| async move {
                c.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
            }
        });
        let Ok(mut listed) = listed else {
            return;
        };
        let stale: std::collections::BTreeSet<String> = listed
            .take_kvs()
            .into_iter()
            .filter_map(|kv| kv.key_str().ok().map(str::to_string))
            .filter(|k| {
                keep.as_ref()
                    .is_none_or(|keep| !k.starts_with(keep.as_str()))
            })
            .filter_map(|k| {
                let rest = k.strip_prefix(&prefix)?;
                Some(format!("{prefix}{}/", rest.split('/').next()?))
            })
            .collect();
        for dir in stale {
            // Left over on failure: unread (no head names them) and removed by the next write.
            let _ = self.call(move |mut c| async move {
                c.delete(dir, Some(DeleteOptions::new().with_prefix()))
                    .await
            });
        }
    }

    fn compare(&self, head: &str, expect: Expect) -> Vec<Compare> {
        match expect {
            Expect::Any => Vec::new(),
            Expect::Absent => vec![Compare::create_revision(head, CompareOp::Equal, 0)],
            Expect::Version(v) => vec![Compare::mod_revision(
                head,
                CompareOp::Equal,
                i64::try_from(v).unwrap_or(i64::MAX),
            )],
        }
    }

    /// Follows every change under the prefix and announces the collections it touched. After a lost
    /// connection every collection is announced (changes may have been missed meanwhile). `moved`
    /// restarts it when a member leaves the balanced set: the watch may be on that member, silent.
    fn start_watch(&self, from: i64, moved: std::sync::Arc<tokio::sync::Notify>) {
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        let changes = self.changes.clone();
        self.runtime().spawn(async move {
            let mut from = from;
            loop {
                tokio::select! {
                    r = watch_once(client.clone(), &prefix, &changes, &mut from) => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "etcd watch lost; connecting again");
                        }
                    }
                    () = moved.notified() => {
                        tracing::info!("etcd watch started again on the members that answer");
                    }
                }
                tokio::time::sleep(WATCH_RETRY).await;
                for c in Collection::ALL {
                    let _ = changes.send(c);
                }
            }
        });
    }
}

async fn watch_once(
    mut client: Client,
    prefix: &str,
    changes: &tokio::sync::broadcast::Sender<Collection>,
    from: &mut i64,
) -> Result<(), etcd_client::Error> {
    let mut options = WatchOptions::new().with_prefix();
    if *from > 0 {
        options = options.with_start_revision(*from);
    }
    let mut stream = client.watch(prefix, Some(options)).await?;
    while let Some(resp) = stream.message().await? {
        if resp.canceled() {
            // Compacted past `from`: start from now, having announced everything.
            *from = 0;
            return Ok(());
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            *from = (*from).max(kv.mod_revision() + 1);
            let name = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(prefix))
                .and_then(|k| k.split('/').next());
            if let Some(c) = name.and_then(Collection::from_name) {
                let _ = changes.send(c);
            }
        }
    }
    Ok(())
}

/// Runs `fut` on `runtime` and waits for it at most [`CALL_TIMEOUT`] (from sync code, which may be
/// on another runtime's thread: the wait is a channel, never a nested `block_on`).
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    endpoints: &str,
    fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, StateError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(tokio::time::timeout(CALL_TIMEOUT, fut).await);
    });
    match rx.recv_timeout(CALL_TIMEOUT + Duration::from_millis(500)) {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(unavailable(endpoints, e)),
        Ok(Err(_)) | Err(_) => Err(unavailable(
            endpoints,
            format!("no answer within {CALL_TIMEOUT:?}"),
        )),
    }
}

impl Backend for EtcdBackend {
    fn get(&self, collection: Collection, key: &str) -> Result<Option<Record>, StateError> {
        let head = self.key(collection, key);
        let mut resp = self.call(move |mut c| async move { c.get(head, None).await })?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let Some(kv) = resp.take_kvs().into_iter().next() else {
            return Ok(None);
        };
        let value = self.decode(collection, key, kv.value(), revision)?;
        Ok(Some(Record {
            value,
            version: u64::try_from(kv.mod_revision()).unwrap_or(0),
        }))
    }

    fn list(&self, collection: Collection) -> Result<Listing, StateError> {
        let prefix = self.key(collection, "");
        let mut resp = self.call({
            let prefix = prefix.clone();
            move |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut records = BTreeMap::new();
        for kv in resp.take_kvs() {
            let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else {
                continue;
            };
            let value = self.decode(collection, key, kv.value(), revision)?;
            let version = u64::try_from(kv.mod_revision()).unwrap_or(0);
            records.insert(key.to_string(), Record { value, version });
        }
        Ok(Listing {
            records,
            revision: u64::try_from(revision).unwrap_or(0),
        })
    }

    fn put(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<u64, WriteError> {
        self.put_when(collection, key, value, expect, None)
    }

    fn delete(&self, collection: Collection, key: &str, expect: Expect) -> Result<(), WriteError> {
        self.delete_when(collection, key, expect, None)
    }

    fn elect(&self, id: &str, ttl: Duration) -> Election {
        self.start_election(id, ttl)
    }

    fn put_led(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
        expect: Expect,
        guard: &LeaderGuard,
    ) -> Result<u64, LedError> {
        let r = self.put_when(collection, key, value, expect, Some(guard));
        self.led(r, guard)
    }

    fn delete_led(
        &self,
        collection: Collection,
        key: &str,
        expect: Expect,
        guard: &LeaderGuard,
    ) -> Result<(), LedError> {
        let r = self.delete_when(collection, key, expect, Some(guard));
        self.led(r, guard)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Collection> {
        self.changes.subscribe()
    }

    fn describe(&self) -> String {
        format!("etcd at {} (prefix {})", self.endpoints, self.prefix)
    }

    fn shared(&self) -> bool {
        true
    }
}

impl EtcdBackend {
    /// The compares of a write: the record's expectation, and the leader's guard when given.
    fn compares(&self, head: &str, expect: Expect, guard: Option<&LeaderGuard>) -> Vec<Compare> {
        let mut when = self.compare(head, expect);
        if let Some(g) = guard {
            when.push(Compare::create_revision(
                g.key.clone(),
                CompareOp::Equal,
                g.revision,
            ));
        }
        when
    }

    fn put_when(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
        expect: Expect,
        guard: Option<&LeaderGuard>,
    ) -> Result<u64, WriteError> {
        let head = self.key(collection, key);
        let (head_value, nonce) = self.encode(collection, key, value)?;
        let txn = Txn::new()
            .when(self.compares(&head, expect, guard))
            .and_then(vec![
                TxnOp::get(head.clone(), None),
                TxnOp::put(head, head_value, None),
            ]);
        let resp = self.call(move |mut c| async move { c.txn(txn).await })?;
        if !resp.succeeded() {
            if nonce.is_some() {
                self.drop_pieces(collection, key, None);
            }
            return Err(Conflict {
                collection,
                key: key.to_string(),
                expected: expect,
            }
            .into());
        }
        if nonce.is_some() || replaced_split(&resp.op_responses()) {
            self.drop_pieces(collection, key, nonce.as_deref());
        }
        Ok(resp
            .header()
            .map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0)))
    }

    fn delete_when(
        &self,
        collection: Collection,
        key: &str,
        expect: Expect,
        guard: Option<&LeaderGuard>,
    ) -> Result<(), WriteError> {
        let head = self.key(collection, key);
        let txn = Txn::new()
            .when(self.compares(&head, expect, guard))
            .and_then(vec![
                TxnOp::get(head.clone(), None),
                TxnOp::delete(head, None),
            ]);
        let resp = self.call(move |mut c| async move { c.txn(txn).await })?;
        if !resp.succeeded() {
            return Err(Conflict {
                collection,
                key: key.to_string(),
                expected: expect,
            }
            .into());
        }
        if replaced_split(&resp.op_responses()) {
            self.drop_pieces(collection, key, None);
        }
        Ok(())
    }

    /// A guarded write's result: a failed compare is `NotLeader` when the election key is no
    /// longer the guard's (read again to tell it from a plain conflict).
    fn led<T>(&self, r: Result<T, WriteError>, guard: &LeaderGuard) -> Result<T, LedError> {
        match r {
            Err(WriteError::Conflict(c)) => {
                let key = guard.key.clone();
                let mut resp = self.call(move |mut c| async move { c.get(key, None).await })?;
                let held = resp
                    .take_kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == guard.revision);
                if held {
                    Err(LedError::Write(c.into()))
                } else {
                    Err(LedError::NotLeader(guard.key.clone()))
                }
            }
            other => Ok(other?),
        }
    }
}

/// Whether the head a transaction replaced (its first op reads it) was split into pieces.
fn replaced_split(ops: &[TxnOpResponse]) -> bool {
    ops.iter().any(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().iter().any(|kv| kv.value().first() == Some(&b'c')),
        _ => false,
    })
}

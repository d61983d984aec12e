//! Where the control plane's state lives: every stateful component (resources, join tokens,
//! revocations, certificate claims, service addresses, the workload registry) reads and writes through
//! one [`Backend`], either the state directory ([`dir::DirBackend`], the default, no service needed) or
//! etcd v3 ([`etcd::EtcdBackend`], for replicas sharing one state).
//!
//! A record is addressed by a [`Collection`] and a key and holds bytes (the component's JSON) with a
//! version. Writes state what they expect to find ([`Expect`]): absent, exactly the version read, or
//! anything; a write whose expectation fails is a typed [`Conflict`], and the component reads the
//! new state and tries again. Sets that change as a whole (the resources and their revision) are one
//! record; entries that change on their own (each join token) are one record each, so using a token is
//! a compare-and-swap on that token alone.
//!
//! Sync, not async: the components are used under std mutexes from both async handlers and sync code,
//! and their critical sections (check, then write) must not be split by an `.await`. The state
//! directory backend blocks on fsync as it always did; the etcd backend runs its client on a runtime
//! thread of its own and each call waits for its answer at most [`etcd::CALL_TIMEOUT`], so a down etcd
//! costs a caller a bounded wait and an error naming etcd, never a hang.
//!
//! Changes made by others (another replica) are announced on [`Backend::subscribe`] by collection;
//! the component reloads what it holds when the version it holds is no longer the stored one.

pub mod dir;
pub mod election;
pub mod etcd;
mod members;

use std::collections::BTreeMap;
use std::sync::Arc;
use weft_api::persist::StateError;

/// A kind of state; each is one file in the state directory and one key prefix in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Collection {
    /// The resources applied through the API and their revision: one record.
    Resources,
    /// Join tokens: one record per token id.
    Tokens,
    /// Issued certificates and revocations: one record in the state directory, one key per entry
    /// on etcd.
    Revocations,
    /// Workload claims: one record per certificate serial.
    Claims,
    /// Service virtual IPs: one record.
    Vips,
    /// The workload registry: one record.
    Registry,
}

/// The key of a collection held as one record.
pub const WHOLE: &str = "all";

impl Collection {
    pub const ALL: [Collection; 6] = [
        Collection::Resources,
        Collection::Tokens,
        Collection::Revocations,
        Collection::Claims,
        Collection::Vips,
        Collection::Registry,
    ];

    /// Its name in etcd keys and messages.
    pub fn name(self) -> &'static str {
        match self {
            Collection::Resources => "resources",
            Collection::Tokens => "tokens",
            Collection::Revocations => "revocations",
            Collection::Claims => "claims",
            Collection::Vips => "vips",
            Collection::Registry => "registry",
        }
    }

    pub fn from_name(name: &str) -> Option<Collection> {
        Collection::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Its file in the state directory (the names the state directory always had).
    pub fn file(self) -> &'static str {
        match self {
            Collection::Resources => "resources.json",
            Collection::Tokens => "tokens.json",
            Collection::Revocations => "revocations.json",
            Collection::Claims => "claims.json",
            Collection::Vips => "vips.json",
            Collection::Registry => "registry.json",
        }
    }

    /// Whether each key is a record of its own (else the collection is the one record [`WHOLE`]).
    /// Claims are one per certificate serial (the state directory's `claims.json` was always that
    /// map). Revocations are one record in the state directory and one key per entry on etcd (see
    /// [`crate::revocation`]).
    pub fn keyed(self) -> bool {
        matches!(self, Collection::Tokens | Collection::Claims)
    }

    /// The file mode in the state directory: the address table is not secret.
    pub fn mode(self) -> u32 {
        match self {
            Collection::Vips => 0o644,
            _ => 0o600,
        }
    }
}

/// A stored value and the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub value: Vec<u8>,
    pub version: u64,
}

/// The records of a collection by key, with the store revision they were read at.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub records: BTreeMap<String, Record>,
    pub revision: u64,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No record under the key.
    Absent,
    /// The record at exactly this version.
    Version(u64),
    /// Anything (last writer wins).
    Any,
}

impl Expect {
    /// The expectation for replacing what was read: its version, or absent if there was nothing.
    pub fn read(version: Option<u64>) -> Expect {
        version.map_or(Expect::Absent, Expect::Version)
    }
}

/// A write's expectation did not hold: someone else changed the record since it was read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{collection:?}/{key} changed meanwhile (expected {expected:?})")]
pub struct Conflict {
    pub collection: Collection,
    pub key: String,
    pub expected: Expect,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Conflict(#[from] Conflict),
    #[error(transparent)]
    State(#[from] StateError),
}

impl WriteError {
    /// For callers that write with [`Expect::Any`], where a conflict cannot happen.
    pub fn into_state(self) -> StateError {
        match self {
            WriteError::State(e) => e,
            WriteError::Conflict(c) => StateError::Gone(format!("{:?}/{}", c.collection, c.key)),
        }
    }
}

/// The storage every stateful component goes through. See the module doc.
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn get(&self, collection: Collection, key: &str) -> Result<Option<Record>, StateError>;
    fn list(&self, collection: Collection) -> Result<Listing, StateError>;
    /// Writes `value` under the key if `expect` holds; returns the new version.
    fn put(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<u64, WriteError>;
    /// Removes the key if `expect` holds (removing an absent key with `Any` is not an error).
    fn delete(&self, collection: Collection, key: &str, expect: Expect) -> Result<(), WriteError>;
    /// Collections changed by someone else from now on (a lagging receiver should reload everything).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Collection>;
    /// What it is, for logs and messages ("state directory /var/lib/weft", "etcd http://...").
    fn describe(&self) -> String;
    /// Whether others (other replicas) may write too, so what is held must be re-read before a
    /// decision that must not be taken twice (a single-use token).
    fn shared(&self) -> bool;

    /// Stands for leader (see [`election`]) as `id`, on a lease of `ttl`. The state directory has one
    /// control plane, which always leads.
    fn elect(&self, id: &str, _ttl: std::time::Duration) -> election::Election {
        election::Election::sole(id)
    }

    /// [`Backend::put`], made only while `guard` still leads (etcd: in the same transaction).
    fn put_led(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
        expect: Expect,
        _guard: &election::LeaderGuard,
    ) -> Result<u64, election::LedError> {
        Ok(self.put(collection, key, value, expect)?)
    }

    /// [`Backend::delete`], made only while `guard` still leads (etcd: in the same transaction).
    fn delete_led(
        &self,
        collection: Collection,
        key: &str,
        expect: Expect,
        _guard: &election::LeaderGuard,
    ) -> Result<(), election::LedError> {
        Ok(self.delete(collection, key, expect)?)
    }
}

pub type SharedBackend = Arc<dyn Backend>;

/// Reads the whole-collection record as JSON: `None` when absent.
pub fn get_json<T: serde::de::DeserializeOwned>(
    backend: &dyn Backend,
    collection: Collection,
) -> Result<Option<(T, u64)>, StateError> {
    let Some(rec) = backend.get(collection, WHOLE)? else {
        return Ok(None);
    };
    let value = parse(backend, collection, WHOLE, &rec.value)?;
    Ok(Some((value, rec.version)))
}

/// Parses a record's JSON; a failure names the record and the store.
pub fn parse<T: serde::de::DeserializeOwned>(
    backend: &dyn Backend,
    collection: Collection,
    key: &str,
    bytes: &[u8],
) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::CorruptRecord {
        store: backend.describe(),
        key: format!("{}/{key}", collection.name()),
        reason: format!("its content does not parse: {e}"),
    })
}

/// Writes the whole-collection record as JSON, last writer wins.
pub fn put_json<T: serde::Serialize>(
    backend: &dyn Backend,
    collection: Collection,
    value: &T,
) -> Result<u64, StateError> {
    backend
        .put(
            collection,
            WHOLE,
            &weft_api::persist::to_payload(value),
            Expect::Any,
        )
        .map_err(WriteError::into_state)
}

#[cfg(test)]
mod compat_tests;

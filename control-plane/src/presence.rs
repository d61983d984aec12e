//! What replicas sharing one etcd tell each other about their proxies: one registry key per
//! workload and one rollout-state key per replica, both tied to the replica's session lease
//! ([`ReplicaSession`]), so a dead replica's entries vanish within [`SESSION_TTL`].
//!
//! - `<prefix>registry/<namespace>/<name>`: a [`RegistryEntry`] (the registration, its identity,
//!   the replica holding its stream, whether it is connected). Taking a name is a compare-and-swap:
//!   a name held by another identity is refused; the same identity (a proxy failing over) takes it.
//! - `<prefix>acks/<replica>`: [`ReplicaAcks`], where that replica's proxies stand in store
//!   revisions (push versions are each replica's own), written at most every
//!   [`ACKS_DEBOUNCE`]; the replica answering `apply --wait` merges them with its own rollout,
//!   and `GET /v1/status` lists the other replicas' proxies from them and the registry.
//!
//! With the state directory there is no [`Presence`] and the hub keeps `registry.json` as before.

use crate::backend::etcd::{EtcdBackend, ReplicaSession, SESSION_TTL};
use crate::backend::Expect;
use crate::hub::{ProxyKey, Registered};
use crate::persist::StateError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use weft_certs::SpiffeId;

/// Rollout state is written at most this often per replica (not once per ack).
pub const ACKS_DEBOUNCE: Duration = Duration::from_millis(50);

/// One workload in the mesh-wide registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub workload: Registered,
    /// The replica holding (or, disconnected, last holding) its config stream.
    pub replica: String,
    pub connected: bool,
    // For `GET /v1/status` through the other replicas; absent from a replica of an earlier release.
    // Here rather than in the rollout record: they change only when the entry is written anyway
    // (connecting, disconnecting), and the rollout record is one key for all of a replica's proxies.
    /// When its certificate expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<u64>,
    /// When its stream ended (Unix seconds, the holding replica's clock); absent while connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_at: Option<u64>,
}

/// Where one proxy stands, in store revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyAck {
    /// The highest revision whose view it acked (or was found to hold already).
    pub current: u64,
    /// The revision of the last push it was sent.
    pub pushed: u64,
    /// That push's version (the replica's own numbering).
    pub version: u64,
    /// The revision and reason of its last NACK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<(u64, String)>,
    pub connected: bool,
    /// The version of its last NACK, for `GET /v1/status` through the other replicas (absent from a
    /// replica of an earlier release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack_version: Option<u64>,
}

/// Where one replica's proxies stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaAcks {
    /// The highest store revision its last push cycle included.
    pub covered: u64,
    pub proxies: BTreeMap<ProxyKey, ProxyAck>,
}

/// A write of this replica's registry key.
#[derive(Debug, PartialEq, Eq)]
pub enum Claimed {
    /// Held at this version.
    Held(u64),
    /// Another identity holds the name.
    Taken(SpiffeId),
    /// Another replica took it over meanwhile (the proxy moved).
    Moved,
}

/// This replica's session and the etcd it shares with the others.
#[derive(Debug)]
pub struct Presence {
    pub etcd: Arc<EtcdBackend>,
    pub session: Arc<ReplicaSession>,
}

pub fn registry_key(key: &str) -> String {
    format!("registry/{key}")
}

fn acks_key(replica: &str) -> String {
    format!("acks/{replica}")
}

/// A fresh replica id: random, so a restarted replica is a new one (its old keys expire).
pub fn new_replica_id() -> String {
    let mut raw = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
    format!("r-{}", hex::encode(raw))
}

impl Presence {
    /// Starts this replica's session, advertising `addresses` in its presence key.
    pub fn start(
        etcd: Arc<EtcdBackend>,
        addresses: &[std::net::SocketAddr],
    ) -> Result<Presence, StateError> {
        let id = new_replica_id();
        let info = serde_json::json!({ "proxyApi": addresses, "pid": std::process::id() });
        let session = etcd.start_session(&id, info.to_string().as_bytes(), SESSION_TTL)?;
        tracing::info!(replica = %id, ttl = ?SESSION_TTL, "replica session started in etcd");
        Ok(Presence { etcd, session })
    }

    pub fn replica(&self) -> &str {
        self.session.id()
    }

    /// Takes `key` for `entry` (a proxy connecting here): refused if another identity holds it;
    /// taken over from another replica if the same identity does.
    pub fn claim(&self, key: &str, entry: &RegistryEntry) -> Result<Claimed, StateError> {
        self.write(key, entry, None, true)
    }

    /// Writes `entry` over this replica's key held at `held`. A key another replica took
    /// meanwhile is left to it ([`Claimed::Moved`]); one that vanished (the lease expired) is
    /// written again.
    pub fn update(
        &self,
        key: &str,
        entry: &RegistryEntry,
        held: Option<u64>,
    ) -> Result<Claimed, StateError> {
        self.write(key, entry, held, false)
    }

    fn write(
        &self,
        key: &str,
        entry: &RegistryEntry,
        held: Option<u64>,
        take_over: bool,
    ) -> Result<Claimed, StateError> {
        let sub = registry_key(key);
        let value = serde_json::to_vec(entry).expect("a registry entry serializes");
        let mut expect = held.map(Expect::Version);
        // A few rounds: each lost round means another replica wrote this very key meanwhile.
        for _ in 0..4 {
            if let Some(expect) = expect {
                if let Some(v) = self
                    .etcd
                    .put_key(&sub, &value, expect, Some(&self.session))?
                {
                    return Ok(Claimed::Held(v));
                }
            }
            expect = Some(match self.etcd.get_key(&sub)? {
                None => Expect::Absent,
                Some((bytes, version)) => match serde_json::from_slice::<RegistryEntry>(&bytes) {
                    Ok(h) if h.workload.identity != entry.workload.identity => {
                        return Ok(Claimed::Taken(h.workload.identity));
                    }
                    Ok(h) if h.replica != self.replica() && !take_over => {
                        return Ok(Claimed::Moved);
                    }
                    _ => Expect::Version(version),
                },
            });
        }
        Ok(Claimed::Moved)
    }

    /// Removes this replica's key held at `held` (after the grace period, or revoked); a key
    /// another replica took meanwhile stays.
    pub fn release(&self, key: &str, held: u64) -> Result<(), StateError> {
        self.etcd
            .delete_key(&registry_key(key), Expect::Version(held))
            .map(|_| ())
    }

    /// Writes where this replica's proxies stand.
    pub fn publish_acks(&self, acks: &ReplicaAcks) -> Result<(), StateError> {
        let value = serde_json::to_vec(acks).expect("rollout state serializes");
        self.etcd
            .put_key(
                &acks_key(self.replica()),
                &value,
                Expect::Any,
                Some(&self.session),
            )
            .map(|_| ())
    }

    /// Ends the session: this replica's keys go at once (graceful shutdown).
    pub fn end(&self) {
        match self.etcd.end_session(&self.session) {
            Ok(()) => tracing::info!(replica = %self.replica(), "replica session ended"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot end the replica session; its keys expire with its lease")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records as the previous release wrote and read them.
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct PreviousProxyAck {
        current: u64,
        pushed: u64,
        version: u64,
        #[serde(default)]
        nack: Option<(u64, String)>,
        connected: bool,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct PreviousRegistryEntry {
        workload: Registered,
        replica: String,
        connected: bool,
    }

    #[test]
    fn rollout_records_are_read_by_the_previous_release_and_read_from_it() {
        let full = ProxyAck {
            current: 40,
            pushed: 41,
            version: 9,
            nack: Some((41, "bad regex".into())),
            connected: false,
            nack_version: Some(9),
        };
        let written = serde_json::to_string(&full).unwrap();
        let previous: PreviousProxyAck = serde_json::from_str(&written).unwrap();
        let want = PreviousProxyAck {
            current: 40,
            pushed: 41,
            version: 9,
            nack: Some((41, "bad regex".into())),
            connected: false,
        };
        assert_eq!(previous, want);
        let from_previous =
            r#"{"current":40,"pushed":41,"version":9,"nack":[41,"bad regex"],"connected":false}"#;
        let read: ProxyAck = serde_json::from_str(from_previous).unwrap();
        let bare = ProxyAck {
            nack_version: None,
            ..full
        };
        assert_eq!(read, bare);
        // Without the new fact, the record is written exactly as before.
        assert_eq!(serde_json::to_string(&bare).unwrap(), from_previous);
    }

    #[test]
    fn registry_entries_are_read_by_the_previous_release_and_read_from_it() {
        let workload = Registered {
            namespace: "default".into(),
            identity: "spiffe://mesh.test/ns/default/sa/a".parse().unwrap(),
            registration: serde_json::from_str(
                r#"{"name":"a-1","labels":{},"address":"198.18.0.2","tunnelPort":15008,"ports":[],"ready":true}"#,
            )
            .unwrap(),
        };
        let full = RegistryEntry {
            workload: workload.clone(),
            replica: "r-b".into(),
            connected: false,
            cert_not_after: Some(1_900_000_000),
            disconnected_at: Some(1_800_000_000),
        };
        let written = serde_json::to_string(&full).unwrap();
        let previous: PreviousRegistryEntry = serde_json::from_str(&written).unwrap();
        assert_eq!(
            previous,
            PreviousRegistryEntry {
                workload: workload.clone(),
                replica: "r-b".into(),
                connected: false,
            }
        );
        let bare = RegistryEntry {
            cert_not_after: None,
            disconnected_at: None,
            ..full
        };
        let from_previous = serde_json::json!({
            "workload": workload, "replica": "r-b", "connected": false
        });
        let read: RegistryEntry = serde_json::from_value(from_previous.clone()).unwrap();
        assert_eq!(read, bare);
        assert_eq!(serde_json::to_value(&bare).unwrap(), from_previous);
    }
}

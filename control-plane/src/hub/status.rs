//! `GET /v1/status`: every proxy of the mesh. With replicas on etcd, this replica's own proxies and
//! those whose streams other replicas hold, built from what [`super::mesh`] already follows (the
//! registry and each replica's `acks/<id>` record): no etcd read per request, and a replica whose
//! lease expired takes its rows with it (its registry keys go).
//!
//! Which replica holds a proxy is the registry's word: a proxy that moved shows once, under the
//! replica that holds it now, and a proxy connected here is shown from this replica's own state
//! whatever another replica's record still says. Versions are each replica's own numbering, so rows
//! carry store revisions too, which every replica shares.

use super::{ProxyEntry, ProxyKey, State};
use crate::presence::{ProxyAck, RegistryEntry};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use weft_api::operator::{Nack, ProxyStatus, Status};

/// The status as `me` (this replica's id; `None`: the state directory) answers it.
pub(super) fn of(st: &State, me: Option<&str>, now: Instant) -> Status {
    let mut proxies: Vec<ProxyStatus> = st
        .proxies
        .iter()
        .map(|(key, e)| own(key, e, me, now))
        .collect();
    if me.is_some() {
        let now_unix = unix_secs_now();
        proxies.extend(
            st.remote
                .held_elsewhere()
                .filter(|(key, _, _)| !st.proxies.contains_key(*key))
                .map(|(key, entry, ack)| elsewhere(key, entry, ack, now_unix)),
        );
        proxies.sort_unstable_by(|a, b| a.proxy.cmp(&b.proxy));
    }
    Status {
        revision: st.revision,
        proxies,
        replica: me.map(str::to_string),
    }
}

/// A proxy whose stream this replica holds (or held, within the grace period).
fn own(key: &ProxyKey, e: &ProxyEntry, me: Option<&str>, now: Instant) -> ProxyStatus {
    let mut row = e.status(key, now);
    if let Some(me) = me {
        let r = &e.revisions;
        row.replica = Some(me.to_string());
        row.sent_revision = (row.sent_version > 0).then(|| r.sent());
        row.acked_revision = row.acked_version.map(|_| r.held());
        if let Some(n) = &mut row.last_nack {
            n.revision = r.nack();
        }
    }
    row
}

/// A proxy another replica holds, as the registry and that replica's rollout record say (`ack`:
/// `None` until it published one with this proxy).
fn elsewhere(
    key: &ProxyKey,
    entry: &RegistryEntry,
    ack: Option<&ProxyAck>,
    now_unix: u64,
) -> ProxyStatus {
    let reg = &entry.workload.registration;
    let mut row = ProxyStatus {
        proxy: key.clone(),
        identity: entry.workload.identity.clone(),
        address: reg.address,
        connected: entry.connected,
        ready: reg.ready,
        sent_version: 0,
        acked_version: None,
        last_nack: None,
        cert_not_after: entry.cert_not_after,
        last_seen_ms: match entry.disconnected_at {
            Some(t) if !entry.connected => now_unix.saturating_sub(t).saturating_mul(1000),
            _ => 0,
        },
        replica: Some(entry.replica.clone()),
        sent_revision: None,
        acked_revision: None,
    };
    let Some(a) = ack else {
        return row;
    };
    // Whether it refused the last push (a replica of an earlier release gives the NACK's revision
    // only, which later pushes at the same revision share).
    let nacked_last = match (&a.nack, a.nack_version) {
        (Some(_), Some(v)) => v == a.version,
        (Some((r, _)), None) => *r >= a.pushed,
        (None, _) => false,
    };
    row.sent_version = a.version;
    row.sent_revision = (a.version > 0).then_some(a.pushed);
    // The record says "acked nothing yet" as revision 0, so an ack of revision 0 (a mesh before its
    // first change) does not show. Past that, it acked the last push once it holds that push's
    // revision, unless it refused it (then it holds that revision's view only because it equals
    // what it acked before, under an older version the record does not carry).
    let holds_last = a.current > 0 && a.current >= a.pushed && !nacked_last;
    row.acked_version = holds_last.then_some(a.version);
    row.acked_revision = (a.current > 0).then_some(a.current);
    row.last_nack = a.nack.as_ref().map(|(revision, reason)| Nack {
        version: a.nack_version.unwrap_or(0),
        reason: reason.clone(),
        revision: Some(*revision),
    });
    row
}

fn unix_secs_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::etcd::Follow;
    use crate::hub::{lock, Hub, HubSettings, Registered};
    use crate::presence::ReplicaAcks;
    use std::sync::Arc;
    use std::time::Duration;
    use weft_api::control::Registration;

    const ME: &str = "r-a";

    fn hub() -> Arc<Hub> {
        Hub::new(
            Default::default(),
            40,
            String::new(),
            Vec::new(),
            HubSettings {
                debounce: Duration::ZERO,
                grace_period: Duration::from_secs(30),
                store: None,
                trust_domain: "mesh.test".parse().unwrap(),
                vip_range: "198.19.0.0/24".parse().unwrap(),
                presence: None,
            },
            Arc::new(crate::metrics::Metrics::new()),
        )
    }

    fn registered(name: &str, ip: &str) -> Registered {
        Registered {
            namespace: "default".into(),
            identity: format!("spiffe://mesh.test/ns/default/sa/{name}")
                .parse()
                .unwrap(),
            registration: Registration {
                name: name.into(),
                labels: Default::default(),
                address: ip.parse().unwrap(),
                tunnel_port: 15008,
                ports: vec![9080],
                ready: true,
            },
        }
    }

    /// `name` registered through `replica`, at etcd version `version`.
    fn in_registry(hub: &Hub, name: &str, replica: &str, connected: bool, version: u64) {
        let entry = RegistryEntry {
            workload: registered(name, "198.18.0.9"),
            replica: replica.into(),
            connected,
            cert_not_after: Some(1_900_000_000),
            disconnected_at: (!connected).then(|| unix_secs_now() - 120),
        };
        let value = serde_json::to_vec(&entry).unwrap();
        hub.apply_registry(ME, Follow::Put(format!("default/{name}"), value, version));
    }

    fn ack(pushed: u64, version: u64) -> ProxyAck {
        ProxyAck {
            current: pushed,
            pushed,
            version,
            nack: None,
            connected: true,
            nack_version: None,
        }
    }

    fn published(hub: &Hub, replica: &str, proxies: &[(&str, ProxyAck)]) {
        let acks = ReplicaAcks {
            covered: 40,
            proxies: proxies
                .iter()
                .map(|(name, a)| (format!("default/{name}"), a.clone()))
                .collect(),
        };
        let value = serde_json::to_vec(&acks).unwrap();
        hub.apply_acks(ME, Follow::Put(replica.into(), value, 1));
    }

    fn rows(hub: &Hub, me: Option<&str>) -> Vec<ProxyStatus> {
        of(&lock(&hub.state), me, Instant::now()).proxies
    }

    /// One proxy connected here, its config pushed and acked.
    fn connected_here(hub: &Hub, name: &str) {
        let (conn, _outbox) = hub
            .connect(
                registered(name, "198.18.0.2"),
                Some(1_800_000_000),
                weft_api::control::PROTOCOL_VERSION,
            )
            .unwrap();
        hub.cycle();
        let key = format!("default/{name}");
        let version = lock(&hub.state).proxies[&key].sent_version;
        hub.ack(&key, conn, version);
    }

    #[test]
    fn own_rows_win_over_another_replicas_record_of_the_same_proxy() {
        let hub = hub();
        connected_here(&hub, "a-1");
        // r-b's record still lists a-1 (it moved here before r-b published again).
        published(&hub, "r-b", &[("a-1", ack(30, 7)), ("b-1", ack(40, 8))]);
        in_registry(&hub, "b-1", "r-b", true, 5);
        let rows = rows(&hub, Some(ME));
        let names: Vec<(&str, Option<&str>)> = rows
            .iter()
            .map(|r| (r.proxy.as_str(), r.replica.as_deref()))
            .collect();
        assert_eq!(
            names,
            [("default/a-1", Some(ME)), ("default/b-1", Some("r-b"))]
        );
        let a1 = &rows[0];
        assert!(a1.connected);
        assert_eq!(a1.acked_version, Some(a1.sent_version));
        assert!(a1.sent_version > 1000, "this replica's own version");
        assert_eq!((a1.sent_revision, a1.acked_revision), (Some(40), Some(40)));
        assert_eq!(a1.cert_not_after, Some(1_800_000_000));
        let b1 = &rows[1];
        assert_eq!((b1.sent_version, b1.acked_version), (8, Some(8)));
        assert_eq!((b1.sent_revision, b1.acked_revision), (Some(40), Some(40)));
        assert_eq!(b1.cert_not_after, Some(1_900_000_000));
        assert_eq!(b1.address.to_string(), "198.18.0.9");
    }

    #[test]
    fn a_moved_proxy_shows_once_under_the_replica_holding_it_now() {
        let hub = hub();
        // b-1 moved from r-b to r-c: both records list it, the registry says r-c.
        let mut nacked = ack(41, 9);
        nacked.current = 40;
        nacked.nack = Some((41, "route refers to nothing".into()));
        nacked.nack_version = Some(9);
        published(&hub, "r-b", &[("b-1", ack(40, 8))]);
        published(&hub, "r-c", &[("b-1", nacked)]);
        in_registry(&hub, "b-1", "r-b", true, 5);
        in_registry(&hub, "b-1", "r-c", true, 6);
        let rows = rows(&hub, Some(ME));
        assert_eq!(rows.len(), 1, "{rows:?}");
        let b1 = &rows[0];
        assert_eq!(b1.replica.as_deref(), Some("r-c"));
        assert_eq!((b1.sent_revision, b1.acked_revision), (Some(41), Some(40)));
        assert_eq!(b1.acked_version, None, "it refused version 9");
        let nack = b1.last_nack.as_ref().expect("its NACK");
        assert_eq!(
            (nack.version, nack.revision, nack.reason.as_str()),
            (9, Some(41), "route refers to nothing")
        );
    }

    #[test]
    fn a_replica_gone_takes_its_rows_and_a_disconnected_proxy_shows_when_it_left() {
        let hub = hub();
        let mut left = ack(40, 8);
        left.connected = false;
        published(&hub, "r-b", &[("b-1", ack(40, 8)), ("b-2", left)]);
        in_registry(&hub, "b-1", "r-b", true, 5);
        in_registry(&hub, "b-2", "r-b", false, 6);
        let rows_now = rows(&hub, Some(ME));
        assert_eq!(rows_now.len(), 2);
        assert!(!rows_now[1].connected);
        let seen = rows_now[1].last_seen_ms;
        assert!((120_000..130_000).contains(&seen), "{seen}");
        // Its lease expired: etcd deleted its keys.
        for key in ["default/b-1", "default/b-2"] {
            hub.apply_registry(ME, Follow::Delete(key.into(), 9));
        }
        hub.apply_acks(ME, Follow::Delete("r-b".into(), 9));
        assert_eq!(rows(&hub, Some(ME)), []);
    }

    #[test]
    fn another_replicas_proxy_waiting_for_a_push_shows_no_acked_version() {
        let hub = hub();
        let mut pending = ack(41, 9);
        pending.current = 40;
        published(&hub, "r-b", &[("b-1", pending)]);
        in_registry(&hub, "b-1", "r-b", true, 5);
        let rows = rows(&hub, Some(ME));
        assert_eq!((rows[0].sent_version, rows[0].acked_version), (9, None));
        assert_eq!(
            (rows[0].sent_revision, rows[0].acked_revision),
            (Some(41), Some(40))
        );
    }

    #[test]
    fn another_replicas_proxy_that_refused_a_push_and_acked_the_next_shows_it_acked() {
        let hub = hub();
        // Both pushes at revision 41 (the second for an endpoint that changed, not a resource).
        let mut recovered = ack(41, 10);
        recovered.nack = Some((41, "bad regex".into()));
        recovered.nack_version = Some(9);
        published(&hub, "r-b", &[("b-1", recovered)]);
        in_registry(&hub, "b-1", "r-b", true, 5);
        let rows = rows(&hub, Some(ME));
        assert_eq!(rows[0].acked_version, Some(10));
        assert_eq!(rows[0].last_nack.as_ref().map(|n| n.version), Some(9));
    }

    #[test]
    fn a_registered_proxy_without_a_published_record_yet_shows_what_the_registry_says() {
        let hub = hub();
        in_registry(&hub, "b-1", "r-b", true, 5);
        let rows = rows(&hub, Some(ME));
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].sent_version, rows[0].sent_revision), (0, None));
        assert_eq!(rows[0].acked_revision, None);
    }

    #[test]
    fn the_state_directorys_status_names_no_replica_and_no_revision() {
        let hub = hub();
        connected_here(&hub, "a-1");
        let status = of(&lock(&hub.state), None, Instant::now());
        let json = serde_json::to_value(&status).unwrap();
        let mut keys: Vec<&String> = json["proxies"][0].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "ackedVersion",
                "address",
                "certNotAfter",
                "connected",
                "identity",
                "lastSeenMs",
                "proxy",
                "ready",
                "sentVersion"
            ]
        );
        assert!(json.get("replica").is_none(), "{json}");
    }
}

//! Claims and revocations one key per entry on etcd (docs/operations.md "How replicas agree"): two
//! components holding the same stale state each add an entry and both land (with one record per
//! collection the second write replaced the first); two revocations made through two real replicas
//! at the same moment are both in force on both; the same target revoked through both at once is
//! revoked once, the other told it already is.

use std::sync::Arc;
use std::time::{Duration, Instant};
use weft::control::ControlProc;
use weft::etcd::EtcdProc;
use weft_api::operator::RevocationTarget;
use weft_certs::SpiffeId;
use weft_control::backend::etcd::{EtcdBackend, EtcdOptions};
use weft_control::backend::{Backend, Collection};
use weft_control::claims::{Claim, ClaimStore};
use weft_control::revocation::Revocations;

fn etcd_backend(etcd: &EtcdProc, prefix: &str) -> Arc<EtcdBackend> {
    Arc::new(
        EtcdBackend::connect(&EtcdOptions {
            endpoints: vec![etcd.client.to_string()],
            prefix: prefix.to_string(),
            ..Default::default()
        })
        .expect("connect to etcd"),
    )
}

fn workload(name: &str) -> RevocationTarget {
    RevocationTarget::Workload {
        namespace: "default".into(),
        name: name.into(),
    }
}

#[test]
fn entries_added_from_stale_reads_through_two_stores_both_land() {
    let Some(etcd) = EtcdProc::start("entries-stale") else {
        return;
    };
    let (a, b) = (
        etcd_backend(&etcd, "/entries/"),
        etcd_backend(&etcd, "/entries/"),
    );
    let id = SpiffeId::parse("spiffe://mesh.test/ns/default/sa/web").unwrap();
    let claim = |w: &str| Claim {
        identity: id.clone(),
        workload: w.into(),
        labels: Default::default(),
        not_after: 4_000_000_000,
    };
    // Both opened on the same (empty) state; neither reads the other's write before its own.
    let (mut ca, mut cb) = (
        ClaimStore::open_in(a.clone()).unwrap(),
        ClaimStore::open_in(b.clone()).unwrap(),
    );
    ca.bind("0a", claim("web-1")).unwrap();
    cb.bind("0b", claim("web-2")).unwrap();
    let fresh = ClaimStore::open_in(a.clone()).unwrap();
    assert_eq!(fresh.get("0a").map(|c| c.workload.as_str()), Some("web-1"));
    assert_eq!(fresh.get("0b").map(|c| c.workload.as_str()), Some("web-2"));
    assert_eq!(a.list(Collection::Claims).unwrap().records.len(), 2);

    let (mut ra, mut rb) = (
        Revocations::open_in(Some(a.clone())).unwrap(),
        Revocations::open_in(Some(b.clone())).unwrap(),
    );
    ra.record(
        "aa".into(),
        id.clone(),
        Some("default/web-1".into()),
        4_000_000_000,
    )
    .unwrap();
    rb.record(
        "bb".into(),
        id.clone(),
        Some("default/web-2".into()),
        4_000_000_000,
    )
    .unwrap();
    ra.revoke(workload("web-1")).unwrap();
    rb.revoke(workload("web-2")).unwrap();
    let fresh = Revocations::open_in(Some(b.clone())).unwrap();
    assert_eq!(fresh.list().len(), 2, "{:?}", fresh.list());
    assert_eq!(fresh.denied_serials(), vec!["aa", "bb"]);
    // The same target through the other store: already revoked (it read nothing new since).
    assert!(rb.revoke(workload("web-1")).is_err());
    // Lifted through one: gone for a fresh reader, the other stays.
    ra.reload().unwrap();
    ra.unrevoke(&workload("web-1")).unwrap();
    let fresh = Revocations::open_in(Some(b)).unwrap();
    assert_eq!(fresh.denied_serials(), vec!["bb"]);
}

fn revoked(cp: &ControlProc) -> Vec<String> {
    let mut names: Vec<String> = cp
        .api("GET", "/v1/revocations", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["target"].to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn revocations_made_through_two_replicas_at_once_are_all_in_force_on_both() {
    let Some(etcd) = EtcdProc::start("entries-replicas") else {
        return;
    };
    let (store, key) = (etcd.url(), etcd.key_file());
    let args = [
        "--store",
        store.as_str(),
        "--etcd-prefix",
        "/entries-cp/",
        "--store-key-file",
        key.to_str().unwrap(),
    ];
    let a = ControlProc::start_with("entries-a", None, &args);
    let b = ControlProc::start_replica("entries-b", &a, &args);
    // Five rounds of two revocations at the same moment, one through each replica.
    const ROUNDS: usize = 5;
    for i in 0..ROUNDS {
        let body = |name: String| serde_json::to_string(&workload(&name)).unwrap();
        let (ba, bb) = (body(format!("a-{i}")), body(format!("b-{i}")));
        std::thread::scope(|s| {
            let ta = s.spawn(|| a.api("POST", "/v1/revocations", Some(&ba)));
            let tb = s.spawn(|| b.api("POST", "/v1/revocations", Some(&bb)));
            ta.join().unwrap();
            tb.join().unwrap();
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ra, rb) = (revoked(&a), revoked(&b));
        if ra.len() == 2 * ROUNDS && ra == rb {
            break;
        }
        assert!(Instant::now() < deadline, "A: {ra:?}\nB: {rb:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same target through both at once: revoked once, the other answered 409.
    let body = serde_json::to_string(&workload("same")).unwrap();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let ta = s.spawn(|| a.request("POST", "/v1/revocations", Some(&body), true));
        let tb = s.spawn(|| b.request("POST", "/v1/revocations", Some(&body), true));
        [ta.join().unwrap(), tb.join().unwrap()]
            .into_iter()
            .map(|r| r.unwrap().0)
            .collect()
    });
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, vec![200, 409], "{statuses:?}");
}

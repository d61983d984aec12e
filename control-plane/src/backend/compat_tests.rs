//! A state directory written before the storage backends existed (the files as that code wrote them:
//! `persist::write_json` of each component's own shape) is read whole through [`DirBackend`], and
//! what the components write back stays readable in the same shape.

use super::dir::DirBackend;
use super::{Collection, SharedBackend};
use crate::claims::ClaimStore;
use crate::hub::Registered;
use crate::persist;
use crate::revocation::Revocations;
use crate::store::Store;
use crate::tokens::{Grant, NewToken, TokenStore};
use crate::vips::Vips;
use serde_json::json;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use weft_api::operator::RevocationTarget;
use weft_api::resources::Kind;
use weft_certs::TrustDomain;

const FAR: u64 = 4_000_000_000;

fn service_json() -> serde_json::Value {
    let doc = "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n  ports:\n    - name: http\n      port: 9080\n      protocol: http\n";
    let parsed = weft_api::resources::parse_documents("s.yaml", doc).unwrap();
    parsed[0].resource.to_json()
}

/// Writes each state file as the code before the backends did.
fn write_old_state(dir: &std::path::Path) {
    let w = |name: &str, v: serde_json::Value, mode| {
        persist::write_json(&dir.join(name), &v, mode).unwrap();
    };
    w(
        "resources.json",
        json!({"revision": 7, "resources": [{"origin": "api", "resource": service_json()}]}),
        0o600,
    );
    let secret_sha = hex::encode(sha2::Sha256::digest(b"s3cret"));
    w(
        "tokens.json",
        json!({"abcd": {"info": {"id": "abcd", "namespace": "default", "serviceAccount": "reviews",
            "identity": "spiffe://t.local/ns/default/sa/reviews", "createdAt": 1, "expiresAt": FAR,
            "revoked": false, "uses": 2}, "secret_sha256": secret_sha}}),
        0o600,
    );
    w(
        "claims.json",
        json!({"0a1b": {"identity": "spiffe://t.local/ns/default/sa/reviews", "workload": "reviews-1",
            "labels": {"version": "v1"}, "notAfter": FAR}}),
        0o600,
    );
    let target = serde_json::to_value(RevocationTarget::Workload {
        namespace: "default".into(),
        name: "reviews-1".into(),
    })
    .unwrap();
    w(
        "revocations.json",
        json!({"issued": [{"serial": "0a1b", "identity": "spiffe://t.local/ns/default/sa/reviews",
            "workload": "default/reviews-1", "notAfter": FAR}],
            "revoked": [{"target": target, "revokedAt": 1}]}),
        0o600,
    );
    w("vips.json", json!({"default/reviews": "10.96.0.10"}), 0o644);
    w(
        "registry.json",
        json!([{"namespace": "default", "identity": "spiffe://t.local/ns/default/sa/reviews",
            "registration": {"name": "reviews-1", "labels": {"version": "v1"}, "address": "198.18.0.5",
            "tunnelPort": 15008, "ports": [9080], "ready": true}}]),
        0o600,
    );
}

#[test]
fn a_state_directory_of_the_earlier_format_is_read_whole_and_kept() {
    let dir = std::env::temp_dir().join(format!("weft-backend-compat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_old_state(&dir);
    let backend: SharedBackend = Arc::new(DirBackend::new(&dir));
    let td = TrustDomain::new("t.local").unwrap();

    let store = Store::open_in(backend.clone(), "t.local").unwrap();
    assert_eq!(store.revision(), 7);
    assert_eq!(
        store
            .get(Kind::Service, Some("default"), Some("reviews"))
            .len(),
        1
    );

    let mut tokens = TokenStore::open_in(backend.clone(), td.clone()).unwrap();
    assert_eq!(tokens.list()[0].uses, 2);
    let Grant::Use(info) = tokens.reserve("wjt.abcd.s3cret", Some("k")).unwrap() else {
        panic!("an unlimited token is a use");
    };
    assert_eq!(tokens.commit(&info.id, "k").unwrap().uses, 3);
    let (_, created) = tokens
        .create(&NewToken {
            namespace: "default".into(),
            service_account: "ratings".into(),
            ttl_secs: 60,
            ..Default::default()
        })
        .unwrap();

    let claims = ClaimStore::open_in(backend.clone()).unwrap();
    assert_eq!(claims.get("0a1b").unwrap().workload, "reviews-1");
    let revocations = Revocations::open_in(Some(backend.clone())).unwrap();
    assert!(revocations.is_denied("0a1b"));
    let vips = Vips::load_in("10.96.0.0/16".parse().unwrap(), Some(backend.clone()));
    assert_eq!(
        vips.get("default", "reviews"),
        Some("10.96.0.10".parse().unwrap())
    );
    let registry: Vec<Registered> = super::get_json(&*backend, Collection::Registry)
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(registry[0].registration.name, "reviews-1");

    // What was written back is the earlier shape: one map of every token, by id, in tokens.json.
    let on_disk: BTreeMap<String, serde_json::Value> = persist::read_json(&dir.join("tokens.json"))
        .unwrap()
        .unwrap();
    assert_eq!(on_disk["abcd"]["info"]["uses"], 3);
    assert_eq!(on_disk[&created.id]["info"]["serviceAccount"], "ratings");
    assert!(on_disk["abcd"]["secret_sha256"].is_string());
    let _ = std::fs::remove_dir_all(&dir);
}

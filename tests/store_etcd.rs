//! The control plane's state on etcd: the storage backend's contract, run the same on the state
//! directory and on a real etcd; then two weft-control replicas sharing one etcd (an apply through one
//! is read and pushed by the other, concurrent applies both land, a single-use token is spent once
//! across both, a restart keeps everything, a stopped etcd is a 503 naming etcd while proxies keep
//! their config, and applies work again once etcd is back).

use std::sync::Arc;
use std::time::{Duration, Instant};
use weft::control::ControlProc;
use weft::etcd::EtcdProc;
use weft::mesh::MeshProxyBuilder;
use weft::pki::TempDir;
use weft_control::backend::dir::DirBackend;
use weft_control::backend::etcd::{EtcdBackend, EtcdOptions};
use weft_control::backend::{Backend, Collection, Expect, WriteError, WHOLE};

fn etcd_backend(etcd: &EtcdProc, prefix: &str) -> EtcdBackend {
    EtcdBackend::connect(&EtcdOptions {
        endpoints: vec![etcd.client.to_string()],
        prefix: prefix.to_string(),
        ..Default::default()
    })
    .expect("connect to etcd")
}

/// A record's value as JSON (a backend keeps the component's JSON, not necessarily its bytes).
fn json(v: &[u8]) -> serde_json::Value {
    serde_json::from_slice(v).unwrap()
}

fn conflict(r: Result<u64, WriteError>) -> bool {
    matches!(r, Err(WriteError::Conflict(_)))
}

/// What every backend must do, the same on each.
fn contract(b: &dyn Backend) {
    // Compare-and-swap: absent, then exactly the version read.
    let v1 = b
        .put(Collection::Tokens, "t1", br#"{"n":1}"#, Expect::Absent)
        .unwrap();
    assert!(conflict(b.put(
        Collection::Tokens,
        "t1",
        b"{}",
        Expect::Absent
    )));
    let v2 = b
        .put(Collection::Tokens, "t1", br#"{"n":2}"#, Expect::Version(v1))
        .unwrap();
    assert!(v2 > v1);
    assert!(conflict(b.put(
        Collection::Tokens,
        "t1",
        br#"{"n":3}"#,
        Expect::Version(v1)
    )));
    let got = b.get(Collection::Tokens, "t1").unwrap().unwrap();
    assert_eq!(
        (json(&got.value), got.version),
        (serde_json::json!({"n": 2}), v2)
    );

    // Delete with an expectation: a stale version is refused, the current one removes it.
    b.put(Collection::Tokens, "t2", br#"{"n":1}"#, Expect::Any)
        .unwrap();
    assert!(matches!(
        b.delete(Collection::Tokens, "t1", Expect::Version(v1)),
        Err(WriteError::Conflict(_))
    ));
    b.delete(Collection::Tokens, "t1", Expect::Version(v2))
        .unwrap();
    assert!(b.get(Collection::Tokens, "t1").unwrap().is_none());

    // List: every key of a keyed collection; one record for a whole one.
    b.put(Collection::Tokens, "t3", br#"{"n":3}"#, Expect::Absent)
        .unwrap();
    let listed = b.list(Collection::Tokens).unwrap();
    assert_eq!(
        listed.records.keys().collect::<Vec<_>>(),
        vec!["t2", "t3"],
        "{listed:?}"
    );

    // A record far over etcd's request limit (1.5 MiB) is kept whole, and replaced whole.
    let big = |fill: char| {
        serde_json::to_vec(&serde_json::json!({ "s": fill.to_string().repeat(3_500_000) })).unwrap()
    };
    let v = b
        .put(Collection::Resources, WHOLE, &big('a'), Expect::Any)
        .unwrap();
    assert!(b.get(Collection::Resources, WHOLE).unwrap().unwrap().value == big('a'));
    b.put(Collection::Resources, WHOLE, &big('b'), Expect::Version(v))
        .unwrap();
    let got = b.get(Collection::Resources, WHOLE).unwrap().unwrap();
    assert!(got.value == big('b'));
    let small = br#"{"revision":1,"resources":[]}"#;
    b.put(
        Collection::Resources,
        WHOLE,
        small,
        Expect::Version(got.version),
    )
    .unwrap();
    assert_eq!(
        b.get(Collection::Resources, WHOLE).unwrap().unwrap().value,
        small
    );
}

#[test]
fn the_backend_contract_holds_on_the_state_directory_and_on_etcd() {
    let dir = TempDir::new("backend-contract");
    contract(&DirBackend::new(dir.path()));
    let Some(etcd) = EtcdProc::start("contract") else {
        return;
    };
    contract(&etcd_backend(&etcd, "/contract/"));
}

#[test]
fn a_change_through_one_etcd_replica_is_announced_to_another() {
    let Some(etcd) = EtcdProc::start("watch") else {
        return;
    };
    let a = etcd_backend(&etcd, "/watch/");
    let b = etcd_backend(&etcd, "/watch/");
    let mut changes = b.subscribe();
    let v = a
        .put(Collection::Tokens, "x", b"{}", Expect::Absent)
        .unwrap();
    // The other replica sees the write and cannot overwrite it from a stale read.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match changes.try_recv() {
            Ok(Collection::Tokens) => break,
            Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "no change announced");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(b.get(Collection::Tokens, "x").unwrap().unwrap().version, v);
    assert!(conflict(b.put(
        Collection::Tokens,
        "x",
        b"{}",
        Expect::Absent
    )));
    // Another prefix is another mesh: nothing of it is seen.
    let other = etcd_backend(&etcd, "/other/");
    assert!(other.list(Collection::Tokens).unwrap().records.is_empty());
}

fn service(name: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  ports:\n    - name: http\n      port: 9080\n      protocol: http\n"
    )
}

fn apply_body(name: &str, text: &str) -> String {
    serde_json::json!({ "files": [{ "name": name, "text": text }] }).to_string()
}

fn services(cp: &ControlProc) -> Vec<String> {
    let got = cp.api("GET", "/v1/resources/Service", None);
    let mut names: Vec<String> = got
        .as_array()
        .unwrap_or_else(|| panic!("{got}"))
        .iter()
        .map(|r| {
            r["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

/// Waits (bounded) until `cp` holds exactly `want` services.
fn wait_services(cp: &ControlProc, want: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = services(cp);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "services {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until the proxy's config (its admin `/config`) mentions `needle`.
fn wait_proxy_config(admin: std::net::SocketAddr, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let config = weft::net::http_get(admin, "/config").map(|(_, b)| b);
        if config.as_deref().is_ok_and(|c| c.contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy's config never held {needle}: {config:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_replicas_on_one_etcd_share_resources_and_tokens_and_ride_out_an_etcd_outage() {
    let Some(mut etcd) = EtcdProc::start("replicas") else {
        return;
    };
    let (store, key) = (etcd.url(), etcd.key_file());
    let key = key.to_str().unwrap();
    let args = [
        "--store",
        store.as_str(),
        "--etcd-prefix",
        "/mesh-a/",
        "--store-key-file",
        key,
    ];
    let mut a = ControlProc::start_with("etcd-a", None, &args);
    let mut b = ControlProc::start_replica("etcd-b", &a, &args);

    // Applied through A: in B's `get`, and pushed to a proxy connected to B.
    a.api(
        "POST",
        "/v1/apply",
        Some(&apply_body("one.yaml", &service("svc-one"))),
    );
    wait_services(&b, &["svc-one"], Duration::from_secs(5));
    let proxy = MeshProxyBuilder::new(&b, "client-1", "default", "client")
        .token(&b.token("default", "client", 600))
        .start();
    wait_proxy_config(proxy.admin, "svc-one", Duration::from_secs(10));
    a.api(
        "POST",
        "/v1/apply",
        Some(&apply_body("two.yaml", &service("svc-two"))),
    );
    wait_proxy_config(proxy.admin, "svc-two", Duration::from_secs(5));

    // Two applies at once, one through each replica: both land.
    let bodies: Vec<String> = (0..2)
        .map(|i| apply_body(&format!("c{i}.yaml"), &service(&format!("svc-c{i}"))))
        .collect();
    std::thread::scope(|s| {
        let ta = s.spawn(|| a.api("POST", "/v1/apply", Some(&bodies[0])));
        let tb = s.spawn(|| b.api("POST", "/v1/apply", Some(&bodies[1])));
        ta.join().unwrap();
        tb.join().unwrap();
    });
    let all = ["svc-c0", "svc-c1", "svc-one", "svc-two"];
    wait_services(&a, &all, Duration::from_secs(5));
    wait_services(&b, &all, Duration::from_secs(5));

    // A single-use token spent through A is refused through B.
    let body = r#"{"namespace":"default","serviceAccount":"pod","ttlSecs":120,"maxUses":1}"#;
    let token = a.api("POST", "/v1/tokens", Some(body))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let first = MeshProxyBuilder::new(&a, "pod-1", "default", "pod")
        .token(&token)
        .start();
    let mut second = MeshProxyBuilder::new(&b, "pod-2", "default", "pod")
        .token(&token)
        .launch();
    assert!(
        second.wait_exit(Duration::from_secs(20)).is_some(),
        "a used single-use token let a second proxy join through the other replica"
    );
    assert!(second.log().contains("already used"), "{}", second.log());
    drop(first);

    // etcd stopped: an apply is a 503 naming etcd, and the proxy keeps its config.
    etcd.stop();
    let started = Instant::now();
    let (status, text) = a
        .request(
            "POST",
            "/v1/apply",
            Some(&apply_body("three.yaml", &service("svc-three"))),
            true,
        )
        .unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("etcd"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    wait_proxy_config(proxy.admin, "svc-two", Duration::from_secs(1));
    assert_eq!(services(&b), all);

    // etcd back: applies work again, and reach the other replica.
    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = a
            .request(
                "POST",
                "/v1/apply",
                Some(&apply_body("three.yaml", &service("svc-three"))),
                true,
            )
            .unwrap();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{status}: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = ["svc-c0", "svc-c1", "svc-one", "svc-three", "svc-two"];
    wait_services(&b, &all, Duration::from_secs(10));

    // A restart of both keeps everything (tokens too).
    drop(proxy);
    a.restart();
    b.restart();
    assert_eq!(services(&a), all);
    assert_eq!(services(&b), all);
    let tokens = b.api("GET", "/v1/tokens", None);
    let spent = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["maxUses"] == 1)
        .unwrap_or_else(|| panic!("{tokens}"));
    assert_eq!(spent["uses"], 1, "{tokens}");
}

fn file(name: &str, text: &str) -> weft_api::operator::SourceFile {
    weft_api::operator::SourceFile {
        name: name.to_string(),
        text: text.to_string(),
    }
}

fn route_to(service: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata:\n  name: to-{service}\n  namespace: default\nspec:\n  parentRefs:\n    - name: {service}\n  rules:\n    - backendRefs:\n        - name: {service}\n"
    )
}

#[test]
fn a_change_made_on_a_stale_read_is_made_again_on_the_new_state_never_lost() {
    use weft_api::resources::Kind;
    use weft_control::store::{Store, StoreError};
    let Some(etcd) = EtcdProc::start("stale") else {
        return;
    };
    let open = || Store::open_in(Arc::new(etcd_backend(&etcd, "/stale/")), "mesh.test").unwrap();
    let (mut a, mut b) = (open(), open());
    a.apply(&[file("a.yaml", &service("svc-a"))], false)
        .unwrap();
    // B has not seen A's write: its write conflicts, is made again on A's state, and keeps both.
    b.apply(&[file("b.yaml", &service("svc-b"))], false)
        .unwrap();
    assert_eq!(b.revision(), 2);
    a.load().unwrap();
    for s in [&a, &b] {
        assert_eq!(s.get(Kind::Service, None, None).len(), 2);
    }
    // A removes svc-a; B, still holding it, routes to it: made again on the new state, refused there.
    a.delete(&a.get(Kind::Service, None, Some("svc-a"))[0].key(), false)
        .unwrap();
    let e = b
        .apply(&[file("r.yaml", &route_to("svc-a"))], false)
        .unwrap_err();
    assert!(matches!(e, StoreError::Refused(_)), "{e}");
    assert!(e.to_string().contains("svc-a"), "{e}");
    assert_eq!(b.get(Kind::Service, None, None).len(), 1);
}

//! Replicas sharing one etcd act as one control plane for the mesh: a workload registered through
//! one is an endpoint in what every other pushes, its name is held through all of them (and taken
//! over by its own identity moving), a killed replica's workloads leave within its lease TTL unless
//! their proxies register again elsewhere, every replica answers the same service addresses (also
//! when two services collide on their first choice), and `apply --wait` through one replica waits
//! for the proxies of every replica and shows their NACKs. Real etcd, real `weft-control`
//! replicas, the real proxy protocol (simulated proxies).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use weft::control::ControlProc;
use weft::control_sim::{Reply, SimProxy};
use weft::etcd::EtcdProc;
use weft_api::control::{CertificateRequest, CertificateResponse, Registration, PATH_CERTIFICATE};
use weft_certs::{Credential, Identity, KeyAndCsr, SpiffeId, TrustBundle};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Two replicas `a` and `b` on one etcd under a prefix of their own.
fn replicas(tag: &str, etcd: &EtcdProc, extra: &[&str]) -> (ControlProc, ControlProc) {
    let (store, key) = (etcd.url(), etcd.key_file());
    let prefix = format!("/{tag}/");
    let mut args = vec![
        "--store",
        store.as_str(),
        "--etcd-prefix",
        prefix.as_str(),
        "--store-key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let a = ControlProc::start_with(&format!("{tag}-a"), None, &args);
    let b = ControlProc::start_replica(&format!("{tag}-b"), &a, &args);
    (a, b)
}

fn service(name: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  selector:\n    app: {name}\n  ports:\n    - name: http\n      port: 9080\n      protocol: http\n"
    )
}

fn registration(name: &str, ip: &str) -> Registration {
    Registration {
        name: name.into(),
        labels: [("app".to_string(), "reviews".to_string())]
            .into_iter()
            .collect(),
        address: ip.parse().unwrap(),
        tunnel_port: 15008,
        ports: vec![9080],
        ready: true,
    }
}

/// Joins as `ns/sa` through `cp` with a fresh token: the identity it issued.
async fn join(cp: &ControlProc, sa: &str) -> Identity {
    let who = SpiffeId::parse(&format!("spiffe://mesh.test/ns/default/sa/{sa}")).unwrap();
    let kc = KeyAndCsr::generate(&who).unwrap();
    let bundle = TrustBundle::from_pem_file(&cp.bundle_path()).unwrap();
    let tls = weft_certs::tls::bootstrap_client_config(bundle.clone(), &cp.control_id());
    let tcp = tokio::net::TcpStream::connect(cp.api).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(cp.api.ip().into());
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let body = serde_json::to_vec(&CertificateRequest {
        csr_pem: kc.csr_pem().to_string(),
        token: Some(cp.token("default", sa, 600)),
    })
    .unwrap();
    let req = http::Request::post(format!("https://{}{PATH_CERTIFICATE}", cp.api))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "join as {who}: {body:?}");
    let resp: CertificateResponse = serde_json::from_slice(&body).unwrap();
    Identity::new(
        Credential::from_pem(&resp.chain_pem, kc.key_pem()).unwrap(),
        bundle,
    )
    .unwrap()
}

async fn sim(cp: &ControlProc, who: &Identity, reg: Registration, reply: Reply) -> SimProxy {
    SimProxy::connect(cp.api, who, &cp.control_id(), reg, reply)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cp.log()))
}

/// The endpoints (workload names) of `default/svc` in the services the proxy holds.
fn endpoints(p: &SimProxy, svc: &str) -> Vec<String> {
    let mut names: Vec<String> = p
        .held()
        .iter()
        .filter(|s| s.name == svc && s.namespace == "default")
        .flat_map(|s| s.endpoints.iter().map(|e| e.workload.clone()))
        .collect();
    names.sort();
    names
}

/// `reviews-1` registered through `b` and a client (at `client_ip`) through `a`, once the client's
/// view holds `reviews-1`: (the reviews identity, the client's, the proxy on `b`, the one on `a`).
async fn reviews_on_b_seen_on_a(
    a: &ControlProc,
    b: &ControlProc,
    client_ip: &str,
) -> (Identity, Identity, SimProxy, SimProxy) {
    let reviews = join(a, "reviews").await;
    let client = join(a, "client").await;
    let reg = registration("reviews-1", "198.18.0.2");
    let on_b = sim(b, &reviews, reg, Reply::Ack).await;
    let mut on_a = sim(a, &client, registration("client-1", client_ip), Reply::Ack).await;
    let within = Duration::from_secs(10);
    wait_endpoints(&mut on_a, "reviews", &["reviews-1"], within, &[a, b]).await;
    (reviews, client, on_b, on_a)
}

/// Waits (bounded) until the proxy's newest view of `svc` has exactly `want` endpoints; the time it
/// took.
async fn wait_endpoints(
    p: &mut SimProxy,
    svc: &str,
    want: &[&str],
    within: Duration,
    logs: &[&ControlProc],
) -> Duration {
    let started = Instant::now();
    loop {
        let got = endpoints(p, svc);
        if got == want {
            return started.elapsed();
        }
        let left = within.saturating_sub(started.elapsed());
        if left.is_zero() {
            let logs: Vec<String> = logs.iter().map(|c| c.log()).collect();
            panic!(
                "endpoints of {svc}: {got:?}, want {want:?}\n{}",
                logs.join("\n----\n")
            );
        }
        let _ =
            tokio::time::timeout(left.min(Duration::from_millis(200)), p.changed.changed()).await;
    }
}

#[test]
fn a_workload_registered_through_one_replica_is_an_endpoint_in_every_replicas_view_and_its_name_is_held_mesh_wide(
) {
    let Some(etcd) = EtcdProc::start("registry") else {
        return;
    };
    let (a, b) = replicas("registry", &etcd, &[]);
    a.apply_file("reviews.yaml", &service("reviews"), 0);
    runtime().block_on(async {
        // The workload registers through B; a proxy on A gets it as an endpoint.
        let (reviews, client, mut on_b, _on_a) = reviews_on_b_seen_on_a(&a, &b, "198.18.0.3").await;
        let intruder = join(&b, "intruder").await;
        // Another identity cannot take the name, through either replica.
        for cp in [&a, &b] {
            let err = SimProxy::connect(
                cp.api,
                &intruder,
                &cp.control_id(),
                registration("reviews-1", "198.18.0.9"),
                Reply::Ack,
            )
            .await
            .err()
            .expect("the name is held through the other replica");
            let err = err.to_string();
            assert!(err.contains("already registered"), "{err}");
            assert!(err.contains("sa/intruder"), "{err}");
        }
        // The same identity moving to A takes the name over; B lets its stream go.
        let _moved = sim(
            &a,
            &reviews,
            registration("reviews-1", "198.18.0.4"),
            Reply::Ack,
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while on_b.seen.lock().unwrap().ended.is_none() {
            assert!(
                Instant::now() < deadline,
                "B kept the moved workload's stream"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), on_b.changed.changed()).await;
        }
        let held_by_b = b.api("GET", "/v1/status", None);
        assert!(
            !held_by_b.to_string().contains("reviews-1"),
            "B still lists the moved workload: {held_by_b}"
        );
        // B's view follows it: its address is the one registered through A.
        let mut on_b2 = sim(
            &b,
            &client,
            registration("client-2", "198.18.0.5"),
            Reply::Ack,
        )
        .await;
        wait_endpoints(
            &mut on_b2,
            "reviews",
            &["reviews-1"],
            Duration::from_secs(10),
            &[&a, &b],
        )
        .await;
        let ep = on_b2
            .held()
            .into_iter()
            .find(|s| s.name == "reviews")
            .unwrap();
        assert_eq!(ep.endpoints[0].address.to_string(), "198.18.0.4");
    });
}

#[test]
fn a_killed_replicas_workloads_leave_the_registry_within_its_lease_unless_they_register_elsewhere()
{
    let Some(etcd) = EtcdProc::start("lease") else {
        return;
    };
    let (a, mut b) = replicas("lease", &etcd, &[]);
    a.apply_file("reviews.yaml", &service("reviews"), 0);
    runtime().block_on(async {
        let reviews = join(&a, "reviews").await;
        let client = join(&a, "client").await;
        let gone = sim(&b, &reviews, registration("reviews-1", "198.18.0.2"), Reply::Ack).await;
        let moving = sim(&b, &reviews, registration("reviews-2", "198.18.0.3"), Reply::Ack).await;
        let mut on_a = sim(&a, &client, registration("client-1", "198.18.0.4"), Reply::Ack).await;
        let both = ["reviews-1", "reviews-2"];
        wait_endpoints(&mut on_a, "reviews", &both, Duration::from_secs(10), &[&a, &b]).await;
        b.kill9();
        let killed = Instant::now();
        drop((gone, moving));
        // reviews-2's proxy registers again through A (failover); reviews-1's does not come back.
        let _back = sim(&a, &reviews, registration("reviews-2", "198.18.0.3"), Reply::Ack).await;
        // Endpoints stay meanwhile (a dead replica is not told apart from a slow one)...
        let ttl = weft_control::backend::etcd::SESSION_TTL;
        wait_endpoints(&mut on_a, "reviews", &["reviews-2"], ttl + Duration::from_secs(8), &[&a, &b]).await;
        // ...and go with its lease, not before.
        let took = killed.elapsed();
        // The lease was last renewed at most a third of its TTL before the kill.
        assert!(
            took >= ttl * 6 / 10,
            "reviews-1 left after {took:?}, before its replica's lease (TTL {ttl:?}) can have expired"
        );
        eprintln!("a killed replica's workload left the registry {took:?} after the kill (lease TTL {ttl:?})");
    });
}

/// Two service names whose first-choice addresses in a range of `hosts` addresses are the same
/// (the allocator's hash: std's `DefaultHasher` of `namespace/name`).
fn colliding(hosts: u64) -> (String, String) {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let first = |name: &str| {
        let mut h = DefaultHasher::new();
        format!("default/{name}").hash(&mut h);
        h.finish() % hosts
    };
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    for i in 0.. {
        let name = format!("svc-{i}");
        if let Some(other) = seen.insert(first(&name), name.clone()) {
            return (other, name);
        }
    }
    unreachable!()
}

fn addresses(cp: &ControlProc) -> BTreeMap<String, String> {
    let mesh = cp.api("GET", "/v1/mesh", None);
    mesh["services"]
        .as_array()
        .unwrap_or_else(|| panic!("{mesh}"))
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["vip"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_replica_answers_the_same_service_address_also_when_two_services_collide() {
    let Some(etcd) = EtcdProc::start("vips") else {
        return;
    };
    // 6 usable addresses: first choices collide often.
    let (a, b) = replicas("vips", &etcd, &["--vip-range", "198.19.0.0/29"]);
    let (x, y) = colliding(6);
    // The two colliding services applied at once, one through each replica.
    let (tx, ty) = (service(&x), service(&y));
    std::thread::scope(|s| {
        let ta = s.spawn(|| a.apply_file("x.yaml", &tx, 0));
        let tb = s.spawn(|| b.apply_file("y.yaml", &ty, 0));
        ta.join().unwrap();
        tb.join().unwrap();
    });
    for name in ["one", "two", "three"] {
        a.apply_file(&format!("{name}.yaml"), &service(name), 0);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (on_a, on_b) = (addresses(&a), addresses(&b));
        if on_a.len() == 5 && on_a == on_b {
            let distinct: std::collections::BTreeSet<&String> = on_a.values().collect();
            assert_eq!(distinct.len(), 5, "two services share an address: {on_a:?}");
            assert_ne!(on_a[&x], on_a[&y], "{on_a:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A answers {on_a:?}, B answers {on_b:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A restarted replica answers the same.
    let before = addresses(&b);
    let mut b = b;
    b.restart();
    assert_eq!(addresses(&b), before);
}

fn rollout_of(answer: &serde_json::Value) -> (bool, BTreeMap<String, (String, String)>) {
    let r = &answer["rollout"];
    let proxies = r["proxies"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|p| {
            let state = match p["state"].as_str().unwrap() {
                "nacked" => format!("nacked: {}", p["reason"].as_str().unwrap_or_default()),
                s => s.to_string(),
            };
            (
                p["proxy"].as_str().unwrap().to_string(),
                (state, p["replica"].as_str().unwrap_or_default().to_string()),
            )
        })
        .collect();
    (r["complete"].as_bool().unwrap(), proxies)
}

/// This replica's id, as its log names it.
fn replica_id(cp: &ControlProc) -> String {
    let log = cp.log();
    let line = log
        .lines()
        .find(|l| l.contains("replica session started"))
        .unwrap_or_else(|| panic!("{log}"));
    let start = line.find("replica=").expect("replica= in the log") + "replica=".len();
    line[start..].split_whitespace().next().unwrap().to_string()
}

#[test]
fn apply_wait_through_one_replica_waits_for_the_proxies_of_every_replica_and_shows_their_nacks() {
    let Some(etcd) = EtcdProc::start("acks") else {
        return;
    };
    let (a, b) = replicas("acks", &etcd, &[]);
    let (id_a, id_b) = (replica_id(&a), replica_id(&b));
    a.apply_file("reviews.yaml", &service("reviews"), 0);
    runtime().block_on(async {
        let reviews = join(&a, "reviews").await;
        let mut on_a = sim(
            &a,
            &reviews,
            registration("reviews-1", "198.18.0.2"),
            Reply::Ack,
        )
        .await;
        let mut on_b = sim(
            &b,
            &reviews,
            registration("reviews-2", "198.18.0.3"),
            Reply::Ack,
        )
        .await;
        let both = ["reviews-1", "reviews-2"];
        wait_endpoints(
            &mut on_a,
            "reviews",
            &both,
            Duration::from_secs(10),
            &[&a, &b],
        )
        .await;
        wait_endpoints(
            &mut on_b,
            "reviews",
            &both,
            Duration::from_secs(10),
            &[&a, &b],
        )
        .await;

        // A change applied through A: both proxies listed, each with its replica, both acked.
        let answer = tokio::task::block_in_place(|| {
            a.apply_file("ratings.yaml", &service("ratings"), 10_000)
        });
        let (complete, proxies) = rollout_of(&answer);
        assert!(complete, "{answer}");
        assert_eq!(
            proxies["default/reviews-1"],
            ("acked".into(), id_a.clone()),
            "{answer}"
        );
        assert_eq!(
            proxies["default/reviews-2"],
            ("acked".into(), id_b.clone()),
            "{answer}"
        );

        // A proxy on B that never answers: the apply through A is not complete, and says who.
        let _silent = sim(
            &b,
            &reviews,
            registration("reviews-3", "198.18.0.4"),
            Reply::Silent,
        )
        .await;
        let answer = tokio::task::block_in_place(|| {
            a.apply_file("details.yaml", &service("details"), 2_000)
        });
        let (complete, proxies) = rollout_of(&answer);
        assert!(!complete, "{answer}");
        assert_eq!(
            proxies["default/reviews-3"],
            ("pending".into(), id_b.clone()),
            "{answer}"
        );
        assert_eq!(proxies["default/reviews-2"].0, "acked", "{answer}");

        // A NACK from a proxy on B shows through A with its reason.
        drop(_silent);
        let _nacking = sim(
            &b,
            &reviews,
            registration("reviews-4", "198.18.0.5"),
            Reply::Nack("route refers to nothing".into()),
        )
        .await;
        let answer = tokio::task::block_in_place(|| {
            a.apply_file("productpage.yaml", &service("productpage"), 5_000)
        });
        let (complete, proxies) = rollout_of(&answer);
        assert!(!complete, "{answer}");
        assert_eq!(
            proxies["default/reviews-4"],
            ("nacked: route refers to nothing".into(), id_b.clone()),
            "{answer}"
        );
    });
}

#[test]
fn a_replica_stopped_gracefully_takes_its_workloads_out_of_the_registry_without_waiting_for_its_lease(
) {
    let Some(etcd) = EtcdProc::start("stop") else {
        return;
    };
    let (a, mut b) = replicas("stop", &etcd, &[]);
    a.apply_file("reviews.yaml", &service("reviews"), 0);
    runtime().block_on(async {
        let (_, _, on_b, mut on_a) = reviews_on_b_seen_on_a(&a, &b, "198.18.0.4").await;
        // Its proxy goes (disconnected, within the grace period), then the replica is stopped.
        drop(on_b);
        let stopped = Instant::now();
        tokio::task::block_in_place(|| b.terminate());
        let ttl = weft_control::backend::etcd::SESSION_TTL;
        wait_endpoints(&mut on_a, "reviews", &[], ttl, &[&a]).await;
        let took = stopped.elapsed();
        // A lease left to expire takes at least two thirds of its TTL (renewed every third).
        assert!(
            took < ttl * 6 / 10,
            "the stopped replica's workload left after {took:?}: its lease was not revoked"
        );
    });
}

/// The ready endpoints of `default/svc` in each services section `p` recorded.
fn ready_in_each_view(p: &SimProxy, svc: &str) -> Vec<Vec<String>> {
    let seen = p.seen.lock().unwrap();
    let views = seen.services.as_deref().unwrap_or_default();
    views
        .iter()
        .map(|services| {
            let mut names: Vec<String> = services
                .iter()
                .filter(|s| s.name == svc && s.namespace == "default")
                .flat_map(|s| s.endpoints.iter().filter(|e| e.ready))
                .map(|e| e.workload.clone())
                .collect();
            names.sort();
            names
        })
        .collect()
}

/// Sidecars spread over three replicas, one of them killed: its proxies register again through the
/// other two (the client through one, an endpoint through the other). Every view the moved client is
/// sent, and every view a proxy on the third replica is sent meanwhile, holds every ready endpoint of
/// the mesh, until after the killed replica's lease expired: a workload moving is never missing, nor
/// sent not ready.
#[test]
fn proxies_moving_off_a_killed_replica_never_see_an_endpoint_missing_or_not_ready() {
    let Some(etcd) = EtcdProc::start("moving") else {
        return;
    };
    let (mut a, b) = replicas("moving", &etcd, &[]);
    let (store, key) = (etcd.url(), etcd.key_file());
    let args = [
        "--store",
        store.as_str(),
        "--etcd-prefix",
        "/moving/",
        "--store-key-file",
        key.to_str().unwrap(),
    ];
    let c = ControlProc::start_replica("moving-c", &a, &args);
    a.apply_file("reviews.yaml", &service("reviews"), 0);
    runtime().block_on(async {
        let reviews = join(&a, "reviews").await;
        let client = join(&a, "client").await;
        let reg = |name: &str, ip: &str| registration(name, ip);
        let r1 = sim(&a, &reviews, reg("reviews-1", "198.18.0.2"), Reply::Ack).await;
        let _r2 = sim(&b, &reviews, reg("reviews-2", "198.18.0.3"), Reply::Ack).await;
        let _r3 = sim(&c, &reviews, reg("reviews-3", "198.18.0.4"), Reply::Ack).await;
        let mut on_a = sim(&a, &client, reg("client-1", "198.18.0.5"), Reply::Ack).await;
        let mut on_c = sim(&c, &client, reg("client-2", "198.18.0.6"), Reply::Ack).await;
        let all = ["reviews-1", "reviews-2", "reviews-3"];
        let logs = [&a, &b, &c];
        let within = Duration::from_secs(10);
        wait_endpoints(&mut on_a, "reviews", &all, within, &logs).await;
        wait_endpoints(&mut on_c, "reviews", &all, within, &logs).await;
        on_c.record_services();
        a.kill9();
        let killed = Instant::now();
        drop((r1, on_a));
        // Spread: the client moves to B, the endpoint to C.
        let moved = sim(&b, &client, reg("client-1", "198.18.0.5"), Reply::Ack).await;
        moved.record_services();
        let _r1 = sim(&c, &reviews, reg("reviews-1", "198.18.0.2"), Reply::Ack).await;
        // Past the killed replica's lease expiry, when its keys go.
        let ttl = weft_control::backend::etcd::SESSION_TTL;
        tokio::time::sleep((ttl + Duration::from_secs(3)).saturating_sub(killed.elapsed())).await;
        for (who, p) in [
            ("the moved client on B", &moved),
            ("the client on C", &on_c),
        ] {
            let views = ready_in_each_view(p, "reviews");
            assert!(!views.is_empty(), "{who} was sent no view");
            for (i, v) in views.iter().enumerate() {
                assert_eq!(
                    v,
                    &all,
                    "{who}: view {i} of {} lacks a ready endpoint\n{}",
                    views.len(),
                    [&b, &c].map(|cp| cp.log()).join("\n----\n")
                );
            }
            eprintln!("{who}: {} views, each with {all:?} ready", views.len());
        }
    });
}

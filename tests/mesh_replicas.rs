//! Replicas sharing one etcd act as one control plane for the mesh: a workload registered through
//! one is an endpoint in what every other pushes, its name is held through all of them (and taken
//! over by its own identity moving), a killed replica's workloads leave within its lease TTL unless
//! their proxies register again elsewhere, every replica answers the same service addresses (also
//! when two services collide on their first choice), `apply --wait` through one replica waits
//! for the proxies of every replica and shows their NACKs, and `weftctl status` through any replica
//! lists every proxy of the mesh under the replica holding it. Real etcd, real `weft-control`
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
        // B no longer lists it as its own: once, under A (the replica holding it now).
        let (id_a, id_b) = (replica_id(&a), replica_id(&b));
        let held_by_b = b.api("GET", "/v1/status", None);
        assert!(
            !replicas_of(&held_by_b, "default/reviews-1").contains(&id_b),
            "B still lists the moved workload as its own: {held_by_b}"
        );
        tokio::task::block_in_place(|| {
            b.wait_status(Duration::from_secs(10), |s| {
                replicas_of(s, "default/reviews-1") == [id_a.as_str()]
            })
        });
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

/// The replica of each row of `proxy` in a `GET /v1/status` answer.
fn replicas_of(status: &serde_json::Value, proxy: &str) -> Vec<String> {
    status["proxies"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"))
        .iter()
        .filter(|p| p["proxy"] == proxy)
        .map(|p| p["replica"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Every proxy in a `GET /v1/status` answer with its replica; a proxy listed twice fails the test.
fn listed(status: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in status["proxies"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"))
    {
        let proxy = p["proxy"].as_str().unwrap().to_string();
        let replica = p["replica"].as_str().unwrap_or_default().to_string();
        if let Some(first) = out.insert(proxy.clone(), replica) {
            panic!("{proxy} listed twice (under {first} and again): {status:#}");
        }
    }
    out
}

/// The row of `proxy` in a `GET /v1/status` answer.
fn row<'a>(status: &'a serde_json::Value, proxy: &str) -> &'a serde_json::Value {
    status["proxies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["proxy"] == proxy))
        .unwrap_or_else(|| panic!("no {proxy} in {status:#}"))
}

/// `proxy -> replica` for `default/NAME`s.
fn under(rows: &[(&str, &String)]) -> BTreeMap<String, String> {
    rows.iter()
        .map(|(name, replica)| (format!("default/{name}"), replica.to_string()))
        .collect()
}

/// The real `weftctl status` through `a` shows what `through_a` (its `GET /v1/status`) holds, with a
/// REPLICA column and the count per replica; `-o json` through `b` lists `want`.
fn weftctl_status_shows_every_replica(
    a: &ControlProc,
    b: &ControlProc,
    through_a: &serde_json::Value,
    want: &BTreeMap<String, String>,
) {
    let (code, out, err) = a.weftctl(&["status"]);
    assert_eq!(code, Some(0), "{err}");
    let mut counts: BTreeMap<&String, (usize, usize)> = BTreeMap::new();
    for replica in want.values() {
        let (up, all) = counts.entry(replica).or_default();
        (*up, *all) = (*up + 1, *all + 1);
    }
    let per_replica: Vec<String> = counts
        .iter()
        .map(|(r, (up, all))| format!("replica {r}: {up}/{all}"))
        .collect();
    let summary = format!(
        "config revision {}: {n}/{n} proxies connected ({})\n",
        through_a["revision"],
        per_replica.join(", "),
        n = want.len()
    );
    assert_eq!(err, summary);
    eprintln!("weftctl status through A:\n{err}{out}");
    let header = out.lines().next().unwrap_or_default();
    assert!(header.starts_with("PROXY              REPLICA"), "{out}");
    for (proxy, replica) in want {
        let line = out.lines().find(|l| l.starts_with(proxy.as_str()));
        assert!(line.is_some_and(|l| l.contains(replica.as_str())), "{out}");
    }
    let nack = format!("rev {}: route refers to nothing", through_a["revision"]);
    assert!(out.contains(&nack), "{out}");
    let (code, json, err) = b.weftctl(&["status", "-o", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(&listed(&json), want);
}

/// Proxies on A and on B (one of B's NACKing): `GET /v1/status` and `weftctl status` through either
/// replica list all of them, once each, under the replica holding each, with the NACK and its
/// reason, and one of B's that disconnects as disconnected; after B's kill -9, the proxy that
/// registers again through A shows under A at once and the others leave with B's lease.
#[test]
fn status_through_either_replica_lists_every_proxy_of_the_mesh_under_the_replica_holding_it() {
    let Some(etcd) = EtcdProc::start("status") else {
        return;
    };
    let (a, mut b) = replicas("status", &etcd, &[]);
    let (id_a, id_b) = (replica_id(&a), replica_id(&b));
    a.apply_file("reviews.yaml", &service("reviews"), 0);
    runtime().block_on(async {
        let reviews = join(&a, "reviews").await;
        let reg = |name: &str, ip: &str| registration(name, ip);
        let _r1 = sim(&a, &reviews, reg("reviews-1", "198.18.0.2"), Reply::Ack).await;
        let r2 = sim(&b, &reviews, reg("reviews-2", "198.18.0.3"), Reply::Ack).await;
        let nack = Reply::Nack("route refers to nothing".into());
        let r3 = sim(&b, &reviews, reg("reviews-3", "198.18.0.4"), nack).await;
        let r4 = sim(&b, &reviews, reg("reviews-4", "198.18.0.5"), Reply::Ack).await;
        let want = under(&[
            ("reviews-1", &id_a),
            ("reviews-2", &id_b),
            ("reviews-3", &id_b),
            ("reviews-4", &id_b),
        ]);
        // Once B published where its proxies stand: acked at the mesh's revision, and the NACK.
        let settled = |s: &serde_json::Value| {
            listed(s) == want
                && row(s, "default/reviews-2")["ackedRevision"] == s["revision"]
                && row(s, "default/reviews-3")["lastNack"].is_object()
        };
        let within = Duration::from_secs(10);
        let through_a = tokio::task::block_in_place(|| a.wait_status(within, settled));
        let through_b = tokio::task::block_in_place(|| b.wait_status(within, settled));
        assert_eq!(through_a["replica"], id_a.as_str());
        assert_eq!(through_b["replica"], id_b.as_str());
        let r2_on_a = row(&through_a, "default/reviews-2");
        assert_eq!(r2_on_a["connected"], true, "{through_a:#}");
        assert_eq!(r2_on_a["address"], "198.18.0.3");
        assert_eq!(r2_on_a["identity"], "spiffe://mesh.test/ns/default/sa/reviews");
        assert!(r2_on_a["certNotAfter"].as_u64().is_some(), "{through_a:#}");
        assert!(r2_on_a["sentVersion"].as_u64().is_some_and(|v| v > 0));
        let nack = &row(&through_a, "default/reviews-3")["lastNack"];
        assert_eq!(nack["reason"], "route refers to nothing", "{through_a:#}");
        assert_eq!(nack["revision"], through_a["revision"], "{through_a:#}");
        tokio::task::block_in_place(|| {
            weftctl_status_shows_every_replica(&a, &b, &through_a, &want)
        });

        // A proxy on B disconnects: A shows it so (within the grace period), still under B.
        drop(r4);
        let left = tokio::task::block_in_place(|| {
            a.wait_status(within, |s| row(s, "default/reviews-4")["connected"] == false)
        });
        let r4_on_a = row(&left, "default/reviews-4");
        assert_eq!(r4_on_a["replica"], id_b.as_str(), "{left:#}");
        assert!(r4_on_a["certNotAfter"].as_u64().is_some(), "{left:#}");
        let seen = r4_on_a["lastSeenMs"].as_u64();
        assert!(seen.is_some_and(|ms| ms < 10_000), "{left:#}");

        // kill -9 B: reviews-2's proxy registers again through A, reviews-3's does not come back.
        b.kill9();
        let killed = Instant::now();
        drop((r2, r3));
        let _back = sim(&a, &reviews, reg("reviews-2", "198.18.0.3"), Reply::Ack).await;
        let moved = tokio::task::block_in_place(|| {
            a.wait_status(within, |s| replicas_of(s, "default/reviews-2") == [id_a.as_str()])
        });
        assert_eq!(replicas_of(&moved, "default/reviews-3"), [id_b.as_str()]);
        let ttl = weft_control::backend::etcd::SESSION_TTL;
        let only_a = under(&[("reviews-1", &id_a), ("reviews-2", &id_a)]);
        tokio::task::block_in_place(|| {
            a.wait_status(ttl + Duration::from_secs(8), |s| listed(s) == only_a)
        });
        let took = killed.elapsed();
        assert!(
            took >= ttl * 6 / 10,
            "B's proxies left A's status after {took:?}, before its lease (TTL {ttl:?}) can have expired"
        );
        eprintln!("the killed replica's proxies left the status {took:?} after the kill (TTL {ttl:?})");
    });
}

#[test]
fn a_state_directory_control_planes_status_names_no_replica() {
    let cp = ControlProc::start("status-dir");
    cp.apply_file("reviews.yaml", &service("reviews"), 0);
    runtime().block_on(async {
        let reviews = join(&cp, "reviews").await;
        let _p = sim(
            &cp,
            &reviews,
            registration("reviews-1", "198.18.0.2"),
            Reply::Ack,
        )
        .await;
        let s = tokio::task::block_in_place(|| {
            cp.wait_status(Duration::from_secs(10), |s| {
                s["proxies"][0]["ackedVersion"].as_u64().is_some()
            })
        });
        assert!(s.get("replica").is_none(), "{s:#}");
        let fields: Vec<&String> = s["proxies"][0].as_object().unwrap().keys().collect();
        for absent in ["replica", "sentRevision", "ackedRevision"] {
            assert!(!fields.iter().any(|f| *f == absent), "{absent} in {s:#}");
        }
        let (code, out, err) = tokio::task::block_in_place(|| cp.weftctl(&["status"]));
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            err,
            format!("config revision {}: 1/1 proxies connected\n", s["revision"])
        );
        assert!(out.starts_with("PROXY              IDENTITY"), "{out}");
    });
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

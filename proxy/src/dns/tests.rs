//! The responder over real sockets on 127.0.0.1: questions encoded with hickory-proto, sent over UDP and
//! TCP, answers decoded and checked; a second responder on another port plays the upstream resolver.

use super::server::MAX_QUERY_BYTES;
use super::*;
use crate::telemetry::metrics::Metrics;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use weft_api::control::ServiceView;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 7);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
/// Long enough that a loaded machine answers well within it; only "no reply" checks wait it out.
const NO_REPLY_WAIT: Duration = Duration::from_millis(300);

fn mesh() -> Vec<ServiceView> {
    vec![ServiceView {
        name: "reviews".into(),
        namespace: "default".into(),
        ports: Vec::new(),
        vip: Some(VIP.into()),
        endpoints: Vec::new(),
        traffic_policy: None,
    }]
}

fn mesh_lookup() -> Lookup {
    let names = Names::new("default", "cluster.local");
    let services = mesh();
    Arc::new(move |q, t| names.answer(&services, q, t))
}

/// A responder that knows only `example.com` (A 203.0.113.5): the upstream in forwarding tests.
fn upstream_lookup() -> Lookup {
    Arc::new(
        |q, t| match (q.trim_end_matches('.').to_ascii_lowercase().as_str(), t) {
            ("example.com", RecordType::A) => Answer::Address(EXTERNAL.into()),
            ("example.com", _) => Answer::NoData,
            _ => Answer::NxDomain,
        },
    )
}

struct Running {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _stop: tokio_util::sync::DropGuard,
}

fn settings() -> Settings {
    Settings {
        ttl: 5,
        max_tcp_connections: 64,
        tcp_idle_timeout: Duration::from_secs(10),
    }
}

async fn start(lookup: Lookup, forwarder: Option<Forwarder>, settings: Settings) -> Running {
    let (udp, tcp) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = tcp.local_addr().unwrap();
    assert_eq!(
        udp.local_addr().unwrap(),
        addr,
        "udp and tcp share the port"
    );
    let metrics = Arc::new(Metrics::new());
    let server = Server::new(lookup, forwarder, settings, metrics.clone());
    let stop = CancellationToken::new();
    tokio::spawn(serve(udp, tcp, server, stop.clone()));
    Running {
        addr,
        metrics,
        _stop: stop.drop_guard(),
    }
}

async fn start_mesh() -> Running {
    start(mesh_lookup(), None, settings()).await
}

fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

async fn ask_udp(server: SocketAddr, q: &Message) -> Message {
    let reply = udp_exchange(server, &q.to_vec().unwrap())
        .await
        .expect("a reply over udp");
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(
        m.metadata.id, q.metadata.id,
        "the reply carries the question's id"
    );
    m
}

/// Sends one datagram; the reply, or None if nothing came within NO_REPLY_WAIT (5 s for real answers
/// is checked by the caller's `expect`).
async fn udp_exchange(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    sock.send(bytes).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(buf[..n].to_vec())
}

async fn udp_no_reply(server: SocketAddr, bytes: &[u8]) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    sock.send(bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(NO_REPLY_WAIT, sock.recv(&mut buf))
        .await
        .is_err()
}

async fn tcp_send(stream: &mut TcpStream, bytes: &[u8]) {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    stream.write_all(&out).await.unwrap();
}

async fn tcp_recv(stream: &mut TcpStream) -> Message {
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read_u16())
        .await
        .expect("a reply over tcp")
        .unwrap();
    let mut buf = vec![0u8; usize::from(n)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

/// True when the server closed the connection (EOF) within a few seconds.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

fn counted(m: &Metrics, needle: &str) -> bool {
    m.encode()
        .lines()
        .any(|l| l.starts_with(needle) && !l.ends_with(" 0"))
}

// === answers ===

#[tokio::test]
async fn udp_answers_every_form_of_a_mesh_name_with_the_vip() {
    let s = start_mesh().await;
    for name in [
        "reviews.",
        "reviews.default.",
        "reviews.default.svc.",
        "Reviews.Default.Svc.Cluster.Local.",
    ] {
        let q = query(name, RecordType::A);
        let r = ask_udp(s.addr, &q).await;
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(r.metadata.authoritative, "{name}");
        assert!(r.metadata.recursion_desired, "RD copied from the question");
        assert!(
            !r.metadata.recursion_available,
            "no upstreams: no recursion"
        );
        assert_eq!(r.queries, q.queries, "question echoed");
        assert_eq!(a_records(&r), vec![VIP], "{name}");
        let rec = &r.answers[0];
        assert_eq!(rec.ttl, 5);
        assert_eq!(rec.name.to_ascii(), name, "owner name as asked, case kept");
    }
    assert!(counted(
        &s.metrics,
        "weft_proxy_dns_queries_total{result=\"answered\"} 4"
    ));
}

#[tokio::test]
async fn nodata_nxdomain_and_names_outside_the_mesh_without_upstreams() {
    let s = start_mesh().await;
    let r = ask_udp(
        s.addr,
        &query("reviews.default.svc.cluster.local.", RecordType::AAAA),
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty() && r.metadata.authoritative);

    let r = ask_udp(
        s.addr,
        &query("nope.default.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.metadata.authoritative);

    let r = ask_udp(s.addr, &query("example.com.", RecordType::A)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        !r.metadata.authoritative,
        "not ours: NXDOMAIN but not authoritative"
    );

    let m = &s.metrics;
    assert!(counted(
        m,
        "weft_proxy_dns_queries_total{result=\"nodata\"} 1"
    ));
    assert!(counted(
        m,
        "weft_proxy_dns_queries_total{result=\"nxdomain\"} 2"
    ));
}

#[tokio::test]
async fn edns_questions_get_an_edns_answer() {
    let s = start_mesh().await;
    let mut q = query("reviews.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    q.set_edns(edns);
    let r = ask_udp(s.addr, &q).await;
    assert_eq!(a_records(&r), vec![VIP]);
    assert!(
        r.edns.is_some(),
        "RFC 6891: an OPT record in the question gets one back"
    );
    let plain = ask_udp(s.addr, &query("reviews.", RecordType::A)).await;
    assert!(plain.edns.is_none());
}

#[tokio::test]
async fn tcp_answers_several_questions_on_one_connection() {
    let s = start_mesh().await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    for (name, t, code, n) in [
        (
            "reviews.default.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
            1,
        ),
        ("reviews.", RecordType::AAAA, ResponseCode::NoError, 0),
        ("nope.svc.", RecordType::A, ResponseCode::NXDomain, 0),
    ] {
        let q = query(name, t);
        tcp_send(&mut c, &q.to_vec().unwrap()).await;
        let r = tcp_recv(&mut c).await;
        assert_eq!(r.metadata.id, q.metadata.id);
        assert_eq!(r.metadata.response_code, code, "{name} {t}");
        assert_eq!(r.answers.len(), n, "{name} {t}");
    }
}

#[tokio::test]
async fn other_opcodes_classes_and_zone_transfers_are_refused() {
    let s = start_mesh().await;
    let mut notify = query("reviews.", RecordType::A);
    notify.metadata.op_code = OpCode::Notify;
    let r = ask_udp(s.addr, &notify).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);

    let r = ask_udp(
        s.addr,
        &query("default.svc.cluster.local.", RecordType::AXFR),
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);

    let mut chaos = query("version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(hickory_proto::rr::DNSClass::CH);
    let r = ask_udp(s.addr, &chaos).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);

    let mut two = query("reviews.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("reviews.default.").unwrap(),
        RecordType::A,
    ));
    let r = ask_udp(s.addr, &two).await;
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
}

// === malformed input and limits ===

#[tokio::test]
async fn malformed_packets_get_formerr_or_nothing_and_are_counted() {
    let s = start_mesh().await;
    // Shorter than a header: no id to answer to, dropped.
    assert!(udp_no_reply(s.addr, &[0xde, 0xad, 0xbe]).await);
    // A header that promises a question the packet does not hold: FORMERR with the same id.
    let mut bad = query("reviews.", RecordType::A).to_vec().unwrap();
    bad[0] = 0x12;
    bad[1] = 0x34;
    bad.truncate(15);
    let r = udp_exchange(s.addr, &bad).await.expect("FORMERR");
    let r = Message::from_vec(&r).unwrap();
    assert_eq!(r.metadata.id, 0x1234);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // A response is never answered (no ping-pong between responders).
    let mut resp = query("reviews.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert!(udp_no_reply(s.addr, &resp.to_vec().unwrap()).await);
    // Too large.
    assert!(udp_no_reply(s.addr, &vec![0u8; MAX_QUERY_BYTES + 100]).await);
    // Random garbage of every length up to a header and a bit: no panic, the server still answers.
    for len in 0..40u8 {
        let junk: Vec<u8> = (0..len)
            .map(|i| i.wrapping_mul(37).wrapping_add(len))
            .collect();
        let _ = udp_exchange_quick(s.addr, &junk).await;
    }
    let r = ask_udp(s.addr, &query("reviews.", RecordType::A)).await;
    assert_eq!(a_records(&r), vec![VIP]);

    let m = &s.metrics;
    assert!(counted(
        m,
        "weft_proxy_dns_queries_total{result=\"formerr\"}"
    ));
    for reason in ["malformed", "not_a_query", "too_large"] {
        let needle = format!("weft_proxy_rejections_total{{listener=\"dns\",reason=\"{reason}\"}}");
        assert!(counted(m, &needle), "{reason}: {}", m.encode());
    }
}

/// Sends without waiting long for an answer (garbage may or may not get FORMERR).
async fn udp_exchange_quick(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_millis(20), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(buf[..n].to_vec())
}

#[tokio::test]
async fn tcp_garbage_oversize_and_idle_connections_are_closed() {
    let s = start(
        mesh_lookup(),
        None,
        Settings {
            tcp_idle_timeout: Duration::from_millis(200),
            ..settings()
        },
    )
    .await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    tcp_send(&mut c, &[1, 2, 3]).await;
    assert!(
        closed_by_server(&mut c).await,
        "garbage closes the connection"
    );

    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(&u16::MAX.to_be_bytes()).await.unwrap();
    assert!(
        closed_by_server(&mut c).await,
        "a length over the limit closes it"
    );

    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(&[0, 40, 1]).await.unwrap(); // a length, then one byte of 40, then nothing
    assert!(
        closed_by_server(&mut c).await,
        "a stalled question closes it"
    );

    let mut c = TcpStream::connect(s.addr).await.unwrap();
    assert!(
        closed_by_server(&mut c).await,
        "an idle connection is closed"
    );

    let m = &s.metrics;
    for reason in ["malformed", "too_large", "idle_timeout"] {
        let needle = format!("weft_proxy_rejections_total{{listener=\"dns\",reason=\"{reason}\"}}");
        assert!(counted(m, &needle), "{reason}: {}", m.encode());
    }
}

#[tokio::test]
async fn tcp_connections_over_the_cap_are_closed_at_accept() {
    let s = start(
        mesh_lookup(),
        None,
        Settings {
            max_tcp_connections: 1,
            ..settings()
        },
    )
    .await;
    let mut first = TcpStream::connect(s.addr).await.unwrap();
    // Make sure the first holds its slot before the second arrives.
    let q = query("reviews.", RecordType::A);
    tcp_send(&mut first, &q.to_vec().unwrap()).await;
    assert_eq!(a_records(&tcp_recv(&mut first).await), vec![VIP]);
    let mut second = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_by_server(&mut second).await);
    assert!(counted(
        &s.metrics,
        "weft_proxy_rejections_total{listener=\"dns\",reason=\"max_connections\"} 1"
    ));
    drop(first);
    // The slot comes back once the first connection is gone.
    let mut third = None;
    for _ in 0..50 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        tcp_send(&mut c, &q.to_vec().unwrap()).await;
        let mut len = [0u8; 2];
        if tokio::time::timeout(Duration::from_secs(1), c.read_exact(&mut len))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            third = Some(len);
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(third.is_some(), "a slot frees up when a connection closes");
}

#[tokio::test]
async fn concurrent_questions_over_udp_and_tcp_all_get_answers() {
    let s = start_mesh().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let addr = s.addr;
        tasks.spawn(async move {
            let name = if i % 2 == 0 {
                "reviews."
            } else {
                "reviews.default.svc.cluster.local."
            };
            let q = query(name, RecordType::A);
            assert_eq!(a_records(&ask_udp(addr, &q).await), vec![VIP]);
        });
    }
    for _ in 0..10 {
        let addr = s.addr;
        tasks.spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for _ in 0..5 {
                let q = query("reviews.default.", RecordType::A);
                tcp_send(&mut c, &q.to_vec().unwrap()).await;
                let r = tcp_recv(&mut c).await;
                assert_eq!(r.metadata.id, q.metadata.id);
                assert_eq!(a_records(&r), vec![VIP]);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert!(counted(
        &s.metrics,
        "weft_proxy_dns_queries_total{result=\"answered\"} 100"
    ));
}

// === forwarding ===

fn forwarder(upstreams: Vec<SocketAddr>, timeout: Duration, max: usize) -> Option<Forwarder> {
    Some(Forwarder::new(upstreams, timeout, max))
}

#[tokio::test]
async fn names_outside_the_mesh_are_relayed_to_the_upstream_over_udp_and_tcp() {
    let upstream = start(upstream_lookup(), None, settings()).await;
    let s = start(
        mesh_lookup(),
        forwarder(vec![upstream.addr], Duration::from_secs(2), 16),
        settings(),
    )
    .await;
    let q = query("Example.COM.", RecordType::A);
    let r = ask_udp(s.addr, &q).await;
    assert_eq!(a_records(&r), vec![EXTERNAL]);
    assert_eq!(
        r.queries, q.queries,
        "the upstream saw the question as asked"
    );

    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let q = query("example.com.", RecordType::A);
    tcp_send(&mut c, &q.to_vec().unwrap()).await;
    let r = tcp_recv(&mut c).await;
    assert_eq!(r.metadata.id, q.metadata.id);
    assert_eq!(a_records(&r), vec![EXTERNAL]);

    // The upstream's NXDOMAIN is relayed as it is; mesh names never leave the pod.
    let r = ask_udp(s.addr, &query("nothing.example.", RecordType::A)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let r = ask_udp(s.addr, &query("reviews.", RecordType::A)).await;
    assert_eq!(a_records(&r), vec![VIP]);
    assert!(
        r.metadata.recursion_available,
        "with upstreams the responder recurses"
    );

    assert!(counted(
        &s.metrics,
        "weft_proxy_dns_queries_total{result=\"forwarded\"} 3"
    ));
    assert!(counted(
        &upstream.metrics,
        "weft_proxy_dns_queries_total{result=\"answered\"} 2"
    ));
    assert!(counted(
        &upstream.metrics,
        "weft_proxy_dns_queries_total{result=\"nxdomain\"} 1"
    ));
}

#[tokio::test]
async fn a_silent_upstream_times_out_to_servfail_and_the_next_upstream_is_tried() {
    // Bound but never read: questions to it go unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let upstream = start(upstream_lookup(), None, settings()).await;
    let timeout = Duration::from_millis(200);

    let only_silent = start(
        mesh_lookup(),
        forwarder(vec![silent_addr], timeout, 16),
        settings(),
    )
    .await;
    let started = std::time::Instant::now();
    let r = ask_udp(only_silent.addr, &query("example.com.", RecordType::A)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() >= timeout);
    assert!(counted(
        &only_silent.metrics,
        "weft_proxy_dns_queries_total{result=\"forward_failed\"} 1"
    ));

    let failover = start(
        mesh_lookup(),
        forwarder(vec![silent_addr, upstream.addr], timeout, 16),
        settings(),
    )
    .await;
    let r = ask_udp(failover.addr, &query("example.com.", RecordType::A)).await;
    assert_eq!(a_records(&r), vec![EXTERNAL]);
    drop(silent);
}

#[tokio::test]
async fn forwarded_questions_in_flight_are_capped() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let s = start(
        mesh_lookup(),
        forwarder(
            vec![silent.local_addr().unwrap()],
            Duration::from_secs(3),
            1,
        ),
        settings(),
    )
    .await;
    // The first question holds the only slot for 3 s...
    let addr = s.addr;
    let first =
        tokio::spawn(async move { ask_udp(addr, &query("a.example.", RecordType::A)).await });
    // ...so, once it is out, the second is refused at once. Wait until the first is really in flight.
    let mut refused = None;
    for _ in 0..100 {
        let r = ask_udp(s.addr, &query("b.example.", RecordType::A)).await;
        if r.metadata.response_code == ResponseCode::ServFail {
            refused = Some(r);
            break;
        }
    }
    assert!(refused.is_some());
    assert!(counted(
        &s.metrics,
        "weft_proxy_rejections_total{listener=\"dns\",reason=\"max_forwards\"}"
    ));
    first.abort();
}

// === in the proxy ===

/// `weft_proxy::bind` with a `dns:` section starts the responder, and it answers from the mesh view the
/// proxy holds at each question (a snapshot applied later is seen by the next question).
#[tokio::test]
async fn the_proxy_answers_from_the_mesh_view_it_holds_now() {
    let identity = crate::test_identity::web();
    let yaml = "identity: {cert: a, key: b, bundle: c}\ntunnel: {listen: 127.0.0.1:0}\n\
                admin: 127.0.0.1:0\nhealth: 127.0.0.1:0\ndns: {listen: 127.0.0.1:0}\n";
    let cfg: crate::config::ProxyConfig = weft_api::yaml::from_str("proxy.yaml", yaml).unwrap();
    let running = crate::bind(cfg, identity).await.unwrap();
    let addr = running
        .listeners
        .iter()
        .find(|(k, _)| matches!(k, crate::Kind::Dns(_)))
        .map(|(_, l)| l.local_addr().unwrap())
        .expect("a dns listener");
    let proxy = running.proxy.clone();
    let serving = tokio::spawn(running.serve());

    // No snapshot yet: nothing in the mesh, and no upstreams.
    let r = ask_udp(addr, &query("reviews.", RecordType::A)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

    let snapshot = weft_api::control::Snapshot {
        version: 1,
        services: Some(mesh()),
        ..Default::default()
    };
    proxy.set_mesh(
        proxy
            .mesh()
            .merge(
                snapshot,
                &weft_certs::TrustDomain::new("weft.local").unwrap(),
                1 << 16,
            )
            .unwrap(),
    );
    // Without a workload, relative names are relative to `default`.
    let r = ask_udp(addr, &query("reviews.", RecordType::A)).await;
    assert_eq!(a_records(&r), vec![VIP]);
    let r = ask_udp(
        addr,
        &query("reviews.default.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(a_records(&r), vec![VIP]);
    assert!(proxy
        .metrics
        .encode()
        .contains("weft_proxy_dns_queries_total{result=\"answered\"} 2"));

    proxy.shutdown.cancel();
    assert!(serving.await.unwrap(), "drained");
}

// === with a real resolver tool ===

/// `dig` against the responder, when dig is installed (Debian: dnsutils); skipped otherwise.
#[tokio::test]
async fn dig_resolves_mesh_names_when_installed() {
    if std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("skipped: dig is not installed");
        return;
    }
    let s = start_mesh().await;
    for tcp in [false, true] {
        let mut cmd = tokio::process::Command::new("dig");
        cmd.args([
            "@127.0.0.1",
            "-p",
            &s.addr.port().to_string(),
            "+short",
            "+time=2",
            "+tries=1",
        ]);
        if tcp {
            cmd.arg("+tcp");
        }
        let out = cmd
            .arg("reviews.default.svc.cluster.local")
            .arg("A")
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), VIP.to_string(), "tcp={tcp}: {text}");
    }
}

//! The two intercepted listeners, held to the same three bounds as every other listener
//! (tests/listener_timeouts.rs, docs/limits.md): 15001, where a pod's own outgoing connections land,
//! and 15006, where plaintext from outside the mesh lands on a PERMISSIVE pod. Real pods, sidecars and
//! interception; the sidecars' limits set short with `weftctl pod run --proxy-limit`. For each: a
//! request head trickled one byte every `DRIP` after its request line is cut at the header-read
//! timeout; a silent connection and a kept-alive one after its exchange are closed at the timeouts; the
//! connection after the cap is closed at accept and counted, and the listener serves again. Needs root,
//! `ip` and `iptables` (see `weft::pods::available`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use weft::pods::{available, example, PodHandle, PodMesh};

/// Every header-read and idle timeout of the sidecars under test.
const LIMIT: Duration = Duration::from_secs(2);
/// Every connection cap of the sidecars under test.
const CAP: usize = 4;
/// Scheduling slack on a busy machine: a bound holds if the close comes within `LIMIT + SLACK`.
const SLACK: Duration = Duration::from_secs(3);
/// One byte every this long when trickling.
const DRIP: Duration = Duration::from_millis(400);

const API: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: api}\nspec:\n  ports: [{port: 8080, protocol: http}]\n  selector: {app: api}\n";

const LIMITS: [&str; 8] = [
    "--proxy-limit",
    "header_read_timeout=2s",
    "--proxy-limit",
    "idle_timeout=2s",
    "--proxy-limit",
    "h2_idle_timeout=2s",
    "--proxy-limit",
    "max_connections=4",
];

/// One intercepted listener: whose sidecar it is, where the test connects from and to.
struct Case<'a> {
    name: &'static str,
    /// The `listener` label of its rejections.
    listener: &'static str,
    from: &'a PodHandle,
    sidecar: &'a PodHandle,
    to: SocketAddr,
}

#[test]
fn intercepted_listeners_cut_trickles_close_idle_connections_and_cap() {
    if !available("intercepted_limits") {
        return;
    }
    let app = example("demo-app");
    let mut mesh = PodMesh::new("ilim");
    mesh.apply(API);
    let mut api_flags = vec![
        "--service",
        "api",
        "--port",
        "8080",
        "--mtls-mode",
        "PERMISSIVE",
    ];
    api_flags.extend(LIMITS);
    let api = mesh.pod(
        "api",
        &api_flags,
        &[&app, "http", "--listen", "0.0.0.0:8080", "--name", "api"],
    );
    let client = mesh.pod("client", &LIMITS, &["sleep", "600"]);
    let outside = mesh.outside("stranger", "198.18.255.243");
    let api_addr: SocketAddr = format!("{}:8080", api.address)
        .parse()
        .expect("api address");
    let cases = [
        Case {
            name: "intercepted outbound 15001",
            listener: "outbound",
            from: &client,
            sidecar: &client,
            to: api_addr,
        },
        Case {
            name: "plaintext inbound 15006",
            listener: "inbound",
            from: &outside,
            sidecar: &api,
            to: api_addr,
        },
    ];
    let mut failed = Vec::new();
    for c in &cases {
        for (check, run) in [
            (
                "trickle",
                trickle as fn(&PodMesh, &Case) -> Result<(), String>,
            ),
            ("idle", idle),
            ("cap", cap),
        ] {
            eprintln!("{}: {check}", c.name);
            if let Err(why) = run(&mesh, c) {
                failed.push(format!("{} / {check}: {why}", c.name));
                // Let the held connections time out before the next check.
                std::thread::sleep(LIMIT + SLACK);
            }
        }
    }
    assert!(failed.is_empty(), "failed checks:\n{}", failed.join("\n"));
}

fn connect(mesh: &PodMesh, c: &Case) -> Result<TcpStream, String> {
    mesh.connect_from(c.from, c.to)
        .map_err(|e| format!("connecting from {} to {}: {e}", c.from.name, c.to))
}

/// (1) The request line at once (so the sidecar knows it is HTTP), then the rest one byte every DRIP:
/// cut within `LIMIT + SLACK`, with a 408 or nothing.
fn trickle(mesh: &PodMesh, c: &Case) -> Result<(), String> {
    let mut s = connect(mesh, c)?;
    let started = Instant::now();
    s.write_all(b"GET /info HTTP/1.1\r\n")
        .map_err(|e| e.to_string())?;
    let mut rest = b"Host: api\r\nX-Slow: ".to_vec();
    rest.extend(std::iter::repeat_n(b'a', 100));
    assert!(DRIP * rest.len() as u32 > (LIMIT + SLACK) * 2);
    s.set_read_timeout(Some(DRIP)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1024];
    let mut answer = Vec::new();
    for b in rest {
        if s.write_all(&[b]).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if started.elapsed() > LIMIT + SLACK {
            return Err(format!(
                "a head trickled for {:?} is still being read",
                started.elapsed()
            ));
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    if !(answer.is_empty() || answer.starts_with("HTTP/1.1 408")) {
        return Err(format!("a trickled head was answered: {answer}"));
    }
    Ok(())
}

/// (2) A silent connection, and one after a kept-alive exchange, are closed after at least half of
/// LIMIT and within `LIMIT + SLACK`.
fn idle(mesh: &PodMesh, c: &Case) -> Result<(), String> {
    let silent = connect(mesh, c)?;
    closed_in_time(silent, "a silent connection")?;
    let mut s = connect(mesh, c)?;
    s.write_all(b"GET /info HTTP/1.1\r\nHost: api\r\n\r\n")
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).map_err(|e| format!("no answer: {e}"))?;
    let head = String::from_utf8_lossy(&buf[..n]);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("the keep-alive request got {head}"));
    }
    // The whole answer is small: whatever else arrives before the close is its rest.
    closed_in_time(s, "a kept-alive connection after its exchange")
}

fn closed_in_time(mut s: TcpStream, what: &str) -> Result<(), String> {
    let started = Instant::now();
    s.set_read_timeout(Some(LIMIT + SLACK))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) if started.elapsed() >= LIMIT + SLACK => {
                return Err(format!("{what} is still open {:?} later", LIMIT + SLACK))
            }
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
    if started.elapsed() < LIMIT / 2 {
        return Err(format!(
            "{what} was closed after only {:?}",
            started.elapsed()
        ));
    }
    Ok(())
}

/// (3) CAP held connections, then one more: closed at accept (well before the timeouts) and counted;
/// once the held ones are gone, a request is served again.
fn cap(mesh: &PodMesh, c: &Case) -> Result<(), String> {
    let before = refusals(mesh, c);
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(connect(mesh, c)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let mut extra = connect(mesh, c)?;
    extra
        .set_read_timeout(Some(LIMIT / 2))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => {
            return Err(format!(
                "connection {} beyond the cap of {CAP} was not closed at accept ({:?}): {other:?}",
                CAP + 1,
                started.elapsed()
            ))
        }
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while refusals(mesh, c) <= before {
        if Instant::now() > deadline {
            return Err(format!(
                "the refusal at the cap is not counted ({before} before)"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    served_again(mesh, c)
}

fn served_again(mesh: &PodMesh, c: &Case) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = connect(mesh, c).and_then(|mut s| {
            s.write_all(b"GET /info HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut all = Vec::new();
            let _ = s.read_to_end(&mut all);
            Ok(String::from_utf8_lossy(&all).into_owned())
        });
        match got {
            Ok(a) if a.starts_with("HTTP/1.1 200") => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(format!("not served again after the cap: {got:?}"))
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `weft_proxy_rejections_total{listener, reason="max_connections"}` of the case's sidecar.
fn refusals(mesh: &PodMesh, c: &Case) -> f64 {
    let out = mesh.exec_ok(
        c.sidecar,
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            "http://127.0.0.1:15020/metrics",
        ],
    );
    let listener = format!("listener=\"{}\"", c.listener);
    out.lines()
        .filter(|l| l.starts_with("weft_proxy_rejections_total"))
        .filter(|l| l.contains(&listener) && l.contains("reason=\"max_connections\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

//! A hostile app for pod tests: run as a pod's app, it tries every way out of the pod and prints one
//! line per attempt, `ESCAPE <name>: blocked (<why>)` or `ESCAPE <name>: SUCCEEDED (<what>)`, and ends
//! with `CHECK intercepted: ...` (whether its ordinary TCP still goes through the sidecar).
//!
//! ```text
//! attacker escape --state-dir D --pod-dir P --other-pod-dir Q --outside IP --tcp-port N --udp-port N
//!                 --peer IP [--outside6 fe80::1%eth0]
//! attacker serve --tcp-port N --udp-port N   # writes each TCP peer's address; echoes UDP, UDP-Lite
//! attacker probe HOST:PORT                   # prints what a `serve` saw; exit 0 if it answered
//! attacker probe-udp IP:PORT                 # one datagram; exit 0 if a `serve` answered
//! attacker hold --file F                     # a neighbour: creates F (0600) and waits
//! attacker neighbour --pid P --file F        # against a `hold` in another pod: its environment,
//!                                            # its file, ptrace, SIGTERM
//! ```
//! `serve` listens on both families, so an IPv6 attempt reaches it when the pod lets IPv6 out.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Escape {
    state_dir: PathBuf,
    pod_dir: PathBuf,
    other_pod_dir: PathBuf,
    outside: String,
    peer: String,
    outside6: Option<String>,
    tcp_port: u16,
    udp_port: u16,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let port = |name: &str| flag(name).and_then(|p| p.parse().ok()).unwrap_or(0);
    match args.first().map(String::as_str) {
        Some("serve") => serve(port("--tcp-port"), port("--udp-port")),
        Some("probe") => probe(args.get(1).map(String::as_str).unwrap_or_default()),
        Some("probe-udp") => {
            let target = args.get(1).map(String::as_str).unwrap_or_default();
            match udp(target, "0.0.0.0:0") {
                Ok(what) => println!("{what}"),
                Err(why) => {
                    println!("{why}");
                    std::process::exit(1);
                }
            }
        }
        Some("hold") => hold(&PathBuf::from(flag("--file").unwrap_or_default())),
        Some("neighbour") => neighbour(
            flag("--pid").and_then(|p| p.parse().ok()).unwrap_or(0),
            &PathBuf::from(flag("--file").unwrap_or_default()),
        ),
        Some("escape") => escape(&Escape {
            state_dir: flag("--state-dir").unwrap_or_default().into(),
            pod_dir: flag("--pod-dir").unwrap_or_default().into(),
            other_pod_dir: flag("--other-pod-dir").unwrap_or_default().into(),
            outside: flag("--outside").unwrap_or_default(),
            peer: flag("--peer").unwrap_or_default(),
            outside6: flag("--outside6"),
            tcp_port: port("--tcp-port"),
            udp_port: port("--udp-port"),
        }),
        _ => {
            eprintln!("usage: attacker escape ... | attacker serve --tcp-port N --udp-port N");
            std::process::exit(2);
        }
    }
}

fn report(name: &str, outcome: Result<String, String>) {
    match outcome {
        Ok(what) => println!("ESCAPE {name}: SUCCEEDED ({what})"),
        Err(why) => println!("ESCAPE {name}: blocked ({why})"),
    }
}

fn escape(e: &Escape) {
    // SAFETY: getuid has no preconditions.
    println!("RUNNING as uid {}", unsafe { libc::getuid() });
    let files = [
        ("read_ca_key", e.state_dir.join("ca/ca.key")),
        ("read_operator_token", e.state_dir.join("operator.token")),
        ("read_own_sidecar_token", e.pod_dir.join("token")),
        ("read_own_sidecar_key", e.pod_dir.join("proxy/key.pem")),
        ("read_own_sidecar_config", e.pod_dir.join("proxy.yaml")),
        ("read_other_pod_token", e.other_pod_dir.join("token")),
        ("read_other_pod_key", e.other_pod_dir.join("proxy/key.pem")),
    ];
    for (name, path) in files {
        report(
            name,
            std::fs::read(&path)
                .map(|b| format!("read {} bytes of {}", b.len(), path.display()))
                .map_err(|err| format!("{}: {err}", path.display())),
        );
    }
    report("keep_capabilities", capabilities());
    report("open_raw_socket", raw_socket());
    report("set_so_mark", set_mark(1337));
    report("flush_nat_table", run("iptables", &["-t", "nat", "-F"]));
    report(
        "flush_filter_table",
        run("iptables", &["-t", "filter", "-F"]),
    );
    report("kill_sidecar", kill_sidecar(e));
    let outside_tunnel = format!("{}:15008", e.outside);
    report("connect_outside_15008", bypass(&outside_tunnel));
    let outside_udp = format!("{}:{}", e.outside, e.udp_port);
    report("udp_to_outside", udp(&outside_udp, "0.0.0.0:0"));
    let peer_udp = format!("{}:{}", e.peer, e.udp_port);
    report("udp_to_other_pod", udp(&peer_udp, "0.0.0.0:0"));
    report("udplite_to_outside", udplite(&outside_udp));
    if let Some(v6) = &e.outside6 {
        report("ipv6_tcp", ipv6_tcp(v6, e.tcp_port));
        report("ipv6_udp", ipv6_udp(v6, e.udp_port));
    }
    // Last: after every attempt, ordinary TCP must still go through the sidecar.
    let plain = format!("{}:{}", e.outside, e.tcp_port);
    match bypass(&plain) {
        Err(why) if why.starts_with("went through the sidecar") => {
            println!("CHECK intercepted: yes ({why})")
        }
        Err(why) => println!("CHECK intercepted: unknown ({why})"),
        Ok(what) => println!("CHECK intercepted: no ({what})"),
    }
}

/// What an app keeps to itself: a file only its user may open, and its process (environment, memory).
fn hold(file: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let made = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(b"private\n"));
    if let Err(e) = made {
        eprintln!("cannot create {}: {e}", file.display());
        std::process::exit(1);
    }
    // SAFETY: getuid has no preconditions.
    println!("HOLDING {} as uid {}", file.display(), unsafe {
        libc::getuid()
    });
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Another pod's app (`hold`), seen from this one: the pid namespace and /tmp are shared.
fn neighbour(pid: i32, file: &std::path::Path) {
    // SAFETY: getuid has no preconditions.
    println!("RUNNING as uid {}", unsafe { libc::getuid() });
    let environ = format!("/proc/{pid}/environ");
    report(
        "read_neighbour_environ",
        std::fs::read(&environ)
            .map(|b| format!("read {} bytes of {environ}", b.len()))
            .map_err(|e| format!("{environ}: {e}")),
    );
    report(
        "write_neighbour_file",
        std::fs::OpenOptions::new()
            .append(true)
            .open(file)
            .and_then(|mut f| f.write_all(b"written by another pod\n"))
            .map(|()| format!("appended to {}", file.display()))
            .map_err(|e| format!("{}: {e}", file.display())),
    );
    report("trace_neighbour", trace(pid));
    // SAFETY: a signal to another process; the kernel decides whether we may.
    let killed = if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
        Ok(format!("SIGTERM sent to pid {pid}"))
    } else {
        Err(format!("kill {pid}: {}", std::io::Error::last_os_error()))
    };
    report("signal_neighbour", killed);
}

/// Attaches to `pid` as a debugger would (then stops it briefly and lets it go).
fn trace(pid: i32) -> Result<String, String> {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace requests on another process; the kernel decides whether we may.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, pid, null, null) != 0 {
            return Err(format!("ptrace {pid}: {}", std::io::Error::last_os_error()));
        }
        libc::ptrace(libc::PTRACE_INTERRUPT, pid, null, null);
        let mut status = 0;
        libc::waitpid(pid, &mut status, libc::__WALL);
        libc::ptrace(libc::PTRACE_DETACH, pid, null, null);
    }
    Ok(format!("attached to pid {pid} with ptrace"))
}

fn probe(target: &str) {
    match bypass(target) {
        Ok(what) | Err(what) if what.contains(" saw ") => println!("{what}"),
        Ok(what) | Err(what) => {
            println!("{what}");
            std::process::exit(1);
        }
    }
}

/// Any capability left in the effective, permitted, bounding or ambient set, or no_new_privs off.
fn capabilities() -> Result<String, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("?")
            .to_string()
    };
    let sets: Vec<String> = ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:", "NoNewPrivs:"]
        .iter()
        .map(|n| format!("{n} {}", field(n)))
        .collect();
    let none = ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"]
        .iter()
        .all(|n| field(n).bytes().all(|b| b == b'0'))
        && field("NoNewPrivs:") == "1";
    if none {
        Err(format!("none left: {}", sets.join(", ")))
    } else {
        Ok(sets.join(", "))
    }
}

fn raw_socket() -> Result<String, String> {
    // SAFETY: socket(2) with constant arguments; the descriptor is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd) };
    Ok("raw IPv4 socket opened".into())
}

fn set_mark(mark: u32) -> Result<String, String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    // SAFETY: setsockopt on a socket we own, with a u32 option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(format!("SO_MARK {mark} set"))
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        Ok(format!("{program} {} exited 0", args.join(" ")))
    } else {
        Err(format!(
            "{} {}",
            out.status,
            text.lines().next().unwrap_or("")
        ))
    }
}

/// Finds the sidecar by its command line (readable by anyone in /proc) and sends it SIGKILL.
fn kill_sidecar(e: &Escape) -> Result<String, String> {
    let config = e.pod_dir.join("proxy.yaml").display().to_string();
    let pids: Vec<i32> = std::fs::read_dir("/proc")
        .map_err(|err| err.to_string())?
        .flatten()
        .filter_map(|d| d.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains("weft-proxy") && c.contains(&config))
        })
        .collect();
    let Some(pid) = pids.first() else {
        return Err(format!("no process runs {config}"));
    };
    // SAFETY: a signal to another process; the kernel decides whether we may.
    if unsafe { libc::kill(*pid, libc::SIGKILL) } == 0 {
        Ok(format!("SIGKILL sent to pid {pid}"))
    } else {
        Err(format!("kill {pid}: {}", std::io::Error::last_os_error()))
    }
}

/// Connects to a `serve` listener, which writes back the address it saw. If that is this socket's own
/// address, the connection went straight there; if not, the sidecar made it.
fn bypass(target: &str) -> Result<String, String> {
    use std::net::ToSocketAddrs as _;
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{target}: {e}"))?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let mut seen = String::new();
    let _ = s.read_to_string(&mut seen);
    let seen = seen.trim();
    if seen == local.to_string() {
        Ok(format!("{target} saw this socket itself ({seen})"))
    } else if seen.is_empty() {
        Err(format!("{target}: closed with no answer"))
    } else {
        Err(format!(
            "went through the sidecar: {target} saw {seen}, this socket is {local}"
        ))
    }
}

fn udp(target: &str, bind: &str) -> Result<String, String> {
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    let _ = sock.set_read_timeout(Some(TIMEOUT));
    sock.connect(target).map_err(|e| format!("{target}: {e}"))?;
    sock.send(b"ping")
        .map_err(|e| format!("send to {target}: {e}"))?;
    let mut buf = [0u8; 64];
    match sock.recv(&mut buf) {
        Ok(n) => Ok(format!(
            "{target} answered {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
        Err(e) => Err(format!("no answer from {target}: {e}")),
    }
}

/// UDP-Lite (IP protocol 136): datagrams an unprivileged user may send, which rules written for
/// `-p udp` do not see.
fn udplite_socket() -> std::io::Result<UdpSocket> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a datagram socket we just opened and own; UdpSocket's send/recv are plain syscalls.
    Ok(unsafe { UdpSocket::from_raw_fd(fd) })
}

fn udplite(target: &str) -> Result<String, String> {
    let sock = udplite_socket().map_err(|e| format!("UDP-Lite socket: {e}"))?;
    let _ = sock.set_read_timeout(Some(TIMEOUT));
    sock.send_to(b"ping", target)
        .map_err(|e| format!("send to {target}: {e}"))?;
    let mut buf = [0u8; 64];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Ok(format!(
            "{target} answered {:?} over UDP-Lite",
            String::from_utf8_lossy(&buf[..n])
        )),
        Err(e) => Err(format!("no answer from {target}: {e}")),
    }
}

/// Answers UDP-Lite datagrams on `port` with `pong` (IPv4).
fn serve_udplite(port: u16) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let sock = udplite_socket()?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: binding our socket to a fully initialised sockaddr_in of the size given.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(b"pong", from);
        }
    });
    Ok(())
}

fn ipv6_tcp(v6: &str, port: u16) -> Result<String, String> {
    let addr = v6_addr(v6, port)?;
    until_addressed(|| {
        TcpStream::connect_timeout(&addr, TIMEOUT)
            .map(|_| format!("connected to {addr}"))
            .map_err(|e| format!("{addr}: {e}"))
    })
}

fn ipv6_udp(v6: &str, port: u16) -> Result<String, String> {
    let addr = v6_addr(v6, port)?;
    until_addressed(|| udp(&addr.to_string(), "[::]:0"))
}

/// A fresh link-local address is unusable until duplicate-address detection ends (a second or two):
/// "cannot assign" is tried again for a while before it counts as blocked.
fn until_addressed(attempt: impl Fn() -> Result<String, String>) -> Result<String, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    loop {
        match attempt() {
            Err(e) if e.contains("os error 99") && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

/// `fe80::1%eth0` or `fd00::1` with a port; the interface name becomes the scope id.
fn v6_addr(v6: &str, port: u16) -> Result<SocketAddr, String> {
    let (ip, scope) = v6.split_once('%').unwrap_or((v6, ""));
    let ip: std::net::Ipv6Addr = ip.parse().map_err(|e| format!("{v6}: {e}"))?;
    let scope_id = if scope.is_empty() {
        0
    } else {
        let name = std::ffi::CString::new(scope).map_err(|e| e.to_string())?;
        // SAFETY: a NUL-terminated interface name.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    Ok(SocketAddr::V6(std::net::SocketAddrV6::new(
        ip, port, 0, scope_id,
    )))
}

/// TCP: writes each peer's address and closes. UDP: answers each datagram with `pong`.
fn serve(tcp_port: u16, udp_port: u16) {
    // Both families where IPv6 is on; IPv4 alone in a pod where it is off.
    let udp = UdpSocket::bind(("::", udp_port))
        .or_else(|_| UdpSocket::bind(("0.0.0.0", udp_port)))
        .expect("bind UDP");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(b"pong", from);
        }
    });
    let tcp = TcpListener::bind(("::", tcp_port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", tcp_port)))
        .expect("bind TCP");
    if let Err(e) = serve_udplite(udp_port) {
        eprintln!("no UDP-Lite listener: {e}");
    }
    // Outside the mesh, also the tunnel port (a sidecar holds it inside a pod).
    let tunnel = TcpListener::bind(("::", 15008)).ok();
    if let Some(t) = tunnel {
        std::thread::spawn(move || answer_peers(&t));
    }
    answer_peers(&tcp);
}

fn answer_peers(listener: &TcpListener) {
    for mut conn in listener.incoming().flatten() {
        if let Ok(peer) = conn.peer_addr() {
            let peer = match peer {
                SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                    Some(v4) => SocketAddr::from((v4, v6.port())),
                    None => peer,
                },
                v4 => v4,
            };
            let _ = writeln!(conn, "{peer}");
        }
    }
}

//! The pod as a sandbox: an app run by `weftctl pod run` that tries every way out (the control plane's
//! and the pods' secrets, the socket mark, the firewall, its sidecar, UDP, IPv6, the tunnel port) gets
//! none, and its traffic still goes through its sidecar; apps of two pods, each with its own user,
//! cannot touch each other; a sidecar that dies is restarted, or the pod is stopped. Real `weft-control`, `weftctl pod run`, namespaces and iptables (see
//! `weft::pods::available`).

use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft::pods::{available, example, text, PodHandle, PodMesh};

/// Every attempt the attacker makes; each must be reported blocked.
const ESCAPES: [&str; 19] = [
    "read_ca_key",
    "read_operator_token",
    "read_own_sidecar_token",
    "read_own_sidecar_key",
    "read_own_sidecar_config",
    "read_other_pod_token",
    "read_other_pod_key",
    "keep_capabilities",
    "open_raw_socket",
    "set_so_mark",
    "flush_nat_table",
    "flush_filter_table",
    "kill_sidecar",
    "connect_outside_15008",
    "udp_to_outside",
    "udp_to_other_pod",
    "udplite_to_outside",
    "ipv6_tcp",
    "ipv6_udp",
];

/// What an app tries against another pod's app; each must be reported blocked.
const NEIGHBOUR: [&str; 4] = [
    "read_neighbour_environ",
    "write_neighbour_file",
    "trace_neighbour",
    "signal_neighbour",
];

/// The uids `weftctl pod run` gives apps by default.
const APP_UIDS: std::ops::RangeInclusive<u32> = 200_000..=265_535;

const TCP_PORT: &str = "9100";
const UDP_PORT: &str = "9101";

fn pod_dir(mesh: &PodMesh, name: &str) -> PathBuf {
    mesh.run_dir
        .path()
        .join(&mesh.network)
        .join("pods")
        .join(name)
}

/// The link-local IPv6 address of a namespace's eth0, once duplicate-address detection let it go.
fn link_local(mesh: &PodMesh, ns: &PodHandle) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = mesh.exec_ok(ns, &["ip", "-6", "-o", "addr", "show", "dev", "eth0"]);
        let addr = out
            .lines()
            .filter(|l| l.contains("scope link") && !l.contains("tentative"))
            .find_map(|l| {
                l.split_whitespace()
                    .nth(3)?
                    .split('/')
                    .next()
                    .map(String::from)
            });
        if let Some(a) = addr {
            return format!("{a}%eth0");
        }
        assert!(
            Instant::now() < deadline,
            "no IPv6 link-local address: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the attacker as a pod's app until it exits; returns the runner's output (the app's lines).
fn run_attacker(
    mesh: &mut PodMesh,
    attacker: &str,
    outside: &PodHandle,
    victim: &PodHandle,
) -> String {
    let v6 = link_local(mesh, outside);
    let (state_dir, own, other) = (
        mesh.control.state_dir().display().to_string(),
        pod_dir(mesh, "attacker").display().to_string(),
        pod_dir(mesh, "victim").display().to_string(),
    );
    mesh.pod_no_wait(
        "attacker",
        &[],
        &[
            attacker,
            "escape",
            "--state-dir",
            &state_dir,
            "--pod-dir",
            &own,
            "--other-pod-dir",
            &other,
            "--outside",
            &outside.address,
            "--peer",
            &victim.address,
            "--outside6",
            &v6,
            "--tcp-port",
            TCP_PORT,
            "--udp-port",
            UDP_PORT,
        ],
    );
    let code = mesh.wait_runner("attacker", Duration::from_secs(90));
    let log = mesh.runner_log("attacker");
    eprintln!("{log}");
    assert_eq!(code, Some(0), "{log}");
    let uid = running_uid(&log);
    assert!(
        APP_UIDS.contains(&uid),
        "app uid {uid} not allocated:\n{log}"
    );
    log
}

/// The uid the attacker said it runs as.
fn running_uid(log: &str) -> u32 {
    log.lines()
        .find_map(|l| l.strip_prefix("RUNNING as uid ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RUNNING line:\n{log}"))
}

/// Every attempt was made, and every one was blocked; the app's TCP still went through its sidecar.
fn assert_all_blocked(log: &str) {
    assert_blocked(log, &ESCAPES);
    assert!(
        log.contains("CHECK intercepted: yes"),
        "after the attempts, the app's TCP no longer goes through its sidecar:\n{log}"
    );
}

/// Each of `attempts` was made and reported blocked.
fn assert_blocked(log: &str, attempts: &[&str]) {
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("ESCAPE ")).collect();
    let mut failed = Vec::new();
    for name in attempts {
        let prefix = format!("ESCAPE {name}: ");
        match lines.iter().find(|l| l.starts_with(&prefix)) {
            Some(l) if l.starts_with(&format!("{prefix}blocked")) => {}
            Some(l) => failed.push(l.to_string()),
            None => failed.push(format!("{name}: not attempted")),
        }
    }
    assert!(
        failed.is_empty(),
        "escapes that worked:\n{}\n--- runner log ---\n{log}",
        failed.join("\n")
    );
}

#[test]
fn a_hostile_app_gets_out_of_its_pod_by_no_way() {
    if !available("sandbox") {
        return;
    }
    let attacker = example("attacker");
    let serve = [
        attacker.as_str(),
        "serve",
        "--tcp-port",
        TCP_PORT,
        "--udp-port",
        UDP_PORT,
    ];
    let mut mesh = PodMesh::new("sbx");
    let outside = mesh.outside("ext", "198.18.250.1");
    mesh.spawn_in(&outside, &serve);
    let victim = mesh.pod("victim", &["--port", TCP_PORT], &serve);
    let log = run_attacker(&mut mesh, &attacker, &outside, &victim);
    assert_all_blocked(&log);
    // Inbound, a pod takes no UDP from outside it: a host with no rules of its own gets no answer.
    let victim_udp = format!("{}:{UDP_PORT}", victim.address);
    let from_outside = mesh.exec(&outside, &[&attacker, "probe-udp", &victim_udp]);
    assert!(
        !from_outside.status.success(),
        "UDP from outside reached the pod's app: {}",
        text(&from_outside)
    );
    let back = format!("{}:{UDP_PORT}", outside.address);
    let control = mesh.exec(&outside, &[&attacker, "probe-udp", &back]);
    assert!(control.status.success(), "{}", text(&control));
    // The victim's sidecar and rules are untouched.
    let rules = mesh.exec_ok(&victim, &["iptables-save"]);
    for chain in [
        "WEFT_OUTPUT",
        "WEFT_INBOUND",
        "WEFT_FILTER_OUT",
        "WEFT_FILTER_IN",
    ] {
        assert!(
            rules.contains(&format!(":{chain}")),
            "{chain} gone: {rules}"
        );
    }
    // The sidecars run without CAP_NET_ADMIN: the mark is refused, said once, and the uid rule carries
    // their traffic (the victim's sidecar joined and served above).
    let victim_log = mesh.sidecar_log("victim");
    assert_eq!(
        victim_log.matches("cannot set SO_MARK").count(),
        1,
        "{victim_log}"
    );
}

fn record(mesh: &PodMesh, name: &str) -> Option<serde_json::Value> {
    let bytes = std::fs::read(pod_dir(mesh, name).join("pod.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn sidecar_pid(mesh: &PodMesh, name: &str) -> Option<i32> {
    record(mesh, name)?["sidecarPid"].as_i64().map(|p| p as i32)
}

/// Removes a file the test had a pod's app create outside the run directory, also on panic.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits (bounded) until the pod's runner log has a line starting with `prefix`.
fn wait_line(mesh: &PodMesh, name: &str, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = mesh.runner_log(name);
        if let Some(line) = log.lines().find(|l| l.starts_with(prefix)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no `{prefix}` from {name}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn apps_of_two_pods_with_default_users_cannot_touch_each_other() {
    if !available("sandbox") {
        return;
    }
    let attacker = example("attacker");
    let mut mesh = PodMesh::new("sbxn");
    let secret = RemoveOnDrop(std::env::temp_dir().join(format!("weft-{}-victim", mesh.network)));
    let file = secret.0.display().to_string();
    mesh.pod("victim", &[], &[&attacker, "hold", "--file", &file]);
    wait_line(&mesh, "victim", "HOLDING ");
    let rec = record(&mesh, "victim").expect("victim's pod.json");
    let pid = rec["appPid"].as_i64().expect("appPid") as i32;

    mesh.pod_no_wait(
        "attacker",
        &[],
        &[
            &attacker,
            "neighbour",
            "--pid",
            &pid.to_string(),
            "--file",
            &file,
        ],
    );
    let code = mesh.wait_runner("attacker", Duration::from_secs(90));
    let log = mesh.runner_log("attacker");
    eprintln!("{log}");
    assert_eq!(code, Some(0), "{log}");
    assert_blocked(&log, &NEIGHBOUR);
    // Because each app has a uid of its own, recorded in its pod's record.
    let victim_uid = rec["appUser"]["uid"].as_u64().expect("appUser") as u32;
    assert_eq!(rec["appUser"]["gid"].as_u64(), Some(u64::from(victim_uid)));
    let uid = running_uid(&log);
    assert!(
        APP_UIDS.contains(&victim_uid) && APP_UIDS.contains(&uid) && uid != victim_uid,
        "attacker uid {uid}, victim {rec}"
    );
    // The victim is untouched: still running, its file as it wrote it.
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "the victim's app is gone");
    assert_eq!(
        std::fs::read_to_string(&secret.0).expect("victim's file"),
        "private\n"
    );
    // The range is the runner's to hand out: `--user` may not take one of its uids.
    let taken = format!("{victim_uid}");
    let out = mesh
        .weftctl()
        .args([
            "pod",
            "run",
            "--network",
            &mesh.network,
            "--name",
            "squatter",
        ])
        .args(["--user", &taken, "--", "true"])
        .output()
        .expect("weftctl pod run");
    assert!(
        !out.status.success() && text(&out).contains("200000-265535"),
        "{}",
        text(&out)
    );
    let list = mesh.weftctl_ok(&["pod", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("victim\t")
                && l.contains(&format!("\t{victim_uid}:{victim_uid}\t"))),
        "{list}"
    );
}

/// Kills the pod's current sidecar and waits for the runner to record a new one (or to exit).
fn kill_sidecar(mesh: &mut PodMesh, name: &str) -> Option<i32> {
    let pid = sidecar_pid(mesh, name).expect("sidecar pid in pod.json");
    // SAFETY: SIGKILL to the sidecar named in the pod's record.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match sidecar_pid(mesh, name) {
            Some(new) if new != pid => return Some(new),
            None => return None,
            _ => {}
        }
        if mesh.wait_runner(name, Duration::from_millis(100)).is_some() {
            return None;
        }
    }
    panic!("no new sidecar for {name}:\n{}", mesh.runner_log(name))
}

#[test]
fn a_dead_sidecar_is_restarted_and_a_sidecar_that_keeps_dying_stops_the_pod() {
    if !available("sandbox") {
        return;
    }
    let attacker = example("attacker");
    let mut mesh = PodMesh::new("sbxr");
    mesh.apply(&format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  ports: [{{name: tcp, port: {TCP_PORT}}}]\n  selector: {{app: web}}\n"
    ));
    mesh.pod(
        "web",
        &["--service", "web", "--port", TCP_PORT],
        &[
            &attacker,
            "serve",
            "--tcp-port",
            TCP_PORT,
            "--udp-port",
            UDP_PORT,
        ],
    );
    let client = mesh.pod("client", &[], &["sleep", "600"]);
    let target = format!("web:{TCP_PORT}");
    let probe = |mesh: &PodMesh| mesh.exec(&client, &[&attacker, "probe", &target]);
    let first = probe(&mesh);
    assert!(
        first.status.success(),
        "{}\n--- client sidecar ---\n{}\n--- web sidecar ---\n{}",
        text(&first),
        mesh.sidecar_log("client"),
        mesh.sidecar_log("web")
    );

    kill_sidecar(&mut mesh, "web").expect("restarted");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if mesh
            .runner_log("web")
            .contains("sidecar restarted and ready")
        {
            let out = probe(&mesh);
            if out.status.success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no traffic after the restart:\n{}\n--- sidecar ---\n{}",
            mesh.runner_log("web"),
            mesh.sidecar_log("web")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = mesh.runner_log("web");
    assert!(log.contains("the sidecar exited"), "{log}");
    assert!(
        mesh.sidecar_log("web").contains("identity from the cache"),
        "the restarted sidecar did not come back from its cached identity:\n{}",
        mesh.sidecar_log("web")
    );

    // Three restarts a minute at most: the fourth death stops the pod.
    for _ in 0..4 {
        if kill_sidecar(&mut mesh, "web").is_none() {
            break;
        }
    }
    let code = mesh.wait_runner("web", Duration::from_secs(30));
    let log = mesh.runner_log("web");
    assert_eq!(code, Some(69), "{log}");
    assert!(log.contains("stopping the pod"), "{log}");
    assert!(
        !probe(&mesh).status.success(),
        "the stopped pod still answers"
    );
}

/// Whether `pid` is a live process (a zombie waiting for its parent is not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

#[test]
fn what_an_app_leaves_running_goes_with_its_pod() {
    if !available("sandbox") {
        return;
    }
    let mut mesh = PodMesh::new("sbxl");
    mesh.pod_no_wait(
        "leaver",
        &[],
        &["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo \"LEFT $!\""],
    );
    let code = mesh.wait_runner("leaver", Duration::from_secs(90));
    let log = mesh.runner_log("leaver");
    assert_eq!(code, Some(0), "{log}");
    let pid: i32 = wait_line(&mesh, "leaver", "LEFT ")["LEFT ".len()..]
        .parse()
        .expect("the child's pid");
    assert_gone(pid, &log);
}

/// Waits (bounded) until `pid` is gone; kills it if not, and fails.
fn assert_gone(pid: i32, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = running(pid);
    if left {
        // SAFETY: SIGKILL to the process the test's pod left behind.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(!left, "the app's child {pid} outlived its pod:\n{log}");
}

#[test]
fn deleting_a_pod_whose_runner_died_kills_what_its_app_left() {
    if !available("sandbox") {
        return;
    }
    let mut mesh = PodMesh::new("sbxd");
    let app = "sleep 600 >/dev/null 2>&1 & echo \"LEFT $!\"; exec sleep 600";
    mesh.pod("orphan", &[], &["sh", "-c", app]);
    let pid: i32 = wait_line(&mesh, "orphan", "LEFT ")["LEFT ".len()..]
        .parse()
        .expect("the child's pid");
    let runner = record(&mesh, "orphan").expect("pod.json")["runnerPid"]
        .as_i64()
        .expect("runnerPid") as i32;
    // SAFETY: SIGKILL to the test's own `weftctl pod run`: no teardown happens.
    assert_eq!(unsafe { libc::kill(runner, libc::SIGKILL) }, 0);
    // Reaped, so `pod delete` finds the runner gone.
    let _ = mesh.wait_runner("orphan", Duration::from_secs(10));
    assert!(running(pid), "the app's child died with its runner");
    let out = mesh.weftctl_ok(&["pod", "delete", "orphan"]);
    assert!(out.contains("its runner was gone"), "{out}");
    assert_gone(pid, &out);
}

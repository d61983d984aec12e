//! What the config-push benchmarks share: the mesh they apply (services, the route they change), the
//! simulated proxies' registrations, waiting for a fleet to settle, and reading a process's CPU and
//! memory from /proc.

use std::time::{Duration, Instant};
use weft::control_sim::{Options, SimProxy};
use weft_api::control::Registration;

/// How the simulated proxies connect: reading snapshots for their version only, speaking the
/// protocol in env `PROTOCOL` (default the current one; `PROTOCOL=1` has every services change sent as
/// the whole list, as before services went as changes).
pub fn sim_options() -> Options {
    let protocol = std::env::var("PROTOCOL").ok().and_then(|p| p.parse().ok());
    Options {
        light: true,
        protocol: protocol.unwrap_or(Options::default().protocol),
    }
}

/// Services in the mesh; simulated proxy `i` is a workload of service `i % SERVICES`.
pub const SERVICES: usize = 100;

pub fn services_yaml() -> String {
    let mut y = String::new();
    for i in 0..SERVICES {
        y.push_str(&format!(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: svc-{i}\nspec:\n  ports:\n    - port: 9080\n      protocol: http\n  selector:\n    app: svc-{i}\n---\n"
        ));
    }
    y
}

/// The one change each round makes: svc-0's split between its two versions.
pub fn route_yaml(canary: u32) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: HTTPRoute\nmetadata:\n  name: svc-0\nspec:\n  parentRefs:\n    - name: svc-0\n  rules:\n    - backendRefs:\n        - name: svc-0\n          subset: v1\n          weight: {}\n        - name: svc-0\n          subset: v2\n          weight: {canary}\n",
        100 - canary
    )
}

/// Simulated proxy `i`'s workload: `svc-K-i` of service `svc-K` (identity `default/svc-K`), half of
/// them version v1 and half v2, each at an address of its own.
pub fn registration(i: usize) -> Registration {
    let svc = i % SERVICES;
    Registration {
        name: format!("svc-{svc}-{i}"),
        labels: [
            ("app".to_string(), format!("svc-{svc}")),
            (
                "version".to_string(),
                if i.is_multiple_of(2) { "v1" } else { "v2" }.to_string(),
            ),
        ]
        .into(),
        address: format!("198.18.{}.{}", i / 250, 1 + i % 250)
            .parse()
            .expect("ip"),
        tunnel_port: 15008,
        ports: vec![9080],
        ready: true,
    }
}

/// Waits until every proxy has a snapshot and none has received anything for half a second (the
/// registrations' pushes are over); panics after `within`.
pub async fn settle(sims: &[SimProxy], within: Duration) {
    let deadline = Instant::now() + within;
    let mut last: usize = 0;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        let total: usize = sims.iter().map(|s| s.snapshot_count()).sum();
        let all = sims.iter().all(|s| s.snapshot_count() > 0);
        if total != last || !all {
            last = total;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_millis(500) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("proxies never settled within {within:?}");
}

pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

/// CPU time (user and system) a process has used, in milliseconds; `None` for this process.
pub fn cpu_ms(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / hz
}

/// A process's resident set and its high-water mark, in MiB.
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

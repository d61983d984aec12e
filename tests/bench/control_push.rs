//! Config-push benchmark: N simulated proxies (real protocol clients in this process, each with its own
//! mutual-TLS connection and identity) on a real `weft-control`; one route change applied at a time;
//! time until each proxy has the change, and until every proxy has acknowledged it.
//!
//! `cargo bench -p weft --bench control_push` (env: `PROXIES=100,1000`, `ROUNDS=5`). Prints p50/p99 of
//! the per-proxy delivery time, the control plane's own rollout time (apply → last ACK), and the control
//! plane's RSS and CPU.

#[path = "push_common.rs"]
mod push_common;

use push_common::{
    cpu_ms, memory_mib, percentile, registration, route_yaml, services_yaml, settle, SERVICES,
};
use std::time::{Duration, Instant};
use weft::control::ControlProc;
use weft::control_sim::{Reply, SimProxy};

fn main() {
    let sizes: Vec<usize> = std::env::var("PROXIES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "control-plane push benchmark: {SERVICES} services, {rounds} route changes per size, debounce 100ms, {} CPUs",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "{:>8} {:>14} {:>14} {:>16} {:>16} {:>12} {:>12} {:>14}",
        "proxies",
        "deliver p50",
        "deliver p99",
        "all acked p50",
        "all acked p99",
        "RSS MiB",
        "HWM MiB",
        "CPU ms/change"
    );
    for n in sizes {
        let r = rt.block_on(run(n, rounds));
        println!(
            "{:>8} {:>11.1} ms {:>11.1} ms {:>13.1} ms {:>13.1} ms {:>12.1} {:>12.1} {:>14.1}",
            n,
            r.deliver_p50,
            r.deliver_p99,
            r.acked_p50,
            r.acked_p99,
            r.rss_mib,
            r.hwm_mib,
            r.cpu_ms_per_change
        );
    }
}

struct Result {
    deliver_p50: f64,
    deliver_p99: f64,
    acked_p50: f64,
    acked_p99: f64,
    rss_mib: f64,
    hwm_mib: f64,
    cpu_ms_per_change: f64,
}

async fn run(n: usize, rounds: usize) -> Result {
    // Every simulated proxy connects from this one address: lift the per-client connection limit.
    let cp = ControlProc::start_with(
        "bench",
        None,
        &[
            "--grace-period",
            "60s",
            "--api-max-connections-per-client",
            "100000",
        ],
    );
    let cp = std::sync::Arc::new(cp);
    {
        let cp = cp.clone();
        tokio::task::spawn_blocking(move || cp.apply_file("services.yaml", &services_yaml(), 0))
            .await
            .expect("apply services");
    }
    let identities: Vec<_> = (0..SERVICES)
        .map(|i| cp.offline_identity("default", &format!("svc-{i}"), Duration::from_secs(3600)))
        .collect();
    let control_id = cp.control_id();
    // Connected a hundred at a time, as a fleet rolling out would (and so registrations share pushes).
    let mut sims = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        let connects = batch.iter().map(|&i| {
            let svc = i % SERVICES;
            let reg = registration(i);
            SimProxy::connect_with(
                cp.api,
                &identities[svc],
                &control_id,
                reg,
                Reply::Ack,
                push_common::sim_options(),
            )
        });
        for sim in futures_util::future::join_all(connects).await {
            sims.push(sim.expect("connect a simulated proxy"));
        }
    }
    settle(&sims, Duration::from_secs(120)).await;
    let pid = cp.pid().expect("control plane running");
    let cpu_before = cpu_ms(Some(pid));
    let mut deliveries = Vec::new();
    let mut acked = Vec::new();
    for round in 0..rounds {
        let counts: Vec<usize> = sims.iter().map(|s| s.snapshot_count()).collect();
        let t0 = Instant::now();
        let text = route_yaml(10 + (round as u32 % 2) * 40);
        let cp2 = cp.clone();
        let resp = tokio::task::spawn_blocking(move || cp2.apply_file("route.yaml", &text, 30_000))
            .await
            .expect("apply");
        let rollout_done = t0.elapsed();
        assert_eq!(
            resp["rollout"]["complete"], true,
            "rollout incomplete: {resp:#}"
        );
        let affected = resp["rollout"]["proxies"].as_array().map_or(0, |a| a.len());
        assert_eq!(affected, n, "every proxy sees routes: {resp:#}");
        for (s, before) in sims.iter().zip(&counts) {
            let seen = s.seen.lock().expect("lock");
            let at = seen
                .arrivals
                .get(*before)
                .expect("each proxy got the change");
            deliveries.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        }
        acked.push(rollout_done.as_secs_f64() * 1000.0);
    }
    let cpu = cpu_ms(Some(pid)) - cpu_before;
    let (rss, hwm) = memory_mib(pid);
    drop(sims);
    Result {
        deliver_p50: percentile(&mut deliveries, 0.50),
        deliver_p99: percentile(&mut deliveries, 0.99),
        acked_p50: percentile(&mut acked, 0.50),
        acked_p99: percentile(&mut acked, 0.99),
        rss_mib: rss,
        hwm_mib: hwm,
        cpu_ms_per_change: cpu / rounds as f64,
    }
}

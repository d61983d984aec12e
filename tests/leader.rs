//! The leader of the control-plane replicas (docs/operations.md "The leader"): real etcd, real
//! weft-control replicas. One of two leads; killed with SIGKILL it is replaced within the lease TTL,
//! stopped with SIGTERM at once (both measured and printed); the expiry sweep deletes an expired
//! join token through the leader only; a write guarded by a lost leadership is refused by etcd; the
//! state directory's single control plane leads.

use std::time::{Duration, Instant};
use weft::control::ControlProc;
use weft::etcd::EtcdProc;
use weft_control::backend::election::LedError;
use weft_control::backend::etcd::{EtcdBackend, EtcdOptions};
use weft_control::backend::{Backend, Collection, Expect};

/// The election lease the replicas are started with (the default).
const TTL: Duration = Duration::from_secs(10);

fn replica_args(etcd: &EtcdProc, prefix: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--store".into(),
        etcd.url(),
        "--etcd-prefix".into(),
        prefix.into(),
        "--store-key-file".into(),
        etcd.key_file().to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(tag: &str, args: &[String]) -> ControlProc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ControlProc::start_with(tag, None, &args)
}

/// `(leader, this replica)` as `GET /v1/mesh` answers them.
fn leadership(cp: &ControlProc) -> (Option<String>, String) {
    let mesh = cp.api("GET", "/v1/mesh", None);
    (
        mesh["leader"].as_str().map(str::to_string),
        mesh["replica"]
            .as_str()
            .unwrap_or_else(|| panic!("{mesh}"))
            .to_string(),
    )
}

fn leads(cp: &ControlProc) -> bool {
    let (leader, me) = leadership(cp);
    leader.as_deref() == Some(me.as_str())
}

/// The value of an unlabelled metric on the operator port's `/metrics`.
fn metric(cp: &ControlProc, name: &str) -> Option<String> {
    let (_, body) = weft::net::http_get(cp.operator, "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
}

/// Waits (bounded) until `f` holds; returns how long it took.
fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if f() {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until exactly one of `cps` leads and every one names it; returns its index.
fn one_leader(cps: &[&ControlProc]) -> usize {
    let mut found = None;
    wait_for("one leader named by every replica", TTL * 2, || {
        let views: Vec<(Option<String>, String)> = cps.iter().map(|c| leadership(c)).collect();
        let leading: Vec<usize> = (0..views.len())
            .filter(|&i| views[i].0.as_deref() == Some(views[i].1.as_str()))
            .collect();
        let agreed = views.iter().all(|v| v.0 == views[0].0);
        if leading.len() == 1 && agreed {
            found = Some(leading[0]);
        }
        found.is_some()
    });
    found.expect("a leader")
}

#[test]
fn one_of_two_replicas_leads_and_another_takes_over_when_it_is_killed_or_stopped() {
    let Some(etcd) = EtcdProc::start("leader-handover") else {
        return;
    };
    let args = replica_args(&etcd, "/leader-handover/", &[]);
    let mut cps = [start("lead-a", &args), start("lead-b", &args)];
    let first = one_leader(&[&cps[0], &cps[1]]);
    let other = 1 - first;
    let (leader_id, _) = leadership(&cps[first]);
    let leader_id = leader_id.expect("a leader");
    assert_eq!(
        metric(&cps[first], "weft_control_leader").as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&cps[other], "weft_control_leader").as_deref(),
        Some("0")
    );
    assert!(
        cps[first].log().contains("became leader"),
        "{}",
        cps[first].log()
    );
    assert!(
        cps[other]
            .log()
            .contains(&format!("leader is now {leader_id}")),
        "{}",
        cps[other].log()
    );

    // SIGKILL: the lease is left to expire; the other replica leads within its TTL.
    cps[first].kill9();
    let took = wait_for("the other replica leads after SIGKILL", TTL * 2, || {
        leads(&cps[other])
    });
    println!("leader killed with SIGKILL: replaced after {took:?} (lease TTL {TTL:?})");
    assert!(took <= TTL, "took {took:?}");
    assert!(cps[other].log().contains("became leader"));
    assert_eq!(
        metric(&cps[other], "weft_control_leader").as_deref(),
        Some("1")
    );

    // The killed one comes back as a follower of the new leader.
    cps[first].restart();
    let new_leader = leadership(&cps[other]).1;
    wait_for(
        "the restarted replica follows",
        Duration::from_secs(10),
        || leadership(&cps[first]).0.as_deref() == Some(new_leader.as_str()),
    );
    assert_eq!(
        metric(&cps[first], "weft_control_leader").as_deref(),
        Some("0")
    );

    // SIGTERM: the leader revokes its lease on the way out; the handover is immediate.
    let stopped = Instant::now();
    assert_eq!(cps[other].terminate(), Some(0), "{}", cps[other].log());
    let took = wait_for("the other replica leads after SIGTERM", TTL, || {
        leads(&cps[first])
    });
    let took_total = stopped.elapsed();
    println!("leader stopped with SIGTERM: replaced {took:?} after it exited ({took_total:?} after the signal)");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(cps[other].log().contains("resigned the leadership"));
}

#[test]
fn the_leader_sweeps_an_expired_token_and_the_follower_does_not() {
    let Some(etcd) = EtcdProc::start("leader-sweep") else {
        return;
    };
    let sweep = ["--sweep-interval", "1s", "--expired-token-retention", "0s"];
    let args = replica_args(&etcd, "/leader-sweep/", &sweep);
    let cps = [start("sweep-a", &args), start("sweep-b", &args)];
    let first = one_leader(&[&cps[0], &cps[1]]);
    let other = 1 - first;
    // Created through the follower: the leader sweeps it, and the follower sees it go.
    let expired = cps[other].token("default", "old", 0);
    let live = cps[other].token("default", "new", 600);
    let id = |t: &str| t.split('.').nth(1).unwrap().to_string();
    let ids = |cp: &ControlProc| -> Vec<String> {
        cp.api("GET", "/v1/tokens", None)
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    for cp in &cps {
        wait_for(
            "the expired token is swept",
            Duration::from_secs(15),
            || !ids(cp).contains(&id(&expired)),
        );
        assert!(ids(cp).contains(&id(&live)), "the live token stays");
    }
    // Logged once the sweep's round is over (after the delete the follower already saw).
    wait_for("the leader logs its sweep", Duration::from_secs(5), || {
        cps[first].log().contains("swept expired records as leader")
    });
    assert!(
        !cps[other].log().contains("swept expired records"),
        "the follower swept:\n{}",
        cps[other].log()
    );
}

#[test]
fn a_write_guarded_by_a_lost_leadership_is_refused() {
    let Some(etcd) = EtcdProc::start("leader-guard") else {
        return;
    };
    let connect = || {
        EtcdBackend::connect(&EtcdOptions {
            endpoints: vec![etcd.client.to_string()],
            prefix: "/leader-guard/".into(),
            ..Default::default()
        })
        .expect("connect to etcd")
    };
    let (a, b) = (connect(), connect());
    let mut ea = a.elect("a", TTL);
    wait_for("a leads", Duration::from_secs(10), || ea.now().leading());
    let guard_a = ea.now().guard.expect("a's guard");
    let mut eb = b.elect("b", TTL);
    wait_for("b follows a", Duration::from_secs(10), || {
        eb.now().leader.as_deref() == Some("a")
    });
    assert!(!eb.now().leading());
    a.put_led(Collection::Tokens, "t", b"{}", Expect::Any, &guard_a)
        .expect("the leader writes");

    // a resigns, b takes over: a's guard no longer holds, b's does.
    ea.resign();
    wait_for("b leads", Duration::from_secs(5), || eb.now().leading());
    let guard_b = eb.now().guard.expect("b's guard");
    let refused = a.put_led(Collection::Tokens, "t", b"{\"n\":1}", Expect::Any, &guard_a);
    assert!(
        matches!(refused, Err(LedError::NotLeader(_))),
        "{refused:?}"
    );
    let refused = a.delete_led(Collection::Tokens, "t", Expect::Any, &guard_a);
    assert!(
        matches!(refused, Err(LedError::NotLeader(_))),
        "{refused:?}"
    );
    assert_eq!(
        a.get(Collection::Tokens, "t").unwrap().unwrap().value,
        b"{}",
        "nothing written under the lost leadership"
    );
    b.delete_led(Collection::Tokens, "t", Expect::Any, &guard_b)
        .expect("the new leader writes");
    eb.resign();
}

#[test]
fn the_state_directory_control_plane_leads_and_sweeps() {
    let cp = ControlProc::start_with(
        "leader-dir",
        None,
        &["--sweep-interval", "1s", "--expired-token-retention", "0s"],
    );
    assert!(leads(&cp), "{}", cp.api("GET", "/v1/mesh", None));
    assert_eq!(metric(&cp, "weft_control_leader").as_deref(), Some("1"));
    assert!(cp.log().contains("became leader"));
    let expired = cp.token("default", "old", 0);
    let id = expired.split('.').nth(1).unwrap().to_string();
    wait_for(
        "the expired token is swept",
        Duration::from_secs(10),
        || !cp.api("GET", "/v1/tokens", None).to_string().contains(&id),
    );
}

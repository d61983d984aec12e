//! `weftctl shift SERVICE --to SUBSET`: progressive delivery. Moves the share of SUBSET up one step at a
//! time (each step an ordinary route edit, acknowledged by every affected proxy), watches SUBSET's
//! error rate and p99 as the calling proxies count them (`GET /v1/stats`), and on any trouble puts the
//! route back as it was before the command started.
//!
//! Progress lines go to `out` as they happen: a run lasts minutes, and an operator watching it (or a
//! log collecting it) must see each step when it is taken, not at the end.

mod plan;
pub mod window;

pub use plan::Percent;

use super::args::{ShiftArgs, WaitArgs};
use super::client::{segment, Client};
use super::commands::{current_route, CommandError, Exit, Reply};
use super::render;
use super::shift;
use futures_util::FutureExt as _;
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};
use weft_api::operator::{ApplyRequest, ApplyResponse, ServiceStats, SourceFile};
use weft_api::resources::Kind;
use window::{Counts, Sample, Thresholds, Verdict};

/// Time allowed on top of a rollout wait for the request itself (as `apply` does).
const WAIT_MARGIN: Duration = Duration::from_secs(15);
/// Proxies report once a second: after a step is acknowledged, the requests sent before it (at the old
/// weights, or during a failed run just before) are still arriving in reports for about that long.
/// The step's window starts once they are in, so they are not judged as the new step's.
const REPORT_SETTLE: Duration = Duration::from_millis(1500);

/// Everything a run needs, fixed before the first change.
struct Plan {
    namespace: String,
    service: String,
    to: String,
    from: Vec<String>,
    /// The route as it was; `None` when there was none.
    before: Option<Value>,
    /// Its catch-all split (`v1=100`), empty when it had none.
    before_weights: Vec<(String, u32)>,
    shares: Vec<u32>,
    interval: Duration,
    max_idle_intervals: u32,
    limits: Thresholds,
    wait: WaitArgs,
}

/// How a run ended, before the rollback.
enum Outcome {
    Promoted,
    /// A threshold was crossed: the message names it and the value seen.
    Crossed(String),
    TooFew(String),
    Unconfirmed(String),
    Interrupted,
    Failed(CommandError),
}

/// SIGINT and SIGTERM, registered before the first change so neither can kill weftctl mid-shift.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }

    /// A signal arrived since the last look.
    fn pending(&mut self) -> bool {
        self.recv().now_or_never().is_some()
    }
}

pub async fn run(
    client: &Client,
    a: ShiftArgs,
    out: &mut dyn Write,
) -> Result<Reply, CommandError> {
    let mut signals = Signals::new().map_err(CommandError::Signals)?;
    let plan = prepare(client, a).await?;
    // Before any change: the endpoint must answer (an older control plane has none).
    let first = stats(client, &plan).await?;
    say(out, &header(&plan, &first));
    let (outcome, changed) = steps(client, &plan, &mut signals, out).await;
    let (message, exit) = match outcome {
        Outcome::Promoted => {
            let to = plan::describe(&plan.weights_at(100));
            say(out, &format!("promoted: {} {to}", plan.service));
            return Ok(Reply::out(String::new()));
        }
        Outcome::Crossed(m) => (m, Exit::Threshold),
        Outcome::TooFew(m) => (m, Exit::TooFewRequests),
        Outcome::Unconfirmed(m) => (m, Exit::Unconfirmed),
        Outcome::Interrupted => ("interrupted".to_string(), Exit::Interrupted),
        Outcome::Failed(e) if !changed => return Err(e),
        Outcome::Failed(e) => (e.to_string(), Exit::Failed),
    };
    if !changed {
        return Ok(stopped(message, exit, "nothing was changed"));
    }
    say(out, &format!("rolling back: {message}"));
    match roll_back(client, &plan).await {
        Ok(text) => {
            say(out, text.trim_end());
            Ok(stopped(message, exit, "rolled back"))
        }
        Err(e) => Ok(stopped(
            format!(
                "{message}; the ROLLBACK FAILED: {e}\n  the route is still changed: put it back with \
                 `weftctl shift {} {} -n {}`",
                plan.service,
                plan::describe(&plan.before_weights),
                plan.namespace
            ),
            Exit::Failed,
            "not rolled back",
        )),
    }
}

fn stopped(message: String, exit: Exit, what: &str) -> Reply {
    Reply {
        stdout: String::new(),
        stderr: format!("error: {what}: {message}\n"),
        exit,
    }
}

fn say(out: &mut dyn Write, line: &str) {
    // A closed stdout must not stop a shift half-way; the exit code still tells.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Checks the arguments against the route as it is now.
async fn prepare(client: &Client, a: ShiftArgs) -> Result<Plan, CommandError> {
    let p = a.progressive;
    let to = p.to.clone().unwrap_or_default();
    for s in std::iter::once(&to).chain(&p.from) {
        shift::check_subset(s).map_err(CommandError::Usage)?;
    }
    if p.from.contains(&to) {
        return Err(CommandError::Usage(format!(
            "--from {to} is also --to: the rest must go elsewhere"
        )));
    }
    let before = current_route(client, &a.namespace, &a.service).await?;
    let before_weights = before.as_ref().map(shift::weights).unwrap_or_default();
    let from = match &p.from {
        f if !f.is_empty() => f.clone(),
        _ => before_weights
            .iter()
            .filter(|(s, w)| *s != to && *w > 0)
            .map(|(s, _)| s.clone())
            .collect(),
    };
    if from.is_empty() {
        return Err(CommandError::Usage(format!(
            "no subset to shift from: the route {ns}/{svc} weights none other than {to}; give --from \
             SUBSET, or set the weights first (weftctl shift {svc} v1=100 -n {ns})",
            ns = a.namespace,
            svc = a.service
        )));
    }
    let shares = plan::shares(plan::current_share(&before_weights, &to), p.step());
    Ok(Plan {
        namespace: a.namespace,
        service: a.service,
        to,
        from,
        before,
        before_weights,
        shares,
        interval: p.interval().get(),
        max_idle_intervals: p.max_idle_intervals(),
        limits: Thresholds {
            max_error_rate: p.max_error_rate(),
            max_p99: p.max_p99.map(|d| d.get()),
            min_requests: p.min_requests(),
        },
        wait: a.wait,
    })
}

impl Plan {
    fn weights_at(&self, share: u32) -> Vec<(String, u32)> {
        plan::weights_at(share, &self.to, &self.from, &self.before_weights)
    }
}

/// The first line: what will happen and what is watched.
fn header(plan: &Plan, first: &ServiceStats) -> String {
    let from = match plan.before_weights.is_empty() {
        true => "(no split)".to_string(),
        false => plan::describe(&plan.before_weights),
    };
    let mut limits = vec![format!("error rate ≤ {}", plan.limits.max_error_rate)];
    if let Some(max) = plan.limits.max_p99 {
        let shown = weft_api::Duration(max);
        limits.push(
            match window::effective_p99_limit(max, &first.bucket_bounds_ms) {
                Some(b) if u128::from(b) == max.as_millis() => format!("p99 ≤ {shown}"),
                Some(b) => format!(
                    "p99 ≤ {shown} (p99 is known to its bucket's upper bound, so: ≤ {})",
                    weft_api::Duration::from_millis(b)
                ),
                None => {
                    format!("p99 ≤ {shown} (below the smallest bucket: every step will fail it)")
                }
            },
        );
    }
    format!(
        "shifting {}/{} from {from} to {} in {} step(s) of {}s each; limits: {}, at least {} request(s) a \
         step; p99 is the upper bound of the latency bucket holding it",
        plan.namespace,
        plan.service,
        plan.to,
        plan.shares.len(),
        plan.interval.as_secs_f64(),
        limits.join(", "),
        plan.limits.min_requests,
    )
}

/// Takes the steps; the outcome, and whether the route was changed.
async fn steps(
    client: &Client,
    plan: &Plan,
    signals: &mut Signals,
    out: &mut dyn Write,
) -> (Outcome, bool) {
    let mut changed = false;
    for (i, share) in plan.shares.iter().enumerate() {
        let label = format!("step {}/{}", i + 1, plan.shares.len());
        match take_step(client, plan, *share).await {
            Ok((line, rollout, complete)) => {
                changed = true;
                say(out, &format!("{label}: {line} ({})", rollout.trim_end()));
                if !complete {
                    let m = format!("{label} ({line}) was not acknowledged by every proxy");
                    return (Outcome::Unconfirmed(m), changed);
                }
            }
            Err(e) => return (Outcome::Failed(e), changed),
        }
        if signals.pending() {
            return (Outcome::Interrupted, changed);
        }
        if let Some(stop) = watch(client, plan, *share, signals, out).await {
            return (stop, changed);
        }
    }
    (Outcome::Promoted, changed)
}

/// Applies the weights for `share`; the change line, the rollout line and whether every proxy acked.
async fn take_step(
    client: &Client,
    plan: &Plan,
    share: u32,
) -> Result<(String, String, bool), CommandError> {
    let route = current_route(client, &plan.namespace, &plan.service)
        .await?
        .unwrap_or_else(|| shift::new_route(&plan.namespace, &plan.service));
    let previous = (!plan.before_weights.is_empty()).then(|| plan::describe(&plan.before_weights));
    let (route, line) = shift::set_step(
        route,
        &plan.service,
        &plan.weights_at(share),
        previous.as_deref(),
    )
    .map_err(CommandError::Usage)?;
    let resp = apply_waiting(client, route, plan.wait).await?;
    let (rollout, complete) = match &resp.rollout {
        Some(r) => (render::rollout(r), r.complete),
        None => ("no answer about the rollout".to_string(), false),
    };
    Ok((line, rollout, complete))
}

async fn apply_waiting(
    client: &Client,
    route: Value,
    wait: WaitArgs,
) -> Result<ApplyResponse, CommandError> {
    let timeout = wait.timeout.get();
    let file = SourceFile {
        name: "weftctl shift".into(),
        text: serde_json::to_string_pretty(&route).unwrap_or_default(),
    };
    let path = format!("/v1/apply?wait={}", timeout.as_millis());
    let req = ApplyRequest { files: vec![file] };
    Ok(client.post(&path, &req, timeout + WAIT_MARGIN).await?)
}

/// Watches one step: `None` once it passes, else why the run stops.
async fn watch(
    client: &Client,
    plan: &Plan,
    share: u32,
    signals: &mut Signals,
    out: &mut dyn Write,
) -> Option<Outcome> {
    tokio::select! {
        _ = tokio::time::sleep(REPORT_SETTLE) => {}
        _ = signals.recv() => return Some(Outcome::Interrupted),
    }
    let mut last = match stats(client, plan).await {
        Ok(s) => (Instant::now(), Sample::of(&s, &plan.to)),
        Err(e) => return Some(Outcome::Failed(e)),
    };
    let started = last.0;
    let mut window = Counts::default();
    let mut idle = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(plan.interval) => {}
            _ = signals.recv() => return Some(Outcome::Interrupted),
        }
        let now = match stats(client, plan).await {
            Ok(s) => s,
            Err(e) => return Some(Outcome::Failed(e)),
        };
        let sample = Sample::of(&now, &plan.to);
        let at = Instant::now();
        window.add(&sample.since(&last.1, at.duration_since(last.0)));
        last = (at, sample);
        let seen = describe_window(&plan.to, &window, at.duration_since(started), &now);
        match window::judge(&window, &now.bucket_bounds_ms, &plan.limits) {
            Verdict::Pass => {
                say(out, &format!("  {seen}: within limits"));
                return None;
            }
            Verdict::TooFew => {
                idle += 1;
                let min = plan.limits.min_requests;
                if idle >= plan.max_idle_intervals {
                    say(out, &format!("  {seen}: fewer than --min-requests {min}"));
                    return Some(Outcome::TooFew(format!(
                        "{} saw fewer than {min} request(s) at {share}% in {idle} interval(s) \
                         (--max-idle-intervals {}): too little traffic to judge",
                        plan.to, plan.max_idle_intervals
                    )));
                }
                say(
                    out,
                    &format!(
                        "  {seen}: fewer than --min-requests {min}; waiting another interval ({idle}/{})",
                        plan.max_idle_intervals
                    ),
                );
            }
            Verdict::ErrorRate(rate) => {
                let m = format!(
                    "{}'s error rate {} is over --max-error-rate {} at {share}% ({} of {} requests failed)",
                    plan.to,
                    percent(rate),
                    plan.limits.max_error_rate,
                    window.failures,
                    window.requests
                );
                say(out, &format!("  {seen}: error rate over the limit"));
                return Some(Outcome::Crossed(m));
            }
            Verdict::Latency(p) => {
                let max = plan
                    .limits
                    .max_p99
                    .map(weft_api::Duration)
                    .unwrap_or_default();
                let m = format!(
                    "{}'s {p} is over --max-p99 {max} at {share}% (p99 is the upper bound of its \
                     latency bucket)",
                    plan.to
                );
                say(out, &format!("  {seen}: p99 over the limit"));
                return Some(Outcome::Crossed(m));
            }
        }
    }
}

/// `v2: 212 requests in 2.0s, 3 failed (1.42%), p99 ≤ 5ms (2 proxies reporting)`.
fn describe_window(to: &str, w: &Counts, over: Duration, now: &ServiceStats) -> String {
    let mut s = format!(
        "{to}: {} request(s) in {:.1}s, {} failed ({})",
        w.requests,
        over.as_secs_f64(),
        w.failures,
        percent(w.error_rate())
    );
    if let Some(p) = window::p99(&w.buckets, &now.bucket_bounds_ms) {
        s.push_str(&format!(", {p}"));
    }
    s.push_str(&format!(
        " ({} prox{} reporting)",
        now.proxies_reporting,
        if now.proxies_reporting == 1 {
            "y"
        } else {
            "ies"
        }
    ));
    s
}

fn percent(fraction: f64) -> String {
    format!("{:.2}%", fraction * 100.0)
}

async fn stats(client: &Client, plan: &Plan) -> Result<ServiceStats, CommandError> {
    let path = format!(
        "/v1/stats?namespace={}&service={}",
        segment(&plan.namespace),
        segment(&plan.service)
    );
    Ok(client.get(&path).await?)
}

/// Puts the route back as it was before the run (or deletes it, when there was none), waiting for
/// the acknowledgements; what it did, as lines to print.
async fn roll_back(client: &Client, plan: &Plan) -> Result<String, CommandError> {
    let Some(before) = &plan.before else {
        let reply = super::commands::delete(
            client,
            Kind::HttpRoute,
            &plan.namespace,
            &plan.service,
            plan.wait,
        )
        .await?;
        return Ok(format!(
            "deleted the route the shift created\n{}",
            reply.stdout
        ));
    };
    let current = current_route(client, &plan.namespace, &plan.service)
        .await?
        .unwrap_or_else(|| before.clone());
    let line = format!(
        "{}: {} -> {}",
        plan.service,
        plan::describe(&shift::weights(&current)),
        plan::describe(&plan.before_weights)
    );
    let restored = shift::restore(current, before).map_err(CommandError::Usage)?;
    let resp = apply_waiting(client, restored, plan.wait).await?;
    let rollout = match &resp.rollout {
        Some(r) if !r.complete => format!(
            "{}\nwarning: the rollback is applied but not yet acknowledged by every proxy",
            render::rollout(r).trim_end()
        ),
        Some(r) => render::rollout(r),
        None => String::new(),
    };
    Ok(format!("{line} ({})", rollout.trim_end()))
}

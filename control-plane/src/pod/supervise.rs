//! Watching a running pod: the app's exit or a signal ends it; a sidecar that dies is restarted (same
//! config, identity from its state directory) a bounded number of times, else the pod is stopped, so
//! the app never runs with interception pointing at nothing (see docs/pods.md, "A sidecar that dies").

use super::runner::{start_sidecar, update_record, wait_ready, Pod, RunOptions};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::Child;

const APP_STOP_GRACE: Duration = Duration::from_secs(10);
/// Sidecar restarts allowed within [`RESTART_WINDOW`] before the pod is stopped.
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long a restarted sidecar has to answer ready (it comes back from its cached identity).
const RESTART_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The runner's exit code when it stopped the pod because its sidecar could not be kept running.
pub const EXIT_SIDECAR_LOST: i32 = 69;

/// Why supervision ended.
enum Ended {
    App(Option<std::process::ExitStatus>),
    SidecarLost(String),
}

/// Waits for the app to exit (or for SIGTERM/SIGINT, passed on to the app), restarting the sidecar
/// when it dies. Returns the app's exit code, or [`EXIT_SIDECAR_LOST`] when the sidecar could not be
/// kept running and the pod was stopped.
pub(super) async fn supervise(pod: &mut Pod, o: &RunOptions, config: &Path) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("pod {}: cannot install signal handlers", o.name);
        return 1;
    };
    let mut restarts: Vec<Instant> = Vec::new();
    let ended = loop {
        let (Some(app), Some(sidecar)) = (pod.app.as_mut(), pod.sidecar.as_mut()) else {
            return 1;
        };
        let died = tokio::select! {
            s = app.wait() => break Ended::App(s.ok()),
            _ = term.recv() => break Ended::App(stop_app(app).await),
            _ = int.recv() => break Ended::App(stop_app(app).await),
            s = sidecar.wait() => s,
        };
        let how = died.map_or_else(|e| e.to_string(), |s| s.to_string());
        if let Err(why) = restart_sidecar(pod, o, config, &how, &mut restarts).await {
            break Ended::SidecarLost(why);
        }
    };
    use std::os::unix::process::ExitStatusExt as _;
    match ended {
        Ended::App(Some(s)) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Ended::App(None) => 1,
        Ended::SidecarLost(why) => {
            eprintln!(
                "pod {}: {why}; stopping the pod (the app gets SIGTERM; exit code {EXIT_SIDECAR_LOST})",
                o.name
            );
            if let Some(app) = pod.app.as_mut() {
                stop_app(app).await;
            }
            EXIT_SIDECAR_LOST
        }
    }
}

/// Starts the sidecar again (same config; its identity comes from its state directory) and waits until
/// it is ready, with backoff; refuses once [`MAX_RESTARTS`] happened within [`RESTART_WINDOW`].
async fn restart_sidecar(
    pod: &mut Pod,
    o: &RunOptions,
    config: &Path,
    how: &str,
    restarts: &mut Vec<Instant>,
) -> Result<(), String> {
    restarts.retain(|t| t.elapsed() < RESTART_WINDOW);
    if restarts.len() >= MAX_RESTARTS {
        return Err(format!(
            "the sidecar exited ({how}) after {} restarts within {}s",
            restarts.len(),
            RESTART_WINDOW.as_secs()
        ));
    }
    let backoff = Duration::from_millis(250 << restarts.len());
    restarts.push(Instant::now());
    eprintln!(
        "pod {}: the sidecar exited ({how}); restarting it (restart {} of at most {MAX_RESTARTS} within {}s)",
        o.name,
        restarts.len(),
        RESTART_WINDOW.as_secs()
    );
    tokio::time::sleep(backoff).await;
    let child = start_sidecar(pod, config, true)
        .map_err(|e| format!("the sidecar exited ({how}) and could not be restarted: {e}"))?;
    pod.sidecar = Some(child);
    let _ = update_record(pod, |r| {
        r.sidecar_pid = pod.sidecar.as_ref().and_then(Child::id)
    });
    wait_ready(pod, RESTART_READY_TIMEOUT)
        .await
        .map_err(|e| format!("the restarted sidecar did not become ready: {e}"))?;
    eprintln!("pod {}: sidecar restarted and ready", o.name);
    Ok(())
}

async fn stop_app(app: &mut Child) -> Option<std::process::ExitStatus> {
    if let Some(pid) = app.id() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    match tokio::time::timeout(APP_STOP_GRACE, app.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = app.start_kill();
            app.wait().await.ok()
        }
    }
}

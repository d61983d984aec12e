//! The operator API's resource routes: apply (with dry run and waiting for the rollout), get, delete;
//! and the watched directory feeding the same store.

use crate::http_util::{self, Body};
use crate::server::ControlPlane;
use crate::store::{self, Refused, Store, StoreError};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;
use weft_api::operator::{ApplyRequest, ApplyResponse, Change, ChangeAction};
use weft_api::resources::{Kind, Parsed, ResourceKey};
use weft_api::yaml_limits::Limit;

const MAX_APPLY: usize = 8 << 20;
/// Applies (and reloads of the watched directory) being read and checked at once; one more is
/// answered 503 at once rather than queued. Each holds a blocking-pool thread, never the store.
pub const MAX_READS: usize = 4;
/// Longest the reading and checking of one apply may take; past it nothing is applied (503).
pub const READ_DEADLINE: Duration = Duration::from_secs(10);
/// Longest a caller may ask to wait for a rollout.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// `?dryRun=true&wait=<ms>`.
struct Query {
    dry_run: bool,
    wait: Option<Duration>,
}

fn query(req: &Request<Incoming>) -> Query {
    let mut q = Query {
        dry_run: false,
        wait: None,
    };
    for pair in req.uri().query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("dryRun", v)) => q.dry_run = v == "true" || v == "1",
            Some(("wait", v)) => {
                q.wait = v
                    .parse::<u64>()
                    .ok()
                    .map(|ms| Duration::from_millis(ms).min(MAX_WAIT))
            }
            _ => {}
        }
    }
    q
}

/// Runs `f` on the store away from the runtime's few worker threads: parsing, validating and compiling
/// a large document, or waiting for the store's lock behind one, must not stall the requests that need
/// no store (`/live`, token creation) and share those workers.
async fn on_store<T: Send + 'static>(
    cp: &Arc<ControlPlane>,
    f: impl FnOnce(&mut Store) -> T + Send + 'static,
) -> Result<T, Response<Body>> {
    let cp = cp.clone();
    tokio::task::spawn_blocking(move || f(&mut cp.store()))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a store operation failed");
            http_util::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store operation failed",
                vec![],
            )
        })
}

pub async fn apply(req: Request<Incoming>, cp: &Arc<ControlPlane>) -> Response<Body> {
    let q = query(&req);
    let body =
        match http_util::read_body(req.into_body(), MAX_APPLY, cp.operator_body_timeout).await {
            Ok(b) => b,
            Err(r) => return r,
        };
    let (names, incoming) = match read_documents(cp, body).await {
        Ok(read) => read,
        Err(refusal) => return refusal,
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let dry_run = q.dry_run;
    let result = match on_store(cp, move |store| {
        store
            .apply_read(incoming, dry_run)
            .map(|c| (c, store.revision()))
    })
    .await
    {
        Ok(r) => r,
        Err(failed) => return failed,
    };
    // The diffs are written after the lock is released, off the runtime's workers.
    let result = match result {
        Ok((pending, revision)) => {
            match tokio::task::spawn_blocking(move || store::render(pending)).await {
                Ok(changes) => Ok((changes, revision)),
                Err(e) => {
                    tracing::error!(error = %e, "writing an apply's diffs failed");
                    return http_util::error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the change was applied but its diffs could not be written",
                        vec![],
                    );
                }
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((changes, revision)) => {
            log_changes("apply", &names, &changes, q.dry_run);
            if !q.dry_run {
                cp.publish();
            }
            answer(cp, changes, revision, &q).await
        }
        Err(e) => refused("apply", &names, e, cp),
    }
}

/// Decodes an apply's body and reads and checks its documents before the store's lock is taken: on
/// the blocking pool, at most [`MAX_READS`] at once, within [`READ_DEADLINE`]. Returns the files'
/// names and the documents; the error is the answer to send.
async fn read_documents(
    cp: &Arc<ControlPlane>,
    body: bytes::Bytes,
) -> Result<(Vec<String>, Vec<Parsed>), Response<Body>> {
    let Ok(permit) = cp.document_reads.clone().try_acquire_owned() else {
        return Err(busy(cp));
    };
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let request: ApplyRequest =
            http_util::decode_json(&body).map_err(ReadFailure::Malformed)?;
        let names: Vec<String> = request.files.iter().map(|f| f.name.clone()).collect();
        match store::read_files(&request.files, Some(READ_DEADLINE)) {
            Ok(incoming) => Ok((names, incoming)),
            Err(e) => Err(ReadFailure::Refused(names, Box::new(e))),
        }
    });
    // The task stops itself at the deadline between documents; this answers on time regardless.
    let failed = match tokio::time::timeout(READ_DEADLINE, task).await {
        Ok(Ok(Ok(read))) => return Ok(read),
        Ok(Ok(Err(ReadFailure::Malformed(answer)))) => return Err(*answer),
        Ok(Ok(Err(ReadFailure::Refused(names, e)))) => (names, *e),
        Err(_) => (Vec::new(), StoreError::Deadline(READ_DEADLINE)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reading an apply failed");
            return Err(http_util::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the documents failed; nothing was changed",
                vec![],
            ));
        }
    };
    let (names, e) = failed;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Err(refused("apply", &names, e, cp))
}

enum ReadFailure {
    /// The body is not an apply request: the 400 to send.
    Malformed(Box<Response<Body>>),
    /// The files' names, and why their documents were refused.
    Refused(Vec<String>, Box<StoreError>),
}

/// The answer when [`MAX_READS`] applies are being read already: at once, rather than queued.
fn busy(cp: &ControlPlane) -> Response<Body> {
    cp.metrics.apply("refused");
    cp.metrics.resource_refused("busy");
    tracing::warn!("apply refused: {MAX_READS} applies are being read already");
    let mut r = http_util::error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{MAX_READS} applies are being read already; retry shortly; nothing was changed"),
        vec![],
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

pub async fn delete(
    req: Request<Incoming>,
    cp: &Arc<ControlPlane>,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Response<Body> {
    let q = query(&req);
    let Some(kind) = Kind::parse(kind) else {
        return unknown_kind(kind);
    };
    let key = ResourceKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    let dry_run = q.dry_run;
    let result = match on_store(cp, move |store| {
        store.delete(&key, dry_run).map(|c| (c, store.revision()))
    })
    .await
    {
        Ok(r) => r,
        Err(failed) => return failed,
    };
    match result {
        Ok((changes, revision)) => {
            log_changes("delete", &[], &changes, q.dry_run);
            if !q.dry_run {
                cp.publish();
            }
            answer(cp, changes, revision, &q).await
        }
        Err(StoreError::NotFound(k)) => {
            http_util::error(StatusCode::NOT_FOUND, format!("{k} not found"), vec![])
        }
        Err(e) => refused("delete", &[], e, cp),
    }
}

pub async fn get(
    cp: &Arc<ControlPlane>,
    kind: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Response<Body> {
    let Some(kind) = Kind::parse(kind) else {
        return unknown_kind(kind);
    };
    let (ns, n) = (namespace.map(str::to_string), name.map(str::to_string));
    // From the last published state: a read never waits for a change being checked or saved.
    let snapshot = cp.resources();
    let found = match tokio::task::spawn_blocking(move || {
        snapshot
            .get(kind, ns.as_deref(), n.as_deref())
            .into_iter()
            .map(|r| r.to_json())
            .collect::<Vec<serde_json::Value>>()
    })
    .await
    {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, "a read of the resources failed");
            return http_util::error(StatusCode::INTERNAL_SERVER_ERROR, "the read failed", vec![]);
        }
    };
    if name.is_some() && found.is_empty() {
        return http_util::error(
            StatusCode::NOT_FOUND,
            format!(
                "{kind} {}/{} not found",
                namespace.unwrap_or("default"),
                name.unwrap_or("")
            ),
            vec![],
        );
    }
    http_util::json(StatusCode::OK, &found)
}

fn unknown_kind(kind: &str) -> Response<Body> {
    let valid: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    http_util::error(
        StatusCode::BAD_REQUEST,
        format!("unknown kind {kind:?}; valid kinds: {}", valid.join(", ")),
        vec![],
    )
}

async fn answer(
    cp: &ControlPlane,
    changes: Vec<Change>,
    revision: u64,
    q: &Query,
) -> Response<Body> {
    let changed = changes.iter().any(|c| c.action != ChangeAction::Unchanged);
    let rollout = match q.wait {
        Some(wait) if changed && !q.dry_run => Some(cp.hub.rollout(revision, wait).await),
        _ => None,
    };
    http_util::json(
        StatusCode::OK,
        &ApplyResponse {
            dry_run: q.dry_run,
            revision,
            changes,
            rollout,
        },
    )
}

fn log_changes(what: &str, files: &[&str], changes: &[Change], dry_run: bool) {
    for c in changes
        .iter()
        .filter(|c| c.action != ChangeAction::Unchanged)
    {
        tracing::info!(resource = %c.key, action = ?c.action, dry_run, files = ?files, "{what}");
    }
}

fn refused(what: &str, files: &[&str], e: StoreError, cp: &ControlPlane) -> Response<Body> {
    cp.metrics.apply("refused");
    match e {
        StoreError::Refused(Refused(problems)) => {
            for p in &problems {
                tracing::warn!(files = ?files, problem = %p, "{what} refused");
            }
            http_util::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{what} refused: {} problem(s); nothing was changed",
                    problems.len()
                ),
                problems,
            )
        }
        StoreError::State(e) => http_util::not_saved(what, &e),
        StoreError::Limit(e) => {
            cp.metrics.resource_refused(e.limit.as_str());
            tracing::warn!(files = ?files, problem = %e, "{what} refused: over a limit");
            let status = match e.limit {
                Limit::DocumentBytes => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            http_util::error(
                status,
                format!("{what} refused: a document is over a limit; nothing was changed"),
                vec![e.to_string()],
            )
        }
        StoreError::Deadline(d) => {
            cp.metrics.resource_refused("deadline");
            tracing::warn!(files = ?files, "{what} refused: not read within {d:?}");
            http_util::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} refused: the documents were not read and checked within {d:?}; nothing was changed"),
                vec![],
            )
        }
        e @ StoreError::Busy(_) => http_util::error(StatusCode::CONFLICT, e.to_string(), vec![]),
        e => http_util::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), vec![]),
    }
}

/// The watched directory: each burst of changes replaces what it owns, or is refused (logged with file
/// and line) leaving the last good state in force.
pub fn watch_dir(
    cp: &Arc<ControlPlane>,
    dir: std::path::PathBuf,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let cp = cp.clone();
    let shown = dir.display().to_string();
    let watcher = crate::config_dir::watch(dir, move |files| {
        let files = match files {
            Ok(f) => f,
            Err(e) => {
                return tracing::warn!(dir = %shown, error = %e, "cannot read the config directory; keeping the last good state")
            }
        };
        // Read and checked before the store's lock is taken, as an apply is.
        let result = store::read_files(&files, Some(READ_DEADLINE))
            .and_then(|incoming| cp.store().reload_read(incoming))
            .map(store::render);
        match result {
            Ok(changes) if changes.is_empty() => {}
            Ok(changes) => {
                log_changes("config directory", &[shown.as_str()], &changes, false);
                cp.metrics.apply("applied");
                cp.publish();
            }
            Err(StoreError::Refused(Refused(problems))) => {
                cp.metrics.apply("refused");
                for p in problems {
                    tracing::error!(dir = %shown, problem = %p, "config directory refused; keeping the last good state");
                }
            }
            Err(e @ (StoreError::Limit(_) | StoreError::Deadline(_))) => {
                cp.metrics.apply("refused");
                let reason = match &e {
                    StoreError::Limit(l) => l.limit.as_str(),
                    _ => "deadline",
                };
                cp.metrics.resource_refused(reason);
                tracing::error!(dir = %shown, problem = %e, "config directory refused; keeping the last good state");
            }
            Err(e) => tracing::error!(dir = %shown, error = %e, "config directory not applied"),
        }
    })?;
    Ok(watcher)
}

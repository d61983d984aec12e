//! The operator API's resource routes: apply (with dry run and waiting for the rollout), get, delete;
//! and the watched directory feeding the same store.

use crate::http_util::{self, Body};
use crate::server::ControlPlane;
use crate::store::{Refused, Store, StoreError};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;
use weft_api::operator::{ApplyRequest, ApplyResponse, Change, ChangeAction};
use weft_api::resources::{Kind, ResourceKey};

const MAX_APPLY: usize = 8 << 20;
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
    let body: ApplyRequest =
        match http_util::read_json(req.into_body(), MAX_APPLY, cp.operator_body_timeout).await {
            Ok(b) => b,
            Err(r) => return r,
        };
    let names: Vec<String> = body.files.iter().map(|f| f.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let dry_run = q.dry_run;
    let result = match on_store(cp, move |store| {
        store
            .apply(&body.files, dry_run)
            .map(|c| (c, store.revision()))
    })
    .await
    {
        Ok(r) => r,
        Err(failed) => return failed,
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
    let found = match on_store(cp, move |store| {
        store
            .get(kind, ns.as_deref(), n.as_deref())
            .into_iter()
            .map(|r| r.to_json())
            .collect::<Vec<serde_json::Value>>()
    })
    .await
    {
        Ok(found) => found,
        Err(failed) => return failed,
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
        let result = cp.store().reload_dir(&files);
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
            Err(e) => tracing::error!(dir = %shown, error = %e, "config directory not applied"),
        }
    })?;
    Ok(watcher)
}

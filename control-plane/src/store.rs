//! The resources in force: what the watched directory holds plus what operators applied through the API,
//! validated as a whole before anything changes, persisted, and handed to the push.
//!
//! Every change is all-or-nothing: a batch (an apply, a delete, a reload of the directory) is checked
//! against the state it would produce; if any document is refused, nothing changes and every problem is
//! reported with file, line and field.

use crate::backend::{self, dir::DirBackend, Collection, Expect, SharedBackend, WriteError, WHOLE};
use crate::persist::{self, StateError};
use crate::view::MeshResources;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weft_api::operator::{Change, ChangeAction, SourceFile};
use weft_api::resources::{self, Batch, BatchError, Kind, Parsed, Resource, ResourceKey};
use weft_api::yaml_limits::{LimitError, LIMITS};

/// Where a resource came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// `weftctl apply` (persisted in the state directory).
    Api,
    /// A file of the watched directory (read again at start).
    Dir { file: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    origin: Origin,
    resource: serde_json::Value,
}

pub struct Store {
    backend: SharedBackend,
    /// The version of the stored record this state was read from or written as (`None`: none stored).
    version: Option<u64>,
    /// The mesh's trust domain, fixed by the CA; a MeshConfig naming another is refused.
    trust_domain: String,
    /// Shared with the [`Snapshot`]s handed out: a change builds a new map and swaps it in.
    resources: Arc<BTreeMap<ResourceKey, (Origin, Resource)>>,
    revision: u64,
}

/// The resources in force at one moment, read without the store's lock (`get` never waits for a
/// change being checked or saved).
#[derive(Clone, Default)]
pub struct Snapshot(Arc<BTreeMap<ResourceKey, (Origin, Resource)>>);

impl Snapshot {
    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: Option<&str>) -> Vec<&Resource> {
        select(&self.0, kind, namespace, name)
    }
}

fn select<'a>(
    resources: &'a BTreeMap<ResourceKey, (Origin, Resource)>,
    kind: Kind,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Vec<&'a Resource> {
    resources
        .iter()
        .filter(|(k, _)| k.kind == kind)
        .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
        .filter(|(k, _)| name.is_none_or(|n| k.name == n))
        .map(|(_, (_, r))| r)
        .collect()
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct Persisted {
    revision: u64,
    resources: Vec<Stored>,
}

/// A refused change: every problem, each naming file, line and field where it can.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s): {}", .0.len(), .0.join("; "))]
pub struct Refused(pub Vec<String>);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Refused(#[from] Refused),
    /// A document over a limit checked before parsing (depth, nodes, aliases, size, count).
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// Reading and validating the documents took longer than this; nothing was applied.
    #[error("the documents were not read and checked within {0:?}; nothing was applied")]
    Deadline(Duration),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0} not found")]
    NotFound(ResourceKey),
    /// Others kept changing the resources while this change was being made, more often than it is
    /// retried; nothing was applied.
    #[error("the resources kept changing through other replicas ({0} tries); nothing was applied, try again")]
    Busy(u32),
    /// Another replica wrote first: the change is made again from its state (never leaves
    /// [`Store`]'s retry).
    #[error("the resources changed through another replica meanwhile")]
    Conflicted,
}

/// How often a change is made again from the new state when another replica wrote first.
const CONFLICT_TRIES: u32 = 8;

impl Store {
    /// Loads the API-applied resources from `path` (a damaged file is an error, never an empty start).
    pub fn open(path: PathBuf, trust_domain: &str) -> Result<Store, StoreError> {
        Store::open_in(
            std::sync::Arc::new(DirBackend::file(Collection::Resources, path)),
            trust_domain,
        )
    }

    /// Loads the API-applied resources from `backend` (a damaged record is an error, never an empty
    /// start).
    pub fn open_in(backend: SharedBackend, trust_domain: &str) -> Result<Store, StoreError> {
        let mut store = Store {
            backend,
            version: None,
            trust_domain: trust_domain.to_string(),
            resources: Arc::default(),
            revision: 0,
        };
        store.load()?;
        Ok(store)
    }

    /// Reads the API-applied resources again if another replica changed them (those of the watched
    /// directory are kept). Returns whether anything was read.
    pub fn load(&mut self) -> Result<bool, StoreError> {
        let stored = backend::get_json::<Persisted>(&*self.backend, Collection::Resources)?;
        let version = stored.as_ref().map(|(_, v)| *v);
        if version.is_some() && version == self.version {
            return Ok(false);
        }
        let persisted = stored.map(|(p, _)| p).unwrap_or_default();
        let mut resources: BTreeMap<_, _> = self
            .resources
            .iter()
            .filter(|(_, (o, _))| *o != Origin::Api)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for s in persisted.resources {
            let r = Resource::from_json(s.resource).map_err(|e| StateError::CorruptRecord {
                store: self.backend.describe(),
                key: format!("{}/{WHOLE}", Collection::Resources.name()),
                reason: format!("a stored resource does not parse: {e}"),
            })?;
            resources.insert(r.key(), (s.origin, r));
        }
        self.resources = Arc::new(resources);
        self.revision = persisted.revision;
        self.version = version;
        Ok(true)
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Writes the API-applied resources if the stored record is still the one this state came from.
    fn save(&mut self) -> Result<(), WriteError> {
        let resources = self
            .resources
            .values()
            .filter(|(o, _)| *o == Origin::Api)
            .map(|(o, r)| Stored {
                origin: o.clone(),
                resource: r.to_json(),
            })
            .collect();
        let payload = persist::to_payload(&Persisted {
            revision: self.revision,
            resources,
        });
        let expect = Expect::read(self.version);
        let version = self
            .backend
            .put(Collection::Resources, WHOLE, &payload, expect)?;
        self.version = Some(version);
        Ok(())
    }

    /// Runs `change` on the state in force; when another replica wrote first, reads its state and
    /// runs `change` again on that (so neither change is lost, and a refusal is about the new state).
    fn retrying<T>(
        &mut self,
        mut change: impl FnMut(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for _ in 0..CONFLICT_TRIES {
            match change(self) {
                Err(StoreError::Conflicted) => {
                    self.load()?;
                }
                other => return other,
            }
        }
        Err(StoreError::Busy(CONFLICT_TRIES))
    }

    /// The resources by kind, for the push.
    pub fn mesh_resources(&self) -> MeshResources {
        let mut m = MeshResources::default();
        for (_, r) in self.resources.values() {
            match r {
                Resource::Service(d) => m.services.push(d.clone()),
                Resource::Workload(d) => m.workloads.push(d.clone()),
                Resource::HttpRoute(d) => m.routes.push(d.clone()),
                Resource::AuthorizationPolicy(d) => m.policies.push(d.clone()),
                Resource::MeshConfig(d) => m.mesh = d.spec.clone(),
            }
        }
        m
    }

    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: Option<&str>) -> Vec<&Resource> {
        select(&self.resources, kind, namespace, name)
    }

    /// The resources in force, to read after the lock is released.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(self.resources.clone())
    }

    /// Applies documents through the API (or checks them, with `dry_run`). Returns what changed.
    pub fn apply(
        &mut self,
        files: &[SourceFile],
        dry_run: bool,
    ) -> Result<Vec<Change>, StoreError> {
        let incoming = read_files(files, None)?;
        self.apply_read(incoming, dry_run).map(render)
    }

    /// Applies documents already read and checked one by one ([`read_files`], done without the store's
    /// lock): only the checks across documents and the swap happen here; [`render`] the answer after.
    pub fn apply_read(
        &mut self,
        incoming: Vec<Parsed>,
        dry_run: bool,
    ) -> Result<Vec<Pending>, StoreError> {
        self.retrying(|s| s.apply_once(&incoming, dry_run))
    }

    fn apply_once(
        &mut self,
        incoming: &[Parsed],
        dry_run: bool,
    ) -> Result<Vec<Pending>, StoreError> {
        let mut next = (*self.resources).clone();
        for d in incoming {
            if let Some((Origin::Dir { file }, _)) = self.resources.get(&d.resource.key()) {
                let e = d.error(
                    "metadata.name",
                    format!(
                        "{} comes from the watched file {file}; change it there",
                        d.resource.key()
                    ),
                );
                return Err(Refused(vec![e.to_string()]).into());
            }
            next.insert(d.resource.key(), (Origin::Api, d.resource.clone()));
        }
        let changes = self.commit(next, incoming, dry_run)?;
        // The answer covers the documents sent, changed or not.
        let sent: std::collections::BTreeSet<ResourceKey> =
            incoming.iter().map(|d| d.resource.key()).collect();
        Ok(changes
            .into_iter()
            .filter(|c| sent.contains(&c.key))
            .collect())
    }

    /// Deletes one resource (refused if another still refers to it).
    pub fn delete(&mut self, key: &ResourceKey, dry_run: bool) -> Result<Vec<Change>, StoreError> {
        self.retrying(|s| s.delete_once(key, dry_run))
    }

    fn delete_once(&mut self, key: &ResourceKey, dry_run: bool) -> Result<Vec<Change>, StoreError> {
        if !self.resources.contains_key(key) {
            return Err(StoreError::NotFound(key.clone()));
        }
        let mut next = (*self.resources).clone();
        next.remove(key);
        let changes = self.commit(next, &[], dry_run)?;
        Ok(render(
            changes
                .into_iter()
                .filter(|c| c.action == ChangeAction::Deleted)
                .collect(),
        ))
    }

    /// Replaces everything that came from the watched directory with `files` (all or nothing).
    pub fn reload_dir(&mut self, files: &[SourceFile]) -> Result<Vec<Change>, StoreError> {
        let incoming = read_files(files, None)?;
        self.reload_read(incoming).map(render)
    }

    /// [`Store::reload_dir`] with documents already read by [`read_files`]; [`render`] the answer after.
    pub fn reload_read(&mut self, incoming: Vec<Parsed>) -> Result<Vec<Pending>, StoreError> {
        self.retrying(|s| s.reload_once(&incoming))
    }

    fn reload_once(&mut self, incoming: &[Parsed]) -> Result<Vec<Pending>, StoreError> {
        let mut next: BTreeMap<_, _> = self
            .resources
            .iter()
            .filter(|(_, (o, _))| *o == Origin::Api)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut problems = Vec::new();
        for d in incoming {
            let key = d.resource.key();
            if let Some((Origin::Api, _)) = next.get(&key) {
                let e = d.error(
                    "metadata.name",
                    format!("{key} is also applied through the API; delete one of them"),
                );
                problems.push(e.to_string());
                continue;
            }
            let origin = Origin::Dir {
                file: d.file.clone(),
            };
            next.insert(key, (origin, d.resource.clone()));
        }
        if !problems.is_empty() {
            return Err(Refused(problems).into());
        }
        let changes = self.commit(next, incoming, false)?;
        Ok(changes
            .into_iter()
            .filter(|c| c.action != ChangeAction::Unchanged)
            .collect())
    }

    /// Validates the state `next` would be; if it holds, adopts it (unless `dry_run`).
    fn commit(
        &mut self,
        next: BTreeMap<ResourceKey, (Origin, Resource)>,
        incoming: &[Parsed],
        dry_run: bool,
    ) -> Result<Vec<Pending>, StoreError> {
        check_duplicates(incoming)?;
        check_references(&next, incoming)?;
        self.check_trust_domain(incoming)?;
        let changes = diff_states(&self.resources, &next);
        let changed = changes.iter().any(|c| c.action != ChangeAction::Unchanged);
        if !dry_run && changed {
            let previous = std::mem::replace(&mut self.resources, Arc::new(next));
            self.revision += 1;
            if let Err(e) = self.save() {
                self.resources = previous;
                self.revision -= 1;
                return Err(match e {
                    WriteError::Conflict(_) => StoreError::Conflicted,
                    WriteError::State(e) => e.into(),
                });
            }
        }
        Ok(changes)
    }
}

impl Store {
    fn check_trust_domain(&self, incoming: &[Parsed]) -> Result<(), Refused> {
        let problems: Vec<String> = incoming
            .iter()
            .filter_map(|d| match &d.resource {
                Resource::MeshConfig(m) => m.spec.trust_domain.as_ref().filter(|td| **td != self.trust_domain).map(|td| {
                    d.error(
                        "spec.trustDomain",
                        format!(
                            "{td} differs from the mesh's trust domain {} (fixed when the control plane's state was created)",
                            self.trust_domain
                        ),
                    )
                    .to_string()
                }),
                _ => None,
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Refused(problems))
        }
    }
}

/// The trust domain a MeshConfig among `files` asks for, if any (to create a new mesh with it).
pub fn trust_domain_in(files: &[SourceFile]) -> Option<String> {
    files.iter().find_map(|f| {
        resources::parse_documents(&f.name, &f.text)
            .ok()?
            .into_iter()
            .find_map(|d| match d.resource {
                Resource::MeshConfig(m) => m.spec.trust_domain,
                _ => None,
            })
    })
}

/// Reads and validates every document of `files` on its own, under the limits of
/// [`weft_api::yaml_limits::LIMITS`] and, when given, within a time: the part of a change that needs
/// no store, so it runs before the store's lock is taken.
pub fn read_files(
    files: &[SourceFile],
    within: Option<Duration>,
) -> Result<Vec<Parsed>, StoreError> {
    let mut batch = Batch::new(LIMITS, within);
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        match batch.read(&f.name, &f.text) {
            Ok(docs) => {
                for d in docs {
                    batch.check_deadline().map_err(batch_error)?;
                    let errs = d.validate();
                    if errs.is_empty() {
                        out.push(d);
                    } else {
                        problems.extend(errs.iter().map(|e| e.to_string()));
                    }
                }
            }
            Err(BatchError::Invalid(errs)) => problems.extend(errs.iter().map(|e| e.to_string())),
            Err(e) => return Err(batch_error(e)),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Refused(problems).into())
    }
}

fn batch_error(e: BatchError) -> StoreError {
    match e {
        BatchError::Limit(e) => StoreError::Limit(e),
        BatchError::Deadline(d) => StoreError::Deadline(d),
        BatchError::Invalid(errs) => Refused(errs.iter().map(|e| e.to_string()).collect()).into(),
    }
}

fn check_duplicates(incoming: &[Parsed]) -> Result<(), Refused> {
    let mut seen: BTreeMap<ResourceKey, &Parsed> = BTreeMap::new();
    let mut problems = Vec::new();
    for d in incoming {
        if let Some(first) = seen.insert(d.resource.key(), d) {
            let e = d.error(
                "metadata.name",
                format!(
                    "duplicate name: {} is also defined at {}:{}",
                    d.resource.key(),
                    first.file,
                    first.line
                ),
            );
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Refused(problems))
    }
}

/// Every reference in the resulting state must resolve. A problem in a document of this change is
/// located in its file; one in a resource already in force (its target is being removed) is named.
fn check_references(
    next: &BTreeMap<ResourceKey, (Origin, Resource)>,
    incoming: &[Parsed],
) -> Result<(), Refused> {
    // Maps, not searches: a large state (thousands of routes) is checked in linear time.
    let by_key: BTreeMap<ResourceKey, &Parsed> =
        incoming.iter().map(|d| (d.resource.key(), d)).collect();
    let lookup = |k: &ResourceKey| next.get(k).map(|(_, r)| r);
    let mut problems = Vec::new();
    for (key, (origin, r)) in next {
        for (field, reason) in resources::dangling_references_by(r, lookup) {
            let msg = match by_key.get(key) {
                Some(d) => d.error(&field, reason).to_string(),
                None => {
                    let from = match origin {
                        Origin::Api => "applied earlier".to_string(),
                        Origin::Dir { file } => format!("from {file}"),
                    };
                    format!("{key} ({from}): field `{field}`: {reason}")
                }
            };
            problems.push(msg);
        }
    }
    let meshes = next.keys().filter(|k| k.kind == Kind::MeshConfig).count();
    if meshes > 1 {
        problems.push(format!(
            "{meshes} MeshConfig resources; a mesh has one, named `default`"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Refused(problems))
    }
}

/// What a change does to one resource, with the two versions its diff is made from.
#[derive(Debug)]
pub struct Pending {
    pub key: ResourceKey,
    pub action: ChangeAction,
    before: Option<Resource>,
    after: Option<Resource>,
}

/// A change's effects before their diffs are written: the diffs (YAML of every changed resource, a
/// line diff each) are made by [`render`] after the store's lock is released.
pub fn render(pending: Vec<Pending>) -> Vec<Change> {
    pending
        .into_iter()
        .map(|p| Change {
            diff: match p.action {
                ChangeAction::Unchanged => String::new(),
                _ => resources::diff(p.before.as_ref(), p.after.as_ref()),
            },
            key: p.key,
            action: p.action,
        })
        .collect()
}

fn diff_states(
    old: &BTreeMap<ResourceKey, (Origin, Resource)>,
    new: &BTreeMap<ResourceKey, (Origin, Resource)>,
) -> Vec<Pending> {
    let mut changes = Vec::new();
    for (k, (_, r)) in new {
        let before = old.get(k).map(|(_, r)| r);
        let action = match before {
            None => ChangeAction::Created,
            Some(b) if b == r => ChangeAction::Unchanged,
            Some(_) => ChangeAction::Configured,
        };
        let changed = action != ChangeAction::Unchanged;
        changes.push(Pending {
            key: k.clone(),
            action,
            before: before.filter(|_| changed).cloned(),
            after: Some(r.clone()).filter(|_| changed),
        });
    }
    for (k, (_, r)) in old {
        if !new.contains_key(k) {
            changes.push(Pending {
                key: k.clone(),
                action: ChangeAction::Deleted,
                before: Some(r.clone()),
                after: None,
            });
        }
    }
    changes
}

//! The resources in force, and the checks a change must pass before it is adopted.
//!
//! A [`ResourceSet`] maps each [`ResourceKey`] to the resource and where it came from ([`Origin`]): the
//! operator API, or a file of a watched directory. Every change is all-or-nothing. It is checked against
//! the set it would produce (each document on its own, duplicate names within the change, references
//! between documents, at most one MeshConfig, who owns what); if anything is wrong, nothing changes and
//! every problem is returned, located in the file the operator has to edit.
//!
//! Each `check_*` method answers what its mutating twin would do without doing it (`apply --dry-run`).
//! Persisting is the caller's business: clone the set, change the clone, save it, then swap.

use super::parse::Parsed;
use super::refs::{self, Broken};
use super::types::{Kind, Resource, ResourceKey};
use crate::operator::{Change, ChangeAction};
use crate::yaml::YamlError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Where a resource in force came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// Applied through the operator API (`weftctl apply`).
    Api,
    /// A document of a watched directory's file, starting at `line`.
    File { file: String, line: usize },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Api => f.write_str("api"),
            Origin::File { file, line } => write!(f, "{file}:{line}"),
        }
    }
}

/// A resource in force and its origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub resource: Resource,
    pub origin: Origin,
}

/// A resource that refers to one being removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub key: ResourceKey,
    pub origin: Origin,
    /// The referring field, e.g. `spec.rules[0].backendRefs[1].name`.
    pub field: String,
}

impl fmt::Display for Referrer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}) at {}", self.key, self.origin, self.field)
    }
}

/// Why a resource cannot be removed through the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoveError {
    #[error("{0} not found")]
    NotFound(ResourceKey),
    #[error("{key} comes from the watched file {origin}; remove it from there")]
    OwnedByFile { key: ResourceKey, origin: Origin },
    #[error("{key} is still referenced by {}", list(.by))]
    InUse { key: ResourceKey, by: Vec<Referrer> },
}

fn list(by: &[Referrer]) -> String {
    by.iter()
        .map(Referrer::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The resources in force, ordered by key (kind, namespace, name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSet {
    entries: BTreeMap<ResourceKey, Stored>,
    revision: u64,
}

/// The set a change would produce: the current entries with `upserts` laid over them and `removed`
/// taken out. Checks read through it, so nothing is copied until the change is adopted.
struct Overlay<'a> {
    base: &'a BTreeMap<ResourceKey, Stored>,
    upserts: BTreeMap<ResourceKey, (&'a Parsed, Origin)>,
    removed: BTreeSet<ResourceKey>,
}

impl<'a> Overlay<'a> {
    fn new(base: &'a BTreeMap<ResourceKey, Stored>) -> Overlay<'a> {
        Overlay {
            base,
            upserts: BTreeMap::new(),
            removed: BTreeSet::new(),
        }
    }

    fn get(&self, key: &ResourceKey) -> Option<(&Resource, &Origin)> {
        if let Some((p, origin)) = self.upserts.get(key) {
            return Some((&p.resource, origin));
        }
        if self.removed.contains(key) {
            return None;
        }
        self.base.get(key).map(|s| (&s.resource, &s.origin))
    }

    /// Every resource of the resulting set, each once.
    fn iter(&self) -> impl Iterator<Item = (&ResourceKey, &Resource, &Origin)> + '_ {
        let kept = self
            .base
            .iter()
            .filter(|(k, _)| !self.removed.contains(*k) && !self.upserts.contains_key(*k))
            .map(|(k, s)| (k, &s.resource, &s.origin));
        let new = self.upserts.iter().map(|(k, (p, o))| (k, &p.resource, o));
        kept.chain(new)
    }

    /// What adopting the overlay changes, in key order, deletions included.
    fn changes(&self) -> Vec<Change> {
        let mut changes: Vec<Change> = self
            .upserts
            .iter()
            .map(|(key, (p, _))| {
                let old = self.base.get(key).map(|s| &s.resource);
                change(key, old, Some(&p.resource))
            })
            .collect();
        for key in &self.removed {
            if let Some(old) = self.base.get(key) {
                changes.push(change(key, Some(&old.resource), None));
            }
        }
        changes.sort_by(|a, b| a.key.cmp(&b.key));
        changes
    }
}

fn change(key: &ResourceKey, old: Option<&Resource>, new: Option<&Resource>) -> Change {
    let action = match (old, new) {
        (None, _) => ChangeAction::Created,
        (Some(_), None) => ChangeAction::Deleted,
        (Some(a), Some(b)) if a == b => ChangeAction::Unchanged,
        (Some(_), Some(_)) => ChangeAction::Configured,
    };
    let diff = match action {
        ChangeAction::Unchanged => String::new(),
        _ => super::diff::diff(old, new),
    };
    Change {
        key: key.clone(),
        action,
        diff,
    }
}

impl ResourceSet {
    pub fn new() -> ResourceSet {
        ResourceSet::default()
    }

    /// A set as it was saved. The entries were checked when they were adopted, so they are not checked
    /// again here: a rule tightened since then must not stop a control plane from starting.
    pub fn restore(entries: impl IntoIterator<Item = Stored>, revision: u64) -> ResourceSet {
        let entries = entries.into_iter().map(|s| (s.resource.key(), s)).collect();
        ResourceSet { entries, revision }
    }

    /// Counts adopted changes: bumped by every call that changed something, never by a no-op.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Stored> {
        self.entries.values()
    }

    pub fn stored(&self, key: &ResourceKey) -> Option<&Stored> {
        self.entries.get(key)
    }

    /// Resources of `kind`, optionally only in `namespace`, optionally only named `name`.
    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: Option<&str>) -> Vec<&Resource> {
        self.entries
            .iter()
            .filter(|(k, _)| k.kind == kind)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .filter(|(k, _)| name.is_none_or(|n| k.name == n))
            .map(|(_, s)| &s.resource)
            .collect()
    }

    /// What [`ResourceSet::apply`] would do: one change per distinct incoming document (unchanged ones
    /// included), or every problem.
    pub fn check_new(&self, incoming: &[Parsed]) -> Result<Vec<Change>, Vec<YamlError>> {
        Ok(self.stage_apply(incoming)?.changes())
    }

    /// Creates or replaces each incoming document's resource, owned by the API. Refused as a whole if
    /// any document is bad, would leave a dangling reference, or names a resource a watched file owns.
    pub fn apply(&mut self, incoming: &[Parsed]) -> Result<Vec<Change>, Vec<YamlError>> {
        let staged = self.stage_apply(incoming)?;
        let changes = staged.changes();
        let upserts = owned_upserts(staged);
        self.adopt(upserts, BTreeSet::new(), &changes);
        Ok(changes)
    }

    /// What [`ResourceSet::replace_source`] would do, deletions included.
    pub fn check_replace_source(
        &self,
        origin_prefix: &str,
        docs: &[Parsed],
    ) -> Result<Vec<Change>, Vec<YamlError>> {
        Ok(self.stage_replace(origin_prefix, docs)?.changes())
    }

    /// Makes `docs` the whole content of a watched directory: every resource from a file whose name
    /// starts with `origin_prefix` that is not among `docs` is removed, and each of `docs` is created or
    /// replaced with its file and line as origin. All or nothing, like [`ResourceSet::apply`]; a
    /// document naming a resource the API or another directory owns is refused.
    pub fn replace_source(
        &mut self,
        origin_prefix: &str,
        docs: &[Parsed],
    ) -> Result<Vec<Change>, Vec<YamlError>> {
        let staged = self.stage_replace(origin_prefix, docs)?;
        let changes = staged.changes();
        let removed = staged.removed.clone();
        let upserts = owned_upserts(staged);
        self.adopt(upserts, removed, &changes);
        Ok(changes)
    }

    /// What [`ResourceSet::remove`] would do.
    pub fn check_remove(&self, key: &ResourceKey) -> Result<Change, RemoveError> {
        let stored = self
            .entries
            .get(key)
            .ok_or_else(|| RemoveError::NotFound(key.clone()))?;
        if let Origin::File { .. } = stored.origin {
            return Err(RemoveError::OwnedByFile {
                key: key.clone(),
                origin: stored.origin.clone(),
            });
        }
        let by = self.referrers(key);
        if !by.is_empty() {
            return Err(RemoveError::InUse {
                key: key.clone(),
                by,
            });
        }
        Ok(change(key, Some(&stored.resource), None))
    }

    /// Removes a resource applied through the API; refused while a route still refers to it.
    pub fn remove(&mut self, key: &ResourceKey) -> Result<Change, RemoveError> {
        let change = self.check_remove(key)?;
        self.entries.remove(key);
        self.revision += 1;
        Ok(change)
    }

    /// Routes that refer to the Service `key` (none for other kinds).
    fn referrers(&self, key: &ResourceKey) -> Vec<Referrer> {
        if key.kind != Kind::Service {
            return Vec::new();
        }
        self.entries
            .iter()
            .flat_map(|(route_key, s)| {
                refs::references(&s.resource)
                    .into_iter()
                    .filter(|r| r.service == *key)
                    .map(|r| Referrer {
                        key: route_key.clone(),
                        origin: s.origin.clone(),
                        field: r.name_field(),
                    })
            })
            .collect()
    }

    fn stage_apply<'a>(&'a self, incoming: &'a [Parsed]) -> Result<Overlay<'a>, Vec<YamlError>> {
        let mut errors = Vec::new();
        let mut overlay = Overlay::new(&self.entries);
        for p in distinct(incoming, &mut errors) {
            let key = p.resource.key();
            if let Some(Stored {
                origin: owner @ Origin::File { .. },
                ..
            }) = self.entries.get(&key)
            {
                let reason = format!("{key} comes from the watched file {owner}; change it there");
                errors.push(p.error("metadata.name", reason));
                continue;
            }
            overlay.upserts.insert(key, (p, Origin::Api));
        }
        self.finish(overlay, errors)
    }

    fn stage_replace<'a>(
        &'a self,
        prefix: &str,
        docs: &'a [Parsed],
    ) -> Result<Overlay<'a>, Vec<YamlError>> {
        let mut errors = Vec::new();
        let mut overlay = Overlay::new(&self.entries);
        overlay.removed = self
            .entries
            .iter()
            .filter(|(_, s)| owned_by(&s.origin, prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for p in distinct(docs, &mut errors) {
            let key = p.resource.key();
            if !p.file.starts_with(prefix) {
                let reason = format!("the file is not under {prefix}, the source being replaced");
                errors.push(p.error("", reason));
                continue;
            }
            match self.entries.get(&key) {
                Some(s) if !owned_by(&s.origin, prefix) => {
                    let owner = match &s.origin {
                        Origin::Api => "applied through the API; delete it there first".to_string(),
                        file => format!("also defined at {file}"),
                    };
                    errors.push(p.error("metadata.name", format!("{key} is {owner}")));
                    continue;
                }
                _ => {}
            }
            overlay.removed.remove(&key);
            let origin = Origin::File {
                file: p.file.clone(),
                line: p.line,
            };
            overlay.upserts.insert(key, (p, origin));
        }
        self.finish(overlay, errors)
    }

    /// The checks every change shares; `errors` holds what staging already found.
    fn finish<'a>(
        &self,
        overlay: Overlay<'a>,
        mut errors: Vec<YamlError>,
    ) -> Result<Overlay<'a>, Vec<YamlError>> {
        for (p, _) in overlay.upserts.values() {
            errors.extend(p.validate());
        }
        errors.extend(dangling_errors(&overlay));
        errors.extend(mesh_config_errors(&overlay));
        if errors.is_empty() {
            Ok(overlay)
        } else {
            Err(errors)
        }
    }

    fn adopt(
        &mut self,
        upserts: Vec<(ResourceKey, Stored)>,
        removed: BTreeSet<ResourceKey>,
        changes: &[Change],
    ) {
        for key in &removed {
            self.entries.remove(key);
        }
        self.entries.extend(upserts);
        if changes.iter().any(|c| c.action != ChangeAction::Unchanged) {
            self.revision += 1;
        }
    }
}

fn owned_by(origin: &Origin, prefix: &str) -> bool {
    matches!(origin, Origin::File { file, .. } if file.starts_with(prefix))
}

fn owned_upserts(overlay: Overlay<'_>) -> Vec<(ResourceKey, Stored)> {
    overlay
        .upserts
        .into_iter()
        .map(|(key, (p, origin))| {
            let stored = Stored {
                resource: p.resource.clone(),
                origin,
            };
            (key, stored)
        })
        .collect()
}

/// The documents of a change, each key once; a second document with the same key is an error that
/// names both places.
fn distinct<'a>(incoming: &'a [Parsed], errors: &mut Vec<YamlError>) -> Vec<&'a Parsed> {
    let mut first: HashMap<ResourceKey, &Parsed> = HashMap::new();
    let mut out = Vec::new();
    for p in incoming {
        let key = p.resource.key();
        match first.get(&key) {
            Some(earlier) => {
                let reason = format!(
                    "duplicate name: {key} is also defined at {}",
                    earlier.location()
                );
                errors.push(p.error("metadata.name", reason));
            }
            None => {
                first.insert(key, p);
                out.push(p);
            }
        }
    }
    out
}

/// Every reference in the resulting set must resolve. A broken one is reported where it can be fixed:
/// in the incoming route that makes it, in the incoming Service that drops the port, or (once per
/// Service, naming every user) where a Service being removed was defined.
fn dangling_errors(overlay: &Overlay<'_>) -> Vec<YamlError> {
    let lookup = |key: &ResourceKey| overlay.get(key).map(|(r, _)| r);
    let mut errors = Vec::new();
    let mut users_of_removed: BTreeMap<ResourceKey, Vec<String>> = BTreeMap::new();
    for (route, resource, origin) in overlay.iter() {
        for d in refs::dangling(resource, lookup) {
            let used = format!("{route} ({origin}) at {}", d.field);
            if let Some((p, _)) = overlay.upserts.get(route) {
                errors.push(p.error(&d.field, d.reason()));
            } else if let (Broken::NoPort(port), Some((p, _))) =
                (d.broken, overlay.upserts.get(&d.service))
            {
                errors.push(p.error("spec.ports", format!("port {port} is still used by {used}")));
            } else if overlay.removed.contains(&d.service) {
                users_of_removed.entry(d.service).or_default().push(used);
            } else {
                // Broken before this change (a state saved by an older release): name the route.
                errors.push(at_origin(
                    origin,
                    format!("{route} at {}: {}", d.field, d.reason()),
                ));
            }
        }
    }
    for (service, users) in users_of_removed {
        let reason = format!(
            "{service} would be removed, but {} still refer to it",
            users.join(", ")
        );
        if let Some(former) = overlay.base.get(&service) {
            errors.push(at_origin(&former.origin, reason));
        }
    }
    errors
}

/// An error about a resource in force, placed where it came from.
fn at_origin(origin: &Origin, reason: String) -> YamlError {
    let (file, line) = match origin {
        Origin::File { file, line } => (file.clone(), Some(*line)),
        Origin::Api => ("api".to_string(), None),
    };
    YamlError {
        file,
        line,
        column: None,
        field: String::new(),
        reason,
    }
}

/// A mesh has one MeshConfig: each incoming one that would make a second is refused, naming the other.
fn mesh_config_errors(overlay: &Overlay<'_>) -> Vec<YamlError> {
    let meshes: Vec<(&ResourceKey, &Origin)> = overlay
        .iter()
        .filter(|(k, _, _)| k.kind == Kind::MeshConfig)
        .map(|(k, _, o)| (k, o))
        .collect();
    if meshes.len() < 2 {
        return Vec::new();
    }
    overlay
        .upserts
        .iter()
        .filter(|(k, _)| k.kind == Kind::MeshConfig)
        .map(|(key, (p, _))| {
            let others: Vec<String> = meshes
                .iter()
                .filter(|(k, _)| *k != key)
                .map(|(k, o)| format!("{k} ({o})"))
                .collect();
            let reason = format!(
                "a mesh has one MeshConfig; {} exists too",
                others.join(", ")
            );
            p.error("metadata.name", reason)
        })
        .collect()
}

#[cfg(test)]
mod tests;

//! The state directory as a [`Backend`]: each collection is the file it always was (`resources.json`,
//! `tokens.json`, ...), a checksummed JSON state file written atomically (see [`crate::persist`]), so
//! a state directory written before this backend existed is read as it is, and one written by it is
//! read by older builds.
//!
//! A keyed collection (join tokens) is one JSON object in its file, key to value. Versions are kept
//! in memory: the state directory has one writer (this process), so a version only has to tell this
//! process's own readers and writers apart; a record is at version 1.. from the first time it is seen.

use super::{Backend, Collection, Conflict, Expect, Listing, Record, WriteError, WHOLE};
use crate::persist::{self, StateError};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

type Entries = BTreeMap<String, serde_json::Value>;

#[derive(Debug)]
pub struct DirBackend {
    root: PathBuf,
    /// Collections kept at a path other than `root/<file>` (a component opened on one file).
    files: BTreeMap<Collection, PathBuf>,
    /// One per collection, held across a check and its write so a compare-and-swap is atomic within
    /// the process; writes to different files never wait for each other's fsync.
    writes: [Mutex<()>; Collection::ALL.len()],
    versions: Mutex<Versions>,
    changes: tokio::sync::broadcast::Sender<Collection>,
}

#[derive(Debug, Default)]
struct Versions {
    by_key: HashMap<(Collection, String), u64>,
    last: u64,
}

impl Versions {
    fn seen(&mut self, collection: Collection, key: &str) -> u64 {
        let last = &mut self.last;
        *self
            .by_key
            .entry((collection, key.to_string()))
            .or_insert_with(|| {
                *last += 1;
                *last
            })
    }

    fn bump(&mut self, collection: Collection, key: &str) -> u64 {
        self.last += 1;
        self.by_key.insert((collection, key.to_string()), self.last);
        self.last
    }
}

impl DirBackend {
    /// The state directory `root`, each collection in its usual file.
    pub fn new(root: impl Into<PathBuf>) -> DirBackend {
        DirBackend {
            root: root.into(),
            files: BTreeMap::new(),
            writes: Default::default(),
            versions: Mutex::default(),
            changes: tokio::sync::broadcast::channel(1).0,
        }
    }

    /// One collection kept at `path` (the file a component was opened on).
    pub fn file(collection: Collection, path: PathBuf) -> DirBackend {
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut b = DirBackend::new(root);
        b.files.insert(collection, path);
        b
    }

    pub fn path(&self, collection: Collection) -> PathBuf {
        self.files
            .get(&collection)
            .cloned()
            .unwrap_or_else(|| self.root.join(collection.file()))
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, Versions> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_lock(&self, collection: Collection) -> std::sync::MutexGuard<'_, ()> {
        let i = Collection::ALL
            .iter()
            .position(|c| *c == collection)
            .unwrap_or(0);
        self.writes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entries(&self, collection: Collection) -> Result<Entries, StateError> {
        Ok(persist::read_json(&self.path(collection))?.unwrap_or_default())
    }

    /// The value under `key` as stored, if any.
    fn read(&self, collection: Collection, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        if collection.keyed() {
            Ok(self.entries(collection)?.get(key).map(persist::to_payload))
        } else if key == WHOLE {
            persist::read_payload(&self.path(collection))
        } else {
            Ok(None)
        }
    }

    fn exists(&self, collection: Collection, key: &str) -> Result<bool, StateError> {
        if collection.keyed() {
            Ok(self.entries(collection)?.contains_key(key))
        } else {
            Ok(key == WHOLE && self.path(collection).exists())
        }
    }

    /// Checks `expect` against what is stored; the caller holds the collection's write lock.
    fn check(&self, collection: Collection, key: &str, expect: Expect) -> Result<(), WriteError> {
        let current = if self.exists(collection, key)? {
            Some(self.versions().seen(collection, key))
        } else {
            None
        };
        let holds = match expect {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Version(want) => current == Some(want),
        };
        if holds {
            Ok(())
        } else {
            Err(Conflict {
                collection,
                key: key.to_string(),
                expected: expect,
            }
            .into())
        }
    }

    fn write(
        &self,
        collection: Collection,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StateError> {
        let path = self.path(collection);
        if !collection.keyed() {
            return match value {
                Some(bytes) => persist::write_payload(&path, bytes, collection.mode()),
                None => match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(source) => Err(StateError::Io {
                        action: "remove",
                        path,
                        source,
                    }),
                },
            };
        }
        let mut entries = self.entries(collection)?;
        match value {
            Some(bytes) => {
                let v = serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
                    path: path.clone(),
                    reason: format!("a new entry for {key} is not JSON: {e}"),
                })?;
                entries.insert(key.to_string(), v);
            }
            None => {
                entries.remove(key);
            }
        }
        persist::write_json(&path, &entries, collection.mode())
    }
}

impl Backend for DirBackend {
    fn get(&self, collection: Collection, key: &str) -> Result<Option<Record>, StateError> {
        let _w = self.write_lock(collection);
        Ok(self.read(collection, key)?.map(|value| Record {
            value,
            version: self.versions().seen(collection, key),
        }))
    }

    fn list(&self, collection: Collection) -> Result<Listing, StateError> {
        let _w = self.write_lock(collection);
        let mut records = BTreeMap::new();
        if collection.keyed() {
            for (key, value) in self.entries(collection)? {
                let version = self.versions().seen(collection, &key);
                let value = persist::to_payload(&value);
                records.insert(key, Record { value, version });
            }
        } else if let Some(value) = self.read(collection, WHOLE)? {
            let version = self.versions().seen(collection, WHOLE);
            records.insert(WHOLE.to_string(), Record { value, version });
        }
        Ok(Listing {
            records,
            revision: self.versions().last,
        })
    }

    fn put(
        &self,
        collection: Collection,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<u64, WriteError> {
        let _w = self.write_lock(collection);
        self.check(collection, key, expect)?;
        self.write(collection, key, Some(value))?;
        Ok(self.versions().bump(collection, key))
    }

    fn delete(&self, collection: Collection, key: &str, expect: Expect) -> Result<(), WriteError> {
        let _w = self.write_lock(collection);
        self.check(collection, key, expect)?;
        self.write(collection, key, None)?;
        self.versions()
            .by_key
            .remove(&(collection, key.to_string()));
        Ok(())
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Collection> {
        // One writer: nobody else ever changes the directory, so nothing is ever sent.
        self.changes.subscribe()
    }

    fn describe(&self) -> String {
        format!("state directory {}", self.root.display())
    }

    fn shared(&self) -> bool {
        false
    }
}

//! Service virtual IPs: one stable IPv4 address per `Service`, from a configured range.
//!
//! A service keeps its address for as long as it exists (and across restarts: the table is persisted in
//! the state directory), so clients that cache a resolved address keep working while endpoints come and
//! go. A new service's first choice is a hash of its `namespace/name`, so deleting and re-creating a
//! service usually gives it the same address back; collisions probe forward.
//!
//! Replicas sharing etcd agree on the table ([`Vips::agreed`]): a service's address is claimed in
//! one transaction creating `<prefix>vips/svc/<namespace>/<name>` (its address) and
//! `<prefix>vips/addr/<address>` (its service), both absent, so no service has two addresses and
//! no address two services; a replica that loses the race adopts the winner's address or probes on.
//! Every replica reads the table again when another changes it ([`Vips::reload`]).

use crate::backend::etcd::EtcdBackend;
use crate::backend::{self, dir::DirBackend, Collection, SharedBackend};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// An IPv4 CIDR block. (Twenty lines do not justify a dependency.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Range {
    base: u32,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not an IPv4 range such as 198.19.0.0/16 (prefix 8 to 30)")]
pub struct BadRange(String);

impl FromStr for Ipv4Range {
    type Err = BadRange;
    fn from_str(s: &str) -> Result<Self, BadRange> {
        let bad = || BadRange(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Ipv4Range {
            base: u32::from(addr) & mask,
            prefix,
        })
    }
}

impl std::fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl Ipv4Range {
    /// Usable host addresses (network and broadcast addresses left out).
    fn hosts(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }
    fn host(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1 + i)
    }
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(a) & mask == self.base
    }
}

/// The address table: `namespace/name` → address.
#[derive(Debug)]
pub struct Vips {
    range: Ipv4Range,
    table: BTreeMap<String, Ipv4Addr>,
    store: Option<SharedBackend>,
    /// The etcd the table is agreed in, and the services this replica last synced.
    agreed: Option<(Arc<EtcdBackend>, BTreeSet<String>)>,
}

impl Vips {
    /// Loads the persisted table (entries outside `range` are dropped: the range was changed).
    pub fn load(range: Ipv4Range, path: Option<PathBuf>) -> Vips {
        let store = path.map(|p| Arc::new(DirBackend::file(Collection::Vips, p)) as SharedBackend);
        Vips::load_in(range, store)
    }

    /// [`Vips::load`] from a storage backend (`None`: kept in memory only).
    pub fn load_in(range: Ipv4Range, store: Option<SharedBackend>) -> Vips {
        let mut table: BTreeMap<String, Ipv4Addr> = match &store {
            Some(b) => match backend::get_json(&**b, Collection::Vips) {
                Ok(t) => t.map(|(t, _)| t).unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(store = %b.describe(), error = %e, "service address table unreadable; addresses will be reassigned");
                    BTreeMap::new()
                }
            },
            None => BTreeMap::new(),
        };
        table.retain(|_, a| range.contains(*a));
        Vips {
            range,
            table,
            store,
            agreed: None,
        }
    }

    /// The table agreed with every replica on `etcd` (see the module doc).
    pub fn agreed(range: Ipv4Range, etcd: Arc<EtcdBackend>) -> Vips {
        let mut vips = Vips {
            range,
            table: BTreeMap::new(),
            store: None,
            agreed: Some((etcd, BTreeSet::new())),
        };
        vips.reload();
        vips
    }

    /// Reads the agreed table again (another replica claimed or freed an address); true if it
    /// changed. Nothing to do for a table of this replica's own.
    pub fn reload(&mut self) -> bool {
        let Some((etcd, _)) = &self.agreed else {
            return false;
        };
        let listed = match etcd.list_keys(SVC) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the service address table from etcd; keeping what is held");
                return false;
            }
        };
        let table: BTreeMap<String, Ipv4Addr> = listed
            .into_iter()
            .filter_map(|(k, v, _)| {
                let a: Ipv4Addr = std::str::from_utf8(&v).ok()?.parse().ok()?;
                self.range.contains(a).then_some((k, a))
            })
            .collect();
        let changed = table != self.table;
        self.table = table;
        changed
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.table.get(&key(namespace, name)).copied()
    }

    /// Gives every service in `services` (as `(namespace, name)`) an address and frees those of services
    /// that are gone. Persists the table when it changed.
    pub fn sync<'a>(&mut self, services: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let wanted: BTreeSet<String> = services.into_iter().map(|(n, s)| key(n, s)).collect();
        if self.agreed.is_some() {
            return self.sync_agreed(wanted);
        }
        let before = self.table.len();
        self.table.retain(|k, _| wanted.contains(k));
        let mut changed = self.table.len() != before;
        let mut used: BTreeSet<Ipv4Addr> = self.table.values().copied().collect();
        for k in wanted {
            if self.table.contains_key(&k) {
                continue;
            }
            match self.free_address(&k, &used) {
                Some(a) => {
                    tracing::info!(service = %k, vip = %a, "service address assigned");
                    used.insert(a);
                    self.table.insert(k, a);
                    changed = true;
                }
                None => {
                    tracing::error!(service = %k, range = %self.range, "no free service address left in the range")
                }
            }
        }
        if changed {
            self.persist();
        }
    }

    fn free_address(&self, key: &str, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let n = self.range.hosts();
        let start = first_choice(key, n);
        (0..n)
            .map(|i| self.range.host((start + i) % n))
            .find(|a| !used.contains(a))
    }

    /// [`Vips::sync`] through etcd: frees the addresses of services this replica saw go (not those
    /// it never knew: another replica may be ahead), then claims one for each service without.
    fn sync_agreed(&mut self, wanted: BTreeSet<String>) {
        let Some((etcd, known)) = self.agreed.take() else {
            return;
        };
        for gone in known.difference(&wanted) {
            if let Some(a) = self.table.remove(gone) {
                let subs = [format!("{SVC}{gone}"), format!("{ADDR}{a}")];
                match etcd.delete_keys_if(&subs, a.to_string().as_bytes()) {
                    Ok(_) => tracing::info!(service = %gone, vip = %a, "service address freed"),
                    Err(e) => {
                        tracing::warn!(service = %gone, error = %e, "cannot free the service address in etcd")
                    }
                }
            }
        }
        for k in &wanted {
            if !self.table.contains_key(k) {
                if let Some(a) = self.claim(&etcd, k) {
                    self.table.insert(k.clone(), a);
                }
            }
        }
        self.agreed = Some((etcd, wanted));
    }

    /// The address of service `k`: the one claimed already, else the first free one on its probe
    /// sequence, claimed with a compare-and-swap.
    fn claim(&self, etcd: &EtcdBackend, k: &str) -> Option<Ipv4Addr> {
        let n = self.range.hosts();
        let start = first_choice(k, n);
        let value = |a: Ipv4Addr| a.to_string().into_bytes();
        let held = |etcd: &EtcdBackend| -> Result<Option<Ipv4Addr>, crate::persist::StateError> {
            Ok(etcd
                .get_key(&format!("{SVC}{k}"))?
                .and_then(|(v, _)| std::str::from_utf8(&v).ok()?.parse().ok()))
        };
        let used: BTreeSet<Ipv4Addr> = self.table.values().copied().collect();
        let outcome = (|| {
            for i in 0..n {
                if let Some(a) = held(etcd)? {
                    return Ok(Some(a));
                }
                let a = self.range.host((start + i) % n);
                if used.contains(&a) {
                    continue;
                }
                let pair = vec![
                    (format!("{SVC}{k}"), value(a)),
                    (format!("{ADDR}{a}"), k.as_bytes().to_vec()),
                ];
                if etcd.create_keys(pair)? {
                    tracing::info!(service = %k, vip = %a, "service address assigned");
                    return Ok(Some(a));
                }
            }
            Ok(None)
        })();
        match outcome {
            Ok(Some(a)) => Some(a),
            Ok(None) => {
                tracing::error!(service = %k, range = %self.range, "no free service address left in the range");
                None
            }
            Err::<_, crate::persist::StateError>(e) => {
                tracing::warn!(service = %k, error = %e, "cannot claim a service address in etcd; trying again at the next change");
                None
            }
        }
    }

    fn persist(&self) {
        if let Some(b) = &self.store {
            if let Err(e) = backend::put_json(&**b, Collection::Vips, &self.table) {
                tracing::warn!(store = %b.describe(), error = %e, "cannot persist the service address table");
            }
        }
    }
}

/// Writes a state directory's address table into `etcd` in the agreed layout (`weft-control
/// migrate`), so every service keeps its address; returns how many were written.
pub fn seed_agreed(
    etcd: &EtcdBackend,
    table: &BTreeMap<String, Ipv4Addr>,
) -> Result<usize, crate::persist::StateError> {
    let mut written = 0;
    for (k, a) in table {
        let pair = vec![
            (format!("{SVC}{k}"), a.to_string().into_bytes()),
            (format!("{ADDR}{a}"), k.as_bytes().to_vec()),
        ];
        if etcd.create_keys(pair)? {
            written += 1;
        }
    }
    Ok(written)
}

/// Where a service's address is kept on etcd, and whose an address is.
const SVC: &str = "vips/svc/";
const ADDR: &str = "vips/addr/";

/// Where the probe sequence of `key` starts among `n` hosts.
fn first_choice(key: &str, n: u32) -> u32 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % u64::from(n)) as u32
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        let r: Ipv4Range = "198.19.7.9/16".parse().unwrap();
        assert_eq!(r.to_string(), "198.19.0.0/16");
        assert!(r.contains("198.19.255.1".parse().unwrap()));
        assert!(!r.contains("198.18.0.1".parse().unwrap()));
        for bad in [
            "198.19.0.0",
            "198.19.0.0/31",
            "x/16",
            "198.19.0.0/7",
            "::1/64",
        ] {
            assert!(bad.parse::<Ipv4Range>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_stable_unique_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("weft-vips-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vips.json");
        let _ = std::fs::remove_file(&path);
        let range: Ipv4Range = "198.19.0.0/29".parse().unwrap(); // 6 hosts
        let mut v = Vips::load(range, Some(path.clone()));
        let names = ["a", "b", "c", "d", "e", "f"];
        v.sync(names.iter().map(|n| ("default", *n)));
        let all: BTreeSet<_> = names.iter().map(|n| v.get("default", n).unwrap()).collect();
        assert_eq!(all.len(), 6, "every service has its own address");
        let a = v.get("default", "a").unwrap();
        // Another service goes; the rest keep their addresses; a newcomer takes the freed one.
        v.sync(
            ["a", "b", "c", "d", "e", "g"]
                .iter()
                .map(|n| ("default", *n)),
        );
        assert_eq!(v.get("default", "a"), Some(a));
        assert_eq!(v.get("default", "f"), None);
        assert!(v.get("default", "g").is_some());
        // Full range: a seventh service gets nothing rather than a duplicate.
        v.sync(
            ["a", "b", "c", "d", "e", "g", "h"]
                .iter()
                .map(|n| ("default", *n)),
        );
        let assigned = ["a", "b", "c", "d", "e", "g", "h"]
            .iter()
            .filter(|n| v.get("default", n).is_some())
            .count();
        assert_eq!(assigned, 6);
        let reloaded = Vips::load(range, Some(path.clone()));
        assert_eq!(reloaded.get("default", "a"), Some(a));
        // A changed range drops addresses outside it.
        let other = Vips::load("10.0.0.0/24".parse().unwrap(), Some(path));
        assert_eq!(other.get("default", "a"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

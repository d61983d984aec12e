//! The control planes a proxy may talk to (`control.address`: one or a list, names resolved at each
//! attempt) and which one it uses. The join, the config stream and certificate renewal all connect
//! through here, so they use one list, one order and one failover.
//!
//! **Order (spread).** Each round resolves every entry and orders the addresses by rendezvous hashing:
//! highest SHA-256 of (this workload's identity and name, the address) first. Different workloads get
//! independent orders, so a fleet's first picks are spread evenly over the replicas, and when one
//! replica goes its proxies spread over the others (rather than all moving to the next in the list).
//! The order is a pure function of who the proxy is, so a restarted proxy goes back to the same replica,
//! and adding a replica moves only the proxies whose first pick it becomes.
//!
//! **Failover.** A round starts at the address in use; once that one is lost (refused, reset, TLS
//! failure, GOAWAY, keep-alive PINGs unanswered), at the one after it in this proxy's order. Addresses
//! of one round are tried one after another without a pause; callers back off (with jitter) only
//! between rounds that reached nobody. Every address must present the control plane's identity
//! chained to the pinned CA, as with one address.

use super::conn::{self, ConnError};
use super::metrics::Metrics;
use crate::config::ControlAddress;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long the system resolver may take for one name, per attempt.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ControlPlanes {
    entries: Vec<ControlAddress>,
    /// Who this proxy is, for its own order of the addresses.
    seed: String,
    state: Mutex<InUse>,
    /// Set once the proxy serves; failovers before that (during the join) are only logged.
    metrics: OnceLock<Metrics>,
}

#[derive(Default)]
struct InUse {
    /// The address last connected to.
    current: Option<SocketAddr>,
    /// Why `current` was left, once it was.
    left: Option<String>,
}

impl ControlPlanes {
    /// `entries` in config order; `seed` names the workload (its identity and name).
    pub fn new(entries: Vec<ControlAddress>, seed: String) -> Arc<ControlPlanes> {
        Arc::new(ControlPlanes {
            entries,
            seed,
            state: Mutex::new(InUse::default()),
            metrics: OnceLock::new(),
        })
    }

    pub fn attach_metrics(&self, metrics: Metrics) {
        let _ = self.metrics.set(metrics);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InUse> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An HTTP/2 connection to the first control plane of this round that completes TCP, TLS (with
    /// `tls`, which checks its identity) and the HTTP/2 handshake.
    pub async fn connect(
        &self,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<(conn::Conn, SocketAddr), ConnError> {
        self.first(|addr| conn::connect(addr, tls.clone())).await
    }

    /// An HTTP/2 connection for one request (a join or a renewal): the same round, but the address in
    /// use stays the config stream's to change. A renewal that finds the stream's control plane busy
    /// or gone tries the next one without counting a failover; only losing the stream moves it.
    pub async fn connect_for_request(
        &self,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<(conn::Conn, SocketAddr), ConnError> {
        self.try_round(|addr| conn::connect(addr, tls.clone()), false)
            .await
    }

    /// Runs `attempt` on each address of one round, in order, until one succeeds; that one becomes
    /// the address in use. With one address its error is returned as is.
    pub async fn first<T, F, Fut>(&self, attempt: F) -> Result<(T, SocketAddr), ConnError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = Result<T, ConnError>>,
    {
        self.try_round(attempt, true).await
    }

    /// One round of `attempt`s; with `track`, the one that answers becomes the address in use and
    /// those that did not are marked left (without, the one that answers is adopted only when no
    /// address is in use yet).
    async fn try_round<T, F, Fut>(
        &self,
        mut attempt: F,
        track: bool,
    ) -> Result<(T, SocketAddr), ConnError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = Result<T, ConnError>>,
    {
        let addrs = self.round().await?;
        let mut errors = Vec::new();
        for addr in addrs {
            match attempt(addr).await {
                Ok(t) => {
                    // A join (no address in use yet) still picks where the stream starts.
                    if track || self.lock().current.is_none() {
                        self.connected(addr);
                    }
                    return Ok((t, addr));
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "control plane did not answer; trying the next address");
                    if track {
                        self.left(addr, &e.to_string());
                    }
                    errors.push(e);
                }
            }
        }
        Err(summary(errors))
    }

    /// The connection to `addr` was lost or failed after it was made: the next round starts after it.
    pub fn left(&self, addr: SocketAddr, reason: &str) {
        let mut st = self.lock();
        if st.current == Some(addr) {
            st.left = Some(reason.to_string());
        }
    }

    /// `addr` answered: it is now the one in use; moving to it from another is a failover.
    fn connected(&self, addr: SocketAddr) {
        let mut st = self.lock();
        if let Some(from) = st.current.filter(|c| *c != addr) {
            let reason = st
                .left
                .clone()
                .unwrap_or_else(|| "no longer among the resolved addresses".into());
            tracing::warn!(%from, to = %addr, %reason, "control plane failover");
            if let Some(m) = self.metrics.get() {
                m.failover();
            }
        }
        st.current = Some(addr);
        st.left = None;
    }

    /// This round's addresses, in the order to try them.
    async fn round(&self) -> Result<Vec<SocketAddr>, ConnError> {
        let resolved = futures_util::future::join_all(self.entries.iter().map(resolve)).await;
        let mut addrs = Vec::new();
        let mut errors = Vec::new();
        for r in resolved {
            match r {
                Ok(list) => addrs.extend(list),
                Err(e) => errors.push(e),
            }
        }
        if addrs.is_empty() {
            return Err(summary(errors));
        }
        for e in &errors {
            tracing::warn!(error = %e, "a control-plane name did not resolve; using the others");
        }
        let st = self.lock();
        Ok(order(addrs, &self.seed, st.current, st.left.is_some()))
    }
}

/// What a workload's order of the control planes is made from: its identity and name.
pub fn seed(namespace: &str, service_account: &str, name: &str) -> String {
    format!("{namespace}/{service_account} {name}")
}

/// `addrs` without repeats, highest rendezvous weight for `seed` first, rotated to start at
/// `current` (or, once it was `left`, at the address after it). Public so that tests can choose a
/// workload whose first pick is the address they mean.
pub fn order(
    mut addrs: Vec<SocketAddr>,
    seed: &str,
    current: Option<SocketAddr>,
    left: bool,
) -> Vec<SocketAddr> {
    addrs.sort_unstable();
    addrs.dedup();
    addrs.sort_by_cached_key(|a| std::cmp::Reverse(weight(seed, a)));
    let at = current.and_then(|c| addrs.iter().position(|a| *a == c));
    let start = match at {
        Some(i) if left => i + 1,
        Some(i) => i,
        None => 0,
    };
    let len = addrs.len();
    addrs.rotate_left(start % len);
    addrs
}

fn weight(seed: &str, addr: &SocketAddr) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update([0]);
    h.update(addr.to_string().as_bytes());
    h.finalize().into()
}

async fn resolve(entry: &ControlAddress) -> Result<Vec<SocketAddr>, ConnError> {
    let (host, port) = match entry {
        ControlAddress::Socket(a) => return Ok(vec![*a]),
        ControlAddress::Name { host, port } => (host.as_str(), *port),
    };
    let err = |reason: String| ConnError::Resolve {
        entry: entry.to_string(),
        reason,
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| err(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
        .map_err(|e| err(e.to_string()))?
        .collect::<Vec<_>>();
    if found.is_empty() {
        return Err(err("no addresses".into()));
    }
    Ok(found)
}

/// One round's failure: the only error as it is; else a clock problem (the fix is this machine's
/// clock, whichever replica said so), else every address with its reason.
fn summary(mut errors: Vec<ConnError>) -> ConnError {
    if errors.len() == 1 {
        if let Some(e) = errors.pop() {
            return e;
        }
    }
    if let Some(i) = errors
        .iter()
        .position(|e| matches!(e, ConnError::ClockSkew { .. }))
    {
        return errors.swap_remove(i);
    }
    let tried: Vec<String> = errors.iter().map(ToString::to_string).collect();
    ConnError::NoneAnswered {
        tried: tried.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 15010)))
            .collect()
    }

    #[test]
    fn first_picks_spread_evenly_and_so_do_the_failovers() {
        let list = addrs(3);
        let mut first = [0u32; 3];
        // After the first pick goes, where its proxies go next: [first][next].
        let mut next = [[0u32; 3]; 3];
        let n = 9000;
        for i in 0..n {
            let seed = format!("spiffe://mesh.test/ns/default/sa/web web-{i}");
            let o = order(list.clone(), &seed, None, false);
            let at = |a: SocketAddr| list.iter().position(|x| *x == a).unwrap();
            first[at(o[0])] += 1;
            next[at(o[0])][at(o[1])] += 1;
        }
        for count in first {
            // A fair share is 3000; within 5%.
            assert!((2850..=3150).contains(&count), "{first:?}");
        }
        for (i, row) in next.iter().enumerate() {
            let (others, own) = (row.iter().sum::<u32>() - row[i], row[i]);
            assert_eq!(own, 0);
            for (j, c) in row.iter().enumerate() {
                if i != j {
                    let share = f64::from(*c) / f64::from(others);
                    assert!((0.45..=0.55).contains(&share), "{next:?}");
                }
            }
        }
    }

    #[test]
    fn a_round_starts_at_the_address_in_use_and_after_it_once_it_is_lost() {
        let list = addrs(4);
        let seed = "spiffe://mesh.test/ns/default/sa/web web-1";
        let fresh = order(list.clone(), seed, None, false);
        // The order is the proxy's own, whatever order the addresses come in.
        let mut reversed = list.clone();
        reversed.reverse();
        assert_eq!(order(reversed, seed, None, false), fresh);
        let staying = order(list.clone(), seed, Some(fresh[2]), false);
        assert_eq!(staying[0], fresh[2]);
        let moving = order(list.clone(), seed, Some(fresh[2]), true);
        assert_eq!(moving, vec![fresh[3], fresh[0], fresh[1], fresh[2]]);
        let from_last = order(list.clone(), seed, Some(fresh[3]), true);
        assert_eq!(from_last[0], fresh[0]);
        // Repeats (a name and an address that are the same) are tried once.
        let mut twice = list.clone();
        twice.extend(list);
        assert_eq!(order(twice, seed, None, false), fresh);
    }

    #[tokio::test]
    async fn names_resolve_at_each_round() {
        let planes = ControlPlanes::new(
            vec![
                ControlAddress::Name {
                    host: "localhost".into(),
                    port: 15010,
                },
                ControlAddress::Socket(SocketAddr::from(([10, 0, 0, 1], 15010))),
            ],
            "seed".into(),
        );
        let round = planes.round().await.unwrap();
        assert!(
            round.contains(&SocketAddr::from(([127, 0, 0, 1], 15010))),
            "{round:?}"
        );
        assert!(
            round.contains(&SocketAddr::from(([10, 0, 0, 1], 15010))),
            "{round:?}"
        );
    }

    #[tokio::test]
    async fn a_request_that_moves_on_leaves_the_stream_where_it_is() {
        let list = addrs(2);
        let planes = ControlPlanes::new(
            list.iter().copied().map(ControlAddress::Socket).collect(),
            "spiffe://mesh.test/ns/default/sa/web web-1".into(),
        );
        let fresh = order(list, &planes.seed, None, false);
        let answer = |up: SocketAddr| {
            move |addr: SocketAddr| async move {
                if addr == up {
                    Ok(addr)
                } else {
                    Err(ConnError::Resolve {
                        entry: addr.to_string(),
                        reason: "down".into(),
                    })
                }
            }
        };
        // A join with nothing in use yet picks where the stream starts.
        let (_, joined) = planes.try_round(answer(fresh[1]), false).await.unwrap();
        assert_eq!(planes.lock().current, Some(joined));
        // A renewal that finds that one down moves on, but the stream's address stays.
        let (_, renewed) = planes.try_round(answer(fresh[0]), false).await.unwrap();
        assert_eq!(renewed, fresh[0]);
        assert_eq!(planes.lock().current, Some(fresh[1]));
        assert!(planes.lock().left.is_none());
        // Only the stream moves it.
        let (_, streamed) = planes.first(answer(fresh[0])).await.unwrap();
        assert_eq!(planes.lock().current, Some(streamed));
    }
}

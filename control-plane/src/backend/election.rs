//! Who leads: one replica runs the singletons (the expiry sweep, see [`crate::leader`]).
//!
//! On etcd the leader holds the election key `<prefix>leader`, created if absent on a lease of its
//! own (see `etcd/campaign.rs`); the state directory has one control plane, which always leads.
//! What the leader writes as leader carries a [`LeaderGuard`]: on etcd each such write is one
//! transaction that also compares the election key's create revision with the guard's, so a replica
//! that lost the key (its lease expired while it was cut off) cannot write as leader any more,
//! whatever it still believes.

use super::WriteError;
use tokio::sync::watch;

/// Proof of leadership a leader's write carries: the election key and the revision it was created
/// at (etcd), or nothing to check (the state directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderGuard {
    /// The election key, empty for the state directory.
    pub key: String,
    /// The revision the key was created at by this replica.
    pub revision: i64,
}

impl LeaderGuard {
    /// The state directory's: its single control plane leads.
    pub fn sole() -> LeaderGuard {
        LeaderGuard {
            key: String::new(),
            revision: 0,
        }
    }
}

/// What a replica knows of the election.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leadership {
    /// The leader's replica id, when one is known.
    pub leader: Option<String>,
    /// Set while this replica leads.
    pub guard: Option<LeaderGuard>,
}

impl Leadership {
    pub fn leading(&self) -> bool {
        self.guard.is_some()
    }
}

/// A write made as leader was not made.
#[derive(Debug, thiserror::Error)]
pub enum LedError {
    /// The election key is gone or another replica's: this replica no longer leads.
    #[error("not written: this replica no longer leads ({0} is gone or another replica's)")]
    NotLeader(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl From<crate::persist::StateError> for LedError {
    fn from(e: crate::persist::StateError) -> Self {
        LedError::Write(WriteError::State(e))
    }
}

/// A replica's candidacy: changes of [`Leadership`], and [`Election::resign`] on shutdown.
pub struct Election {
    changes: watch::Receiver<Leadership>,
    /// Ends the candidacy (revokes the lease, so another replica takes over at once) and waits for it.
    resign: Option<Box<dyn FnOnce() + Send>>,
    /// The state directory's fixed answer, held so its receivers never see the channel closed.
    _sole: Option<watch::Sender<Leadership>>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("now", &*self.changes.borrow())
            .finish()
    }
}

impl Election {
    /// The only control plane: it leads from the start and for good.
    pub fn sole(id: &str) -> Election {
        let (tx, changes) = watch::channel(Leadership {
            leader: Some(id.to_string()),
            guard: Some(LeaderGuard::sole()),
        });
        Election {
            changes,
            resign: None,
            _sole: Some(tx),
        }
    }

    pub fn new(changes: watch::Receiver<Leadership>, resign: Box<dyn FnOnce() + Send>) -> Election {
        Election {
            changes,
            resign: Some(resign),
            _sole: None,
        }
    }

    /// Follows the leadership as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.changes.clone()
    }

    /// What is known now.
    pub fn now(&self) -> Leadership {
        self.changes.borrow().clone()
    }

    /// Gives the leadership up (blocking, bounded by the store's call timeout).
    pub fn resign(&mut self) {
        if let Some(f) = self.resign.take() {
            f();
        }
    }
}

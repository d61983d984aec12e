//! Keeps the etcd client's balanced set to the members that can serve.
//!
//! The client balances calls over every member it was given and keeps sending its share to a member
//! that is down (connection refused, or no answer within the call timeout) or cut off from the
//! others (no leader): with one member of three gone, some applies would fail although a quorum is
//! there. A task checks each member on a client of its own every [`CHECK_EVERY`] with a read that
//! needs a leader; a member that fails it leaves the balanced set until it passes again, so calls go
//! to the members that answer. The last member is never taken out: with none left, calls fail with
//! the reason as before.

use etcd_client::{Client, ConnectOptions, GetOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often every member is checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a member has to answer a check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The members as the client was given them, how to connect, a key to read (its value is not
/// used), and what to tell when a member leaves the set (the watch may be on it).
pub struct Members {
    pub urls: Vec<String>,
    pub options: ConnectOptions,
    pub probe: String,
    pub moved: Arc<Notify>,
}

impl Members {
    /// Starts the checks on the client's runtime.
    pub fn watch(self, runtime: &tokio::runtime::Runtime, balanced: Client) {
        if self.urls.len() > 1 {
            runtime.spawn(self.run(balanced));
        }
    }

    async fn run(self, balanced: Client) {
        let Members {
            urls,
            options,
            probe,
            moved,
        } = self;
        let options = options
            .with_require_leader(true)
            .with_timeout(CHECK_TIMEOUT)
            .with_connect_timeout(CHECK_TIMEOUT);
        let mut members: Vec<Member> = urls
            .into_iter()
            .map(|url| Member {
                url,
                client: None,
                in_set: true,
            })
            .collect();
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            for i in 0..members.len() {
                let ok = members[i].check(&options, &probe).await;
                let others_in = members.iter().enumerate().any(|(j, m)| j != i && m.in_set);
                if members[i].update(&balanced, ok, others_in).await {
                    moved.notify_one();
                }
            }
        }
    }
}

struct Member {
    url: String,
    /// A client for this member alone, made on first use (making it may need the member, with auth).
    client: Option<Client>,
    /// Whether the balanced client sends calls to it now.
    in_set: bool,
}

impl Member {
    /// Whether the member answers a read that needs a leader, within [`CHECK_TIMEOUT`].
    async fn check(&mut self, options: &ConnectOptions, probe: &str) -> bool {
        let read = async {
            if self.client.is_none() {
                let url = [self.url.as_str()];
                self.client = Some(Client::connect(url, Some(options.clone())).await?);
            }
            let Some(c) = self.client.as_mut() else {
                return Ok(false);
            };
            let only_keys = GetOptions::new().with_keys_only().with_limit(1);
            c.get(probe, Some(only_keys)).await.map(|_| true)
        };
        matches!(
            tokio::time::timeout(CHECK_TIMEOUT, read).await,
            Ok(Ok(true))
        )
    }

    /// Takes the member out of the balanced set, or puts it back, when `ok` says otherwise; true
    /// when it was taken out.
    async fn update(&mut self, balanced: &Client, ok: bool, others_in: bool) -> bool {
        if self.in_set && !ok && others_in {
            if balanced.remove_endpoint(&self.url).await.is_ok() {
                self.in_set = false;
                tracing::warn!(member = %self.url, "etcd member not answering (or without a leader); calls go to the other members");
                return true;
            }
        } else if !self.in_set && ok && balanced.add_endpoint(&self.url).await.is_ok() {
            self.in_set = true;
            tracing::info!(member = %self.url, "etcd member answering again; calls go to it too");
        }
        false
    }
}

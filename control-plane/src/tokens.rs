//! Join tokens: a bootstrap credential bound to one service account, with an expiry, revocable.
//!
//! A token reads `wjt.<id>.<secret>`. Only the SHA-256 of the secret is stored; a token may be used by
//! every replica of a workload until it expires or is revoked (the count of uses is kept for audit), unless
//! it was created with a use limit (the pod runner's tokens are single-use).
//!
//! A use is counted only once a certificate is issued: [`TokenStore::reserve`] holds a use while the CSR
//! is signed, [`TokenStore::commit`] records it (and fails the issuance if it cannot be saved, so a
//! restart never revives a used token), [`TokenStore::release`] gives it back when signing failed.
//!
//! Each counted use of a limited token records the public key that spent it (the SHA-256 of the CSR's
//! SubjectPublicKeyInfo), saved with the token. A used-up token presented again, before it expires, with
//! a CSR for one of those keys is a retry whose answer was lost: it is granted as a [`Grant::Replay`],
//! which counts no use. Any other key finds the token used up.
//!
//! A token may carry a workload claim (a name and exact labels): the certificates it issues may register
//! only that workload (see [`crate::claims`]). No token is ever made for the control plane's own identity.

use crate::backend::election::{LeaderGuard, LedError};
use crate::backend::{self, dir::DirBackend, Collection, Expect, SharedBackend, WriteError};
use crate::persist::{self, StateError};
use crate::state_dir::control_plane_id;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};
use weft_api::operator::TokenInfo;
use weft_api::resources::Labels;
use weft_certs::{SpiffeId, TrustDomain};

const PREFIX: &str = "wjt";
/// Longest a token may be created for, unless `weft-control --max-token-ttl` says otherwise.
pub const DEFAULT_MAX_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    info: TokenInfo,
    secret_sha256: String,
    /// Uses held by certificate requests being signed (not persisted: a restart ends them).
    #[serde(skip)]
    reserved: u64,
    /// SHA-256 of the public key of each counted use of a limited token, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    spent_by: Vec<String>,
    /// The stored version this record was read or written as (not persisted).
    #[serde(skip)]
    version: Option<u64>,
}

/// What a presented token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A use is held: [`TokenStore::commit`] or [`TokenStore::release`] it.
    Use(TokenInfo),
    /// The key that spent a use asks again (its answer was lost): nothing is held or counted.
    Replay(TokenInfo),
}

impl Grant {
    pub fn info(&self) -> &TokenInfo {
        match self {
            Grant::Use(info) | Grant::Replay(info) => info,
        }
    }
}

/// What a token is asked for.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub namespace: String,
    pub service_account: String,
    pub ttl_secs: u64,
    pub max_uses: Option<u64>,
    /// The only workload name its certificates may register, with exactly `labels`.
    pub workload: Option<String>,
    pub labels: Labels,
}

/// Why a token was refused; the text goes back to the proxy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the join token is malformed (expected wjt.<id>.<secret>)")]
    Malformed,
    #[error("join token {0} is not known to this control plane")]
    Unknown(String),
    #[error("join token {0} does not match its secret")]
    BadSecret(String),
    #[error("join token {0} was revoked")]
    Revoked(String),
    #[error("join token {id} expired {ago}s ago")]
    Expired { id: String, ago: u64 },
    #[error("join token {id} was already used {uses} time(s), its limit")]
    UsedUp { id: String, uses: u64 },
    #[error("join token {0} names the control plane's own identity, which is never issued")]
    ControlPlane(String),
    /// The token could not be read from the store (etcd down): try again.
    #[error("join tokens cannot be read now: {0}")]
    Store(String),
}

impl TokenError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Unknown(_) => "unknown",
            TokenError::BadSecret(_) => "bad_secret",
            TokenError::Revoked(_) => "revoked",
            TokenError::Expired { .. } => "expired",
            TokenError::UsedUp { .. } => "used_up",
            TokenError::ControlPlane(_) => "control_plane_identity",
            TokenError::Store(_) => "store_unavailable",
        }
    }
}

pub struct TokenStore {
    /// One record per token id, so using a token is a compare-and-swap on that token alone.
    backend: SharedBackend,
    /// The file a test opened it on, to open it again.
    #[cfg(test)]
    path: PathBuf,
    trust_domain: TrustDomain,
    records: BTreeMap<String, Record>,
    max_ttl_secs: u64,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenStore {
    pub fn open(path: PathBuf, trust_domain: TrustDomain) -> Result<TokenStore, StateError> {
        let backend = std::sync::Arc::new(DirBackend::file(Collection::Tokens, path.clone()));
        #[cfg(test)]
        return TokenStore::open_in(backend, trust_domain).map(|s| TokenStore { path, ..s });
        #[cfg(not(test))]
        TokenStore::open_in(backend, trust_domain)
    }

    pub fn open_in(
        backend: SharedBackend,
        trust_domain: TrustDomain,
    ) -> Result<TokenStore, StateError> {
        let mut store = TokenStore {
            backend,
            #[cfg(test)]
            path: PathBuf::new(),
            trust_domain,
            records: BTreeMap::new(),
            max_ttl_secs: DEFAULT_MAX_TTL.as_secs(),
        };
        store.load()?;
        Ok(store)
    }

    /// Reads every token again (another replica created, used or revoked some); uses held here are
    /// kept.
    pub fn load(&mut self) -> Result<(), StateError> {
        let listing = self.backend.list(Collection::Tokens)?;
        let mut records = BTreeMap::new();
        for (id, stored) in listing.records {
            let mut rec: Record =
                backend::parse(&*self.backend, Collection::Tokens, &id, &stored.value)?;
            rec.version = Some(stored.version);
            rec.reserved = self.records.get(&id).map_or(0, |r| r.reserved);
            records.insert(id, rec);
        }
        self.records = records;
        Ok(())
    }

    /// Reads token `id` again when others may have used it; `Ok(false)`: it is gone.
    fn refresh(&mut self, id: &str) -> Result<bool, StateError> {
        let Some(stored) = self.backend.get(Collection::Tokens, id)? else {
            self.records.remove(id);
            return Ok(false);
        };
        let held = self.records.get(id);
        if held.is_some_and(|r| r.version == Some(stored.version)) {
            return Ok(true);
        }
        let mut rec: Record =
            backend::parse(&*self.backend, Collection::Tokens, id, &stored.value)?;
        rec.version = Some(stored.version);
        rec.reserved = held.map_or(0, |r| r.reserved);
        self.records.insert(id.to_string(), rec);
        Ok(true)
    }

    /// The longest TTL [`create`](Self::create) accepts.
    pub fn set_max_ttl(&mut self, max: std::time::Duration) {
        self.max_ttl_secs = max.as_secs();
    }

    /// Writes token `id` if the stored one is still the version it was read as.
    fn save(&mut self, id: &str) -> Result<(), WriteError> {
        let Some(rec) = self.records.get_mut(id) else {
            return Err(StateError::Gone(id.to_string()).into());
        };
        let payload = persist::to_payload(rec);
        let version =
            self.backend
                .put(Collection::Tokens, id, &payload, Expect::read(rec.version))?;
        rec.version = Some(version);
        Ok(())
    }

    /// Creates a token as `req` asks. Returns the secret token (shown once) and its record.
    pub fn create(&mut self, req: &NewToken) -> Result<(String, TokenInfo), CreateError> {
        check_name("namespace", &req.namespace)?;
        check_name("service account", &req.service_account)?;
        let identity =
            SpiffeId::for_workload(&self.trust_domain, &req.namespace, &req.service_account)
                .map_err(|e| CreateError::Identity(e.to_string()))?;
        if identity == control_plane_id(&self.trust_domain) {
            return Err(CreateError::ControlPlane(identity));
        }
        if req.ttl_secs > self.max_ttl_secs {
            return Err(CreateError::TooLong {
                asked: req.ttl_secs,
                max: self.max_ttl_secs,
            });
        }
        check_claim(req)?;
        let mut raw = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let mut secret = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut secret);
        let secret = hex::encode(secret);
        let now = now_secs();
        let info = TokenInfo {
            id: id.clone(),
            namespace: req.namespace.clone(),
            service_account: req.service_account.clone(),
            identity,
            created_at: now,
            expires_at: now.saturating_add(req.ttl_secs),
            revoked: false,
            uses: 0,
            max_uses: req.max_uses,
            workload: req.workload.clone(),
            labels: req.labels.clone(),
        };
        self.records.insert(
            id.clone(),
            Record {
                info: info.clone(),
                secret_sha256: digest(&secret),
                reserved: 0,
                spent_by: Vec::new(),
                version: None,
            },
        );
        if let Err(e) = self.save(&id) {
            self.records.remove(&id);
            return Err(e.into_state().into());
        }
        Ok((format!("{PREFIX}.{id}.{secret}"), info))
    }

    /// Checks a presented token and holds one of its uses until [`commit`](Self::commit) or
    /// [`release`](Self::release), or grants a replay when `key` (the SHA-256 of the CSR's public key,
    /// if it could be read) already spent a use of this limited token.
    pub fn reserve(&mut self, token: &str, key: Option<&str>) -> Result<Grant, TokenError> {
        let mut parts = token.trim().splitn(3, '.');
        let (Some(PREFIX), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let cp_id = control_plane_id(&self.trust_domain);
        // Another replica may have used or revoked it since it was read.
        if self.backend.shared()
            && !self
                .refresh(id)
                .map_err(|e| TokenError::Store(e.to_string()))?
        {
            return Err(TokenError::Unknown(id.to_string()));
        }
        let rec = self
            .records
            .get_mut(id)
            .ok_or_else(|| TokenError::Unknown(id.to_string()))?;
        if !constant_time_eq(digest(secret).as_bytes(), rec.secret_sha256.as_bytes()) {
            return Err(TokenError::BadSecret(id.to_string()));
        }
        if rec.info.revoked {
            return Err(TokenError::Revoked(id.to_string()));
        }
        if rec.info.identity == cp_id {
            // Made before such tokens were refused: never honoured.
            return Err(TokenError::ControlPlane(id.to_string()));
        }
        let now = now_secs();
        if now >= rec.info.expires_at {
            return Err(TokenError::Expired {
                id: id.to_string(),
                ago: now - rec.info.expires_at,
            });
        }
        if let Some(max) = rec.info.max_uses {
            if key.is_some_and(|k| rec.spent_by.iter().any(|s| s == k)) {
                return Ok(Grant::Replay(rec.info.clone()));
            }
            if rec.info.uses.saturating_add(rec.reserved) >= max {
                return Err(TokenError::UsedUp {
                    id: id.to_string(),
                    uses: rec.info.uses,
                });
            }
        }
        rec.reserved += 1;
        Ok(Grant::Use(rec.info.clone()))
    }

    /// A certificate was issued with token `id` for the public key whose SHA-256 is `key`: counts the
    /// use (and, for a limited token, the key that spent it), durably. An error means the count could
    /// not be saved and the certificate must not be handed out.
    pub fn commit(&mut self, id: &str, key: &str) -> Result<TokenInfo, CommitError> {
        let Some(rec) = self.records.get_mut(id) else {
            return Err(StateError::Gone(id.to_string()).into());
        };
        rec.reserved = rec.reserved.saturating_sub(1);
        // Another replica may count a use of the same token at once: the write is a compare-and-swap
        // on this token, and a lost race counts again on the token as it now is.
        for _ in 0..COMMIT_TRIES {
            match self.count_use(id, key) {
                Err(CommitError::State(StateError::Gone(_))) if self.backend.shared() => {
                    self.refresh(id)?;
                    let Some(rec) = self.records.get(id) else {
                        return Err(TokenError::Unknown(id.to_string()).into());
                    };
                    if rec.info.max_uses.is_some_and(|max| rec.info.uses >= max) {
                        return Err(TokenError::UsedUp {
                            id: id.to_string(),
                            uses: rec.info.uses,
                        }
                        .into());
                    }
                }
                other => return other,
            }
        }
        Err(StateError::Gone(id.to_string()).into())
    }

    /// Counts one use of token `id` by `key` and saves it; a lost compare-and-swap is
    /// `StateError::Gone` with what is held unchanged.
    fn count_use(&mut self, id: &str, key: &str) -> Result<TokenInfo, CommitError> {
        let Some(rec) = self.records.get_mut(id) else {
            return Err(StateError::Gone(id.to_string()).into());
        };
        rec.info.uses += 1;
        let limited = rec.info.max_uses.is_some();
        if limited {
            rec.spent_by.push(key.to_string());
        }
        let info = rec.info.clone();
        if let Err(e) = self.save(id) {
            if let Some(rec) = self.records.get_mut(id) {
                rec.info.uses -= 1;
                if limited {
                    rec.spent_by.pop();
                }
            }
            return Err(match e {
                WriteError::Conflict(_) => StateError::Gone(id.to_string()).into(),
                WriteError::State(e) => e.into(),
            });
        }
        Ok(info)
    }

    /// The request holding a use of token `id` failed: the use is free again.
    pub fn release(&mut self, id: &str) {
        if let Some(rec) = self.records.get_mut(id) {
            rec.reserved = rec.reserved.saturating_sub(1);
        }
    }

    pub fn revoke(&mut self, id: &str) -> Result<TokenInfo, CreateError> {
        if self.backend.shared() {
            self.refresh(id)?;
        }
        let rec = self
            .records
            .get_mut(id)
            .ok_or_else(|| CreateError::NotFound(id.to_string()))?;
        rec.info.revoked = true;
        let info = rec.info.clone();
        if let Err(e) = self.save(id) {
            if let Some(rec) = self.records.get_mut(id) {
                rec.info.revoked = false;
            }
            return Err(e.into_state().into());
        }
        Ok(info)
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        self.records.values().map(|r| r.info.clone()).collect()
    }

    /// Deletes the tokens that expired at least `retention_secs` before `now` (the leader's sweep,
    /// each delete guarded by `guard`); returns how many went. One changed meanwhile is left for the
    /// next sweep.
    pub fn sweep(
        &mut self,
        now: u64,
        retention_secs: u64,
        guard: &LeaderGuard,
    ) -> Result<usize, LedError> {
        if self.backend.shared() {
            self.load()?;
        }
        let due: Vec<(String, Option<u64>)> = self
            .records
            .iter()
            .filter(|(_, r)| r.reserved == 0)
            .filter(|(_, r)| r.info.expires_at.saturating_add(retention_secs) <= now)
            .map(|(id, r)| (id.clone(), r.version))
            .collect();
        let mut swept = 0;
        for (id, version) in due {
            match self
                .backend
                .delete_led(Collection::Tokens, &id, Expect::read(version), guard)
            {
                Ok(()) => {
                    self.records.remove(&id);
                    swept += 1;
                }
                Err(LedError::Write(WriteError::Conflict(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(swept)
    }
}

/// How often a use is counted again after another replica counted one first.
const COMMIT_TRIES: u32 = 8;

/// Why a use could not be counted: the certificate must not be handed out.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another replica spent the token's last use first.
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    State(#[from] StateError),
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("no identity can be made from that: {0}")]
    Identity(String),
    #[error("no join token with id {0}")]
    NotFound(String),
    #[error("{0} is the control plane's own identity: no join token is made for it")]
    ControlPlane(SpiffeId),
    #[error("a join token may live at most {max}s (weft-control --max-token-ttl); {asked}s was asked for")]
    TooLong { asked: u64, max: u64 },
    #[error("{0}")]
    Claim(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Namespaces and service accounts are DNS labels, as in Kubernetes.
fn check_name(what: &'static str, name: &str) -> Result<(), CreateError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(CreateError::Identity(format!(
            "{what} {name:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        )))
    }
}

/// A workload claim: a pod-style name (lowercase, digits, '-', '.') and valid labels; labels only with a
/// name, since what they bind is that workload's registration.
fn check_claim(req: &NewToken) -> Result<(), CreateError> {
    let Some(name) = &req.workload else {
        if req.labels.is_empty() {
            return Ok(());
        }
        return Err(CreateError::Claim(
            "labels: a token's labels bind one workload; give its name too (workload)".into(),
        ));
    };
    if let Err(e) = crate::claims::check_workload_name(name) {
        return Err(CreateError::Claim(format!("workload: {e}")));
    }
    for (k, v) in &req.labels {
        weft_api::resources::label_key(k)
            .and_then(|_| weft_api::resources::label_value(v))
            .map_err(|e| CreateError::Claim(format!("labels: {e}")))?;
    }
    Ok(())
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares without an early exit, so timing says nothing about where two secrets differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> TokenStore {
        let dir = std::env::temp_dir().join(format!("weft-tokens-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("tokens.json"));
        TokenStore::open(
            dir.join("tokens.json"),
            TrustDomain::new("t.local").unwrap(),
        )
        .unwrap()
    }

    fn req(sa: &str, ttl_secs: u64, max_uses: Option<u64>) -> NewToken {
        NewToken {
            namespace: "default".into(),
            service_account: sa.into(),
            ttl_secs,
            max_uses,
            ..Default::default()
        }
    }

    /// Reserve and commit at once with a key never seen before: what a successful join does.
    fn redeem(s: &mut TokenStore, tok: &str) -> Result<TokenInfo, TokenError> {
        static KEYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let key = format!(
            "key-{}",
            KEYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        match s.reserve(tok, Some(&key))? {
            Grant::Use(info) => Ok(s.commit(&info.id, &key).unwrap()),
            Grant::Replay(info) => panic!("a fresh key was granted a replay of {}", info.id),
        }
    }

    #[test]
    fn create_redeem_revoke_and_persist() {
        let mut s = store("crr");
        let (tok, info) = s.create(&req("reviews", 3600, None)).unwrap();
        assert_eq!(
            info.identity.as_str(),
            "spiffe://t.local/ns/default/sa/reviews"
        );
        assert_eq!(redeem(&mut s, &tok).unwrap().uses, 1);
        let reopened = TokenStore::open(s.path.clone(), s.trust_domain.clone()).unwrap();
        assert_eq!(reopened.list()[0].uses, 1);
        s.revoke(&info.id).unwrap();
        assert_eq!(
            redeem(&mut s, &tok),
            Err(TokenError::Revoked(info.id.clone()))
        );
    }

    #[test]
    fn refusals_say_why() {
        let mut s = store("why");
        let (tok, info) = s.create(&req("a", 0, None)).unwrap();
        assert!(matches!(
            redeem(&mut s, &tok),
            Err(TokenError::Expired { .. })
        ));
        assert_eq!(redeem(&mut s, "nonsense"), Err(TokenError::Malformed));
        assert_eq!(
            redeem(&mut s, "wjt.0000.x"),
            Err(TokenError::Unknown("0000".into()))
        );
        let forged = format!("wjt.{}.{}", info.id, "0".repeat(48));
        assert_eq!(redeem(&mut s, &forged), Err(TokenError::BadSecret(info.id)));
        let mut bad = req("a", 10, None);
        bad.namespace = "Bad_NS".into();
        assert!(s.create(&bad).is_err());
    }

    #[test]
    fn a_released_use_is_free_again_and_a_held_one_is_not() {
        let mut s = store("held");
        let (tok, _) = s.create(&req("pod", 60, Some(1))).unwrap();
        let held = s.reserve(&tok, Some("k")).unwrap();
        assert!(matches!(
            s.reserve(&tok, Some("k")),
            Err(TokenError::UsedUp { uses: 0, .. })
        ));
        s.release(&held.info().id);
        assert_eq!(redeem(&mut s, &tok).unwrap().uses, 1);
    }

    #[test]
    fn too_long_lived_control_plane_and_half_claimed_tokens_are_refused() {
        let mut s = store("limits");
        let e = s.create(&req("a", 25 * 3600, None)).unwrap_err();
        assert!(e.to_string().contains("at most 86400s"), "{e}");
        s.set_max_ttl(std::time::Duration::from_secs(48 * 3600));
        assert!(s.create(&req("a", 25 * 3600, None)).is_ok());
        let mut cp = req("weft-control", 60, None);
        cp.namespace = "weft-system".into();
        assert!(matches!(s.create(&cp), Err(CreateError::ControlPlane(_))));
        let mut labels_only = req("a", 60, None);
        labels_only.labels = [("app".to_string(), "a".to_string())].into();
        assert!(matches!(s.create(&labels_only), Err(CreateError::Claim(_))));
        labels_only.workload = Some("Bad Name".into());
        assert!(matches!(s.create(&labels_only), Err(CreateError::Claim(_))));
        labels_only.workload = Some("a-1".into());
        let (_, info) = s.create(&labels_only).unwrap();
        assert_eq!(info.workload.as_deref(), Some("a-1"));
    }

    #[test]
    fn a_single_use_token_works_once() {
        let mut s = store("once");
        let (tok, info) = s.create(&req("pod", 60, Some(1))).unwrap();
        assert_eq!(redeem(&mut s, &tok).unwrap().max_uses, Some(1));
        assert_eq!(
            redeem(&mut s, &tok),
            Err(TokenError::UsedUp {
                id: info.id,
                uses: 1
            })
        );
    }

    #[test]
    fn the_key_that_spent_a_single_use_token_is_answered_again_and_no_other() {
        let mut s = store("replay");
        let (tok, info) = s.create(&req("pod", 60, Some(1))).unwrap();
        let Grant::Use(held) = s.reserve(&tok, Some("key-a")).unwrap() else {
            panic!("the first request must hold a use");
        };
        s.commit(&held.id, "key-a").unwrap();
        // The answer was lost: the same key asks again, even after a restart.
        let mut s = TokenStore::open(s.path.clone(), s.trust_domain.clone()).unwrap();
        match s.reserve(&tok, Some("key-a")).unwrap() {
            Grant::Replay(i) => assert_eq!(i.uses, 1),
            g => panic!("expected a replay, got {g:?}"),
        }
        assert_eq!(s.list()[0].uses, 1, "a replay counts no use");
        for other in [Some("key-b"), None] {
            assert_eq!(
                s.reserve(&tok, other),
                Err(TokenError::UsedUp {
                    id: info.id.clone(),
                    uses: 1
                })
            );
        }
        s.records.get_mut(&info.id).unwrap().info.expires_at = now_secs() - 1;
        assert!(matches!(
            s.reserve(&tok, Some("key-a")),
            Err(TokenError::Expired { .. })
        ));
        s.records.get_mut(&info.id).unwrap().info.expires_at = now_secs() + 60;
        s.revoke(&info.id).unwrap();
        assert_eq!(
            s.reserve(&tok, Some("key-a")),
            Err(TokenError::Revoked(info.id))
        );
    }

    #[test]
    fn unlimited_tokens_keep_no_keys() {
        let mut s = store("nokeys");
        let (tok, info) = s.create(&req("web", 60, None)).unwrap();
        for _ in 0..2 {
            let g = s.reserve(&tok, Some("same")).unwrap();
            assert!(matches!(g, Grant::Use(_)), "{g:?}");
            s.commit(&info.id, "same").unwrap();
        }
        assert_eq!(s.list()[0].uses, 2);
        assert!(s.records[&info.id].spent_by.is_empty());
    }
}

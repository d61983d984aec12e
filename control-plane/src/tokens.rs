//! Join tokens: a bootstrap credential bound to one service account, with an expiry, revocable.
//!
//! A token reads `wjt.<id>.<secret>`. Only the SHA-256 of the secret is stored; a token may be used by
//! every replica of a workload until it expires or is revoked (the count of uses is kept for audit), unless
//! it was created with a use limit (the pod runner's tokens are single-use).

use crate::persist::{self, StateError};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};
use weft_api::operator::TokenInfo;
use weft_certs::{SpiffeId, TrustDomain};

const PREFIX: &str = "wjt";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    info: TokenInfo,
    secret_sha256: String,
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
        }
    }
}

pub struct TokenStore {
    path: PathBuf,
    trust_domain: TrustDomain,
    records: BTreeMap<String, Record>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenStore {
    pub fn open(path: PathBuf, trust_domain: TrustDomain) -> Result<TokenStore, StateError> {
        let records = persist::read_json(&path)?.unwrap_or_default();
        Ok(TokenStore {
            path,
            trust_domain,
            records,
        })
    }

    fn save(&self) -> Result<(), StateError> {
        persist::write_json(&self.path, &self.records, 0o600)
    }

    /// Creates a token for `ns/sa`, good for `max_uses` certificates (None: any number). Returns the
    /// secret token (shown once) and its record.
    pub fn create(
        &mut self,
        namespace: &str,
        service_account: &str,
        ttl_secs: u64,
        max_uses: Option<u64>,
    ) -> Result<(String, TokenInfo), CreateError> {
        check_name("namespace", namespace)?;
        check_name("service account", service_account)?;
        let identity = SpiffeId::for_workload(&self.trust_domain, namespace, service_account)
            .map_err(|e| CreateError::Identity(e.to_string()))?;
        let mut raw = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let mut secret = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut secret);
        let secret = hex::encode(secret);
        let now = now_secs();
        let info = TokenInfo {
            id: id.clone(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            identity,
            created_at: now,
            expires_at: now.saturating_add(ttl_secs),
            revoked: false,
            uses: 0,
            max_uses,
        };
        self.records.insert(
            id.clone(),
            Record {
                info: info.clone(),
                secret_sha256: digest(&secret),
            },
        );
        self.save()?;
        Ok((format!("{PREFIX}.{id}.{secret}"), info))
    }

    /// Checks a presented token; on success counts the use and returns what it is bound to.
    pub fn redeem(&mut self, token: &str) -> Result<TokenInfo, TokenError> {
        let mut parts = token.trim().splitn(3, '.');
        let (Some(PREFIX), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
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
        let now = now_secs();
        if now >= rec.info.expires_at {
            return Err(TokenError::Expired {
                id: id.to_string(),
                ago: now - rec.info.expires_at,
            });
        }
        if let Some(max) = rec.info.max_uses {
            if rec.info.uses >= max {
                return Err(TokenError::UsedUp {
                    id: id.to_string(),
                    uses: rec.info.uses,
                });
            }
        }
        rec.info.uses += 1;
        let info = rec.info.clone();
        if let Err(e) = self.save() {
            // The use count is audit data; failing to record it must not refuse a valid token.
            tracing::warn!(error = %e, "cannot record a join token use");
        }
        Ok(info)
    }

    pub fn revoke(&mut self, id: &str) -> Result<TokenInfo, CreateError> {
        let rec = self
            .records
            .get_mut(id)
            .ok_or_else(|| CreateError::NotFound(id.to_string()))?;
        rec.info.revoked = true;
        let info = rec.info.clone();
        self.save()?;
        Ok(info)
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        self.records.values().map(|r| r.info.clone()).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("no identity can be made from that: {0}")]
    Identity(String),
    #[error("no join token with id {0}")]
    NotFound(String),
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

    #[test]
    fn create_redeem_revoke_and_persist() {
        let mut s = store("crr");
        let (tok, info) = s.create("default", "reviews", 3600, None).unwrap();
        assert_eq!(
            info.identity.as_str(),
            "spiffe://t.local/ns/default/sa/reviews"
        );
        assert_eq!(s.redeem(&tok).unwrap().uses, 1);
        let reopened = TokenStore::open(s.path.clone(), s.trust_domain.clone()).unwrap();
        assert_eq!(reopened.list()[0].uses, 1);
        s.revoke(&info.id).unwrap();
        assert_eq!(s.redeem(&tok), Err(TokenError::Revoked(info.id.clone())));
    }

    #[test]
    fn refusals_say_why() {
        let mut s = store("why");
        let (tok, info) = s.create("default", "a", 0, None).unwrap();
        assert!(matches!(s.redeem(&tok), Err(TokenError::Expired { .. })));
        assert_eq!(s.redeem("nonsense"), Err(TokenError::Malformed));
        assert_eq!(
            s.redeem("wjt.0000.x"),
            Err(TokenError::Unknown("0000".into()))
        );
        let forged = format!("wjt.{}.{}", info.id, "0".repeat(48));
        assert_eq!(s.redeem(&forged), Err(TokenError::BadSecret(info.id)));
        assert!(s.create("Bad_NS", "a", 10, None).is_err());
    }

    #[test]
    fn a_single_use_token_works_once() {
        let mut s = store("once");
        let (tok, info) = s.create("default", "pod", 60, Some(1)).unwrap();
        assert_eq!(s.redeem(&tok).unwrap().max_uses, Some(1));
        assert_eq!(
            s.redeem(&tok),
            Err(TokenError::UsedUp {
                id: info.id,
                uses: 1
            })
        );
    }
}

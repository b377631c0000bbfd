//! API tokens and sign-in throttling in etcd, as the SQLite store keeps them
//! (`store/tokens.rs`, `store/login.rs`): a token made through one node works on every node,
//! and five wrong passwords count the same wherever they were typed.
//!
//! Keys: `P/v1/token/<sha256 of the token, hex>` → `{user, created}`, and
//! `P/v1/login/<counter>` → `{count, last_ms}`. Failure counts are bumped with a compare on the
//! key's `mod_revision`, so two nodes failing the same account at once both count.

use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::gateway::{Cmp, Op};
use super::EtcdStore;
use crate::store::login::wait_after;
use crate::store::{StoreError, TOKEN_PREFIX};

#[derive(Serialize, Deserialize)]
pub(super) struct TokenRec {
    pub user: String,
    pub created: u64,
}

#[derive(Serialize, Deserialize)]
struct Backoff {
    count: i64,
    last_ms: i64,
}

/// Bumping a failure count gives up after this many lost races (each one is another failure
/// counted, so the gate holds anyway).
const BUMP_ATTEMPTS: usize = 8;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl EtcdStore {
    fn token_key(&self, token: &str) -> Vec<u8> {
        self.key(&format!("token/{}", hex::encode(Sha256::digest(token.as_bytes()))))
    }

    /// As [`Store::add_token`](crate::store::Store::add_token): shown once, only its hash kept.
    pub fn add_token(&self, user: &str) -> Result<String, StoreError> {
        self.is_admin(user)?; // the user must exist
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(raw));
        let rec = TokenRec { user: user.to_owned(), created: crate::unix_now() };
        let value = serde_json::to_vec(&rec).map_err(|e| self.corrupt(format!("token: {e}")))?;
        self.gw.put(&self.token_key(&token), &value)?;
        Ok(token)
    }

    pub fn token_user(&self, token: &str) -> Result<Option<String>, StoreError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let Some(kv) = self.gw.get(&self.token_key(token))? else { return Ok(None) };
        let rec: TokenRec =
            serde_json::from_slice(&kv.value).map_err(|e| self.corrupt(format!("token: {e}")))?;
        Ok(Some(rec.user))
    }

    pub fn revoke_tokens(&self, user: &str) -> Result<usize, StoreError> {
        let (kvs, _) = self.gw.range_prefix(&self.key("token/"))?;
        let mut n = 0;
        for kv in kvs {
            let Ok(rec) = serde_json::from_slice::<TokenRec>(&kv.value) else { continue };
            if rec.user == user {
                // Only this version: a key that changed meanwhile is someone else's business.
                let (ok, _) =
                    self.gw.txn(&[Cmp::ModEq(kv.key.clone(), kv.mod_revision)], &[Op::Delete(kv.key)])?;
                n += usize::from(ok);
            }
        }
        Ok(n)
    }

    /// Refuses with [`StoreError::LoginThrottled`] while `counter` must wait.
    pub(super) fn login_gate(&self, name: &str, counter: &str) -> Result<(), StoreError> {
        let Some(kv) = self.gw.get(&self.key(&format!("login/{counter}")))? else { return Ok(()) };
        let Ok(b) = serde_json::from_slice::<Backoff>(&kv.value) else { return Ok(()) };
        let left_ms = b.last_ms.saturating_add(wait_after(b.count).saturating_mul(1000)) - now_ms();
        if left_ms > 0 {
            return Err(StoreError::LoginThrottled {
                name: name.to_owned(),
                retry_after_s: (left_ms + 999) / 1000,
            });
        }
        Ok(())
    }

    pub(super) fn login_result(&self, counter: &str, ok: bool) -> Result<(), StoreError> {
        let key = self.key(&format!("login/{counter}"));
        if ok {
            self.gw.txn(&[], &[Op::Delete(key)])?;
            return Ok(());
        }
        for _ in 0..BUMP_ATTEMPTS {
            let cur = self.gw.get(&key)?;
            let (count, cmp) = match &cur {
                Some(kv) => (
                    serde_json::from_slice::<Backoff>(&kv.value).map_or(0, |b| b.count),
                    Cmp::ModEq(key.clone(), kv.mod_revision),
                ),
                None => (0, Cmp::Absent(key.clone())),
            };
            let value = serde_json::to_vec(&Backoff { count: count + 1, last_ms: now_ms() })
                .map_err(|e| self.corrupt(format!("login: {e}")))?;
            if self.gw.txn(&[cmp], &[Op::Put { key: key.clone(), value, lease: 0 }])?.0 {
                return Ok(());
            }
        }
        Err(StoreError::Contended { what: "a sign-in failure count" })
    }
}

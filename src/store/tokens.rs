//! API tokens for scripts (`lic-udp token add`), sent as `Authorization: Bearer …`.
//!
//! Only a SHA-256 of each token is stored: tokens are 256 random bits, so a fast hash is
//! enough, and a copy of the data dir does not hand out working tokens. A token acts as the
//! account it was made for, admin or not.

use rand::rngs::OsRng;
use rand::RngCore;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::{At, Store, StoreError};

pub(super) const ENSURE: &str = "
CREATE TABLE IF NOT EXISTS api_tokens (
    hash    BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),
    user    TEXT NOT NULL,
    created INTEGER NOT NULL
) STRICT;
";

/// Tokens start with this, so that one pasted in the wrong place is recognisable.
pub const TOKEN_PREFIX: &str = "lu_";

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Store {
    /// Creates a token for `user` and returns it; it is shown once and never stored.
    pub fn add_token(&mut self, user: &str) -> Result<String, StoreError> {
        self.is_admin(user)?; // the user must exist
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(raw));
        self.conn
            .execute(
                "INSERT INTO api_tokens (hash, user, created) VALUES (?1, ?2, ?3)",
                params![&digest(&token)[..], user, i64::try_from(super::unix_now()).unwrap_or(i64::MAX)],
            )
            .at(&self.db)?;
        Ok(token)
    }

    /// The account a token acts as, if it is one of ours.
    pub fn token_user(&self, token: &str) -> Result<Option<String>, StoreError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        self.conn
            .query_row("SELECT user FROM api_tokens WHERE hash = ?1", [&digest(token)[..]], |r| r.get(0))
            .optional()
            .at(&self.db)
    }

    /// Removes every token of `user`; returns how many there were.
    pub fn revoke_tokens(&mut self, user: &str) -> Result<usize, StoreError> {
        self.conn.execute("DELETE FROM api_tokens WHERE user = ?1", params![user]).at(&self.db)
    }
}

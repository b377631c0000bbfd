//! Account upkeep (`lic-udp user list|passwd|del`, `token list`): what an admin needs after
//! `user add`. Every change is written to the audit log in its own transaction.
//!
//! Two refusals keep a site administrable: the last admin cannot be removed, and an account
//! that owns licenses is removed only with `--reassign` naming who takes them over (a license
//! whose owner is gone could be revoked by no one but an admin, and its history would name a
//! stranger).

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{audit, check_new_password, hash_password, password_params, At, Store, StoreError};

/// One account as `user list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    pub name: String,
    pub admin: bool,
    /// Licenses it owns (revoked ones included: they are still its history).
    pub licenses: usize,
    pub tokens: usize,
}

/// One API token as `token list` shows it: never the token, which is not kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub user: String,
    /// Unix seconds.
    pub created: u64,
    /// The first 8 hex digits of its SHA-256, to tell tokens apart.
    pub id: String,
}

fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

impl Store {
    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT u.name, u.admin,
                        (SELECT count(*) FROM licenses l WHERE l.owner = u.name),
                        (SELECT count(*) FROM api_tokens t WHERE t.user = u.name)
                 FROM users u ORDER BY u.name",
            )
            .at(&self.db)?;
        let rows = st
            .query_map([], |r| {
                Ok(Account {
                    name: r.get(0)?,
                    admin: r.get(1)?,
                    licenses: count(r.get(2)?),
                    tokens: count(r.get(3)?),
                })
            })
            .at(&self.db)?;
        rows.collect::<Result<Vec<_>, _>>().at(&self.db)
    }

    pub fn token_list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT user, created, hash FROM api_tokens ORDER BY user, created")
            .at(&self.db)?;
        let rows = st
            .query_map([], |r| {
                let hash: Vec<u8> = r.get(2)?;
                let created: i64 = r.get(1)?;
                Ok(TokenInfo {
                    user: r.get(0)?,
                    created: u64::try_from(created).unwrap_or(0),
                    id: hex::encode(hash.get(..4).unwrap_or_default()),
                })
            })
            .at(&self.db)?;
        rows.collect::<Result<Vec<_>, _>>().at(&self.db)
    }

    /// Sets `name`'s password; `by` (the account itself or an admin) goes into the audit log.
    pub fn set_password(&mut self, name: &str, password: &str, by: &str) -> Result<(), StoreError> {
        check_new_password(password)?;
        let phc = hash_password(password, password_params()?)?;
        let db = &self.db;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).at(db)?;
        let n = tx.execute("UPDATE users SET phc = ?1 WHERE name = ?2", params![phc, name]).at(db)?;
        if n == 0 {
            return Err(StoreError::NoSuchUser { name: name.to_owned() });
        }
        let row = audit::Row {
            ts: super::unix_now(),
            event: "passwd",
            actor: Some(by),
            detail: Some(format!("account {name}")),
            ..audit::Row::default()
        };
        audit::insert(&tx, db, row)?;
        tx.commit().at(db)
    }

    /// Removes `name` and its tokens; its licenses go to `reassign` (see the module doc).
    /// Returns how many licenses were reassigned.
    pub fn remove_user(&mut self, name: &str, reassign: Option<&str>, by: &str) -> Result<usize, StoreError> {
        let db = &self.db;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).at(db)?;
        let admin: bool = tx
            .query_row("SELECT admin FROM users WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .at(db)?
            .ok_or_else(|| StoreError::NoSuchUser { name: name.to_owned() })?;
        if admin {
            let admins: i64 =
                tx.query_row("SELECT count(*) FROM users WHERE admin = 1", [], |r| r.get(0)).at(db)?;
            if admins <= 1 {
                return Err(StoreError::LastAdmin { name: name.to_owned() });
            }
        }
        let owned: i64 =
            tx.query_row("SELECT count(*) FROM licenses WHERE owner = ?1", [name], |r| r.get(0)).at(db)?;
        let moved = match (owned, reassign) {
            (0, _) => 0,
            (n, None) => return Err(StoreError::OwnsLicenses { name: name.to_owned(), count: count(n) }),
            (_, Some(to)) if to == name => {
                return Err(StoreError::OwnsLicenses { name: name.to_owned(), count: count(owned) })
            }
            (_, Some(to)) => {
                tx.query_row("SELECT 1 FROM users WHERE name = ?1", [to], |_| Ok(()))
                    .optional()
                    .at(db)?
                    .ok_or_else(|| StoreError::NoSuchUser { name: to.to_owned() })?;
                tx.execute("UPDATE licenses SET owner = ?1 WHERE owner = ?2", params![to, name]).at(db)?
            }
        };
        tx.execute("DELETE FROM api_tokens WHERE user = ?1", [name]).at(db)?;
        tx.execute("DELETE FROM users WHERE name = ?1", [name]).at(db)?;
        let detail = match reassign {
            Some(to) if moved > 0 => format!("account {name}; {moved} licenses to {to}"),
            _ => format!("account {name}"),
        };
        let row = audit::Row {
            ts: super::unix_now(),
            event: "user-del",
            actor: Some(by),
            detail: Some(detail),
            ..audit::Row::default()
        };
        audit::insert(&tx, db, row)?;
        tx.commit().at(db)?;
        Ok(moved)
    }
}

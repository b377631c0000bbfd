//! Throttled admin logins: after [`FREE_FAILURES`] wrong passwords in a row, each further
//! attempt must wait twice as long as the one before (1 s, 2 s, 4 s … up to 15 min). The
//! count lives in the store, so it holds across CLI invocations and for the web sign-in alike,
//! and a success resets it.
//!
//! The time of the last failure is kept in milliseconds: in whole seconds, a failure at x.9 s
//! and the next attempt at (x+1).1 s looked a full second apart, so the 1 s wait after the
//! fifth failure let a sixth password be checked 0.2 s later. The table is a new one
//! (`login_backoff`) rather than a changed `login_failures`, so an older build that still reads
//! seconds from `login_failures` never sees a millisecond value there.

use rusqlite::OptionalExtension;

use super::{At, Store, StoreError};

pub const FREE_FAILURES: i64 = 5;
pub const MAX_WAIT_S: i64 = 15 * 60;

const ENSURE: &str = "CREATE TABLE IF NOT EXISTS login_backoff (
    name    TEXT PRIMARY KEY NOT NULL,
    count   INTEGER NOT NULL,
    last_ms INTEGER NOT NULL
) STRICT";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long after the last failure the next attempt is allowed.
pub fn wait_after(failures: i64) -> i64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    let doublings = u32::try_from((failures - FREE_FAILURES).min(20)).unwrap_or(20);
    (1i64 << doublings).min(MAX_WAIT_S)
}

impl Store {
    /// Refuses with [`StoreError::LoginThrottled`] while `name` must wait.
    pub(super) fn login_gate(&self, name: &str) -> Result<(), StoreError> {
        self.conn.execute(ENSURE, []).at(&self.db)?;
        let row: Option<(i64, i64)> = self
            .conn
            .query_row("SELECT count, last_ms FROM login_backoff WHERE name = ?1", [name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .at(&self.db)?;
        if let Some((count, last_ms)) = row {
            let left_ms = last_ms.saturating_add(wait_after(count).saturating_mul(1000)) - now_ms();
            if left_ms > 0 {
                // Rounded up: "try again in 0 s" would invite an attempt that is still refused.
                let retry_after_s = (left_ms + 999) / 1000;
                return Err(StoreError::LoginThrottled { name: name.to_owned(), retry_after_s });
            }
        }
        Ok(())
    }

    pub(super) fn login_result(&self, name: &str, ok: bool) -> Result<(), StoreError> {
        if ok {
            self.conn.execute("DELETE FROM login_backoff WHERE name = ?1", [name]).at(&self.db)?;
        } else {
            self.conn
                .execute(
                    "INSERT INTO login_backoff (name, count, last_ms) VALUES (?1, 1, ?2)
                     ON CONFLICT(name) DO UPDATE SET count = count + 1, last_ms = ?2",
                    rusqlite::params![name, now_ms()],
                )
                .at(&self.db)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_after_five_and_is_capped() {
        assert_eq!(wait_after(4), 0);
        assert_eq!(wait_after(5), 1);
        assert_eq!(wait_after(6), 2);
        assert_eq!(wait_after(9), 16);
        assert_eq!(wait_after(100), MAX_WAIT_S);
    }
}

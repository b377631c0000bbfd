//! Who holds each recorded lease (the identity its client stated, proto-spec.md §2), beside
//! the grant journal rather than in it: the table and the audit log's `who` column are added
//! on open, so a data dir still opens in a build that predates them (which ignores both), and
//! `--recover` rebuilds the journal without them.

use rusqlite::{params, Connection, Transaction};

use super::{lease_id_to_sql, At, StoreError};
use crate::proto::identity::Identity;
use crate::proto::server::RestoredLease;

const ENSURE: &str = "
CREATE TABLE IF NOT EXISTS lease_holders (
    lease_id INTEGER PRIMARY KEY,
    who      TEXT NOT NULL
) STRICT;
";

/// Creates the table and the audit column if they are missing, and drops identities of leases
/// the journal no longer has (a grant that replaced its row without a removal, §7).
pub(super) fn ensure(conn: &Connection, db: &std::path::Path) -> Result<(), StoreError> {
    conn.execute_batch(ENSURE).at(db)?;
    if !has_audit_who(conn, db)? {
        // Two processes opening at once: the loser's ALTER fails on the column the winner added.
        if let Err(e) = conn.execute_batch("ALTER TABLE audit ADD COLUMN who TEXT") {
            if !has_audit_who(conn, db)? {
                return Err(e).at(db);
            }
        }
    }
    // Tidying only: a journal that cannot be read here (damaged, to be recovered) is dealt
    // with where the server reads it, and an orphan row costs nothing but its bytes.
    let _ = conn.execute("DELETE FROM lease_holders WHERE lease_id NOT IN (SELECT lease_id FROM leases)", []);
    Ok(())
}

fn has_audit_who(conn: &Connection, db: &std::path::Path) -> Result<bool, StoreError> {
    let n: i64 = conn
        .query_row("SELECT count(*) FROM pragma_table_info('audit') WHERE name = 'who'", [], |r| r.get(0))
        .at(db)?;
    Ok(n > 0)
}

/// Stored with the grant, in its transaction.
pub(super) fn record(
    tx: &Transaction<'_>,
    db: &std::path::Path,
    l: &RestoredLease,
) -> Result<(), StoreError> {
    match l.who.as_deref().and_then(|w| serde_json::to_string(w).ok()) {
        Some(json) => tx
            .prepare_cached("INSERT OR REPLACE INTO lease_holders (lease_id, who) VALUES (?1, ?2)")
            .at(db)?
            .execute(params![lease_id_to_sql(l.lease_id), json])
            .at(db)?,
        None => forget_in(tx, db, l.lease_id)?,
    };
    Ok(())
}

pub(super) fn forget(tx: &Transaction<'_>, db: &std::path::Path, lease_id: u64) -> Result<(), StoreError> {
    forget_in(tx, db, lease_id).map(|_| ())
}

fn forget_in(conn: &Connection, db: &std::path::Path, lease_id: u64) -> Result<usize, StoreError> {
    conn.prepare_cached("DELETE FROM lease_holders WHERE lease_id = ?1")
        .at(db)?
        .execute([lease_id_to_sql(lease_id)])
        .at(db)
}

/// An identity as stored (JSON), or `None` if it does not read as one or says nothing.
pub fn parse(json: &str) -> Option<Identity> {
    serde_json::from_str::<Identity>(json).ok().filter(|w| !w.is_empty())
}

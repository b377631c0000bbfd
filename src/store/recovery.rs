//! Starting over a damaged lease journal, without deleting anything (proto-spec.md §7).
//!
//! A server that cannot read its recorded grants does not know which seats are taken, so by
//! default it refuses to start. `serve --recover` calls [`Store::recover_leases`]: the rows that
//! still parse are kept, the others are moved to `leases_damaged` for a human to look at, and the
//! server then runs a grace period in which only earlier holders may take seats.

use rusqlite::types::Value;
use rusqlite::TransactionBehavior;

use super::{corrupt, lease_id_from_sql, At, Store, StoreError};
use crate::proto::server::RestoredLease;

/// Holds what recovery could not read; untyped, so that any damaged value fits.
const DAMAGED: &str = "
CREATE TABLE IF NOT EXISTS leases_damaged (
    lease_id    ANY,
    license     ANY,
    instance_id ANY,
    addr        ANY,
    since       ANY,
    moved_at    INTEGER NOT NULL
);
";

fn parse(row: &[Value]) -> Option<RestoredLease> {
    let [Value::Integer(lease), Value::Integer(license), Value::Blob(instance), Value::Text(addr), Value::Integer(since)] =
        row
    else {
        return None;
    };
    let lease_id = lease_id_from_sql(*lease);
    Some(RestoredLease {
        lease_id: (lease_id != 0).then_some(lease_id)?,
        license: *license,
        instance_id: instance.as_slice().try_into().ok()?,
        addr: addr.parse().ok()?,
        since_unix: u64::try_from(*since).ok()?,
        // Recovery rebuilds the journal only; identities stay in their own table.
        who: None,
    })
}

impl Store {
    /// A cheap write that changes nothing anyone reads: tells whether the disk takes writes
    /// again after a failed commit.
    pub fn probe(&mut self) -> Result<(), StoreError> {
        let db = &self.db;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).at(db)?;
        tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('write_probe', 1)", []).at(db)?;
        tx.commit().at(db)
    }

    /// Reads what can be read of the lease journal and sets the rest aside; returns the
    /// readable leases and how many rows were moved to `leases_damaged`.
    pub fn recover_leases(&mut self, now_unix: u64) -> Result<(Vec<RestoredLease>, usize), StoreError> {
        let db = &self.db;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).at(db)?;
        // A dropped `leases` table comes back as schema.rs defines it.
        tx.execute_batch(
            &super::schema::LEASES.replace("CREATE TABLE leases", "CREATE TABLE IF NOT EXISTS leases"),
        )
        .at(db)?;
        tx.execute_batch(DAMAGED).at(db)?;
        let rows: Vec<(i64, Vec<Value>)> = {
            let mut st =
                tx.prepare("SELECT rowid, lease_id, license, instance_id, addr, since FROM leases").at(db)?;
            let mapped = st
                .query_map([], |r| {
                    let values =
                        (1..6).map(|i| r.get::<_, Value>(i)).collect::<rusqlite::Result<Vec<_>>>()?;
                    Ok((r.get::<_, i64>(0)?, values))
                })
                .at(db)?;
            mapped.collect::<rusqlite::Result<Vec<_>>>().at(db)?
        };
        let mut kept = Vec::new();
        let mut moved = 0usize;
        let now = i64::try_from(now_unix).map_err(|_| corrupt(db, "the clock is past year 292 billion"))?;
        for (rowid, values) in rows {
            match parse(&values) {
                Some(l) => kept.push(l),
                None => {
                    tx.execute(
                        "INSERT INTO leases_damaged (lease_id, license, instance_id, addr, since, moved_at)
                         SELECT lease_id, license, instance_id, addr, since, ?2 FROM leases WHERE rowid = ?1",
                        rusqlite::params![rowid, now],
                    )
                    .at(db)?;
                    tx.execute("DELETE FROM leases WHERE rowid = ?1", [rowid]).at(db)?;
                    moved += 1;
                }
            }
        }
        tx.commit().at(db)?;
        Ok((kept, moved))
    }
}

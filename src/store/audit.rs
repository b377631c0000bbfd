//! The audit log: an append-only table of what happened to licenses and seats, for the
//! admin's usage reports (`lic-udp log`, `/api/log`).
//!
//! Seat events are written in the same transaction as the grant journal they describe, so the
//! log never claims a grant the store does not have, and never misses one it has. Issue and
//! revoke are written with the license change itself. Denials change nothing, so the server
//! batches them between commits. The only deletion is [`Store::prune_audit`], which enforces
//! the site's retention bounds.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{lease_id_from_sql, lease_id_to_sql, to_sql, At, Store, StoreError};
use crate::config::AuditRetention;
use crate::proto::server::{DenyEvent, EndReason, RestoredLease};
use crate::proto::wire::DenyReason;

/// Created on every open rather than by a schema bump: older builds ignore the table, so a
/// data dir can still be moved back to them.
pub(super) const ENSURE: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts       INTEGER NOT NULL,
    event    TEXT NOT NULL,
    license  INTEGER,
    lease    INTEGER,
    instance TEXT,
    addr     TEXT,
    actor    TEXT,
    detail   TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE INDEX IF NOT EXISTS audit_license ON audit (license, seq);
";

/// One audit event as read back. Its JSON field names and values are those of `lic-udp log
/// --csv`'s columns (`seq,time,event,license,lease,instance,address,actor,detail,holder`), so a report
/// script reads either the same way.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    /// Unix seconds; `time` in RFC 3339 (UTC) in JSON, as in the CSV.
    #[serde(rename = "time", serialize_with = "rfc3339")]
    pub ts: u64,
    /// issue, revoke, grant, deny, release, expire, force-release, revoke-end, license-end or drop.
    pub event: String,
    pub license: Option<i64>,
    /// Hex, as `status` shows it.
    pub lease: Option<String>,
    pub instance: Option<String>,
    #[serde(rename = "address")]
    pub addr: Option<String>,
    /// The account that did it, for admin actions.
    pub actor: Option<String>,
    pub detail: Option<String>,
    /// Who held the seat, as its client stated (grant events of clients that send a PROOF_ID);
    /// `holder` in JSON and CSV, written as `status` shows it (`alice@ws12 (cad 2.1)`).
    #[serde(rename = "holder", serialize_with = "who_text")]
    pub who: Option<crate::proto::identity::Identity>,
}

fn who_text<S: serde::Serializer>(
    w: &Option<crate::proto::identity::Identity>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match w {
        Some(w) => s.serialize_str(&w.to_string()),
        None => s.serialize_none(),
    }
}

fn rfc3339<S: serde::Serializer>(ts: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::status::rfc3339(*ts))
}

/// What `lic-udp log` and `/api/log` ask for.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub since_unix: Option<u64>,
    pub license: Option<i64>,
    /// Only events after this sequence number, for paging and live tails: then the `limit`
    /// events right after it, rather than the newest.
    pub after_seq: Option<i64>,
    pub limit: Option<u32>,
    /// Only events of licenses this account owns (a non-admin's view).
    pub owner: Option<String>,
}

/// Everything an audit row can say; `None` columns are stored as NULL.
#[derive(Default)]
pub(super) struct Row<'a> {
    pub ts: u64,
    pub event: &'a str,
    pub license: Option<i64>,
    pub lease: Option<u64>,
    pub instance: Option<&'a [u8; 16]>,
    pub addr: Option<String>,
    pub actor: Option<&'a str>,
    pub detail: Option<String>,
    /// The holder's identity as JSON (grant events).
    pub who: Option<String>,
}

pub(super) fn insert(conn: &Connection, db: &std::path::Path, r: Row<'_>) -> Result<(), StoreError> {
    let mut st = conn
        .prepare_cached(
            "INSERT INTO audit (ts, event, license, lease, instance, addr, actor, detail, who)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .at(db)?;
    st.execute(params![
        to_sql(r.ts, "event time")?,
        r.event,
        r.license,
        r.lease.map(lease_id_to_sql),
        r.instance.map(hex::encode),
        r.addr,
        r.actor,
        r.detail,
        r.who,
    ])
    .at(db)?;
    Ok(())
}

pub(super) fn grant(tx: &Transaction<'_>, db: &std::path::Path, l: &RestoredLease) -> Result<(), StoreError> {
    insert(
        tx,
        db,
        Row {
            ts: l.since_unix,
            event: "grant",
            license: Some(l.license),
            lease: Some(l.lease_id),
            instance: Some(&l.instance_id),
            addr: Some(l.addr.to_string()),
            who: l.who.as_deref().and_then(|w| serde_json::to_string(w).ok()),
            ..Row::default()
        },
    )
}

/// Records the end of a lease, reading what it was from its journal row before the caller
/// deletes it. Nothing is written for a lease the journal never had.
pub(super) fn end(
    tx: &Transaction<'_>,
    db: &std::path::Path,
    lease_id: u64,
    why: &EndReason,
    now: u64,
) -> Result<(), StoreError> {
    let row: Option<(i64, Vec<u8>, String)> = tx
        .prepare_cached("SELECT license, instance_id, addr FROM leases WHERE lease_id = ?1")
        .at(db)?
        .query_row([lease_id_to_sql(lease_id)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .at(db)?;
    let Some((license, instance, addr)) = row else {
        return Ok(());
    };
    let instance = <[u8; 16]>::try_from(instance.as_slice()).ok();
    let actor = match why {
        EndReason::ForceReleased(by) => Some(by.as_str()),
        _ => None,
    };
    insert(
        tx,
        db,
        Row {
            ts: now,
            event: why.event(),
            license: Some(license),
            lease: Some(lease_id),
            instance: instance.as_ref(),
            addr: Some(addr),
            actor,
            ..Row::default()
        },
    )
}

pub fn deny_reason_name(r: DenyReason) -> &'static str {
    match r {
        DenyReason::Full => "full",
        DenyReason::Busy => "busy",
        DenyReason::Revoked => "revoked",
        DenyReason::Expired => "expired",
        DenyReason::Unavailable => "unavailable",
    }
}

impl Store {
    /// Appends the server's denials in one transaction.
    pub fn record_denials(&mut self, events: &[DenyEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let db = &self.db;
        let tx = self.conn.transaction().at(db)?;
        for e in events {
            insert(
                &tx,
                db,
                Row {
                    ts: e.unix,
                    event: "deny",
                    license: Some(e.license),
                    instance: Some(&e.instance_id),
                    addr: Some(e.addr.to_string()),
                    detail: Some(deny_reason_name(e.reason).to_owned()),
                    ..Row::default()
                },
            )?;
        }
        tx.commit().at(db)
    }

    /// Events matching `q`, oldest first: at most `q.limit` (default 10,000) of the newest, or
    /// with `q.after_seq` the first `q.limit` after it. Every filter is applied before the
    /// limit, so a page is never short because other accounts' events filled it.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let db = &self.db;
        let since = q.since_unix.map(|s| to_sql(s, "--since")).transpose()?;
        let limit = i64::from(q.limit.unwrap_or(10_000));
        // Two statements rather than an ORDER BY on an expression, so both walk the seq index.
        let order = if q.after_seq.is_some() { "ASC" } else { "DESC" };
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT seq, ts, event, license, lease, instance, addr, actor, detail, who FROM (
                     SELECT * FROM audit
                     WHERE (?1 IS NULL OR ts >= ?1) AND (?2 IS NULL OR license = ?2)
                       AND (?3 IS NULL OR seq > ?3)
                       AND (?5 IS NULL OR license IN (SELECT id FROM licenses WHERE owner = ?5))
                     ORDER BY seq {order} LIMIT ?4)
                 ORDER BY seq"
            ))
            .at(db)?;
        let rows = st
            .query_map(params![since, q.license, q.after_seq, limit, q.owner], |r| {
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    ts: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    event: r.get(2)?,
                    license: r.get(3)?,
                    lease: r.get::<_, Option<i64>>(4)?.map(|v| format!("{:016x}", lease_id_from_sql(v))),
                    instance: r.get(5)?,
                    addr: r.get(6)?,
                    actor: r.get(7)?,
                    detail: r.get(8)?,
                    who: r.get::<_, Option<String>>(9)?.as_deref().and_then(super::who::parse),
                })
            })
            .at(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .at(db)?;
        Ok(rows)
    }

    /// Deletes events older than `keep` and the oldest beyond `max_events`, at most `batch` rows
    /// a call so that the server's own commits never wait long behind it. Returns how many
    /// went; call again while that equals `batch`.
    pub fn prune_audit(&mut self, r: AuditRetention, now_unix: u64, batch: u32) -> Result<u64, StoreError> {
        let db = &self.db;
        let cutoff = to_sql(now_unix.saturating_sub(r.keep.as_secs()), "retention cutoff")?;
        let max = i64::try_from(r.max_events).unwrap_or(i64::MAX);
        // Rows are appended in seq order with non-decreasing ts (nearly: denials carry their own
        // time), so "the oldest" is the lowest seqs. The highest seq that may go is found
        // first, by reads that take no write lock (WAL); the delete then walks the primary key
        // from the lowest seq and stops after `batch` rows. Done in one statement, the filter
        // scanned the whole table under the write lock whenever little or nothing was due,
        // and the server's grant commits waited for it (issue 11).
        let (by_time, by_count): (Option<i64>, Option<i64>) = self
            .conn
            .query_row(
                "SELECT (SELECT max(seq) FROM audit WHERE ts < ?1), (SELECT max(seq) FROM audit) - ?2",
                params![cutoff, max],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .at(db)?;
        let Some(bound) = by_time.max(by_count.filter(|&c| c > 0)) else {
            return Ok(0);
        };
        let n = self
            .conn
            .execute(
                "DELETE FROM audit WHERE seq IN (
                     SELECT seq FROM audit
                     WHERE seq <= ?1 AND (ts < ?2 OR seq <= ?3)
                     ORDER BY seq LIMIT ?4)",
                params![bound, cutoff, by_count.unwrap_or(0), i64::from(batch)],
            )
            .at(db)?;
        Ok(n as u64)
    }
}

//! The audit log on etcd: every node's grants and ends, and admins' issues and revocations,
//! as keys `audit/<unix ms>-<node>-<n>` written in the same transaction as the change they
//! describe (a grant's, a removal's, an issue's), so the log never claims a grant etcd does
//! not have. Read back in etcd's commit order (the keys' create revision): one order for the
//! whole cluster. Bounded like the data dir's log: nodes prune past the site's retention.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::gateway::{prefix_end, EtcdError, Op};
use super::EtcdStore;
use crate::store::{AuditEntry, AuditQuery, StoreError};

/// One event as stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuditRec {
    pub ts: u64,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The node that wrote it (none for admin commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Who held the seat (grant and takeover events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<crate::proto::identity::Identity>,
}

/// Keeps keys of one process apart within a millisecond.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Transactions carry at most 128 operations by default; a grant with its event takes two.
pub const MAX_GRANTS_PER_TXN: usize = 60;

impl EtcdStore {
    /// The put that records `rec`, for the caller's transaction.
    pub fn audit_op(&self, rec: &AuditRec) -> Option<Op> {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let who = rec.node.as_deref().unwrap_or("admin");
        let key = self.key(&format!("audit/{ms:020}-{who}-{}-{n}", std::process::id()));
        let value = serde_json::to_vec(rec).ok()?;
        Some(Op::Put { key, value, lease: 0 })
    }

    /// Events as `lic-udp log` shows them: filtered, the newest `limit`, oldest first. `seq` is
    /// the event's etcd revision.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        // A non-admin sees only events of licenses it owns; filtered before `limit`, as the
        // SQLite store does, so that a page is never emptied by other accounts' events.
        let owned: Option<std::collections::HashSet<i64>> = match &q.owner {
            Some(owner) => {
                Some(self.licenses()?.into_iter().filter(|l| &l.owner == owner).map(|l| l.id).collect())
            }
            None => None,
        };
        let (kvs, _) = self.gw.range_prefix(&self.key("audit/"))?;
        let mut out: Vec<AuditEntry> = kvs
            .into_iter()
            .filter_map(|kv| {
                let r: AuditRec = serde_json::from_slice(&kv.value).ok()?;
                Some(AuditEntry {
                    seq: kv.create_revision,
                    ts: r.ts,
                    event: r.event,
                    license: r.license,
                    lease: r.lease,
                    instance: r.instance,
                    addr: r.addr,
                    actor: r.actor.or(r.node.map(|n| format!("node {n}"))),
                    detail: r.detail,
                    who: r.who,
                })
            })
            .filter(|e| q.since_unix.is_none_or(|s| e.ts >= s))
            .filter(|e| q.license.is_none_or(|l| e.license == Some(l)))
            .filter(|e| q.after_seq.is_none_or(|a| e.seq > a))
            .filter(|e| owned.as_ref().is_none_or(|o| e.license.is_some_and(|l| o.contains(&l))))
            .collect();
        out.sort_by_key(|e| e.seq);
        let limit = usize::try_from(q.limit.unwrap_or(10_000)).unwrap_or(usize::MAX);
        if out.len() > limit {
            if q.after_seq.is_some() {
                out.truncate(limit);
            } else {
                out.drain(..out.len() - limit);
            }
        }
        Ok(out)
    }

    /// Deletes events older than `keep` and the oldest beyond `max_events`, in transactions of
    /// 100 deletes. Returns how many went.
    pub fn prune_audit(
        &self,
        keep: std::time::Duration,
        max_events: u64,
        now_unix: u64,
    ) -> Result<u64, EtcdError> {
        let prefix = self.key("audit/");
        let (kvs, _) = self.gw.range_prefix_keys(&prefix, &prefix_end(&prefix))?;
        let cutoff_ms = now_unix.saturating_sub(keep.as_secs()).saturating_mul(1000);
        let excess = u64::try_from(kvs.len()).unwrap_or(u64::MAX).saturating_sub(max_events);
        let mut doomed = Vec::new();
        for (i, key) in kvs.iter().enumerate() {
            let ms = key
                .get(prefix.len()..prefix.len() + 20)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            if (i as u64) < excess || ms < cutoff_ms {
                doomed.push(key.clone());
            }
        }
        let mut gone = 0;
        for chunk in doomed.chunks(100) {
            let ops: Vec<Op> = chunk.iter().map(|k| Op::Delete(k.clone())).collect();
            self.gw.txn(&[], &ops)?;
            gone += chunk.len() as u64;
        }
        Ok(gone)
    }
}

//! Seats in etcd: the guarded grant, the takeover, the removal that deletes only its own
//! record, and the cluster-wide view of holders (proto-spec.md §11).

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::proto::identity::Identity;

use super::gateway::{prefix_end, Cmp, EtcdError, Op};
use super::EtcdStore;
use crate::proto::server::RestoredLease;

/// How many times a grant is retried when another node's grant of the same license committed
/// between our count and our transaction. Past that the client's PROOF is answered later
/// (it retransmits), not wrongly.
const GRANT_TRIES: usize = 8;

/// One held seat as etcd keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    /// The wire lease id, hex: JSON numbers lose bits above 2^53.
    pub lease_id: String,
    pub addr: String,
    pub since: u64,
    pub node: String,
    /// Who holds it (proto-spec.md §2, PROOF_ID); absent in records of older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<Identity>,
}

impl HolderRecord {
    pub fn lease_id(&self) -> Option<u64> {
        u64::from_str_radix(&self.lease_id, 16).ok()
    }
}

/// What became of one grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantOutcome {
    /// Recorded: its GRANT may leave. `rev` is the record's mod_revision.
    Committed { rev: i64 },
    /// The license is full, counting every node's holders: answer DENY FULL.
    Full,
    /// Not decided now (the instance has another record, or the license is contended): send
    /// nothing, the client retransmits its PROOF.
    Later,
}

/// A holder record this node wrote, with the revision that wrote it: a removal deletes the
/// record only while it is still that version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    pub lease: RestoredLease,
    pub rev: i64,
}

/// Every holder of the deployment at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub rev: i64,
    /// (store license id, instance, record, the record's mod_revision)
    pub holders: Vec<(i64, [u8; 16], HolderRecord, i64)>,
    /// Wire lease id → the etcd lease its record is attached to.
    pub on_lease: HashMap<u64, i64>,
}

impl EtcdStore {
    fn holders_prefix(&self, license: i64) -> Vec<u8> {
        self.key(&format!("h/{license:020}/"))
    }

    fn holder_key(&self, license: i64, instance: &[u8; 16]) -> Vec<u8> {
        self.key(&format!("h/{license:020}/{}", hex::encode(instance)))
    }

    fn record_value(g: &RestoredLease, node: &str, since: u64) -> Result<Vec<u8>, EtcdError> {
        let rec = HolderRecord {
            lease_id: format!("{:016x}", g.lease_id),
            addr: g.addr.to_string(),
            since,
            node: node.to_owned(),
            who: g.who.as_deref().cloned(),
        };
        serde_json::to_vec(&rec).map_err(|e| EtcdError::Refused(e.to_string()))
    }

    fn grant_event(g: &RestoredLease, node: &str, event: &str) -> super::AuditRec {
        super::AuditRec {
            ts: g.since_unix,
            event: event.to_owned(),
            license: Some(g.license),
            lease: Some(format!("{:016x}", g.lease_id)),
            instance: Some(hex::encode(g.instance_id)),
            addr: Some(g.addr.to_string()),
            node: Some(node.to_owned()),
            who: g.who.as_deref().cloned(),
            ..super::AuditRec::default()
        }
    }

    /// Records several new grants of one license in one transaction when they all fit: one
    /// count and one transaction for the lot, instead of a count and a transaction each. The
    /// ones that do not fit, or a batch whose transaction fails (a race, a takeover among
    /// them), go one by one through [`grant`](Self::grant). Outcomes in the order given.
    pub fn grant_many(
        &self,
        grants: &[&RestoredLease],
        seats: u16,
        node: &str,
        node_lease: i64,
    ) -> Vec<Result<GrantOutcome, EtcdError>> {
        let mut out: Vec<Result<GrantOutcome, EtcdError>> =
            (0..grants.len()).map(|_| Ok(GrantOutcome::Later)).collect();
        let mut done = vec![false; grants.len()];
        if grants.len() > 1 && !crate::store::fault::skip_seat_guard() {
            let license = grants[0].license;
            let prefix = self.holders_prefix(license);
            let counted = self.gw.count_prefix(&prefix);
            let (n, rev) = counted.as_ref().map_or((u64::from(seats), 0), |c| *c);
            let fit = usize::try_from(u64::from(seats).saturating_sub(n)).unwrap_or(0).min(grants.len());
            if fit > 1 {
                let mut cmps = vec![Cmp::RangeModBelow(prefix.clone(), prefix_end(&prefix), rev + 1)];
                let fit = fit.min(super::MAX_GRANTS_PER_TXN);
                let mut ops = Vec::with_capacity(2 * fit);
                for g in &grants[..fit] {
                    let key = self.holder_key(g.license, &g.instance_id);
                    cmps.push(Cmp::Absent(key.clone()));
                    if let Ok(value) = Self::record_value(g, node, g.since_unix) {
                        ops.push(Op::Put { key, value, lease: node_lease });
                    }
                    ops.extend(self.audit_op(&Self::grant_event(g, node, "grant")));
                }
                // An error here leaves the batch to the one-by-one path, which reports it.
                if let Ok((true, rev)) = self.gw.txn(&cmps, &ops) {
                    for i in 0..fit {
                        out[i] = Ok(GrantOutcome::Committed { rev });
                        done[i] = true;
                    }
                }
            }
        }
        for (i, g) in grants.iter().enumerate() {
            if !done[i] {
                out[i] = self.grant(g, seats, node, node_lease);
            }
        }
        out
    }

    /// Takes over several records of other nodes in one transaction per
    /// [`MAX_GRANTS_PER_TXN`](super::MAX_GRANTS_PER_TXN): each compare is the `mod_revision`
    /// the node last read (`known`), so nothing is read here and a record that changed since
    /// fails its chunk, which then goes one by one through [`grant`](Self::grant). Without
    /// this, a node's death queued its holders behind three round trips each (README, "Several
    /// servers": 10,000 holders did not move in 280 s). `known` gives, per grant, the record's
    /// `mod_revision` and `since`; grants without one are left `Later`.
    pub fn take_over_many(
        &self,
        grants: &[(&RestoredLease, i64, u64)],
        node: &str,
        node_lease: i64,
    ) -> Vec<Option<GrantOutcome>> {
        let mut out = vec![None; grants.len()];
        if crate::store::fault::skip_seat_guard() {
            return out;
        }
        for (c, chunk) in grants.chunks(super::MAX_GRANTS_PER_TXN).enumerate() {
            let mut cmps = Vec::with_capacity(chunk.len());
            let mut ops = Vec::with_capacity(2 * chunk.len());
            for (g, rev, since) in chunk {
                let key = self.holder_key(g.license, &g.instance_id);
                let Ok(value) = Self::record_value(g, node, *since) else { continue };
                cmps.push(Cmp::ModEq(key.clone(), *rev));
                ops.push(Op::Put { key, value, lease: node_lease });
                ops.extend(self.audit_op(&Self::grant_event(g, node, "takeover")));
            }
            if let Ok((true, rev)) = self.gw.txn(&cmps, &ops) {
                let base = c * super::MAX_GRANTS_PER_TXN;
                for slot in &mut out[base..base + chunk.len()] {
                    *slot = Some(GrantOutcome::Committed { rev });
                }
            }
        }
        out
    }

    /// Records a grant, or takes over the instance's record from another node when it holds
    /// the same lease id there. The record lives on `node_lease`.
    pub fn grant(
        &self,
        g: &RestoredLease,
        seats: u16,
        node: &str,
        node_lease: i64,
    ) -> Result<GrantOutcome, EtcdError> {
        let key = self.holder_key(g.license, &g.instance_id);
        let value = Self::record_value(g, node, g.since_unix)?;
        let put = || Op::Put { key: key.clone(), value: value.clone(), lease: node_lease };
        let logged = |op: Op, event: &str| -> Vec<Op> {
            let mut ops = vec![op];
            ops.extend(self.audit_op(&Self::grant_event(g, node, event)));
            ops
        };
        let prefix = self.holders_prefix(g.license);
        let end = prefix_end(&prefix);
        // LIC_UDP_FAULT=skip-seat-guard (debug builds): no count, no compares; the node's own
        // holders are all it checks. The over-grant tests must see this.
        if crate::store::fault::skip_seat_guard() {
            let (_, rev) = self.gw.txn(&[], &logged(put(), "grant"))?;
            return Ok(GrantOutcome::Committed { rev });
        }
        let mut existing = None;
        for _ in 0..GRANT_TRIES {
            if let Some(kv) = existing.take() {
                let kv: super::gateway::Kv = kv;
                let theirs: Option<HolderRecord> = serde_json::from_slice(&kv.value).ok();
                if theirs.as_ref().and_then(HolderRecord::lease_id) != Some(g.lease_id) {
                    return Ok(GrantOutcome::Later);
                }
                // Takeover (or our own earlier try that committed): same lease id, same seat.
                let since = theirs.map_or(g.since_unix, |t| t.since);
                let op = Op::Put {
                    key: key.clone(),
                    value: Self::record_value(g, node, since)?,
                    lease: node_lease,
                };
                let (ok, rev) =
                    self.gw.txn(&[Cmp::ModEq(key.clone(), kv.mod_revision)], &logged(op, "takeover"))?;
                if ok {
                    return Ok(GrantOutcome::Committed { rev });
                }
                existing = self.gw.get(&key)?;
                continue;
            }
            let (n, rev) = self.gw.count_prefix(&prefix)?;
            // No holder record of this license was created or changed after the count, and
            // this instance has none.
            let guard = [Cmp::RangeModBelow(prefix.clone(), end.clone(), rev + 1), Cmp::Absent(key.clone())];
            if n < u64::from(seats) {
                let (ok, rev) = self.gw.txn(&guard, &logged(put(), "grant"))?;
                if ok {
                    return Ok(GrantOutcome::Committed { rev });
                }
            }
            // Full, or the compares failed: a record of this instance means a takeover.
            existing = self.gw.get(&key)?;
            if existing.is_none() && n >= u64::from(seats) {
                return Ok(GrantOutcome::Full);
            }
        }
        Ok(GrantOutcome::Later)
    }

    /// Deletes a holder record if it is still the version this node wrote at `rev`, with
    /// `event` in the audit log when it did.
    pub fn remove_holder(
        &self,
        license: i64,
        instance: &[u8; 16],
        rev: i64,
        event: Option<&super::AuditRec>,
    ) -> Result<bool, EtcdError> {
        let key = self.holder_key(license, instance);
        let mut ops = vec![Op::Delete(key.clone())];
        ops.extend(event.and_then(|e| self.audit_op(e)));
        Ok(self.gw.txn(&[Cmp::ModEq(key, rev)], &ops)?.0)
    }

    /// etcd's current revision: it moves with every write anywhere in the cluster.
    pub fn revision(&self) -> Result<i64, EtcdError> {
        Ok(self.gw.count_prefix(&self.key("seq"))?.1)
    }

    /// Where every holder record lives (`P/v1/h/`).
    pub(super) fn holders_root(&self) -> Vec<u8> {
        self.key("h/")
    }

    /// Every holder record of the deployment, read from etcd (a node reads its
    /// [`Mirror`](super::Mirror) instead).
    pub fn snapshot(&self) -> Result<Snapshot, EtcdError> {
        let prefix = self.holders_root();
        let (kvs, rev) = self.gw.range_prefix(&prefix)?;
        Ok(Snapshot::from_parsed(rev, kvs.iter().filter_map(|kv| Parsed::of(prefix.len(), kv))))
    }
}

/// One holder record, parsed: (license, instance, record, mod_revision, etcd lease).
#[derive(Clone, Debug)]
pub(super) struct Parsed {
    pub license: i64,
    pub instance: [u8; 16],
    pub rec: HolderRecord,
    pub rev: i64,
    pub lease: i64,
}

impl Parsed {
    /// `None` for a key or value that is not a holder record (left alone, never counted).
    pub fn of(prefix_len: usize, kv: &super::gateway::Kv) -> Option<Self> {
        let rest = kv.key.get(prefix_len..).and_then(|r| std::str::from_utf8(r).ok())?;
        let (lic, inst) = rest.split_once('/')?;
        let rec = serde_json::from_slice::<HolderRecord>(&kv.value).ok()?;
        Some(Self {
            license: lic.parse().ok()?,
            instance: super::hex_array::<16>(inst)?,
            rec,
            rev: kv.mod_revision,
            lease: kv.lease,
        })
    }
}

impl Snapshot {
    pub(super) fn from_parsed(rev: i64, recs: impl Iterator<Item = Parsed>) -> Self {
        let mut holders = Vec::new();
        let mut on_lease = HashMap::new();
        for p in recs {
            if let Some(id) = p.rec.lease_id() {
                on_lease.insert(id, p.lease);
            }
            holders.push((p.license, p.instance, p.rec, p.rev));
        }
        Self { rev, holders, on_lease }
    }
}

impl EtcdStore {
    /// An admin frees a seat: deletes the record whatever node holds it. The node sees the
    /// record gone and answers the holder STALE. Returns the record it deleted.
    pub fn free_seat(
        &self,
        lease_id: u64,
        by: &str,
    ) -> Result<Option<(i64, [u8; 16], HolderRecord)>, EtcdError> {
        let snap = self.snapshot()?;
        for (lic, inst, rec, rev) in snap.holders {
            if rec.lease_id() == Some(lease_id) {
                let event = super::AuditRec {
                    ts: crate::unix_now(),
                    event: "force-release".to_owned(),
                    license: Some(lic),
                    lease: Some(format!("{lease_id:016x}")),
                    instance: Some(hex::encode(inst)),
                    addr: Some(rec.addr.clone()),
                    actor: Some(by.to_owned()),
                    detail: Some(format!("held through node {}", rec.node)),
                    node: None,
                    who: None,
                };
                if self.remove_holder(lic, &inst, rev, Some(&event))? {
                    return Ok(Some((lic, inst, rec)));
                }
            }
        }
        Ok(None)
    }
}

impl Snapshot {
    /// Whether a record of node `me` is on its etcd lease `lease` (its current one), rather
    /// than left on the lease of an earlier run of the same node.
    pub fn on_my_lease(&self, rec: &HolderRecord, me: &str, lease: i64) -> bool {
        rec.node == me && rec.lease_id().and_then(|id| self.on_lease.get(&id)) == Some(&lease)
    }

    /// Holders this node does not hold on its current etcd lease, per license: instance →
    /// lease id. Records of an earlier run of this node count too: their holders take them
    /// over like any other node's.
    pub fn foreign(&self, me: &str, lease: i64) -> HashMap<i64, HashMap<[u8; 16], u64>> {
        let mut by: HashMap<i64, HashMap<[u8; 16], u64>> = HashMap::new();
        for (lic, inst, rec, _) in &self.holders {
            if !self.on_my_lease(rec, me, lease) {
                if let Some(id) = rec.lease_id() {
                    by.entry(*lic).or_default().insert(*inst, id);
                }
            }
        }
        by
    }

    /// This node's records on `lease`, as restored leases with their revisions (a restart
    /// that adopts its previous etcd lease adopts them).
    pub fn mine(&self, me: &str, lease: i64) -> Vec<OwnedRecord> {
        self.holders
            .iter()
            .filter(|(_, _, rec, _)| self.on_my_lease(rec, me, lease))
            .filter_map(|(lic, inst, rec, rev)| {
                let addr: SocketAddr = rec.addr.parse().ok()?;
                let lease = RestoredLease {
                    lease_id: rec.lease_id()?,
                    license: *lic,
                    instance_id: *inst,
                    addr,
                    since_unix: rec.since,
                    who: rec.who.clone().map(std::sync::Arc::new),
                };
                Some(OwnedRecord { lease, rev: *rev })
            })
            .collect()
    }
}

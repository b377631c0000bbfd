//! The etcd side of a cluster node: a thread that commits grants and removals to etcd, sends
//! the replies that waited for those commits, keeps the node's view of other nodes' holders
//! fresh, and rereads licenses (proto-spec.md §11).
//!
//! The IO thread never waits on etcd: it hands each batch of journal entries, with the
//! replies gated on them, to this thread and goes on with heartbeats. This thread sends those
//! replies itself (on a clone of the socket) once the batch is decided, so a GRANT still
//! leaves only after its record committed.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::server::{JournalOp, ServerCore};
use crate::proto::wire::{DenyReason, MsgType, MAX_REPLY};
use crate::store::etcd::{AuditRec, GrantOutcome, NodeState};
use crate::store::StoreError;

use super::batch::Out;

/// How often the node rereads holders and licenses from etcd: admins' releases, revocations
/// and new licenses take effect within this, and other nodes' grants count here within it.
pub const SYNC: Duration = Duration::from_millis(250);
/// How often the audit log is cut back to the site's retention.
const PRUNE: Duration = Duration::from_secs(60);

pub enum Work {
    /// Journal entries in order, and the replies that wait for them.
    Batch(Vec<JournalOp>, Vec<Out>),
}

/// The IO thread's end.
pub struct Link {
    pub tx: Sender<Work>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

struct Committer {
    node: Arc<NodeState>,
    core: Arc<ServerCore>,
    socket: UdpSocket,
    /// Records this node wrote: lease id → (license, instance, mod_revision).
    owned: HashMap<u64, (i64, [u8; 16], i64)>,
    seats: HashMap<i64, u16>,
    licenses_rev: i64,
    /// The etcd revision of the last full reread: while it stands, nothing changed.
    synced_rev: i64,
    /// Removals etcd did not take (unreachable); written when it answers again.
    pending_removals: Vec<JournalOp>,
    /// Records on this node's etcd lease that no local lease stands for, and when each was
    /// first seen (see `sync`).
    unowned_seen: HashMap<u64, Instant>,
    /// The longest TTL this node promises.
    ttl_cap: Duration,
    /// Other nodes' records as the last reread found them: (license, instance) → (lease id,
    /// mod_revision, since). A holder moving here is taken over with a compare on that
    /// revision, many in one transaction, without reading its record first.
    others: HashMap<(i64, [u8; 16]), (u64, i64, u64)>,
    /// Every holder record, kept by a watch; `None` if its thread could not start (the node then
    /// reads all records on each sync, as it did before the mirror).
    mirror: Option<Arc<crate::store::etcd::Mirror>>,
}

/// Starts the thread. `adopted` are the records a restarted node took back, with their
/// revisions.
pub fn start(
    node: Arc<NodeState>,
    core: Arc<ServerCore>,
    socket: UdpSocket,
    adopted: Vec<crate::store::etcd::OwnedRecord>,
    ttl_cap: Duration,
) -> std::io::Result<Link> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = adopted
        .into_iter()
        .map(|o| (o.lease.lease_id, (o.lease.license, o.lease.instance_id, o.rev)))
        .collect();
    let mut c = Committer {
        node,
        core,
        socket,
        owned,
        seats: HashMap::new(),
        licenses_rev: 0,
        synced_rev: -1,
        pending_removals: Vec::new(),
        unowned_seen: HashMap::new(),
        ttl_cap,
        others: HashMap::new(),
        mirror: None,
    };
    match crate::store::etcd::Mirror::start(c.node.store.clone()) {
        Ok(m) => c.mirror = Some(m),
        Err(e) => {
            tracing::warn!("cannot start the holder watch, reading all holders every sync instead: {e}")
        }
    }
    let thread = std::thread::Builder::new().name("lic-udp-etcd".into()).spawn(move || c.run(&rx))?;
    Ok(Link { tx, thread: Some(thread) })
}

fn lease_of_grant(reply: &[u8]) -> Option<u64> {
    if reply.get(3) != Some(&(MsgType::Grant as u8)) {
        return None;
    }
    reply.get(4..12).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes)
}

impl Committer {
    fn run(&mut self, rx: &Receiver<Work>) {
        let mut next_sync = Instant::now();
        let mut next_prune = Instant::now() + PRUNE;
        loop {
            let wait = next_sync.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Work::Batch(mut ops, mut replies)) => {
                    // Everything queued meanwhile, in order, as one batch: grants of one
                    // license then share a count and a transaction.
                    while let Ok(Work::Batch(more_ops, more_replies)) = rx.try_recv() {
                        ops.extend(more_ops);
                        replies.extend(more_replies);
                    }
                    self.batch(ops, replies);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_sync {
                next_sync = Instant::now() + SYNC;
                self.sync();
            }
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + PRUNE;
                // Every node prunes; the deletes are idempotent, so overlapping ones are harmless.
                let r = self.node.store.site().audit;
                match self.node.store.prune_audit(r.keep, r.max_events, crate::unix_now()) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!("pruned {n} audit events"),
                    Err(e) => tracing::debug!("cannot prune the audit log now: {e}"),
                }
            }
        }
        // The IO thread dropped its sender after handing over what was left.
        if let Some(m) = &self.mirror {
            m.stop();
        }
        self.node.stop();
    }

    fn batch(&mut self, ops: Vec<JournalOp>, replies: Vec<Out>) {
        let unix = crate::unix_now();
        let mut refused: HashMap<u64, DenyReason> = HashMap::new();
        let mut failed = false;
        let mut i = 0;
        while i < ops.len() {
            let JournalOp::Grant(first) = &ops[i] else {
                self.remove(ops[i].clone());
                i += 1;
                continue;
            };
            // A run of grants of one license: one count and one transaction when they fit.
            let mut j = i + 1;
            while j < ops.len() && matches!(&ops[j], JournalOp::Grant(g) if g.license == first.license) {
                j += 1;
            }
            let run = &ops[i..j];
            i = j;
            if failed {
                self.core.commit_failed(run);
                continue;
            }
            let grants: Vec<&crate::proto::server::RestoredLease> = run
                .iter()
                .filter_map(|op| if let JournalOp::Grant(g) = op { Some(g) } else { None })
                .collect();
            let seats = self.seats.get(&first.license).copied().unwrap_or(0);
            let outcomes = self.decide(&grants, seats);
            for (op, (g, outcome)) in run.iter().zip(grants.iter().zip(outcomes)) {
                match outcome {
                    _ if failed => self.core.commit_failed(std::slice::from_ref(op)),
                    Ok(GrantOutcome::Committed { rev }) => {
                        self.owned.insert(g.lease_id, (g.license, g.instance_id, rev));
                        self.core.committed(std::slice::from_ref(op));
                    }
                    Ok(GrantOutcome::Full) => {
                        refused.insert(g.lease_id, DenyReason::Full);
                    }
                    Ok(GrantOutcome::Later) => self.core.commit_failed(std::slice::from_ref(op)),
                    Err(e) => {
                        tracing::error!(
                            "cannot record grants in etcd, denying new seats until it answers: {e}"
                        );
                        self.core.set_store_available(false);
                        self.core.commit_failed(std::slice::from_ref(op));
                        failed = true;
                    }
                }
            }
        }
        let mut buf = [0u8; MAX_REPLY];
        for (to, bytes, n) in replies {
            let Some(datagram) = bytes.get(..n) else { continue };
            match lease_of_grant(datagram) {
                Some(lease) if refused.contains_key(&lease) => {
                    let reason = refused[&lease];
                    if let Some((addr, m)) = self.core.refuse(unix, lease, reason, &mut buf) {
                        let _ = self.socket.send_to(&buf[..m], addr);
                    }
                    refused.remove(&lease);
                }
                // Only a GRANT whose record committed leaves.
                Some(lease) if !self.core.is_durable(lease) => {}
                _ => {
                    let _ = self.socket.send_to(datagram, to);
                }
            }
        }
        // Refused grants whose reply was not in this batch.
        for (lease, reason) in refused {
            if let Some((addr, m)) = self.core.refuse(unix, lease, reason, &mut buf) {
                let _ = self.socket.send_to(&buf[..m], addr);
            }
        }
    }

    /// Commits one license's grants: first, in batches, those that take over a record the last
    /// reread saw on another node under the same lease id (a holder whose node died); then the
    /// rest, new grants counted against the seats.
    fn decide(
        &mut self,
        grants: &[&crate::proto::server::RestoredLease],
        seats: u16,
    ) -> Vec<Result<GrantOutcome, crate::store::etcd::EtcdError>> {
        let (node, lease) = (self.node.cfg.node_id.clone(), self.node.lease());
        let mut out: Vec<Option<Result<GrantOutcome, _>>> = (0..grants.len()).map(|_| None).collect();
        let hinted: Vec<(usize, (&crate::proto::server::RestoredLease, i64, u64))> = grants
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                let &(id, rev, since) = self.others.get(&(g.license, g.instance_id))?;
                (id == g.lease_id).then_some((i, (*g, rev, since)))
            })
            .collect();
        if !hinted.is_empty() {
            let args: Vec<_> = hinted.iter().map(|(_, a)| *a).collect();
            for ((i, (g, ..)), o) in hinted.iter().zip(self.node.store.take_over_many(&args, &node, lease)) {
                if let Some(o) = o {
                    out[*i] = Some(Ok(o));
                    self.others.remove(&(g.license, g.instance_id));
                }
            }
        }
        let rest: Vec<usize> = (0..grants.len()).filter(|&i| out[i].is_none()).collect();
        let rest_grants: Vec<_> = rest.iter().map(|&i| grants[i]).collect();
        for (&i, o) in rest.iter().zip(self.node.store.grant_many(&rest_grants, seats, &node, lease)) {
            out[i] = Some(o);
        }
        out.into_iter().map(|o| o.unwrap_or(Ok(GrantOutcome::Later))).collect()
    }

    fn remove(&mut self, op: JournalOp) {
        let JournalOp::Remove { lease_id, why } = &op else { return };
        let Some(&(license, instance, rev)) = self.owned.get(lease_id) else { return };
        let event = AuditRec {
            ts: crate::unix_now(),
            event: why.event().to_owned(),
            license: Some(license),
            lease: Some(format!("{lease_id:016x}")),
            instance: Some(hex::encode(instance)),
            actor: match why {
                crate::proto::server::EndReason::ForceReleased(by) => Some(by.clone()),
                _ => None,
            },
            node: Some(self.node.cfg.node_id.clone()),
            ..AuditRec::default()
        };
        match self.node.store.remove_holder(license, &instance, rev, Some(&event)) {
            Ok(_) => {
                self.owned.remove(lease_id);
            }
            Err(e) => {
                if self.pending_removals.is_empty() {
                    tracing::warn!("cannot record releases and expiries in etcd, will retry: {e}");
                }
                self.pending_removals.push(op);
            }
        }
    }

    /// Rereads licenses and holders; drops local leases whose records are gone or were taken
    /// over; retries removals; clears the store-down state once etcd answers.
    fn sync(&mut self) {
        if self.node.take_gone() {
            // Every record of ours went with the lease: the seats are no longer ours to serve.
            let now = Instant::now();
            for lease in self.core.lease_ids() {
                self.core.forget(now, lease);
            }
            self.owned.clear();
            self.pending_removals.clear();
            if let Err(e) = self.node.renew_lease() {
                tracing::warn!("cannot take a new etcd lease: {e}");
                self.node.mark_gone();
                return;
            }
        }
        // One cheap read first: while etcd's revision stands (keepalives do not move it),
        // neither licenses nor holders changed, and the full reread is skipped.
        match self.node.store.revision() {
            Ok(rev) if rev == self.synced_rev && self.pending_removals.is_empty() => {
                if !self.core.store_available() {
                    tracing::info!("etcd answers again; granting new seats");
                    self.core.set_store_available(true);
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                self.unavailable(&e.into());
                return;
            }
        }
        let read_at = match self.node.store.licenses_at() {
            Ok((rows, rev)) => {
                if rev != self.licenses_rev {
                    self.licenses_rev = rev;
                    self.seats = rows.iter().map(|r| (r.id, r.seats)).collect();
                    self.core.sync_licenses(rows.iter().map(|r| r.record()).collect());
                }
                rev
            }
            Err(e) => {
                self.unavailable(&e);
                return;
            }
        };
        let mirrored = self.mirror.as_ref().and_then(|m| m.snapshot());
        let snap = match mirrored.map_or_else(|| self.node.snapshot(), Ok) {
            Ok(s) => s,
            Err(e) => {
                self.unavailable(&e);
                return;
            }
        };
        if !self.core.store_available() {
            tracing::info!("etcd answers again; granting new seats");
            self.core.set_store_available(true);
        }
        let me = self.node.cfg.node_id.clone();
        // The earlier of the two reads: a write between them makes the next tick reread.
        self.synced_rev = read_at.min(snap.rev);
        let lease = self.node.lease();
        let mut foreign = snap.foreign(&me, lease);
        // Our records as etcd has them now (on this run's etcd lease).
        let present: HashMap<u64, i64> = snap
            .holders
            .iter()
            .filter(|(_, _, rec, _)| snap.on_my_lease(rec, &me, lease))
            .filter_map(|(_, _, rec, rev)| rec.lease_id().map(|id| (id, *rev)))
            .collect();
        let now = Instant::now();
        let lost: Vec<u64> = self
            .owned
            .iter()
            .filter(|(id, (_, _, rev))| *rev <= snap.rev && present.get(id) != Some(rev))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.owned.remove(&id);
            if self.core.forget(now, id) {
                tracing::info!(
                    "lease {id:016x} was freed or taken over elsewhere; its holder will be told STALE"
                );
            }
        }
        // Records of ours that no lease here stands for: a grant or takeover whose commit went
        // through although its answer was lost (a timeout), so it was undone here. A takeover's
        // holder may still believe it holds that seat, so the record counts as held (and can
        // be taken over again) for one lease TTL after it was first seen; then it is deleted,
        // if still that version, so that its seat is not held by nobody until this node's
        // etcd lease ends.
        let mut unowned = HashMap::new();
        for (lic, inst, rec, rev) in &snap.holders {
            let Some(id) = rec.lease_id() else { continue };
            if snap.on_my_lease(rec, &me, lease) && !self.owned.contains_key(&id) {
                unowned.insert(id, (*lic, *inst, *rev));
                foreign.entry(*lic).or_default().insert(*inst, id);
            }
        }
        self.unowned_seen.retain(|id, _| unowned.contains_key(id));
        for (id, (lic, inst, rev)) in unowned {
            let seen = *self.unowned_seen.entry(id).or_insert(now);
            if now.saturating_duration_since(seen) > self.ttl_cap {
                if let Err(e) = self.node.store.remove_holder(lic, &inst, rev, None) {
                    tracing::debug!("cannot delete an unowned record yet: {e}");
                }
            }
        }
        self.core.sync_foreign(&foreign);
        self.others = snap
            .holders
            .iter()
            .filter_map(|(lic, inst, rec, rev)| {
                let id = rec.lease_id()?;
                (!self.owned.contains_key(&id)).then_some(((*lic, *inst), (id, *rev, rec.since)))
            })
            .collect();
        let pending = std::mem::take(&mut self.pending_removals);
        for op in pending {
            self.remove(op);
        }
    }

    fn unavailable(&self, e: &StoreError) {
        if self.core.store_available() {
            tracing::error!("etcd does not answer, denying new seats until it does: {e}");
        }
        self.core.set_store_available(false);
    }
}

//! What the server core takes in and gives out, apart from datagrams.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::proto::keys::{KdfParams, LicenseKeys};

/// Fixed for the life of one server process.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub server_salt: [u8; 16],
    pub kdf: KdfParams,
    /// This boot's epoch; the driver has already persisted it (proto-spec.md §7).
    pub epoch: u32,
    /// `serve --lease-ttl`: overrides every license type's TTL.
    pub ttl_override: Option<Duration>,
    /// `serve --heartbeat`: overrides every license type's heartbeat interval.
    pub heartbeat_override: Option<Duration>,
    /// `serve --recover`: for this long after start, new seats go only to clients that held
    /// one before (proto-spec.md §7).
    pub recovery_grace: Option<Duration>,
}

/// A license as the store knows it. The core keeps the keys, never a serial.
#[derive(Clone, Debug)]
pub struct LicenseRecord {
    /// The store's id, shown to admins and written into the grant journal.
    pub id: i64,
    pub keys: LicenseKeys,
    pub seats: u16,
    pub expires_unix: Option<u64>,
    pub revoked: bool,
    pub ttl: Duration,
    pub heartbeat: Duration,
}

/// A grant recorded before a restart, to be honoured after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredLease {
    pub lease_id: u64,
    pub license: i64,
    pub instance_id: [u8; 16],
    pub addr: SocketAddr,
    pub since_unix: u64,
    /// Who holds it, as its client stated in a PROOF_ID (proto-spec.md §2); `None` for clients
    /// that send a plain PROOF.
    pub who: Option<std::sync::Arc<crate::proto::identity::Identity>>,
}

/// A change the driver must write to the store. Grants must be committed before their GRANT
/// leaves; removals may lag (proto-spec.md §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalOp {
    Grant(RestoredLease),
    Remove { lease_id: u64, why: EndReason },
}

impl JournalOp {
    /// The leases a journal leaves recorded when applied in order (a re-grant of a lease id
    /// replaces it): what a restart would restore. The SQLite store does this in SQL; this is
    /// for drivers and test harnesses that keep the journal in memory.
    pub fn replay<'a>(ops: impl IntoIterator<Item = &'a JournalOp>) -> Vec<RestoredLease> {
        let mut live: Vec<RestoredLease> = Vec::new();
        for op in ops {
            match op {
                JournalOp::Grant(g) => {
                    live.retain(|l| l.lease_id != g.lease_id);
                    live.push(g.clone());
                }
                JournalOp::Remove { lease_id, .. } => live.retain(|l| l.lease_id != *lease_id),
            }
        }
        live
    }
}

/// Why a lease ended, for the audit log (the store records each removal with its cause).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The holder sent a releasing heartbeat.
    Released,
    /// The holder stopped heartbeating for a TTL.
    Expired,
    /// An admin freed the seat (`lic-udp release`, the dashboard); the name is who did it.
    ForceReleased(String),
    /// Dropped at start-up: its license is gone, or the store held more leases than seats.
    Dropped,
    /// Its license was revoked; ended when the holder was told (ACK or DENY REVOKED).
    Revoked,
    /// Its license's validity ran out; ended when the holder was told (ACK or DENY EXPIRED).
    LicenseExpired,
}

impl EndReason {
    /// The audit log's event name.
    pub fn event(&self) -> &'static str {
        match self {
            Self::Released => "release",
            Self::Expired => "expire",
            Self::ForceReleased(_) => "force-release",
            Self::Dropped => "drop",
            Self::Revoked => "revoke-end",
            Self::LicenseExpired => "license-end",
        }
    }
}

/// A DENY the server sent, kept for the audit log. Denials are not journaled (nothing about
/// seats changed), so they wait in a bounded queue until the driver writes them out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyEvent {
    pub license: i64,
    pub instance_id: [u8; 16],
    pub addr: SocketAddr,
    pub unix: u64,
    pub reason: crate::proto::wire::DenyReason,
}

/// One live lease as the admin's monitor shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub lease: RestoredLease,
    /// Wall-clock second of the last accepted heartbeat (or of the grant).
    pub last_heartbeat_unix: u64,
    /// Whole milliseconds until the lease expires unless renewed.
    pub expires_in_ms: u64,
}

/// What to do with the bytes the core wrote into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing to send.
    None,
    /// Send `out[..n]` now.
    Send(usize),
    /// Send `out[..n]` only after the pending journal has been committed.
    AfterCommit(usize),
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of everything the server did and dropped. Relaxed atomics: they are reports,
        /// not synchronisation.
        #[derive(Debug, Default)]
        pub struct Stats { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// A copy of [`Stats`] at one moment.
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct StatsSnapshot { $(pub $name: u64,)* }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    received,
    /// Bad magic, version, type, length, padding or body.
    dropped_malformed,
    /// A server-to-client type sent to the server.
    dropped_direction,
    /// Source port below 1024.
    dropped_low_port,
    /// Cookie invalid, expired or for another source.
    dropped_cookie,
    /// Tag did not verify.
    dropped_mac,
    /// A PROOF from an address that failed too many (proto-spec.md §4, "Throttling").
    dropped_throttled,
    /// A PROOF for a license that failed too many from all addresses together, from an address
    /// that never proved its key (proto-spec.md §4, "Throttling").
    dropped_throttled_license,
    /// Heartbeat seq already seen or too old, or PROOF older than the current session.
    dropped_replay,
    /// A CHALLENGE, STALE or UNKNOWN not sent: its source address had used up its allowance
    /// (proto-spec.md §4, "Reply limit").
    dropped_reply_limit,
    challenges,
    unknown_license,
    grants,
    regrants,
    denials,
    denied_full,
    denied_busy,
    denied_revoked,
    denied_expired,
    denied_unavailable,
    /// Denials not written to the audit log because its queue was full.
    audit_dropped,
    force_releases,
    /// Seats taken over from another node of a cluster, keeping their lease id (§11).
    takeovers,
    /// Grants the store refused because the license filled up on another node first.
    refused_by_store,
    /// Heartbeats answered STALE because the node's etcd lease might lapse within the TTL an
    /// ACK would promise (§11).
    stale_gated,
    heartbeats,
    releases,
    expiries,
    stale,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

//! The server side of the protocol, without IO (proto-spec.md §4, §5, §7).
//!
//! [`ServerCore::handle`] takes the time, the source address and a datagram, and writes at most
//! one reply into the caller's buffer. [`ServerCore::handle_timeout`] expires leases. The core
//! never reads a clock, a socket or the OS RNG; the driver passes them in.
//!
//! Concurrency: all methods take `&self`. Licenses and leases live in two `DashMap`s. The seat
//! check and the lease insert happen under the license's shard lock, so the limit holds under any
//! interleaving. Lock order is always license, then lease; code that holds a lease entry drops
//! it before touching a license.

mod expiry;
mod table;
mod types;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rand::{rngs::StdRng, Rng, SeedableRng};

pub use types::*;

use super::cookie::{CookieJar, LIFETIME_S};
use super::identity::{self, Identity};
use super::keys::{derive_session_keys, MacKey, SessionKeys};
use super::license_guard::LicenseGuard;
use super::ratelimit::ReplyLimiter;
use super::replay::ReplayWindow;
use super::throttle::Throttle;
use super::wire::{
    self, Ack, AckStatus, Challenge, Cookie, Deny, DenyReason, Grant, Heartbeat, Message, Proof, Stale,
    Unknown, FLAG_RELEASE,
};
use expiry::ExpiryWheel;
pub use expiry::SLOT as SWEEP_PERIOD;
use table::LeaseMap;
pub use table::WARM_MAX;

/// Leases one [`ServerCore::handle_timeout`] call looks at, so that a mass expiry cannot hold
/// up the datagrams queued behind it for long. The server passes this when its socket was
/// idle, and a receive batch's worth while datagrams arrive
/// ([`ServerCore::handle_timeout_within`]).
pub const EXPIRY_BUDGET: usize = 1_000;

/// Lowest source port the server answers; below it are system services (loop-DoS, CVE-2024-2169).
pub const MIN_SOURCE_PORT: u16 = 1024;

/// Denials kept for the audit log between two driver flushes; beyond this they are counted in
/// `audit_dropped` only, so a client hammering a full license cannot grow memory.
pub const MAX_PENDING_DENIALS: usize = 10_000;

struct LicenseState {
    rec: LicenseRecord,
    proof_key: MacKey,
    /// instance_id → lease_id: one lease per instance, the idempotency key of §4 step 5.
    holders: HashMap<[u8; 16], u64>,
    /// instance_id → the (client_nonce, cookie) pairs of its sessions that are over (re-keyed by
    /// a newer PROOF, or their lease released or expired), kept while those cookies can still
    /// verify, so that a replay of their PROOFs can neither re-key a lease nor bring one back
    /// (§4 step 5, §10). Cookie `ts` alone cannot tell them apart: two sessions opened within
    /// one server second carry the same `ts`.
    retired: HashMap<[u8; 16], Retired>,
    /// When `retired` was last pruned: at most once a second, so that releasing or expiring
    /// many leases at once stays linear. Entries left a second too long are harmless: their
    /// cookies no longer pass the cookie check anyway.
    pruned_at_s: u32,
    /// Failed PROOFs against this license from all addresses (§4 "Throttling").
    guard: LicenseGuard,
    /// instance_id → lease_id of seats held through other nodes of a cluster, as the store
    /// last showed them (empty on a single server). They count against the seat limit here,
    /// and a PROOF from one of these instances takes its seat over (§11).
    foreign: HashMap<[u8; 16], u64>,
}

impl LicenseState {
    /// Seats taken, here and on the other nodes of a cluster.
    fn used(&self) -> usize {
        self.holders.len() + self.foreign.len()
    }
}

/// One instance's sessions that are over. Nearly always one; more only when the instance
/// re-handshakes within a cookie lifetime (a spoofed STALE, a release and a new acquisition).
#[derive(Default)]
struct Retired {
    pairs: Vec<([u8; 16], Cookie)>,
}

impl Retired {
    /// Was this PROOF's session used before, or is it older than one that was? Either way it is
    /// a replay: a client's new handshake has a fresh nonce and a cookie no older than its last.
    fn spent(&self, nonce: &[u8; 16], cookie: &Cookie) -> bool {
        self.pairs.iter().any(|(n, c)| (n == nonce && c == cookie) || cookie.ts < c.ts)
    }
}

/// Remembers that a session is over, for [`Retired::spent`].
fn retire(lic: &mut LicenseState, now_s: u32, instance: &[u8; 16], nonce: [u8; 16], cookie: Cookie) {
    prune_retired(lic, now_s);
    let r = lic.retired.entry(*instance).or_default();
    r.pairs.retain(|(_, c)| now_s.saturating_sub(c.ts) <= LIFETIME_S);
    r.pairs.push((nonce, cookie));
}

/// The identity a PROOF_ID stated, if it says anything (decoding checked the block).
fn stated(who: Option<&[u8; identity::WIRE_LEN]>) -> Option<Arc<Identity>> {
    who.and_then(Identity::from_wire).filter(|w| !w.is_empty()).map(Arc::new)
}

/// Forgets retired sessions whose cookies can no longer verify (at most once a second).
fn prune_retired(lic: &mut LicenseState, now_s: u32) {
    if lic.pruned_at_s != now_s {
        lic.pruned_at_s = now_s;
        lic.retired.retain(|_, r| {
            r.pairs.retain(|(_, c)| now_s.saturating_sub(c.ts) <= LIFETIME_S);
            !r.pairs.is_empty()
        });
    }
}

/// `repr(C)`: the fields a heartbeat reads come first, in this order, so that with the lease's
/// own fields before it they fill the first 184 bytes of the lease (three cache lines, four
/// when the allocator's 16-byte alignment straddles one). At 100,000 leases and more the
/// leases are larger than the CPU's caches, and every line a heartbeat touches is a likely
/// miss (see benches/core.rs).
#[repr(C)]
struct Session {
    keys: SessionKeys,
    window: ReplayWindow,
    client_nonce: [u8; 16],
    cookie: Cookie,
}

/// `repr(C)` for the same reason as [`Session`]: the heartbeat's fields first, compact, the
/// rest (read by handshakes, expiry sweeps and admins) after them.
#[repr(C)]
struct Lease {
    expires: Instant,
    /// The license's own end (unix seconds), `u64::MAX` for none.
    license_expires_unix: u64,
    ttl_ms: u32,
    /// Set once the license is revoked or has expired: heartbeats get this status.
    ended: Option<AckStatus>,
    /// False until the grant journal holding this lease has been committed.
    durable: bool,
    /// None for a lease restored after a restart until its holder re-handshakes.
    session: Option<Session>,
    license_id: [u8; 8],
    record: RestoredLease,
}

impl Lease {
    fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.ttl_ms))
    }

    /// Reads a word from each cache line a heartbeat will use (see [`ServerCore::warm`]).
    fn touch(&self) -> u64 {
        let head = u64::from(self.ttl_ms) ^ self.license_expires_unix;
        self.session
            .as_ref()
            .map_or(head, |s| head ^ u64::from(s.keys.c2s.touch() ^ s.keys.s2c.touch()) ^ s.window.top())
    }
}

fn license_end(expires_unix: Option<u64>) -> u64 {
    expires_unix.unwrap_or(u64::MAX)
}

pub struct ServerCore {
    cfg: ServerConfig,
    start: Instant,
    licenses: DashMap<[u8; 8], LicenseState>,
    /// Store id → wire id, to apply revocations and restored leases.
    by_db_id: DashMap<i64, [u8; 8]>,
    leases: LeaseMap,
    cookies: RwLock<CookieJar>,
    rng: Mutex<StdRng>,
    journal: Mutex<Vec<JournalOp>>,
    /// DENYs waiting for the audit log, at most [`MAX_PENDING_DENIALS`].
    denials: Mutex<Vec<DenyEvent>>,
    /// Until then only earlier holders (PROOF with `prev_lease_id`) may take new seats: the
    /// recovery grace after the lease journal was lost (proto-spec.md §7).
    grace_until: Option<Instant>,
    /// False after the store refused a commit, until the driver sees it take writes again. New
    /// grants are denied UNAVAILABLE meanwhile; heartbeats of holders are unaffected.
    store_ok: AtomicBool,
    /// Clusters: no ACK OK after this instant (ms since `start`; `u64::MAX` on a single
    /// server). The driver moves it forward each time etcd renews the node's lease, so that
    /// every ACK's promise ends before the lease, and the records it keeps alive, can (§11).
    ack_until_ms: AtomicU64,
    /// Clusters: the longest TTL a lease may promise (ms; `u64::MAX` on a single server).
    ttl_cap_ms: AtomicU64,
    throttle: Throttle,
    /// When the throttle was last swept (ms since `start`; `u64::MAX`: never).
    throttle_swept_ms: AtomicU64,
    /// Replies to unauthenticated datagrams (CHALLENGE, STALE, UNKNOWN) per source address
    /// (proto-spec.md §4, "Reply limit").
    replies: ReplyLimiter,
    expiry: ExpiryWheel,
    stats: Stats,
}

/// The session keys a PROOF opens (proto-spec.md §3); `lease_id` 0 gives the DENY key.
fn proof_session(rec: &LicenseRecord, p: &Proof, lease_id: u64, epoch: u32) -> SessionKeys {
    derive_session_keys(
        &rec.keys.k_auth,
        &p.client_nonce,
        &p.cookie,
        &p.license_id,
        &p.instance_id,
        lease_id,
        epoch,
    )
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl ServerCore {
    /// Builds the core with the store's licenses and the leases granted before a restart.
    /// Restored leases expire one TTL after `now` (proto-spec.md §7).
    pub fn new(
        cfg: ServerConfig,
        licenses: Vec<LicenseRecord>,
        restored: Vec<RestoredLease>,
        now: Instant,
        rng_seed: [u8; 32],
    ) -> Self {
        let mut rng = StdRng::from_seed(rng_seed);
        let jar = CookieJar::new(rng.gen(), 0);
        let replies = ReplyLimiter::new(now, rng.gen());
        let cfg_grace = cfg.recovery_grace;
        let core = Self {
            cfg,
            start: now,
            licenses: DashMap::new(),
            by_db_id: DashMap::new(),
            leases: LeaseMap::default(),
            cookies: RwLock::new(jar),
            rng: Mutex::new(rng),
            journal: Mutex::new(Vec::new()),
            denials: Mutex::new(Vec::new()),
            grace_until: cfg_grace.map(|d| now + d),
            store_ok: AtomicBool::new(true),
            ack_until_ms: AtomicU64::new(u64::MAX),
            ttl_cap_ms: AtomicU64::new(u64::MAX),
            throttle: Throttle::default(),
            throttle_swept_ms: AtomicU64::new(u64::MAX),
            replies,
            expiry: ExpiryWheel::new(now),
            stats: Stats::default(),
        };
        core.sync_licenses(licenses);
        for r in restored {
            core.restore(now, r);
        }
        core
    }

    fn restore(&self, now: Instant, r: RestoredLease) {
        let Some(license_id) = self.by_db_id.get(&r.license).map(|v| *v) else {
            // The license is gone from the store: nothing to hold a seat of.
            self.push_journal(JournalOp::Remove { lease_id: r.lease_id, why: EndReason::Dropped });
            return;
        };
        let Some(mut lic) = self.licenses.get_mut(&license_id) else {
            return;
        };
        // The store may hold more than the license allows (a removal lost to a failed commit,
        // seats lowered while the server was down) or two leases of one instance. The limit
        // holds anyway: the oldest grants are kept (the store lists them by age), the rest are
        // dropped and their removal journaled.
        if lic.holders.contains_key(&r.instance_id) || lic.used() >= usize::from(lic.rec.seats) {
            drop(lic);
            self.push_journal(JournalOp::Remove { lease_id: r.lease_id, why: EndReason::Dropped });
            return;
        }
        let ttl = self.ttl(&lic.rec);
        let lease_id = r.lease_id;
        lic.holders.insert(r.instance_id, r.lease_id);
        // A holder from before the restart proved the key then: keep it out of the license's
        // guessing budget.
        lic.guard.succeeded(r.addr.ip(), 0);
        let ended = lic.rec.revoked.then_some(AckStatus::Revoked);
        self.leases.insert(
            lease_id,
            Box::new(Lease {
                license_id,
                session: None,
                expires: now + ttl,
                ttl_ms: ms(ttl),
                license_expires_unix: license_end(lic.rec.expires_unix),
                ended,
                durable: true,
                record: r,
            }),
        );
        self.expiry.schedule(lease_id, now + ttl);
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Called by the driver after a failed commit (false) and once the store takes writes
    /// again (true).
    pub fn set_store_available(&self, ok: bool) {
        self.store_ok.store(ok, Ordering::Relaxed);
    }

    /// Clusters: heartbeats are acknowledged only before `until`; later ones get STALE, so
    /// their holders move to another node (§11). The driver calls this after each renewal of
    /// the node's etcd lease.
    pub fn set_ack_deadline(&self, until: Instant) {
        let ms =
            u64::try_from(until.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX - 1);
        self.ack_until_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether an ACK OK may be sent at `now` (always, on a single server).
    fn ack_allowed(&self, now: Instant) -> bool {
        let until = self.ack_until_ms.load(Ordering::Relaxed);
        until == u64::MAX
            || u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
                <= until
    }

    pub fn store_available(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed)
    }

    /// Time left in the recovery grace period, if any.
    pub fn grace_left(&self, now: Instant) -> Option<Duration> {
        self.grace_until.and_then(|g| g.checked_duration_since(now)).filter(|d| !d.is_zero())
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn live_leases(&self) -> usize {
        self.leases.len()
    }

    /// Seats in use per store license id.
    pub fn seats_in_use(&self) -> HashMap<i64, usize> {
        self.seats().into_iter().map(|(id, (used, _))| (id, used)).collect()
    }

    fn ttl(&self, rec: &LicenseRecord) -> Duration {
        let ttl = self.cfg.ttl_override.unwrap_or(rec.ttl);
        match self.ttl_cap_ms.load(Ordering::Relaxed) {
            u64::MAX => ttl,
            cap => ttl.min(Duration::from_millis(cap)),
        }
    }

    fn heartbeat(&self, rec: &LicenseRecord) -> Duration {
        let hb = self.cfg.heartbeat_override.unwrap_or(rec.heartbeat);
        let ttl = self.ttl(rec);
        // A TTL cut down by the cap keeps about four heartbeats in it.
        if hb >= ttl {
            ttl / 4
        } else {
            hb
        }
    }

    /// Clusters: no lease promises more than `cap`, the TTL the node's etcd lease and ACK gate
    /// were sized for at start; a license issued later with a longer TTL is served with this
    /// one (§11).
    pub fn set_ttl_cap(&self, cap: Duration) {
        self.ttl_cap_ms.store(u64::try_from(cap.as_millis()).unwrap_or(u64::MAX - 1), Ordering::Relaxed);
    }

    fn now_s(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.start).as_secs()).unwrap_or(u32::MAX)
    }

    fn push_journal(&self, op: JournalOp) {
        if let Ok(mut j) = self.journal.lock() {
            j.push(op);
        }
    }

    /// Takes the changes to write to the store. Call [`committed`](Self::committed) or
    /// [`commit_failed`](Self::commit_failed) with them afterwards.
    pub fn drain_journal(&self) -> Vec<JournalOp> {
        self.journal.lock().map(|mut j| std::mem::take(&mut *j)).unwrap_or_default()
    }

    pub fn has_pending_journal(&self) -> bool {
        self.journal.lock().map(|j| !j.is_empty()).unwrap_or(false)
    }

    /// Whether the lease's grant has been committed (its GRANT may be sent). False for a lease
    /// that is gone.
    pub fn is_durable(&self, lease_id: u64) -> bool {
        self.leases.get(&lease_id).is_some_and(|l| l.durable)
    }

    /// Live lease ids, for a cluster node to drop them all when its etcd lease is gone.
    pub fn lease_ids(&self) -> Vec<u64> {
        self.leases.iter().map(|l| *l.key()).collect()
    }

    /// The grants in `ops` are durable: their GRANTs may now be sent.
    pub fn committed(&self, ops: &[JournalOp]) {
        for op in ops {
            if let JournalOp::Grant(g) = op {
                if let Some(mut l) = self.leases.get_mut(&g.lease_id) {
                    l.durable = true;
                }
            }
        }
    }

    /// The store refused `ops`: undo their grants, since a seat that is not recorded must not be
    /// handed out. Their GRANTs are never sent; the clients retransmit and try again.
    /// Removals in `ops` go back into the journal for the next commit: losing one would
    /// leave a lease in the store that a restart would bring back.
    pub fn commit_failed(&self, ops: &[JournalOp]) {
        for op in ops {
            match op {
                JournalOp::Grant(g) => {
                    let license_id = self.leases.get(&g.lease_id).map(|l| l.license_id);
                    if let Some(license_id) = license_id {
                        self.remove_lease(&license_id, g.lease_id, &g.instance_id, None, EndReason::Dropped);
                    }
                }
                JournalOp::Remove { .. } => self.push_journal(op.clone()),
            }
        }
    }

    /// Replaces the license table with the store's current view. New licenses are served at
    /// once; revoked ones end their leases at the next heartbeat.
    pub fn sync_licenses(&self, records: Vec<LicenseRecord>) {
        for rec in records {
            let id = rec.keys.license_id;
            self.by_db_id.insert(rec.id, id);
            let mut entry = self.licenses.entry(id).or_insert_with(|| LicenseState {
                proof_key: MacKey::new(&rec.keys.k_proof),
                rec: rec.clone(),
                holders: HashMap::new(),
                retired: HashMap::new(),
                pruned_at_s: 0,
                guard: LicenseGuard::default(),
                foreign: HashMap::new(),
            });
            let ended = if rec.revoked { Some(AckStatus::Revoked) } else { None };
            for lease_id in entry.holders.values() {
                if let Some(mut l) = self.leases.get_mut(lease_id) {
                    l.license_expires_unix = license_end(rec.expires_unix);
                    if ended.is_some() {
                        l.ended = ended;
                    }
                }
            }
            entry.rec = rec;
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run: at once while a mass
    /// expiry is being worked off, else at the next sweep period boundary (counted from the
    /// core's start), when the next slot of deadlines comes due: a lease then ends within one
    /// sweep period of its deadline (proto-spec.md §5).
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        if self.expiry.backlog(now) {
            now
        } else {
            self.expiry.next_boundary(now)
        }
    }

    /// Expires leases whose holders stopped heartbeating (at most [`EXPIRY_BUDGET`] per call),
    /// and rotates the cookie key.
    pub fn handle_timeout(&self, now: Instant) {
        self.handle_timeout_within(now, EXPIRY_BUDGET);
    }

    /// [`handle_timeout`](Self::handle_timeout) looking at no more than `budget` due leases.
    /// A driver with datagrams arriving passes a budget about the size of its receive batch:
    /// a removal costs about as much as a heartbeat's user-space work, so expiring a big
    /// batch of leases between two small batches of datagrams would leave heartbeats queued
    /// behind the expiry (proto-spec.md §5, "Expiry": leases due together then end a little
    /// later, about a second for 100,000).
    pub fn handle_timeout_within(&self, now: Instant, budget: usize) {
        self.rotate_cookies(now);
        // The throttle's sweep walks its whole table: once a sweep period, not on every
        // slice of a mass expiry.
        let now_ms = u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX);
        let swept = self.throttle_swept_ms.load(Ordering::Relaxed);
        // `u64::MAX` (never swept) is above any `now_ms`, as a clock that went back would be.
        if now_ms < swept || now_ms >= swept.saturating_add(ms(SWEEP_PERIOD).into()) {
            self.throttle_swept_ms.store(now_ms, Ordering::Relaxed);
            self.throttle.sweep(now);
        }
        let now_s = self.now_s(now);
        for lease_id in self.expiry.due(now, budget.max(1)) {
            let Some((expires, license_id, instance)) =
                self.leases.get(&lease_id).map(|l| (l.expires, l.license_id, l.record.instance_id))
            else {
                continue; // released meanwhile
            };
            if expires > now {
                self.expiry.schedule(lease_id, expires); // renewed meanwhile
            } else if self.remove_lease(&license_id, lease_id, &instance, Some(now_s), EndReason::Expired) {
                bump(&self.stats.expiries);
            }
        }
    }

    /// Removes a lease and its seat; true if it was there. Takes the license lock first.
    /// `ended_at` is `Some(now_s)` when the lease really ended (release, expiry): the removal is
    /// journaled and its session retired against PROOF replays. `None` undoes a grant whose
    /// commit failed, which its client must be able to retry with the same PROOF.
    fn remove_lease(
        &self,
        license_id: &[u8; 8],
        lease_id: u64,
        instance: &[u8; 16],
        ended_at: Option<u32>,
        why: EndReason,
    ) -> bool {
        self.remove_lease_journaled(license_id, lease_id, instance, ended_at, Some(why))
    }

    /// [`remove_lease`](Self::remove_lease); `why` None journals nothing (a record the store
    /// no longer holds for this node).
    fn remove_lease_journaled(
        &self,
        license_id: &[u8; 8],
        lease_id: u64,
        instance: &[u8; 16],
        ended_at: Option<u32>,
        why: Option<EndReason>,
    ) -> bool {
        let lic = self.licenses.get_mut(license_id);
        let removed = self.leases.remove(&lease_id).map(|(_, l)| l);
        if let Some(mut lic) = lic {
            if lic.holders.get(instance) == Some(&lease_id) {
                lic.holders.remove(instance);
            }
            let session = removed.as_ref().and_then(|l| l.session.as_ref());
            if let (Some(now_s), Some(s)) = (ended_at, session) {
                retire(&mut lic, now_s, instance, s.client_nonce, s.cookie);
            }
        }
        if let (Some(why), true, true) = (why, removed.is_some(), ended_at.is_some()) {
            self.push_journal(JournalOp::Remove { lease_id, why });
        }
        removed.is_some()
    }

    fn rotate_cookies(&self, now: Instant) {
        let now_s = self.now_s(now);
        let stale = self.cookies.read().map(|j| j.needs_rotation(now_s)).unwrap_or(false);
        if stale {
            let mut key: [u8; 32] = self.rng.lock().map(|mut r| r.gen()).unwrap_or([0; 32]);
            if let Ok(mut jar) = self.cookies.write() {
                if jar.needs_rotation(now_s) {
                    jar.rotate(key, now_s);
                }
            }
            zeroize::Zeroize::zeroize(&mut key);
        }
    }

    /// Handles one datagram from `src`, writing any reply into `out` (at least
    /// [`wire::MAX_REPLY`] bytes: replies are never larger). `unix` is the wall clock in seconds, for license validity
    /// and the `since` shown to admins.
    pub fn handle(&self, now: Instant, unix: u64, src: SocketAddr, datagram: &[u8], out: &mut [u8]) -> Reply {
        bump(&self.stats.received);
        if src.port() < MIN_SOURCE_PORT {
            bump(&self.stats.dropped_low_port);
            return Reply::None;
        }
        let frame = match wire::decode(datagram) {
            Ok(f) => f,
            Err(_) => {
                bump(&self.stats.dropped_malformed);
                return Reply::None;
            }
        };
        match frame.msg {
            Message::Hello(h) => self.on_hello(now, src, &h.client_nonce, out),
            Message::Proof(p) => self.on_proof(now, unix, src, &p, None, frame.signed, frame.tag, out),
            Message::ProofId(p) => {
                self.on_proof(now, unix, src, &p.proof, Some(&p.who), frame.signed, frame.tag, out)
            }
            Message::Heartbeat(hb) => self.on_heartbeat(now, unix, src, &hb, frame.signed, frame.tag, out),
            _ => {
                bump(&self.stats.dropped_direction);
                Reply::None
            }
        }
    }

    /// Would [`handle`](Self::handle) answer this datagram UNKNOWN: a PROOF with a valid cookie
    /// for `src` naming a license this core does not know? Charges nothing and counts nothing,
    /// so that the driver can reread its store first (a license issued a moment ago) and then
    /// handle the datagram once.
    pub fn names_unknown_license(&self, now: Instant, src: SocketAddr, datagram: &[u8]) -> bool {
        let p = match wire::decode(datagram) {
            Ok(wire::Frame { msg: Message::Proof(p), .. }) => p,
            Ok(wire::Frame { msg: Message::ProofId(p), .. }) => p.proof,
            _ => return false,
        };
        if self.licenses.contains_key(&p.license_id) {
            return false;
        }
        let now_s = self.now_s(now);
        self.cookies.read().map(|j| j.check(now_s, &p.cookie, &src, &p.client_nonce)).unwrap_or(false)
    }

    /// May an unauthenticated reply go to `src`? Counts the ones that may not.
    fn reply_allowed(&self, src: &SocketAddr, now: Instant) -> bool {
        let ok = self.replies.allow(src, now);
        if !ok {
            bump(&self.stats.dropped_reply_limit);
        }
        ok
    }

    fn on_hello(&self, now: Instant, src: SocketAddr, nonce: &[u8; 16], out: &mut [u8]) -> Reply {
        // Before the cookie MAC: a flood of HELLOs costs a lookup per datagram, not a MAC.
        if !self.reply_allowed(&src, now) {
            return Reply::None;
        }
        self.rotate_cookies(now);
        let now_s = self.now_s(now);
        let Ok(jar) = self.cookies.read() else {
            return Reply::None;
        };
        let cookie = jar.issue(now_s, &src, nonce);
        drop(jar);
        let msg = Message::Challenge(Challenge {
            client_nonce: *nonce,
            cookie,
            server_salt: self.cfg.server_salt,
            kdf_m_kib: self.cfg.kdf.m_kib,
            kdf_t: self.cfg.kdf.t,
            kdf_p: self.cfg.kdf.p,
        });
        bump(&self.stats.challenges);
        match wire::encode_unsigned(&msg, out) {
            Some(n) => Reply::Send(n),
            None => Reply::None,
        }
    }

    #[allow(clippy::too_many_arguments)] // one datagram's parts; a struct would only rename them
    fn on_proof(
        &self,
        now: Instant,
        unix: u64,
        src: SocketAddr,
        p: &Proof,
        who: Option<&[u8; identity::WIRE_LEN]>,
        signed: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Reply {
        // §4 step 2: the cookie, before any lookup.
        let now_s = self.now_s(now);
        let cookie_ok =
            self.cookies.read().map(|j| j.check(now_s, &p.cookie, &src, &p.client_nonce)).unwrap_or(false);
        if !cookie_ok {
            bump(&self.stats.dropped_cookie);
            return Reply::None;
        }
        // Guessing limit: an address that failed too often is not answered at all, right or
        // wrong, until its bucket refills.
        if !self.throttle.allows(src.ip(), now) {
            bump(&self.stats.dropped_throttled);
            return Reply::None;
        }
        // Step 3: the license; its shard lock is held to the end, so the seat check and the
        // insert below are one atomic step.
        let Some(mut lic) = self.licenses.get_mut(&p.license_id) else {
            bump(&self.stats.unknown_license);
            self.throttle.failed(src.ip(), now);
            if !self.reply_allowed(&src, now) {
                return Reply::None;
            }
            let msg = Message::Unknown(Unknown { client_nonce: p.client_nonce });
            return wire::encode_unsigned(&msg, out).map_or(Reply::None, Reply::Send);
        };
        // The license's own guessing budget: once many addresses together have failed against
        // it, only addresses that proved its key before are evaluated, until it refills.
        if !lic.guard.allows(src.ip(), now_s) {
            bump(&self.stats.dropped_throttled_license);
            return Reply::None;
        }
        // Step 4.
        if !lic.proof_key.verify(signed, tag) {
            self.throttle.failed(src.ip(), now);
            lic.guard.failed(now_s);
            bump(&self.stats.dropped_mac);
            return Reply::None;
        }
        lic.guard.succeeded(src.ip(), now_s);
        // A replay of the PROOF of a session that is over (re-keyed, or its lease released or
        // expired) while its cookie still lives: it must neither re-key the lease nor bring
        // it back (step 5).
        if !lic.retired.is_empty() {
            prune_retired(&mut lic, now_s);
            if lic.retired.get(&p.instance_id).is_some_and(|r| r.spent(&p.client_nonce, &p.cookie)) {
                bump(&self.stats.dropped_replay);
                return Reply::None;
            }
        }
        let seats = lic.rec.seats;
        let used = lic.used();
        let ttl = self.ttl(&lic.rec);
        let hb = self.heartbeat(&lic.rec);
        let epoch = self.cfg.epoch;

        // Clusters: a GRANT promises a TTL as an ACK does; past the ACK gate this node cannot
        // vouch for it, so the client is sent to another node (§11).
        if !self.ack_allowed(now) {
            bump(&self.stats.stale_gated);
            return self.deny(&lic.rec, p, src, unix, DenyReason::Unavailable, 1000, used, out);
        }

        // Step 5: this instance already holds a lease.
        if let Some(&lease_id) = lic.holders.get(&p.instance_id) {
            if let Some(mut lease) = self.leases.get_mut(&lease_id) {
                if let Some(status) = lease.ended {
                    let (reason, why) = if status == AckStatus::Expired {
                        (DenyReason::Expired, EndReason::LicenseExpired)
                    } else {
                        (DenyReason::Revoked, EndReason::Revoked)
                    };
                    // Told now: the seat is free at once (proto-spec.md §5).
                    let session = lease.session.as_ref().map(|s| (s.client_nonce, s.cookie));
                    drop(lease);
                    lic.holders.remove(&p.instance_id);
                    if self.leases.remove(&lease_id).is_some() {
                        if let Some((nonce, cookie)) = session {
                            retire(&mut lic, now_s, &p.instance_id, nonce, cookie);
                        }
                        self.push_journal(JournalOp::Remove { lease_id, why });
                    }
                    let used = lic.holders.len();
                    return self.deny(&lic.rec, p, src, unix, reason, 0, used, out);
                }
                if let Some(s) = &lease.session {
                    let same = s.client_nonce == p.client_nonce && s.cookie == p.cookie;
                    if !same && p.cookie.ts < s.cookie.ts {
                        bump(&self.stats.dropped_replay);
                        return Reply::None;
                    }
                    if same {
                        bump(&self.stats.regrants);
                        let keys = s.keys.clone();
                        let durable = lease.durable;
                        return self.grant(&keys, lease_id, ttl, hb, used, seats, durable, out);
                    }
                }
                let keys = proof_session(&lic.rec, p, lease_id, epoch);
                let old = lease.session.replace(Session {
                    keys: keys.clone(),
                    client_nonce: p.client_nonce,
                    cookie: p.cookie,
                    window: ReplayWindow::default(),
                });
                lease.expires = now + ttl;
                lease.ttl_ms = ms(ttl);
                lease.record.addr = src;
                if let Some(who) = stated(who) {
                    lease.record.who = Some(who);
                }
                let durable = lease.durable;
                drop(lease);
                if let Some(old) = old {
                    retire(&mut lic, now_s, &p.instance_id, old.client_nonce, old.cookie);
                }
                bump(&self.stats.regrants);
                return self.grant(&keys, lease_id, ttl, hb, used, seats, durable, out);
            }
        }

        // Step 5b (clusters): a seat this instance holds through another node. Taken over
        // under the same lease id; the seat count does not change. The store's commit checks
        // that the record is still the one we saw (§11).
        let taken_over = lic.foreign.get(&p.instance_id).copied().filter(|id| !self.leases.contains_key(id));
        if let Some(lease_id) = taken_over {
            if !lic.rec.revoked && self.store_available() {
                lic.foreign.remove(&p.instance_id);
                bump(&self.stats.takeovers);
                let reply = self.new_lease(&mut lic, p, stated(who), src, unix, now, lease_id, out);
                return reply;
            }
        }

        // Step 6.
        if lic.rec.revoked {
            return self.deny(&lic.rec, p, src, unix, DenyReason::Revoked, 0, used, out);
        }
        if lic.rec.expires_unix.is_some_and(|e| unix >= e) {
            return self.deny(&lic.rec, p, src, unix, DenyReason::Expired, 0, used, out);
        }
        // Step 7a: during a recovery grace, seats go to earlier holders first.
        if let Some(left) = self.grace_left(now) {
            if p.prev_lease_id == 0 {
                return self.deny(&lic.rec, p, src, unix, DenyReason::Busy, ms(left), used, out);
            }
        }
        // Step 7b: a seat that could not be recorded must not be handed out.
        if !self.store_available() {
            return self.deny(&lic.rec, p, src, unix, DenyReason::Unavailable, 1000, used, out);
        }
        // Step 8. Seats held through other nodes (clusters) are counted by the store's
        // commit, which refuses a grant past the limit (§11): the local view of them may be a
        // moment old, and a seat freed there must not be refused here.
        if lic.holders.len() >= usize::from(seats) {
            return self.deny(&lic.rec, p, src, unix, DenyReason::Full, ms(hb), used, out);
        }
        // Step 7: a new lease, journaled; its GRANT waits for the commit.
        let lease_id = self.new_lease_id();
        bump(&self.stats.grants);
        self.new_lease(&mut lic, p, stated(who), src, unix, now, lease_id, out)
    }

    /// Creates a lease (new, or taken over from another node), journals it and writes its
    /// GRANT, which waits for the commit.
    #[allow(clippy::too_many_arguments)] // one PROOF's parts and the lease's id
    fn new_lease(
        &self,
        lic: &mut LicenseState,
        p: &Proof,
        who: Option<Arc<Identity>>,
        src: SocketAddr,
        unix: u64,
        now: Instant,
        lease_id: u64,
        out: &mut [u8],
    ) -> Reply {
        let ttl = self.ttl(&lic.rec);
        let hb = self.heartbeat(&lic.rec);
        let keys = proof_session(&lic.rec, p, lease_id, self.cfg.epoch);
        let record = RestoredLease {
            lease_id,
            license: lic.rec.id,
            instance_id: p.instance_id,
            addr: src,
            since_unix: unix,
            who,
        };
        lic.holders.insert(p.instance_id, lease_id);
        self.leases.insert(
            lease_id,
            Box::new(Lease {
                license_id: p.license_id,
                record: record.clone(),
                session: Some(Session {
                    keys: keys.clone(),
                    client_nonce: p.client_nonce,
                    cookie: p.cookie,
                    window: ReplayWindow::default(),
                }),
                expires: now + ttl,
                ttl_ms: ms(ttl),
                license_expires_unix: license_end(lic.rec.expires_unix),
                ended: None,
                durable: false,
            }),
        );
        self.expiry.schedule(lease_id, now + ttl);
        self.push_journal(JournalOp::Grant(record));
        let used = lic.used().min(usize::from(lic.rec.seats));
        self.grant(&keys, lease_id, ttl, hb, used, lic.rec.seats, false, out)
    }

    fn new_lease_id(&self) -> u64 {
        let Ok(mut rng) = self.rng.lock() else {
            return 1;
        };
        loop {
            let id: u64 = rng.gen();
            if id != 0 && !self.leases.contains_key(&id) {
                return id;
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // the GRANT's fields
    fn grant(
        &self,
        keys: &SessionKeys,
        lease_id: u64,
        ttl: Duration,
        hb: Duration,
        used: usize,
        seats: u16,
        durable: bool,
        out: &mut [u8],
    ) -> Reply {
        let msg = Message::Grant(Grant {
            lease_id,
            epoch: self.cfg.epoch,
            ttl_ms: ms(ttl),
            heartbeat_ms: ms(hb),
            used: u16::try_from(used).unwrap_or(u16::MAX),
            seats,
        });
        let Some(n) = wire::encode_unsigned(&msg, out).and_then(|n| keys.s2c.seal(out, n)) else {
            return Reply::None;
        };
        if durable {
            Reply::Send(n)
        } else {
            Reply::AfterCommit(n)
        }
    }

    #[allow(clippy::too_many_arguments)] // the DENY's fields and what the audit log keeps of it
    fn deny(
        &self,
        rec: &LicenseRecord,
        p: &Proof,
        src: SocketAddr,
        unix: u64,
        reason: DenyReason,
        retry_after_ms: u32,
        used: usize,
        out: &mut [u8],
    ) -> Reply {
        bump(&self.stats.denials);
        bump(match reason {
            DenyReason::Full => &self.stats.denied_full,
            DenyReason::Busy => &self.stats.denied_busy,
            DenyReason::Revoked => &self.stats.denied_revoked,
            DenyReason::Expired => &self.stats.denied_expired,
            DenyReason::Unavailable => &self.stats.denied_unavailable,
        });
        let event = DenyEvent { license: rec.id, instance_id: p.instance_id, addr: src, unix, reason };
        match self.denials.lock() {
            Ok(mut q) if q.len() < MAX_PENDING_DENIALS => q.push(event),
            _ => bump(&self.stats.audit_dropped),
        }
        let keys = proof_session(rec, p, 0, self.cfg.epoch);
        let msg = Message::Deny(Deny {
            epoch: self.cfg.epoch,
            reason: reason as u8,
            retry_after_ms,
            used: u16::try_from(used).unwrap_or(u16::MAX),
            seats: rec.seats,
        });
        wire::encode_unsigned(&msg, out).and_then(|n| keys.s2c.seal(out, n)).map_or(Reply::None, Reply::Send)
    }

    fn stale(&self, now: Instant, src: &SocketAddr, lease_id: u64, out: &mut [u8]) -> Reply {
        if !self.reply_allowed(src, now) {
            return Reply::None;
        }
        bump(&self.stats.stale);
        let msg = Message::Stale(Stale { lease_id, epoch: self.cfg.epoch });
        wire::encode_unsigned(&msg, out).map_or(Reply::None, Reply::Send)
    }

    #[allow(clippy::too_many_arguments)] // one datagram's parts, as on_proof
    fn on_heartbeat(
        &self,
        now: Instant,
        unix: u64,
        src: SocketAddr,
        hb: &Heartbeat,
        signed: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Reply {
        if hb.epoch != self.cfg.epoch {
            return self.stale(now, &src, hb.lease_id, out);
        }
        if !self.ack_allowed(now) && hb.flags & FLAG_RELEASE == 0 {
            // The node's etcd lease may lapse within the TTL this ACK would promise: the holder
            // must take its seat over at another node instead (§11).
            bump(&self.stats.stale_gated);
            return self.stale(now, &src, hb.lease_id, out);
        }
        let Some(mut guard) = self.leases.get_mut(&hb.lease_id) else {
            return self.stale(now, &src, hb.lease_id, out);
        };
        let lease = &mut *guard;
        let Some(session) = lease.session.as_mut() else {
            return self.stale(now, &src, hb.lease_id, out);
        };
        if !session.window.check(hb.seq) {
            // Cheap before the MAC: a seq we already took cannot become acceptable.
            bump(&self.stats.dropped_replay);
            return Reply::None;
        }
        if !session.keys.c2s.verify(signed, tag) {
            bump(&self.stats.dropped_mac);
            return Reply::None;
        }
        session.window.accept(hb.seq);
        let s2c = session.keys.s2c.clone();
        if lease.ended.is_none() && unix >= lease.license_expires_unix {
            lease.ended = Some(AckStatus::Expired);
        }
        let release = hb.flags & FLAG_RELEASE != 0;
        let status = match (lease.ended, release) {
            (_, true) => AckStatus::Released,
            (Some(s), false) => s,
            (None, false) => {
                lease.expires = now + lease.ttl();
                AckStatus::Ok
            }
        };
        let ttl_ms = if status == AckStatus::Ok { lease.ttl_ms } else { 0 };
        // A release, and a revoked or expired license, end the lease now: its holder is told
        // in this ACK, and the seat is free at once (proto-spec.md §5).
        let why = match status {
            AckStatus::Ok => None,
            AckStatus::Released => Some(EndReason::Released),
            AckStatus::Revoked => Some(EndReason::Revoked),
            AckStatus::Expired => Some(EndReason::LicenseExpired),
        };
        // Only an ending reads the lease's tail (past the heartbeat's cache lines).
        let owner = why.as_ref().map(|_| (lease.license_id, lease.record.instance_id));
        // The lease lock must go before remove_lease takes the license lock (lock order).
        drop(guard);
        bump(&self.stats.heartbeats);
        if let (Some((license_id, instance)), Some(why)) = (owner, why) {
            if self.remove_lease(&license_id, hb.lease_id, &instance, Some(self.now_s(now)), why) {
                bump(match status {
                    AckStatus::Revoked => &self.stats.denied_revoked,
                    AckStatus::Expired => &self.stats.denied_expired,
                    _ => &self.stats.releases,
                });
            }
        }
        let msg = Message::Ack(Ack {
            lease_id: hb.lease_id,
            epoch: self.cfg.epoch,
            seq: hb.seq,
            status: status as u8,
            ttl_ms,
        });
        wire::encode_unsigned(&msg, out).and_then(|n| s2c.seal(out, n)).map_or(Reply::None, Reply::Send)
    }

    /// Every live lease, for status displays: (store license id, lease).
    pub fn holders(&self) -> Vec<RestoredLease> {
        let mut out = Vec::with_capacity(self.leases.len());
        self.for_each_lease(|l| out.push(l.record.clone()));
        out
    }

    /// Passes every live lease to `f`, without holding a shard's lock for long: under each
    /// shard's lock only its lease ids are copied, then every lease is looked up on its own.
    /// Cloning the views of a whole shard under its lock, every 2 s per open dashboard tab,
    /// made the heartbeats of that shard wait behind it at 100,000 leases. A lease that goes
    /// between the two steps is skipped; one that comes is not seen until the next walk.
    fn for_each_lease(&self, mut f: impl FnMut(&Lease)) {
        let ids: Vec<u64> = self.leases.iter().map(|l| *l.key()).collect();
        for id in ids {
            if let Some(l) = self.leases.get(&id) {
                f(&l);
            }
        }
    }

    fn lease_view(l: &Lease, now: Instant, unix_ms: u64) -> LeaseView {
        // A renewal sets `expires` to one TTL after the heartbeat.
        let last = l.expires.checked_sub(l.ttl()).unwrap_or(now);
        let ago = u64::try_from(now.saturating_duration_since(last).as_millis()).unwrap_or(u64::MAX);
        LeaseView {
            lease: l.record.clone(),
            last_heartbeat_unix: unix_ms.saturating_sub(ago) / 1000,
            expires_in_ms: u64::try_from(l.expires.saturating_duration_since(now).as_millis())
                .unwrap_or(u64::MAX),
        }
    }

    /// One live lease as the monitor shows it: a single lookup, for an admin's release.
    pub fn lease_view_of(&self, now: Instant, unix_ms: u64, lease_id: u64) -> Option<LeaseView> {
        self.leases.get(&lease_id).map(|l| Self::lease_view(&l, now, unix_ms))
    }

    /// Every live lease with its last heartbeat, for the admin's monitor. `unix_ms` is the wall
    /// clock at `now`, in milliseconds, so that the second shown for a heartbeat does not flip
    /// between two values from one refresh to the next. Walks the whole table: for the
    /// dashboard's refresh, not the hot path.
    pub fn lease_views(&self, now: Instant, unix_ms: u64) -> Vec<LeaseView> {
        let mut out = Vec::with_capacity(self.leases.len());
        self.for_each_lease(|l| out.push(Self::lease_view(l, now, unix_ms)));
        out
    }

    /// Frees a seat at an admin's request: the lease is gone at once, its removal journaled,
    /// and the holder's next heartbeat is answered STALE, so the holder tries to take a seat
    /// again (and gets one if the license has a free seat). Returns the lease as it was, or
    /// `None` if no such lease is live.
    pub fn force_release(&self, now: Instant, lease_id: u64, by: &str) -> Option<RestoredLease> {
        let (license_id, record) = self.leases.get(&lease_id).map(|l| (l.license_id, l.record.clone()))?;
        let why = EndReason::ForceReleased(by.to_owned());
        if self.remove_lease(&license_id, lease_id, &record.instance_id, Some(self.now_s(now)), why) {
            bump(&self.stats.force_releases);
            Some(record)
        } else {
            None
        }
    }

    /// The store refused to record the grant of `lease_id` (clusters: the license filled up
    /// on another node first, §11). The lease is undone as if it had never been granted, and
    /// the DENY its client gets instead is written into `out`: returns where to send it and its
    /// length, or `None` if the lease is gone.
    pub fn refuse(
        &self,
        unix: u64,
        lease_id: u64,
        reason: DenyReason,
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let (license_id, record, proof) = {
            let l = self.leases.get(&lease_id)?;
            let s = l.session.as_ref()?;
            let proof = Proof {
                license_id: l.license_id,
                instance_id: l.record.instance_id,
                client_nonce: s.client_nonce,
                cookie: s.cookie,
                prev_lease_id: 0,
            };
            (l.license_id, l.record.clone(), proof)
        };
        self.remove_lease(&license_id, lease_id, &record.instance_id, None, EndReason::Dropped);
        bump(&self.stats.refused_by_store);
        let lic = self.licenses.get(&license_id)?;
        let retry = if reason == DenyReason::Full { ms(self.heartbeat(&lic.rec)) } else { 1000 };
        let used = lic.used();
        let rec = lic.rec.clone();
        drop(lic);
        match self.deny(&rec, &proof, record.addr, unix, reason, retry, used, out) {
            Reply::Send(n) | Reply::AfterCommit(n) => Some((record.addr, n)),
            Reply::None => None,
        }
    }

    /// Replaces, per store license id, the seats held through other nodes of a cluster
    /// (instance → lease id), as the store shows them now.
    pub fn sync_foreign(&self, by_license: &HashMap<i64, HashMap<[u8; 16], u64>>) {
        for mut lic in self.licenses.iter_mut() {
            let fresh = by_license.get(&lic.rec.id);
            let mut foreign = fresh.cloned().unwrap_or_default();
            // A seat taken over here is ours, whatever an older read says.
            foreign.retain(|inst, _| !lic.holders.contains_key(inst));
            lic.foreign = foreign;
        }
    }

    /// Forgets a lease whose record the store no longer holds for this node: another node
    /// took it over, or an admin freed it through the store. Nothing is journaled (the record
    /// is not ours to delete any more); its session is retired like a release, and the
    /// holder's next heartbeat gets STALE. True if it was live.
    pub fn forget(&self, now: Instant, lease_id: u64) -> bool {
        let Some((license_id, instance)) =
            self.leases.get(&lease_id).map(|l| (l.license_id, l.record.instance_id))
        else {
            return false;
        };
        self.remove_lease_journaled(&license_id, lease_id, &instance, Some(self.now_s(now)), None)
    }

    /// Takes the denials waiting for the audit log.
    pub fn drain_denials(&self) -> Vec<DenyEvent> {
        self.denials.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default()
    }

    /// Seats per store license id, for the metrics' gauges: held through this server, and
    /// the license's seats.
    pub fn seats(&self) -> HashMap<i64, (usize, u16)> {
        self.licenses.iter().map(|l| (l.rec.id, (l.holders.len(), l.rec.seats))).collect()
    }
}

#[cfg(test)]
mod tests;

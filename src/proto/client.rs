//! The client side of the protocol, without IO (proto-spec.md §4–§6).
//!
//! One [`ClientCore`] holds (or tries to hold) one seat for one instance. The driver feeds it
//! datagrams and timeouts and drains, in this order, [`poll_transmit`](ClientCore::poll_transmit),
//! [`poll_event`](ClientCore::poll_event) and [`poll_timeout`](ClientCore::poll_timeout). The
//! slow KDF is not run here: the core asks for keys with [`Event::NeedKeys`] and the driver
//! answers with [`ClientCore::set_keys`], so a test can answer at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::identity::Identity;
use super::keys::{derive_session_keys, KdfParams, LicenseKeys, MacKey, SessionKeys};
use super::wire::{
    self, AckStatus, Challenge, Cookie, DenyReason, Heartbeat, Hello, Message, Proof, ProofId, FLAG_RELEASE,
    MAX_DATAGRAM,
};

/// Client timers (proto-spec.md §6).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub rto_initial: Duration,
    pub rto_max: Duration,
    /// Transmissions of one handshake step before the first acquisition gives up.
    pub handshake_sends: u32,
    /// How long a PROOF may reuse one cookie before the client starts over at HELLO.
    pub cookie_reuse: Duration,
    pub release_sends: u32,
    /// Who this client says holds the seat (sent in a PROOF_ID, §2); `None` sends a plain
    /// PROOF.
    pub identity: Option<Identity>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            rto_initial: Duration::from_millis(500),
            rto_max: Duration::from_secs(8),
            handshake_sends: 6,
            cookie_reuse: Duration::from_secs(25),
            release_sends: 3,
            identity: None,
        }
    }
}

/// What the application is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Run Argon2 for these public inputs and call [`ClientCore::set_keys`].
    NeedKeys { server_salt: [u8; 16], params: KdfParams },
    /// The first seat of this core.
    Granted { lease_id: u64, used: u16, seats: u16, ttl: Duration, heartbeat: Duration },
    /// First acquisition refused (final).
    Denied { reason: DenyReason, used: u16, seats: u16, retry_after: Duration },
    /// The server does not know this license: the serial is wrong (final).
    UnknownLicense,
    /// No answer within the handshake schedule. Final for a first acquisition; after a grant it
    /// is a report and the core keeps trying.
    Unreachable,
    /// The lease ran out with no ACK: the seat may be gone. The core keeps trying to regain it.
    Lost,
    /// After [`Event::Lost`], the seat is held again.
    Regained,
    /// The license was revoked or has expired while held (final).
    Ended(DenyReason),
    /// The seat was given back (final).
    Released,
}

/// PROOF transmissions before a first acquisition starts over with a fresh HELLO.
const PROOF_SENDS_FIRST: u32 = 3;
/// The same while regaining a seat: the loss deadline leaves less room.
const PROOF_SENDS_REGAIN: u32 = 2;
/// Fresh starts after unanswered PROOFs before a first acquisition reports unreachable.
const PROOF_RESTARTS_FIRST: u32 = 3;
/// With several servers: HELLOs sent to one before the next is tried.
const HELLOS_PER_SERVER: u32 = 2;
/// With several servers: heartbeat transmissions in a row without an ACK before the holder
/// moves to the next server: the next timeout after the second, about 1.5 s (0.5 + 1 s).
const UNACKED_BEFORE_FAILOVER: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// Retransmission, heartbeat or backoff, depending on the phase.
    Phase = 0,
    /// The local end of the lease: `last acknowledged heartbeat send + ttl`.
    Loss = 1,
}

#[derive(Default)]
struct Timers([Option<Instant>; 2]);

impl Timers {
    fn set(&mut self, t: Timer, at: Instant) {
        self.0[t as usize] = Some(at);
    }
    fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }
    fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }
    fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

struct HeldSession {
    lease_id: u64,
    epoch: u32,
    keys: SessionKeys,
    next_seq: u64,
    /// The last few heartbeats sent: (seq, when). An ACK names one of them.
    sent: VecDeque<(u64, Instant)>,
    awaiting_ack: bool,
    /// Transmissions since the last ACK.
    unacked: u32,
    rto: Duration,
}

enum Phase {
    Hello {
        nonce: [u8; 16],
        sends: u32,
        rto: Duration,
    },
    WaitKeys {
        challenge: Challenge,
        at: Instant,
    },
    Proof {
        nonce: [u8; 16],
        cookie: Cookie,
        challenged_at: Instant,
        first_sent: Instant,
        sends: u32,
        rto: Duration,
    },
    Held(HeldSession),
    Releasing {
        session: HeldSession,
        sends: u32,
    },
    Backoff,
    Done,
}

/// The seat this core holds or held, across re-handshakes.
struct Tenure {
    lease_id: u64,
    ttl: Duration,
    heartbeat: Duration,
    lost: bool,
}

pub struct ClientCore {
    cfg: ClientConfig,
    rng: StdRng,
    instance_id: [u8; 16],
    keys: Option<(([u8; 16], KdfParams), LicenseKeys)>,
    phase: Phase,
    tenure: Option<Tenure>,
    reported_unreachable: bool,
    /// PROOF steps given up for a fresh HELLO since the last grant.
    proof_restarts: u32,
    timers: Timers,
    out: VecDeque<([u8; MAX_DATAGRAM], usize)>,
    events: VecDeque<Event>,
    /// How many servers the driver knows (proto-spec.md §6, "Several servers"), and the one
    /// it sends to now.
    servers: usize,
    current: usize,
    /// First acquisition: servers that answered DENY BUSY or UNAVAILABLE so far.
    refusals: usize,
    /// A server that answers HELLO but never a PROOF_ID predates identities (§6): from then
    /// on this core sends plain PROOFs.
    plain_proofs: bool,
    /// A PROOF_ID was answered with a GRANT once: the servers know identities, and a PROOF_ID
    /// that goes unanswered later is only lost.
    proof_id_answered: bool,
}

impl ClientCore {
    /// Starts acquiring a seat: the first HELLO is ready in [`poll_transmit`](Self::poll_transmit).
    pub fn new(cfg: ClientConfig, instance_id: [u8; 16], rng_seed: [u8; 32], now: Instant) -> Self {
        let mut core = Self {
            cfg,
            rng: StdRng::from_seed(rng_seed),
            instance_id,
            keys: None,
            phase: Phase::Done,
            tenure: None,
            reported_unreachable: false,
            proof_restarts: 0,
            timers: Timers::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            servers: 1,
            current: 0,
            refusals: 0,
            plain_proofs: false,
            proof_id_answered: false,
        };
        core.start_hello(now);
        core
    }

    /// Several servers of one cluster, tried in turn (proto-spec.md §6): a holder whose server
    /// stops answering, or answers STALE, takes its seat over at the next one.
    pub fn with_servers(mut self, n: usize) -> Self {
        self.servers = n.max(1);
        self
    }

    /// Which of the servers datagrams go to now (0 with a single server).
    pub fn server_index(&self) -> usize {
        self.current
    }

    /// Moves on to the next server, if there are several.
    fn next_server(&mut self) -> bool {
        if self.servers < 2 {
            return false;
        }
        self.current = (self.current + 1) % self.servers;
        true
    }

    /// Keys derived earlier for these public inputs (an activation cache), used without asking.
    pub fn with_cached_keys(mut self, server_salt: [u8; 16], params: KdfParams, keys: LicenseKeys) -> Self {
        self.keys = Some(((server_salt, params), keys));
        self
    }

    pub fn instance_id(&self) -> [u8; 16] {
        self.instance_id
    }

    /// True while a seat is held and not known to be lost.
    pub fn is_holding(&self) -> bool {
        self.tenure.as_ref().is_some_and(|t| !t.lost) && !matches!(self.phase, Phase::Done)
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The loss deadline (§6): until when the server has promised the seat, the send time of
    /// the last acknowledged heartbeat (or of the granted PROOF) plus the TTL. `None` before a
    /// grant, while the seat is lost, and after a release.
    pub fn held_until(&self) -> Option<Instant> {
        self.timers.get(Timer::Loss)
    }

    pub fn lease_id(&self) -> Option<u64> {
        self.tenure.as_ref().map(|t| t.lease_id)
    }

    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        let (bytes, n) = self.out.pop_front()?;
        let dst = buf.get_mut(..n)?;
        dst.copy_from_slice(&bytes[..n]);
        Some(n)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Answers [`Event::NeedKeys`].
    pub fn set_keys(&mut self, now: Instant, server_salt: [u8; 16], params: KdfParams, keys: LicenseKeys) {
        self.keys = Some(((server_salt, params), keys));
        if let Phase::WaitKeys { challenge, at } = self.phase {
            if now.saturating_duration_since(at) >= self.cfg.cookie_reuse {
                self.start_hello(now);
            } else {
                self.on_challenge_ready(now, challenge, at);
            }
        }
    }

    /// Gives the seat back. Without a live session the server's TTL frees it.
    pub fn release(&mut self, now: Instant) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Held(session) => {
                self.phase = Phase::Releasing { session, sends: 0 };
                self.timers.stop(Timer::Loss);
                self.send_release(now);
            }
            Phase::Releasing { session, sends } => self.phase = Phase::Releasing { session, sends },
            Phase::Done => {}
            _ => self.finish(Event::Released),
        }
    }

    fn finish(&mut self, ev: Event) {
        self.phase = Phase::Done;
        self.timers = Timers::default();
        self.events.push_back(ev);
    }

    fn jitter(&mut self, d: Duration, spread: f64) -> Duration {
        d.mul_f64(self.rng.gen_range(1.0 - spread..=1.0 + spread))
    }

    fn queue(&mut self, msg: &Message, key: Option<&MacKey>) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let Some(n) = wire::encode_unsigned(msg, &mut buf) else {
            return;
        };
        let n = match key {
            Some(k) => match k.seal(&mut buf, n) {
                Some(n) => n,
                None => return,
            },
            None => n,
        };
        self.out.push_back((buf, n));
    }

    fn start_hello(&mut self, now: Instant) {
        let nonce: [u8; 16] = self.rng.gen();
        self.phase = Phase::Hello { nonce, sends: 0, rto: self.cfg.rto_initial };
        self.send_hello(now);
    }

    fn send_hello(&mut self, now: Instant) {
        let Phase::Hello { nonce, sends, rto } = &mut self.phase else {
            return;
        };
        *sends += 1;
        let (nonce, rto) = (*nonce, *rto);
        self.queue(&Message::Hello(Hello { client_nonce: nonce }), None);
        let wait = self.jitter(rto, 0.2);
        self.timers.set(Timer::Phase, now + wait);
    }

    /// A handshake step used up its transmissions.
    fn exhausted(&mut self) -> bool {
        if self.tenure.is_none() {
            self.finish(Event::Unreachable);
            return true;
        }
        if !self.reported_unreachable {
            self.reported_unreachable = true;
            self.events.push_back(Event::Unreachable);
        }
        false
    }

    fn on_challenge_ready(&mut self, now: Instant, ch: Challenge, at: Instant) {
        let params = KdfParams { m_kib: ch.kdf_m_kib, t: ch.kdf_t, p: ch.kdf_p };
        let cached = matches!(&self.keys, Some((inputs, _)) if *inputs == (ch.server_salt, params));
        if !cached {
            self.phase = Phase::WaitKeys { challenge: ch, at };
            self.timers.stop(Timer::Phase);
            self.events.push_back(Event::NeedKeys { server_salt: ch.server_salt, params });
            return;
        }
        self.phase = Phase::Proof {
            nonce: ch.client_nonce,
            cookie: ch.cookie,
            challenged_at: at,
            first_sent: now,
            sends: 0,
            rto: self.cfg.rto_initial,
        };
        self.send_proof(now);
    }

    fn send_proof(&mut self, now: Instant) {
        let Phase::Proof { nonce, cookie, sends, rto, .. } = &mut self.phase else {
            return;
        };
        let Some((_, keys)) = &self.keys else { return };
        *sends += 1;
        let proof = Proof {
            license_id: keys.license_id,
            instance_id: self.instance_id,
            client_nonce: *nonce,
            cookie: *cookie,
            prev_lease_id: self.tenure.as_ref().map_or(0, |t| t.lease_id),
        };
        let msg = match &self.cfg.identity {
            Some(who) if !self.plain_proofs => Message::ProofId(ProofId::new(proof, who)),
            _ => Message::Proof(proof),
        };
        let key = MacKey::new(&keys.k_proof);
        let rto = *rto;
        self.queue(&msg, Some(&key));
        let wait = self.jitter(rto, 0.2);
        self.timers.set(Timer::Phase, now + wait);
    }

    fn send_heartbeat(&mut self, now: Instant, flags: u8) {
        let (Phase::Held(s) | Phase::Releasing { session: s, .. }) = &mut self.phase else {
            return;
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        s.sent.push_back((seq, now));
        if s.sent.len() > 16 {
            s.sent.pop_front();
        }
        s.awaiting_ack = true;
        s.unacked += 1;
        let msg = Message::Heartbeat(Heartbeat { lease_id: s.lease_id, epoch: s.epoch, seq, flags });
        let key = s.keys.c2s.clone();
        let rto = s.rto;
        self.queue(&msg, Some(&key));
        let wait = self.jitter(rto, 0.2);
        self.timers.set(Timer::Phase, now + wait);
    }

    fn send_release(&mut self, now: Instant) {
        if let Phase::Releasing { sends, .. } = &mut self.phase {
            *sends += 1;
        }
        self.send_heartbeat(now, FLAG_RELEASE);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.get(Timer::Loss).is_some_and(|t| t <= now) {
            self.timers.stop(Timer::Loss);
            self.on_loss(now);
        }
        if self.timers.get(Timer::Phase).is_none_or(|t| t > now) {
            return;
        }
        self.timers.stop(Timer::Phase);
        // While a seat is held (or being regained), no wait between retries exceeds the
        // heartbeat interval: the last tries before the loss deadline must not be spaced wider
        // than the deadline leaves room for (proto-spec.md §6).
        let max = match &self.tenure {
            Some(t) => self.cfg.rto_max.min(t.heartbeat),
            None => self.cfg.rto_max,
        };
        let limit = self.cfg.handshake_sends;
        match &mut self.phase {
            Phase::Hello { sends, rto, .. } => {
                *rto = (*rto * 2).min(max);
                let rotate = self.servers > 1 && *sends % HELLOS_PER_SERVER == 0;
                if rotate {
                    // A fresh server gets a fresh schedule.
                    *rto = self.cfg.rto_initial;
                }
                let limit =
                    if self.servers > 1 { limit.max(HELLOS_PER_SERVER * self.servers as u32) } else { limit };
                if *sends >= limit && self.exhausted() {
                    return;
                }
                if rotate {
                    self.next_server();
                }
                self.send_hello(now);
            }
            Phase::WaitKeys { .. } | Phase::Done => {}
            Phase::Proof { sends, rto, challenged_at, .. } => {
                if now.saturating_duration_since(*challenged_at) >= self.cfg.cookie_reuse {
                    self.start_hello(now);
                    return;
                }
                // An unanswered PROOF may carry a cookie of a server that has since restarted
                // (new cookie keys): a fresh HELLO soon is better than more of the same PROOF.
                let fallback = if self.tenure.is_some() { PROOF_SENDS_REGAIN } else { PROOF_SENDS_FIRST };
                if *sends >= fallback.min(limit) {
                    // The server answered HELLO and then no PROOF_ID at all: an older server
                    // drops the type it does not know.
                    self.plain_proofs |= self.cfg.identity.is_some() && !self.proof_id_answered;
                    self.proof_restarts += 1;
                    let restarts = PROOF_RESTARTS_FIRST.max(self.servers as u32);
                    if self.proof_restarts >= restarts && self.exhausted() {
                        return;
                    }
                    self.next_server();
                    self.start_hello(now);
                    return;
                }
                *rto = (*rto * 2).min(max);
                self.send_proof(now);
            }
            Phase::Held(s) => {
                if s.awaiting_ack && s.unacked >= UNACKED_BEFORE_FAILOVER && self.servers > 1 {
                    // This server has gone quiet: take the seat over at the next one, with
                    // prev_lease_id (§4 step 5b). The loss deadline keeps running.
                    self.next_server();
                    self.start_hello(now);
                    return;
                }
                s.rto = if s.awaiting_ack { (s.rto * 2).min(max) } else { self.cfg.rto_initial };
                self.send_heartbeat(now, 0);
            }
            Phase::Releasing { session, sends } => {
                if *sends >= self.cfg.release_sends {
                    self.finish(Event::Released);
                    return;
                }
                session.rto = (session.rto * 2).min(max);
                self.send_release(now);
            }
            Phase::Backoff => self.start_hello(now),
        }
    }

    fn on_loss(&mut self, now: Instant) {
        let Some(t) = self.tenure.as_mut() else {
            return;
        };
        if !t.lost {
            t.lost = true;
            self.events.push_back(Event::Lost);
        }
        if matches!(self.phase, Phase::Held(_)) {
            self.start_hello(now);
        }
    }

    /// Feeds one datagram from the server. Anything that does not match the current phase, or
    /// fails its tag, is ignored.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        let Ok(frame) = wire::decode(datagram) else {
            return;
        };
        match (&self.phase, frame.msg) {
            (Phase::Hello { nonce, .. }, Message::Challenge(ch)) if ch.client_nonce == *nonce => {
                let params = KdfParams { m_kib: ch.kdf_m_kib, t: ch.kdf_t, p: ch.kdf_p };
                if params.is_acceptable() {
                    self.on_challenge_ready(now, ch, now);
                }
            }
            (Phase::Proof { .. }, Message::Grant(g)) => self.on_grant(now, &g, frame.signed, frame.tag),
            (Phase::Proof { .. }, Message::Deny(d)) => self.on_deny(now, &d, frame.signed, frame.tag),
            // While re-acquiring a seat it once held, the client ignores UNKNOWN (§6).
            (Phase::Proof { nonce, .. }, Message::Unknown(u))
                if u.client_nonce == *nonce && self.tenure.is_none() =>
            {
                self.finish(Event::UnknownLicense);
            }
            (Phase::Held(s) | Phase::Releasing { session: s, .. }, Message::Ack(a)) => {
                if a.lease_id != s.lease_id
                    || a.epoch != s.epoch
                    || !s.keys.s2c.verify(frame.signed, frame.tag)
                {
                    return;
                }
                let Some(&(_, sent_at)) = s.sent.iter().find(|(q, _)| *q == a.seq) else {
                    return;
                };
                self.on_ack(now, a.seq, a.status, sent_at);
            }
            (Phase::Held(s), Message::Stale(st)) if st.lease_id == s.lease_id => {
                self.next_server();
                self.start_hello(now);
            }
            (Phase::Releasing { session, .. }, Message::Stale(st)) if st.lease_id == session.lease_id => {
                self.finish(Event::Released);
            }
            _ => {}
        }
    }

    fn proof_inputs(&self) -> Option<([u8; 16], Cookie, Instant, &LicenseKeys)> {
        let Phase::Proof { nonce, cookie, first_sent, .. } = &self.phase else {
            return None;
        };
        let (_, keys) = self.keys.as_ref()?;
        Some((*nonce, *cookie, *first_sent, keys))
    }

    fn on_grant(&mut self, now: Instant, g: &wire::Grant, signed: &[u8], tag: &[u8]) {
        let Some((nonce, cookie, first_sent, keys)) = self.proof_inputs() else {
            return;
        };
        let session = derive_session_keys(
            &keys.k_auth,
            &nonce,
            &cookie,
            &keys.license_id,
            &self.instance_id,
            g.lease_id,
            g.epoch,
        );
        if !session.s2c.verify(signed, tag) || g.lease_id == 0 {
            return;
        }
        self.proof_id_answered |= self.cfg.identity.is_some() && !self.plain_proofs;
        let ttl = Duration::from_millis(u64::from(g.ttl_ms));
        let heartbeat = Duration::from_millis(u64::from(g.heartbeat_ms.max(1)));
        match self.tenure.as_mut() {
            None => self.events.push_back(Event::Granted {
                lease_id: g.lease_id,
                used: g.used,
                seats: g.seats,
                ttl,
                heartbeat,
            }),
            Some(t) => {
                if t.lost {
                    self.events.push_back(Event::Regained);
                }
            }
        }
        self.tenure = Some(Tenure { lease_id: g.lease_id, ttl, heartbeat, lost: false });
        self.reported_unreachable = false;
        self.proof_restarts = 0;
        self.phase = Phase::Held(HeldSession {
            lease_id: g.lease_id,
            epoch: g.epoch,
            keys: session,
            next_seq: 1,
            sent: VecDeque::new(),
            awaiting_ack: false,
            unacked: 0,
            rto: self.cfg.rto_initial,
        });
        // The server renewed the lease when the PROOF arrived, no earlier than our first send.
        self.timers.set(Timer::Loss, first_sent + ttl);
        let wait = self.jitter(heartbeat, 0.1);
        self.timers.set(Timer::Phase, now + wait);
    }

    fn on_deny(&mut self, now: Instant, d: &wire::Deny, signed: &[u8], tag: &[u8]) {
        let Some((nonce, cookie, _, keys)) = self.proof_inputs() else {
            return;
        };
        let session = derive_session_keys(
            &keys.k_auth,
            &nonce,
            &cookie,
            &keys.license_id,
            &self.instance_id,
            0,
            d.epoch,
        );
        if !session.s2c.verify(signed, tag) {
            return;
        }
        let Some(reason) = DenyReason::from_byte(d.reason) else {
            return;
        };
        let retry_after = Duration::from_millis(u64::from(d.retry_after_ms));
        let elsewhere = matches!(reason, DenyReason::Busy | DenyReason::Unavailable);
        if self.tenure.is_none() && elsewhere && self.refusals + 1 < self.servers {
            // This node cannot grant now (cut off from the store, recovering): another may.
            self.refusals += 1;
            self.next_server();
            self.start_hello(now);
            return;
        }
        if self.tenure.is_none() {
            self.finish(Event::Denied { reason, used: d.used, seats: d.seats, retry_after });
            return;
        }
        if elsewhere && self.next_server() {
            self.start_hello(now);
            return;
        }
        match reason {
            DenyReason::Revoked | DenyReason::Expired => self.finish(Event::Ended(reason)),
            DenyReason::Full | DenyReason::Busy | DenyReason::Unavailable => {
                let base = retry_after.max(Duration::from_secs(1));
                let wait = self.jitter(base, 0.2);
                self.phase = Phase::Backoff;
                self.timers.set(Timer::Phase, now + wait);
            }
        }
    }

    fn on_ack(&mut self, now: Instant, seq: u64, status: u8, sent_at: Instant) {
        let Some(status) = AckStatus::from_byte(status) else {
            return;
        };
        // An ACK answers its heartbeat once: forget it and every older one, so that a replayed
        // or late ACK cannot postpone the next heartbeat or cancel a retransmission (§10).
        if let Phase::Held(s) | Phase::Releasing { session: s, .. } = &mut self.phase {
            s.sent.retain(|(q, _)| *q > seq);
        }
        match (status, &mut self.phase) {
            (AckStatus::Ok, Phase::Held(s)) => {
                s.awaiting_ack = false;
                s.unacked = 0;
                s.rto = self.cfg.rto_initial;
                let Some(t) = self.tenure.as_mut() else {
                    return;
                };
                let (ttl, hb) = (t.ttl, t.heartbeat);
                if t.lost {
                    t.lost = false;
                    self.events.push_back(Event::Regained);
                }
                let until = sent_at + ttl;
                if self.timers.get(Timer::Loss).is_none_or(|cur| cur < until) {
                    self.timers.set(Timer::Loss, until);
                }
                let wait = self.jitter(hb, 0.1);
                self.timers.set(Timer::Phase, now + wait);
            }
            (AckStatus::Released, Phase::Releasing { .. }) => self.finish(Event::Released),
            (AckStatus::Revoked, _) => self.finish(Event::Ended(DenyReason::Revoked)),
            (AckStatus::Expired, _) => self.finish(Event::Ended(DenyReason::Expired)),
            _ => {}
        }
    }
}

//! Client crashes at scale, on the protocol core and a virtual clock: nothing sleeps, every time
//! asserted is virtual, and the default timers are used (lease TTL 60 s, heartbeat 15 s, server
//! sweep every 250 ms).
//!
//! 10,000 `ClientCore`s in the simulator of `tests/util` would be slow (it visits every client at
//! every step), so the big test drives [`ServerCore`] directly with hand-made datagrams: for each
//! holder a HELLO, the PROOF sealed with `K_proof`, then HEARTBEATs sealed with the session key
//! from `derive_session_keys`, whose ACKs are checked like a client would. A smaller run with real
//! `ClientCore`s in the simulator checks the same property end to end.

mod util;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use lic_udp::proto::client::Event;
use lic_udp::proto::keys::{derive_session_keys, KdfParams, LicenseKeys, MacKey, SessionKeys};
use lic_udp::proto::server::{JournalOp, LicenseRecord, Reply, ServerConfig, ServerCore};
use lic_udp::proto::wire::{self, AckStatus, DenyReason, Heartbeat, Hello, Message, MsgType, Proof};
use rand::{rngs::StdRng, Rng, SeedableRng};

use util::{keys_for, serial, HEARTBEAT, SALT, SWEEP, TTL, UNIX_BASE};

const SERIAL: &str = "0123456789";

/// One holder as the test plays it: a client that heartbeats on time, or has crashed.
struct Holder {
    src: SocketAddr,
    lease_id: u64,
    epoch: u32,
    keys: SessionKeys,
    seq: u64,
    /// When the server last accepted a heartbeat (or the PROOF) of this holder.
    last_renewed: Instant,
    crashed: bool,
}

/// What a PROOF got.
enum Outcome {
    Granted(Box<Holder>),
    Denied { reason: u8, used: u16, seats: u16 },
}

/// A server core with one license, driven on a virtual clock.
struct Bench {
    core: ServerCore,
    keys: LicenseKeys,
    proof_key: MacKey,
    base: Instant,
    now: Instant,
    next_sweep: Instant,
    rng: StdRng,
    /// lease id → when its removal (expiry or release) was journaled.
    removed: HashMap<u64, Instant>,
    handshakes: u64,
}

impl Bench {
    fn new(seats: u16, seed: u64) -> Self {
        let keys = keys_for(&serial(SERIAL), &SALT, KdfParams::TEST);
        let rec = LicenseRecord {
            id: 1,
            keys: keys.clone(),
            seats,
            expires_unix: None,
            revoked: false,
            ttl: TTL,
            heartbeat: HEARTBEAT,
        };
        let cfg = ServerConfig {
            server_salt: SALT,
            kdf: KdfParams::TEST,
            epoch: 1,
            ttl_override: None,
            heartbeat_override: None,
            recovery_grace: None,
        };
        let base = Instant::now();
        let core = ServerCore::new(cfg, vec![rec], vec![], base, [seed as u8; 32]);
        let next_sweep = core.poll_timeout(base);
        Self {
            core,
            proof_key: MacKey::new(&keys.k_proof),
            keys,
            base,
            now: base,
            next_sweep,
            rng: StdRng::seed_from_u64(seed),
            removed: HashMap::new(),
            handshakes: 0,
        }
    }

    fn unix(&self) -> u64 {
        UNIX_BASE + (self.now - self.base).as_secs()
    }

    fn seats(&self) -> usize {
        self.core.seats_in_use().get(&1).copied().unwrap_or(0)
    }

    /// Sends one datagram from `src`; returns the reply's bytes, after committing the journal if
    /// the reply waits for it (as the IO layer does).
    fn send(&mut self, src: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
        let mut out = [0u8; 256];
        let n = match self.core.handle(self.now, self.unix(), src, datagram, &mut out) {
            Reply::None => return None,
            Reply::Send(n) => n,
            Reply::AfterCommit(n) => {
                self.commit();
                n
            }
        };
        Some(out[..n].to_vec())
    }

    fn commit(&mut self) {
        let ops = self.core.drain_journal();
        for op in &ops {
            if let JournalOp::Remove { lease_id, .. } = op {
                self.removed.insert(*lease_id, self.now);
            }
        }
        self.core.committed(&ops);
    }

    /// Moves the clock to `t`, running every sweep due on the way (at its own time).
    fn advance(&mut self, t: Instant) {
        assert!(t >= self.now, "time runs forward");
        while self.next_sweep <= t {
            self.now = self.next_sweep;
            self.core.handle_timeout(self.now);
            self.commit();
            self.next_sweep = self.core.poll_timeout(self.now);
        }
        self.now = t;
    }

    /// HELLO, CHALLENGE, PROOF, GRANT or DENY for a new instance at `src`, all at `now`.
    fn acquire(&mut self, src: SocketAddr) -> Outcome {
        self.handshakes += 1;
        let instance: [u8; 16] = self.rng.gen();
        let nonce: [u8; 16] = self.rng.gen();
        let hello = encode(&Message::Hello(Hello { client_nonce: nonce }), None);
        let challenge = self.send(src, &hello).expect("CHALLENGE");
        let Message::Challenge(ch) = decode(&challenge) else { panic!("expected CHALLENGE") };
        assert_eq!(ch.client_nonce, nonce);
        let proof = Message::Proof(Proof {
            license_id: self.keys.license_id,
            instance_id: instance,
            client_nonce: nonce,
            cookie: ch.cookie,
            prev_lease_id: 0,
        });
        let proof = encode(&proof, Some(&self.proof_key));
        let reply = self.send(src, &proof).expect("GRANT or DENY");
        let frame = wire::decode(&reply).expect("valid reply");
        let lease_id = match frame.msg {
            Message::Grant(g) => g.lease_id,
            _ => 0,
        };
        let epoch = match frame.msg {
            Message::Grant(g) => g.epoch,
            Message::Deny(d) => d.epoch,
            _ => panic!("expected GRANT or DENY, got {:?}", frame.msg),
        };
        let session = derive_session_keys(
            &self.keys.k_auth,
            &nonce,
            &ch.cookie,
            &self.keys.license_id,
            &instance,
            lease_id,
            epoch,
        );
        assert!(session.s2c.verify(frame.signed, frame.tag), "reply tag");
        match frame.msg {
            Message::Grant(g) => {
                assert_eq!((g.ttl_ms, g.heartbeat_ms), (60_000, 15_000));
                Outcome::Granted(Box::new(Holder {
                    src,
                    lease_id,
                    epoch,
                    keys: session,
                    seq: 0,
                    last_renewed: self.now,
                    crashed: false,
                }))
            }
            Message::Deny(d) => Outcome::Denied { reason: d.reason, used: d.used, seats: d.seats },
            _ => unreachable!(),
        }
    }

    /// One heartbeat of `h` at `now`; returns the ACK's status (after checking its tag).
    fn heartbeat(&mut self, h: &mut Holder) -> Option<AckStatus> {
        h.seq += 1;
        let hb = Message::Heartbeat(Heartbeat { lease_id: h.lease_id, epoch: h.epoch, seq: h.seq, flags: 0 });
        let d = encode(&hb, Some(&h.keys.c2s));
        let reply = self.send(h.src, &d)?;
        let frame = wire::decode(&reply).expect("valid reply");
        let Message::Ack(a) = frame.msg else { return None };
        assert!(h.keys.s2c.verify(frame.signed, frame.tag), "ACK tag");
        assert_eq!((a.lease_id, a.seq), (h.lease_id, h.seq));
        let status = AckStatus::from_byte(a.status);
        if status == Some(AckStatus::Ok) {
            assert_eq!(a.ttl_ms, 60_000);
            h.last_renewed = self.now;
        }
        status
    }
}

/// When a holder that heartbeated at `from` heartbeats next: 15 s ± 10 %, like a client.
fn next_hb(rng: &mut StdRng, from: Instant) -> Instant {
    from + HEARTBEAT.mul_f64(rng.gen_range(0.9..=1.1))
}

fn encode(msg: &Message, key: Option<&MacKey>) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = wire::encode_unsigned(msg, &mut buf).expect("encodes");
    let n = match key {
        Some(k) => k.seal(&mut buf, n).expect("seals"),
        None => n,
    };
    buf[..n].to_vec()
}

fn decode(d: &[u8]) -> Message {
    wire::decode(d).expect("a valid datagram").msg
}

/// A distinct source address per client: 10.x.y.z, port 40000.
fn addr(i: usize) -> SocketAddr {
    let i = u32::try_from(i).expect("small index") + 1;
    SocketAddr::from((Ipv4Addr::from(0x0a00_0000 | i), 40000))
}

/// The holders and their heartbeat schedule.
struct Fleet {
    hs: Vec<Holder>,
    /// (when, holder) of every next heartbeat.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    jitter: StdRng,
    heartbeats: u64,
}

impl Fleet {
    /// Heartbeats every live holder that is due up to `end`, in time order, with the server's
    /// sweeps in between; every heartbeat must be acknowledged OK. The clock ends at `end`.
    fn run_until(&mut self, b: &mut Bench, end: Instant) {
        while let Some(&Reverse((t, i))) = self.due.peek() {
            if t > end {
                break;
            }
            self.due.pop();
            b.advance(t);
            let h = &mut self.hs[i];
            if h.crashed {
                continue;
            }
            let status = b.heartbeat(h);
            assert_eq!(
                status,
                Some(AckStatus::Ok),
                "live holder {i} (lease {:#x}) not renewed at +{:?}",
                h.lease_id,
                b.now - b.base
            );
            self.heartbeats += 1;
            self.due.push(Reverse((next_hb(&mut self.jitter, b.now), i)));
        }
        b.advance(end);
    }
}

/// `holders` clients hold seats of a license with as many seats; at one instant the clients
/// `crash(i)` picks stop. Checks, on the virtual clock:
/// - each crashed client's seat is back no earlier than a TTL and within a TTL (plus one sweep) of
///   the last heartbeat the server accepted from it, so within TTL + one heartbeat interval
///   (+ one sweep) of the crash;
/// - every other client's heartbeats are all acknowledged OK and its lease is never removed;
/// - a newcomer is refused while the license is full, and once the seats are back exactly as
///   many newcomers as crashed clients get a seat.
fn crash_at_scale(holders: usize, crash: impl Fn(usize) -> bool, seed: u64) {
    let seats = u16::try_from(holders).expect("at most 65535 seats");
    let mut b = Bench::new(seats, seed);
    let mut f = Fleet {
        hs: Vec::with_capacity(holders),
        due: BinaryHeap::new(),
        jitter: StdRng::seed_from_u64(seed ^ 0x6a69_7474_6572),
        heartbeats: 0,
    };

    // The holders arrive spread over one heartbeat interval, then heartbeat every 15 s ± 10 %.
    for i in 0..holders {
        let arrive = b.base + HEARTBEAT.mul_f64(i as f64 / holders as f64);
        f.run_until(&mut b, arrive);
        match b.acquire(addr(i)) {
            Outcome::Granted(h) => f.hs.push(*h),
            Outcome::Denied { reason, used, .. } => panic!("holder {i} denied ({reason}, {used} used)"),
        }
        let next = next_hb(&mut f.jitter, b.now);
        f.due.push(Reverse((next, i)));
    }
    assert_eq!(b.seats(), holders);
    assert_eq!(b.core.live_leases(), holders);

    // Everyone heartbeats until `crash_at`, by which time each holder renewed a few times.
    let crash_at = b.base + HEARTBEAT * 5;
    f.run_until(&mut b, crash_at);
    assert_eq!(b.seats(), holders);
    assert!(b.removed.is_empty(), "a lease was removed before the crash");

    // Full: a newcomer is refused.
    match b.acquire(addr(holders)) {
        Outcome::Denied { reason, used, seats: s } => {
            assert_eq!((reason, usize::from(used), s), (DenyReason::Full as u8, holders, seats));
        }
        Outcome::Granted(_) => panic!("a newcomer got a seat of a full license"),
    }

    // The crash: these clients stop at once.
    let crashed: Vec<usize> = (0..holders).filter(|&i| crash(i)).collect();
    assert!(!crashed.is_empty());
    for &i in &crashed {
        f.hs[i].crashed = true;
    }
    let live = holders - crashed.len();

    // Run past the latest possible return: the last heartbeat came at most one jittered interval
    // before the crash.
    let latest = crash_at + TTL + HEARTBEAT.mul_f64(1.1) + SWEEP;
    let end = latest + HEARTBEAT;
    let mut min_seats = holders;
    let step = SWEEP;
    let mut t = crash_at;
    while t < end {
        t = (t + step).min(end);
        f.run_until(&mut b, t);
        let s = b.seats();
        assert!(s <= min_seats, "seats in use went up from {min_seats} to {s} at +{:?}", b.now - b.base);
        min_seats = s;
        assert!(s >= live, "a live holder lost its seat: {s} in use at +{:?}", b.now - b.base);
    }

    // Every crashed seat came back, on time.
    let mut first_back = None::<Duration>;
    let mut last_back = Duration::ZERO;
    for &i in &crashed {
        let h = &f.hs[i];
        let back = *b.removed.get(&h.lease_id).unwrap_or_else(|| panic!("holder {i}'s seat never came back"));
        let after_last = back - h.last_renewed;
        assert!(
            after_last >= TTL,
            "holder {i}: seat back {after_last:?} after its last heartbeat, before the TTL"
        );
        assert!(
            after_last <= TTL + SWEEP,
            "holder {i}: seat back {after_last:?} after its last heartbeat, later than TTL + a sweep"
        );
        assert!(after_last <= TTL + HEARTBEAT + SWEEP);
        assert!(back <= latest, "holder {i}: seat back {:?} after the crash", back - crash_at);
        let since_crash = back - crash_at;
        first_back = Some(first_back.map_or(since_crash, |f: Duration| f.min(since_crash)));
        last_back = last_back.max(since_crash);
    }
    // Nobody else's lease was removed.
    assert_eq!(b.removed.len(), crashed.len(), "leases of live holders were removed");
    for (i, h) in f.hs.iter().enumerate().filter(|(_, h)| !h.crashed) {
        assert!(!b.removed.contains_key(&h.lease_id), "live holder {i} lost its lease");
        assert!(b.now - h.last_renewed <= HEARTBEAT.mul_f64(1.1), "holder {i} stopped heartbeating");
    }
    assert_eq!(b.seats(), live);
    assert_eq!(b.core.live_leases(), live);
    let st = b.core.stats().snapshot();
    assert_eq!(st.expiries, crashed.len() as u64);
    assert_eq!((st.dropped_mac, st.dropped_replay, st.stale), (0, 0, 0));
    assert!(f.heartbeats >= holders as u64 * 4, "{} heartbeats", f.heartbeats);

    // Newcomers take the freed seats, exactly as many as came back; then the license is full.
    for k in 0..crashed.len() {
        match b.acquire(addr(holders + 1 + k)) {
            Outcome::Granted(_) => {}
            Outcome::Denied { reason, used, .. } => panic!("newcomer {k} denied ({reason}, {used} used)"),
        }
    }
    assert_eq!(b.seats(), holders);
    match b.acquire(addr(holders + 1 + crashed.len())) {
        Outcome::Denied { reason, .. } => assert_eq!(reason, DenyReason::Full as u8),
        Outcome::Granted(_) => panic!("more seats than the license has"),
    }
    println!(
        "{holders} holders, {} crashed: seats back {:?} to {:?} after the crash; {} heartbeats, \
         {} handshakes",
        crashed.len(),
        first_back.unwrap_or_default(),
        last_back,
        f.heartbeats,
        b.handshakes
    );
}

#[test]
fn ten_thousand_holders_one_thousand_crash() {
    crash_at_scale(10_000, |i| i % 10 == 7, 0x5ca1e);
}

#[test]
fn one_holder_crashes() {
    crash_at_scale(1, |_| true, 0x0001);
}

/// The same with real `ClientCore`s in the simulator (fewer of them: it visits every client at
/// every step): 100 holders, 10 crash at once.
#[test]
fn simulated_clients_crash() {
    use util::{LicenseSpec, Sim};
    const N: usize = 100;
    let mut sim = Sim::new(0x51_c4a5, vec![LicenseSpec::new(1, SERIAL, N as u16)]);
    let clients: Vec<usize> = (0..N).map(|_| sim.add_client(SERIAL)).collect();
    sim.run_for(HEARTBEAT * 5);
    assert_eq!(sim.seats(1), N);
    let crashed: Vec<usize> = clients.iter().copied().filter(|c| c % 10 == 3).collect();
    let crash_at = sim.now;
    for &c in &crashed {
        sim.clients[c].stopped = true;
    }
    let live = N - crashed.len();
    let mut freed: HashMap<u64, Instant> = HashMap::new();
    let leases: HashMap<u64, usize> =
        crashed.iter().map(|&c| (sim.client(c).core.lease_id().expect("granted"), c)).collect();
    sim.run_for_with(TTL + HEARTBEAT * 2, |s| {
        assert!(s.seats(1) >= live, "a live holder lost its seat at {:?}", s.elapsed());
        let held: Vec<u64> = s.server().holders().iter().map(|h| h.lease_id).collect();
        for &l in leases.keys() {
            if !held.contains(&l) {
                freed.entry(l).or_insert(s.now);
            }
        }
    });
    assert_eq!(sim.seats(1), live);
    for (lease, c) in &leases {
        let back = *freed.get(lease).unwrap_or_else(|| panic!("client {c}'s seat never came back"));
        let last = last_accepted_heartbeat(&sim, *c);
        assert!(back >= last + TTL && back <= last + TTL + SWEEP, "client {c}: back {:?} after", back - last);
        assert!(back - crash_at <= TTL + HEARTBEAT.mul_f64(1.1) + SWEEP);
    }
    for &c in clients.iter().filter(|c| !crashed.contains(c)) {
        let cl = sim.client(c);
        assert!(cl.core.is_holding(), "client {c}: {:?}", cl.events_only());
        assert_eq!(cl.events_only().len(), 1, "client {c}: {:?}", cl.events_only());
    }
    assert_eq!(sim.stats().expiries, crashed.len() as u64);
    // Newcomers fill the freed seats.
    let newcomers: Vec<usize> = (0..crashed.len()).map(|_| sim.add_client(SERIAL)).collect();
    sim.run_for(util::secs(2));
    for &c in &newcomers {
        assert!(matches!(sim.client(c).events_only()[..], [Event::Granted { .. }]), "newcomer {c}");
    }
    assert_eq!(sim.seats(1), N);
}

/// The arrival time of the last HEARTBEAT from client `c` that the server acknowledged OK.
fn last_accepted_heartbeat(sim: &util::Sim, c: usize) -> Instant {
    sim.server_log
        .iter()
        .filter(|d| d.client == Some(c) && util::msg_type(&d.request) == Some(MsgType::Heartbeat))
        .filter(|d| {
            d.reply
                .as_deref()
                .is_some_and(|r| matches!(decode(r), Message::Ack(a) if a.status == AckStatus::Ok as u8))
        })
        .map(|d| d.at)
        .next_back()
        .expect("an accepted heartbeat")
}

/// A mass expiry worked off in slices the size of a receive batch, as the IO layer does while
/// datagrams wait: each call removes exactly its budget, the core asks to be called again at
/// once while leases are due, a holder still heartbeating keeps its lease throughout, and the
/// last due lease is gone after ⌈due / budget⌉ calls.
#[test]
fn a_mass_expiry_is_removed_in_slices_while_a_holder_keeps_its_lease() {
    const DUE: usize = 3_000;
    const SLICE: usize = 64;
    let mut b = Bench::new(u16::MAX, 0x511ce);
    let mut live = None;
    for i in 0..=DUE {
        match b.acquire(addr(i)) {
            Outcome::Granted(h) if i == DUE => live = Some(h),
            Outcome::Granted(_) => {}
            Outcome::Denied { reason, .. } => panic!("holder {i} denied ({reason})"),
        }
    }
    let mut live = live.expect("the live holder got a seat");
    // Past every deadline; only the live holder heartbeats, just before.
    let t = b.base + TTL + Duration::from_secs(1);
    b.now = t - Duration::from_millis(1);
    assert_eq!(b.heartbeat(&mut live), Some(AckStatus::Ok));
    b.now = t;
    let mut calls = 0;
    while b.core.poll_timeout(t) <= t || calls == 0 {
        let before = b.seats();
        b.core.handle_timeout_within(t, SLICE);
        calls += 1;
        let removed = before - b.seats();
        assert!(removed <= SLICE, "call {calls} removed {removed}, more than its budget");
        if b.seats() > 1 {
            // The budget counts leases looked at: the live holder's, renewed, is looked at once
            // and filed under its new deadline.
            assert!(removed >= SLICE - 1, "call {calls} removed only {removed} while leases are due");
        }
        assert_eq!(b.heartbeat(&mut live), Some(AckStatus::Ok), "the live holder, call {calls}");
        assert!(calls <= DUE, "the sweep does not finish");
    }
    assert_eq!(b.seats(), 1, "every silent holder's seat is free, the live holder's is not");
    assert_eq!(calls, (DUE + 1).div_ceil(SLICE), "slices of {SLICE}");
    assert_eq!(b.core.stats().snapshot().expiries, DUE as u64);
}

/// `ServerCore::warm`, which the IO layer calls on every received batch before handling it,
/// looks the named leases up and changes nothing: not the counters, not the seats, not the
/// replay windows (the same heartbeats are then accepted, once), whatever the batch holds.
#[test]
fn warm_on_a_batch_of_real_and_hostile_heartbeats_changes_nothing() {
    let mut b = Bench::new(100, 0x3a3);
    let mut holders: Vec<Holder> = (0..64)
        .map(|i| match b.acquire(addr(i)) {
            Outcome::Granted(h) => *h,
            Outcome::Denied { reason, .. } => panic!("holder {i} denied ({reason})"),
        })
        .collect();
    let batch: Vec<Vec<u8>> = holders
        .iter_mut()
        .map(|h| {
            h.seq += 1;
            let hb = Heartbeat { lease_id: h.lease_id, epoch: h.epoch, seq: h.seq, flags: 0 };
            encode(&Message::Heartbeat(hb), Some(&h.keys.c2s))
        })
        .collect();
    let mut hostile: Vec<Vec<u8>> = Vec::new();
    for d in &batch {
        let mut wrong_id = d.clone();
        wrong_id[5] ^= 0xff;
        hostile.push(wrong_id);
        hostile.push(d[..d.len() - 1].to_vec());
    }
    hostile.push(vec![0xff; 48]);
    let before = (b.core.stats().snapshot(), b.seats(), b.core.live_leases());
    b.core.warm(batch.iter().chain(&hostile).map(Vec::as_slice));
    b.core.warm(hostile.iter().map(Vec::as_slice));
    assert_eq!((b.core.stats().snapshot(), b.seats(), b.core.live_leases()), before);
    for (h, d) in holders.iter_mut().zip(&batch) {
        let reply = b.send(h.src, d).expect("an ACK");
        let Message::Ack(a) = decode(&reply) else { panic!("expected ACK") };
        assert_eq!((a.lease_id, a.seq, a.status), (h.lease_id, h.seq, AckStatus::Ok as u8));
        assert!(b.send(h.src, d).is_none(), "the same heartbeat again is a replay");
    }
}

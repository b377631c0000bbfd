//! A deterministic network simulator for the sans-IO protocol core.
//!
//! One [`ServerCore`] and any number of [`ClientCore`]s run on a virtual clock (a base `Instant`
//! plus offsets; nothing sleeps, nothing touches a socket). Datagrams travel through a seeded
//! network with per-direction loss, duplication, base latency and random extra delay (which
//! reorders), in the style of quinn-proto's `Pair::drive` and smoltcp's fault injector.
//!
//! The server's journal is modelled too: a reply the core marks [`Reply::AfterCommit`] is held
//! until the harness commits the journal (at the end of every step unless `auto_commit` is off),
//! and committed ops are kept in `store`, so a test can crash the server and boot a new core
//! with the next epoch and the leases that the store would restore.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use lic_udp::proto::client::{ClientConfig, ClientCore, Event};
use lic_udp::proto::keys::{derive_license_keys, KdfParams, LicenseKeys, Serial};
use lic_udp::proto::server::{
    JournalOp, LicenseRecord, Reply, RestoredLease, ServerConfig, ServerCore, StatsSnapshot,
};
use lic_udp::proto::wire::MsgType;
use rand::{rngs::StdRng, Rng, SeedableRng};

pub const SALT: [u8; 16] =
    [0x5a, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f];
pub const UNIX_BASE: u64 = 1_700_000_000;
/// The server core's sweep period (`ServerCore::poll_timeout` is the next 250 ms boundary).
pub const SWEEP: Duration = Duration::from_millis(250);
pub const TTL: Duration = Duration::from_secs(60);
pub const HEARTBEAT: Duration = Duration::from_secs(15);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn server_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7301))
}

pub fn client_addr(i: usize) -> SocketAddr {
    let port = 40000 + u16::try_from(i).expect("fewer than 25000 clients");
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn serial(s: &str) -> Serial {
    Serial::parse(s).expect("test serial")
}

/// Argon2 runs once per (serial, salt, params) for the whole test binary.
pub fn keys_for(serial: &Serial, salt: &[u8; 16], params: KdfParams) -> LicenseKeys {
    type Cache = Mutex<HashMap<(String, [u8; 16], KdfParams), LicenseKeys>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (serial.as_str().to_owned(), *salt, params);
    if let Some(k) = cache.lock().expect("key cache").get(&key) {
        return k.clone();
    }
    let k = derive_license_keys(serial, salt, params).expect("test KDF parameters are valid");
    cache.lock().expect("key cache").insert(key, k.clone());
    k
}

/// The type byte of a datagram, if it has a lic-udp header with a known type.
pub fn msg_type(d: &[u8]) -> Option<MsgType> {
    if d.len() < 4 || d[..2] != [0x4C, 0x55] || d[2] != 1 {
        return None;
    }
    MsgType::from_byte(d[3])
}

/// Faults of one direction of the simulated network.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a delivered datagram is delivered twice (each copy has its own delay).
    pub dup: f64,
    /// Fixed one-way latency.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per copy; this is what reorders.
    pub jitter: Duration,
}

impl Faults {
    pub const fn perfect() -> Self {
        Self { loss: 0.0, dup: 0.0, latency: Duration::from_millis(1), jitter: Duration::ZERO }
    }

    pub const fn dead() -> Self {
        Self { loss: 1.0, ..Self::perfect() }
    }

    pub const fn lossy(loss: f64, dup: f64, jitter: Duration) -> Self {
        Self { loss, dup, latency: Duration::from_millis(1), jitter }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    ToServer,
    ToClient,
}

/// A license as the test sets it up; turned into a [`LicenseRecord`] with derived keys.
#[derive(Clone, Debug)]
pub struct LicenseSpec {
    pub id: i64,
    pub serial: String,
    pub seats: u16,
    pub ttl: Duration,
    pub heartbeat: Duration,
    pub revoked: bool,
    pub expires_unix: Option<u64>,
}

impl LicenseSpec {
    pub fn new(id: i64, serial: &str, seats: u16) -> Self {
        Self {
            id,
            serial: serial.to_owned(),
            seats,
            ttl: TTL,
            heartbeat: HEARTBEAT,
            revoked: false,
            expires_unix: None,
        }
    }

    pub fn record(&self) -> LicenseRecord {
        LicenseRecord {
            id: self.id,
            keys: keys_for(&serial(&self.serial), &SALT, KdfParams::TEST),
            seats: self.seats,
            expires_unix: self.expires_unix,
            revoked: self.revoked,
            ttl: self.ttl,
            heartbeat: self.heartbeat,
        }
    }
}

pub struct SimClient {
    pub core: ClientCore,
    pub addr: SocketAddr,
    pub serial: Serial,
    /// Every event, with the virtual time it came out and the generation of the core.
    pub events: Vec<(Instant, u32, Event)>,
    /// Every datagram the client transmitted (before the network's faults).
    pub sent: Vec<(Instant, Vec<u8>)>,
    /// Every datagram delivered to the client.
    pub received: Vec<(Instant, Vec<u8>)>,
    /// Crashed: never driven again, datagrams to it vanish.
    pub stopped: bool,
    /// Cut off from the network: everything it sends or is sent is lost.
    pub cut: bool,
    /// How many times the application started a fresh core after a final failure.
    pub generation: u32,
    respawn_at: Option<Instant>,
}

impl SimClient {
    pub fn events_only(&self) -> Vec<Event> {
        self.events
            .iter()
            .filter(|(_, _, e)| !matches!(e, Event::NeedKeys { .. }))
            .map(|(_, _, e)| e.clone())
            .collect()
    }

    pub fn sent_of(&self, ty: MsgType) -> Vec<(Instant, Vec<u8>)> {
        self.sent.iter().filter(|(_, d)| msg_type(d) == Some(ty)).cloned().collect()
    }

    pub fn received_of(&self, ty: MsgType) -> Vec<(Instant, Vec<u8>)> {
        self.received.iter().filter(|(_, d)| msg_type(d) == Some(ty)).cloned().collect()
    }

    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.events.iter().filter(|(_, _, e)| pred(e)).count()
    }

    pub fn first(&self, pred: impl Fn(&Event) -> bool) -> Option<(Instant, Event)> {
        self.events.iter().find(|(_, _, e)| pred(e)).map(|(t, _, e)| (*t, e.clone()))
    }
}

/// One datagram the server handled, with its reply (as sent or held for commit).
#[derive(Clone, Debug)]
pub struct Delivery {
    pub at: Instant,
    /// `None` for datagrams injected by the test.
    pub client: Option<usize>,
    pub request: Vec<u8>,
    pub reply: Option<Vec<u8>>,
}

struct Packet {
    dir: Dir,
    client: usize,
    bytes: Vec<u8>,
}

type Filter = Box<dyn FnMut(Dir, usize, &[u8]) -> bool>;

pub struct Sim {
    pub base: Instant,
    pub now: Instant,
    /// `None` while the server is down.
    pub server: Option<ServerCore>,
    pub epoch: u32,
    pub licenses: Vec<LicenseSpec>,
    pub clients: Vec<SimClient>,
    pub client_cfg: ClientConfig,
    pub c2s: Faults,
    pub s2c: Faults,
    /// Drops a datagram when it returns true (after the random faults).
    pub filter: Option<Filter>,
    /// Commit the journal at the end of every step.
    pub auto_commit: bool,
    /// Every op the store has committed, in order.
    pub store: Vec<JournalOp>,
    pub server_log: Vec<Delivery>,
    /// The application restarts a client this long after a final Denied or Unreachable.
    pub respawn_after: Option<Duration>,
    /// Per direction (0 = to server, 1 = to client): dropped and duplicated datagrams.
    pub dropped: [u64; 2],
    pub duplicated: [u64; 2],
    /// Per type byte: datagrams the network dropped or duplicated.
    pub dropped_by_type: HashMap<u8, u64>,
    pub duplicated_by_type: HashMap<u8, u64>,
    seed: u64,
    net_rng: StdRng,
    in_flight: BTreeMap<(Instant, u64), Packet>,
    next_packet: u64,
    /// AfterCommit replies waiting for the journal commit.
    held: Vec<(usize, Vec<u8>)>,
    server_due: Instant,
    same_instant: u32,
}

impl Sim {
    pub fn new(seed: u64, licenses: Vec<LicenseSpec>) -> Self {
        let base = Instant::now();
        let mut sim = Self {
            base,
            now: base,
            server: None,
            epoch: 0,
            licenses,
            clients: Vec::new(),
            client_cfg: ClientConfig::default(),
            c2s: Faults::perfect(),
            s2c: Faults::perfect(),
            filter: None,
            auto_commit: true,
            store: Vec::new(),
            server_log: Vec::new(),
            respawn_after: None,
            dropped: [0; 2],
            duplicated: [0; 2],
            dropped_by_type: HashMap::new(),
            duplicated_by_type: HashMap::new(),
            seed,
            net_rng: StdRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
            in_flight: BTreeMap::new(),
            next_packet: 0,
            held: Vec::new(),
            server_due: base,
            same_instant: 0,
        };
        sim.boot();
        sim
    }

    pub fn faults(&mut self, both: Faults) {
        self.c2s = both;
        self.s2c = both;
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub fn at(&self, d: Duration) -> Instant {
        self.base + d
    }

    pub fn unix(&self) -> u64 {
        UNIX_BASE + self.elapsed().as_secs()
    }

    pub fn server(&self) -> &ServerCore {
        self.server.as_ref().expect("server is up")
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.server().stats().snapshot()
    }

    /// Seats in use of store license `id` (0 while the server is down).
    pub fn seats(&self, id: i64) -> usize {
        self.server.as_ref().and_then(|s| s.seats_in_use().get(&id).copied()).unwrap_or(0)
    }

    pub fn client(&self, i: usize) -> &SimClient {
        &self.clients[i]
    }

    fn records(&self) -> Vec<LicenseRecord> {
        self.licenses.iter().map(LicenseSpec::record).collect()
    }

    /// The leases the store would restore: its grants minus its removals.
    pub fn restored_leases(&self) -> Vec<RestoredLease> {
        JournalOp::replay(&self.store)
    }

    /// Boots a server core with the next epoch and the store's leases.
    pub fn boot(&mut self) {
        assert!(self.server.is_none(), "boot while the server runs");
        self.epoch += 1;
        let cfg = ServerConfig {
            server_salt: SALT,
            kdf: KdfParams::TEST,
            epoch: self.epoch,
            ttl_override: None,
            heartbeat_override: None,
            recovery_grace: None,
        };
        let mut seed = [0u8; 32];
        StdRng::seed_from_u64(self.seed ^ u64::from(self.epoch).rotate_left(32)).fill(&mut seed);
        let core = ServerCore::new(cfg, self.records(), self.restored_leases(), self.now, seed);
        self.server = Some(core);
        self.server_due = self.now;
    }

    /// The server process dies: uncommitted journal ops and held replies die with it.
    pub fn crash(&mut self) {
        self.server = None;
        self.held.clear();
    }

    pub fn restart(&mut self) {
        self.crash();
        self.boot();
    }

    /// Changes a license in the store and tells the running server (as its store watcher would).
    pub fn update_license(&mut self, id: i64, f: impl FnOnce(&mut LicenseSpec)) {
        let spec = self.licenses.iter_mut().find(|l| l.id == id).expect("license exists");
        f(spec);
        let records = self.records();
        if let Some(s) = &self.server {
            s.sync_licenses(records);
        }
    }

    fn new_core(&mut self, i: usize, generation: u32) -> ClientCore {
        let mut rng = StdRng::seed_from_u64(
            self.seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add((i as u64) << 20 | u64::from(generation)),
        );
        let instance: [u8; 16] = rng.gen();
        let seed: [u8; 32] = rng.gen();
        ClientCore::new(self.client_cfg.clone(), instance, seed, self.now)
    }

    /// Starts a client for `serial` now; its first HELLO leaves at once.
    pub fn add_client(&mut self, serial_str: &str) -> usize {
        let i = self.clients.len();
        let core = self.new_core(i, 0);
        self.clients.push(SimClient {
            core,
            addr: client_addr(i),
            serial: serial(serial_str),
            events: Vec::new(),
            sent: Vec::new(),
            received: Vec::new(),
            stopped: false,
            cut: false,
            generation: 0,
            respawn_at: None,
        });
        self.pump(i);
        i
    }

    /// The program behind client `i` starts a new acquisition now: a fresh core with the same
    /// instance id (same process), a new generation.
    pub fn reacquire(&mut self, i: usize) {
        let instance = self.clients[i].core.instance_id();
        self.clients[i].generation += 1;
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ 0x7265_6163_7175_6972 ^ u64::from(self.clients[i].generation));
        let core = ClientCore::new(self.client_cfg.clone(), instance, rng.gen(), self.now);
        self.clients[i].core = core;
        self.clients[i].stopped = false;
        self.pump(i);
    }

    /// Runs `f` on client `i`'s core at the current time, then collects what it produced.
    pub fn with_client<R>(&mut self, i: usize, f: impl FnOnce(&mut ClientCore, Instant) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.clients[i].core, now);
        self.pump(i);
        r
    }

    /// Drains client `i`'s events (answering NeedKeys at once) and transmissions.
    fn pump(&mut self, i: usize) {
        let now = self.now;
        let mut outgoing = Vec::new();
        let mut final_event = false;
        {
            let c = &mut self.clients[i];
            loop {
                let mut progressed = false;
                while let Some(ev) = c.core.poll_event() {
                    progressed = true;
                    if let Event::NeedKeys { server_salt, params } = ev {
                        let keys = keys_for(&c.serial, &server_salt, params);
                        c.core.set_keys(now, server_salt, params, keys);
                    }
                    final_event |= matches!(ev, Event::Denied { .. })
                        || (matches!(ev, Event::Unreachable) && c.core.is_done());
                    c.events.push((now, c.generation, ev));
                }
                let mut buf = [0u8; 256];
                while let Some(n) = c.core.poll_transmit(&mut buf) {
                    progressed = true;
                    outgoing.push(buf[..n].to_vec());
                }
                if !progressed {
                    break;
                }
            }
            if final_event {
                if let Some(after) = self.respawn_after {
                    c.respawn_at = Some(now + after);
                }
            }
        }
        for d in outgoing {
            self.clients[i].sent.push((now, d.clone()));
            self.send(Dir::ToServer, i, d);
        }
    }

    /// Puts a datagram on the wire, through the faults of its direction.
    fn send(&mut self, dir: Dir, client: usize, bytes: Vec<u8>) {
        let (f, d) = match dir {
            Dir::ToServer => (self.c2s, 0),
            Dir::ToClient => (self.s2c, 1),
        };
        let lost = self.net_rng.gen_bool(f.loss.clamp(0.0, 1.0));
        let dup = self.net_rng.gen_bool(f.dup.clamp(0.0, 1.0));
        let filtered = match self.filter.as_mut() {
            Some(filter) => filter(dir, client, &bytes),
            None => false,
        };
        let ty = bytes.get(3).copied().unwrap_or(0);
        if lost || filtered || self.clients[client].cut {
            self.dropped[d] += 1;
            *self.dropped_by_type.entry(ty).or_default() += 1;
            return;
        }
        let copies = if dup {
            self.duplicated[d] += 1;
            *self.duplicated_by_type.entry(ty).or_default() += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let extra = if f.jitter.is_zero() {
                Duration::ZERO
            } else {
                f.jitter.mul_f64(self.net_rng.gen_range(0.0..=1.0))
            };
            let at = self.now + f.latency + extra;
            self.next_packet += 1;
            self.in_flight.insert((at, self.next_packet), Packet { dir, client, bytes: bytes.clone() });
        }
    }

    /// Hands a datagram to the server directly (no network), as if from `src`. Returns the
    /// reply kind and bytes; the reply is not delivered anywhere.
    pub fn inject(&mut self, src: SocketAddr, bytes: &[u8]) -> (Reply, Vec<u8>) {
        let server = self.server.as_ref().expect("server is up");
        let mut out = [0u8; 256];
        let r = server.handle(self.now, self.unix(), src, bytes, &mut out);
        let reply = match r {
            Reply::None => Vec::new(),
            Reply::Send(n) | Reply::AfterCommit(n) => out[..n].to_vec(),
        };
        self.server_log.push(Delivery {
            at: self.now,
            client: None,
            request: bytes.to_vec(),
            reply: (!reply.is_empty()).then(|| reply.clone()),
        });
        (r, reply)
    }

    /// Hands a datagram to client `i` directly (no network).
    pub fn inject_to_client(&mut self, i: usize, bytes: &[u8]) {
        let now = self.now;
        self.clients[i].received.push((now, bytes.to_vec()));
        self.clients[i].core.handle_datagram(now, bytes);
        self.pump(i);
    }

    fn deliver(&mut self, p: Packet) {
        match p.dir {
            Dir::ToServer => {
                let Some(server) = self.server.as_ref() else {
                    return;
                };
                let src = self.clients[p.client].addr;
                let mut out = [0u8; 256];
                let r = server.handle(self.now, self.unix(), src, &p.bytes, &mut out);
                let reply = match r {
                    Reply::None => None,
                    Reply::Send(n) => {
                        self.send(Dir::ToClient, p.client, out[..n].to_vec());
                        Some(out[..n].to_vec())
                    }
                    Reply::AfterCommit(n) => {
                        self.held.push((p.client, out[..n].to_vec()));
                        Some(out[..n].to_vec())
                    }
                };
                self.server_log.push(Delivery {
                    at: self.now,
                    client: Some(p.client),
                    request: p.bytes,
                    reply,
                });
            }
            Dir::ToClient => {
                let c = &mut self.clients[p.client];
                if c.stopped {
                    return;
                }
                c.received.push((self.now, p.bytes.clone()));
                c.core.handle_datagram(self.now, &p.bytes);
                self.pump(p.client);
            }
        }
    }

    /// Commits the server's pending journal to the store and releases the held replies.
    pub fn commit(&mut self) {
        let Some(server) = self.server.as_ref() else {
            return;
        };
        let ops = server.drain_journal();
        if !ops.is_empty() {
            server.committed(&ops);
            self.store.extend(ops);
        }
        for (i, bytes) in std::mem::take(&mut self.held) {
            self.send(Dir::ToClient, i, bytes);
        }
    }

    /// The store refuses the pending journal: the held replies are never sent.
    pub fn fail_commit(&mut self) {
        let Some(server) = self.server.as_ref() else {
            return;
        };
        let ops = server.drain_journal();
        server.commit_failed(&ops);
        self.held.clear();
    }

    /// Number of replies waiting for a commit.
    pub fn held_replies(&self) -> usize {
        self.held.len()
    }

    /// Everything that is due at `now`: deliveries, server sweep, client timers, respawns.
    fn process_due(&mut self) {
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let p = entry.remove();
            self.deliver(p);
        }
        if let Some(server) = &self.server {
            if self.server_due <= self.now {
                server.handle_timeout(self.now);
                self.server_due = server.poll_timeout(self.now);
                assert!(self.server_due > self.now, "server poll_timeout not ahead");
            }
        }
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            if c.stopped {
                continue;
            }
            if c.respawn_at.is_some_and(|t| t <= self.now) {
                c.respawn_at = None;
                c.generation += 1;
                let generation = c.generation;
                let core = self.new_core(i, generation);
                self.clients[i].core = core;
                self.pump(i);
                continue;
            }
            if c.core.poll_timeout().is_some_and(|t| t <= self.now) {
                c.core.handle_timeout(self.now);
                self.pump(i);
            }
        }
        if self.auto_commit {
            self.commit();
        }
    }

    /// When something next happens.
    pub fn next_event(&self) -> Option<Instant> {
        let mut next = self.in_flight.keys().next().map(|k| k.0);
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if self.server.is_some() {
            consider(self.server_due);
        }
        for c in &self.clients {
            if c.stopped {
                continue;
            }
            if let Some(t) = c.core.poll_timeout() {
                consider(t);
            }
            if let Some(t) = c.respawn_at {
                consider(t);
            }
        }
        next
    }

    /// Processes everything due now, then jumps the clock to the next event.
    pub fn step(&mut self) {
        self.process_due();
        if let Some(next) = self.next_event() {
            self.advance(next);
        }
    }

    /// Moves the clock to `next`; an event still due now is allowed a bounded number of times
    /// (a zero-latency network), so a core that never stops asking for `now` fails the test.
    fn advance(&mut self, next: Instant) {
        if next > self.now {
            self.now = next;
            self.same_instant = 0;
        } else {
            self.same_instant += 1;
            assert!(self.same_instant < 10_000, "livelock: events keep falling due at {:?}", self.elapsed());
        }
    }

    /// Steps until the clock would pass `t`; the clock is then `t`. `check` runs after every step.
    pub fn run_until_with(&mut self, t: Instant, mut check: impl FnMut(&Sim)) {
        loop {
            self.process_due();
            check(self);
            match self.next_event() {
                Some(next) if next <= t => self.advance(next),
                _ => {
                    self.now = self.now.max(t);
                    return;
                }
            }
        }
    }

    /// Steps until `pred` holds after a step, for at most `d`; returns when it first held.
    /// The clock stays at that moment, so a test can act right then.
    pub fn run_while_not(&mut self, d: Duration, mut pred: impl FnMut(&Sim) -> bool) -> Option<Instant> {
        let t = self.now + d;
        loop {
            self.process_due();
            if pred(self) {
                return Some(self.now);
            }
            match self.next_event() {
                Some(next) if next <= t => self.advance(next),
                _ => {
                    self.now = self.now.max(t);
                    return None;
                }
            }
        }
    }

    pub fn run_until(&mut self, t: Instant) {
        self.run_until_with(t, |_| {});
    }

    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    pub fn run_for_with(&mut self, d: Duration, check: impl FnMut(&Sim)) {
        let t = self.now + d;
        self.run_until_with(t, check);
    }
}

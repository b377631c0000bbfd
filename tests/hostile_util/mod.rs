//! Helpers for `tests/hostile.rs`: the real server in-process over a tempdir store, a recording
//! UDP relay, a raw client over a std socket, datagram builders and reply attribution.
#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lic_udp::proto::client::{ClientConfig, ClientCore, Event};
use lic_udp::proto::keys::{derive_license_keys, derive_session_keys, LicenseKeys, MacKey, SessionKeys};
use lic_udp::proto::server::{ServerCore, StatsSnapshot};
use lic_udp::proto::wire::{self, Cookie, Heartbeat, Hello, Message, MsgType, Proof, MAX_DATAGRAM};
use lic_udp::server::{ServeError, ServeOptions, Server};
use lic_udp::{CachedKeys, Client, Serial};
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// The tests of this file measure timing and flood loopback: they run one at a time, even
/// though the test harness starts them on parallel threads.
pub fn serial_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on a fresh multi-threaded runtime, holding the file-wide lock.
pub fn run<F: Future>(f: F) -> F::Output {
    let _guard = serial_lock();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(f)
}

/// Short lease timers, so that heartbeats, losses and expiries happen within seconds.
pub fn fast_timers(ttl: Duration, heartbeat: Duration) -> ServeOptions {
    ServeOptions { ttl_override: Some(ttl), heartbeat_override: Some(heartbeat), ..Default::default() }
}

/// The real server (`lic_udp::server::Server`) on 127.0.0.1:0 over a tempdir store with fast
/// Argon2 parameters and one license.
pub struct TestServer {
    pub addr: SocketAddr,
    pub core: Arc<ServerCore>,
    pub serial: Serial,
    pub license: i64,
    pub keys: CachedKeys,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(seats: u16, opts: ServeOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("lic-udp.toml"), "[kdf]\nm_kib = 1024\nt = 1\np = 1\n").expect("cfg");
        let mut store = lic_udp::store::Store::open(dir.path()).expect("store");
        store.add_user("alice", "pw", true).expect("user");
        let ty = store.site().get("team").cloned().expect("team type");
        let (license, serial) = store.issue("alice", &ty, Some(seats), 0).expect("issue");
        let (server_salt, params) = (store.server_salt(), store.kdf());
        let keys = derive_license_keys(&serial, &server_salt, params).expect("kdf");
        let keys = CachedKeys { serial: serial.clone(), server_salt, params, keys };
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind server");
        let (server, info) = Server::new(socket, store, opts).expect("server");
        let core = server.core();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        Self {
            addr: info.addr,
            core,
            serial,
            license,
            keys,
            stop: Some(stop_tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// A real client with the keys cached, as an activated install has them.
    pub fn client(&self, server: SocketAddr) -> Client {
        Client::new(server).with_cached_keys(self.keys.clone())
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.core.stats().snapshot()
    }

    pub fn seats(&self) -> usize {
        self.core.seats_in_use().get(&self.license).copied().unwrap_or(0)
    }

    /// The server's data dir, for a second store handle (as `lic-udp issue` opens one).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn license_keys(&self) -> &LicenseKeys {
        &self.keys.keys
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server ran cleanly");
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    C2S,
    S2C,
}

#[derive(Clone, Debug)]
pub struct Rec {
    pub at: Instant,
    pub dir: Dir,
    pub bytes: Vec<u8>,
}

/// A recording UDP relay between one client (at a time) and the server. Clients send to
/// `addr`; the relay forwards from its one upstream socket, so the server sees every session
/// from the same source address. Everything forwarded is logged with its time; what the server
/// sends to the upstream socket is logged and also copied to `replies`.
pub struct Relay {
    pub addr: SocketAddr,
    pub upstream: Arc<UdpSocket>,
    pub server: SocketAddr,
    log: Arc<Mutex<Vec<Rec>>>,
    forward_c2s: Arc<AtomicBool>,
    forward_s2c: Arc<AtomicBool>,
    pub replies: mpsc::UnboundedReceiver<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(server: SocketAddr) -> Self {
        let listen = UdpSocket::bind("127.0.0.1:0").await.expect("bind relay");
        let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay upstream"));
        let addr = listen.local_addr().expect("relay addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let forward_c2s = Arc::new(AtomicBool::new(true));
        let forward_s2c = Arc::new(AtomicBool::new(true));
        let (tx, replies) = mpsc::unbounded_channel();
        let task = {
            let (up, log, fc, fs) = (upstream.clone(), log.clone(), forward_c2s.clone(), forward_s2c.clone());
            tokio::spawn(async move {
                let mut a = [0u8; 2048];
                let mut b = [0u8; 2048];
                let mut client: Option<SocketAddr> = None;
                loop {
                    tokio::select! {
                        r = listen.recv_from(&mut a) => {
                            let Ok((n, src)) = r else { continue };
                            client = Some(src);
                            if fc.load(Ordering::SeqCst) {
                                push(&log, Dir::C2S, &a[..n]);
                                let _ = up.send_to(&a[..n], server).await;
                            }
                        }
                        r = up.recv_from(&mut b) => {
                            let Ok((n, from)) = r else { continue };
                            if from != server {
                                continue;
                            }
                            push(&log, Dir::S2C, &b[..n]);
                            let _ = tx.send(b[..n].to_vec());
                            if let (true, Some(c)) = (fs.load(Ordering::SeqCst), client) {
                                let _ = listen.send_to(&b[..n], c).await;
                            }
                        }
                    }
                }
            })
        };
        Self { addr, upstream, server, log, forward_c2s, forward_s2c, replies, task }
    }

    /// Stops (false) or resumes (true) forwarding in each direction. What is not forwarded is
    /// not logged either: the server never saw it.
    pub fn set_forward(&self, c2s: bool, s2c: bool) {
        self.forward_c2s.store(c2s, Ordering::SeqCst);
        self.forward_s2c.store(s2c, Ordering::SeqCst);
    }

    pub fn len(&self) -> usize {
        self.log.lock().expect("relay log").len()
    }

    pub fn records_since(&self, from: usize) -> Vec<Rec> {
        self.log.lock().expect("relay log").get(from..).map(<[Rec]>::to_vec).unwrap_or_default()
    }

    /// Forgets the copies of earlier server datagrams.
    pub fn drain_replies(&mut self) {
        while self.replies.try_recv().is_ok() {}
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn push(log: &Mutex<Vec<Rec>>, dir: Dir, bytes: &[u8]) {
    if let Ok(mut l) = log.lock() {
        l.push(Rec { at: Instant::now(), dir, bytes: bytes.to_vec() });
    }
}

/// Number of ACKs with status OK among `recs`.
pub fn acks_ok(recs: &[Rec]) -> usize {
    recs.iter()
        .filter(|r| r.dir == Dir::S2C)
        .filter(|r| matches!(decode(&r.bytes), Some(Message::Ack(a)) if a.status == 0))
        .count()
}

pub fn decode(d: &[u8]) -> Option<Message> {
    wire::decode(d).ok().map(|f| f.msg)
}

pub fn type_of(d: &[u8]) -> Option<MsgType> {
    wire::peek_type(d).ok()
}

pub fn encode(msg: &Message) -> Vec<u8> {
    let mut b = [0u8; MAX_DATAGRAM];
    let n = wire::encode_unsigned(msg, &mut b).expect("encodes");
    b[..n].to_vec()
}

pub fn seal(msg: &Message, key: &MacKey) -> Vec<u8> {
    let mut b = [0u8; MAX_DATAGRAM];
    let n = wire::encode_unsigned(msg, &mut b).expect("encodes");
    let n = key.seal(&mut b, n).expect("seals");
    b[..n].to_vec()
}

pub fn hello(nonce: [u8; 16]) -> Vec<u8> {
    encode(&Message::Hello(Hello { client_nonce: nonce }))
}

/// A PROOF with a random tag (the sender does not have the license's keys).
pub fn forged_proof(license_id: [u8; 8], nonce: [u8; 16], cookie: Cookie, rng: &mut impl Rng) -> Vec<u8> {
    let p = Proof { license_id, instance_id: rng.gen(), client_nonce: nonce, cookie, prev_lease_id: 0 };
    let mut d = encode(&Message::Proof(p));
    d.extend((0..wire::TAG_LEN).map(|_| rng.gen::<u8>()));
    d
}

/// A heartbeat with a random tag.
pub fn forged_heartbeat(lease_id: u64, epoch: u32, seq: u64, rng: &mut impl Rng) -> Vec<u8> {
    let mut d = encode(&Message::Heartbeat(Heartbeat { lease_id, epoch, seq, flags: 0 }));
    d.extend((0..wire::TAG_LEN).map(|_| rng.gen::<u8>()));
    d
}

/// Which of `sent` a server reply answers, judged by the fields the reply echoes (the nonce of
/// a HELLO or PROOF, the lease and seq of a HEARTBEAT). Each request is matched at most once
/// (`used`). `None`: the reply answers none of them.
pub fn attribute(reply: &[u8], sent: &[Vec<u8>], used: &mut [bool]) -> Option<usize> {
    let msg = decode(reply)?;
    for (i, req) in sent.iter().enumerate() {
        if used.get(i).copied().unwrap_or(true) {
            continue;
        }
        let Some(q) = decode(req) else { continue };
        let hit = match (&msg, &q) {
            (Message::Challenge(c), Message::Hello(h)) => c.client_nonce == h.client_nonce,
            (Message::Unknown(u), Message::Proof(p)) => u.client_nonce == p.client_nonce,
            (Message::Unknown(u), Message::ProofId(p)) => u.client_nonce == p.proof.client_nonce,
            (Message::Grant(_) | Message::Deny(_), Message::Proof(_) | Message::ProofId(_)) => true,
            (Message::Stale(s), Message::Heartbeat(h)) => s.lease_id == h.lease_id,
            (Message::Ack(a), Message::Heartbeat(h)) => a.lease_id == h.lease_id && a.seq == h.seq,
            _ => false,
        };
        if hit {
            used[i] = true;
            return Some(i);
        }
    }
    None
}

/// A client driven by hand over a blocking std socket: the protocol core, no tokio.
pub struct RawClient {
    pub sock: StdUdpSocket,
    pub server: SocketAddr,
    pub core: ClientCore,
    pub instance_id: [u8; 16],
    pub keys: LicenseKeys,
    /// Every datagram the core sent, and every one it was given.
    pub sent: Vec<Vec<u8>>,
    pub received: Vec<Vec<u8>>,
}

/// A held lease whose session keys the test knows, so it can heartbeat at any rate.
#[derive(Clone)]
pub struct RawSession {
    pub lease_id: u64,
    pub epoch: u32,
    pub keys: SessionKeys,
}

impl RawClient {
    pub fn new(bind: &str, server: SocketAddr, cached: &CachedKeys, seed: u64) -> Self {
        let sock = StdUdpSocket::bind(bind).expect("bind raw client");
        let mut instance_id = [0u8; 16];
        instance_id[..8].copy_from_slice(&seed.to_le_bytes());
        instance_id[8] = 0xAA;
        let mut rng_seed = [0u8; 32];
        rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
        let core = ClientCore::new(ClientConfig::default(), instance_id, rng_seed, Instant::now())
            .with_cached_keys(cached.server_salt, cached.params, cached.keys.clone());
        Self {
            sock,
            server,
            core,
            instance_id,
            keys: cached.keys.clone(),
            sent: Vec::new(),
            received: Vec::new(),
        }
    }

    /// Sends what the core has queued.
    pub fn flush(&mut self) {
        let mut buf = [0u8; MAX_DATAGRAM];
        while let Some(n) = self.core.poll_transmit(&mut buf) {
            self.sent.push(buf[..n].to_vec());
            let _ = self.sock.send_to(&buf[..n], self.server);
        }
    }

    /// Takes what the core has queued without sending it.
    pub fn take_queued(&mut self) -> Vec<Vec<u8>> {
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut out = Vec::new();
        while let Some(n) = self.core.poll_transmit(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        self.sent.extend(out.iter().cloned());
        out
    }

    /// Receives one datagram from the server within `wait`.
    pub fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
            self.sock.set_read_timeout(Some(left)).expect("read timeout");
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) if from == self.server => return Some(buf[..n].to_vec()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Runs the handshake to a GRANT and derives the session keys from what went over the wire.
    pub fn handshake(&mut self, limit: Duration) -> RawSession {
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < limit, "raw client: no GRANT within {limit:?}");
            self.flush();
            while let Some(ev) = self.core.poll_event() {
                if let Event::Granted { lease_id, .. } = ev {
                    return self.session(lease_id);
                }
                assert!(matches!(ev, Event::NeedKeys { .. }), "raw client: {ev:?}");
            }
            let wait = self
                .core
                .poll_timeout()
                .map_or(Duration::from_millis(100), |t| t.saturating_duration_since(Instant::now()))
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            match self.recv(wait) {
                Some(d) => {
                    self.core.handle_datagram(Instant::now(), &d);
                    self.received.push(d);
                }
                None => self.core.handle_timeout(Instant::now()),
            }
        }
    }

    fn session(&self, lease_id: u64) -> RawSession {
        // The GRANT answered the last PROOF: its nonce and cookie salt the session keys.
        let proof = self
            .sent
            .iter()
            .rev()
            .find_map(|d| match decode(d) {
                Some(Message::Proof(p)) => Some(p),
                Some(Message::ProofId(p)) => Some(p.proof),
                _ => None,
            })
            .expect("a PROOF was sent");
        let epoch = self.epoch_of_grant(lease_id);
        let keys = derive_session_keys(
            &self.keys.k_auth,
            &proof.client_nonce,
            &proof.cookie,
            &self.keys.license_id,
            &self.instance_id,
            lease_id,
            epoch,
        );
        RawSession { lease_id, epoch, keys }
    }

    fn epoch_of_grant(&self, lease_id: u64) -> u32 {
        self.received
            .iter()
            .find_map(|d| match decode(d) {
                Some(Message::Grant(g)) if g.lease_id == lease_id => Some(g.epoch),
                _ => None,
            })
            .expect("the GRANT was received")
    }
}

impl RawSession {
    pub fn heartbeat(&self, seq: u64, flags: u8) -> Vec<u8> {
        seal(
            &Message::Heartbeat(Heartbeat { lease_id: self.lease_id, epoch: self.epoch, seq, flags }),
            &self.keys.c2s,
        )
    }

    /// The seq that `d` acknowledges, if it is this session's authentic ACK with status OK.
    pub fn acked_seq(&self, d: &[u8]) -> Option<u64> {
        let f = wire::decode(d).ok()?;
        match f.msg {
            Message::Ack(a)
                if a.lease_id == self.lease_id && a.status == 0 && self.keys.s2c.verify(f.signed, f.tag) =>
            {
                Some(a.seq)
            }
            _ => None,
        }
    }
}

/// The soft limit on open files of this process, from /proc (Linux); None elsewhere.
pub fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Datagrams the kernel dropped at the UDP socket bound to `addr` (its receive queue was full),
/// from /proc/net/udp (Linux, IPv4 loopback); None elsewhere.
pub fn kernel_drops(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(v4) = addr else { return None };
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.get(1) == Some(&want.as_str())).then(|| cols.last()?.parse().ok()).flatten()
    })
}

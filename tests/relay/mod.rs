//! A fault-injecting UDP relay for tests against the real server over real sockets.
//!
//! The relay listens on `127.0.0.1:0`. Every client source address it sees gets its own upstream
//! socket (connected to the server), so the server sees as many distinct sources as there are
//! clients, and the server's replies on that socket go back to that client. Both directions pass
//! through seeded faults: loss, duplication (each copy with its own delay) and a random extra
//! delay drawn uniformly from `[0, max_delay]` (which reorders). [`Relay::cut`] drops everything,
//! both ways, including what is still in flight, until it is switched off again.
//!
//! Randomness: each (client, direction) has its own `StdRng`, seeded from the relay seed, the
//! client's index (the order in which the relay first heard from it) and the direction, and every
//! datagram takes exactly four draws from it. So the fate of the k-th datagram of client i in a
//! direction is a pure function of the seed: a test that starts its clients one after the other
//! gets the same loss pattern on every run, whatever the scheduling of the other clients. What is
//! not reproducible is the timing of the real clients and server (their own jitter comes from the
//! OS RNG), so a seed fixes the pattern, not the exact outcome.
//!
//! Counters, per direction: `received` datagrams, `forwarded` copies, `dropped` copies (loss,
//! cut, or cut while in flight) and `duplicated` datagrams. Once nothing is in flight,
//! `received + duplicated == forwarded + dropped`. Every copy's fate is also logged with its
//! bytes (up to [`LOG_LIMIT`] entries) so a test can see which heartbeat or ACK got through.
//!
//! All tasks live in one `JoinSet` owned by the [`Relay`]: dropping the relay (or the end of the
//! test's runtime) aborts them. The number of clients is bounded by [`MAX_CLIENTS`].
#![allow(dead_code)] // each test binary uses a different part of this

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Clients beyond this many are ignored (their datagrams are dropped and not counted).
pub const MAX_CLIENTS: usize = 4096;
/// The fate log stops growing here; the counters keep counting.
pub const LOG_LIMIT: usize = 1_000_000;

/// The faults of one direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram that is not dropped is delivered twice.
    pub dup: f64,
    /// Each copy is delayed by a uniform random extra delay in `[0, max_delay]`.
    pub max_delay: Duration,
}

impl Faults {
    pub const NONE: Self = Self { loss: 0.0, dup: 0.0, max_delay: Duration::ZERO };

    pub const fn lossy(loss: f64, dup: f64, max_delay: Duration) -> Self {
        Self { loss, dup, max_delay }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client to server.
    ToServer = 0,
    /// Server to client.
    ToClient = 1,
}

/// A snapshot of one direction's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Datagrams that entered the relay in this direction.
    pub received: u64,
    /// Copies delivered.
    pub forwarded: u64,
    /// Copies that never arrived: lost, cut, or cut while delayed.
    pub dropped: u64,
    /// Datagrams that were delivered twice (or would have been, had the cut not eaten a copy).
    pub duplicated: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirStats {
        DirStats {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    Dropped,
}

/// What happened to one copy of one datagram.
#[derive(Clone, Debug)]
pub struct LogEntry {
    /// When it was delivered or dropped.
    pub at: Instant,
    /// The client's index (see [`Relay::clients`]).
    pub client: usize,
    pub dir: Dir,
    pub fate: Fate,
    pub datagram: Vec<u8>,
}

struct Shared {
    seed: u64,
    faults: Mutex<[Faults; 2]>,
    cut: AtomicBool,
    counters: [Counters; 2],
    log: Mutex<Vec<LogEntry>>,
    clients: Mutex<Vec<SocketAddr>>,
}

impl Shared {
    fn counters(&self, dir: Dir) -> &Counters {
        &self.counters[dir as usize]
    }

    fn record(&self, at: Instant, client: usize, dir: Dir, fate: Fate, datagram: &[u8]) {
        let c = self.counters(dir);
        match fate {
            Fate::Delivered => c.forwarded.fetch_add(1, Ordering::Relaxed),
            Fate::Dropped => c.dropped.fetch_add(1, Ordering::Relaxed),
        };
        if let Ok(mut log) = self.log.lock() {
            if log.len() < LOG_LIMIT {
                log.push(LogEntry { at, client, dir, fate, datagram: datagram.to_vec() });
            }
        }
    }

    /// The random stream of one (client, direction).
    fn rng(&self, client: usize, dir: Dir) -> StdRng {
        let mix = self.seed
            ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (dir as u64 + 1).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        StdRng::seed_from_u64(mix)
    }

    /// Decides the fate of one datagram: the delays of the copies to deliver (none if dropped).
    /// Always takes four draws, so the stream stays aligned with the datagram count.
    fn decide(&self, rng: &mut StdRng, client: usize, dir: Dir, datagram: &[u8]) -> Vec<Duration> {
        let (lose, dup, d1, d2): (f64, f64, f64, f64) = (rng.gen(), rng.gen(), rng.gen(), rng.gen());
        let f = self.faults.lock().map(|f| f[dir as usize]).unwrap_or(Faults::NONE);
        let c = self.counters(dir);
        c.received.fetch_add(1, Ordering::Relaxed);
        if self.cut.load(Ordering::Relaxed) || lose < f.loss {
            self.record(Instant::now(), client, dir, Fate::Dropped, datagram);
            return Vec::new();
        }
        let mut delays = vec![f.max_delay.mul_f64(d1)];
        if dup < f.dup {
            c.duplicated.fetch_add(1, Ordering::Relaxed);
            delays.push(f.max_delay.mul_f64(d2));
        }
        delays
    }
}

#[derive(Clone)]
enum Target {
    /// Through the client's upstream socket, which is connected to the server.
    Server(Arc<UdpSocket>),
    /// Out of the listening socket to this client address.
    Client(SocketAddr),
}

/// One copy waiting for its delivery time.
struct Pending {
    at: tokio::time::Instant,
    order: u64,
    client: usize,
    dir: Dir,
    target: Target,
    datagram: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed, so that `BinaryHeap` pops the earliest first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// A copy to schedule: (delay, client, direction, target, bytes).
type Submit = (Duration, usize, Dir, Target, Vec<u8>);

pub struct Relay {
    addr: SocketAddr,
    server: SocketAddr,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Relay {
    /// Starts a relay to `server` with no faults; set them with [`Relay::set_faults`].
    pub async fn start(server: SocketAddr, seed: u64) -> Self {
        let listener = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = listener.local_addr().expect("relay addr");
        let shared = Arc::new(Shared {
            seed,
            faults: Mutex::new([Faults::NONE; 2]),
            cut: AtomicBool::new(false),
            counters: Default::default(),
            log: Mutex::new(Vec::new()),
            clients: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel::<Submit>();
        let mut tasks = JoinSet::new();
        tasks.spawn(scheduler(listener.clone(), shared.clone(), rx));
        tasks.spawn(inbound(listener, server, shared.clone(), tx));
        Self { addr, server, shared, tasks }
    }

    /// Where clients send: use this instead of the server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn set_faults(&self, dir: Dir, f: Faults) {
        if let Ok(mut all) = self.shared.faults.lock() {
            all[dir as usize] = f;
        }
    }

    /// The same faults in both directions.
    pub fn set_both(&self, f: Faults) {
        self.set_faults(Dir::ToServer, f);
        self.set_faults(Dir::ToClient, f);
    }

    pub fn faults(&self, dir: Dir) -> Faults {
        self.shared.faults.lock().map(|f| f[dir as usize]).unwrap_or(Faults::NONE)
    }

    /// Cuts the link (100 % loss both ways, in-flight copies included) or restores it.
    pub fn cut(&self, on: bool) {
        self.shared.cut.store(on, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    pub fn stats(&self, dir: Dir) -> DirStats {
        self.shared.counters(dir).snapshot()
    }

    /// Client source addresses in the order the relay first heard from them; the index is the
    /// client number used by the log and the random streams.
    pub fn clients(&self) -> Vec<SocketAddr> {
        self.shared.clients.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// A copy of the fate log.
    pub fn log(&self) -> Vec<LogEntry> {
        self.shared.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stops forwarding now. Dropping the relay does the same.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Reads client datagrams, makes an upstream socket per new client, and submits the datagrams
/// towards the server.
async fn inbound(
    listener: Arc<UdpSocket>,
    server: SocketAddr,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Submit>,
) {
    // The upstream readers die with this task (the JoinSet is dropped when it is aborted).
    let mut readers = JoinSet::new();
    let mut upstreams: HashMap<SocketAddr, (usize, Arc<UdpSocket>, StdRng)> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, src)) = listener.recv_from(&mut buf).await else {
            // ICMP port-unreachable from an earlier send to a client that has gone; not fatal.
            continue;
        };
        if !upstreams.contains_key(&src) {
            if upstreams.len() >= MAX_CLIENTS {
                continue;
            }
            let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else { continue };
            if sock.connect(server).await.is_err() {
                continue;
            }
            let sock = Arc::new(sock);
            let client = {
                let mut clients = shared.clients.lock().expect("relay clients");
                clients.push(src);
                clients.len() - 1
            };
            readers.spawn(outbound(sock.clone(), src, client, shared.clone(), tx.clone()));
            upstreams.insert(src, (client, sock, shared.rng(client, Dir::ToServer)));
        }
        let Some((client, sock, rng)) = upstreams.get_mut(&src) else { continue };
        let datagram = &buf[..n];
        for delay in shared.decide(rng, *client, Dir::ToServer, datagram) {
            let _ = tx.send((delay, *client, Dir::ToServer, Target::Server(sock.clone()), datagram.to_vec()));
        }
    }
}

/// Reads the server's replies on one client's upstream socket and submits them to that client.
async fn outbound(
    sock: Arc<UdpSocket>,
    client_addr: SocketAddr,
    client: usize,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Submit>,
) {
    let mut rng = shared.rng(client, Dir::ToClient);
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok(n) = sock.recv(&mut buf).await else { continue };
        let datagram = &buf[..n];
        for delay in shared.decide(&mut rng, client, Dir::ToClient, datagram) {
            let _ = tx.send((delay, client, Dir::ToClient, Target::Client(client_addr), datagram.to_vec()));
        }
    }
}

/// Delivers every copy at its time, in time order (equal times in submission order).
async fn scheduler(listener: Arc<UdpSocket>, shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Submit>) {
    let mut heap: BinaryHeap<Pending> = BinaryHeap::new();
    let mut order = 0u64;
    loop {
        // Deliver everything that is due.
        let now = tokio::time::Instant::now();
        while heap.peek().is_some_and(|p| p.at <= now) {
            let Some(p) = heap.pop() else { break };
            if shared.cut.load(Ordering::SeqCst) {
                shared.record(Instant::now(), p.client, p.dir, Fate::Dropped, &p.datagram);
                continue;
            }
            // A refused send is like a lost datagram; the counters still say it left the relay.
            let _ = match &p.target {
                Target::Server(sock) => sock.send(&p.datagram).await,
                Target::Client(addr) => listener.send_to(&p.datagram, *addr).await,
            };
            shared.record(Instant::now(), p.client, p.dir, Fate::Delivered, &p.datagram);
        }
        let next = heap.peek().map(|p| p.at);
        tokio::select! {
            m = rx.recv() => {
                let Some((delay, client, dir, target, datagram)) = m else { return };
                order += 1;
                let at = tokio::time::Instant::now() + delay;
                heap.push(Pending { at, order, client, dir, target, datagram });
            }
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

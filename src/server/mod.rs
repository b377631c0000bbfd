//! The server's IO layer: one UDP socket, the store, the clock and the OS RNG around
//! [`ServerCore`]. Everything protocol-shaped lives in the core; this module only moves bytes
//! (in batches, on one thread), commits the grant journal before gated replies leave, has
//! removals written on a store thread, and reloads licenses when the store changes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::net::UdpSocket;

use crate::metrics::Histogram;
use crate::proto::server::{DenyEvent, JournalOp, Reply, ServerConfig, ServerCore, EXPIRY_BUDGET};
use crate::proto::wire::{MsgType, MAX_DATAGRAM};
use crate::store::{Store, StoreError};

/// The documented default port (proto-spec.md §1).
pub const DEFAULT_PORT: u16 = 7301;

mod batch;
pub use batch::{enlarge_buffers, BufferSizes, SOCKET_BUFFER};

/// How long the IO thread blocks at most before it looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How often the server flushes removals, probes a failed store and checks for new licenses.
const TICK: Duration = Duration::from_millis(250);
/// How often denials go to the audit log: each flush is an fsync on the IO thread.
const AUDIT_FLUSH: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    pub ttl_override: Option<Duration>,
    pub heartbeat_override: Option<Duration>,
    /// Start even if the lease journal cannot be read, with a grace period of one TTL in which
    /// only earlier holders get seats (proto-spec.md §7).
    pub recover: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "cannot read the recorded seat leases ({0}); without them the server does not know which seats are \
         taken, so it will not start. Restore the data dir from a backup, or start with --recover: \
         unreadable rows are kept aside in the table leases_damaged, and for one lease TTL only \
         clients that held a seat before can take one"
    )]
    LeaseState(#[source] StoreError),
    #[error("UDP socket error: {0}")]
    Socket(#[source] std::io::Error),
    #[error("the store worker stopped unexpectedly")]
    Worker,
}

/// A server bound to its socket, with its store loaded, not yet serving.
pub struct Server {
    /// Held until `run` returns: one server per data dir.
    lock: crate::store::ServeLock,
    socket: UdpSocket,
    core: Arc<ServerCore>,
    heartbeat_time: Arc<Histogram>,
    store: Arc<Mutex<Store>>,
    /// The store's `data_version` when licenses were last loaded.
    data_version: AtomicI64,
    /// When an UNKNOWN last made the server reread the store (at most every [`UNKNOWN_RELOAD`]).
    last_unknown_reload: Mutex<Instant>,
}

/// A license issued a moment ago may not be loaded yet; before answering UNKNOWN the server
/// rereads the store, but not more often than this, so a flood of guesses cannot keep SQLite busy.
const UNKNOWN_RELOAD: Duration = Duration::from_millis(200);

/// What the start-up log line reports.
#[derive(Clone, Debug)]
pub struct StartInfo {
    pub addr: SocketAddr,
    pub data_dir: std::path::PathBuf,
    pub licenses: usize,
    pub restored_leases: usize,
    /// Rows `--recover` moved to `leases_damaged`.
    pub damaged_leases: usize,
    pub recovery_grace: Option<Duration>,
    pub epoch: u32,
}

pub use crate::unix_now;

impl Server {
    /// Opens the store, persists the next boot epoch and restores recorded leases, all before
    /// the first datagram is read: restored seats count from the start (proto-spec.md §7).
    pub fn new(
        socket: UdpSocket,
        mut store: Store,
        opts: ServeOptions,
    ) -> Result<(Self, StartInfo), ServeError> {
        // Before anything is read: another server's seats are not ours to restore or grant.
        let lock = store.lock_for_serving()?;
        let licenses = store.licenses()?;
        let (restored, damaged) = match store.leases() {
            Ok(l) => (l, 0),
            Err(e) if !opts.recover => return Err(ServeError::LeaseState(e)),
            Err(_) => store.recover_leases(unix_now())?,
        };
        let epoch = store.bump_epoch()?;
        // The grace lasts the longest TTL any holder may have been promised.
        let recovery_grace = opts.recover.then(|| {
            opts.ttl_override.unwrap_or_else(|| licenses.iter().map(|l| l.ttl).max().unwrap_or_default())
        });
        let data_version = store.data_version()?;
        let cfg = ServerConfig {
            server_salt: store.server_salt(),
            kdf: store.kdf(),
            epoch,
            ttl_override: opts.ttl_override,
            heartbeat_override: opts.heartbeat_override,
            recovery_grace,
        };
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let info = StartInfo {
            addr: socket.local_addr().map_err(ServeError::Socket)?,
            data_dir: store.dir().to_path_buf(),
            licenses: licenses.len(),
            restored_leases: restored.len(),
            damaged_leases: damaged,
            recovery_grace,
            epoch,
        };
        let records = licenses.iter().map(|l| l.record()).collect();
        let core = ServerCore::new(cfg, records, restored, Instant::now(), seed);
        let server = Self {
            lock,
            socket,
            core: Arc::new(core),
            heartbeat_time: Arc::default(),
            store: Arc::new(Mutex::new(store)),
            data_version: AtomicI64::new(data_version),
            last_unknown_reload: Mutex::new(
                Instant::now().checked_sub(UNKNOWN_RELOAD).unwrap_or_else(Instant::now),
            ),
        };
        Ok((server, info))
    }

    pub fn core(&self) -> Arc<ServerCore> {
        self.core.clone()
    }

    /// How long each heartbeat took to handle, for `/metrics`.
    pub fn heartbeat_time(&self) -> Arc<Histogram> {
        self.heartbeat_time.clone()
    }

    /// Serves until `shutdown` resolves, then commits what is pending and returns.
    ///
    /// The datagrams are handled on one dedicated thread with blocking, batched system calls
    /// ([`batch`]); the async side only waits for `shutdown`. Grants are committed on that thread
    /// too, between batches, so a GRANT never leaves before its commit; removals (releases,
    /// expiries) are written by a store thread ([`Remover`]), so that a mass expiry's deletes do
    /// not hold up heartbeats. The socket asks for [`SOCKET_BUFFER`]-sized buffers.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let _lock = self.lock;
        let stop = Arc::new(AtomicBool::new(false));
        let socket = self.socket.into_std().map_err(ServeError::Socket)?;
        socket.set_nonblocking(false).map_err(ServeError::Socket)?;
        let sizes = batch::enlarge_buffers(&socket);
        tracing::debug!("socket buffers: {} bytes receive, {} bytes send", sizes.recv, sizes.send);
        let worker = Worker {
            socket,
            core: self.core,
            heartbeat_time: self.heartbeat_time,
            store: self.store,
            data_version: self.data_version,
            last_unknown_reload: self.last_unknown_reload,
        };
        let flag = stop.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("lic-udp-io".into())
            .spawn(move || {
                let _ = done_tx.send(worker.run(&flag));
            })
            .map_err(ServeError::Socket)?;
        tokio::pin!(shutdown);
        tokio::pin!(done_rx);
        tokio::select! {
            _ = &mut shutdown => {
                stop.store(true, Ordering::Relaxed);
                done_rx.await.map_err(|_| ServeError::Worker)?
            }
            r = &mut done_rx => r.map_err(|_| ServeError::Worker)?,
        }
    }
}

use batch::Out;

/// The IO thread's state.
struct Worker {
    socket: std::net::UdpSocket,
    core: Arc<ServerCore>,
    heartbeat_time: Arc<Histogram>,
    store: Arc<Mutex<Store>>,
    data_version: AtomicI64,
    last_unknown_reload: Mutex<Instant>,
}

/// Writes removals (releases, expiries) to the store on a thread of its own. A mass expiry
/// journals one removal per lease at once; 100,000 deletes in one SQLite transaction take about
/// 0.6 s, which on the IO thread held every heartbeat behind them. Removals may lag the core
/// (proto-spec.md §7), so they need not be written between two batches; grants still are,
/// on the IO thread, before their GRANTs leave.
struct Remover {
    tx: Option<std::sync::mpsc::Sender<StoreWork>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set at shutdown: write what is left without the pauses between chunks.
    hurry: Arc<AtomicBool>,
}

/// What the store thread writes: removals, and denials for the audit log (batched once a
/// second, so their fsync never holds up the IO thread either).
enum StoreWork {
    Removals(Vec<JournalOp>),
    Denials(Vec<DenyEvent>),
}

/// Removals per store transaction on the store thread. A mass expiry hands over tens of
/// thousands at once; written in one go, they kept a core busy for most of a second, and on a
/// machine with few cores the IO thread got half of one meanwhile (heartbeat p99 of 30 ms at
/// 100,000/s). In slices with a pause as long as each took, the store thread takes at most
/// half a core, and a grant waiting for the store lock waits one slice at most (plus the
/// removals still in the journal, which its own commit writes: see Worker::commit).
const STORE_CHUNK: usize = 2_000;

/// Writes `ops`; false (after putting them back into the journal) if the store refused.
fn write_removals(core: &ServerCore, store: &Mutex<Store>, ops: &[JournalOp]) -> bool {
    let result = store.lock().map_err(|_| StoreError::Poisoned).and_then(|mut s| s.apply(ops));
    match result {
        Ok(()) => {
            core.committed(ops);
            true
        }
        Err(e) => {
            if core.store_available() {
                tracing::error!(
                    "cannot record releases and expiries, denying new seats until the store takes \
                     writes again: {e}"
                );
            }
            // The removals go back into the journal for the next commit.
            core.commit_failed(ops);
            core.set_store_available(false);
            false
        }
    }
}

impl Remover {
    fn start(core: Arc<ServerCore>, store: Arc<Mutex<Store>>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<StoreWork>();
        let hurry = Arc::new(AtomicBool::new(false));
        let in_a_hurry = hurry.clone();
        let thread = std::thread::Builder::new().name("lic-udp-store".into()).spawn(move || {
            for work in rx {
                let ops = match work {
                    StoreWork::Removals(ops) => ops,
                    StoreWork::Denials(d) => {
                        let r = store
                            .lock()
                            .map_err(|_| StoreError::Poisoned)
                            .and_then(|mut s| s.record_denials(&d));
                        if let Err(e) = r {
                            tracing::warn!("cannot write {} denials to the audit log: {e}", d.len());
                        }
                        continue;
                    }
                };
                let mut rest: &[JournalOp] = &ops;
                while !rest.is_empty() {
                    let (chunk, tail) = rest.split_at(rest.len().min(STORE_CHUNK));
                    let started = Instant::now();
                    if !write_removals(&core, &store, chunk) {
                        // The store refuses: the rest goes back into the journal with the
                        // failed chunk, for the commit after the store recovers.
                        core.commit_failed(tail);
                        break;
                    }
                    rest = tail;
                    if !rest.is_empty() && !in_a_hurry.load(Ordering::Relaxed) {
                        // Half the time at most: the IO thread and the bench's or the
                        // machine's other work keep at least half a core meanwhile.
                        std::thread::sleep(started.elapsed());
                    }
                }
            }
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread), hurry })
    }

    /// Hands work to the store thread, or gives it back if the thread has gone (then the
    /// caller deals with it on its own thread).
    fn submit(&self, work: StoreWork) -> Result<(), StoreWork> {
        match &self.tx {
            Some(tx) => tx.send(work).map_err(|e| e.0),
            None => Err(work),
        }
    }

    /// Waits until everything handed over has been written.
    fn finish(&mut self) {
        self.hurry.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Remover {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Worker {
    fn run(self, stop: &AtomicBool) -> Result<(), ServeError> {
        let mut remover =
            Remover::start(self.core.clone(), self.store.clone()).map_err(ServeError::Socket)?;
        let mut bufs = batch::RecvBufs::new();
        let mut send_bufs = batch::SendBufs::new();
        let mut out: Vec<Out> = Vec::with_capacity(batch::BATCH);
        let mut gated: Vec<Out> = Vec::new();
        let mut next_timeout = self.core.poll_timeout(Instant::now());
        let mut next_housekeeping = Instant::now() + TICK;
        let mut next_audit = Instant::now() + AUDIT_FLUSH;
        let mut now = Instant::now();
        let mut read_timeout = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            // Wake for the core's next deadline, and at least every 50 ms to see `stop`. The
            // read timeout is a system call to change, so it moves in coarse steps only
            // (batch::timeout_step); a busy server makes one system call per batch received
            // and one per batch sent.
            let mut want = next_timeout.min(next_housekeeping).saturating_duration_since(now);
            if !gated.is_empty() {
                // Grants wait for the store, which the store thread holds: look again soon.
                want = Duration::ZERO;
            }
            let step = batch::timeout_step(want, STOP_POLL);
            if step != read_timeout {
                self.socket.set_read_timeout(Some(step)).map_err(ServeError::Socket)?;
                read_timeout = step;
            }
            let mut received = 0;
            match batch::recv(&self.socket, &mut bufs) {
                Ok(0) => {}
                Ok(n) => {
                    received = n;
                    // One clock reading per batch: the datagrams of a batch arrived together.
                    now = Instant::now();
                    let unix = unix_now();
                    self.core.warm((0..n).map(|i| bufs.datagram(i)));
                    let mut heartbeats = 0;
                    for i in 0..n {
                        let (_, src, truncated) = bufs.got[i];
                        let datagram = if truncated { &[][..] } else { bufs.datagram(i) };
                        heartbeats += u64::from(datagram.get(3) == Some(&(MsgType::Heartbeat as u8)));
                        self.on_datagram(now, unix, datagram, src, &mut out, &mut gated);
                    }
                    // For /metrics: the batch's handling time shared out over its datagrams,
                    // recorded once for its heartbeats. Timing each heartbeat (two clock reads
                    // and two atomic adds apiece) cost about 2 % of the IO thread.
                    if heartbeats > 0 {
                        let each = now.elapsed() / u32::try_from(n).unwrap_or(u32::MAX);
                        self.heartbeat_time.observe_n(each, heartbeats);
                    }
                    if !gated.is_empty() {
                        self.commit(&mut out, &mut gated, false);
                    }
                    batch::send(&self.socket, &mut send_bufs, &out);
                    out.clear();
                }
                // ICMP errors for earlier sends surface here; they say nothing about this socket.
                Err(e) => tracing::debug!("recv error: {e}"),
            }
            if !gated.is_empty() {
                // An earlier try found the store busy.
                self.commit(&mut out, &mut gated, false);
                batch::send(&self.socket, &mut send_bufs, &out);
                out.clear();
            }
            now = Instant::now();
            if now >= next_timeout {
                // Datagrams arriving: a slice of the expiry work the size of a receive batch,
                // then back to them (see ServerCore::handle_timeout_within); a whole budget
                // when the last wait for datagrams came back empty.
                let budget = if received > 0 { batch::BATCH } else { EXPIRY_BUDGET };
                self.core.handle_timeout_within(now, budget);
                next_timeout = self.core.poll_timeout(now);
            }
            // The store work runs once a period, even while a mass expiry makes the core ask
            // for timeouts back to back.
            if now >= next_housekeeping {
                next_housekeeping = now + TICK;
                if !self.core.store_available() {
                    self.probe_store();
                }
                // With no GRANT waiting, the journal holds removals only (every grant leaves a
                // reply in `gated`): the store thread writes them.
                if gated.is_empty() && self.core.has_pending_journal() {
                    let work = StoreWork::Removals(self.core.drain_journal());
                    if let Err(StoreWork::Removals(ops)) = remover.submit(work) {
                        self.core.commit_failed(&ops); // back into the journal, for the end
                    }
                }
                self.reload_if_changed();
                if now >= next_audit {
                    next_audit = now + AUDIT_FLUSH;
                    let denials = self.core.drain_denials();
                    if !denials.is_empty() {
                        if let Err(StoreWork::Denials(d)) = remover.submit(StoreWork::Denials(denials)) {
                            self.flush_denials_here(d);
                        }
                    }
                }
            }
        }
        remover.finish();
        self.flush_denials_here(self.core.drain_denials());
        if self.core.has_pending_journal() || !gated.is_empty() {
            self.commit(&mut out, &mut gated, true);
            batch::send(&self.socket, &mut send_bufs, &out);
        }
        Ok(())
    }

    fn on_datagram(
        &self,
        now: Instant,
        unix: u64,
        datagram: &[u8],
        src: SocketAddr,
        out: &mut Vec<Out>,
        gated: &mut Vec<Out>,
    ) {
        let mut reply = [0u8; MAX_DATAGRAM];
        let mut r = self.core.handle(now, unix, src, datagram, &mut reply);
        if matches!(r, Reply::Send(_)) && reply[3] == MsgType::Unknown as u8 && self.may_reload_for_unknown()
        {
            // Perhaps issued a moment ago by `lic-udp issue`: look again before saying no.
            if self.reload_if_changed() {
                r = self.core.handle(Instant::now(), unix, src, datagram, &mut reply);
            }
        }
        match r {
            Reply::None => {}
            Reply::Send(k) => out.push((src, reply, k)),
            Reply::AfterCommit(k) => gated.push((src, reply, k)),
        }
    }

    /// Commits the journal, then releases the replies that waited for it into `out`
    /// (proto-spec.md §7). If the store refuses, the grants are undone, their replies dropped,
    /// and new seats are denied until the store takes writes again. Unless `wait`, a store
    /// busy with the store thread's removals leaves everything as it is, for a later try: the
    /// IO thread goes on with heartbeats meanwhile.
    fn commit(&self, out: &mut Vec<Out>, gated: &mut Vec<Out>, wait: bool) {
        let store = match self.store.try_lock() {
            Ok(s) => Some(s),
            Err(std::sync::TryLockError::WouldBlock) if !wait => return,
            Err(std::sync::TryLockError::WouldBlock) => self.store.lock().ok(),
            Err(std::sync::TryLockError::Poisoned(_)) => None,
        };
        // Everything drained, in journal order: a removal must reach the store before a later
        // grant to the same instance, whose row would otherwise replace the lease's row and
        // take its audit record with it. During a mass expiry this can be up to a tick's worth
        // of removals (see Worker::run), written here in the grant's transaction.
        let ops = self.core.drain_journal();
        let result = match store {
            _ if ops.is_empty() => Ok(()),
            Some(mut s) => s.apply(&ops),
            None => Err(StoreError::Poisoned),
        };
        match result {
            Ok(()) => {
                self.core.committed(&ops);
                out.append(gated);
            }
            Err(e) => {
                if self.core.store_available() {
                    tracing::error!(
                        "cannot record grants, denying new seats until the store takes writes again: {e}"
                    );
                }
                self.core.commit_failed(&ops);
                self.core.set_store_available(false);
                gated.clear();
            }
        }
    }

    /// Writes denials to the audit log on this thread: only at shutdown, or if the store
    /// thread is gone. A failure loses them (they changed nothing) and is logged.
    fn flush_denials_here(&self, denials: Vec<DenyEvent>) {
        if denials.is_empty() {
            return;
        }
        let r =
            self.store.lock().map_err(|_| StoreError::Poisoned).and_then(|mut s| s.record_denials(&denials));
        if let Err(e) = r {
            tracing::warn!("cannot write {} denials to the audit log: {e}", denials.len());
        }
    }

    /// After a failed commit: is the disk taking writes again?
    fn probe_store(&self) {
        // Busy with the store thread: it is taking writes, or will say so itself.
        let Ok(mut s) = self.store.try_lock() else { return };
        let ok = s.probe().is_ok();
        drop(s);
        if ok {
            tracing::info!("the store takes writes again; granting new seats");
            self.core.set_store_available(true);
        }
    }

    fn may_reload_for_unknown(&self) -> bool {
        let Ok(mut last) = self.last_unknown_reload.lock() else { return false };
        let now = Instant::now();
        if now.duration_since(*last) < UNKNOWN_RELOAD {
            return false;
        }
        *last = now;
        true
    }

    /// Picks up licenses issued or revoked by other processes (`lic-udp issue`, `revoke`).
    /// True if licenses were reloaded.
    fn reload_if_changed(&self) -> bool {
        let seen = self.data_version.load(Ordering::Relaxed);
        // Busy with the store thread's removals: look again at the next tick, do not wait.
        let Ok(s) = self.store.try_lock() else { return false };
        let fresh = Ok::<_, StoreError>(s).and_then(|s| {
            let v = s.data_version()?;
            if v == seen {
                return Ok(None);
            }
            Ok(Some((v, s.licenses()?)))
        });
        match fresh {
            Ok(Some((v, licenses))) => {
                self.data_version.store(v, Ordering::Relaxed);
                let n = licenses.len();
                let before = self.core.seats_in_use().len();
                self.core.sync_licenses(licenses.iter().map(|l| l.record()).collect());
                if n != before {
                    tracing::info!("store changed: {n} license{} loaded", if n == 1 { "" } else { "s" });
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!("cannot reread licenses: {e}");
                false
            }
        }
    }
}

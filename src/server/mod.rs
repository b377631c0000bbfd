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
use crate::proto::wire::{MsgType, MAX_REPLY};
use crate::store::{Store, StoreError};

/// The documented default port (proto-spec.md §1).
pub const DEFAULT_PORT: u16 = 7301;

mod batch;
pub mod cluster;
pub mod listen;
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
    /// Held until `run` returns: one server per data dir (none on the etcd store).
    lock: Option<crate::store::ServeLock>,
    socket: UdpSocket,
    core: Arc<ServerCore>,
    heartbeat_time: Arc<Histogram>,
    /// The SQLite store; `None` for a cluster node, whose store is `cluster`.
    store: Option<Arc<Mutex<Store>>>,
    cluster: Option<ClusterStart>,
    /// The store's `data_version` when licenses were last loaded.
    data_version: AtomicI64,
    /// When an UNKNOWN last made the server reread the store (at most every [`UNKNOWN_RELOAD`]).
    last_unknown_reload: Mutex<Instant>,
}

/// A cluster node's etcd handle and the records it adopted at start.
struct ClusterStart {
    node: Arc<crate::store::etcd::NodeState>,
    adopted: Vec<crate::store::etcd::OwnedRecord>,
    /// The longest TTL this node promises (its etcd lease and ACK gate are sized for it).
    ttl_cap: Duration,
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
        let (restored, damaged, lost) = match store.leases() {
            Ok(l) => (l, 0, false),
            Err(e) if !opts.recover => return Err(ServeError::LeaseState(e)),
            Err(_) => {
                let (l, damaged) = store.recover_leases(unix_now())?;
                (l, damaged, true)
            }
        };
        let epoch = store.bump_epoch()?;
        // The grace lasts the longest TTL any holder may have been promised, and only when the
        // journal could not be read: `--recover` left in a service unit must not refuse
        // newcomers at every restart.
        let recovery_grace = lost.then(|| {
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
            lock: Some(lock),
            socket,
            core: Arc::new(core),
            heartbeat_time: Arc::default(),
            store: Some(Arc::new(Mutex::new(store))),
            cluster: None,
            data_version: AtomicI64::new(data_version),
            last_unknown_reload: Mutex::new(
                Instant::now().checked_sub(UNKNOWN_RELOAD).unwrap_or_else(Instant::now),
            ),
        };
        Ok((server, info))
    }

    /// A node of a cluster on the etcd store (proto-spec.md §11): takes its place as
    /// `node_id`, adopts its own records if it restarted, takes a cluster-wide boot epoch, and
    /// loads licenses and every node's holders before the first datagram is read.
    pub fn new_cluster(
        socket: UdpSocket,
        store: crate::store::etcd::EtcdStore,
        node_id: String,
        token: String,
        opts: ServeOptions,
    ) -> Result<(Self, StartInfo), ServeError> {
        use crate::store::etcd::{NodeConfig, NodeState, NodeTimers};
        let licenses = store.licenses()?;
        let ttl = opts.ttl_override.unwrap_or_else(|| {
            licenses
                .iter()
                .map(|l| l.ttl)
                .chain(store.site().types.values().map(|t| t.lease_ttl))
                .max()
                .unwrap_or(Duration::from_secs(60))
        });
        let addr = socket.local_addr().map_err(ServeError::Socket)?;
        let cfg =
            NodeConfig { node_id, addr: addr.to_string(), token, timers: NodeTimers::for_lease_ttl(ttl) };
        let (node, adopted) = NodeState::register(store.clone(), cfg)?;
        let epoch = store.bump_epoch()?;
        let snapshot = store.snapshot().map_err(StoreError::from)?;
        let cfg = ServerConfig {
            server_salt: store.server_salt(),
            kdf: store.kdf(),
            epoch,
            ttl_override: opts.ttl_override,
            heartbeat_override: opts.heartbeat_override,
            recovery_grace: None,
        };
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let records = licenses.iter().map(|l| l.record()).collect();
        let restored = adopted.iter().map(|o| o.lease.clone()).collect();
        let core = ServerCore::new(cfg, records, restored, Instant::now(), seed);
        core.set_ttl_cap(ttl);
        core.sync_foreign(&snapshot.foreign(&node.cfg.node_id, node.lease()));
        // Restoring may drop records (a license gone): nothing to write for those here.
        let _ = core.drain_journal();
        let info = StartInfo {
            addr,
            data_dir: std::path::PathBuf::from(store.url().to_string()),
            licenses: licenses.len(),
            restored_leases: adopted.len(),
            damaged_leases: 0,
            recovery_grace: None,
            epoch,
        };
        let server = Self {
            lock: None,
            socket,
            core: Arc::new(core),
            heartbeat_time: Arc::default(),
            store: None,
            cluster: Some(ClusterStart { node, adopted, ttl_cap: ttl }),
            data_version: AtomicI64::new(0),
            last_unknown_reload: Mutex::new(
                Instant::now().checked_sub(UNKNOWN_RELOAD).unwrap_or_else(Instant::now),
            ),
        };
        Ok((server, info))
    }

    pub fn core(&self) -> Arc<ServerCore> {
        self.core.clone()
    }

    /// The server's own store connection (none on a cluster node), for handing it a reread
    /// site file on SIGHUP.
    pub fn local_store(&self) -> Option<Arc<Mutex<Store>>> {
        self.store.clone()
    }

    /// A cluster node's etcd handle (none on the SQLite store), for its `/metrics`.
    pub fn node(&self) -> Option<Arc<crate::store::etcd::NodeState>> {
        self.cluster.as_ref().map(|c| c.node.clone())
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
        let mut keepalive = None;
        let cluster = match self.cluster {
            Some(c) => {
                let core = self.core.clone();
                let window = c.node.cfg.timers.ack_window;
                let gate = !crate::store::fault::ack_without_gate();
                let renewed = move |sent: Instant| {
                    if gate {
                        core.set_ack_deadline(sent + window);
                    }
                };
                keepalive =
                    Some((c.node.clone(), c.node.start_keepalive(renewed).map_err(ServeError::Socket)?));
                let replies = socket.try_clone().map_err(ServeError::Socket)?;
                Some(
                    cluster::start(c.node, self.core.clone(), replies, c.adopted, c.ttl_cap)
                        .map_err(ServeError::Socket)?,
                )
            }
            None => None,
        };
        let worker = Worker {
            socket,
            core: self.core,
            heartbeat_time: self.heartbeat_time,
            store: self.store,
            cluster,
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
        let result = tokio::select! {
            _ = &mut shutdown => {
                stop.store(true, Ordering::Relaxed);
                done_rx.await.map_err(|_| ServeError::Worker)?
            }
            r = &mut done_rx => r.map_err(|_| ServeError::Worker)?,
        };
        // The etcd lease is left to run out, not revoked: holders move to other nodes and
        // keep their seats meanwhile, and a restart under the same node id adopts it.
        if let Some((node, thread)) = keepalive {
            node.stop();
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

use batch::Out;

/// The IO thread's state.
struct Worker {
    socket: std::net::UdpSocket,
    core: Arc<ServerCore>,
    heartbeat_time: Arc<Histogram>,
    store: Option<Arc<Mutex<Store>>>,
    /// A cluster node's etcd thread, which commits and sends what waited for commits.
    cluster: Option<cluster::Link>,
    data_version: AtomicI64,
    last_unknown_reload: Mutex<Instant>,
}

/// Writes removals (releases, expiries) to the store on a thread of its own. A mass expiry
/// journals one removal per lease at once; 100,000 deletes in one SQLite transaction take about
/// 0.6 s, which on the IO thread held every heartbeat behind them. Removals may lag the core
/// (proto-spec.md §7), so they need not be written between two batches; grants still are,
/// on the IO thread, before their GRANTs leave.
struct Remover {
    /// Removals handed over and not yet written. The store thread takes a chunk only while it
    /// holds the store lock, and [`Worker::commit`] takes from here under that lock too, so a
    /// removal is never overtaken by a later grant to the same instance (whose row would
    /// replace the lease's row and take its audit end event with it).
    pending: Arc<Mutex<Vec<JournalOp>>>,
    tx: Option<std::sync::mpsc::Sender<StoreWork>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set at shutdown: write what is left without the pauses between chunks.
    hurry: Arc<AtomicBool>,
}

/// What the store thread writes: removals, and denials for the audit log (batched once a
/// second, so their fsync never holds up the IO thread either).
enum StoreWork {
    /// New removals are in [`Remover::pending`].
    Removals,
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
fn write_removals(core: &ServerCore, store: Option<&mut Store>, ops: &[JournalOp]) -> bool {
    let result = store.ok_or(StoreError::Poisoned).and_then(|s| s.apply(ops));
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
        let pending = Arc::new(Mutex::new(Vec::new()));
        let queue = pending.clone();
        let thread = std::thread::Builder::new().name("lic-udp-store".into()).spawn(move || {
            for work in rx {
                match work {
                    StoreWork::Removals => {}
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
                loop {
                    let started = Instant::now();
                    // The chunk is taken under the store lock (see Remover::pending).
                    let mut guard = store.lock().ok();
                    let chunk = take_removals(&queue, STORE_CHUNK);
                    if chunk.is_empty() {
                        break;
                    }
                    let ok = write_removals(&core, guard.as_deref_mut(), &chunk);
                    if !ok {
                        // The store refuses: the rest goes back into the journal with the
                        // failed chunk, for the commit after the store recovers.
                        core.commit_failed(&take_removals(&queue, usize::MAX));
                    }
                    drop(guard);
                    let more = queue.lock().map(|q| !q.is_empty()).unwrap_or(false);
                    if !ok || !more {
                        break;
                    }
                    if !in_a_hurry.load(Ordering::Relaxed) {
                        // Half the time at most: the IO thread and the bench's or the
                        // machine's other work keep at least half a core meanwhile.
                        std::thread::sleep(started.elapsed());
                    }
                }
            }
        })?;
        Ok(Self { pending, tx: Some(tx), thread: Some(thread), hurry })
    }

    /// Hands removals to the store thread, or gives them back if the thread has gone (then
    /// the caller deals with them on its own thread).
    fn submit_removals(&self, ops: Vec<JournalOp>) -> Result<(), Vec<JournalOp>> {
        let Some(tx) = &self.tx else { return Err(ops) };
        match self.pending.lock() {
            Ok(mut q) => q.extend(ops),
            Err(_) => return Err(ops),
        }
        if tx.send(StoreWork::Removals).is_err() {
            return Err(take_removals(&self.pending, usize::MAX));
        }
        Ok(())
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

/// `ops` preceded by the removals waiting in `queue` of the leases that its grants will
/// replace in the store (the same instance's earlier lease). Looks only while removals wait.
fn with_replaced_removals(
    store: &Store,
    queue: &Mutex<Vec<JournalOp>>,
    ops: Vec<JournalOp>,
) -> Vec<JournalOp> {
    let Ok(mut q) = queue.lock() else { return ops };
    if q.is_empty() {
        return ops;
    }
    let grants = ops.iter().filter_map(|op| match op {
        JournalOp::Grant(g) => Some(g),
        JournalOp::Remove { .. } => None,
    });
    let replaced = match store.leases_replaced_by(grants) {
        Ok(ids) if !ids.is_empty() => ids,
        Ok(_) => return ops,
        Err(e) => {
            tracing::warn!("cannot look up the leases new grants replace: {e}");
            return ops;
        }
    };
    let (mut first, rest): (Vec<JournalOp>, Vec<JournalOp>) = std::mem::take(&mut *q)
        .into_iter()
        .partition(|op| matches!(op, JournalOp::Remove { lease_id, .. } if replaced.contains(lease_id)));
    *q = rest;
    first.extend(ops);
    first
}

/// Takes up to `n` of the oldest removals waiting in `queue`.
fn take_removals(queue: &Mutex<Vec<JournalOp>>, n: usize) -> Vec<JournalOp> {
    let Ok(mut q) = queue.lock() else { return Vec::new() };
    let n = n.min(q.len());
    q.drain(..n).collect()
}

impl Drop for Remover {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Worker {
    fn run(mut self, stop: &AtomicBool) -> Result<(), ServeError> {
        let mut remover = match &self.store {
            Some(store) => {
                Some(Remover::start(self.core.clone(), store.clone()).map_err(ServeError::Socket)?)
            }
            None => None,
        };
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
                        self.commit(remover.as_ref().map(|r| &*r.pending), &mut out, &mut gated, false);
                    }
                    batch::send(&self.socket, &mut send_bufs, &out);
                    out.clear();
                }
                // ICMP errors for earlier sends surface here; they say nothing about this socket.
                Err(e) => tracing::debug!("recv error: {e}"),
            }
            if !gated.is_empty() {
                // An earlier try found the store busy.
                self.commit(remover.as_ref().map(|r| &*r.pending), &mut out, &mut gated, false);
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
                    if self.cluster.is_some() {
                        self.commit(None, &mut out, &mut gated, false);
                    } else if let Some(remover) = &remover {
                        if let Err(ops) = remover.submit_removals(self.core.drain_journal()) {
                            self.core.commit_failed(&ops); // back into the journal, for the end
                        }
                    }
                }
                self.reload_if_changed();
                if now >= next_audit {
                    next_audit = now + AUDIT_FLUSH;
                    let denials = self.core.drain_denials();
                    if !denials.is_empty() {
                        match &remover {
                            Some(r) => {
                                if let Err(StoreWork::Denials(d)) = r.submit(StoreWork::Denials(denials)) {
                                    self.flush_denials_here(d);
                                }
                            }
                            // The etcd store keeps no audit log yet (README, "Several servers").
                            None => {
                                tracing::debug!("{} denials not logged: no audit log on etcd", denials.len())
                            }
                        }
                    }
                }
            }
        }
        if let Some(r) = remover.as_mut() {
            r.finish();
        }
        self.flush_denials_here(self.core.drain_denials());
        if self.core.has_pending_journal() || !gated.is_empty() {
            self.commit(remover.as_ref().map(|r| &*r.pending), &mut out, &mut gated, true);
            batch::send(&self.socket, &mut send_bufs, &out);
        }
        if let Some(mut link) = self.cluster.take() {
            drop(link.tx);
            if let Some(t) = link.thread.take() {
                let _ = t.join();
            }
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
        let mut reply = [0u8; MAX_REPLY];
        // A license perhaps issued a moment ago by `lic-udp issue`: look again before saying
        // no. Asked before the datagram is handled, since handling it charges the guessing
        // budget and the reply limit, and must happen once.
        let proof = [MsgType::Proof as u8, MsgType::ProofId as u8];
        if datagram.get(3).is_some_and(|t| proof.contains(t))
            && self.core.names_unknown_license(now, src, datagram)
            && self.may_reload_for_unknown()
        {
            self.reload_if_changed();
        }
        let r = self.core.handle(now, unix, src, datagram, &mut reply);
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
    fn commit(
        &self,
        pending: Option<&Mutex<Vec<JournalOp>>>,
        out: &mut Vec<Out>,
        gated: &mut Vec<Out>,
        wait: bool,
    ) {
        if let Some(link) = &self.cluster {
            // The etcd thread commits and sends the replies; the IO thread does not wait.
            let ops = self.core.drain_journal();
            let replies = std::mem::take(gated);
            if let Err(std::sync::mpsc::SendError(cluster::Work::Batch(ops, _))) =
                link.tx.send(cluster::Work::Batch(ops, replies))
            {
                self.core.commit_failed(&ops);
            }
            return;
        }
        let Some(store) = &self.store else { return };
        let store = match store.try_lock() {
            Ok(s) => Some(s),
            Err(std::sync::TryLockError::WouldBlock) if !wait => return,
            Err(std::sync::TryLockError::WouldBlock) => store.lock().ok(),
            Err(std::sync::TryLockError::Poisoned(_)) => None,
        };
        // Everything drained, in journal order: a removal must reach the store before a later
        // grant to the same instance, whose row would otherwise replace the lease's row and
        // take its audit record with it. During a mass expiry this can be up to a tick's worth
        // of removals (see Worker::run), written here in the grant's transaction.
        let mut ops = self.core.drain_journal();
        // The same for removals already handed to the store thread: those of leases that a
        // grant here replaces go first, in this transaction (see Remover::pending).
        if let (Some(s), Some(pending)) = (store.as_deref(), pending) {
            ops = with_replaced_removals(s, pending, ops);
        }
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
        let Some(store) = &self.store else { return };
        if denials.is_empty() {
            return;
        }
        let r = store.lock().map_err(|_| StoreError::Poisoned).and_then(|mut s| s.record_denials(&denials));
        if let Err(e) = r {
            tracing::warn!("cannot write {} denials to the audit log: {e}", denials.len());
        }
    }

    /// After a failed commit: is the disk taking writes again?
    fn probe_store(&self) {
        // Busy with the store thread: it is taking writes, or will say so itself.
        let Some(store) = &self.store else { return };
        let Ok(mut s) = store.try_lock() else { return };
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
        let Some(store) = &self.store else { return false };
        let Ok(s) = store.try_lock() else { return false };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::server::{EndReason, RestoredLease};
    use crate::store::AuditQuery;

    fn lease(lease_id: u64, instance: u8) -> RestoredLease {
        RestoredLease {
            lease_id,
            license: 1,
            instance_id: [instance; 16],
            addr: "127.0.0.1:40000".parse().expect("addr"),
            since_unix: 100,
            who: None,
        }
    }

    /// Issue 11 item 8: during a mass expiry the removals wait on the store thread while a
    /// grant commits on the IO thread. A grant to an instance whose previous lease's removal
    /// is still waiting replaces that lease's row, and the removal then finds no row to log
    /// its end from. The grant's commit must write that removal first.
    #[test]
    fn a_grant_commit_writes_the_waiting_removal_of_the_lease_it_replaces_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("store");
        store.apply(&[JournalOp::Grant(lease(1, 0xa)), JournalOp::Grant(lease(7, 0xb))]).expect("grants");
        let waiting = Mutex::new(vec![
            JournalOp::Remove { lease_id: 7, why: EndReason::Released },
            JournalOp::Remove { lease_id: 1, why: EndReason::Expired },
        ]);
        // What the IO thread commits: a new lease of instance 0xa.
        let ops = with_replaced_removals(&store, &waiting, vec![JournalOp::Grant(lease(2, 0xa))]);
        store.apply(&ops).expect("commit");
        // Then the store thread writes what is still waiting.
        store.apply(&take_removals(&waiting, usize::MAX)).expect("removals");
        let events: Vec<(String, Option<String>)> = store
            .audit(&AuditQuery::default())
            .expect("audit")
            .into_iter()
            .map(|e| (e.event, e.lease))
            .collect();
        let l = |id: u64| Some(format!("{id:016x}"));
        assert_eq!(
            events,
            vec![
                ("grant".to_owned(), l(1)),
                ("grant".to_owned(), l(7)),
                ("expire".to_owned(), l(1)),
                ("grant".to_owned(), l(2)),
                ("release".to_owned(), l(7)),
            ]
        );
        assert_eq!(store.leases().expect("leases"), vec![lease(2, 0xa)]);
    }
}

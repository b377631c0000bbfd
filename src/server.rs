//! The server's IO layer: one UDP socket, the store, the clock and the OS RNG around
//! [`ServerCore`]. Everything protocol-shaped lives in the core; this file only moves bytes,
//! commits the grant journal before gated replies leave, and reloads licenses when the store
//! changes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use tokio::net::UdpSocket;

use crate::proto::server::{JournalOp, Reply, ServerConfig, ServerCore};
use crate::proto::wire::{MsgType, MAX_DATAGRAM};
use crate::store::{Store, StoreError};

/// The documented default port (proto-spec.md §1).
pub const DEFAULT_PORT: u16 = 7301;

/// How many datagrams one wakeup handles before committing their grants together.
const BATCH: usize = 64;
/// How often the server flushes removals, probes a failed store and checks for new licenses.
const TICK: Duration = Duration::from_millis(250);

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
    socket: UdpSocket,
    core: Arc<ServerCore>,
    store: Arc<Mutex<Store>>,
    /// The store's `data_version` when licenses were last loaded.
    data_version: std::sync::atomic::AtomicI64,
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

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Server {
    /// Opens the store, persists the next boot epoch and restores recorded leases, all before
    /// the first datagram is read: restored seats count from the start (proto-spec.md §7).
    pub fn new(
        socket: UdpSocket,
        mut store: Store,
        opts: ServeOptions,
    ) -> Result<(Self, StartInfo), ServeError> {
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
            socket,
            core: Arc::new(core),
            store: Arc::new(Mutex::new(store)),
            data_version: std::sync::atomic::AtomicI64::new(data_version),
            last_unknown_reload: Mutex::new(
                Instant::now().checked_sub(UNKNOWN_RELOAD).unwrap_or_else(Instant::now),
            ),
        };
        Ok((server, info))
    }

    pub fn core(&self) -> Arc<ServerCore> {
        self.core.clone()
    }

    /// Serves until `shutdown` resolves, then commits what is pending and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        tokio::pin!(shutdown);
        let mut buf = vec![0u8; 2048];
        let mut next_timeout = tokio::time::Instant::from_std(self.core.poll_timeout(Instant::now()));
        let mut next_housekeeping = Instant::now() + TICK;
        let mut gated: Vec<(SocketAddr, [u8; MAX_DATAGRAM], usize)> = Vec::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = self.socket.recv_from(&mut buf) => {
                    match r {
                        Ok((n, src)) => self.on_datagram(&buf, n, src, &mut gated).await,
                        // ICMP errors for earlier sends surface here on some systems; they say
                        // nothing about this socket's health.
                        Err(e) => tracing::debug!("recv error: {e}"),
                    }
                    // Drain what is already queued so that grants share one commit.
                    for _ in 1..BATCH {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((n, src)) => self.on_datagram(&buf, n, src, &mut gated).await,
                            Err(_) => break,
                        }
                    }
                    if !gated.is_empty() {
                        self.commit_and_send(&mut gated).await?;
                    }
                }
                _ = tokio::time::sleep_until(next_timeout) => {
                    let now = Instant::now();
                    self.core.handle_timeout(now);
                    next_timeout = tokio::time::Instant::from_std(self.core.poll_timeout(now));
                    // The store work runs once a period, even while a mass expiry makes the core
                    // ask for timeouts back to back.
                    if now >= next_housekeeping {
                        next_housekeeping = now + TICK;
                        if !self.core.store_available() {
                            self.probe_store().await?;
                        }
                        if self.core.has_pending_journal() {
                            self.commit_and_send(&mut gated).await?;
                        }
                        self.reload_if_changed().await?;
                    }
                }
            }
        }
        if self.core.has_pending_journal() {
            self.commit_and_send(&mut gated).await?;
        }
        Ok(())
    }

    async fn on_datagram(
        &self,
        buf: &[u8],
        n: usize,
        src: SocketAddr,
        gated: &mut Vec<(SocketAddr, [u8; MAX_DATAGRAM], usize)>,
    ) {
        let mut out = [0u8; MAX_DATAGRAM];
        let datagram = buf.get(..n).unwrap_or_default();
        let mut reply = self.core.handle(Instant::now(), unix_now(), src, datagram, &mut out);
        if matches!(reply, Reply::Send(_))
            && out[3] == MsgType::Unknown as u8
            && self.may_reload_for_unknown()
        {
            // Perhaps issued a moment ago by `lic-udp issue`: look again before saying no.
            if self.reload_if_changed().await.unwrap_or(false) {
                reply = self.core.handle(Instant::now(), unix_now(), src, datagram, &mut out);
            }
        }
        match reply {
            Reply::None => {}
            Reply::Send(k) => {
                if let Err(e) = self.socket.send_to(&out[..k], src).await {
                    tracing::debug!("send to {src} failed: {e}");
                }
            }
            Reply::AfterCommit(k) => gated.push((src, out, k)),
        }
    }

    /// Commits the journal, then sends the replies that waited for it (proto-spec.md §7). If
    /// the store refuses, the grants are undone and their replies dropped: a seat that is not
    /// recorded is never handed out.
    async fn commit_and_send(
        &self,
        gated: &mut Vec<(SocketAddr, [u8; MAX_DATAGRAM], usize)>,
    ) -> Result<(), ServeError> {
        let ops = self.core.drain_journal();
        let result = if ops.is_empty() { Ok(()) } else { self.apply(ops.clone()).await? };
        match result {
            Ok(()) => {
                self.core.committed(&ops);
                for (dst, out, k) in gated.drain(..) {
                    if let Err(e) = self.socket.send_to(&out[..k], dst).await {
                        tracing::debug!("send to {dst} failed: {e}");
                    }
                }
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
        Ok(())
    }

    async fn apply(&self, ops: Vec<JournalOp>) -> Result<Result<(), StoreError>, ServeError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || match store.lock() {
            Ok(mut s) => s.apply(&ops),
            Err(_) => Err(StoreError::Poisoned),
        })
        .await
        .map_err(|_| ServeError::Worker)
    }

    /// After a failed commit: is the disk taking writes again?
    async fn probe_store(&self) -> Result<(), ServeError> {
        let store = self.store.clone();
        let ok = tokio::task::spawn_blocking(move || store.lock().map_err(|_| StoreError::Poisoned)?.probe())
            .await
            .map_err(|_| ServeError::Worker)?;
        if ok.is_ok() {
            tracing::info!("the store takes writes again; granting new seats");
            self.core.set_store_available(true);
        }
        Ok(())
    }

    /// Picks up licenses issued or revoked by other processes (`lic-udp issue`, `revoke`).
    fn may_reload_for_unknown(&self) -> bool {
        let Ok(mut last) = self.last_unknown_reload.lock() else { return false };
        let now = Instant::now();
        if now.duration_since(*last) < UNKNOWN_RELOAD {
            return false;
        }
        *last = now;
        true
    }

    /// True if licenses were reloaded.
    async fn reload_if_changed(&self) -> Result<bool, ServeError> {
        let store = self.store.clone();
        let seen = self.data_version.load(std::sync::atomic::Ordering::Relaxed);
        let fresh = tokio::task::spawn_blocking(move || -> Result<Option<(i64, Vec<_>)>, StoreError> {
            let s = store.lock().map_err(|_| StoreError::Poisoned)?;
            let v = s.data_version()?;
            if v == seen {
                return Ok(None);
            }
            Ok(Some((v, s.licenses()?)))
        })
        .await
        .map_err(|_| ServeError::Worker)?;
        match fresh {
            Ok(Some((v, licenses))) => {
                self.data_version.store(v, std::sync::atomic::Ordering::Relaxed);
                let n = licenses.len();
                let before: usize = self.core.seats_in_use().len();
                self.core.sync_licenses(licenses.iter().map(|l| l.record()).collect());
                if n != before {
                    tracing::info!("store changed: {n} license{} loaded", if n == 1 { "" } else { "s" });
                }
                return Ok(true);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot reread licenses: {e}"),
        }
        Ok(false)
    }
}

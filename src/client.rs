//! The client's IO layer and the library API that LAN software embeds.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lic_udp::AcquireError> {
//! use lic_udp::{Client, Serial, SeatStatus};
//!
//! let serial = Serial::parse("0123-456-789").expect("ten digits");
//! let client = Client::new("192.0.2.10:7301".parse().expect("address"));
//! let seat = client.acquire(&serial).await?;
//! let mut status = seat.status();
//! // ... run the licensed work; watch `status` to learn of a lost or regained seat ...
//! if *status.borrow_and_update() == SeatStatus::Held { /* all good */ }
//! seat.release().await;
//! # Ok(()) }
//! ```
//!
//! [`Client::acquire`] runs the handshake and returns a [`Seat`] once the server granted one.
//! A background task then heartbeats, regains the seat after a server restart or an outage, and
//! reports every change on a watch channel. Dropping the `Seat` releases it too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::proto::client::{ClientConfig, ClientCore, Event};
use crate::proto::identity::Identity;
use crate::proto::keys::{derive_license_keys, KdfError, KdfParams, LicenseKeys, Serial};
use crate::proto::wire::DenyReason;

/// Keys derived from a serial for one server (its salt and Argon2 parameters). Computing them
/// is the slow step; keep them to make later acquisitions instant. They name their serial: a
/// [`Client`] uses them only to acquire that serial's license.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedKeys {
    pub serial: Serial,
    pub server_salt: [u8; 16],
    pub params: KdfParams,
    pub keys: LicenseKeys,
}

/// Why no seat was granted. Each variant maps to one `lic-udp verify` exit code.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("{}; try again later", if *seats == 1 { "the only seat of this license is in use".to_owned() } else { format!("all {seats} seats of this license are in use") })]
    Full { used: u16, seats: u16, retry_after: Duration },
    #[error("the server is busy or recovering; try again in {}s", retry_after.as_secs().max(1))]
    Busy { retry_after: Duration },
    #[error("the server cannot record new seats right now (its disk may be full); try again later")]
    Unavailable { retry_after: Duration },
    #[error("this license has been revoked")]
    Revoked,
    #[error("this license has expired")]
    Expired,
    #[error("the license server at {0} does not know this license: check the serial, and that this is the server that issued it (--server, $LIC_UDP_SERVER)")]
    UnknownLicense(SocketAddr),
    #[error("no answer from the license server at {0} (is it running, and is UDP allowed through?)")]
    Unreachable(SocketAddr),
    #[error("the license server at {0} answered, but the handshake did not finish within the timeout; try a longer --timeout")]
    TimedOut(SocketAddr),
    #[error("the server sent key-derivation parameters this client refuses: {0}")]
    Kdf(#[from] KdfError),
    #[error("network error talking to {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
}

/// What a held seat is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatStatus {
    /// Granted and renewed by heartbeats.
    Held,
    /// No acknowledgement for a whole lease TTL: the server may have given the seat away. The
    /// seat keeps trying to regain it and goes back to `Held` if it does.
    Lost,
    /// The license was revoked or expired (final).
    Ended(DenyReason),
    /// Given back (final).
    Released,
}

/// What the server said when it granted the seat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantInfo {
    pub lease_id: u64,
    pub used: u16,
    pub seats: u16,
    pub ttl: Duration,
    pub heartbeat: Duration,
}

/// A handle to the license server. Cheap to clone; clones share the key cache, which holds
/// the keys of every serial acquired through it.
#[derive(Clone)]
pub struct Client {
    /// One server, or the nodes of a cluster, tried in turn (proto-spec.md §6).
    servers: Vec<SocketAddr>,
    config: ClientConfig,
    cache: KeyCache,
    acquire_timeout: Option<Duration>,
    identity: Option<Identity>,
}

impl Client {
    /// A client that says who it is as the OS names it ([`Identity::of_this_process`]): the
    /// user, host and executable admins see in `status` beside the address.
    pub fn new(server: SocketAddr) -> Self {
        Self {
            servers: vec![server],
            config: ClientConfig::default(),
            cache: KeyCache::default(),
            acquire_timeout: None,
            identity: Some(Identity::of_this_process(None, "")),
        }
    }

    /// Who the server is told holds the seat (proto-spec.md §2, PROOF_ID); `None` says
    /// nothing, as clients before identities did. Build one with [`Identity::new`], which
    /// refuses fields that are too long or hold control characters.
    pub fn with_identity(mut self, identity: Option<Identity>) -> Self {
        self.identity = identity;
        self
    }

    /// Overrides the retransmission timers (proto-spec.md §6).
    pub fn with_config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts from keys derived earlier (an activation file), so no Argon2 run is needed when
    /// acquiring `keys.serial`.
    pub fn with_cached_keys(self, keys: CachedKeys) -> Self {
        self.cache.put(keys);
        self
    }

    /// Gives up a first acquisition after `d` even if the retransmission schedule is not over.
    pub fn with_acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = Some(d);
        self
    }

    /// The nodes of one cluster (`--server A,B,C`), in the order a first acquisition tries
    /// them. A holder whose node stops answering moves to the next and keeps its seat. An
    /// empty list keeps the current servers.
    pub fn with_servers(mut self, servers: Vec<SocketAddr>) -> Self {
        if !servers.is_empty() {
            self.servers = servers;
        }
        self
    }

    /// The first server.
    pub fn server(&self) -> SocketAddr {
        self.servers[0]
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The keys derived or given last, for saving in an activation file.
    pub fn cached_keys(&self) -> Option<CachedKeys> {
        self.cache.0.lock().ok().and_then(|c| c.last().cloned())
    }

    /// The keys of `serial`, if derived or given before.
    pub fn cached_keys_for(&self, serial: &Serial) -> Option<CachedKeys> {
        self.cache.get(serial)
    }

    /// Proves knowledge of `serial` and takes a seat. The slow key derivation runs at most once
    /// per serial and `Client` (and never with cached keys).
    pub async fn acquire(&self, serial: &Serial) -> Result<Seat, AcquireError> {
        let first = self.server();
        let io = |source| AcquireError::Io { addr: first, source };
        let bind: SocketAddr = if first.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .map_err(|_| io(std::io::Error::other("bad bind address")))?;
        let socket = UdpSocket::bind(bind).await.map_err(io)?;
        if self.servers.len() == 1 {
            socket.connect(first).await.map_err(io)?;
        }

        let mut instance_id = [0u8; 16];
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut instance_id);
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let config = ClientConfig { identity: self.identity.clone(), ..self.config.clone() };
        let mut core =
            ClientCore::new(config, instance_id, seed, Instant::now()).with_servers(self.servers.len());
        if let Some(c) = self.cache.get(serial) {
            core = core.with_cached_keys(c.server_salt, c.params, c.keys);
        }

        let (granted_tx, granted_rx) = oneshot::channel();
        let (status_tx, status_rx) = watch::channel(SeatStatus::Held);
        let (until_tx, until_rx) = watch::channel(None);
        let (cmd_tx, cmd_rx) = mpsc::channel(1);
        let driver = Driver {
            socket,
            core,
            serial: serial.clone(),
            servers: self.servers.clone(),
            cache: self.cache.clone(),
            granted: Some(granted_tx),
            status: status_tx,
            held_until: until_tx,
            commands: cmd_rx,
            heard: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let heard = driver.heard.clone();
        let task = tokio::spawn(driver.run());
        let outcome = match self.acquire_timeout {
            Some(d) => match tokio::time::timeout(d, granted_rx).await {
                Ok(r) => r,
                // The task goes on: a GRANT that arrives now is released at once, so a client
                // that gave up never keeps a seat.
                Err(_) if heard.load(std::sync::atomic::Ordering::Relaxed) => {
                    return Err(AcquireError::TimedOut(first))
                }
                Err(_) => return Err(AcquireError::Unreachable(first)),
            },
            None => granted_rx.await,
        };
        match outcome {
            Ok(Ok(info)) => Ok(Seat {
                info,
                status: status_rx,
                held_until: until_rx,
                commands: Some(cmd_tx),
                task: Some(task),
            }),
            Ok(Err(e)) => {
                task.abort();
                Err(e)
            }
            Err(_) => {
                task.abort();
                Err(AcquireError::Unreachable(first))
            }
        }
    }
}

/// Derived keys per serial. Keyed by the serial, not only by the server's salt and KDF
/// parameters: one `Client` may acquire several licenses, and another serial's keys would
/// prove the wrong license.
#[derive(Clone, Default)]
struct KeyCache(Arc<Mutex<Vec<CachedKeys>>>);

impl KeyCache {
    fn get(&self, serial: &Serial) -> Option<CachedKeys> {
        self.0.lock().ok().and_then(|c| c.iter().find(|k| k.serial == *serial).cloned())
    }

    /// Replaces the serial's earlier keys (another server salt or parameters).
    fn put(&self, keys: CachedKeys) {
        if let Ok(mut c) = self.0.lock() {
            c.retain(|k| k.serial != keys.serial);
            c.push(keys);
        }
    }
}

enum Command {
    Release(oneshot::Sender<()>),
}

/// A seat held by this process. Heartbeats run in the background until it is released or
/// dropped.
#[derive(Debug)]
pub struct Seat {
    info: GrantInfo,
    status: watch::Receiver<SeatStatus>,
    held_until: watch::Receiver<Option<Instant>>,
    commands: Option<mpsc::Sender<Command>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Seat {
    pub fn info(&self) -> GrantInfo {
        self.info
    }

    /// Changes of the seat's state: `Held` → `Lost` → `Held` … → `Released` or `Ended`.
    pub fn status(&self) -> watch::Receiver<SeatStatus> {
        self.status.clone()
    }

    /// Until when the server has promised this seat: the send time of the last acknowledged
    /// heartbeat plus the lease TTL (the loss deadline, proto-spec.md §6). It moves on with
    /// every ACK, so a program can show how safe its seat is, or save its work before it
    /// passes. `None` while the seat is lost and after it ended.
    pub fn held_until(&self) -> Option<Instant> {
        *self.held_until.borrow()
    }

    /// Gives the seat back and waits (at most a few retransmissions) for the server to confirm.
    pub async fn release(mut self) {
        if let Some(tx) = self.commands.take() {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(Command::Release(done_tx)).await.is_ok() {
                let _ = done_rx.await;
            }
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Seat {
    /// Dropping the command channel tells the background task to release the seat; it finishes
    /// on its own as long as the runtime lives.
    fn drop(&mut self) {
        self.commands.take();
    }
}

struct Driver {
    socket: UdpSocket,
    core: ClientCore,
    serial: Serial,
    servers: Vec<SocketAddr>,
    cache: KeyCache,
    granted: Option<oneshot::Sender<Result<GrantInfo, AcquireError>>>,
    status: watch::Sender<SeatStatus>,
    held_until: watch::Sender<Option<Instant>>,
    commands: mpsc::Receiver<Command>,
    /// Set once any datagram came back from the server, to tell a slow server from none.
    heard: Arc<std::sync::atomic::AtomicBool>,
}

/// The answer of a background Argon2 run: its public inputs and the keys.
type KeyJob = oneshot::Receiver<([u8; 16], KdfParams, Result<LicenseKeys, KdfError>)>;

impl Driver {
    /// Where the core sends now.
    fn server(&self) -> SocketAddr {
        self.servers[self.core.server_index() % self.servers.len()]
    }

    async fn run(mut self) {
        let mut buf = [0u8; 2048];
        let mut kdf: Option<KeyJob> = None;
        let mut release_waiters: Vec<oneshot::Sender<()>> = Vec::new();
        let mut commands_open = true;
        loop {
            while let Some(n) = self.core.poll_transmit(&mut buf) {
                // A refused send (no server yet) is like a lost datagram: the timers retry.
                let _ = self.socket.send_to(&buf[..n], self.server()).await;
            }
            while let Some(ev) = self.core.poll_event() {
                if let Some(job) = self.on_event(ev) {
                    kdf = Some(job);
                }
            }
            let until = self.core.held_until();
            self.held_until.send_if_modified(|h| std::mem::replace(h, until) != until);
            if self.core.is_done() {
                break;
            }
            let deadline = self.core.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    // Only the listed servers are heard; the rest is noise (or spoofing).
                    if let Ok((n, from)) = r.map(|(n, from)| (n, self.servers.contains(&from).then_some(from))) {
                        let Some(_) = from else { continue };
                        self.heard.store(true, std::sync::atomic::Ordering::Relaxed);
                        self.core.handle_datagram(Instant::now(), &buf[..n]);
                    }
                }
                _ = sleep_until(deadline) => self.core.handle_timeout(Instant::now()),
                done = wait_job(&mut kdf) => {
                    kdf = None;
                    if let Ok((server_salt, params, result)) = done {
                        match result {
                            Ok(keys) => {
                                let serial = self.serial.clone();
                                self.cache.put(CachedKeys { serial, server_salt, params, keys: keys.clone() });
                                self.core.set_keys(Instant::now(), server_salt, params, keys);
                            }
                            Err(e) => {
                                self.fail(AcquireError::Kdf(e));
                                break;
                            }
                        }
                    }
                }
                cmd = self.commands.recv(), if commands_open => {
                    match cmd {
                        Some(Command::Release(done)) => {
                            release_waiters.push(done);
                            self.core.release(Instant::now());
                        }
                        None => {
                            commands_open = false;
                            // The Seat was dropped: release. Or acquire gave up before a
                            // GRANT came: keep listening, so that a late GRANT is released
                            // (see Event::Granted) instead of holding a seat nobody uses.
                            if self.granted.is_none() {
                                self.core.release(Instant::now());
                            }
                        }
                    }
                }
            }
        }
        for w in release_waiters {
            let _ = w.send(());
        }
    }

    /// Publishes only real changes, so watchers see each transition once.
    fn set_status(&self, new: SeatStatus) {
        self.status.send_if_modified(|s| {
            let changed = *s != new;
            *s = new;
            changed
        });
    }

    fn fail(&mut self, e: AcquireError) {
        if let Some(tx) = self.granted.take() {
            let _ = tx.send(Err(e));
        }
    }

    fn on_event(&mut self, ev: Event) -> Option<KeyJob> {
        match ev {
            Event::NeedKeys { server_salt, params } => {
                let (tx, rx) = oneshot::channel();
                let serial = self.serial.clone();
                tokio::task::spawn_blocking(move || {
                    let keys = derive_license_keys(&serial, &server_salt, params);
                    let _ = tx.send((server_salt, params, keys));
                });
                return Some(rx);
            }
            Event::Granted { lease_id, used, seats, ttl, heartbeat } => {
                let delivered = match self.granted.take() {
                    Some(tx) => tx.send(Ok(GrantInfo { lease_id, used, seats, ttl, heartbeat })).is_ok(),
                    None => false,
                };
                if delivered {
                    self.set_status(SeatStatus::Held);
                } else {
                    // Nobody waits for this seat any more (acquire timed out): give it back.
                    self.core.release(Instant::now());
                }
            }
            Event::Denied { reason, used, seats, retry_after } => self.fail(match reason {
                DenyReason::Full => AcquireError::Full { used, seats, retry_after },
                DenyReason::Busy => AcquireError::Busy { retry_after },
                DenyReason::Unavailable => AcquireError::Unavailable { retry_after },
                DenyReason::Revoked => AcquireError::Revoked,
                DenyReason::Expired => AcquireError::Expired,
            }),
            Event::UnknownLicense => {
                let server = self.server();
                self.fail(AcquireError::UnknownLicense(server));
            }
            Event::Unreachable => {
                let server = self.server();
                self.fail(AcquireError::Unreachable(server));
                if self.granted.is_none() && self.core.lease_id().is_some() {
                    tracing::warn!("license server {server} is not answering; still trying");
                }
            }
            Event::Lost => {
                self.set_status(SeatStatus::Lost);
            }
            Event::Regained => {
                self.set_status(SeatStatus::Held);
            }
            Event::Ended(reason) => {
                self.set_status(SeatStatus::Ended(reason));
            }
            Event::Released => {
                self.set_status(SeatStatus::Released);
            }
        }
        None
    }
}

async fn wait_job(
    job: &mut Option<KeyJob>,
) -> Result<([u8; 16], KdfParams, Result<LicenseKeys, KdfError>), oneshot::error::RecvError> {
    match job.as_mut() {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

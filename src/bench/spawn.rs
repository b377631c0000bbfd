//! The in-process license server of `bench --spawn`.
//!
//! A throw-away data dir under the system temp dir with the fast test KDF, one user, and enough
//! seats for every simulated instance. Seats are a `u16`, so above 65,535 instances the bench
//! issues several licenses and spreads the instances over them. The server runs exactly as
//! `lic-udp serve` runs it ([`Server::new`] then [`Server::run`]), on a thread of its own with a
//! single-threaded tokio runtime; whatever threads the server starts from there (its IO
//! thread, blocking-pool threads) are counted as server time too, because the bench counts
//! everything in the process except the generator and the main thread (see [`super::cpu`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto::keys::Serial;
use crate::proto::server::ServerCore;
use crate::server::{unix_now, ServeError, ServeOptions, Server};
use crate::store::Store;

use super::BenchError;

/// The name of the thread (and blocking-pool threads) of the server's runtime, for debuggers and
/// `top -H`.
pub const THREAD_NAME: &str = "lic-bench-srv";

/// The site file of the throw-away data dir: the test KDF (proto-spec.md §9), never for real use.
const SITE_FILE: &str = "[kdf]\nm_kib = 1024\nt = 1\np = 1\n";

/// The license type the bench issues (its lease TTL and heartbeat stay the built-in ones).
const LICENSE_TYPE: &str = "site";

/// Removes the data dir when dropped, whatever happened.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<Self, BenchError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("lic-udp-bench-{}-{nanos}", std::process::id()));
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        // Not recursive: a leftover directory of the same name is an error, never reused.
        b.create(&path).map_err(|e| BenchError::Io(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A license server running in this process on 127.0.0.1. Stops, joins its thread and removes
/// its data dir on drop.
pub struct SpawnedServer {
    addr: SocketAddr,
    serials: Vec<Serial>,
    core: Arc<ServerCore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), ServeError>>>,
    // Last: dropped after the thread has been joined and the store closed.
    dir: TempDir,
}

/// How many licenses, of how many seats, hold `clients` instances.
pub fn license_plan(clients: u32) -> (u32, u16) {
    let max = u32::from(u16::MAX);
    let licenses = clients.div_ceil(max).max(1);
    let seats = clients.div_ceil(licenses).clamp(1, max);
    (licenses, u16::try_from(seats).unwrap_or(u16::MAX))
}

impl SpawnedServer {
    /// Creates the data dir, a user and licenses for `clients` instances, and starts serving.
    /// `lease_ttl` overrides every license's TTL (`serve --lease-ttl`), with a heartbeat
    /// interval of a quarter of it.
    pub fn start(clients: u32, lease_ttl: Option<Duration>) -> Result<Self, BenchError> {
        let dir = TempDir::create()?;
        let site = dir.path().join(crate::config::FILE_NAME);
        std::fs::write(&site, SITE_FILE)
            .map_err(|e| BenchError::Io(format!("cannot write {}: {e}", site.display())))?;
        let store_err = |e: crate::store::StoreError| BenchError::Spawn(e.to_string());
        let mut store = Store::open(dir.path()).map_err(store_err)?;
        // The account only issues; a cheap password hash keeps start-up fast.
        let cheap = argon2::Params::new(8, 1, 1, None).map_err(|e| BenchError::Spawn(e.to_string()))?;
        store.add_user_with_params("bench", "bench", true, cheap).map_err(store_err)?;
        let ty = store
            .site()
            .get(LICENSE_TYPE)
            .cloned()
            .ok_or_else(|| BenchError::Spawn(format!("no license type `{LICENSE_TYPE}`")))?;
        let (licenses, seats) = license_plan(clients);
        let mut serials = Vec::new();
        for _ in 0..licenses {
            let (_, serial) = store.issue("bench", &ty, Some(seats), unix_now()).map_err(store_err)?;
            serials.push(serial);
        }

        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || -> Result<(), ServeError> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name(THREAD_NAME)
                    .build()
                    .map_err(ServeError::Socket)?;
                rt.block_on(async move {
                    let started = async {
                        let socket =
                            tokio::net::UdpSocket::bind("127.0.0.1:0").await.map_err(ServeError::Socket)?;
                        let opts = ServeOptions {
                            ttl_override: lease_ttl,
                            heartbeat_override: lease_ttl.map(|t| t / 4),
                            ..ServeOptions::default()
                        };
                        Server::new(socket, store, opts)
                    };
                    let server = match started.await {
                        Ok((server, info)) => {
                            let _ = ready_tx.send(Ok((info.addr, server.core())));
                            server
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return Ok(());
                        }
                    };
                    server
                        .run(async {
                            let _ = stop_rx.await;
                        })
                        .await
                })
            })
            .map_err(|e| BenchError::Spawn(format!("cannot start the server thread: {e}")))?;
        let (addr, core) = match ready_rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(BenchError::Spawn(e)),
            Err(_) => {
                let why = match thread.join() {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the server thread stopped".to_owned(),
                };
                return Err(BenchError::Spawn(why));
            }
        };
        Ok(Self { addr, serials, core, stop: Some(stop_tx), thread: Some(thread), dir })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn serials(&self) -> &[Serial] {
        &self.serials
    }

    /// Heartbeats the server has accepted so far (its own counter).
    pub fn heartbeats(&self) -> u64 {
        self.core.stats().snapshot().heartbeats
    }

    pub fn core(&self) -> &ServerCore {
        &self.core
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server and reports how its run ended.
    pub fn stop(mut self) -> Result<(), BenchError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), BenchError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(BenchError::Spawn(format!("the server failed: {e}"))),
            Some(Err(_)) => Err(BenchError::Spawn("the server thread panicked".into())),
        }
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_cover_every_instance() {
        assert_eq!(license_plan(1), (1, 1));
        assert_eq!(license_plan(10_000), (1, 10_000));
        assert_eq!(license_plan(65_535), (1, 65_535));
        assert_eq!(license_plan(65_536), (2, 32_768));
        assert_eq!(license_plan(100_000), (2, 50_000));
        for n in [1u32, 7, 65_535, 65_536, 131_071, 1_000_000] {
            let (l, s) = license_plan(n);
            // Instance i takes license i % l: the busiest license gets ceil(n / l).
            assert!(n.div_ceil(l) <= u32::from(s), "{n}");
        }
    }
}

//! lic-udp: a floating-license server for software on a LAN.
//!
//! A program proves over UDP that it knows a license's serial (HMAC challenge-response; the
//! serial never travels), takes one of the license's seats, and keeps it with heartbeats. The
//! protocol is specified in `proto-spec.md`.
//!
//! # Embedding the client
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // A throw-away server on loopback, so that this example runs as a test.
//! # let dir = tempfile::tempdir()?;
//! # std::fs::write(dir.path().join("lic-udp.toml"), "[kdf]\nm_kib = 1024\nt = 1\np = 1\n")?;
//! # let mut store = lic_udp::store::Store::open(dir.path())?;
//! # store.add_user("alice", "pw", true)?;
//! # let team = store.site().get("team").cloned().ok_or("no team type")?;
//! # let (_, serial) = store.issue("alice", &team, None, 0)?;
//! # let serial_text = serial.as_str().to_owned();
//! # let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
//! # let (server, info) = lic_udp::server::Server::new(socket, store, Default::default())?;
//! # let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! # let running = tokio::spawn(server.run(async { let _ = stopped.await; }));
//! # let server_addr = info.addr;
//! use lic_udp::{Client, SeatStatus, Serial};
//!
//! // The user typed this once; dashes and spaces are fine.
//! let serial = Serial::parse(&serial_text)?;
//! let seat = Client::new(server_addr).acquire(&serial).await?;
//! println!("seat {} of {}", seat.info().used, seat.info().seats);
//!
//! // Heartbeats run in the background; the watch channel reports a lost or regained seat.
//! let status = seat.status();
//! assert_eq!(*status.borrow(), SeatStatus::Held);
//!
//! // ... the licensed work ...
//!
//! seat.release().await; // dropping the seat releases it too
//! # let _ = stop.send(());
//! # running.await??;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`proto`]: the protocol core, without IO: [`proto::wire`] (datagrams), [`proto::keys`]
//!   (key schedule), [`proto::cookie`], [`proto::replay`], [`proto::server::ServerCore`] and
//!   [`proto::client::ClientCore`]. It takes `now` and bytes and returns bytes and deadlines.
//! - [`server`] and [`client`]: the thin tokio layers around the two cores.
//! - [`store`]: the SQLite data dir (accounts, licenses, leases, server secrets).
//! - [`config`]: license types. [`activation`]: the user's saved serial. [`locate`]: which
//!   serial and servers a client uses by default; [`exit_code`]: the codes the CLI and the C
//!   library share.
//! - [`http`]: the admin's dashboard, JSON API and `/metrics`, off the UDP hot path;
//!   [`status`] is the one model of "who holds what" behind them and `lic-udp status`;
//!   [`metrics`] renders Prometheus text.
#![forbid(unsafe_code)]

pub mod activation;
pub mod bench;
pub mod client;
pub mod config;
pub mod exit_code;
pub mod http;
pub mod locate;
pub mod logging;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod status;
pub mod store;
pub mod usage;

pub use client::{AcquireError, CachedKeys, Client, GrantInfo, Seat, SeatStatus};
pub use proto::identity::Identity;
pub use proto::keys::Serial;

/// Wall-clock seconds since 1970, for license validity, `since` times and the audit log. The
/// protocol core never calls it; its drivers (server, store, dashboard) pass the value in.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

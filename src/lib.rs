//! lic-udp: a floating-license server for software on a LAN.
#![forbid(unsafe_code)]

pub mod activation;
pub mod client;
pub mod config;
pub mod logging;
pub mod proto;
pub mod server;
pub mod store;

pub use client::{AcquireError, CachedKeys, Client, GrantInfo, Seat, SeatStatus};
pub use proto::keys::Serial;

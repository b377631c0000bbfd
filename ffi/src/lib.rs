//! lic-udp's C library (`liblicudp.so`, `liblicudp.a`, `lic_udp.h`) and the blocking holder
//! that the Python package shares with it.
//!
//! The main crate forbids `unsafe`; this crate is the one place that needs it, and only in
//! [`c_api`], where C hands over strings, out-pointers and callbacks. The rest is safe Rust on
//! top of [`lic_udp::Client`], so C and Python programs get the same retransmits, heartbeats and
//! re-acquisition across server restarts as Rust ones.
//!
//! Threads: the first acquisition starts one heartbeat thread and one callback thread for the
//! whole process ([`engine`](crate::engine)); every function may be called from any thread.
//!
//! `fork()`: only the calling thread survives in the child, so the child neither heartbeats
//! nor owns the parent's seats; the parent keeps them. In the child, the parent's handles
//! report the state they had at the fork, and `lu_release` only forgets them (the server is
//! not told). A child that acquires gets fresh threads of its own. As with any threaded
//! library, fork-then-exec is the pattern to prefer.

pub mod c_api;
mod engine;
pub mod holder;

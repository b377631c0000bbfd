//! The protocol core: wire format, key schedule, server and client state machines.
//!
//! Nothing under this module reads a clock, touches a socket or asks the OS for randomness.
//! Every call that changes state takes `now`, and randomness comes from seeds passed in. This
//! is what lets `tests/` drive both sides on a virtual clock with seeded loss, duplication and
//! reordering, the way quinn-proto and smoltcp are tested.

pub mod client;
pub mod cookie;
pub mod identity;
pub mod keys;
pub mod license_guard;
pub mod mac;
pub mod ratelimit;
pub mod replay;
pub mod server;
pub mod throttle;
pub mod wire;

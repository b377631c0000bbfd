//! lic-udp: a floating-license server for software on a LAN.
#![forbid(unsafe_code)]

pub mod proto;

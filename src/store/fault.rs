//! Deliberate faults for the over-grant tests, so that their counters are shown to catch a
//! broken node ("checker blind" otherwise). Compiled into debug builds only (`cargo test`
//! builds the binary so); a release binary has no such switch, whatever its environment says.
//!
//! `LIC_UDP_FAULT=skip-seat-guard`: grant without the transaction's compares.
//! `LIC_UDP_FAULT=ack-without-gate`: acknowledge heartbeats however old the node's last etcd
//! lease renewal is.

use std::sync::OnceLock;

fn faults() -> &'static [String] {
    static F: OnceLock<Vec<String>> = OnceLock::new();
    F.get_or_init(|| {
        if !cfg!(debug_assertions) {
            return Vec::new();
        }
        std::env::var("LIC_UDP_FAULT")
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    })
}

pub fn skip_seat_guard() -> bool {
    faults().iter().any(|f| f == "skip-seat-guard")
}

pub fn ack_without_gate() -> bool {
    faults().iter().any(|f| f == "ack-without-gate")
}

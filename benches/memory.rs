//! Memory per live lease, from the process's resident set: `cargo bench --bench memory`.
//!
//! Builds a server core holding 1,000, then 100,000, then 1,000,000 leases through the real
//! handshake (as `benches/core.rs` does) and reports how much the resident set grew, less the
//! benchmark's own list of holders (a `Vec` of known size). Everything the core keeps per lease
//! counts: the lease table, each license's holder map, the expiry wheel, and what the
//! allocator rounds up or leaves free. The SQLite store is not in the core; the server's page
//! cache for it is bounded and does not grow with leases.

#[allow(dead_code)] // the heartbeat helpers are for benches/core.rs
mod common;

use std::time::Instant;

use common::{core_with_holders, Holder};

/// The bound: 1,000,000 leases in under 512 MB.
const BUDGET_PER_LEASE: f64 = 512.0;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Builds one core of `n` leases in this process and prints its growth in bytes per lease.
fn measure(n: u32) {
    let before = rss_bytes();
    let started = Instant::now();
    let (core, holders) = core_with_holders(n, Instant::now());
    let built = started.elapsed();
    let holders_bytes = (holders.capacity() * std::mem::size_of::<Holder>()) as u64;
    let grown = rss_bytes().saturating_sub(before).saturating_sub(holders_bytes);
    assert_eq!(core.live_leases(), n as usize, "every handshake got a lease");
    println!("{grown} {}", built.as_secs_f64());
}

fn main() {
    // One fresh process per size (this program again, told the size in LIC_UDP_MEMORY_LEASES):
    // in one process, heap freed by a smaller size but kept by the allocator would be reused
    // by the next, and its figure would come out too low.
    if let Some(n) = std::env::var("LIC_UDP_MEMORY_LEASES").ok().and_then(|v| v.parse().ok()) {
        measure(n);
        return;
    }
    let me = std::env::current_exe().expect("own path");
    println!("{:>10} {:>14} {:>12} {:>10}", "leases", "core RSS (MB)", "B per lease", "built in");
    for n in [1_000u32, 100_000, 1_000_000] {
        let out = std::process::Command::new(&me)
            .env("LIC_UDP_MEMORY_LEASES", n.to_string())
            .output()
            .expect("run the measurement");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace();
        let grown: u64 = fields.next().and_then(|v| v.parse().ok()).expect("bytes grown");
        let built: f64 = fields.next().and_then(|v| v.parse().ok()).expect("seconds");
        let per_lease = grown as f64 / f64::from(n);
        println!(
            "{n:>10} {:>14.1} {per_lease:>12.0} {built:>9.1}s{}",
            grown as f64 / 1e6,
            if n >= 100_000 && per_lease > BUDGET_PER_LEASE { "  over the 512 B budget" } else { "" }
        );
    }
}

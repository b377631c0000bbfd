//! Replies to unauthenticated datagrams, limited per source address (proto-spec.md §4,
//! "Reply limit"; §10, "Flooding").
//!
//! CHALLENGE, STALE and UNKNOWN answer datagrams that anyone can forge. Each is smaller than
//! its request (no amplification), but on a busy server sending it costs about as much as
//! receiving the request, and a CHALLENGE also costs a cookie MAC. So each source address
//! (IP and port) gets at most [`RATE`] of them a second, in bursts of up to [`BURST`]; beyond
//! that the server drops the datagram as the network could have. A real client sends at most a
//! few such requests a second per socket (its retransmit schedule), far below the limit; a
//! one-socket flood is cut to the limit.
//!
//! Memory is fixed: [`BUCKETS`] buckets, one `AtomicU64` each, chosen by a keyed hash of the
//! address. Addresses that share a bucket share its allowance; the key comes from the core's
//! seed, so an attacker cannot pick a victim's bucket. Lock-free: a bucket is one
//! compare-and-swap. A sender that uses many source addresses is not limited in total by this;
//! what it can buy is bounded by what it sends, since every reply is smaller than its request.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Unauthenticated replies one source address may get per second in the long run.
pub const RATE: u64 = 1_000;
/// ... and in a burst.
pub const BURST: u64 = 1_000;
/// Number of buckets (a power of two): 64 KiB.
pub const BUCKETS: usize = 8_192;

/// Spacing of replies at [`RATE`], in microseconds.
const INTERVAL_US: u64 = 1_000_000 / RATE;
/// How far ahead of `now` a bucket's schedule may run: a burst of [`BURST`].
const TOLERANCE_US: u64 = INTERVAL_US * BURST;

/// A generic cell-rate limiter per bucket: each bucket holds the time (µs since `start`) at
/// which its allowance is fully used; a reply moves it one interval later, and is allowed while
/// that stays within [`TOLERANCE_US`] of now.
pub struct ReplyLimiter {
    start: Instant,
    key: [u64; 2],
    buckets: Box<[AtomicU64]>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl ReplyLimiter {
    pub fn new(now: Instant, key: [u64; 2]) -> Self {
        Self { start: now, key, buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }

    fn bucket(&self, src: &SocketAddr) -> &AtomicU64 {
        let ip = match src.ip() {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let mut h = mix(self.key[0] ^ (ip as u64));
        h = mix(h ^ ((ip >> 64) as u64) ^ self.key[1]);
        h = mix(h ^ u64::from(src.port()));
        let i = usize::try_from(h).unwrap_or_default() & (BUCKETS - 1);
        &self.buckets[i]
    }

    /// May an unauthenticated reply go to `src` now? Takes one from its allowance if so.
    pub fn allow(&self, src: &SocketAddr, now: Instant) -> bool {
        let now_us = u64::try_from(now.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX);
        let b = self.bucket(src);
        b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
            let next = tat.max(now_us).saturating_add(INTERVAL_US);
            (next <= now_us.saturating_add(TOLERANCE_US)).then_some(next)
        })
        .is_ok()
    }
}

/// How long a bucket that gave out a whole burst takes to refill.
pub const REFILL: Duration = Duration::from_micros(TOLERANCE_US);

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let l = ReplyLimiter::new(t0, [1, 2]);
        let a = addr("192.0.2.1:40000");
        let granted = (0..3 * BURST).filter(|_| l.allow(&a, t0)).count() as u64;
        assert_eq!(granted, BURST);
        // A tenth of a second later, a tenth of a second's worth more.
        let t1 = t0 + Duration::from_millis(100);
        let more = (0..BURST).filter(|_| l.allow(&a, t1)).count() as u64;
        assert_eq!(more, RATE / 10);
        // After a full refill, a whole burst again.
        let t2 = t1 + REFILL;
        let again = (0..3 * BURST).filter(|_| l.allow(&a, t2)).count() as u64;
        assert_eq!(again, BURST);
    }

    #[test]
    fn other_addresses_keep_their_allowance() {
        let t0 = Instant::now();
        let l = ReplyLimiter::new(t0, [3, 4]);
        let flooder = addr("192.0.2.6:5000");
        while l.allow(&flooder, t0) {}
        // Another port of the same host, and other hosts: most have buckets of their own
        // (8,192 buckets; a few may share the flooder's).
        let others: Vec<SocketAddr> = (0..200u16)
            .map(|i| {
                SocketAddr::new(if i % 2 == 0 { flooder.ip() } else { addr("192.0.2.7:1").ip() }, 20000 + i)
            })
            .collect();
        let ok = others.iter().filter(|a| l.allow(a, t0)).count();
        assert!(ok >= 195, "only {ok} of 200 other addresses were answered");
        assert!(!l.allow(&flooder, t0));
    }
}

//! Online serial guessing, throttled per source address (proto-spec.md §4, "Throttling").
//!
//! A guess is a PROOF for a serial the sender does not know. It fails: the license is unknown
//! (UNKNOWN), or its tag does not verify. Each failure takes a token from the source address's
//! bucket; while the bucket is empty, *every* PROOF from that address is dropped unevaluated, so
//! a correct guess cannot be recognised either, and the guessing rate is bounded. Successful
//! PROOFs take no token, so legitimate clients on other addresses, and holders (whose heartbeats
//! never pass here), are never affected.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] addresses are tracked; full buckets are forgotten
//! by [`Throttle::sweep`], and when the table is full, untracked addresses share one bucket.
//!
//! An IPv6 source is budgeted by its /64 ([`source_key`]): a subnet is one /64 and each host on
//! it picks its own addresses inside it (SLAAC, privacy extensions), so a per-address budget
//! would give one guesser 2^64 budgets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed PROOFs an address may send in a burst.
pub const BURST: u32 = 10;
/// One token comes back this often: 10 failures a minute in the long run.
pub const REFILL: Duration = Duration::from_secs(6);
pub const MAX_TRACKED: usize = 65_536;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        let earned = u32::try_from(elapsed.as_millis() / REFILL.as_millis()).unwrap_or(u32::MAX);
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(BURST);
            self.at += REFILL * earned.min(BURST);
            if self.tokens == BURST {
                self.at = now;
            }
        }
    }
}

#[derive(Default)]
struct Table {
    by_ip: HashMap<IpAddr, Bucket>,
    overflow: Option<Bucket>,
}

#[derive(Default)]
pub struct Throttle {
    table: Mutex<Table>,
}

/// The address a guessing budget belongs to: IPv4 as is (an IPv4-mapped IPv6 address too, so
/// one client has one budget whichever socket family it arrived on), IPv6 by its /64 prefix.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

impl Throttle {
    /// May a PROOF from `ip` be evaluated now?
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = source_key(ip);
        let Ok(mut t) = self.table.lock() else { return true };
        let t = &mut *t;
        let full = t.by_ip.len() >= MAX_TRACKED;
        let bucket = match t.by_ip.get_mut(&ip) {
            Some(b) => b,
            None => match t.overflow.as_mut() {
                Some(b) if full => b,
                _ => return true,
            },
        };
        bucket.refill(now);
        bucket.tokens > 0
    }

    /// A PROOF from `ip` failed: take a token.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let ip = source_key(ip);
        let Ok(mut t) = self.table.lock() else { return };
        let full = t.by_ip.len() >= MAX_TRACKED && !t.by_ip.contains_key(&ip);
        let bucket = if full {
            t.overflow.get_or_insert(Bucket { tokens: BURST, at: now })
        } else {
            t.by_ip.entry(ip).or_insert(Bucket { tokens: BURST, at: now })
        };
        bucket.refill(now);
        bucket.tokens = bucket.tokens.saturating_sub(1);
    }

    /// Forgets addresses whose buckets are full again: they are indistinguishable from new ones.
    pub fn sweep(&self, now: Instant) {
        let Ok(mut t) = self.table.lock() else { return };
        t.by_ip.retain(|_, b| {
            b.refill(now);
            b.tokens < BURST
        });
        if let Some(b) = t.overflow.as_mut() {
            b.refill(now);
            if b.tokens == BURST {
                t.overflow = None;
            }
        }
    }

    pub fn tracked(&self) -> usize {
        self.table.lock().map(|t| t.by_ip.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_then_one_every_six_seconds() {
        let th = Throttle::default();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        let t0 = Instant::now();
        let mut allowed = 0;
        let mut now = t0;
        // A flood: one attempt every 10 ms for a minute.
        while now < t0 + Duration::from_secs(60) {
            if th.allows(ip, now) {
                allowed += 1;
                th.failed(ip, now);
            }
            now += Duration::from_millis(10);
        }
        assert_eq!(allowed, BURST + 9, "burst plus one per 6 s over the minute");
        assert!(th.allows(other, now), "other addresses are unaffected");
        th.sweep(now + Duration::from_secs(61));
        assert_eq!(th.tracked(), 0, "full buckets are forgotten");
    }

    #[test]
    fn an_ipv6_64_shares_one_budget_and_mapped_ipv4_is_ipv4() {
        let th = Throttle::default();
        let now = Instant::now();
        // A guesser rotating through its /64: every address drains the same bucket.
        for i in 0..BURST {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().expect("ip");
            assert!(th.allows(ip, now), "guess {i} is within the burst");
            th.failed(ip, now);
        }
        let fresh: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().expect("ip");
        assert!(!th.allows(fresh, now), "a new address in the same /64 has no budget left");
        let neighbour: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(th.allows(neighbour, now), "the next /64 is another site");
        let v4: IpAddr = "192.0.2.9".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("ip");
        for _ in 0..BURST {
            th.failed(mapped, now);
        }
        assert!(!th.allows(v4, now), "a mapped IPv4 source spends the IPv4 address's budget");
        assert!(th.allows("192.0.2.10".parse().expect("ip"), now), "and only that address's");
    }

    #[test]
    fn the_table_is_bounded() {
        let th = Throttle::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            th.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert_eq!(th.tracked(), MAX_TRACKED);
    }
}

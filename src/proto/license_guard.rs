//! Online guessing against one license from many addresses (proto-spec.md §4, "Throttling").
//!
//! The per-address budget ([`super::throttle`]) bounds what one address learns; an attacker
//! with many addresses multiplies it. A PROOF whose tag fails for a *known* `license_id` can
//! only come from someone who sniffed that id, so each license also has a budget of failed
//! PROOFs. While it is empty, PROOFs for the license are evaluated only from addresses that
//! proved the license's key before (its holders, and clients that held a seat), so those keep
//! and take seats; PROOFs from other addresses are dropped unevaluated until it refills.
//!
//! Memory is bounded: at most [`MAX_KNOWN`] addresses per license; the one that succeeded
//! longest ago goes first.

use std::collections::HashMap;
use std::net::IpAddr;

/// Failed PROOFs a license tolerates in a burst, from all addresses together.
pub const BURST: u32 = 30;
/// One token comes back this often (seconds): 30 failures a minute in the long run.
pub const REFILL_S: u32 = 2;
/// Addresses remembered per license as having proved its key.
pub const MAX_KNOWN: usize = 1024;

#[derive(Debug)]
pub struct LicenseGuard {
    tokens: u32,
    /// When `tokens` was last brought up to date (core seconds).
    at_s: u32,
    /// Address → last second it proved the key.
    known: HashMap<IpAddr, u32>,
}

impl Default for LicenseGuard {
    fn default() -> Self {
        Self { tokens: BURST, at_s: 0, known: HashMap::new() }
    }
}

impl LicenseGuard {
    fn refill(&mut self, now_s: u32) {
        let earned = now_s.saturating_sub(self.at_s) / REFILL_S;
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(BURST);
            self.at_s = if self.tokens == BURST { now_s } else { self.at_s + earned * REFILL_S };
        }
    }

    /// Whether a PROOF for this license from `ip` may be evaluated now.
    pub fn allows(&mut self, ip: IpAddr, now_s: u32) -> bool {
        if self.known.contains_key(&ip) {
            return true;
        }
        self.refill(now_s);
        self.tokens > 0
    }

    /// A PROOF's tag did not verify.
    pub fn failed(&mut self, now_s: u32) {
        self.refill(now_s);
        self.tokens = self.tokens.saturating_sub(1);
    }

    /// `ip` proved the key (or held a seat before a restart).
    pub fn succeeded(&mut self, ip: IpAddr, now_s: u32) {
        if self.known.len() >= MAX_KNOWN && !self.known.contains_key(&ip) {
            if let Some(oldest) = self.known.iter().min_by_key(|(_, &t)| t).map(|(a, _)| *a) {
                self.known.remove(&oldest);
            }
        }
        self.known.insert(ip, now_s);
    }

    pub fn tokens(&self) -> u32 {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn strangers_stop_when_the_budget_is_spent_known_addresses_do_not() {
        let mut g = LicenseGuard::default();
        g.succeeded(ip(1), 0);
        for i in 0..BURST {
            assert!(g.allows(ip(100 + i), 0));
            g.failed(0);
        }
        assert!(!g.allows(ip(999), 0), "a stranger after the burst");
        assert!(g.allows(ip(1), 0), "a known address is still evaluated");
        // One token per REFILL_S.
        assert!(g.allows(ip(999), REFILL_S));
        g.failed(REFILL_S);
        assert!(!g.allows(ip(999), REFILL_S + 1));
        assert!(g.allows(ip(999), 10 * REFILL_S));
    }

    #[test]
    fn known_addresses_are_bounded() {
        let mut g = LicenseGuard::default();
        for i in 0..(MAX_KNOWN as u32 + 10) {
            g.succeeded(ip(i), i);
        }
        assert_eq!(g.known.len(), MAX_KNOWN);
        assert!(!g.known.contains_key(&ip(0)), "the oldest went first");
        assert!(g.known.contains_key(&ip(MAX_KNOWN as u32 + 9)));
    }
}

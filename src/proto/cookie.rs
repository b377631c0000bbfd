//! Stateless challenge cookies (proto-spec.md §4).
//!
//! The server answers a HELLO without remembering it: the cookie binds the source address, the
//! client nonce and the time under a key that rotates every [`PERIOD_S`] seconds, so a PROOF can
//! be checked later with nothing stored per client. Two keys are kept so that a cookie issued
//! just before a rotation stays valid for its whole life.

use std::net::{IpAddr, SocketAddr};

use super::keys::{ct_eq16, hmac16};
use super::wire::Cookie;

pub const PERIOD_S: u32 = 120;
/// How long a cookie stays valid after it was issued.
pub const LIFETIME_S: u32 = 30;

/// Wiped when dropped, which covers a key rotated out as well as the jar's end: a key that
/// outlived its period would still verify (and forge) the cookies it made.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct Slot {
    period: u32,
    key: [u8; 32],
}

/// The current and previous cookie keys.
#[derive(Clone)]
pub struct CookieJar {
    current: Slot,
    previous: Option<Slot>,
}

fn ip16(addr: &SocketAddr) -> [u8; 16] {
    match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn mac(key: &[u8; 32], ts: u32, kid: u8, src: &SocketAddr, nonce: &[u8; 16]) -> [u8; 16] {
    hmac16(
        key,
        &[b"lic-udp/1 cookie", &ts.to_le_bytes(), &[kid], &ip16(src), &src.port().to_le_bytes(), nonce],
    )
}

impl CookieJar {
    pub fn new(key: [u8; 32], now_s: u32) -> Self {
        Self { current: Slot { period: now_s / PERIOD_S, key }, previous: None }
    }

    /// True when `now_s` has moved into a period that has no key yet.
    pub fn needs_rotation(&self, now_s: u32) -> bool {
        now_s / PERIOD_S != self.current.period
    }

    /// Installs `key` for the period of `now_s`; the old current key becomes the previous one
    /// only if it belongs to the period just before.
    pub fn rotate(&mut self, key: [u8; 32], now_s: u32) {
        let period = now_s / PERIOD_S;
        let old = std::mem::replace(&mut self.current, Slot { period, key });
        self.previous = (old.period.wrapping_add(1) == period).then_some(old);
    }

    pub fn issue(&self, now_s: u32, src: &SocketAddr, nonce: &[u8; 16]) -> Cookie {
        let kid = (self.current.period % 256) as u8;
        Cookie { ts: now_s, kid, mac: mac(&self.current.key, now_s, kid, src, nonce) }
    }

    /// Valid: issued by us for this source and nonce, not in the future, at most
    /// [`LIFETIME_S`] old, under a key we still hold.
    pub fn check(&self, now_s: u32, cookie: &Cookie, src: &SocketAddr, nonce: &[u8; 16]) -> bool {
        if cookie.ts > now_s || now_s - cookie.ts > LIFETIME_S {
            return false;
        }
        let period = cookie.ts / PERIOD_S;
        if cookie.kid != (period % 256) as u8 {
            return false;
        }
        let slot = if self.current.period == period {
            &self.current
        } else {
            match &self.previous {
                Some(p) if p.period == period => p,
                _ => return false,
            }
        };
        ct_eq16(&mac(&slot.key, cookie.ts, cookie.kid, src, nonce), &cookie.mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key rotated out (or dropped with the jar) is wiped: each slot wipes itself on drop.
    /// Before, only the jar's own Drop wiped the two keys it still held at its end.
    #[test]
    fn rotated_out_keys_are_wiped() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<Slot>();
        let mut slot = Slot { period: 1, key: [7; 32] };
        zeroize::Zeroize::zeroize(&mut slot);
        assert_eq!(slot.key, [0; 32]);
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn bound_to_source_nonce_and_time() {
        let jar = CookieJar::new([1; 32], 10);
        let src = addr("127.0.0.1:5000");
        let c = jar.issue(10, &src, &[9; 16]);
        assert!(jar.check(10, &c, &src, &[9; 16]));
        assert!(jar.check(40, &c, &src, &[9; 16]));
        assert!(!jar.check(41, &c, &src, &[9; 16]), "expired");
        assert!(!jar.check(9, &c, &src, &[9; 16]), "from the future");
        assert!(!jar.check(10, &c, &addr("127.0.0.1:5001"), &[9; 16]), "other port");
        assert!(!jar.check(10, &c, &addr("127.0.0.2:5000"), &[9; 16]), "other ip");
        assert!(!jar.check(10, &c, &src, &[8; 16]), "other nonce");
        let mut forged = c;
        forged.ts = 11;
        assert!(!jar.check(11, &forged, &src, &[9; 16]), "ts is under the mac");
    }

    #[test]
    fn survives_one_rotation_not_two() {
        let mut jar = CookieJar::new([1; 32], 119);
        let src = addr("[::1]:7000");
        let c = jar.issue(119, &src, &[0; 16]);
        jar.rotate([2; 32], 120);
        assert!(jar.check(125, &c, &src, &[0; 16]));
        let c2 = jar.issue(239, &src, &[0; 16]);
        jar.rotate([3; 32], 240);
        assert!(!jar.check(125, &c, &src, &[0; 16]));
        assert!(jar.check(245, &c2, &src, &[0; 16]));
    }
}

//! Sliding replay window over heartbeat sequence numbers (RFC 4303 §3.4.3, 64 entries).
//!
//! A fixed bitmap per lease, so memory does not grow with traffic. The caller moves the window
//! only after the datagram's tag has verified: an attacker cannot shift it with forgeries.

/// Width of the window: `seq` more than this far below the highest seen is too old.
pub const WINDOW: u64 = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest accepted `seq`; 0 means none yet (the first heartbeat of a session has seq 1).
    top: u64,
    /// Bit i set = `top - i` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// Would `seq` be accepted? Does not change the window.
    pub fn check(&self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.top {
            return true;
        }
        let back = self.top - seq;
        back < WINDOW && self.seen & (1u64 << back) == 0
    }

    /// Records `seq` as seen. Call only after [`check`](Self::check) and tag verification.
    pub fn accept(&mut self, seq: u64) {
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = seq;
        } else {
            let back = self.top - seq;
            if back < WINDOW {
                self.seen |= 1u64 << back;
            }
        }
    }

    pub fn top(&self) -> u64 {
        self.top
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_old_are_rejected_reordering_is_fine() {
        let mut w = ReplayWindow::default();
        assert!(!w.check(0));
        for s in [1, 3, 2, 10] {
            assert!(w.check(s), "{s}");
            w.accept(s);
        }
        for s in [1, 2, 3, 10] {
            assert!(!w.check(s), "{s} replayed");
        }
        assert!(w.check(9));
        w.accept(100);
        assert!(!w.check(36), "64 below the top is outside the window");
        assert!(w.check(37));
        w.accept(u64::MAX);
        assert!(!w.check(u64::MAX));
    }
}

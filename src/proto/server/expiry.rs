//! Lease expiry without scanning every lease.
//!
//! Heartbeats only move a lease's `expires` forward; they never touch this index, so the hot
//! path takes no shared lock. Each lease sits in the slot of the deadline it had when it was
//! last scheduled. When a slot comes due, the sweep looks at its leases: those really past
//! their deadline are removed, the others (renewed meanwhile) are scheduled again at their new
//! deadline. A lease is thus looked at about once per TTL, not once per sweep, and a sweep over
//! a million live leases with nothing due costs nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Granularity of deadlines, and the driver's sweep period.
pub const SLOT: Duration = Duration::from_millis(250);

pub(super) struct ExpiryWheel {
    start: Instant,
    slots: Mutex<BTreeMap<u64, Vec<u64>>>,
}

impl ExpiryWheel {
    pub(super) fn new(start: Instant) -> Self {
        Self { start, slots: Mutex::new(BTreeMap::new()) }
    }

    fn slot_index(&self, t: Instant) -> u64 {
        let ms = t.saturating_duration_since(self.start).as_millis();
        u64::try_from(ms / SLOT.as_millis()).unwrap_or(u64::MAX)
    }

    /// Files `lease_id` under the first slot boundary at or after `deadline`.
    pub(super) fn schedule(&self, lease_id: u64, deadline: Instant) {
        let slot = self.slot_index(deadline).saturating_add(1);
        if let Ok(mut s) = self.slots.lock() {
            s.entry(slot).or_default().push(lease_id);
        }
    }

    /// Takes up to `budget` leases whose slots are due at `now`. A mass expiry is thus spread
    /// over several calls instead of stalling the datagrams queued behind one long sweep.
    pub(super) fn due(&self, now: Instant, budget: usize) -> Vec<u64> {
        let current = self.slot_index(now);
        let Ok(mut s) = self.slots.lock() else { return Vec::new() };
        let mut out = Vec::new();
        while out.len() < budget {
            let Some(mut entry) = s.first_entry() else { break };
            if *entry.key() > current {
                break;
            }
            let ids = entry.get_mut();
            let take = (budget - out.len()).min(ids.len());
            out.extend(ids.drain(ids.len() - take..));
            if ids.is_empty() {
                entry.remove();
            }
        }
        out
    }

    /// The first slot boundary after `now`: when the next slot comes due. A sweep then, rather
    /// than one period after the last sweep (which drifts off the boundaries by however late
    /// each sweep ran), removes a lease within one slot of its deadline, not two.
    pub(super) fn next_boundary(&self, now: Instant) -> Instant {
        let next = self.slot_index(now).saturating_add(1);
        let ms = next.saturating_mul(u64::try_from(SLOT.as_millis()).unwrap_or(u64::MAX));
        self.start.checked_add(Duration::from_millis(ms)).unwrap_or(now + SLOT)
    }

    /// True when due work is left over from a budgeted call.
    pub(super) fn backlog(&self, now: Instant) -> bool {
        let current = self.slot_index(now);
        self.slots.lock().map(|s| s.first_key_value().is_some_and(|(k, _)| *k <= current)).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_only_after_the_deadline_and_within_budget() {
        let t0 = Instant::now();
        let w = ExpiryWheel::new(t0);
        w.schedule(1, t0 + Duration::from_millis(600));
        for i in 10..20 {
            w.schedule(i, t0 + Duration::from_millis(100));
        }
        assert!(w.due(t0 + Duration::from_millis(200), 100).is_empty(), "slot 1 ends at 250 ms");
        let first = w.due(t0 + Duration::from_millis(250), 4);
        assert_eq!(first.len(), 4);
        assert!(w.backlog(t0 + Duration::from_millis(250)));
        assert_eq!(w.due(t0 + Duration::from_millis(250), 100).len(), 6);
        assert!(w.due(t0 + Duration::from_millis(700), 100).is_empty(), "600 ms is in slot 3");
        assert_eq!(w.due(t0 + Duration::from_millis(750), 100), vec![1]);
    }

    #[test]
    fn the_next_sweep_is_at_the_next_slot_boundary() {
        let t0 = Instant::now();
        let w = ExpiryWheel::new(t0);
        let ms = Duration::from_millis;
        assert_eq!(w.next_boundary(t0), t0 + ms(250));
        assert_eq!(w.next_boundary(t0 + ms(1_234)), t0 + ms(1_250));
        assert_eq!(w.next_boundary(t0 + ms(1_250)), t0 + ms(1_500));
    }
}

//! Usage reports (`lic-udp report`): per license, from the audit log, how many seats were held
//! at the peak, for how long the license was in use and full, and how many grants and denials
//! (by reason) there were. For the yearly true-up an admin does with FlexNet's report logs.
//!
//! A seat is held from its `grant` to its lease's end event (`release`, `expire`,
//! `force-release`, `drop`, `revoke-end`, `license-end`); a `takeover` (a holder moving to
//! another cluster node) changes nothing. A lease with no end event yet is still held: a server
//! restart keeps its leases (proto-spec.md §7), and one that then expires logs its `expire`.
//! Intervals are clipped to the report's window, so a seat granted before `since` counts from
//! `since`. A grant's end event is matched by lease id, so one log read from the start of the
//! retention is enough; the audit log's own bounds (README, "Audit log") bound the report.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::store::AuditEntry;

/// One license's figures over the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LicenseUsage {
    pub license: i64,
    /// The license's seats, when the caller knows them (for `full_hours`).
    pub seats: Option<u16>,
    pub grants: u64,
    /// DENY reasons (full, revoked, expired, unknown, busy, unavailable …) and their counts.
    pub denials: BTreeMap<String, u64>,
    /// Most seats held at once.
    pub peak: usize,
    /// Hours with at least one seat held.
    pub hours_in_use: f64,
    /// Hours with every seat held (0 when `seats` is unknown).
    pub hours_full: f64,
    /// Sum over seats of the hours each was held.
    pub seat_hours: f64,
}

const ENDS: [&str; 6] = ["release", "expire", "force-release", "drop", "revoke-end", "license-end"];

fn hours(s: u64) -> f64 {
    s as f64 / 3600.0
}

/// Each license's seat intervals clipped to `[since, until)`, as sorted edges (+1 at a grant,
/// -1 at its end; ends before starts at the same instant, so a seat handed from one holder to
/// the next in the same second is not counted twice). Shared by [`usage`] and [`timeline`].
fn edges(events: &[AuditEntry], since: u64, until: u64) -> HashMap<i64, Vec<(u64, i64)>> {
    edges_by(events, since, until, |_, lic| lic)
}

/// [`edges`] per any key of the grant event (and its license), e.g. (license, user).
fn edges_by<K: std::hash::Hash + Eq>(
    events: &[AuditEntry],
    since: u64,
    until: u64,
    key: impl Fn(&AuditEntry, i64) -> K,
) -> HashMap<K, Vec<(u64, i64)>> {
    // lease → (key, start)
    let mut open: HashMap<&str, (K, u64)> = HashMap::new();
    let mut spans: Vec<(K, u64, u64)> = Vec::new();
    for e in events {
        let (Some(lic), Some(lease)) = (e.license, e.lease.as_deref()) else { continue };
        match e.event.as_str() {
            "grant" => {
                open.insert(lease, (key(e, lic), e.ts));
            }
            ev if ENDS.contains(&ev) => {
                if let Some((k, start)) = open.remove(lease) {
                    spans.push((k, start, e.ts));
                }
            }
            _ => {}
        }
    }
    spans.extend(open.into_values().map(|(k, start)| (k, start, until)));
    let mut out: HashMap<K, Vec<(u64, i64)>> = HashMap::new();
    for (k, a, b) in spans {
        let (a, b) = (a.max(since), b.min(until));
        if a < b {
            out.entry(k).or_default().extend([(a, 1), (b, -1)]);
        }
    }
    out.values_mut().for_each(|v| v.sort_unstable());
    out
}

/// Calls `f(from, to, held)` for every stretch of `edges` with `held` seats held.
fn stretches(edges: &[(u64, i64)], mut f: impl FnMut(u64, u64, usize)) {
    let mut held = 0i64;
    let mut last = 0;
    for &(t, d) in edges {
        if held > 0 && t > last {
            f(last, t, usize::try_from(held).unwrap_or(0));
        }
        held += d;
        last = t;
    }
}

fn entry<'a>(
    out: &'a mut BTreeMap<i64, LicenseUsage>,
    seats: &HashMap<i64, u16>,
    lic: i64,
) -> &'a mut LicenseUsage {
    out.entry(lic).or_insert_with(|| LicenseUsage {
        license: lic,
        seats: seats.get(&lic).copied(),
        ..LicenseUsage::default()
    })
}

/// Figures for every license that appears in `events` (oldest first, as `audit` returns them)
/// inside `[since, until)`. `seats` gives each license's seat count.
pub fn usage(events: &[AuditEntry], seats: &HashMap<i64, u16>, since: u64, until: u64) -> Vec<LicenseUsage> {
    let mut out: BTreeMap<i64, LicenseUsage> = BTreeMap::new();
    for e in events.iter().filter(|e| e.ts >= since && e.ts < until) {
        let Some(lic) = e.license else { continue };
        match e.event.as_str() {
            "grant" => entry(&mut out, seats, lic).grants += 1,
            "deny" => {
                let reason = e.detail.clone().unwrap_or_else(|| "unknown".into());
                *entry(&mut out, seats, lic).denials.entry(reason).or_default() += 1;
            }
            _ => {}
        }
    }
    for (lic, edges) in edges(events, since, until) {
        let u = entry(&mut out, seats, lic);
        let cap = u.seats.map(usize::from);
        let (mut in_use, mut full, mut seat_s) = (0u64, 0u64, 0u64);
        stretches(&edges, |a, b, held| {
            in_use += b - a;
            seat_s += (b - a) * held as u64;
            if cap.is_some_and(|c| held >= c) {
                full += b - a;
            }
            u.peak = u.peak.max(held);
        });
        u.hours_in_use = hours(in_use);
        u.hours_full = hours(full);
        u.seat_hours = hours(seat_s);
    }
    out.into_values().collect()
}

/// What `report --by` groups a license's seats by: the holder's stated identity (proto-spec.md
/// §2, PROOF_ID). Seats of clients that did not say are grouped under `?`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    User,
    Host,
    Program,
}

impl By {
    fn of(self, e: &AuditEntry) -> String {
        let w = e.who.as_ref();
        let v = match self {
            By::User => w.map(|w| w.user.as_str()),
            By::Host => w.map(|w| w.host.as_str()),
            By::Program => w.map(|w| w.program.as_str()),
        };
        v.filter(|v| !v.is_empty()).unwrap_or("?").to_owned()
    }
}

/// One license's seats held by one user, host or program over the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GroupUsage {
    pub license: i64,
    /// The user, host or program name (`?` when the holders did not say).
    pub group: String,
    pub grants: u64,
    /// Most seats this group held at once.
    pub peak: usize,
    /// Hours this group held at least one seat.
    pub hours_in_use: f64,
    pub seat_hours: f64,
}

/// [`usage`] per license and holder group, for `report --by`. Denials are not attributed: a
/// DENY is logged before the server knows more than the address.
pub fn usage_by(events: &[AuditEntry], by: By, since: u64, until: u64) -> Vec<GroupUsage> {
    fn group(out: &mut BTreeMap<(i64, String), GroupUsage>, lic: i64, g: String) -> &mut GroupUsage {
        out.entry((lic, g.clone())).or_insert_with(|| GroupUsage {
            license: lic,
            group: g,
            ..GroupUsage::default()
        })
    }
    let mut out: BTreeMap<(i64, String), GroupUsage> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event == "grant" && e.ts >= since && e.ts < until) {
        if let Some(lic) = e.license {
            group(&mut out, lic, by.of(e)).grants += 1;
        }
    }
    for ((lic, g), edges) in edges_by(events, since, until, |e, lic| (lic, by.of(e))) {
        let u = group(&mut out, lic, g);
        let (mut in_use, mut seat_s) = (0u64, 0u64);
        stretches(&edges, |a, b, held| {
            in_use += b - a;
            seat_s += (b - a) * held as u64;
            u.peak = u.peak.max(held);
        });
        u.hours_in_use = hours(in_use);
        u.seat_hours = hours(seat_s);
    }
    out.into_values().collect()
}

/// One slice of a [`timeline`]: the most seats held at once during it, and its denials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slice {
    pub peak: usize,
    pub denials: u64,
}

/// Seats held over `[since, until)` cut into `n` equal slices, per license: what the dashboard
/// draws. Built from the same intervals as [`usage`].
pub fn timeline(events: &[AuditEntry], since: u64, until: u64, n: usize) -> BTreeMap<i64, Vec<Slice>> {
    let n = n.max(1);
    let width = (until.saturating_sub(since) / n as u64).max(1);
    let slice_of = |t: u64| usize::try_from(t.saturating_sub(since) / width).unwrap_or(usize::MAX).min(n - 1);
    let mut out: BTreeMap<i64, Vec<Slice>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event == "deny" && e.ts >= since && e.ts < until) {
        let Some(lic) = e.license else { continue };
        out.entry(lic).or_insert_with(|| vec![Slice::default(); n])[slice_of(e.ts)].denials += 1;
    }
    for (lic, edges) in edges(events, since, until) {
        let slices = out.entry(lic).or_insert_with(|| vec![Slice::default(); n]);
        stretches(&edges, |a, b, held| {
            for s in &mut slices[slice_of(a)..=slice_of(b - 1)] {
                s.peak = s.peak.max(held);
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, event: &str, lease: &str, detail: Option<&str>) -> AuditEntry {
        AuditEntry {
            seq: 0,
            ts,
            event: event.into(),
            license: Some(7),
            lease: (!lease.is_empty()).then(|| lease.into()),
            instance: None,
            addr: None,
            actor: None,
            detail: detail.map(Into::into),
            who: None,
        }
    }

    fn by(ts: u64, event: &str, lease: &str, user: &str, host: &str) -> AuditEntry {
        let who = crate::proto::identity::Identity::new(user, host, "cad", "2.1").expect("identity");
        AuditEntry { who: (event == "grant").then_some(who), ..ev(ts, event, lease, None) }
    }

    /// The same day as below, with holders: alice on ws1 holds 0–4 h and 5 h–8 h (two seats
    /// at once 1–3 h through a second lease on ws2), bob holds 2–3 h; a plain PROOF's seat is `?`.
    #[test]
    fn seats_are_reported_per_user_and_per_host() {
        let h = 3600;
        let events = vec![
            by(0, "grant", "a", "alice", "ws1"),
            by(h, "grant", "b", "alice", "ws2"),
            by(2 * h, "grant", "c", "bob", "ws2"),
            by(3 * h, "release", "b", "", ""),
            by(3 * h, "expire", "c", "", ""),
            by(4 * h, "release", "a", "", ""),
            by(5 * h, "grant", "d", "alice", "ws1"),
            ev(6 * h, "grant", "e", None),
        ];
        let u = usage_by(&events, By::User, 0, 8 * h);
        let get = |u: &[GroupUsage], g: &str| u.iter().find(|x| x.group == g).cloned().expect("group");
        let alice = get(&u, "alice");
        assert_eq!((alice.grants, alice.peak), (3, 2));
        assert!((alice.hours_in_use - 7.0).abs() < 1e-9, "{}", alice.hours_in_use);
        assert!((alice.seat_hours - (4.0 + 2.0 + 3.0)).abs() < 1e-9, "{}", alice.seat_hours);
        let bob = get(&u, "bob");
        assert_eq!((bob.grants, bob.peak), (1, 1));
        assert!((bob.seat_hours - 1.0).abs() < 1e-9);
        let unknown = get(&u, "?");
        assert!((unknown.seat_hours - 2.0).abs() < 1e-9, "the plain PROOF's seat, 6–8 h");
        let hosts = usage_by(&events, By::Host, 0, 8 * h);
        let ws2 = get(&hosts, "ws2");
        assert_eq!(ws2.peak, 2, "alice's second seat and bob's, 2–3 h");
        assert!((ws2.seat_hours - 3.0).abs() < 1e-9, "{}", ws2.seat_hours);
    }

    /// A scripted day whose figures are known: two seats; A holds 0–4 h, B 1–3 h (full 1–3 h),
    /// C 5 h–still held at 8 h; one FULL denial inside, one before the window.
    #[test]
    fn a_scripted_history_gives_its_known_peak_and_hours() {
        let h = 3600;
        let events = vec![
            ev(0, "grant", "a", None),
            ev(h, "grant", "b", None),
            ev(h + 10, "deny", "", Some("full")),
            ev(3 * h, "release", "b", None),
            ev(4 * h, "expire", "a", None),
            ev(5 * h, "grant", "c", None),
            ev(6 * h, "takeover", "c", None),
        ];
        let seats = HashMap::from([(7, 2)]);
        let u = usage(&events, &seats, 0, 8 * h);
        assert_eq!(u.len(), 1);
        let u = &u[0];
        assert_eq!((u.grants, u.peak), (3, 2));
        assert_eq!(u.denials.get("full"), Some(&1));
        assert!((u.hours_in_use - 7.0).abs() < 1e-9, "0–4 h and 5–8 h: {}", u.hours_in_use);
        assert!((u.hours_full - 2.0).abs() < 1e-9, "1–3 h: {}", u.hours_full);
        assert!((u.seat_hours - (4.0 + 2.0 + 3.0)).abs() < 1e-9, "{}", u.seat_hours);

        // A window from 2 h to 6 h: A counts from 2 h, B's grant and the denial are before it.
        let w = usage(&events, &seats, 2 * h, 6 * h);
        let w = &w[0];
        assert_eq!((w.grants, w.peak), (1, 2));
        assert!(w.denials.is_empty());
        assert!((w.hours_in_use - 3.0).abs() < 1e-9, "2–4 h and 5–6 h: {}", w.hours_in_use);
        assert!((w.hours_full - 1.0).abs() < 1e-9, "2–3 h: {}", w.hours_full);
    }

    #[test]
    fn the_timeline_shows_each_slices_peak_and_denials() {
        let h = 3600;
        let events = vec![
            ev(0, "grant", "a", None),
            ev(h, "grant", "b", None),
            ev(h + 10, "deny", "", Some("full")),
            ev(3 * h, "release", "b", None),
            ev(4 * h, "expire", "a", None),
            ev(5 * h, "grant", "c", None),
        ];
        let t = timeline(&events, 0, 8 * h, 8);
        let peaks: Vec<usize> = t[&7].iter().map(|s| s.peak).collect();
        assert_eq!(peaks, [1, 2, 2, 1, 0, 1, 1, 1]);
        let denials: Vec<u64> = t[&7].iter().map(|s| s.denials).collect();
        assert_eq!(denials, [0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_seat_handed_over_in_the_same_second_is_not_counted_twice() {
        let events =
            vec![ev(0, "grant", "a", None), ev(10, "release", "a", None), ev(10, "grant", "b", None)];
        let u = usage(&events, &HashMap::from([(7, 1)]), 0, 20);
        assert_eq!(u[0].peak, 1);
        assert!((u[0].hours_full - 20.0 / 3600.0).abs() < 1e-9);
    }
}

//! Prometheus text exposition (`GET /metrics`) of the core's counters, per-license seat
//! gauges, and how long the server takes to handle one heartbeat.
//!
//! The histogram is fixed buckets of relaxed atomics: the IO thread records into it for every
//! heartbeat, so it must cost a few nanoseconds and never lock or allocate.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::proto::server::StatsSnapshot;

/// Upper bounds of the heartbeat-handling buckets, in nanoseconds. A core heartbeat costs
/// well under a microsecond; the tail buckets catch lock waits and preemption.
const BOUNDS_NS: [u64; 12] =
    [500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 10_000_000, 100_000_000];

/// A latency histogram with Prometheus' cumulative `le` buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, plus +Inf.
    counts: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// `n` observations of `d` at the cost of one.
    pub fn observe_n(&self, d: Duration, n: u64) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(BOUNDS_NS.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(n, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            match BOUNDS_NS.get(i) {
                Some(&b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", b as f64 / 1e9);
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// What `/metrics` shows, gathered by the caller at one moment.
pub struct Snapshot<'a> {
    pub stats: StatsSnapshot,
    /// Store license id → (seats in use, seats).
    pub seats: HashMap<i64, (usize, u16)>,
    pub live_leases: usize,
    pub heartbeat_time: &'a Histogram,
}

fn counter(out: &mut String, name: &str, help: &str, rows: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, v) in rows {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Renders the Prometheus text format (version 0.0.4).
pub fn render(s: &Snapshot<'_>) -> String {
    let st = &s.stats;
    let mut out = String::with_capacity(4096);
    counter(
        &mut out,
        "lic_udp_datagrams_received_total",
        "Datagrams read from the UDP socket.",
        &[("", st.received)],
    );
    counter(
        &mut out,
        "lic_udp_handshakes_total",
        "HELLOs answered with a CHALLENGE (the first step of every seat request).",
        &[("", st.challenges)],
    );
    counter(
        &mut out,
        "lic_udp_grants_total",
        "Seats granted: new leases, and PROOFs of an instance that already held one.",
        &[("kind=\"new\"", st.grants), ("kind=\"renewed\"", st.regrants)],
    );
    counter(
        &mut out,
        "lic_udp_denials_total",
        "Seat requests refused, by reason: PROOFs answered with a DENY, and holders told at a heartbeat that their license was revoked or expired (their seat ends then).",
        &[
            ("reason=\"full\"", st.denied_full),
            ("reason=\"busy\"", st.denied_busy),
            ("reason=\"revoked\"", st.denied_revoked),
            ("reason=\"expired\"", st.denied_expired),
            ("reason=\"unavailable\"", st.denied_unavailable),
        ],
    );
    counter(
        &mut out,
        "lic_udp_unknown_license_total",
        "PROOFs for a license this server does not have (answered UNKNOWN).",
        &[("", st.unknown_license)],
    );
    counter(
        &mut out,
        "lic_udp_heartbeats_total",
        "Heartbeats accepted (MAC and sequence checked).",
        &[("", st.heartbeats)],
    );
    counter(
        &mut out,
        "lic_udp_expiries_total",
        "Leases that ended because their holder stopped heartbeating.",
        &[("", st.expiries)],
    );
    counter(&mut out, "lic_udp_releases_total", "Leases their holders gave back.", &[("", st.releases)]);
    counter(&mut out, "lic_udp_force_releases_total", "Leases an admin freed.", &[("", st.force_releases)]);
    counter(
        &mut out,
        "lic_udp_dropped_total",
        "Datagrams refused, by cause; stale are heartbeats for a lease the server does not have (answered STALE); reply_limit are HELLOs, PROOFs and heartbeats left unanswered because their source address used up its allowance of unauthenticated replies.",
        &[
            ("cause=\"malformed\"", st.dropped_malformed),
            ("cause=\"direction\"", st.dropped_direction),
            ("cause=\"low_port\"", st.dropped_low_port),
            ("cause=\"cookie\"", st.dropped_cookie),
            ("cause=\"bad_mac\"", st.dropped_mac),
            ("cause=\"throttled\"", st.dropped_throttled),
            ("cause=\"throttled_license\"", st.dropped_throttled_license),
            ("cause=\"replay\"", st.dropped_replay),
            ("cause=\"stale\"", st.stale),
            ("cause=\"reply_limit\"", st.dropped_reply_limit),
        ],
    );
    counter(
        &mut out,
        "lic_udp_cluster_total",
        "Several servers (etcd store): seats taken over from another node keeping their lease id; heartbeats \
         answered STALE because this node's etcd lease might lapse within an ACK's promise (the ACK gate); grants \
         etcd refused because the license filled up on another node first.",
        &[
            ("event=\"takeover\"", st.takeovers),
            ("event=\"stale_gated\"", st.stale_gated),
            ("event=\"refused_full\"", st.refused_by_store),
        ],
    );
    counter(
        &mut out,
        "lic_udp_audit_dropped_total",
        "Denials not written to the audit log because its queue was full.",
        &[("", st.audit_dropped)],
    );
    let mut ids: Vec<_> = s.seats.iter().collect();
    ids.sort_by_key(|(id, _)| **id);
    let _ = writeln!(
        out,
        "# HELP lic_udp_seats_in_use Seats held now, per license.\n# TYPE lic_udp_seats_in_use gauge"
    );
    for (id, (used, _)) in &ids {
        let _ = writeln!(out, "lic_udp_seats_in_use{{license=\"{id}\"}} {used}");
    }
    let _ = writeln!(out, "# HELP lic_udp_seats Seats the license allows.\n# TYPE lic_udp_seats gauge");
    for (id, (_, seats)) in &ids {
        let _ = writeln!(out, "lic_udp_seats{{license=\"{id}\"}} {seats}");
    }
    let _ = writeln!(out, "# HELP lic_udp_leases Live leases on all licenses.\n# TYPE lic_udp_leases gauge");
    let _ = writeln!(out, "lic_udp_leases {}", s.live_leases);
    s.heartbeat_time.write(
        &mut out,
        "lic_udp_heartbeat_handling_seconds",
        "Time the server spends on one heartbeat datagram, from decode to a sealed ACK, averaged over its receive batch.",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_nanos(300));
        h.observe(Duration::from_nanos(700));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.write(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0000005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.000001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn replies_withheld_by_the_reply_limit_are_exported() {
        let h = Histogram::default();
        let stats = StatsSnapshot { dropped_reply_limit: 7, ..StatsSnapshot::default() };
        let out = render(&Snapshot { stats, seats: HashMap::new(), live_leases: 0, heartbeat_time: &h });
        assert!(out.contains("lic_udp_dropped_total{cause=\"reply_limit\"} 7\n"), "{out}");
    }
}

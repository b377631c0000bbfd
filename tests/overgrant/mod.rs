//! The two over-grant counters of the fault tests (proto-spec.md §11, "The invariant"), and
//! the history they read.
//!
//! - The **holder counter** reads what customers pay for: each client's hold intervals, from
//!   its GRANT to its loss deadline, its release or its STALE, on the one monotonic clock of
//!   the machine. A sweep counts the instants (interval starts) where more holders of the
//!   license hold a seat than it has seats, and for how long.
//! - The **engine counter** reads etcd's own history of the license's seat records, revision
//!   by revision, and counts the revisions where more records are live than the seats.
#![allow(dead_code)] // each test binary uses a different part of this

use std::collections::BTreeMap;

/// One hold: [start, end) in nanoseconds on the test's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    pub client: usize,
    pub start: u64,
    pub end: u64,
}

/// (instants with more holders than seats, nanoseconds spent so).
pub fn holder_overgrants(holds: &[Hold], seats: usize) -> (usize, u64) {
    let mut events: Vec<(u64, i64)> = Vec::with_capacity(holds.len() * 2);
    for h in holds.iter().filter(|h| h.end > h.start) {
        events.push((h.start, 1));
        events.push((h.end, -1));
    }
    // Ends before starts at the same instant: a seat handed on exactly at a release is fine.
    events.sort_by_key(|&(t, d)| (t, d));
    let (mut live, mut instants, mut over_ns, mut since) = (0i64, 0usize, 0u64, 0u64);
    for (t, d) in events {
        if live > seats as i64 {
            over_ns += t - since;
        }
        live += d;
        if d > 0 && live > seats as i64 {
            instants += 1;
        }
        since = t;
    }
    (instants, over_ns)
}

/// Nanoseconds within [from, to) during which at least `seats` holders held a seat.
pub fn full_time(holds: &[Hold], seats: usize, from: u64, to: u64) -> u64 {
    let mut events: Vec<(u64, i64)> = Vec::new();
    for h in holds {
        let (s, e) = (h.start.max(from), h.end.min(to));
        if e > s {
            events.push((s, 1));
            events.push((e, -1));
        }
    }
    events.sort_by_key(|&(t, d)| (t, d));
    let (mut live, mut full, mut since) = (0i64, 0u64, from);
    for (t, d) in events {
        if live >= seats as i64 {
            full += t - since;
        }
        live += d;
        since = t;
    }
    full
}

/// One revision of the license's records: key → (lease id, node).
pub type Records = BTreeMap<String, (String, String)>;

/// (revisions with more live records than seats, takeovers: a record that changed node and
/// kept its lease id, the largest count seen).
pub fn engine_overgrants(history: &[(i64, Records)], seats: usize) -> (usize, usize, usize) {
    let (mut over, mut takeovers, mut max) = (0, 0, 0);
    let mut prev: Option<&Records> = None;
    for (_, recs) in history {
        max = max.max(recs.len());
        if recs.len() > seats {
            over += 1;
        }
        if let Some(p) = prev {
            for (k, (lease, node)) in recs {
                if let Some((pl, pn)) = p.get(k) {
                    if pl == lease && pn != node {
                        takeovers += 1;
                    }
                }
            }
        }
        prev = Some(recs);
    }
    (over, takeovers, max)
}

/// The license's records at every revision from 1 to now, read from etcd at `endpoint`
/// (`host:port`; auto-compaction must be off, as the harness starts it).
pub fn etcd_history(endpoint: &str, prefix: &str) -> Vec<(i64, Records)> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let unb64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default();
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let url = format!("http://{endpoint}/v3/kv/range");
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(5)).build();
    let head: serde_json::Value = agent
        .post(&url)
        .send_json(serde_json::json!({"key": b64(b"a"), "count_only": true}))
        .expect("etcd answers")
        .into_json()
        .expect("json");
    let now: i64 = head["header"]["revision"].as_str().and_then(|s| s.parse().ok()).expect("revision");
    let mut out = Vec::with_capacity(usize::try_from(now).unwrap_or(0));
    for rev in 1..=now {
        let v: serde_json::Value = agent
            .post(&url)
            .send_json(serde_json::json!({"key": b64(prefix.as_bytes()), "range_end": b64(&end), "revision": rev.to_string()}))
            .expect("etcd answers a historical read")
            .into_json()
            .expect("json");
        let mut recs = Records::new();
        for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
            let key = String::from_utf8_lossy(&unb64(kv["key"].as_str().unwrap_or(""))).into_owned();
            let val: serde_json::Value =
                serde_json::from_slice(&unb64(kv["value"].as_str().unwrap_or(""))).unwrap_or_default();
            let lease = val["lease_id"].as_str().unwrap_or("").to_owned();
            let node = val["node"].as_str().unwrap_or("").to_owned();
            recs.insert(key, (lease, node));
        }
        out.push((rev, recs));
    }
    out
}

#[test]
fn holder_counter_counts_a_known_overlap_once() {
    let h = |client, start, end| Hold { client, start, end };
    // Two seats; three holders overlap between 5 and 6.
    let holds = [h(0, 0, 10), h(1, 2, 6), h(2, 5, 8)];
    assert_eq!(holder_overgrants(&holds, 2), (1, 1));
    assert_eq!(holder_overgrants(&holds, 3), (0, 0));
    // A seat handed on at the very instant of a release is not an overlap.
    let handover = [h(0, 0, 5), h(1, 5, 9)];
    assert_eq!(holder_overgrants(&handover, 1), (0, 0));
    // At least two hold from 2 (the second starts) to 8 (the third ends).
    assert_eq!(full_time(&holds, 2, 0, 10), 8 - 2);
}

#[test]
fn engine_counter_counts_revisions_over_the_seats_and_takeovers() {
    let recs = |v: &[(&str, &str, &str)]| -> Records {
        v.iter().map(|(k, l, n)| ((*k).to_owned(), ((*l).to_owned(), (*n).to_owned()))).collect()
    };
    let history = vec![
        (1, recs(&[("a", "1", "n1")])),
        (2, recs(&[("a", "1", "n2"), ("b", "2", "n1")])),
        (3, recs(&[("a", "1", "n2"), ("b", "2", "n1"), ("c", "3", "n3")])),
        (4, recs(&[("a", "1", "n2"), ("c", "3", "n3")])),
    ];
    assert_eq!(engine_overgrants(&history, 2), (1, 1, 3));
    assert_eq!(engine_overgrants(&history, 3), (0, 1, 3));
}

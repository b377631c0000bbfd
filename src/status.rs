//! What `lic-udp status --json`, `GET /api/status` and the dashboard's monitor show: every
//! license with its seats and holders. One model, so the three never disagree; the CLI builds
//! it from the data dir when no server answers, the server from its live lease table.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::proto::server::{LeaseView, RestoredLease};
use crate::store::{LicenseRow, RecordedHolder};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// `live` when the running server answered, `store` when read from the data dir (holders
    /// as last recorded; last heartbeats unknown), `etcd` when read from a cluster's etcd (every
    /// node's holders; last heartbeats only of the answering node's own).
    pub source: String,
    pub licenses: Vec<LicenseStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LicenseStatus {
    pub id: i64,
    pub owner: String,
    #[serde(rename = "type")]
    pub license_type: String,
    pub seats: u16,
    pub in_use: usize,
    /// idle, in use, full, expired or revoked.
    pub state: String,
    pub created: String,
    pub expires: Option<String>,
    pub revoked: Option<String>,
    pub holders: Vec<Holder>,
    /// Holders counted in `in_use` but not listed, when the caller asked for at most so many
    /// per license (the dashboard's monitor; `/api/status?holders=N`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_holders: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// Hex; what `lic-udp release --lease` takes.
    pub lease: String,
    pub address: String,
    pub instance: String,
    pub since: String,
    /// Only when live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// The cluster node that holds it (etcd store only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Who holds it, as its client stated: absent for clients that do not say (plain PROOF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Holder {
    /// `user@host (program version)`, or `None` if the client did not say.
    pub fn who(&self) -> Option<String> {
        let w = crate::proto::identity::Identity {
            user: self.user.clone().unwrap_or_default(),
            host: self.host.clone().unwrap_or_default(),
            program: self.program.clone().unwrap_or_default(),
            version: self.version.clone().unwrap_or_default(),
        };
        (!w.is_empty()).then(|| w.to_string())
    }
}

pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn holder(l: &RestoredLease, live: Option<&LeaseView>) -> Holder {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let who = l.who.as_deref();
    Holder {
        user: who.and_then(|w| some(&w.user)),
        host: who.and_then(|w| some(&w.host)),
        program: who.and_then(|w| some(&w.program)),
        version: who.and_then(|w| some(&w.version)),
        lease: format!("{:016x}", l.lease_id),
        address: l.addr.to_string(),
        instance: hex::encode(l.instance_id),
        since: rfc3339(l.since_unix),
        last_heartbeat: live.map(|v| rfc3339(v.last_heartbeat_unix)),
        expires_in_ms: live.map(|v| v.expires_in_ms),
        node: None,
    }
}

/// Where the holders come from.
pub enum Holders<'a> {
    /// The running server's lease table.
    Live(&'a [LeaseView]),
    /// The store's grant journal, as last recorded.
    Recorded(&'a [RestoredLease]),
}

/// A cluster node's status: every node's holders as etcd records them, with the live heartbeat
/// figures of those this node holds (`me`). A holder of another node shows no last heartbeat:
/// only that node knows it.
pub fn build_shared(
    licenses: Vec<LicenseRow>,
    recorded: &[RecordedHolder],
    local: &[LeaseView],
    me: &str,
    now_unix: u64,
    cap: Option<usize>,
) -> Status {
    let leases: Vec<RestoredLease> = recorded.iter().map(|h| h.lease.clone()).collect();
    let mut st = build_capped(licenses, Holders::Recorded(&leases), now_unix, cap);
    st.source = "etcd".to_owned();
    let nodes: std::collections::HashMap<u64, &str> =
        recorded.iter().filter_map(|h| Some((h.lease.lease_id, h.node.as_deref()?))).collect();
    let live: std::collections::HashMap<u64, &LeaseView> =
        local.iter().map(|v| (v.lease.lease_id, v)).collect();
    for h in st.licenses.iter_mut().flat_map(|l| l.holders.iter_mut()) {
        let Ok(id) = u64::from_str_radix(&h.lease, 16) else { continue };
        h.node = nodes.get(&id).map(|n| (*n).to_owned());
        if h.node.as_deref() == Some(me) {
            if let Some(v) = live.get(&id) {
                h.last_heartbeat = Some(rfc3339(v.last_heartbeat_unix));
                h.expires_in_ms = Some(v.expires_in_ms);
            }
        }
    }
    st
}

/// Builds the status of `licenses` (already filtered to what the viewer may see).
pub fn build(licenses: Vec<LicenseRow>, holders: Holders<'_>, now_unix: u64) -> Status {
    build_capped(licenses, holders, now_unix, None)
}

/// [`build`] listing at most `cap` holders per license (the oldest), the rest only counted:
/// a page that refreshes every 2 s must not format 100,000 rows each time (issue 11, item 10).
pub fn build_capped(
    licenses: Vec<LicenseRow>,
    holders: Holders<'_>,
    now_unix: u64,
    cap: Option<usize>,
) -> Status {
    let live = matches!(holders, Holders::Live(_));
    let cap = cap.unwrap_or(usize::MAX);
    // References first: only the holders listed are formatted.
    let mut by_license: BTreeMap<i64, Vec<(&RestoredLease, Option<&LeaseView>)>> = BTreeMap::new();
    match holders {
        Holders::Live(views) => {
            for v in views {
                by_license.entry(v.lease.license).or_default().push((&v.lease, Some(v)));
            }
        }
        Holders::Recorded(recorded) => {
            for l in recorded {
                by_license.entry(l.license).or_default().push((l, None));
            }
        }
    }
    let licenses = licenses
        .into_iter()
        .map(|l| {
            let mut all = by_license.remove(&l.id).unwrap_or_default();
            let in_use = all.len();
            if in_use > cap {
                all.select_nth_unstable_by_key(cap, |(r, _)| (r.since_unix, r.lease_id));
                all.truncate(cap);
            }
            all.sort_by_key(|(r, _)| (r.since_unix, r.lease_id));
            let holders: Vec<Holder> = all.iter().map(|(r, v)| holder(r, *v)).collect();
            let state = if l.revoked_unix.is_some() {
                "revoked"
            } else if l.expires_unix.is_some_and(|e| now_unix >= e) {
                "expired"
            } else if in_use >= usize::from(l.seats) {
                "full"
            } else if in_use == 0 {
                "idle"
            } else {
                "in use"
            };
            LicenseStatus {
                id: l.id,
                owner: l.owner,
                license_type: l.type_name,
                seats: l.seats,
                in_use,
                more_holders: in_use - holders.len(),
                state: state.to_owned(),
                created: rfc3339(l.created_unix),
                expires: l.expires_unix.map(rfc3339),
                revoked: l.revoked_unix.map(rfc3339),
                holders,
            }
        })
        .collect();
    Status { source: if live { "live" } else { "store" }.to_owned(), licenses }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::keys::LicenseKeys;

    fn row(seats: u16) -> LicenseRow {
        LicenseRow {
            id: 1,
            owner: "alice".into(),
            type_name: "team".into(),
            seats,
            created_unix: 0,
            expires_unix: None,
            revoked_unix: None,
            ttl: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            keys: LicenseKeys { license_id: [0; 8], k_proof: [0; 32], k_auth: [0; 32] },
        }
    }

    fn lease(id: u64, since: u64) -> RestoredLease {
        RestoredLease {
            lease_id: id,
            license: 1,
            instance_id: [id as u8; 16],
            addr: "127.0.0.1:4000".parse().expect("addr"),
            since_unix: since,
            who: None,
        }
    }

    /// The monitor lists the oldest holders up to its cap and counts the rest; the license's
    /// count and state still cover every holder.
    #[test]
    fn a_capped_status_lists_the_oldest_holders_and_counts_the_rest() {
        let leases: Vec<RestoredLease> = [(5, 50), (1, 10), (4, 40), (2, 20), (3, 30)]
            .iter()
            .map(|&(id, since)| lease(id, since))
            .collect();
        let st = build_capped(vec![row(5)], Holders::Recorded(&leases), 100, Some(2));
        let l = &st.licenses[0];
        assert_eq!((l.in_use, l.more_holders, l.state.as_str()), (5, 3, "full"));
        let listed: Vec<&str> = l.holders.iter().map(|h| h.lease.as_str()).collect();
        assert_eq!(listed, ["0000000000000001", "0000000000000002"]);
        let all = build(vec![row(5)], Holders::Recorded(&leases), 100);
        assert_eq!((all.licenses[0].holders.len(), all.licenses[0].more_holders), (5, 0));
        let json = serde_json::to_value(&all).expect("json");
        assert!(json["licenses"][0].get("more_holders").is_none(), "absent when nothing is left out");
    }
}

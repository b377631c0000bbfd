//! What a cluster node adds to `/metrics`: its etcd health, so a scrape of each node shows
//! which one lost etcd, and how slow etcd's transactions are from where it stands.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::store::etcd::NodeState;

pub fn write_health(text: &mut String, node: &NodeState) {
    let age = Instant::now().saturating_duration_since(node.last_keepalive());
    let up = age <= node.cfg.timers.ack_window;
    let gw = node.store.gateway();
    let id = &node.cfg.node_id;
    let _ = write!(
        text,
        "# HELP lic_udp_etcd_up 1 while this node's etcd lease was renewed recently enough to acknowledge heartbeats.\n\
         # TYPE lic_udp_etcd_up gauge\nlic_udp_etcd_up{{node=\"{id}\"}} {}\n\
         # HELP lic_udp_etcd_keepalive_age_seconds Time since the send of the last keepalive etcd answered.\n\
         # TYPE lic_udp_etcd_keepalive_age_seconds gauge\nlic_udp_etcd_keepalive_age_seconds{{node=\"{id}\"}} {:.3}\n\
         # HELP lic_udp_etcd_conflicts_total Transactions whose compares failed (another node came first), retried.\n\
         # TYPE lic_udp_etcd_conflicts_total counter\nlic_udp_etcd_conflicts_total{{node=\"{id}\"}} {}\n",
        u8::from(up),
        age.as_secs_f64(),
        gw.conflicts.load(Ordering::Relaxed),
    );
    gw.txn_time.write(
        text,
        "lic_udp_etcd_txn_seconds",
        "Time one etcd transaction took, from request to answer.",
    );
}

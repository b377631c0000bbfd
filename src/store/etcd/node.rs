//! A serving node's presence in etcd: its node record, its etcd lease (which carries every
//! holder record it wrote) and the keepalive thread that renews it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::gateway::{Cmp, Op};
use super::{EtcdStore, OwnedRecord, Snapshot};
use crate::store::StoreError;

/// The node's timers, derived from the longest lease TTL it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeTimers {
    /// The etcd lease's TTL: the lease TTL plus room for a keepalive or two and an etcd leader
    /// election (about 1.5 s measured), so that a live node's records never lapse while its
    /// holders are promised their seats. 90 s for the default 60 s TTL.
    pub node_ttl: Duration,
    /// How often the node renews its etcd lease: 12 times per node TTL.
    pub keepalive: Duration,
    /// How long after a renewal's send time the node may still acknowledge heartbeats: the
    /// node TTL less the lease TTL an ACK promises, less a margin for clock rates and
    /// scheduling (1/12 of the TTL, 0.5 to 2 s). 28 s for the default 60 s TTL.
    pub ack_window: Duration,
}

impl NodeTimers {
    pub fn for_lease_ttl(ttl: Duration) -> Self {
        let slack = (ttl / 2).clamp(Duration::from_secs(3), Duration::from_secs(30));
        let node_ttl = Duration::from_secs((ttl + slack).as_secs_f64().ceil().max(2.0) as u64);
        let margin = (ttl / 12).clamp(Duration::from_millis(500), Duration::from_secs(2));
        Self {
            node_ttl,
            keepalive: (node_ttl / 12).max(Duration::from_millis(200)),
            ack_window: node_ttl.saturating_sub(ttl).saturating_sub(margin),
        }
    }
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    /// The UDP address it serves on, for admins reading the node record.
    pub addr: String,
    /// A random token kept in the node's data dir: a restart of the same node (same data dir)
    /// knows it, another process that happens to share the host name and PID (two containers,
    /// both PID 1) does not.
    pub token: String,
    pub timers: NodeTimers,
}

#[derive(Serialize, Deserialize)]
struct NodeRec {
    lease: String,
    host: String,
    pid: u32,
    addr: String,
    #[serde(default)]
    token: String,
}

/// The running node's handle on its etcd lease.
pub struct NodeState {
    pub store: EtcdStore,
    pub cfg: NodeConfig,
    lease: AtomicI64,
    /// Send time of the last keepalive etcd answered with the lease alive.
    last_ok: Mutex<Instant>,
    /// Set when etcd said the lease is gone: every record of ours went with it.
    gone: AtomicBool,
    stop: AtomicBool,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState").field("node", &self.cfg.node_id).finish_non_exhaustive()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The host name, the default node id.
pub fn default_node_id() -> String {
    hostname()
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    // Signal 0 checks existence; EPERM means it exists under another user.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

impl NodeState {
    /// Takes the node's place in etcd. A node restarted under its id on the same host, whose
    /// previous process is dead, adopts that process's etcd lease and records at once (its
    /// holders keep their seats); a live node with the same id is an error.
    pub fn register(store: EtcdStore, cfg: NodeConfig) -> Result<(Arc<Self>, Vec<OwnedRecord>), StoreError> {
        let gw = store.gateway().clone();
        let key = store.key(&format!("node/{}", cfg.node_id));
        let host = hostname();
        let me = std::process::id();
        let mut adopted_lease = None;
        let existing = gw.get(&key)?;
        if let Some(kv) = &existing {
            let rec: Option<NodeRec> = serde_json::from_slice(&kv.value).ok();
            let (their_host, their_pid, their_token) = rec
                .as_ref()
                .map_or((String::new(), 0, String::new()), |r| (r.host.clone(), r.pid, r.token.clone()));
            // Our own earlier run: the same data dir's token, this host, and its process gone.
            let dead_self =
                their_token == cfg.token && their_host == host && (their_pid == me || !pid_alive(their_pid));
            if !dead_self {
                return Err(StoreError::NodeIdInUse {
                    node: cfg.node_id.clone(),
                    host: their_host,
                    pid: their_pid,
                    wait_s: cfg.timers.node_ttl.as_secs(),
                });
            }
            let lease = rec.and_then(|r| r.lease.parse::<i64>().ok()).unwrap_or(0);
            // Only a lease of the TTL this run needs: one sized for a shorter lease TTL would
            // let records lapse while ACKs still promise the seat. Otherwise the old records
            // stay on the old lease until it ends, and their holders take them over.
            let want = i64::try_from(cfg.timers.node_ttl.as_secs()).unwrap_or(i64::MAX);
            if lease != 0 && gw.keepalive(lease)? == want {
                adopted_lease = Some(lease);
            }
        }
        let started = Instant::now();
        let lease = match adopted_lease {
            Some(l) => l,
            None => gw.lease_grant(i64::try_from(cfg.timers.node_ttl.as_secs()).unwrap_or(90))?,
        };
        let rec = NodeRec {
            lease: lease.to_string(),
            host,
            pid: me,
            addr: cfg.addr.clone(),
            token: cfg.token.clone(),
        };
        let value =
            serde_json::to_vec(&rec).map_err(|e| StoreError::PasswordHash { message: e.to_string() })?;
        let cmp = match &existing {
            Some(kv) => Cmp::ModEq(key.clone(), kv.mod_revision),
            None => Cmp::Absent(key.clone()),
        };
        let (ok, _) = gw.txn(&[cmp], &[Op::Put { key, value, lease }])?;
        if !ok {
            // Another process took the id between our read and our write.
            return Err(StoreError::NodeIdInUse {
                node: cfg.node_id.clone(),
                host: String::new(),
                pid: 0,
                wait_s: cfg.timers.node_ttl.as_secs(),
            });
        }
        let adopted = match adopted_lease {
            Some(l) => store.snapshot()?.mine(&cfg.node_id, l),
            None => Vec::new(),
        };
        let node = Arc::new(Self {
            store,
            cfg,
            lease: AtomicI64::new(lease),
            last_ok: Mutex::new(started),
            gone: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        Ok((node, adopted))
    }

    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// Send time of the last keepalive that found the lease alive.
    pub fn last_keepalive(&self) -> Instant {
        self.last_ok.lock().map(|t| *t).unwrap_or_else(|_| Instant::now())
    }

    /// True once after etcd said the lease is gone.
    pub fn take_gone(&self) -> bool {
        self.gone.swap(false, Ordering::Relaxed)
    }

    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }

    /// Replaces a lost etcd lease with a new one and rewrites the node record on it.
    pub fn renew_lease(&self) -> Result<(), StoreError> {
        let gw = self.store.gateway();
        let started = Instant::now();
        let lease = gw.lease_grant(i64::try_from(self.cfg.timers.node_ttl.as_secs()).unwrap_or(90))?;
        let key = self.store.key(&format!("node/{}", self.cfg.node_id));
        let rec = NodeRec {
            lease: lease.to_string(),
            host: hostname(),
            pid: std::process::id(),
            addr: self.cfg.addr.clone(),
            token: self.cfg.token.clone(),
        };
        let value =
            serde_json::to_vec(&rec).map_err(|e| StoreError::PasswordHash { message: e.to_string() })?;
        gw.put_with_lease(&key, &value, lease)?;
        self.lease.store(lease, Ordering::Relaxed);
        if let Ok(mut t) = self.last_ok.lock() {
            *t = started;
        }
        Ok(())
    }

    /// Renews the etcd lease every [`NodeTimers::keepalive`] on a thread of its own, so that
    /// neither heartbeats nor grants ever wait for it.
    pub fn start_keepalive(
        self: &Arc<Self>,
        on_renewed: impl Fn(Instant) + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let node = self.clone();
        on_renewed(node.last_keepalive());
        std::thread::Builder::new().name("lic-udp-keepalive".into()).spawn(move || {
            let mut warned = false;
            while !node.stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match node.store.gateway().keepalive(node.lease()) {
                    Ok(ttl) if ttl > 0 => {
                        if let Ok(mut t) = node.last_ok.lock() {
                            *t = sent;
                        }
                        on_renewed(sent);
                        if warned {
                            tracing::info!("etcd answers keepalives again");
                            warned = false;
                        }
                    }
                    Ok(_) => {
                        tracing::warn!(
                            "etcd says this node's lease is gone; its holders must take their seats again"
                        );
                        node.gone.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!("cannot renew this node's etcd lease: {e}");
                            warned = true;
                        }
                    }
                }
                let wait = node.cfg.timers.keepalive.saturating_sub(sent.elapsed());
                std::thread::sleep(wait.max(Duration::from_millis(10)));
            }
        })
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Every holder record, for the cluster view.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(self.store.snapshot()?)
    }
}

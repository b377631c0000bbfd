//! A node's copy of every holder record, kept current by an etcd watch.
//!
//! A node needs every other node's holders every 250 ms (proto-spec.md §11, "Takeover"). Reading
//! them all each time made every sync cost O(holders) on etcd and on the node: at 7,000 holders,
//! 2.4 MB of JSON four times a second per node, which loaded etcd enough to delay keepalives past
//! the ACK gate. The mirror reads everything once, then applies the watch's changes, so a sync
//! costs what changed.
//!
//! A watch through a dead link is as quiet as a healthy one, so the stream is reopened after
//! [`IDLE`] without a message (from the last revision applied, which costs nothing), and the
//! mirror reports itself stale (`snapshot` is `None`) whenever it could not reopen it: the node
//! then reads etcd directly, which fails under a partition as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::gateway::{WatchEnd, WatchEvent};
use super::seats::Parsed;
use super::{EtcdStore, Snapshot};

/// A watch stream silent this long is reopened.
pub const IDLE: Duration = Duration::from_secs(5);
/// Wait between attempts while etcd does not answer.
const RETRY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Inner {
    recs: HashMap<Vec<u8>, Parsed>,
    /// Every change up to this revision is applied.
    rev: i64,
    /// The watch is open (or was just reopened) from `rev`.
    live: bool,
}

pub struct Mirror {
    inner: Mutex<Inner>,
    stop: AtomicBool,
}

impl Mirror {
    /// Starts the watch thread. It ends when the mirror is stopped.
    pub fn start(store: EtcdStore) -> std::io::Result<Arc<Self>> {
        let m = Arc::new(Self { inner: Mutex::new(Inner::default()), stop: AtomicBool::new(false) });
        let me = m.clone();
        std::thread::Builder::new().name("lic-udp-watch".into()).spawn(move || me.run(&store))?;
        Ok(m)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The records as of the last applied revision, or `None` while the watch is down.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let g = self.inner.lock().ok()?;
        g.live.then(|| Snapshot::from_parsed(g.rev, g.recs.values().cloned()))
    }

    fn set_live(&self, live: bool) {
        if let Ok(mut g) = self.inner.lock() {
            g.live = live;
        }
    }

    fn run(&self, store: &EtcdStore) {
        let root = store.holders_root();
        while !self.stop.load(Ordering::Relaxed) {
            // Everything once, then the changes after it.
            let (kvs, rev) = match store.gateway().range_prefix(&root) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("holder mirror: cannot read the records: {e}");
                    self.set_live(false);
                    std::thread::sleep(RETRY);
                    continue;
                }
            };
            if let Ok(mut g) = self.inner.lock() {
                g.recs =
                    kvs.iter().filter_map(|kv| Some((kv.key.clone(), Parsed::of(root.len(), kv)?))).collect();
                g.rev = rev;
                g.live = true;
            }
            if !self.follow(store, &root) {
                self.set_live(false);
                std::thread::sleep(RETRY);
            }
        }
    }

    /// Applies the watch until it must be rebuilt: false after an error (the caller marks the
    /// mirror stale), true after a compaction or a stop.
    fn follow(&self, store: &EtcdStore, root: &[u8]) -> bool {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return true;
            }
            let from = match self.inner.lock() {
                Ok(g) => g.rev + 1,
                Err(_) => return false,
            };
            let end = store.gateway().watch_prefix(root, from, IDLE, |events, upto| {
                let Ok(mut g) = self.inner.lock() else { return false };
                for e in events {
                    match e {
                        WatchEvent::Put(kv) => match Parsed::of(root.len(), &kv) {
                            Some(p) => {
                                g.recs.insert(kv.key, p);
                            }
                            None => {
                                g.recs.remove(&kv.key);
                            }
                        },
                        WatchEvent::Delete(key, _) => {
                            g.recs.remove(&key);
                        }
                    }
                }
                g.rev = g.rev.max(upto);
                g.live = true;
                !self.stop.load(Ordering::Relaxed)
            });
            match end {
                Ok(WatchEnd::Idle) => {}
                Ok(WatchEnd::Compacted) | Ok(WatchEnd::Stopped) => return true,
                Err(e) => {
                    tracing::debug!("holder mirror: the watch failed: {e}");
                    return false;
                }
            }
        }
    }
}

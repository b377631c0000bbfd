//! The library's own threads: one tokio worker that heartbeats every seat of the process, and
//! one thread that calls the host's state-change callbacks. Host programs need no event loop,
//! and a callback that blocks, or calls back into the library, stalls no heartbeat.
//!
//! Both are started by the first acquisition and live as long as the process. After `fork()`
//! the child has neither (only the forking thread survives), so they are keyed by process id and
//! started again in a child that acquires; the parent's are leaked there, never joined.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use crate::holder::{Shared, State};

/// What the callback thread is handed: whose state changed, and to what.
pub(crate) type Change = (Arc<Shared>, State);

#[derive(Clone)]
pub(crate) struct Engine {
    pub runtime: tokio::runtime::Handle,
    pub changes: mpsc::Sender<Change>,
}

struct Running {
    pid: u32,
    engine: Engine,
}

static ENGINE: Mutex<Option<Running>> = Mutex::new(None);

/// This process's engine, started on first use.
pub(crate) fn engine() -> std::io::Result<Engine> {
    let mut slot = ENGINE.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    if let Some(r) = slot.as_ref().filter(|r| r.pid == pid) {
        return Ok(r.engine.clone());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        // Argon2 runs here when a serial has no cached keys; one at a time is plenty.
        .max_blocking_threads(2)
        .thread_name("licudp-heartbeat")
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel::<Change>();
    std::thread::Builder::new().name("licudp-callbacks".into()).spawn(move || {
        for (shared, state) in rx {
            shared.notify(state);
        }
    })?;
    let engine = Engine { runtime: runtime.handle().clone(), changes: tx };
    // Never dropped: shutting a runtime down joins its threads, and in a forked child the
    // parent's threads do not exist to be joined.
    std::mem::forget(runtime);
    if let Some(old) = slot.take() {
        std::mem::forget(old);
    }
    *slot = Some(Running { pid, engine: engine.clone() });
    Ok(engine)
}

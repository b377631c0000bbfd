//! A seat held for a caller without an async runtime (the C API and the Python package): every
//! call blocks the calling thread only, heartbeats run on the library's thread, and state
//! changes reach a callback on the library's callback thread.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use lic_udp::exit_code;
use lic_udp::locate;
use lic_udp::{CachedKeys, GrantInfo, Seat, SeatStatus, Serial};

use crate::engine::{engine, Engine};

/// How long a release waits for the server's confirmation, as `lic-udp run` does: the seat
/// driver goes on retrying in the background, and the server frees the seat when the lease
/// expires anyway, so a host program's shutdown should not wait out the full schedule.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// The seat's state as the C and Python APIs show it (README, "Embedding").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Held = 0,
    Lost = 1,
    Ended = 2,
    Released = 3,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Held,
            1 => Self::Lost,
            2 => Self::Ended,
            _ => Self::Released,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Lost => "lost",
            Self::Ended => "ended",
            Self::Released => "released",
        }
    }
}

/// What the caller asks for; `None` means the CLI's default.
#[derive(Default)]
pub struct Request<'a> {
    pub serial: Option<&'a str>,
    pub servers: Option<&'a str>,
    pub timeout: Option<Duration>,
}

/// Why no seat was granted: the CLI's exit code and its message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: i32,
    pub message: String,
}

impl Error {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Called with each new state, on the library's callback thread.
pub type Callback = Arc<dyn Fn(State) + Send + Sync>;

/// Keys derived from serials given as text, per server salt, so that a program that acquires
/// again (or in many threads) pays for Argon2 once, as a [`lic_udp::Client`] does.
static KEYS: Mutex<Vec<CachedKeys>> = Mutex::new(Vec::new());

/// A granted seat. Dropping it releases the seat in the background.
pub struct Holder {
    info: GrantInfo,
    shared: Arc<Shared>,
    seat: Mutex<Option<Seat>>,
    engine: Engine,
    /// The process that acquired: a forked child does not own the seat (engine.rs).
    pid: u32,
}

/// What the heartbeat task, the callback thread and the caller's threads share.
pub struct Shared {
    state: AtomicU8,
    slot: Mutex<Slot>,
    idle: Condvar,
}

struct Slot {
    callback: Option<Callback>,
    /// The thread running the callback now, so that replacing it can wait until it returns
    /// (unless it is that thread, replacing it from inside the callback).
    running_on: Option<ThreadId>,
}

impl Shared {
    fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Records `new` and reports whether it was a change. `Released` is final; `Ended` is
    /// final too except for an explicit release.
    fn set(&self, new: State) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let old = State::from_u8(cur);
            if old == new || old == State::Released || (old == State::Ended && new != State::Released) {
                return false;
            }
            match self.state.compare_exchange(cur, new as u8, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Runs the callback, if one is set; on the callback thread only.
    pub(crate) fn notify(&self, state: State) {
        let cb = {
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(cb) = slot.callback.clone() else { return };
            slot.running_on = Some(std::thread::current().id());
            cb
        };
        // A panicking callback (a Rust or Python one) must not end the callback thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(state)));
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).running_on = None;
        self.idle.notify_all();
    }

    /// Replaces the callback; once this returns, the old one is not running and never runs
    /// again, so the caller may free what it uses.
    fn set_callback(&self, cb: Option<Callback>) {
        let me = std::thread::current().id();
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.callback = cb;
        while slot.running_on.is_some_and(|t| t != me) {
            slot = self.idle.wait(slot).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Holder {
    /// Takes a seat, blocking the calling thread until it is granted or refused.
    pub fn acquire(req: &Request<'_>) -> Result<Self, Error> {
        let found =
            locate::locate(req.serial, req.servers).map_err(|e| Error::new(e.exit_code(), e.to_string()))?;
        let engine = engine().map_err(|e| {
            Error::new(exit_code::IO, format!("cannot start the library's heartbeat thread: {e}"))
        })?;
        let serial = found.serial;
        let mut client = found.client;
        if client.cached_keys_for(&serial).is_none() {
            if let Some(k) = cached(&serial) {
                client = client.with_cached_keys(k);
            }
        }
        if let Some(d) = req.timeout {
            client = client.with_acquire_timeout(d);
        }
        // A GRANT that arrives after a timeout is released by the seat's task, which lives on
        // in the library's runtime: no need to wait for it here, unlike the CLI.
        let result = engine.runtime.block_on(client.acquire(&serial));
        if let Some(k) = client.cached_keys_for(&serial) {
            remember(k);
        }
        let seat = result.map_err(|e| Error::new(e.exit_code(), e.to_string()))?;
        let shared = Arc::new(Shared {
            state: AtomicU8::new(State::Held as u8),
            slot: Mutex::new(Slot { callback: None, running_on: None }),
            idle: Condvar::new(),
        });
        let mut status = seat.status();
        let (watched, changes) = (shared.clone(), engine.changes.clone());
        engine.runtime.spawn(async move {
            while status.changed().await.is_ok() {
                let now = match *status.borrow_and_update() {
                    SeatStatus::Held => State::Held,
                    SeatStatus::Lost => State::Lost,
                    SeatStatus::Ended(_) => State::Ended,
                    SeatStatus::Released => State::Released,
                };
                if watched.set(now) && changes.send((watched.clone(), now)).is_err() {
                    return;
                }
            }
        });
        Ok(Self { info: seat.info(), shared, seat: Mutex::new(Some(seat)), engine, pid: std::process::id() })
    }

    pub fn state(&self) -> State {
        self.shared.state()
    }

    /// What the server said at the grant: the lease id stays the same for the seat's life,
    /// across server restarts; `used` is the count at that moment.
    pub fn info(&self) -> GrantInfo {
        self.info
    }

    /// See [`Shared::set_callback`]: after this returns the old callback is not running.
    pub fn set_callback(&self, cb: Option<Callback>) {
        if std::process::id() != self.pid {
            // A forked child: a callback that was running at the fork runs on a thread the
            // child does not have, and would never be seen to return.
            self.forget_callback();
            return;
        }
        self.shared.set_callback(cb);
    }

    /// Removes the callback without waiting for a running call to return: for an owner that
    /// cannot wait (Python's, which holds the GIL the callback needs).
    pub fn forget_callback(&self) {
        self.shared.slot.lock().unwrap_or_else(PoisonError::into_inner).callback = None;
    }

    /// Gives the seat back, waiting at most [`RELEASE_WAIT`] for the server. Idempotent. The
    /// callback, if still set, is told `Released`.
    pub fn release(&self) {
        let seat = self.seat.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(seat) = seat else { return };
        if std::process::id() != self.pid {
            // A forked child: the seat is the parent's, whose thread still heartbeats it.
            std::mem::forget(seat);
            return;
        }
        self.engine.runtime.block_on(async {
            let _ = tokio::time::timeout(RELEASE_WAIT, seat.release()).await;
        });
        if self.shared.set(State::Released) {
            let _ = self.engine.changes.send((self.shared.clone(), State::Released));
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let seat = self.seat.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if std::process::id() != self.pid {
            std::mem::forget(seat);
        }
        // Otherwise dropping the Seat releases it from the heartbeat thread.
    }
}

fn cached(serial: &Serial) -> Option<CachedKeys> {
    KEYS.lock().unwrap_or_else(PoisonError::into_inner).iter().find(|k| k.serial == *serial).cloned()
}

fn remember(keys: CachedKeys) {
    let mut all = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    all.retain(|k| k.serial != keys.serial);
    all.push(keys);
}

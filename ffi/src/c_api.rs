//! The C functions of `lic_udp.h`. cbindgen reads this file alone (tests/header.rs), so every
//! type and constant the header shows is declared here.
//!
//! A `lu_seat *` is a number the library hands out, never a pointer it follows: every call
//! looks it up in a table of live seats, so a released, stale or made-up handle gets 64 (or is
//! ignored by `lu_release`) instead of touching freed memory, and two threads releasing one
//! handle free it once.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lic_udp::exit_code;

use crate::holder::{Error, Holder, Request, State};

/// Seat granted (`lu_acquire`), or the call did its job.
pub const LU_OK: c_int = 0;
/// All seats of the license are in use, or the server is busy: try again later.
pub const LU_FULL: c_int = 1;
/// The license is unknown, revoked or expired, or the serial is wrong.
pub const LU_LICENSE: c_int = 2;
/// No server answered within the timeout, or the server name does not resolve.
pub const LU_UNREACHABLE: c_int = 3;
/// A bad argument: NULL where a value is needed, text that is not UTF-8, a malformed serial or
/// server, an unknown or released seat handle, or no serial and no activation file.
pub const LU_BAD_ARGUMENT: c_int = 64;
/// The activation file cannot be read, or the library cannot start its thread.
pub const LU_IO: c_int = 74;
/// A bug in the library (a caught panic); `lu_last_error` says where.
pub const LU_INTERNAL: c_int = 70;

/// Granted and renewed by heartbeats.
pub const LU_STATE_HELD: c_int = 0;
/// No acknowledgement for a whole lease TTL; the library keeps trying to regain the seat.
pub const LU_STATE_LOST: c_int = 1;
/// The license was revoked or expired (final until `lu_release`).
pub const LU_STATE_ENDED: c_int = 2;
/// Given back (final).
pub const LU_STATE_RELEASED: c_int = 3;

/// A seat held by this process. Opaque: only ever passed back to the library.
pub struct lu_seat {
    _private: [u8; 0],
}

/// What the server said when it granted the seat.
#[repr(C)]
pub struct lu_grant {
    /// The lease, as `lic-udp status` shows it (hex); the same across server restarts.
    pub lease_id: u64,
    /// Seats in use, this one included, at the grant.
    pub used: u16,
    /// Seats of the license.
    pub seats: u16,
    /// The lease TTL: a seat not renewed for this long is lost.
    pub ttl_ms: u32,
    /// How often the library heartbeats.
    pub heartbeat_ms: u32,
}

/// Called on the library's callback thread with the seat's new `LU_STATE_*`. It may call any
/// `lu_` function, `lu_release` of this seat included; it should return soon, since callbacks
/// of all seats share that thread (heartbeats do not). NULL where a callback is optional.
pub type lu_state_cb = Option<extern "C" fn(seat: *const lu_seat, state: c_int, user_data: *mut c_void)>;

/// Live handles: the value the caller holds, and the holder behind it.
static SEATS: Mutex<Option<HashMap<usize, Arc<Holder>>>> = Mutex::new(None);
/// Handles are never reused, so a stale one cannot name a newer seat.
static NEXT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Takes a seat of the license and starts heartbeating it on the library's thread.
///
/// `serial`: the 10-digit serial (dashes and spaces are fine), or NULL for the activation file
/// (`lic-udp activate`). `servers`: `HOST[:PORT][,HOST[:PORT]…]`, or NULL for the CLI's
/// default (`$LIC_UDP_SERVER`, the activated server, `127.0.0.1:7301`). `timeout_ms`: give up
/// after this long; 0 for the retransmit schedule (about 23 s with no answer). On `LU_OK`,
/// `*out` is the seat, to be given to `lu_release`; otherwise `*out` is NULL and
/// `lu_last_error()` says why. Blocks the calling thread only.
///
/// # Safety
/// `serial` and `servers` are NULL or NUL-terminated strings; `out` is NULL or points to
/// writable storage for one `lu_seat *`.
#[no_mangle]
pub unsafe extern "C" fn lu_acquire(
    serial: *const c_char,
    servers: *const c_char,
    timeout_ms: u32,
    out: *mut *mut lu_seat,
) -> c_int {
    guard("lu_acquire", || {
        if out.is_null() {
            return Err(Error::new(LU_BAD_ARGUMENT, "lu_acquire: `out` is NULL"));
        }
        // SAFETY: `out` is not NULL, and the caller passes a pointer to writable `lu_seat *`
        // storage (the header's contract); clearing it first means no failure path leaves
        // garbage there.
        unsafe { out.write(std::ptr::null_mut()) };
        let serial = text(serial, "serial")?;
        let servers = text(servers, "servers")?;
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
        let holder = Holder::acquire(&Request { serial, servers, timeout })?;
        let id = NEXT.fetch_add(1, Ordering::Relaxed) << 4;
        SEATS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .insert(id, Arc::new(holder));
        // SAFETY: as above; the value is a handle number, never dereferenced by anyone.
        unsafe { out.write(id as *mut lu_seat) };
        Ok(LU_OK)
    })
}

/// The seat's `LU_STATE_*`, or `LU_BAD_ARGUMENT` for NULL or a handle that is not live.
#[no_mangle]
pub extern "C" fn lu_seat_state(seat: *const lu_seat) -> c_int {
    guard("lu_seat_state", || Ok(state_code(lookup(seat)?.state())))
}

/// Fills `*out` with what the server said at the grant. `LU_OK`, or `LU_BAD_ARGUMENT`.
///
/// # Safety
/// `out` is NULL or points to writable storage for one `lu_grant`.
#[no_mangle]
pub unsafe extern "C" fn lu_seat_grant(seat: *const lu_seat, out: *mut lu_grant) -> c_int {
    guard("lu_seat_grant", || {
        let i = lookup(seat)?.info();
        if out.is_null() {
            return Err(Error::new(LU_BAD_ARGUMENT, "lu_seat_grant: `out` is NULL"));
        }
        let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let info = lu_grant {
            lease_id: i.lease_id,
            used: i.used,
            seats: i.seats,
            ttl_ms: millis(i.ttl),
            heartbeat_ms: millis(i.heartbeat),
        };
        // SAFETY: `out` is not NULL and points to an `lu_grant` the caller owns (the
        // header's contract); `write` does not read the old, possibly uninitialised value.
        unsafe { out.write(info) };
        Ok(LU_OK)
    })
}

/// Calls `cb(seat, state, user_data)` on each change of the seat's state, from the library's
/// callback thread; NULL `cb` removes it. Once this returns, the previous callback is not
/// running (unless this is called from inside it) and is never called again; the same holds
/// for `lu_release`, so `user_data` may be freed after either. `user_data` is used from the
/// library's thread. `LU_OK`, or `LU_BAD_ARGUMENT`.
#[no_mangle]
pub extern "C" fn lu_seat_on_change(seat: *mut lu_seat, cb: lu_state_cb, user_data: *mut c_void) -> c_int {
    guard("lu_seat_on_change", || {
        let holder = lookup(seat)?;
        let callback = cb.map(|f| {
            let data = UserData(user_data);
            let handle = seat as usize;
            Arc::new(move |s: State| f(handle as *const lu_seat, state_code(s), data.get()))
                as crate::holder::Callback
        });
        holder.set_callback(callback);
        Ok(LU_OK)
    })
}

/// Gives the seat back (waiting at most 1 s for the server to confirm; it frees the seat when
/// the lease expires otherwise) and frees the handle. NULL, or a handle already released, is
/// a no-op. No callback of this seat runs after it returns.
#[no_mangle]
pub extern "C" fn lu_release(seat: *mut lu_seat) {
    guard("lu_release", || {
        let removed = SEATS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .and_then(|m| m.remove(&(seat as usize)));
        if let Some(holder) = removed {
            holder.set_callback(None);
            holder.release();
        }
        Ok(LU_OK)
    });
}

/// A sentence for a return code (an `LU_*` value or an exit code of the CLI). Static storage.
#[no_mangle]
pub extern "C" fn lu_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        LU_OK => c"success",
        LU_FULL => c"all seats of the license are in use (or the server is busy); try again later",
        LU_LICENSE => c"the license is unknown, revoked or expired, or the serial is wrong",
        LU_UNREACHABLE => c"no license server answered (is it running, and is UDP allowed through?)",
        LU_BAD_ARGUMENT => c"bad argument (NULL, not UTF-8, a malformed serial or server, a released seat, or no serial and no activation file)",
        LU_INTERNAL => c"internal error in the license library (a bug; see lu_last_error())",
        LU_IO => c"cannot read the activation file, or cannot start the library's thread",
        exit_code::NO_DATA => c"the data dir does not exist",
        exit_code::CONFIG => c"the server's configuration is invalid",
        _ => c"unknown error code",
    };
    s.as_ptr()
}

/// Why the last `lu_` call on this thread failed (the message the CLI would print, e.g. "all 2
/// seats of this license are in use; try again later"), or "" if it did not. Valid until the
/// next `lu_` call on this thread.
#[no_mangle]
pub extern "C" fn lu_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library's version, e.g. "0.1.0". Static storage.
#[no_mangle]
pub extern "C" fn lu_version() -> *const c_char {
    const V: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    V.as_ptr()
}

fn state_code(s: State) -> c_int {
    match s {
        State::Held => LU_STATE_HELD,
        State::Lost => LU_STATE_LOST,
        State::Ended => LU_STATE_ENDED,
        State::Released => LU_STATE_RELEASED,
    }
}

fn lookup(seat: *const lu_seat) -> Result<Arc<Holder>, Error> {
    let found = SEATS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|m| m.get(&(seat as usize)).cloned());
    found.ok_or_else(|| {
        Error::new(
            LU_BAD_ARGUMENT,
            format!("{seat:p} is not a seat of this process (NULL, released, or never acquired)"),
        )
    })
}

/// A C string argument: NULL is `None` (the default), anything else must be UTF-8.
fn text<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL; the header's contract is a NUL-terminated string that stays valid for
    // the call, which is as long as the returned borrow is used (Holder::acquire copies it).
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map(Some).map_err(|_| Error::new(LU_BAD_ARGUMENT, format!("`{what}` is not UTF-8 text")))
}

/// Runs `f`, turning a panic into `LU_INTERNAL` (no unwinding crosses into C) and keeping the
/// message of a failure for `lu_last_error`.
fn guard(name: &str, f: impl FnOnce() -> Result<c_int, Error>) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::new(LU_INTERNAL, format!("{name}: internal error: {what}")))
    });
    let (code, message) = match result {
        Ok(code) => (code, String::new()),
        Err(e) => (e.code, e.message),
    };
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
    code
}

/// The caller's `user_data`, handed back to its callback on the library's thread.
struct UserData(*mut c_void);

// SAFETY: the library never dereferences the pointer; it only passes it back to the caller's
// callback, and `lu_seat_on_change` documents that this happens on the library's thread.
unsafe impl Send for UserData {}
// SAFETY: as for Send: shared references only copy the pointer value.
unsafe impl Sync for UserData {}

impl UserData {
    fn get(&self) -> *mut c_void {
        self.0
    }
}

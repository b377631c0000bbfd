//! The `lic_udp` Python module: a thin layer over the C library's holder (ffi/src/holder.rs),
//! so Python programs get the same heartbeats, re-acquisition and defaults as C and Rust ones.
//!
//! The GIL is released for every call that may wait on the network (acquire, release) and for
//! replacing a callback, which may wait for the callback thread; that thread takes the GIL only
//! to call the Python callback.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use licudp::holder::{Error, Holder, Request, State};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

/// Python callbacks run on the library's thread, which must not take the GIL once the
/// interpreter is finalizing (CPython aborts). An `atexit` hook closes this gate and waits for
/// the callbacks already inside; later ones are skipped.
static GATE: Mutex<Gate> = Mutex::new(Gate { closed: false, inside: 0 });
static GATE_EMPTY: Condvar = Condvar::new();

struct Gate {
    closed: bool,
    inside: usize,
}

/// A callback inside the gate; leaving (even by unwinding) lets `close_callbacks` go on.
struct Inside;

impl Inside {
    fn enter() -> Option<Self> {
        let mut g = GATE.lock().unwrap_or_else(PoisonError::into_inner);
        if g.closed {
            return None;
        }
        g.inside += 1;
        Some(Self)
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        GATE.lock().unwrap_or_else(PoisonError::into_inner).inside -= 1;
        GATE_EMPTY.notify_all();
    }
}

/// Registered with `atexit`: no callback enters Python after this returns.
#[pyfunction]
fn _close_callbacks(py: Python<'_>) {
    py.allow_threads(|| {
        let mut g = GATE.lock().unwrap_or_else(PoisonError::into_inner);
        g.closed = true;
        while g.inside > 0 {
            g = GATE_EMPTY.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    });
}

create_exception!(
    lic_udp,
    LicenseError,
    PyException,
    "No seat was granted. The message says why and what to do; `code` is the CLI's exit code."
);
create_exception!(
    lic_udp,
    SeatsFull,
    LicenseError,
    "All seats of the license are in use (or the server is busy): try again later. Exit code 1."
);
create_exception!(
    lic_udp,
    UnknownLicense,
    LicenseError,
    "The license is unknown, revoked or expired, or the serial is wrong. Exit code 2."
);
create_exception!(
    lic_udp,
    Unreachable,
    LicenseError,
    "No license server answered within the timeout, or its name does not resolve. Exit code 3."
);

/// A seat of a license, held while this object is (heartbeats run on the library's thread).
///
/// `Seat(serial=None, server=None, timeout=None, on_change=None)` blocks until the seat is
/// granted or raises a `LicenseError`. `serial=None` uses the activation file
/// (`lic-udp activate`); `server="HOST[:PORT][,HOST[:PORT]...]"` or None for the CLI's default
/// ($LIC_UDP_SERVER, the activated server, 127.0.0.1:7301); `timeout` in seconds, or None for
/// the retransmit schedule (about 23 s with no answer). Use it as a context manager to release
/// the seat on leaving the block.
#[pyclass(module = "lic_udp", frozen)]
struct Seat {
    holder: Holder,
    /// The callable given, so that reading `on_change` returns it.
    on_change: Mutex<Option<Py<PyAny>>>,
}

impl Drop for Seat {
    /// Dropping the holder releases the seat in the background; its callback must not run
    /// after the object is gone (nor during interpreter shutdown), and waiting for a running
    /// one here, with the GIL held, could deadlock with it.
    fn drop(&mut self) {
        self.holder.forget_callback();
    }
}

#[pymethods]
impl Seat {
    #[new]
    #[pyo3(signature = (serial=None, server=None, timeout=None, on_change=None))]
    fn new(
        py: Python<'_>,
        serial: Option<String>,
        server: Option<String>,
        timeout: Option<f64>,
        on_change: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let timeout = match timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
            Some(t) => {
                return Err(PyValueError::new_err(format!(
                    "timeout is a positive number of seconds, not {t}"
                )))
            }
        };
        let request = Request { serial: serial.as_deref(), servers: server.as_deref(), timeout };
        let holder = py.allow_threads(|| Holder::acquire(&request)).map_err(|e| to_py(py, e))?;
        let seat = Self { holder, on_change: Mutex::new(None) };
        if let Some(cb) = on_change {
            seat.set_on_change(py, Some(cb))?;
        }
        Ok(seat)
    }

    /// "held", "lost" (no answer for a lease TTL; the library is trying to regain it), "ended"
    /// (revoked or expired) or "released".
    #[getter]
    fn state(&self) -> &'static str {
        self.holder.state().name()
    }

    /// Seats in use, this one included, when it was granted.
    #[getter]
    fn used(&self) -> u16 {
        self.holder.info().used
    }

    /// Seats of the license.
    #[getter]
    fn seats(&self) -> u16 {
        self.holder.info().seats
    }

    /// The lease, as `lic-udp status` shows it (16 hex digits); the same across server restarts.
    #[getter]
    fn lease_id(&self) -> String {
        format!("{:016x}", self.holder.info().lease_id)
    }

    /// Called as `on_change(state)` with each new state, from the library's thread (with the
    /// GIL). None removes it. Exceptions it raises are reported as unraisable. Callbacks stop
    /// when the interpreter exits (atexit), so a change just before exit may go unreported.
    #[getter]
    fn on_change(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.on_change.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|c| c.clone_ref(py))
    }

    #[setter]
    fn set_on_change(&self, py: Python<'_>, cb: Option<Py<PyAny>>) -> PyResult<()> {
        if let Some(cb) = &cb {
            if !cb.bind(py).is_callable() {
                return Err(PyValueError::new_err("on_change must be callable, or None"));
            }
        }
        *self.on_change.lock().unwrap_or_else(PoisonError::into_inner) = cb.as_ref().map(|c| c.clone_ref(py));
        let callback = cb.map(|cb| {
            Arc::new(move |s: State| {
                let Some(_inside) = Inside::enter() else { return };
                Python::with_gil(|py| {
                    if let Err(e) = cb.call1(py, (s.name(),)) {
                        e.write_unraisable(py, None);
                    }
                })
            }) as licudp::holder::Callback
        });
        py.allow_threads(|| self.holder.set_callback(callback));
        Ok(())
    }

    /// Gives the seat back (waiting at most 1 s for the server). Idempotent.
    fn release(&self, py: Python<'_>) {
        py.allow_threads(|| self.holder.release());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.release(py);
        false
    }

    fn __repr__(&self) -> String {
        let i = self.holder.info();
        format!(
            "<lic_udp.Seat {} lease={:016x} used={} seats={}>",
            self.holder.state().name(),
            i.lease_id,
            i.used,
            i.seats
        )
    }
}

fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let err = match e.code {
        1 => SeatsFull::new_err(e.message),
        2 => UnknownLicense::new_err(e.message),
        3 => Unreachable::new_err(e.message),
        _ => LicenseError::new_err(e.message),
    };
    // Setting an attribute on a fresh exception object does not fail in practice; if it did,
    // the exception without `code` is still the right one to raise.
    let _ = err.value(py).setattr("code", e.code);
    err
}

/// Take, keep and give back a lic-udp floating-license seat.
#[pymodule]
fn lic_udp(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Seat>()?;
    m.add("LicenseError", py.get_type::<LicenseError>())?;
    m.add("SeatsFull", py.get_type::<SeatsFull>())?;
    m.add("UnknownLicense", py.get_type::<UnknownLicense>())?;
    m.add("Unreachable", py.get_type::<Unreachable>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let close = wrap_pyfunction!(_close_callbacks, m)?;
    py.import("atexit")?.call_method1("register", (close,))?;
    Ok(())
}

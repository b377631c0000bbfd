//! systemd readiness (`Type=notify`): the unit counts the server as started once the socket
//! is bound and the store loaded, not when the process was forked, so `systemctl start` returns
//! when clients can get seats and ordering on `lic-udp.service` means something. Outside
//! systemd (`$NOTIFY_SOCKET` unset) every call does nothing.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    // Not unsetting $NOTIFY_SOCKET: a reload sends again later. Children of `serve` are none.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify: {e}");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// Before rereading the site file; [`ready`] after. systemd shows the unit as "reloading"
/// meanwhile, and `systemctl reload` waits for the READY that ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

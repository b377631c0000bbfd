//! Batched UDP on Linux: `recvmmsg` and `sendmmsg` move up to [`BATCH`] datagrams per system
//! call. The kernel's UDP path, not the protocol work, is what limits heartbeat throughput, so
//! fewer system calls per datagram is where the speed is. Safe wrappers from `nix`.
//!
//! Nothing here allocates once [`RecvBufs`] and [`SendBufs`] exist: the per-call iovecs and
//! addresses live on the stack, the message headers are kept from call to call.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::sys::socket::{
    recvmmsg, sendmmsg, setsockopt, sockopt, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};

use crate::proto::wire::MAX_REPLY;

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Receive buffer per datagram: larger than any valid datagram, so an oversize one is seen as
/// oversize (and dropped by the core) rather than truncated to a valid length.
pub const SLOT: usize = 256;
/// The socket buffers the server asks for (proto-spec.md §10, "Flooding"). Linux charges each
/// queued datagram its buffer's true size (about 830 bytes for a 48-byte heartbeat on
/// loopback), so the default 208 KiB receive buffer holds only about 250 datagrams: a couple of
/// milliseconds of a one-core flood, less than one scheduler time slice of the IO thread. 4 MiB
/// (the kernel doubles it for its bookkeeping) holds about 10,000, tens of milliseconds.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// IPv4 clients of a dual-stack socket come out as IPv4 ([`super::listen::canonical`]).
fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6().map(|v6| super::listen::canonical(SocketAddr::V6(SocketAddrV6::from(*v6))))
}

/// The receive and send buffer sizes the kernel granted, in bytes (as `getsockopt` reports
/// them, that is doubled).
#[derive(Clone, Copy, Debug)]
pub struct BufferSizes {
    pub recv: usize,
    pub send: usize,
}

/// Asks for [`SOCKET_BUFFER`]-sized receive and send buffers. An unprivileged process gets at
/// most `net.core.rmem_max` / `wmem_max`; a process with CAP_NET_ADMIN (root) may go past them
/// with SO_RCVBUFFORCE / SO_SNDBUFFORCE, which is tried when the plain option fell short.
/// Failures are not errors: the socket keeps whatever it had.
pub fn enlarge_buffers(socket: &UdpSocket) -> BufferSizes {
    let fd = socket.as_fd();
    let want = SOCKET_BUFFER;
    let _ = setsockopt(&fd, sockopt::RcvBuf, &want);
    if nix::sys::socket::getsockopt(&fd, sockopt::RcvBuf).is_ok_and(|got| got < 2 * want) {
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &want);
    }
    let _ = setsockopt(&fd, sockopt::SndBuf, &want);
    if nix::sys::socket::getsockopt(&fd, sockopt::SndBuf).is_ok_and(|got| got < 2 * want) {
        let _ = setsockopt(&fd, sockopt::SndBufForce, &want);
    }
    BufferSizes {
        recv: nix::sys::socket::getsockopt(&fd, sockopt::RcvBuf).unwrap_or(0),
        send: nix::sys::socket::getsockopt(&fd, sockopt::SndBuf).unwrap_or(0),
    }
}

/// Reusable buffers for [`recv`].
pub struct RecvBufs {
    headers: MultiHeaders<SockaddrStorage>,
    data: Box<[[u8; SLOT]; BATCH]>,
    /// (length, source, truncated) of each datagram of the last batch.
    pub got: Vec<(usize, SocketAddr, bool)>,
}

impl RecvBufs {
    pub fn new() -> Self {
        Self {
            headers: MultiHeaders::preallocate(BATCH, None),
            data: Box::new([[0u8; SLOT]; BATCH]),
            got: Vec::with_capacity(BATCH),
        }
    }

    pub fn datagram(&self, i: usize) -> &[u8] {
        match (self.got.get(i), self.data.get(i)) {
            (Some(&(n, _, _)), Some(d)) => d.get(..n).unwrap_or_default(),
            _ => &[],
        }
    }
}

/// Blocks until at least one datagram is queued (or the socket's read timeout passes: then
/// 0), then takes what is queued, up to [`BATCH`] (`MSG_WAITFORONE`). Returns how many; their
/// details are in `bufs.got`. A busy server makes one system call per batch, and an idle one
/// sleeps in the same call that then receives.
pub fn recv(socket: &UdpSocket, bufs: &mut RecvBufs) -> std::io::Result<usize> {
    bufs.got.clear();
    let mut iovs = bufs.data.each_mut().map(|d| [IoSliceMut::new(&mut d[..])]);
    let results = match recvmmsg(
        socket.as_raw_fd(),
        &mut bufs.headers,
        iovs.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    ) {
        Ok(r) => r,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    for m in results {
        let Some(src) = m.address.as_ref().and_then(to_std) else { continue };
        bufs.got.push((m.bytes, src, m.flags.contains(MsgFlags::MSG_TRUNC)));
    }
    Ok(bufs.got.len())
}

/// The read timeout to set for a wanted wait: rounded *down* to 1, 2, 4, 8, 16 or 32 ms, or
/// `max`. Waking a little early is harmless (the caller just loops), and with so few distinct
/// values the timeout changes, and costs a `setsockopt`, only a few times per deadline rather
/// than on every batch.
pub fn timeout_step(want: Duration, max: Duration) -> Duration {
    if want >= max {
        return max;
    }
    let ms = want.as_millis().clamp(1, 32);
    let pow = 1u64 << (127 - ms.leading_zeros()).min(5);
    Duration::from_millis(pow)
}

/// One reply waiting to be sent: destination, bytes, length.
pub type Out = (SocketAddr, [u8; MAX_REPLY], usize);

/// Reusable message headers for [`send`].
pub struct SendBufs {
    headers: MultiHeaders<SockaddrStorage>,
    /// Destinations of the chunk being sent: kept from call to call, and only as long as the
    /// chunk (a 64-entry array built on every call wrote 8 KiB however few replies there were).
    addrs: Vec<Option<SockaddrStorage>>,
}

impl SendBufs {
    pub fn new() -> Self {
        Self { headers: MultiHeaders::preallocate(BATCH, None), addrs: Vec::with_capacity(BATCH) }
    }
}

/// Sends every `(destination, bytes)` with as few system calls as possible. A datagram the
/// kernel refuses is dropped, as the network could have dropped it.
pub fn send(socket: &UdpSocket, bufs: &mut SendBufs, out: &[Out]) {
    let mut rest = out;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH)];
        let slices: [[IoSlice<'_>; 1]; BATCH] =
            std::array::from_fn(|i| [IoSlice::new(chunk.get(i).map_or(&[][..], |(_, b, n)| &b[..*n]))]);
        bufs.addrs.clear();
        bufs.addrs.extend(chunk.iter().map(|(a, _, _)| Some(SockaddrStorage::from(*a))));
        let cmsgs: [ControlMessage<'_>; 0] = [];
        let sent = match sendmmsg(
            socket.as_raw_fd(),
            &mut bufs.headers,
            &slices[..chunk.len()],
            &bufs.addrs,
            cmsgs,
            MsgFlags::empty(),
        ) {
            Ok(r) => r.count(),
            Err(e) => {
                tracing::debug!("sendmmsg: {e}");
                0
            }
        };
        // Skip what was sent, or the one datagram that failed, and go on.
        rest = &rest[sent.max(1).min(rest.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_steps_round_down_to_few_values() {
        let max = Duration::from_millis(50);
        let ms = Duration::from_millis;
        assert_eq!(timeout_step(Duration::ZERO, max), ms(1));
        assert_eq!(timeout_step(Duration::from_micros(1_900), max), ms(1));
        assert_eq!(timeout_step(ms(3), max), ms(2));
        assert_eq!(timeout_step(ms(31), max), ms(16));
        assert_eq!(timeout_step(ms(49), max), ms(32));
        assert_eq!(timeout_step(ms(50), max), max);
        assert_eq!(timeout_step(ms(250), max), max);
        let distinct: std::collections::BTreeSet<_> = (0..300).map(|m| timeout_step(ms(m), max)).collect();
        assert_eq!(distinct.len(), 7);
    }
}

//! Batched UDP on Linux: `recvmmsg` and `sendmmsg` move up to [`BATCH`] datagrams per system
//! call. The kernel's UDP path, not the protocol work, is what limits heartbeat throughput, so
//! fewer system calls per datagram is where the speed is. Safe wrappers from `nix`.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Receive buffer per datagram: larger than any valid datagram, so an oversize one is seen as
/// oversize (and dropped by the core) rather than truncated to a valid length.
pub const SLOT: usize = 256;

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Reusable buffers for [`recv`].
pub struct RecvBufs {
    headers: MultiHeaders<SockaddrStorage>,
    data: Vec<[u8; SLOT]>,
    /// (length, source, truncated) of each datagram of the last batch.
    pub got: Vec<(usize, SocketAddr, bool)>,
}

impl RecvBufs {
    pub fn new() -> Self {
        Self {
            headers: MultiHeaders::preallocate(BATCH, None),
            data: vec![[0u8; SLOT]; BATCH],
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

/// Blocks until at least one datagram arrives (or the socket's read timeout passes), then takes
/// what is queued, up to [`BATCH`]. Returns how many; their details are in `bufs.got`.
pub fn recv(socket: &UdpSocket, bufs: &mut RecvBufs) -> std::io::Result<usize> {
    bufs.got.clear();
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
        bufs.data.iter_mut().map(|d| [IoSliceMut::new(&mut d[..])]).collect();
    let results =
        recvmmsg(socket.as_raw_fd(), &mut bufs.headers, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None)
            .map_err(std::io::Error::from)?;
    for m in results {
        let Some(src) = m.address.as_ref().and_then(to_std) else { continue };
        bufs.got.push((m.bytes, src, m.flags.contains(MsgFlags::MSG_TRUNC)));
    }
    Ok(bufs.got.len())
}

/// Sends every `(destination, bytes)` with as few system calls as possible. A datagram the
/// kernel refuses is dropped, as the network could have dropped it.
pub fn send(socket: &UdpSocket, out: &[(SocketAddr, [u8; crate::proto::wire::MAX_DATAGRAM], usize)]) {
    let mut rest = out;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH)];
        let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(_, b, n)| [IoSlice::new(&b[..*n])]).collect();
        let addrs: Vec<Option<SockaddrStorage>> =
            chunk.iter().map(|(a, _, _)| Some(SockaddrStorage::from(*a))).collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
        let cmsgs: [ControlMessage<'_>; 0] = [];
        let sent = match sendmmsg(socket.as_raw_fd(), &mut headers, &slices, &addrs, cmsgs, MsgFlags::empty())
        {
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

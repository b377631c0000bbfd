//! Batched UDP IO: up to [`BATCH`] datagrams per `recvmmsg(2)` / `sendmmsg(2)`, through nix's
//! safe wrappers. Used by the generator's heartbeat workers and the in-process echo responder,
//! where one system call per datagram would cost more than everything else they do.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::RawFd;

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

/// Datagrams per system call.
pub const BATCH: usize = 64;

/// `BATCH` buffers of `N` bytes with their lengths and peer addresses, and the two header
/// arrays the kernel fills. Receive and send headers are kept apart: nix's `sendmmsg` points
/// the headers at the caller's addresses, which a later `recvmmsg` on the same headers would
/// then write through.
pub struct Batch<const N: usize> {
    pub bufs: Box<[[u8; N]; BATCH]>,
    pub lens: [usize; BATCH],
    pub addrs: [Option<SockaddrStorage>; BATCH],
    recv_hdrs: MultiHeaders<SockaddrStorage>,
    send_to_hdrs: MultiHeaders<SockaddrStorage>,
    send_hdrs: MultiHeaders<()>,
}

const NO_ADDR: [Option<()>; BATCH] = [None; BATCH];

impl<const N: usize> Batch<N> {
    pub fn new() -> Self {
        Self {
            bufs: Box::new([[0u8; N]; BATCH]),
            lens: [0; BATCH],
            addrs: [None; BATCH],
            recv_hdrs: MultiHeaders::preallocate(BATCH, None),
            send_to_hdrs: MultiHeaders::preallocate(BATCH, None),
            send_hdrs: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Receives up to [`BATCH`] datagrams into `bufs`, setting `lens` and `addrs`; returns how
    /// many. With `MSG_WAITFORONE` it blocks (up to the socket's read timeout) for the first
    /// only; with `MSG_DONTWAIT` it does not block at all.
    pub fn recv(&mut self, fd: RawFd, flags: MsgFlags) -> nix::Result<usize> {
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            self.bufs.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
        let results = recvmmsg(fd, &mut self.recv_hdrs, iovs.iter_mut(), flags, None)?;
        let mut n = 0;
        for (i, m) in results.enumerate() {
            self.lens[i] = m.bytes;
            self.addrs[i] = m.address;
            n = i + 1;
        }
        Ok(n)
    }

    /// Sends `bufs[i][..lens[i]]` for `i < n` on a connected socket; returns how many left.
    pub fn send(&mut self, fd: RawFd, n: usize) -> nix::Result<usize> {
        let n = n.min(BATCH);
        let bufs = &self.bufs;
        let lens = &self.lens;
        let slices: [[IoSlice<'_>; 1]; BATCH] =
            std::array::from_fn(|i| [IoSlice::new(&bufs[i][..lens[i].min(N)])]);
        let results = sendmmsg(fd, &mut self.send_hdrs, &slices[..n], &NO_ADDR[..n], [], MsgFlags::empty())?;
        Ok(results.count())
    }

    /// Sends `bufs[i][..lens[i]]` to `addrs[i]` for `i < n` (an unconnected socket's replies).
    pub fn send_to(&mut self, fd: RawFd, n: usize) -> nix::Result<usize> {
        let n = n.min(BATCH);
        let bufs = &self.bufs;
        let lens = &self.lens;
        let slices: [[IoSlice<'_>; 1]; BATCH] =
            std::array::from_fn(|i| [IoSlice::new(&bufs[i][..lens[i].min(N)])]);
        let results =
            sendmmsg(fd, &mut self.send_to_hdrs, &slices[..n], &self.addrs[..n], [], MsgFlags::empty())?;
        Ok(results.count())
    }
}

impl<const N: usize> Default for Batch<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_batch_goes_out_and_comes_back() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        a.connect(b.local_addr().expect("addr")).expect("connect");
        b.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        a.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut out = Batch::<64>::new();
        for i in 0..10 {
            out.bufs[i][0] = i as u8;
            out.lens[i] = 48;
        }
        assert_eq!(out.send(a.as_raw_fd(), 10).expect("send"), 10);
        let mut echo = Batch::<2048>::new();
        let mut got = 0;
        while got < 10 {
            let n = echo.recv(b.as_raw_fd(), MsgFlags::MSG_WAITFORONE).expect("recv");
            assert!(n > 0);
            for i in 0..n {
                assert_eq!(echo.lens[i], 48);
                assert_eq!(echo.bufs[i][0], (got + i) as u8);
            }
            assert_eq!(echo.send_to(b.as_raw_fd(), n).expect("echo"), n);
            got += n;
        }
        let mut back = Batch::<64>::new();
        let mut seen = 0;
        while seen < 10 {
            seen += back.recv(a.as_raw_fd(), MsgFlags::MSG_WAITFORONE).expect("recv");
        }
        assert_eq!(seen, 10);
    }
}

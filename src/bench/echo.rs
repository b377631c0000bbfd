//! The in-process echo responder of `bench --spawn --echo`: the physical limit of the path.
//!
//! One dedicated thread, one blocking socket, batches of up to 64 datagrams in and out per
//! system call (`recvmmsg`/`sendmmsg`), and nothing else: no async runtime, no parsing, no
//! allocation per datagram. Whatever the heartbeat server reaches below this, the protocol and
//! the server's IO layer cost.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::MsgFlags;

use super::mmsg::Batch;

/// The echo thread's name, for debuggers and `top -H`.
pub const THREAD_NAME: &str = "lic-bench-echo";

/// A running echo responder on 127.0.0.1. Stops (and joins its thread) on drop.
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start() -> std::io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        // The same socket buffers as the server's, so that the two compare like for like.
        crate::server::enlarge_buffers(&socket);
        // Wakes up now and then to see whether it should stop.
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (s, e) = (stop.clone(), echoed.clone());
        let thread =
            std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || serve(&socket, &s, &e))?;
        Ok(Self { addr, stop, echoed, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams echoed so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &UdpSocket, stop: &AtomicBool, echoed: &AtomicU64) {
    let fd = socket.as_raw_fd();
    let mut batch = Batch::<2048>::new();
    while !stop.load(Ordering::Relaxed) {
        // Blocks for the first datagram only, then takes what is already queued.
        let n = match batch.recv(fd, MsgFlags::MSG_WAITFORONE) {
            Ok(n) => n,
            // Timeout (EAGAIN), or an ICMP error for an earlier reply: neither matters here.
            Err(_) => continue,
        };
        let mut sent = 0;
        while sent < n {
            // After a partial send, the rest moves to the front and goes in the next call.
            match batch.send_to(fd, n - sent) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    sent += k;
                    for i in 0..n - sent {
                        batch.bufs.swap(i, i + k);
                        batch.lens.swap(i, i + k);
                        batch.addrs.swap(i, i + k);
                    }
                }
            }
        }
        echoed.fetch_add(sent as u64, Ordering::Relaxed);
    }
}

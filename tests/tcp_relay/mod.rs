//! A TCP relay for a node's etcd traffic that can blackhole without closing connections: the
//! real shape of "cut off from etcd while its clients still reach it" (a dead switch port, a
//! firewall dropping packets), which a refused connection would not be. Threads, one pair per
//! connection; bounded by the connections a node opens (a few per endpoint).
#![allow(dead_code)] // each test binary uses a different part of this

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct TcpRelay {
    pub addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TcpRelay {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        let addr = listener.local_addr().expect("relay addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let blackhole = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (bh, dr, st) = (blackhole.clone(), dropped.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        let Ok(up) = TcpStream::connect(upstream) else {
                            let _ = down.shutdown(Shutdown::Both);
                            continue;
                        };
                        pipe(&down, &up, &bh, &dr, &st);
                        pipe(&up, &down, &bh, &dr, &st);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, blackhole, dropped, stop }
    }

    /// While on, bytes in both directions are read and thrown away; connections stay open.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Relaxed);
    }

    /// Bytes thrown away so far: the evidence that the cut really cut something.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(
    from: &TcpStream,
    to: &TcpStream,
    bh: &Arc<AtomicBool>,
    dropped: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    let (bh, dropped, stop) = (bh.clone(), dropped.clone(), stop.clone());
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while !stop.load(Ordering::Relaxed) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if bh.load(Ordering::Relaxed) {
                        dropped.fetch_add(n as u64, Ordering::Relaxed);
                    } else if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

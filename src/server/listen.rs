//! Binding the server's UDP socket: dual-stack on `[::]` by default (proto-spec.md §1).
//!
//! One socket for both families keeps the IO thread single and its batches whole: IPv4 clients
//! arrive as IPv4-mapped IPv6 sources (`::ffff:a.b.c.d`), which [`canonical`] turns back into
//! IPv4 so that throttles, the audit log and `status` see the address the client has. Linux
//! sends to an IPv4 destination through a dual-stack socket as plain IPv4 (`udpv6_sendmsg`
//! hands `AF_INET` destinations to the IPv4 path), so replies need no mapping back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn6};

use super::DEFAULT_PORT;

/// `[::]:7301`: every interface, both families.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), DEFAULT_PORT);

/// A bound socket, and why it is not the one asked for when it is not.
pub struct Bound {
    pub socket: std::net::UdpSocket,
    /// Set when `[::]` could not be had (a host without IPv6) and `0.0.0.0` was bound instead:
    /// the caller logs it, since IPv6 clients will then get no answer.
    pub fallback: Option<String>,
}

/// Binds `addr`. For the IPv6 wildcard, the socket takes IPv4 too (IPV6_V6ONLY off, whatever
/// `net.ipv6.bindv6only` says); a host without IPv6 gets `0.0.0.0` on the same port. A
/// specific IPv6 address (`[::1]`) is IPv6-only, as the kernel makes it.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<Bound> {
    let SocketAddr::V6(v6) = addr else {
        return Ok(Bound { socket: std::net::UdpSocket::bind(addr)?, fallback: None });
    };
    if !v6.ip().is_unspecified() {
        return Ok(Bound { socket: std::net::UdpSocket::bind(addr)?, fallback: None });
    }
    match bind_dual_stack(SockaddrIn6::from(v6)) {
        Ok(socket) => Ok(Bound { socket, fallback: None }),
        Err(e) if no_ipv6(e) => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            let socket = std::net::UdpSocket::bind(v4)?;
            let why = format!("this host has no IPv6 ({e}); listening on {v4} (IPv4 only) instead of {addr}");
            Ok(Bound { socket, fallback: Some(why) })
        }
        Err(e) => Err(e.into()),
    }
}

fn bind_dual_stack(addr: SockaddrIn6) -> nix::Result<std::net::UdpSocket> {
    let fd = socket(AddressFamily::Inet6, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(std::net::UdpSocket::from(fd))
}

/// The errors a kernel without IPv6 (or with it disabled) gives for an `AF_INET6` socket.
fn no_ipv6(e: nix::errno::Errno) -> bool {
    use nix::errno::Errno;
    matches!(e, Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL | Errno::EPROTONOSUPPORT)
}

/// An IPv4 client seen through a dual-stack socket, as the IPv4 address it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_sources_become_ipv4_and_others_stay() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().expect("addr");
        assert_eq!(canonical(mapped), "192.0.2.7:4000".parse::<SocketAddr>().expect("addr"));
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().expect("addr");
        assert_eq!(canonical(v6), v6);
        let v4: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        assert_eq!(canonical(v4), v4);
    }

    #[test]
    fn the_wildcard_takes_both_families() {
        let bound = match bind_udp("[::]:0".parse().expect("addr")) {
            Ok(b) => b,
            Err(e) => panic!("cannot bind [::]:0: {e}"),
        };
        let port = bound.socket.local_addr().expect("local").port();
        if bound.fallback.is_some() {
            return; // no IPv6 here: the fallback is what is under test, and it bound
        }
        for to in ["127.0.0.1", "::1"] {
            let ip: IpAddr = to.parse().expect("ip");
            let bind: SocketAddr =
                if ip.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }.parse().expect("addr");
            let Ok(client) = std::net::UdpSocket::bind(bind) else { continue };
            client.send_to(b"x", SocketAddr::new(ip, port)).expect("send");
            let mut buf = [0u8; 4];
            bound.socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
            let (n, from) = bound.socket.recv_from(&mut buf).expect("received over both families");
            assert_eq!((n, canonical(from).ip()), (1, ip));
        }
    }
}

//! `serve` on the wildcard address answers IPv6 and IPv4 clients on one socket (README, "IPv6").

mod common;

use common::*;

/// A port free on both `[::]` and `0.0.0.0` right now.
fn free_dual_port() -> u16 {
    for _ in 0..100 {
        let port = free_udp_port_below_ephemeral_range();
        if std::net::UdpSocket::bind(("::", port)).is_ok()
            && std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no UDP port free on both [::] and 0.0.0.0");
}

#[test]
fn the_default_style_listen_answers_over_ipv6_and_ipv4() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", None);
    // A bare port, as `--listen` takes it, is the default address's wildcard on that port.
    let port = free_dual_port().to_string();
    let (_server, line) = start_serve(dir.path(), &port, &[]);
    assert!(line.contains(&format!("udp://[::]:{port}")), "dual-stack wildcard, not IPv4 only: {line}");

    for server in [format!("[::1]:{port}"), format!("127.0.0.1:{port}")] {
        let o = output(lic(&["verify", "--serial", &serial, "--server", &server, "--timeout", "10s"]));
        assert_eq!(code(&o), 0, "verify --server {server}: {}", text(&o.stderr));
        assert!(text(&o.stdout).contains("seat granted"), "{}", text(&o.stdout));
    }

    // The audit log names each client by the address it used: the IPv4 one as IPv4, not as
    // the IPv4-mapped IPv6 address the dual-stack socket saw.
    let d = dir.path().to_str().expect("utf8");
    let log = text(&output(lic(&["log", "--csv", "--data-dir", d])).stdout);
    let grants: Vec<&str> = log.lines().filter(|l| l.contains(",grant,")).collect();
    assert_eq!(grants.len(), 2, "{log}");
    assert!(grants[0].contains(",[::1]:"), "{log}");
    assert!(grants[1].contains(",127.0.0.1:") && !log.contains("::ffff:"), "{log}");
}

#[test]
fn help_names_the_dual_stack_default() {
    let o = output(lic(&["serve", "--help"]));
    assert!(text(&o.stdout).contains("[default: [::]:7301]"), "{}", text(&o.stdout));
}

//! `contrib/wireshark/lic_udp.lua` read by tshark over a capture of a real exchange.
//!
//! The capture is recorded in-process, not with `tshark -i lo`: a relay between the library
//! client and the real server logs every datagram it forwards, and the test writes them to a
//! pcap file with IPv4/UDP headers of its own. That needs no capture privilege, cannot pick up
//! other processes' loopback traffic, and has no "is the capture running yet" race; the bytes
//! are exactly those the real client and server sent. Two crafted datagrams (bad magic, bad
//! length) are appended to check that the dissector flags them.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use lic_udp::proto::keys::{derive_license_keys, KdfParams};
use lic_udp::{AcquireError, Client, Serial};
use tokio::net::UdpSocket;

type Log = Arc<Mutex<Vec<(SocketAddr, SocketAddr, Vec<u8>)>>>;

/// A relay on 127.0.0.1 that gives each client its own upstream socket and logs every datagram
/// of the upstream leg (the one the server sees) as (from, to, bytes).
async fn relay(server: SocketAddr, log: Log) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
    let addr = front.local_addr().expect("relay addr");
    tokio::spawn(async move {
        let mut ups: std::collections::HashMap<SocketAddr, Arc<UdpSocket>> = Default::default();
        let mut buf = [0u8; 512];
        while let Ok((n, client)) = front.recv_from(&mut buf).await {
            let up = match ups.get(&client) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream"));
                    u.connect(server).await.expect("connect upstream");
                    let (u2, front2, log2) = (u.clone(), front.clone(), log.clone());
                    tokio::spawn(async move {
                        let me = u2.local_addr().expect("upstream addr");
                        let mut b = [0u8; 512];
                        while let Ok(m) = u2.recv(&mut b).await {
                            log2.lock().expect("log").push((server, me, b[..m].to_vec()));
                            let _ = front2.send_to(&b[..m], client).await;
                        }
                    });
                    ups.insert(client, u.clone());
                    u
                }
            };
            log.lock().expect("log").push((
                up.local_addr().expect("upstream addr"),
                server,
                buf[..n].to_vec(),
            ));
            let _ = up.send(&buf[..n]).await;
        }
    });
    addr
}

fn ipv4(a: SocketAddr) -> [u8; 4] {
    match a {
        SocketAddr::V4(v4) => v4.ip().octets(),
        SocketAddr::V6(_) => Ipv4Addr::LOCALHOST.octets(),
    }
}

/// A pcap file (LINKTYPE_RAW: each packet an IPv4 header, a UDP header, the datagram).
fn pcap(packets: &[(SocketAddr, SocketAddr, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0xa1b2_c3d4u32.to_le_bytes().to_vec(), 2u16.to_le_bytes().to_vec(), 4u16.to_le_bytes().to_vec()]
    {
        out.extend(v);
    }
    for v in [0u32, 0, 65_535, 101] {
        out.extend(v.to_le_bytes());
    }
    for (i, (from, to, data)) in packets.iter().enumerate() {
        let udp_len = u16::try_from(8 + data.len()).expect("small");
        let mut ip = vec![0x45, 0];
        ip.extend((20 + udp_len).to_be_bytes());
        ip.extend(u16::try_from(i).expect("few").to_be_bytes());
        ip.extend([0x40, 0, 64, 17, 0, 0]);
        ip.extend(ipv4(*from));
        ip.extend(ipv4(*to));
        let sum: u32 = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
        let sum = (sum & 0xffff) + (sum >> 16);
        let check = !u16::try_from((sum & 0xffff) + (sum >> 16)).expect("folded");
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        let mut pkt = ip;
        pkt.extend(from.port().to_be_bytes());
        pkt.extend(to.port().to_be_bytes());
        pkt.extend(udp_len.to_be_bytes());
        pkt.extend([0, 0]); // no UDP checksum (allowed over IPv4)
        pkt.extend(data);
        let n = u32::try_from(pkt.len()).expect("small");
        for v in [1_700_000_000 + u32::try_from(i).expect("few"), 0, n, n] {
            out.extend(v.to_le_bytes());
        }
        out.extend(pkt);
    }
    out
}

#[test]
#[cfg_attr(missing_tshark, ignore = "needs tshark (apt-get install tshark)")]
fn tshark_names_every_type_and_the_ids_of_a_real_exchange() {
    if !tools::require(&tools::TSHARK, "tshark_names_every_type_and_the_ids_of_a_real_exchange") {
        return;
    }
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(1));
    let server = ServerProc::start(dir.path(), &["--lease-ttl", "3s", "--heartbeat", "300ms"]);
    let log: Log = Arc::default();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let via = relay(server.addr, log.clone()).await;
        let who = lic_udp::Identity::new("alice", "ws12", "cad", "2.1").expect("identity");
        let client = Client::new(via).with_acquire_timeout(Duration::from_secs(20)).with_identity(Some(who));
        let serial = Serial::parse(&serial).expect("serial");
        // HELLO, CHALLENGE, PROOF_ID, GRANT; then HEARTBEAT and ACK.
        let seat = client.acquire(&serial).await.expect("seat");
        tokio::time::sleep(Duration::from_millis(800)).await;
        // The one seat is taken: DENY, to a client that sends a plain PROOF.
        match client.clone().with_identity(None).acquire(&serial).await {
            Err(AcquireError::Full { .. }) => {}
            other => panic!("expected FULL, got {:?}", other.map(|s| s.info())),
        }
        // HEARTBEAT with RELEASE, ACK RELEASED.
        seat.release().await;
        // A serial this server never issued: UNKNOWN.
        let wrong = Serial::parse("0000000001").expect("serial");
        assert!(matches!(client.acquire(&wrong).await, Err(AcquireError::UnknownLicense(_))));
        // A heartbeat for a lease the server does not have: STALE.
        let raw = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let mut hb = vec![0x4c, 0x55, 1, 3];
        hb.extend(0x1122_3344_5566_7788u64.to_le_bytes());
        hb.resize(48, 0);
        raw.send_to(&hb, via).await.expect("send");
        let mut b = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(5), raw.recv_from(&mut b))
            .await
            .expect("STALE")
            .expect("recv");
    });

    let mut packets = log.lock().expect("log").clone();
    let client_addr = packets[0].0;
    let salt: [u8; 16] = packets
        .iter()
        .find(|(_, _, d)| d.get(3) == Some(&0x81))
        .and_then(|(_, _, d)| d.get(41..57))
        .and_then(|s| s.try_into().ok())
        .expect("a CHALLENGE with the server salt");
    packets.push((client_addr, server.addr, b"XX\x01\x01 not lic-udp".to_vec()));
    packets.push((client_addr, server.addr, vec![0x4c, 0x55, 1, 1, 0, 0]));
    let cap = dir.path().join("cap.pcap");
    std::fs::write(&cap, pcap(&packets)).expect("write pcap");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/wireshark/lic_udp.lua");
    let o = std::process::Command::new("tshark")
        .args(["-X", &format!("lua_script:{script}"), "-r"])
        .arg(&cap)
        .args(["-d", &format!("udp.port=={},lic_udp", server.addr.port())])
        .args(["-T", "fields", "-E", "separator=|", "-E", "occurrence=f"])
        .args(["-e", "lic_udp.type_name", "-e", "lic_udp.lease", "-e", "lic_udp.license_id"])
        .args(["-e", "lic_udp.status", "-e", "lic_udp.reason", "-e", "lic_udp.problem", "-e", "lic_udp.who"])
        .output()
        .expect("run tshark");
    let out = text(&o.stdout);
    assert!(o.status.success(), "tshark failed: {}", text(&o.stderr));
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), packets.len(), "one row per packet:\n{out}");
    let col = |r: &[&str], i: usize| r.get(i).copied().unwrap_or("").to_owned();

    // Every type, named.
    let names: std::collections::BTreeSet<String> = rows.iter().map(|r| col(r, 0)).collect();
    for ty in
        ["HELLO", "CHALLENGE", "PROOF", "PROOF_ID", "GRANT", "DENY", "HEARTBEAT", "ACK", "STALE", "UNKNOWN"]
    {
        assert!(names.contains(ty), "{ty} missing from\n{out}");
    }
    // The license id the client derived from the serial, as the PROOFs carry it.
    let keys =
        derive_license_keys(&Serial::parse(&serial).expect("serial"), &salt, KdfParams::TEST).expect("kdf");
    let license_id = hex::encode(keys.license_id);
    let proofs: Vec<String> =
        rows.iter().filter(|r| col(r, 0).starts_with("PROOF")).map(|r| col(r, 2)).collect();
    // The holder a PROOF_ID names, as `status` shows it.
    assert!(
        rows.iter().any(|r| col(r, 0) == "PROOF_ID" && col(r, 6) == "alice@ws12 (cad 2.1)"),
        "no PROOF_ID naming alice@ws12 (cad 2.1):\n{out}"
    );
    assert!(
        proofs.len() >= 3 && proofs.contains(&license_id),
        "PROOF license ids {proofs:?}, want {license_id}"
    );
    // The lease the server recorded, as `lic-udp log` writes it: granted, then released.
    let d = dir.path().to_str().expect("utf8");
    let audit = text(&output(lic(&["log", "--csv", "--data-dir", d])).stdout);
    let lease = audit
        .lines()
        .find(|l| l.contains(",grant,"))
        .and_then(|l| l.split(',').nth(4))
        .unwrap_or_else(|| panic!("no grant in the audit log:\n{audit}"))
        .to_owned();
    assert!(rows.iter().any(|r| col(r, 0) == "GRANT" && col(r, 1) == lease), "no GRANT of {lease}:\n{out}");
    assert!(
        rows.iter().any(|r| col(r, 0) == "ACK" && col(r, 1) == lease && col(r, 3) == "1"),
        "no RELEASED:\n{out}"
    );
    assert!(rows.iter().any(|r| col(r, 0) == "DENY" && col(r, 4) == "1"), "no DENY FULL:\n{out}");
    assert!(rows.iter().any(|r| col(r, 0) == "STALE" && col(r, 1) == "1122334455667788"), "{out}");
    // The two crafted datagrams are flagged, and nothing real is.
    let problems: Vec<String> = rows.iter().map(|r| col(r, 5)).filter(|p| !p.is_empty()).collect();
    assert_eq!(problems, ["bad magic (not lic-udp)", "bad length 6 for HELLO (must be 64)"], "\n{out}");
}

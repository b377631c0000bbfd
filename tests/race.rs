//! Race tests: many clients at once for few seats. The count of grants is exact, every time.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lic_udp::proto::client::{ClientConfig, ClientCore, Event};
use lic_udp::proto::keys::{derive_license_keys, KdfParams, Serial};
use lic_udp::proto::server::{LicenseRecord, Reply, ServerConfig, ServerCore};
use lic_udp::proto::wire::{self, Message, MAX_DATAGRAM};

const SALT: [u8; 16] = [7; 16];

fn core_with_license(seats: u16, serial: &Serial, now: Instant) -> ServerCore {
    let keys = derive_license_keys(serial, &SALT, KdfParams::TEST).expect("kdf");
    let rec = LicenseRecord {
        id: 1,
        keys,
        seats,
        expires_unix: None,
        revoked: false,
        ttl: Duration::from_secs(60),
        heartbeat: Duration::from_secs(15),
    };
    let cfg = ServerConfig {
        server_salt: SALT,
        kdf: KdfParams::TEST,
        epoch: 1,
        ttl_override: None,
        heartbeat_override: None,
        recovery_grace: None,
    };
    ServerCore::new(cfg, vec![rec], vec![], now, [1; 32])
}

/// Walks one client through HELLO/CHALLENGE and returns its PROOF datagram.
fn proof_for(server: &ServerCore, serial: &Serial, i: u16, now: Instant) -> (SocketAddr, Vec<u8>) {
    let src: SocketAddr = format!("127.0.0.1:{}", 20000 + i).parse().expect("addr");
    let mut instance = [0u8; 16];
    instance[..2].copy_from_slice(&i.to_le_bytes());
    let mut client = ClientCore::new(ClientConfig::default(), instance, [i as u8; 32], now);
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut out = [0u8; MAX_DATAGRAM];
    let n = client.poll_transmit(&mut buf).expect("hello");
    let Reply::Send(m) = server.handle(now, 0, src, &buf[..n], &mut out) else { panic!("challenge") };
    client.handle_datagram(now, &out[..m]);
    let Some(Event::NeedKeys { server_salt, params }) = client.poll_event() else { panic!("need keys") };
    client.set_keys(
        now,
        server_salt,
        params,
        derive_license_keys(serial, &server_salt, params).expect("kdf"),
    );
    let n = client.poll_transmit(&mut buf).expect("proof");
    (src, buf[..n].to_vec())
}

/// 200 threads hand their PROOFs to one core at the same instant; exactly 10 get a GRANT.
#[test]
fn two_hundred_concurrent_proofs_get_exactly_ten_seats() {
    let serial = Serial::parse("0123456789").expect("serial");
    for round in 0..10 {
        let now = Instant::now();
        let server = Arc::new(core_with_license(10, &serial, now));
        let proofs: Vec<_> = (0..200u16).map(|i| proof_for(&server, &serial, i, now)).collect();
        let barrier = Arc::new(Barrier::new(proofs.len()));
        let handles: Vec<_> = proofs
            .into_iter()
            .map(|(src, proof)| {
                let (server, barrier) = (server.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut out = [0u8; MAX_DATAGRAM];
                    barrier.wait();
                    // Each PROOF twice: a retransmission must not take a second seat.
                    let a = server.handle(now, 0, src, &proof, &mut out);
                    let first = decode_kind(a, &out);
                    let b = server.handle(now, 0, src, &proof, &mut out);
                    (first, decode_kind(b, &out))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
        let grants = results.iter().filter(|(a, _)| *a == "grant").count();
        let denies = results.iter().filter(|(a, _)| *a == "deny").count();
        assert_eq!(grants, 10, "round {round}");
        assert_eq!(denies, 190, "round {round}");
        for (a, b) in &results {
            assert_eq!(a, b, "a retransmitted PROOF gets the same answer");
        }
        assert_eq!(server.live_leases(), 10);
        assert_eq!(server.seats_in_use().get(&1), Some(&10));
    }
}

fn decode_kind(r: Reply, out: &[u8]) -> &'static str {
    let n = match r {
        Reply::Send(n) | Reply::AfterCommit(n) => n,
        Reply::None => return "none",
    };
    match wire::decode(&out[..n]).map(|f| f.msg) {
        Ok(Message::Grant(_)) => "grant",
        Ok(Message::Deny(_)) => "deny",
        _ => "other",
    }
}

/// The same race through real sockets: 200 `Client::acquire` calls against the real server on
/// 127.0.0.1, over its real store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_over_udp_get_exactly_ten_seats() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("lic-udp.toml"), "[kdf]\nm_kib = 1024\nt = 1\np = 1\n").expect("cfg");
    let mut store = lic_udp::store::Store::open(dir.path()).expect("store");
    store.add_user("alice", "pw", true).expect("user");
    let ty = store.site().get("team").cloned().expect("team");
    let (_, serial) = store.issue("alice", &ty, Some(10), 0).expect("issue");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let (server, info) = lic_udp::server::Server::new(socket, store, Default::default()).expect("server");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    // One client derives the keys; the others reuse them, as an activated install would.
    let first = lic_udp::Client::new(info.addr);
    let seat = first.acquire(&serial).await.expect("first seat");
    let keys = first.cached_keys().expect("keys");
    let mut tasks = Vec::new();
    for _ in 0..199 {
        let c = lic_udp::Client::new(info.addr).with_cached_keys(keys.clone());
        let serial = serial.clone();
        tasks.push(tokio::spawn(async move { c.acquire(&serial).await }));
    }
    let mut seats = vec![seat];
    let mut full = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(s) => seats.push(s),
            Err(lic_udp::AcquireError::Full { seats: 10, .. }) => full += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(seats.len(), 10);
    assert_eq!(full, 190);
    for s in seats {
        s.release().await;
    }
    let _ = stop_tx.send(());
    task.await.expect("join").expect("server ran");
}

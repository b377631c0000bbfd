//! What both benches need: a server core holding `n` leases made through the real handshake.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lic_udp::proto::keys::{derive_license_keys, derive_session_keys, KdfParams, MacKey, Serial};
use lic_udp::proto::server::{LicenseRecord, Reply, ServerConfig, ServerCore};
use lic_udp::proto::wire::{self, Heartbeat, Hello, Message, Proof, MAX_DATAGRAM};

const SALT: [u8; 16] = [3; 16];

pub struct Holder {
    pub src: SocketAddr,
    pub lease_id: u64,
    pub c2s: MacKey,
    pub seq: u64,
}

pub fn core_with_holders(n: u32, now: Instant) -> (ServerCore, Vec<Holder>) {
    let serial = Serial::parse("0123456789").expect("serial");
    let keys = derive_license_keys(&serial, &SALT, KdfParams::TEST).expect("kdf");
    let rec = LicenseRecord {
        id: 1,
        keys: keys.clone(),
        seats: u16::MAX,
        expires_unix: None,
        revoked: false,
        ttl: Duration::from_secs(60),
        heartbeat: Duration::from_secs(15),
    };
    // One license per 65,535 holders, since seats are a u16.
    let licenses = n.div_ceil(u32::from(u16::MAX)).max(1);
    let mut recs = Vec::new();
    let mut all_keys = Vec::new();
    for i in 0..licenses {
        let mut k = keys.clone();
        k.license_id = (u64::from(i) + 1).to_le_bytes();
        recs.push(LicenseRecord { id: i64::from(i) + 1, keys: k.clone(), ..rec.clone() });
        all_keys.push(k);
    }
    let cfg = ServerConfig {
        server_salt: SALT,
        kdf: KdfParams::TEST,
        epoch: 1,
        ttl_override: None,
        heartbeat_override: None,
        recovery_grace: None,
    };
    let core = ServerCore::new(cfg, recs, vec![], now, [9; 32]);
    let mut holders = Vec::with_capacity(n as usize);
    let mut out = [0u8; MAX_DATAGRAM];
    let mut buf = [0u8; MAX_DATAGRAM];
    for i in 0..n {
        let lk = &all_keys[(i / u32::from(u16::MAX)) as usize];
        let src =
            SocketAddr::from(([127, 0, (i >> 16) as u8 + 1, (i >> 8) as u8], 1024 + (i & 0xff) as u16 * 200));
        let mut nonce = [0u8; 16];
        nonce[..4].copy_from_slice(&i.to_le_bytes());
        let hello = Message::Hello(Hello { client_nonce: nonce });
        let k = wire::encode_unsigned(&hello, &mut buf).expect("hello");
        let Reply::Send(m) = core.handle(now, 0, src, &buf[..k], &mut out) else { panic!("challenge") };
        let Ok(Message::Challenge(ch)) = wire::decode(&out[..m]).map(|f| f.msg) else { panic!("challenge") };
        let mut instance = [0u8; 16];
        instance[..4].copy_from_slice(&i.to_le_bytes());
        let proof = Message::Proof(Proof {
            license_id: lk.license_id,
            instance_id: instance,
            client_nonce: nonce,
            cookie: ch.cookie,
            prev_lease_id: 0,
        });
        let k = wire::encode_unsigned(&proof, &mut buf).expect("proof");
        let k = MacKey::new(&lk.k_proof).seal(&mut buf, k).expect("seal");
        let (Reply::Send(m) | Reply::AfterCommit(m)) = core.handle(now, 0, src, &buf[..k], &mut out) else {
            panic!("grant")
        };
        let Ok(Message::Grant(g)) = wire::decode(&out[..m]).map(|f| f.msg) else { panic!("grant") };
        let s = derive_session_keys(
            &lk.k_auth,
            &nonce,
            &ch.cookie,
            &lk.license_id,
            &instance,
            g.lease_id,
            g.epoch,
        );
        holders.push(Holder { src, lease_id: g.lease_id, c2s: s.c2s, seq: 0 });
    }
    let ops = core.drain_journal();
    core.committed(&ops);
    (core, holders)
}

pub fn heartbeat(h: &mut Holder, buf: &mut [u8]) -> usize {
    h.seq += 1;
    let msg = Message::Heartbeat(Heartbeat { lease_id: h.lease_id, epoch: 1, seq: h.seq, flags: 0 });
    let k = wire::encode_unsigned(&msg, buf).expect("hb");
    h.c2s.seal(buf, k).expect("seal")
}

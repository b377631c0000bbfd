//! Micro-benchmarks of the protocol core, without IO: the per-heartbeat cost, how it scales
//! with the number of live leases, and what an expiry sweep costs.
//!
//! `cargo bench --bench core`. The leases are created through the real handshake (HELLO,
//! CHALLENGE, PROOF, GRANT), so the state measured is the state a server really holds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use lic_udp::proto::keys::{derive_license_keys, derive_session_keys, KdfParams, MacKey, Serial};
use lic_udp::proto::server::{LicenseRecord, Reply, ServerConfig, ServerCore};
use lic_udp::proto::wire::{self, Heartbeat, Hello, Message, Proof, MAX_DATAGRAM};

const SALT: [u8; 16] = [3; 16];

struct Holder {
    src: SocketAddr,
    lease_id: u64,
    c2s: MacKey,
    seq: u64,
}

fn core_with_holders(n: u32, now: Instant) -> (ServerCore, Vec<Holder>) {
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

fn heartbeat(h: &mut Holder, buf: &mut [u8]) -> usize {
    h.seq += 1;
    let msg = Message::Heartbeat(Heartbeat { lease_id: h.lease_id, epoch: 1, seq: h.seq, flags: 0 });
    let k = wire::encode_unsigned(&msg, buf).expect("hb");
    h.c2s.seal(buf, k).expect("seal")
}

fn decode_and_verify(c: &mut Criterion) {
    let key = MacKey::new(&[7; 32]);
    let mut h =
        Holder { src: SocketAddr::from(([127, 0, 0, 1], 5000)), lease_id: 1, c2s: key.clone(), seq: 0 };
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = heartbeat(&mut h, &mut buf);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode+verify heartbeat", |b| {
        b.iter(|| {
            let f = wire::decode(&buf[..n]).expect("decode");
            assert!(key.verify(f.signed, f.tag));
        })
    });
    g.finish();
}

fn heartbeat_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("server heartbeat");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    for n in [1_000u32, 100_000, 1_000_000] {
        let now = Instant::now();
        let (core, mut holders) = core_with_holders(n, now);
        let mut out = [0u8; MAX_DATAGRAM];
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_batched(
                || {
                    i = (i + 7919) % holders.len();
                    let h = &mut holders[i];
                    (h.src, heartbeat(h, &mut buf), buf)
                },
                |(src, k, datagram)| {
                    let r = core.handle(now, 0, src, &datagram[..k], &mut out);
                    assert!(matches!(r, Reply::Send(45)));
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The same heartbeats in batches of 64, as the IO layer hands them over after one recvmmsg:
/// `ServerCore::warm` first (as the server does), then `handle` for each; and without `warm`,
/// to show what it saves. Per-heartbeat figures.
fn heartbeat_batches(c: &mut Criterion) {
    const BATCH: usize = 64;
    let mut g = c.benchmark_group("server heartbeat, batches of 64");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(30);
    for n in [1_000u32, 100_000, 1_000_000] {
        let now = Instant::now();
        let (core, mut holders) = core_with_holders(n, now);
        let mut out = [0u8; MAX_DATAGRAM];
        let mut i = 0usize;
        for warm in [true, false] {
            let id = BenchmarkId::new(if warm { "warm" } else { "without warm" }, n);
            g.bench_with_input(id, &n, |b, _| {
                b.iter_batched_ref(
                    || {
                        let mut batch = Vec::with_capacity(BATCH);
                        for _ in 0..BATCH {
                            i = (i + 7919) % holders.len();
                            let h = &mut holders[i];
                            let mut buf = [0u8; MAX_DATAGRAM];
                            let k = heartbeat(h, &mut buf);
                            batch.push((h.src, buf, k));
                        }
                        batch
                    },
                    |batch| {
                        if warm {
                            core.warm(batch.iter().map(|(_, d, k)| &d[..*k]));
                        }
                        for (src, d, k) in batch.iter() {
                            let r = core.handle(now, 0, *src, &d[..*k], &mut out);
                            assert!(matches!(r, Reply::Send(45)));
                        }
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

fn expiry_sweep(c: &mut Criterion) {
    let mut g = c.benchmark_group("expiry");
    g.sample_size(10);
    let now = Instant::now();
    let (core, _holders) = core_with_holders(1_000_000, now);
    // A sweep that finds nothing to expire: what every tick costs at 1,000,000 leases.
    g.bench_function("sweep 1M live, none due", |b| {
        b.iter(|| core.handle_timeout(now + Duration::from_secs(1)))
    });
    g.finish();
    drop(core);
    let mut g = c.benchmark_group("expiry");
    g.sample_size(10);
    // A mass expiry: 100,000 leases due at once. One call removes at most EXPIRY_BUDGET of
    // them; `_ref` keeps the drop of the 100,000-lease core out of the timing.
    g.bench_function("sweep 100k all due, one budgeted call", |b| {
        b.iter_batched_ref(
            || core_with_holders(100_000, now).0,
            |core| core.handle_timeout(now + Duration::from_secs(120)),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, decode_and_verify, heartbeat_path, heartbeat_batches, expiry_sweep);
criterion_main!(benches);

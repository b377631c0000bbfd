//! Micro-benchmarks of the protocol core, without IO: the per-heartbeat cost, how it scales
//! with the number of live leases, and what an expiry sweep costs.
//!
//! `cargo bench --bench core`. The leases are created through the real handshake (HELLO,
//! CHALLENGE, PROOF, GRANT), so the state measured is the state a server really holds.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{core_with_holders, heartbeat, Holder};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use lic_udp::proto::keys::MacKey;
use lic_udp::proto::server::Reply;
use lic_udp::proto::wire::{self, MAX_DATAGRAM};

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

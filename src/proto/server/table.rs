//! The lease table: how lease ids are hashed, and [`ServerCore::warm`], which looks up a whole
//! receive batch's leases before it is handled.

use dashmap::DashMap;

use super::{wire, Lease, ServerCore};

/// Leases [`ServerCore::warm`] looks up in one pass: the IO layer's receive batch.
pub const WARM_MAX: usize = 64;

/// Lease ids are drawn at random by the server (proto-spec.md §2), and a peer can only look
/// them up, never insert one, so they need no keyed hash: an unkeyed mixer of two multiplies
/// spreads them over the map's shards (top bits) and the table's
/// buckets (low bits), and ids a test picks by hand as well. SipHash cost more than a tenth
/// of the whole heartbeat path.
#[derive(Default, Clone, Copy)]
pub(super) struct LeaseIdHasher(u64);

impl std::hash::Hasher for LeaseIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        // MurmurHash3's 64-bit finalizer: a bijection in which every output bit depends on
        // every input bit, so both the shard (high bits) and the table's bucket (low bits)
        // do. A plain multiply would leave the low bits to the id's low bits only.
        let mut h = id ^ (id >> 33);
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        self.0 = h ^ (h >> 33);
    }
}

/// Boxed: the table itself then holds 16 bytes a lease, so that its power-of-two growth
/// (down to under half full just after it doubles) wastes little. Inline, 1,000,000 leases
/// took 718 bytes each (`cargo bench --bench memory`), over the 512 we allow. The price is a
/// pointer hop, a third likely cache miss per lookup at 100,000 leases and more: about 150
/// ns a heartbeat in batches with [`ServerCore::warm`], more one at a time (benches/core.rs).
pub(super) type LeaseMap = DashMap<u64, Box<Lease>, std::hash::BuildHasherDefault<LeaseIdHasher>>;

impl ServerCore {
    /// Loads the lease table slots that the heartbeats among `datagrams` name into the CPU's
    /// cache, before the datagrams are handled one by one; only a hint, it changes nothing.
    ///
    /// Why: with 100,000 leases and more, the leases are larger than the caches, and a
    /// heartbeat's lookup misses up to three times (the bucket's control bytes, the slot with
    /// the box's address, the lease), each a trip to memory. Handled one at a time, those trips
    /// come one after the other, since every lookup takes its shard's lock and a locked
    /// instruction waits for the loads before it. Here each shard is locked once, for reading,
    /// and the lookups under it are plain loads that the CPU runs side by side. Takes at most
    /// [`WARM_MAX`] heartbeats, allocates nothing and changes no lease (the read locks are
    /// its only writes).
    pub fn warm<'a>(&self, datagrams: impl IntoIterator<Item = &'a [u8]>) {
        let mut ids = [(0usize, 0u64, 0u64); WARM_MAX];
        let mut n = 0;
        for d in datagrams {
            if n == WARM_MAX {
                break;
            }
            if let Some(id) = wire::peek_lease_id(d) {
                // The map hashes to u64 and shards by that as usize; on a 64-bit target they
                // are one value (elsewhere the lookup below misses, and the hint does nothing).
                let hash = self.leases.hash_usize(&id);
                ids[n] = (self.leases.determine_shard(hash), hash as u64, id);
                n += 1;
            }
        }
        let ids = &mut ids[..n];
        ids.sort_unstable_by_key(|e| e.0);
        let shards = self.leases.shards();
        let mut sum = 0u64;
        for run in ids.chunk_by(|a, b| a.0 == b.0) {
            let Some(shard) = run.first().and_then(|e| shards.get(e.0)) else { continue };
            let table = shard.read();
            // Two passes: first the table (control bytes, then the slot with the box's
            // address), then the boxes. A loop that did both for one lease before the next
            // would keep fewer of the boxes' misses in flight at once.
            let mut found: [Option<&Lease>; WARM_MAX] = [None; WARM_MAX];
            for (f, &(_, hash, id)) in found.iter_mut().zip(run) {
                *f = table.get(hash, |(k, _)| *k == id).map(|(_, lease)| &**lease.get());
            }
            for lease in found.iter().flatten() {
                sum ^= lease.touch();
            }
        }
        std::hint::black_box(sum);
    }
}

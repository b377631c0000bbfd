//! Unit tests of the core's internals: the lease layout, the table, `warm`.

use super::*;

/// The layout the heartbeat path counts on: its fields within the first three cache lines
/// of the lease; and a lease not grown past what 1,000,000 leases in 512 bytes each allow
/// (with the table's 16 bytes, the holder map and the allocator's rounding: see
/// `cargo bench --bench memory`).
#[test]
fn a_heartbeat_reads_three_cache_lines_of_its_lease() {
    let key = MacKey::new(&[0; 32]);
    let session = Some(Session {
        keys: SessionKeys { c2s: key.clone(), s2c: key },
        window: ReplayWindow::default(),
        client_nonce: [0; 16],
        cookie: Cookie { ts: 0, kid: 0, mac: [0; 16] },
    });
    let payload = session
        .as_ref()
        .map_or(0, |s| std::ptr::from_ref(s) as usize - std::ptr::from_ref(&session) as usize);
    let hot_end = std::mem::offset_of!(Lease, session)
        + payload
        + std::mem::offset_of!(Session, window)
        + std::mem::size_of::<ReplayWindow>();
    assert!(hot_end <= 192, "heartbeat fields end at byte {hot_end}");
    // The holder's identity is one pointer (8 bytes, shared with the store's record): 312 bytes
    // plus glibc's 8-byte chunk header still round to the same 320-byte chunk as 304 did.
    assert!(std::mem::size_of::<Lease>() <= 312, "{}", std::mem::size_of::<Lease>());
}

#[test]
fn warm_takes_any_bytes_and_changes_nothing() {
    let core = ServerCore::new(
        ServerConfig {
            server_salt: [0; 16],
            kdf: crate::proto::keys::KdfParams::TEST,
            epoch: 1,
            ttl_override: None,
            heartbeat_override: None,
            recovery_grace: None,
        },
        vec![],
        vec![],
        Instant::now(),
        [0; 32],
    );
    let mut hb = [0u8; 48];
    hb[..4].copy_from_slice(&[0x4C, 0x55, 1, 3]);
    assert_eq!(wire::peek_lease_id(&hb), Some(0));
    hb[4] = 7;
    assert_eq!(wire::peek_lease_id(&hb), Some(7));
    assert_eq!(wire::peek_lease_id(&hb[..47]), None, "a heartbeat has one length");
    assert_eq!(wire::peek_lease_id(&[0x4C, 0x55, 1, 1]), None, "HELLO names no lease");
    let garbage: Vec<Vec<u8>> = (0..200u8).map(|i| vec![i; usize::from(i)]).collect();
    core.warm(garbage.iter().map(Vec::as_slice).chain(std::iter::repeat_n(&hb[..], 300)));
    assert_eq!(core.stats().snapshot(), StatsSnapshot::default(), "a hint changes nothing");
}

#[test]
fn lease_ids_spread_over_shards_and_buckets_even_when_picked_by_hand() {
    let map = LeaseMap::with_hasher_and_shard_amount(Default::default(), 16);
    for ids in [(1..=64u64).collect::<Vec<_>>(), (1..=64u64).map(|i| i << 40).collect()] {
        let shards: std::collections::HashSet<usize> =
            ids.iter().map(|id| map.determine_shard(map.hash_usize(id))).collect();
        assert!(shards.len() >= 12, "64 ids should reach most of 16 shards: {}", shards.len());
        // hashbrown picks a bucket by the hash's low bits.
        let buckets: std::collections::HashSet<usize> =
            ids.iter().map(|id| map.hash_usize(id) & 1023).collect();
        assert!(buckets.len() >= 56, "64 ids should land in distinct buckets of 1,024: {}", buckets.len());
    }
}

/// Issue 11 (spec and code): a lone lease ended 290-390 ms after its deadline, while the spec
/// promised 250 ms: the driver swept one period after its last sweep, which drifted off the
/// slot boundaries at which deadlines come due, so a lease could wait almost two periods.
#[test]
fn the_core_asks_to_be_swept_at_the_slot_boundary_where_deadlines_come_due() {
    let t0 = Instant::now();
    let core = ServerCore::new(
        ServerConfig {
            server_salt: [0; 16],
            kdf: crate::proto::keys::KdfParams::TEST,
            epoch: 1,
            ttl_override: None,
            heartbeat_override: None,
            recovery_grace: None,
        },
        vec![],
        vec![],
        t0,
        [0; 32],
    );
    let ms = Duration::from_millis;
    // A driver that ran a sweep late, at 1,234 ms, is asked back at the 1,250 ms boundary.
    assert_eq!(core.poll_timeout(t0 + ms(1_234)), t0 + ms(1_250));
    assert_eq!(core.poll_timeout(t0 + ms(1_250)), t0 + ms(1_500));
}

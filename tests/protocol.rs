//! Deterministic tests of the protocol core: ServerCore and ClientCore on a virtual clock, with
//! seeded loss, duplication and reordering (see `util`). Nothing sleeps and no socket is opened.

mod util;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lic_udp::proto::client::Event;
use lic_udp::proto::server::{EndReason, JournalOp, Reply};
use lic_udp::proto::wire::{self, AckStatus, DenyReason, Message, MsgType};
use rand::{rngs::StdRng, Rng, SeedableRng};

use util::*;

const SERIAL: &str = "0123456789";
const WRONG: &str = "9876543210";

fn single(seed: u64, seats: u16) -> Sim {
    Sim::new(seed, vec![LicenseSpec::new(1, SERIAL, seats)])
}

fn decode(d: &[u8]) -> Message {
    wire::decode(d).expect("a valid datagram").msg
}

fn grant_lease_id(d: &[u8]) -> u64 {
    match decode(d) {
        Message::Grant(g) => g.lease_id,
        other => panic!("expected GRANT, got {other:?}"),
    }
}

fn is_granted(e: &Event) -> bool {
    matches!(e, Event::Granted { .. })
}

/// The arrival time of the last HEARTBEAT from client `c` the server accepted (ACK OK).
fn last_accepted_heartbeat(sim: &Sim, c: usize) -> Instant {
    sim.server_log
        .iter()
        .filter(|d| d.client == Some(c) && msg_type(&d.request) == Some(MsgType::Heartbeat))
        .filter(|d| {
            d.reply
                .as_deref()
                .is_some_and(|r| matches!(decode(r), Message::Ack(a) if a.status == AckStatus::Ok as u8))
        })
        .map(|d| d.at)
        .next_back()
        .expect("an accepted heartbeat")
}

/// Runs until the seat count of license 1 first drops to zero; returns when it did.
fn run_until_freed(sim: &mut Sim, limit: Duration) -> Instant {
    let mut freed = None;
    sim.run_for_with(limit, |s| {
        if freed.is_none() && s.seats(1) == 0 {
            freed = Some(s.now);
        }
    });
    freed.expect("the seat was freed")
}

#[test]
fn handshake_and_grant() {
    let mut sim = single(1, 5);
    let start = sim.now;
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(2));

    let cl = sim.client(c);
    let (t, ev) = cl.first(is_granted).expect("granted");
    let Event::Granted { lease_id, used, seats, ttl, heartbeat } = ev else { unreachable!() };
    assert_eq!((used, seats), (1, 5));
    assert_eq!((ttl, heartbeat), (TTL, HEARTBEAT));
    assert_ne!(lease_id, 0);
    // HELLO, CHALLENGE, PROOF, GRANT: four one-way trips of 1 ms, keys answered at once.
    assert_eq!(t - start, ms(4));
    assert_eq!(cl.events_only(), vec![ev.clone()]);
    assert_eq!(cl.count(|e| matches!(e, Event::NeedKeys { .. })), 1);
    assert!(cl.core.is_holding());
    assert_eq!(cl.core.lease_id(), Some(lease_id));

    assert_eq!(sim.seats(1), 1);
    assert_eq!(sim.server().live_leases(), 1);
    let holders = sim.server().holders();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].lease_id, lease_id);
    assert_eq!(holders[0].instance_id, cl.core.instance_id());
    assert_eq!(holders[0].addr, client_addr(c));
    // The grant was made durable before the GRANT left.
    assert_eq!(sim.store, vec![JournalOp::Grant(holders[0].clone())]);
    let st = sim.stats();
    assert_eq!((st.challenges, st.grants, st.regrants), (1, 1, 0));
}

#[test]
fn deny_when_full() {
    let mut sim = single(2, 2);
    let clients: Vec<usize> = (0..3).map(|_| sim.add_client(SERIAL)).collect();
    sim.run_for(secs(5));

    let mut used = Vec::new();
    let mut denied = Vec::new();
    for &c in &clients {
        for ev in sim.client(c).events_only() {
            match ev {
                Event::Granted { used: u, seats, .. } => {
                    assert_eq!(seats, 2);
                    used.push(u);
                }
                Event::Denied { .. } => denied.push((c, ev)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    used.sort_unstable();
    assert_eq!(used, vec![1, 2], "exactly two grants");
    assert_eq!(denied.len(), 1, "exactly one denial");
    assert_eq!(
        denied[0].1,
        Event::Denied { reason: DenyReason::Full, used: 2, seats: 2, retry_after: HEARTBEAT }
    );
    assert!(sim.client(denied[0].0).core.is_done());
    assert!(!sim.client(denied[0].0).core.is_holding());
    assert_eq!(sim.seats(1), 2);
    assert_eq!(sim.server().live_leases(), 2);
    assert_eq!(sim.stats().denials, 1);
}

#[test]
fn wrong_serial_is_unknown_license() {
    let mut sim = single(3, 2);
    let c = sim.add_client(WRONG);
    sim.run_for(secs(5));
    let cl = sim.client(c);
    assert_eq!(cl.events_only(), vec![Event::UnknownLicense]);
    assert!(cl.core.is_done());
    assert_eq!(cl.sent_of(MsgType::Proof).len(), 1, "no retransmission after UNKNOWN");
    assert_eq!(cl.received_of(MsgType::Unknown).len(), 1);
    assert_eq!(sim.seats(1), 0);
    assert_eq!(sim.stats().unknown_license, 1);
    assert!(sim.store.is_empty());
}

#[test]
fn heartbeats_keep_lease_alive() {
    let mut sim = single(4, 3);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(1));
    let lease = sim.client(c).core.lease_id().expect("granted");
    let duration = TTL * 20;
    sim.run_for_with(duration, |s| {
        assert_eq!(s.seats(1), 1, "at {:?}", s.elapsed());
        assert!(s.client(c).core.is_holding(), "at {:?}", s.elapsed());
    });
    let cl = sim.client(c);
    assert_eq!(cl.events_only().len(), 1, "{:?}", cl.events_only());
    assert_eq!(cl.core.lease_id(), Some(lease));
    let st = sim.stats();
    // Every 15 s ± 10 %, and nothing was retransmitted on a perfect network.
    let lo = (duration.as_secs_f64() / (HEARTBEAT.as_secs_f64() * 1.1)).floor() as u64;
    let hi = (duration.as_secs_f64() / (HEARTBEAT.as_secs_f64() * 0.9)).ceil() as u64;
    assert!(
        (lo..=hi).contains(&st.heartbeats),
        "{} heartbeats in {duration:?}, expected {lo}..={hi}",
        st.heartbeats
    );
    assert_eq!(cl.sent_of(MsgType::Heartbeat).len() as u64, st.heartbeats);
    assert_eq!(cl.received_of(MsgType::Ack).len() as u64, st.heartbeats);
    // Consecutive heartbeats are one jittered interval apart.
    let hbs = cl.sent_of(MsgType::Heartbeat);
    let (mut prev, _) = cl.first(is_granted).expect("granted");
    for (t, _) in &hbs {
        let gap = *t - prev;
        assert!(gap >= HEARTBEAT.mul_f64(0.9) && gap <= HEARTBEAT.mul_f64(1.1) + ms(5), "gap {gap:?}");
        prev = *t;
    }
    assert_eq!(
        (st.dropped_malformed, st.dropped_mac, st.dropped_replay, st.stale, st.expiries),
        (0, 0, 0, 0, 0)
    );
}

#[test]
fn silent_client_expires_after_ttl() {
    let mut sim = single(5, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(40));
    assert_eq!(sim.seats(1), 1);
    sim.clients[c].stopped = true;
    let last = last_accepted_heartbeat(&sim, c);
    let freed = run_until_freed(&mut sim, secs(120));
    assert!(freed >= last + TTL, "freed {:?} before the TTL ran out", (last + TTL) - freed);
    assert!(freed <= last + TTL + SWEEP, "freed {:?} after the TTL, more than a sweep", freed - (last + TTL));
    assert_eq!(sim.stats().expiries, 1);
    assert_eq!(sim.server().live_leases(), 0);
    let lease = sim.client(c).core.lease_id().expect("had a lease");
    assert!(sim.store.contains(&JournalOp::Remove { lease_id: lease, why: EndReason::Expired }));
    assert!(sim.restored_leases().is_empty());
}

#[test]
fn release_frees_seat_at_once() {
    let mut sim = single(6, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    let lease = sim.client(c).core.lease_id().expect("granted");
    let released_at = sim.now;
    sim.with_client(c, |core, now| core.release(now));
    // The RELEASE arrives after one latency; the seat is free in that same step.
    let mut freed = None;
    sim.run_for_with(secs(5), |s| {
        if freed.is_none() && s.seats(1) == 0 {
            freed = Some(s.now);
        }
    });
    assert_eq!(freed, Some(released_at + ms(1)));
    let cl = sim.client(c);
    let (t, _) = cl.first(|e| *e == Event::Released).expect("Released event");
    assert_eq!(t, released_at + ms(2));
    assert_eq!(cl.events_only().last(), Some(&Event::Released));
    assert!(cl.core.is_done());
    assert_eq!(cl.core.poll_timeout(), None);
    let release_sends = cl.sent_of(MsgType::Heartbeat).iter().filter(|(t, _)| *t >= released_at).count();
    assert_eq!(release_sends, 1, "one RELEASE, acknowledged at once");
    assert_eq!(sim.stats().releases, 1);
    assert!(sim.store.contains(&JournalOp::Remove { lease_id: lease, why: EndReason::Released }));
    // A newcomer gets the seat.
    let d = sim.add_client(SERIAL);
    sim.run_for(secs(1));
    assert!(sim.client(d).first(is_granted).is_some());
}

/// The jittered range `[0.8, 1.2] × d`.
fn jittered(d: Duration) -> (Duration, Duration) {
    (d.mul_f64(0.8), d.mul_f64(1.2))
}

#[test]
fn unreachable_server_gives_up_after_six_hellos() {
    let mut sim = single(7, 1);
    sim.c2s = Faults::dead();
    let start = sim.now;
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(120));
    let cl = sim.client(c);
    assert_eq!(cl.events_only(), vec![Event::Unreachable]);
    assert!(cl.core.is_done());
    let hellos = cl.sent_of(MsgType::Hello);
    assert_eq!(hellos.len(), 6, "six HELLOs");
    assert_eq!(cl.sent.len(), 6, "and nothing else");
    // Each HELLO carries the same nonce: retransmissions of one attempt.
    assert!(hellos.iter().all(|(_, d)| *d == hellos[0].1));
    let (gave_up, _) = cl.first(|e| *e == Event::Unreachable).expect("gave up");
    // The wait after each send: 0.5, 1, 2, 4, 8, 8 s, each jittered by [0.8, 1.2].
    let rtos = [500u64, 1000, 2000, 4000, 8000, 8000].map(ms);
    let mut times: Vec<Instant> = hellos.iter().map(|(t, _)| *t).collect();
    times.push(gave_up);
    assert_eq!(times[0], start);
    for (i, rto) in rtos.iter().enumerate() {
        let gap = times[i + 1] - times[i];
        let (lo, hi) = jittered(*rto);
        assert!(gap >= lo && gap <= hi, "wait {i}: {gap:?} not in {lo:?}..{hi:?}");
    }
    let total = gave_up - start;
    let (lo, hi) = jittered(ms(23_500));
    assert!(total >= lo && total <= hi, "gave up after {total:?}");
}

#[test]
fn unanswered_proofs_restart_at_hello_then_give_up() {
    let mut sim = single(8, 1);
    sim.filter = Some(Box::new(|dir, _, d| dir == Dir::ToServer && msg_type(d) == Some(MsgType::Proof)));
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(120));
    let cl = sim.client(c);
    assert_eq!(cl.events_only(), vec![Event::Unreachable]);
    // Three rounds of HELLO + three PROOFs: an unanswered PROOF may carry a cookie of a server
    // that restarted, so the client fetches a fresh one instead of insisting.
    let proofs = cl.sent_of(MsgType::Proof);
    assert_eq!(proofs.len(), 9);
    for round in proofs.chunks(3) {
        assert!(round.iter().all(|(_, d)| *d == round[0].1), "retransmitted PROOFs reuse the cookie");
    }
    assert_ne!(proofs[0].1, proofs[3].1, "each round has a fresh cookie");
    assert_eq!(cl.sent_of(MsgType::Hello).len(), 3);
    assert_eq!(sim.seats(1), 0);
}

#[test]
fn loss_dup_reorder_never_oversubscribes() {
    const SEATS: usize = 10;
    let mut reordered_total = 0;
    for seed in 100..105u64 {
        let mut sim = single(seed, SEATS as u16);
        sim.faults(Faults::lossy(0.3, 0.2, ms(300)));
        // A program that failed to get a seat tries again later, as a fresh process.
        sim.respawn_after = Some(secs(10));
        for _ in 0..20 {
            sim.add_client(SERIAL);
        }
        // client → (generation, lease_id, Lost events of that generation when last seen)
        let mut last: HashMap<usize, (u32, u64, usize)> = HashMap::new();
        let max_seats = Cell::new(0);
        let mut check = |s: &Sim| {
            let seats = s.seats(1);
            max_seats.set(max_seats.get().max(seats));
            let server = s.server();
            assert!(seats <= SEATS, "seed {seed}: {seats} seats at {:?}", s.elapsed());
            assert!(server.live_leases() <= SEATS, "seed {seed}");
            assert_eq!(server.live_leases(), seats, "seed {seed}: leases vs seats");
            let holders = server.holders();
            let mut instances = HashSet::new();
            for h in &holders {
                assert!(
                    instances.insert(h.instance_id),
                    "seed {seed}: two leases for one instance at {:?}",
                    s.elapsed()
                );
            }
            for (i, c) in s.clients.iter().enumerate() {
                let Some(id) = c.core.lease_id() else {
                    continue;
                };
                if c.core.is_holding() {
                    assert!(
                        holders.iter().any(|h| h.lease_id == id && h.instance_id == c.core.instance_id()),
                        "seed {seed}: client {i} believes it holds lease {id:#x}, the server \
                         does not, at {:?}",
                        s.elapsed()
                    );
                }
                let lost =
                    c.events.iter().filter(|(_, g, e)| *g == c.generation && *e == Event::Lost).count();
                if let Some(&(g, prev, lost_then)) = last.get(&i) {
                    if g == c.generation && prev != id {
                        assert!(
                            lost > lost_then,
                            "seed {seed}: client {i} changed lease without a Lost event"
                        );
                    }
                }
                last.insert(i, (c.generation, id, lost));
            }
        };
        sim.run_for_with(TTL * 10, &mut check);
        // Every message type was lost and duplicated somewhere.
        for ty in [
            MsgType::Hello,
            MsgType::Proof,
            MsgType::Heartbeat,
            MsgType::Challenge,
            MsgType::Grant,
            MsgType::Deny,
            MsgType::Ack,
        ] {
            assert!(
                sim.dropped_by_type.get(&(ty as u8)).copied().unwrap_or(0) > 0,
                "seed {seed}: no {ty:?} was lost"
            );
            assert!(
                sim.duplicated_by_type.get(&(ty as u8)).copied().unwrap_or(0) > 0,
                "seed {seed}: no {ty:?} was duplicated"
            );
        }
        // Heartbeats of one lease arrived out of order.
        let mut top: HashMap<u64, u64> = HashMap::new();
        for d in &sim.server_log {
            if let Ok(f) = wire::decode(&d.request) {
                if let Message::Heartbeat(h) = f.msg {
                    let t = top.entry(h.lease_id).or_default();
                    if h.seq < *t {
                        reordered_total += 1;
                    }
                    *t = (*t).max(h.seq);
                }
            }
        }
        let st = sim.stats();
        assert!(st.regrants > 0, "seed {seed}: no retransmitted/duplicated PROOF");
        assert!(st.dropped_replay > 0, "seed {seed}: no duplicated heartbeat");
        assert_eq!(max_seats.get(), SEATS, "seed {seed}: the license never filled");

        // The network heals: ghost leases of programs that gave up expire and the seats go to
        // programs that are still trying.
        sim.faults(Faults::perfect());
        sim.run_for_with(TTL * 2 + secs(30), &mut check);
        let holding: Vec<usize> =
            (0..sim.clients.len()).filter(|&i| sim.client(i).core.is_holding()).collect();
        assert_eq!(holding.len(), SEATS, "seed {seed}: holders {holding:?}");
        assert_eq!(sim.seats(1), SEATS);
        assert_eq!(sim.server().live_leases(), SEATS);
    }
    assert!(reordered_total > 0, "the network never reordered");
}

#[test]
fn duplicated_proof_is_idempotent() {
    let mut sim = single(9, 1);
    // Every datagram from the client arrives twice, both copies in the same step.
    sim.c2s.dup = 1.0;
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(2));
    sim.c2s.dup = 0.0;
    let lease = sim.client(c).core.lease_id().expect("granted");
    assert_eq!(sim.client(c).count(is_granted), 1);
    assert_eq!(sim.server().live_leases(), 1);
    let st = sim.stats();
    assert_eq!((st.grants, st.regrants), (1, 1));
    let grants = sim.client(c).received_of(MsgType::Grant);
    assert_eq!(grants.len(), 2);
    assert_eq!(grant_lease_id(&grants[0].1), lease);
    assert_eq!(grants[0].1, grants[1].1, "the same GRANT, byte for byte");

    // A replay of the PROOF 20 s later (the cookie lives 30 s): the same GRANT, no new lease,
    // and the holder's session is untouched.
    let (_, proof) = sim.client(c).sent_of(MsgType::Proof)[0].clone();
    sim.run_for(secs(20));
    let hb_before = sim.stats().heartbeats;
    let (r, reply) = sim.inject(client_addr(c), &proof);
    assert_eq!(r, Reply::Send(MsgType::Grant.wire_len()));
    assert_eq!(reply, grants[0].1);
    let (r2, reply2) = sim.inject(client_addr(c), &proof);
    assert_eq!((r2, reply2), (r, reply));
    assert_eq!(sim.server().live_leases(), 1);
    assert_eq!(sim.seats(1), 1);
    let grants_in_store = sim.store.iter().filter(|op| matches!(op, JournalOp::Grant(_))).count();
    assert_eq!(grants_in_store, 1);
    // From another address the PROOF is dropped.
    let cookie_drops = sim.stats().dropped_cookie;
    assert_eq!(sim.inject(client_addr(7), &proof).0, Reply::None);
    assert_eq!(sim.stats().dropped_cookie, cookie_drops + 1);

    sim.run_for(secs(30));
    assert!(sim.stats().heartbeats > hb_before, "the holder still heartbeats");
    assert_eq!(sim.stats().dropped_mac, 0);
    assert_eq!(sim.client(c).events_only().len(), 1);
    assert_eq!(sim.client(c).core.lease_id(), Some(lease));

    // After the cookie's life, the PROOF is dropped too.
    assert_eq!(sim.inject(client_addr(c), &proof).0, Reply::None);
    assert_eq!(sim.stats().dropped_cookie, cookie_drops + 2);
    assert_eq!(sim.server().live_leases(), 1);
}

#[test]
fn replayed_heartbeat_is_dropped_and_does_not_extend_lease() {
    let mut sim = single(10, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(40));

    // A heartbeat with a fresh seq but no valid tag neither renews nor moves the window: the
    // client's next heartbeats are still accepted.
    let hb = sim.client(c).sent_of(MsgType::Heartbeat);
    let mut forged = hb[hb.len() - 1].1.clone();
    forged[16] = forged[16].wrapping_add(100); // the low byte of seq
    let mac_drops = sim.stats().dropped_mac;
    assert_eq!(sim.inject(client_addr(c), &forged).0, Reply::None);
    assert_eq!(sim.stats().dropped_mac, mac_drops + 1);
    sim.run_for(secs(30));
    assert_eq!(sim.stats().dropped_replay, 0, "the forged seq moved the window");
    assert!(sim.client(c).core.is_holding());
    assert_eq!(sim.client(c).events_only().len(), 1);

    let captured: Vec<Vec<u8>> =
        sim.client(c).sent_of(MsgType::Heartbeat).into_iter().map(|(_, d)| d).collect();
    assert!(captured.len() >= 3);
    sim.clients[c].stopped = true;
    let last = last_accepted_heartbeat(&sim, c);

    // Replays every 5 s, cycling through every captured heartbeat, until the lease is gone.
    let mut freed = None;
    let mut replays = 0u64;
    for round in 0..30 {
        let d = captured[round % captured.len()].clone();
        let before = sim.stats().dropped_replay;
        let (r, reply) = sim.inject(client_addr(c), &d);
        if sim.seats(1) == 1 {
            assert_eq!(r, Reply::None, "a replayed heartbeat got {reply:?}");
            assert_eq!(sim.stats().dropped_replay, before + 1);
            replays += 1;
        } else {
            // After expiry the lease is unknown: STALE, smaller than the HEARTBEAT.
            assert_eq!(r, Reply::Send(MsgType::Stale.wire_len()));
        }
        sim.run_for_with(secs(5), |s| {
            if freed.is_none() && s.seats(1) == 0 {
                freed = Some(s.now);
            }
        });
    }
    assert!(replays >= 8);
    let freed = freed.expect("the lease expired despite the replays");
    assert!(freed >= last + TTL);
    assert!(freed <= last + TTL + SWEEP, "replays moved the expiry by {:?}", freed - (last + TTL));
}

#[test]
fn replayed_ack_does_not_stop_heartbeats() {
    // An eavesdropper re-sends a captured ACK to the holder. The client must keep
    // heartbeating, or the server expires the lease and another instance takes the seat.
    let mut sim = single(11, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(40));
    let acks = sim.client(c).received_of(MsgType::Ack);
    let ack = acks[acks.len() - 1].1.clone();
    for _ in 0..40 {
        sim.inject_to_client(c, &ack);
        sim.run_for(secs(5));
    }
    let cl = sim.client(c);
    assert!(!cl.events_only().contains(&Event::Lost), "{:?}", cl.events_only());
    assert!(cl.core.is_holding());
    assert_eq!(sim.seats(1), 1);
    assert_eq!(sim.stats().expiries, 0);
}

#[test]
fn server_restart_short_outage_keeps_lease() {
    let mut sim = single(12, 1);
    let a = sim.add_client(SERIAL);
    sim.run_for(secs(40));
    let lease = sim.client(a).core.lease_id().expect("granted");
    assert_eq!(sim.restored_leases().len(), 1);

    sim.crash();
    sim.run_for(secs(3));
    sim.boot();
    assert_eq!(sim.epoch, 2);
    // Restored leases count from the first datagram.
    assert_eq!(sim.seats(1), 1);
    let b = sim.add_client(SERIAL);
    sim.run_for(secs(80));

    let ca = sim.client(a);
    assert_eq!(ca.events_only().len(), 1, "{:?}", ca.events_only());
    assert!(ca.core.is_holding());
    assert_eq!(ca.core.lease_id(), Some(lease), "the same lease after the restart");
    assert!(!ca.received_of(MsgType::Stale).is_empty(), "old epoch → STALE");
    let regrant = ca.received_of(MsgType::Grant);
    assert_eq!(grant_lease_id(&regrant[regrant.len() - 1].1), lease);
    match decode(&regrant[regrant.len() - 1].1) {
        Message::Grant(g) => assert_eq!(g.epoch, 2),
        _ => unreachable!(),
    }

    assert_eq!(
        sim.client(b).events_only(),
        vec![Event::Denied { reason: DenyReason::Full, used: 1, seats: 1, retry_after: HEARTBEAT }]
    );
    let st = sim.stats();
    assert_eq!(st.grants, 0, "no new lease after the restart");
    assert!(st.regrants >= 1);
    assert!(st.heartbeats >= 4, "the holder heartbeats in the new epoch");
    assert_eq!(sim.seats(1), 1);
    let holders = sim.server().holders();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].lease_id, lease);
    assert_eq!(holders[0].instance_id, sim.client(a).core.instance_id());
}

#[test]
fn restored_lease_of_a_dead_holder_expires_one_ttl_after_boot() {
    let mut sim = single(28, 2);
    let a = sim.add_client(SERIAL);
    sim.run_for(secs(40));
    sim.crash();
    sim.clients[a].stopped = true;
    sim.run_for(secs(5));
    sim.boot();
    let boot = sim.now;
    assert_eq!(sim.seats(1), 1);
    let freed = run_until_freed(&mut sim, TTL * 3);
    assert!(freed >= boot + TTL && freed <= boot + TTL + SWEEP, "freed {:?} after boot", freed - boot);
    assert!(sim.restored_leases().is_empty(), "the expiry was journaled");
}

#[test]
fn server_restart_long_outage_lost_then_regained() {
    let mut sim = single(13, 1);
    let a = sim.add_client(SERIAL);
    sim.run_for(secs(40));
    let lease = sim.client(a).core.lease_id().expect("granted");
    sim.crash();
    sim.run_for(secs(90));
    sim.boot();
    sim.run_for(secs(40));
    let ca = sim.client(a);
    assert_eq!(
        ca.events_only()[1..],
        [Event::Lost, Event::Unreachable, Event::Regained],
        "{:?}",
        ca.events_only()
    );
    assert!(ca.core.is_holding());
    assert_eq!(ca.core.lease_id(), Some(lease));
    assert_eq!(sim.seats(1), 1);
}

#[test]
fn revoke_ends_lease_at_next_heartbeat() {
    let mut sim = single(14, 2);
    let a = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    let last_ok = last_accepted_heartbeat(&sim, a);
    sim.update_license(1, |l| l.revoked = true);
    let revoked_at = sim.now;
    sim.run_for(secs(30));

    let ca = sim.client(a);
    let (t, _) = ca.first(|e| *e == Event::Ended(DenyReason::Revoked)).expect("Ended(Revoked)");
    let (hb_at, _) = ca
        .sent_of(MsgType::Heartbeat)
        .into_iter()
        .find(|(t, _)| *t > revoked_at)
        .expect("a heartbeat after the revocation");
    assert_eq!(t, hb_at + ms(2), "the first heartbeat after revocation ends it");
    assert_eq!(ca.events_only().last(), Some(&Event::Ended(DenyReason::Revoked)));
    assert!(ca.core.is_done());
    assert!(!ca.core.is_holding());

    // A newcomer is refused.
    let b = sim.add_client(SERIAL);
    sim.run_for(secs(2));
    match sim.client(b).events_only().as_slice() {
        [Event::Denied { reason: DenyReason::Revoked, .. }] => {}
        other => panic!("{other:?}"),
    }
    // The server forgets the holder once its lease would have expired.
    let deadline = last_ok + TTL + SWEEP;
    sim.run_until(deadline);
    assert_eq!(sim.seats(1), 0);
    assert_eq!(sim.server().live_leases(), 0);
}

#[test]
fn client_loss_and_regain() {
    let mut sim = single(15, 1);
    let a = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    let first = sim.client(a).core.lease_id().expect("granted");
    // The last heartbeat the client saw acknowledged, by its send time.
    let acked_sent = {
        let cl = sim.client(a);
        let acks = cl.received_of(MsgType::Ack);
        let Message::Ack(ack) = decode(&acks[acks.len() - 1].1) else { unreachable!() };
        cl.sent_of(MsgType::Heartbeat)
            .into_iter()
            .find(|(_, d)| matches!(decode(d), Message::Heartbeat(h) if h.seq == ack.seq))
            .map(|(t, _)| t)
            .expect("acked heartbeat")
    };
    sim.clients[a].cut = true;
    sim.run_for(TTL + secs(30));
    assert_eq!(sim.seats(1), 0, "the server expired the silent lease");
    let (lost_at, _) = sim.client(a).first(|e| *e == Event::Lost).expect("Lost reported");
    assert_eq!(lost_at, acked_sent + TTL);
    assert!(!sim.client(a).core.is_holding());

    sim.clients[a].cut = false;
    let back = sim.now;
    sim.run_for(secs(30));
    let cl = sim.client(a);
    let (regained_at, _) = cl.first(|e| *e == Event::Regained).expect("Regained");
    assert!(regained_at > back && regained_at <= back + ms(9_700));
    assert!(cl.core.is_holding());
    let events = cl.events_only();
    let lost_idx = events.iter().position(|e| *e == Event::Lost);
    let regained_idx = events.iter().position(|e| *e == Event::Regained);
    assert!(lost_idx < regained_idx);
    assert_eq!(events.iter().filter(|e| is_granted(e)).count(), 1);
    let now_lease = cl.core.lease_id().expect("lease");
    assert_ne!(now_lease, first, "the old lease had expired: a new one");
    let holders = sim.server().holders();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].lease_id, now_lease);
    assert_eq!(sim.stats().expiries, 1);
}

#[test]
fn grant_waits_for_commit() {
    let mut sim = single(16, 1);
    sim.auto_commit = false;
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(2));
    assert!(sim.client(c).first(is_granted).is_none());
    assert!(sim.client(c).received_of(MsgType::Grant).is_empty());
    assert!(sim.held_replies() >= 2, "the PROOF was retransmitted");
    assert_eq!(sim.seats(1), 1, "the seat is reserved meanwhile");
    assert!(sim.store.is_empty());
    sim.commit();
    sim.auto_commit = true;
    sim.run_for(secs(1));
    assert_eq!(sim.client(c).count(is_granted), 1);
    assert_eq!(sim.server().live_leases(), 1);
    assert_eq!(sim.restored_leases().len(), 1);
}

#[test]
fn failed_commit_hands_out_no_seat() {
    let mut sim = single(17, 1);
    sim.auto_commit = false;
    let c = sim.add_client(SERIAL);
    sim.run_for(ms(100));
    assert_eq!(sim.seats(1), 1);
    sim.fail_commit();
    assert_eq!(sim.seats(1), 0);
    assert_eq!(sim.server().live_leases(), 0);
    assert!(sim.store.is_empty());
    sim.auto_commit = true;
    sim.run_for(secs(5));
    let cl = sim.client(c);
    assert_eq!(cl.count(is_granted), 1);
    let lease = cl.core.lease_id().expect("granted");
    assert_eq!(sim.restored_leases().len(), 1);
    assert_eq!(sim.restored_leases()[0].lease_id, lease);
}

/// A run that produces every message type, for replay and fuzzing.
fn corpus_sim(seed: u64) -> (Sim, Vec<Vec<u8>>) {
    let mut sim = single(seed, 2);
    let a = sim.add_client(SERIAL);
    sim.add_client(SERIAL);
    sim.add_client(SERIAL);
    sim.add_client(WRONG);
    sim.run_for(secs(20));
    sim.with_client(a, |core, now| core.release(now));
    sim.run_for(secs(5));
    sim.restart();
    sim.run_for(secs(20));
    sim.add_client(SERIAL);
    sim.run_for(secs(5));
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for c in &sim.clients {
        corpus.extend(c.sent.iter().map(|(_, d)| d.clone()));
        corpus.extend(c.received.iter().map(|(_, d)| d.clone()));
    }
    let types: HashSet<u8> = corpus.iter().map(|d| d[3]).collect();
    for ty in [1u8, 2, 3, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86] {
        assert!(types.contains(&ty), "corpus lacks type {ty:#04x}");
    }
    (sim, corpus)
}

#[test]
fn server_ignores_server_to_client_types_and_low_ports() {
    let (mut sim, corpus) = corpus_sim(18);
    let before = sim.stats();
    let mut s2c = 0;
    for d in corpus.iter().filter(|d| d[3] & 0x80 != 0) {
        assert_eq!(sim.inject(client_addr(1), d).0, Reply::None);
        s2c += 1;
    }
    assert_eq!(sim.stats().dropped_direction, before.dropped_direction + s2c);
    // A valid HELLO from a system port (a reflection attempt) is ignored.
    let hello = corpus.iter().find(|d| d[3] == MsgType::Hello as u8).expect("hello");
    let low = std::net::SocketAddr::from(([127, 0, 0, 1], 53));
    assert_eq!(sim.inject(low, hello).0, Reply::None);
    assert_eq!(sim.stats().dropped_low_port, before.dropped_low_port + 1);
    // The same HELLO from an ordinary port gets a CHALLENGE, one byte shorter.
    let (r, reply) = sim.inject(client_addr(9), hello);
    assert_eq!(r, Reply::Send(MsgType::Challenge.wire_len()));
    assert!(reply.len() < hello.len());
}

#[test]
fn server_never_amplifies_and_survives_garbage() {
    let (mut sim, corpus) = corpus_sim(19);
    let holders_before: Vec<usize> =
        (0..sim.clients.len()).filter(|&i| sim.client(i).core.is_holding()).collect();
    assert_eq!(holders_before.len(), 2);
    let types = [1u8, 2, 3, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x04, 0x80, 0xff];
    let mut rng = StdRng::seed_from_u64(0xf022);
    let mut answered = 0;
    for i in 0..4000 {
        let base = &corpus[rng.gen_range(0..corpus.len())];
        let d: Vec<u8> = match rng.gen_range(0..6) {
            0 => {
                let n = rng.gen_range(0..=128);
                (0..n).map(|_| rng.gen()).collect()
            }
            1 => {
                let mut d = base.clone();
                for _ in 0..rng.gen_range(1..=4) {
                    let at = rng.gen_range(0..d.len());
                    d[at] ^= 1 << rng.gen_range(0..8);
                }
                d
            }
            2 => {
                let mut d = base.clone();
                let at = rng.gen_range(4..d.len());
                d[at] = rng.gen();
                d
            }
            3 => {
                let mut d = base.clone();
                if rng.gen_bool(0.5) {
                    d.truncate(rng.gen_range(0..d.len()));
                } else {
                    for _ in 0..rng.gen_range(1..40) {
                        d.push(rng.gen());
                    }
                }
                d
            }
            4 => {
                let ty = types[rng.gen_range(0..types.len())];
                let len = MsgType::from_byte(ty).map_or(rng.gen_range(4..100), |t| t.wire_len());
                let mut d = vec![0x4C, 0x55, 1, ty];
                d.extend((4..len).map(|_| rng.gen::<u8>()));
                d
            }
            _ => base.clone(),
        };
        let src = match rng.gen_range(0..10) {
            0 => std::net::SocketAddr::from(([127, 0, 0, 1], rng.gen_range(1..1024))),
            1 => std::net::SocketAddr::from(([10, 0, 0, 9], rng.gen_range(1024..=u16::MAX))),
            _ => client_addr(rng.gen_range(0..sim.clients.len())),
        };
        let (r, reply) = sim.inject(src, &d);
        assert!(
            reply.len() <= d.len(),
            "iteration {i}: {}-byte reply to a {}-byte datagram",
            reply.len(),
            d.len()
        );
        if r != Reply::None {
            answered += 1;
            assert!(src.port() >= 1024, "answered a system port");
            let req = msg_type(&d).expect("only lic-udp datagrams are answered");
            assert!(!req.is_server_to_client(), "answered a {req:?}");
            let rep = msg_type(&reply).expect("a lic-udp reply");
            assert!(rep.is_server_to_client());
            assert_eq!(reply.len(), rep.wire_len());
        }
        assert!(sim.seats(1) <= 2);
        assert!(sim.server().live_leases() <= 2);
        // The same garbage at a client must not panic it.
        let c = rng.gen_range(0..sim.clients.len());
        sim.inject_to_client(c, &d);
        if i % 200 == 0 {
            sim.run_for(ms(700));
        }
    }
    assert!(answered > 100, "only {answered} datagrams were answered");
    // The holders were not disturbed by any of it.
    sim.run_for(TTL * 2);
    for &i in &holders_before {
        let cl = sim.client(i);
        assert!(cl.core.is_holding(), "client {i}: {:?}", cl.events_only());
        assert!(!cl.events_only().contains(&Event::Lost), "client {i}");
    }
    assert_eq!(sim.seats(1), 2);
}

fn encode(msg: Message) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = wire::encode_unsigned(&msg, &mut buf).expect("encodes");
    buf[..n].to_vec()
}

#[test]
fn spoofed_stale_costs_a_round_trip_and_older_proof_replay_is_dropped() {
    let mut sim = single(20, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    let lease = sim.client(c).core.lease_id().expect("granted");
    let (_, old_proof) = sim.client(c).sent_of(MsgType::Proof)[0].clone();

    // A spoofed STALE (unauthenticated) makes the holder re-handshake, nothing more.
    let t = sim.now;
    sim.inject_to_client(c, &encode(Message::Stale(wire::Stale { lease_id: lease, epoch: 1 })));
    // HELLO at t, CHALLENGE back at t+1 ms, PROOF at t+2 ms, GRANT back at t+4 ms.
    sim.run_until(t + ms(2));
    let proofs = sim.client(c).sent_of(MsgType::Proof);
    assert_eq!(proofs.len(), 2);
    let Message::Proof(p2) = decode(&proofs[1].1) else { unreachable!() };
    assert_eq!(p2.prev_lease_id, lease);
    // A spoofed UNKNOWN for that PROOF is ignored while re-acquiring a seat once held.
    sim.inject_to_client(c, &encode(Message::Unknown(wire::Unknown { client_nonce: p2.client_nonce })));
    sim.run_for(secs(1));
    let cl = sim.client(c);
    assert_eq!(cl.events_only().len(), 1, "{:?}", cl.events_only());
    assert!(cl.core.is_holding());
    assert_eq!(cl.core.lease_id(), Some(lease));
    assert_eq!(sim.stats().regrants, 1);

    // The first PROOF, replayed while its cookie is still alive, is older than the current
    // session: dropped, and the holder's new session keeps working.
    let replays = sim.stats().dropped_replay;
    assert_eq!(sim.inject(client_addr(c), &old_proof).0, Reply::None);
    assert_eq!(sim.stats().dropped_replay, replays + 1);
    sim.run_for(secs(90));
    let cl = sim.client(c);
    assert_eq!(cl.events_only().len(), 1, "{:?}", cl.events_only());
    assert!(cl.core.is_holding());
    let st = sim.stats();
    assert_eq!(st.dropped_mac, 0);
    assert_eq!(st.expiries, 0);
    assert!(st.heartbeats >= 6);
}

#[test]
fn regrant_after_restart_renews_the_lease() {
    let mut sim = single(21, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(40));
    sim.crash();
    sim.run_for(secs(1));
    sim.boot();
    let boot = sim.now;
    // Run until the holder has re-handshaken, then let it go silent.
    sim.run_while_not(secs(20), |s| s.client(c).received_of(MsgType::Grant).len() == 2)
        .expect("re-handshake");
    assert_eq!(sim.stats().regrants, 1);
    let proof_at = sim
        .server_log
        .iter()
        .filter(|d| msg_type(&d.request) == Some(MsgType::Proof))
        .map(|d| d.at)
        .next_back()
        .expect("PROOF");
    assert!(proof_at > boot + secs(1), "the test needs the PROOF well after the boot");
    sim.clients[c].stopped = true;
    let freed = run_until_freed(&mut sim, secs(120));
    assert!(freed >= proof_at + TTL, "expired {:?} early", proof_at + TTL - freed);
    assert!(freed <= proof_at + TTL + SWEEP);
}

#[test]
fn client_reports_loss_no_later_than_the_server_frees_the_seat() {
    // The first GRANT is lost: the client gets the seat from a retransmitted PROOF, whose
    // GRANT says nothing of when the server renewed the lease (at the first PROOF). Then the
    // client is cut off before its first heartbeat.
    let mut sim = single(22, 1);
    let mut dropped_one = false;
    sim.filter = Some(Box::new(move |dir, _, d| {
        if dir == Dir::ToClient && msg_type(d) == Some(MsgType::Grant) && !dropped_one {
            dropped_one = true;
            return true;
        }
        false
    }));
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(3));
    assert!(sim.client(c).core.is_holding());
    let proofs = sim.client(c).sent_of(MsgType::Proof);
    assert_eq!(proofs.len(), 2, "one retransmission");
    let first_sent = proofs[0].0;
    sim.clients[c].cut = true;
    let mut lost_at = None;
    let mut freed = None;
    sim.run_for_with(TTL + secs(10), |s| {
        let cl = s.client(c);
        if cl.core.is_holding() {
            assert_eq!(s.seats(1), 1, "the client holds a seat the server freed");
        }
        if lost_at.is_none() && cl.first(|e| *e == Event::Lost).is_some() {
            lost_at = Some(s.now);
        }
        if freed.is_none() && s.seats(1) == 0 {
            freed = Some(s.now);
        }
    });
    let (lost_at, freed) = (lost_at.expect("Lost"), freed.expect("freed"));
    assert_eq!(lost_at, first_sent + TTL);
    assert!(lost_at < freed);
}

#[test]
fn heartbeat_retransmissions_back_off_with_fresh_seqs() {
    let mut sim = single(23, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    let acked = sim.client(c).sent_of(MsgType::Heartbeat).len();
    assert_eq!(acked, 1);
    let last_acked_sent = sim.client(c).sent_of(MsgType::Heartbeat)[0].0;
    sim.filter = Some(Box::new(|dir, _, d| dir == Dir::ToServer && msg_type(d) == Some(MsgType::Heartbeat)));
    sim.run_for(TTL);
    let cl = sim.client(c);
    let (lost_at, _) = cl.first(|e| *e == Event::Lost).expect("Lost");
    assert_eq!(lost_at, last_acked_sent + TTL);
    let hbs: Vec<(Instant, u64)> = cl
        .sent_of(MsgType::Heartbeat)
        .into_iter()
        .skip(1)
        .filter(|(t, _)| *t < lost_at)
        .map(|(t, d)| match decode(&d) {
            Message::Heartbeat(h) => (t, h.seq),
            _ => unreachable!(),
        })
        .collect();
    // seq 2 after one interval, then retransmissions 3, 4, … after 0.5, 1, 2, 4, 8, 8 … s.
    assert!(hbs.len() >= 7, "{hbs:?}");
    let mut rto = ms(500);
    for (i, w) in hbs.windows(2).enumerate() {
        assert_eq!(w[1].1, w[0].1 + 1, "every transmission takes the next seq");
        let gap = w[1].0 - w[0].0;
        let (lo, hi) = jittered(rto);
        assert!(gap >= lo && gap <= hi, "retransmission {i}: {gap:?} not in {lo:?}..{hi:?}");
        rto = (rto * 2).min(secs(8));
    }
    assert_eq!(hbs[0].1, 2);
    // After the loss the client goes back to HELLO.
    assert!(cl.sent.iter().any(|(t, d)| *t >= lost_at && msg_type(d) == Some(MsgType::Hello)));
}

#[test]
fn release_without_ack_is_sent_three_times() {
    let mut sim = single(24, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    sim.s2c = Faults::dead();
    let t = sim.now;
    sim.with_client(c, |core, now| core.release(now));
    sim.run_for(secs(1));
    assert_eq!(sim.seats(1), 0, "the first RELEASE freed the seat");
    sim.run_for(secs(20));
    let cl = sim.client(c);
    let releases: Vec<Instant> =
        cl.sent_of(MsgType::Heartbeat).into_iter().filter(|(at, _)| *at >= t).map(|(at, _)| at).collect();
    assert_eq!(releases.len(), 3);
    assert_eq!(cl.events_only().last(), Some(&Event::Released));
    assert!(cl.core.is_done());
    // Later RELEASEs found no lease: STALE (lost on the way back).
    assert_eq!(sim.stats().releases, 1);
    assert!(sim.stats().stale >= 2);

    // A RELEASE answered by STALE (the lease is already gone) counts as released.
    let mut sim = single(25, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    sim.restart();
    sim.with_client(c, |core, now| core.release(now));
    sim.run_for(secs(1));
    let cl = sim.client(c);
    assert_eq!(cl.events_only().last(), Some(&Event::Released));
    assert_eq!(cl.received_of(MsgType::Stale).len(), 1);
}

#[test]
fn client_ignores_forged_server_datagrams() {
    let mut sim = single(26, 2);
    let c = sim.add_client(SERIAL);
    // HELLO at 0, CHALLENGE at 1 ms, PROOF at 2 ms: the client now waits for GRANT/DENY.
    sim.run_until(sim.base + ms(2));
    assert_eq!(sim.client(c).sent_of(MsgType::Proof).len(), 1);
    let forged_grant = {
        let mut d = encode(Message::Grant(wire::Grant {
            lease_id: 0x4141,
            epoch: 1,
            ttl_ms: 1_000_000,
            heartbeat_ms: 1,
            used: 1,
            seats: 9,
        }));
        d.extend([0xAA; 16]);
        d
    };
    let forged_deny = {
        let mut d = encode(Message::Deny(wire::Deny {
            epoch: 1,
            reason: DenyReason::Full as u8,
            retry_after_ms: 0,
            used: 2,
            seats: 2,
        }));
        d.extend([0xAA; 16]);
        d
    };
    sim.inject_to_client(c, &forged_grant);
    sim.inject_to_client(c, &forged_deny);
    sim.run_for(secs(20));
    let cl = sim.client(c);
    let lease = cl.core.lease_id().expect("the real GRANT");
    assert_eq!(sim.server().holders()[0].lease_id, lease);
    match cl.events_only().as_slice() {
        [Event::Granted { lease_id, seats: 2, used: 1, .. }] => assert_eq!(*lease_id, lease),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.stats().stale, 0, "never heartbeated a forged lease");

    // A forged ACK REVOKED / RELEASED for a heartbeat it did send (right lease, epoch and seq,
    // wrong tag) does not end the lease.
    // The ACKs of the next heartbeat are lost, so that heartbeat is still awaiting one.
    sim.filter = Some(Box::new(|dir, _, d| dir == Dir::ToClient && msg_type(d) == Some(MsgType::Ack)));
    let n = sim.client(c).sent_of(MsgType::Heartbeat).len();
    sim.run_while_not(secs(20), |s| s.client(c).sent_of(MsgType::Heartbeat).len() > n).expect("a heartbeat");
    let hbs = sim.client(c).sent_of(MsgType::Heartbeat);
    let Message::Heartbeat(hb) = decode(&hbs[hbs.len() - 1].1) else { unreachable!() };
    for status in [AckStatus::Revoked, AckStatus::Expired, AckStatus::Released, AckStatus::Ok] {
        let mut d = encode(Message::Ack(wire::Ack {
            lease_id: lease,
            epoch: 1,
            seq: hb.seq,
            status: status as u8,
            ttl_ms: 0,
        }));
        d.extend([0x55; 16]);
        sim.inject_to_client(c, &d);
    }
    sim.filter = None;
    sim.run_for(TTL * 2);
    let cl = sim.client(c);
    assert_eq!(cl.events_only().len(), 1, "{:?}", cl.events_only());
    assert!(cl.core.is_holding());
    assert_eq!(sim.stats().expiries, 0);
}

#[test]
fn server_drops_proof_with_a_bad_tag() {
    let mut sim = single(27, 2);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(5));
    let (_, proof) = sim.client(c).sent_of(MsgType::Proof)[0].clone();
    let mac_drops = sim.stats().dropped_mac;
    // Another instance under the same (still valid) cookie: the tag no longer matches.
    let mut other = proof.clone();
    other[4 + 8] ^= 0x01; // first byte of instance_id
    assert_eq!(sim.inject(client_addr(c), &other).0, Reply::None);
    // The holder's own PROOF with one tag bit flipped.
    let mut flipped = proof.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x80;
    assert_eq!(sim.inject(client_addr(c), &flipped).0, Reply::None);
    assert_eq!(sim.stats().dropped_mac, mac_drops + 2);
    assert_eq!(sim.server().live_leases(), 1);
    assert_eq!(sim.stats().grants, 1);
    assert_eq!(sim.stats().regrants, 0);
}

#[test]
fn replayed_proof_after_the_lease_ended_takes_no_seat() {
    // §10: replaying captured datagrams gains nothing. A PROOF replayed (from the holder's own
    // address, as a LAN spoofer can) while its cookie still lives must not bring back a lease
    // that was released or expired, or it holds a seat nobody uses for a whole TTL.
    let mut sim = single(29, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(5));
    let (_, proof) = sim.client(c).sent_of(MsgType::Proof)[0].clone();
    sim.with_client(c, |core, now| core.release(now));
    sim.run_for(secs(1));
    assert_eq!(sim.seats(1), 0);
    let (r, _) = sim.inject(client_addr(c), &proof);
    sim.commit();
    assert_eq!(r, Reply::None, "a replayed PROOF revived a released lease");
    assert_eq!(sim.seats(1), 0);
    let d = sim.add_client(SERIAL);
    sim.run_for(secs(2));
    assert_eq!(sim.client(d).count(is_granted), 1, "{:?}", sim.client(d).events_only());

    // The same after an expiry, with a TTL shorter than the cookie's life.
    let mut spec = LicenseSpec::new(1, SERIAL, 1);
    spec.ttl = secs(6);
    spec.heartbeat = secs(2);
    let mut sim = Sim::new(30, vec![spec]);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(3));
    let (_, proof) = sim.client(c).sent_of(MsgType::Proof)[0].clone();
    sim.clients[c].stopped = true;
    run_until_freed(&mut sim, secs(20));
    assert!(sim.elapsed() < secs(25), "the cookie must still be alive for this test");
    assert_eq!(
        sim.inject(client_addr(c), &proof).0,
        Reply::None,
        "a replayed PROOF revived an expired lease"
    );
    assert_eq!(sim.seats(1), 0);
    // A new handshake of that same instance (the program acquires again) is not a replay,
    // even within the second its lease ended.
    sim.reacquire(c);
    sim.run_for(secs(1));
    assert_eq!(sim.client(c).count(is_granted), 2);
    assert!(sim.client(c).core.is_holding());

    let mut sim = single(31, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(ms(500));
    sim.with_client(c, |core, now| core.release(now));
    sim.run_for(ms(10));
    assert_eq!(sim.seats(1), 0);
    sim.reacquire(c);
    sim.run_for(ms(10));
    assert!(sim.elapsed() < secs(1), "all within the first second of the server's clock");
    assert_eq!(sim.client(c).count(is_granted), 2, "{:?}", sim.client(c).events_only());
    assert_eq!(sim.seats(1), 1);
}

#[test]
fn force_release_frees_the_seat_and_a_live_holder_comes_back_under_a_new_lease() {
    let mut sim = single(21, 1);
    let a = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    let lease = sim.client(a).core.lease_id().expect("granted");
    let now = sim.now;
    let r = sim.server().force_release(now, lease, "root").expect("a live lease");
    assert_eq!(r.lease_id, lease);
    assert_eq!(sim.seats(1), 0, "freed at once");
    assert!(sim.server().force_release(now, lease, "root").is_none(), "released once");
    assert_eq!(sim.stats().force_releases, 1);
    // The holder's next heartbeat gets STALE; it re-handshakes and takes the free seat again.
    sim.run_for(secs(40));
    let again = sim.client(a).core.lease_id().expect("holds again");
    assert_ne!(again, lease);
    assert_eq!(sim.seats(1), 1);
    sim.commit();
    assert!(sim
        .store
        .contains(&JournalOp::Remove { lease_id: lease, why: EndReason::ForceReleased("root".into()) }));
    assert!(sim.restored_leases().iter().all(|l| l.lease_id != lease), "the removal is durable");
}

#[test]
fn force_released_holder_does_not_take_a_seat_a_newcomer_got_first() {
    let mut sim = single(22, 1);
    let a = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    let lease = sim.client(a).core.lease_id().expect("granted");
    let now = sim.now;
    sim.server().force_release(now, lease, "root").expect("a live lease");
    let b = sim.add_client(SERIAL);
    let mut max_seats = 0;
    sim.run_for_with(secs(120), |s| max_seats = max_seats.max(s.seats(1)));
    assert_eq!(max_seats, 1, "never more than the one seat");
    assert_eq!(sim.client(b).count(is_granted), 1, "the newcomer got the freed seat");
    let holder = sim.server().holders();
    assert_eq!(holder.len(), 1);
    assert_eq!(Some(holder[0].lease_id), sim.client(b).core.lease_id());
    assert!(sim.client(a).count(|e| *e == Event::Lost) >= 1, "the released holder reports the loss");
    assert!(sim.stats().denied_full >= 1, "and was refused while the seat was taken");
}

#[test]
fn the_monitor_shows_one_second_for_one_heartbeat() {
    let mut sim = single(23, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    let lease = sim.client(c).core.lease_id().expect("granted");
    let last = last_accepted_heartbeat(&sim, c);
    // Wall clock 1,700,000,000.730 s at `last`; read the view at many instants before the next
    // heartbeat: the second shown must not flip (it did when whole seconds were subtracted).
    let base_ms = 1_700_000_000_730u64;
    let mut shown = HashSet::new();
    for k in 0..40u64 {
        let dt = ms(k * 97);
        let view = sim.server().lease_views(last + dt, base_ms + k * 97);
        let v = view.iter().find(|v| v.lease.lease_id == lease).expect("live");
        shown.insert(v.last_heartbeat_unix);
    }
    assert_eq!(shown.into_iter().collect::<Vec<_>>(), vec![1_700_000_000]);
}

#[test]
fn replayed_proof_from_the_same_server_second_neither_rekeys_nor_revives() {
    // Issue 11 item 1: two handshakes of one holder within one server second carry the same
    // cookie `ts`. Replaying the first PROOF must not re-key the lease (the holder's
    // heartbeats would then fail the MAC) nor bring back the lease once released.
    let mut sim = single(32, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(ms(20));
    let lease = sim.client(c).core.lease_id().expect("granted");
    let (_, first_proof) = sim.client(c).sent_of(MsgType::Proof)[0].clone();
    // A spoofed STALE: the holder re-handshakes, still within the server's first second.
    sim.inject_to_client(c, &encode(Message::Stale(wire::Stale { lease_id: lease, epoch: 1 })));
    sim.run_for(ms(20));
    assert!(sim.elapsed() < secs(1), "both handshakes must share the cookie ts");
    let proofs = sim.client(c).sent_of(MsgType::Proof);
    assert_eq!(proofs.len(), 2);
    let Message::Proof(p1) = decode(&first_proof) else { unreachable!() };
    let Message::Proof(p2) = decode(&proofs[1].1) else { unreachable!() };
    assert_eq!(p1.cookie.ts, p2.cookie.ts);
    assert_eq!(sim.stats().regrants, 1);

    let replays = sim.stats().dropped_replay;
    assert_eq!(sim.inject(client_addr(c), &first_proof).0, Reply::None, "the replay was answered");
    assert_eq!(sim.stats().dropped_replay, replays + 1);
    assert_eq!(sim.stats().regrants, 1, "the replay re-keyed the lease");
    sim.run_for(secs(40));
    let cl = sim.client(c);
    assert_eq!(cl.events_only().len(), 1, "{:?}", cl.events_only());
    assert!(cl.core.is_holding());
    assert_eq!(sim.stats().dropped_mac, 0);

    // Released within the cookie's life, neither PROOF brings the lease back.
    let mut sim = single(33, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(ms(20));
    let lease = sim.client(c).core.lease_id().expect("granted");
    let (_, first_proof) = sim.client(c).sent_of(MsgType::Proof)[0].clone();
    sim.inject_to_client(c, &encode(Message::Stale(wire::Stale { lease_id: lease, epoch: 1 })));
    sim.run_for(ms(20));
    let (_, second_proof) = sim.client(c).sent_of(MsgType::Proof)[1].clone();
    sim.with_client(c, |core, now| core.release(now));
    sim.run_for(ms(20));
    assert!(sim.elapsed() < secs(1));
    assert_eq!(sim.seats(1), 0);
    for proof in [&first_proof, &second_proof] {
        let (r, _) = sim.inject(client_addr(c), proof);
        sim.commit();
        assert_eq!(r, Reply::None, "a replayed PROOF revived a released lease");
        assert_eq!(sim.seats(1), 0);
    }
    // A new handshake of that instance within the same second is not a replay.
    sim.reacquire(c);
    sim.run_for(ms(20));
    assert!(sim.elapsed() < secs(1));
    assert_eq!(sim.client(c).count(is_granted), 2, "{:?}", sim.client(c).events_only());
    assert_eq!(sim.seats(1), 1);
}

#[test]
fn a_revoked_license_frees_each_seat_when_its_holder_is_told() {
    // Issue 11 item 7: after a revocation the holder's next heartbeat gets ACK REVOKED; its
    // seat must be free from then (status, monitor, seats gauge), its end journaled as a
    // revocation, and counted with the revoked denials.
    let mut sim = single(34, 2);
    let a = sim.add_client(SERIAL);
    let b = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    assert_eq!(sim.seats(1), 2);
    sim.update_license(1, |l| l.revoked = true);
    let revoked_at = sim.now;
    let told = |sim: &Sim, c: usize| sim.client(c).first(|e| *e == Event::Ended(DenyReason::Revoked));
    sim.run_while_not(secs(30), |s| told(s, a).is_some() || told(s, b).is_some()).expect("a holder told");
    let first_told = told(&sim, a).is_some() as usize + told(&sim, b).is_some() as usize;
    assert_eq!(sim.seats(1), 2 - first_told, "a holder told of the revocation still holds a seat");
    sim.run_while_not(secs(30), |s| told(s, a).is_some() && told(s, b).is_some()).expect("both told");
    assert!(sim.now < revoked_at + secs(20), "told at their next heartbeat, not at expiry");
    assert_eq!(sim.seats(1), 0);
    assert_eq!(sim.server().live_leases(), 0);
    assert_eq!(sim.server().lease_views(sim.now, 0).len(), 0);
    sim.commit();
    let ends = sim.store.iter().filter(|op| matches!(op, JournalOp::Remove { why: EndReason::Revoked, .. }));
    assert_eq!(ends.count(), 2, "each end journaled as a revocation");
    assert_eq!(EndReason::Revoked.event(), "revoke-end");
    assert_eq!(sim.stats().denied_revoked, 2);
    assert_eq!(sim.stats().expiries, 0);
}

#[test]
fn release_retransmissions_back_off_and_stale_echoes_the_heartbeats_lease_id() {
    // proto-spec.md §6 "release" and §5 step 2, as an independent client reads them.
    let mut sim = single(35, 1);
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(20));
    let lease = sim.client(c).core.lease_id().expect("granted");
    sim.s2c = Faults::dead();
    let t = sim.now;
    sim.with_client(c, |core, now| core.release(now));
    sim.run_for(secs(20));
    let sends: Vec<Instant> = sim
        .client(c)
        .sent_of(MsgType::Heartbeat)
        .into_iter()
        .filter(|(at, _)| *at >= t)
        .map(|(at, _)| at)
        .collect();
    assert_eq!(sends.len(), 3, "3 transmissions in all");
    let (g1, g2) = (sends[1] - sends[0], sends[2] - sends[1]);
    // RTO then 2 × RTO, each jittered by [0.8, 1.2].
    assert!(g2 > g1.mul_f64(1.3), "no backoff: {g1:?} then {g2:?}");
    // The later RELEASEs reached a lease that is gone: STALE, echoing their lease_id.
    let stale: Vec<Vec<u8>> = sim
        .server_log
        .iter()
        .filter(|d| msg_type(&d.request) == Some(MsgType::Heartbeat))
        .filter_map(|d| d.reply.clone())
        .filter(|r| msg_type(r) == Some(MsgType::Stale))
        .collect();
    assert!(!stale.is_empty());
    for s in stale {
        let Message::Stale(st) = decode(&s) else { unreachable!() };
        assert_eq!(st.lease_id, lease);
    }
}

#[test]
fn the_monitor_walk_and_a_single_lookup_agree() {
    let mut sim = single(36, 3);
    for _ in 0..3 {
        sim.add_client(SERIAL);
    }
    sim.run_for(secs(20));
    let views = sim.server().lease_views(sim.now, 1_000_000);
    assert_eq!(views.len(), 3);
    assert_eq!(sim.server().holders().len(), 3);
    for v in &views {
        assert_eq!(sim.server().lease_view_of(sim.now, 1_000_000, v.lease.lease_id).as_ref(), Some(v));
    }
    assert_eq!(sim.server().lease_view_of(sim.now, 1_000_000, 0xdead), None);
}

/// Holder identity (proto-spec.md §2, PROOF_ID): a client that says who it is is recorded as
/// such; a client with today's plain PROOF is still served beside it.
#[test]
fn a_proof_id_names_the_holder_and_a_plain_proof_is_still_served() {
    let mut sim = single(31, 2);
    let alice = lic_udp::Identity::new("alice", "ws12", "cad", "2.1").expect("identity");
    sim.client_cfg.identity = Some(alice.clone());
    let a = sim.add_client(SERIAL);
    sim.client_cfg.identity = None;
    let old = sim.add_client(SERIAL);
    sim.run_for(secs(2));
    assert_eq!(sim.client(a).count(is_granted), 1);
    assert_eq!(sim.client(old).count(is_granted), 1, "the plain PROOF is served");
    assert_eq!(sim.client(a).sent_of(MsgType::ProofId).len(), 1);
    assert!(sim.client(a).sent_of(MsgType::Proof).is_empty());
    assert_eq!(sim.client(old).sent_of(MsgType::Proof).len(), 1);
    let mut who: Vec<Option<lic_udp::Identity>> =
        sim.server().holders().into_iter().map(|l| l.who.as_deref().cloned()).collect();
    who.sort_by_key(Option::is_some);
    assert_eq!(who, [None, Some(alice.clone())]);
    // The identity is recorded with the grant, so a restart keeps it.
    let granted =
        sim.store.iter().any(|op| matches!(op, JournalOp::Grant(g) if g.who.as_deref() == Some(&alice)));
    assert!(granted, "journaled with the grant");
    sim.restart();
    assert!(sim.server().holders().iter().any(|l| l.who.as_deref() == Some(&alice)), "restored");
}

/// A PROOF_ID whose identity block is not valid (here: not UTF-8) is malformed: dropped and
/// counted, never answered, even though its tag would verify.
#[test]
fn a_proof_id_with_a_bad_identity_block_is_dropped() {
    let mut sim = single(32, 2);
    sim.client_cfg.identity = Some(lic_udp::Identity::new("bob", "", "", "").expect("identity"));
    // Keep the client's PROOF_IDs from the server; replay one, broken, by hand.
    sim.filter = Some(Box::new(|dir, _, d| dir == Dir::ToServer && msg_type(d) == Some(MsgType::ProofId)));
    let c = sim.add_client(SERIAL);
    sim.run_for(ms(50));
    let (_, mut proof) = sim.client(c).sent_of(MsgType::ProofId).into_iter().next().expect("a PROOF_ID");
    let before = sim.stats();
    let (reply, _) = sim.inject(client_addr(c), &proof);
    assert!(
        matches!(reply, Reply::AfterCommit(_) | Reply::Send(_)),
        "the intact PROOF_ID is granted: {reply:?}"
    );
    proof[4 + 69] = 0xff;
    let (reply, bytes) = sim.inject(client_addr(c), &proof);
    assert!(matches!(reply, Reply::None) && bytes.is_empty(), "{reply:?}");
    assert_eq!(sim.stats().dropped_malformed - before.dropped_malformed, 1);
}

/// A server that predates PROOF_ID answers HELLO and drops the type it does not know: the
/// client falls back to a plain PROOF and gets its seat.
#[test]
fn a_client_falls_back_to_a_plain_proof_for_a_server_that_drops_proof_id() {
    let mut sim = single(33, 2);
    sim.client_cfg.identity = Some(lic_udp::Identity::new("carol", "ws3", "", "").expect("identity"));
    sim.filter = Some(Box::new(|dir, _, d| dir == Dir::ToServer && msg_type(d) == Some(MsgType::ProofId)));
    let c = sim.add_client(SERIAL);
    sim.run_for(secs(30));
    let cl = sim.client(c);
    assert_eq!(cl.count(is_granted), 1, "granted after the fallback");
    assert!(!cl.sent_of(MsgType::ProofId).is_empty());
    assert!(!cl.sent_of(MsgType::Proof).is_empty(), "then plain PROOFs");
    assert!(sim.server().holders().iter().all(|l| l.who.is_none()));
}

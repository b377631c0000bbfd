//! Faults: the server killed with SIGKILL at any instant, even in the middle of a storm of grants,
//! and restarted on the same port and data dir (proto-spec.md §7).
//!
//! What must hold, counted from the clients' side:
//! - at no instant do more clients hold a seat than the license has seats;
//! - every client that held a seat when the server died still holds it after the restart: its
//!   seat is re-acquired through one re-handshake (the same lease), its program keeps running,
//!   and, when the server was back well within the lease TTL, it never reports the seat lost.
//!
//! - `run_survives_server_restart`, `newcomer_cannot_take_a_restored_seat`: real `lic-udp run`
//!   and `verify` processes.
//! - `crash_restart_during_grant_storm`: 20 SIGKILLs in a storm of in-process clients
//!   (`lic_udp::Client`), sampled every 20 ms. Crash times, outages and holds come from a seeded
//!   RNG whose seed is printed (`LIC_UDP_RESTART_SEED=N` replays it; the OS scheduler still
//!   varies). The 100-crash variant is `#[ignore]`d: `cargo test --test restart -- --ignored`.
//! - `holders_report_no_loss_after_an_outage_well_within_the_ttl` and
//!   `a_holder_whose_regrant_is_cut_off_by_a_crash_keeps_its_seat`: regression tests for two
//!   client bugs these tests found (retries backing off past the loss deadline; a PROOF with a
//!   dead server's cookie retransmitted for ~23 s). Both are fixed in `src/proto/client.rs`.
//!
//! The server runs with `--lease-ttl 3s --heartbeat 500ms` on a port below the ephemeral range,
//! so that no client socket can take it while the server is down.

mod common;

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lic_udp::{AcquireError, Client, SeatStatus, Serial};
use nix::sys::signal::Signal;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::sync::watch;

const TTL: Duration = Duration::from_secs(3);
const HEARTBEAT: Duration = Duration::from_millis(500);
const TIMERS: [&str; 4] = ["--lease-ttl", "3s", "--heartbeat", "500ms"];
/// The longest outage (SIGKILL to the new server's start line) after which a holder must not
/// report its seat lost. A holder's last acknowledged heartbeat was at most one interval
/// (+10 % jitter) before the crash, so the server is back at least 0.85 s, 1.7 heartbeat
/// intervals, before the holder's lease can run out locally: time for a client that keeps
/// probing to get its seat back with one re-handshake.
const NO_LOSS_OUTAGE: Duration = Duration::from_millis(1600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------------
// `lic-udp run` holders.

fn spawn_run(serial: &str, server: &str) -> Child {
    lic(&["run", "--serial", serial, "--server", server, "--", "sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lic-udp run")
}

fn alive(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// SIGTERMs a `run` (it forwards the signal to `sleep`) and returns its exit code and stderr.
fn stop_run(child: Child) -> (i32, String) {
    signal(&child, Signal::SIGTERM);
    let out = child.wait_with_output().expect("wait run");
    (code(&out), text(&out.stderr))
}

fn verify(serial: &str, server: &str) -> std::process::Output {
    output(lic(&["verify", "--serial", serial, "--server", server, "--timeout", "5s"]))
}

/// Stops the `lic-udp run` children a failed assertion leaves behind, `sleep` included.
struct Runs(Vec<Child>);

impl Drop for Runs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if alive(c) {
                signal(c, Signal::SIGCONT);
                signal(c, Signal::SIGTERM);
            }
        }
        for c in &mut self.0 {
            if !wait_for(Duration::from_secs(5), || !alive(c)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Two `lic-udp run` hold both seats; the server is SIGKILLed and restarted. Both programs keep
/// running (they are never restarted), neither reports its seat lost, a newcomer is refused, and
/// the store shows the same two leases.
#[test]
fn run_survives_server_restart() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(2));
    let listen = format!("127.0.0.1:{}", free_udp_port_below_ephemeral_range());
    let (mut server, _) = start_serve(dir.path(), &listen, &TIMERS);
    let s = server.server_arg();

    let mut runs = Runs(vec![spawn_run(&serial, &s), spawn_run(&serial, &s)]);
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 2), "both runs hold a seat");
    let before = holders(dir.path(), 1);
    assert_eq!(before.len(), 2);

    server.child.kill().expect("SIGKILL the server");
    let _ = server.child.wait();
    std::thread::sleep(ms(500));
    let (server, line) = start_serve(dir.path(), &listen, &TIMERS);
    assert_eq!(server.server_arg(), s, "same port");
    assert_eq!(restored_leases(&line), 2, "{line}");

    // Three TTLs: without re-handshakes both restored leases would have expired twice over.
    let restarted = Instant::now();
    while restarted.elapsed() < TTL * 3 {
        for (i, r) in runs.0.iter_mut().enumerate() {
            assert!(alive(r), "run {i} ended {:?} after the restart", restarted.elapsed());
        }
        std::thread::sleep(ms(100));
    }
    let o = verify(&serial, &s);
    assert_eq!(code(&o), 1, "a newcomer finds the license full: {}", text(&o.stderr));
    assert!(text(&o.stderr).contains("all 2 seats"), "{}", text(&o.stderr));
    assert_eq!(holders(dir.path(), 1), before, "the same two leases and instances hold the seats");

    for (i, r) in std::mem::take(&mut runs.0).into_iter().enumerate() {
        let (code, stderr) = stop_run(r);
        assert_eq!(code, 128 + 15, "run {i}: sleep died of the forwarded SIGTERM; stderr: {stderr}");
        assert!(!stderr.contains("lost the license seat"), "run {i} reported a loss: {stderr}");
    }
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 0), "both seats released");
}

/// One holder of a 1-seat license; crash; restart; before the holder can re-handshake (it is
/// stopped with SIGSTOP), newcomers are refused: the restored lease counts from the first
/// datagram. Once resumed, the holder takes its seat back and keeps it past the restored TTL.
#[test]
fn newcomer_cannot_take_a_restored_seat() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(1));
    let listen = format!("127.0.0.1:{}", free_udp_port_below_ephemeral_range());
    let (mut server, _) = start_serve(dir.path(), &listen, &TIMERS);
    let s = server.server_arg();

    let mut runs = Runs(vec![spawn_run(&serial, &s)]);
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 1), "the run holds the seat");
    let before = holders(dir.path(), 1);

    signal(&runs.0[0], Signal::SIGSTOP);
    let stopped = Instant::now();
    server.child.kill().expect("SIGKILL the server");
    let _ = server.child.wait();
    let (server, line) = start_serve(dir.path(), &listen, &TIMERS);
    let restarted = Instant::now();
    assert_eq!(restored_leases(&line), 1, "{line}");
    // Three newcomers at once, right away.
    let newcomers: Vec<_> = (0..3)
        .map(|_| {
            lic(&["verify", "--serial", &serial, "--server", &s, "--timeout", "5s"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn verify")
        })
        .collect();
    for (i, n) in newcomers.into_iter().enumerate() {
        let o = n.wait_with_output().expect("verify");
        assert_eq!(code(&o), 1, "newcomer {i} must be refused: {}{}", text(&o.stdout), text(&o.stderr));
    }
    signal(&runs.0[0], Signal::SIGCONT);
    let paused = stopped.elapsed();
    assert!(paused < TTL - HEARTBEAT, "the holder was paused {paused:?}, too close to the TTL for this test");

    // Past the restored lease's own expiry (restart + TTL): only a re-handshake keeps it.
    while restarted.elapsed() < TTL + ms(1500) {
        assert!(alive(&mut runs.0[0]), "the holder ended after the restart");
        std::thread::sleep(ms(100));
    }
    let o = verify(&serial, &server.server_arg());
    assert_eq!(code(&o), 1, "the holder kept its seat: {}", text(&o.stderr));
    assert_eq!(holders(dir.path(), 1), before, "the same lease");
    let (code, stderr) = stop_run(runs.0.remove(0));
    assert_eq!(code, 128 + 15, "{stderr}");
    assert!(!stderr.contains("lost the license seat"), "{stderr}");
}

/// Regression test (client retries backed off past the loss deadline). 16 in-process holders; three times the server is SIGKILLed and is back
/// 1.5 s later, half the 3 s TTL. Every holder must take its seat back with one re-handshake and
/// never report it lost. The client backs its heartbeat retransmissions off to 1, 2, 4 s
/// (proto-spec.md §6) whatever the lease TTL, so a holder whose next probe after the outage falls
/// beyond its lease deadline reports Lost (and `run --on-loss kill` would kill its program),
/// although the server restored its seat and gives it back at once.
#[test]
fn holders_report_no_loss_after_an_outage_well_within_the_ttl() {
    const HOLDERS: u16 = 16;
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = Serial::parse(&issue(dir.path(), "alice", "team", Some(HOLDERS))).expect("serial");
    let listen = format!("127.0.0.1:{}", free_udp_port_below_ephemeral_range());
    let (mut server, _) = start_serve(dir.path(), &listen, &TIMERS);
    let addr = server.addr;
    let rt = runtime();
    // Staggered over one heartbeat interval, so that the crashes hit every heartbeat phase.
    let seats = rt.block_on(async {
        let first = Client::new(addr);
        let mut seats = vec![first.acquire(&serial).await.expect("seat")];
        let keys = first.cached_keys().expect("keys");
        for _ in 1..HOLDERS {
            tokio::time::sleep(HEARTBEAT / u32::from(HOLDERS)).await;
            let c = Client::new(addr).with_cached_keys(keys.clone());
            seats.push(c.acquire(&serial).await.expect("seat"));
        }
        seats
    });
    let mut leases: Vec<String> = seats.iter().map(|s| format!("{:016x}", s.info().lease_id)).collect();
    leases.sort();
    let mut status: Vec<_> = seats.iter().map(|s| s.status()).collect();
    let mut lost = Vec::new();
    for round in 0..3u64 {
        std::thread::sleep(ms(700 + 130 * round));
        for st in &mut status {
            st.borrow_and_update();
        }
        server.child.kill().expect("SIGKILL the server");
        let at = Instant::now();
        let _ = server.child.wait();
        std::thread::sleep(ms(1500));
        let (next, line) = start_serve(dir.path(), &listen, &TIMERS);
        server = next;
        let outage = at.elapsed();
        assert_eq!(restored_leases(&line), usize::from(HOLDERS), "{line}");
        // By then every holder has either re-handshaken or reported the loss (and, the server
        // being up, regained the seat within a round trip).
        std::thread::sleep((at + TTL + ms(150)).saturating_duration_since(Instant::now()));
        assert!(
            wait_for(Duration::from_secs(1), || status.iter().all(|s| *s.borrow() == SeatStatus::Held)),
            "round {round}: every holder holds its seat after the restart"
        );
        let leases_now: Vec<String> = holders(dir.path(), 1).into_iter().map(|(l, _)| l).collect();
        assert_eq!(leases_now, leases, "round {round}: the same leases");
        let disturbed: Vec<usize> = (status.iter_mut().enumerate())
            .filter(|(_, s)| s.has_changed().unwrap_or(true))
            .map(|(i, _)| i)
            .collect();
        eprintln!("round {round}: down {outage:?}; holders that reported a loss: {disturbed:?}");
        if outage <= NO_LOSS_OUTAGE && !disturbed.is_empty() {
            lost.push(format!("round {round}, outage {outage:?}: holders {disturbed:?} (of {HOLDERS})"));
        }
    }
    rt.block_on(async {
        for s in seats {
            s.release().await;
        }
    });
    assert!(
        lost.is_empty(),
        "REGRESSION (client: heartbeat retransmissions back off past the lease deadline): holders \
         reported their seat lost (Lost, then Held again) although the server was back within half \
         the {TTL:?} TTL: {lost:#?}"
    );
}

/// A relay between one client and the server that can drop the server's GRANTs.
struct GrantDropper {
    addr: std::net::SocketAddr,
    dropping: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

async fn grant_dropper(server: std::net::SocketAddr) -> GrantDropper {
    use tokio::net::UdpSocket;
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
    back.connect(server).await.expect("connect relay");
    let client = Arc::new(Mutex::new(None));
    let (dropping, dropped) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let addr = front.local_addr().expect("relay addr");
    {
        let (front, back, client) = (front.clone(), back.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((n, src)) = front.recv_from(&mut buf).await else { continue };
                *client.lock().expect("client") = Some(src);
                let _ = back.send(&buf[..n]).await;
            }
        });
    }
    {
        let (dropping, dropped) = (dropping.clone(), dropped.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                // Errors are ICMP port unreachable while the server is down.
                let Ok(n) = back.recv(&mut buf).await else { continue };
                if dropping.load(Ordering::SeqCst) && n > 3 && buf[3] == 0x82 {
                    dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let to = *client.lock().expect("client");
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    GrantDropper { addr, dropping, dropped }
}

/// Regression test (a dead server's cookie retransmitted too long). A holder re-handshakes after a restart, and the server dies again
/// before the re-GRANT reaches it (here the relay drops it; in the wild, a lost datagram or a
/// crash between PROOF and GRANT). The next server drops the holder's PROOF, whose cookie it cannot
/// know, and the client keeps retransmitting that PROOF for 6 sends (~23 s) before it starts over
/// at HELLO: far beyond the 3 s TTL, so its restored lease expires and a newcomer takes the seat,
/// although the server was down for milliseconds.
#[test]
fn a_holder_whose_regrant_is_cut_off_by_a_crash_keeps_its_seat() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial_text = issue(dir.path(), "alice", "team", Some(1));
    let serial = Serial::parse(&serial_text).expect("serial");
    let listen = format!("127.0.0.1:{}", free_udp_port_below_ephemeral_range());
    let (mut server, _) = start_serve(dir.path(), &listen, &TIMERS);
    let rt = runtime();
    let relay = rt.block_on(grant_dropper(server.addr));
    let seat = rt.block_on(Client::new(relay.addr).acquire(&serial)).expect("seat");
    let status = seat.status();

    // First crash; the holder's re-handshake with the new server gets no GRANT.
    relay.dropping.store(true, Ordering::SeqCst);
    server.child.kill().expect("SIGKILL the server");
    let _ = server.child.wait();
    let (mut server, _) = start_serve(dir.path(), &listen, &TIMERS);
    assert!(
        wait_for(Duration::from_secs(5), || relay.dropped.load(Ordering::SeqCst) > 0),
        "the holder re-handshook with the restarted server"
    );
    // Second crash, at once: the holder's PROOF now carries a cookie the next server cannot know.
    server.child.kill().expect("SIGKILL the server");
    let _ = server.child.wait();
    let (server, line) = start_serve(dir.path(), &listen, &TIMERS);
    let restarted = Instant::now();
    relay.dropping.store(false, Ordering::SeqCst);
    assert_eq!(restored_leases(&line), 1, "{line}");

    // Past the restored lease's own expiry: the seat is the holder's only if it re-handshook.
    std::thread::sleep((restarted + TTL + ms(1000)).saturating_duration_since(Instant::now()));
    let o = verify(&serial_text, &server.server_arg());
    let now = *status.borrow();
    rt.block_on(seat.release());
    assert!(
        code(&o) == 1 && now == SeatStatus::Held,
        "REGRESSION (client: a re-acquiring holder retransmits a PROOF to a restarted server for \
         ~23 s before it starts over at HELLO, far beyond the lease TTL): two restarts that took \
         milliseconds cost the holder its seat. A newcomer's verify exited {} ({}), the holder is \
         {now:?}; the relay dropped {} GRANTs",
        code(&o),
        text(&o.stdout).trim(),
        relay.dropped.load(Ordering::SeqCst)
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

// ---------------------------------------------------------------------------------------------
// The grant storm.

struct Plan {
    seats: u16,
    clients: usize,
    crashes: usize,
    /// Chance that the next crash comes right after a restart, while the holders re-handshake,
    /// instead of after the previous one has settled. Never twice in a row.
    quick: f64,
}

/// How long a first acquisition may take before the client gives up and tries again.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disturbance {
    Lost,
    /// Held again after a change: a Lost came first, even if the watch coalesced it.
    Regained,
    Ended,
}

struct SeatEvent {
    client: usize,
    lease_id: u64,
    at: Instant,
    what: Disturbance,
}

/// Set at a crash on every client that held a seat; until the test has checked that the client
/// still holds it after the restart, the client keeps the seat.
struct Pin {
    crash: usize,
    at: Instant,
    /// When the next crash came, if one did before the check: back-to-back outages.
    next: Option<Instant>,
}

struct Holding {
    status: watch::Receiver<SeatStatus>,
    lease_id: u64,
    pin: Option<Pin>,
}

impl Holding {
    fn held(&self) -> bool {
        *self.status.borrow() == SeatStatus::Held
    }
}

#[derive(Default)]
struct Tally {
    grants: AtomicU64,
    full: AtomicU64,
    busy: AtomicU64,
    unavailable: AtomicU64,
    unreachable: AtomicU64,
    timed_out: AtomicU64,
    other: AtomicU64,
}

struct Storm {
    /// One per client: `Some` from a successful acquire until the client decides to give the seat
    /// back (before it sends the release). A client holds a seat while `Some` and `Held`. The
    /// sampler and the crash take this lock, so they see every client at one instant.
    slots: Mutex<Vec<Option<Holding>>>,
    events: Mutex<Vec<SeatEvent>>,
    /// When each acquire returned a seat.
    grant_times: Mutex<Vec<Instant>>,
    unexpected: Mutex<Vec<String>>,
    tally: Tally,
    stop: AtomicBool,
}

impl Storm {
    fn pinned(&self, i: usize) -> bool {
        self.slots.lock().expect("slots")[i].as_ref().is_some_and(|h| h.pin.is_some())
    }

    /// True if client `i` is pinned; else it gives its seat up (before it sends the release).
    fn pinned_or_let_go(&self, i: usize) -> bool {
        let mut slots = self.slots.lock().expect("slots");
        let pinned = slots[i].as_ref().is_some_and(|h| h.pin.is_some());
        if !pinned {
            slots[i] = None;
        }
        pinned
    }
}

async fn storm_client(i: usize, storm: Arc<Storm>, client: Client, serial: Serial, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !storm.stop.load(Ordering::SeqCst) {
        match client.acquire(&serial).await {
            Ok(seat) => {
                let status = seat.status();
                let lease_id = seat.info().lease_id;
                storm.slots.lock().expect("slots")[i] =
                    Some(Holding { status: status.clone(), lease_id, pin: None });
                storm.tally.grants.fetch_add(1, Ordering::SeqCst);
                storm.grant_times.lock().expect("grant times").push(Instant::now());
                tokio::spawn(watch_seat(storm.clone(), i, lease_id, status));
                tokio::time::sleep(ms(rng.gen_range(30..700))).await;
                while storm.pinned_or_let_go(i) {
                    while storm.pinned(i) {
                        tokio::time::sleep(ms(10)).await;
                    }
                    // Checked seats stay in use a little longer, so that the next crash also
                    // finds holders of some standing, at every phase of their heartbeats.
                    tokio::time::sleep(ms(rng.gen_range(0..600))).await;
                }
                seat.release().await;
            }
            Err(e) => {
                let t = &storm.tally;
                let counter = match e {
                    AcquireError::Full { .. } => &t.full,
                    AcquireError::Busy { .. } => &t.busy,
                    AcquireError::Unavailable { .. } => &t.unavailable,
                    AcquireError::Unreachable(_) => &t.unreachable,
                    // Also a PROOF that a crash left unanswered: the new server drops its cookie.
                    AcquireError::TimedOut(_) => &t.timed_out,
                    other => {
                        storm.unexpected.lock().expect("unexpected").push(format!("client {i}: {other}"));
                        &t.other
                    }
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(ms(rng.gen_range(10..150))).await;
            }
        }
    }
}

/// Records every change of a seat's status other than its release.
async fn watch_seat(
    storm: Arc<Storm>,
    client: usize,
    lease_id: u64,
    mut status: watch::Receiver<SeatStatus>,
) {
    while status.changed().await.is_ok() {
        let what = match *status.borrow_and_update() {
            SeatStatus::Lost => Disturbance::Lost,
            SeatStatus::Held => Disturbance::Regained,
            SeatStatus::Ended(_) => Disturbance::Ended,
            SeatStatus::Released => return,
        };
        storm.events.lock().expect("events").push(SeatEvent { client, lease_id, at: Instant::now(), what });
    }
}

#[derive(Default)]
struct Samples {
    taken: u64,
    max_held: usize,
    violations: Vec<String>,
}

/// Every 20 ms: how many clients hold a seat, all at one instant. Never more than `seats`, and
/// never two with the same lease.
fn sample(storm: &Storm, seats: usize, done: &AtomicBool) -> Samples {
    let start = Instant::now();
    let mut s = Samples::default();
    while !done.load(Ordering::SeqCst) {
        let mut held: Vec<u64> = {
            let slots = storm.slots.lock().expect("slots");
            slots.iter().flatten().filter(|h| h.held()).map(|h| h.lease_id).collect()
        };
        s.taken += 1;
        s.max_held = s.max_held.max(held.len());
        held.sort_unstable();
        let n = held.len();
        held.dedup();
        if n > seats || held.len() < n {
            s.violations.push(format!(
                "+{:?}: {n} clients hold a seat of {seats}: leases {held:x?}",
                start.elapsed()
            ));
        }
        std::thread::sleep(ms(20));
    }
    s
}

struct Cycle {
    at: Instant,
    outage: Duration,
    restored: usize,
    pinned: usize,
}

/// Sets `done` when dropped, so that a failed assertion also stops the sampler.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn seed() -> u64 {
    match std::env::var("LIC_UDP_RESTART_SEED") {
        Ok(s) => s.trim().parse().expect("LIC_UDP_RESTART_SEED is a u64"),
        Err(_) => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    }
}

#[derive(Default)]
struct Findings {
    /// Pre-crash holders that did not hold their seat once things settled.
    kept: Vec<String>,
    /// Store checks: `in_use` over the limit, a pre-crash holder's lease missing.
    store: Vec<String>,
    /// A restart restored more leases than seats.
    restored: Vec<String>,
    /// A pre-crash holder reported its seat lost although the server was back well within the TTL.
    lost: Vec<String>,
}

/// Waits until the last crash's holders must have either re-handshaken or reported the loss
/// (their local loss deadline is at most one TTL after the crash), then checks them against
/// their statuses and the store, and unpins them.
fn settle(storm: &Storm, dir: &std::path::Path, seats: u16, cycles: &[Cycle], f: &mut Findings) {
    let last = cycles.last().expect("a crash");
    let crash = cycles.len() - 1;
    let check_at = last.at + TTL + ms(100);
    std::thread::sleep(check_at.saturating_duration_since(Instant::now()));
    // A holder that did report a loss (back-to-back outages) gets until one TTL after the
    // restart, the life of its restored lease, to take the seat back.
    let deadline = last.at + last.outage + TTL + ms(500);
    let not_held = loop {
        let not_held: Vec<String> = {
            let slots = storm.slots.lock().expect("slots");
            (slots.iter().enumerate())
                .filter_map(|(i, h)| h.as_ref().map(|h| (i, h)))
                .filter(|(_, h)| h.pin.is_some() && !h.held())
                .map(|(i, h)| format!("client {i} lease {:016x}: {:?}", h.lease_id, *h.status.borrow()))
                .collect()
        };
        if not_held.is_empty() || Instant::now() >= deadline {
            break not_held;
        }
        std::thread::sleep(ms(20));
    };
    if !not_held.is_empty() {
        f.kept.push(format!(
            "crash {crash}: pre-crash holders without their seat after the restart: {not_held:?}"
        ));
    }

    let v = status_json(dir);
    let lic = &v["licenses"][0];
    let in_use = lic["in_use"].as_u64().expect("in_use");
    let leases: Vec<&str> =
        lic["holders"].as_array().expect("holders").iter().filter_map(|h| h["lease"].as_str()).collect();
    if in_use > u64::from(seats) {
        f.store.push(format!("crash {crash}: the store shows {in_use} of {seats} seats in use"));
    }
    let mut instances: Vec<&str> =
        lic["holders"].as_array().expect("holders").iter().filter_map(|h| h["instance"].as_str()).collect();
    instances.sort_unstable();
    if instances.windows(2).any(|w| w[0] == w[1]) {
        f.store.push(format!("crash {crash}: an instance holds two leases: {instances:?}"));
    }
    let events = storm.events.lock().expect("events");
    let mut slots = storm.slots.lock().expect("slots");
    for (i, h) in slots.iter_mut().enumerate() {
        let Some(h) = h.as_mut() else { continue };
        let Some(pin) = h.pin.take() else { continue };
        let lease = format!("{:016x}", h.lease_id);
        if !leases.contains(&lease.as_str()) {
            f.store
                .push(format!("crash {crash}: client {i}'s lease {lease} is not in the store: {leases:?}"));
        }
        // After one outage short enough (NO_LOSS_OUTAGE) the holder must have got its seat
        // back with one re-handshake and never reported it lost, up to the check or to the
        // next crash, if one came first (after two outages in a row a loss may be fair).
        let outage = cycles[pin.crash].outage;
        let disturbed: Vec<(Disturbance, Duration)> = events
            .iter()
            .filter(|e| e.client == i && e.lease_id == h.lease_id && e.at >= pin.at)
            .filter(|e| pin.next.is_none_or(|next| e.at < next))
            .map(|e| (e.what, e.at.duration_since(pin.at)))
            .collect();
        if outage <= NO_LOSS_OUTAGE && !disturbed.is_empty() {
            f.lost.push(format!(
                "crash {}: client {i} (lease {lease}) after an outage of {outage:?} (TTL {TTL:?}): {disturbed:?} \
                 (times from the crash)",
                pin.crash
            ));
        }
    }
}

fn grant_storm(name: &str, plan: Plan) {
    let seed = seed();
    eprintln!("{name}: seed {seed} (replay with LIC_UDP_RESTART_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let began = Instant::now();

    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial_text = issue(dir.path(), "alice", "team", Some(plan.seats));
    let serial = Serial::parse(&serial_text).expect("serial");
    let seats = usize::from(plan.seats);
    let listen = format!("127.0.0.1:{}", free_udp_port_below_ephemeral_range());
    let (mut server, _) = start_serve(dir.path(), &listen, &TIMERS);
    let addr = server.addr;

    let rt = runtime();
    // One Argon2 run; every client reuses the keys, as activated installs do.
    let keys = rt.block_on(async {
        let c = Client::new(addr);
        let seat = c.acquire(&serial).await.expect("first seat");
        seat.release().await;
        c.cached_keys().expect("derived keys")
    });
    let storm = Arc::new(Storm {
        slots: Mutex::new((0..plan.clients).map(|_| None).collect()),
        events: Mutex::new(Vec::new()),
        grant_times: Mutex::new(Vec::new()),
        unexpected: Mutex::new(Vec::new()),
        tally: Tally::default(),
        stop: AtomicBool::new(false),
    });
    let tasks: Vec<_> = (0..plan.clients)
        .map(|i| {
            let client =
                Client::new(addr).with_cached_keys(keys.clone()).with_acquire_timeout(ACQUIRE_TIMEOUT);
            rt.spawn(storm_client(i, storm.clone(), client, serial.clone(), rng.gen()))
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let _stop_sampler = SetOnDrop(done.clone());
    let sampler = {
        let (storm, done) = (storm.clone(), done.clone());
        std::thread::spawn(move || sample(&storm, seats, &done))
    };
    assert!(
        wait_for(Duration::from_secs(10), || storm.tally.grants.load(Ordering::SeqCst)
            >= 2 * plan.seats as u64),
        "the storm got going"
    );

    let mut cycles: Vec<Cycle> = Vec::new();
    let mut f = Findings::default();
    let mut after_quick = false;
    for k in 0..plan.crashes {
        // Crash: pin every holder and kill the server while no client can change its state.
        let (at, pinned) = {
            let mut slots = storm.slots.lock().expect("slots");
            let at = Instant::now();
            let mut pinned = 0;
            for h in slots.iter_mut().flatten() {
                let held = h.held();
                match &mut h.pin {
                    Some(p) => {
                        p.next.get_or_insert(at);
                    }
                    None if held => h.pin = Some(Pin { crash: k, at, next: None }),
                    None => {}
                }
                pinned += usize::from(h.pin.is_some());
            }
            server.child.kill().expect("SIGKILL the server");
            (at, pinned)
        };
        let _ = server.child.wait();
        std::thread::sleep(ms(rng.gen_range(0..=1500)));
        let (next, line) = start_serve(dir.path(), &listen, &TIMERS);
        server = next;
        let outage = at.elapsed();
        let restored = restored_leases(&line);
        if restored > seats {
            f.restored.push(format!("crash {k}: {line}"));
        }
        eprintln!(
            "crash {k:2} at +{:6.2}s: {pinned} holders pinned, down {:4} ms, {restored} leases restored{}",
            at.duration_since(began).as_secs_f64(),
            outage.as_millis(),
            if after_quick { " (back-to-back)" } else { "" }
        );
        cycles.push(Cycle { at, outage, restored, pinned });
        let last = k + 1 == plan.crashes;
        if !last && !after_quick && rng.gen_bool(plan.quick) {
            // The next crash hits while the holders re-handshake.
            after_quick = true;
            std::thread::sleep(ms(rng.gen_range(0..800)));
            continue;
        }
        after_quick = false;
        settle(&storm, dir.path(), plan.seats, &cycles, &mut f);
        if !last {
            std::thread::sleep(ms(rng.gen_range(0..500)));
        }
    }

    storm.stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });
    done.store(true, Ordering::SeqCst);
    let samples = sampler.join().expect("sampler");
    // Released seats go at once; seats granted but never delivered (a crash between commit and
    // send) expire one TTL after the restart.
    let drained = wait_for(TTL + Duration::from_secs(2), || in_use(dir.path(), 1) == 0);
    let disturbances = storm.events.lock().expect("events").len();
    let mid_storm = {
        let grants = storm.grant_times.lock().expect("grant times");
        let recent =
            |c: &Cycle| grants.iter().filter(|g| **g <= c.at && c.at.duration_since(**g) < ms(1000)).count();
        cycles.iter().filter(|c| recent(c) > 0).count()
    };
    let t = &storm.tally;
    let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
    eprintln!(
        "{name}: {} crashes in {:.1}s; {} grants, {} full, {} busy, {} unavailable, {} unreachable, {} timed out; \
         {} samples, at most {} of {seats} seats held; {} holders pinned in all, {} leases restored in all; \
         {disturbances} seats lost (or regained) in all; {mid_storm} crashes within a second of a grant",
        cycles.len(),
        began.elapsed().as_secs_f64(),
        load(&t.grants),
        load(&t.full),
        load(&t.busy),
        load(&t.unavailable),
        load(&t.unreachable),
        load(&t.timed_out),
        samples.taken,
        samples.max_held,
        cycles.iter().map(|c| c.pinned).sum::<usize>(),
        cycles.iter().map(|c| c.restored).sum::<usize>(),
    );

    let unexpected = storm.unexpected.lock().expect("unexpected").clone();
    assert!(unexpected.is_empty(), "seed {seed}: unexpected acquire errors: {unexpected:#?}");
    assert!(
        samples.violations.is_empty(),
        "seed {seed}: more clients held a seat than the license has: {:#?}",
        samples.violations
    );
    assert!(samples.taken > 100, "the sampler ran ({} samples)", samples.taken);
    assert!(f.restored.is_empty(), "seed {seed}: restored more leases than seats: {:#?}", f.restored);
    assert!(f.store.is_empty(), "seed {seed}: store: {:#?}", f.store);
    assert!(f.kept.is_empty(), "seed {seed}: {:#?}", f.kept);
    let ended = storm.events.lock().expect("events").iter().filter(|e| e.what == Disturbance::Ended).count();
    assert_eq!(ended, 0, "seed {seed}: seats ended (revoked or expired) with no revocation");
    assert!(drained, "seed {seed}: seats still in use after the storm: {:?}", holders(dir.path(), 1));
    // At least one grant per crash: the storm did its work. (Two per crash failed once at 38 of 40
    // on a loaded machine: the figure tracks CPU, not correctness.)
    assert!(load(&t.grants) >= plan.crashes as u64, "the storm granted seats ({})", load(&t.grants));
    assert!(mid_storm >= plan.crashes / 4, "crashes within a second of a grant: {mid_storm}");
    assert!(load(&t.full) > 0, "the storm contended for the seats");
    // The requirement of the crash/restart issue: a holder sees one extra round trip, no loss.
    assert!(
        f.lost.is_empty(),
        "seed {seed}: REGRESSION (the client's heartbeat retransmissions back off past the lease \
         deadline; see `holders_report_no_loss_after_an_outage_well_within_the_ttl`): holders \
         reported their seat lost after an outage well within the TTL: {:#?}",
        f.lost
    );
}

/// 20 SIGKILLs at random moments of a storm of 32 clients on 8 seats.
#[test]
fn crash_restart_during_grant_storm() {
    grant_storm("crash_restart_during_grant_storm", Plan { seats: 8, clients: 32, crashes: 20, quick: 0.5 });
}

/// The long variant: 100 crashes, 64 clients on 16 seats (about 5 minutes).
#[test]
#[ignore = "slow: about 5 minutes; run with `cargo test --test restart -- --ignored`"]
fn crash_restart_during_grant_storm_100_cycles() {
    grant_storm(
        "crash_restart_during_grant_storm_100_cycles",
        Plan { seats: 16, clients: 64, crashes: 100, quick: 0.5 },
    );
}

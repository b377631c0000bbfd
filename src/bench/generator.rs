//! The heartbeat generator: a few threads, each with one connected UDP socket and a share of the
//! simulated instances, sending and receiving in batches (`sendmmsg`/`recvmmsg`).
//!
//! Every instance has at most one heartbeat outstanding. A heartbeat carries the instance's next
//! `seq` and is tagged under its `K_c2s`; an ACK counts when its tag verifies under `K_s2c` and
//! its `seq` is the one outstanding. A heartbeat not acknowledged within the timeout is a loss,
//! and the instance sends again with a new `seq` (a retransmit). Pacing is either a bounded
//! window of outstanding heartbeats, refilled as ACKs arrive (`--rate max`), or a fixed total
//! rate (`--rate R`), spread over the threads.
//!
//! In echo mode the same loop sends heartbeat-shaped 48-byte datagrams without a tag and
//! expects each back byte for byte: the path's limit without any protocol work.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt, MsgFlags};

use crate::proto::keys::SessionKeys;
use crate::proto::wire::{self, AckStatus, Heartbeat, Message, FLAG_RELEASE, TAG_LEN};

use super::handshake::Granted;
use super::mmsg::{Batch, BATCH};
use super::{bind_addr, new_histogram, Gate};

/// The generator threads' name, under which their CPU time is found (see [`super::cpu`]).
pub const THREAD_NAME: &str = "lic-bench-gen";

/// How long a worker blocks in `recvmmsg` before it looks at its clocks again.
const POLL: Duration = Duration::from_millis(2);
/// Transmissions of a RELEASE before the instance is left to expire on the server.
const RELEASE_SENDS: u8 = 3;
/// The longest a release pass may take. Leases still held then expire on the server. Without
/// it, releases whose ACK was lost trickle on: their retransmissions meet a lease already gone,
/// and the STALE answers, capped by the server's reply limit (1,000/s per address), each count
/// as progress; one 1,000,000-instance run spent over ten minutes here.
const RELEASE_MAX: Duration = Duration::from_secs(30);
const HEARTBEAT_LEN: usize = wire::MsgType::Heartbeat.wire_len();

/// How sends are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// As fast as ACKs come back, with at most this many heartbeats outstanding.
    Window(usize),
    /// This many heartbeats per second (transmissions, retransmits included).
    Rate(f64),
}

/// What the generator sends and expects back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// HEARTBEAT tagged under `K_c2s`; ACK verified under `K_s2c`.
    Protocol,
    /// Untagged heartbeat-shaped datagrams, expected back unchanged.
    Echo,
}

/// One simulated instance.
pub struct Slot {
    lease_id: u64,
    epoch: u32,
    keys: Option<SessionKeys>,
    /// The last `seq` sent.
    seq: u64,
    /// The `seq` awaiting an ACK, or 0.
    out_seq: u64,
    sent_at: Instant,
    sends: u8,
    /// Out of the rotation: STALE, an ACK other than OK, or released.
    done: bool,
    /// Stops heartbeating at [`Plan::abandon_at`] (`bench --abandon`).
    abandon: bool,
}

impl Slot {
    /// `abandon`: this instance stops heartbeating at [`Plan::abandon_at`].
    pub fn leased(g: Granted, abandon: bool) -> Self {
        Self { abandon, ..Self::new(g.lease_id, g.epoch, Some(g.keys)) }
    }

    /// Echo mode: `id` only tells the datagrams apart.
    pub fn echo(id: u64) -> Self {
        Self::new(id, 0, None)
    }

    fn new(lease_id: u64, epoch: u32, keys: Option<SessionKeys>) -> Self {
        Self {
            lease_id,
            epoch,
            keys,
            seq: 0,
            out_seq: 0,
            sent_at: Instant::now(),
            sends: 0,
            done: false,
            abandon: false,
        }
    }
}

/// Counters the main thread reads while the workers run, for the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub acks: AtomicU64,
    pub losses: AtomicU64,
}

/// What one worker counted. Every field is summed over workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Heartbeat transmissions, retransmits included.
    pub sent: u64,
    /// ACKs (or echoes) that verified and matched the outstanding `seq`.
    pub acks: u64,
    /// Those of `acks` received before the end of the measured duration.
    pub acks_in_window: u64,
    pub retransmits: u64,
    pub losses: u64,
    /// Verified ACKs for a `seq` that had already timed out.
    pub late: u64,
    /// ACKs whose tag did not verify (echo: replies that differ from what was sent).
    pub bad: u64,
    pub stale: u64,
    /// Verified ACKs with a status other than OK (revoked, expired).
    pub not_ok: u64,
    /// Anything else: undecodable, unknown lease, wrong type or epoch, a `seq` never sent.
    pub unexpected: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    /// Leases given back at the end (ACK RELEASED or STALE).
    pub released: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.acks += o.acks;
        self.acks_in_window += o.acks_in_window;
        self.retransmits += o.retransmits;
        self.losses += o.losses;
        self.late += o.late;
        self.bad += o.bad;
        self.stale += o.stale;
        self.not_ok += o.not_ok;
        self.unexpected += o.unexpected;
        self.send_errors += o.send_errors;
        self.recv_errors += o.recv_errors;
        self.released += o.released;
    }
}

/// One worker's result: counts of the heartbeat phase (release excluded, except `released`)
/// and its ACK latencies in microseconds.
pub struct Outcome {
    pub counts: Counts,
    pub latency: Histogram<u64>,
}

/// What every worker shares.
pub struct Plan {
    pub mode: Mode,
    pub timeout: Duration,
    pub start: Instant,
    pub end: Instant,
    /// Give the leases back after the measurement.
    pub release: bool,
    /// The outstanding-heartbeat window of the release pass.
    pub release_window: usize,
    /// From then on the instances marked `abandon` send nothing more (`bench --abandon`).
    pub abandon_at: Option<Instant>,
    pub live: Arc<Live>,
    /// Each worker reports here once its heartbeat phase has drained...
    pub drained: Mutex<mpsc::Sender<()>>,
    /// ...and waits here until the main thread has read the CPU clocks; then it releases.
    pub resume: Arc<Gate>,
}

/// Time from `now` until the next heartbeat of a fixed-rate schedule falls due.
fn until_next_send(start: Instant, sent: u64, rate: f64, now: Instant) -> Duration {
    let due_at = start + Duration::from_secs_f64((sent + 1) as f64 / rate.max(1e-3));
    due_at.saturating_duration_since(now)
}

/// A socket for one worker: bound on the target's family, connected to the target, with a
/// short read timeout and a large receive buffer (capped by `net.core.rmem_max`).
pub fn open_socket(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(bind_addr(target))?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(POLL))?;
    let _ = setsockopt(&socket, sockopt::RcvBuf, &(4 << 20));
    Ok(socket)
}

pub fn spawn(
    socket: UdpSocket,
    slots: Vec<Slot>,
    pace: Pace,
    plan: Arc<Plan>,
) -> std::io::Result<JoinHandle<Outcome>> {
    std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
        let mut w = Worker::new(socket, slots, plan.mode, plan.live.clone());
        w.heartbeats(&plan, pace);
        let counts = w.st.c;
        if let Ok(tx) = plan.drained.lock() {
            let _ = tx.send(());
        }
        plan.resume.wait();
        if plan.release && plan.mode == Mode::Protocol {
            w.release(&plan);
        }
        Outcome { counts: Counts { released: w.st.c.released, ..counts }, latency: w.st.hist }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Heartbeat,
    Release,
}

struct Io {
    socket: UdpSocket,
    out: Batch<96>,
    inb: Batch<256>,
}

struct State {
    mode: Mode,
    phase: Phase,
    slots: Vec<Slot>,
    index: HashMap<u64, u32>,
    /// Instances ready to send, oldest first.
    free: VecDeque<u32>,
    /// Instances whose last heartbeat timed out: they send next.
    again: VecDeque<u32>,
    /// `(instance, seq)` in send order; entries whose `seq` is no longer outstanding are
    /// skipped when they reach the front.
    pending: VecDeque<(u32, u64)>,
    outstanding: usize,
    c: Counts,
    hist: Histogram<u64>,
    live: Arc<Live>,
    published: (u64, u64),
    abandon_at: Option<Instant>,
}

struct Worker {
    io: Io,
    st: State,
}

impl Worker {
    fn new(socket: UdpSocket, slots: Vec<Slot>, mode: Mode, live: Arc<Live>) -> Self {
        let index = slots.iter().enumerate().map(|(i, s)| (s.lease_id, i as u32)).collect();
        let free = (0..slots.len() as u32).collect();
        Self {
            io: Io { socket, out: Batch::new(), inb: Batch::new() },
            st: State {
                mode,
                phase: Phase::Heartbeat,
                slots,
                index,
                free,
                again: VecDeque::new(),
                pending: VecDeque::new(),
                outstanding: 0,
                c: Counts::default(),
                hist: new_histogram(),
                live,
                published: (0, 0),
                abandon_at: None,
            },
        }
    }

    fn heartbeats(&mut self, plan: &Plan, pace: Pace) {
        let drain_until = plan.end + plan.timeout;
        self.st.abandon_at = plan.abandon_at;
        loop {
            let now = Instant::now();
            let sending = now < plan.end;
            if !sending && (self.st.outstanding == 0 || now >= drain_until) {
                break;
            }
            // After the end, a timeout is still a loss, but nothing is sent again.
            self.st.expire(now, plan.timeout, sending);
            let mut more = false;
            let mut starved = false;
            if sending {
                let budget = match pace {
                    Pace::Window(w) => w.saturating_sub(self.st.outstanding),
                    Pace::Rate(r) => {
                        let due = (now.saturating_duration_since(plan.start).as_secs_f64() * r) as u64;
                        usize::try_from(due.saturating_sub(self.st.c.sent)).unwrap_or(usize::MAX)
                    }
                };
                let k = self.send(now, budget.min(BATCH), 0);
                more = k == BATCH && budget > k;
                // Due but nobody free to send (every instance waits for its ACK): nothing to
                // do before an ACK comes, so no zero-length waits in a loop.
                starved = budget > 0 && k == 0;
            }
            let in_window = sending;
            let flags = match pace {
                _ if more => MsgFlags::MSG_DONTWAIT,
                Pace::Rate(r) if sending => {
                    let wait =
                        if starved { POLL } else { until_next_send(plan.start, self.st.c.sent, r, now) };
                    self.wait_readable(wait);
                    MsgFlags::MSG_DONTWAIT
                }
                _ => MsgFlags::MSG_WAITFORONE,
            };
            self.receive(flags, in_window);
            self.st.publish();
        }
        // Whatever is still outstanding after the drain was lost.
        let st = &mut self.st;
        st.c.losses += st.outstanding as u64;
        for (i, seq) in st.pending.drain(..) {
            if let Some(s) = st.slots.get_mut(i as usize) {
                if s.out_seq == seq {
                    s.out_seq = 0;
                }
            }
        }
        st.outstanding = 0;
        st.publish();
    }

    /// Gives every lease back (HEARTBEAT with RELEASE), so an external server's seats are free
    /// at once for the next run. Bounded: each instance sends at most [`RELEASE_SENDS`] times,
    /// and the pass ends when nothing has been released for that many timeouts, or after
    /// [`RELEASE_MAX`].
    fn release(&mut self, plan: &Plan) {
        let st = &mut self.st;
        st.phase = Phase::Release;
        st.again.clear();
        st.free = (0..st.slots.len() as u32).filter(|&i| !st.slots[i as usize].done).collect();
        for s in &mut st.slots {
            s.sends = 0;
        }
        let patience = plan.timeout * (u32::from(RELEASE_SENDS) + 1);
        let (mut released, mut progress_at) = (st.c.released, Instant::now());
        let give_up = progress_at + RELEASE_MAX;
        loop {
            let now = Instant::now();
            let st = &self.st;
            if st.c.released != released {
                (released, progress_at) = (st.c.released, now);
            }
            let finished = st.free.is_empty() && st.again.is_empty() && st.outstanding == 0;
            if finished || now.saturating_duration_since(progress_at) >= patience || now >= give_up {
                break;
            }
            self.st.expire(now, plan.timeout, true);
            let budget = plan.release_window.saturating_sub(self.st.outstanding);
            let k = self.send(now, budget.min(BATCH), FLAG_RELEASE);
            let more = k == BATCH && budget > k;
            self.receive(if more { MsgFlags::MSG_DONTWAIT } else { MsgFlags::MSG_WAITFORONE }, false);
        }
    }

    /// Sends up to `max` heartbeats (first the instances that timed out); returns how many.
    fn send(&mut self, now: Instant, max: usize, flags: u8) -> usize {
        let st = &mut self.st;
        let mut k = 0;
        while k < max {
            let (i, again) = match st.again.pop_front() {
                Some(i) => (i, true),
                None => match st.free.pop_front() {
                    Some(i) => (i, false),
                    None => break,
                },
            };
            let Some(slot) = st.slots.get_mut(i as usize) else { continue };
            if slot.abandon && st.abandon_at.is_some_and(|t| now >= t) {
                // Gone silent, as if crashed: its lease expires on the server.
                slot.done = true;
            }
            if slot.done {
                continue;
            }
            if again && st.phase == Phase::Heartbeat {
                st.c.retransmits += 1;
            }
            slot.seq += 1;
            slot.out_seq = slot.seq;
            slot.sent_at = now;
            slot.sends = slot.sends.saturating_add(1);
            let n = encode(slot, slot.seq, flags, &mut self.io.out.bufs[k]);
            self.io.out.lens[k] = n;
            st.pending.push_back((i, slot.seq));
            st.outstanding += 1;
            k += 1;
        }
        if k > 0 {
            // What does not leave now times out and goes again, like a loss on the wire.
            match self.io.out.send(self.io.socket.as_raw_fd(), k) {
                Ok(s) => st.c.send_errors += (k - s.min(k)) as u64,
                Err(_) => st.c.send_errors += k as u64,
            }
            if st.phase == Phase::Heartbeat {
                st.c.sent += k as u64;
            }
        }
        k
    }

    /// Blocks until an ACK is queued or `wait` has passed, with the precision of `ppoll`'s
    /// high-resolution timer. A blocking `recvmmsg` would sleep until its socket read timeout
    /// (whole jiffies) whenever every heartbeat was already answered, then send what fell due
    /// meanwhile as one burst: at a fixed rate, the queueing behind those bursts, not the
    /// server, would make the latency tail.
    fn wait_readable(&self, wait: Duration) {
        use nix::poll::{ppoll, PollFd, PollFlags};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.io.socket.as_fd(), PollFlags::POLLIN)];
        let _ = ppoll(&mut fds, Some(wait.min(POLL).into()), None);
    }

    fn receive(&mut self, flags: MsgFlags, in_window: bool) {
        let n = match self.io.inb.recv(self.io.socket.as_raw_fd(), flags) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => 0,
            Err(_) => {
                self.st.c.recv_errors += 1;
                0
            }
        };
        if n == 0 {
            return;
        }
        let now = Instant::now();
        for i in 0..n {
            let len = self.io.inb.lens[i].min(256);
            self.st.on_datagram(&self.io.inb.bufs[i][..len], now, in_window);
        }
    }
}

/// Writes the heartbeat of `slot` with `seq` into `buf`; returns its length (0 if it cannot).
fn encode(slot: &Slot, seq: u64, flags: u8, buf: &mut [u8]) -> usize {
    let msg = Message::Heartbeat(Heartbeat { lease_id: slot.lease_id, epoch: slot.epoch, seq, flags });
    let Some(n) = wire::encode_unsigned(&msg, buf) else { return 0 };
    match &slot.keys {
        Some(k) => k.c2s.seal(buf, n).unwrap_or(0),
        None => match buf.get_mut(n..n + TAG_LEN) {
            Some(tag) => {
                tag.fill(0);
                n + TAG_LEN
            }
            None => 0,
        },
    }
}

impl State {
    fn publish(&mut self) {
        let (a, l) = self.published;
        if self.c.acks != a || self.c.losses != l {
            self.live.acks.fetch_add(self.c.acks - a, Ordering::Relaxed);
            self.live.losses.fetch_add(self.c.losses - l, Ordering::Relaxed);
            self.published = (self.c.acks, self.c.losses);
        }
    }

    /// Heartbeats older than `timeout` are lost; their instances send again if `resend`.
    fn expire(&mut self, now: Instant, timeout: Duration, resend: bool) {
        while let Some(&(i, seq)) = self.pending.front() {
            let Some(slot) = self.slots.get_mut(i as usize) else {
                self.pending.pop_front();
                continue;
            };
            if slot.out_seq != seq {
                self.pending.pop_front();
                continue;
            }
            if now.saturating_duration_since(slot.sent_at) < timeout {
                break;
            }
            self.pending.pop_front();
            slot.out_seq = 0;
            self.outstanding -= 1;
            match self.phase {
                Phase::Heartbeat => {
                    self.c.losses += 1;
                    if resend {
                        self.again.push_back(i);
                    }
                }
                Phase::Release if slot.sends < RELEASE_SENDS => self.again.push_back(i),
                // Left to expire on the server.
                Phase::Release => slot.done = true,
            }
        }
    }

    fn on_datagram(&mut self, d: &[u8], now: Instant, in_window: bool) {
        match self.mode {
            Mode::Protocol => self.on_reply(d, now, in_window),
            Mode::Echo => self.on_echo(d, now, in_window),
        }
    }

    fn on_reply(&mut self, d: &[u8], now: Instant, in_window: bool) {
        let Ok(f) = wire::decode(d) else {
            self.c.unexpected += 1;
            return;
        };
        match f.msg {
            Message::Ack(a) => {
                let Some(&i) = self.index.get(&a.lease_id) else {
                    self.c.unexpected += 1;
                    return;
                };
                let slot = &self.slots[i as usize];
                if !slot.keys.as_ref().is_some_and(|k| k.s2c.verify(f.signed, f.tag)) {
                    self.c.bad += 1;
                    return;
                }
                if a.epoch != slot.epoch {
                    self.c.unexpected += 1;
                    return;
                }
                self.matched(i, a.seq, AckStatus::from_byte(a.status), now, in_window);
            }
            Message::Stale(s) => {
                let Some(&i) = self.index.get(&s.lease_id) else {
                    self.c.unexpected += 1;
                    return;
                };
                let slot = &mut self.slots[i as usize];
                let was_out = slot.out_seq != 0;
                slot.out_seq = 0;
                slot.done = true;
                if was_out {
                    self.outstanding -= 1;
                }
                match self.phase {
                    // The lease is gone: the instance stops (a real client would re-handshake).
                    Phase::Heartbeat => self.c.stale += 1,
                    // A RELEASE for a lease already gone: released (proto-spec.md §5).
                    Phase::Release => self.c.released += u64::from(was_out),
                }
            }
            _ => self.c.unexpected += 1,
        }
    }

    fn on_echo(&mut self, d: &[u8], now: Instant, in_window: bool) {
        let id = d.get(4..12).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        let seq = d.get(16..24).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        let (Some(id), Some(seq)) = (id, seq) else {
            self.c.unexpected += 1;
            return;
        };
        let Some(&i) = self.index.get(&id) else {
            self.c.unexpected += 1;
            return;
        };
        let mut expected = [0u8; 96];
        let n = encode(&self.slots[i as usize], seq, 0, &mut expected);
        if d.len() != HEARTBEAT_LEN || d != &expected[..n] {
            self.c.bad += 1;
            return;
        }
        self.matched(i, seq, Some(AckStatus::Ok), now, in_window);
    }

    fn matched(&mut self, i: u32, seq: u64, status: Option<AckStatus>, now: Instant, in_window: bool) {
        let slot = &mut self.slots[i as usize];
        if slot.out_seq == 0 || seq != slot.out_seq {
            if seq <= slot.seq {
                self.c.late += 1;
            } else {
                self.c.unexpected += 1;
            }
            return;
        }
        slot.out_seq = 0;
        self.outstanding -= 1;
        match self.phase {
            Phase::Heartbeat => {
                let us = u64::try_from(now.saturating_duration_since(slot.sent_at).as_micros())
                    .unwrap_or(u64::MAX);
                self.hist.saturating_record(us.max(1));
                self.c.acks += 1;
                if in_window {
                    self.c.acks_in_window += 1;
                }
                if status == Some(AckStatus::Ok) {
                    self.free.push_back(i);
                } else {
                    self.c.not_ok += 1;
                    slot.done = true;
                }
            }
            Phase::Release => {
                slot.done = true;
                if matches!(status, Some(AckStatus::Released | AckStatus::Revoked | AckStatus::Expired)) {
                    self.c.released += 1;
                }
            }
        }
    }
}

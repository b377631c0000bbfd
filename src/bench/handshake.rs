//! The bench's handshakes: HELLO → CHALLENGE → PROOF → GRANT for every simulated instance,
//! built from [`crate::proto::wire`] and [`crate::proto::keys`] directly.
//!
//! The serial KDF runs once per license, on the parameters of one probe CHALLENGE; every
//! instance reuses the derived keys, as an activated install would. Handshakes run at a bounded
//! concurrency, each in-flight handshake on its own socket: a GRANT does not name the PROOF it
//! answers (only its tag, under keys that depend on the lease it announces, does), and a cookie
//! binds the source address, so one socket carries one handshake at a time. Once granted, a
//! lease is found by `lease_id` alone, so the heartbeat phase multiplexes all instances over a
//! few sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use tokio::net::UdpSocket;

use crate::proto::keys::{derive_session_keys, KdfParams, LicenseKeys, MacKey, SessionKeys};
use crate::proto::wire::{self, DenyReason, Hello, Message, Proof};

use super::{bind_addr, new_histogram, BenchError};

/// Initial retransmit timeout of a handshake step; doubles per retransmission up to [`RTO_MAX`].
const RTO_INITIAL: Duration = Duration::from_millis(500);
const RTO_MAX: Duration = Duration::from_secs(2);
/// Transmissions of one step before the handshake starts over at HELLO.
const SENDS_PER_STEP: u32 = 5;
/// HELLO rounds (and BUSY waits) before an instance is given up.
const ROUNDS: u32 = 4;

/// A lease the generator can heartbeat.
pub struct Granted {
    pub lease_id: u64,
    pub epoch: u32,
    pub keys: SessionKeys,
}

/// What the handshake phase did.
pub struct Outcome {
    pub granted: Vec<Granted>,
    /// DENY FULL / REVOKED / EXPIRED, or BUSY / UNAVAILABLE until the instance gave up.
    pub denied: u64,
    /// UNKNOWN: the server does not know the license (wrong serial).
    pub unknown: u64,
    /// No answer within the schedule or the phase deadline.
    pub timed_out: u64,
    pub retransmits: u64,
    pub elapsed: Duration,
    /// First HELLO sent to GRANT verified, per instance, in microseconds.
    pub latency: Histogram<u64>,
}

impl Outcome {
    fn empty(capacity: usize) -> Self {
        Self {
            granted: Vec::with_capacity(capacity),
            denied: 0,
            unknown: 0,
            timed_out: 0,
            retransmits: 0,
            elapsed: Duration::ZERO,
            latency: new_histogram(),
        }
    }
}

/// One HELLO, to learn the server's salt and KDF parameters before deriving any keys.
pub async fn probe(target: SocketAddr, give_up: Duration) -> Result<([u8; 16], KdfParams), BenchError> {
    let socket = connect(target).await?;
    let nonce: [u8; 16] = rand::thread_rng().gen();
    let mut buf = [0u8; wire::MAX_DATAGRAM];
    let n = wire::encode_unsigned(&Message::Hello(Hello { client_nonce: nonce }), &mut buf)
        .ok_or_else(|| BenchError::Io("cannot encode HELLO".into()))?;
    let deadline = Instant::now() + give_up;
    let mut rto = Duration::from_millis(250);
    let mut rbuf = [0u8; 256];
    while Instant::now() < deadline {
        let _ = socket.send(&buf[..n]).await;
        let until = (Instant::now() + rto).min(deadline);
        while let Ok(r) = tokio::time::timeout_at(until.into(), socket.recv(&mut rbuf)).await {
            let Ok(k) = r else { continue };
            if let Ok(Message::Challenge(ch)) = wire::decode(&rbuf[..k]).map(|f| f.msg) {
                if ch.client_nonce == nonce {
                    let params = KdfParams { m_kib: ch.kdf_m_kib, t: ch.kdf_t, p: ch.kdf_p };
                    if !params.is_acceptable() {
                        return Err(BenchError::Protocol(format!(
                            "the server announced KDF parameters out of range: {params:?}"
                        )));
                    }
                    return Ok((ch.server_salt, params));
                }
            }
        }
        rto = (rto * 2).min(RTO_MAX);
    }
    Err(BenchError::Unreachable(target))
}

async fn connect(target: SocketAddr) -> Result<UdpSocket, BenchError> {
    let io = |e: std::io::Error| BenchError::Io(format!("UDP socket towards {target}: {e}"));
    let socket = UdpSocket::bind(bind_addr(target)).await.map_err(io)?;
    socket.connect(target).await.map_err(io)?;
    Ok(socket)
}

/// Shared by the handshake tasks.
struct Shared {
    licenses: Vec<LicenseKeys>,
    salt: [u8; 16],
    params: KdfParams,
    clients: usize,
    next: AtomicUsize,
    deadline: Instant,
    done: Arc<AtomicU64>,
}

enum Fail {
    Denied,
    Unknown,
    TimedOut,
}

/// Hands out instance numbers `0..clients` to `concurrency` tasks; instance `i` takes license
/// `i % licenses.len()`. `done` counts grants as they happen, for the progress line.
#[allow(clippy::too_many_arguments)] // the phase's inputs; each is used once
pub async fn run(
    target: SocketAddr,
    licenses: Vec<LicenseKeys>,
    salt: [u8; 16],
    params: KdfParams,
    clients: usize,
    concurrency: usize,
    deadline: Instant,
    done: Arc<AtomicU64>,
) -> Result<Outcome, BenchError> {
    let shared =
        Arc::new(Shared { licenses, salt, params, clients, next: AtomicUsize::new(0), deadline, done });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.clamp(1, clients.max(1)) {
        let socket = connect(target).await?;
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move { task(socket, &shared).await }));
    }
    let mut out = Outcome::empty(clients);
    for t in tasks {
        let part = t.await.map_err(|e| BenchError::Io(format!("handshake task failed: {e}")))?;
        out.granted.extend(part.granted);
        out.denied += part.denied;
        out.unknown += part.unknown;
        out.timed_out += part.timed_out;
        out.retransmits += part.retransmits;
        let _ = out.latency.add(&part.latency);
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

async fn task(socket: UdpSocket, shared: &Shared) -> Outcome {
    let mut out = Outcome::empty(0);
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= shared.clients {
            return out;
        }
        let keys = &shared.licenses[i % shared.licenses.len()];
        let started = Instant::now();
        match handshake(&socket, shared, keys, &mut out.retransmits).await {
            Ok(g) => {
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                out.latency.saturating_record(us.max(1));
                out.granted.push(g);
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(Fail::Denied) => out.denied += 1,
            Err(Fail::Unknown) => out.unknown += 1,
            Err(Fail::TimedOut) => out.timed_out += 1,
        }
    }
}

/// Sends `datagram`, retransmitting at a doubling timeout, until `accept` takes an answer, the
/// step's transmissions are used up, or the phase deadline passes.
async fn exchange<T>(
    socket: &UdpSocket,
    datagram: &[u8],
    deadline: Instant,
    retransmits: &mut u64,
    mut accept: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    let mut rto = RTO_INITIAL;
    let mut buf = [0u8; 256];
    for send in 0..SENDS_PER_STEP {
        if Instant::now() >= deadline {
            return None;
        }
        if send > 0 {
            *retransmits += 1;
        }
        // A send error (ICMP from an earlier datagram) is like a loss: the timeout retries.
        let _ = socket.send(datagram).await;
        let until = (Instant::now() + rto).min(deadline);
        while let Ok(r) = tokio::time::timeout_at(until.into(), socket.recv(&mut buf)).await {
            if let Ok(n) = r {
                if let Some(v) = accept(&buf[..n]) {
                    return Some(v);
                }
            }
        }
        rto = (rto * 2).min(RTO_MAX);
    }
    None
}

enum ProofAnswer {
    Granted(Granted),
    Denied(DenyReason, Duration),
    Unknown,
}

async fn handshake(
    socket: &UdpSocket,
    shared: &Shared,
    keys: &LicenseKeys,
    retransmits: &mut u64,
) -> Result<Granted, Fail> {
    let instance_id: [u8; 16] = rand::thread_rng().gen();
    let proof_key = MacKey::new(&keys.k_proof);
    let mut hello = [0u8; wire::MAX_DATAGRAM];
    let mut proof = [0u8; wire::MAX_DATAGRAM];
    let mut failure = Fail::TimedOut;
    for _ in 0..ROUNDS {
        let nonce: [u8; 16] = rand::thread_rng().gen();
        let n = wire::encode_unsigned(&Message::Hello(Hello { client_nonce: nonce }), &mut hello)
            .ok_or(Fail::TimedOut)?;
        let challenge =
            exchange(socket, &hello[..n], shared.deadline, retransmits, |d| {
                match wire::decode(d).map(|f| f.msg) {
                    Ok(Message::Challenge(ch)) if ch.client_nonce == nonce => Some(ch),
                    _ => None,
                }
            })
            .await;
        let Some(ch) = challenge else {
            return Err(Fail::TimedOut);
        };
        let params = KdfParams { m_kib: ch.kdf_m_kib, t: ch.kdf_t, p: ch.kdf_p };
        if ch.server_salt != shared.salt || params != shared.params {
            // The keys were derived for other inputs: this server cannot be answered.
            return Err(Fail::Unknown);
        }
        let msg = Message::Proof(Proof {
            license_id: keys.license_id,
            instance_id,
            client_nonce: nonce,
            cookie: ch.cookie,
            prev_lease_id: 0,
        });
        let n = wire::encode_unsigned(&msg, &mut proof)
            .and_then(|k| proof_key.seal(&mut proof, k))
            .ok_or(Fail::TimedOut)?;
        let session = |lease_id: u64, epoch: u32| {
            derive_session_keys(
                &keys.k_auth,
                &nonce,
                &ch.cookie,
                &keys.license_id,
                &instance_id,
                lease_id,
                epoch,
            )
        };
        let answer = exchange(socket, &proof[..n], shared.deadline, retransmits, |d| {
            let f = wire::decode(d).ok()?;
            match f.msg {
                Message::Grant(g) => {
                    let keys = session(g.lease_id, g.epoch);
                    keys.s2c
                        .verify(f.signed, f.tag)
                        .then(|| ProofAnswer::Granted(Granted { lease_id: g.lease_id, epoch: g.epoch, keys }))
                }
                Message::Deny(dn) => session(0, dn.epoch).s2c.verify(f.signed, f.tag).then(|| {
                    let reason = DenyReason::from_byte(dn.reason).unwrap_or(DenyReason::Busy);
                    ProofAnswer::Denied(reason, Duration::from_millis(u64::from(dn.retry_after_ms)))
                }),
                Message::Unknown(u) if u.client_nonce == nonce => Some(ProofAnswer::Unknown),
                _ => None,
            }
        })
        .await;
        match answer {
            Some(ProofAnswer::Granted(g)) => return Ok(g),
            Some(ProofAnswer::Unknown) => return Err(Fail::Unknown),
            Some(ProofAnswer::Denied(DenyReason::Busy | DenyReason::Unavailable, retry)) => {
                failure = Fail::Denied;
                let wake = (Instant::now() + retry.min(Duration::from_secs(5))).min(shared.deadline);
                tokio::time::sleep_until(wake.into()).await;
            }
            Some(ProofAnswer::Denied(..)) => return Err(Fail::Denied),
            // No answer to the PROOF: the cookie may have aged out; start over at HELLO.
            None => failure = Fail::TimedOut,
        }
        if Instant::now() >= shared.deadline {
            break;
        }
    }
    Err(failure)
}

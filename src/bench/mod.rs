//! `lic-udp bench`: heartbeat throughput, latency and server CPU cost, with many simulated
//! instances of one license (issue "Heartbeat throughput").
//!
//! A run has three phases:
//!
//! 1. **Handshakes** ([`handshake`]). One probe HELLO learns the server's salt and KDF
//!    parameters; the serial KDF (Argon2id) then runs once per license for the whole bench.
//!    Every instance does the real HELLO → CHALLENGE → PROOF → GRANT, at a bounded concurrency,
//!    with retransmission.
//! 2. **Heartbeats** ([`generator`]) for the given duration, multiplexed over a few sockets,
//!    either as fast as a window of outstanding heartbeats allows or at a fixed total rate. Every
//!    ACK's tag is verified and its `seq` matched. Then a drain of one timeout for the last ACKs.
//! 3. **Release**: every lease is given back, so that a real server's seats are free at once.
//!
//! With `--spawn` the server runs in this process ([`spawn`]), apart from the generator's
//! threads; the process's CPU time minus the generator's, read from procfs ([`cpu`]), gives the
//! server's CPU cost per million heartbeats. With `--echo` the same generator loads a UDP echo
//! responder ([`echo`]) instead, without any protocol work: the physical limit to compare the
//! server with.
//!
//! Everything is bounded: the number of instances ([`MAX_CLIENTS`]), the duration
//! ([`MAX_DURATION`]), the handshake phase (its timeout), the drain and the release. Targets
//! must be loopback addresses unless [`BenchConfig::allow_remote`] is set.

pub mod cpu;
pub mod echo;
pub mod generator;
pub mod handshake;
mod mmsg;
pub mod report;
pub mod spawn;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::proto::keys::{derive_license_keys, Serial};

pub use report::{BenchReport, Latency};

use generator::{Counts, Live, Mode, Pace, Plan, Slot};

/// The most instances one bench simulates.
pub const MAX_CLIENTS: u32 = 1_000_000;
/// The longest heartbeat phase.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The default window of outstanding heartbeats with `--rate max`. When the server is the
/// bottleneck, the window sits in its socket's receive queue; with Linux's default
/// `net.core.rmem_default` (212,992 bytes) that queue holds about 256 small datagrams (each
/// costs its buffer's true size, ~830 bytes, not 48), and a window of 256 measurably overflows
/// it (losses, each parking a window slot for a whole timeout). 128 keeps the queue non-empty
/// without drops.
pub const DEFAULT_WINDOW: u32 = 128;

/// What to load.
#[derive(Clone, Debug)]
pub enum Target {
    /// Start a server (or, with echo, an echo responder) in this process on 127.0.0.1.
    Spawn,
    /// A running server. `serials` are the licenses the instances share (spread round-robin);
    /// none are needed against an echo server.
    Remote { addr: SocketAddr, serials: Vec<Serial> },
}

/// A bench run's parameters. [`BenchConfig::new`] gives the CLI's defaults.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub target: Target,
    /// Load an echo responder with heartbeat-sized datagrams instead of the protocol.
    pub echo: bool,
    pub clients: u32,
    pub duration: Duration,
    /// Heartbeats per second in total; `None` is as fast as the window allows.
    pub rate: Option<f64>,
    /// Outstanding heartbeats allowed with `rate: None` (split over the threads). The default,
    /// [`DEFAULT_WINDOW`], stays below what a server socket with the default receive buffer can
    /// queue.
    pub window: u32,
    /// A heartbeat without an ACK after this long is lost (and sent again with a new `seq`).
    pub timeout: Duration,
    /// Generator threads, one socket each.
    pub threads: u16,
    /// Handshakes in flight at once (one socket each).
    pub handshake_concurrency: u16,
    /// The whole handshake phase gives up after this long.
    pub handshake_timeout: Duration,
    /// Allow a target that is not a loopback address.
    pub allow_remote: bool,
    /// A live progress line on stderr.
    pub progress: bool,
    /// Give the leases back at the end.
    pub release: bool,
    /// With [`Target::Spawn`]: the spawned server's lease TTL (`serve --lease-ttl`; its
    /// heartbeat interval becomes a quarter of it). `None`: the license type's (60 s).
    pub lease_ttl: Option<Duration>,
    /// Instances that stop heartbeating [`BenchConfig::abandon_after`] into the heartbeat phase
    /// (as if they had crashed), so that their leases all expire on the server within about one
    /// heartbeat round of each other while the other instances go on: a mass expiry under load.
    pub abandon: u32,
    pub abandon_after: Duration,
}

impl BenchConfig {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            echo: false,
            clients: 10_000,
            duration: Duration::from_secs(10),
            rate: None,
            window: DEFAULT_WINDOW,
            timeout: Duration::from_secs(1),
            threads: 1,
            handshake_concurrency: 64,
            handshake_timeout: Duration::from_secs(120),
            allow_remote: false,
            progress: false,
            release: true,
            lease_ttl: None,
            abandon: 0,
            abandon_after: Duration::from_secs(1),
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Usage(m));
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            return bad(format!("--clients must be between 1 and {MAX_CLIENTS}"));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad("--duration must be more than 0 and at most 1h".into());
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return bad("--rate must be a positive number of heartbeats per second, or `max`".into());
            }
        }
        if !(1..=1_000_000).contains(&self.window) {
            return bad("--window must be between 1 and 1000000".into());
        }
        if self.timeout < Duration::from_millis(1) || self.timeout > Duration::from_secs(60) {
            return bad("--timeout must be between 1ms and 60s".into());
        }
        if !(1..=64).contains(&self.threads) {
            return bad("--threads must be between 1 and 64".into());
        }
        if !(1..=1024).contains(&self.handshake_concurrency) {
            return bad("--handshake-concurrency must be between 1 and 1024".into());
        }
        if self.abandon >= self.clients {
            return bad("--abandon must be smaller than --clients: some instances must go on".into());
        }
        if self.abandon > 0 && (self.echo || self.abandon_after >= self.duration) {
            return bad(
                "--abandon needs the protocol (not --echo) and --abandon-after below --duration".into()
            );
        }
        if let Some(ttl) = self.lease_ttl {
            if !matches!(self.target, Target::Spawn) || self.echo {
                return bad("--lease-ttl applies to the server that --spawn starts".into());
            }
            if ttl < Duration::from_secs(1) {
                return bad("--lease-ttl must be at least 1s".into());
            }
        }
        if let Target::Remote { addr, serials } = &self.target {
            if !self.allow_remote && !addr.ip().is_loopback() {
                return bad(format!(
                    "{addr} is not a loopback address; the bench floods its target, so it only loads \
                     127.0.0.1 or ::1 unless --allow-remote is given"
                ));
            }
            if !self.echo && serials.is_empty() {
                return bad("--serial is needed with --server (or use --spawn or --echo)".into());
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
    #[error("cannot run the in-process server: {0}")]
    Spawn(String),
    #[error("no CHALLENGE from {0} within 5 s: is a lic-udp server listening there?")]
    Unreachable(SocketAddr),
    #[error("{0}")]
    Protocol(String),
    #[error("cannot derive the license keys: {0}")]
    Kdf(String),
}

/// An unspecified address of the target's family, any port.
pub(crate) fn bind_addr(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// Latencies from 1 µs to an hour, to 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 3_600_000_000, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e}"),
    }
}

/// Runs the bench and returns its figures. Prints nothing but the progress line (if asked).
pub fn run(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    cfg.validate()?;
    let pb = if cfg.progress {
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}") {
            pb.set_style(style);
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let r = if cfg.echo { run_echo(cfg, &pb) } else { run_protocol(cfg, &pb) };
    pb.finish_and_clear();
    r
}

fn base_report(cfg: &BenchConfig, mode: &str, target: SocketAddr) -> BenchReport {
    BenchReport {
        mode: mode.into(),
        target: target.to_string(),
        spawned: matches!(cfg.target, Target::Spawn),
        clients: u64::from(cfg.clients),
        threads: u64::from(cfg.threads.min(u16::try_from(cfg.clients).unwrap_or(u16::MAX))),
        window: cfg.rate.is_none().then_some(u64::from(cfg.window)),
        rate: cfg.rate,
        timeout_ms: u64::try_from(cfg.timeout.as_millis()).unwrap_or(u64::MAX),
        ..BenchReport::default()
    }
}

fn run_echo(cfg: &BenchConfig, pb: &ProgressBar) -> Result<BenchReport, BenchError> {
    let responder = match &cfg.target {
        Target::Spawn => Some(
            echo::EchoServer::start()
                .map_err(|e| BenchError::Io(format!("cannot start the echo responder: {e}")))?,
        ),
        Target::Remote { .. } => None,
    };
    let addr = match (&responder, &cfg.target) {
        (Some(r), _) => r.addr(),
        (None, Target::Remote { addr, .. }) => *addr,
        (None, Target::Spawn) => return Err(BenchError::Io("no echo responder".into())),
    };
    let mut report = base_report(cfg, "echo", addr);
    let slots = (1..=u64::from(cfg.clients)).map(Slot::echo).collect();
    let server = responder.as_ref().map(|r| Measured { count: Box::new(|| r.echoed()) });
    let hb = heartbeat_phase(cfg, addr, slots, Mode::Echo, server, pb)?;
    hb.fill(&mut report);
    Ok(report)
}

fn run_protocol(cfg: &BenchConfig, pb: &ProgressBar) -> Result<BenchReport, BenchError> {
    pb.set_message("starting");
    let spawned = match &cfg.target {
        Target::Spawn => Some(spawn::SpawnedServer::start(cfg.clients, cfg.lease_ttl)?),
        Target::Remote { .. } => None,
    };
    let (addr, serials) = match (&spawned, &cfg.target) {
        (Some(s), _) => (s.addr(), s.serials().to_vec()),
        (None, Target::Remote { addr, serials }) => (*addr, serials.clone()),
        (None, Target::Spawn) => return Err(BenchError::Spawn("no server".into())),
    };
    let mut report = base_report(cfg, "heartbeat", addr);
    report.licenses = serials.len() as u64;
    report.lease_ttl_s = cfg.lease_ttl.map(|d| d.as_secs_f64());
    report.abandoned = (cfg.abandon > 0).then_some(u64::from(cfg.abandon));
    report.abandon_after_s = (cfg.abandon > 0).then_some(cfg.abandon_after.as_secs_f64());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Io(format!("cannot start the runtime: {e}")))?;
    pb.set_message("probing the server");
    let (salt, params) = rt.block_on(handshake::probe(addr, Duration::from_secs(5)))?;
    pb.set_message(format!("deriving keys for {} license(s)", serials.len()));
    let kdf_start = Instant::now();
    let licenses = serials
        .iter()
        .map(|s| derive_license_keys(s, &salt, params).map_err(|e| BenchError::Kdf(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    report.kdf_s = kdf_start.elapsed().as_secs_f64();

    let done = Arc::new(AtomicU64::new(0));
    let clients = cfg.clients as usize;
    let hs = rt.block_on(async {
        let deadline = Instant::now() + cfg.handshake_timeout;
        let phase = handshake::run(
            addr,
            licenses,
            salt,
            params,
            clients,
            usize::from(cfg.handshake_concurrency),
            deadline,
            done.clone(),
        );
        tokio::pin!(phase);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                r = &mut phase => break r,
                _ = tick.tick() => {
                    pb.set_message(format!("handshakes {}/{clients}", done.load(Ordering::Relaxed)));
                }
            }
        }
    })?;
    drop(rt);
    report.handshakes = hs.granted.len() as u64;
    report.handshake_denied = hs.denied;
    report.handshake_unknown = hs.unknown;
    report.handshake_timed_out = hs.timed_out;
    report.handshake_retransmits = hs.retransmits;
    report.handshake_s = hs.elapsed.as_secs_f64();
    report.handshakes_per_s =
        if hs.elapsed.is_zero() { 0.0 } else { report.handshakes as f64 / hs.elapsed.as_secs_f64() };
    report.handshake_latency_us = Latency::of(&hs.latency);

    if !hs.granted.is_empty() {
        let abandon = cfg.abandon as usize;
        let slots = hs.granted.into_iter().enumerate().map(|(i, g)| Slot::leased(g, i < abandon)).collect();
        let server = spawned.as_ref().map(|s| Measured { count: Box::new(|| s.heartbeats()) });
        let hb = heartbeat_phase(cfg, addr, slots, Mode::Protocol, server, pb)?;
        hb.fill(&mut report);
    }
    if let Some(s) = spawned {
        report.server_stats = Some(s.core().stats().snapshot());
        pb.set_message("stopping the server");
        s.stop()?;
    }
    Ok(report)
}

/// An in-process responder (server or echo) whose CPU time is measured: everything this process
/// spends besides the generator and the main thread (see [`cpu`]). `count` is its own count of
/// the datagrams it handled.
struct Measured<'a> {
    count: Box<dyn Fn() -> u64 + 'a>,
}

/// The CPU clocks read at the start and the end of the heartbeat phase.
struct CpuSample {
    process: Option<f64>,
    generator: Option<f64>,
    main: Option<f64>,
    handled: Option<u64>,
}

impl CpuSample {
    fn take(server: Option<&Measured<'_>>) -> Self {
        Self {
            process: cpu::process_cpu_seconds(),
            generator: cpu::threads_cpu_seconds(generator::THREAD_NAME),
            main: cpu::current_thread_cpu_seconds(),
            handled: server.map(|m| (m.count)()),
        }
    }
}

struct HeartbeatResult {
    counts: Counts,
    latency: Histogram<u64>,
    duration: Duration,
    threads: usize,
    server_cpu: Option<(f64, u64)>,
    generator_cpu: Option<f64>,
    /// How long giving the leases back took, if it was done.
    release: Option<Duration>,
}

impl HeartbeatResult {
    fn fill(&self, r: &mut BenchReport) {
        r.release_s = self.release.map(|d| d.as_secs_f64());
        let c = &self.counts;
        r.threads = self.threads as u64;
        r.duration_s = self.duration.as_secs_f64();
        r.heartbeats_sent = c.sent;
        r.heartbeats = c.acks;
        r.heartbeats_per_s = c.acks_in_window as f64 / self.duration.as_secs_f64().max(1e-9);
        r.latency_us = Latency::of(&self.latency);
        r.retransmits = c.retransmits;
        r.losses = c.losses;
        r.late_acks = c.late;
        r.ack_failed_verification = c.bad;
        r.stale = c.stale;
        r.ack_not_ok = c.not_ok;
        r.unexpected = c.unexpected;
        r.send_errors = c.send_errors;
        r.recv_errors = c.recv_errors;
        r.released = c.released;
        let per_million = |cpu: f64, n: u64| (n > 0).then(|| cpu / n as f64 * 1e6);
        if let Some((cpu, n)) = self.server_cpu {
            r.server_cpu_s = Some(cpu);
            r.server_heartbeats = Some(n);
            r.server_cpu_s_per_million = per_million(cpu, n);
        }
        if let Some(cpu) = self.generator_cpu {
            r.generator_cpu_s = Some(cpu);
            r.generator_cpu_s_per_million = per_million(cpu, c.acks);
        }
        if self.server_cpu.is_some() || self.generator_cpu.is_some() {
            r.cpu_method = Some(cpu::METHOD.to_owned());
        }
    }
}

/// A one-shot gate the workers wait at until the main thread opens it.
#[derive(Debug, Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn open(&self) {
        if let Ok(mut g) = self.open.lock() {
            *g = true;
        }
        self.cv.notify_all();
    }

    pub fn wait(&self) {
        let Ok(mut g) = self.open.lock() else { return };
        while !*g {
            g = match self.cv.wait(g) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
    }
}

fn heartbeat_phase(
    cfg: &BenchConfig,
    addr: SocketAddr,
    slots: Vec<Slot>,
    mode: Mode,
    server: Option<Measured<'_>>,
    pb: &ProgressBar,
) -> Result<HeartbeatResult, BenchError> {
    let threads = usize::from(cfg.threads).clamp(1, slots.len().max(1));
    let mut shares: Vec<Vec<Slot>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in slots.into_iter().enumerate() {
        shares[i % threads].push(s);
    }
    let sockets = (0..threads)
        .map(|_| generator::open_socket(addr))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::Io(format!("UDP socket towards {addr}: {e}")))?;
    let pace = match cfg.rate {
        Some(r) => Pace::Rate(r / threads as f64),
        None => Pace::Window((cfg.window as usize).div_ceil(threads).max(1)),
    };
    let live = Arc::new(Live::default());
    let (drained_tx, drained_rx) = mpsc::channel();
    let resume = Arc::new(Gate::default());

    let before = CpuSample::take(server.as_ref());
    let start = Instant::now();
    let plan = Arc::new(Plan {
        mode,
        timeout: cfg.timeout,
        start,
        end: start + cfg.duration,
        release: cfg.release,
        release_window: cfg.window as usize,
        abandon_at: (cfg.abandon > 0).then(|| start + cfg.abandon_after),
        live: live.clone(),
        drained: Mutex::new(drained_tx),
        resume: resume.clone(),
    });
    let mut workers = Vec::new();
    let mut spawn_error = None;
    for (socket, share) in sockets.into_iter().zip(shares) {
        match generator::spawn(socket, share, pace, plan.clone()) {
            Ok(h) => workers.push(h),
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        }
    }

    let noun = if mode == Mode::Echo { "echoes" } else { "heartbeats" };
    let (mut last_acks, mut last_at) = (0u64, start);
    while spawn_error.is_none() {
        let now = Instant::now();
        if now >= plan.end {
            break;
        }
        std::thread::sleep((plan.end - now).min(Duration::from_millis(250)));
        let (acks, at) = (live.acks.load(Ordering::Relaxed), Instant::now());
        let rate = (acks - last_acks) as f64 / at.saturating_duration_since(last_at).as_secs_f64().max(1e-3);
        pb.set_message(format!(
            "{noun} {acks}, {rate:.0}/s now, {} lost",
            live.losses.load(Ordering::Relaxed)
        ));
        (last_acks, last_at) = (acks, at);
    }
    pb.set_message(format!("draining the last {noun}"));
    // Each worker reports once it has drained; a worker that died does not hold the run up
    // past its bound.
    let bound = Instant::now() + cfg.timeout * 2 + Duration::from_secs(10);
    for _ in 0..workers.len() {
        let left = bound.saturating_duration_since(Instant::now());
        if drained_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let after = CpuSample::take(server.as_ref());
    let delta = |a: Option<f64>, b: Option<f64>| Some((a? - b?).max(0.0));
    let generator_cpu = delta(after.generator, before.generator);
    let server_cpu = match (before.handled, after.handled) {
        (Some(b), Some(a)) => {
            let others = generator_cpu.zip(delta(after.main, before.main)).map(|(g, m)| g + m);
            delta(after.process, before.process)
                .zip(others)
                .map(|(p, o)| ((p - o).max(0.0), a.saturating_sub(b)))
        }
        _ => None,
    };
    if cfg.release && mode == Mode::Protocol {
        pb.set_message("releasing the leases");
    }
    resume.open();
    let release_start = Instant::now();

    let mut counts = Counts::default();
    let mut latency = new_histogram();
    for w in workers {
        let o = w.join().map_err(|_| BenchError::Io("a generator thread panicked".into()))?;
        counts.add(&o.counts);
        let _ = latency.add(&o.latency);
    }
    if let Some(e) = spawn_error {
        return Err(BenchError::Io(format!("cannot start a generator thread: {e}")));
    }
    let release = (cfg.release && mode == Mode::Protocol).then(|| release_start.elapsed());
    Ok(HeartbeatResult {
        counts,
        latency,
        duration: cfg.duration,
        threads,
        server_cpu,
        generator_cpu,
        release,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(clients: u32) -> BenchConfig {
        let mut cfg = BenchConfig::new(Target::Spawn);
        cfg.clients = clients;
        cfg.duration = Duration::from_millis(500);
        cfg.window = 16;
        cfg
    }

    #[test]
    fn every_instance_handshakes_heartbeats_and_releases() {
        let r = run(&small(30)).expect("bench");
        assert_eq!(r.handshakes, 30);
        assert!(r.heartbeats > 0);
        assert_eq!(r.ack_failed_verification, 0);
        assert_eq!(r.unexpected + r.stale + r.ack_not_ok, 0);
        assert_eq!(r.heartbeats_sent, r.heartbeats + r.losses);
        assert_eq!(r.released, 30);
        assert_eq!(r.server_stats.map(|s| s.grants), Some(30));
    }

    #[test]
    fn a_fixed_rate_is_never_exceeded() {
        let mut cfg = small(20);
        cfg.rate = Some(400.0);
        cfg.duration = Duration::from_secs(1);
        let r = run(&cfg).expect("bench");
        assert_eq!(r.handshakes, 20);
        // 400 due within the second; the last batch may round up by one send.
        assert!(r.heartbeats_sent <= 401, "{}", r.heartbeats_sent);
        assert!(r.heartbeats > 0);
        assert_eq!(r.window, None);
        assert_eq!(r.rate, Some(400.0));
    }

    #[test]
    fn the_echo_generator_checks_every_byte() {
        let mut cfg = small(100);
        cfg.echo = true;
        let r = run(&cfg).expect("bench");
        assert_eq!(r.mode, "echo");
        assert!(r.heartbeats > 0);
        assert_eq!(r.ack_failed_verification + r.unexpected, 0);
        assert_eq!(r.heartbeats_sent, r.heartbeats + r.losses);
    }

    #[test]
    fn only_loopback_targets_without_allow_remote() {
        let serial = Serial::parse("0123456789").ok().into_iter().collect::<Vec<_>>();
        let remote = |ip: &str| Target::Remote {
            addr: SocketAddr::new(ip.parse().expect("ip"), 7301),
            serials: serial.clone(),
        };
        assert!(matches!(BenchConfig::new(remote("192.0.2.1")).validate(), Err(BenchError::Usage(_))));
        assert!(BenchConfig::new(remote("127.0.0.1")).validate().is_ok());
        assert!(BenchConfig::new(remote("::1")).validate().is_ok());
        let mut cfg = BenchConfig::new(remote("192.0.2.1"));
        cfg.allow_remote = true;
        assert!(cfg.validate().is_ok());
        let no_serial = Target::Remote { addr: SocketAddr::from(([127, 0, 0, 1], 7301)), serials: vec![] };
        assert!(BenchConfig::new(no_serial.clone()).validate().is_err());
        let mut echo = BenchConfig::new(no_serial);
        echo.echo = true;
        assert!(echo.validate().is_ok());
    }
}

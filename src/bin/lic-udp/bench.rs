//! `lic-udp bench`: heartbeat throughput of a server, with many simulated instances.

use std::time::Duration;

use clap::Args;
use lic_udp::bench::{self, BenchConfig, BenchError, BenchReport, Target};
use lic_udp::Serial;

use crate::duration;
use crate::exit::{Failure, FULL, IO, LICENSE, UNREACHABLE, USAGE};

/// `--rate`: heartbeats per second, or `max`.
#[derive(Clone, Copy, Debug)]
pub struct Rate(Option<f64>);

fn rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate(None));
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate(Some(r))),
        _ => Err("a positive number of heartbeats per second, or `max`".into()),
    }
}

/// The long help of `lic-udp bench --help`, after the options.
const ABOUT: &str = r#"Simulates many instances of one license against a server: every instance does the real
handshake (HELLO, CHALLENGE, PROOF, GRANT), then they all heartbeat, and the run reports
handshakes/s, heartbeats/s, ACK latency percentiles (p50, p99, p99.9), retransmits, losses
and ACKs that failed verification. The serial KDF runs once per license; the instances are
multiplexed over a few UDP sockets.

Examples:

  lic-udp bench --spawn                           # in-process server, 10,000 instances, 10 s

  lic-udp bench --spawn --echo                    # the same load against a bare echo: the limit

  lic-udp bench --server 127.0.0.1:7301 --serial 687-129-0415 --clients 500 --rate 2000

With --spawn, the server runs in this process, over a throw-away data dir (removed at the
end) with a fast test KDF, and the report adds its CPU seconds per million heartbeats: the
process's CPU time (/proc/self/stat) minus the generator threads' and the main thread's
(/proc/self/task/<tid>/schedstat), from the start of the heartbeat phase to the end of its
drain. Above 65,535 instances it issues several licenses.

The bench floods its target, so it only sends to loopback addresses unless --allow-remote.
At the end it releases every lease it holds. Exit codes: 0 done; 1 no seat granted (all in
use); 2 the license is unknown; 3 no answer; 64 usage error; 74 I/O error."#;

/// `lic-udp bench`; its long help is `ABOUT`.
#[derive(Args)]
#[command(after_long_help = ABOUT)]
pub struct BenchOpt {
    /// The license server to load, HOST:PORT (with --echo: any UDP echo server).
    #[arg(long, required_unless_present = "spawn", conflicts_with = "spawn")]
    server: Option<String>,
    /// Serial of the license the instances share. Repeat it to spread the instances over several
    /// licenses. Not needed with --spawn or --echo.
    #[arg(long)]
    serial: Vec<String>,
    /// Start the server in this process (127.0.0.1, throw-away data dir) and measure its CPU.
    #[arg(long)]
    spawn: bool,
    /// Measure the physical limit instead: heartbeat-sized (48-byte) datagrams echoed back, no
    /// protocol work. With --spawn, a batched recvmmsg/sendmmsg echo thread in this process.
    #[arg(long)]
    echo: bool,
    /// Simulated instances.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=i64::from(bench::MAX_CLIENTS)))]
    clients: u32,
    /// How long the instances heartbeat (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Heartbeats per second in total, or `max`: as fast as --window allows.
    #[arg(long, default_value = "max", value_parser = rate)]
    rate: Rate,
    /// With --rate max: heartbeats outstanding at once. Above ~200, a server socket with the
    /// default receive buffer overflows and drops.
    #[arg(long, default_value_t = bench::DEFAULT_WINDOW)]
    window: u32,
    /// A heartbeat without an ACK after this long counts as lost and is sent again (new seq).
    #[arg(long, default_value = "1s", value_parser = duration)]
    timeout: Duration,
    /// Generator threads, one UDP socket each.
    #[arg(long, default_value_t = 1)]
    threads: u16,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    handshake_concurrency: u16,
    /// Give up the handshake phase after this long.
    #[arg(long, default_value = "2m", value_parser = duration)]
    handshake_timeout: Duration,
    /// Print one JSON object (fields documented in lic_udp::bench::BenchReport) and no progress.
    #[arg(long)]
    json: bool,
    /// Allow a --server that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Keep the leases at the end instead of releasing them.
    #[arg(long)]
    no_release: bool,
    /// With --spawn: the server's lease TTL (its heartbeat interval becomes a quarter of it).
    /// Default: the license type's, 60s.
    #[arg(long, value_parser = duration)]
    lease_ttl: Option<Duration>,
    /// This many instances stop heartbeating --abandon-after into the run, as if they had
    /// crashed: their leases all expire at about the same time while the others go on (a mass
    /// expiry under load; pair it with a short --lease-ttl).
    #[arg(long, default_value_t = 0)]
    abandon: u32,
    /// When the --abandon instances go silent, counted from the start of the heartbeats.
    #[arg(long, default_value = "1s", value_parser = duration)]
    abandon_after: Duration,
}

impl From<BenchError> for Failure {
    fn from(e: BenchError) -> Self {
        let code = match &e {
            BenchError::Usage(_) => USAGE,
            BenchError::Unreachable(_) => UNREACHABLE,
            BenchError::Kdf(_) => LICENSE,
            BenchError::Io(_) | BenchError::Spawn(_) | BenchError::Protocol(_) => IO,
        };
        Self::new(code, e.to_string())
    }
}

pub fn bench(o: BenchOpt) -> Result<i32, Failure> {
    let target = match (&o.server, o.spawn) {
        (_, true) => {
            if !o.serial.is_empty() {
                return Err(Failure::usage("--serial is not used with --spawn (it issues its own licenses)"));
            }
            Target::Spawn
        }
        (Some(s), false) => {
            let serials = o
                .serial
                .iter()
                .map(|s| Serial::parse(s).map_err(|e| Failure::usage(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            Target::Remote { addr: crate::user::resolve(s)?, serials }
        }
        (None, false) => return Err(Failure::usage("give --server ADDR (with --serial) or --spawn")),
    };
    let mut cfg = BenchConfig::new(target);
    cfg.echo = o.echo;
    cfg.clients = o.clients;
    cfg.duration = o.duration;
    cfg.rate = o.rate.0;
    cfg.window = o.window;
    cfg.timeout = o.timeout;
    cfg.threads = o.threads;
    cfg.handshake_concurrency = o.handshake_concurrency;
    cfg.handshake_timeout = o.handshake_timeout;
    cfg.allow_remote = o.allow_remote;
    cfg.progress = !o.json;
    cfg.release = !o.no_release;
    cfg.lease_ttl = o.lease_ttl;
    cfg.abandon = o.abandon;
    cfg.abandon_after = o.abandon_after;
    let report = bench::run(&cfg)?;
    if o.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    outcome(&report)
}

/// A run that could not measure anything is a failure, with the usual exit codes.
fn outcome(r: &BenchReport) -> Result<i32, Failure> {
    if r.mode == "echo" {
        if r.heartbeats == 0 {
            return Err(Failure::new(UNREACHABLE, format!("no datagram came back from {}", r.target)));
        }
        return Ok(0);
    }
    if r.handshakes == 0 {
        return Err(if r.handshake_unknown > 0 {
            Failure::new(LICENSE, "the server does not know this license: check the serial")
        } else if r.handshake_denied > 0 {
            Failure::new(FULL, "no seat was granted: all seats are in use (or the server is busy)")
        } else {
            Failure::new(UNREACHABLE, format!("no GRANT from {} within the handshake timeout", r.target))
        });
    }
    if r.heartbeats == 0 {
        return Err(Failure::new(UNREACHABLE, format!("no heartbeat was acknowledged by {}", r.target)));
    }
    Ok(0)
}

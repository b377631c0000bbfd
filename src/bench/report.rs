//! The figures of a bench run, as a table for people and as one JSON object for scripts.

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::proto::server::StatsSnapshot;

/// Percentiles of a latency histogram, in microseconds. All zero when nothing was recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// The figures of one `lic-udp bench` run. `--json` prints exactly this object, on one line.
/// Fields are only ever added. Times are in seconds unless the name ends in `_us` or `_ms`; a
/// field that does not apply to the run is `null`.
///
/// - `mode`: `"heartbeat"` (the real protocol) or `"echo"` (48-byte datagrams echoed back).
/// - `target`: the address loaded; `spawned`: true with `--spawn` (in-process server or echo
///   responder on 127.0.0.1).
/// - `clients`: simulated instances; `licenses`: licenses they were spread over (0 for echo).
/// - `threads`: generator threads (one socket each); `window`: outstanding heartbeats allowed
///   (`null` with a fixed rate); `rate`: the fixed total rate asked for (`null` with `max`);
///   `timeout_ms`: after this long without an ACK a heartbeat counts as lost.
/// - `kdf_s`: the serial KDF (Argon2id), run once per license for the whole bench.
/// - `handshakes`: GRANTs received with a valid tag. Instances without one, by cause:
///   `handshake_denied` (DENY), `handshake_unknown` (UNKNOWN: wrong serial),
///   `handshake_timed_out` (no answer). `handshake_retransmits`: HELLO and PROOF retransmissions.
///   `handshake_s`: the handshake phase; `handshakes_per_s` = `handshakes` / `handshake_s`.
///   `handshake_latency_us`: first HELLO sent to GRANT verified, per instance.
/// - `duration_s`: the measured heartbeat phase. `heartbeats_sent`: HEARTBEAT transmissions,
///   retransmits included. `heartbeats`: ACKs whose tag verified under `K_s2c` and whose `seq`
///   was the one outstanding (echo: replies identical to what was sent), including those of the
///   final drain. `heartbeats_per_s`: those received within `duration_s`, divided by it.
/// - `latency_us`: ACK latency (send to receipt) `p50`, `p99`, `p999` (99.9th percentile),
///   `max` and `mean`.
/// - `retransmits`: heartbeats sent again (new `seq`) after a loss. `losses`: heartbeats without
///   an ACK within the timeout, those still unanswered after the final drain included.
///   `late_acks`: valid ACKs that came after their heartbeat had been counted lost.
///   `ack_failed_verification`: ACKs whose tag did not verify (echo: altered replies).
///   `stale`: STALE replies (the lease was gone; that instance stopped). `ack_not_ok`: valid ACKs
///   with status REVOKED or EXPIRED. `unexpected`: anything else received.
///   `send_errors`, `recv_errors`: failed socket calls. `released`: leases given back at the end
///   (HEARTBEAT with RELEASE answered by ACK RELEASED or STALE); `release_s`: how long that
///   took (`null` when nothing was released: echo mode, `--no-release`).
/// - `server_cpu_s`: CPU time (user + system) of the spawned server (or echo responder) during
///   the heartbeat phase and its drain: the process's CPU time minus the generator's threads'
///   and the main thread's (see `lic_udp::bench::cpu`); kernel work done in its threads, such as
///   delivering its replies over loopback, included. `server_heartbeats`: heartbeats (or
///   echoes) it handled in that time, by its own count; `server_cpu_s_per_million`:
///   `server_cpu_s` per million of them. All three `null` without `--spawn`.
/// - `generator_cpu_s`, `generator_cpu_s_per_million`: the same for the generator's threads,
///   per million `heartbeats`.
/// - `cpu_method`: how the CPU time was read (`null` if it could not be).
/// - `server_stats`: the spawned license server's own counters at the end (`null` otherwise).
/// - `lease_ttl_s`: `--lease-ttl` of the spawned server (`null`: the license type's).
///   `abandoned`, `abandon_after_s`: `--abandon N` instances stopped heartbeating that long
///   into the heartbeat phase, leaving their leases to expire (`null` without `--abandon`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub mode: String,
    pub target: String,
    pub spawned: bool,
    pub clients: u64,
    pub licenses: u64,
    pub threads: u64,
    pub window: Option<u64>,
    pub rate: Option<f64>,
    pub timeout_ms: u64,
    pub kdf_s: f64,
    pub handshakes: u64,
    pub handshake_denied: u64,
    pub handshake_unknown: u64,
    pub handshake_timed_out: u64,
    pub handshake_retransmits: u64,
    pub handshake_s: f64,
    pub handshakes_per_s: f64,
    pub handshake_latency_us: Latency,
    pub duration_s: f64,
    pub heartbeats_sent: u64,
    pub heartbeats: u64,
    pub heartbeats_per_s: f64,
    pub latency_us: Latency,
    pub retransmits: u64,
    pub losses: u64,
    pub late_acks: u64,
    pub ack_failed_verification: u64,
    pub stale: u64,
    pub ack_not_ok: u64,
    pub unexpected: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub released: u64,
    pub release_s: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub server_heartbeats: Option<u64>,
    pub server_cpu_s_per_million: Option<f64>,
    pub generator_cpu_s: Option<f64>,
    pub generator_cpu_s_per_million: Option<f64>,
    pub cpu_method: Option<String>,
    pub server_stats: Option<StatsSnapshot>,
    pub lease_ttl_s: Option<f64>,
    pub abandoned: Option<u64>,
    pub abandon_after_s: Option<f64>,
}

impl BenchReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn per_s(n: f64) -> String {
    if n >= 100.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.1}")
    }
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3} s"))
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let echo = self.mode == "echo";
        let pacing = match (self.rate, self.window) {
            (Some(r), _) => format!("rate {} /s", per_s(r)),
            (None, Some(w)) => format!("rate max, window {w}"),
            (None, None) => "rate max".to_owned(),
        };
        writeln!(
            f,
            "lic-udp bench: {} against {}{}: {} instances, {} thread(s), {pacing}, timeout {} ms",
            if echo { "echo" } else { "heartbeat protocol" },
            self.target,
            if self.spawned { " (in-process)" } else { "" },
            self.clients,
            self.threads,
            self.timeout_ms,
        )?;
        let row = |f: &mut fmt::Formatter<'_>, k: &str, v: String| writeln!(f, "  {k:<32} {v}");
        if !echo {
            row(
                f,
                "licenses / KDF",
                format!("{} / {:.3} s (Argon2id once per license)", self.licenses, self.kdf_s),
            )?;
            row(
                f,
                "handshakes",
                format!(
                    "{} of {} in {:.3} s ({} denied, {} unknown, {} timed out, {} retransmits)",
                    self.handshakes,
                    self.clients,
                    self.handshake_s,
                    self.handshake_denied,
                    self.handshake_unknown,
                    self.handshake_timed_out,
                    self.handshake_retransmits
                ),
            )?;
            row(f, "handshakes/s", per_s(self.handshakes_per_s))?;
            let h = &self.handshake_latency_us;
            row(f, "handshake latency p50 / p99", format!("{} / {} µs", h.p50, h.p99))?;
        }
        let what = if echo { "echoes" } else { "heartbeats (ACKs verified)" };
        row(
            f,
            what,
            format!("{} in {:.3} s ({} sent)", self.heartbeats, self.duration_s, self.heartbeats_sent),
        )?;
        row(f, if echo { "echoes/s" } else { "heartbeats/s" }, per_s(self.heartbeats_per_s))?;
        let l = &self.latency_us;
        row(
            f,
            "ACK latency p50 / p99 / p99.9",
            format!("{} / {} / {} µs (max {}, mean {:.0})", l.p50, l.p99, l.p999, l.max, l.mean),
        )?;
        row(f, "retransmits", self.retransmits.to_string())?;
        row(f, "losses", format!("{} ({} late ACKs)", self.losses, self.late_acks))?;
        row(f, "ACKs failing verification", self.ack_failed_verification.to_string())?;
        if !echo {
            row(
                f,
                "STALE / not OK / unexpected",
                format!("{} / {} / {}", self.stale, self.ack_not_ok, self.unexpected),
            )?;
            let took = self.release_s.map_or_else(String::new, |s| format!(" in {s:.3} s"));
            row(f, "released at the end", format!("{}{took}", self.released))?;
            if let (Some(n), Some(after)) = (self.abandoned, self.abandon_after_s) {
                let expired = self
                    .server_stats
                    .as_ref()
                    .map_or_else(String::new, |s| format!("; the server expired {} leases", s.expiries));
                row(
                    f,
                    "abandoned (--abandon)",
                    format!("{n} instances went silent after {after:.1} s{expired}"),
                )?;
            }
            if let Some(ttl) = self.lease_ttl_s {
                row(f, "lease TTL (--lease-ttl)", format!("{ttl:.1} s"))?;
            }
        } else {
            row(f, "unexpected", self.unexpected.to_string())?;
        }
        if self.send_errors + self.recv_errors > 0 {
            row(f, "send / receive errors", format!("{} / {}", self.send_errors, self.recv_errors))?;
        }
        let per_m = if echo { "per million echoes" } else { "per million heartbeats" };
        match (self.server_cpu_s, self.server_heartbeats) {
            (Some(cpu), Some(n)) => row(
                f,
                &format!("{} CPU {per_m}", if echo { "echo responder" } else { "server" }),
                format!("{} ({cpu:.3} s for {n})", opt_s(self.server_cpu_s_per_million)),
            )?,
            _ => row(f, "server CPU", "n/a (only with --spawn)".to_owned())?,
        }
        if let Some(cpu) = self.generator_cpu_s {
            row(
                f,
                &format!("generator CPU {per_m}"),
                format!("{} ({cpu:.3} s)", opt_s(self.generator_cpu_s_per_million)),
            )?;
        }
        Ok(())
    }
}

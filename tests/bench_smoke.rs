//! `lic-udp bench` end to end: the real binary against its in-process server and echo responder
//! on 127.0.0.1. Only correctness is asserted (counts that must add up), never speed.

use std::process::{Command, Output};

use serde_json::Value;

fn lic_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lic-udp")).arg("bench").args(args).output().expect("run lic-udp bench")
}

/// Runs the bench with `--json` and parses its one line of output.
fn bench_json(args: &[&str]) -> Value {
    let out = lic_bench(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "one JSON object on one line: {stdout}");
    serde_json::from_str(&stdout).expect("valid JSON")
}

fn n(r: &Value, field: &str) -> u64 {
    r[field].as_u64().unwrap_or_else(|| panic!("{field} is not a count: {r}"))
}

#[test]
fn heartbeat_bench_on_a_spawned_server_adds_up() {
    let r = bench_json(&["--spawn", "--duration", "2s", "--clients", "200", "--json"]);
    assert_eq!(r["mode"], "heartbeat");
    assert_eq!(r["spawned"], true);
    assert!(r["target"].as_str().is_some_and(|t| t.starts_with("127.0.0.1:")), "{r}");
    assert_eq!(n(&r, "clients"), 200);
    assert_eq!(n(&r, "licenses"), 1);

    // Every instance did the real handshake, with no refusal.
    assert_eq!(n(&r, "handshakes"), 200);
    assert_eq!(n(&r, "handshake_denied") + n(&r, "handshake_unknown") + n(&r, "handshake_timed_out"), 0);

    // Heartbeats were acknowledged, every ACK verified, nothing unexplained came back.
    assert!(n(&r, "heartbeats") > 0);
    assert_eq!(n(&r, "ack_failed_verification"), 0);
    assert_eq!(n(&r, "stale"), 0);
    assert_eq!(n(&r, "ack_not_ok"), 0);
    assert_eq!(n(&r, "unexpected"), 0);
    // Each transmission ends either acknowledged or lost.
    assert_eq!(n(&r, "heartbeats_sent"), n(&r, "heartbeats") + n(&r, "losses"));
    assert!(n(&r, "retransmits") <= n(&r, "losses"));
    assert!(r["latency_us"]["p50"].as_u64().is_some());

    // The server's own count: at least every acknowledged heartbeat, at most every one sent.
    let server = n(&r, "server_heartbeats");
    assert!(server >= n(&r, "heartbeats") && server <= n(&r, "heartbeats_sent"), "{r}");
    assert!(r["server_cpu_s_per_million"].as_f64().is_some(), "{r}");
    let stats = &r["server_stats"];
    assert_eq!(n(stats, "grants"), 200);
    assert_eq!(n(stats, "dropped_mac") + n(stats, "dropped_replay"), 0);

    // And every seat was given back at the end.
    assert_eq!(n(&r, "released"), 200);
    assert_eq!(n(stats, "releases"), 200);
}

#[test]
fn echo_bench_on_a_spawned_responder_adds_up() {
    let r = bench_json(&["--spawn", "--echo", "--duration", "1s", "--json"]);
    assert_eq!(r["mode"], "echo");
    assert_eq!(n(&r, "handshakes"), 0);
    assert!(n(&r, "heartbeats") > 0);
    assert_eq!(n(&r, "ack_failed_verification"), 0);
    assert_eq!(n(&r, "unexpected"), 0);
    assert_eq!(n(&r, "heartbeats_sent"), n(&r, "heartbeats") + n(&r, "losses"));
    let echoed = n(&r, "server_heartbeats");
    assert!(echoed >= n(&r, "heartbeats") && echoed <= n(&r, "heartbeats_sent"), "{r}");
}

#[test]
fn a_target_off_this_host_is_refused_before_anything_is_sent() {
    // 192.0.2.0/24 is TEST-NET-1; the bench must refuse it without --allow-remote.
    let out = lic_bench(&["--server", "192.0.2.1:7301", "--serial", "0000000000", "--json"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    assert!(out.stdout.is_empty());

    let out = lic_bench(&["--server", "127.0.0.1:7301"]);
    assert_eq!(out.status.code(), Some(64), "a license server needs --serial");
}

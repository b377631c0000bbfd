//! SIGHUP rereads `lic-udp.toml` while holders heartbeat (README, "Reload").

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lic_udp::{Client, SeatStatus, Serial};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const HOLDERS: usize = 1_000;
const BASE_CONFIG: &str = "[kdf]\nm_kib = 1024\nt = 1\np = 1\n";

fn api_issue(url: &str, token: &str, ty: &str) -> (u16, Value) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let r = agent
        .post(&format!("{url}/api/licenses"))
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(json!({ "type": ty }));
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST /api/licenses: {e}"),
    };
    (resp.status(), resp.into_json().unwrap_or(Value::Null))
}

/// Waits for a server log line containing `what`, and returns it.
fn log_line(server: &ServerProc, what: &str) -> String {
    let mut seen = Vec::new();
    while let Ok(line) = server.log.recv_timeout(Duration::from_secs(20)) {
        if line.contains(what) {
            return line;
        }
        seen.push(line);
    }
    panic!("no log line with {what:?} in 20 s; the server said {seen:#?}");
}

fn write_config(dir: &Path, extra: &str) {
    std::fs::write(dir.join("lic-udp.toml"), format!("{BASE_CONFIG}{extra}")).expect("write lic-udp.toml");
}

#[test]
fn sighup_applies_a_good_config_and_refuses_a_bad_one_while_1000_holders_heartbeat() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "site", Some(HOLDERS as u16));
    let ttl = Duration::from_secs(4);
    let mut server =
        ServerProc::start(dir.path(), &["--http", "127.0.0.1:0", "--lease-ttl", "4s", "--heartbeat", "1s"]);
    let ep: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("http-endpoint.json")).expect("endpoint"))
            .expect("endpoint json");
    let url = ep["url"].as_str().expect("url").to_owned();
    let d = dir.path().to_str().expect("utf8");
    let o = run_with_stdin(
        lic(&["token", "add", "--user", "alice", "--password-stdin", "--data-dir", d]),
        PASSWORD,
    );
    assert_eq!(code(&o), 0, "token add: {}", text(&o.stderr));
    let token = text(&o.stdout).trim().to_owned();

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let not_held = Arc::new(AtomicUsize::new(0));
    let seats = rt.block_on(async {
        let client = Client::new(server.addr).with_acquire_timeout(Duration::from_secs(60));
        let serial = Serial::parse(&serial).expect("serial");
        // The first acquire derives the keys; the others reuse them from the client's cache.
        let first = client.acquire(&serial).await.expect("first seat");
        let mut set = tokio::task::JoinSet::new();
        for _ in 1..HOLDERS {
            let (client, serial) = (client.clone(), serial.clone());
            set.spawn(async move { client.acquire(&serial).await });
        }
        let mut seats = vec![first];
        while let Some(r) = set.join_next().await {
            seats.push(r.expect("task").expect("a seat for every holder"));
        }
        for seat in &seats {
            let mut status = seat.status();
            let not_held = not_held.clone();
            tokio::spawn(async move {
                while status.changed().await.is_ok() {
                    if *status.borrow() != SeatStatus::Held {
                        not_held.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        seats
    });
    assert_eq!(seats.len(), HOLDERS);
    let leases: std::collections::BTreeSet<u64> = seats.iter().map(|s| s.info().lease_id).collect();
    assert_eq!(leases.len(), HOLDERS, "one lease each");

    // Before: the type does not exist.
    let (status, v) = api_issue(&url, &token, "gold");
    assert_eq!(status, 400, "{v}");

    // A good file: a new type, other audit bounds.
    write_config(dir.path(), "[types.gold]\nseats = 7\n[audit]\nkeep = \"30d\"\nmax_events = 5000\n");
    signal(&server.child, Signal::SIGHUP);
    let line = log_line(&server, "reloaded");
    assert!(line.contains("gold") && line.contains("5000"), "{line}");
    let (status, v) = api_issue(&url, &token, "gold");
    assert_eq!((status, v["seats"].as_u64()), (200, Some(7)), "the new type is issued: {v}");
    std::thread::sleep(ttl);

    // A bad file: refused as a whole (its new type too), and the good one stays.
    write_config(dir.path(), "[types.platinum]\nseats = 3\n[types.gold]\nseats = 0\n");
    signal(&server.child, Signal::SIGHUP);
    let line = log_line(&server, "refused");
    assert!(line.contains("lic-udp.toml") && line.contains("gold") && line.contains("seats"), "{line}");
    let (status, v) = api_issue(&url, &token, "platinum");
    assert_eq!(status, 400, "nothing of the bad file applies: {v}");
    let (status, v) = api_issue(&url, &token, "gold");
    assert_eq!(status, 200, "the previous config stays: {v}");
    std::thread::sleep(ttl);

    // Admin commands refuse the bad file too (exit 78); the admin fixes it.
    write_config(dir.path(), "[types.gold]\nseats = 7\n");

    // The holders never noticed: every seat held throughout, under its first lease.
    assert_eq!(not_held.load(Ordering::Relaxed), 0, "a holder lost its seat (or was told so)");
    assert_eq!(in_use(dir.path(), 1), HOLDERS as u64);
    let o = output(lic(&["log", "--csv", "--license", "1", "--data-dir", d]));
    assert_eq!(code(&o), 0, "log: {}", text(&o.stderr));
    let log = text(&o.stdout);
    let events = |e: &str| log.lines().filter(|l| l.contains(&format!(",{e},"))).count();
    assert_eq!(events("grant"), HOLDERS, "no holder took a second lease: {}", &log[..log.len().min(2000)]);
    assert_eq!(events("expire") + events("drop") + events("force-release"), 0, "{log}");
    assert!(server.child.try_wait().expect("try_wait").is_none(), "SIGHUP must not stop the server");
    assert!(server.stop().success());
    drop(seats);
}

//! `lic-udp report` on a real history: two programs hold both seats of a license at once, a
//! third is refused, then both end; the report must say so.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{add_user, code, issue, lic, output, text, ServerProc};

#[test]
fn the_report_shows_the_peak_the_full_time_and_the_denial() {
    let dir = common::data_dir();
    let d = dir.path().to_str().expect("utf8 path");
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(2));
    let server = ServerProc::start(dir.path(), &[]);
    let s = server.server_arg();
    let hold = || {
        lic(&["run", "--serial", &serial, "--server", &s, "--", "sleep", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run")
    };
    let (mut a, mut b) = (hold(), hold());
    assert!(
        common::wait_for(Duration::from_secs(10), || common::in_use(dir.path(), 1) == 2),
        "both seats held"
    );
    let o = output(lic(&["verify", "--serial", &serial, "--server", &s]));
    assert_eq!(code(&o), 1, "the third is refused: {}", text(&o.stderr));
    assert_eq!(a.wait().ok().and_then(|s| s.code()), Some(0));
    assert_eq!(b.wait().ok().and_then(|s| s.code()), Some(0));
    let report = || {
        let o = output(lic(&["report", "--json", "--since", "1h", "--data-dir", d]));
        assert_eq!(code(&o), 0, "report: {}", text(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")
    };
    // Denials reach the log a moment after they are sent.
    assert!(
        common::wait_for(Duration::from_secs(10), || report()[0]["denials"]["full"].as_u64().is_some()),
        "the denial is counted: {}",
        report()
    );
    let r = report();
    let l = &r[0];
    assert_eq!(l["license"], 1, "{r}");
    assert_eq!(l["seats"], 2, "{r}");
    assert_eq!(l["peak"], 2, "{r}");
    assert_eq!(l["grants"], 2, "{r}");
    assert_eq!(l["denials"]["full"], 1, "{r}");
    // Both held for about 3 s at once; whole seconds in the log, so at least 1 s full.
    let full_s = l["hours_full"].as_f64().unwrap_or(0.0) * 3600.0;
    let seat_s = l["seat_hours"].as_f64().unwrap_or(0.0) * 3600.0;
    assert!((1.0..=10.0).contains(&full_s), "full for {full_s} s: {r}");
    assert!((4.0..=20.0).contains(&seat_s), "{seat_s} seat-seconds: {r}");
    let o = output(lic(&["report", "--csv", "--since", "1h", "--data-dir", d]));
    assert!(text(&o.stdout).starts_with("license,seats,peak,"), "{}", text(&o.stdout));
    let o = output(lic(&["report", "--since", "yesterday-ish", "--data-dir", d]));
    assert_eq!(code(&o), 64, "a bad --since is a usage error: {}", text(&o.stderr));
}

//! End to end with the real binary on 127.0.0.1: every command and exit code of issue 2.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const FAST: [&str; 4] = ["--lease-ttl", "2s", "--heartbeat", "400ms"];

#[test]
fn user_add_refuses_a_taken_name_and_issue_checks_the_login() {
    let dir = data_dir();
    let d = dir.path().to_str().expect("utf8");
    add_user(dir.path(), "alice");
    let o =
        run_with_stdin(lic(&["user", "add", "--user", "alice", "--password-stdin", "--data-dir", d]), "x");
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("already"), "{}", text(&o.stderr));

    let o = run_with_stdin(
        lic(&["issue", "--user", "bob", "--type", "team", "--password-stdin", "--data-dir", d]),
        PASSWORD,
    );
    assert_eq!(code(&o), 2, "unknown user");
    let unknown_msg = text(&o.stderr);
    let o = run_with_stdin(
        lic(&["issue", "--user", "alice", "--type", "team", "--password-stdin", "--data-dir", d]),
        "wrong",
    );
    assert_eq!(code(&o), 2, "wrong password");
    assert_ne!(unknown_msg, text(&o.stderr), "each refusal has its own message");
    assert!(o.stdout.is_empty());

    let o = run_with_stdin(
        lic(&["issue", "--user", "alice", "--type", "nope", "--password-stdin", "--data-dir", d]),
        PASSWORD,
    );
    assert_eq!(code(&o), 64, "unknown type is a usage error");
    assert!(text(&o.stderr).contains("team"), "lists the known types");

    let a = issue(dir.path(), "alice", "team", None);
    let b = issue(dir.path(), "alice", "team", None);
    assert_ne!(a, b);
    // The store never holds a serial.
    let db = std::fs::read(dir.path().join("lic-udp.db")).expect("db");
    assert!(!db.windows(10).any(|w| w == a.as_bytes()));
}

#[test]
fn verify_exit_codes() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(1));
    let server = ServerProc::start(dir.path(), &FAST);
    let s = server.server_arg();

    // 0: granted, and given back (the next verify gets the one seat again).
    for _ in 0..2 {
        let o = output(lic(&["verify", "--serial", &serial, "--server", &s]));
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        assert!(text(&o.stdout).contains("1 of 1"));
    }
    // Spaces and dashes are accepted.
    let dashed = format!("{}-{} {}", &serial[..3], &serial[3..6], &serial[6..]);
    assert_eq!(code(&output(lic(&["verify", "--serial", &dashed, "--server", &s]))), 0);

    // 1: full. Hold the only seat with `run` (once the store shows the verifies' releases, so
    // that the wait below sees run's seat, not a release not yet written).
    assert!(wait_for(Duration::from_secs(5), || in_use(dir.path(), 1) == 0), "verify released");
    let mut holder = lic(&["run", "--serial", &serial, "--server", &s, "--", "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 1), "run took the seat");
    let o = output(lic(&["verify", "--serial", &serial, "--server", &s]));
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));
    let msg = text(&o.stderr);
    assert!(
        msg.contains("the only seat of this license is in use") && msg.contains("try again later"),
        "{msg}"
    );
    let _ = holder.kill();
    let _ = holder.wait();

    // 2: a wrong serial.
    let wrong = if serial == "0000000000" { "0000000001" } else { "0000000000" };
    let o = output(lic(&["verify", "--serial", wrong, "--server", &s]));
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));

    // 64: a malformed serial, a bad flag.
    assert_eq!(code(&output(lic(&["verify", "--serial", "12345", "--server", &s]))), 64);
    assert_eq!(code(&output(lic(&["verify", "--bogus"]))), 64);
}

#[test]
fn verify_with_no_server_exits_3() {
    // A port with nothing behind it: bind, note the port, close.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let server = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let o = output(lic(&["verify", "--serial", "0123456789", "--server", &server, "--timeout", "2s"]));
    assert_eq!(code(&o), 3, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("no answer"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn run_holds_the_seat_and_passes_the_exit_status_through() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", None);
    let server = ServerProc::start(dir.path(), &FAST);
    let s = server.server_arg();

    let o = output(lic(&["run", "--serial", &serial, "--server", &s, "--", "sh", "-c", "exit 7"]));
    assert_eq!(code(&o), 7, "{}", text(&o.stderr));

    // While the program runs the seat is held (across several heartbeats) and freed after.
    let mut child = lic(&["run", "--serial", &serial, "--server", &s, "--", "sleep", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 1));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(in_use(dir.path(), 1), 1, "still held after several heartbeats");
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(0));
    assert!(wait_for(Duration::from_secs(2), || in_use(dir.path(), 1) == 0), "released at exit");

    // A program that cannot start: 127, and the seat is not kept.
    let o = output(lic(&["run", "--serial", &serial, "--server", &s, "--", "/nonexistent/program"]));
    assert_eq!(code(&o), 127);
    // It is checked before any seat is asked for: with no server at all, still 127 (not 3, and
    // at once rather than after the retransmit schedule); a file that cannot run is 126.
    let nowhere = "127.0.0.1:9";
    let t = std::time::Instant::now();
    let o = output(lic(&["run", "--serial", &serial, "--server", nowhere, "--", "no-such-program-lic-udp"]));
    assert_eq!(code(&o), 127, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("not found"), "{}", text(&o.stderr));
    let plain = dir.path().join("not-executable.sh");
    std::fs::write(&plain, "#!/bin/sh\n").expect("write");
    let o =
        output(lic(&["run", "--serial", &serial, "--server", nowhere, "--", plain.to_str().expect("utf8")]));
    assert_eq!(code(&o), 126, "{}", text(&o.stderr));
    assert!(t.elapsed() < Duration::from_secs(5), "no seat was waited for");
}

#[test]
fn run_forwards_sigterm_to_the_program() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", None);
    let server = ServerProc::start(dir.path(), &FAST);
    let s = server.server_arg();
    let mut child = lic(&["run", "--serial", &serial, "--server", &s, "--", "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 1));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(128 + 15), "sleep died of the forwarded SIGTERM");
    assert!(wait_for(Duration::from_secs(2), || in_use(dir.path(), 1) == 0), "released");
}

#[test]
fn a_killed_run_gives_its_seat_back_after_the_ttl() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(1));
    let server = ServerProc::start(dir.path(), &FAST);
    let s = server.server_arg();
    let mut child = lic(&["run", "--serial", &serial, "--server", &s, "--", "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 1));
    child.kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = child.wait();
    // Not freed at once: the server only learns from the missing heartbeats.
    assert_eq!(code(&output(lic(&["verify", "--serial", &serial, "--server", &s]))), 1);
    // Freed within TTL (2 s) + one heartbeat (0.4 s) + sweep slack.
    assert!(
        wait_for(Duration::from_secs(4), || in_use(dir.path(), 1) == 0),
        "seat back after {:?}",
        killed.elapsed()
    );
    assert_eq!(code(&output(lic(&["verify", "--serial", &serial, "--server", &s]))), 0);
}

#[test]
fn status_shows_holders_but_never_a_serial_and_revoke_ends_the_license() {
    let dir = data_dir();
    let d = dir.path().to_str().expect("utf8");
    add_user(dir.path(), "alice");
    add_user(dir.path(), "bob");
    let serial = issue(dir.path(), "alice", "team", None);
    let server = ServerProc::start(dir.path(), &FAST);
    let s = server.server_arg();
    let child = lic(&["run", "--serial", &serial, "--server", &s, "--", "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 1));

    let v = status_json(dir.path());
    let l = &v["licenses"][0];
    assert_eq!(l["id"], 1);
    assert_eq!(l["owner"], "alice");
    assert_eq!(l["type"], "team");
    assert_eq!(l["seats"], 5);
    assert_eq!(l["state"], "in use");
    assert!(l["holders"][0]["address"].as_str().expect("address").starts_with("127.0.0.1:"));
    assert_eq!(l["holders"][0]["instance"].as_str().expect("instance").len(), 32);
    let o = output(lic(&["status", "--data-dir", d]));
    let table = text(&o.stdout);
    assert!(table.contains("alice") && table.contains("1/5"), "{table}");
    assert!(!table.contains(&serial) && !v.to_string().contains(&serial));

    // Only the owner can revoke.
    let o = run_with_stdin(
        lic(&["revoke", "--license", "1", "--user", "bob", "--password-stdin", "--data-dir", d]),
        PASSWORD,
    );
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    let o = run_with_stdin(
        lic(&["revoke", "--license", "1", "--user", "alice", "--password-stdin", "--data-dir", d]),
        PASSWORD,
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));

    // The running server notices, and the holder hears it at its next heartbeat.
    let o = output(lic(&["verify", "--serial", &serial, "--server", &s]));
    let mut tries = 0;
    let mut last = o;
    while code(&last) != 2 && tries < 20 {
        std::thread::sleep(Duration::from_millis(200));
        last = output(lic(&["verify", "--serial", &serial, "--server", &s]));
        tries += 1;
    }
    assert_eq!(code(&last), 2, "{}", text(&last.stderr));
    assert!(text(&last.stderr).contains("revoked"));
    // The holder hears of it at its next heartbeat (every 0.4 s): give it a few.
    std::thread::sleep(Duration::from_millis(1500));
    // SIGTERM reaches `sleep` too, so its end closes the stderr pipe we read.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert!(text(&out.stderr).contains("was revoked"), "run reported the end: {}", text(&out.stderr));
    assert_eq!(status_json(dir.path())["licenses"][0]["state"], "revoked");
}

#[test]
fn issue_works_while_the_server_runs_and_it_honours_the_new_license() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let server = ServerProc::start(dir.path(), &FAST);
    let serial = issue(dir.path(), "alice", "site", None);
    let s = server.server_arg();
    // At once, with no retry: the server rereads its store before it answers UNKNOWN.
    let o = output(lic(&["verify", "--serial", &serial, "--server", &s]));
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
}

#[test]
fn activate_stores_the_serial_once() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", None);
    let server = ServerProc::start(dir.path(), &FAST);
    let s = server.server_arg();
    let home = tempfile::tempdir().expect("home");
    let act = home.path().join("activation.json");
    let mut c = lic(&["activate", "--serial", &serial, "--server", &s]);
    c.env("LIC_UDP_ACTIVATION", &act);
    let o = output(c);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&act).expect("file").permissions().mode() & 0o777, 0o600);
    // No --serial, no --server: both come from the activation.
    let mut c = lic(&["verify"]);
    c.env("LIC_UDP_ACTIVATION", &act);
    let o = output(c);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    // Without an activation, a missing serial is a usage error.
    assert_eq!(code(&output(lic(&["verify", "--server", &s]))), 64);
}

#[test]
fn serve_creates_a_private_data_dir_and_stops_cleanly_on_sigterm() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("fresh");
    let mut server = ServerProc::start(&dir, &[]);
    let st = server.stop();
    assert_eq!(st.code(), Some(0));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let db = std::fs::metadata(dir.join("lic-udp.db")).expect("db").permissions().mode() & 0o777;
    assert_eq!(db & 0o077, 0, "db is private");
}

#[test]
fn admin_logins_are_throttled_after_five_wrong_passwords() {
    let dir = data_dir();
    let d = dir.path().to_str().expect("utf8");
    add_user(dir.path(), "alice");
    let issue_with = |pw: &str| {
        run_with_stdin(
            lic(&["issue", "--user", "alice", "--type", "team", "--password-stdin", "--data-dir", d]),
            pw,
        )
    };
    for _ in 0..5 {
        let o = issue_with("wrong");
        assert_eq!(code(&o), 2);
        assert!(text(&o.stderr).contains("wrong password"));
    }
    // Even the right password waits now.
    let o = issue_with(PASSWORD);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("too many wrong passwords"), "{}", text(&o.stderr));
    std::thread::sleep(Duration::from_millis(2100));
    let o = issue_with(PASSWORD);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
}

#[test]
fn admin_commands_never_create_a_stray_data_dir() {
    let parent = tempfile::tempdir().expect("tempdir");
    let stray = parent.path().join("typo-dir");
    let d = stray.to_str().expect("utf8");
    let o = run_with_stdin(
        lic(&["issue", "--user", "alice", "--type", "team", "--password-stdin", "--data-dir", d]),
        "x",
    );
    assert_eq!(code(&o), 66, "{}", text(&o.stderr));
    assert!(!stray.exists(), "issue created nothing");
    assert_eq!(code(&output(lic(&["status", "--data-dir", d]))), 66);
    assert!(!stray.exists());
}

#[test]
fn status_into_a_closed_pipe_is_not_a_crash() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    for _ in 0..3 {
        issue(dir.path(), "alice", "team", None);
    }
    let mut child = lic(&["status", "--data-dir", dir.path().to_str().expect("utf8")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("status");
    drop(child.stdout.take()); // the reader goes away, as with `| head -0`
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"));
}

#[test]
fn a_timeout_below_one_second_is_a_usage_error() {
    let o = output(lic(&["verify", "--serial", "0123456789", "--timeout", "0s"]));
    assert_eq!(code(&o), 64);
    assert!(text(&o.stderr).contains("at least 1s"));
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = dir.path().to_str().expect("utf8");
    let mut first = ServerProc::start(dir.path(), &[]);
    // Two servers would each count the seats on their own and grant the same seat twice.
    let o = output(lic(&["serve", "--listen", "127.0.0.1:0", "--data-dir", d]));
    assert_eq!(code(&o), 74, "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("another `lic-udp serve`") && err.contains(&format!("pid {}", first.child.id())),
        "{err}"
    );
    // Once the first is gone (even killed), the data dir serves again.
    let _ = first.child.kill();
    let _ = first.child.wait();
    let mut again = ServerProc::start(dir.path(), &[]);
    assert!(again.stop().success());
}

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
    // --timeout was honoured: a generous bound, still below the ~23 s default schedule.
    assert!(started.elapsed() < Duration::from_secs(18), "took {:?}", started.elapsed());
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

    // While the program runs the seat is held (across several heartbeats) and freed after. The
    // program ends when the test says so (a file appears), not after a fixed sleep that a slow
    // start could eat into; it gives up by itself after 60 s.
    let flag = dir.path().join("program-may-end");
    let script =
        format!("for i in $(seq 600); do [ -e '{}' ] && exit 0; sleep 0.1; done; exit 9", flag.display());
    let mut child = lic(&["run", "--serial", &serial, "--server", &s, "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 1));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(in_use(dir.path(), 1), 1, "still held after several heartbeats");
    std::fs::write(&flag, "").expect("flag");
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(0));
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 0), "released at exit");

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
    // Generous for two process starts on a loaded machine; a seat wait would be ~23 s each.
    assert!(t.elapsed() < Duration::from_secs(15), "no seat was waited for: {:?}", t.elapsed());
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
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 0), "released");
}

/// The handlers are in place before the seat is asked for: a SIGTERM while `run` waits for the
/// server ends it with 143 and a message, not with the default signal death (which, a moment
/// later, would kill `run` with the seat held and PROGRAM never told).
#[test]
fn run_stopped_while_waiting_for_a_seat_says_so() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", None);
    let mut child = lic(&["run", "--serial", &serial, "--server", "127.0.0.1:9", "--", "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let mut stderr = child.stderr.take().expect("stderr");
    // The "still trying" line comes 2 s in, so `run` is surely waiting by then.
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stderr, &mut first).expect("still-trying line");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let st = child.wait().expect("wait");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    assert_eq!(st.code(), Some(128 + 15), "run ended itself: {rest}");
    assert!(rest.contains("stopped by SIGTERM before a seat was granted"), "{rest}");
}

#[test]
fn a_killed_run_gives_its_seat_back_after_the_ttl() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(1));
    // A TTL long enough that the verify below surely runs inside it, even on a loaded machine.
    let server = ServerProc::start(dir.path(), &["--lease-ttl", "5s", "--heartbeat", "500ms"]);
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
    // Freed after the TTL (5 s): the outcome, with a generous bound (the timing promise itself
    // is measured elsewhere, not asserted here).
    assert!(
        wait_for(Duration::from_secs(20), || in_use(dir.path(), 1) == 0),
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
    let mut child = lic(&["run", "--serial", &serial, "--server", &s, "--", "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    // run's stderr, line by line as it comes, to wait for what it reports.
    let (said_tx, said) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if said_tx.send(line).is_err() {
                break;
            }
        }
    });
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

    // The running server notices (within a quarter second; generously bounded here).
    let mut last = output(lic(&["verify", "--serial", &serial, "--server", &s]));
    assert!(
        wait_for(Duration::from_secs(10), || {
            if code(&last) == 2 {
                return true;
            }
            last = output(lic(&["verify", "--serial", &serial, "--server", &s]));
            code(&last) == 2
        }),
        "{}",
        text(&last.stderr)
    );
    assert!(text(&last.stderr).contains("revoked"));
    // The holder hears of it at its next heartbeat (every 0.4 s) and says so.
    let mut heard = Vec::new();
    let reported = wait_for(Duration::from_secs(10), || {
        heard.extend(said.try_iter());
        heard.iter().any(|l| l.contains("was revoked"))
    });
    assert!(reported, "run reported the end: {heard:?}");
    // SIGTERM reaches `sleep` too.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let _ = child.wait();
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
    // Wrong passwords until one is refused unchecked: each checked one doubles the wait (1 s,
    // 2 s, 4 s …), so this ends within a few tries however slowly processes start here, and
    // leaves a wait longer than the next process start.
    let mut refused = None;
    for _ in 0..8 {
        let o = issue_with("wrong");
        assert_eq!(code(&o), 2);
        if text(&o.stderr).contains("too many wrong passwords") {
            refused = Some(o);
            break;
        }
    }
    assert!(refused.is_some(), "never throttled");
    // Even the right password waits now, for as long as the message says.
    let o = issue_with(PASSWORD);
    let err = text(&o.stderr);
    assert_eq!(code(&o), 2, "{err}");
    assert!(err.contains("too many wrong passwords"), "{err}");
    let secs: u64 = err
        .split("try again in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait in {err}"));
    assert!((1..=64).contains(&secs), "{err}");
    std::thread::sleep(Duration::from_secs(secs) + Duration::from_millis(200));
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

// ---- issue 11: the new admin's day.

#[test]
fn user_add_of_a_taken_name_refuses_before_asking_for_a_password() {
    let dir = data_dir();
    let d = dir.path().to_str().expect("utf8");
    add_user(dir.path(), "alice");
    // No password at all on stdin: the name is checked first, so the refusal is about the name
    // (exit 2), not about the password that was never needed (exit 64).
    let o = run_with_stdin(lic(&["user", "add", "--user", "alice", "--password-stdin", "--data-dir", d]), "");
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("already exists"), "{}", text(&o.stderr));
}

#[test]
fn local_admin_is_a_reserved_account_name() {
    let dir = data_dir();
    let d = dir.path().to_str().expect("utf8");
    let o = run_with_stdin(
        lic(&["user", "add", "--user", "local-admin", "--password-stdin", "--data-dir", d]),
        PASSWORD,
    );
    assert_eq!(code(&o), 64, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("reserved"), "{}", text(&o.stderr));
}

#[test]
fn help_says_user_manages_accounts_not_only_admins() {
    let o = output(lic(&["--help"]));
    assert_eq!(code(&o), 0);
    let help = text(&o.stdout);
    assert!(!help.contains("Manage admin accounts"), "{help}");
    assert!(help.contains("Manage accounts"), "{help}");
}

#[test]
fn serve_listens_on_a_host_name() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", None);
    let server = ServerProc::start_on(dir.path(), "localhost:0", &FAST);
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    let o = output(lic(&["verify", "--serial", &serial, "--server", &server.server_arg()]));
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
}

#[test]
fn one_restored_lease_is_singular_in_the_start_line() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", None);
    let mut server = ServerProc::start(dir.path(), &["--lease-ttl", "30s", "--heartbeat", "5s"]);
    let s = server.server_arg();
    let mut holder = lic(&["run", "--serial", &serial, "--server", &s, "--", "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 1));
    // Killed, so the lease stays in the journal for the next start to restore.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let _ = holder.kill();
    let _ = holder.wait();
    let (_again, line) = start_serve(dir.path(), "127.0.0.1:0", &[]);
    assert!(line.contains(" 1 lease restored"), "{line}");
    assert_eq!(restored_leases(&line), 1);
}

/// A TCP listener that records every request sent to it and answers none of them usefully.
fn spy() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming().take(4) {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = vec![0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            drop(c);
        }
    });
    (url, rx)
}

#[test]
fn the_local_token_is_never_sent_to_another_url() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = dir.path().to_str().expect("utf8");
    // As a running `serve --http` leaves it.
    std::fs::write(
        dir.path().join("http-endpoint.json"),
        r#"{"url":"http://127.0.0.1:9","token":"local-secret-0123456789"}"#,
    )
    .expect("endpoint");
    let (url, requests) = spy();
    for args in [
        vec!["status", "--url", url.as_str(), "--data-dir", d],
        vec!["release", "--lease", "00000000000000aa", "--url", url.as_str(), "--data-dir", d],
    ] {
        let o = output(lic(&args));
        assert_eq!(code(&o), 64, "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("--token"), "{}", text(&o.stderr));
    }
    let mut c = lic(&["status", "--data-dir", d]);
    c.env("LIC_UDP_URL", &url);
    let o = output(c);
    assert_eq!(code(&o), 64, "$LIC_UDP_URL too: {}", text(&o.stderr));
    let seen: Vec<String> = requests.try_iter().collect();
    assert!(seen.iter().all(|r| !r.contains("local-secret")), "the local token leaked: {seen:?}");
}

#[test]
fn status_with_a_url_that_does_not_answer_fails_with_exit_3() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = dir.path().to_str().expect("utf8");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}");
    let o = output(lic(&["status", "--url", &url, "--token", "lu_x", "--data-dir", d]));
    assert_eq!(code(&o), 3, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(&url), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty(), "no table from the data dir: {}", text(&o.stdout));
}

#[test]
fn a_data_dir_that_is_a_file_is_named_as_such() {
    let parent = tempfile::tempdir().expect("tempdir");
    let file = parent.path().join("lic-udp-data");
    std::fs::write(&file, "not a directory").expect("write");
    let f = file.to_str().expect("utf8");
    let o = run_with_stdin(
        lic(&["user", "add", "--user", "alice", "--password-stdin", "--data-dir", f]),
        PASSWORD,
    );
    let err = text(&o.stderr);
    assert_eq!(code(&o), 66, "{err}");
    assert!(err.contains("is a file, not a directory"), "{err}");
    assert!(!err.contains("os error"), "{err}");
    for args in [vec!["status", "--data-dir", f], vec!["log", "--data-dir", f]] {
        let o = output(lic(&args));
        let err = text(&o.stderr);
        assert_eq!(code(&o), 66, "{args:?}: {err}");
        assert!(err.contains("is a file, not a directory") && !err.contains("user add"), "{err}");
    }
}

#[test]
fn a_malformed_server_is_a_usage_error() {
    for bad in ["host:notaport", "bad host", ""] {
        let o = output(lic(&["verify", "--serial", "0123456789", "--server", bad, "--timeout", "1s"]));
        assert_eq!(code(&o), 64, "{bad:?}: {}", text(&o.stderr));
    }
}

#[test]
fn admin_commands_say_which_data_dir_and_warn_when_no_server_holds_it() {
    let parent = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(parent.path().join("lic-udp-data")).expect("mkdir");
    std::fs::write(parent.path().join("lic-udp-data/lic-udp.toml"), "[kdf]\nm_kib = 1024\nt = 1\np = 1\n")
        .expect("config");
    let abs = std::fs::canonicalize(parent.path().join("lic-udp-data")).expect("abs");
    let abs = abs.to_str().expect("utf8");
    // The default data dir, relative to the current directory, and no server on it.
    let mut c = lic(&["user", "add", "--user", "alice", "--password-stdin"]);
    c.current_dir(parent.path()).env_remove("LIC_UDP_DATA_DIR");
    let o = run_with_stdin(c, PASSWORD);
    let err = text(&o.stderr);
    assert_eq!(code(&o), 0, "{err}");
    assert!(err.contains(&format!("data dir {abs}")), "names the absolute path: {err}");
    assert!(err.contains("no running `lic-udp serve`"), "warns: {err}");
    // With a server on it: named, and no warning.
    let server = ServerProc::start(std::path::Path::new(abs), &FAST);
    let mut c = lic(&["issue", "--user", "alice", "--type", "team", "--password-stdin"]);
    c.current_dir(parent.path()).env_remove("LIC_UDP_DATA_DIR");
    let o = run_with_stdin(c, PASSWORD);
    let err = text(&o.stderr);
    assert_eq!(code(&o), 0, "{err}");
    assert!(err.contains(&format!("data dir {abs}")), "{err}");
    assert!(!err.contains("no running `lic-udp serve`"), "{err}");
    drop(server);
}

#[test]
fn run_exits_promptly_when_the_server_is_gone_as_the_program_ends() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", None);
    let mut server = ServerProc::start(dir.path(), &["--lease-ttl", "60s", "--heartbeat", "1s"]);
    let s = server.server_arg();
    // PROGRAM outlives several unanswered heartbeats, but not the TTL: the seat is still held
    // as PROGRAM ends, and the release goes unanswered.
    let child = lic(&["run", "--serial", &serial, "--server", &s, "--", "sh", "-c", "sleep 4; exit 5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    assert!(wait_for(Duration::from_secs(10), || in_use(dir.path(), 1) == 1), "run took a seat");
    // Stopped rather than killed: a dead server's port answers with ICMP "unreachable", which
    // the client hears at once; a stopped one (or a host gone from the network) answers nothing.
    signal(&server.child, nix::sys::signal::Signal::SIGSTOP);
    let gone = Instant::now();
    let out = child.wait_with_output().expect("wait");
    let took = gone.elapsed();
    signal(&server.child, nix::sys::signal::Signal::SIGCONT);
    let _ = server.stop();
    assert_eq!(out.status.code(), Some(5), "PROGRAM's status: {}", text(&out.stderr));
    // PROGRAM ends at most 4 s after the server went, and `run` waits at most 1 s for the
    // release's answer. The bound is generous for a loaded machine; the outcome that matters is
    // PROGRAM's status and the message.
    let err = text(&out.stderr);
    assert!(took < Duration::from_secs(12), "run exited {took:?} after the server went: {err}");
    assert!(err.contains("when its lease expires"), "{err}");
}

/// Issue 11 item 4: `serve --heartbeat` and `--lease-ttl` meet the limits the site file sets
/// for license types, each alone and against the types' and licenses' own timers.
#[test]
fn serve_timer_flags_are_checked_alone_and_against_the_license_types() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = dir.path().to_str().expect("utf8");
    let cases: &[(&[&str], &str)] = &[
        (&["--heartbeat", "0ms"], "--heartbeat (0s) must be at least 100ms"),
        (&["--lease-ttl", "10ms"], "--lease-ttl (10ms) must be at least 1s"),
        (&["--lease-ttl", "60d"], "must be at most"),
        (&["--heartbeat", "2m"], "--heartbeat (2m) must be shorter than the lease TTL of license type"),
        (&["--lease-ttl", "5s"], "the heartbeat of license type"),
        (
            &["--lease-ttl", "2s", "--heartbeat", "2s"],
            "--heartbeat (2s) must be shorter than --lease-ttl (2s)",
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", d];
        args.extend_from_slice(flags);
        let o = output(lic(&args));
        assert_eq!(code(&o), 64, "{flags:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(want), "{flags:?}: {}", text(&o.stderr));
    }
    // Within the limits, alone, it serves.
    let mut ok = ServerProc::start(dir.path(), &["--heartbeat", "10s"]);
    assert!(ok.stop().success());
}

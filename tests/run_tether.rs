//! `lic-udp run` killed with SIGKILL: with `--on-loss kill` its PROGRAM dies with it (the
//! kernel's parent-death signal, src/bin/lic-udp/tether.rs); with `--on-loss warn` PROGRAM
//! goes on, as README "run" documents.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Starts `run --on-loss MODE` around a shell that writes its pid and then becomes `sleep`.
fn run_sleeper(serial: &str, server: &str, mode: &str, pidfile: &Path) -> (Child, i32) {
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut cmd =
        lic(&["run", "--serial", serial, "--server", server, "--on-loss", mode, "--", "sh", "-c", &script]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let child = cmd.spawn().expect("spawn run");
    assert!(
        wait_for(Duration::from_secs(20), || std::fs::read_to_string(pidfile)
            .is_ok_and(|s| s.ends_with('\n'))),
        "PROGRAM did not start under `run --on-loss {mode}`"
    );
    let pid = std::fs::read_to_string(pidfile).expect("pidfile").trim().parse().expect("a pid");
    (child, pid)
}

/// Gone, or a zombie waiting for a reaper (a container's init may not reap).
fn dead(pid: i32) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()));
    matches!(state, None | Some('Z') | Some('X'))
}

#[test]
fn program_does_not_outlive_a_sigkilled_run_only_with_on_loss_kill() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(2));
    let server = ServerProc::start(dir.path(), &[]);

    let (mut run, pid) = run_sleeper(&serial, &server.server_arg(), "kill", &dir.path().join("kill.pid"));
    signal(&run, Signal::SIGKILL);
    let _ = run.wait();
    assert!(
        wait_for(Duration::from_secs(5), || dead(pid)),
        "PROGRAM {pid} outlived its SIGKILLed `run --on-loss kill`"
    );

    let (mut run, pid) = run_sleeper(&serial, &server.server_arg(), "warn", &dir.path().join("warn.pid"));
    signal(&run, Signal::SIGKILL);
    let _ = run.wait();
    std::thread::sleep(Duration::from_millis(500));
    let alive = !dead(pid);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    assert!(alive, "with --on-loss warn, PROGRAM goes on when run dies");
}

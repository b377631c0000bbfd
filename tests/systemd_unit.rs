//! The systemd unit (`contrib/systemd/lic-udp.service`) and the server's side of it: sd_notify
//! readiness, reload and stop (README, "Run as a service"). No systemd needs to run: the unit
//! is checked offline with `systemd-analyze`, and the notify socket is the test's own.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const UNIT: &str = include_str!("../contrib/systemd/lic-udp.service");

/// The unit with ExecStart pointing at the binary under test, in a directory of its own.
fn unit_here() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lic-udp.service");
    std::fs::write(&path, UNIT.replace("/usr/bin/lic-udp", bin())).expect("write unit");
    (dir, path)
}

#[test]
#[cfg_attr(missing_systemd_analyze, ignore = "needs systemd-analyze (apt-get install systemd)")]
fn the_unit_verifies_and_its_exposure_is_low() {
    if !tools::require(&tools::SYSTEMD_ANALYZE, "the_unit_verifies_and_its_exposure_is_low") {
        return;
    }
    let (_dir, unit) = unit_here();
    let o = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().expect("run");
    let said = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(o.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("run");
    let out = text(&o.stdout);
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for lic-udp.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}{}", text(&o.stderr)));
    // 0 is fully locked down, 10 is a unit with no hardening; "OK" in systemd's words is < 3.
    assert!(score <= 2.0, "exposure {score}:\n{out}");
}

#[test]
fn the_unit_has_the_hardening_the_package_promises() {
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=\n",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "StateDirectory=lic-udp",
        "StateDirectoryMode=0700",
    ] {
        assert!(UNIT.contains(line), "the unit lacks {line:?}");
    }
}

/// The messages the server sent to the notify socket, waiting up to 20 s for `until`.
fn notes(sock: &UnixDatagram, until: &str) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = sock.recv(&mut buf) {
        let msg = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
        let done = msg.contains(until);
        got.push(msg);
        if done {
            return got;
        }
    }
    panic!("no {until} within 20 s; got {got:?}");
}

#[test]
fn serve_tells_systemd_it_is_ready_reloading_and_stopping() {
    let dir = data_dir();
    let sockdir = tempfile::tempdir().expect("tempdir");
    let path = sockdir.path().join("notify");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    let d = dir.path().to_str().expect("utf8");
    let child = lic(&["serve", "--listen", "127.0.0.1:0", "--data-dir", d])
        .env("NOTIFY_SOCKET", &path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve");
    // Killed if an assertion fails: a server left running would hold the test's output pipe.
    let mut child = KillOnDrop(child);
    let child_ref = &child.0;
    let ready = notes(&sock, "READY=1");
    assert_eq!(ready, ["READY=1"], "READY once the socket is bound and the store open");
    signal(child_ref, Signal::SIGHUP);
    let reload = notes(&sock, "READY=1");
    assert!(reload[0].starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reload:?}");
    assert_eq!(reload.last().map(String::as_str), Some("READY=1"), "{reload:?}");
    signal(child_ref, Signal::SIGTERM);
    assert_eq!(notes(&sock, "STOPPING=1"), ["STOPPING=1"]);
    assert!(child.0.wait().expect("wait").success());
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! Runs the real `lic-udp` binary on 127.0.0.1 for integration tests.
#![allow(dead_code)] // each test binary uses a different part of this

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery staple";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lic-udp")
}

/// A data dir with fast (insecure) Argon2 parameters so that tests do not spend seconds per
/// license.
pub fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("lic-udp.toml"), "[kdf]\nm_kib = 1024\nt = 1\np = 1\n").expect("config");
    dir
}

pub fn lic(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    // Keep the tests away from the real user's activation file.
    c.env(
        "LIC_UDP_ACTIVATION",
        std::env::temp_dir().join(format!("lic-udp-test-none-{}", std::process::id())),
    );
    c.env_remove("LIC_UDP_SERVER");
    c
}

pub fn run_with_stdin(mut cmd: Command, stdin: &str) -> Output {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn lic-udp");
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("wait")
}

pub fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run lic-udp")
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn add_user(dir: &Path, user: &str) {
    let d = dir.to_str().expect("utf8 path");
    let o =
        run_with_stdin(lic(&["user", "add", "--user", user, "--password-stdin", "--data-dir", d]), PASSWORD);
    assert_eq!(code(&o), 0, "user add: {}", text(&o.stderr));
}

/// Issues a license and returns (serial, license id).
pub fn issue(dir: &Path, user: &str, ty: &str, seats: Option<u16>) -> String {
    let d = dir.to_str().expect("utf8 path");
    let seats_s = seats.map(|s| s.to_string());
    let mut args = vec!["issue", "--user", user, "--type", ty, "--password-stdin", "--data-dir", d];
    if let Some(s) = &seats_s {
        args.extend(["--seats", s.as_str()]);
    }
    let o = run_with_stdin(lic(&args), PASSWORD);
    assert_eq!(code(&o), 0, "issue: {}", text(&o.stderr));
    let out = text(&o.stdout);
    let serial = out.trim().to_owned();
    assert_eq!(out.lines().count(), 1, "exactly one line on stdout");
    assert_eq!(serial.len(), 10);
    assert!(serial.bytes().all(|b| b.is_ascii_digit()));
    serial
}

/// A running `lic-udp serve`, killed on drop.
pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub log: mpsc::Receiver<String>,
}

impl ServerProc {
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(dir, "127.0.0.1:0", extra)
    }

    pub fn start_on(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let d = dir.to_str().expect("utf8 path");
        let mut cmd = lic(&["serve", "--listen", listen, "--data-dir", d]);
        cmd.args(extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("server start line within 20 s");
            if let Some(rest) = line.split("serving on udp://").nth(1) {
                let addr = rest.split_whitespace().next().expect("addr");
                break addr.parse().expect("socket addr");
            }
        };
        Self { child, addr, dir: dir.to_path_buf(), log: rx }
    }

    pub fn server_arg(&self) -> String {
        self.addr.to_string()
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().expect("wait serve")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn status_json(dir: &Path) -> serde_json::Value {
    let o = output(lic(&["status", "--json", "--data-dir", dir.to_str().expect("utf8")]));
    assert_eq!(code(&o), 0, "status: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("status --json is JSON")
}

pub fn in_use(dir: &Path, license: i64) -> u64 {
    let v = status_json(dir);
    v["licenses"]
        .as_array()
        .expect("licenses")
        .iter()
        .find(|l| l["id"] == license)
        .and_then(|l| l["in_use"].as_u64())
        .expect("license present")
}

/// Polls `f` until it returns true or `limit` passes; returns whether it did.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

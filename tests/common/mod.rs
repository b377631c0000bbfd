//! Runs the real `lic-udp` binary on 127.0.0.1 for integration tests.
#![allow(dead_code)] // each test binary uses a different part of this

pub mod tools;

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
        start_serve(dir, listen, extra).0
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

/// A UDP port on 127.0.0.1 that is free now and lies below the kernel's ephemeral port range.
/// A server restarted on it cannot lose it to a client socket bound to port 0 while it is down,
/// and no two calls in one test binary return the same port.
pub fn free_udp_port_below_ephemeral_range() -> u16 {
    use rand::Rng;
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (from, to) = if low > 4096 { (low.saturating_sub(12000).max(2048), low) } else { (49152, 65535) };
    let mut taken = TAKEN.lock().expect("port list");
    let mut rng = rand::thread_rng();
    for _ in 0..500 {
        let port = rng.gen_range(from..to);
        if !taken.contains(&port) && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
    panic!("no free UDP port in {from}..{to}");
}

/// Like [`ServerProc::start_on`], but also returns the start line (`… N leases restored, epoch
/// E)`), and on failure shows what the server said.
pub fn start_serve(dir: &Path, listen: &str, extra: &[&str]) -> (ServerProc, String) {
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
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`lic-udp serve --listen {listen}` did not start within 20 s; it said: {said:#?}");
        };
        if let Some(rest) = line.split("serving on udp://").nth(1) {
            let addr = rest.split_whitespace().next().expect("addr").parse().expect("socket addr");
            return (ServerProc { child, addr, dir: dir.to_path_buf(), log: rx }, line);
        }
        said.push(line);
    }
}

/// The `N` of `N leases restored` (or `1 lease restored`) in a start line.
pub fn restored_leases(start_line: &str) -> usize {
    start_line
        .split(" lease")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lease count in the start line: {start_line}"))
}

/// `(lease, instance)` of every holder of `license`, as `status --json` shows them.
pub fn holders(dir: &Path, license: i64) -> Vec<(String, String)> {
    let v = status_json(dir);
    let lic = v["licenses"]
        .as_array()
        .expect("licenses")
        .iter()
        .find(|l| l["id"] == license)
        .cloned()
        .expect("license present");
    let mut out: Vec<(String, String)> = lic["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| {
            let s = |k: &str| h[k].as_str().expect("holder field").to_owned();
            (s("lease"), s("instance"))
        })
        .collect();
    out.sort();
    out
}

/// Sends `sig` to a child process this test started.
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, sig).expect("kill(2)");
}

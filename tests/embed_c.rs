//! The C library as a C program uses it: `examples/c/hello.c`, built with `cc` and `pkg-config`
//! against `ffi/licudp.pc.in` exactly as README "Embedding" says, and `tests/c/stress.c`, linked
//! statically, both run against the real server binary.
//!
//! The library is built by a nested `cargo build -p lic-udp-ffi` into this test's own target
//! dir (a no-op after `cargo test` at the root, which builds it anyway), so a test run with
//! `-p lic-udp` alone never links a stale library.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use common::*;

/// The lease TTL for the restart test: short, so that a holder that did not re-handshake
/// would have lost its restored lease well before the check.
const TIMERS: [&str; 4] = ["--lease-ttl", "3s", "--heartbeat", "500ms"];

struct Programs {
    hello: PathBuf,
    stress: PathBuf,
    measure: PathBuf,
    fork: PathBuf,
    _dir: tempfile::TempDir,
}

/// Builds the library and both programs once per test binary; `None` when cc is missing and
/// that is allowed (see tests/common/tools.rs).
fn programs(test: &str) -> Option<&'static Programs> {
    static BUILT: OnceLock<Programs> = OnceLock::new();
    if !tools::require(&tools::CC, test) {
        return None;
    }
    Some(BUILT.get_or_init(build))
}

fn build() -> Programs {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/PROFILE/deps/TEST");
    let target_dir = profile_dir.parent().expect("target/PROFILE");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned()));
    cargo.args(["build", "--quiet", "-p", "lic-udp-ffi", "--lib", "--target-dir"]).arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    let status = cargo.current_dir(root).status().expect("run cargo");
    assert!(status.success(), "cargo build -p lic-udp-ffi failed");

    // An install prefix as README's steps make one, with the .pc from the template.
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("prefix");
    for d in ["include", "lib/pkgconfig"] {
        std::fs::create_dir_all(prefix.join(d)).expect("mkdir");
    }
    std::fs::copy(root.join("ffi/include/lic_udp.h"), prefix.join("include/lic_udp.h")).expect("copy header");
    std::os::unix::fs::symlink(profile_dir.join("liblicudp.so"), prefix.join("lib/liblicudp.so"))
        .expect("symlink");
    let pc = std::fs::read_to_string(root.join("ffi/licudp.pc.in")).expect("ffi/licudp.pc.in");
    let prefix_text = prefix.to_str().expect("utf8 tempdir");
    std::fs::write(prefix.join("lib/pkgconfig/licudp.pc"), pc.replace("@PREFIX@", prefix_text))
        .expect("write .pc");

    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "licudp"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output()
        .expect("run pkg-config");
    assert!(flags.status.success(), "pkg-config: {}", text(&flags.stderr));
    let flags = text(&flags.stdout);

    let shared = |src: &str, name: &str| {
        let out = dir.path().join(name);
        let mut cc = Command::new("cc");
        cc.arg(root.join(src)).args(flags.split_whitespace());
        cc.arg(format!("-Wl,-rpath,{prefix_text}/lib"))
            .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&out);
        compile(cc);
        out
    };
    let hello = shared("examples/c/hello.c", "hello");
    let measure = shared("tests/c/measure.c", "measure");
    let fork = shared("tests/c/fork.c", "fork");

    let stress = dir.path().join("stress");
    let mut cc = Command::new("cc");
    cc.arg(root.join("tests/c/stress.c")).arg("-I").arg(prefix.join("include"));
    cc.arg(profile_dir.join("liblicudp.a")).args([
        "-lpthread",
        "-ldl",
        "-lm",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-o",
    ]);
    cc.arg(&stress);
    compile(cc);
    Programs { hello, stress, measure, fork, _dir: dir }
}

fn compile(mut cc: Command) {
    let o = cc.output().expect("run cc");
    assert!(o.status.success(), "{cc:?} failed:\n{}", text(&o.stderr));
}

/// The C program's environment: away from the user's activation file and server, like `lic`.
fn c_program(path: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(path);
    c.args(args);
    c.env(
        "LIC_UDP_ACTIVATION",
        std::env::temp_dir().join(format!("lic-udp-test-none-{}", std::process::id())),
    );
    c.env_remove("LIC_UDP_SERVER");
    c
}

/// `hello` holding a seat, driven through its stdin.
struct Hello {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Hello {
    fn start(cmd: Command) -> Self {
        let mut cmd = cmd;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn hello");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { stdin: child.stdin.take(), child, lines }
    }

    /// The next line that starts with `prefix`, skipping others (callback lines).
    fn expect(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("hello printed no `{prefix}` line within 30 s"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush()).expect("write to hello");
    }

    /// Lets it release (an empty line) and returns its exit code.
    fn finish(mut self) -> i32 {
        self.send("\n");
        self.stdin.take();
        self.expect("released");
        self.child.wait().expect("wait hello").code().unwrap_or(-1)
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lease id in `granted: lease 0123456789abcdef, 1 of 1 seats in use`.
fn lease_of(granted: &str) -> String {
    granted
        .split("lease ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .expect("lease in the granted line")
        .to_owned()
}

#[test]
#[cfg_attr(missing_cc, ignore = "needs cc and pkg-config (apt-get install gcc libc6-dev pkg-config)")]
fn c_hello_gets_the_cli_exit_codes_and_releases() {
    let Some(p) = programs("c_hello_gets_the_cli_exit_codes_and_releases") else { return };
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(1));
    let server = ServerProc::start(dir.path(), &[]);
    let addr = server.server_arg();

    let holder = Hello::start(c_program(&p.hello, &[&serial, &addr]));
    let granted = holder.expect("granted:");
    assert!(granted.ends_with("1 of 1 seats in use"), "{granted}");
    assert_eq!(in_use(dir.path(), 1), 1);

    let run = |args: &[&str]| {
        let o = c_program(&p.hello, args).stdin(Stdio::null()).output().expect("run hello");
        (code(&o), text(&o.stderr))
    };
    let (c, err) = run(&[&serial, &addr]);
    assert_eq!(c, 1, "the only seat is taken: {err}");
    assert!(err.contains("in use"), "{err}");
    let wrong = if serial == "0000000000" { "0000000001" } else { "0000000000" };
    let (c, err) = run(&[wrong, &addr]);
    assert_eq!(c, 2, "a serial the server does not know: {err}");
    // A socket that never answers: "nothing listening" without a port another test could take.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let (c, err) = run(&[&serial, &silent_addr, "1500"]);
    assert_eq!(c, 3, "no answer within the timeout: {err}");
    for (args, why) in [
        (vec!["12-34", addr.as_str()], "a malformed serial"),
        (vec![serial.as_str(), "host:notaport"], "a malformed server"),
        (vec!["-", addr.as_str()], "no serial and no activation file"),
    ] {
        let (c, err) = run(&args);
        assert_eq!(c, 64, "{why}: {err}");
    }

    assert_eq!(holder.finish(), 0);
    // The server confirms at once; its store records the release a moment later.
    assert!(wait_for(Duration::from_secs(5), || in_use(dir.path(), 1) == 0), "lu_release gave the seat back");

    // NULL serial and servers: the activation file, as `lic-udp activate` wrote it.
    let act = dir.path().join("activation.json");
    let mut activate = lic(&["activate", "--serial", &serial, "--server", &addr]);
    activate.env("LIC_UDP_ACTIVATION", &act);
    let o = output(activate);
    assert_eq!(code(&o), 0, "activate: {}", text(&o.stderr));
    let mut hello = c_program(&p.hello, &[]);
    hello.env("LIC_UDP_ACTIVATION", &act).stdin(Stdio::null());
    let o = hello.output().expect("run hello");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("1 of 1 seats in use"), "{}", text(&o.stdout));
}

#[test]
#[cfg_attr(missing_cc, ignore = "needs cc and pkg-config (apt-get install gcc libc6-dev pkg-config)")]
fn c_holder_keeps_its_lease_across_a_server_sigkill_and_restart() {
    let Some(p) = programs("c_holder_keeps_its_lease_across_a_server_sigkill_and_restart") else { return };
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(1));
    let listen = format!("127.0.0.1:{}", free_udp_port_below_ephemeral_range());
    let mut server = ServerProc::start_on(dir.path(), &listen, &TIMERS);

    let mut holder = Hello::start(c_program(&p.hello, &[&serial, &listen]));
    let lease = lease_of(&holder.expect("granted:"));
    assert_eq!(holders(dir.path(), 1).into_iter().map(|(l, _)| l).collect::<Vec<_>>(), vec![lease.clone()]);

    signal(&server.child, nix::sys::signal::Signal::SIGKILL);
    let _ = server.child.wait();
    std::thread::sleep(Duration::from_millis(500));
    let (_server, line) = start_serve(dir.path(), &listen, &TIMERS);
    assert_eq!(restored_leases(&line), 1, "{line}");
    // Three TTLs: the restored lease alone would have expired; only a re-handshake keeps it.
    std::thread::sleep(Duration::from_secs(9));
    let now: Vec<String> = holders(dir.path(), 1).into_iter().map(|(l, _)| l).collect();
    assert_eq!(now, vec![lease], "the C holder holds the same lease");
    holder.send("state?\n");
    assert_eq!(holder.expect("now:"), "now: held");
    assert_eq!(holder.finish(), 0);
    assert!(wait_for(Duration::from_secs(5), || in_use(dir.path(), 1) == 0), "released after the restart");
}

#[test]
#[cfg_attr(missing_cc, ignore = "needs cc and pkg-config (apt-get install gcc libc6-dev pkg-config)")]
fn c_threads_acquiring_and_releasing_at_once_leak_no_seat() {
    let Some(p) = programs("c_threads_acquiring_and_releasing_at_once_leak_no_seat") else { return };
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(4));
    let server = ServerProc::start(dir.path(), &[]);
    let o = c_program(&p.stress, &[&serial, &server.server_arg(), "16", "10"])
        .stdin(Stdio::null())
        .output()
        .expect("run stress");
    assert_eq!(code(&o), 0, "stress: {}{}", text(&o.stdout), text(&o.stderr));
    let said = text(&o.stdout);
    assert!(said.contains("failed 0"), "{said}");
    assert!(wait_for(Duration::from_secs(5), || in_use(dir.path(), 1) == 0), "a seat was leaked: {said}");
}

#[test]
#[cfg_attr(missing_cc, ignore = "needs cc and pkg-config (apt-get install gcc libc6-dev pkg-config)")]
fn after_fork_the_parent_keeps_its_seat_and_the_child_gets_its_own() {
    let Some(p) = programs("after_fork_the_parent_keeps_its_seat_and_the_child_gets_its_own") else { return };
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(2));
    let server = ServerProc::start(dir.path(), &[]);
    let parent = Hello::start(c_program(&p.fork, &[&serial, &server.server_arg()]));
    let lease = parent.expect("parent holds").trim_start_matches("parent holds ").to_owned();
    // The child released its own seat and only forgot the parent's.
    let now: Vec<String> = holders(dir.path(), 1).into_iter().map(|(l, _)| l).collect();
    assert_eq!(now, vec![lease]);
    let mut parent = parent;
    parent.send("\n");
    parent.stdin.take();
    assert_eq!(parent.child.wait().expect("wait fork").code(), Some(0));
    assert!(wait_for(Duration::from_secs(5), || in_use(dir.path(), 1) == 0));
}

/// Figures for README, not a check of speed: `cargo test --release --test embed_c --
/// --ignored --nocapture` prints what `lu_acquire` costs on loopback (100 rounds) and the
/// idle CPU and memory of 100 held seats.
#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn c_acquire_cost_and_idle_footprint() {
    let Some(p) = programs("c_acquire_cost_and_idle_footprint") else { return };
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let serial = issue(dir.path(), "alice", "team", Some(100));
    let server = ServerProc::start(dir.path(), &[]);
    let o = c_program(&p.measure, &[&serial, &server.server_arg(), "100", "100", "20"])
        .stdin(Stdio::null())
        .output()
        .expect("run measure");
    assert_eq!(code(&o), 0, "measure: {}", text(&o.stderr));
    println!("{}", text(&o.stdout));
}

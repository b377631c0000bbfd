//! The user's commands: check a license, hold a seat around a program, activate once.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use clap::Args;
use lic_udp::activation::{self, Activation};
use lic_udp::locate::{self, ENV_SERVER};
use lic_udp::server::DEFAULT_PORT;
use lic_udp::{Client, Seat, SeatStatus, Serial};

use crate::duration;
use crate::exit::{Failure, IO, LICENSE};

#[derive(Args)]
pub struct Target {
    /// The 10-digit serial (spaces and dashes are fine). Defaults to the activated one.
    #[arg(long)]
    serial: Option<String>,
    /// License server, HOST or HOST:PORT, or the nodes of a cluster as HOST[:PORT],HOST[:PORT]…
    /// [default: $LIC_UDP_SERVER, the activated server, or 127.0.0.1:7301].
    #[arg(long)]
    server: Option<String>,
    /// Give up a first acquisition after this long, at least 1s [default: the retransmit
    /// schedule, 20-50 s].
    #[arg(long, value_parser = timeout)]
    timeout: Option<Duration>,
}

#[derive(Args)]
pub struct VerifyOpt {
    #[command(flatten)]
    target: Target,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnLoss {
    /// Report on stderr and keep PROGRAM running while trying to regain the seat.
    Warn,
    /// Stop PROGRAM (SIGTERM) when the seat is lost, revoked or expired; and PROGRAM gets
    /// SIGKILL if `lic-udp run` itself dies (even by SIGKILL).
    Kill,
}

#[derive(Args)]
pub struct RunOpt {
    #[command(flatten)]
    target: Target,
    /// What to do when the seat is lost and cannot be regained at once.
    #[arg(long, value_enum, default_value_t = OnLoss::Warn)]
    on_loss: OnLoss,
    /// The program to run, and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM")]
    command: Vec<String>,
}

#[derive(Args)]
pub struct ActivateOpt {
    /// The 10-digit serial to remember.
    #[arg(long)]
    serial: String,
    /// License server, HOST or HOST:PORT, or a cluster's nodes as HOST[:PORT],HOST[:PORT]…
    /// [default: $LIC_UDP_SERVER or 127.0.0.1:7301].
    #[arg(long)]
    server: Option<String>,
    /// Give up after this long, at least 1s [default: the retransmit schedule, 20-50 s].
    #[arg(long, value_parser = timeout)]
    timeout: Option<Duration>,
}

/// A timeout shorter than a second would give up while a GRANT is still on its way.
fn timeout(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < Duration::from_secs(1) {
        return Err("the timeout must be at least 1s".to_owned());
    }
    Ok(d)
}

/// `HOST`, `HOST:PORT`, `IP`, `IP:PORT` or `[IPv6]:PORT`; the port defaults to 7301.
pub(crate) fn resolve(server: &str) -> Result<SocketAddr, Failure> {
    Ok(locate::resolve(server)?)
}

/// `A,B,C`: the nodes of one cluster, tried in this order.
pub(crate) fn resolve_list(servers: &str) -> Result<Vec<SocketAddr>, Failure> {
    Ok(locate::resolve_list(servers)?)
}

/// Serial and server from the flags, then the environment, then the activation file.
fn client_for(t: &Target) -> Result<(Client, Serial), Failure> {
    let found = locate::locate(t.serial.as_deref(), t.server.as_deref())?;
    if let Some(e) = &found.ignored_activation {
        eprintln!("lic-udp: ignoring the activation file: {e}");
    }
    let mut client = found.client;
    if let Some(d) = t.timeout {
        client = client.with_acquire_timeout(d);
    }
    Ok((client, found.serial))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(IO, format!("cannot start the runtime: {e}")))
}

/// Acquires, saying on stderr when the server is slow to answer, so that a user waiting out the
/// retransmit schedule knows what is happening. The wait itself sleeps; nothing spins.
async fn acquire_noisy(client: &Client, serial: &Serial) -> Result<Seat, lic_udp::AcquireError> {
    let acquire = client.acquire(serial);
    tokio::pin!(acquire);
    tokio::select! {
        r = &mut acquire => return r,
        _ = tokio::time::sleep(Duration::from_secs(2)) => {
            eprintln!("lic-udp: no answer from the license server at {} yet; still trying", client.server());
        }
    }
    match acquire.await {
        // A GRANT may still be on its way; stay a moment so that it is released, not leaked.
        Err(e @ lic_udp::AcquireError::TimedOut(_)) => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(e)
        }
        r => r,
    }
}

fn describe(seat: &Seat) -> String {
    let i = seat.info();
    format!("seat granted: {} of {} seats in use", i.used, i.seats)
}

pub fn verify(o: VerifyOpt) -> Result<i32, Failure> {
    let (client, serial) = client_for(&o.target)?;
    runtime()?.block_on(async {
        let seat = acquire_noisy(&client, &serial).await?;
        println!("{}", describe(&seat));
        seat.release().await;
        Ok(0)
    })
}

pub fn activate(o: ActivateOpt) -> Result<i32, Failure> {
    let serial = Serial::parse(&o.serial).map_err(|e| Failure::usage(e.to_string()))?;
    let server_text = o
        .server
        .clone()
        .or_else(|| std::env::var(ENV_SERVER).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"));
    let servers = resolve_list(&server_text)?;
    let path = activation::default_path()?;
    let mut client = Client::new(servers[0]).with_servers(servers);
    if let Some(d) = o.timeout {
        client = client.with_acquire_timeout(d);
    }
    runtime()?.block_on(async {
        let seat = acquire_noisy(&client, &serial).await?;
        seat.release().await;
        Ok::<(), Failure>(())
    })?;
    let keys = client
        .cached_keys_for(&serial)
        .ok_or_else(|| Failure::new(IO, "the key derivation did not finish"))?;
    activation::save(&path, &Activation::new(&server_text, &serial, &keys))?;
    println!("activated: {} (server {server_text})", path.display());
    Ok(0)
}

pub fn run(o: RunOpt) -> Result<i32, Failure> {
    let (client, serial) = client_for(&o.target)?;
    let Some((program, args)) = o.command.split_first() else {
        return Err(Failure::usage("no PROGRAM given: lic-udp run --serial SERIAL -- PROGRAM [ARGS...]"));
    };
    // Before taking a seat: a typo in PROGRAM should not cost anyone a seat, nor leave a
    // grant and a release in the audit log.
    preflight(program)?;
    // Admins see the program that holds the seat, not `lic-udp`.
    let name = std::path::Path::new(program).file_name().map(|n| n.to_string_lossy().into_owned());
    let client = client.with_identity(Some(lic_udp::Identity::of_this_process(name.as_deref(), "")));
    runtime()?.block_on(async {
        // Installed before the seat is asked for: a SIGTERM that lands between the grant and
        // the spawn must reach PROGRAM, not kill `run` with the seat still held.
        let mut signals = Signals::install()?;
        let seat = tokio::select! {
            r = acquire_noisy(&client, &serial) => r?,
            sig = signals.next() => {
                return Err(Failure::new(128 + sig as i32, format!("stopped by {sig} before a seat was granted")));
            }
        };
        // With `--on-loss kill`, PROGRAM must not outlive a SIGKILLed `run` either (tether.rs).
        let mut command = match o.on_loss {
            OnLoss::Kill => crate::tether::command(program, args)?,
            OnLoss::Warn => tokio::process::Command::new(program),
        };
        if o.on_loss == OnLoss::Warn {
            command.args(args);
        }
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                seat.release().await;
                let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
                return Err(Failure::new(code, format!("cannot start {program}: {e}")));
            }
        };
        let status = supervise(&mut child, &seat, &mut signals, o.on_loss, client.server()).await;
        release_briefly(seat, client.server()).await;
        Ok(status.map(exit_code).unwrap_or(IO))
    })
}

/// How long `run` waits for the server to confirm a release once PROGRAM has ended. On a LAN
/// the answer takes milliseconds; the library's full retransmit schedule (~14 s) would hold
/// the user's shell for a seat the server frees anyway when the lease expires.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// One short release attempt: PROGRAM's status should not wait on an unreachable server.
async fn release_briefly(seat: Seat, server: SocketAddr) {
    if tokio::time::timeout(RELEASE_WAIT, seat.release()).await.is_err() {
        eprintln!(
            "lic-udp: no answer from {server} to the release; the seat will be freed when its lease expires"
        );
    }
}

/// Finds PROGRAM as `execvp` would (a path if it has a `/`, else each `$PATH` entry) and checks
/// that it is an executable file: 127 if it is not there, 126 if it cannot be run. The spawn
/// still reports anything this misses.
fn preflight(program: &str) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        match runnable(std::path::Path::new(program)) {
            Ok(true) => return Ok(()),
            Ok(false) => Some(program.to_owned()),
            Err(_) => None,
        }
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut seen = None;
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(program);
            match runnable(&candidate) {
                Ok(true) => return Ok(()),
                Ok(false) => seen = seen.or(Some(candidate.display().to_string())),
                Err(_) => {}
            }
        }
        seen
    };
    match found {
        Some(p) => Err(Failure::new(126, format!("cannot start {program}: {p} is not an executable file"))),
        None => {
            Err(Failure::new(127, format!("cannot start {program}: not found (check the name and $PATH)")))
        }
    }
}

/// SIGINT and SIGTERM as `run` catches them. Tokio keeps a signal that arrives while nobody
/// waits, so one caught before PROGRAM exists is forwarded as soon as it does.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, Failure> {
        use tokio::signal::unix::{signal, SignalKind};
        let fail = |e: std::io::Error| Failure::new(IO, format!("cannot install the signal handlers: {e}"));
        Ok(Self {
            int: signal(SignalKind::interrupt()).map_err(fail)?,
            term: signal(SignalKind::terminate()).map_err(fail)?,
        })
    }

    async fn next(&mut self) -> nix::sys::signal::Signal {
        tokio::select! {
            _ = self.int.recv() => nix::sys::signal::Signal::SIGINT,
            _ = self.term.recv() => nix::sys::signal::Signal::SIGTERM,
        }
    }
}

/// Waits for the child while forwarding SIGINT/SIGTERM to it and reporting seat changes.
async fn supervise(
    child: &mut tokio::process::Child,
    seat: &Seat,
    signals: &mut Signals,
    on_loss: OnLoss,
    server: SocketAddr,
) -> Option<ExitStatus> {
    let mut status = seat.status();
    let mut watching = true;
    loop {
        tokio::select! {
            r = child.wait() => return r.ok(),
            sig = signals.next() => forward(child, sig),
            changed = status.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let now = *status.borrow_and_update();
                match now {
                    SeatStatus::Held => eprintln!("lic-udp: license seat regained"),
                    SeatStatus::Lost => {
                        if on_loss == OnLoss::Kill {
                            eprintln!("lic-udp: lost the license seat (no answer from {server} within the lease TTL); stopping the program (--on-loss kill)");
                        } else {
                            eprintln!("lic-udp: lost the license seat (no answer from {server} within the lease TTL); trying to regain it");
                        }
                        if on_loss == OnLoss::Kill {
                            forward(child, nix::sys::signal::Signal::SIGTERM);
                        }
                    }
                    SeatStatus::Ended(reason) => {
                        let why = match reason {
                            lic_udp::proto::wire::DenyReason::Expired => "has expired",
                            _ => "was revoked",
                        };
                        eprintln!("lic-udp: the license {why}; the seat cannot be regained");
                        watching = false;
                        if on_loss == OnLoss::Kill {
                            forward(child, nix::sys::signal::Signal::SIGTERM);
                        }
                    }
                    SeatStatus::Released => watching = false,
                }
            }
        }
    }
}

fn forward(child: &tokio::process::Child, sig: nix::sys::signal::Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// The child's code, or 128 + signal like a shell.
fn exit_code(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().or_else(|| s.signal().map(|n| 128 + n)).unwrap_or(LICENSE)
}

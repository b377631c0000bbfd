//! The user's commands: check a license, hold a seat around a program, activate once.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitStatus;
use std::time::Duration;

use clap::Args;
use lic_udp::activation::{self, Activation};
use lic_udp::server::DEFAULT_PORT;
use lic_udp::{Client, Seat, SeatStatus, Serial};

use crate::duration;
use crate::exit::{Failure, IO, LICENSE};

/// Environment variable naming the default license server.
const ENV_SERVER: &str = "LIC_UDP_SERVER";

#[derive(Args)]
pub struct Target {
    /// The 10-digit serial (spaces and dashes are fine). Defaults to the activated one.
    #[arg(long)]
    serial: Option<String>,
    /// License server, HOST or HOST:PORT [default: $LIC_UDP_SERVER, the activated server, or
    /// 127.0.0.1:7301].
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
    /// Stop PROGRAM (SIGTERM) when the seat is lost, revoked or expired.
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
    /// License server, HOST or HOST:PORT [default: $LIC_UDP_SERVER or 127.0.0.1:7301].
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
    if let Ok(a) = server.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = server.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let has_port = server.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let text = if has_port { server.to_owned() } else { format!("{server}:{DEFAULT_PORT}") };
    text.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(|| {
        Failure::usage(format!("cannot resolve the server address `{server}` (use HOST or HOST:PORT)"))
    })
}

/// Serial and server from the flags, then the environment, then the activation file.
fn client_for(t: &Target) -> Result<(Client, Serial), Failure> {
    let path = activation::default_path()?;
    let act = match activation::load(&path) {
        Ok(a) => a,
        // Only needed when no serial was given; otherwise say so and carry on without it.
        Err(e) if t.serial.is_some() => {
            eprintln!("lic-udp: ignoring the activation file: {e}");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let server_text = t
        .server
        .clone()
        .or_else(|| std::env::var(ENV_SERVER).ok().filter(|s| !s.is_empty()))
        .or_else(|| act.as_ref().map(|a| a.server.clone()))
        .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"));
    let server = resolve(&server_text)?;
    let serial = match (&t.serial, &act) {
        (Some(s), _) => Serial::parse(s).map_err(|e| Failure::usage(e.to_string()))?,
        (None, Some(a)) => a.serial(&path)?,
        (None, None) => {
            return Err(Failure::usage(
                "no serial: pass --serial, or run `lic-udp activate --serial SERIAL` once",
            ))
        }
    };
    let mut client = Client::new(server);
    if let Some(a) = &act {
        if a.serial(&path).ok().as_ref() == Some(&serial) {
            client = client.with_cached_keys(a.cached_keys(&path)?);
        }
    }
    if let Some(d) = t.timeout {
        client = client.with_acquire_timeout(d);
    }
    Ok((client, serial))
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
    let server = resolve(&server_text)?;
    let path = activation::default_path()?;
    let mut client = Client::new(server);
    if let Some(d) = o.timeout {
        client = client.with_acquire_timeout(d);
    }
    runtime()?.block_on(async {
        let seat = acquire_noisy(&client, &serial).await?;
        seat.release().await;
        Ok::<(), Failure>(())
    })?;
    let keys = client.cached_keys().ok_or_else(|| Failure::new(IO, "the key derivation did not finish"))?;
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
    runtime()?.block_on(async {
        let seat = acquire_noisy(&client, &serial).await?;
        let mut child = match tokio::process::Command::new(program).args(args).spawn() {
            Ok(c) => c,
            Err(e) => {
                seat.release().await;
                let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
                return Err(Failure::new(code, format!("cannot start {program}: {e}")));
            }
        };
        let status = supervise(&mut child, &seat, o.on_loss, client.server()).await;
        seat.release().await;
        Ok(status.map(exit_code).unwrap_or(IO))
    })
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

/// Waits for the child while forwarding SIGINT/SIGTERM to it and reporting seat changes.
async fn supervise(
    child: &mut tokio::process::Child,
    seat: &Seat,
    on_loss: OnLoss,
    server: SocketAddr,
) -> Option<ExitStatus> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).ok()?;
    let mut sigterm = signal(SignalKind::terminate()).ok()?;
    let mut status = seat.status();
    let mut watching = true;
    loop {
        tokio::select! {
            r = child.wait() => return r.ok(),
            _ = sigint.recv() => forward(child, nix::sys::signal::Signal::SIGINT),
            _ = sigterm.recv() => forward(child, nix::sys::signal::Signal::SIGTERM),
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

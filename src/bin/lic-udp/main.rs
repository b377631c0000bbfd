//! `lic-udp`: one binary for the server, the admin commands and the user's commands.
//!
//! This file only parses arguments and maps outcomes to exit codes; each subcommand is a few
//! lines over the library. It is the only place that prints to the terminal or exits.

mod admin;
mod bench;
mod cluster;
mod exit;
mod generate;
mod notify;
mod reload;
mod remote;
mod report;
mod tether;
mod usage;
mod user;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use exit::Failure;

/// A floating-license server for software on a LAN.
///
/// Exit codes: 0 success; 1 all seats in use (or server busy); 2 license unknown, revoked or
/// expired, wrong serial, or refused login; 3 no server answered; 64 usage error; 66 no data
/// dir; 74 store or I/O error; 78 bad lic-udp.toml; `run`: 126/127 PROGRAM not runnable/found.
#[derive(Parser)]
#[command(name = "lic-udp", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the license server (UDP).
    Serve(admin::ServeOpt),
    /// Manage accounts: the people who issue licenses (and the admins among them).
    #[command(subcommand)]
    User(admin::UserCmd),
    /// Log in as a user and issue a new license; prints its 10-digit serial.
    Issue(admin::IssueOpt),
    /// Make API tokens for scripts.
    #[command(subcommand)]
    Token(admin::TokenCmd),
    /// Show every license, its seats in use and their holders (never the serials): live from
    /// the running server when it answers, else from the data dir.
    Status(report::StatusOpt),
    /// End a license (its owner or an admin). Its holders lose their seats at their next heartbeat.
    Revoke(admin::RevokeOpt),
    /// Free a stuck seat now, through the running server (`serve --http`).
    Release(report::ReleaseOpt),
    /// Read the audit log: issue, revoke, grant, deny, release, expire, force-release, revoke-end.
    Log(report::LogOpt),
    /// Usage per license over a window (30 days by default), from the audit log: peak seats,
    /// hours in use and at full, seat-hours, grants and denials by reason.
    Report(usage::ReportOpt),
    /// Take a seat, give it back, and exit: a license check for scripts.
    Verify(user::VerifyOpt),
    /// Hold a seat while PROGRAM runs; exit with PROGRAM's status.
    Run(user::RunOpt),
    /// Store the serial (and the keys derived from it) so later commands need no --serial.
    Activate(user::ActivateOpt),
    /// Measure heartbeat throughput, ACK latency and server CPU with many simulated instances.
    Bench(bench::BenchOpt),
    /// Internal: how `run --on-loss kill` starts PROGRAM (tether.rs).
    #[command(name = "__tether", hide = true)]
    Tether(tether::TetherOpt),
    /// Write man pages or shell completions (for packagers; hidden from --help).
    #[command(subcommand, hide = true)]
    Generate(generate::GenerateCmd),
}

/// Parses `3s`, `500ms`, `2m` and the like.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 3s, 500ms, 2m)"))
}

/// Writes to stdout; a reader that went away (`| head`) is not an error worth a panic.
pub(crate) fn print_stdout(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::new(exit::IO, format!("cannot write to stdout: {e}"))),
    }
}

/// Relative to the current directory, so `user add` run from the wrong directory makes a data
/// dir no server reads; [`announce_data_dir`] says so. README: "Where the data lives".
pub(crate) fn default_data_dir() -> PathBuf {
    PathBuf::from("./lic-udp-data")
}

/// Where the Debian package's service keeps its data (README, "Run as a service").
pub(crate) const INSTALLED_DATA_DIR: &str = "/var/lib/lic-udp";

/// An admin command left on the default `./lic-udp-data`, where there is none, uses the
/// installed service's data dir instead when this user may read it: on a server host, `sudo -u
/// lic-udp lic-udp status` from any directory should find the licenses, not report that a
/// directory nobody meant does not exist. Says so on stderr, since it is not what was given.
/// `serve` never does this: a server started by hand must not take the service's data.
fn prefer_installed(dir: &mut PathBuf, default: &std::path::Path, installed: &std::path::Path) {
    if dir != default || dir.exists() || std::fs::read_dir(installed).is_err() {
        return;
    }
    eprintln!(
        "lic-udp: no {} in this directory; using the installed server's data dir {} (give --data-dir to choose)",
        dir.display(),
        installed.display()
    );
    *dir = installed.to_path_buf();
}

impl Command {
    /// The data dir of an admin command that reads or changes one; `None` for `serve` and the
    /// client commands.
    fn admin_data_dir(&mut self) -> Option<&mut PathBuf> {
        Some(match self {
            Command::User(admin::UserCmd::Add(o)) => &mut o.data_dir,
            Command::User(admin::UserCmd::List(o)) | Command::Token(admin::TokenCmd::List(o)) => {
                &mut o.data_dir
            }
            Command::User(admin::UserCmd::Passwd(o)) => &mut o.data_dir,
            Command::User(admin::UserCmd::Del(o)) => &mut o.data_dir,
            Command::Report(o) => &mut o.data_dir,
            Command::Issue(o) => &mut o.data_dir,
            Command::Token(admin::TokenCmd::Add(o) | admin::TokenCmd::Revoke(o)) => &mut o.data_dir,
            Command::Status(o) => &mut o.data_dir,
            Command::Revoke(o) => &mut o.data_dir,
            Command::Release(o) => &mut o.data_dir,
            Command::Log(o) => &mut o.data_dir,
            _ => return None,
        })
    }
}

/// Names the data dir an admin command is about to use (absolute, so a relative default is
/// visible), before any password prompt.
pub(crate) fn announce_data_dir(dir: &std::path::Path) {
    eprintln!("lic-udp: data dir {}", absolute(dir).display());
}

/// Warns when no `lic-udp serve` holds `dir`: a license issued or an account added there is one
/// no running server knows. Call after the command has opened (or created) the store.
pub(crate) fn warn_if_unserved(dir: &std::path::Path) {
    if !lic_udp::store::is_served(dir) {
        eprintln!(
            "lic-udp: warning: no running `lic-udp serve` holds {}; a server using another data dir will not \
             see this. Give the server's with --data-dir or $LIC_UDP_DATA_DIR",
            absolute(dir).display()
        );
    }
}

pub(crate) fn absolute(dir: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(dir).or_else(|_| std::path::absolute(dir)).unwrap_or_else(|_| dir.to_owned())
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => exit::USAGE,
            });
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("lic-udp: {}", f.message);
            f.code
        }
    };
    std::process::exit(code);
}

fn run(mut cli: Cli) -> Result<i32, Failure> {
    if let Some(dir) = cli.command.admin_data_dir() {
        prefer_installed(dir, &default_data_dir(), std::path::Path::new(INSTALLED_DATA_DIR));
    }
    match cli.command {
        Command::Serve(o) => admin::serve(o),
        Command::User(c) => admin::user(c),
        Command::Issue(o) => admin::issue(o),
        Command::Token(c) => admin::token(c),
        Command::Status(o) => report::status(o),
        Command::Revoke(o) => admin::revoke(o),
        Command::Release(o) => report::release(o),
        Command::Log(o) => report::log(o),
        Command::Report(o) => usage::report(o),
        Command::Verify(o) => user::verify(o),
        Command::Run(o) => user::run(o),
        Command::Activate(o) => user::activate(o),
        Command::Bench(o) => bench::bench(o),
        Command::Tether(o) => tether::tether(o),
        Command::Generate(c) => generate::generate(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_missing_default_gives_way_to_a_readable_installed_data_dir() {
        let installed = tempfile::tempdir().expect("tempdir");
        let here = tempfile::tempdir().expect("tempdir");
        let default = here.path().join("lic-udp-data");
        let mut dir = default.clone();
        prefer_installed(&mut dir, &default, installed.path());
        assert_eq!(dir, installed.path(), "no default data dir here: the installed one");
        std::fs::create_dir(&default).expect("mkdir");
        let mut dir = default.clone();
        prefer_installed(&mut dir, &default, installed.path());
        assert_eq!(dir, default, "an existing default data dir stays");
        let mut given = PathBuf::from("/srv/licenses");
        prefer_installed(&mut given, &default, installed.path());
        assert_eq!(given, PathBuf::from("/srv/licenses"), "a data dir that was given stays");
        let absent = here.path().join("absent");
        let mut dir = absent.clone();
        prefer_installed(&mut dir, &absent, &installed.path().join("absent"));
        assert_eq!(dir, absent, "no installed data dir: the default stays");
    }
}

//! `lic-udp`: one binary for the server, the admin commands and the user's commands.
//!
//! This file only parses arguments and maps outcomes to exit codes; each subcommand is a few
//! lines over the library. It is the only place that prints to the terminal or exits.

mod admin;
mod bench;
mod exit;
mod remote;
mod report;
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
    /// Manage admin accounts.
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
    /// Read the audit log: issue, revoke, grant, deny, release, expire, force-release.
    Log(report::LogOpt),
    /// Take a seat, give it back, and exit: a license check for scripts.
    Verify(user::VerifyOpt),
    /// Hold a seat while PROGRAM runs; exit with PROGRAM's status.
    Run(user::RunOpt),
    /// Store the serial (and the keys derived from it) so later commands need no --serial.
    Activate(user::ActivateOpt),
    /// Measure heartbeat throughput, ACK latency and server CPU with many simulated instances.
    Bench(bench::BenchOpt),
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

pub(crate) fn default_data_dir() -> PathBuf {
    PathBuf::from("./lic-udp-data")
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

fn run(cli: Cli) -> Result<i32, Failure> {
    match cli.command {
        Command::Serve(o) => admin::serve(o),
        Command::User(c) => admin::user(c),
        Command::Issue(o) => admin::issue(o),
        Command::Token(c) => admin::token(c),
        Command::Status(o) => report::status(o),
        Command::Revoke(o) => admin::revoke(o),
        Command::Release(o) => report::release(o),
        Command::Log(o) => report::log(o),
        Command::Verify(o) => user::verify(o),
        Command::Run(o) => user::run(o),
        Command::Activate(o) => user::activate(o),
        Command::Bench(o) => bench::bench(o),
    }
}

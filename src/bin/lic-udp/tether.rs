//! `run --on-loss kill` promises that PROGRAM does not outlive `lic-udp run`, even when `run` is
//! SIGKILLed and can clean nothing up. Only the kernel can keep that promise
//! (`PR_SET_PDEATHSIG`), and setting it in the child between fork and exec needs `pre_exec`,
//! which is unsafe, while this crate forbids unsafe code. So `run` starts PROGRAM through itself:
//! `lic-udp __tether PID -- PROGRAM ARGS` sets its own parent-death signal (a safe call in nix),
//! checks that its parent is still `PID` (the parent may have died before the prctl), and execs
//! PROGRAM. PROGRAM keeps the process id, so the signals `run` forwards reach it, and keeps the
//! death signal, which execve preserves (except for set-user-ID programs, README "run").

use std::ffi::CString;

use clap::Args;
use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::exit::{Failure, IO};

#[derive(Args)]
pub struct TetherOpt {
    /// The process whose death kills PROGRAM: `lic-udp run`.
    parent: i32,
    /// The program to run, and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM")]
    command: Vec<String>,
}

/// What `run` spawns instead of PROGRAM.
pub fn command(program: &str, args: &[String]) -> Result<tokio::process::Command, Failure> {
    let me = std::env::current_exe().map_err(|e| {
        Failure::new(IO, format!("cannot find lic-udp's own executable to start {program}: {e}"))
    })?;
    let mut c = tokio::process::Command::new(me);
    c.arg("__tether").arg(std::process::id().to_string()).arg("--").arg(program).args(args);
    Ok(c)
}

pub fn tether(o: TetherOpt) -> Result<i32, Failure> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| Failure::new(IO, format!("cannot tie the program to lic-udp run (prctl): {e}")))?;
    if nix::unistd::getppid().as_raw() != o.parent {
        // `run` died before the death signal was set: PROGRAM must not start at all.
        return Ok(128 + Signal::SIGKILL as i32);
    }
    let argv: Vec<CString> = o
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| Failure::usage("an argument of PROGRAM contains a NUL byte"))?;
    let Some(program) = argv.first() else {
        return Err(Failure::usage("no PROGRAM given"));
    };
    let Err(e) = nix::unistd::execvp(program, &argv);
    let code = if e == Errno::ENOENT { 127 } else { 126 };
    Err(Failure::new(code, format!("cannot start {}: {e}", program.to_string_lossy())))
}

//! `lic-udp generate man|completions DIR` (hidden): man pages and shell completions made from
//! the same clap definitions as `--help`, so they cannot drift from the binary they ship with.
//! The Debian package and `cargo install` users run it; nothing here is written by hand.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Subcommand};
use clap_complete::Shell;

use crate::exit::{Failure, IO};

#[derive(Subcommand)]
pub enum GenerateCmd {
    /// Man pages, section 1: lic-udp.1 and one per command (lic-udp-serve.1, …).
    Man {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
    /// Completions: lic-udp.bash (bash), _lic-udp (zsh), lic-udp.fish (fish).
    Completions {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

fn create(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::new(IO, format!("cannot create {}: {e}", dir.display())))
}

pub fn generate(c: GenerateCmd) -> Result<i32, Failure> {
    let cmd = crate::Cli::command();
    match c {
        GenerateCmd::Man { dir } => {
            create(&dir)?;
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|e| Failure::new(IO, format!("cannot write man pages to {}: {e}", dir.display())))?;
            eprintln!("man pages written to {}", crate::absolute(&dir).display());
        }
        GenerateCmd::Completions { dir } => {
            create(&dir)?;
            // Completion generators list hidden commands too; `generate` is not for users.
            let visible: Vec<clap::Command> =
                cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
            let cmd = clap::Command::new("lic-udp")
                .version(env!("CARGO_PKG_VERSION"))
                .subcommand_required(true)
                .subcommands(visible);
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let mut cmd = cmd.clone();
                let path = clap_complete::generate_to(shell, &mut cmd, "lic-udp", &dir)
                    .map_err(|e| Failure::new(IO, format!("cannot write {shell} completions: {e}")))?;
                eprintln!("{shell} completions written to {}", crate::absolute(&path).display());
            }
        }
    }
    Ok(0)
}

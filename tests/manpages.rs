//! Man pages and shell completions come from the clap definitions (`lic-udp generate`), and
//! render (README, "Install").

mod common;

use std::process::Command;

use common::*;

/// Every command a user can type has a page; the hidden `generate` has none.
const COMMANDS: &[&str] = &[
    "serve",
    "user",
    "user-add",
    "user-list",
    "user-passwd",
    "user-del",
    "issue",
    "token",
    "token-add",
    "token-revoke",
    "token-list",
    "status",
    "revoke",
    "release",
    "log",
    "report",
    "verify",
    "run",
    "activate",
    "bench",
];

#[test]
#[cfg_attr(missing_man, ignore = "needs man (apt-get install man-db)")]
fn every_command_has_a_man_page_that_renders() {
    if !tools::require(&tools::MAN, "every_command_has_a_man_page_that_renders") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let man = dir.path().join("man");
    let o = output(lic(&["generate", "man", man.to_str().expect("utf8")]));
    assert_eq!(code(&o), 0, "generate man: {}", text(&o.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(&man)
        .expect("man dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut want: Vec<String> = COMMANDS.iter().map(|c| format!("lic-udp-{c}.1")).collect();
    want.push("lic-udp.1".into());
    want.sort();
    assert_eq!(pages, want);
    for page in &pages {
        let o = Command::new("man")
            .arg("-l")
            .arg(man.join(page))
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("LC_ALL", "C.UTF-8")
            .output()
            .expect("run man");
        let rendered = text(&o.stdout);
        assert!(o.status.success(), "man -l {page}: {}", text(&o.stderr));
        assert!(text(&o.stderr).trim().is_empty(), "man -l {page} warned: {}", text(&o.stderr));
        let name = page.trim_end_matches(".1");
        assert!(rendered.contains("NAME") && rendered.contains(name), "{page}:\n{rendered}");
    }
    let serve = std::fs::read_to_string(man.join("lic-udp-serve.1")).expect("serve page");
    assert!(serve.contains("listen") && serve.contains("7301"), "the serve page documents --listen");
}

#[test]
fn completions_parse_and_know_the_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = output(lic(&["generate", "completions", dir.path().to_str().expect("utf8")]));
    assert_eq!(code(&o), 0, "generate completions: {}", text(&o.stderr));
    let bash = dir.path().join("lic-udp.bash");
    let o = Command::new("bash").arg("-n").arg(&bash).output().expect("run bash");
    assert!(o.status.success(), "bash -n: {}", text(&o.stderr));
    for (file, shell) in [("_lic-udp", "zsh"), ("lic-udp.fish", "fish")] {
        let script = std::fs::read_to_string(dir.path().join(file)).expect(file);
        assert!(script.contains("serve") && script.contains("listen"), "{file}");
        assert!(!script.contains("generate"), "{file} offers the hidden `generate`");
        // Checked by the shell itself where it is installed (CI has bash only).
        if tools::find(shell).is_some() {
            let o = Command::new(shell).arg("-n").arg(dir.path().join(file)).output().expect("run shell");
            assert!(o.status.success(), "{shell} -n {file}: {}", text(&o.stderr));
        }
    }
    let script = std::fs::read_to_string(&bash).expect("bash completion");
    assert!(!script.contains("generate"), "bash completion offers the hidden `generate`");
    for cmd in COMMANDS.iter().filter(|c| !c.contains('-')) {
        assert!(script.contains(cmd), "bash completion lacks {cmd}");
    }
}

#[test]
fn generate_into_a_file_is_an_io_error() {
    let f = tempfile::NamedTempFile::new().expect("file");
    let o = output(lic(&["generate", "man", f.path().to_str().expect("utf8")]));
    assert_eq!(code(&o), 74, "{}", text(&o.stderr));
}

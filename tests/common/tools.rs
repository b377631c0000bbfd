//! External programs some tests need (Chromium, etcd, a C compiler), and how a missing one shows.
//!
//! Two halves, because libtest offers no way to skip a test at run time: `build.rs` sets
//! `cfg(missing_chromium)` (and the like) when a tool is absent, and the test carries
//! `#[cfg_attr(missing_chromium, ignore = "needs chromium …")]`, so `cargo test` lists it as
//! `ignored, needs chromium …` and counts it in "N ignored". [`require`] is the run-time half,
//! called first thing in such a test:
//! - under CI (`CI=true`) or with the tool's `*_REQUIRED=1`, a missing tool panics: the test
//!   fails rather than passing without having run;
//! - elsewhere (the tool went away after the build, or `--include-ignored`), it writes a
//!   SKIPPED line straight to the stderr file descriptor, which libtest's output capture does
//!   not intercept (it only diverts `print!`/`eprint!`), and returns false.

use std::io::Write;

pub struct Tool {
    pub name: &'static str,
    /// All must be there: a path if it has a `/`, else a program looked up on `PATH` (as
    /// build.rs does).
    pub files: &'static [&'static str],
    pub install: &'static str,
    /// Set to 1 to make a missing tool fail the test even outside CI.
    pub required_var: &'static str,
}

pub const CHROMIUM: Tool = Tool {
    name: "chromium",
    files: &["/usr/bin/chromium", "/usr/bin/chromedriver"],
    install: "apt-get install chromium chromium-driver",
    required_var: "LIC_UDP_BROWSER_REQUIRED",
};

pub const ETCD: Tool = Tool {
    name: "etcd",
    files: &["etcd"],
    install: "apt-get install etcd-server",
    required_var: "LIC_UDP_HA_REQUIRED",
};

pub const CC: Tool = Tool {
    name: "a C compiler and pkg-config",
    files: &["cc", "pkg-config"],
    install: "apt-get install gcc libc6-dev pkg-config",
    required_var: "LIC_UDP_CC_REQUIRED",
};

pub const TSHARK: Tool = Tool {
    name: "tshark",
    files: &["tshark"],
    install: "apt-get install tshark",
    required_var: "LIC_UDP_TSHARK_REQUIRED",
};

pub const MAN: Tool = Tool {
    name: "man",
    files: &["man"],
    install: "apt-get install man-db",
    required_var: "LIC_UDP_MAN_REQUIRED",
};

pub const SYSTEMD_ANALYZE: Tool = Tool {
    name: "systemd-analyze",
    files: &["systemd-analyze"],
    install: "apt-get install systemd",
    required_var: "LIC_UDP_SYSTEMD_REQUIRED",
};

pub const PROMTOOL: Tool = Tool {
    name: "promtool",
    files: &["promtool"],
    install: "apt-get install prometheus",
    required_var: "LIC_UDP_PROMTOOL_REQUIRED",
};

/// Where `program` is, if it is there.
pub fn find(program: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

fn set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Whether `tool` is here for `test`; see the module doc for what happens when it is not.
pub fn require(tool: &Tool, test: &str) -> bool {
    let missing: Vec<&str> = tool.files.iter().copied().filter(|f| find(f).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    if set("CI") || set(tool.required_var) {
        panic!(
            "{test} needs {} but {} {} missing ({}); under CI (CI=true) or with {}=1 a missing tool fails the \
             test instead of skipping it",
            tool.name,
            missing.join(" and "),
            if missing.len() == 1 { "is" } else { "are" },
            tool.install,
            tool.required_var
        );
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {} missing ({})",
        missing.join(" and "),
        tool.install
    );
    false
}

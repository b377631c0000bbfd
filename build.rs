//! Tells the test targets which external tools this machine lacks, as `cfg(missing_TOOL)`,
//! so that a test needing one is marked `#[cfg_attr(missing_chromium, ignore = "…")]` and
//! `cargo test` reports it as *ignored*, with the reason, in its default output. A runtime
//! check alone can only return early, which libtest counts as *passed* and whose message it
//! hides unless `--nocapture` is given.
//!
//! Under CI (`CI=true`), or with a tool's own `*_REQUIRED=1` variable, no cfg is set: the test
//! runs and `tests/common/tools.rs` fails it when the tool is missing, so a CI machine that lost
//! its browser cannot pass by skipping. The check reruns when `/usr/bin` changes (a package was
//! installed or removed) or one of those variables changes.

/// (cfg name, programs that must all be there, the variable that makes the tool required). A
/// program with a `/` is a path; without, it is looked up on `PATH`. Keep in step with
/// tests/common/tools.rs.
const TOOLS: &[(&str, &[&str], &str)] = &[
    ("missing_chromium", &["/usr/bin/chromium", "/usr/bin/chromedriver"], "LIC_UDP_BROWSER_REQUIRED"),
    ("missing_etcd", &["etcd"], "LIC_UDP_HA_REQUIRED"),
    ("missing_cc", &["cc", "pkg-config"], "LIC_UDP_CC_REQUIRED"),
    ("missing_tshark", &["tshark"], "LIC_UDP_TSHARK_REQUIRED"),
    ("missing_man", &["man"], "LIC_UDP_MAN_REQUIRED"),
    ("missing_systemd_analyze", &["systemd-analyze"], "LIC_UDP_SYSTEMD_REQUIRED"),
    ("missing_promtool", &["promtool"], "LIC_UDP_PROMTOOL_REQUIRED"),
];

fn found(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).exists();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(program).is_file())
}

fn set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=/usr/bin");
    println!("cargo:rerun-if-env-changed=CI");
    let ci = set("CI");
    for (cfg, files, required) in TOOLS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo:rerun-if-env-changed={required}");
        let present = files.iter().all(|f| found(f));
        if !present && !ci && !set(required) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}

//! The monitoring examples (`contrib/monitoring/`) use only metrics the server exports, and
//! their alerts fire when they should (`promtool test rules`, where promtool is installed).

mod common;

use std::collections::BTreeSet;

use common::*;

const RULES: &str = include_str!("../contrib/monitoring/lic-udp.rules.yml");
const DASHBOARD: &str = include_str!("../contrib/monitoring/grafana-dashboard.json");
/// Where the server's metric names are written.
const EXPORTERS: [&str; 2] = [include_str!("../src/metrics.rs"), include_str!("../src/http/node.rs")];

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("lic_udp_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        // Histogram series are exported under the histogram's name.
        let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_rules_and_the_dashboard_use_only_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 6), "panels");
    for (what, text) in [("rules", RULES), ("dashboard", DASHBOARD)] {
        let names = metric_names(text);
        assert!(names.len() >= 5, "{what} uses {names:?}");
        for name in names {
            let exported = EXPORTERS
                .iter()
                .any(|src| src.contains(&format!("\"{name}")) || src.contains(&format!("# TYPE {name} ")));
            assert!(exported, "{what} uses {name}, which the server does not export");
        }
    }
}

#[test]
#[cfg_attr(missing_promtool, ignore = "needs promtool (Debian's prometheus package)")]
fn promtool_checks_the_rules_and_their_tests_pass() {
    if !tools::require(&tools::PROMTOOL, "promtool_checks_the_rules_and_their_tests_pass") {
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/monitoring");
    for args in [["check", "rules", "lic-udp.rules.yml"], ["test", "rules", "lic-udp.rules.test.yml"]] {
        let o = std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run promtool");
        assert!(o.status.success(), "promtool {args:?}: {}{}", text(&o.stdout), text(&o.stderr));
    }
}

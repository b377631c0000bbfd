//! Account upkeep through the real binary: `user list|passwd|del` and `token list`, on the data
//! dir (the etcd store runs the same commands in tests/ha_etcd.rs).

mod common;

use common::{add_user, code, issue, lic, output, run_with_stdin, text, PASSWORD};

fn d(p: &std::path::Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn accounts(dir: &std::path::Path) -> serde_json::Value {
    let o = output(lic(&["user", "list", "--json", "--data-dir", d(dir)]));
    assert_eq!(code(&o), 0, "user list: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

#[test]
fn accounts_are_listed_renamed_in_password_and_removed_with_their_licenses_reassigned() {
    let dir = common::data_dir();
    let p = dir.path();
    add_user(p, "alice"); // the first account: an admin
    add_user(p, "bob");
    issue(p, "alice", "team", None);
    issue(p, "bob", "team", None);
    let v = accounts(p);
    let who = |v: &serde_json::Value, n: &str| {
        v.as_array().and_then(|a| a.iter().find(|x| x["name"] == n).cloned())
    };
    assert_eq!(
        who(&v, "alice").map(|a| (a["admin"].clone(), a["licenses"].clone())),
        Some((true.into(), 1.into())),
        "{v}"
    );
    assert_eq!(
        who(&v, "bob").map(|a| (a["admin"].clone(), a["licenses"].clone())),
        Some((false.into(), 1.into())),
        "{v}"
    );

    let del = |user: &str, by: &str, extra: &[&str], pw: &str| {
        let mut args =
            vec!["user", "del", "--user", user, "--as", by, "--password-stdin", "--data-dir", d(p)];
        args.extend(extra);
        run_with_stdin(lic(&args), &format!("{pw}\n"))
    };
    // An owner of licenses goes only with --reassign; a non-admin cannot remove anyone.
    let o = del("bob", "alice", &[], PASSWORD);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("owns 1 license(s)") && text(&o.stderr).contains("--reassign"),
        "{}",
        text(&o.stderr)
    );
    let o = del("alice", "bob", &[], PASSWORD);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("not an admin"), "{}", text(&o.stderr));
    let o = del("bob", "alice", &["--reassign", "alice"], PASSWORD);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("1 license now owned by alice"), "{}", text(&o.stderr));
    let v = accounts(p);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(who(&v, "alice").map(|a| a["licenses"].clone()), Some(2.into()), "{v}");
    // The last admin stays.
    let o = del("alice", "alice", &["--reassign", "alice"], PASSWORD);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("last admin"), "{}", text(&o.stderr));

    // A new password: the old one stops working, the new one works.
    let o = run_with_stdin(
        lic(&["user", "passwd", "--user", "alice", "--password-stdin", "--data-dir", d(p)]),
        "wrong\nnew password 1\n",
    );
    assert_eq!(code(&o), 2, "the current password is checked: {}", text(&o.stderr));
    let o = run_with_stdin(
        lic(&["user", "passwd", "--user", "alice", "--password-stdin", "--data-dir", d(p)]),
        &format!("{PASSWORD}\nnew password 1\n"),
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let issue_with = |pw: &str| {
        run_with_stdin(
            lic(&["issue", "--user", "alice", "--type", "team", "--password-stdin", "--data-dir", d(p)]),
            &format!("{pw}\n"),
        )
    };
    assert_eq!(code(&issue_with(PASSWORD)), 2, "the old password no longer works");
    assert_eq!(code(&issue_with("new password 1")), 0, "the new one does");

    let o = run_with_stdin(
        lic(&["token", "add", "--user", "alice", "--password-stdin", "--data-dir", d(p)]),
        "new password 1\n",
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let token = text(&o.stdout).trim().to_owned();
    let o = output(lic(&["token", "list", "--json", "--data-dir", d(p)]));
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(t.as_array().map(Vec::len), Some(1), "{t}");
    assert_eq!(t[0]["user"], "alice", "{t}");
    assert!(!text(&o.stdout).contains(&token), "the token itself is never shown again");

    // Each change is in the audit log, with who made it.
    let o = output(lic(&["log", "--csv", "--data-dir", d(p)]));
    let log = text(&o.stdout);
    assert!(
        log.lines().any(|l| l.contains("user-del") && l.contains("alice") && l.contains("account bob")),
        "{log}"
    );
    assert!(log.lines().any(|l| l.contains("passwd") && l.contains("account alice")), "{log}");
}

/// New passwords have a floor; a refused one changes nothing.
#[test]
fn a_new_password_shorter_than_eight_characters_is_refused() {
    let dir = common::data_dir();
    let p = dir.path();
    add_user(p, "alice");
    let o = run_with_stdin(
        lic(&["user", "add", "--user", "bob", "--password-stdin", "--data-dir", d(p)]),
        "seven77\n",
    );
    assert_eq!(code(&o), 64, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("at least 8 characters"), "{}", text(&o.stderr));
    assert_eq!(accounts(p).as_array().map(Vec::len), Some(1), "bob was not added");
    // Eight characters, counted as characters, not bytes: "pässwörd" is 10 bytes.
    let o = run_with_stdin(
        lic(&["user", "add", "--user", "bob", "--password-stdin", "--data-dir", d(p)]),
        "pässwörd\n",
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = run_with_stdin(
        lic(&["user", "passwd", "--user", "alice", "--password-stdin", "--data-dir", d(p)]),
        &format!("{PASSWORD}\nshort\n"),
    );
    assert_eq!(code(&o), 64, "{}", text(&o.stderr));
    // The old password still works.
    let o = run_with_stdin(
        lic(&["token", "add", "--user", "alice", "--password-stdin", "--data-dir", d(p)]),
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
}

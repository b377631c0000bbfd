//! The admin's HTTP side against the real binary (`lic-udp serve --http 127.0.0.1:0`): every
//! API route with and without the right credentials, force-release of a real holder, the CLI's
//! live status/release/log, the sign-in page's cookie, CSRF and throttle, and `/metrics` as
//! Prometheus text.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A server with the dashboard on, and what its endpoint file says.
struct Dash {
    srv: ServerProc,
    url: String,
    local_token: String,
}

fn start(dir: &Path) -> Dash {
    let srv = ServerProc::start(dir, &["--http", "127.0.0.1:0", "--lease-ttl", "3s", "--heartbeat", "500ms"]);
    let ep: Value =
        serde_json::from_slice(&std::fs::read(dir.join("http-endpoint.json")).expect("endpoint file"))
            .expect("endpoint json");
    let url = ep["url"].as_str().expect("url").to_owned();
    let local_token = ep["token"].as_str().expect("token").to_owned();
    Dash { srv, url, local_token }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).redirects(0).build()
}

/// (status, JSON body) of an API call; `token` None sends no credentials.
fn api(d: &Dash, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = agent().request(method, &format!("{}{path}", d.url));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn token(dir: &Path, user: &str) -> String {
    let d = dir.to_str().expect("utf8");
    let o =
        run_with_stdin(lic(&["token", "add", "--user", user, "--password-stdin", "--data-dir", d]), PASSWORD);
    assert_eq!(code(&o), 0, "token add: {}", text(&o.stderr));
    text(&o.stdout).trim().to_owned()
}

fn add_plain_user(dir: &Path, user: &str) {
    add_user(dir, user);
}

/// `lic-udp run` holding a seat until killed.
fn holder(d: &Dash, serial: &str) -> Child {
    let mut c = lic(&["run", "--serial", serial, "--server", &d.srv.server_arg(), "--", "sleep", "60"]);
    // The user `run` says holds the seat (proto-spec.md §2, PROOF_ID).
    c.env("USER", "tester");
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    c.spawn().expect("spawn run")
}

fn license(status: &Value, id: i64) -> Option<&Value> {
    status["licenses"].as_array().expect("licenses").iter().find(|l| l["id"] == id)
}

fn leases_of(status: &Value, id: i64) -> Vec<String> {
    license(status, id)
        .map(|l| {
            l["holders"]
                .as_array()
                .expect("holders")
                .iter()
                .map(|h| h["lease"].as_str().expect("lease").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_api_route_refuses_without_credentials() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = start(dir.path());
    let routes = [
        ("GET", "/api/whoami", None),
        ("GET", "/api/status", None),
        ("GET", "/api/log", None),
        ("POST", "/api/licenses", Some(json!({"type": "team"}))),
        ("POST", "/api/licenses/1/revoke", Some(json!({}))),
        ("POST", "/api/leases/00000000000000aa/release", Some(json!({}))),
    ];
    for (m, path, body) in routes {
        for t in [None, Some("lu_0000"), Some("not-a-token")] {
            let (status, v) = api(&d, m, path, t, body.clone());
            assert_eq!(status, 401, "{m} {path} with {t:?}: {v}");
            assert!(v["error"].as_str().is_some_and(|e| e.contains("token")), "{v}");
        }
    }
    // Unknown routes are 404 with a pointer to the docs, not a panic or an empty body; a wrong
    // method is 405, and a body that is not the JSON asked for is 400: always {"error": ...}.
    let (status, v) = api(&d, "GET", "/api/nope", Some(&d.local_token), None);
    assert_eq!(status, 404, "{v}");
    let (status, v) = api(&d, "DELETE", "/api/licenses", Some(&d.local_token), None);
    assert_eq!(status, 405, "{v}");
    assert!(v["error"].is_string(), "{v}");
    add_user(dir.path(), "bob");
    let bob = token(dir.path(), "bob");
    for (ctype, body) in [
        ("application/json", "garbage"),
        ("application/json", r#"{"seats": -1}"#),
        ("text/plain", r#"{"type": "team"}"#),
    ] {
        let r = agent()
            .post(&format!("{}/api/licenses", d.url))
            .set("Authorization", &format!("Bearer {bob}"))
            .set("Content-Type", ctype)
            .send_string(body);
        let Err(ureq::Error::Status(status, r)) = r else { panic!("{body} was accepted") };
        let v: Value = r.into_json().expect("a JSON error");
        assert_eq!(status, 400, "{ctype} {body}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| e.contains("JSON object")), "{v}");
    }
    for lease in ["59e1187e", "0000000000000000", "00000000000000zz"] {
        let (status, v) =
            api(&d, "POST", &format!("/api/leases/{lease}/release"), Some(&bob), Some(json!({})));
        assert_eq!(status, 400, "{lease}: {v}");
    }
    // And no licenses were made by any of it.
    let (_, st) = api(&d, "GET", "/api/status", Some(&d.local_token), None);
    assert_eq!(st["licenses"].as_array().expect("licenses").len(), 0);
}

#[test]
fn accounts_see_and_change_only_what_they_may() {
    let dir = data_dir();
    add_user(dir.path(), "alice"); // first: admin
    add_plain_user(dir.path(), "bob");
    add_plain_user(dir.path(), "carol");
    let d = start(dir.path());
    let (alice, bob, carol) =
        (token(dir.path(), "alice"), token(dir.path(), "bob"), token(dir.path(), "carol"));

    let (s, who) = api(&d, "GET", "/api/whoami", Some(&bob), None);
    assert_eq!((s, who), (200, json!({"user": "bob", "admin": false})));
    let (_, who) = api(&d, "GET", "/api/whoami", Some(&alice), None);
    assert_eq!(who["admin"], true);

    // Issue through the API: the serial comes back once, and the license is the caller's.
    let (s, issued) = api(&d, "POST", "/api/licenses", Some(&bob), Some(json!({"type": "team", "seats": 2})));
    assert_eq!(s, 200, "{issued}");
    let bob_lic = issued["id"].as_i64().expect("id");
    let serial = issued["serial"].as_str().expect("serial");
    assert!(serial.len() == 10 && serial.bytes().all(|b| b.is_ascii_digit()), "{serial}");
    assert_eq!(issued["seats"], 2);
    let (s, issued) = api(&d, "POST", "/api/licenses", Some(&alice), Some(json!({"type": "trial"})));
    assert_eq!(s, 200, "{issued}");
    let alice_lic = issued["id"].as_i64().expect("id");
    // Bad requests say what is wrong.
    let (s, v) = api(&d, "POST", "/api/licenses", Some(&bob), Some(json!({"type": "platinum"})));
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().expect("error").contains("known types"), "{v}");
    let (s, v) = api(&d, "POST", "/api/licenses", Some(&bob), Some(json!({"type": "team", "seats": 0})));
    assert_eq!(s, 400, "{v}");
    // The local token administers, but owns nothing.
    let (s, _) = api(&d, "POST", "/api/licenses", Some(&d.local_token), Some(json!({"type": "team"})));
    assert_eq!(s, 403);

    // Visibility: bob sees his, carol nothing, alice and the local token both.
    let ids = |t: &str| -> Vec<i64> {
        let (s, st) = api(&d, "GET", "/api/status", Some(t), None);
        assert_eq!(s, 200);
        assert_eq!(st["source"], "live");
        st["licenses"].as_array().expect("licenses").iter().map(|l| l["id"].as_i64().expect("id")).collect()
    };
    assert_eq!(ids(&bob), vec![bob_lic]);
    assert_eq!(ids(&carol), Vec::<i64>::new());
    assert_eq!(ids(&alice), vec![bob_lic, alice_lic]);
    assert_eq!(ids(&d.local_token), vec![bob_lic, alice_lic]);

    // Revoke: another account's license looks like no license at all.
    let (s, _) = api(&d, "POST", &format!("/api/licenses/{alice_lic}/revoke"), Some(&bob), Some(json!({})));
    assert_eq!(s, 404);
    let (s, _) = api(&d, "POST", "/api/licenses/999/revoke", Some(&bob), Some(json!({})));
    assert_eq!(s, 404);
    let (s, _) = api(&d, "POST", &format!("/api/licenses/{bob_lic}/revoke"), Some(&carol), Some(json!({})));
    assert_eq!(s, 404);
    // The admin may revoke bob's; a second revoke is a conflict.
    let (s, v) = api(&d, "POST", &format!("/api/licenses/{bob_lic}/revoke"), Some(&alice), Some(json!({})));
    assert_eq!(s, 200, "{v}");
    let (s, _) = api(&d, "POST", &format!("/api/licenses/{bob_lic}/revoke"), Some(&bob), Some(json!({})));
    assert_eq!(s, 409);
    let (_, st) = api(&d, "GET", "/api/status", Some(&bob), None);
    assert_eq!(license(&st, bob_lic).expect("bob's")["state"], "revoked");

    // Log: bob reads his license's events only; the admin reads all, and filters work.
    let (s, log) = api(&d, "GET", "/api/log", Some(&bob), None);
    assert_eq!(s, 200);
    let log = log.as_array().expect("entries").clone();
    assert!(log.iter().all(|e| e["license"] == bob_lic), "{log:?}");
    let events: Vec<&str> = log.iter().map(|e| e["event"].as_str().expect("event")).collect();
    assert_eq!(events, ["issue", "revoke"]);
    assert_eq!(log[1]["actor"], "alice");
    let (_, all) = api(&d, "GET", "/api/log", Some(&alice), None);
    assert_eq!(all.as_array().expect("entries").len(), 3);
    let (_, one) = api(&d, "GET", &format!("/api/log?license={alice_lic}"), Some(&alice), None);
    assert_eq!(one.as_array().expect("entries").len(), 1);
    let (s, _) = api(&d, "GET", "/api/log?since=yesterday", Some(&alice), None);
    assert_eq!(s, 400);

    // Withdrawn tokens stop working at once, on the running server; others' keep working.
    let dd = dir.path().to_str().expect("utf8");
    let o = run_with_stdin(
        lic(&["token", "revoke", "--user", "carol", "--password-stdin", "--data-dir", dd]),
        PASSWORD,
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("1 API token of carol withdrawn"), "{}", text(&o.stderr));
    assert_eq!(api(&d, "GET", "/api/whoami", Some(&carol), None).0, 401);
    assert_eq!(api(&d, "GET", "/api/whoami", Some(&bob), None).0, 200);
}

#[test]
fn force_release_frees_the_seat_and_the_holder_comes_back() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    add_plain_user(dir.path(), "bob");
    let d = start(dir.path());
    let bob = token(dir.path(), "bob");
    let (_, issued) = api(&d, "POST", "/api/licenses", Some(&bob), Some(json!({"type": "trial"})));
    let lic = issued["id"].as_i64().expect("id");
    let serial = issued["serial"].as_str().expect("serial").to_owned();
    let mut run = holder(&d, &serial);
    let mut first = Vec::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            first = leases_of(&api(&d, "GET", "/api/status", Some(&bob), None).1, lic);
            first.len() == 1
        }),
        "the holder never showed up"
    );
    let lease = first[0].clone();
    let (_, st) = api(&d, "GET", "/api/status", Some(&bob), None);
    let h = &license(&st, lic).expect("license")["holders"][0];
    assert!(
        h["last_heartbeat"].is_string() && h["expires_in_ms"].is_u64(),
        "live holders carry heartbeat times: {h}"
    );

    // Bad lease ids are usage errors; someone else's lease does not exist for carol.
    add_plain_user(dir.path(), "carol");
    let carol = token(dir.path(), "carol");
    let (s, _) = api(&d, "POST", "/api/leases/xyz/release", Some(&bob), Some(json!({})));
    assert_eq!(s, 400);
    let (s, _) = api(&d, "POST", &format!("/api/leases/{lease}/release"), Some(&carol), Some(json!({})));
    assert_eq!(s, 404);
    assert_eq!(leases_of(&api(&d, "GET", "/api/status", Some(&bob), None).1, lic), vec![lease.clone()]);

    let (s, v) = api(&d, "POST", &format!("/api/leases/{lease}/release"), Some(&bob), Some(json!({})));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["lease"], lease.as_str());
    assert_eq!(v["license"], lic);
    // Released at once: the old lease is gone from the live table.
    let now = leases_of(&api(&d, "GET", "/api/status", Some(&bob), None).1, lic);
    assert!(!now.contains(&lease), "{now:?}");
    let (s, _) = api(&d, "POST", &format!("/api/leases/{lease}/release"), Some(&bob), Some(json!({})));
    assert_eq!(s, 404, "a lease is released once");
    // The holder is alive, so its next heartbeat is refused and it takes the free seat again.
    let mut again = Vec::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            again = leases_of(&api(&d, "GET", "/api/status", Some(&bob), None).1, lic);
            again.len() == 1 && again[0] != lease
        }),
        "the holder did not re-acquire: {again:?}"
    );
    assert!(
        run.try_wait().expect("try_wait").is_none(),
        "lic-udp run must keep running through a force-release"
    );
    // The audit log names who did it; the commit lags by at most a housekeeping tick (bound
    // generous for a loaded machine).
    assert!(wait_for(Duration::from_secs(15), || {
        let (_, log) = api(&d, "GET", &format!("/api/log?license={lic}"), Some(&bob), None);
        log.as_array()
            .expect("entries")
            .iter()
            .any(|e| e["event"] == "force-release" && e["lease"] == lease.as_str() && e["actor"] == "bob")
    }));
    let _ = run.kill();
    let _ = run.wait();
}

#[test]
fn cli_status_release_and_log_use_the_live_server() {
    let dir = data_dir();
    let d_s = dir.path().to_str().expect("utf8").to_owned();
    add_user(dir.path(), "alice");
    let d = start(dir.path());
    // Issued by the CLI while the dashboard runs: the server's two store connections must not
    // lose SQLite's locks, or this process deletes the server's live WAL on exit and the grant
    // below never reaches the file `lic-udp log` reads.
    let serial = issue(dir.path(), "alice", "trial", None);
    let mut run = holder(&d, &serial);
    assert!(wait_for(Duration::from_secs(20), || in_use(dir.path(), 1) == 1));
    let st = status_json(dir.path());
    assert_eq!(st["source"], "live");
    let lease = leases_of(&st, 1)[0].clone();
    let o = output(lic(&["status", "--data-dir", &d_s]));
    assert!(text(&o.stdout).contains(&format!("lease {lease}")), "{}", text(&o.stdout));
    assert!(!text(&o.stdout).contains(&serial), "status never shows a serial");
    // Who holds it, as `run` said: the user, this host, the program.
    let h = &license(&st, 1).expect("license 1")["holders"][0];
    assert_eq!((h["user"].as_str(), h["program"].as_str()), (Some("tester"), Some("sleep")), "{h}");
    let host = h["host"].as_str().unwrap_or_default().to_owned();
    assert!(text(&o.stdout).contains(&format!("holder tester@{host} (sleep)  ")), "{}", text(&o.stdout));

    // The one seat is taken: a second program is refused, and the refusal is audited.
    let o = output(lic(&["verify", "--serial", &serial, "--server", &d.srv.server_arg()]));
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));

    let o = output(lic(&["release", "--lease", "zz", "--data-dir", &d_s]));
    assert_eq!(code(&o), 64, "{}", text(&o.stderr));
    let o = output(lic(&["release", "--lease", "00000000000000ff", "--data-dir", &d_s]));
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("no live lease"), "{}", text(&o.stderr));
    let o = output(lic(&["release", "--lease", &lease, "--data-dir", &d_s]));
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(!leases_of(&status_json(dir.path()), 1).contains(&lease));

    let _ = run.kill();
    let _ = run.wait();
    let mut log = String::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            log = text(&output(lic(&["log", "--data-dir", &d_s, "--csv"])).stdout);
            // Denials reach the log within a second (they are batched).
            log.contains(",force-release,") && log.contains(",deny,")
        }),
        "{log}"
    );
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "seq,time,event,license,lease,instance,address,actor,detail,holder");
    assert!(lines.iter().any(|l| l.contains(",issue,1,") && l.contains(",alice,")), "{log}");
    // `run` says who holds the seat: this user on this host, running `sleep`.
    assert!(
        lines.iter().any(|l| l.contains(&format!(",grant,1,{lease},")) && l.ends_with(" (sleep)")),
        "{log}"
    );
    assert!(lines.iter().any(|l| l.contains(",deny,1,") && l.ends_with(",full,")), "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!(",force-release,1,{lease},")) && l.contains(",local-admin,")),
        "{log}"
    );
    let o = output(lic(&["log", "--data-dir", &d_s, "--license", "2"]));
    assert_eq!(text(&o.stdout), "");
    let o = output(lic(&["log", "--data-dir", &d_s, "--since", "tomorrow"]));
    assert_eq!(code(&o), 64);

    // With the server gone, status falls back to the data dir and says so; release cannot.
    let mut srv = d.srv;
    srv.stop();
    assert!(!dir.path().join("http-endpoint.json").exists(), "the endpoint file goes with the server");
    let st = status_json(dir.path());
    assert_eq!(st["source"], "store");
    let o = output(lic(&["release", "--lease", &lease, "--data-dir", &d_s]));
    assert_eq!(code(&o), 3, "{}", text(&o.stderr));
}

/// `Set-Cookie` values of a response.
fn set_cookies(r: &ureq::Response) -> Vec<String> {
    r.all("set-cookie").into_iter().map(str::to_owned).collect()
}

fn form_post(d: &Dash, path: &str, cookie: &str, form: &[(&str, &str)]) -> ureq::Response {
    match agent().post(&format!("{}{path}", d.url)).set("Cookie", cookie).send_form(form) {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {path}: {e}"),
    }
}

fn field<'a>(html: &'a str, name: &str) -> &'a str {
    let at = html.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    &rest[..rest.find('"').expect("end quote")]
}

#[test]
fn sign_in_sets_a_strict_cookie_checks_csrf_and_throttles() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = start(dir.path());
    let get_login = || {
        let r = agent().get(&format!("{}/login", d.url)).call().expect("login page");
        let cookie =
            set_cookies(&r).into_iter().find(|c| c.starts_with("lu_login_csrf=")).expect("csrf cookie");
        let html = r.into_string().expect("html");
        let csrf = field(&html, "csrf").to_owned();
        (cookie.split(';').next().expect("pair").to_owned(), csrf)
    };
    // Pages need a session: reads and posts alike go to sign-in, and change nothing.
    for path in ["/", "/monitor", "/issue"] {
        let r = agent().get(&format!("{}{path}", d.url)).call().expect("page");
        assert_eq!((r.status(), r.header("location")), (303, Some("/login")), "GET {path}");
    }
    let r = agent().get(&format!("{}/monitor/table", d.url)).call();
    assert!(
        matches!(r, Err(ureq::Error::Status(401, _))),
        "the table fragment says 401 so the page script can redirect"
    );
    for path in ["/issue", "/licenses/1/revoke", "/leases/00000000000000aa/release"] {
        let r = form_post(&d, path, "", &[("type", "team"), ("csrf", "x")]);
        assert_eq!((r.status(), r.header("location")), (303, Some("/login")), "POST {path}");
    }
    let (_, st) = api(&d, "GET", "/api/status", Some(&d.local_token), None);
    assert_eq!(st["licenses"].as_array().expect("licenses").len(), 0);

    // No CSRF token, a wrong one: refused before the password is looked at.
    let (cookie, csrf) = get_login();
    let r = form_post(&d, "/login", "", &[("user", "alice"), ("password", PASSWORD), ("csrf", &csrf)]);
    assert_eq!(r.status(), 403);
    let r = form_post(&d, "/login", &cookie, &[("user", "alice"), ("password", PASSWORD), ("csrf", "x")]);
    assert_eq!(r.status(), 403);

    // The right password: a session cookie that scripts cannot read and other sites cannot send.
    let r = form_post(&d, "/login", &cookie, &[("user", "alice"), ("password", PASSWORD), ("csrf", &csrf)]);
    assert_eq!((r.status(), r.header("location")), (303, Some("/monitor")));
    let session = set_cookies(&r).into_iter().find(|c| c.starts_with("lu_session=")).expect("session cookie");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"), "{session}");
    let session = session.split(';').next().expect("pair").to_owned();
    let r = agent().get(&format!("{}/monitor", d.url)).set("Cookie", &session).call().expect("monitor");
    assert_eq!(r.status(), 200);
    let html = r.into_string().expect("html");
    assert!(html.contains("No licenses yet"), "{html}");
    let page_csrf = field(&html, "csrf").to_owned();

    // Issue from the page: redirected to the serial, shown once, with no caching.
    let form = agent().get(&format!("{}/issue", d.url)).set("Cookie", &session).call().expect("issue page");
    let once = field(&form.into_string().expect("html"), "form").to_owned();
    let r = form_post(
        &d,
        "/issue",
        &session,
        &[("type", "team"), ("seats", "3"), ("csrf", &page_csrf), ("form", &once)],
    );
    assert_eq!(r.status(), 303);
    let to = r.header("location").expect("location").to_owned();
    let r = agent().get(&format!("{}{to}", d.url)).set("Cookie", &session).call().expect("issued page");
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let html = r.into_string().expect("html");
    assert!(html.contains("id=\"serial\""), "{html}");
    // A form without the session's token changes nothing.
    let r = form_post(&d, "/issue", &session, &[("type", "team"), ("csrf", "forged")]);
    assert_eq!(r.status(), 403);
    let r = form_post(&d, "/licenses/1/revoke", &session, &[]);
    assert_eq!(r.status(), 403);
    let (_, st) = api(&d, "GET", "/api/status", Some(&d.local_token), None);
    assert_eq!(st["licenses"].as_array().expect("licenses").len(), 1);
    assert_eq!(st["licenses"][0]["state"], "idle");
    // The session cookie alone does not pass the API's CSRF check either.
    let r = match agent()
        .post(&format!("{}/api/licenses/1/revoke", d.url))
        .set("Cookie", &session)
        .send_json(json!({}))
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(r.status(), 403);

    // Sign out ends the session.
    let r = form_post(&d, "/logout", &session, &[("csrf", &page_csrf)]);
    assert_eq!(r.status(), 303);
    let r = agent().get(&format!("{}/monitor", d.url)).set("Cookie", &session).call().expect("monitor");
    assert_eq!(r.status(), 303);

    // Wrong passwords: five free, then the account must wait (429), even with the right one.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (cookie, csrf) = get_login();
        let r =
            form_post(&d, "/login", &cookie, &[("user", "alice"), ("password", "wrong"), ("csrf", &csrf)]);
        statuses.push(r.status());
    }
    let (cookie, csrf) = get_login();
    let r = form_post(&d, "/login", &cookie, &[("user", "alice"), ("password", PASSWORD), ("csrf", &csrf)]);
    statuses.push(r.status());
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|&s| s == 429), "{statuses:?}");
    // An unknown user gets the same answer as a wrong password.
    let (cookie, csrf) = get_login();
    let r = form_post(&d, "/login", &cookie, &[("user", "mallory"), ("password", "x"), ("csrf", &csrf)]);
    assert_eq!(r.status(), 401);
    assert!(r.into_string().expect("html").contains("Wrong user name or password"));
}

#[test]
fn metrics_are_valid_prometheus_text_with_live_figures() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = start(dir.path());
    let serial = issue(dir.path(), "alice", "team", Some(2));
    let mut run = holder(&d, &serial);
    assert!(wait_for(Duration::from_secs(20), || in_use(dir.path(), 1) == 1));
    // A few heartbeats at 500 ms, and one datagram of garbage: waited for as counts on
    // /metrics, not for a fixed time.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    junk.send_to(b"garbage", d.srv.addr).expect("send");
    let scrape_text = || {
        let r = agent().get(&format!("{}/metrics", d.url)).call().expect("metrics");
        assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
        r.into_string().expect("text")
    };
    let count = |body: &str, prefix: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let mut body = String::new();
    let ready = wait_for(Duration::from_secs(15), || {
        body = scrape_text();
        count(&body, "lic_udp_heartbeats_total") >= 2.0
            && count(&body, "lic_udp_dropped_total{cause=\"malformed\"}") >= 1.0
    });
    assert!(ready, "two heartbeats and the garbage never showed:\n{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} {label:?} in\n{body}"))
    };
    assert_eq!(value("lic_udp_seats", Some(("license", "1"))), 2.0);
    assert_eq!(value("lic_udp_seats_in_use", Some(("license", "1"))), 1.0);
    assert_eq!(value("lic_udp_grants_total", Some(("kind", "new"))), 1.0);
    assert!(value("lic_udp_heartbeats_total", None) >= 2.0);
    assert!(value("lic_udp_dropped_total", Some(("cause", "malformed"))) >= 1.0);
    assert_eq!(value("lic_udp_denials_total", Some(("reason", "full"))), 0.0);
    let hist =
        scrape.samples.iter().find(|s| s.metric == "lic_udp_heartbeat_handling_seconds").expect("histogram");
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).expect("+Inf bucket");
            assert!(inf.count >= 2.0, "{buckets:?}");
        }
        v => panic!("not a histogram: {v:?}"),
    }
    let _ = run.kill();
    let _ = run.wait();
}

#[test]
fn logs_are_json_lines_on_request_and_never_show_a_serial() {
    use std::io::BufRead;
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = dir.path().to_str().expect("utf8");
    let mut cmd = lic(&["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir", d]);
    cmd.env("LIC_UDP_LOG_FORMAT", "json").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn serve");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("serving on udp://")) {
        seen.push(lines.next().expect("a log line").expect("utf8"));
    }
    let ep: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("http-endpoint.json")).expect("endpoint"))
            .expect("json");
    let alice = token(dir.path(), "alice");
    let issued: Value = agent()
        .post(&format!("{}/api/licenses", ep["url"].as_str().expect("url")))
        .set("Authorization", &format!("Bearer {alice}"))
        .send_json(json!({"type": "team"}))
        .expect("issue")
        .into_json()
        .expect("json");
    let serial = issued["serial"].as_str().expect("serial").to_owned();
    loop {
        let l = lines.next().expect("a log line").expect("utf8");
        let done = l.contains("license issued");
        seen.push(l);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for l in &seen {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{l}");
        assert!(!l.contains(&serial), "a log line shows the serial: {l}");
        assert!(!l.contains(&alice), "a log line shows a token: {l}");
    }
    let issued_line: Value = serde_json::from_str(seen.last().expect("line")).expect("json");
    assert_eq!(issued_line["fields"]["user"], "alice");
    assert_eq!(issued_line["fields"]["license"], 1);
}

// ---- issue 11: sessions, forms and the audit API.

/// Signs `user` in through the form; returns the session cookie pair and the pages' CSRF token.
fn sign_in(d: &Dash, user: &str) -> (String, String) {
    let r = agent().get(&format!("{}/login", d.url)).call().expect("login page");
    let cookie = set_cookies(&r).into_iter().find(|c| c.starts_with("lu_login_csrf=")).expect("csrf cookie");
    let cookie = cookie.split(';').next().expect("pair").to_owned();
    let html = r.into_string().expect("html");
    let csrf = field(&html, "csrf").to_owned();
    let r = form_post(d, "/login", &cookie, &[("user", user), ("password", PASSWORD), ("csrf", &csrf)]);
    assert_eq!(r.status(), 303, "sign-in of {user}");
    let session = set_cookies(&r).into_iter().find(|c| c.starts_with("lu_session=")).expect("session cookie");
    let session = session.split(';').next().expect("pair").to_owned();
    let html = page_get(d, "/monitor", &session).1;
    (session.clone(), field(&html, "csrf").to_owned())
}

/// (status, body) of a page GET with a cookie, redirects not followed.
fn page_get(d: &Dash, path: &str, cookie: &str) -> (u16, String) {
    let r = match agent().get(&format!("{}{path}", d.url)).set("Cookie", cookie).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    (r.status(), r.into_string().expect("body"))
}

fn whoami_by_session(d: &Dash, session: &str) -> (u16, Value) {
    let r = match agent().get(&format!("{}/api/whoami", d.url)).set("Cookie", session).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("whoami: {e}"),
    };
    (r.status(), r.into_json().unwrap_or(Value::Null))
}

#[test]
fn a_demoted_or_removed_account_loses_what_its_session_had() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    add_user(dir.path(), "bob");
    let d = start(dir.path());
    let o = run_with_stdin(
        lic(&[
            "user",
            "add",
            "--user",
            "carol",
            "--admin",
            "--password-stdin",
            "--data-dir",
            dir.path().to_str().expect("utf8"),
        ]),
        PASSWORD,
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let (carol, _) = sign_in(&d, "carol");
    let (bob, _) = sign_in(&d, "bob");
    assert_eq!(whoami_by_session(&d, &carol).1["admin"], true);
    // Changed behind the server's back, as an admin editing the database would.
    let db = rusqlite::Connection::open(dir.path().join("lic-udp.db")).expect("db");
    db.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    db.execute("UPDATE users SET admin = 0 WHERE name = 'carol'", []).expect("demote");
    db.execute("DELETE FROM users WHERE name = 'bob'", []).expect("remove");
    let (s, who) = whoami_by_session(&d, &carol);
    assert_eq!((s, &who["admin"]), (200, &json!(false)), "{who}");
    let (s, _) = whoami_by_session(&d, &bob);
    assert_eq!(s, 401, "a removed account's session ends");
    let (s, _) = page_get(&d, "/monitor", &bob);
    assert_eq!(s, 303);
}

#[test]
fn logout_without_the_csrf_token_changes_nothing() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = start(dir.path());
    let (session, csrf) = sign_in(&d, "alice");
    // As another site's form would post it: the cookie rides along, the token cannot.
    let r = form_post(&d, "/logout", &session, &[]);
    assert_eq!(r.status(), 403);
    assert!(set_cookies(&r).iter().all(|c| !c.starts_with("lu_session=")), "{:?}", set_cookies(&r));
    assert_eq!(page_get(&d, "/monitor", &session).0, 200, "still signed in");
    let r = form_post(&d, "/logout", &session, &[("csrf", &csrf)]);
    assert_eq!(r.status(), 303);
    assert_eq!(page_get(&d, "/monitor", &session).0, 303, "signed out");
}

#[test]
fn the_issue_form_redirects_after_post_and_a_resubmit_issues_nothing() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = start(dir.path());
    let (session, _) = sign_in(&d, "alice");
    let form = page_get(&d, "/issue", &session).1;
    let (csrf, once) = (field(&form, "csrf").to_owned(), field(&form, "form").to_owned());
    let fields = [("type", "team"), ("seats", "3"), ("csrf", csrf.as_str()), ("form", once.as_str())];
    let r = form_post(&d, "/issue", &session, &fields);
    assert_eq!(r.status(), 303, "redirect after POST");
    let to = r.header("location").expect("location").to_owned();
    let (s, html) = page_get(&d, &to, &session);
    assert_eq!(s, 200);
    assert!(html.contains("id=\"serial\""), "{html}");
    // A reload of the result shows no serial again, and a resubmitted form issues nothing.
    let (_, again) = page_get(&d, &to, &session);
    assert!(!again.contains("id=\"serial\""), "{again}");
    let r = form_post(&d, "/issue", &session, &fields);
    assert_ne!(r.status(), 303);
    let (_, st) = api(&d, "GET", "/api/status", Some(&d.local_token), None);
    assert_eq!(st["licenses"].as_array().expect("licenses").len(), 1, "{st}");
}

#[test]
fn unknown_pages_are_html_for_browsers_and_json_under_api() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = start(dir.path());
    let r = match agent().get(&format!("{}/nope", d.url)).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(r.status(), 404);
    assert!(r.content_type().starts_with("text/html"), "{}", r.content_type());
    let (s, v) = api(&d, "GET", "/api/nope", Some(&d.local_token), None);
    assert_eq!(s, 404);
    assert!(v["error"].is_string(), "{v}");
}

#[test]
fn a_failed_sign_in_is_logged_with_its_source_address() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let d = start(dir.path());
    let r = agent().get(&format!("{}/login", d.url)).call().expect("login page");
    let cookie = set_cookies(&r).into_iter().find(|c| c.starts_with("lu_login_csrf=")).expect("cookie");
    let cookie = cookie.split(';').next().expect("pair").to_owned();
    let csrf = field(&r.into_string().expect("html"), "csrf").to_owned();
    let r = form_post(&d, "/login", &cookie, &[("user", "alice"), ("password", "wrong"), ("csrf", &csrf)]);
    assert_eq!(r.status(), 401);
    let mut line = String::new();
    let found = wait_for(Duration::from_secs(5), || {
        while let Ok(l) = d.srv.log.try_recv() {
            if l.contains("failed dashboard sign-in") {
                line = l;
                return true;
            }
        }
        false
    });
    assert!(found, "no failed sign-in line");
    assert!(line.contains("127.0.0.1"), "{line}");
}

#[test]
fn api_log_filters_and_pages_before_it_limits() {
    let dir = data_dir();
    add_user(dir.path(), "alice");
    add_user(dir.path(), "bob");
    let d = start(dir.path());
    let (alice, bob) = (token(dir.path(), "alice"), token(dir.path(), "bob"));
    let (_, b) = api(&d, "POST", "/api/licenses", Some(&bob), Some(json!({"type": "team"})));
    let bob_lic = b["id"].as_i64().expect("id");
    for _ in 0..5 {
        let (s, _) = api(&d, "POST", "/api/licenses", Some(&alice), Some(json!({"type": "team"})));
        assert_eq!(s, 200);
    }
    // Bob's one event is older than alice's five; a page of 2 still finds it.
    let (s, log) = api(&d, "GET", "/api/log?limit=2", Some(&bob), None);
    assert_eq!(s, 200);
    let log = log.as_array().expect("entries").clone();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["license"], bob_lic);
    // Paging with after= walks every event once, in order.
    let mut seen = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let (_, page) = api(&d, "GET", &format!("/api/log?after={after}&limit=2"), Some(&alice), None);
        let page = page.as_array().expect("entries").clone();
        if page.is_empty() {
            break;
        }
        for e in &page {
            seen.push(e["seq"].as_i64().expect("seq"));
        }
        after = *seen.last().expect("seq");
    }
    let (_, all) = api(&d, "GET", "/api/log", Some(&alice), None);
    let all: Vec<i64> =
        all.as_array().expect("entries").iter().map(|e| e["seq"].as_i64().expect("seq")).collect();
    assert_eq!(all.len(), 6);
    assert_eq!(seen, all, "pages skipped or repeated events");
    // One set of field names: the CLI's CSV header is the API's keys.
    let o = output(lic(&["log", "--csv", "--data-dir", dir.path().to_str().expect("utf8")]));
    let header: Vec<String> =
        text(&o.stdout).lines().next().expect("header").split(',').map(str::to_owned).collect();
    let (_, log) = api(&d, "GET", "/api/log?limit=1", Some(&alice), None);
    let mut keys: Vec<String> = log[0].as_object().expect("object").keys().cloned().collect();
    let mut want = header.clone();
    keys.sort();
    want.sort();
    assert_eq!(keys, want);
    assert!(log[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')), "RFC 3339 like the CSV: {}", log[0]);
}

/// `/usage` draws, per license the account may see, the day's and the week's seats held against
/// the seat count, with denials marked; signed-out visitors go to the sign-in page.
#[test]
fn the_usage_page_draws_seats_held_and_denials() {
    let dir = common::data_dir();
    add_user(dir.path(), "alice");
    add_plain_user(dir.path(), "bob");
    let serial = issue(dir.path(), "alice", "team", Some(1));
    issue(dir.path(), "bob", "team", Some(1));
    let d = start(dir.path());
    let mut h = holder(&d, &serial);
    assert!(common::wait_for(Duration::from_secs(10), || common::in_use(dir.path(), 1) == 1), "held");
    let o = output(lic(&["verify", "--serial", &serial, "--server", &d.srv.server_arg()]));
    assert_eq!(code(&o), 1, "the second is refused: {}", text(&o.stderr));
    let (status, _) = page_get(&d, "/usage", "");
    assert_eq!(status, 303, "signed out: to the sign-in page");
    let (session, _) = sign_in(&d, "alice");
    // Denials reach the log a moment after they are sent.
    let drawn = common::wait_for(Duration::from_secs(10), || {
        page_get(&d, "/usage", &session).1.contains("peak 1 of 1, 1 denied")
    });
    let (status, html) = page_get(&d, "/usage", &session);
    assert!(drawn, "{html}");
    assert_eq!(status, 200);
    assert!(html.contains("<svg class=\"usage\""), "{html}");
    assert!(html.contains("class=\"denied\""), "a denial is marked: {html}");
    assert_eq!(html.matches("data-license=").count(), 2, "an admin sees both licenses: {html}");
    let (bob, _) = sign_in(&d, "bob");
    let (_, html) = page_get(&d, "/usage", &bob);
    assert_eq!(html.matches("data-license=").count(), 1, "bob sees his own only: {html}");
    assert!(html.contains("peak 0 of 1, 0 denied"), "{html}");
    let _ = h.kill();
    let _ = h.wait();
}

/// `release --holder USER[@HOST]` frees the seats a named holder has, and nobody else's.
#[test]
fn release_by_holder_frees_that_holders_seats_only() {
    let dir = data_dir();
    let d_s = dir.path().to_str().expect("utf8").to_owned();
    add_user(dir.path(), "alice");
    let d = start(dir.path());
    let serial = issue(dir.path(), "alice", "team", None);
    let mut run = holder(&d, &serial);
    assert!(wait_for(Duration::from_secs(20), || in_use(dir.path(), 1) == 1));
    let st = status_json(dir.path());
    let lease = leases_of(&st, 1)[0].clone();
    let host =
        license(&st, 1).expect("license")["holders"][0]["host"].as_str().unwrap_or_default().to_owned();
    for nobody in ["nobody", "tester@another-host"] {
        let o = output(lic(&["release", "--holder", nobody, "--data-dir", &d_s]));
        assert_eq!(code(&o), 2, "{nobody}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("no seat is held by"), "{}", text(&o.stderr));
    }
    assert_eq!(leases_of(&status_json(dir.path()), 1), std::slice::from_ref(&lease), "untouched");
    let o = output(lic(&["release", "--holder", "@x", "--data-dir", &d_s]));
    assert_eq!(code(&o), 64, "{}", text(&o.stderr));
    let o = output(lic(&["release", "--holder", &format!("tester@{host}"), "--data-dir", &d_s]));
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(&format!("1 seat of tester@{host} released")), "{}", text(&o.stderr));
    assert!(!leases_of(&status_json(dir.path()), 1).contains(&lease), "the seat was freed");
    let _ = run.kill();
    let _ = run.wait();
}

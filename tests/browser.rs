//! End to end in a real browser: Debian's headless Chromium, driven over WebDriver
//! (chromedriver + fantoccini), against the real `lic-udp serve --http`. It signs in, issues
//! a license, watches the monitor pick up a `lic-udp run` by itself, force-releases that seat
//! and sees the holder's lease drop. A screenshot of the monitor is saved as
//! `target/tmp/monitor.png`.
//!
//! Needs /usr/bin/chromium and /usr/bin/chromedriver (`apt-get install chromium
//! chromium-driver`; `.ci/run` installs them). Without them `cargo test` lists the test as
//! ignored, with the reason (`cfg(missing_chromium)` from build.rs), unless CI=true or
//! LIC_UDP_BROWSER_REQUIRED=1 (which `.ci/run` sets once the install worked): then a missing
//! browser fails the test instead of passing it silently. See tests/common/tools.rs.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

async fn start_driver() -> (Kill, Client, tempfile::TempDir) {
    let port = free_tcp_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Kill(child);
    let profile = tempfile::tempdir().expect("profile dir");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            // The machine has no network beyond loopback: no background fetches, no updates.
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,800",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot start a Chromium session through chromedriver: {e}"),
        }
    };
    (driver, client, profile)
}

/// Polls the page until `f` is true (the monitor refreshes itself every 2 s; the test never
/// reloads it).
async fn until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

async fn holder_leases(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for row in c.find_all(Locator::Css("tr.holder")).await.unwrap_or_default() {
        if let Ok(Some(l)) = row.attr("data-lease").await {
            out.push(l);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_chromium,
    ignore = "needs /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)"
)]
async fn browser_end_to_end() {
    if !tools::require(&tools::CHROMIUM, "browser_end_to_end") {
        return;
    }
    let dir = data_dir();
    add_user(dir.path(), "alice");
    let srv = ServerProc::start(
        dir.path(),
        &["--http", "127.0.0.1:0", "--lease-ttl", "3s", "--heartbeat", "500ms"],
    );
    let ep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("http-endpoint.json")).expect("endpoint"))
            .expect("json");
    let base = ep["url"].as_str().expect("url").to_owned();
    let (_driver, c, _profile) = start_driver().await;

    // Sign in.
    c.goto(&format!("{base}/monitor")).await.expect("goto");
    assert!(c.current_url().await.expect("url").path().ends_with("/login"), "signed-out users go to sign-in");
    c.find(Locator::Id("user")).await.expect("user field").send_keys("alice").await.expect("type");
    c.find(Locator::Id("password")).await.expect("password field").send_keys(PASSWORD).await.expect("type");
    c.find(Locator::Id("sign-in")).await.expect("button").click().await.expect("click");
    until("the monitor after sign-in", Duration::from_secs(10), || async {
        c.current_url().await.is_ok_and(|u| u.path() == "/monitor")
    })
    .await;

    // Issue a one-seat license and read its serial off the page.
    c.goto(&format!("{base}/issue")).await.expect("goto");
    c.find(Locator::Css("#type option[value=trial]"))
        .await
        .expect("trial option")
        .click()
        .await
        .expect("select");
    c.find(Locator::Id("issue")).await.expect("issue button").click().await.expect("click");
    // The click returns before the next page is there (issuing runs Argon2): wait for it.
    let serial = c
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Id("serial"))
        .await
        .expect("serial shown")
        .text()
        .await
        .expect("text");
    assert!(serial.len() == 10 && serial.bytes().all(|b| b.is_ascii_digit()), "serial {serial:?}");
    assert!(c.find(Locator::Id("copy")).await.is_ok(), "a copy button");

    // Watch the monitor while a real program takes the seat.
    c.goto(&format!("{base}/monitor")).await.expect("goto");
    let seats =
        c.find(Locator::Css("tr.license td.seats")).await.expect("license row").text().await.expect("text");
    assert_eq!(seats, "0 / 1");
    let mut run = lic(&["run", "--serial", &serial, "--server", &srv.server_arg(), "--", "sleep", "60"]);
    run.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut run = Kill(run.spawn().expect("spawn run"));
    until("the holder to appear on the monitor", Duration::from_secs(20), || async {
        holder_leases(&c).await.len() == 1
    })
    .await;
    let lease = holder_leases(&c).await.remove(0);
    let seats = c.find(Locator::Css("tr.license td.seats")).await.expect("row").text().await.expect("text");
    assert_eq!(seats, "1 / 1");
    let state = c.find(Locator::Css("tr.license td.state")).await.expect("row").text().await.expect("text");
    assert_eq!(state, "full");

    let png = c.screenshot().await.expect("screenshot");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitor.png");
    std::fs::write(&shot, &png).expect("save screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    eprintln!("screenshot of the monitor: {}", shot.display());

    // Force-release from the page: that lease drops. The program is alive, so it takes the
    // free seat again under a new lease, which the monitor shows too.
    let button = format!("tr.holder[data-lease=\"{lease}\"] button.release");
    c.find(Locator::Css(&button)).await.expect("release button").click().await.expect("click");
    until("the released lease to drop off the monitor", Duration::from_secs(10), || async {
        !holder_leases(&c).await.contains(&lease)
    })
    .await;
    until("the holder to come back under a new lease", Duration::from_secs(15), || async {
        let now = holder_leases(&c).await;
        now.len() == 1 && now[0] != lease
    })
    .await;
    assert!(run.0.try_wait().expect("try_wait").is_none(), "lic-udp run kept running");

    // The usage page, reached from the header, draws the license's day: a held seat, as SVG
    // the browser lays out (a chart with a real size, not just markup).
    c.find(Locator::LinkText("Usage")).await.expect("Usage link").click().await.expect("click");
    until("the usage page", Duration::from_secs(10), || async {
        c.current_url().await.is_ok_and(|u| u.path() == "/usage")
    })
    .await;
    let chart = c.find(Locator::Css("section.license-usage svg.usage")).await.expect("a usage chart");
    let (_, _, w, h) = chart.rectangle().await.expect("layout");
    assert!(w > 100.0 && h > 50.0, "the chart is laid out: {w}×{h}");
    let caption = c.find(Locator::Css("section.license-usage figcaption")).await.expect("caption");
    let caption = caption.text().await.expect("text");
    assert!(caption.starts_with("last 24 hours: peak 1 of"), "{caption}");

    let _ = c.close().await;
    drop(srv);
}

//! A real etcd cluster on loopback for the several-server tests: members on free ports,
//! temporary data dirs, SIGKILLed on drop. Needs Debian's `etcd-server` (`.ci/run` installs
//! it). Under CI (`CI=true`) or with `LIC_UDP_HA_REQUIRED=1`, a missing etcd fails the test;
//! elsewhere build.rs sets `cfg(missing_etcd)`, the tests are marked ignored with the reason
//! (`cargo test` shows it), and a run with `--include-ignored` prints SKIPPED.
#![allow(dead_code)] // each test binary uses a different part of this

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data: PathBuf,
    pub child: Option<Child>,
}

pub struct Etcd {
    pub members: Vec<Member>,
    cluster: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn etcd_bin() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join("etcd"))
        .find(|p| p.is_file())
}

/// The etcd binary, or `None` after saying SKIPPED (a panic under CI).
pub fn require_etcd(test: &str) -> Option<PathBuf> {
    if let Some(p) = etcd_bin() {
        return Some(p);
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("LIC_UDP_HA_REQUIRED").is_ok_and(|v| v == "1");
    assert!(!required, "{test}: etcd is not on PATH, and under CI it must be (apt-get install etcd-server)");
    // Straight to the file descriptor: libtest's capture only diverts eprint!.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: etcd is not on PATH (apt-get install etcd-server)"
    );
    None
}

impl Etcd {
    /// Starts `n` members and waits until the cluster takes a write.
    pub fn start(n: usize) -> Option<Self> {
        let bin = require_etcd("etcd cluster")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Self { members: Vec::new(), cluster, _dir: dir };
        for m in &mut members {
            m.child = Some(spawn(&bin, m, &etcd.cluster));
        }
        etcd.members = members;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if etcd.put_ok() {
                return Some(etcd);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the etcd cluster did not take a write within 30 s");
    }

    fn put_ok(&self) -> bool {
        self.members.iter().any(|m| {
            ureq::post(&format!("http://127.0.0.1:{}/v3/kv/put", m.client_port))
                .timeout(Duration::from_secs(2))
                .send_json(serde_json::json!({"key": "X19wcm9iZQ==", "value": "MQ=="}))
                .is_ok()
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect()
    }

    /// `etcd://…/PREFIX` for `--store`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoints().join(","))
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        let bin = etcd_bin().expect("etcd");
        let cluster = self.cluster.clone();
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {i} still runs");
        m.child = Some(spawn_existing(&bin, m, &cluster));
    }

    /// The index of the member that is leader now, as the members say.
    pub fn leader(&self) -> Option<usize> {
        for m in &self.members {
            let Ok(r) = ureq::post(&format!("http://127.0.0.1:{}/v3/maintenance/status", m.client_port))
                .timeout(Duration::from_secs(1))
                .send_json(serde_json::json!({}))
            else {
                continue;
            };
            let Ok(v) = r.into_json::<serde_json::Value>() else { continue };
            let leader = v["leader"].as_str().unwrap_or("").to_owned();
            if leader.is_empty() || leader == "0" {
                continue;
            }
            // Ask each member its own id.
            for (j, n) in self.members.iter().enumerate() {
                let Ok(r) = ureq::post(&format!("http://127.0.0.1:{}/v3/maintenance/status", n.client_port))
                    .timeout(Duration::from_secs(1))
                    .send_json(serde_json::json!({}))
                else {
                    continue;
                };
                let Ok(v) = r.into_json::<serde_json::Value>() else { continue };
                if v["header"]["member_id"].as_str() == Some(leader.as_str()) {
                    return Some(j);
                }
            }
        }
        None
    }
}

fn args(m: &Member, cluster: &str) -> Vec<String> {
    vec![
        "--name".into(),
        m.name.clone(),
        "--data-dir".into(),
        m.data.display().to_string(),
        "--listen-client-urls".into(),
        format!("http://127.0.0.1:{}", m.client_port),
        "--advertise-client-urls".into(),
        format!("http://127.0.0.1:{}", m.client_port),
        "--listen-peer-urls".into(),
        format!("http://127.0.0.1:{}", m.peer_port),
        "--initial-advertise-peer-urls".into(),
        format!("http://127.0.0.1:{}", m.peer_port),
        "--initial-cluster".into(),
        cluster.to_owned(),
        "--heartbeat-interval".into(),
        "100".into(),
        "--election-timeout".into(),
        "1000".into(),
        "--auto-compaction-retention".into(),
        "0".into(),
    ]
}

fn spawn(bin: &PathBuf, m: &Member, cluster: &str) -> Child {
    let mut a = args(m, cluster);
    a.extend(["--initial-cluster-state".into(), "new".into()]);
    Command::new(bin).args(a).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn etcd")
}

fn spawn_existing(bin: &PathBuf, m: &Member, cluster: &str) -> Child {
    Command::new(bin)
        .args(args(m, cluster))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcd")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                // SIGKILL: a member without peers takes about 8 s to obey SIGTERM.
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The first account, `alice` (an admin), through `lic-udp user add --store URL`.
pub fn add_admin(url: &str, dir: &std::path::Path) {
    use crate::common::{code, lic, run_with_stdin, text, PASSWORD};
    let d = dir.to_str().expect("utf8 path");
    let o = run_with_stdin(
        lic(&["user", "add", "--user", "alice", "--password-stdin", "--store", url, "--data-dir", d]),
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(code(&o), 0, "user add: {}", text(&o.stderr));
}

/// A `team` license of `seats` seats issued by alice through `lic-udp issue --store URL`:
/// (its id, its serial).
pub fn issue(url: &str, dir: &std::path::Path, seats: u16) -> (i64, String) {
    use crate::common::{code, lic, run_with_stdin, text, PASSWORD};
    let d = dir.to_str().expect("utf8 path");
    let seats = seats.to_string();
    let o = run_with_stdin(
        lic(&[
            "issue",
            "--user",
            "alice",
            "--type",
            "team",
            "--seats",
            &seats,
            "--password-stdin",
            "--store",
            url,
            "--data-dir",
            d,
        ]),
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(code(&o), 0, "issue: {}", text(&o.stderr));
    let id = text(&o.stderr)
        .split("license ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("license id in issue's message");
    (id, text(&o.stdout).trim().to_owned())
}

/// Keys derived once from etcd's salt, so that many clients need no Argon2 each.
pub fn keys(url: &str, dir: &std::path::Path, serial: &str) -> lic_udp::client::CachedKeys {
    let url: lic_udp::store::etcd::EtcdUrl = url.parse().expect("url");
    let site = lic_udp::config::SiteConfig::load(dir).expect("site");
    let store = lic_udp::store::etcd::EtcdStore::open(&url, site, false).expect("open etcd store");
    let s = lic_udp::Serial::parse(serial).expect("serial");
    let keys = lic_udp::proto::keys::derive_license_keys(&s, &store.server_salt(), store.kdf())
        .expect("derive keys");
    lic_udp::client::CachedKeys { serial: s, server_salt: store.server_salt(), params: store.kdf(), keys }
}

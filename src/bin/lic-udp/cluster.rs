//! The admin commands on the etcd store (`--store etcd://…`): several servers, one seat
//! count (README, "Several servers"). Each is the data-dir command's twin, over
//! [`EtcdStore`].

use std::path::Path;

use lic_udp::config::SiteConfig;
use lic_udp::server::unix_now;
use lic_udp::status::{self, Status};
use lic_udp::store::etcd::{EtcdStore, EtcdUrl};
use lic_udp::store::StoreError;

use crate::exit::{Failure, UNREACHABLE};

/// `--store` on every command that reads or writes licenses.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreOpt {
    /// Keep licenses, accounts and seats in etcd, shared by several servers, instead of the
    /// data dir: etcd://HOST:PORT[,HOST:PORT…][/PREFIX] (prefix /lic-udp by default)
    /// [env: LIC_UDP_STORE].
    #[arg(long, env = "LIC_UDP_STORE", hide_env = true, value_parser = store_url, value_name = "URL")]
    pub store: Option<EtcdUrl>,
}

/// `--store`: parses `etcd://HOST:PORT[,…][/PREFIX]`.
pub fn store_url(s: &str) -> Result<EtcdUrl, String> {
    s.parse::<EtcdUrl>().map_err(|e| e.to_string())
}

/// License types come from `lic-udp.toml` in the data dir when there is one, else the
/// built-in ones: they are read where `issue` runs, and copied into each license.
fn site(data_dir: &Path) -> Result<SiteConfig, Failure> {
    if data_dir.is_dir() {
        Ok(SiteConfig::load(data_dir)?)
    } else {
        Ok(SiteConfig::default())
    }
}

/// Opens the deployment; an etcd that does not answer is exit code 3, like a license server
/// that does not.
pub fn open(url: &EtcdUrl, data_dir: &Path, create: bool) -> Result<EtcdStore, Failure> {
    EtcdStore::open(url, site(data_dir)?, create).map_err(|e| match e {
        StoreError::Etcd(ref inner) if inner.is_unavailable() => Failure::new(UNREACHABLE, e.to_string()),
        e => e.into(),
    })
}

/// For `serve`: an etcd that does not answer yet (starting, no quorum) is waited for, with a
/// log line per try, instead of failing: nodes and etcd members start in any order. Any other
/// error (bad prefix, old etcd) ends the start.
pub fn open_waiting(url: &EtcdUrl, data_dir: &Path) -> Result<EtcdStore, Failure> {
    let mut wait = std::time::Duration::from_millis(500);
    loop {
        match open(url, data_dir, true) {
            Err(f) if f.code == UNREACHABLE => {
                tracing::warn!("{}; trying again in {} ms", f.message, wait.as_millis());
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
            r => return r,
        }
    }
}

fn unreachable(e: StoreError) -> Failure {
    match e {
        StoreError::Etcd(ref inner) if inner.is_unavailable() => Failure::new(UNREACHABLE, e.to_string()),
        e => e.into(),
    }
}

pub fn user_add(
    url: &EtcdUrl,
    data_dir: &Path,
    user: &str,
    pw: impl FnOnce() -> Result<String, Failure>,
    admin: bool,
) -> Result<i32, Failure> {
    if user == lic_udp::http::LOCAL_ACTOR {
        return Err(StoreError::ReservedUserName { name: user.to_owned() }.into());
    }
    let store = open(url, data_dir, true)?;
    // Before the password prompts: a taken name is refused without asking twice.
    match store.is_admin(user) {
        Ok(_) => return Err(StoreError::UserExists { name: user.to_owned() }.into()),
        Err(StoreError::NoSuchUser { .. }) => {}
        Err(e) => return Err(unreachable(e)),
    }
    let pw = pw()?;
    let first = store.user_count().map_err(unreachable)? == 0;
    store.add_user(user, &pw, first || admin).map_err(unreachable)?;
    eprintln!(
        "user {user} added to {url}{}",
        if first {
            " (the first account is an admin)"
        } else if admin {
            " (admin)"
        } else {
            ""
        }
    );
    Ok(0)
}

pub fn issue(
    url: &EtcdUrl,
    data_dir: &Path,
    user: &str,
    type_name: &str,
    seats: Option<u16>,
    pw: impl FnOnce() -> Result<String, Failure>,
) -> Result<i32, Failure> {
    let store = open(url, data_dir, false)?;
    let Some(ty) = store.site().get(type_name).cloned() else {
        let known: Vec<&str> = store.site().types.keys().map(String::as_str).collect();
        return Err(Failure::usage(format!(
            "unknown license type `{type_name}`; known types: {}",
            known.join(", ")
        )));
    };
    store.check_user(user, &pw()?).map_err(unreachable)?;
    let (id, serial) = store.issue(user, &ty, seats, unix_now()).map_err(unreachable)?;
    println!("{}", serial.as_str());
    let seats = seats.unwrap_or(ty.seats);
    eprintln!(
        "license {id} issued ({}, {seats} seat{}) in {url}; every node serves it within a second; write the serial \
         down now: it is shown only once",
        ty.name,
        if seats == 1 { "" } else { "s" }
    );
    Ok(0)
}

pub fn revoke(url: &EtcdUrl, data_dir: &Path, license: i64, user: &str, pw: &str) -> Result<(), Failure> {
    let store = open(url, data_dir, false)?;
    store.check_user(user, pw).map_err(unreachable)?;
    store.revoke(license, user, unix_now()).map_err(unreachable)?;
    Ok(())
}

/// Every license and every node's holders, from etcd.
pub fn status(url: &EtcdUrl, data_dir: &Path) -> Result<Status, Failure> {
    use lic_udp::store::AdminStore as _;
    let store = open(url, data_dir, false)?;
    let licenses = store.licenses().map_err(unreachable)?;
    let holders = store.holders().map_err(unreachable)?;
    Ok(status::build_shared(licenses, &holders, &[], "", unix_now(), None))
}

/// Frees a seat, whatever node holds it: the record goes, and that node answers its holder
/// STALE within a quarter second. The license's owner or an admin may.
pub fn release(
    url: &EtcdUrl,
    data_dir: &Path,
    lease: u64,
    user: Option<&str>,
    pw: impl FnOnce() -> Result<String, Failure>,
) -> Result<i32, Failure> {
    let Some(user) = user else {
        return Err(Failure::usage(
            "with --store, say who frees the seat: --user NAME (its owner or an admin)",
        ));
    };
    let store = open(url, data_dir, false)?;
    store.check_user(user, &pw()?).map_err(unreachable)?;
    let snap = store.snapshot().map_err(|e| unreachable(e.into()))?;
    let license = snap.holders.iter().find(|(_, _, rec, _)| rec.lease_id() == Some(lease)).map(|(l, ..)| *l);
    let Some(license) = license else {
        return Err(Failure::new(crate::exit::LICENSE, format!("no live lease {lease:016x} in {url}")));
    };
    if !store.may_manage(user, license).map_err(unreachable)? {
        return Err(StoreError::NotOwner { id: license, user: user.to_owned() }.into());
    }
    match store.free_seat(lease, user).map_err(|e| unreachable(e.into()))? {
        Some((license, _, rec)) => {
            eprintln!(
                "lease {lease:016x} of license {license} (holder {}, node {}) released; the holder's next heartbeat \
                 is refused, and it takes a seat again if one is free",
                rec.addr, rec.node
            );
            Ok(0)
        }
        None => Err(Failure::new(crate::exit::LICENSE, format!("no live lease {lease:016x} in {url}"))),
    }
}

/// The audit log of every node, in etcd's commit order.
pub fn log(
    url: &EtcdUrl,
    data_dir: &Path,
    q: &lic_udp::store::AuditQuery,
) -> Result<Vec<lic_udp::store::AuditEntry>, Failure> {
    let store = open(url, data_dir, false)?;
    store.audit(q).map_err(unreachable)
}

/// The node's token (see `NodeConfig::token`), kept in the data dir as `node-<ID>.token`
/// (mode 0600, made on first start). The data dir holds nothing else for a cluster node but
/// `lic-udp.toml`.
pub fn node_token(data_dir: &Path, node_id: &str) -> Result<String, Failure> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |e: std::io::Error| {
        Failure::new(crate::exit::IO, format!("cannot keep this node's token in {}: {e}", data_dir.display()))
    };
    if !data_dir.is_dir() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(io)?;
    }
    let name: String = node_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let path = data_dir.join(format!("node-{name}.token"));
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_owned();
        if t.len() == 32 {
            return Ok(t);
        }
    }
    let mut raw = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    let token = hex::encode(raw);
    let tmp = data_dir.join(format!(".node-{name}.token.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(token.as_bytes()).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(token)
}

//! The admin's commands, run on the server host against the data dir.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand};
use lic_udp::server::{unix_now, ServeOptions, Server, DEFAULT_PORT};
use lic_udp::store::Store;

use crate::exit::{Failure, IO};
use crate::{default_data_dir, duration};

#[derive(Args)]
pub struct ServeOpt {
    /// UDP address to listen on: IP:PORT, or an IP alone for the default port 7301.
    #[arg(long, value_parser = listen_addr, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    listen: SocketAddr,
    /// Where licenses, accounts and leases are kept (created on first start, mode 0700).
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Lease TTL for every license, overriding the types' (e.g. 3s, 2m).
    #[arg(long, value_parser = duration)]
    lease_ttl: Option<Duration>,
    /// Heartbeat interval for every license, overriding the types' (e.g. 500ms).
    #[arg(long, value_parser = duration)]
    heartbeat: Option<Duration>,
    /// Start even though the recorded leases cannot be read. Unreadable rows are kept aside;
    /// for one lease TTL only clients that held a seat before can take one.
    #[arg(long)]
    recover: bool,
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Register an account that can issue and revoke licenses.
    Add(UserAddOpt),
}

#[derive(Args)]
pub struct UserAddOpt {
    /// The account name: 1 to 64 characters of A-Z a-z 0-9 . _ -
    #[arg(long)]
    user: String,
    /// Read the password from the first line of standard input instead of a hidden prompt.
    #[arg(long)]
    password_stdin: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
}

#[derive(Args)]
pub struct IssueOpt {
    /// The account issuing the license (its password is asked for).
    #[arg(long)]
    user: String,
    /// License type: trial, team, site, or one defined in DATA_DIR/lic-udp.toml.
    #[arg(long = "type")]
    license_type: String,
    /// Seats, overriding the type's count.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    seats: Option<u16>,
    /// Read the password from the first line of standard input instead of a hidden prompt.
    #[arg(long)]
    password_stdin: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
}

#[derive(Args)]
pub struct StatusOpt {
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Machine-readable output (format documented in README.md).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RevokeOpt {
    /// The license id shown by `lic-udp status`.
    #[arg(long)]
    license: i64,
    /// The license's owner.
    #[arg(long)]
    user: String,
    /// Read the password from the first line of standard input instead of a hidden prompt.
    #[arg(long)]
    password_stdin: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
}

fn password(from_stdin: bool, confirm: bool) -> Result<String, Failure> {
    let pw = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::new(IO, format!("cannot read the password from stdin: {e}")))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        let no_tty = |e: std::io::Error| {
            Failure::usage(format!("cannot prompt for a password ({e}); pipe it in with --password-stdin"))
        };
        let pw = rpassword::prompt_password("Password: ").map_err(no_tty)?;
        if confirm && rpassword::prompt_password("Repeat password: ").map_err(no_tty)? != pw {
            return Err(Failure::usage("the passwords do not match"));
        }
        pw
    };
    if pw.is_empty() {
        return Err(Failure::usage("the password is empty"));
    }
    Ok(pw)
}

/// `IP:PORT`, or `IP` alone for the default port.
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| {
            format!("`{s}` is not an IP address or IP:PORT (examples: 0.0.0.0:7301, 127.0.0.1, [::]:7301)")
        })
}

pub fn serve(o: ServeOpt) -> Result<i32, Failure> {
    lic_udp::logging::init();
    if let (Some(ttl), Some(hb)) = (o.lease_ttl, o.heartbeat) {
        if hb >= ttl {
            return Err(Failure::usage(format!(
                "--heartbeat ({}) must be shorter than --lease-ttl ({})",
                humantime::format_duration(hb),
                humantime::format_duration(ttl)
            )));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(IO, format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        // Bind first: a server that cannot listen should not have created a data dir.
        let socket = tokio::net::UdpSocket::bind(o.listen)
            .await
            .map_err(|e| Failure::new(IO, format!("cannot listen on UDP {}: {e}", o.listen)))?;
        let store = Store::open(&o.data_dir)?;
        let opts = ServeOptions { ttl_override: o.lease_ttl, heartbeat_override: o.heartbeat, recover: o.recover };
        let (server, info) = Server::new(socket, store, opts).map_err(|e| Failure::new(IO, e.to_string()))?;
        let shutdown = shutdown_signal()?;
        tracing::info!(
            "lic-udp serving on udp://{} (store {}, {} licenses, {} leases restored, epoch {})",
            info.addr,
            std::fs::canonicalize(&info.data_dir).unwrap_or(info.data_dir.clone()).display(),
            info.licenses,
            info.restored_leases,
            info.epoch
        );
        if let Some(grace) = info.recovery_grace {
            tracing::warn!(
                "recovery: {} unreadable lease rows moved to leases_damaged; for {} only earlier holders get seats",
                info.damaged_leases,
                humantime::format_duration(grace)
            );
        }
        server.run(shutdown).await.map_err(|e| Failure::new(IO, e.to_string()))?;
        tracing::info!("lic-udp stopped");
        Ok(0)
    })
}

/// Installs the SIGINT and SIGTERM handlers now, before the start line is logged, so that a
/// signal sent right after start-up stops the server cleanly instead of killing it.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler = |e| Failure::new(IO, format!("cannot install signal handlers: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(handler)?;
    let mut int = signal(SignalKind::interrupt()).map_err(handler)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

pub fn user(c: UserCmd) -> Result<i32, Failure> {
    match c {
        UserCmd::Add(o) => {
            let mut store = Store::open(&o.data_dir)?;
            let pw = password(o.password_stdin, true)?;
            let first = store.user_count()? == 0;
            store.add_user(&o.user, &pw, first)?;
            eprintln!(
                "user {} added to {}{}",
                o.user,
                std::fs::canonicalize(&o.data_dir).unwrap_or(o.data_dir.clone()).display(),
                if first { " (the first account is the admin)" } else { "" }
            );
            Ok(0)
        }
    }
}

pub fn issue(o: IssueOpt) -> Result<i32, Failure> {
    // Never create a store here: a license issued into a stray data dir is one no server knows.
    let mut store = Store::open_existing(&o.data_dir)?;
    let Some(ty) = store.site().get(&o.license_type).cloned() else {
        let known: Vec<&str> = store.site().types.keys().map(String::as_str).collect();
        return Err(Failure::usage(format!(
            "unknown license type `{}`; known types: {}",
            o.license_type,
            known.join(", ")
        )));
    };
    let pw = password(o.password_stdin, false)?;
    store.check_user(&o.user, &pw)?;
    let (id, serial) = store.issue(&o.user, &ty, o.seats, unix_now())?;
    println!("{}", serial.as_str());
    let seats = o.seats.unwrap_or(ty.seats);
    eprintln!(
        "license {id} issued ({}, {seats} seat{}); write the serial down now: it is shown only once",
        ty.name,
        if seats == 1 { "" } else { "s" }
    );
    Ok(0)
}

pub fn revoke(o: RevokeOpt) -> Result<i32, Failure> {
    let mut store = Store::open_existing(&o.data_dir)?;
    let pw = password(o.password_stdin, false)?;
    store.check_user(&o.user, &pw)?;
    store.revoke(o.license, &o.user, unix_now())?;
    eprintln!("license {} revoked; its holders lose their seats at their next heartbeat", o.license);
    Ok(0)
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[derive(serde::Serialize)]
struct StatusJson {
    licenses: Vec<LicenseJson>,
}

#[derive(serde::Serialize)]
struct LicenseJson {
    id: i64,
    owner: String,
    #[serde(rename = "type")]
    license_type: String,
    seats: u16,
    in_use: usize,
    state: &'static str,
    created: String,
    expires: Option<String>,
    revoked: Option<String>,
    holders: Vec<HolderJson>,
}

#[derive(serde::Serialize)]
struct HolderJson {
    lease: String,
    address: String,
    instance: String,
    since: String,
}

pub fn status(o: StatusOpt) -> Result<i32, Failure> {
    let store = Store::open_existing(&o.data_dir)?;
    let now = unix_now();
    let mut by_license: BTreeMap<i64, Vec<HolderJson>> = BTreeMap::new();
    for l in store.leases()? {
        by_license.entry(l.license).or_default().push(HolderJson {
            lease: format!("{:016x}", l.lease_id),
            address: l.addr.to_string(),
            instance: hex::encode(l.instance_id),
            since: rfc3339(l.since_unix),
        });
    }
    let licenses: Vec<LicenseJson> = store
        .licenses()?
        .into_iter()
        .map(|l| {
            let holders = by_license.remove(&l.id).unwrap_or_default();
            let state = if l.revoked_unix.is_some() {
                "revoked"
            } else if l.expires_unix.is_some_and(|e| now >= e) {
                "expired"
            } else if holders.len() >= usize::from(l.seats) {
                "full"
            } else if holders.is_empty() {
                "idle"
            } else {
                "in use"
            };
            LicenseJson {
                id: l.id,
                owner: l.owner,
                license_type: l.type_name,
                seats: l.seats,
                in_use: holders.len(),
                state,
                created: rfc3339(l.created_unix),
                expires: l.expires_unix.map(rfc3339),
                revoked: l.revoked_unix.map(rfc3339),
                holders,
            }
        })
        .collect();
    use std::fmt::Write as _;
    let mut text = String::new();
    if o.json {
        text = serde_json::to_string_pretty(&StatusJson { licenses })
            .map_err(|e| Failure::new(IO, e.to_string()))?;
        text.push('\n');
    } else if licenses.is_empty() {
        text.push_str("no licenses yet; issue one with `lic-udp issue --user NAME --type team`\n");
    } else {
        let _ = writeln!(
            text,
            "{:<4} {:<12} {:<8} {:>7}  {:<8} EXPIRES",
            "ID", "OWNER", "TYPE", "SEATS", "STATE"
        );
        for l in &licenses {
            let seats = format!("{}/{}", l.in_use, l.seats);
            let expires = l.expires.as_deref().unwrap_or("never");
            let _ = writeln!(
                text,
                "{:<4} {:<12} {:<8} {:>7}  {:<8} {}",
                l.id, l.owner, l.license_type, seats, l.state, expires
            );
            for h in &l.holders {
                let instance = &h.instance[..12.min(h.instance.len())];
                let _ = writeln!(text, "     holder {}  instance {instance}  since {}", h.address, h.since);
            }
        }
    }
    crate::print_stdout(&text)?;
    Ok(0)
}

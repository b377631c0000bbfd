//! The admin's commands, run on the server host against the data dir.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use lic_udp::config;
use lic_udp::server::listen::DEFAULT_LISTEN;
use lic_udp::server::{unix_now, ServeOptions, Server, DEFAULT_PORT};
use lic_udp::store::{AdminStore, Store, StoreError};

use crate::exit::{Failure, IO};
use crate::{announce_data_dir, default_data_dir, duration, warn_if_unserved};

#[derive(Args)]
pub struct ServeOpt {
    /// UDP address to listen on: IP:PORT, HOST:PORT or [IPv6]:PORT; an IP or host alone for
    /// port 7301; a port alone for every interface. [::] takes IPv4 clients too (dual-stack),
    /// or falls back to 0.0.0.0 on a host without IPv6.
    #[arg(long, value_parser = listen_addr, default_value_t = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where licenses, accounts and leases are kept (created on first start, mode 0700).
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    /// Lease TTL for every license, overriding the types' (e.g. 3s, 2m).
    #[arg(long, value_parser = duration)]
    lease_ttl: Option<Duration>,
    /// Heartbeat interval for every license, overriding the types' (e.g. 500ms).
    #[arg(long, value_parser = duration)]
    heartbeat: Option<Duration>,
    /// Start even though the recorded leases cannot be read. Unreadable rows are kept aside;
    /// for one lease TTL only clients that held a seat before can take one. Over leases that
    /// read fine it changes nothing.
    #[arg(long)]
    recover: bool,
    /// Also serve the admin dashboard, JSON API and /metrics over HTTP on this address
    /// (default 127.0.0.1:7380 when given without one). Off unless given.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:7380", value_parser = http_addr)]
    http: Option<SocketAddr>,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
    /// This node's name in a cluster on the etcd store (default: the host name). Two live
    /// nodes may not share one; a node restarted under its name takes its place back at once.
    #[arg(long, value_name = "NAME")]
    node_id: Option<String>,
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Register an account that can issue and revoke licenses.
    Add(UserAddOpt),
    /// List the accounts, with how many licenses and API tokens each has.
    List(ListOpt),
    /// Set an account's password: its own (the current one is asked for), or any with --as ADMIN.
    Passwd(PasswdOpt),
    /// Remove an account and its API tokens (an admin's job: --as ADMIN).
    Del(UserDelOpt),
}

#[derive(Args)]
pub struct ListOpt {
    /// One JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
}

#[derive(Args)]
pub struct PasswdOpt {
    /// The account whose password changes.
    #[arg(long)]
    user: String,
    /// An admin who sets it instead (their password is asked for, not the account's).
    #[arg(long = "as", value_name = "ADMIN")]
    as_admin: Option<String>,
    /// Read the passwords from standard input, one a line: first the current (or the admin's),
    /// then the new one.
    #[arg(long)]
    password_stdin: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
}

#[derive(Args)]
pub struct UserDelOpt {
    /// The account to remove.
    #[arg(long)]
    user: String,
    /// The admin who removes it (their password is asked for).
    #[arg(long = "as", value_name = "ADMIN")]
    as_admin: String,
    /// Give the account's licenses to this account (required when it owns any).
    #[arg(long, value_name = "NAME")]
    reassign: Option<String>,
    /// Read the admin's password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make an API token for scripts; it acts as the account, and is shown once.
    Add(TokenOpt),
    /// Withdraw every API token of an account, at once (also for a running server).
    Revoke(TokenOpt),
    /// List the API tokens: account, creation time and a short id (the tokens are not kept).
    List(ListOpt),
}

#[derive(Args)]
pub struct TokenOpt {
    /// The account the tokens act as (its password is asked for).
    #[arg(long)]
    user: String,
    /// Read the password from the first line of standard input instead of a hidden prompt.
    #[arg(long)]
    password_stdin: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
}

#[derive(Args)]
pub struct UserAddOpt {
    /// The account name: 1 to 64 characters of A-Z a-z 0-9 . _ -
    #[arg(long)]
    user: String,
    /// Read the password from the first line of standard input instead of a hidden prompt.
    #[arg(long)]
    password_stdin: bool,
    /// Make this account an admin: it sees and may revoke every license. The first account
    /// is always an admin.
    #[arg(long)]
    admin: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
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
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
}

#[derive(Args)]
pub struct RevokeOpt {
    /// The license id shown by `lic-udp status`.
    #[arg(long)]
    license: i64,
    /// The license's owner, or an admin account (its password is asked for). Not needed
    /// with --token.
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    api: crate::remote::ApiOpt,
    /// Read the password from the first line of standard input instead of a hidden prompt.
    #[arg(long)]
    password_stdin: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
}

/// The shortest password a new account or `user passwd` accepts, in characters: NIST SP
/// 800-63B's floor for a memorized secret chosen by its user. Existing accounts keep theirs.
pub(crate) const MIN_PASSWORD_CHARS: usize = 8;

/// Reads a password. `confirm` marks a new one: asked twice at a prompt, and held to
/// [`MIN_PASSWORD_CHARS`].
pub(crate) fn password(from_stdin: bool, confirm: bool) -> Result<String, Failure> {
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
    if confirm && pw.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Failure::usage(format!(
            "the new password is too short: use at least {MIN_PASSWORD_CHARS} characters (a few words are easier to remember)"
        )));
    }
    Ok(pw)
}

/// The dashboard's address: like `--listen`, with port 7380 by default. A bare port is every
/// IPv4 interface: the dashboard is usually kept on loopback, and a TCP listener has no
/// fallback for a host without IPv6.
fn http_addr(s: &str) -> Result<SocketAddr, String> {
    let any = std::net::Ipv4Addr::UNSPECIFIED.into();
    bind_addr(s, lic_udp::http::default_listen().port(), any, "127.0.0.1:7380, localhost, 7380")
}

/// `--listen`: `IP:PORT`, `HOST:PORT`, `[IPv6]:PORT`, an IP or host alone for the default
/// port, or a bare port on every interface of both families (`[::]`, dual-stack).
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let any = DEFAULT_LISTEN.ip();
    bind_addr(s, DEFAULT_PORT, any, "[::]:7301, 0.0.0.0:7301, 127.0.0.1, [::1]:7301, localhost:7301, 7301")
}

fn bind_addr(
    s: &str,
    default_port: u16,
    any: std::net::IpAddr,
    examples: &str,
) -> Result<SocketAddr, String> {
    let bad = || format!("`{s}` is not a port, IP, IP:PORT, HOST or HOST:PORT (examples: {examples})");
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u16>().map(|p| SocketAddr::new(any, p)).map_err(|_| bad());
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (s, default_port),
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')) {
        return Err(bad());
    }
    // IPv4 first: a host name usually means "that machine's address", and most have one.
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(bad)
}

/// `--heartbeat` alone must be shorter than every license type's and license's TTL, and
/// `--lease-ttl` alone longer than every heartbeat: either would otherwise expire every lease
/// of some license, or make its clients heartbeat past their TTL.
fn check_overrides(store: &Store, ttl: Option<Duration>, hb: Option<Duration>) -> Result<(), Failure> {
    check_overrides_with(store.site(), store, ttl, hb)
}

/// [`check_overrides`] against a site file that is not (yet) the store's: a reloaded one.
pub(crate) fn check_overrides_with(
    site: &config::SiteConfig,
    store: &Store,
    ttl: Option<Duration>,
    hb: Option<Duration>,
) -> Result<(), Failure> {
    if ttl.is_some() == hb.is_some() {
        return Ok(()); // none, or both (checked against each other already)
    }
    let types = site.types.values().map(|t| (format!("license type `{}`", t.name), t.lease_ttl, t.heartbeat));
    let licenses = store.licenses()?;
    let licenses = licenses.iter().map(|l| (format!("license {}", l.id), l.ttl, l.heartbeat));
    for (name, own_ttl, own_hb) in types.chain(licenses) {
        let (hb_name, ttl_name) = match (ttl, hb) {
            (Some(_), None) => (format!("the heartbeat of {name}"), "--lease-ttl".to_owned()),
            _ => ("--heartbeat".to_owned(), format!("the lease TTL of {name}")),
        };
        config::check_timers((&hb_name, hb.unwrap_or(own_hb)), (&ttl_name, ttl.unwrap_or(own_ttl)))
            .map_err(|e| Failure::usage(format!("{e}; give both --lease-ttl and --heartbeat")))?;
    }
    Ok(())
}

pub fn serve(o: ServeOpt) -> Result<i32, Failure> {
    lic_udp::logging::init();
    // The limits the site file sets for license types hold for the overrides too, alone and
    // together (against the licenses' own timers once the store is open).
    if let Some(ttl) = o.lease_ttl {
        config::check_lease_ttl("--lease-ttl", ttl).map_err(Failure::usage)?;
    }
    if let Some(hb) = o.heartbeat {
        config::check_heartbeat("--heartbeat", hb).map_err(Failure::usage)?;
    }
    if let (Some(ttl), Some(hb)) = (o.lease_ttl, o.heartbeat) {
        config::check_timers(("--heartbeat", hb), ("--lease-ttl", ttl)).map_err(Failure::usage)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(IO, format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        // Bind first: a server that cannot listen should not have created a data dir.
        let cannot = |e: std::io::Error| Failure::new(IO, format!("cannot listen on UDP {}: {e}", o.listen));
        let bound = lic_udp::server::listen::bind_udp(o.listen).map_err(cannot)?;
        if let Some(why) = &bound.fallback {
            tracing::warn!("{why}");
        }
        bound.socket.set_nonblocking(true).map_err(cannot)?;
        let socket = tokio::net::UdpSocket::from_std(bound.socket).map_err(cannot)?;
        let http = match o.http {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| Failure::new(IO, format!("cannot listen on HTTP {addr}: {e}")))?,
            ),
            None => None,
        };
        let opts = ServeOptions { ttl_override: o.lease_ttl, heartbeat_override: o.heartbeat, recover: o.recover };
        let (server, info, http_store) = match &o.store.store {
            Some(url) => {
                if o.recover {
                    return Err(Failure::usage(
                        "--recover is for a damaged data dir; with --store etcd there is none (README, \"Several servers\")",
                    ));
                }
                let store = crate::cluster::open_waiting(url, &o.data_dir)?;
                let node = o.node_id.clone().unwrap_or_else(lic_udp::store::etcd::default_node_id);
                let token = crate::cluster::node_token(&o.data_dir, &node)?;
                let (server, info) = Server::new_cluster(socket, store, node, token, opts)
                    .map_err(|e| Failure::new(IO, e.to_string()))?;
                (server, info, None)
            }
            None => {
                let store = Store::open(&o.data_dir)?;
                check_overrides(&store, o.lease_ttl, o.heartbeat)?;
                let http_store = if http.is_some() { Some(store.another()?) } else { None };
                let (server, info) =
                    Server::new(socket, store, opts).map_err(|e| Failure::new(IO, e.to_string()))?;
                (server, info, http_store)
            }
        };
        let signal = shutdown_signal()?;
        let hup = crate::reload::install()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let shutdown = stopped(stop_rx.clone());
        let mut endpoint_file = None;
        let mut dashboard = None;
        let mut reloader = crate::reload::Reloader {
            data_dir: o.data_dir.clone(),
            store: server.local_store(),
            dashboard: None,
            ttl_override: o.lease_ttl,
            heartbeat_override: o.heartbeat,
        };
        if let Some(listener) = http {
            let addr = listener.local_addr().map_err(|e| Failure::new(IO, e.to_string()))?;
            let state = match (server.node(), http_store) {
                (Some(node), _) => lic_udp::http::Dashboard::for_node(server.core(), server.heartbeat_time(), node),
                (None, Some(store)) => {
                    lic_udp::http::Dashboard::new(server.core(), server.heartbeat_time(), Box::new(store))
                }
                (None, None) => return Err(Failure::new(IO, "no store connection for the dashboard")),
            };
            let state = Arc::new(state);
            reloader.dashboard = Some(state.clone());
            let ep = lic_udp::http::Endpoint { url: format!("http://{addr}"), token: state.local_token().to_owned() };
            endpoint_file = Some(
                lic_udp::http::write_endpoint(&o.data_dir, &ep)
                    .map_err(|e| Failure::new(IO, format!("cannot write the dashboard's endpoint file: {e}")))?,
            );
            tracing::info!("lic-udp dashboard on http://{addr} (JSON API under /api/, metrics on /metrics)");
            dashboard = Some(tokio::spawn(lic_udp::http::serve(listener, state, stopped(stop_rx.clone()))));
        }
        tracing::info!(
            "lic-udp serving on udp://{} (store {}, {} license{}, {} lease{} restored, epoch {})",
            info.addr,
            std::fs::canonicalize(&info.data_dir).unwrap_or(info.data_dir.clone()).display(),
            info.licenses,
            if info.licenses == 1 { "" } else { "s" },
            info.restored_leases,
            if info.restored_leases == 1 { "" } else { "s" },
            info.epoch
        );
        if let Some(grace) = info.recovery_grace {
            tracing::warn!(
                "recovery: {} unreadable lease rows moved to leases_damaged; for {} only earlier holders get seats",
                info.damaged_leases,
                humantime::format_duration(grace)
            );
        }
        let reloads = tokio::spawn(crate::reload::run(hup, reloader));
        crate::notify::ready();
        let served = server.run(shutdown).await;
        crate::notify::stopping();
        reloads.abort();
        if let Some(path) = endpoint_file {
            let _ = std::fs::remove_file(path);
        }
        if let Some(d) = dashboard {
            d.abort();
        }
        served.map_err(|e| Failure::new(IO, e.to_string()))?;
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

/// The store an account command works on: etcd with --store, else the data dir (which must
/// exist: an account command never creates one).
pub(crate) fn admin_store(
    data_dir: &Path,
    store: &crate::cluster::StoreOpt,
) -> Result<Box<dyn AdminStore>, Failure> {
    Ok(match &store.store {
        Some(url) => Box::new(crate::cluster::open(url, data_dir, false)?),
        None => {
            announce_data_dir(data_dir);
            Box::new(Store::open_existing(data_dir)?)
        }
    })
}

/// Checks that `admin` is an admin and knows their password.
fn check_admin(store: &dyn AdminStore, admin: &str, pw: &str) -> Result<(), Failure> {
    store.check_user(admin, pw)?;
    if !store.is_admin(admin)? {
        return Err(Failure::new(
            crate::exit::LICENSE,
            format!("`{admin}` is not an admin; only an admin may do that"),
        ));
    }
    Ok(())
}

fn user_list(o: &ListOpt) -> Result<i32, Failure> {
    let accounts = admin_store(&o.data_dir, &o.store)?.accounts()?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&accounts).map_err(|e| Failure::new(IO, e.to_string()))?);
        return Ok(0);
    }
    println!("{:<24} {:<6} {:>8} {:>7}", "USER", "ADMIN", "LICENSES", "TOKENS");
    for a in &accounts {
        println!(
            "{:<24} {:<6} {:>8} {:>7}",
            a.name,
            if a.admin { "yes" } else { "no" },
            a.licenses,
            a.tokens
        );
    }
    Ok(0)
}

fn user_passwd(o: &PasswdOpt) -> Result<i32, Failure> {
    let mut store = admin_store(&o.data_dir, &o.store)?;
    let by = o.as_admin.as_deref().unwrap_or(&o.user);
    if !o.password_stdin {
        eprintln!("{by}'s current password:");
    }
    let current = password(o.password_stdin, false)?;
    match &o.as_admin {
        Some(admin) => check_admin(store.as_ref(), admin, &current)?,
        None => store.check_user(&o.user, &current)?,
    }
    if !o.password_stdin {
        eprintln!("new password for {}:", o.user);
    }
    let new = password(o.password_stdin, true)?;
    store.set_password(&o.user, &new, by)?;
    eprintln!("password of {} changed in {}", o.user, store.describe());
    Ok(0)
}

fn user_del(o: &UserDelOpt) -> Result<i32, Failure> {
    let mut store = admin_store(&o.data_dir, &o.store)?;
    // The account must exist before the password is asked for.
    store.is_admin(&o.user)?;
    let pw = password(o.password_stdin, false)?;
    check_admin(store.as_ref(), &o.as_admin, &pw)?;
    let moved = store.remove_user(&o.user, o.reassign.as_deref(), &o.as_admin)?;
    match &o.reassign {
        Some(to) if moved > 0 => eprintln!(
            "user {} removed from {}; {moved} license{} now owned by {to}",
            o.user,
            store.describe(),
            if moved == 1 { "" } else { "s" }
        ),
        _ => eprintln!("user {} removed from {}", o.user, store.describe()),
    }
    Ok(0)
}

fn token_list(o: &ListOpt) -> Result<i32, Failure> {
    let tokens = admin_store(&o.data_dir, &o.store)?.token_list()?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&tokens).map_err(|e| Failure::new(IO, e.to_string()))?);
        return Ok(0);
    }
    println!("{:<24} {:<10} CREATED", "USER", "ID");
    for t in &tokens {
        println!("{:<24} {:<10} {}", t.user, t.id, lic_udp::status::rfc3339(t.created));
    }
    Ok(0)
}

pub fn user(c: UserCmd) -> Result<i32, Failure> {
    match c {
        UserCmd::List(o) => user_list(&o),
        UserCmd::Passwd(o) => user_passwd(&o),
        UserCmd::Del(o) => user_del(&o),
        UserCmd::Add(o) if o.store.store.is_some() => {
            let url = o.store.store.as_ref().ok_or_else(|| Failure::usage("no --store"))?;
            crate::cluster::user_add(url, &o.data_dir, &o.user, || password(o.password_stdin, true), o.admin)
        }
        UserCmd::Add(o) => {
            announce_data_dir(&o.data_dir);
            let mut store = Store::open(&o.data_dir)?;
            // Before the password prompts: a taken name is refused without asking twice.
            match store.is_admin(&o.user) {
                Ok(_) => return Err(StoreError::UserExists { name: o.user.clone() }.into()),
                Err(StoreError::NoSuchUser { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let pw = password(o.password_stdin, true)?;
            let first = store.user_count()? == 0;
            store.add_user(&o.user, &pw, first || o.admin)?;
            eprintln!(
                "user {} added to {}{}",
                o.user,
                std::fs::canonicalize(&o.data_dir).unwrap_or(o.data_dir.clone()).display(),
                if first {
                    " (the first account is an admin)"
                } else if o.admin {
                    " (admin)"
                } else {
                    ""
                }
            );
            warn_if_unserved(&o.data_dir);
            Ok(0)
        }
    }
}

pub fn issue(o: IssueOpt) -> Result<i32, Failure> {
    if let Some(url) = &o.store.store {
        let pw = || password(o.password_stdin, false);
        return crate::cluster::issue(url, &o.data_dir, &o.user, &o.license_type, o.seats, pw);
    }
    // Never create a store here: a license issued into a stray data dir is one no server knows.
    announce_data_dir(&o.data_dir);
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
    warn_if_unserved(&o.data_dir);
    Ok(0)
}

/// With a token: through the running server's API. With an account: checked against the data
/// dir and written there; the running server picks it up within a quarter second.
pub fn revoke(o: RevokeOpt) -> Result<i32, Failure> {
    match (&o.user, &o.api.token) {
        (Some(user), _) if o.store.store.is_some() => {
            let pw = password(o.password_stdin, false)?;
            let url = o.store.store.as_ref().ok_or_else(|| Failure::usage("no --store"))?;
            crate::cluster::revoke(url, &o.data_dir, o.license, user, &pw)?;
        }
        (Some(user), _) => {
            announce_data_dir(&o.data_dir);
            let mut store = Store::open_existing(&o.data_dir)?;
            let pw = password(o.password_stdin, false)?;
            store.check_user(user, &pw)?;
            store.revoke(o.license, user, unix_now())?;
            warn_if_unserved(&o.data_dir);
        }
        (None, Some(_)) => {
            let (ep, _) = crate::remote::endpoint(&o.api, &o.data_dir)?.ok_or_else(|| {
                Failure::new(
                    crate::exit::UNREACHABLE,
                    "no dashboard to send the token to: give --url, or run `lic-udp serve --http` on this host",
                )
            })?;
            crate::remote::post(&ep, &format!("/api/licenses/{}/revoke", o.license), serde_json::json!({}))?;
        }
        (None, None) => return Err(Failure::usage(
            "say who revokes: --user NAME (the owner or an admin; its password is asked for), or --token T \
                 (or $LIC_UDP_TOKEN) to go through the running server's API",
        )),
    }
    eprintln!("license {} revoked; its holders lose their seats at their next heartbeat", o.license);
    Ok(0)
}

pub fn token(c: TokenCmd) -> Result<i32, Failure> {
    // Either store: a token made with --store works on every node's dashboard.
    let login = |o: &TokenOpt| -> Result<Box<dyn AdminStore>, Failure> {
        let store = admin_store(&o.data_dir, &o.store)?;
        let pw = password(o.password_stdin, false)?;
        store.check_user(&o.user, &pw)?;
        Ok(store)
    };
    match c {
        TokenCmd::List(o) => token_list(&o),
        TokenCmd::Revoke(o) => {
            let n = login(&o)?.revoke_tokens(&o.user)?;
            eprintln!("{n} API token{} of {} withdrawn", if n == 1 { "" } else { "s" }, o.user);
            if o.store.store.is_none() {
                warn_if_unserved(&o.data_dir);
            }
            Ok(0)
        }
        TokenCmd::Add(o) => {
            let token = login(&o)?.add_token(&o.user)?;
            println!("{token}");
            eprintln!(
                "API token for {} made; it is shown only once. Send it as `Authorization: Bearer TOKEN`, \
                 or set LIC_UDP_TOKEN for `lic-udp status`, `release` and `revoke`",
                o.user
            );
            if o.store.store.is_none() {
                warn_if_unserved(&o.data_dir);
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_a_bare_port_a_host_name_and_bracketed_ipv6() {
        assert_eq!(listen_addr("7301"), Ok("[::]:7301".parse().expect("v6")));
        assert_eq!(http_addr("7380"), Ok(SocketAddr::from(([0, 0, 0, 0], 7380))));
        assert_eq!(listen_addr("0.0.0.0:7301"), Ok(SocketAddr::from(([0, 0, 0, 0], 7301))));
        assert_eq!(listen_addr("127.0.0.1:7302"), Ok(SocketAddr::from(([127, 0, 0, 1], 7302))));
        assert_eq!(listen_addr("127.0.0.1"), Ok(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))));
        assert_eq!(listen_addr("[::1]:7303"), Ok("[::1]:7303".parse().expect("v6")));
        assert_eq!(listen_addr("[::1]"), Ok(SocketAddr::new("::1".parse().expect("v6"), DEFAULT_PORT)));
        let local = listen_addr("localhost:7304").expect("localhost resolves from /etc/hosts");
        assert!(local.ip().is_loopback() && local.port() == 7304, "{local}");
        assert!(listen_addr("localhost").expect("host alone").port() == DEFAULT_PORT);
        assert!(listen_addr("host:notaport").is_err());
        assert!(listen_addr("70000").is_err());
    }
}

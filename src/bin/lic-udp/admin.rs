//! The admin's commands, run on the server host against the data dir.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// Also serve the admin dashboard, JSON API and /metrics over HTTP on this address
    /// (default 127.0.0.1:7380 when given without one). Off unless given.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:7380", value_parser = http_addr)]
    http: Option<SocketAddr>,
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Register an account that can issue and revoke licenses.
    Add(UserAddOpt),
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make an API token for scripts; it acts as the account, and is shown once.
    Add(TokenOpt),
    /// Withdraw every API token of an account, at once (also for a running server).
    Revoke(TokenOpt),
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
    data_dir: PathBuf,
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

/// The dashboard's address: `IP:PORT`, or `IP` alone for port 7380.
fn http_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, lic_udp::http::default_listen().port()))
        .map_err(|_| format!("`{s}` is not an IP address or IP:PORT (examples: 127.0.0.1:7380, 127.0.0.1)"))
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
        let http = match o.http {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| Failure::new(IO, format!("cannot listen on HTTP {addr}: {e}")))?,
            ),
            None => None,
        };
        let store = Store::open(&o.data_dir)?;
        let http_store = if http.is_some() { Some(store.another()?) } else { None };
        let opts = ServeOptions { ttl_override: o.lease_ttl, heartbeat_override: o.heartbeat, recover: o.recover };
        let (server, info) = Server::new(socket, store, opts).map_err(|e| Failure::new(IO, e.to_string()))?;
        let signal = shutdown_signal()?;
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
        if let (Some(listener), Some(http_store)) = (http, http_store) {
            let addr = listener.local_addr().map_err(|e| Failure::new(IO, e.to_string()))?;
            let state = Arc::new(lic_udp::http::Dashboard::new(
                server.core(),
                server.heartbeat_time(),
                http_store,
            ));
            let ep = lic_udp::http::Endpoint { url: format!("http://{addr}"), token: state.local_token().to_owned() };
            endpoint_file = Some(
                lic_udp::http::write_endpoint(&o.data_dir, &ep)
                    .map_err(|e| Failure::new(IO, format!("cannot write the dashboard's endpoint file: {e}")))?,
            );
            tracing::info!("lic-udp dashboard on http://{addr} (JSON API under /api/, metrics on /metrics)");
            dashboard = Some(tokio::spawn(lic_udp::http::serve(listener, state, stopped(stop_rx.clone()))));
        }
        tracing::info!(
            "lic-udp serving on udp://{} (store {}, {} license{}, {} leases restored, epoch {})",
            info.addr,
            std::fs::canonicalize(&info.data_dir).unwrap_or(info.data_dir.clone()).display(),
            info.licenses,
            if info.licenses == 1 { "" } else { "s" },
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
        let served = server.run(shutdown).await;
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

pub fn user(c: UserCmd) -> Result<i32, Failure> {
    match c {
        UserCmd::Add(o) => {
            let mut store = Store::open(&o.data_dir)?;
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

/// With a token: through the running server's API. With an account: checked against the data
/// dir and written there; the running server picks it up within a quarter second.
pub fn revoke(o: RevokeOpt) -> Result<i32, Failure> {
    match (&o.user, &o.api.token) {
        (Some(user), _) => {
            let mut store = Store::open_existing(&o.data_dir)?;
            let pw = password(o.password_stdin, false)?;
            store.check_user(user, &pw)?;
            store.revoke(o.license, user, unix_now())?;
        }
        (None, Some(_)) => {
            let ep = crate::remote::endpoint(&o.api, &o.data_dir).ok_or_else(|| {
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
    let login = |o: &TokenOpt| -> Result<Store, Failure> {
        let store = Store::open_existing(&o.data_dir)?;
        let pw = password(o.password_stdin, false)?;
        store.check_user(&o.user, &pw)?;
        Ok(store)
    };
    match c {
        TokenCmd::Revoke(o) => {
            let n = login(&o)?.revoke_tokens(&o.user)?;
            eprintln!("{n} API token{} of {} withdrawn", if n == 1 { "" } else { "s" }, o.user);
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
            Ok(0)
        }
    }
}

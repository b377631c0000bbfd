//! What the admin reads: `status` (live from the server when it answers, else the data dir),
//! `release` (through the server) and `log` (the audit log, from the data dir).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use lic_udp::server::unix_now;
use lic_udp::status::{self, Status};
use lic_udp::store::{AuditEntry, AuditQuery, Store};

use crate::default_data_dir;
use crate::exit::{Failure, IO, UNREACHABLE, USAGE};
use crate::remote::{self, ApiError, ApiOpt};

#[derive(Args)]
pub struct StatusOpt {
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    /// Machine-readable output (format documented in README.md).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiOpt,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
}

#[derive(Args)]
pub struct ReleaseOpt {
    /// The lease to free, as `lic-udp status` shows it (16 hex digits).
    #[arg(long, required_unless_present = "holder", conflicts_with = "holder")]
    lease: Option<String>,
    /// Instead of --lease: every seat held by this user (USER), or by this user on this host
    /// (USER@HOST), as the holders stated (`status` shows them).
    #[arg(long, value_name = "USER[@HOST]")]
    holder: Option<String>,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    api: ApiOpt,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
    /// With --store: the license's owner or an admin account (its password is asked for).
    #[arg(long)]
    user: Option<String>,
    /// Read the password from the first line of standard input instead of a hidden prompt.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Args)]
pub struct LogOpt {
    /// Only events at or after this time: RFC 3339 (2026-11-22T10:00:00Z), unix seconds, or
    /// a duration ago (2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Only events of this license id.
    #[arg(long)]
    license: Option<i64>,
    /// At most this many of the newest events.
    #[arg(long, default_value_t = 10_000)]
    limit: u32,
    /// CSV with a header line, for spreadsheets.
    #[arg(long)]
    csv: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
}

pub fn status(o: StatusOpt) -> Result<i32, Failure> {
    let from_etcd = match &o.store.store {
        Some(url) => Some(crate::cluster::status(url, &o.data_dir)?),
        None => None,
    };
    let endpoint = if from_etcd.is_some() { None } else { remote::endpoint(&o.api, &o.data_dir)? };
    let live = match endpoint {
        _ if from_etcd.is_some() => from_etcd,
        Some((ep, named)) => match remote::get(&ep, "/api/status") {
            Ok(v) => Some(serde_json::from_value::<Status>(v).map_err(|e| {
                Failure::new(IO, format!("the server's status is not what this lic-udp expects: {e}"))
            })?),
            // The user asked for that server; the data dir here may be another one's.
            Err(ApiError::Unreachable(m)) if named == remote::Named::ByUser => {
                return Err(Failure::new(UNREACHABLE, m))
            }
            Err(ApiError::Unreachable(m)) => {
                eprintln!("lic-udp: {m}; showing the data dir's record instead");
                None
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let st = match live {
        Some(s) => s,
        None => {
            crate::announce_data_dir(&o.data_dir);
            let store = Store::open_existing(&o.data_dir)?;
            status::build(store.licenses()?, status::Holders::Recorded(&store.leases()?), unix_now())
        }
    };
    let text = if o.json {
        let mut t = serde_json::to_string_pretty(&st).map_err(|e| Failure::new(IO, e.to_string()))?;
        t.push('\n');
        t
    } else {
        render_status(&st)
    };
    crate::print_stdout(&text)?;
    Ok(0)
}

fn render_status(st: &Status) -> String {
    let mut text = String::new();
    if st.licenses.is_empty() {
        text.push_str("no licenses yet; issue one with `lic-udp issue --user NAME --type team`\n");
        return text;
    }
    let _ =
        writeln!(text, "{:<4} {:<12} {:<8} {:>7}  {:<8} EXPIRES", "ID", "OWNER", "TYPE", "SEATS", "STATE");
    for l in &st.licenses {
        let seats = format!("{}/{}", l.in_use, l.seats);
        let expires = l.expires.as_deref().unwrap_or("never");
        let _ = writeln!(
            text,
            "{:<4} {:<12} {:<8} {:>7}  {:<8} {}",
            l.id, l.owner, l.license_type, seats, l.state, expires
        );
        for h in &l.holders {
            let instance = &h.instance[..12.min(h.instance.len())];
            // Who first, as lmstat puts it, when the client said; the address always.
            let who = h.who().map(|w| format!("{w}  ")).unwrap_or_default();
            let _ = write!(
                text,
                "     holder {who}{}  lease {}  instance {instance}  since {}",
                h.address, h.lease, h.since
            );
            if let Some(last) = &h.last_heartbeat {
                let _ = write!(text, "  last heartbeat {last}");
            }
            if let Some(node) = &h.node {
                let _ = write!(text, "  node {node}");
            }
            text.push('\n');
        }
    }
    if st.source == "store" {
        text.push_str(
            "(from the data dir: holders as last recorded; run `lic-udp serve --http` for live status)\n",
        );
    }
    text
}

/// `--holder USER[@HOST]`: does the holder match?
fn holder_matches(want: &str, user: Option<&str>, host: Option<&str>) -> bool {
    let (u, h) = match want.split_once('@') {
        Some((u, h)) => (u, Some(h)),
        None => (want, None),
    };
    user == Some(u) && h.is_none_or(|h| host == Some(h))
}

pub fn release(o: ReleaseOpt) -> Result<i32, Failure> {
    if let Some(want) = &o.holder {
        return release_holder(&o, want);
    }
    let text = o.lease.clone().unwrap_or_default();
    release_lease(&o, &text, None)
}

/// Frees every seat `want` holds: looked up in `status` (or etcd's records), then one release
/// each, so each is checked and logged as a release by lease.
fn release_holder(o: &ReleaseOpt, want: &str) -> Result<i32, Failure> {
    if want.is_empty() || want.starts_with('@') {
        return Err(Failure::usage(format!("--holder `{want}`: give USER or USER@HOST")));
    }
    let leases: Vec<String> = if let Some(url) = &o.store.store {
        let store = crate::cluster::open(url, &o.data_dir, false)?;
        let snap = store.snapshot().map_err(|e| Failure::new(UNREACHABLE, e.to_string()))?;
        snap.holders
            .iter()
            .filter(|(_, _, rec, _)| {
                let who = rec.who.as_ref();
                holder_matches(want, who.map(|w| w.user.as_str()), who.map(|w| w.host.as_str()))
            })
            .map(|(_, _, rec, _)| rec.lease_id.clone())
            .collect()
    } else {
        let (ep, _) = dashboard(o)?;
        let st: Status = serde_json::from_value(remote::get(&ep, "/api/status")?)
            .map_err(|e| Failure::new(IO, format!("unexpected /api/status answer: {e}")))?;
        st.licenses
            .iter()
            .flat_map(|l| l.holders.iter())
            .filter(|h| holder_matches(want, h.user.as_deref(), h.host.as_deref()))
            .map(|h| h.lease.clone())
            .collect()
    };
    if leases.is_empty() {
        return Err(Failure::new(
            crate::exit::LICENSE,
            format!(
                "no seat is held by {want} (as the holders stated; `lic-udp status` shows who holds what)"
            ),
        ));
    }
    // One password for all of them (--store).
    let pw = match (&o.store.store, &o.user) {
        (Some(_), Some(_)) => Some(crate::admin::password(o.password_stdin, false)?),
        _ => None,
    };
    for lease in &leases {
        release_lease(o, lease, pw.as_deref())?;
    }
    eprintln!("{} seat{} of {want} released", leases.len(), if leases.len() == 1 { "" } else { "s" });
    Ok(0)
}

fn dashboard(o: &ReleaseOpt) -> Result<(lic_udp::http::Endpoint, remote::Named), Failure> {
    remote::endpoint(&o.api, &o.data_dir)?.ok_or_else(|| {
        Failure::new(
            UNREACHABLE,
            format!(
                "no running dashboard found (no {} in {}): a seat is freed by the server that holds it, so start it \
                 with `lic-udp serve --http`, or give --url and --token",
                lic_udp::http::ENDPOINT_FILE,
                o.data_dir.display()
            ),
        )
    })
}

/// Frees one lease (`text`, hex as `status` shows it). `pw`: the password, already read (a
/// release of several seats asks once).
fn release_lease(o: &ReleaseOpt, text: &str, pw: Option<&str>) -> Result<i32, Failure> {
    let lease = lic_udp::http::api::lease_id(text).map_err(|e| Failure::usage(e.message()))?;
    if let Some(url) = &o.store.store {
        let read = || match pw {
            Some(p) => Ok(p.to_owned()),
            None => crate::admin::password(o.password_stdin, false),
        };
        return crate::cluster::release(url, &o.data_dir, lease, o.user.as_deref(), read);
    }
    let (ep, _) = dashboard(o)?;
    let r = remote::post(&ep, &format!("/api/leases/{text}/release"), serde_json::json!({}))?;
    eprintln!(
        "lease {} of license {} (holder {}) released; the holder's next heartbeat is refused, and it takes a seat \
         again if one is free",
        text,
        r.get("license").and_then(|v| v.as_i64()).unwrap_or_default(),
        r.get("address").and_then(|v| v.as_str()).unwrap_or("?")
    );
    Ok(0)
}

/// `--since`: what `/api/log?since=` takes (unix seconds or RFC 3339), or a duration before now.
pub(crate) fn since(s: &str) -> Result<u64, Failure> {
    if let Ok(t) = lic_udp::http::api::parse_time(s) {
        return Ok(t);
    }
    humantime::parse_duration(s).map(|d| unix_now().saturating_sub(d.as_secs())).map_err(|_| {
        Failure::usage(format!(
            "--since `{s}` is not a time; use e.g. 2026-11-22T10:00:00Z, 1763800000 or 7d"
        ))
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn render_log(entries: &[AuditEntry], csv: bool) -> String {
    let mut text = String::new();
    if csv {
        text.push_str("seq,time,event,license,lease,instance,address,actor,detail,holder\n");
    }
    for e in entries {
        let f = |v: &Option<String>| v.as_deref().map(csv_field).unwrap_or_default();
        let time = status::rfc3339(e.ts);
        let license = e.license.map(|l| l.to_string()).unwrap_or_default();
        let who = e.who.as_ref().map(ToString::to_string);
        if csv {
            let _ = writeln!(
                text,
                "{},{time},{},{license},{},{},{},{},{},{}",
                e.seq,
                e.event,
                f(&e.lease),
                f(&e.instance),
                f(&e.addr),
                f(&e.actor),
                f(&e.detail),
                f(&who)
            );
        } else {
            let _ = write!(text, "{time}  {:<13} license {:<4}", e.event, license);
            for (k, v) in [("lease", &e.lease), ("holder", &who), ("from", &e.addr), ("by", &e.actor)] {
                if let Some(v) = v {
                    let _ = write!(text, "  {k} {v}");
                }
            }
            if let Some(d) = &e.detail {
                let _ = write!(text, "  ({d})");
            }
            text.push('\n');
        }
    }
    text
}

pub fn log(o: LogOpt) -> Result<i32, Failure> {
    if o.limit == 0 {
        return Err(Failure::new(USAGE, "--limit must be at least 1"));
    }
    let since_unix = o.since.as_deref().map(since).transpose()?;
    let q = AuditQuery { since_unix, license: o.license, limit: Some(o.limit), ..AuditQuery::default() };
    let entries = match &o.store.store {
        Some(url) => crate::cluster::log(url, &o.data_dir, &q)?,
        None => {
            crate::announce_data_dir(&o.data_dir);
            Store::open_existing(&o.data_dir)?.audit(&q)?
        }
    };
    if entries.is_empty() && !o.csv {
        eprintln!("no audit events match");
    }
    crate::print_stdout(&render_log(&entries, o.csv))?;
    Ok(0)
}

//! `lic-udp report`: the usage figures of `lic_udp::usage`, as a table, CSV or JSON.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use lic_udp::server::unix_now;
use lic_udp::store::AuditQuery;
use lic_udp::usage::{usage, usage_by, By, GroupUsage, LicenseUsage};

use crate::default_data_dir;
use crate::exit::{Failure, IO};

#[derive(Args)]
pub struct ReportOpt {
    /// The window's start: RFC 3339, unix seconds, or a duration ago (30d, 12h).
    #[arg(long, default_value = "30d")]
    since: String,
    /// Only this license id.
    #[arg(long)]
    license: Option<i64>,
    /// Per license and holder: user, host or program, as the clients stated (clients that do
    /// not say are counted under `?`).
    #[arg(long, value_enum)]
    by: Option<ByArg>,
    /// CSV with a header line, for spreadsheets.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// One JSON array (fields as in the CSV header).
    #[arg(long)]
    json: bool,
    /// Data dir [env: LIC_UDP_DATA_DIR].
    #[arg(long, env = "LIC_UDP_DATA_DIR", hide_env = true, default_value_os_t = default_data_dir())]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    store: crate::cluster::StoreOpt,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ByArg {
    User,
    Host,
    Program,
}

pub fn report(o: ReportOpt) -> Result<i32, Failure> {
    let since = crate::report::since(&o.since)?;
    let until = unix_now();
    let store = crate::admin::admin_store(&o.data_dir, &o.store)?;
    let licenses = store.licenses()?;
    let seats: HashMap<i64, u16> = licenses.iter().map(|l| (l.id, l.seats)).collect();
    // From the start of the log: a seat granted before the window and still held counts.
    let q = AuditQuery { license: o.license, limit: Some(u32::MAX), ..AuditQuery::default() };
    let events = store.audit(&q)?;
    if let Some(b) = o.by {
        let by = match b {
            ByArg::User => By::User,
            ByArg::Host => By::Host,
            ByArg::Program => By::Program,
        };
        let rows = usage_by(&events, by, since, until);
        let text = if o.json {
            serde_json::to_string_pretty(&rows).map_err(|e| Failure::new(IO, e.to_string()))? + "\n"
        } else {
            render_by(&rows, o.csv, since, until)
        };
        crate::print_stdout(&text)?;
        return Ok(0);
    }
    let mut rows = usage(&events, &seats, since, until);
    // Licenses without any event in the window are reported too, as unused.
    for l in &licenses {
        if o.license.is_none_or(|id| id == l.id) && !rows.iter().any(|r| r.license == l.id) {
            rows.push(LicenseUsage { license: l.id, seats: Some(l.seats), ..LicenseUsage::default() });
        }
    }
    rows.sort_by_key(|r| r.license);
    let text = if o.json {
        serde_json::to_string_pretty(&rows).map_err(|e| Failure::new(IO, e.to_string()))? + "\n"
    } else {
        render(&rows, o.csv, since, until)
    };
    crate::print_stdout(&text)?;
    Ok(0)
}

fn denials(r: &LicenseUsage) -> String {
    if r.denials.is_empty() {
        return "-".into();
    }
    r.denials.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" ")
}

fn render(rows: &[LicenseUsage], csv: bool, since: u64, until: u64) -> String {
    let mut t = String::new();
    if csv {
        t.push_str("license,seats,peak,hours_in_use,hours_full,seat_hours,grants,denials\n");
        for r in rows {
            let seats = r.seats.map(|s| s.to_string()).unwrap_or_default();
            let _ = writeln!(
                t,
                "{},{seats},{},{:.3},{:.3},{:.3},{},{}",
                r.license,
                r.peak,
                r.hours_in_use,
                r.hours_full,
                r.seat_hours,
                r.grants,
                denials(r)
            );
        }
        return t;
    }
    let _ =
        writeln!(t, "usage from {} to {}", lic_udp::status::rfc3339(since), lic_udp::status::rfc3339(until));
    let _ = writeln!(
        t,
        "{:<8} {:>5} {:>5} {:>10} {:>9} {:>10} {:>7}  DENIALS",
        "LICENSE", "SEATS", "PEAK", "IN USE h", "FULL h", "SEAT-h", "GRANTS"
    );
    for r in rows {
        let seats = r.seats.map(|s| s.to_string()).unwrap_or_else(|| "?".into());
        let _ = writeln!(
            t,
            "{:<8} {:>5} {:>5} {:>10.2} {:>9.2} {:>10.2} {:>7}  {}",
            r.license,
            seats,
            r.peak,
            r.hours_in_use,
            r.hours_full,
            r.seat_hours,
            r.grants,
            denials(r)
        );
    }
    t
}

fn render_by(rows: &[GroupUsage], csv: bool, since: u64, until: u64) -> String {
    let mut t = String::new();
    if csv {
        t.push_str("license,group,peak,hours_in_use,seat_hours,grants\n");
        for r in rows {
            // A group is a name the client chose: quoted, so a comma cannot shift the columns.
            let group = format!("\"{}\"", r.group.replace('"', "\"\""));
            let _ = writeln!(
                t,
                "{},{group},{},{:.3},{:.3},{}",
                r.license, r.peak, r.hours_in_use, r.seat_hours, r.grants
            );
        }
        return t;
    }
    let _ =
        writeln!(t, "usage from {} to {}", lic_udp::status::rfc3339(since), lic_udp::status::rfc3339(until));
    let _ = writeln!(
        t,
        "{:<8} {:<24} {:>5} {:>10} {:>10} {:>7}",
        "LICENSE", "BY", "PEAK", "IN USE h", "SEAT-h", "GRANTS"
    );
    if rows.is_empty() {
        t.push_str("(no seats held in this window)\n");
    }
    for r in rows {
        let _ = writeln!(
            t,
            "{:<8} {:<24} {:>5} {:>10.2} {:>10.2} {:>7}",
            r.license, r.group, r.peak, r.hours_in_use, r.seat_hours, r.grants
        );
    }
    t
}

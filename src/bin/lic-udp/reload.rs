//! SIGHUP (`systemctl reload lic-udp`): reread `DATA_DIR/lic-udp.toml` without a restart.
//!
//! Only what the site file decides is swapped: license types (for licenses issued from now on),
//! their timers, and the audit bounds. Seats, leases and sessions live in the server's core,
//! which a reload never touches, so holders keep heartbeating through it. A file that does not
//! parse or validate is refused as a whole, with a log line naming the error, and the previous
//! configuration stays.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lic_udp::config::SiteConfig;
use lic_udp::http::Dashboard;
use lic_udp::store::Store;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::exit::{Failure, IO};

/// Everything a reload hands the new file to.
pub struct Reloader {
    pub data_dir: PathBuf,
    /// The server's own connection; `None` on a cluster node, where reload is not supported.
    pub store: Option<Arc<Mutex<Store>>>,
    pub dashboard: Option<Arc<Dashboard>>,
    /// `--lease-ttl` / `--heartbeat`: the new types must still fit them.
    pub ttl_override: Option<Duration>,
    pub heartbeat_override: Option<Duration>,
}

/// Installs the SIGHUP handler now, before the start line: SIGHUP's default action ends the
/// process, and a reload sent right after start must not.
pub fn install() -> Result<Signal, Failure> {
    signal(SignalKind::hangup())
        .map_err(|e| Failure::new(IO, format!("cannot install the SIGHUP handler: {e}")))
}

/// Reloads at every SIGHUP, until the process ends.
pub async fn run(mut hup: Signal, r: Reloader) {
    while hup.recv().await.is_some() {
        crate::notify::reloading();
        match reload(&r).await {
            Ok(summary) => tracing::info!("reloaded {summary}"),
            Err(why) => tracing::error!("{why}"),
        }
        crate::notify::ready();
    }
}

async fn reload(r: &Reloader) -> Result<String, String> {
    let path = r.data_dir.join(lic_udp::config::FILE_NAME);
    let refused =
        |why: String| format!("{} refused, the previous configuration stays: {why}", path.display());
    let Some(store) = r.store.clone() else {
        return Err(refused(
            "a cluster node (--store etcd://…) rereads it only at start; restart the node".to_owned(),
        ));
    };
    let dir = r.data_dir.clone();
    let (ttl, hb) = (r.ttl_override, r.heartbeat_override);
    // The store's mutex is the IO thread's too: lock it off the async workers.
    let site = tokio::task::spawn_blocking(move || -> Result<SiteConfig, String> {
        let site = SiteConfig::load(&dir).map_err(|e| e.to_string())?;
        let mut store = store.lock().map_err(|_| "the store connection is poisoned".to_owned())?;
        crate::admin::check_overrides_with(&site, &store, ttl, hb).map_err(|f| f.message)?;
        store.set_site(site.clone());
        Ok(site)
    })
    .await
    .map_err(|e| refused(format!("the reload task failed: {e}")))?
    .map_err(refused)?;
    if let Some(d) = &r.dashboard {
        d.set_site(site.clone()).await.map_err(|e| {
            format!("{}: the dashboard kept the previous types: {}", path.display(), e.message())
        })?;
    }
    Ok(format!(
        "{}: license types {}; audit log kept {} or {} events",
        path.display(),
        site.type_names().join(", "),
        humantime::format_duration(site.audit.keep),
        site.audit.max_events
    ))
}

//! The admin's HTTP side (`lic-udp serve --http`): sign-in, the live monitor, the issue page,
//! the JSON API under `/api/` and Prometheus text on `/metrics`.
//!
//! It runs on the tokio runtime, apart from the UDP IO thread, and touches the core only
//! through read-only snapshots and [`ServerCore::force_release`]; the heartbeat path never
//! waits for it. It has its own connection to the store, and store work (including Argon2
//! for sign-in and issue) runs on blocking threads.
//!
//! It works on either store through [`AdminStore`]. On a cluster node (`--store etcd://…`) the
//! holders it shows and frees are etcd's, every node's, so any node's dashboard manages the
//! whole deployment; `/metrics` adds the node's etcd health.

pub mod api;
mod auth;
pub mod node;
mod pages;
mod usage_page;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::config::SiteConfig;
use crate::metrics::Histogram;
use crate::proto::server::ServerCore;
use crate::server::unix_now;
use crate::store::etcd::NodeState;
use crate::store::{AdminStore, StoreError};

pub use auth::LOCAL_ACTOR;

/// Written into the data dir while the dashboard runs, so that `lic-udp status`, `release`
/// and `revoke` on the same host find the live server. Mode 0600, like the database: whoever
/// can read it could read every license's keys anyway.
pub const ENDPOINT_FILE: &str = "http-endpoint.json";

/// What [`ENDPOINT_FILE`] holds.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub url: String,
    /// An admin token valid while this server process runs.
    pub token: String,
}

/// Everything the handlers share.
pub struct Dashboard {
    core: Arc<ServerCore>,
    heartbeat_time: Arc<Histogram>,
    store: Arc<Mutex<Box<dyn AdminStore>>>,
    /// Set on a cluster node: its etcd health goes into `/metrics`.
    node: Option<Arc<NodeState>>,
    sessions: auth::Sessions,
    local_token: String,
    /// At most this many Argon2 password checks at once (64 MiB each).
    sign_in_slots: tokio::sync::Semaphore,
}

type State = axum::extract::State<Arc<Dashboard>>;

impl Dashboard {
    /// `store` must be a connection of its own, not the IO thread's.
    pub fn new(core: Arc<ServerCore>, heartbeat_time: Arc<Histogram>, store: Box<dyn AdminStore>) -> Self {
        Self {
            core,
            heartbeat_time,
            store: Arc::new(Mutex::new(store)),
            node: None,
            sessions: auth::Sessions::default(),
            local_token: auth::random_token(),
            sign_in_slots: tokio::sync::Semaphore::new(2),
        }
    }

    /// A cluster node's dashboard: the store is etcd, shared with the other nodes.
    pub fn for_node(core: Arc<ServerCore>, heartbeat_time: Arc<Histogram>, node: Arc<NodeState>) -> Self {
        let mut d = Self::new(core, heartbeat_time, Box::new(node.store.clone()));
        d.node = Some(node);
        d
    }

    pub fn local_token(&self) -> &str {
        &self.local_token
    }

    /// Gives the dashboard's store connection a reread site file (SIGHUP): the types it
    /// issues and lists, and the audit bounds it prunes to.
    pub async fn set_site(self: &Arc<Self>, site: SiteConfig) -> Result<(), Error> {
        self.store(move |s| {
            s.set_site(site);
            Ok(())
        })
        .await
    }

    /// Runs `f` on the store on a blocking thread.
    async fn store<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn AdminStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = store.lock().map_err(|_| StoreError::Poisoned)?;
            f(s.as_mut())
        })
        .await
        .map_err(|_| Error::Internal("a store task stopped".into()))?
        .map_err(Error::from)
    }

    /// The monotonic and the wall clock, read together; the wall clock in milliseconds.
    fn now(&self) -> (Instant, u64) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        (Instant::now(), ms)
    }
}

/// Builds the routes (public for tests that drive the router without a socket).
pub fn router(state: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(pages::root))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/monitor", get(pages::monitor))
        .route("/monitor/table", get(pages::monitor_table))
        .route("/usage", get(usage_page::usage))
        .route("/issue", get(pages::issue_form).post(pages::issue))
        .route("/issued/{key}", get(pages::issued))
        .route("/leases/{lease}/release", post(pages::release))
        .route("/licenses/{id}/revoke", post(pages::revoke))
        .route("/metrics", get(api::metrics))
        .route("/api/whoami", get(api::whoami))
        .route("/api/status", get(api::status))
        .route("/api/licenses", post(api::issue))
        .route("/api/licenses/{id}/revoke", post(api::revoke))
        .route("/api/leases/{lease}/release", post(api::release))
        .route("/api/log", get(api::log))
        .fallback(pages::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(state)
}

/// Serves the dashboard on `listener` until `shutdown` resolves, pruning the audit log in the
/// background meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Dashboard>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // A node's cluster thread prunes etcd's log already (once for the deployment would do; once
    // a node is harmless, since pruning is idempotent, but pointless twice in one process).
    let pruner = state.node.is_none().then(|| tokio::spawn(prune_loop(state.clone())));
    // With the peer's address, for the sign-in log lines.
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let r = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    if let Some(p) = pruner {
        p.abort();
    }
    r
}

/// Audit rows [`prune_loop`] deletes per transaction.
const PRUNE_BATCH: u32 = 1_000;

/// Keeps the audit log inside its retention, in small deletes so the UDP side's commits never
/// wait long for the database.
async fn prune_loop(state: Arc<Dashboard>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        loop {
            // 1,000 rows a transaction: a few milliseconds of write lock, which a grant's
            // commit on the UDP side may have to wait for. The bounds are read each time, so
            // a reloaded site file's bounds apply from the next batch.
            let prune = |s: &mut dyn AdminStore| {
                let retention = s.site().audit;
                s.prune_audit(retention, unix_now(), PRUNE_BATCH)
            };
            match state.store(prune).await {
                Ok(n) if n == u64::from(PRUNE_BATCH) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!("cannot prune the audit log: {}", e.message());
                    break;
                }
            }
        }
    }
}

/// Writes [`ENDPOINT_FILE`] atomically (temp file, fsync, rename), mode 0600.
pub fn write_endpoint(data_dir: &Path, ep: &Endpoint) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(ENDPOINT_FILE);
    let tmp = data_dir.join(format!(".{ENDPOINT_FILE}.tmp"));
    let text = serde_json::to_vec(ep).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Reads [`ENDPOINT_FILE`] if a dashboard left one.
pub fn read_endpoint(data_dir: &Path) -> Option<Endpoint> {
    let text = std::fs::read(data_dir.join(ENDPOINT_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Why a request failed; each becomes a status code and a message for the page or the JSON.
#[derive(Debug)]
pub enum Error {
    /// No session or token, or an expired one.
    Unauthenticated,
    /// Signed in, but not allowed (another account's license, a bad CSRF token).
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Conflict(String),
    TooManyRequests(String),
    MethodNotAllowed,
    Internal(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Unauthenticated => {
                "sign in, or send `Authorization: Bearer TOKEN` (tokens come from `lic-udp token add`)".into()
            }
            Self::MethodNotAllowed => {
                "this route does not take that method; see README.md, \"JSON API\"".into()
            }
            Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::BadRequest(m)
            | Self::Conflict(m)
            | Self::TooManyRequests(m)
            | Self::Internal(m) => m.clone(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchLicense { .. } => Self::NotFound(e.to_string()),
            StoreError::NotOwner { .. } => Self::Forbidden(e.to_string()),
            StoreError::AlreadyRevoked { .. } => Self::Conflict(e.to_string()),
            StoreError::LoginThrottled { .. } => Self::TooManyRequests(e.to_string()),
            StoreError::BadSeats { .. }
            | StoreError::Config(crate::config::ConfigError::UnknownType { .. }) => {
                Self::BadRequest(e.to_string())
            }
            // Never say which of the two was wrong.
            StoreError::NoSuchUser { .. } | StoreError::WrongPassword { .. } => Self::Unauthenticated,
            other => {
                tracing::error!("store error in the dashboard: {other}");
                Self::Internal(format!("the store failed: {other}"))
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(serde_json::json!({ "error": self.message() }))).into_response()
    }
}

/// Where the dashboard listens unless told otherwise: loopback only.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7380))
}

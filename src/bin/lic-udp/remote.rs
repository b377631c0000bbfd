//! The CLI's side of the JSON API: `status`, `release` and `revoke` talk to the running server
//! when one is reachable. On the server host nothing needs configuring: `serve --http` leaves
//! its address and a local admin token in the data dir. From elsewhere, `--url` and `--token`
//! (or `LIC_UDP_URL`, `LIC_UDP_TOKEN`) name a dashboard and an API token.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use lic_udp::http::{read_endpoint, Endpoint};

use crate::exit::{Failure, LICENSE, UNREACHABLE, USAGE};

#[derive(Args, Clone, Default)]
pub struct ApiOpt {
    /// The dashboard's URL, e.g. http://127.0.0.1:7380 [env: LIC_UDP_URL]; needs --token.
    /// Default: the one the server on this host recorded in the data dir.
    #[arg(long, env = "LIC_UDP_URL", hide_env = true)]
    pub url: Option<String>,
    /// An API token from `lic-udp token add` [env: LIC_UDP_TOKEN].
    #[arg(long, env = "LIC_UDP_TOKEN", hide_env = true, hide_env_values = true)]
    pub token: Option<String>,
}

/// Where to send API calls, if anywhere, and whether the user named it (`--url` or
/// `$LIC_UDP_URL`) rather than the data dir.
///
/// The data dir's local token is an admin credential for the server that wrote it, so it goes
/// only to the URL written beside it: with `--url`, a token must be given too, or whatever
/// answers at that URL (a typo, a look-alike host) would receive it.
pub fn endpoint(o: &ApiOpt, data_dir: &Path) -> Result<Option<(Endpoint, Named)>, Failure> {
    match (&o.url, &o.token) {
        (Some(url), Some(token)) => Ok(Some((Endpoint { url: url.clone(), token: token.clone() }, Named::ByUser))),
        (Some(url), None) => Err(Failure::usage(format!(
            "--url {url} (or $LIC_UDP_URL) needs --token T (or $LIC_UDP_TOKEN), an API token from `lic-udp token \
             add`; the data dir's local token is only sent to the server that wrote it"
        ))),
        (None, token) => Ok(read_endpoint(data_dir).map(|l| {
            let token = token.clone().unwrap_or(l.token);
            (Endpoint { url: l.url, token }, Named::ByDataDir)
        })),
    }
}

/// Who chose the dashboard: a URL the user named must answer; the data dir's record may be
/// stale (a killed server leaves it behind), so `status` falls back to the data dir then.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Named {
    ByUser,
    ByDataDir,
}

/// Why an API call failed: no server (fall back or exit 3), or the server's refusal.
pub enum ApiError {
    Unreachable(String),
    Refused { status: u16, message: String },
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Unreachable(m) => Failure::new(UNREACHABLE, m),
            ApiError::Refused { status: 400, message } => Failure::new(USAGE, message),
            ApiError::Refused { status: 401, message } => {
                Failure::new(LICENSE, format!("the server refused the token: {message}"))
            }
            ApiError::Refused { message, .. } => Failure::new(LICENSE, message),
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build()
}

fn call(
    req: ureq::Request,
    ep: &Endpoint,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, ApiError> {
    let req = req.set("Authorization", &format!("Bearer {}", ep.token));
    let resp = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match resp {
        Ok(r) => r.into_json().map_err(|e| ApiError::Unreachable(format!("bad answer from {}: {e}", ep.url))),
        Err(ureq::Error::Status(status, r)) => {
            let message = r
                .into_json::<serde_json::Value>()
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {status}"));
            Err(ApiError::Refused { status, message })
        }
        Err(e) => Err(ApiError::Unreachable(format!(
            "no lic-udp dashboard answered at {} ({e}); is `lic-udp serve --http` running? (a server that was killed \
             leaves its address behind in the data dir)",
            ep.url
        ))),
    }
}

pub fn get(ep: &Endpoint, path: &str) -> Result<serde_json::Value, ApiError> {
    call(agent().get(&format!("{}{path}", ep.url.trim_end_matches('/'))), ep, None)
}

pub fn post(ep: &Endpoint, path: &str, body: serde_json::Value) -> Result<serde_json::Value, ApiError> {
    call(agent().post(&format!("{}{path}", ep.url.trim_end_matches('/'))), ep, Some(body))
}

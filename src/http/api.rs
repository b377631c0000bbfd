//! The JSON API under `/api/` (documented in README.md, "JSON API") and `/metrics`.
//! The operations here are shared with the pages, which only render them differently.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::{principal, Principal};
use super::{Error, State};
use crate::metrics;
use crate::status::{self, Status};
use crate::store::{AuditEntry, AuditQuery};
use crate::Serial;

/// The header a browser session sends its CSRF token in on `/api/` state changes.
pub const CSRF_HEADER: &str = "x-csrf-token";

fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok())
}

pub(super) async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}

pub(super) async fn metrics(state: State) -> impl IntoResponse {
    let core = &state.core;
    let mut text = metrics::render(&metrics::Snapshot {
        stats: core.stats().snapshot(),
        seats: core.seats(),
        live_leases: core.live_leases(),
        heartbeat_time: &state.heartbeat_time,
    });
    if let Some(node) = &state.node {
        super::node::write_health(&mut text, node);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

#[derive(Serialize)]
pub(super) struct WhoAmI {
    user: String,
    admin: bool,
}

pub(super) async fn whoami(state: State, headers: HeaderMap) -> Result<Json<WhoAmI>, Error> {
    let p = principal(&state, &headers).await?;
    Ok(Json(WhoAmI { user: p.user, admin: p.admin }))
}

/// The live status of the licenses `p` may see.
/// The status `p` may see, with at most `cap` holders listed per license.
pub(super) async fn status_for(
    state: &Arc<super::Dashboard>,
    p: &Principal,
    cap: Option<usize>,
) -> Result<Status, Error> {
    let (licenses, shared) =
        state.store(|s| Ok((s.licenses()?, s.shared().then(|| s.holders()).transpose()?))).await?;
    let licenses = licenses.into_iter().filter(|l| p.may_see(&l.owner)).collect();
    let (now, unix_ms) = state.now();
    let views = state.core.lease_views(now, unix_ms);
    Ok(match (shared, &state.node) {
        (Some(recorded), Some(node)) => {
            status::build_shared(licenses, &recorded, &views, &node.cfg.node_id, unix_ms / 1000, cap)
        }
        _ => status::build_capped(licenses, status::Holders::Live(&views), unix_ms / 1000, cap),
    })
}

#[derive(Deserialize)]
pub(super) struct StatusQuery {
    /// At most this many holders per license (the rest are counted in `more_holders`).
    holders: Option<usize>,
}

pub(super) async fn status(
    state: State,
    headers: HeaderMap,
    Query(q): Query<StatusQuery>,
) -> Result<Json<Status>, Error> {
    let p = principal(&state, &headers).await?;
    Ok(Json(status_for(&state, &p, q.holders).await?))
}

#[derive(Deserialize)]
pub(super) struct IssueRequest {
    #[serde(rename = "type")]
    pub license_type: String,
    pub seats: Option<u16>,
}

#[derive(Serialize)]
pub(super) struct Issued {
    pub id: i64,
    /// Shown once: the server keeps only keys derived from it.
    pub serial: String,
    #[serde(rename = "type")]
    pub license_type: String,
    pub seats: u16,
}

/// Issues a license owned by `p`.
pub(super) async fn issue_for(
    state: &Arc<super::Dashboard>,
    p: &Principal,
    req: IssueRequest,
) -> Result<Issued, Error> {
    if req.seats == Some(0) {
        return Err(Error::BadRequest("seats must be 1 to 65535".into()));
    }
    let owner = p.user.clone();
    let (id, serial, ty, seats): (i64, Serial, String, u16) = state
        .store(move |s| {
            let ty = s.site().require(&req.license_type).map_err(crate::store::StoreError::from)?.clone();
            let (id, serial) = s.issue(&owner, &ty, req.seats, crate::server::unix_now())?;
            Ok((id, serial, ty.name, req.seats.unwrap_or(ty.seats)))
        })
        .await?;
    tracing::info!(license = id, user = %p.user, license_type = %ty, seats, "license issued");
    Ok(Issued { id, serial: serial.as_str().to_owned(), license_type: ty, seats })
}

pub(super) async fn issue(
    state: State,
    headers: HeaderMap,
    body: Result<Json<IssueRequest>, JsonRejection>,
) -> Result<impl IntoResponse, Error> {
    let p = principal(&state, &headers).await?;
    p.check_csrf(csrf_header(&headers))?;
    // axum's own rejections are plain text with 415/422; the API answers JSON and 400.
    let Json(req) = body.map_err(|r| {
        Error::BadRequest(format!(
            "{}; send a JSON object like {{\"type\": \"team\", \"seats\": 3}} with Content-Type: application/json",
            r.body_text()
        ))
    })?;
    if p.user == super::LOCAL_ACTOR {
        return Err(Error::Forbidden(
            "the local token cannot own licenses; use `lic-udp issue`, or a token of an account".into(),
        ));
    }
    let issued = issue_for(&state, &p, req).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(issued)))
}

pub(super) async fn revoke_for(state: &Arc<super::Dashboard>, p: &Principal, id: i64) -> Result<(), Error> {
    let (user, admin) = (p.user.clone(), p.admin);
    state
        .store(move |s| {
            // The store checks ownership first; another account's license then looks like no
            // license at all, so ids cannot be probed.
            s.revoke_as(id, &user, admin, crate::unix_now()).map_err(|e| match e {
                crate::store::StoreError::NotOwner { .. } => crate::store::StoreError::NoSuchLicense { id },
                e => e,
            })
        })
        .await?;
    tracing::info!(license = id, user = %p.user, "license revoked");
    Ok(())
}

pub(super) async fn revoke(
    state: State,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, Error> {
    let p = principal(&state, &headers).await?;
    p.check_csrf(csrf_header(&headers))?;
    revoke_for(&state, &p, id).await?;
    Ok(Json(serde_json::json!({ "revoked": id })))
}

/// Parses a lease id as `status` prints it: exactly 16 hex digits, never all zero (the
/// protocol never issues lease 0). A shorter id is refused rather than zero-padded: it is more
/// likely a truncated copy than a real lease.
pub fn lease_id(text: &str) -> Result<u64, Error> {
    let bad = || {
        Error::BadRequest(format!(
            "`{text}` is not a lease id; copy the 16 hex digits `lic-udp status` shows after \"lease\""
        ))
    };
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u64::from_str_radix(text, 16).ok().filter(|&v| v != 0).ok_or_else(bad)
}

#[derive(Serialize)]
pub(super) struct Released {
    pub lease: String,
    pub license: i64,
    pub address: String,
    pub instance: String,
}

pub(super) async fn release_for(
    state: &Arc<super::Dashboard>,
    p: &Principal,
    lease: u64,
) -> Result<Released, Error> {
    let missing =
        || Error::NotFound(format!("no live lease {lease:016x}; it may have been released or expired"));
    if state.node.is_some() {
        return release_shared(state, p, lease).await;
    }
    let (now, unix_ms) = state.now();
    let view = state.core.lease_view_of(now, unix_ms, lease).ok_or_else(missing)?;
    if !p.admin {
        let license = view.lease.license;
        let owner = state
            .store(move |s| Ok(s.licenses()?.into_iter().find(|l| l.id == license).map(|l| l.owner)))
            .await?;
        if owner.as_deref() != Some(p.user.as_str()) {
            // The same answer as for a lease that does not exist: nothing to learn by guessing.
            return Err(missing());
        }
    }
    let r = state.core.force_release(now, lease, &p.user).ok_or_else(missing)?;
    tracing::info!(lease = %format_args!("{lease:016x}"), license = r.license, holder = %r.addr, user = %p.user, "seat force-released");
    Ok(Released {
        lease: format!("{lease:016x}"),
        license: r.license,
        address: r.addr.to_string(),
        instance: hex::encode(r.instance_id),
    })
}

/// On a cluster node: the seat is freed in etcd, whichever node holds it; that node answers its
/// holder STALE within a quarter second (proto-spec.md §11, "Removal").
async fn release_shared(state: &Arc<super::Dashboard>, p: &Principal, lease: u64) -> Result<Released, Error> {
    let missing =
        || Error::NotFound(format!("no live lease {lease:016x}; it may have been released or expired"));
    let (user, admin) = (p.user.clone(), p.admin);
    let freed = state
        .store(move |s| {
            let Some(h) = s.holders()?.into_iter().find(|h| h.lease.lease_id == lease) else {
                return Ok(None);
            };
            if !admin {
                let owner = s.licenses()?.into_iter().find(|l| l.id == h.lease.license).map(|l| l.owner);
                if owner.as_deref() != Some(user.as_str()) {
                    return Ok(None);
                }
            }
            s.free_seat(lease, &user)
        })
        .await?
        .ok_or_else(missing)?;
    tracing::info!(lease = %format_args!("{lease:016x}"), license = freed.lease.license, holder = %freed.lease.addr, node = ?freed.node, user = %p.user, "seat force-released");
    Ok(Released {
        lease: format!("{lease:016x}"),
        license: freed.lease.license,
        address: freed.lease.addr.to_string(),
        instance: hex::encode(freed.lease.instance_id),
    })
}

pub(super) async fn release(
    state: State,
    headers: HeaderMap,
    Path(lease): Path<String>,
) -> Result<Json<Released>, Error> {
    let p = principal(&state, &headers).await?;
    p.check_csrf(csrf_header(&headers))?;
    let lease = lease_id(&lease)?;
    Ok(Json(release_for(&state, &p, lease).await?))
}

#[derive(Deserialize)]
pub(super) struct LogQuery {
    /// Unix seconds or RFC 3339.
    since: Option<String>,
    license: Option<i64>,
    after: Option<i64>,
    limit: Option<u32>,
}

pub(super) async fn log(
    state: State,
    headers: HeaderMap,
    Query(q): Query<LogQuery>,
) -> Result<Json<Vec<AuditEntry>>, Error> {
    let p = principal(&state, &headers).await?;
    let since = q.since.as_deref().map(parse_time).transpose()?;
    let query = AuditQuery {
        since_unix: since,
        license: q.license,
        after_seq: q.after,
        limit: q.limit,
        owner: if p.admin { None } else { Some(p.user.clone()) },
    };
    let entries = state.store(move |s| s.audit(&query)).await?;
    Ok(Json(entries))
}

/// Unix seconds or an RFC 3339 time.
pub fn parse_time(s: &str) -> Result<u64, Error> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .ok_or_else(|| {
            Error::BadRequest(format!("`{s}` is not a time; use unix seconds or e.g. 2026-11-22T10:00:00Z"))
        })
}

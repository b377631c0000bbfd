//! Server-rendered pages: sign-in, the live monitor and the issue page. No build step: plain
//! HTML, a little CSS, and a few lines of JavaScript that refresh the monitor's table and copy
//! a serial. Every form carries the session's CSRF token.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::api::{self, IssueRequest};
use super::auth::{self, principal, Principal};
use super::{Dashboard, Error, State};
use crate::status::{LicenseStatus, Status};

/// Escapes text for HTML element content and double-quoted attributes.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2327;background:#f6f7f7}
header{background:#1d2327;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}
header a,header button{color:#fff;background:none;border:0;font:inherit;cursor:pointer;text-decoration:none}
header .who{margin-left:auto;opacity:.8}
main{padding:1.2em;max-width:1100px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #dcdcde;vertical-align:top}
tr.holder td{font-size:13px;background:#fbfbfc}
.state{font-weight:600}.full,.revoked,.expired{color:#b32d2e}.in-use{color:#2271b1}.idle{color:#50575e}
form.inline{display:inline;margin:0}
button{cursor:pointer}
.error{color:#b32d2e;font-weight:600}
.serial{font:700 28px monospace;letter-spacing:.08em;background:#fff;padding:.3em .6em;border:1px solid #dcdcde}
label{display:block;margin:.6em 0 .2em}
";

pub(super) fn page(title: &str, who: Option<&Principal>, body: &str) -> Html<String> {
    let nav = match who {
        Some(p) => format!(
            "<a href=\"/monitor\">Monitor</a><a href=\"/usage\">Usage</a><a href=\"/issue\">Issue</a>\
             <span class=\"who\">{}{}</span>\
             <form class=\"inline\" method=\"post\" action=\"/logout\">{}<button>Sign out</button></form>",
            esc(&p.user),
            if p.admin { " (admin)" } else { "" },
            csrf_field(p)
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{} · lic-udp</title>\
         <style>{STYLE}</style></head><body><header><strong>lic-udp</strong>{nav}</header>\
         <main>{body}</main></body></html>",
        esc(title)
    ))
}

fn csrf_field(p: &Principal) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(p.csrf.as_deref().unwrap_or("")))
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// An error as a page (for form posts), keeping the user signed in.
pub(super) fn error_page(p: Option<&Principal>, e: &Error) -> Response {
    let body = format!(
        "<h1>That did not work</h1><p class=\"error\">{}</p><p><a href=\"/monitor\">Back to the monitor</a></p>",
        esc(&e.message())
    );
    (e.status(), page("Error", p, &body)).into_response()
}

/// A page for signed-in users only: the principal, or a redirect to sign-in.
pub(super) async fn signed_in(state: &Arc<Dashboard>, headers: &HeaderMap) -> Result<Principal, Response> {
    match principal(state, headers).await {
        // Bearer tokens are for scripts; pages need a session with a CSRF token.
        Ok(p) if p.csrf.is_some() => Ok(p),
        Ok(_) | Err(Error::Unauthenticated) => Err(to_login()),
        Err(e) => Err(error_page(None, &e)),
    }
}

pub(super) async fn root(state: State, headers: HeaderMap) -> Response {
    match signed_in(&state, &headers).await {
        Ok(_) => Redirect::to("/monitor").into_response(),
        Err(r) => r,
    }
}

fn login_page(message: Option<&str>, status: StatusCode) -> Response {
    let token = auth::random_token();
    let msg =
        message.map(|m| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(m))).unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1>{msg}<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <label for=\"user\">User</label><input id=\"user\" name=\"user\" autocomplete=\"username\" required>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <p><button id=\"sign-in\">Sign in</button></p></form>\
         <p>Accounts are made on the server host with <code>lic-udp user add</code>.</p>"
    );
    (
        status,
        [(header::SET_COOKIE, auth::login_csrf_cookie(&token)), (header::CACHE_CONTROL, "no-store".into())],
        page("Sign in", None, &body),
    )
        .into_response()
}

pub(super) async fn login_form() -> Response {
    login_page(None, StatusCode::OK)
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    user: String,
    password: String,
    csrf: String,
}

/// The client's address, for the sign-in log lines; absent when the router runs without a
/// socket (tests that drive it directly).
type Peer = Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>;

fn peer_text(peer: &Peer) -> String {
    peer.as_ref().map_or_else(|| "unknown".to_owned(), |p| p.0 .0.to_string())
}

pub(super) async fn login(
    state: State,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !auth::login_csrf_ok(&headers, &f.csrf) {
        return login_page(Some("The sign-in form expired; try again."), StatusCode::FORBIDDEN);
    }
    // Argon2 at 64 MiB per check: a burst of sign-ins waits here instead of eating memory.
    let Ok(_slot) = state.sign_in_slots.acquire().await else {
        return login_page(Some("The server is shutting down."), StatusCode::SERVICE_UNAVAILABLE);
    };
    let user = f.user.clone();
    let checked = state.store(move |s| s.check_web_user(&user, &f.password)).await;
    let from = peer_text(&peer);
    match checked {
        Ok(()) => {
            let id = state.sessions.start(&f.user);
            tracing::info!(user = %f.user, from = %from, "dashboard sign-in");
            (
                StatusCode::SEE_OTHER,
                [(header::SET_COOKIE, auth::session_cookie(&id)), (header::LOCATION, "/monitor".to_owned())],
            )
                .into_response()
        }
        Err(Error::Unauthenticated) => {
            tracing::warn!(user = %f.user, from = %from, "failed dashboard sign-in");
            login_page(Some("Wrong user name or password."), StatusCode::UNAUTHORIZED)
        }
        Err(e) => {
            if matches!(e, Error::TooManyRequests(_)) {
                tracing::warn!(user = %f.user, from = %from, "throttled dashboard sign-in");
            }
            login_page(Some(&e.message()), e.status())
        }
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: Option<String>,
}

/// Needs the session's CSRF token like every other form: otherwise any site could sign the
/// admin out (its `Set-Cookie` clears the cookie whatever the server does with the session).
pub(super) async fn logout(state: State, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Ok(p) = principal(&state, &headers).await {
        if let Err(e) = p.check_csrf(f.csrf.as_deref()) {
            return error_page(Some(&p), &e);
        }
        if let Some(id) = &p.session {
            state.sessions.end(id);
        }
    }
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, auth::clear_session_cookie()), (header::LOCATION, "/login".into())],
    )
        .into_response()
}

/// "30 days", or humantime's form for validities that are not whole days.
fn days(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s / 86_400 {
        n if s % 86_400 == 0 && n > 0 => format!("{n} day{}", if n == 1 { "" } else { "s" }),
        _ => humantime::format_duration(d).to_string(),
    }
}

fn ago(rfc: &str, now: u64) -> String {
    let Some(t) = api::parse_time(rfc).ok() else { return esc(rfc) };
    format!("{} s ago", now.saturating_sub(t))
}

fn license_rows(out: &mut String, l: &LicenseStatus, p: &Principal, now: u64) {
    let class = l.state.replace(' ', "-");
    let revoke = if l.revoked.is_none() {
        format!(
            "<form class=\"inline\" method=\"post\" action=\"/licenses/{}/revoke\" \
             onsubmit=\"return confirm('Revoke license {}? Its holders lose their seats.')\">{}\
             <button class=\"revoke\">Revoke</button></form>",
            l.id,
            l.id,
            csrf_field(p)
        )
    } else {
        String::new()
    };
    let _ = write!(
        out,
        "<tr class=\"license\" id=\"license-{id}\" data-license=\"{id}\"><td>{id}</td><td>{owner}</td><td>{ty}</td>\
         <td class=\"seats\">{used} / {seats}</td><td class=\"state {class}\">{state}</td><td>{expires}</td><td>{revoke}</td></tr>",
        id = l.id,
        owner = esc(&l.owner),
        ty = esc(&l.license_type),
        used = l.in_use,
        seats = l.seats,
        state = esc(&l.state),
        expires = esc(l.expires.as_deref().unwrap_or("never")),
    );
    for h in &l.holders {
        // Another node's holder: only that node knows its last heartbeat; say where it is.
        let last = match (&h.last_heartbeat, &h.node) {
            (Some(t), _) => format!("last heartbeat {}", ago(t, now)),
            (None, Some(node)) => format!("on node {}", esc(node)),
            (None, None) => "last heartbeat".to_owned(),
        };
        let _ = write!(
            out,
            "<tr class=\"holder\" data-lease=\"{lease}\" data-license=\"{id}\"><td></td>\
             <td colspan=\"2\">{who}{addr}<br>instance {inst}</td><td colspan=\"2\">since {since}<br>{last}</td>\
             <td>lease {lease}</td><td><form class=\"inline\" method=\"post\" action=\"/leases/{lease}/release\">{csrf}\
             <button class=\"release\">Release</button></form></td></tr>",
            lease = esc(&h.lease),
            id = l.id,
            who = h.who().map(|w| format!("<b class=\"who\">{}</b><br>", esc(&w))).unwrap_or_default(),
            addr = esc(&h.address),
            inst = esc(&h.instance[..12.min(h.instance.len())]),
            since = esc(&h.since),
            csrf = csrf_field(p),
        );
    }
    if l.more_holders > 0 {
        let _ = write!(
            out,
            "<tr class=\"holder more\"><td></td><td colspan=\"6\">… and {} more holders \
             (<code>lic-udp status --json</code> lists every one)</td></tr>",
            l.more_holders
        );
    }
}

fn table(status: &Status, p: &Principal) -> String {
    let now = crate::server::unix_now();
    let mut out = String::from(
        "<table id=\"licenses\"><thead><tr><th>ID</th><th>Owner</th><th>Type</th><th>Seats</th><th>Status</th>\
         <th>Expires</th><th></th></tr></thead><tbody>",
    );
    if status.licenses.is_empty() {
        out.push_str("<tr><td colspan=\"7\">No licenses yet. <a href=\"/issue\">Issue one.</a></td></tr>");
    }
    for l in &status.licenses {
        license_rows(&mut out, l, p, now);
    }
    let _ =
        write!(out, "</tbody></table><p id=\"updated\">Updated {}</p>", esc(&crate::status::rfc3339(now)));
    out
}

/// Holders the monitor lists per license; the rest are counted. A page that refreshes every 2 s
/// in several tabs must stay cheap at 100,000 leases, and nobody reads more rows than this.
const MONITOR_HOLDERS: usize = 100;

/// Refreshes the table every 2 s; a signed-out session goes back to the sign-in page.
const REFRESH_JS: &str = "<script>
setInterval(async () => {
  try {
    const r = await fetch('/monitor/table', {credentials: 'same-origin', cache: 'no-store'});
    if (r.status === 401) { location.href = '/login'; return; }
    if (r.ok) document.getElementById('live').innerHTML = await r.text();
  } catch (e) {}
}, 2000);
</script>";

pub(super) async fn monitor(state: State, headers: HeaderMap) -> Response {
    let p = match signed_in(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match api::status_for(&state, &p, Some(MONITOR_HOLDERS)).await {
        Ok(s) => {
            let body = format!("<h1>Licenses</h1><div id=\"live\">{}</div>{REFRESH_JS}", table(&s, &p));
            page("Monitor", Some(&p), &body).into_response()
        }
        Err(e) => error_page(Some(&p), &e),
    }
}

pub(super) async fn monitor_table(state: State, headers: HeaderMap) -> Response {
    let p = match principal(&state, &headers).await {
        Ok(p) if p.csrf.is_some() => p,
        Ok(_) | Err(_) => return Error::Unauthenticated.into_response(),
    };
    match api::status_for(&state, &p, Some(MONITOR_HOLDERS)).await {
        Ok(s) => ([(header::CACHE_CONTROL, "no-store")], Html(table(&s, &p))).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub(super) struct IssuePage {
    error: Option<String>,
}

pub(super) async fn issue_form(state: State, headers: HeaderMap, Query(q): Query<IssuePage>) -> Response {
    let p = match signed_in(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let types =
        state.store(|s| Ok(s.site().types.values().cloned().collect::<Vec<_>>())).await.unwrap_or_default();
    let mut options = String::new();
    for t in &types {
        let _ = write!(
            options,
            "<option value=\"{n}\"{sel}>{n} ({s} seat{plural}{v})</option>",
            n = esc(&t.name),
            s = t.seats,
            plural = if t.seats == 1 { "" } else { "s" },
            sel = if t.name == "team" { " selected" } else { "" },
            v = t.validity.map(|v| format!(", valid {}", days(v))).unwrap_or_default(),
        );
    }
    let err = q.error.map(|e| format!("<p class=\"error\">{}</p>", esc(&e))).unwrap_or_default();
    let once = p.session.as_deref().and_then(|id| state.sessions.new_form(id)).unwrap_or_default();
    let body = format!(
        "<h1>Issue a license</h1>{err}<form method=\"post\" action=\"/issue\">{csrf}\
         <input type=\"hidden\" name=\"form\" value=\"{once}\">\
         <label for=\"type\">Type</label><select id=\"type\" name=\"type\">{options}</select>\
         <label for=\"seats\">Seats (empty: the type's count)</label>\
         <input id=\"seats\" name=\"seats\" type=\"number\" min=\"1\" max=\"65535\">\
         <p><button id=\"issue\">Issue</button></p></form>",
        csrf = csrf_field(&p)
    );
    page("Issue", Some(&p), &body).into_response()
}

#[derive(Deserialize)]
pub(super) struct IssueForm {
    csrf: Option<String>,
    /// The form's single-use token.
    form: Option<String>,
    #[serde(rename = "type")]
    license_type: String,
    seats: Option<String>,
}

/// Issues, then redirects to a page that shows the serial once (POST, redirect, GET): a
/// reload shows the result page, not the form post again, and a form sent twice (a reload of
/// an old result, a double click) finds its single-use token spent and issues nothing.
pub(super) async fn issue(state: State, headers: HeaderMap, Form(f): Form<IssueForm>) -> Response {
    let p = match signed_in(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Err(e) = p.check_csrf(f.csrf.as_deref()) {
        return error_page(Some(&p), &e);
    }
    let seats = match f.seats.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<u16>() {
            Ok(n) if n >= 1 => Some(n),
            _ => return error_page(Some(&p), &Error::BadRequest(format!("seats `{s}` must be 1 to 65535"))),
        },
    };
    let (Some(session), Some(once)) = (p.session.clone(), f.form.clone()) else {
        return error_page(Some(&p), &Error::BadRequest("open the Issue page and send its form".into()));
    };
    if !state.sessions.use_form(&session, &once) {
        return error_page(
            Some(&p),
            &Error::Conflict(
                "this form was already sent (a reload or a second click), so nothing more was issued; \
                 the license it issued is on the monitor. Open Issue again for another"
                    .into(),
            ),
        );
    }
    match api::issue_for(&state, &p, IssueRequest { license_type: f.license_type, seats }).await {
        Ok(i) => match state.sessions.stash_result(&session, i) {
            Some(key) => Redirect::to(&format!("/issued/{key}")).into_response(),
            None => to_login(),
        },
        Err(e) => {
            // Nothing was issued: the same form may be fixed and sent again.
            state.sessions.return_form(&session, &once);
            error_page(Some(&p), &e)
        }
    }
}

/// The serial of an issue, shown once; afterwards the page says where the license is.
pub(super) async fn issued(state: State, headers: HeaderMap, Path(key): Path<String>) -> Response {
    let p = match signed_in(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(i) = p.session.as_deref().and_then(|id| state.sessions.take_result(id, &key)) else {
        let body = "<h1>Serial already shown</h1><p>A serial is shown only once, right after it is issued. \
                    The license is on the <a href=\"/monitor\">monitor</a>; if the serial was not written \
                    down, revoke that license and issue another.</p>";
        return (StatusCode::GONE, [(header::CACHE_CONTROL, "no-store")], page("Issued", Some(&p), body))
            .into_response();
    };
    let body = format!(
        "<h1>License {id} issued</h1><p>{ty}, {seats} seat{plural}, owned by {owner}.</p>\
         <p>The serial, shown <strong>only this once</strong> (the server keeps only keys derived from it):</p>\
         <p><span class=\"serial\" id=\"serial\">{serial}</span> \
         <button id=\"copy\" onclick=\"navigator.clipboard.writeText(document.getElementById('serial').textContent)\
         .then(()=>{{this.textContent='Copied'}})\">Copy</button></p>\
         <p>Users enter it with <code>lic-udp activate --serial {serial} --server HOST</code>.</p>\
         <p><a href=\"/monitor\">Back to the monitor</a></p>",
        id = i.id,
        ty = esc(&i.license_type),
        seats = i.seats,
        plural = if i.seats == 1 { "" } else { "s" },
        owner = esc(&p.user),
        serial = esc(&i.serial),
    );
    ([(header::CACHE_CONTROL, "no-store")], page("Issued", Some(&p), &body)).into_response()
}

/// Unknown paths: JSON under `/api/`, where scripts call, and a page everywhere else.
pub(super) async fn not_found(uri: axum::http::Uri) -> Response {
    let e = Error::NotFound("no such page or API route; see README.md, \"JSON API\"".into());
    if uri.path().starts_with("/api/") {
        return e.into_response();
    }
    let body = "<h1>No such page</h1><p><a href=\"/monitor\">Go to the monitor</a></p>";
    (StatusCode::NOT_FOUND, page("Not found", None, body)).into_response()
}

/// A button's form post: signed in, CSRF checked, then `act`; back to the monitor on success.
async fn form_action<T, Fut>(
    state: &Arc<Dashboard>,
    headers: &HeaderMap,
    csrf: Option<&str>,
    act: impl FnOnce(Principal) -> Fut,
) -> Response
where
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let p = match signed_in(state, headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Err(e) = p.check_csrf(csrf) {
        return error_page(Some(&p), &e);
    }
    match act(p.clone()).await {
        Ok(_) => Redirect::to("/monitor").into_response(),
        Err(e) => error_page(Some(&p), &e),
    }
}

pub(super) async fn release(
    state: State,
    headers: HeaderMap,
    Path(lease): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let st = state.0.clone();
    form_action(&state, &headers, f.csrf.as_deref(), |p| async move {
        api::release_for(&st, &p, api::lease_id(&lease)?).await
    })
    .await
}

pub(super) async fn revoke(
    state: State,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let st = state.0.clone();
    form_action(&state, &headers, f.csrf.as_deref(), |p| async move { api::revoke_for(&st, &p, id).await })
        .await
}

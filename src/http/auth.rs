//! Who is asking: a browser session (cookie `lu_session`, HttpOnly, SameSite=Strict, with a
//! CSRF token checked on every state change), an API token from `lic-udp token add`, or the
//! server's own local token from the data dir.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use rand::rngs::OsRng;
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::{Dashboard, Error};

pub const SESSION_COOKIE: &str = "lu_session";
/// The sign-in form's double-submit token, set before anyone is signed in.
pub const LOGIN_CSRF_COOKIE: &str = "lu_login_csrf";
/// The actor the audit log names for the local token.
pub const LOCAL_ACTOR: &str = "local-admin";

/// A session ends after this long without a request.
const IDLE: Duration = Duration::from_secs(8 * 60 * 60);
/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;
/// Unused issue forms a session keeps valid (tabs left open); the oldest goes first.
const MAX_FORMS: usize = 16;
/// Issued serials waiting to be shown once, per session.
const MAX_RESULTS: usize = 8;

pub fn random_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Clone, Debug)]
pub struct Principal {
    pub user: String,
    pub admin: bool,
    /// The session's CSRF token; `None` for bearer tokens, which no browser sends by itself.
    pub csrf: Option<String>,
    /// The session's id (its cookie), for the per-session form tokens; `None` for bearer tokens.
    pub session: Option<String>,
}

impl Principal {
    /// Refuses a state change from a session without the session's CSRF token.
    pub fn check_csrf(&self, sent: Option<&str>) -> Result<(), Error> {
        match (&self.csrf, sent) {
            (None, _) => Ok(()),
            (Some(want), Some(got)) if same(want, got) => Ok(()),
            _ => Err(Error::Forbidden(
                "the form's CSRF token is missing or stale; reload the page and try again".into(),
            )),
        }
    }

    pub fn may_see(&self, owner: &str) -> bool {
        self.admin || self.user == owner
    }
}

struct Session {
    user: String,
    csrf: String,
    last_used: Instant,
    /// Single-use tokens of the issue forms this session was shown: a reloaded or resent POST
    /// finds its token gone and issues nothing.
    forms: Vec<String>,
    /// Issue results not yet shown, by the key the redirect after the POST names.
    results: Vec<(String, super::api::Issued)>,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session and returns its cookie value. The account's admin flag is not kept:
    /// [`principal`] reads it from the store on every request, so a demotion or a removed
    /// account takes effect at once.
    pub fn start(&self, user: &str) -> String {
        let id = random_token();
        let Ok(mut map) = self.map.lock() else { return id };
        let now = Instant::now();
        map.retain(|_, s| now.duration_since(s.last_used) < IDLE);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                user: user.to_owned(),
                csrf: random_token(),
                last_used: now,
                forms: Vec::new(),
                results: Vec::new(),
            },
        );
        id
    }

    /// A fresh single-use token for an issue form shown to session `id`.
    pub fn new_form(&self, id: &str) -> Option<String> {
        let mut map = self.map.lock().ok()?;
        let s = map.get_mut(id)?;
        if s.forms.len() >= MAX_FORMS {
            s.forms.remove(0);
        }
        let token = random_token();
        s.forms.push(token.clone());
        Some(token)
    }

    /// Spends a form token: true once for each token [`new_form`](Self::new_form) gave out.
    pub fn use_form(&self, id: &str, token: &str) -> bool {
        let Ok(mut map) = self.map.lock() else { return false };
        let Some(s) = map.get_mut(id) else { return false };
        match s.forms.iter().position(|f| same(f, token)) {
            Some(i) => {
                s.forms.remove(i);
                true
            }
            None => false,
        }
    }

    /// Gives a spent form token back, after an issue that failed and changed nothing.
    pub fn return_form(&self, id: &str, token: &str) {
        if let Ok(mut map) = self.map.lock() {
            if let Some(s) = map.get_mut(id) {
                s.forms.push(token.to_owned());
            }
        }
    }

    /// Keeps an issue result for one showing; returns the key the redirect names.
    pub fn stash_result(&self, id: &str, issued: super::api::Issued) -> Option<String> {
        let mut map = self.map.lock().ok()?;
        let s = map.get_mut(id)?;
        if s.results.len() >= MAX_RESULTS {
            s.results.remove(0);
        }
        let key = random_token();
        s.results.push((key.clone(), issued));
        Some(key)
    }

    /// The result stashed under `key`, once.
    pub fn take_result(&self, id: &str, key: &str) -> Option<super::api::Issued> {
        let mut map = self.map.lock().ok()?;
        let s = map.get_mut(id)?;
        let i = s.results.iter().position(|(k, _)| same(k, key))?;
        Some(s.results.remove(i).1)
    }

    pub fn end(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }

    fn get(&self, id: &str) -> Option<Principal> {
        let mut map = self.map.lock().ok()?;
        let s = map.get_mut(id)?;
        let now = Instant::now();
        if now.duration_since(s.last_used) >= IDLE {
            map.remove(id);
            return None;
        }
        s.last_used = now;
        // `admin` is filled in by `principal` from the store.
        Some(Principal {
            user: s.user.clone(),
            admin: false,
            csrf: Some(s.csrf.clone()),
            session: Some(id.to_owned()),
        })
    }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Who sent the request, or [`Error::Unauthenticated`].
pub async fn principal(state: &std::sync::Arc<Dashboard>, headers: &HeaderMap) -> Result<Principal, Error> {
    if let Some(token) = bearer(headers) {
        if same(token, &state.local_token) {
            return Ok(Principal { user: LOCAL_ACTOR.into(), admin: true, csrf: None, session: None });
        }
        let token = token.to_owned();
        let found = state
            .store(move |s| {
                let Some(user) = s.token_user(&token)? else { return Ok(None) };
                let admin = s.is_admin(&user)?;
                Ok(Some((user, admin)))
            })
            .await;
        return match found {
            Ok(Some((user, admin))) => Ok(Principal { user, admin, csrf: None, session: None }),
            // No such token, or one of an account that is gone.
            Ok(None) => Err(Error::Unauthenticated),
            Err(e) => Err(e),
        };
    }
    let id = cookie(headers, SESSION_COOKIE).ok_or(Error::Unauthenticated)?;
    let mut p = state.sessions.get(id).ok_or(Error::Unauthenticated)?;
    // The account as it is now, not as it was at sign-in: one indexed read per request.
    let user = p.user.clone();
    match state.store(move |s| s.is_admin(&user)).await {
        Ok(admin) => {
            p.admin = admin;
            Ok(p)
        }
        // The account is gone (`NoSuchUser` maps to this): so is its session.
        Err(Error::Unauthenticated) => {
            state.sessions.end(id);
            Err(Error::Unauthenticated)
        }
        Err(e) => Err(e),
    }
}

/// `Set-Cookie` for a new session.
pub fn session_cookie(id: &str) -> String {
    format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict")
}

pub fn clear_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

pub fn login_csrf_cookie(token: &str) -> String {
    format!("{LOGIN_CSRF_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict")
}

/// The sign-in form's token matches its cookie.
pub fn login_csrf_ok(headers: &HeaderMap, sent: &str) -> bool {
    cookie(headers, LOGIN_CSRF_COOKIE).is_some_and(|c| !c.is_empty() && same(c, sent))
}

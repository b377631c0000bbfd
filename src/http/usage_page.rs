//! `/usage`: per license, seats in use over the last day and the last week against its seat
//! count, with denials marked: what `lic-udp report` says, as a picture an admin reads at a
//! glance. Server-rendered SVG, no script and nothing from a CDN.

use std::fmt::Write as _;

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::pages::{error_page, esc, page, signed_in};
use super::State;
use crate::store::AuditQuery;
use crate::usage::{timeline, Slice};

const W: f64 = 600.0;
const H: f64 = 90.0;

/// One chart: a step line of the slices' peaks, a dashed line at the seat count, a red tick
/// over each slice with denials.
fn chart(slices: &[Slice], seats: u16, label: &str) -> String {
    let top = f64::from(seats.max(1)).max(slices.iter().map(|s| s.peak).max().unwrap_or(0) as f64);
    let y = |v: f64| H - 4.0 - (v / top) * (H - 14.0);
    let dx = W / slices.len().max(1) as f64;
    let mut path = String::new();
    for (i, s) in slices.iter().enumerate() {
        let (x0, yy) = (i as f64 * dx, y(s.peak as f64));
        let _ = write!(path, "{}{x0:.1},{yy:.1} H{:.1} ", if i == 0 { "M" } else { "L" }, x0 + dx);
    }
    let mut ticks = String::new();
    for (i, s) in slices.iter().enumerate().filter(|(_, s)| s.denials > 0) {
        let x = i as f64 * dx + dx / 2.0;
        let _ = write!(
            ticks,
            "<line class=\"denied\" x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"8\"><title>{} denied</title></line>",
            s.denials
        );
    }
    let peak = slices.iter().map(|s| s.peak).max().unwrap_or(0);
    let denied: u64 = slices.iter().map(|s| s.denials).sum();
    format!(
        "<figure><figcaption>{label}: peak {peak} of {seats}, {denied} denied</figcaption>\
         <svg class=\"usage\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" \
         aria-label=\"{label}: peak {peak} of {seats} seats, {denied} denials\">\
         <line class=\"seats\" x1=\"0\" y1=\"{sy:.1}\" x2=\"{W}\" y2=\"{sy:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\
         <path class=\"held\" d=\"{path}\" fill=\"none\" stroke=\"#2a6\" stroke-width=\"2\"/>\
         <g stroke=\"#c33\" stroke-width=\"2\">{ticks}</g></svg></figure>",
        sy = y(f64::from(seats)),
    )
}

pub(super) async fn usage(state: State, headers: HeaderMap) -> Response {
    let p = match signed_in(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let now = crate::unix_now();
    let week = now.saturating_sub(7 * 86_400);
    let q = AuditQuery {
        limit: Some(u32::MAX),
        owner: (!p.admin).then(|| p.user.clone()),
        ..AuditQuery::default()
    };
    let read = state.store(move |s| Ok((s.licenses()?, s.audit(&q)?))).await;
    let (licenses, events) = match read {
        Ok(r) => r,
        Err(e) => return error_page(Some(&p), &e),
    };
    // A day in 15-minute slices, a week in hours.
    let day = timeline(&events, now.saturating_sub(86_400), now, 96);
    let wk = timeline(&events, week, now, 168);
    let mut body = String::from(
        "<h1>Usage</h1><p>Seats held (green) against the seat count (dashed); red marks \
        are denials. Figures: <code>lic-udp report</code>.</p>",
    );
    let visible: Vec<_> = licenses.into_iter().filter(|l| p.may_see(&l.owner)).collect();
    if visible.is_empty() {
        body.push_str("<p>No licenses yet.</p>");
    }
    for l in &visible {
        let empty = |n: usize| vec![Slice::default(); n];
        let _ = write!(
            body,
            "<section class=\"license-usage\" data-license=\"{id}\"><h2>License {id} ({ty}, {owner})</h2>{}{}</section>",
            chart(day.get(&l.id).map_or(&empty(96)[..], |v| &v[..]), l.seats, "last 24 hours"),
            chart(wk.get(&l.id).map_or(&empty(168)[..], |v| &v[..]), l.seats, "last 7 days"),
            id = l.id,
            ty = esc(&l.type_name),
            owner = esc(&l.owner),
        );
    }
    page("Usage", Some(&p), &body).into_response()
}

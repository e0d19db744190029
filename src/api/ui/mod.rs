//! The operators' dashboard at `/ui`: server-rendered HTML over the same controllers, store and
//! tokens as the API, readable without JavaScript (a small script only refreshes the live parts).
//!
//! **Auth.** A browser cannot send a bearer header, so the token is entered once on
//! `/ui/login` and kept in an `HttpOnly`, `SameSite=Strict` cookie scoped to `/ui`; every page
//! checks it against the configured tokens exactly as the API checks its header. Reading needs
//! `read`; the action buttons are shown to, and accepted from, `operate` tokens only. Actions are
//! form posts: `SameSite=Strict` keeps other sites' forms from carrying the cookie, and a post
//! whose `Origin` is another host is refused as well. After an action the browser is sent back
//! to the domain page (post, redirect, get) with the one-line message in a short-lived cookie.
//!
//! The dashboard's routes are not API routes: they are outside the route table (so outside
//! `openapi.yaml`) and answer HTML, never problem+json.

mod chart;
mod pages;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{Duration, Utc};
use serde::Deserialize;

use super::auth::Caller;
use super::body::{one_line, REASON_MAX};
use super::domains::actor_error;
use super::error::ApiError;
use super::Api;
use crate::config::Scope;
use crate::machine::Command;
use crate::model::Side;
use crate::store::Event;

const SESSION: &str = "mxguard_ui";
const FLASH: &str = "mxguard_flash";
/// The chart's default window and the longest one a page may ask for.
const HOURS_DEFAULT: u32 = 6;
const HOURS_MAX: u32 = 24 * 14;
/// Longest pin the form accepts (the API's limit is a year; a dashboard pin is for an outage).
const PIN_MAX_HOURS: u32 = 24 * 31;

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// The dashboard's routes, merged into the API's router.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/domains/{domain}", get(domain_page))
        .route("/ui/domains/{domain}/{action}", post(act))
        .route("/ui/assets/ui.css", get(css))
        .route("/ui/assets/ui.js", get(js))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The value of cookie `name`, hex-decoded (both cookies are hex, so no value needs quoting).
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| unhex(v))
        .and_then(|b| String::from_utf8(b).ok())
}

fn set_cookie(name: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
    let age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    let v = format!(
        "{name}={}; Path=/ui; HttpOnly; SameSite=Strict{age}",
        hex(value.as_bytes())
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Who the browser is, from its session cookie; `None` without one or with a token that is not
/// (or no longer) configured.
fn caller(api: &Api, headers: &HeaderMap) -> Option<Caller> {
    let token = cookie(headers, SESSION)?;
    api.tokens.authenticate_secret(&token).ok()
}

fn html(status: StatusCode, page: maud::Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page.into_string(),
    )
        .into_response()
}

/// The login page, 401: a page that needs a token and has none (or a wrong one).
fn needs_login(api: &Api, error: Option<&str>) -> Response {
    let no_tokens = api.app.config.tokens.is_empty();
    html(StatusCode::UNAUTHORIZED, pages::login(error, no_tokens))
}

async fn index(State(api): State<Api>, headers: HeaderMap) -> Response {
    let Some(who) = caller(&api, &headers) else {
        return needs_login(&api, None);
    };
    let now = Utc::now();
    let rows: Vec<_> = api
        .app
        .config
        .domains
        .iter()
        .filter_map(|cfg| {
            let handle = api.app.engine.domains.get(&cfg.name)?;
            Some((&**cfg, handle.latest()))
        })
        .collect();
    html(StatusCode::OK, pages::list(&who, &rows, now))
}

async fn login_page(State(api): State<Api>) -> Response {
    needs_login(&api, None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(api): State<Api>, form: Result<Form<LoginForm>, FormRejection>) -> Response {
    let Ok(Form(form)) = form else {
        return needs_login(&api, Some("send the token from the form"));
    };
    let token = form.token.trim();
    match api.tokens.authenticate_secret(token) {
        Ok(who) => {
            tracing::info!(token = %who.name, "dashboard login");
            let mut resp = Redirect::to("/ui").into_response();
            resp.headers_mut()
                .insert(header::SET_COOKIE, set_cookie(SESSION, token, None));
            resp
        }
        Err(e) => needs_login(&api, Some(&e.to_string())),
    }
}

async fn logout() -> Response {
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(SESSION, "", Some(0)));
    resp
}

#[derive(Deserialize)]
struct PageQuery {
    hours: Option<u32>,
}

/// Every event of the domain, oldest first (the chart needs the state its window opens with).
async fn timeline(api: &Api, cfg: &crate::config::DomainConfig) -> Result<Vec<Event>, ApiError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = api
            .app
            .store
            .events(&cfg.name, after, super::domains::EVENTS_MAX)
            .await
            .map_err(ApiError::internal)?;
        let full = page.len() as u32 == super::domains::EVENTS_MAX;
        after = page.last().map(|e| e.id);
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

async fn domain_page(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(domain): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let Some(who) = caller(&api, &headers) else {
        return needs_login(&api, None);
    };
    let Ok((cfg, handle)) = api.domain(&domain) else {
        return html(
            StatusCode::NOT_FOUND,
            pages::not_found(&who, &format!("{domain} is not a configured domain")),
        );
    };
    let hours = query
        .ok()
        .and_then(|Query(q)| q.hours)
        .unwrap_or(HOURS_DEFAULT)
        .clamp(1, HOURS_MAX);
    let events = match timeline(&api, cfg).await {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let now = Utc::now();
    let flash = cookie(&headers, FLASH);
    // A timeline younger than the window is drawn from its first event, not squeezed into the
    // window's last minutes.
    let from = (now - Duration::hours(i64::from(hours)))
        .max(events.first().map_or(now, |e| e.at) - Duration::seconds(10));
    let page = pages::domain(&pages::DomainPage {
        who: &who,
        cfg,
        status: &handle.latest(),
        events: &events,
        from,
        now,
        hours,
        flash: flash.as_deref(),
    });
    let mut resp = html(StatusCode::OK, page);
    if flash.is_some() {
        resp.headers_mut()
            .insert(header::SET_COOKIE, set_cookie(FLASH, "", Some(0)));
    }
    resp
}

#[derive(Deserialize)]
struct ActionForm {
    reason: Option<String>,
    side: Option<Side>,
    hours: Option<u32>,
}

/// Whether a form post comes from this dashboard: no `Origin` (old browsers, curl) or one whose
/// host is the `Host` the post was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    host.is_some() && origin_host == host
}

async fn act(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((domain, action)): Path<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let Some(who) = caller(&api, &headers) else {
        return needs_login(&api, None);
    };
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            pages::not_found(&who, "refused: the form was posted from another site"),
        );
    }
    if who.scope < Scope::Operate {
        return html(
            StatusCode::FORBIDDEN,
            pages::not_found(
                &who,
                &format!(
                    "token {:?} may read, not operate: actions need a token with the operate scope",
                    who.name
                ),
            ),
        );
    }
    let back = format!("/ui/domains/{}", urlencode(&domain));
    let outcome = run_action(&api, &who, &domain, &action, form.ok().map(|Form(f)| f)).await;
    let flash = match outcome {
        Ok(message) => format!("ok {message}"),
        Err(e) => format!("error {e}"),
    };
    let mut resp = Redirect::to(&back).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(FLASH, &flash, Some(60)));
    resp
}

/// Percent-encodes a path segment (domain names are ASCII letters, digits, dots and hyphens;
/// anything else is encoded rather than trusted).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs a dashboard action through the domain's controller, as the API's commands do; the
/// message is the API's one line.
async fn run_action(
    api: &Api,
    who: &Caller,
    domain: &str,
    action: &str,
    form: Option<ActionForm>,
) -> Result<String, ApiError> {
    let (cfg, handle) = api.domain(domain)?;
    let form = form.ok_or_else(|| ApiError::Validation("the form was not sent".into()))?;
    let reason = form.reason.unwrap_or_default();
    one_line("reason", &reason, REASON_MAX)?;
    let name = cfg.name.without_dot();
    let by = format!("by {}: {reason}", who.name);
    let (command, message) = match action {
        "failover" => (
            Command::Failover,
            format!("{name} failing over to backup {by}"),
        ),
        "failback" => (
            Command::Failback,
            format!("{name} failing back to primary {by}"),
        ),
        "unpin" => (Command::Unpin, format!("{name} unpinned {by}")),
        "pause" => (Command::Pause, format!("{name} automation paused {by}")),
        "resume" => (Command::Resume, format!("{name} automation resumed {by}")),
        "approve" => (Command::Approve, format!("{name} failback approved {by}")),
        "pin" => {
            let side = form
                .side
                .ok_or_else(|| ApiError::Validation("pin: choose the side".into()))?;
            let hours = form.hours.unwrap_or(0);
            if !(1..=PIN_MAX_HOURS).contains(&hours) {
                return Err(ApiError::Validation(format!(
                    "pin: hours must be between 1 and {PIN_MAX_HOURS}"
                )));
            }
            let until = Utc::now() + Duration::hours(i64::from(hours));
            (
                Command::Pin { side, until },
                format!(
                    "{name} pinned to {side} until {} {by}",
                    super::domains::rfc3339(until)
                ),
            )
        }
        other => {
            return Err(ApiError::NoRoute(format!(
                "/ui/domains/{name}/{other}: not an action"
            )))
        }
    };
    handle
        .command(command, &who.name, &reason)
        .await
        .map_err(actor_error)?;
    tracing::info!(domain = %name, action, token = %who.name, "dashboard action");
    Ok(message)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip_any_token_and_ignore_others() {
        let token = "a;b=c \"d\"";
        let set = set_cookie(SESSION, token, None);
        let pair = set
            .to_str()
            .expect("ascii")
            .split(';')
            .next()
            .expect("pair");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {pair}; x=zz")).expect("header"),
        );
        assert_eq!(cookie(&headers, SESSION).as_deref(), Some(token));
        assert_eq!(cookie(&headers, "x"), None, "not hex: ignored");
        assert_eq!(cookie(&headers, FLASH), None);
    }

    #[test]
    fn a_post_from_another_site_is_not_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8053"));
        assert!(same_origin(&h), "no Origin header");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8053"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(urlencode("example.org"), "example.org");
        assert_eq!(urlencode("a/b?c"), "a%2Fb%3Fc");
    }
}

//! Routing, authentication, faults and the endpoint handlers of the fake.

use axum::body::{to_bytes, Body};
use axum::extract::State as AxState;
use axum::http::{Method, Request};
use axum::response::Response;
use serde_json::{json, Value};

use super::batch;
use super::query::Query;
use super::records::{self, ApiError, BatchIn, PatchIn, RecordIn};
use super::rules::{self, Rules};
use super::{
    ceil_secs, fail, ok, rate_limited, rate_limited_by, set_limit_headers, Admission, Fault, Owner,
    Perms, RateLimitPolicy, Route, Shared, State,
};

const PREFIX: &str = "/client/v4/";

fn no_route() -> ApiError {
    ApiError::new(404, 7000, "No route for that URI")
}

fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn bad_id(path: &str) -> ApiError {
    ApiError::unroutable(path)
}

fn route_of(method: &Method, parts: &[&str]) -> Route {
    match (method, parts) {
        (_, ["user", "tokens", "verify"] | ["accounts", _, "tokens", "verify"]) => Route::Verify,
        (_, ["zones"]) => Route::Zones,
        (&Method::GET, ["zones", _, "dns_records"]) => Route::List,
        (_, ["zones", _, "dns_records", "batch"]) => Route::Batch,
        _ => Route::Record,
    }
}

pub async fn handle(AxState(shared): AxState<Shared>, req: Request<Body>) -> Response {
    let mut response = handle_inner(&shared, req).await;
    // Every answer says what is left of the owner's budget; one that has not said it yet (no
    // token to count against, or no limit enforced) shows a fresh budget.
    if !response.headers().contains_key("ratelimit") {
        let policy = RateLimitPolicy::CLOUDFLARE;
        set_limit_headers(&mut response, policy, policy.quota, policy.window.as_secs());
    }
    response
}

async fn handle_inner(shared: &Shared, req: Request<Body>) -> Response {
    let (head, body) = req.into_parts();
    let Some(rest) = head.uri.path().strip_prefix(PREFIX) else {
        return fail(&no_route());
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let route = route_of(&head.method, &parts);
    let (owner, token) = match authenticate(shared, head.headers.get("authorization"), route) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    // Every authenticated request is recorded, and counted against its owner's global rate
    // limit before anything else happens to it.
    let (admission, policy) = {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        let query = head
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        s.requests
            .push(format!("{} {}{query}", head.method, head.uri.path()));
        (s.admit(&owner, std::time::Instant::now()), s.rate_limit)
    };
    let mut response = match (admission, policy) {
        (Admission::Refused { retry_after }, Some(policy)) => {
            return rate_limited_by(policy, ceil_secs(retry_after));
        }
        _ => answer(shared, &head, &parts, route, &token, &owner, body).await,
    };
    // An injected 429 keeps the empty budget it says it has.
    if let (Admission::Admitted { remaining, reset }, Some(policy)) = (admission, policy) {
        if !response.headers().contains_key("ratelimit") {
            set_limit_headers(&mut response, policy, remaining, ceil_secs(reset));
        }
    }
    response
}

async fn answer(
    shared: &Shared,
    head: &axum::http::request::Parts,
    parts: &[&str],
    route: Route,
    token: &Perms,
    owner: &Owner,
    body: Body,
) -> Response {
    let fault = shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take_fault(route);
    let mut fail_batch = None;
    match fault {
        Some(Fault::RateLimit { retry_after }) => return rate_limited(retry_after),
        Some(Fault::Status(code)) => {
            return fail(&ApiError::new(
                code,
                10_000 + i64::from(code),
                "Internal Server Error",
            ))
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::FailBatch(e)) => fail_batch = Some(e),
        Some(Fault::Bare(code)) => {
            let status = axum::http::StatusCode::from_u16(code)
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            return axum::response::IntoResponse::into_response((status, "Method Not Allowed\n"));
        }
        Some(Fault::LockTimeout) => {
            return fail(&ApiError::new(
                409,
                1000,
                "Lock timeout: another request to this zone is still being processed",
            ))
        }
        Some(Fault::ShouldRetry { status, retry }) => {
            let mut r = fail(&ApiError::new(status, 10_000 + i64::from(status), "Failed"));
            r.headers_mut().insert(
                "x-should-retry",
                axum::http::HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
            return r;
        }
        None => {}
    }
    let Ok(body) = to_bytes(body, 4 << 20).await else {
        return fail(&ApiError::new(413, 9207, "Request body too large."));
    };
    let query: Vec<(String, String)> = url_pairs(head.uri.query().unwrap_or(""));
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    let result = dispatch(
        &mut s,
        token,
        owner,
        &head.method,
        parts,
        &query,
        &body,
        fail_batch,
    );
    match result {
        Ok((result, info)) => {
            if head.method != Method::GET {
                s.writes += 1;
            }
            ok(result, info)
        }
        Err(e) => fail(&e),
    }
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

/// `Authorization: Bearer <token>`; malformed → 400 / 6003 (+6111); unknown or missing →
/// 403 / 10000 (401 / 1000 "Invalid API Token" on the verify endpoint). The token and what
/// it may do, and its owner.
fn authenticate(
    shared: &Shared,
    header: Option<&axum::http::HeaderValue>,
    route: Route,
) -> Result<(Owner, Perms), ApiError> {
    let unknown = || match route {
        Route::Verify => ApiError::new(401, 1000, "Invalid API Token"),
        _ => ApiError::new(403, 10000, "Authentication error"),
    };
    let Some(value) = header else {
        return Err(unknown());
    };
    let malformed = || ApiError {
        chain: Some((6111, "Invalid format for Authorization header".into())),
        ..ApiError::new(400, 6003, "Invalid request headers")
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let token = value.strip_prefix("Bearer ").ok_or_else(malformed)?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed());
    }
    let s = shared.lock().unwrap_or_else(|p| p.into_inner());
    let perms = s.tokens.get(token).copied().ok_or_else(unknown)?;
    Ok((s.owner_of(token), perms))
}

type Answer = Result<(Value, Option<Value>), ApiError>;

fn invalid_token() -> ApiError {
    ApiError::new(401, 1000, "Invalid API Token")
}

fn verified(perms: &Perms) -> Answer {
    let status = if perms.active { "active" } else { "expired" };
    Ok((
        json!({"id": "0123456789abcdef0123456789abcdef", "status": status}),
        None,
    ))
}

fn forbidden() -> ApiError {
    ApiError::new(403, 10000, "Authentication error")
}

#[allow(clippy::too_many_arguments)] // one request's parts, each used by some endpoint
fn dispatch(
    s: &mut State,
    perms: &Perms,
    owner: &Owner,
    method: &Method,
    parts: &[&str],
    query: &[(String, String)],
    body: &[u8],
    fail_batch: Option<ApiError>,
) -> Answer {
    let path = format!("/{}", parts.join("/"));
    match (method, parts) {
        // An account-owned token is not a user's: the user endpoint refuses it (§12).
        (&Method::GET, ["user", "tokens", "verify"]) => match owner {
            Owner::User(_) => verified(perms),
            Owner::Account(_) => Err(invalid_token()),
        },
        (_, ["accounts", account, "tokens", "verify"]) if !is_id(account) => Err(bad_id(&path)),
        // Only the account's own tokens verify here; a user's token or another account's is
        // "Invalid API Token" (the fake's choice: the sources do not say).
        (&Method::GET, ["accounts", account, "tokens", "verify"]) => match owner {
            Owner::Account(id) if id.eq_ignore_ascii_case(account) => verified(perms),
            _ => Err(invalid_token()),
        },
        (&Method::GET, ["zones"]) => {
            if !perms.zone_read {
                return Err(ApiError::new(
                    403,
                    9109,
                    "Unauthorized to access requested resource",
                ));
            }
            let q = Query::parse(
                query,
                &["name", "status", "page", "per_page"],
                s.max_per_page,
            )?;
            let want = q
                .get("name")
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            let zones: Vec<Value> = s
                .zones
                .iter()
                .filter(|z| want.as_ref().is_none_or(|n| &z.name == n))
                .map(|z| json!({"id": z.id, "name": z.name, "status": "active", "paused": false, "type": "full",
                                "plan": {"name": "Free Website"}, "name_servers": ["ada.ns.cloudflare.com"],
                                "account": {"id": "0123456789abcdef0123456789abcdef", "name": "test"}}))
                .collect();
            Ok(q.page(zones))
        }
        (_, ["zones", zone_id, "dns_records", ..]) if !is_id(zone_id) => Err(bad_id(&path)),
        (&Method::GET, ["zones", zone_id, "dns_records"]) => {
            if !(perms.dns_read || perms.dns_write) {
                return Err(forbidden());
            }
            let q = Query::parse(
                query,
                &[
                    "type",
                    "name.exact",
                    "page",
                    "per_page",
                    "match",
                    "order",
                    "direction",
                ],
                s.max_per_page,
            )?;
            let zone = s.zone_mut(zone_id)?;
            let name = q
                .get("name.exact")
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            let rtype = q.get("type");
            let found: Vec<Value> = zone
                .records
                .iter()
                .filter(|r| {
                    name.as_ref().is_none_or(|n| &r.name == n)
                        && rtype.is_none_or(|t| r.rtype == *t)
                })
                .map(records::Record::to_json)
                .collect();
            Ok(q.page(found))
        }
        (&Method::POST, ["zones", zone_id, "dns_records", "batch"]) => {
            if s.batch_disabled {
                return Err(no_route());
            }
            if !perms.dns_write {
                return Err(forbidden());
            }
            let batch: BatchIn = records::parse(body)?;
            batch::apply(s, zone_id, batch, fail_batch)
        }
        (_, ["zones", _, "dns_records", ..]) if !perms.dns_write && method != Method::GET => {
            Err(forbidden())
        }
        (&Method::POST, ["zones", zone_id, "dns_records"]) => {
            let input: RecordIn = records::parse(body)?;
            let min_ttl = s.min_ttl;
            let id = s.new_id();
            let zone = s.zone_mut(zone_id)?;
            let rules = Rules {
                zone: &zone.name,
                min_ttl,
            };
            let r = rules.record(id, input.fields())?;
            rules::refuse_identical(&zone.records, &r)?;
            zone.records.push(r.clone());
            Ok((r.to_json(), None))
        }
        (_, ["zones", zone_id, "dns_records", id]) => {
            if !is_id(id) {
                return Err(bad_id(&path));
            }
            let min_ttl = s.min_ttl;
            let zone = s.zone_mut(zone_id)?;
            let i = rules::find(&zone.records, id)?;
            let rules = Rules {
                zone: &zone.name,
                min_ttl,
            };
            let new = match *method {
                Method::GET => return Ok((zone.records[i].to_json(), None)),
                Method::DELETE => {
                    zone.records.remove(i);
                    return Ok((json!({"id": id}), None));
                }
                Method::PATCH => {
                    rules::patched(&rules, &zone.records[i], records::parse::<PatchIn>(body)?)?
                }
                Method::PUT => {
                    let p: RecordIn = records::parse(body)?;
                    rules.record(id.to_string(), p.fields())?
                }
                _ => return Err(no_route()),
            };
            rules::refuse_identical(&zone.records, &new)?;
            zone.records[i] = new.clone();
            Ok((new.to_json(), None))
        }
        _ => Err(no_route()),
    }
}

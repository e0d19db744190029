//! Liveness and readiness.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::PROBLEM_BASE;
use super::{Api, OPENAPI};
use crate::access::watch::failures_text;

/// A store that does not answer within this is not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The process is up and serving HTTP.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready when the store answers a round trip and no provider fails its access check (a check
/// not run yet does not count: start never waits for it).
pub async fn readyz(State(api): State<Api>) -> Response {
    let store = match api.app.store.kind() {
        crate::config::StoreKind::Sqlite => "sqlite",
        crate::config::StoreKind::Postgres => "postgres",
    };
    let role = api.app.engine.leadership.report();
    match tokio::time::timeout(READY_TIMEOUT, api.app.store.ping()).await {
        // A follower is ready: it probes, stores its vantage's verdicts and serves reads.
        Ok(Ok(())) => {
            let failing = api.app.providers.access().failing();
            if !failing.is_empty() {
                return provider_access_problem(&failing, store, &role);
            }
            (
                StatusCode::OK,
                Json(json!({
                    "status": "ready",
                    "store": store,
                    "role": role.role,
                    "vantage": role.vantage,
                    "epoch": role.epoch,
                    "leader": role.leader,
                    "leader_url": role.leader_url,
                })),
            )
                .into_response()
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {READY_TIMEOUT:?}"),
            };
            tracing::warn!(error = %why, "readiness check: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "status": "unavailable", "store": store, "reason": "store unreachable", "role": role.role, "vantage": role.vantage }),
                ),
            )
                .into_response()
        }
    }
}

/// 503 `provider-access`: which provider fails for which zone, and what is missing.
fn provider_access_problem(
    failing: &[mxguard_core::AccessReport],
    store: &str,
    role: &crate::lease::RoleReport,
) -> Response {
    let detail = failing
        .iter()
        .map(|r| {
            format!(
                "provider {} ({}), zone {}: {}",
                r.provider,
                r.kind,
                r.zone,
                failures_text(r)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let providers: Vec<_> = failing
        .iter()
        .map(|r| {
            json!({
                "provider": r.provider,
                "kind": r.kind,
                "zone": r.zone,
                "failed": r.failures().collect::<Vec<_>>(),
            })
        })
        .collect();
    let body = json!({
        "type": format!("{PROBLEM_BASE}provider-access"),
        "title": "A DNS provider's credentials cannot do what mxguard needs",
        "status": 503,
        "detail": detail,
        "providers": providers,
        "store": store,
        "role": role.role,
        "vantage": role.vantage,
    });
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}

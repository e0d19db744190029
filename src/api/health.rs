//! Liveness and readiness.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::{Api, OPENAPI};

/// A store that does not answer within this is not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The process is up and serving HTTP.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready when the store answers a round trip.
pub async fn readyz(State(api): State<Api>) -> impl IntoResponse {
    let store = match api.app.store.kind() {
        crate::config::StoreKind::Sqlite => "sqlite",
        crate::config::StoreKind::Postgres => "postgres",
    };
    let role = api.app.engine.leadership.report();
    match tokio::time::timeout(READY_TIMEOUT, api.app.store.ping()).await {
        // A follower is ready: it probes, stores its vantage's verdicts and serves reads.
        Ok(Ok(())) => (
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
        ),
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
        }
    }
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}

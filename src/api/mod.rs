//! The HTTP API. `router` is callable from tests without a socket.

mod health;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::store::Store;

/// The OpenAPI document, served at `/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub engine: crate::engine::Engine,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.yaml", get(health::openapi))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

//! `Idempotency-Key` on mutations. Keys are scoped by token name. The first successful (2xx)
//! response is stored with the request's fingerprint; a retry with the same key and the same
//! request gets that response again (status and body, plus `Idempotent-Replayed: true`) and
//! changes nothing; the same key with a different request is a 422. Refusals are not stored:
//! they changed nothing, so answering a retry afresh is safe. A retry that arrives while the
//! first is still being answered gets a 409.

use std::future::Future;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::Value;

use super::auth::Caller;
use super::body::Mutation;
use super::error::ApiError;
use super::Api;
use crate::store::IdempotencyRecord;

/// A mutation's answer, before it is stored for replay.
pub struct Done {
    pub status: StatusCode,
    pub body: Value,
}

impl Done {
    pub fn ok(body: Value) -> Done {
        Done {
            status: StatusCode::OK,
            body,
        }
    }
}

/// Removes the key from the in-flight set however the request ends.
struct InFlight<'a> {
    api: &'a Api,
    id: (String, String),
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.api.in_flight.lock() {
            set.remove(&self.id);
        }
    }
}

fn respond(done: Done, replayed: bool) -> Response {
    let mut resp = (done.status, Json(done.body)).into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

impl Api {
    /// Runs `work` once per (caller, Idempotency-Key); without a key, every time.
    pub async fn once<T, F, Fut>(&self, caller: &Caller, m: &Mutation<T>, work: F) -> Response
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Done, ApiError>>,
    {
        let Some(key) = &m.key else {
            return work()
                .await
                .map_or_else(IntoResponse::into_response, |d| respond(d, false));
        };
        let id = (caller.name.clone(), key.clone());
        let claimed = match self.in_flight.lock() {
            Ok(mut set) => set.insert(id.clone()),
            Err(_) => return ApiError::internal("idempotency lock poisoned").into_response(),
        };
        if !claimed {
            return ApiError::IdempotencyInProgress(format!(
                "a request with Idempotency-Key {key:?} is still being answered; retry shortly"
            ))
            .into_response();
        }
        let _guard = InFlight { api: self, id };
        match self.run_keyed(caller, key, m, work).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }

    async fn run_keyed<T, F, Fut>(
        &self,
        caller: &Caller,
        key: &str,
        m: &Mutation<T>,
        work: F,
    ) -> Result<Response, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Done, ApiError>>,
    {
        let store = &self.app.store;
        if let Some(rec) = store
            .idempotency_get(&caller.name, key)
            .await
            .map_err(ApiError::internal)?
        {
            if rec.request_hash != m.fingerprint {
                return Err(ApiError::IdempotencyMismatch(format!(
                    "Idempotency-Key {key:?} was first used for a different request; use a new key"
                )));
            }
            let status = StatusCode::from_u16(rec.status).map_err(ApiError::internal)?;
            return Ok(respond(
                Done {
                    status,
                    body: rec.body,
                },
                true,
            ));
        }
        let done = work().await?;
        if done.status.is_success() {
            let rec = IdempotencyRecord {
                scope: caller.name.clone(),
                key: key.to_string(),
                request_hash: m.fingerprint.clone(),
                status: done.status.as_u16(),
                body: done.body.clone(),
                created_at: Utc::now(),
            };
            if let Err(e) = store.idempotency_put(&rec).await {
                // The change is made; only its replay is lost. Say so, but answer.
                tracing::error!(error = %e, token = %caller.name, "idempotency record not stored");
            }
        }
        Ok(respond(done, false))
    }
}

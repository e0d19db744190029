//! `Idempotency-Key` on mutations. Keys are scoped by token name. A keyed request first claims
//! its key in the store (an in-flight row with the request's fingerprint), then does the work,
//! then stores its answer in that row when it is a success (2xx). A retry with the same key
//! and the same request gets that answer again (status and body, plus `Idempotent-Replayed:
//! true`) and changes nothing; the same key with a different request is a 422. A retry that
//! arrives while the first is still being answered — on this instance or another one on the
//! same PostgreSQL — waits for the answer and replays it, or gets a 409 if it does not come
//! within [`WAIT`]. Refusals are not stored (the claim is deleted): they changed nothing, so
//! answering a retry afresh is safe. A claim left unanswered by a crash is taken over after
//! [`ABANDONED`], so a key is never stuck.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::Value;

use super::auth::Caller;
use super::body::Mutation;
use super::error::ApiError;
use super::Api;
use crate::store::{ClaimOutcome, IdempotencyClaim, IdempotentAnswer, Store};

/// How long a retry waits for the first request's answer before it gets a 409. Commands answer
/// in well under this; a revert waits for its change, which a slow provider may hold longer.
pub const WAIT: Duration = Duration::from_secs(30);

/// An unanswered claim this old was abandoned (its instance crashed mid-request, or the request
/// was cut short: its client went away, or `[server] request_timeout` passed): the key may be
/// claimed again. Far longer than a request takes, so a live request is not run twice; with a
/// `request_timeout` longer than half of this, twice that timeout is used instead (no request
/// outlives its timeout; twice leaves room for instances whose clocks disagree).
pub const ABANDONED: Duration = Duration::from_secs(300);

/// The first pause between two looks at a claim in flight; it doubles up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(500);

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

/// Marks a key whose work runs in this process, however the request ends: a retry here never
/// takes over this process's own claim, even one older than [`ABANDONED`].
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
        match self.run_keyed(caller, key, m, work).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }

    /// Claims the key and runs `work`, or replays the answer of the request that claimed it
    /// first, waiting for it up to [`WAIT`] while it is in flight.
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
        let id = (caller.name.clone(), key.to_string());
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut pause = POLL_FIRST;
        loop {
            let held = if self.runs_here(&id)? {
                store
                    .idempotency_get(&caller.name, key)
                    .await
                    .map_err(ApiError::internal)?
            } else {
                let now = Utc::now();
                let claim = IdempotencyClaim {
                    scope: caller.name.clone(),
                    key: key.to_string(),
                    request_hash: m.fingerprint.clone(),
                    at: now,
                    stale_before: now
                        - chrono::Duration::from_std(self.abandoned_after()).unwrap_or_default(),
                };
                match store
                    .idempotency_claim(&claim)
                    .await
                    .map_err(ApiError::internal)?
                {
                    ClaimOutcome::Claimed => return self.run_claimed(claim, id, work).await,
                    ClaimOutcome::Held(rec) => Some(rec),
                }
            };
            if let Some(rec) = held {
                if rec.request_hash != m.fingerprint {
                    return Err(ApiError::IdempotencyMismatch(format!(
                        "Idempotency-Key {key:?} was first used for a different request; use a new key"
                    )));
                }
                if let Some(answer) = rec.answer {
                    let status = StatusCode::from_u16(answer.status).map_err(ApiError::internal)?;
                    return Ok(respond(
                        Done {
                            status,
                            body: answer.body,
                        },
                        true,
                    ));
                }
            }
            // In flight (or just released by a refusal: the next look claims it afresh).
            if tokio::time::Instant::now() + pause > deadline {
                return Err(ApiError::IdempotencyInProgress(format!(
                    "a request with Idempotency-Key {key:?} is still being answered; retry shortly"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// How old an unanswered claim is before it counts as abandoned ([`ABANDONED`]).
    fn abandoned_after(&self) -> Duration {
        ABANDONED.max(self.app.config.server.request_timeout.saturating_mul(2))
    }

    /// Whether the key's work runs in this process now.
    fn runs_here(&self, id: &(String, String)) -> Result<bool, ApiError> {
        self.in_flight
            .lock()
            .map(|set| set.contains(id))
            .map_err(|_| ApiError::internal("idempotency lock poisoned"))
    }

    /// Runs `work` under `claim`: a success's answer is stored for replay, anything else
    /// releases the claim.
    async fn run_claimed<F, Fut>(
        &self,
        claim: IdempotencyClaim,
        id: (String, String),
        work: F,
    ) -> Result<Response, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Done, ApiError>>,
    {
        match self.in_flight.lock() {
            Ok(mut set) => set.insert(id.clone()),
            Err(_) => return Err(ApiError::internal("idempotency lock poisoned")),
        };
        let _guard = InFlight { api: self, id };
        // If this request is cut short during the work (its client went away, or its
        // request_timeout passed), the claim stays in flight: whether the work happened is
        // unknown, so retries wait (then get a 409), and once it counts as abandoned one runs
        // it again.
        let done = work().await;
        let store = self.app.store.clone();
        match &done {
            Ok(d) if d.status.is_success() => {
                let answer = IdempotentAnswer {
                    status: d.status.as_u16(),
                    body: d.body.clone(),
                };
                settle(store, claim, Some(answer)).await;
            }
            _ => settle(store, claim, None).await,
        }
        done.map(|d| respond(d, false))
    }
}

/// Stores `answer` in the claim's row, or (`None`) deletes the claim. On a task of its own:
/// the work is done, and a request cut short now must not leave its answer unwritten.
async fn settle(store: Arc<dyn Store>, claim: IdempotencyClaim, answer: Option<IdempotentAnswer>) {
    let written = tokio::spawn(async move {
        match answer {
            Some(answer) => match store.idempotency_answer(&claim, &answer).await {
                Ok(true) => {}
                // The change is made; only its replay is lost. Say so, but answer.
                Ok(false) => tracing::warn!(
                    token = %claim.scope,
                    "idempotency key was taken over or pruned before its answer was stored; a retry runs afresh"
                ),
                Err(e) => {
                    tracing::error!(error = %e, token = %claim.scope, "idempotency answer not stored")
                }
            },
            None => {
                if let Err(e) = store.idempotency_release(&claim).await {
                    // Retries wait (then get a 409) until the claim counts as abandoned.
                    tracing::warn!(error = %e, token = %claim.scope, "idempotency claim not released");
                }
            }
        }
    });
    if let Err(e) = written.await {
        tracing::error!(error = %e, "storing an idempotency answer failed");
    }
}

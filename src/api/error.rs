//! One error type for the API, rendered as `application/problem+json` (RFC 9457) with a stable
//! `type` URI per kind. Internal errors are logged and answered with a bare 500: nothing about
//! them leaks to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Prefix of every problem `type`.
pub const PROBLEM_BASE: &str = "https://mxguard.dev/problems/";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Status 401. `no_tokens`: the server has no token configured at all; `invalid`: a token
    /// was presented and is not one of the configured ones.
    #[error("{detail}")]
    Unauthorized {
        detail: String,
        no_tokens: bool,
        invalid: bool,
    },
    /// 403: the token is valid but lacks the scope.
    #[error("{0}")]
    Forbidden(String),
    /// 404 for a domain that is not configured.
    #[error("{0}")]
    UnknownDomain(String),
    /// 404 for a snapshot id that does not exist.
    #[error("{0}")]
    UnknownSnapshot(String),
    /// 404 for an incident id that is not one of the domain's.
    #[error("{0}")]
    UnknownIncident(String),
    /// 404 for a path that is not a route.
    #[error("no route {0}")]
    NoRoute(String),
    /// 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 400: malformed JSON, bad query parameter, bad header.
    #[error("{0}")]
    BadRequest(String),
    /// 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid (missing reason, unknown field, pin in the past…).
    #[error("{0}")]
    Validation(String),
    /// 422: an `Idempotency-Key` reused with a different request.
    #[error("{0}")]
    IdempotencyMismatch(String),
    /// 409: a request with the same `Idempotency-Key` is still being answered.
    #[error("{0}")]
    IdempotencyInProgress(String),
    /// 409: refused by the state machine or by the revert safety checks; nothing changed.
    #[error("{0}")]
    Refused(String),
    /// 502: the DNS provider failed or could not be read.
    #[error("{0}")]
    Provider(String),
    /// 503: the domain's controller is not running.
    #[error("{0}")]
    Unavailable(String),
    /// 503: this instance is a follower; mutations go to the leader (named in the detail).
    #[error("{0}")]
    NotLeader(String),
    /// 503: the request was not answered within `[server] request_timeout`.
    #[error("{0}")]
    Timeout(String),
    /// 429: the token has `[server] expensive_per_token` requests reading the provider already.
    #[error("{0}")]
    TooManyRequests(String),
    /// 500: logged, never shown.
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(e.to_string())
    }

    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            UnknownDomain(_) | UnknownSnapshot(_) | UnknownIncident(_) | NoRoute(_) => {
                StatusCode::NOT_FOUND
            }
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BadRequest(_) => StatusCode::BAD_REQUEST,
            PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Validation(_) | IdempotencyMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            IdempotencyInProgress(_) | Refused(_) => StatusCode::CONFLICT,
            Provider(_) => StatusCode::BAD_GATEWAY,
            Unavailable(_) | NotLeader(_) | Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable slug of the problem `type` (documented in `openapi.yaml`).
    pub fn slug(&self) -> &'static str {
        use ApiError::*;
        match self {
            Unauthorized {
                no_tokens: true, ..
            } => "no-tokens-configured",
            Unauthorized { .. } => "unauthorized",
            Forbidden(_) => "forbidden",
            UnknownDomain(_) => "unknown-domain",
            UnknownSnapshot(_) => "unknown-snapshot",
            UnknownIncident(_) => "unknown-incident",
            NoRoute(_) => "not-found",
            MethodNotAllowed(_) => "method-not-allowed",
            BadRequest(_) => "bad-request",
            PayloadTooLarge(_) => "payload-too-large",
            UnsupportedMediaType(_) => "unsupported-media-type",
            Validation(_) => "validation",
            IdempotencyMismatch(_) => "idempotency-key-reused",
            IdempotencyInProgress(_) => "idempotency-key-in-progress",
            Refused(_) => "refused",
            Provider(_) => "provider-error",
            Unavailable(_) => "unavailable",
            NotLeader(_) => "not-leader",
            Timeout(_) => "request-timeout",
            TooManyRequests(_) => "too-many-requests",
            Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        use ApiError::*;
        match self {
            Unauthorized { .. } => "A valid bearer token is required",
            Forbidden(_) => "The token lacks the scope this route needs",
            UnknownDomain(_) => "Unknown domain",
            UnknownSnapshot(_) => "Unknown snapshot",
            UnknownIncident(_) => "Unknown incident",
            NoRoute(_) => "Not found",
            MethodNotAllowed(_) => "Method not allowed",
            BadRequest(_) => "Malformed request",
            PayloadTooLarge(_) => "Request body too large",
            UnsupportedMediaType(_) => "Unsupported media type",
            Validation(_) => "Invalid request",
            IdempotencyMismatch(_) => "Idempotency-Key reused with a different request",
            IdempotencyInProgress(_) => "A request with this Idempotency-Key is in progress",
            Refused(_) => "Refused; nothing was changed",
            Provider(_) => "The DNS provider failed",
            Unavailable(_) => "Unavailable",
            NotLeader(_) => "This instance is a follower; send mutations to the leader",
            Timeout(_) => "The request took too long",
            TooManyRequests(_) => "Too many expensive requests from this token at once",
            Internal(_) => "Internal error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(why) = &self {
            tracing::error!(error = %why, "internal error answering an API request");
            return status.into_response();
        }
        let body = json!({
            "type": format!("{PROBLEM_BASE}{}", self.slug()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        let mut resp = (status, body.to_string()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::TooManyRequests(_) = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::Unauthorized { invalid, .. } = &self {
            let challenge = if *invalid {
                r#"Bearer realm="mxguard", error="invalid_token""#
            } else {
                r#"Bearer realm="mxguard""#
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        resp
    }
}

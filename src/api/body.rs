//! Request bodies of mutations: JSON only (415 otherwise), at most [`BODY_LIMIT`] bytes (413),
//! well-formed (400), exactly the documented fields (422 on unknown or missing ones) and a
//! non-empty one-line `reason` (422). The body's fingerprint feeds `Idempotency-Key` checks.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::auth::sha256;
use super::error::ApiError;

/// Largest request body accepted (bytes).
pub const BODY_LIMIT: usize = 16 * 1024;
/// Longest `reason` accepted (characters).
pub const REASON_MAX: usize = 500;
/// Longest `Idempotency-Key` accepted.
pub const KEY_MAX: usize = 255;

/// A body that carries the operator's reason.
pub trait Reasoned {
    fn reason(&self) -> &str;
}

/// A parsed, validated mutation body with what idempotency needs.
pub struct Mutation<T> {
    pub body: T,
    /// Hex SHA-256 of method, path and the canonical JSON body.
    pub fingerprint: String,
    /// The `Idempotency-Key` header, when sent.
    pub key: Option<String>,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {KEY_MAX} visible ASCII characters"
        ))
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > KEY_MAX || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The value with object keys sorted at every level, as compact JSON text.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// Checks an operator-supplied line of text (a reason, a label).
pub fn one_line(field: &str, text: &str, max: usize) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::Validation(format!(
            "{field} must not be empty: say why, it is recorded with the change"
        )));
    }
    if text.chars().count() > max {
        return Err(ApiError::Validation(format!(
            "{field} is longer than {max} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::Validation(format!(
            "{field} must be one line without control characters"
        )));
    }
    Ok(())
}

impl<T, S> FromRequest<S> for Mutation<T>
where
    T: DeserializeOwned + Reasoned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let key = idempotency_key(req.headers())?;
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with Content-Type: application/json".into(),
            ));
        }
        let head = format!("{} {}\n", req.method(), req.uri().path());
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!("the body is larger than {BODY_LIMIT} bytes"))
            } else {
                ApiError::BadRequest(format!("cannot read the body: {e}"))
            }
        })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
        // serde would also fill a struct from an array, positionally: only objects are bodies.
        if !value.is_object() {
            return Err(ApiError::Validation(
                "the body must be a JSON object".into(),
            ));
        }
        let body: T = serde_json::from_value(value.clone())
            .map_err(|e| ApiError::Validation(format!("invalid body: {e}")))?;
        one_line("reason", body.reason(), REASON_MAX)?;
        let fingerprint = hex(&sha256(format!("{head}{}", canonical(&value)).as_bytes()));
        Ok(Mutation {
            body,
            fingerprint,
            key,
        })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order_and_spacing() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(canonical(&b), r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
    }

    #[test]
    fn reasons_are_one_non_empty_line() {
        assert!(one_line("reason", "incident #123", 500).is_ok());
        assert!(one_line("reason", "  ", 500).is_err());
        assert!(one_line("reason", "a\nb", 500).is_err());
        assert!(one_line("reason", &"x".repeat(501), 500).is_err());
    }
}

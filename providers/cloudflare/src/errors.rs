//! Cloudflare answers → [`ProviderError`]. The HTTP status decides first (Cloudflare publishes
//! no list of codes); the codes in `errors[]` refine it, and the message always carries them.

use std::time::{Duration, SystemTime};

use mxguard_core::ProviderError;

use crate::wire::ApiMessage;

/// Codes that mean "the token is not accepted" whatever the status: malformed or missing
/// authorization (6003, 6111, 9106, 9107), bad or unpermitted token (10000, 10001), a token
/// used from a location its IP filter excludes (9109).
pub(crate) const AUTH_CODES: &[i64] = &[6003, 6111, 9106, 9107, 9109, 10000, 10001];
/// Rate-limit codes seen in bodies (10100 "More than 1200 requests per 300 seconds", 971).
pub(crate) const RATE_CODES: &[i64] = &[971, 10100];
/// "Could not route to …, perhaps your object identifier is invalid?": an unknown zone id.
pub(crate) const NO_ROUTE_FOR_ID: i64 = 7003;
/// "No route for that URI": the endpoint itself does not exist (e.g. no batch endpoint).
pub(crate) const NO_ROUTE: i64 = 7000;

/// What one failed call said, for classification.
pub(crate) struct Failure<'a> {
    pub status: u16,
    pub errors: &'a [ApiMessage],
    pub retry_after: Option<&'a str>,
    /// `x-should-retry`: Cloudflare's own word on whether to retry, which its SDK obeys
    /// before looking at the status.
    pub should_retry: Option<bool>,
    /// e.g. "listing DNS records of example.com."
    pub what: &'a str,
}

pub(crate) fn describe(errors: &[ApiMessage]) -> String {
    if errors.is_empty() {
        return "no error details".into();
    }
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn has_code(errors: &[ApiMessage], code: i64) -> bool {
    errors
        .iter()
        .any(|e| e.code == code || e.error_chain.iter().any(|c| c.code == code))
}

fn any_code(errors: &[ApiMessage], codes: &[i64]) -> bool {
    codes.iter().any(|c| has_code(errors, *c))
}

pub(crate) fn classify(f: &Failure<'_>) -> ProviderError {
    let detail = format!(
        "{}: Cloudflare answered HTTP {}: {}",
        f.what,
        f.status,
        describe(f.errors)
    );
    if f.status == 429 || any_code(f.errors, RATE_CODES) {
        return ProviderError::RateLimited {
            retry_after: f.retry_after.and_then(parse_retry_after),
        };
    }
    if f.status == 401 || f.status == 403 || any_code(f.errors, AUTH_CODES) {
        return ProviderError::Auth(format!(
            "{detail} (the API token is invalid, expired, or lacks a permission: mxguard needs Zone:Read and DNS:Edit on the zone)"
        ));
    }
    // As Cloudflare's SDK decides: the header first, then 408, 409 (a lock timeout: another
    // change to the zone held it) and 5xx are retried.
    match f.should_retry {
        Some(true) => return ProviderError::Transient(detail),
        Some(false) if f.status >= 500 || f.status == 408 || f.status == 409 => {
            return ProviderError::Rejected {
                reason: format!("{detail} (x-should-retry: false)"),
            }
        }
        _ => {}
    }
    if f.status >= 500 || f.status == 408 || f.status == 409 {
        return ProviderError::Transient(detail);
    }
    if has_code(f.errors, NO_ROUTE_FOR_ID) {
        return ProviderError::NotFound(detail);
    }
    ProviderError::Rejected { reason: detail }
}

/// `x-should-retry` as Cloudflare's SDK reads it: `true` or `false`, anything else ignored.
pub(crate) fn parse_should_retry(value: &str) -> Option<bool> {
    match value.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `retry-after` as seconds or as an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A request that got no HTTP answer.
pub(crate) fn transport(what: &str, e: &reqwest::Error) -> ProviderError {
    let why = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed in transit"
    };
    // reqwest's message names the URL (never the token, which travels in a header).
    ProviderError::Transient(format!("{what}: the request {why}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(code: i64, message: &str) -> ApiMessage {
        ApiMessage {
            code,
            message: message.into(),
            error_chain: Vec::new(),
        }
    }

    fn classify_one(
        status: u16,
        errors: &[ApiMessage],
        retry_after: Option<&str>,
    ) -> ProviderError {
        classify(&Failure {
            status,
            errors,
            retry_after,
            should_retry: None,
            what: "test",
        })
    }

    fn classify_told(status: u16, should_retry: bool) -> &'static str {
        classify(&Failure {
            status,
            errors: &[],
            retry_after: None,
            should_retry: Some(should_retry),
            what: "test",
        })
        .kind()
    }

    #[test]
    fn lock_timeouts_and_x_should_retry_decide_as_cloudflares_sdk_does() {
        assert_eq!(classify_one(409, &[], None).kind(), "transient");
        assert_eq!(classify_one(408, &[], None).kind(), "transient");
        assert_eq!(
            classify_told(400, true),
            "transient",
            "the header forces a retry"
        );
        assert_eq!(classify_told(503, false), "rejected", "and forbids one");
        assert_eq!(classify_told(409, false), "rejected");
        assert_eq!(
            classify_told(429, false),
            "rate_limited",
            "a 429 still waits"
        );
        assert_eq!(
            classify_told(403, true),
            "auth",
            "a refused token is never retried"
        );
        assert_eq!(parse_should_retry(" true"), Some(true));
        assert_eq!(parse_should_retry("1"), None);
    }

    #[test]
    fn statuses_and_codes_map_to_kinds() {
        let limited = classify_one(429, &[msg(10100, "More than 1200 requests")], Some("42"));
        assert_eq!(
            limited,
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(42))
            }
        );
        assert_eq!(
            classify_one(403, &[msg(10000, "Authentication error")], None).kind(),
            "auth"
        );
        assert_eq!(
            classify_one(400, &[msg(6003, "Invalid request headers")], None).kind(),
            "auth"
        );
        assert_eq!(classify_one(502, &[], None).kind(), "transient");
        assert_eq!(
            classify_one(400, &[msg(7003, "Could not route")], None).kind(),
            "not_found"
        );
        let mut validation = msg(1004, "DNS Validation Error");
        validation.error_chain.push(msg(9021, "Invalid TTL"));
        match classify_one(400, &[validation], None) {
            ProviderError::Rejected { reason } => {
                assert!(
                    reason.contains("1004 DNS Validation Error (9021 Invalid TTL)"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}

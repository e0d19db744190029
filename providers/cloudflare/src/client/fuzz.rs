//! Fuzz targets (proptest) for what the Cloudflare client reads from the API: any status,
//! `retry-after`, `x-should-retry` and body through [`read_answer`] (the envelope, `errors[]`
//! with their `error_chain`, records grouped into RRsets), and `retry-after` values alone, as
//! parsed and then as the retrier clamps them. Case counts are bounded so each target runs in a
//! few seconds in `cargo test` (CI).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mxguard_core::retry::MAX_RETRY_AFTER;
use mxguard_core::RetryPolicy;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;
use crate::errors::{has_code, parse_retry_after, AUTH_CODES, RATE_CODES};
use crate::wire::{group, DnsRecord};

/// A JSON value drawn from `valid`, or with `odd` sometimes one of the wrong type instead
/// (which fails the whole envelope).
fn or_odd(
    valid: impl Strategy<Value = Value> + 'static,
    odd: bool,
    wrong: &'static [&'static str],
) -> BoxedStrategy<Value> {
    let wrong =
        prop::sample::select(wrong).prop_map(|w| serde_json::from_str(w).expect("a JSON literal"));
    if odd {
        prop_oneof![6 => valid, 1 => wrong].boxed()
    } else {
        valid.boxed()
    }
}

/// Codes Cloudflare sends (those that decide a kind among them) and any other.
fn code(odd: bool) -> BoxedStrategy<Value> {
    const KNOWN: &[i64] = &[
        6003, 6111, 9106, 9107, 9109, 10000, 10001, 971, 10100, 7003, 7000, 1004, 9021, 81044,
    ];
    let valid = prop_oneof![
        4 => prop::sample::select(KNOWN).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
    ];
    or_odd(valid, odd, &["\"10000\"", "null", "1.5"])
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[ -~]{0,30}",
        1 => "\\PC{0,60}",
    ]
}

/// One entry of `errors[]`, with an `error_chain` a few levels deep.
fn api_message(odd: bool) -> impl Strategy<Value = Value> {
    let leaf =
        (code(odd), text()).prop_map(|(code, message)| json!({"code": code, "message": message}));
    leaf.prop_recursive(3, 12, 3, move |inner| {
        (code(odd), text(), vec(inner, 0..3)).prop_map(|(code, message, chain)| {
            json!({"code": code, "message": message, "error_chain": chain})
        })
    })
}

/// An `error_chain` nested `depth` deep: Display walks it recursively.
fn deep_chain(depth: usize) -> Value {
    (0..depth).fold(
        json!({"code": 9021, "message": "Invalid TTL"}),
        |inner, i| json!({"code": 1004 + i as i64, "message": "nested", "error_chain": [inner]}),
    )
}

const NAMES: &[&str] = &[
    "example.com",
    "mx1.example.com",
    "WWW.Example.COM",
    "bad..example.com",
    "",
    "-x.example.com",
    "a-label-of-more-than-sixty-three-characters-is-not-a-dns-label-at-all.example.com",
];

/// Content of a record as Cloudflare might return it, valid for its type or not.
fn content() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
        any::<[u8; 16]>().prop_map(|a| std::net::Ipv6Addr::from(a).to_string()),
        prop::sample::select(NAMES).prop_map(str::to_string),
        Just(".".to_string()),
        "\"[ -~]{0,40}\"( \"[ -~]{0,20}\")?",
        "\"[a-z\\\\\"0-9 ]{0,20}",
        text(),
    ]
}

fn record(odd: bool) -> impl Strategy<Value = Value> {
    let rtype = prop_oneof![
        4 => prop::sample::select(&["MX", "A", "AAAA", "TXT"][..]).prop_map(Value::from),
        1 => prop::sample::select(&["CNAME", "NS", "mx"][..]).prop_map(Value::from),
        1 => text().prop_map(Value::from),
    ];
    let priority = prop_oneof![Just(Value::Null), any::<u16>().prop_map(Value::from),];
    let ttl = prop_oneof![
        Just(json!(1)),
        (0u32..100_000).prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
    ];
    (
        "[0-9a-f]{0,32}",
        rtype,
        prop::sample::select(NAMES),
        content(),
        or_odd(priority, odd, &["-1", "\"10\""]),
        or_odd(ttl, odd, &["-5", "null"]),
        any::<bool>(),
    )
        .prop_map(|(id, rtype, name, content, priority, ttl, proxied)| {
            json!({
                "id": id, "type": rtype, "name": name, "content": content,
                "priority": priority, "ttl": ttl, "proxied": proxied,
            })
        })
}

/// Cloudflare's envelope with each field present or absent and, with `odd`, sometimes of the
/// wrong type.
fn envelope(odd: bool) -> impl Strategy<Value = Value> {
    let some = |s: BoxedStrategy<Value>| prop_oneof![6 => s.prop_map(Some), 1 => Just(None)];
    let success = or_odd(any::<bool>().prop_map(Value::from), odd, &["\"yes\"", "1"]);
    let errors = prop_oneof![
        6 => vec(api_message(odd), 0..3).prop_map(Value::from),
        1 => (0usize..80).prop_map(|d| json!([deep_chain(d)])),
    ];
    let result = prop_oneof![
        6 => vec(record(odd), 0..6).prop_map(Value::from),
        1 => Just(Value::Null),
    ];
    let info = any::<u32>().prop_map(|n| json!({"total_pages": n}));
    (
        some(success),
        some(or_odd(errors, odd, &["\"oops\"", "{}"])),
        some(or_odd(result, odd, &["{\"id\": \"not a list\"}", "7"])),
        some(or_odd(info, odd, &["{\"total_pages\": -1}"])),
    )
        .prop_map(|(success, errors, result, info)| {
            let mut env = Map::new();
            for (key, value) in [
                ("success", success),
                ("errors", errors),
                ("result", result),
                ("result_info", info),
            ] {
                if let Some(v) = value {
                    env.insert(key.into(), v);
                }
            }
            env.insert("messages".into(), json!([]));
            Value::Object(env)
        })
}

/// A body: an envelope (well-typed, or with a field of the wrong type), one cut short, an
/// HTML error page from something in between, or bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let json = |odd| envelope(odd).prop_map(|v| v.to_string().into_bytes());
    prop_oneof![
        8 => json(false),
        2 => json(true),
        2 => (json(false), any::<usize>()).prop_map(|(mut b, at)| {
            b.truncate(at % (b.len() + 1));
            b
        }),
        1 => Just(b"<html><body>502 Bad Gateway</body></html>".to_vec()),
        1 => vec(any::<u8>(), 0..200),
    ]
}

fn status() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        4 => Just(200u16),
        6 => prop::sample::select(&[200u16, 400, 401, 403, 404, 405, 408, 409, 429, 500, 502, 503, 520][..]),
        1 => 100u16..600,
    ]
    .prop_map(|s| StatusCode::from_u16(s).expect("a status code"))
}

/// A `retry-after` value: seconds (padded, huge, negative, fractional), an HTTP date in the
/// past or the future in each of its three forms, or any bytes.
fn retry_after_value() -> impl Strategy<Value = Vec<u8>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    prop_oneof![
        3 => (any::<u64>(), " {0,2}", " {0,2}").prop_map(|(n, a, b)| format!("{a}{n}{b}").into_bytes()),
        2 => (0u64..100_000).prop_map(|n| n.to_string().into_bytes()),
        1 => prop::sample::select(&["-1", "1.5", "99999999999999999999999", "", " ", "0x10"][..]).prop_map(|s| s.as_bytes().to_vec()),
        3 => (0..now + 10 * 86_400, 0usize..3).prop_map(|(secs, form)| http_date(secs, form).into_bytes()),
        1 => vec(any::<u8>(), 0..40),
    ]
}

/// `secs` after the epoch as an HTTP date: IMF-fixdate, RFC 850 or asctime (RFC 9110 5.6.7).
fn http_date(secs: u64, form: usize) -> String {
    let imf = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (day, rest) = imf.split_once(", ").expect("IMF-fixdate");
    let parts: Vec<&str> = rest.split(' ').collect();
    let (dd, mon, year, time) = (parts[0], parts[1], parts[2], parts[3]);
    const DAYS: [(&str, &str); 7] = [
        ("Mon", "Monday"),
        ("Tue", "Tuesday"),
        ("Wed", "Wednesday"),
        ("Thu", "Thursday"),
        ("Fri", "Friday"),
        ("Sat", "Saturday"),
        ("Sun", "Sunday"),
    ];
    let long = DAYS.iter().find(|(s, _)| *s == day).map_or(day, |(_, l)| l);
    match form {
        0 => imf,
        1 => format!("{long}, {dd}-{mon}-{} {time} GMT", &year[2..]),
        _ => format!(
            "{day} {mon} {:>2} {time} {year}",
            dd.trim_start_matches('0')
        ),
    }
}

fn header(values: &[(&'static str, Option<Vec<u8>>)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in values {
        if let Some(v) = value
            .as_deref()
            .and_then(|v| HeaderValue::from_bytes(v).ok())
        {
            headers.insert(*name, v);
        }
    }
    headers
}

fn kinds(errors: &[ApiMessage]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

/// The retrier's wait after a rate-limited answer: never past [`MAX_RETRY_AFTER`] (or the
/// backoff ceiling, if that is longer), never shorter than the backoff, and the server's
/// value itself when it lies between the two.
fn check_clamped(retry_after: Option<Duration>) -> Result<(), TestCaseError> {
    let policy = RetryPolicy::default();
    let error = ProviderError::RateLimited { retry_after };
    for failures in [1, 3, 40] {
        for fraction in [0.0, 0.5, 0.999] {
            let backoff = policy.backoff(failures, fraction);
            let delay = policy.delay_after(failures, &error, fraction);
            prop_assert!(delay >= backoff);
            prop_assert!(
                delay <= MAX_RETRY_AFTER.max(policy.max_backoff),
                "{:?}",
                delay
            );
            if let Some(d) = retry_after.filter(|d| *d >= backoff && *d <= MAX_RETRY_AFTER) {
                prop_assert_eq!(delay, d);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Any answer: no panic; a result only from a 2xx envelope that says success; a failure
    /// keeps the status and the `errors[]` the body holds, and is classified by them (429 or a
    /// rate-limit code: rate-limited with the header's `retry-after`; else 401, 403 or a token
    /// code: auth; else 5xx, 408, 409 without `x-should-retry`: transient); records in a result
    /// group into RRsets or problems without a panic.
    #[test]
    fn any_answer_is_a_result_or_a_classified_failure(
        status in status(),
        body in body(),
        retry_after in proptest::option::of(retry_after_value()),
        should_retry in proptest::option::of(prop_oneof![
            prop::sample::select(&["true", "false", " true ", "1", "TRUE"][..]).prop_map(|s| s.as_bytes().to_vec()),
            vec(any::<u8>(), 0..10),
        ]),
    ) {
        let headers = header(&[("retry-after", retry_after), ("x-should-retry", should_retry)]);
        let in_body = serde_json::from_slice::<Envelope<Value>>(&body).map(|e| e.errors).unwrap_or_default();
        match read_answer::<Vec<DnsRecord>>(status, &headers, &body, "fuzzing") {
            Ok((records, _)) => {
                prop_assert!(status.is_success());
                let env = serde_json::from_slice::<Value>(&body).expect("a result comes from JSON");
                prop_assert_eq!(env.get("success"), Some(&Value::Bool(true)));
                let (sets, problems) = group(&records, |_| true);
                prop_assert!(sets.len() + problems.len() <= records.len());
                for set in &sets {
                    prop_assert!(!set.records().is_empty());
                    prop_assert!(set.records().iter().all(|r| r.rtype() == set.rtype()));
                }
            }
            Err(e) if e.status.is_none() => {
                // read as a success but without a usable result: worth another try
                prop_assert!(status.is_success());
                prop_assert_eq!(e.error.kind(), "transient");
            }
            Err(e) => {
                prop_assert_eq!(e.status, Some(status.as_u16()));
                prop_assert_eq!(kinds(&e.errors), kinds(&in_body));
                let s = status.as_u16();
                let any = |codes: &[i64]| codes.iter().any(|c| has_code(&e.errors, *c));
                let rate = s == 429 || any(RATE_CODES);
                let auth = !rate && (s == 401 || s == 403 || any(AUTH_CODES));
                prop_assert_eq!(e.error.kind() == "rate_limited", rate, "{}", e.error);
                prop_assert_eq!(e.error.kind() == "auth", auth, "{}", e.error);
                let told = headers.get("x-should-retry").and_then(|v| v.to_str().ok()).and_then(crate::errors::parse_should_retry);
                if !rate && !auth && told.is_none() && (s >= 500 || s == 408 || s == 409) {
                    prop_assert_eq!(e.error.kind(), "transient");
                }
                match &e.error {
                    ProviderError::RateLimited { retry_after } => {
                        let value = headers.get("retry-after").and_then(|v| v.to_str().ok()).map(str::trim);
                        let readable = value.is_some_and(|v| v.parse::<u64>().is_ok() || httpdate::parse_http_date(v).is_ok());
                        prop_assert_eq!(retry_after.is_some(), readable, "{:?}", value);
                        check_clamped(*retry_after)?;
                    }
                    other => prop_assert!(other.to_string().contains(&format!("HTTP {s}")), "{}", other),
                }
            }
        }
    }

    /// Any `retry-after` value: no panic; seconds are taken exactly, a date as the time left
    /// until it (none once past), anything else not at all; and whatever it says, the retrier
    /// waits within its bounds.
    #[test]
    fn any_retry_after_is_read_and_clamped(value in retry_after_value()) {
        let Ok(value) = std::str::from_utf8(&value) else {
            // a header value that is not text is never handed to the parser
            return Ok(());
        };
        let before = SystemTime::now();
        let parsed = parse_retry_after(value);
        let after = SystemTime::now();
        let v = value.trim();
        if let Ok(secs) = v.parse::<u64>() {
            prop_assert_eq!(parsed, Some(Duration::from_secs(secs)));
        } else if let Ok(when) = httpdate::parse_http_date(v) {
            let most = when.duration_since(before).unwrap_or(Duration::ZERO);
            let least = when.duration_since(after).unwrap_or(Duration::ZERO);
            let got = parsed.expect("a date is read");
            prop_assert!(least <= got && got <= most, "{:?} not in {:?}..{:?}", got, least, most);
        } else {
            prop_assert_eq!(parsed, None);
        }
        check_clamped(parsed)?;
    }
}

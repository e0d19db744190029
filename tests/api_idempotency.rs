//! `Idempotency-Key` on mutations: a retry with the same key and request replays the first
//! answer and changes nothing more; the same key with another request is a 422; keys are per
//! token; refusals are not stored.

mod common;

use axum::http::{Method, StatusCode};
use common::api::{self, Call, ADMIN, OPERATOR, READER};
use serde_json::json;

const PAUSE: &str = "/v1/domains/example.test/pause";

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let t = api::start(true).await;
    let pause = |reason: &str, key: &str| {
        Call::new(Method::POST, PAUSE)
            .token(OPERATOR)
            .header("idempotency-key", key)
            .json(json!({"reason": reason}))
    };
    let first = t.call(pause("provider maintenance", "k-1")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let after_first = t.fingerprint().await;

    // the same key and body (keys in another order, other spacing): the first answer, nothing new
    let again = t
        .call(
            Call::new(Method::POST, PAUSE)
                .token(OPERATOR)
                .header("idempotency-key", "k-1")
                .raw(
                    r#"{ "reason" : "provider maintenance" }"#,
                    Some("application/json"),
                ),
        )
        .await;
    assert_eq!(again.status, first.status);
    assert_eq!(again.json(), first.json());
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(
        t.fingerprint().await,
        after_first,
        "a replay changed something"
    );

    // the same key with another body: 422, nothing changed
    let other = t.call(pause("something else", "k-1")).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.text
    );
    assert_eq!(other.problem(), "idempotency-key-reused");
    assert_eq!(t.fingerprint().await, after_first);

    // the same key on another route is another request too
    let other = t
        .call(
            Call::new(Method::POST, "/v1/domains/example.test/resume")
                .token(OPERATOR)
                .header("idempotency-key", "k-1")
                .json(json!({"reason": "provider maintenance"})),
        )
        .await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.text
    );
    assert_eq!(t.fingerprint().await, after_first);

    // keys are per token: the admin's k-1 is its own
    let admin = t
        .call(
            Call::new(Method::POST, "/v1/domains/example.test/resume")
                .token(ADMIN)
                .header("idempotency-key", "k-1")
                .json(json!({"reason": "maintenance over"})),
        )
        .await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.text);

    // a refusal is not stored: the retry is answered afresh (and is refused again)
    let refused = t
        .call(
            Call::new(Method::POST, "/v1/domains/example.test/resume")
                .token(OPERATOR)
                .header("idempotency-key", "k-2")
                .json(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    let before = t.fingerprint().await;
    let refused = t
        .call(
            Call::new(Method::POST, "/v1/domains/example.test/resume")
                .token(OPERATOR)
                .header("idempotency-key", "k-2")
                .json(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(refused.headers.get("idempotent-replayed").is_none());
    assert_eq!(t.fingerprint().await, before);

    // only one "paused" event and one "resumed" event exist
    let events = t
        .call(Call::new(Method::GET, "/v1/domains/example.test/events").token(READER))
        .await
        .json();
    let messages: Vec<String> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.contains("automation paused"))
            .count(),
        1,
        "{messages:?}"
    );
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.contains("automation resumed"))
            .count(),
        1,
        "{messages:?}"
    );
}

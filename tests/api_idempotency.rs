//! `Idempotency-Key` on mutations: a retry with the same key and request replays the first
//! answer and changes nothing more; the same key with another request is a 422; keys are per
//! token; refusals are not stored; a retry while the first is still being answered waits for
//! its answer, on the same instance or another one sharing the store.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::api::{self, Call, MxView, ADMIN, BACKUP_MX, OPERATOR, READER};
use mxguard::api::{router, AppState, Providers};
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

/// The first request's claim on its key is stored before the work: two retries sent while it
/// is held at the provider — one to the same instance, one to another instance sharing the
/// store — wait for its answer and replay it; the revert runs once.
#[tokio::test]
async fn retries_while_the_first_is_in_flight_wait_and_replay_its_answer() {
    let (t, held) = api::start_with(true).await;
    let r = t
        .call(
            Call::new(Method::POST, "/v1/snapshots")
                .token(OPERATOR)
                .json(json!({"domain": "example.test", "reason": "before the drill"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = t
        .call(
            Call::new(Method::POST, "/v1/domains/example.test/failover")
                .token(OPERATOR)
                .json(json!({"reason": "drill"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    common::poll("backup published", Duration::from_secs(10), || async {
        (t.dns.mx() == vec![format!("{BACKUP_MX} 30")]).then_some(())
    })
    .await;

    // Another instance: its own router (and in-process state) over the same store and domain.
    let providers = Providers::default();
    providers.insert("mem", held.clone()).await;
    let elsewhere = router(AppState {
        store: t.store.clone(),
        engine: t.engine.clone(),
        config: t.config.clone(),
        providers,
    });

    let revert = || {
        Call::new(Method::POST, "/v1/snapshots/1/revert")
            .token(ADMIN)
            .header("idempotency-key", "end-of-drill")
            .json(json!({"reason": "end of drill"}))
    };
    held.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let first = t.call(revert());
    let retries = async {
        common::poll(
            "the first revert held at the provider",
            Duration::from_secs(10),
            || async { (held.waiting() == 1).then_some(()) },
        )
        .await;
        let both = async { tokio::join!(t.call(revert()), api::send(&elsewhere, revert())) };
        tokio::pin!(both);
        // The first stays held until released below, so no answer can come meanwhile; without
        // the claim in the store, the retries are answered at once (a 409 here, a second
        // revert refused there).
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut both)
                .await
                .is_err(),
            "a retry was answered while the first request was still in flight"
        );
        held.release();
        both.await
    };
    let (first, (same, other)) = tokio::join!(first, retries);
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert!(first.headers.get("idempotent-replayed").is_none());
    for (retry, instance) in [(&same, "the same instance"), (&other, "another instance")] {
        assert_eq!(retry.status, StatusCode::OK, "{instance}: {}", retry.text);
        assert_eq!(retry.headers["idempotent-replayed"], "true", "{instance}");
        assert_eq!(retry.json(), first.json(), "{instance}");
    }

    let events = t
        .call(Call::new(Method::GET, "/v1/domains/example.test/events").token(READER))
        .await
        .json();
    let reverts = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "revert")
        .count();
    assert_eq!(reverts, 1, "the revert ran once: {events}");
}

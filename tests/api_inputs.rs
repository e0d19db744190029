//! Bad requests get the right 4xx problem and change nothing: the stored state, events,
//! snapshots, change intents and the zone are compared before and after each one.

mod common;

use axum::http::{Method, StatusCode};
use common::api::{self, Call, MxView, ADMIN, BACKUP_MX, OPERATOR, PRIMARY_MX};
use serde_json::json;

const PIN: &str = "/v1/domains/example.test/pin";
const PAUSE: &str = "/v1/domains/example.test/pause";

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let t = api::start(true).await;
    let snap = t
        .call(
            Call::new(Method::POST, "/v1/snapshots")
                .token(OPERATOR)
                .json(json!({"domain": "example.test", "reason": "fixture"})),
        )
        .await;
    assert_eq!(snap.status, StatusCode::CREATED, "{}", snap.text);
    let future = "2099-01-01T00:00:00Z";
    let big = json!({"reason": "x".repeat(20 * 1024)}).to_string();

    // (what, call, status, problem type)
    let cases: Vec<(&str, Call, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            Call::new(Method::POST, PAUSE).raw("{\"reason\": ", Some("application/json")),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        (
            "wrong content type",
            Call::new(Method::POST, PAUSE).raw("{\"reason\":\"x\"}", Some("text/plain")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            "no content type",
            Call::new(Method::POST, PAUSE).raw("{\"reason\":\"x\"}", None),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            "oversized body",
            Call::new(Method::POST, PAUSE).raw(&big, Some("application/json")),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
        ),
        (
            "missing reason",
            Call::new(Method::POST, PAUSE).json(json!({})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "empty reason",
            Call::new(Method::POST, PAUSE).json(json!({"reason": "  "})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "multi-line reason",
            Call::new(Method::POST, PAUSE).json(json!({"reason": "a\nb"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "reason not a string",
            Call::new(Method::POST, PAUSE).json(json!({"reason": 5})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "unknown field",
            Call::new(Method::POST, PAUSE).json(json!({"reason": "x", "force": true})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "body not an object",
            Call::new(Method::POST, PAUSE).json(json!(["reason"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "pin in the past",
            Call::new(Method::PUT, PIN)
                .json(json!({"side": "backup", "until": "2020-01-01T00:00:00Z", "reason": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "pin too far",
            Call::new(Method::PUT, PIN)
                .json(json!({"side": "backup", "until": "2999-01-01T00:00:00Z", "reason": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "pin bad side",
            Call::new(Method::PUT, PIN)
                .json(json!({"side": "sideways", "until": future, "reason": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "pin bad time",
            Call::new(Method::PUT, PIN)
                .json(json!({"side": "backup", "until": "tomorrow", "reason": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "pin without side",
            Call::new(Method::PUT, PIN).json(json!({"until": future, "reason": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "unknown domain",
            Call::new(Method::POST, "/v1/domains/nope.test/pause").json(json!({"reason": "x"})),
            StatusCode::NOT_FOUND,
            "unknown-domain",
        ),
        (
            "unknown domain, bad body",
            Call::new(Method::POST, "/v1/domains/nope.test/failover").json(json!({})),
            StatusCode::NOT_FOUND,
            "unknown-domain",
        ),
        (
            "invalid domain name",
            Call::new(Method::GET, "/v1/domains/-bad-.test"),
            StatusCode::NOT_FOUND,
            "unknown-domain",
        ),
        (
            "snapshot of unknown domain",
            Call::new(Method::POST, "/v1/snapshots")
                .json(json!({"domain": "nope.test", "reason": "x"})),
            StatusCode::NOT_FOUND,
            "unknown-domain",
        ),
        (
            "snapshot label on two lines",
            Call::new(Method::POST, "/v1/snapshots")
                .json(json!({"domain": "example.test", "label": "a\nb", "reason": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
        (
            "unknown snapshot",
            Call::new(Method::GET, "/v1/snapshots/999"),
            StatusCode::NOT_FOUND,
            "unknown-snapshot",
        ),
        (
            "non-numeric snapshot",
            Call::new(Method::GET, "/v1/snapshots/abc/diff"),
            StatusCode::NOT_FOUND,
            "unknown-snapshot",
        ),
        (
            "revert unknown snapshot",
            Call::new(Method::POST, "/v1/snapshots/999/revert").json(json!({"reason": "x"})),
            StatusCode::NOT_FOUND,
            "unknown-snapshot",
        ),
        (
            "events bad limit",
            Call::new(Method::GET, "/v1/domains/example.test/events?limit=0"),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        (
            "events limit not a number",
            Call::new(Method::GET, "/v1/domains/example.test/events?limit=ten"),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        (
            "events unknown parameter",
            Call::new(Method::GET, "/v1/domains/example.test/events?since=1"),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        (
            "bad Idempotency-Key",
            Call::new(Method::POST, PAUSE)
                .header("idempotency-key", "has space")
                .json(json!({"reason": "x"})),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        // refused by the state machine: 409, nothing changed
        (
            "unpin when not pinned",
            Call::new(Method::DELETE, PIN).json(json!({"reason": "x"})),
            StatusCode::CONFLICT,
            "refused",
        ),
        (
            "resume when not paused",
            Call::new(Method::POST, "/v1/domains/example.test/resume").json(json!({"reason": "x"})),
            StatusCode::CONFLICT,
            "refused",
        ),
        (
            "approve with nothing pending",
            Call::new(Method::POST, "/v1/domains/example.test/approve")
                .json(json!({"reason": "x"})),
            StatusCode::CONFLICT,
            "refused",
        ),
        (
            "failback onto the published primary",
            Call::new(Method::POST, "/v1/domains/example.test/failback")
                .json(json!({"reason": "x"})),
            StatusCode::CONFLICT,
            "refused",
        ),
        (
            "failback dry run onto the published primary",
            Call::new(Method::POST, "/v1/domains/example.test/failback")
                .json(json!({"reason": "x", "dry_run": true})),
            StatusCode::CONFLICT,
            "refused",
        ),
    ];
    for (what, call, status, problem) in cases {
        let before = t.fingerprint().await;
        let got = t.call(call.token(ADMIN)).await;
        assert_eq!(got.status, status, "{what}: {}", got.text);
        assert_eq!(got.problem(), problem, "{what}");
        assert_eq!(t.fingerprint().await, before, "{what} changed something");
    }

    // a revert over a hand edit is refused (409) and changes nothing
    t.dns.hand_edit_mx(BACKUP_MX, 60);
    let before = t.fingerprint().await;
    let got = t
        .call(
            Call::new(Method::POST, "/v1/snapshots/1/revert")
                .token(ADMIN)
                .json(json!({"reason": "undo"})),
        )
        .await;
    assert_eq!(got.status, StatusCode::CONFLICT, "{}", got.text);
    assert_eq!(got.problem(), "refused");
    assert!(got.json()["detail"]
        .as_str()
        .is_some_and(|d| d.contains("outside mxguard")));
    assert_eq!(t.fingerprint().await, before);
    // a dry run with force says what it would do and changes nothing either
    let got = t
        .call(
            Call::new(Method::POST, "/v1/snapshots/1/revert")
                .token(ADMIN)
                .json(json!({"reason": "undo", "force": true, "dry_run": true})),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert!(got.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("would make 1 change(s)")));
    assert_eq!(t.fingerprint().await, before);
    // forced, it restores the snapshot's records and TTL
    let got = t
        .call(
            Call::new(Method::POST, "/v1/snapshots/1/revert")
                .token(ADMIN)
                .json(json!({"reason": "undo hand edit", "force": true})),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(t.dns.mx(), vec![format!("{PRIMARY_MX} 300")]);
    assert!(
        got.json()["message"].as_str().is_some_and(
            |m| m.starts_with("example.test: reverted to snapshot 1 by admin: undo hand edit")
        ),
        "{}",
        got.text
    );
}

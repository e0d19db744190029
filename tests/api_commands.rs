//! The operator commands through the router (`oneshot`) and a real actor over an in-memory
//! zone: each answers one `message` line, goes through the state machine, and is recorded in
//! the events with the token's name and the reason. Dry runs change nothing.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use chrono::{FixedOffset, SecondsFormat, Utc};
use common::api::{self, Call, MxView, TestApi, ADMIN, BACKUP_MX, OPERATOR, PRIMARY_MX, READER};
use serde_json::{json, Value};

const D: &str = "/v1/domains/example.test";

async fn get(t: &TestApi, path: &str) -> Value {
    let r = t.call(Call::new(Method::GET, path).token(READER)).await;
    assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text);
    r.json()
}

async fn wait_phase(t: &TestApi, phase: &str) -> Value {
    common::poll(
        &format!("phase {phase}"),
        Duration::from_secs(10),
        || async {
            let s = get(t, D).await;
            (s["phase"] == phase).then_some(s)
        },
    )
    .await
}

#[tokio::test]
async fn pin_dry_runs_unpin_pause_and_the_timeline() {
    let t = api::start(true).await;
    let list = get(&t, "/v1/domains").await;
    assert_eq!(list["domains"][0]["domain"], "example.test");
    assert_eq!(list["domains"][0]["active"], "primary");
    let status = get(&t, D).await;
    assert_eq!(status["published"]["side"], "primary");
    assert_eq!(status["published"]["records"][0]["records"][0], PRIMARY_MX);
    let plan = get(&t, &format!("{D}/plan")).await;
    assert_eq!(plan["converged"], true, "{plan}");

    // a failover dry run: what would change, and nothing changes
    let before = t.fingerprint().await;
    let r = t
        .call(
            Call::new(Method::POST, &format!("{D}/failover"))
                .token(OPERATOR)
                .json(json!({"reason": "drill", "dry_run": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["dry_run"], true);
    let msg = v["message"].as_str().expect("message");
    assert!(
        msg == "dry run: example.test would fail over to backup: 1 change(s): example.test. 30 IN MX 10 backup.example.test.; nothing was changed",
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    assert_eq!(t.fingerprint().await, before, "a dry run changed something");

    // pin the backup: the message a bot posts, the zone follows, the event names who and why
    let at = Utc::now() + chrono::Duration::hours(2);
    let offset = FixedOffset::east_opt(3600).expect("offset");
    let until = at
        .with_timezone(&offset)
        .to_rfc3339_opts(SecondsFormat::Secs, false);
    let until_utc = at.to_rfc3339_opts(SecondsFormat::Secs, true);
    assert!(until.ends_with("+01:00"));
    let r = t
        .call(
            Call::new(Method::PUT, &format!("{D}/pin"))
                .token(OPERATOR)
                .json(
                    json!({"side": "backup", "until": until, "reason": "provider incident #123"}),
                ),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json()["message"],
        format!(
            "example.test pinned to backup until {until_utc} by operator: provider incident #123"
        )
    );
    let s = wait_phase(&t, "on_backup").await;
    assert_eq!(s["override"]["kind"], "pinned");
    assert_eq!(s["override"]["until"], until_utc);
    assert_eq!(t.dns.mx(), vec![format!("{BACKUP_MX} 30")]);

    let events = get(&t, &format!("{D}/events")).await;
    assert_eq!(events["lease"]["holder"], "test/1", "{events}");
    assert_eq!(events["lease"]["held"], true, "{events}");
    let pin = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["kind"] == "override")
        .expect("an override event")
        .clone();
    assert_eq!(pin["actor"], "operator");
    assert_eq!(pin["reason"], "provider incident #123");
    assert!(
        pin["at"].as_str().is_some_and(|a| a.ends_with('Z')),
        "{pin}"
    );

    // paging: after the first event, one at a time
    let first = get(&t, &format!("{D}/events?limit=1")).await;
    let next = first["next_after"].as_i64().expect("a next page");
    let second = get(&t, &format!("{D}/events?after={next}&limit=1")).await;
    assert!(second["events"][0]["id"].as_i64() > Some(next));

    // failback while pinned to the backup: refused by the machine, dry run or not
    for dry in [true, false] {
        let before = t.fingerprint().await;
        let r = t
            .call(
                Call::new(Method::POST, &format!("{D}/failback"))
                    .token(OPERATOR)
                    .json(json!({"reason": "try", "dry_run": dry})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert!(
            r.json()["detail"]
                .as_str()
                .is_some_and(|d| d.contains("pinned")),
            "{}",
            r.text
        );
        assert_eq!(t.fingerprint().await, before);
    }

    // unpin, then pause and resume
    let r = t
        .call(
            Call::new(Method::DELETE, &format!("{D}/pin"))
                .token(OPERATOR)
                .json(json!({"reason": "incident over"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json()["message"],
        "example.test unpinned by operator: incident over"
    );
    let r = t
        .call(
            Call::new(Method::POST, &format!("{D}/pause"))
                .token(ADMIN)
                .json(json!({"reason": "change freeze"})),
        )
        .await;
    assert_eq!(
        r.json()["message"],
        "example.test automation paused by admin: change freeze"
    );
    assert_eq!(r.json()["status"]["override"]["kind"], "paused");
    let r = t
        .call(
            Call::new(Method::POST, &format!("{D}/resume"))
                .token(OPERATOR)
                .json(json!({"reason": "freeze over"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // a manual failback (no health verdicts yet: nothing is Down) moves the primary back
    let r = t
        .call(
            Call::new(Method::POST, &format!("{D}/failback"))
                .token(OPERATOR)
                .json(json!({"reason": "back to normal"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json()["message"],
        "example.test failing back to primary by operator: back to normal"
    );
    wait_phase(&t, "primary").await;
    assert_eq!(
        t.dns.mx(),
        vec![format!("{PRIMARY_MX} 300")],
        "the TTL from before the failover"
    );

    // metrics: state gauges and request counters
    let r = t
        .call(Call::new(Method::GET, "/metrics").token(READER))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for needle in [
        r#"mxguard_domain_phase{domain="example.test",phase="primary"} 1"#,
        r#"mxguard_domain_phase{domain="example.test",phase="on_backup"} 0"#,
        r#"mxguard_side_health{domain="example.test",side="primary",health="unknown"} 1"#,
        r#"mxguard_domain_published{domain="example.test",side="primary"} 1"#,
        r#"mxguard_domain_override{domain="example.test",kind="pinned"} 0"#,
        "mxguard_transitions_total{domain=\"example.test\"}",
        "mxguard_change_intents_total{status=\"verified\"}",
        "mxguard_http_requests_total{method=\"PUT\",route=\"/v1/domains/{domain}/pin\",status=\"200\"}",
        "mxguard_http_request_duration_seconds_bucket",
    ] {
        assert!(r.text.contains(needle), "no {needle} in\n{}", r.text);
    }
}

#[tokio::test]
async fn snapshots_take_list_read_diff_revert() {
    let t = api::start(true).await;
    let r = t
        .call(Call::new(Method::POST, "/v1/snapshots").token(OPERATOR).json(
            json!({"domain": "example.test", "label": "before maintenance", "reason": "planned work"}),
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let v = r.json();
    assert_eq!(
        v["message"],
        "snapshot 1 of example.test (1 RRset(s)) taken by operator: planned work"
    );
    assert_eq!(v["snapshot"]["label"], "before maintenance");
    assert_eq!(v["snapshot"]["taken_by"], "operator");
    let list = get(&t, "/v1/snapshots?domain=example.test").await;
    assert_eq!(list["snapshots"].as_array().map(Vec::len), Some(1));
    let one = get(&t, "/v1/snapshots/1").await;
    assert_eq!(one["records"][0]["records"][0], PRIMARY_MX);
    let diff = get(&t, "/v1/snapshots/1/diff").await;
    assert_eq!(diff["identical"], true, "{diff}");

    // nothing to revert; then a failover, and the revert (admin) restores the snapshot
    let r = t
        .call(
            Call::new(Method::POST, "/v1/snapshots/1/revert")
                .token(ADMIN)
                .json(json!({"reason": "check"})),
        )
        .await;
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing to do")),
        "{}",
        r.text
    );
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
    let diff = get(&t, "/v1/snapshots/1/diff").await;
    assert_eq!(diff["identical"], false);
    let r = t
        .call(
            Call::new(Method::POST, "/v1/snapshots/1/revert")
                .token(OPERATOR)
                .json(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "revert needs admin");
    let r = t
        .call(
            Call::new(Method::POST, "/v1/snapshots/1/revert")
                .token(ADMIN)
                .json(json!({"reason": "end of drill"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(t.dns.mx(), vec![format!("{PRIMARY_MX} 300")]);
    assert!(r.json()["change_id"].as_i64().is_some());
    let events = get(&t, "/v1/domains/example.test/events").await;
    let revert = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["kind"] == "revert")
        .expect("a revert event")
        .clone();
    assert_eq!(revert["actor"], "admin");
    assert_eq!(revert["reason"], "end of drill");
}

/// One writer per domain, decided by the machine: a revert is refused while the controller's
/// change is in flight, and a command that would publish is refused while a revert is.
#[tokio::test]
async fn a_revert_and_a_change_never_write_the_domain_at_once() {
    let (t, held) = api::start_with(true).await;
    let r = t
        .call(
            Call::new(Method::POST, "/v1/snapshots")
                .token(OPERATOR)
                .json(json!({"domain": "example.test", "reason": "before the drill"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let held_change = || async {
        common::poll(
            "a change held at the provider",
            Duration::from_secs(10),
            || async { (held.waiting() == 1).then_some(()) },
        )
        .await
    };
    let call = |path: &'static str, token: &'static str, body: Value| {
        t.call(Call::new(Method::POST, path).token(token).json(body))
    };

    // On the backup (snapshot 3 holds its records; 2 is the failover's own), the controller's
    // failback is held at the
    // provider: a revert to snapshot 1 is refused and changes nothing.
    let r = call(FAILOVER, OPERATOR, json!({"reason": "drill"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    wait_phase(&t, "on_backup").await;
    let r = call(
        "/v1/snapshots",
        OPERATOR,
        json!({"domain": "example.test", "reason": "on the backup"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    held.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = call(FAILBACK, OPERATOR, json!({"reason": "drill over"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    held_change().await;
    let before = t.fingerprint().await;
    let r = call(
        REVERT_1,
        ADMIN,
        json!({"reason": "undo the drill", "force": true}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.problem(), "refused");
    assert!(
        r.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("being applied") || d.contains("in flight")),
        "{}",
        r.text
    );
    assert_eq!(
        t.fingerprint().await,
        before,
        "a refused revert changes nothing"
    );
    // a dry run only reads: it is answered
    let r = call(
        REVERT_1,
        ADMIN,
        json!({"reason": "what would it do", "dry_run": true}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    held.release();
    wait_phase(&t, "primary").await;
    assert_eq!(t.dns.mx(), vec![format!("{PRIMARY_MX} 300")]);

    // The revert to snapshot 3 is held at the provider: a failover is refused meanwhile;
    // released, the revert answers with its change, verified.
    held.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let revert = call(REVERT_3, ADMIN, json!({"reason": "back to the drill"}));
    let meanwhile = async {
        held_change().await;

        let r = call(FAILOVER, OPERATOR, json!({"reason": "drill again"})).await;
        held.release();
        r
    };
    let (reverted, failover) = tokio::join!(revert, meanwhile);
    assert_eq!(failover.status, StatusCode::CONFLICT, "{}", failover.text);
    assert!(failover.text.contains("in flight"), "{}", failover.text);
    assert_eq!(reverted.status, StatusCode::OK, "{}", reverted.text);
    assert!(
        reverted.json()["change_id"].as_i64().is_some(),
        "{}",
        reverted.text
    );
    assert_eq!(t.dns.mx(), vec![format!("{BACKUP_MX} 30")]);
    wait_phase(&t, "on_backup").await;
}

const FAILOVER: &str = "/v1/domains/example.test/failover";
const FAILBACK: &str = "/v1/domains/example.test/failback";
const REVERT_1: &str = "/v1/snapshots/1/revert";
const REVERT_3: &str = "/v1/snapshots/3/revert";

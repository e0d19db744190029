//! Bounded work in the API (issue 15): a read token asking for dry runs cannot stall a
//! domain's controller, and lists and `/metrics` never wait on an actor.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::api::{self, send, Call, MxView, BACKUP_MX, OPERATOR, READER};
use mxguard::actor::Actor;
use mxguard::api::{router, AppState, Providers};
use mxguard::config::{Config, StoreUrl};
use mxguard::engine::Engine;
use serde_json::json;

const D: &str = "/v1/domains/example.test";

#[tokio::test(flavor = "multi_thread")]
async fn dry_runs_waiting_at_the_provider_do_not_delay_a_failover() {
    let text = format!(
        "[server]\nexpensive_per_token = 64\n{}",
        api::config_text(true)
    );
    let (t, held) = api::start_with_text(&text).await;
    // The provider stops answering reads: 64 dry runs go out and wait there.
    held.hold_reads.store(true, Ordering::SeqCst);
    let plans: Vec<_> = (0..64)
        .map(|_| {
            let app = t.app.clone();
            tokio::spawn(async move {
                send(
                    &app,
                    Call::new(Method::GET, &format!("{D}/plan")).token(READER),
                )
                .await
            })
        })
        .collect();
    common::poll(
        "64 dry runs waiting at the provider at once",
        Duration::from_secs(20),
        || {
            let n = held.reads_waiting();
            async move { (n == 64).then_some(()) }
        },
    )
    .await;

    // The controller still decides at once: an operator's failover is answered meanwhile.
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        t.call(
            Call::new(Method::POST, &format!("{D}/failover"))
                .token(OPERATOR)
                .json(json!({"reason": "provider maintenance"})),
        ),
    )
    .await
    .expect("the failover is answered while 64 dry runs wait");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = t
        .call(Call::new(Method::GET, "/v1/domains").token(READER))
        .await;
    assert_eq!(
        list.json()["domains"][0]["phase"],
        "failing_over",
        "{}",
        list.text
    );

    // The provider answers again: the failover completes and every dry run is answered.
    held.release_reads();
    common::poll("the backup published", Duration::from_secs(20), || {
        let mx = t.dns.mx();
        async move { (mx == vec![format!("{BACKUP_MX} 30")]).then_some(()) }
    })
    .await;
    for p in plans {
        let r = p.await.expect("the dry run's task");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_and_metrics_answer_while_an_actor_does_not() {
    let config = Arc::new(Config::parse("idle.toml", &api::config_text(true)).expect("config"));
    let dir = tempfile::tempdir().expect("tempdir");
    let url =
        StoreUrl::parse(&format!("sqlite://{}", dir.path().join("i.db").display())).expect("url");
    let store = mxguard::store::open(&url).await.expect("store");
    store.migrate().await.expect("migrate");
    let dns = Arc::new(api::lab_dns());
    let leadership = api::sole_leader(&*store).await;
    let mut engine = Engine {
        leadership: leadership.clone(),
        ..Engine::default()
    };
    // A controller that never takes a message (stuck, say, behind a slow store).
    let d = &config.domains[0];
    let deps = api::memory_deps(&store, &dns, &leadership, &engine.events, &d.provider);
    let (stuck, handle) = Actor::new(d.clone(), deps);
    engine.domains.insert(d.name.clone(), handle);
    let app = router(AppState {
        store: store.clone(),
        engine,
        config: config.clone(),
        providers: Providers::default(),
    });
    for path in ["/v1/domains", "/metrics"] {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            send(&app, Call::new(Method::GET, path).token(READER)),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {path} waited on a stuck actor"));
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        assert!(r.text.contains("example.test"), "{path}: {}", r.text);
    }
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_gets_a_few_expensive_requests_at_once_and_others_are_not_affected() {
    let (t, held) = api::start_with(true).await;
    held.hold_reads.store(true, Ordering::SeqCst);
    let plan = |token: &'static str| {
        let app = t.app.clone();
        tokio::spawn(async move {
            send(
                &app,
                Call::new(Method::GET, &format!("{D}/plan")).token(token),
            )
            .await
        })
    };
    // The default: four at once per token.
    let first: Vec<_> = (0..4).map(|_| plan(READER)).collect();
    common::poll("four dry runs waiting", Duration::from_secs(20), || {
        let n = held.reads_waiting();
        async move { (n == 4).then_some(()) }
    })
    .await;
    let fifth = plan(READER).await.expect("the fifth");
    assert_eq!(
        fifth.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        fifth.text
    );
    assert_eq!(fifth.problem(), "too-many-requests");
    assert_eq!(fifth.headers["retry-after"], "1");
    // Another token is not held up by the first one's.
    let other = plan(OPERATOR);
    common::poll(
        "the other token's dry run waiting",
        Duration::from_secs(20),
        || {
            let n = held.reads_waiting();
            async move { (n == 5).then_some(()) }
        },
    )
    .await;
    held.release_reads();
    for p in first.into_iter().chain([other]) {
        let r = p.await.expect("a dry run");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    // The places are given back: the token may ask again.
    let again = plan(READER).await.expect("again");
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_not_answered_in_time_gets_a_503_and_changes_nothing() {
    let text = format!(
        "[server]\nrequest_timeout = \"1s\"\n{}",
        api::config_text(true)
    );
    let (t, held) = api::start_with_text(&text).await;
    let before = t.fingerprint().await;
    held.hold_reads.store(true, Ordering::SeqCst);
    let r = t
        .call(Call::new(Method::GET, &format!("{D}/plan")).token(READER))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.problem(), "request-timeout");
    assert!(
        r.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("request_timeout")),
        "{}",
        r.text
    );
    held.release_reads();
    assert_eq!(t.fingerprint().await, before);
}

//! Every answer against `openapi.yaml` (issue 18 item 6): each route is driven through the
//! router (`oneshot`, the real actor of `common::api`) to its success and to the errors that can
//! be reached in process, and each answer is checked by `schema::Doc`: documented status,
//! documented media type, body valid against the documented schema. Every documented 2xx must
//! have been seen. The validator itself is shown to reject wrong bodies, so a check that passes
//! everything would fail here.

mod common;
mod schema;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::Router;
use chrono::Utc;
use common::api::{self, send, Call, Reply, ADMIN, OPERATOR, READER};
use mxguard::actor::{Actor, ActorHandle};
use mxguard::api::{router, AppState, Providers};
use mxguard::engine::Engine;
use mxguard::health::{Health, TargetVerdict};
use mxguard::machine::Phase;
use mxguard::model::{Fqdn, Side};
use mxguard::vantage::Verdict;
use mxguard_core::conformance::memory::MemoryProvider;
use schema::{pointer, Doc};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const D: &str = "/v1/domains/example.test";

/// Sends `call` to `app`, checks its status is `want` and the answer against the document.
async fn expect(doc: &mut Doc, app: &Router, call: Call<'_>, want: StatusCode) -> Reply {
    let (method, path) = (call.method.to_string(), call.path.to_string());
    let reply = send(app, call).await;
    if reply.status != want {
        doc.failures.push(format!(
            "{method} {path}: {} (the test wanted {want}): {}",
            reply.status, reply.text
        ));
    }
    doc.check(&method, &path, &reply);
    reply
}

fn get(path: &str) -> Call<'_> {
    Call::new(Method::GET, path)
}

fn post<'a>(path: &'a str, token: &'a str, body: Value) -> Call<'a> {
    Call::new(Method::POST, path).token(token).json(body)
}

/// One probe round of each side, with a target's verdict, as the monitor would hand them over.
async fn feed(handle: &ActorHandle, primary: Health, backup: Health) {
    for (side, health) in [(Side::Primary, primary), (Side::Backup, backup)] {
        let at = Utc::now();
        let target = Fqdn::parse(match side {
            Side::Primary => "mx1.example.test",
            Side::Backup => "backup.example.test",
        })
        .expect("name");
        let verdict = TargetVerdict {
            target: target.clone(),
            up: health == Health::Up,
            soft: false,
            reason: "220 banner, STARTTLS".into(),
        };
        let (mut report, mut own) = api::round(side, health, at);
        report.verdicts = vec![verdict.clone()];
        own.verdicts = vec![Verdict::from(&verdict)].into();
        assert!(handle.round(report, own).await, "the actor takes rounds");
    }
}

async fn settled(handle: &ActorHandle, what: &str, phase: Phase) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = handle.status().await.expect("status");
        if s.state.phase == phase && s.state.in_flight.is_none() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A router on `t`'s store and configuration whose engine is `engine` and whose providers are
/// `providers`.
fn app_with(t: &api::TestApi, engine: Engine, providers: Providers) -> Router {
    router(AppState {
        store: t.store.clone(),
        engine,
        config: t.config.clone(),
        providers,
    })
}

/// The checks the issue asks for, against the lab's router and three variants of it (a follower
/// whose provider has no zone, a domain whose controller has stopped, a short request timeout),
/// and last against the lab's router with its store closed.
#[tokio::test(flavor = "multi_thread")]
async fn every_answer_matches_the_document() {
    let mut doc = Doc::load();
    // Drills probe through the domain's resolvers: none answers here, at once.
    let text = format!(
        "[server]\nexpensive_per_token = 1\n{}\n[checks]\nresolvers = [\"127.0.0.1:9\"]\nresolver_quorum = 1\ntimeout = \"300ms\"\n",
        api::config_text(true)
    );
    let (t, held) = api::start_with_text(&text).await;
    let app = t.app.clone();
    let handle = t.engine.domains.values().next().expect("a domain").clone();
    let d = &mut doc;

    // Open routes, and the read routes with and without a token.
    expect(d, &app, get("/healthz"), StatusCode::OK).await;
    let spec = expect(d, &app, get("/openapi.yaml"), StatusCode::OK).await;
    assert_eq!(spec.text, mxguard::api::OPENAPI);
    expect(d, &app, get("/readyz").token(READER), StatusCode::OK).await;
    expect(d, &app, get("/readyz"), StatusCode::UNAUTHORIZED).await;
    expect(d, &app, get("/metrics").token(READER), StatusCode::OK).await;
    expect(
        d,
        &app,
        get("/metrics").token("nope"),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect(d, &app, get("/v1/domains"), StatusCode::UNAUTHORIZED).await;

    // Settled on the primary, with a round of each side and their verdicts.
    feed(&handle, Health::Up, Health::Up).await;
    settled(&handle, "settled on the primary", Phase::Primary).await;
    expect(d, &app, get("/v1/domains").token(READER), StatusCode::OK).await;
    expect(d, &app, get(D).token(READER), StatusCode::OK).await;
    let nope = "/v1/domains/nope.test";
    expect(d, &app, get(nope).token(READER), StatusCode::NOT_FOUND).await;
    let bad_utf8 = "/v1/domains/%FF";
    expect(
        d,
        &app,
        get(bad_utf8).token(READER),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let plan = format!("{D}/plan");
    expect(d, &app, get(&plan).token(READER), StatusCode::OK).await;
    let nope_plan = format!("{nope}/plan");
    expect(
        d,
        &app,
        get(&nope_plan).token(READER),
        StatusCode::NOT_FOUND,
    )
    .await;
    let events = format!("{D}/events");
    expect(d, &app, get(&events).token(READER), StatusCode::OK).await;
    for q in ["?limit=0", "?limit=1001", "?bogus=1", "?after=x"] {
        let url = format!("{events}{q}");
        expect(d, &app, get(&url).token(READER), StatusCode::BAD_REQUEST).await;
    }
    let nope_events = format!("{nope}/events");
    expect(
        d,
        &app,
        get(&nope_events).token(READER),
        StatusCode::NOT_FOUND,
    )
    .await;

    // A mutation's refusals, in the order the server checks.
    let pause = format!("{D}/pause");
    let reason = json!({"reason": "schema test"});
    let p = pause.as_str();
    expect(
        d,
        &app,
        post(p, "nope", reason.clone()),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let call = Call::new(Method::POST, p).json(reason.clone());
    expect(d, &app, call, StatusCode::UNAUTHORIZED).await;
    expect(
        d,
        &app,
        post(p, READER, reason.clone()),
        StatusCode::FORBIDDEN,
    )
    .await;
    let call = post("/v1/domains/nope.test/pause", OPERATOR, reason.clone());
    expect(d, &app, call, StatusCode::NOT_FOUND).await;
    let call = post(p, OPERATOR, reason.clone()).header("idempotency-key", "a b");
    expect(d, &app, call, StatusCode::BAD_REQUEST).await;
    let call = Call::new(Method::POST, p).token(OPERATOR).raw("{}", None);
    expect(d, &app, call, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let big = json!({"reason": "x".repeat(20_000)});
    expect(
        d,
        &app,
        post(p, OPERATOR, big),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    let call = Call::new(Method::POST, p)
        .token(OPERATOR)
        .raw("{\"reason\":", Some("application/json"));
    expect(d, &app, call, StatusCode::BAD_REQUEST).await;
    for body in [
        json!({}),
        json!([]),
        json!({"reason": "x", "extra": 1}),
        json!({"reason": " \t"}),
        json!({"reason": "two\nlines"}),
        json!({"reason": "x".repeat(501)}),
    ] {
        let call = post(p, OPERATOR, body);
        expect(d, &app, call, StatusCode::UNPROCESSABLE_ENTITY).await;
    }

    // Pause (keyed: replayed, then reused with another body), resume, and their refusals.
    let key = "schema-test-1";
    let call = post(p, OPERATOR, reason.clone()).header("idempotency-key", key);
    expect(d, &app, call, StatusCode::OK).await;
    let call = post(p, OPERATOR, reason.clone()).header("idempotency-key", key);
    let replay = expect(d, &app, call, StatusCode::OK).await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    let call = post(p, OPERATOR, json!({"reason": "another"})).header("idempotency-key", key);
    let reused = expect(d, &app, call, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(reused.problem(), "idempotency-key-reused");
    let resume = format!("{D}/resume");
    expect(
        d,
        &app,
        post(&resume, OPERATOR, reason.clone()),
        StatusCode::OK,
    )
    .await;
    let again = post(&resume, OPERATOR, reason.clone());
    expect(d, &app, again, StatusCode::CONFLICT).await;

    // Pin the published side (no change), with `until` checked; unpin; unpin again.
    let pin = format!("{D}/pin");
    let pin_at = |until: chrono::DateTime<Utc>| {
        Call::new(Method::PUT, &pin).token(OPERATOR).json(json!({
            "side": "primary", "until": until.to_rfc3339(), "reason": "schema test"
        }))
    };
    let soon = Utc::now() + chrono::Duration::hours(1);
    expect(d, &app, pin_at(soon), StatusCode::OK).await;
    let past = Utc::now() - chrono::Duration::hours(1);
    expect(d, &app, pin_at(past), StatusCode::UNPROCESSABLE_ENTITY).await;
    let far = Utc::now() + chrono::Duration::days(400);
    expect(d, &app, pin_at(far), StatusCode::UNPROCESSABLE_ENTITY).await;
    let bad_side = Call::new(Method::PUT, &pin).token(OPERATOR).json(json!({
        "side": "sideways", "until": soon.to_rfc3339(), "reason": "schema test"
    }));
    expect(d, &app, bad_side, StatusCode::UNPROCESSABLE_ENTITY).await;
    let unpin = || {
        Call::new(Method::DELETE, &pin)
            .token(OPERATOR)
            .json(reason.clone())
    };
    expect(d, &app, unpin(), StatusCode::OK).await;
    expect(d, &app, unpin(), StatusCode::CONFLICT).await;

    // A maintenance window a day ahead (the status shows it), a second refused, bad times
    // refused, cancelled, and a cancel with none.
    let maintenance = format!("{D}/maintenance");
    let window = |start: chrono::DateTime<Utc>, end: chrono::DateTime<Utc>| {
        post(
            &maintenance,
            OPERATOR,
            json!({
                "side": "backup", "start": start.to_rfc3339(), "end": end.to_rfc3339(), "reason": "schema test"
            }),
        )
    };
    let day = Utc::now() + chrono::Duration::days(1);
    let hour = chrono::Duration::hours(1);
    expect(d, &app, window(day, day + hour), StatusCode::OK).await;
    let status = expect(d, &app, get(D).token(READER), StatusCode::OK).await;
    assert_eq!(
        status.json()["state"]["maintenance"]["stage"],
        "scheduled",
        "{}",
        status.text
    );
    expect(d, &app, window(day, day + hour), StatusCode::CONFLICT).await;
    expect(
        d,
        &app,
        window(day, day - hour),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let cancel = || {
        Call::new(Method::DELETE, &maintenance)
            .token(OPERATOR)
            .json(reason.clone())
    };
    expect(d, &app, cancel(), StatusCode::OK).await;
    expect(d, &app, cancel(), StatusCode::CONFLICT).await;
    let approve = format!("{D}/approve");
    let call = post(&approve, OPERATOR, reason.clone());
    expect(d, &app, call, StatusCode::CONFLICT).await;

    // Fail over (a dry run first): failback pending, approved, and an operator fails back. The timeline now holds an incident.
    let failover = format!("{D}/failover");
    let dry = json!({"reason": "schema test", "dry_run": true});
    expect(
        d,
        &app,
        post(&failover, OPERATOR, dry.clone()),
        StatusCode::OK,
    )
    .await;
    expect(
        d,
        &app,
        post(&failover, OPERATOR, reason.clone()),
        StatusCode::OK,
    )
    .await;
    // The primary is Up: on the backup, the failback guard holds at once.
    settled(&handle, "failed over", Phase::FailbackPending).await;
    let call = post(&failover, OPERATOR, reason.clone());
    expect(d, &app, call, StatusCode::CONFLICT).await;
    let status = expect(d, &app, get(D).token(READER), StatusCode::OK).await;
    assert!(status.json()["guard"].is_object(), "{}", status.text);
    expect(
        d,
        &app,
        post(&approve, OPERATOR, reason.clone()),
        StatusCode::OK,
    )
    .await;
    let failback = format!("{D}/failback");
    expect(d, &app, post(&failback, OPERATOR, dry), StatusCode::OK).await;
    expect(
        d,
        &app,
        post(&failback, OPERATOR, reason.clone()),
        StatusCode::OK,
    )
    .await;
    settled(&handle, "failed back", Phase::Primary).await;

    // A drill: its report, recorded in the timeline (no SMTP host, resolver or provider
    // credentials here: the drill fails, a 200 all the same); live refused without `drillable`.
    let drill = format!("{D}/drill");
    let ran = expect(
        d,
        &app,
        post(&drill, OPERATOR, reason.clone()),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ran.json()["report"]["result"], "fail", "{}", ran.text);
    let live = json!({"reason": "schema test", "live": true});
    let refused = expect(d, &app, post(&drill, OPERATOR, live), StatusCode::CONFLICT).await;
    assert!(refused.text.contains("drillable"), "{}", refused.text);
    let call = post("/v1/domains/nope.test/drill", OPERATOR, reason.clone());
    expect(d, &app, call, StatusCode::NOT_FOUND).await;
    let call = post(&drill, OPERATOR, json!({"reason": "x", "live": "yes"}));
    expect(d, &app, call, StatusCode::UNPROCESSABLE_ENTITY).await;
    // the `drill` event's evidence against its schema
    let all = format!("{events}?limit=1000");
    let timeline = expect(d, &app, get(&all).token(READER), StatusCode::OK).await;
    assert!(
        timeline.text.contains("\"kind\":\"drill\""),
        "{}",
        timeline.text
    );

    let incidents = format!("{D}/incidents");
    let list = expect(d, &app, get(&incidents).token(READER), StatusCode::OK).await;
    let id = list.json()["incidents"][0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("an incident: {}", list.text));
    let one = format!("{incidents}/{id}");
    expect(d, &app, get(&one).token(READER), StatusCode::OK).await;
    for missing in [format!("{incidents}/999999"), format!("{incidents}/x")] {
        let reply = expect(d, &app, get(&missing).token(READER), StatusCode::NOT_FOUND).await;
        assert_eq!(reply.problem(), "unknown-incident");
    }
    let url = format!("{nope}/incidents/{id}");
    let reply = expect(d, &app, get(&url).token(READER), StatusCode::NOT_FOUND).await;
    assert_eq!(reply.problem(), "unknown-domain");
    let url = format!("{incidents}?limit=0");
    expect(d, &app, get(&url).token(READER), StatusCode::BAD_REQUEST).await;
    let url = format!("{nope}/incidents");
    expect(d, &app, get(&url).token(READER), StatusCode::NOT_FOUND).await;

    // Snapshots: take (and its refusals), list, read, diff, revert.
    let take = |body: Value| post("/v1/snapshots", OPERATOR, body);
    let body = json!({"domain": api::DOMAIN, "label": "before", "reason": "schema test"});
    let taken = expect(d, &app, take(body), StatusCode::CREATED).await;
    let sid = taken.json()["snapshot"]["id"].as_i64().expect("an id");
    let body = json!({"domain": api::DOMAIN, "label": "", "reason": "schema test"});
    expect(d, &app, take(body), StatusCode::UNPROCESSABLE_ENTITY).await;
    let body = json!({"domain": "nope.test", "reason": "schema test"});
    expect(d, &app, take(body), StatusCode::NOT_FOUND).await;
    let body = json!({"domain": api::DOMAIN, "reason": "schema test"});
    let call = post("/v1/snapshots", READER, body);
    expect(d, &app, call, StatusCode::FORBIDDEN).await;
    expect(d, &app, get("/v1/snapshots").token(READER), StatusCode::OK).await;
    let url = "/v1/snapshots?domain=nope.test";
    expect(d, &app, get(url).token(READER), StatusCode::NOT_FOUND).await;
    let url = "/v1/snapshots?limit=501";
    expect(d, &app, get(url).token(READER), StatusCode::BAD_REQUEST).await;
    let snap = format!("/v1/snapshots/{sid}");
    expect(d, &app, get(&snap).token(READER), StatusCode::OK).await;
    for id in ["999999", "x"] {
        let url = format!("/v1/snapshots/{id}");
        expect(d, &app, get(&url).token(READER), StatusCode::NOT_FOUND).await;
    }
    let url = "/v1/snapshots/%FF";
    expect(d, &app, get(url).token(READER), StatusCode::BAD_REQUEST).await;
    let diff = format!("{snap}/diff");
    expect(d, &app, get(&diff).token(READER), StatusCode::OK).await;
    let revert = format!("{snap}/revert");
    let dry = json!({"reason": "schema test", "dry_run": true});
    expect(d, &app, post(&revert, ADMIN, dry), StatusCode::OK).await;
    expect(
        d,
        &app,
        post(&revert, ADMIN, reason.clone()),
        StatusCode::OK,
    )
    .await;
    let call = post(&revert, OPERATOR, reason.clone());
    expect(d, &app, call, StatusCode::FORBIDDEN).await;
    let call = post("/v1/snapshots/999999/revert", ADMIN, reason.clone());
    expect(d, &app, call, StatusCode::NOT_FOUND).await;

    // A second request reading the provider while the first waits there: 429.
    held.hold_reads.store(true, Ordering::SeqCst);
    let first = {
        let (app, plan) = (app.clone(), plan.clone());
        tokio::spawn(async move { send(&app, Call::new(Method::GET, &plan).token(READER)).await })
    };
    common::poll(
        "a plan waiting at the provider",
        Duration::from_secs(10),
        || {
            let n = held.reads_waiting();
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;
    let busy = expect(
        d,
        &app,
        get(&plan).token(READER),
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(busy.problem(), "too-many-requests");
    held.release_reads();
    let first = first.await.expect("the first plan");
    d.check("GET", &plan, &first);

    // No route, and a method a route does not serve.
    expect(
        d,
        &app,
        get("/v1/nope").token(READER),
        StatusCode::NOT_FOUND,
    )
    .await;
    let call = Call::new(Method::PATCH, "/v1/domains").token(ADMIN);
    expect(d, &app, call, StatusCode::METHOD_NOT_ALLOWED).await;

    // A follower whose provider holds no zone: mutations are refused with 503 `not-leader`,
    // provider reads fail with 502.
    let follower = mxguard::lease::Leadership::default();
    let empty = Arc::new(MemoryProvider::with_zones([] as [&Fqdn; 0]));
    let deps = api::memory_deps(&t.store, &empty, &follower, &Default::default(), "mem");
    let (actor, follower_handle) = Actor::new(t.config.domains[0].clone(), deps);
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    tokio::spawn(actor.run(stop));
    let mut engine = Engine {
        leadership: follower,
        ..Engine::default()
    };
    engine
        .domains
        .insert(t.config.domains[0].name.clone(), follower_handle);
    let providers = Providers::default();
    providers.insert("mem", empty.clone()).await;
    let f = app_with(&t, engine, providers);
    for path in [&pause, &failover, &revert, &drill] {
        let reply = expect(
            d,
            &f,
            post(path, ADMIN, reason.clone()),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
        assert_eq!(reply.problem(), "not-leader", "{path}");
    }
    expect(d, &f, get(&plan).token(READER), StatusCode::BAD_GATEWAY).await;
    expect(d, &f, get(&diff).token(READER), StatusCode::BAD_GATEWAY).await;
    let body = json!({"domain": api::DOMAIN, "reason": "schema test"});
    let call = post("/v1/snapshots", OPERATOR, body);
    expect(d, &f, call, StatusCode::BAD_GATEWAY).await;
    let dry = json!({"reason": "schema test", "dry_run": true});
    expect(d, &f, post(&revert, ADMIN, dry), StatusCode::BAD_GATEWAY).await;

    // A domain whose controller has stopped: 503 `unavailable`.
    let deps = api::memory_deps(
        &t.store,
        &t.dns,
        &t.engine.leadership,
        &Default::default(),
        "mem",
    );
    let (actor, stopped) = Actor::new(t.config.domains[0].clone(), deps);
    drop(actor);
    let mut engine = Engine {
        leadership: t.engine.leadership.clone(),
        ..Engine::default()
    };
    engine
        .domains
        .insert(t.config.domains[0].name.clone(), stopped);
    let g = app_with(&t, engine, Providers::default());
    for call in [get(D).token(READER), post(&pause, OPERATOR, reason.clone())] {
        let reply = expect(d, &g, call, StatusCode::SERVICE_UNAVAILABLE).await;
        assert_eq!(reply.problem(), "unavailable");
    }

    // A request not answered within `[server] request_timeout`: 503 `request-timeout`.
    let text = format!(
        "[server]\nrequest_timeout = \"1s\"\n{}",
        api::config_text(true)
    );
    let (slow, slow_held) = api::start_with_text(&text).await;
    slow_held.hold_reads.store(true, Ordering::SeqCst);
    let reply = expect(
        d,
        &slow.app,
        get(&plan).token(READER),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(reply.problem(), "request-timeout");
    slow_held.release_reads();

    // The store gone: `/readyz` says so (503, the JSON body of a store that does not answer).
    t.store.close().await;
    let reply = expect(
        d,
        &app,
        get("/readyz").token(READER),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(reply.json()["status"], "unavailable", "{}", reply.text);
    // ... and the routes that read it answer a bare 500.
    for path in [events.as_str(), "/v1/snapshots"] {
        let reply = expect(
            d,
            &app,
            get(path).token(READER),
            StatusCode::INTERNAL_SERVER_ERROR,
        )
        .await;
        assert!(reply.text.is_empty(), "{path}: {}", reply.text);
    }

    let unseen = doc.unseen_successes();
    assert!(
        doc.failures.is_empty() && unseen.is_empty(),
        "{} answer(s) disagree with openapi.yaml:\n{}\n\ndocumented successes never seen: {unseen:?}",
        doc.failures.len(),
        doc.failures.join("\n")
    );
}

/// The request schemas say what the server enforces: each body here is refused by the server
/// exactly when the document's schema rejects it.
#[tokio::test(flavor = "multi_thread")]
async fn request_schemas_reject_what_the_server_refuses() {
    let mut doc = Doc::load();
    let t = api::start(true).await;
    let body_schema = |op_path: &str, method: &str| {
        pointer(&[
            "paths",
            op_path,
            method,
            "requestBody",
            "content",
            "application/json",
            "schema",
        ])
    };
    let pause = body_schema("/v1/domains/{domain}/pause", "post");
    let pause = pause.as_str();
    let take = body_schema("/v1/snapshots", "post");
    let take = take.as_str();
    let drill = body_schema("/v1/domains/{domain}/drill", "post");
    let drill = drill.as_str();
    let cases: Vec<(&str, &str, Value)> = vec![
        (
            "/v1/domains/example.test/drill",
            drill,
            json!({"reason": "ok", "live": "yes"}),
        ),
        (
            "/v1/domains/example.test/drill",
            drill,
            json!({"reason": "ok", "dry_run": true}),
        ),
        (
            "/v1/domains/example.test/pause",
            pause,
            json!({"reason": "ok"}),
        ),
        (
            "/v1/domains/example.test/resume",
            pause,
            json!({"reason": " "}),
        ),
        (
            "/v1/domains/example.test/resume",
            pause,
            json!({"reason": ""}),
        ),
        (
            "/v1/domains/example.test/resume",
            pause,
            json!({"reason": "a\tb"}),
        ),
        (
            "/v1/domains/example.test/resume",
            pause,
            json!({"reason": "a\u{85}b"}),
        ),
        (
            "/v1/domains/example.test/resume",
            pause,
            json!({"reason": "y".repeat(501)}),
        ),
        (
            "/v1/domains/example.test/resume",
            pause,
            json!({"reason": 7}),
        ),
        (
            "/v1/domains/example.test/resume",
            pause,
            json!({"reason": "x", "why": "x"}),
        ),
        (
            "/v1/domains/example.test/resume",
            pause,
            json!({"reason": "é".repeat(500)}),
        ),
        (
            "/v1/snapshots",
            take,
            json!({"domain": api::DOMAIN, "reason": "ok", "label": "a b"}),
        ),
        (
            "/v1/snapshots",
            take,
            json!({"domain": api::DOMAIN, "reason": "ok", "label": null}),
        ),
        (
            "/v1/snapshots",
            take,
            json!({"domain": api::DOMAIN, "reason": "ok", "label": ""}),
        ),
        (
            "/v1/snapshots",
            take,
            json!({"domain": api::DOMAIN, "reason": "ok", "label": "a\nb"}),
        ),
        (
            "/v1/snapshots",
            take,
            json!({"domain": api::DOMAIN, "reason": "ok", "label": "z".repeat(101)}),
        ),
    ];
    let mut wrong = Vec::new();
    for (path, schema, body) in cases {
        let schema_ok = doc.errors(schema, &body).is_empty();
        let r = t.call(post(path, OPERATOR, body.clone())).await;
        let server_ok = r.status != StatusCode::UNPROCESSABLE_ENTITY;
        if schema_ok != server_ok {
            wrong.push(format!(
                "{path} {body}: the schema says {}, the server answered {}: {}",
                if schema_ok { "valid" } else { "invalid" },
                r.status,
                r.text
            ));
        }
    }
    // Idempotency-Key: what the parameter's schema allows, the server takes (else 400).
    let key_schema = "#/components/parameters/IdempotencyKey/schema";
    let long = "k".repeat(256);
    for key in ["k-1", "~!", "a b", "é", long.as_str(), &long[..255]] {
        let schema_ok = doc.errors(key_schema, &json!(key)).is_empty();
        let call = post(
            "/v1/domains/example.test/pause",
            OPERATOR,
            json!({"reason": 1}),
        );
        let call = call.header("idempotency-key", key);
        let r = t.call(call).await;
        // The body is invalid on purpose: past the key check the answer is a 422.
        let server_ok = r.status != StatusCode::BAD_REQUEST;
        if schema_ok != server_ok {
            wrong.push(format!(
                "Idempotency-Key {key:?}: the schema says {schema_ok}, the server answered {}",
                r.status
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn reply(status: u16, content_type: Option<&str>, body: &str) -> Reply {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert("content-type", ct.parse().expect("header"));
    }
    Reply {
        status: StatusCode::from_u16(status).expect("status"),
        headers,
        text: body.to_string(),
    }
}

/// The validator and the checks fail on what the document does not allow: a validator that
/// passes everything is caught here.
#[test]
fn the_checks_reject_answers_the_document_does_not_allow() {
    let mut doc = Doc::load();
    let summary = "#/components/schemas/DomainSummary";
    let good = json!({
        "domain": "example.test", "phase": "primary", "since": "2026-11-23T14:00:00Z",
        "active": "primary", "health": {"primary": "up", "backup": "unknown"},
        "override": null, "change_in_flight": null, "drift": false, "last_round": null
    });
    assert_eq!(doc.errors(summary, &good), Vec::<String>::new());
    let mut wrong = Vec::new();
    for (field, value) in [
        ("phase", json!("sideways")),
        ("since", json!("yesterday")),
        ("active", json!("both")),
        ("drift", json!("no")),
        ("extra", json!(1)),
        ("override", json!({"kind": "paused"})),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        wrong.push(bad);
    }
    let mut missing = good.clone();
    missing.as_object_mut().expect("object").remove("health");
    wrong.push(missing);
    for bad in &wrong {
        assert!(!doc.errors(summary, bad).is_empty(), "accepted: {bad}");
    }
    // A DomainStatus is a summary plus its own fields, and nothing else.
    let status = "#/components/schemas/DomainStatus";
    assert!(
        !doc.errors(status, &good).is_empty(),
        "a summary is not a status"
    );
    let change = "#/components/schemas/Change";
    let set = json!({"name": "example.test.", "type": "MX", "ttl": 300, "records": ["10 mx1.example.test."]});
    assert!(doc
        .errors(
            change,
            &json!({"op": "upsert", "set": set, "expected": null})
        )
        .is_empty());
    assert!(!doc
        .errors(
            change,
            &json!({"op": "replace", "set": set, "expected": null})
        )
        .is_empty());
    let reason = "#/components/schemas/Reason";
    assert!(doc
        .errors(reason, &json!("provider incident #123"))
        .is_empty());
    for bad in [
        json!(""),
        json!("  "),
        json!("a\nb"),
        json!("x".repeat(501)),
    ] {
        assert!(
            !doc.errors(reason, &bad).is_empty(),
            "accepted reason {bad}"
        );
    }

    // The checker: an undocumented status, a wrong media type, a problem of the wrong type, a
    // body where none is documented, a missing required header.
    let problem = |slug: &str, status: u16| {
        json!({"type": format!("https://mxguard.dev/problems/{slug}"), "title": "t", "status": status, "detail": "d"})
            .to_string()
    };
    let ok_body = json!({"status": "ok"}).to_string();
    let cases = [
        (
            "GET",
            "/healthz",
            reply(418, Some("application/json"), &ok_body),
        ),
        ("GET", "/healthz", reply(200, Some("text/plain"), &ok_body)),
        (
            "GET",
            "/healthz",
            reply(200, Some("application/json"), "{\"status\":\"fine\"}"),
        ),
        (
            "GET",
            D,
            reply(
                404,
                Some("application/problem+json"),
                &problem("unknown-snapshot", 404),
            ),
        ),
        (
            "GET",
            D,
            reply(
                404,
                Some("application/problem+json"),
                &problem("unknown-domain", 400),
            ),
        ),
        ("GET", D, reply(500, Some("application/json"), "{}")),
        (
            "GET",
            "/v1/domains",
            reply(
                401,
                Some("application/problem+json"),
                &problem("unauthorized", 401),
            ),
        ),
        (
            "GET",
            "/v1/nope",
            reply(
                404,
                Some("application/problem+json"),
                &problem("unknown-domain", 404),
            ),
        ),
        (
            "PATCH",
            "/v1/domains",
            reply(
                404,
                Some("application/problem+json"),
                &problem("not-found", 404),
            ),
        ),
    ];
    for (method, path, r) in cases {
        let before = doc.failures.len();
        doc.check(method, path, &r);
        assert_eq!(
            doc.failures.len(),
            before + 1,
            "{method} {path} {} {:?} was not flagged",
            r.status,
            r.text
        );
    }
    // And what is right passes.
    let before = doc.failures.len();
    doc.check(
        "GET",
        "/healthz",
        &reply(200, Some("application/json"), &ok_body),
    );
    let r = reply(
        404,
        Some("application/problem+json"),
        &problem("unknown-domain", 404),
    );
    doc.check("GET", D, &r);
    doc.check("GET", D, &reply(500, None, ""));
    assert_eq!(doc.failures[before..], [] as [String; 0]);
    // Only /healthz's 200 was seen: every other documented success is missing.
    assert!(doc
        .unseen_successes()
        .contains(&("GET".into(), "/v1/domains".into(), 200)));
}

/// A retry sent while the first request with its `Idempotency-Key` is still being answered (a
/// snapshot whose read is held at the provider) waits for the answer, then gets the documented
/// 409; the first is answered as documented once the provider goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_while_the_first_is_answered_gets_the_documented_409() {
    let mut doc = Doc::load();
    let (t, held) = api::start_with(true).await;
    held.hold_reads.store(true, Ordering::SeqCst);
    let take = || {
        let app = t.app.clone();
        async move {
            let body = json!({"domain": api::DOMAIN, "reason": "schema test"});
            let call = post("/v1/snapshots", OPERATOR, body).header("idempotency-key", "in-flight");
            send(&app, call).await
        }
    };
    let first = tokio::spawn(take());
    common::poll(
        "the snapshot's read held at the provider",
        Duration::from_secs(10),
        || {
            let n = held.reads_waiting();
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;
    let retry = take().await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text);
    assert_eq!(retry.problem(), "idempotency-key-in-progress");
    doc.check("POST", "/v1/snapshots", &retry);
    held.release_reads();
    let first = first.await.expect("the first take");
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    doc.check("POST", "/v1/snapshots", &first);
    assert!(doc.failures.is_empty(), "{}", doc.failures.join("\n"));
}

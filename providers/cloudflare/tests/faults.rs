//! Failure paths against the fake: 429 with `retry-after`, 5xx, slow answers, a batch that
//! fails as a whole, the batch size, and the per-record fallback.

mod common;
use mxguard_testpeers::cloudflare as fake;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, fake_with_zone, fqdn, guarded, provider, quick_policy, RecordingClock};
use fake::{ApiError, Fault, Route};
use mxguard_core::{
    diff, Change, ChangeSet, DnsProvider, ProviderError, RecordSet, RecordType, RetryPolicy,
    RrsetKey, Ttl,
};

const ZONE: &str = "faults.test";

fn set(name: &str, rtype: RecordType, ttl: u32, records: &[&str]) -> RecordSet {
    RecordSet::parse(fqdn(name), rtype, Ttl::new(ttl).expect("ttl"), records).expect("valid set")
}

fn create(set: &RecordSet) -> ChangeSet {
    ChangeSet {
        changes: vec![Change::Upsert {
            set: set.clone(),
            expected: None,
        }],
    }
}

fn count(fake: &fake::FakeCloudflare, needle: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.contains(needle))
        .count()
}

#[tokio::test]
async fn a_429_is_rate_limited_with_the_servers_retry_after() {
    let fake = fake_with_zone(ZONE).await;
    let p = provider(config(&fake, common::TOKEN));
    fake.inject(Route::Any, Fault::RateLimit { retry_after: 7 }, 1);
    let key = RrsetKey::new(fqdn(ZONE), RecordType::Mx);
    let got = p.read(&fqdn(ZONE), &[key]).await;
    assert_eq!(
        got,
        Err(ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        })
    );
}

#[tokio::test]
async fn guarded_waits_out_retry_after_then_lands_the_batch() {
    let fake = fake_with_zone(ZONE).await;
    let clock = RecordingClock::new();
    let policy = RetryPolicy {
        deadline: Duration::from_secs(600),
        ..quick_policy()
    };
    // the client's budget and the wrapper's gate on one clock, as the service builds them
    let client = mxguard_cloudflare::CloudflareProvider::new(
        config(&fake, common::TOKEN),
        Arc::new(clock.clone()),
    )
    .expect("provider");
    let p = guarded(client, Arc::new(clock.clone()), policy);
    let mx = set(ZONE, RecordType::Mx, 300, &["10 mx.backup.example.net."]);
    fake.inject(Route::Batch, Fault::RateLimit { retry_after: 7 }, 1);
    p.apply(&fqdn(ZONE), &create(&mx))
        .await
        .expect("lands after waiting");
    // waited at admission until 7 s after the 429 arrived (what is left of it when the wait
    // begins, a hair less than 7 s)
    assert!(
        clock
            .sleeps()
            .iter()
            .any(|s| *s >= Duration::from_millis(6_900)),
        "slept {:?}",
        clock.sleeps()
    );
    assert_eq!(count(&fake, "/batch"), 2, "{:#?}", fake.requests());
    assert_eq!(
        p.read(&fqdn(ZONE), &[RrsetKey::of(&mx)]).await,
        Ok(vec![mx])
    );
}

#[tokio::test]
async fn server_errors_are_transient_and_retried() {
    let fake = fake_with_zone(ZONE).await;
    let raw = provider(config(&fake, common::TOKEN));
    fake.inject(Route::Zones, Fault::Status(502), 1);
    let key = RrsetKey::new(fqdn(ZONE), RecordType::A);
    match raw.read(&fqdn(ZONE), std::slice::from_ref(&key)).await {
        Err(ProviderError::Transient(msg)) => assert!(msg.contains("502"), "{msg}"),
        other => panic!("expected Transient, got {other:?}"),
    }
    fake.inject(Route::List, Fault::Status(503), 2);
    let clock = RecordingClock::new();
    let policy = RetryPolicy {
        deadline: Duration::from_secs(600),
        ..quick_policy()
    };
    let p = guarded(
        provider(config(&fake, common::TOKEN)),
        Arc::new(clock.clone()),
        policy,
    );
    assert_eq!(p.read(&fqdn(ZONE), &[key]).await, Ok(vec![]));
    assert_eq!(
        clock.sleeps().len(),
        2,
        "two backoffs before the third attempt"
    );
}

#[tokio::test]
async fn a_slow_answer_times_out_as_transient_promptly() {
    let fake = fake_with_zone(ZONE).await;
    let p = provider(config(&fake, common::TOKEN).with_timeout(Duration::from_millis(300)));
    fake.inject(Route::Zones, Fault::Delay(Duration::from_secs(5)), 1);
    let started = Instant::now();
    let got = p.list_zone(&fqdn(ZONE)).await;
    assert!(
        matches!(&got, Err(ProviderError::Transient(m)) if m.contains("timed out")),
        "{got:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_batch_that_fails_as_a_whole_changes_nothing() {
    let fake = fake_with_zone(ZONE).await;
    let p = provider(config(&fake, common::TOKEN));
    let zone = fqdn(ZONE);
    let old = vec![
        set(
            &format!("mxg-a.{ZONE}"),
            RecordType::A,
            300,
            &["192.0.2.1", "192.0.2.2"],
        ),
        set(ZONE, RecordType::Mx, 300, &["10 mx1.example.net."]),
    ];
    p.apply(&zone, &diff(&old, &[]))
        .await
        .expect("initial state");
    let before = fake.records(ZONE);
    let new = vec![
        set(
            &format!("mxg-a.{ZONE}"),
            RecordType::A,
            60,
            &["198.51.100.1"],
        ),
        set(
            ZONE,
            RecordType::Mx,
            60,
            &["10 mx.backup.example.net.", "20 mx2.example.net."],
        ),
    ];
    fake.inject(
        Route::Batch,
        Fault::FailBatch(ApiError::validation(9021, "Invalid TTL")),
        1,
    );
    let got = p.apply(&zone, &diff(&new, &old)).await;
    match got {
        Err(ProviderError::Rejected { reason }) => assert!(
            reason.contains("1004") && reason.contains("9021"),
            "{reason}"
        ),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        fake.records(ZONE),
        before,
        "nothing of the failed batch may be applied"
    );
    p.apply(&zone, &diff(&new, &old))
        .await
        .expect("the same batch lands once the fault is gone");
    let keys: Vec<RrsetKey> = new.iter().map(RrsetKey::of).collect();
    let mut got = p.read(&zone, &keys).await.expect("read");
    got.sort_by_key(RrsetKey::of);
    let mut want = new.clone();
    want.sort_by_key(RrsetKey::of);
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_change_set_over_the_batch_size_is_rejected_before_sending() {
    let fake = fake_with_zone(ZONE).await;
    let p = provider(config(&fake, common::TOKEN).with_batch_size(4));
    assert_eq!(p.capabilities().max_changes_per_request, 2);
    let sets: Vec<RecordSet> = (0..5)
        .map(|i| {
            set(
                &format!("mxg-{i}.{ZONE}"),
                RecordType::A,
                300,
                &["192.0.2.1"],
            )
        })
        .collect();
    let got = p.apply(&fqdn(ZONE), &diff(&sets, &[])).await;
    assert!(
        matches!(&got, Err(ProviderError::Rejected { reason }) if reason.contains("batch size of 4")),
        "{got:?}"
    );
    assert_eq!(count(&fake, "/batch"), 0);
    assert!(fake.records(ZONE).is_empty());
}

#[tokio::test]
async fn without_the_batch_endpoint_it_falls_back_to_per_record_calls() {
    let fake = fake_with_zone(ZONE).await;
    fake.state().batch_disabled = true;
    let p = provider(config(&fake, common::TOKEN));
    assert!(p.capabilities().atomic);
    let zone = fqdn(ZONE);
    let a = set(
        &format!("mxg-a.{ZONE}"),
        RecordType::A,
        300,
        &["192.0.2.1", "192.0.2.2"],
    );
    p.apply(&zone, &create(&a))
        .await
        .expect("per-record creates");
    let b = set(
        &format!("mxg-a.{ZONE}"),
        RecordType::A,
        120,
        &["192.0.2.2", "192.0.2.3", "192.0.2.4"],
    );
    p.apply(
        &zone,
        &diff(std::slice::from_ref(&b), std::slice::from_ref(&a)),
    )
    .await
    .expect("per-record patches and posts");
    assert_eq!(p.read(&zone, &[RrsetKey::of(&b)]).await, Ok(vec![b]));
    assert!(!p.capabilities().atomic, "per-record calls are not atomic");
    assert_eq!(
        count(&fake, "/batch"),
        1,
        "the batch endpoint is tried once, then remembered"
    );
    assert!(
        count(&fake, "PATCH ") >= 2 && count(&fake, "POST ") >= 3,
        "{:#?}",
        fake.requests()
    );
}

#[tokio::test]
async fn a_record_deleted_behind_our_back_fails_the_whole_batch() {
    let fake = fake_with_zone(ZONE).await;
    let p = provider(config(&fake, common::TOKEN));
    let zone = fqdn(ZONE);
    let a = set(&format!("mxg-a.{ZONE}"), RecordType::A, 300, &["192.0.2.1"]);
    p.apply(&zone, &create(&a)).await.expect("create");
    // Someone deletes the record between mxguard's read and its batch: the fake answers the
    // list and then deletes it before the batch arrives.
    fake.inject(Route::Batch, Fault::Delay(Duration::from_millis(50)), 1);
    let batches_before = count(&fake, "/batch");
    let new = set(&format!("mxg-a.{ZONE}"), RecordType::A, 300, &["192.0.2.9"]);
    let mx = set(ZONE, RecordType::Mx, 300, &["10 mx.backup.example.net."]);
    let cs = ChangeSet {
        changes: vec![
            Change::Upsert {
                set: mx.clone(),
                expected: None,
            },
            Change::Upsert {
                set: new,
                expected: Some(a.clone()),
            },
        ],
    };
    let p = Arc::new(p);
    let applying = {
        let p = Arc::clone(&p);
        let zone = zone.clone();
        tokio::spawn(async move { p.apply(&zone, &cs).await })
    };
    // wait (bounded) until the batch is in flight, then delete the record under it
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&fake, "/batch") == batches_before {
        assert!(Instant::now() < deadline, "the batch never came");
        tokio::task::yield_now().await;
    }
    fake.edit(ZONE, |records, _| records.retain(|r| r.rtype != "A"));
    let got = applying.await.expect("apply task");
    assert!(
        matches!(&got, Err(ProviderError::Rejected { reason }) if reason.contains("81044")),
        "{got:?}"
    );
    assert_eq!(
        p.read(&zone, &[RrsetKey::of(&mx)]).await,
        Ok(vec![]),
        "the MX of the failed batch is not there"
    );
}

/// The guarded stack on a recording clock, for the retry tests below.
fn retrying(fake: &fake::FakeCloudflare) -> Arc<dyn DnsProvider> {
    let clock = RecordingClock::new();
    guarded(
        provider(config(fake, common::TOKEN)),
        Arc::new(clock),
        quick_policy(),
    )
}

#[tokio::test]
async fn a_lock_timeout_409_is_retried_and_the_batch_lands_once() {
    let fake = fake_with_zone(ZONE).await;
    let p = retrying(&fake);
    let mx = set(ZONE, RecordType::Mx, 300, &["10 mx.backup.example.net."]);
    fake.inject(Route::Batch, Fault::LockTimeout, 1);
    p.apply(&fqdn(ZONE), &create(&mx))
        .await
        .expect("a lock timeout is retried, as Cloudflare's SDK does");
    assert_eq!(count(&fake, "/batch"), 2, "{:#?}", fake.requests());
    assert_eq!(fake.writes(), 1, "applied once");
}

#[tokio::test]
async fn x_should_retry_overrides_the_status_both_ways() {
    let fake = fake_with_zone(ZONE).await;
    let p = retrying(&fake);
    let mx = set(ZONE, RecordType::Mx, 300, &["10 mx.backup.example.net."]);
    // a 503 that Cloudflare says not to retry: one attempt, a permanent refusal
    fake.inject(
        Route::Batch,
        Fault::ShouldRetry {
            status: 503,
            retry: false,
        },
        1,
    );
    let got = p.apply(&fqdn(ZONE), &create(&mx)).await;
    assert!(
        matches!(&got, Err(ProviderError::Rejected { reason }) if reason.contains("x-should-retry: false")),
        "{got:?}"
    );
    assert_eq!(count(&fake, "/batch"), 1, "not retried");
    // a 400 that Cloudflare says to retry: retried, and it lands
    fake.inject(
        Route::Batch,
        Fault::ShouldRetry {
            status: 400,
            retry: true,
        },
        1,
    );
    p.apply(&fqdn(ZONE), &create(&mx))
        .await
        .expect("retried on Cloudflare's word");
    assert_eq!(count(&fake, "/batch"), 3);
    assert_eq!(fake.writes(), 1);
}

#[tokio::test]
async fn a_zone_deleted_and_added_again_is_found_again_after_one_not_found() {
    let fake = fake_with_zone(ZONE).await;
    let p = provider(config(&fake, common::TOKEN));
    let key = RrsetKey::new(fqdn(ZONE), RecordType::Mx);
    assert_eq!(
        p.read(&fqdn(ZONE), std::slice::from_ref(&key)).await,
        Ok(vec![])
    );
    // the zone is deleted and added again: it has a new id, the cached one is unroutable
    fake.state().zones.retain(|z| z.name != ZONE);
    fake.add_zone(ZONE);
    let got = p.read(&fqdn(ZONE), std::slice::from_ref(&key)).await;
    assert!(
        matches!(&got, Err(ProviderError::NotFound(why)) if why.contains("7003") && why.contains("HTTP 400")),
        "Cloudflare answers 400 with 7003 and 7000: {got:?}"
    );
    assert_eq!(
        p.read(&fqdn(ZONE), &[key]).await,
        Ok(vec![]),
        "the zone is looked up again"
    );
    assert_eq!(count(&fake, "/zones?name="), 2, "{:#?}", fake.requests());
}

#[tokio::test]
async fn the_batch_endpoint_is_tried_again_after_some_per_record_applies() {
    let fake = fake_with_zone(ZONE).await;
    fake.state().batch_disabled = true;
    let p = provider(config(&fake, common::TOKEN));
    let zone = fqdn(ZONE);
    let mut live: Option<RecordSet> = None;
    let mut apply = |i: u32| {
        let next = set(ZONE, RecordType::Mx, 300 + i, &["10 mx.example.net."]);
        let changes = match &live {
            Some(prev) => diff(std::slice::from_ref(&next), std::slice::from_ref(prev)),
            None => create(&next),
        };
        live = Some(next);
        changes
    };
    for i in 0..mxguard_cloudflare::BATCH_REPROBE_EVERY - 1 {
        p.apply(&zone, &apply(i)).await.expect("per-record apply");
    }
    assert!(!p.capabilities().atomic, "per-record calls are not atomic");
    p.apply(&zone, &apply(98)).await.expect("per-record apply");
    assert_eq!(
        count(&fake, "/batch"),
        1,
        "tried once, then per-record calls"
    );
    // the endpoint is back (a passing routing fault): the next apply tries it and uses it
    fake.state().batch_disabled = false;
    p.apply(&zone, &apply(99)).await.expect("a batch again");
    assert_eq!(count(&fake, "/batch"), 2, "{:#?}", fake.requests());
    assert!(p.capabilities().atomic, "atomic again");
}

#[tokio::test]
async fn a_bare_405_from_something_in_between_is_not_taken_for_a_missing_batch_endpoint() {
    let fake = fake_with_zone(ZONE).await;
    let p = provider(config(&fake, common::TOKEN));
    let mx = set(ZONE, RecordType::Mx, 300, &["10 mx.backup.example.net."]);
    fake.inject(Route::Batch, Fault::Bare(405), 1);
    let got = p.apply(&fqdn(ZONE), &create(&mx)).await;
    assert!(got.is_err(), "{got:?}");
    assert!(p.capabilities().atomic, "still on the batch endpoint");
}

//! One budget per user, against the fake: a 429 stops every call of the budget until its
//! `retry-after` (nothing is sent meanwhile, whichever entry asks), the `Ratelimit` header stops
//! the spending before the quota is gone, and an apply plans on the read made just before it
//! (one request per change instead of two).

mod common;
use mxguard_testpeers::cloudflare as fake;

use std::sync::Arc;
use std::time::Duration;

use common::{config, fake_with_zone, fqdn, TOKEN};
use fake::{FakeCloudflare, FakeConfig, Fault, Perms, RateLimitPolicy, Record, Route};
use mxguard_cloudflare::CloudflareProvider;
use mxguard_core::{
    Change, ChangeSet, DnsProvider, ProviderError, RecordSet, RecordType, RrsetKey, TokioClock, Ttl,
};

const ZONE: &str = "budget.test";
const OTHER_TOKEN: &str = "cf-test-token-of-the-same-user-0042";

fn mx_key() -> RrsetKey {
    RrsetKey::new(fqdn(ZONE), RecordType::Mx)
}

fn mx(ttl: u32, hosts: &[&str]) -> RecordSet {
    RecordSet::parse(
        fqdn(ZONE),
        RecordType::Mx,
        Ttl::new(ttl).expect("ttl"),
        hosts,
    )
    .expect("valid set")
}

fn seed_mx(fake: &FakeCloudflare, host: &str) {
    let (name, host) = (ZONE.to_string(), host.to_string());
    fake.edit(ZONE, move |records, new_id| {
        records.push(Record {
            id: new_id(),
            rtype: "MX".into(),
            name,
            content: host,
            priority: Some(10),
            ttl: 300,
            proxied: false,
        });
    });
}

/// Two provider entries (two tokens of one user) spending one budget.
fn two_entries(fake: &FakeCloudflare) -> (CloudflareProvider, CloudflareProvider) {
    let first = config(fake, TOKEN);
    let budget = CloudflareProvider::budget_for(&first, 4, Arc::new(TokioClock)).expect("budget");
    let a = CloudflareProvider::with_budget(first, budget.clone()).expect("provider");
    let b = CloudflareProvider::with_budget(config(fake, OTHER_TOKEN), budget).expect("provider");
    (a, b)
}

#[tokio::test]
async fn a_429_stops_every_entry_of_the_budget_and_nothing_is_sent_until_it_ends() {
    let fake = fake_with_zone(ZONE).await;
    fake.add_token(OTHER_TOKEN, Perms::FULL);
    let (a, b) = two_entries(&fake);
    // the zone id is cached first, so each read below is one request
    a.read(&fqdn(ZONE), &[mx_key()]).await.expect("read");
    b.read(&fqdn(ZONE), &[mx_key()]).await.expect("read");
    fake.inject(Route::Any, Fault::RateLimit { retry_after: 60 }, 1);
    let refused = a.read(&fqdn(ZONE), &[mx_key()]).await;
    let Err(ProviderError::RateLimited {
        retry_after: Some(after),
    }) = refused
    else {
        panic!("expected the 429, got {refused:?}");
    };
    assert_eq!(after, Duration::from_secs(60));
    let sent = fake.request_count();
    // the other entry, with its own token, is refused too, without asking
    let other = b.read(&fqdn(ZONE), &[mx_key()]).await;
    match other {
        Err(ProviderError::RateLimited {
            retry_after: Some(left),
        }) => assert!(
            left <= Duration::from_secs(60) && left > Duration::from_secs(50),
            "{left:?}"
        ),
        other => panic!("expected the budget's lockout, got {other:?}"),
    }
    let write = b
        .apply(
            &fqdn(ZONE),
            &ChangeSet {
                changes: vec![Change::Upsert {
                    set: mx(60, &["10 backup.example."]),
                    expected: None,
                }],
            },
        )
        .await;
    assert!(
        matches!(write, Err(ProviderError::RateLimited { .. })),
        "{write:?}"
    );
    assert_eq!(
        fake.request_count(),
        sent,
        "nothing sent during the lockout"
    );
}

#[tokio::test]
async fn the_ratelimit_header_stops_the_spending_before_the_quota_is_gone() {
    let fake = FakeCloudflare::start(FakeConfig {
        rate_limit: Some(RateLimitPolicy {
            quota: 40,
            window: Duration::from_secs(600),
        }),
        ..FakeConfig::default()
    })
    .await;
    // Cloudflare counts the user's tokens together
    fake.user("ops")
        .token(TOKEN, Perms::FULL)
        .token(OTHER_TOKEN, Perms::FULL);
    fake.add_zone(ZONE);
    let (a, b) = two_entries(&fake);
    let mut outcome = None;
    for i in 0..100 {
        // both entries spend, as two tools of one user would
        let p = if i % 2 == 0 { &a } else { &b };
        if let Err(e) = p.read(&fqdn(ZONE), &[mx_key()]).await {
            outcome = Some(e);
            break;
        }
    }
    assert!(
        matches!(
            outcome,
            Some(ProviderError::RateLimited {
                retry_after: Some(_)
            })
        ),
        "the budget closes before the quota is spent: {outcome:?}"
    );
    let stats = fake.limit_stats();
    assert_eq!(stats.refused, 0, "no request was over the quota: {stats:?}");
    assert!(fake.request_count() <= 40, "{}", fake.request_count());
}

#[tokio::test]
async fn an_apply_right_after_a_read_plans_on_it_and_sends_only_the_batch() {
    let fake = fake_with_zone(ZONE).await;
    seed_mx(&fake, "mx1.example");
    let p = common::provider(config(&fake, TOKEN));
    let live = p.read(&fqdn(ZONE), &[mx_key()]).await.expect("read");
    assert_eq!(live, vec![mx(300, &["10 mx1.example."])]);
    let before = fake.request_count();
    let change = ChangeSet {
        changes: vec![Change::Upsert {
            set: mx(60, &["10 backup.example."]),
            expected: Some(live[0].clone()),
        }],
    };
    p.apply(&fqdn(ZONE), &change).await.expect("apply");
    let sent: Vec<String> = fake.requests().into_iter().skip(before).collect();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert!(
        sent[0].starts_with("POST") && sent[0].ends_with("/batch"),
        "{sent:#?}"
    );
    assert_eq!(
        p.read(&fqdn(ZONE), &[mx_key()]).await.expect("read back"),
        vec![mx(60, &["10 backup.example."])]
    );
}

#[tokio::test]
async fn a_record_replaced_since_the_read_fails_the_batch_and_nothing_is_written() {
    let fake = fake_with_zone(ZONE).await;
    seed_mx(&fake, "mx1.example");
    let p = common::provider(config(&fake, TOKEN));
    let live = p.read(&fqdn(ZONE), &[mx_key()]).await.expect("read");
    // someone replaces the record (a new id) between mxguard's read and its apply
    fake.edit(ZONE, |records, _| records.retain(|r| r.rtype != "MX"));
    seed_mx(&fake, "mx9.example");
    let writes = fake.writes();
    let change = ChangeSet {
        changes: vec![Change::Upsert {
            set: mx(60, &["10 backup.example."]),
            expected: Some(live[0].clone()),
        }],
    };
    let out = p.apply(&fqdn(ZONE), &change).await;
    assert!(
        matches!(out, Err(ProviderError::Rejected { .. })),
        "the batch naming the old record id is refused: {out:?}"
    );
    assert_eq!(fake.writes(), writes);
    let mx_now: Vec<String> = fake
        .records(ZONE)
        .into_iter()
        .filter(|r| r.rtype == "MX")
        .map(|r| r.content)
        .collect();
    assert_eq!(mx_now, vec!["mx9.example"]);
    // the next apply reads again: the expectation no longer holds, so it is refused as well
    let again = p.apply(&fqdn(ZONE), &change).await;
    assert!(
        matches!(again, Err(ProviderError::Rejected { .. })),
        "{again:?}"
    );
}

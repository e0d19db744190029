//! Cloudflare behaviour beyond the shared kit, against the fake (raw provider, no retries):
//! paging, reading little, the record shapes written, TTL rules, secrets, and access checks.

mod common;
use mxguard_testpeers::cloudflare as fake;

use std::time::Duration;

use common::{config, fake_with_zone, fqdn, provider, TOKEN};
use fake::{FakeCloudflare, FakeConfig, Fault, Perms, Record, Route};
use mxguard_cloudflare::{Missing, Outcome, Plan};
use mxguard_core::{diff, Change, ChangeSet, DnsProvider, RecordSet, RecordType, RrsetKey, Ttl};

const ZONE: &str = "behaviour.test";

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

#[tokio::test]
async fn listing_follows_every_page() {
    let fake = fake_with_zone(ZONE).await;
    let p = provider(config(&fake, TOKEN).with_per_page(10));
    let sets: Vec<RecordSet> = (0..25)
        .map(|i| {
            set(
                &format!("mxg-{i}.{ZONE}"),
                RecordType::A,
                300,
                &["192.0.2.1"],
            )
        })
        .collect();
    p.apply(&fqdn(ZONE), &diff(&sets, &[]))
        .await
        .expect("create");
    fake.state().requests.clear();
    let listed = p.list_zone(&fqdn(ZONE)).await.expect("list");
    assert_eq!(listed.len(), 25);
    let pages: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET") && r.contains("/dns_records?page="))
        .collect();
    assert_eq!(pages.len(), 3, "{pages:#?}");
    assert!(pages[2].contains("page=3&per_page=10"), "{pages:#?}");
}

#[tokio::test]
async fn a_small_read_asks_by_name_and_type_and_the_zone_id_is_cached() {
    let fake = fake_with_zone(ZONE).await;
    let p = provider(config(&fake, TOKEN));
    let key = RrsetKey::new(fqdn(ZONE), RecordType::Mx);
    for _ in 0..3 {
        assert_eq!(
            p.read(&fqdn(ZONE), std::slice::from_ref(&key)).await,
            Ok(vec![])
        );
    }
    let requests = fake.requests();
    assert_eq!(
        requests.iter().filter(|r| r.contains("/zones?")).count(),
        1,
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.contains("/dns_records?"))
            .all(|r| r.contains("name.exact=behaviour.test&type=MX")),
        "{requests:#?}"
    );
}

/// type, name, content, priority, ttl, proxied
type Shape<'a> = (&'a str, &'a str, &'a str, Option<u16>, u32, bool);

#[tokio::test]
async fn records_are_written_in_cloudflares_shape() {
    let fake = fake_with_zone(ZONE).await;
    let p = provider(config(&fake, TOKEN));
    let zone = fqdn(ZONE);
    let host = format!("mxg-mx.{ZONE}");
    // an address someone proxied in the dashboard: mxguard makes it DNS-only when it writes the set
    fake.edit(ZONE, |records, id| {
        records.push(Record {
            id: id(),
            rtype: "A".into(),
            name: host.clone(),
            content: "192.0.2.1".into(),
            priority: None,
            ttl: 1,
            proxied: true,
        });
    });
    let live = set(&host, RecordType::A, 300, &["192.0.2.1"]);
    assert_eq!(
        p.read(&zone, &[RrsetKey::of(&live)]).await,
        Ok(vec![live.clone()]),
        "auto TTL reads as 300"
    );
    let desired = vec![
        set(&host, RecordType::A, 300, &["192.0.2.1"]),
        set(&host, RecordType::Aaaa, 300, &["2001:db8:0:0::1"]),
        set(ZONE, RecordType::Mx, 300, &[&format!("10 {host}.")]),
        set(
            &format!("mxg-txt.{ZONE}"),
            RecordType::Txt,
            300,
            &["v=spf1 -all"],
        ),
    ];
    let mut cs = diff(&desired, &[]);
    cs.changes.retain(|c| c.key() != RrsetKey::of(&live));
    cs.changes.push(Change::Upsert {
        set: desired[0].clone(),
        expected: Some(live),
    });
    p.apply(&zone, &cs).await.expect("apply");
    let mut records = fake.records(ZONE);
    records.sort_by(|a, b| (&a.rtype, &a.name).cmp(&(&b.rtype, &b.name)));
    let shape: Vec<Shape<'_>> = records
        .iter()
        .map(|r| {
            (
                r.rtype.as_str(),
                r.name.as_str(),
                r.content.as_str(),
                r.priority,
                r.ttl,
                r.proxied,
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("A", host.as_str(), "192.0.2.1", None, 300, false),
            ("AAAA", host.as_str(), "2001:db8::1", None, 300, false),
            ("MX", ZONE, host.as_str(), Some(10), 300, false),
            (
                "TXT",
                "mxg-txt.behaviour.test",
                "\"v=spf1 -all\"",
                None,
                300,
                false
            ),
        ]
    );
}

#[tokio::test]
async fn ttls_follow_the_plan_minimum_and_the_ceiling() {
    let fake = fake_with_zone(ZONE).await;
    let zone = fqdn(ZONE);
    let p = provider(config(&fake, TOKEN));
    assert_eq!(p.capabilities().min_ttl, 60);
    let low = set(&format!("mxg-low.{ZONE}"), RecordType::A, 5, &["192.0.2.1"]);
    p.apply(&zone, &create(&low)).await.expect("raised to 60");
    assert_eq!(fake.records(ZONE)[0].ttl, 60);
    for (i, ttl) in [60u32, 61, 3_600, 86_400].into_iter().enumerate() {
        let s = set(
            &format!("mxg-t{i}.{ZONE}"),
            RecordType::A,
            ttl,
            &["192.0.2.2"],
        );
        p.apply(&zone, &create(&s))
            .await
            .expect("within Cloudflare's range");
        assert_eq!(p.read(&zone, &[RrsetKey::of(&s)]).await, Ok(vec![s]));
    }
    let week = set(
        &format!("mxg-week.{ZONE}"),
        RecordType::A,
        604_800,
        &["192.0.2.3"],
    );
    let got = p.apply(&zone, &create(&week)).await;
    assert!(
        matches!(&got, Err(mxguard_core::ProviderError::Rejected { reason }) if reason.contains("86400")),
        "{got:?}"
    );

    let ent = FakeCloudflare::start(FakeConfig {
        enterprise: true,
        ..FakeConfig::default()
    })
    .await;
    ent.add_token(TOKEN, Perms::FULL);
    ent.add_zone(ZONE);
    let p = provider(config(&ent, TOKEN).with_plan(Plan::Enterprise));
    let thirty = set(&format!("mxg-30.{ZONE}"), RecordType::A, 30, &["192.0.2.4"]);
    p.apply(&zone, &create(&thirty))
        .await
        .expect("30 s on Enterprise");
    assert_eq!(
        p.read(&zone, &[RrsetKey::of(&thirty)]).await,
        Ok(vec![thirty])
    );
}

#[tokio::test]
async fn the_token_never_shows_in_logs_errors_or_debug() {
    let logs = common::capture_logs();
    let fake = fake_with_zone(ZONE).await;
    let zone = fqdn(ZONE);
    let wrong = "cf-wrong-token-aaaabbbbccccdddd";
    let good = provider(config(&fake, TOKEN).with_timeout(Duration::from_millis(300)));
    let bad = provider(config(&fake, wrong));
    let mut seen = vec![format!("{good:?}"), format!("{:?}", config(&fake, TOKEN))];
    let a = set(&format!("mxg-a.{ZONE}"), RecordType::A, 300, &["192.0.2.1"]);
    seen.push(format!("{:?}", good.apply(&zone, &create(&a)).await));
    seen.push(format!("{:?}", bad.apply(&zone, &create(&a)).await));
    fake.inject(Route::Any, Fault::RateLimit { retry_after: 3 }, 1);
    seen.push(format!("{:?}", good.read(&zone, &[RrsetKey::of(&a)]).await));
    fake.inject(Route::Any, Fault::Delay(Duration::from_secs(2)), 1);
    seen.push(format!("{:?}", good.list_zone(&zone).await));
    seen.push(good.verify_access(&zone).await.to_string());
    seen.push(bad.verify_access(&zone).await.to_string());
    fake.stop().await;
    let down = good.read(&zone, &[RrsetKey::of(&a)]).await;
    seen.push(format!(
        "{down:?} {}",
        down.clone()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    ));
    let text = format!("{}\n{}", seen.join("\n"), logs.text());
    assert!(
        text.contains("cloudflare request"),
        "debug logs were captured: {text}"
    );
    for secret in [TOKEN, wrong] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
}

#[tokio::test]
async fn verify_access_says_what_is_missing() {
    let fake = fake_with_zone(ZONE).await;
    let zone = fqdn(ZONE);
    fake.add_token("read-only", Perms::READ_ONLY);
    fake.add_token(
        "no-zone-read",
        Perms {
            zone_read: false,
            ..Perms::FULL
        },
    );
    fake.add_token(
        "expired",
        Perms {
            active: false,
            ..Perms::FULL
        },
    );

    let outcome = |r: &mxguard_cloudflare::AccessReport, check: &str| {
        r.checks
            .iter()
            .find(|c| c.check == check)
            .map(|c| c.outcome.clone())
    };
    let missing = |o: Option<Outcome>| match o {
        Some(Outcome::Failed { missing, .. }) => Some(missing),
        _ => None,
    };

    let full = provider(config(&fake, TOKEN));
    let r = full.verify_access(&zone).await;
    assert!(r.is_ok(), "{r}");
    assert!(
        matches!(outcome(&r, "dns_write"), Some(Outcome::Skipped { .. })),
        "{r}"
    );
    let r = full.verify_write_access(&zone).await;
    assert!(
        matches!(outcome(&r, "dns_write"), Some(Outcome::Passed { .. })),
        "{r}"
    );
    assert_eq!(
        fake.records(ZONE),
        vec![],
        "the write check changes nothing"
    );

    let r = provider(config(&fake, "read-only"))
        .verify_write_access(&zone)
        .await;
    assert_eq!(
        missing(outcome(&r, "dns_write")),
        Some(Missing::Permission),
        "{r}"
    );
    assert!(
        matches!(outcome(&r, "dns_read"), Some(Outcome::Passed { .. })),
        "{r}"
    );

    let r = provider(config(&fake, "no-zone-read"))
        .verify_access(&zone)
        .await;
    assert_eq!(
        missing(outcome(&r, "zone")),
        Some(Missing::Permission),
        "{r}"
    );

    for token in ["expired", "nobody-issued-this"] {
        let r = provider(config(&fake, token)).verify_access(&zone).await;
        assert_eq!(
            missing(outcome(&r, "credentials")),
            Some(Missing::Credentials),
            "{r}"
        );
        assert!(
            matches!(outcome(&r, "zone"), Some(Outcome::Skipped { .. })),
            "{r}"
        );
    }

    let r = full.verify_access(&fqdn("not-here.test")).await;
    assert_eq!(missing(outcome(&r, "zone")), Some(Missing::Zone), "{r}");
    assert!(r.to_string().contains("MISSING"), "{r}");

    fake.stop().await;
    // `full`'s last check failed (the unknown zone), so it verifies its token again
    let r = full.verify_access(&zone).await;
    assert_eq!(
        missing(outcome(&r, "credentials")),
        Some(Missing::Network),
        "{r}"
    );
}

/// An account-owned token verifies at its account (`account_id` set) and passes every check;
/// without `account_id` the user endpoint refuses it with 401, and the report says what to set
/// (reference §12).
#[tokio::test]
async fn account_owned_tokens_verify_at_their_account() {
    const ACCOUNT: &str = "0a0b0c0d0e0f00112233445566778899";
    let fake = fake_with_zone(ZONE).await;
    let zone = fqdn(ZONE);
    fake.account(ACCOUNT).token("account-token", Perms::FULL);
    let credentials = |r: &mxguard_cloudflare::AccessReport| {
        r.checks
            .iter()
            .find(|c| c.check == "credentials")
            .map(|c| c.outcome.clone())
    };

    let with_id = provider(
        config(&fake, "account-token")
            .with_account_id(ACCOUNT)
            .expect("a valid account id"),
    );
    let r = with_id.verify_write_access(&zone).await;
    assert!(r.is_ok(), "{r}");
    // checked again (another zone, a recheck): the token is verified once per client
    let r = with_id.verify_access(&zone).await;
    assert!(r.is_ok(), "{r}");
    let verifies = || {
        fake.requests()
            .iter()
            .filter(|q| *q == &format!("GET /client/v4/accounts/{ACCOUNT}/tokens/verify"))
            .count()
    };
    assert_eq!(verifies(), 1, "{:?}", fake.requests());
    // a failed check makes the next one verify the token again
    let r = with_id.verify_access(&fqdn("not-here.test")).await;
    assert!(!r.is_ok(), "{r}");
    assert!(with_id.verify_access(&zone).await.is_ok());
    assert_eq!(verifies(), 2, "{:?}", fake.requests());

    let without = provider(config(&fake, "account-token"));
    let r = without.verify_access(&zone).await;
    match credentials(&r) {
        Some(Outcome::Failed { missing, detail }) => {
            assert_eq!(missing, Missing::Credentials, "{r}");
            assert!(
                detail.contains("an account-owned token? set providers.cf-test.account_id"),
                "{detail}"
            );
            assert!(
                !detail.contains("account-token"),
                "the token leaked: {detail}"
            );
        }
        other => panic!("credentials should fail: {other:?}\n{r}"),
    }

    // a user's token named with an account id is refused there, without the hint
    let user_as_account = provider(
        config(&fake, TOKEN)
            .with_account_id(ACCOUNT)
            .expect("a valid account id"),
    );
    let r = user_as_account.verify_access(&zone).await;
    match credentials(&r) {
        Some(Outcome::Failed { missing, detail }) => {
            assert_eq!(missing, Missing::Credentials, "{r}");
            assert!(!detail.contains("set providers."), "{detail}");
        }
        other => panic!("credentials should fail: {other:?}\n{r}"),
    }
}

//! Route 53 behaviour beyond the shared kit, against moto behind the test proxy (raw
//! provider, no retries): paging, names and TXT as Route 53 writes them, record sets mxguard
//! does not manage, hosted zone ids, pacing, secrets, and access checks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_route53::types::{
    Change as AwsChange, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use common::{fqdn, provider, Op, Peer, RecordingClock, KEY_ID, SECRET};
use mxguard_core::{diff, DnsProvider, ProviderError, RecordSet, RecordType, RrsetKey, Ttl};
use mxguard_route53::{Missing, Outcome, Route53Config, Route53Provider};

const ZONE: &str = "behaviour.r53.test";

fn set(name: &str, rtype: RecordType, ttl: u32, records: &[&str]) -> RecordSet {
    RecordSet::parse(fqdn(name), rtype, Ttl::new(ttl).expect("ttl"), records).expect("valid set")
}

/// Writes record sets straight into moto, as another tool (or the console) would.
async fn write_raw(peer: &Peer, zone_id: &str, sets: Vec<ResourceRecordSet>) {
    let changes = sets
        .into_iter()
        .map(|s| {
            AwsChange::builder()
                .action(ChangeAction::Create)
                .resource_record_set(s)
                .build()
                .expect("a change")
        })
        .collect();
    common::sdk(&peer.moto_url)
        .await
        .change_resource_record_sets()
        .hosted_zone_id(zone_id)
        .change_batch(
            ChangeBatch::builder()
                .set_changes(Some(changes))
                .build()
                .expect("a batch"),
        )
        .send()
        .await
        .expect("writing straight to moto");
}

fn raw(
    name: &str,
    rtype: RrType,
    values: &[&str],
) -> aws_sdk_route53::types::builders::ResourceRecordSetBuilder {
    let records = values
        .iter()
        .map(|v| {
            ResourceRecord::builder()
                .value(*v)
                .build()
                .expect("a record")
        })
        .collect();
    ResourceRecordSet::builder()
        .name(name)
        .r#type(rtype)
        .ttl(300)
        .set_resource_records(Some(records))
}

#[tokio::test]
async fn listing_follows_next_record_name_across_pages() {
    let peer = Peer::start().await;
    peer.create_zone(ZONE).await;
    let p = provider(peer.config(KEY_ID, SECRET)).await;
    let sets: Vec<RecordSet> = (0..320)
        .map(|i| {
            set(
                &format!("mxg-{i:03}.{ZONE}"),
                RecordType::A,
                300,
                &["192.0.2.1"],
            )
        })
        .collect();
    for chunk in diff(&sets, &[])
        .changes
        .chunks(p.capabilities().max_changes_per_request)
    {
        p.apply(
            &fqdn(ZONE),
            &mxguard_core::ChangeSet {
                changes: chunk.to_vec(),
            },
        )
        .await
        .expect("create");
    }
    let before = peer.proxy.count(Op::ListRecordSets);
    let listed = p.list_zone(&fqdn(ZONE)).await.expect("list");
    assert_eq!(
        listed.iter().filter(|s| s.rtype() == RecordType::A).count(),
        320
    );
    assert_eq!(
        peer.proxy.count(Op::ListRecordSets) - before,
        2,
        "300 per page"
    );
    let keys: Vec<RrsetKey> = sets.iter().map(RrsetKey::of).collect();
    assert_eq!(p.read(&fqdn(ZONE), &keys).await.expect("read").len(), 320);
}

#[tokio::test]
async fn escaped_names_and_octal_txt_read_as_their_text() {
    let peer = Peer::start().await;
    let id = peer.create_zone(ZONE).await;
    write_raw(
        &peer,
        &id,
        vec![
            raw(&format!("\\052.{ZONE}."), RrType::A, &["192.0.2.52"])
                .build()
                .expect("set"),
            raw(
                &format!("mxg-txt.{ZONE}."),
                RrType::Txt,
                &["\"v=spf1\\040-all\" \"\\\"q\\\"\""],
            )
            .build()
            .expect("set"),
            raw(&format!("{ZONE}."), RrType::Mx, &["10 MX1.Example.NET."])
                .build()
                .expect("set"),
        ],
    )
    .await;
    let p = provider(peer.config(KEY_ID, SECRET)).await;
    let wanted = [
        set(&format!("*.{ZONE}"), RecordType::A, 300, &["192.0.2.52"]),
        set(
            &format!("mxg-txt.{ZONE}"),
            RecordType::Txt,
            300,
            &["v=spf1 -all\"q\""],
        ),
        set(ZONE, RecordType::Mx, 300, &["10 mx1.example.net."]),
    ];
    let keys: Vec<RrsetKey> = wanted.iter().map(RrsetKey::of).collect();
    let mut got = p.read(&fqdn(ZONE), &keys).await.expect("read");
    got.sort_by_key(RrsetKey::of);
    let mut want = wanted.to_vec();
    want.sort_by_key(RrsetKey::of);
    assert_eq!(got, want);
}

#[tokio::test]
async fn alias_and_routing_policy_sets_are_refused_on_read_and_skipped_in_listings() {
    let peer = Peer::start().await;
    let id = peer.create_zone(ZONE).await;
    let name = format!("mxg-w.{ZONE}.");
    write_raw(
        &peer,
        &id,
        vec![
            raw(&name, RrType::A, &["192.0.2.1"])
                .set_identifier("one")
                .weight(10)
                .build()
                .expect("set"),
            raw(&name, RrType::A, &["192.0.2.2"])
                .set_identifier("two")
                .weight(10)
                .build()
                .expect("set"),
            raw(&format!("mxg-ok.{ZONE}."), RrType::A, &["192.0.2.3"])
                .build()
                .expect("set"),
        ],
    )
    .await;
    let p = provider(peer.config(KEY_ID, SECRET)).await;
    let key = RrsetKey::new(fqdn(&name), RecordType::A);
    let got = p.read(&fqdn(ZONE), &[key]).await;
    assert!(
        matches!(&got, Err(ProviderError::Rejected { reason }) if reason.contains("routing")),
        "{got:?}"
    );
    let listed = p.list_zone(&fqdn(ZONE)).await.expect("list");
    assert!(listed
        .iter()
        .any(|s| s.name().as_str() == format!("mxg-ok.{ZONE}.")));
    assert!(!listed.iter().any(|s| s.name().as_str() == name));
}

#[tokio::test]
async fn a_configured_hosted_zone_id_is_checked_and_lookups_are_cached() {
    let peer = Peer::start().await;
    let id = peer.create_zone(ZONE).await;
    let other = peer.create_zone("other.r53.test").await;
    let key = RrsetKey::new(fqdn(ZONE), RecordType::Mx);

    let p = provider(
        peer.config(KEY_ID, SECRET)
            .with_hosted_zone_id(fqdn(ZONE), &id),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            p.read(&fqdn(ZONE), std::slice::from_ref(&key)).await,
            Ok(vec![])
        );
    }
    assert_eq!(
        (
            peer.proxy.count(Op::GetZone),
            peer.proxy.count(Op::ListZonesByName)
        ),
        (1, 0)
    );

    let wrong = provider(
        peer.config(KEY_ID, SECRET)
            .with_hosted_zone_id(fqdn(ZONE), &other),
    )
    .await;
    let got = wrong.read(&fqdn(ZONE), std::slice::from_ref(&key)).await;
    assert!(
        matches!(&got, Err(ProviderError::Rejected { reason }) if reason.contains("other.r53.test")),
        "{got:?}"
    );
    let missing = provider(
        peer.config(KEY_ID, SECRET)
            .with_hosted_zone_id(fqdn(ZONE), "ZNOSUCHZONE"),
    )
    .await;
    assert!(matches!(
        missing.read(&fqdn(ZONE), &[key]).await,
        Err(ProviderError::NotFound(_))
    ));
}

#[tokio::test]
async fn requests_are_paced_at_five_per_second_by_default() {
    let peer = Peer::start().await;
    peer.create_zone(ZONE).await;
    let clock = RecordingClock::stepping();
    let config = peer
        .config(KEY_ID, SECRET)
        .with_rate_limit(Route53Config::default_rate_limit());
    let p = Route53Provider::new(config, Arc::new(clock.clone()))
        .await
        .expect("config");
    let key = RrsetKey::new(fqdn(ZONE), RecordType::Mx);
    for _ in 0..10 {
        p.read(&fqdn(ZONE), std::slice::from_ref(&key))
            .await
            .expect("read");
    }
    // 11 requests (one zone lookup, ten reads) at 5/s with a burst of 1: ten waits of ~200 ms
    let waited: Duration = clock.sleeps().iter().sum();
    assert!(
        waited >= Duration::from_millis(1_800),
        "waited {waited:?} in {:?}",
        clock.sleeps()
    );
}

#[tokio::test]
async fn secrets_never_show_in_logs_errors_or_debug() {
    let logs = common::capture_logs();
    let peer = Peer::start().await;
    peer.create_zone(ZONE).await;
    let zone = fqdn(ZONE);
    let wrong_secret = "wrong/secret/that/must/not/leak/0000000000";
    let good = provider(peer.config(KEY_ID, SECRET)).await;
    let bad = provider(peer.config("AKIANOBODYISSUEDTHIS", wrong_secret)).await;
    let a = set(&format!("mxg-a.{ZONE}"), RecordType::A, 300, &["192.0.2.1"]);
    let cs = diff(std::slice::from_ref(&a), &[]);
    let mut seen = vec![
        format!("{good:?}"),
        format!("{:?}", peer.config(KEY_ID, SECRET)),
    ];
    seen.push(format!("{:?}", good.apply(&zone, &cs).await));
    seen.push(format!("{:?}", bad.apply(&zone, &cs).await));
    peer.proxy
        .inject(Op::ListRecordSets, common::Fault::Throttling, 1);
    seen.push(format!("{:?}", good.read(&zone, &[RrsetKey::of(&a)]).await));
    seen.push(good.verify_write_access(&zone).await.to_string());
    seen.push(bad.verify_access(&zone).await.to_string());
    peer.stop().await;
    seen.push(format!("{:?}", good.list_zone(&zone).await));
    let text = format!("{}\n{}", seen.join("\n"), logs.text());
    assert!(
        text.contains("change accepted"),
        "logs were captured: {text}"
    );
    for secret in [SECRET, wrong_secret] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
}

#[tokio::test]
async fn verify_access_says_what_is_missing() {
    let peer = Peer::start().await;
    peer.create_zone(ZONE).await;
    let zone = fqdn(ZONE);
    let check = |r: &mxguard_route53::AccessReport, name: &str| {
        r.checks
            .iter()
            .find(|c| c.check == name)
            .map(|c| c.outcome.clone())
    };
    let missing = |o: Option<Outcome>| match o {
        Some(Outcome::Failed { missing, .. }) => Some(missing),
        _ => None,
    };

    let p = provider(peer.config(KEY_ID, SECRET)).await;
    let r = p.verify_access(&zone).await;
    assert!(r.is_ok(), "{r}");
    assert!(
        matches!(check(&r, "dns_write"), Some(Outcome::Skipped { .. })),
        "{r}"
    );
    let r = p.verify_write_access(&zone).await;
    assert!(
        matches!(check(&r, "dns_write"), Some(Outcome::Passed { .. })),
        "{r}"
    );
    assert!(p
        .list_zone(&zone)
        .await
        .expect("list")
        .iter()
        .all(|s| !s.name().as_str().starts_with("_mxguard")));

    for (op, name) in [
        (Op::ListRecordSets, "dns_read"),
        (Op::GetChange, "change_status"),
        (Op::ChangeRecordSets, "dns_write"),
    ] {
        peer.proxy
            .state()
            .denied
            .insert(KEY_ID.to_string(), [op].into());
        let r = provider(peer.config(KEY_ID, SECRET))
            .await
            .verify_write_access(&zone)
            .await;
        assert_eq!(missing(check(&r, name)), Some(Missing::Permission), "{r}");
        assert_eq!(r.failures().count(), 1, "{r}");
    }
    peer.proxy.state().denied.clear();

    let r = provider(peer.config("AKIANOBODYISSUEDTHIS", "x"))
        .await
        .verify_access(&zone)
        .await;
    assert_eq!(
        missing(check(&r, "zone")),
        Some(Missing::Credentials),
        "{r}"
    );
    let r = p.verify_access(&fqdn("absent.r53.test")).await;
    assert_eq!(missing(check(&r, "zone")), Some(Missing::Zone), "{r}");
    peer.stop().await;
    let r = provider(peer.config(KEY_ID, SECRET))
        .await
        .verify_access(&zone)
        .await;
    assert_eq!(missing(check(&r, "zone")), Some(Missing::Network), "{r}");
}

//! Failure paths against moto behind the test proxy: throttling, PriorRequestNotComplete,
//! PENDING changes (followed to INSYNC, or timed out), 5xx, slow answers, a batch Route 53
//! refuses as a whole, and the batch limits.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    fqdn, guarded, provider, quick_policy, Fault, Op, Peer, RecordingClock, KEY_ID, SECRET,
};
use mxguard_core::{
    Change, ChangeSet, DnsProvider, ProviderError, RecordSet, RecordType, RetryPolicy, RrsetKey,
    Ttl,
};
use mxguard_route53::{ChangeEvent, Route53Provider, SyncPolicy, SyncStatus};

const ZONE: &str = "faults.r53.test";

fn set(name: &str, rtype: RecordType, ttl: u32, records: &[&str]) -> RecordSet {
    RecordSet::parse(fqdn(name), rtype, Ttl::new(ttl).expect("ttl"), records).expect("valid set")
}

fn create(sets: &[&RecordSet]) -> ChangeSet {
    ChangeSet {
        changes: sets
            .iter()
            .map(|s| Change::Upsert {
                set: (*s).clone(),
                expected: None,
            })
            .collect(),
    }
}

async fn peer_with_zone() -> Peer {
    let peer = Peer::start().await;
    peer.create_zone(ZONE).await;
    peer
}

fn mx() -> RecordSet {
    set(ZONE, RecordType::Mx, 300, &["10 mx.backup.example.net."])
}

#[tokio::test]
async fn throttling_and_prior_request_not_complete_are_rate_limited() {
    let peer = peer_with_zone().await;
    let p = provider(peer.config(KEY_ID, SECRET)).await;
    let zone = fqdn(ZONE);
    peer.proxy.inject(Op::ListZonesByName, Fault::Throttling, 1);
    assert_eq!(
        p.read(&zone, &[RrsetKey::of(&mx())]).await,
        Err(ProviderError::RateLimited { retry_after: None })
    );
    peer.proxy
        .inject(Op::ChangeRecordSets, Fault::PriorRequestNotComplete, 1);
    assert_eq!(
        p.apply(&zone, &create(&[&mx()])).await,
        Err(ProviderError::RateLimited { retry_after: None })
    );
    assert_eq!(
        p.read(&zone, &[RrsetKey::of(&mx())]).await,
        Ok(vec![]),
        "nothing was applied"
    );
}

#[tokio::test]
async fn guarded_backs_off_through_throttling_and_lands_the_change() {
    let peer = peer_with_zone().await;
    let clock = RecordingClock::new();
    let policy = RetryPolicy {
        max_attempts: 4,
        deadline: Duration::from_secs(600),
        ..quick_policy()
    };
    let p = guarded(
        provider(peer.config(KEY_ID, SECRET)).await,
        Arc::new(clock.clone()),
        policy,
    );
    peer.proxy
        .inject(Op::ChangeRecordSets, Fault::Throttling, 1);
    peer.proxy
        .inject(Op::ChangeRecordSets, Fault::PriorRequestNotComplete, 1);
    p.apply(&fqdn(ZONE), &create(&[&mx()]))
        .await
        .expect("lands on the third attempt");
    assert_eq!(peer.proxy.count(Op::ChangeRecordSets), 3);
    assert_eq!(
        clock.sleeps().len(),
        2,
        "one backoff per throttled attempt: {:?}",
        clock.sleeps()
    );
    assert_eq!(
        p.read(&fqdn(ZONE), &[RrsetKey::of(&mx())]).await,
        Ok(vec![mx()])
    );
}

type Events = Arc<Mutex<Vec<ChangeEvent>>>;

async fn following_provider(
    peer: &Peer,
    sync: SyncPolicy,
    clock: &RecordingClock,
) -> (Route53Provider, Events) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let observer = move |e: &ChangeEvent| sink.lock().expect("events").push(e.clone());
    let p = Route53Provider::new(
        peer.config(KEY_ID, SECRET).with_sync(sync),
        Arc::new(clock.clone()),
    )
    .await
    .expect("a valid config")
    .with_observer(Arc::new(observer));
    (p, events)
}

fn statuses(events: &Events) -> Vec<SyncStatus> {
    events
        .lock()
        .expect("events")
        .iter()
        .map(|e| e.status.clone())
        .collect()
}

#[tokio::test]
async fn a_pending_change_is_polled_until_insync_and_reported() {
    let peer = peer_with_zone().await;
    let clock = RecordingClock::new();
    // generous: this clock runs 100x real time, and moto's round trips count too
    let sync = SyncPolicy {
        poll_interval: Duration::from_secs(5),
        max_wait: Duration::from_secs(1_200),
    };
    let (p, events) = following_provider(&peer, sync, &clock).await;
    peer.proxy.inject(Op::ChangeRecordSets, Fault::Pending, 1);
    peer.proxy.inject(Op::GetChange, Fault::Pending, 3);
    let out = p
        .apply_and_follow(&fqdn(ZONE), &create(&[&mx()]))
        .await
        .expect("applied");
    assert_eq!(out.status, SyncStatus::InSync);
    assert!(out.change_id.is_some());
    use SyncStatus::{InSync, Pending};
    assert_eq!(
        statuses(&events),
        vec![Pending, Pending, Pending, Pending, InSync]
    );
    assert_eq!(
        peer.proxy.count(Op::GetChange),
        4,
        "three PENDING answers, then moto's INSYNC"
    );
    assert_eq!(
        clock.sleeps(),
        vec![Duration::from_secs(5); 4],
        "one poll interval before each GetChange"
    );
    let last = events
        .lock()
        .expect("events")
        .last()
        .cloned()
        .expect("an event");
    assert!(last.waited >= Duration::from_secs(20), "{last:?}");
    assert_eq!(last.zone, fqdn(ZONE));
}

#[tokio::test]
async fn a_change_still_pending_at_max_wait_is_reported_and_apply_still_succeeds() {
    let peer = peer_with_zone().await;
    let clock = RecordingClock::new();
    let sync = SyncPolicy {
        poll_interval: Duration::from_secs(10),
        max_wait: Duration::from_secs(30),
    };
    let (p, events) = following_provider(&peer, sync, &clock).await;
    peer.proxy.inject(Op::ChangeRecordSets, Fault::Pending, 1);
    peer.proxy.inject(Op::GetChange, Fault::Throttling, 1);
    peer.proxy.inject(Op::GetChange, Fault::Pending, 1_000);
    p.apply(&fqdn(ZONE), &create(&[&mx()]))
        .await
        .expect("accepted by Route 53");
    let seen = statuses(&events);
    assert_eq!(seen.last(), Some(&SyncStatus::TimedOut), "{seen:?}");
    assert!(
        peer.proxy.count(Op::GetChange) <= 3,
        "bounded polling: {}",
        peer.proxy.count(Op::GetChange)
    );
    assert!(clock.sleeps().iter().sum::<Duration>() <= Duration::from_secs(30));
    assert_eq!(
        p.read(&fqdn(ZONE), &[RrsetKey::of(&mx())]).await,
        Ok(vec![mx()])
    );
}

#[tokio::test]
async fn with_background_follow_apply_returns_at_acceptance_and_insync_is_reported_later() {
    let peer = peer_with_zone().await;
    let clock = RecordingClock::new();
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let observer = move |e: &ChangeEvent| sink.lock().expect("events").push(e.clone());
    let sync = SyncPolicy {
        poll_interval: Duration::from_secs(5),
        max_wait: Duration::from_secs(1_200),
    };
    let p = Route53Provider::new(
        peer.config(KEY_ID, SECRET)
            .with_sync(sync)
            .with_background_follow(),
        Arc::new(clock.clone()),
    )
    .await
    .expect("a valid config")
    .with_observer(Arc::new(observer));
    peer.proxy.inject(Op::ChangeRecordSets, Fault::Pending, 1);
    peer.proxy.inject(Op::GetChange, Fault::Pending, 2);
    p.apply(&fqdn(ZONE), &create(&[&mx()]))
        .await
        .expect("accepted by Route 53");
    // apply returned with the change accepted, before any poll (the change is PENDING)
    assert_eq!(
        p.read(&fqdn(ZONE), &[RrsetKey::of(&mx())]).await,
        Ok(vec![mx()])
    );
    // the follower goes on by itself and reports INSYNC to the observer
    let start = std::time::Instant::now();
    while statuses(&events).last() != Some(&SyncStatus::InSync) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never reported INSYNC: {:?}",
            statuses(&events)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        peer.proxy.count(Op::GetChange),
        3,
        "two PENDING, then INSYNC"
    );
}

#[tokio::test]
async fn a_refused_get_change_leaves_the_change_unconfirmed_not_failed() {
    let peer = peer_with_zone().await;
    let clock = RecordingClock::new();
    let (p, events) = following_provider(&peer, SyncPolicy::default(), &clock).await;
    peer.proxy.inject(Op::ChangeRecordSets, Fault::Pending, 1);
    peer.proxy
        .state()
        .denied
        .insert(KEY_ID.to_string(), [Op::GetChange].into());
    let out = p
        .apply_and_follow(&fqdn(ZONE), &create(&[&mx()]))
        .await
        .expect("the change itself was accepted");
    assert!(
        matches!(&out.status, SyncStatus::Unconfirmed(why) if why.contains("AccessDenied")),
        "{out:?}"
    );
    assert!(matches!(
        statuses(&events).last(),
        Some(SyncStatus::Unconfirmed(_))
    ));
}

#[tokio::test]
async fn server_errors_and_slow_answers_are_transient() {
    let peer = peer_with_zone().await;
    let p = provider(
        peer.config(KEY_ID, SECRET)
            .with_timeout(Duration::from_millis(400)),
    )
    .await;
    let zone = fqdn(ZONE);
    peer.proxy
        .inject(Op::ListZonesByName, Fault::Status(503), 1);
    let got = p.list_zone(&zone).await;
    assert!(
        matches!(&got, Err(ProviderError::Transient(m)) if m.contains("503")),
        "{got:?}"
    );
    peer.proxy
        .inject(Op::ListZonesByName, Fault::Delay(Duration::from_secs(5)), 1);
    let started = Instant::now();
    let got = p.list_zone(&zone).await;
    assert!(matches!(&got, Err(ProviderError::Transient(_))), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_invalid_change_batch_is_rejected_with_route53s_message() {
    let peer = peer_with_zone().await;
    let p = provider(peer.config(KEY_ID, SECRET)).await;
    let why = "RRSet of type MX with DNS name faults.r53.test. is not permitted because a conflicting RRSet of type CNAME exists";
    peer.proxy.inject(
        Op::ChangeRecordSets,
        Fault::InvalidChangeBatch(why.into()),
        1,
    );
    let got = p.apply(&fqdn(ZONE), &create(&[&mx()])).await;
    assert!(
        matches!(&got, Err(ProviderError::Rejected { reason }) if reason.contains(why) && reason.contains("InvalidChangeBatch")),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_create_route53_refuses_fails_the_whole_batch() {
    let peer = peer_with_zone().await;
    let zone = fqdn(ZONE);
    let ours = Arc::new(provider(peer.config(KEY_ID, SECRET)).await);
    let host = set(
        &format!("mxg-host.{ZONE}"),
        RecordType::A,
        300,
        &["192.0.2.7"],
    );
    // Our batch (the address, then the MX) waits in the proxy while someone else creates
    // the same address straight at moto: Route 53 then refuses our CREATE, and with it the MX.
    peer.proxy.inject(
        Op::ChangeRecordSets,
        Fault::Delay(Duration::from_millis(500)),
        1,
    );
    let cs = create(&[&host, &mx()]);
    let task = {
        let (ours, zone) = (Arc::clone(&ours), zone.clone());
        tokio::spawn(async move { ours.apply(&zone, &cs).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.proxy.count(Op::ChangeRecordSets) == 0 {
        assert!(
            Instant::now() < deadline,
            "our batch never reached the proxy"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut direct = peer.config(KEY_ID, SECRET);
    direct.endpoint_url = Some(peer.moto_url.clone());
    provider(direct)
        .await
        .apply(&zone, &create(&[&host]))
        .await
        .expect("the other writer");
    let got = task.await.expect("apply task");
    assert!(
        matches!(&got, Err(ProviderError::Rejected { reason }) if reason.contains("already exists")),
        "{got:?}"
    );
    assert_eq!(
        ours.read(&zone, &[RrsetKey::of(&mx())]).await,
        Ok(vec![]),
        "nothing of the refused batch"
    );
}

#[tokio::test]
async fn a_batch_over_route53s_limits_is_refused_before_sending() {
    let peer = peer_with_zone().await;
    let p = provider(peer.config(KEY_ID, SECRET)).await;
    let ips: Vec<String> = (0..400)
        .map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let big: Vec<RecordSet> = (0..3)
        .map(|i| set(&format!("mxg-big{i}.{ZONE}"), RecordType::A, 300, &ips))
        .collect();
    let got = p
        .apply(&fqdn(ZONE), &create(&big.iter().collect::<Vec<_>>()))
        .await;
    assert!(
        matches!(&got, Err(ProviderError::Rejected { reason }) if reason.contains("1200 records")),
        "{got:?}"
    );
    let text = "x".repeat(1_800);
    let long: Vec<RecordSet> = (0..20)
        .map(|i| {
            set(
                &format!("mxg-t{i}.{ZONE}"),
                RecordType::Txt,
                300,
                &[text.as_str()],
            )
        })
        .collect();
    let got = p
        .apply(&fqdn(ZONE), &create(&long.iter().collect::<Vec<_>>()))
        .await;
    assert!(
        matches!(&got, Err(ProviderError::Rejected { reason }) if reason.contains("value characters")),
        "{got:?}"
    );
    assert_eq!(peer.proxy.count(Op::ChangeRecordSets), 0);
}

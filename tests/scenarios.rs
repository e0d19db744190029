//! Outage scenarios from the runbooks, end to end: the real binary against BIND, Unbound and
//! Postfix. (Failover/failback and SIGKILL are in `failover.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::lab::{Lab, LabOptions, LabProvider, Layout};

async fn wait_for_event(lab: &Lab, kind: &str, deadline: Duration) -> mxguard::store::Event {
    let start = Instant::now();
    loop {
        if let Some(e) = lab.events().await.into_iter().find(|e| e.kind == kind) {
            return e;
        }
        assert!(
            start.elapsed() < deadline,
            "no {kind} event within {deadline:?}: {:#?}",
            lab.events()
                .await
                .iter()
                .map(|e| format!("{} {}", e.kind, e.message))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_down_too_changes_nothing_and_alerts() {
    let mut lab = Lab::start(LabOptions {
        hold: "2s",
        mx_ttl: 300,
    })
    .await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;
    let serial = lab.serial().await;
    lab.backup.stop().await.expect("stop backup");
    // the backup is known Down before the primary fails (otherwise failing over is right)
    let start = Instant::now();
    while !lab
        .events()
        .await
        .iter()
        .any(|e| e.kind == "health" && e.message.starts_with("backup Up → Down"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "backup never seen Down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.primary.stop().await.expect("stop primary");
    let alert = wait_for_event(&lab, "alert.both_down", Duration::from_secs(60)).await;
    assert!(
        alert.message.contains("keeping the published records"),
        "{}",
        alert.message
    );
    // several more rounds: still nothing published changes
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            lab.served_mx().await,
            vec!["10 mx1.example.test. 300".to_string()]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(lab.serial().await, serial, "no UPDATE was sent");
    // the backup comes back first: it is published (the primary is still Down)
    lab.backup.restart().await.expect("restart backup");
    let start = Instant::now();
    while lab.served_mx().await != vec!["10 backup.example.test. 30".to_string()] {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "backup not published after it came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_down_during_failover_retries_and_applies_once() {
    let mut lab = Lab::start(LabOptions {
        hold: "1h",
        mx_ttl: 300,
    })
    .await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;
    let serial = lab.serial().await;
    // the DNS provider goes down; the resolvers still have the MX hosts' addresses cached
    lab.named.stop();
    lab.primary.stop().await.expect("stop primary");
    let alert = wait_for_event(&lab, "alert.change_failed", Duration::from_secs(90)).await;
    assert!(
        alert
            .message
            .contains("publishing the backup records failed"),
        "{}",
        alert.message
    );
    // the provider returns: the pending move completes, once
    lab.named.restart().await.expect("restart named");
    let start = Instant::now();
    while lab.served_mx().await != vec!["10 backup.example.test. 30".to_string()] {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "failover never completed:\n{}",
            mx.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The change event is written after verification at the authoritative server, so a
    // moment after named serves the new set: wait for it rather than race it.
    wait_for_event(&lab, "change", Duration::from_secs(60)).await;
    assert_eq!(
        lab.serial().await,
        serial + 1,
        "exactly one UPDATE reached named"
    );
    let changes: Vec<_> = lab
        .events()
        .await
        .into_iter()
        .filter(|e| e.kind == "change")
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
}

/// Write errors have a policy by kind: a token refused (403) mid-failover is alerted as
/// needing an operator and retried slowly (a minute, not the transient 10 s), then applies once.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_is_alerted_for_an_operator_and_retried_slowly() {
    let mut lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            provider: LabProvider::Cloudflare,
            ..Layout::default()
        },
    )
    .await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;
    let writes = lab.writes().await;
    lab.cloudflare_refuses_writes(1);
    lab.primary.stop().await.expect("stop primary");
    let alert = wait_for_event(&lab, "alert.change_failed", Duration::from_secs(90)).await;
    for needle in ["auth:", "someone must fix this", "next in 60s"] {
        assert!(
            alert.message.contains(needle),
            "{needle:?} in {}",
            alert.message
        );
    }
    let change = wait_for_event(&lab, "change", Duration::from_secs(150)).await;
    let waited = (change.at - alert.at).num_seconds();
    assert!(waited >= 59, "retried {waited} s after the refusal");
    assert_eq!(lab.writes().await, writes + 1, "one batch applied");
    assert!(
        mx.plain_log().contains("kind=\"auth\"") || mx.plain_log().contains("kind=auth"),
        "{}",
        mx.plain_log()
    );
}

/// Cloudflare's 429 mid-failover: the change waits for the lockout at admission (its deadline
/// does not run), says so in the timeline, then applies once; verified at the zone's
/// nameserver by DNS, so the failover costs the API one read and the batch.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_failover_waits_for_the_lockout_then_applies_once() {
    let mut lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            provider: LabProvider::Cloudflare,
            cloudflare_nameserver: true,
            ..Layout::default()
        },
    )
    .await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;
    let writes = lab.writes().await;
    let before = lab.cloudflare_requests().len();
    lab.cloudflare_rate_limits(mxguard_testpeers::cloudflare::Route::Batch, 3, 1);
    lab.primary.stop().await.expect("stop primary");
    let waiting = wait_for_event(&lab, "change_waiting", Duration::from_secs(90)).await;
    assert!(
        waiting.message.contains("rate limit until") && waiting.message.contains("UTC"),
        "{}",
        waiting.message
    );
    let change = wait_for_event(&lab, "change", Duration::from_secs(90)).await;
    assert!(change.at >= waiting.at);
    let events = lab.events().await;
    assert!(
        !events.iter().any(|e| e.kind == "alert.change_failed"),
        "a known lockout is waited out, not reported as a failure: {:#?}",
        events
            .iter()
            .map(|e| format!("{} {}", e.kind, e.message))
            .collect::<Vec<_>>()
    );
    assert_eq!(lab.writes().await, writes + 1, "one batch applied");
    let ns = lab
        .cf_nameserver
        .as_ref()
        .expect("nameserver")
        .addr()
        .to_string();
    assert_eq!(
        change.evidence["authoritative"][0]["server"], ns,
        "verified at the nameserver: {}",
        change.evidence
    );
    // the batch refused with 429 and the batch applied; nothing read the change back (the
    // evidence above names the nameserver, not the provider)
    let during: Vec<String> = lab.cloudflare_requests().into_iter().skip(before).collect();
    let batches = during.iter().filter(|r| r.ends_with("/batch")).count();
    assert_eq!(batches, 2, "{during:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_primary_trips_the_flap_guard() {
    let mut lab = Lab::start(LabOptions {
        hold: "0s",
        mx_ttl: 300,
    })
    .await;
    let mx = lab.serve(None);
    lab.settle(&mx, Duration::from_secs(60)).await;
    let serial = lab.serial().await;
    let backup = "10 backup.example.test. 30".to_string();
    let primary = "10 mx1.example.test. 300".to_string();
    // two full flaps: four automated moves, the budget per hour
    for _ in 0..2 {
        lab.primary.stop().await.expect("stop");
        wait_mx(&lab, &backup).await;
        lab.primary.restart().await.expect("restart");
        wait_mx(&lab, &primary).await;
    }
    // the fifth move is refused: automation pauses itself and alerts
    lab.primary.stop().await.expect("stop");
    let alert = wait_for_event(&lab, "alert.flap_guard", Duration::from_secs(60)).await;
    assert!(
        alert.message.contains("automation paused"),
        "{}",
        alert.message
    );
    assert_eq!(
        lab.served_mx().await,
        vec![primary.clone()],
        "no fifth move"
    );
    assert_eq!(lab.serial().await, serial + 4, "exactly four UPDATEs");
}

async fn wait_mx(lab: &Lab, want: &str) {
    let start = Instant::now();
    while lab.served_mx().await != vec![want.to_string()] {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never served {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

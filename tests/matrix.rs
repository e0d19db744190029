//! The production matrix, end to end through the binary: for each provider — RFC 2136 on
//! `named`, Cloudflare on the strict fake, Route 53 on moto — and each mode (`mx`: the apex MX
//! set moves; `a`: the MX host's address moves), the real `mxguard serve` with real probes
//! against two Postfix MTAs behind Unbound resolvers.
//!
//! One body per behaviour, one row per cell (the `matrix!` table at the bottom):
//! - failover when the primary MTA stops, verified, and failback after the hold with the
//!   pre-failover TTL restored — two writes at the provider in all;
//! - SIGKILL of mxguard between its write-ahead intent and the provider call, then a restart:
//!   the same intent completes, exactly one write at the provider;
//! - the provider's API failing during the failover (per provider): an alert, and exactly one
//!   write once it recovers.

mod common;

use std::time::{Duration, Instant};

use common::lab::{Lab, LabMode, LabOptions, LabProvider, Layout, Mxguard};

/// Generous: a loaded 2-core machine runs several labs at once.
const DEADLINE: Duration = Duration::from_secs(90);

async fn start(provider: LabProvider, mode: LabMode, hold: &'static str) -> Lab {
    Lab::start_with(
        LabOptions { hold, mx_ttl: 300 },
        Layout {
            provider,
            mode,
            ..Layout::default()
        },
    )
    .await
}

async fn count_events(lab: &Lab, kind: &str) -> usize {
    lab.events().await.iter().filter(|e| e.kind == kind).count()
}

/// Until `n` events of `kind` are recorded.
async fn wait_for_events(lab: &Lab, mx: &Mxguard, kind: &str, n: usize) {
    let start = Instant::now();
    while count_events(lab, kind).await < n {
        assert!(
            start.elapsed() < DEADLINE,
            "fewer than {n} {kind} events after {DEADLINE:?}: {:#?}\nmxguard's log:\n{}",
            lab.events()
                .await
                .iter()
                .map(|e| format!("{} {}", e.kind, e.message))
                .collect::<Vec<_>>(),
            mx.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Until the provider holds exactly `want`.
async fn wait_published(lab: &Lab, mx: &Mxguard, want: &[String]) {
    let start = Instant::now();
    loop {
        let got = lab.published().await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the provider holds {got:?}, waited {DEADLINE:?} for {want:?}\nmxguard's log:\n{}",
            mx.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn failover_and_failback(provider: LabProvider, mode: LabMode) {
    let mut lab = start(provider, mode, "4s").await;
    let writes = lab.writes().await;
    let mut mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    assert_eq!(lab.published().await, lab.primary_at(lab.live_ttl));
    assert_eq!(lab.writes().await, writes, "a healthy start writes nothing");

    lab.primary.stop().await.expect("stop the primary MTA");
    wait_published(&lab, &mx, &lab.backup_at(lab.failover_ttl)).await;
    // verified: the change event is written after verification
    wait_for_events(&lab, &mx, "change", 1).await;
    assert_eq!(lab.writes().await, writes + 1, "one write for the failover");

    let restarted = Instant::now();
    lab.primary
        .restart()
        .await
        .expect("restart the primary MTA");
    // the snapshot's TTL comes back with the primary's records
    wait_published(&lab, &mx, &lab.primary_at(lab.live_ttl)).await;
    assert!(
        restarted.elapsed() >= Duration::from_secs(4),
        "failback after {:?}, before the 4 s hold",
        restarted.elapsed()
    );
    wait_for_events(&lab, &mx, "change", 2).await;
    assert_eq!(lab.writes().await, writes + 2, "one write for the failback");
    let rows = lab.changes().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|(_, s)| s == "verified"), "{rows:?}");
    assert_eq!(mx.terminate(), Some(0));
}

async fn sigkill_during_failover(provider: LabProvider, mode: LabMode) {
    let mut lab = start(provider, mode, "1h").await;
    let writes = lab.writes().await;
    let mut mx = lab.serve(Some("after_intent"));
    lab.settle(&mx, DEADLINE).await;
    lab.primary.stop().await.expect("stop the primary MTA");
    let start = Instant::now();
    while !mx.saw("FAILPOINT after_intent reached") {
        assert!(
            start.elapsed() < DEADLINE,
            "the failpoint was never reached:\n{}",
            mx.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mx.kill9();
    let before = lab.changes().await;
    assert_eq!(before.len(), 1, "the intent was written: {before:?}");
    assert_eq!(before[0].1, "pending");
    assert_eq!(
        lab.writes().await,
        writes,
        "killed before the provider call"
    );
    assert_eq!(lab.published().await, lab.primary_at(lab.live_ttl));

    let mx = lab.serve(None);
    wait_published(&lab, &mx, &lab.backup_at(lab.failover_ttl)).await;
    assert_eq!(
        lab.wait_verified(&mx, 1, DEADLINE).await,
        vec![(before[0].0, "verified".to_string())],
        "the same intent completed, no second one"
    );
    assert_eq!(lab.writes().await, writes + 1, "exactly one write");
}

async fn provider_outage_during_failover(provider: LabProvider, mode: LabMode) {
    let mut lab = start(provider, mode, "1h").await;
    let writes = lab.writes().await;
    let mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    lab.provider_outage().await;
    lab.primary.stop().await.expect("stop the primary MTA");
    wait_for_events(&lab, &mx, "alert.change_failed", 1).await;
    if provider != LabProvider::Rfc2136 {
        // (a stopped `named` has nothing to read)
        assert_eq!(
            lab.published().await,
            lab.primary_at(lab.live_ttl),
            "nothing changed while the provider failed"
        );
    }

    lab.provider_recovers().await;
    wait_published(&lab, &mx, &lab.backup_at(lab.failover_ttl)).await;
    wait_for_events(&lab, &mx, "change", 1).await;
    assert_eq!(lab.writes().await, writes + 1, "exactly one write landed");
    // An intent whose apply failed is closed as `failed` and the retry writes a new one; only
    // the last is applied.
    let rows = lab.changes().await;
    let (last, earlier) = rows.split_last().expect("intents");
    assert_eq!(last.1, "verified", "{rows:?}");
    assert!(earlier.iter().all(|(_, s)| s == "failed"), "{rows:?}");
}

/// A `hosted_zone_id` that the credentials cannot see: an alert naming the zone id as soon as
/// the controller reads, and nothing is written, not even when the primary fails.
#[tokio::test(flavor = "multi_thread")]
async fn route53_unknown_hosted_zone_id_alerts_and_writes_nothing() {
    let mut lab = Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            provider: LabProvider::Route53,
            hosted_zone_id: Some("Z0000000000NOSUCHZONE"),
            ..Layout::default()
        },
    )
    .await;
    let writes = lab.writes().await;
    let mx = lab.serve(None);
    wait_for_events(&lab, &mx, "alert.provider_read_failed", 1).await;
    lab.primary.stop().await.expect("stop the primary MTA");
    // the primary is seen Down; still nothing can be (or is) published
    let start = Instant::now();
    // (Unknown → Down when the stop came before the first round of the primary)
    while !mx.plain_log().lines().any(|l| {
        l.contains("side health changed") && l.contains("side=primary") && l.contains("to=Down")
    }) {
        assert!(
            start.elapsed() < DEADLINE,
            "primary never Down:\n{}",
            mx.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alert = lab
        .events()
        .await
        .into_iter()
        .find(|e| e.kind == "alert.provider_read_failed")
        .expect("the alert");
    assert!(
        alert.message.contains("Z0000000000NOSUCHZONE"),
        "the alert names the zone id: {}",
        alert.message
    );
    assert_eq!(lab.writes().await, writes, "nothing written");
    assert_eq!(lab.published().await, lab.primary_at(lab.live_ttl));
    assert_eq!(
        count_events(&lab, "alert.provider_read_failed").await,
        1,
        "alerted once, not at every read"
    );
    assert!(lab.changes().await.is_empty(), "no intent");
}

/// One test per (body, provider, mode).
macro_rules! matrix {
    ($($name:ident: $body:ident($provider:ident, $mode:ident);)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            $body(LabProvider::$provider, LabMode::$mode).await
        }
    )*};
}

matrix! {
    rfc2136_mx_failover_and_failback: failover_and_failback(Rfc2136, Mx);
    rfc2136_a_failover_and_failback: failover_and_failback(Rfc2136, A);
    cloudflare_mx_failover_and_failback: failover_and_failback(Cloudflare, Mx);
    cloudflare_a_failover_and_failback: failover_and_failback(Cloudflare, A);
    route53_mx_failover_and_failback: failover_and_failback(Route53, Mx);
    route53_a_failover_and_failback: failover_and_failback(Route53, A);

    rfc2136_mx_sigkill_during_failover: sigkill_during_failover(Rfc2136, Mx);
    rfc2136_a_sigkill_during_failover: sigkill_during_failover(Rfc2136, A);
    cloudflare_mx_sigkill_during_failover: sigkill_during_failover(Cloudflare, Mx);
    cloudflare_a_sigkill_during_failover: sigkill_during_failover(Cloudflare, A);
    route53_mx_sigkill_during_failover: sigkill_during_failover(Route53, Mx);
    route53_a_sigkill_during_failover: sigkill_during_failover(Route53, A);

    rfc2136_outage_during_failover: provider_outage_during_failover(Rfc2136, Mx);
    cloudflare_outage_during_failover: provider_outage_during_failover(Cloudflare, A);
    route53_outage_during_failover: provider_outage_during_failover(Route53, Mx);
}

//! Zones served by two DNS providers (issue 19, item 4), end to end through `mxguard serve`:
//! the example.test zone at the strict Cloudflare fake (`lab`, changes verified at the fake's
//! nameserver) and at Route 53 (`mirror`, moto behind the counting proxy, verified by reading
//! back), the domain saying `providers = ["lab", "mirror"]`, real probes of two Postfix MTAs
//! through Unbound.
//!
//! - Cloudflare's API answers 503 to everything for the whole outage: the failover still moves
//!   at Route 53, Cloudflare is reported behind (`alert.provider_behind`, the status) and keeps
//!   the primary; once its API is back it is caught up (`provider_caught_up`) with one write;
//!   the failback then writes once at each.
//! - SIGKILL between the write-ahead intents and the provider calls: the restart resumes each
//!   provider's own intent, one write at each, no second intent.

mod common;

use std::time::{Duration, Instant};

use common::lab::{Lab, LabOptions, LabProvider, Layout, Mxguard};
use mxguard_testpeers::cloudflare::{Fault, Route};

/// Generous: a loaded 2-core machine runs several labs at once.
const DEADLINE: Duration = Duration::from_secs(120);

async fn start(hold: &'static str) -> Lab {
    Lab::start_with(
        LabOptions { hold, mx_ttl: 300 },
        Layout {
            provider: LabProvider::Cloudflare,
            cloudflare_nameserver: true,
            mirror: Some(LabProvider::Route53),
            read_token: true,
            ..Layout::default()
        },
    )
    .await
}

fn cloudflare(lab: &Lab) -> &mxguard_testpeers::cloudflare::FakeCloudflare {
    match &lab.peer {
        common::lab::Peer::Cloudflare(fake) => fake,
        _ => panic!("the lab's first provider is the Cloudflare fake"),
    }
}

fn kinds(events: &[mxguard::store::Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {}", e.kind, e.message))
        .collect()
}

/// Until `what` holds, polling; the timeline and mxguard's log when it never does.
async fn wait_until<F, Fut>(lab: &Lab, mx: &Mxguard, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}\ntimeline: {:#?}\nmxguard's log:\n{}",
            kinds(&lab.events().await),
            mx.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(lab: &Lab, kind: &str) -> usize {
    lab.events().await.iter().filter(|e| e.kind == kind).count()
}

/// The domain's `providers` in its status: (name, behind).
async fn providers_status(lab: &Lab, mx: &Mxguard) -> Vec<(String, Option<String>)> {
    let Some((200, status)) = lab.api_get(mx, "/v1/domains/example.test").await else {
        return Vec::new();
    };
    status["providers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["provider"].as_str().unwrap_or_default().to_string(),
                        p["behind"].as_str().map(str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failover_moves_at_route53_while_cloudflare_answers_5xx_and_cloudflare_catches_up() {
    let mut lab = start("4s").await;
    let mut mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    let primary = lab.primary_at(lab.live_ttl);
    let backup = lab.backup_at(lab.failover_ttl);
    assert_eq!(lab.published().await, primary);
    assert_eq!(lab.mirror_published().await, primary);
    let (cf_writes, r53_writes) = (lab.writes().await, lab.mirror_writes().await);

    // Cloudflare's API is down for the whole outage: every request answers 503.
    cloudflare(&lab).inject(Route::Any, Fault::Status(503), usize::MAX);
    lab.primary.stop().await.expect("stop the primary MTA");
    let stopped = Instant::now();
    wait_until(&lab, &mx, "Route 53 serves the backup", || async {
        lab.mirror_published().await == backup
    })
    .await;
    let moved = stopped.elapsed();
    wait_until(&lab, &mx, "Cloudflare reported behind", || async {
        count(&lab, "alert.provider_behind").await == 1
    })
    .await;
    let events = lab.events().await;
    let behind = events
        .iter()
        .find(|e| e.kind == "alert.provider_behind")
        .expect("the alert");
    assert!(
        behind
            .message
            .starts_with("lab still does not serve the backup records")
            && behind.message.contains("mirror serves them"),
        "{}",
        behind.message
    );
    assert_eq!(behind.evidence["serving"], serde_json::json!(["mirror"]));
    let change = events
        .iter()
        .find(|e| e.kind == "change")
        .expect("the failover's change event");
    let outcomes = change.evidence["providers"]
        .as_array()
        .expect("each provider's outcome");
    assert_eq!(outcomes.len(), 2, "{:#}", change.evidence);
    assert_eq!(outcomes[0]["provider"], "lab");
    assert_eq!(outcomes[0]["verified"], false);
    assert_eq!(outcomes[1]["provider"], "mirror");
    assert_eq!(outcomes[1]["verified"], true);
    assert_eq!(
        lab.published().await,
        primary,
        "Cloudflare keeps the primary"
    );
    let status = providers_status(&lab, &mx).await;
    assert_eq!(status.len(), 2, "{status:?}");
    assert!(status[0].0 == "lab" && status[0].1.is_some(), "{status:?}");
    assert!(
        status[1].0 == "mirror" && status[1].1.is_none(),
        "{status:?}"
    );
    let shown = lab.cli(&["status", "example.test"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("providers: lab, mirror — behind since"),
        "{shown}"
    );
    assert_eq!(
        lab.writes().await,
        cf_writes,
        "nothing written at Cloudflare"
    );
    assert_eq!(
        lab.mirror_writes().await,
        r53_writes + 1,
        "one write at Route 53"
    );

    // Cloudflare's API is back: the retry publishes the backup there too, once.
    cloudflare(&lab).clear_faults();
    let recovered = Instant::now();
    wait_until(&lab, &mx, "Cloudflare serves the backup", || async {
        lab.published().await == backup
    })
    .await;
    eprintln!(
        "primary stopped → Route 53 serves the backup: {:.1} s (Cloudflare answering 503); \
         Cloudflare's API back → it serves the backup: {:.1} s",
        moved.as_secs_f64(),
        recovered.elapsed().as_secs_f64()
    );
    wait_until(&lab, &mx, "Cloudflare reported caught up", || async {
        count(&lab, "provider_caught_up").await == 1
    })
    .await;
    wait_until(&lab, &mx, "no provider behind in the status", || async {
        let s = providers_status(&lab, &mx).await;
        s.len() == 2 && s.iter().all(|(_, b)| b.is_none())
    })
    .await;
    assert_eq!(lab.writes().await, cf_writes + 1, "one write at Cloudflare");
    let shown = lab.cli(&["status", "example.test"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("providers: lab, mirror (none behind)"),
        "{shown}"
    );
    assert_eq!(lab.mirror_writes().await, r53_writes + 1);
    // verified at the fake's nameserver, by DNS
    let caught = lab
        .events()
        .await
        .into_iter()
        .find(|e| e.kind == "provider_caught_up")
        .expect("caught up");
    let ns = lab.cf_nameserver.as_ref().expect("nameserver").addr();
    assert!(
        caught.message.contains(&ns.to_string()),
        "{}",
        caught.message
    );

    // The failback writes each provider once more.
    lab.primary
        .restart()
        .await
        .expect("restart the primary MTA");
    wait_until(&lab, &mx, "both providers serve the primary", || async {
        lab.published().await == primary && lab.mirror_published().await == primary
    })
    .await;
    assert_eq!(lab.writes().await, cf_writes + 2);
    assert_eq!(lab.mirror_writes().await, r53_writes + 2);
    assert_eq!(count(&lab, "alert.provider_behind").await, 1);
    assert_eq!(mx.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_after_sigkill_resumes_each_providers_own_intent() {
    let mut lab = start("1h").await;
    let (cf_writes, r53_writes) = (lab.writes().await, lab.mirror_writes().await);
    let mut mx = lab.serve(Some("after_intent"));
    lab.settle(&mx, DEADLINE).await;
    lab.primary.stop().await.expect("stop the primary MTA");
    wait_until(&lab, &mx, "the failpoint", || async {
        lab.changes().await.len() == 2
    })
    .await;
    mx.kill9();
    let before = lab.changes().await;
    assert!(
        before.iter().all(|(_, s)| s == "pending"),
        "both intents written, neither applied: {before:?}"
    );
    assert_eq!(lab.writes().await, cf_writes);
    assert_eq!(lab.mirror_writes().await, r53_writes);

    let mut mx = lab.serve(None);
    let backup = lab.backup_at(lab.failover_ttl);
    wait_until(&lab, &mx, "both providers serve the backup", || async {
        lab.published().await == backup && lab.mirror_published().await == backup
    })
    .await;
    let ids: Vec<i64> = before.iter().map(|(id, _)| *id).collect();
    wait_until(&lab, &mx, "both intents verified", || async {
        let rows = lab.changes().await;
        rows.len() == 2 && rows.iter().all(|(_, s)| s == "verified")
    })
    .await;
    let after: Vec<i64> = lab.changes().await.iter().map(|(id, _)| *id).collect();
    assert_eq!(after, ids, "the same intents completed, no new ones");
    assert_eq!(lab.writes().await, cf_writes + 1);
    assert_eq!(lab.mirror_writes().await, r53_writes + 1);
    assert_eq!(mx.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_finds_the_provider_left_behind_and_catches_it_up() {
    let mut lab = start("1h").await;
    // `providers check` reads the zone at each provider.
    let checked = lab.cli(&["providers", "check"]);
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{out}");
    for name in ["lab", "mirror"] {
        assert!(
            out.contains(&format!(
                "example.test.  provider {name}: OK, zone example.test. readable, publishes the primary records"
            )),
            "{out}"
        );
    }
    let mut mx = lab.serve(None);
    lab.settle(&mx, DEADLINE).await;
    let backup = lab.backup_at(lab.failover_ttl);
    let cf_writes = lab.writes().await;
    cloudflare(&lab).inject(Route::Any, Fault::Status(503), usize::MAX);
    lab.primary.stop().await.expect("stop the primary MTA");
    wait_until(&lab, &mx, "Cloudflare reported behind", || async {
        lab.mirror_published().await == backup && count(&lab, "alert.provider_behind").await == 1
    })
    .await;
    assert_eq!(mx.terminate(), Some(0));

    // Nothing about the lag is kept: the restarted service's first read of both providers
    // finds Cloudflare on the primary while the published side is the backup.
    cloudflare(&lab).clear_faults();
    let mut mx = lab.serve(None);
    wait_until(
        &lab,
        &mx,
        "Cloudflare caught up after the restart",
        || async {
            lab.published().await == backup && count(&lab, "provider_caught_up").await == 1
        },
    )
    .await;
    let events = lab.events().await;
    let found = events
        .iter()
        .filter(|e| e.kind == "alert.provider_behind")
        .nth(1)
        .expect("the restarted service's own alert");
    assert!(
        found.message.contains("lab: serves the primary records"),
        "{}",
        found.message
    );
    assert_eq!(lab.writes().await, cf_writes + 1, "one write at Cloudflare");
    assert_eq!(
        count(&lab, "change").await,
        1,
        "no second failover: {:#?}",
        kinds(&events)
    );
    assert_eq!(mx.terminate(), Some(0));
}

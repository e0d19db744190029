use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use mxguard_core::{AccessCheck, Missing, RrsetKey};

use super::*;
use crate::config::StoreUrl;

/// Answers a passing or a failing report, as the test sets it.
struct Flip {
    ok: AtomicBool,
}

#[async_trait]
impl ProviderAccess for Flip {
    async fn verify_access(&self, zone: &Fqdn) -> AccessReport {
        let outcome = if self.ok.load(Ordering::SeqCst) {
            Outcome::Passed {
                detail: "found".into(),
            }
        } else {
            Outcome::Failed {
                missing: Missing::Permission,
                detail: "Authentication error (10000)".into(),
            }
        };
        AccessReport {
            provider: "cf".into(),
            kind: "test",
            zone: zone.clone(),
            checks: vec![AccessCheck {
                check: "zone",
                needs: format!("Zone:Read on {zone}"),
                outcome,
            }],
        }
    }

    async fn verify_write_access(&self, zone: &Fqdn, _probes: &[RrsetKey]) -> AccessReport {
        self.verify_access(zone).await
    }
}

fn fqdn(s: &str) -> Fqdn {
    Fqdn::parse(s).expect("valid name")
}

#[tokio::test]
async fn a_failure_is_reported_once_and_its_recovery_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url =
        StoreUrl::parse(&format!("sqlite://{}", dir.path().join("w.db").display())).expect("url");
    let store = crate::store::open(&url).await.expect("store");
    store.migrate().await.expect("migrate");
    let events = EventBus::new();
    let mut bus = events.subscribe();
    let sink = Sink {
        store: store.clone(),
        events,
        state: Box::new(|_| None),
        vantage: "here".into(),
    };
    let flip = Arc::new(Flip {
        ok: AtomicBool::new(false),
    });
    let target = || Target {
        provider: "cf".into(),
        zone: fqdn("example.com"),
        domains: vec![fqdn("example.com"), fqdn("mail.example.com")],
        access: flip.clone(),
    };
    let status = AccessStatus::default();
    let kinds = |evs: Vec<crate::store::Event>| -> Vec<String> {
        evs.iter().map(|e| e.kind.as_str().to_string()).collect()
    };

    // failing: one alert per domain, /readyz's status names it
    let failing = check(vec![target()], &status, &sink).await;
    assert_eq!(failing.len(), 1);
    assert_eq!(status.failing().len(), 1);
    assert!(failures_text(&status.failing()[0]).contains("zone (Zone:Read on example.com.)"));
    // failing again: nothing new
    let failing = check(failing, &status, &sink).await;
    assert_eq!(failing.len(), 1);
    let timeline = store
        .events(&fqdn("mail.example.com"), None, 10)
        .await
        .expect("events");
    assert_eq!(kinds(timeline), vec!["alert.provider_access"]);
    let alert = bus.try_recv().expect("published");
    assert_eq!(alert.event.kind, EventKind::ProviderAccess);
    assert!(
        alert
            .event
            .message
            .contains("provider cf cannot do what mxguard needs for zone example.com."),
        "{}",
        alert.event.message
    );

    // passing: the status clears, one recovery per domain
    flip.ok.store(true, Ordering::SeqCst);
    let failing = check(failing, &status, &sink).await;
    assert!(failing.is_empty());
    assert!(status.failing().is_empty());
    let timeline = store
        .events(&fqdn("example.com"), None, 10)
        .await
        .expect("events");
    assert_eq!(
        kinds(timeline),
        vec!["alert.provider_access", "provider_access_restored"]
    );
    store.close().await;
}

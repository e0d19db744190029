//! End to end, drift (`drift = "correct"`): the real `mxguard serve` against BIND, Unbound and
//! Postfix, the records edited by hand to match neither side. The correction is the machine's
//! decision like any other write: the published side comes back when it is Up, and nothing is
//! written while both sides are Down.

mod common;

use std::time::{Duration, Instant};

use common::lab::{Checks, Lab, LabOptions, Layout, Mxguard};
use mxguard::model::{Fqdn, RecordSet, RecordType, Ttl};
use mxguard_core::{Change, ChangeSet, DnsProvider};

const PRIMARY_MX: &str = "10 mx1.example.test.";
const STRANGER_MX: &str = "10 mx.elsewhere.example.";

async fn lab() -> Lab {
    Lab::start_with(
        LabOptions {
            hold: "1h",
            mx_ttl: 300,
        },
        Layout {
            drift: "correct",
            checks: Checks {
                reconcile_interval: "1s",
                ..Checks::FAST
            },
            ..Layout::default()
        },
    )
    .await
}

/// Someone replaces the MX set at named by hand with one that matches neither side.
async fn hand_edit(lab: &Lab) {
    let zone = Fqdn::parse("example.test").expect("zone");
    let mx = |record: &str| {
        RecordSet::parse(
            zone.clone(),
            RecordType::Mx,
            Ttl::new(300).expect("ttl"),
            &[record],
        )
        .expect("set")
    };
    let console = lab.console();
    let key = mxguard_core::RrsetKey::new(zone.clone(), RecordType::Mx);
    let live = console.read(&zone, &[key]).await.expect("read the MX set");
    console
        .apply(
            &zone,
            &ChangeSet {
                changes: vec![Change::Upsert {
                    set: mx(STRANGER_MX),
                    expected: live.into_iter().next(),
                }],
            },
        )
        .await
        .expect("hand edit");
}

async fn wait_until<F, Fut>(mx: &Mxguard, what: &str, deadline: Duration, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}; mxguard's log:\n{}",
            mx.plain_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_edit_is_corrected_by_the_machine_to_the_published_side() {
    let lab = lab().await;
    let mut mx = lab.serve(None);
    mx.wait_for_log("first verdicts", Duration::from_secs(60))
        .await;
    hand_edit(&lab).await;
    wait_until(&mx, "primary restored", Duration::from_secs(60), || async {
        lab.served_mx().await == vec![format!("{PRIMARY_MX} 300")]
    })
    .await;
    let rows = lab.wait_verified(&mx, 1, Duration::from_secs(60)).await;
    assert_eq!(rows.len(), 1, "one write: {rows:?}");
    let events = lab.events().await;
    let restoring = events
        .iter()
        .find(|e| e.kind == "transition" && e.message.contains("drift: restoring the primary"))
        .unwrap_or_else(|| panic!("no restoring transition in {events:#?}"));
    assert_eq!(restoring.actor, "automation");
    assert!(events.iter().any(|e| e.kind == "drift"), "{events:#?}");
    assert_eq!(mx.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_edit_while_both_sides_are_down_is_left_alone() {
    let mut lab = lab().await;
    let mut mx = lab.serve(None);
    mx.wait_for_log("first verdicts", Duration::from_secs(60))
        .await;
    // The backup first, and seen Down: the controller stays on the primary, so the primary's
    // outage leads to BothDown rather than to a failover.
    lab.backup.stop().await.expect("stop the backup MTA");
    wait_until(&mx, "the backup Down", Duration::from_secs(60), || async {
        lab.events().await.iter().any(|e| {
            e.kind == "health" && e.message.starts_with("backup ") && e.message.contains("→ Down")
        })
    })
    .await;
    lab.primary.stop().await.expect("stop the primary MTA");
    wait_until(&mx, "BothDown", Duration::from_secs(60), || async {
        lab.events()
            .await
            .iter()
            .any(|e| e.kind == "transition" && e.message.contains("→ BothDown"))
    })
    .await;
    hand_edit(&lab).await;
    let serial = lab.serial().await;
    wait_until(&mx, "the drift alert", Duration::from_secs(60), || async {
        lab.events().await.iter().any(|e| {
            e.kind == "alert.drift" && e.message.contains("not restoring the primary records")
        })
    })
    .await;
    // The backup comes back; once the controller has taken that in, still nothing was written:
    // the side that was published (the primary) is Down, and the records are the operator's.
    lab.backup.restart().await.expect("restart the backup MTA");
    wait_until(
        &mx,
        "the backup Up again",
        Duration::from_secs(60),
        || async {
            lab.events()
                .await
                .iter()
                .any(|e| e.kind == "health" && e.message.starts_with("backup Down → Up"))
        },
    )
    .await;
    assert_eq!(lab.served_mx().await, vec![format!("{STRANGER_MX} 300")]);
    assert_eq!(lab.serial().await, serial, "nothing written at named");
    assert_eq!(lab.changes().await, vec![], "no change intent");
    assert_eq!(mx.terminate(), Some(0));
}

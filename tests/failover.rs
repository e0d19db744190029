//! End to end: the real `mxguard serve` binary against BIND (RFC 2136 + TSIG), two Unbound
//! resolvers and two Postfix MX hosts. Stopping the primary MTA moves the MX to the backup;
//! restarting it brings it back only after the hold, with the original TTL. SIGKILL between
//! intent and apply, and between apply and verify, loses nothing and applies nothing twice.

mod common;

use std::time::{Duration, Instant};

use common::lab::{Lab, LabOptions};
use mxguard::config::StoreUrl;
use mxguard::model::Fqdn;
use mxguard::store::{ChangeStatus, Store};

const PRIMARY_MX: &str = "10 mx1.example.test.";
const BACKUP_MX: &str = "10 backup.example.test.";

async fn wait_for_mx(lab: &Lab, want: &str, deadline: Duration) -> (Vec<String>, Duration) {
    let start = Instant::now();
    loop {
        let got = lab.served_mx().await;
        if got.len() == 1 && got[0].starts_with(want) {
            return (got, start.elapsed());
        }
        assert!(
            start.elapsed() < deadline,
            "named still serves {got:?}, waited {deadline:?} for {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn store(lab: &Lab) -> std::sync::Arc<dyn Store> {
    let url = StoreUrl::parse(&format!("sqlite://{}", lab.db.display())).expect("url");
    mxguard::store::open(&url).await.expect("open store")
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_down_fails_over_and_recovery_fails_back_after_the_hold() {
    let mut lab = Lab::start(LabOptions {
        hold: "4s",
        mx_ttl: 300,
    })
    .await;
    let mut mx = lab.serve(None);
    // healthy: the primary stays published and the controller settles on it
    mx.wait_for_log("first verdicts", Duration::from_secs(60))
        .await;
    assert_eq!(lab.served_mx().await, vec![format!("{PRIMARY_MX} 300")]);

    let stopped = Instant::now();
    lab.primary.stop().await.expect("stop primary MTA");
    let (served, _) = wait_for_mx(&lab, BACKUP_MX, Duration::from_secs(60)).await;
    let detect = stopped.elapsed();
    assert_eq!(
        served,
        vec![format!("{BACKUP_MX} 30")],
        "backup published with the failover TTL"
    );
    // fail_after 2 × interval 1 s plus a round, with slack for a loaded 2-core machine
    assert!(detect < Duration::from_secs(20), "failover took {detect:?}");

    // a snapshot of what was replaced, with its TTL
    let s = store(&lab).await;
    let domain = Fqdn::parse("example.test").expect("name");
    let snaps = s.snapshots(Some(&domain), 10).await.expect("snapshots");
    assert_eq!(snaps.len(), 1);
    assert_eq!(
        snaps[0].records[0].to_string(),
        "example.test. 300 IN MX 10 mx1.example.test."
    );

    // the resolvers see the backup once their cached answer expires (they cached 300 s, so
    // only the propagation tracker's event tells; checked below after failback)
    let restarted = Instant::now();
    lab.primary.restart().await.expect("restart primary MTA");
    let (served, _) = wait_for_mx(&lab, PRIMARY_MX, Duration::from_secs(60)).await;
    let back_after = restarted.elapsed();
    assert_eq!(
        served,
        vec![format!("{PRIMARY_MX} 300")],
        "failback restores the snapshot's TTL"
    );
    assert!(
        back_after >= Duration::from_secs(4),
        "failback after {back_after:?}, before the 4 s hold"
    );

    // (verified a moment after named serves the records)
    let rows = lab.wait_verified(&mx, 2, Duration::from_secs(60)).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let events = s.events(&domain, None, 1000).await.expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.contains(&"health") && kinds.contains(&"transition") && kinds.contains(&"change"),
        "{kinds:?}"
    );
    let failover = events
        .iter()
        .find(|e| e.message.contains("FailingOver"))
        .expect("failover transition event");
    assert!(
        failover.message.contains("primary Down, backup Up"),
        "{}",
        failover.message
    );
    s.close().await;
    assert_eq!(mx.terminate(), Some(0));
}

/// Stops the primary under a failpoint, kills mxguard there, restarts it without the failpoint,
/// and returns (changes before restart, changes after, serial after the first apply if any).
async fn kill_at(failpoint: &str) -> (Lab, Vec<(i64, String)>, Vec<(i64, String)>, u32, u32) {
    let mut lab = Lab::start(LabOptions {
        hold: "1h",
        mx_ttl: 300,
    })
    .await;
    let mut mx = lab.serve(Some(failpoint));
    mx.wait_for_log("first verdicts", Duration::from_secs(60))
        .await;
    lab.primary.stop().await.expect("stop primary MTA");
    mx.wait_for_log(
        &format!("FAILPOINT {failpoint} reached"),
        Duration::from_secs(60),
    )
    .await;
    mx.kill9();
    let before = lab.changes().await;
    let serial_at_kill = lab.serial().await;
    let mx2 = lab.serve(None);
    wait_for_mx(&lab, BACKUP_MX, Duration::from_secs(60)).await;
    let start = Instant::now();
    let after = loop {
        let rows = lab.changes().await;
        if rows.iter().all(|(_, s)| s == "verified") || start.elapsed() > Duration::from_secs(30) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let serial_after = lab.serial().await;
    drop(mx2);
    (lab, before, after, serial_at_kill, serial_after)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_between_intent_and_apply_applies_exactly_once_after_restart() {
    let (lab, before, after, serial_at_kill, serial_after) = kill_at("after_intent").await;
    assert_eq!(
        before.len(),
        1,
        "the intent was written before the kill: {before:?}"
    );
    assert_eq!(before[0].1, ChangeStatus::Pending.as_str());
    assert_eq!(
        after,
        vec![(before[0].0, "verified".to_string())],
        "the same intent completed, no second one"
    );
    assert_eq!(
        serial_after,
        serial_at_kill + 1,
        "exactly one UPDATE reached named"
    );
    assert_eq!(lab.served_mx().await, vec![format!("{BACKUP_MX} 30")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_between_apply_and_verify_applies_nothing_twice() {
    let (lab, before, after, serial_at_kill, serial_after) = kill_at("after_apply").await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].1, ChangeStatus::Applied.as_str());
    assert_eq!(after, vec![(before[0].0, "verified".to_string())]);
    assert_eq!(
        serial_after, serial_at_kill,
        "no UPDATE after the restart: it had already been applied"
    );
    assert_eq!(lab.served_mx().await, vec![format!("{BACKUP_MX} 30")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn resolvers_see_the_backup_once_the_old_ttl_has_run_out() {
    // a 4 s MX TTL: the resolvers' cached primary answer expires quickly
    let mut lab = Lab::start(LabOptions {
        hold: "1h",
        mx_ttl: 4,
    })
    .await;
    let mx = lab.serve(None);
    mx.wait_for_log("first verdicts", Duration::from_secs(60))
        .await;
    lab.primary.stop().await.expect("stop primary MTA");
    wait_for_mx(&lab, BACKUP_MX, Duration::from_secs(60)).await;
    let s = store(&lab).await;
    let domain = Fqdn::parse("example.test").expect("name");
    let start = Instant::now();
    let event = loop {
        let events = s.events(&domain, None, 1000).await.expect("events");
        if let Some(e) = events.into_iter().find(|e| e.kind == "propagation") {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no propagation event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seen = event.evidence["resolvers"]
        .as_array()
        .expect("per-resolver evidence");
    assert_eq!(seen.len(), 2, "{event:?}");
    for r in seen {
        let ms = r["after_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("{} never saw the backup: {event:?}", r["server"]));
        assert!(
            ms <= 4_000 + 30_000,
            "{ms} ms is longer than the old TTL allows"
        );
    }
    // and the resolvers really answer with the backup now
    for u in &lab.resolvers {
        let client = mxguard::probe::dns::DnsClient::resolver(u.addr(), Duration::from_secs(2));
        let a = client.query(&domain, mxguard::model::RecordType::Mx).await;
        assert_eq!(
            a.records.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            vec![BACKUP_MX.to_string()]
        );
    }
    s.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn started_while_the_primary_is_already_down_it_fails_over() {
    // The first verdicts settle the machine on what is published; the next round decides even
    // though no health changes after that (it used to wait for a change that never came).
    let mut lab = Lab::start(LabOptions {
        hold: "1h",
        mx_ttl: 300,
    })
    .await;
    lab.primary.stop().await.expect("stop primary MTA");
    let mx = lab.serve(None);
    let (served, _) = wait_for_mx(&lab, BACKUP_MX, Duration::from_secs(60)).await;
    assert_eq!(served, vec![format!("{BACKUP_MX} 30")]);
    assert!(mx.saw("first verdicts"), "{}", mx.log());
}

//! End to end, mail-aware decisions: the real `mxguard serve` against BIND, Unbound and Postfix.
//! A primary that answers `421` (senders queue and retry) is not failed over within the soft
//! window, however many rounds fail; one that answers `554` (senders bounce) is, after
//! `fail_after`. A primary that is back but refuses its domain's postmaster is not failed back
//! to; once it accepts the domain again, the guarded failback follows.

mod common;

use std::time::{Duration, Instant};

use common::lab::{Lab, LabOptions, Mxguard};

const PRIMARY_MX: &str = "10 mx1.example.test.";
const BACKUP_MX: &str = "10 backup.example.test.";

/// Polls every 100 ms until `done` says so; before each poll, checks that named still serves
/// an MX starting with `still` (the controller did not move). Panics after `deadline`.
async fn hold_while<F, Fut>(lab: &Lab, mx: &Mxguard, still: &str, deadline: Duration, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        let served = lab.served_mx().await;
        assert!(
            served.len() == 1 && served[0].starts_with(still),
            "named serves {served:?}, expected {still} to stay; mxguard's log:\n{}",
            mx.plain_log()
        );
        if done().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "still waiting after {deadline:?}; mxguard's log:\n{}",
            mx.plain_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many RCPTs for the lab domain's postmaster the MTA answered with `code`.
fn answered(log: &str, code: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("NOQUEUE: reject: RCPT") && l.contains(&format!(": {code} ")))
        .filter(|l| l.contains("<postmaster@example.test>"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_answering_421_queues_within_the_soft_window_and_one_answering_554_fails_over() {
    // fail_after 2 at 1 s rounds; soft_fail_after 10 minutes
    let mut lab = Lab::start(LabOptions {
        hold: "1h",
        mx_ttl: 300,
    })
    .await;
    let mut mx = lab.serve(None);
    mx.wait_for_log("first verdicts", Duration::from_secs(60))
        .await;
    let serving = lab.primary.config().clone();

    // The primary answers the postmaster RCPT with 421, as a host that rate-limits would
    // (reloaded, so its port never closes): twelve such sessions are six times fail_after, and
    // the MX stays where it is.
    lab.primary
        .reconfigure(
            serving
                .clone()
                .with_setting("smtpd_recipient_restrictions = defer")
                .with_setting("defer_code = 421"),
        )
        .await
        .expect("reload the primary deferring");
    hold_while(&lab, &mx, PRIMARY_MX, Duration::from_secs(120), || async {
        answered(&lab.primary.log(), "421") >= 12
    })
    .await;
    assert_eq!(lab.changes().await, vec![], "no change for a soft failure");
    let health: Vec<String> = lab
        .events()
        .await
        .into_iter()
        .filter(|e| e.kind == "health" && e.message.starts_with("primary"))
        .map(|e| e.message)
        .collect();
    assert!(
        health.iter().all(|m| !m.contains("Down")),
        "the primary went Down on 421s: {health:?}"
    );

    // It answers 554 instead: mail for the domain would bounce, so it fails over.
    lab.primary
        .reconfigure(serving.with_setting("smtpd_recipient_restrictions = reject"))
        .await
        .expect("reload the primary rejecting");
    lab.wait_for_mx(&mx, BACKUP_MX, Duration::from_secs(60))
        .await;
    // Postfix writes its log a little after it answers: the two 554s the failover followed
    // are in it within a few seconds.
    let logged = Instant::now();
    while answered(&lab.primary.log(), "554") < 2 {
        assert!(
            logged.elapsed() < Duration::from_secs(30),
            "the primary's log shows fewer than two 554 answers:\n{}",
            lab.primary.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = lab.wait_verified(&mx, 1, Duration::from_secs(60)).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(mx.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_failback_to_a_primary_that_refuses_the_domains_postmaster() {
    // recover_after 2 at 1 s rounds and a 2 s hold: a failback would come within seconds
    let mut lab = Lab::start(LabOptions {
        hold: "2s",
        mx_ttl: 300,
    })
    .await;
    let mut mx = lab.serve(None);
    mx.wait_for_log("first verdicts", Duration::from_secs(60))
        .await;
    lab.primary.stop().await.expect("stop the primary MTA");
    lab.wait_for_mx(&mx, BACKUP_MX, Duration::from_secs(60))
        .await;

    // Back, with banner, EHLO and STARTTLS fine, but no longer serving example.test: Postfix
    // answers `554 5.7.1 <postmaster@example.test>: Relay access denied`. (Stopped, it starts
    // again with the new settings.)
    let serving = lab.primary.config().clone();
    let elsewhere = serving.clone().with_domain("elsewhere.test");
    lab.primary
        .reconfigure(elsewhere)
        .await
        .expect("restart the primary for another domain");
    let refusals = || async {
        lab.primary
            .log()
            .lines()
            .filter(|l| {
                l.contains("<postmaster@example.test>") && l.contains("Relay access denied")
            })
            .count()
    };
    hold_while(&lab, &mx, BACKUP_MX, Duration::from_secs(120), || async {
        refusals().await >= 8
    })
    .await;
    assert_eq!(lab.changes().await.len(), 1, "only the failover");

    // It accepts the domain again: the guarded failback follows.
    lab.primary
        .reconfigure(serving)
        .await
        .expect("restart the primary for example.test");
    lab.wait_for_mx(&mx, PRIMARY_MX, Duration::from_secs(60))
        .await;
    let rows = lab.wait_verified(&mx, 2, Duration::from_secs(60)).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(mx.terminate(), Some(0));
}

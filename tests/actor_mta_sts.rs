//! A domain's actor and its MTA-STS finding, with no network: the view `serve`'s watcher would
//! hand it is handed directly, probe rounds are fed in, and the records live in the in-memory
//! provider. The finding reaches the machine (and the timeline) only through the actor, so this
//! is the wiring between `mtasts::watch` and `machine.rs`. A DANE finding rides in the same view
//! (`MtaStsView::dane`) and takes the same path.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::api::{round, MemoryDomain, MxView, BACKUP_MX, PRIMARY_MX};
use mxguard::actor::ActorHandle;
use mxguard::health::Health;
use mxguard::machine::{MtaStsAction, Phase};
use mxguard::model::Side;
use mxguard::mtasts::fetch::PolicyReport;
use mxguard::mtasts::watch::MtaStsView;
use mxguard::mtasts::{evaluate, parse_policy, Hosts, StsRecord};

async fn feed(handle: &ActorHandle, primary: Health, backup: Health) {
    for (side, health) in [(Side::Primary, primary), (Side::Backup, backup)] {
        let (report, own) = round(side, health, Utc::now());
        assert!(handle.round(report, own).await, "the actor takes rounds");
    }
}

/// What the watcher hands the actor for a policy listing `mx`.
fn view(m: &MemoryDomain, mx: &str) -> MtaStsView {
    let policy = parse_policy(&format!(
        "version: STSv1\nmode: enforce\nmx: {mx}\nmax_age: 86400\n"
    ))
    .expect("policy");
    let evaluation = evaluate(&policy, &Hosts::of(&m.domain));
    MtaStsView {
        setting: m.domain.mta_sts,
        checked_at: Utc::now(),
        report: PolicyReport {
            record: Some(StsRecord { id: "1".into() }),
            policy: Some(policy),
            cached: false,
            error: None,
            tlsrpt: None,
            tlsrpt_error: None,
        },
        evaluation: Some(evaluation),
        dane: None,
    }
}

/// What the watcher hands the actor for a domain with no MTA-STS policy whose backup publishes
/// TLSA and offers no STARTTLS (`refused`), or publishes no TLSA (the record removed).
fn dane_view(m: &MemoryDomain, refused: bool) -> MtaStsView {
    use mxguard::dane::{Evaluation, HostDane, Presented, Tlsa, TlsaFound};
    let (tlsa, presented) = if refused {
        let tlsa = TlsaFound::Records {
            records: vec![Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![7; 32],
            }],
            authenticated: true,
        };
        (tlsa, vec![("127.0.0.21:25".into(), Presented::NoStartTls)])
    } else {
        (TlsaFound::None, Vec::new())
    };
    let backup = HostDane::judge(
        mxguard::model::Fqdn::parse("backup.example.test").expect("name"),
        Side::Backup,
        tlsa,
        presented,
    );
    MtaStsView {
        setting: m.domain.mta_sts,
        checked_at: Utc::now(),
        report: PolicyReport {
            record: None,
            policy: None,
            cached: false,
            error: None,
            tlsrpt: None,
            tlsrpt_error: None,
        },
        evaluation: None,
        dane: Some(Evaluation::new(vec![backup])),
    }
}

async fn kinds(m: &MemoryDomain) -> Vec<String> {
    m.events()
        .await
        .iter()
        .map(|e| e.kind.as_str().to_string())
        .collect()
}

async fn wait_state(
    handle: &ActorHandle,
    what: &str,
    want: impl Fn(&mxguard::machine::DomainState) -> bool,
) {
    common::poll(what, Duration::from_secs(20), || {
        let handle = handle.clone();
        let want = &want;
        async move {
            let s = handle.status().await.ok()?;
            want(&s.state).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn block_holds_the_primary_until_the_policy_lists_the_backup() {
    let mut m = MemoryDomain::new().await;
    m.domain.mta_sts = MtaStsAction::Block;
    let (handle, _stop) = m.run(m.deps()).await;
    feed(&handle, Health::Up, Health::Up).await;
    wait_state(&handle, "settled", |s| s.phase == Phase::Primary).await;

    assert!(handle.mta_sts(view(&m, "mx1.example.test")).await);
    wait_state(&handle, "the finding", |s| s.mta_sts_refused.is_some()).await;
    let status = handle.status().await.expect("status");
    let shown = status.mta_sts.expect("the view in the status");
    assert!(shown
        .refused()
        .is_some_and(|w| w.contains("backup.example.test")));

    feed(&handle, Health::Down, Health::Up).await;
    wait_state(&handle, "refused", |s| s.mta_sts_blocked).await;
    let s = handle.status().await.expect("status");
    assert_eq!((s.state.phase, s.state.in_flight), (Phase::Primary, None));
    assert_eq!(m.dns.mx(), vec![format!("{PRIMARY_MX} 300")]);
    assert_eq!(
        kinds(&m)
            .await
            .iter()
            .filter(|k| k.contains("mta_sts"))
            .collect::<Vec<_>>(),
        ["alert.mta_sts", "alert.mta_sts_refused"]
    );

    // the policy now lists every host under example.test: the failover is made at once
    assert!(handle.mta_sts(view(&m, "*.example.test")).await);
    wait_state(&handle, "failed over", |s| {
        s.phase == Phase::OnBackup && s.in_flight.is_none()
    })
    .await;
    assert_eq!(m.dns.mx(), vec![format!("{BACKUP_MX} 30")]);
    let k = kinds(&m).await;
    assert!(k.contains(&"mta_sts_restored".to_string()), "{k:?}");
    assert!(!k.contains(&"alert.mta_sts_failover".to_string()), "{k:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn off_clears_a_finding_persisted_under_an_earlier_setting() {
    let mut m = MemoryDomain::new().await;
    m.domain.mta_sts = MtaStsAction::Warn;
    let (handle, stop) = m.run(m.deps()).await;
    feed(&handle, Health::Up, Health::Up).await;
    wait_state(&handle, "settled", |s| s.phase == Phase::Primary).await;
    assert!(handle.mta_sts(view(&m, "mx1.example.test")).await);
    wait_state(&handle, "the finding", |s| s.mta_sts_refused.is_some()).await;
    drop(stop);

    // restarted with mta_sts = "off": the stale finding goes, so a failover carries no warning
    m.domain.mta_sts = MtaStsAction::Off;
    common::poll("the first actor stopped", Duration::from_secs(20), || {
        let handle = handle.clone();
        async move { handle.status().await.is_err().then_some(()) }
    })
    .await;
    let (handle, _stop) = m.run(m.deps()).await;
    wait_state(&handle, "the stale finding cleared", |s| {
        s.mta_sts_refused.is_none()
    })
    .await;
    feed(&handle, Health::Up, Health::Up).await;
    feed(&handle, Health::Down, Health::Up).await;
    wait_state(&handle, "failed over", |s| {
        s.phase == Phase::OnBackup && s.in_flight.is_none()
    })
    .await;
    let k = kinds(&m).await;
    assert!(!k.contains(&"alert.mta_sts_failover".to_string()), "{k:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn block_holds_the_primary_while_dane_senders_would_refuse_the_backup() {
    let mut m = MemoryDomain::new().await;
    m.domain.mta_sts = MtaStsAction::Block;
    let (handle, _stop) = m.run(m.deps()).await;
    feed(&handle, Health::Up, Health::Up).await;
    wait_state(&handle, "settled", |s| s.phase == Phase::Primary).await;

    assert!(handle.mta_sts(dane_view(&m, true)).await);
    wait_state(&handle, "the finding", |s| {
        s.mta_sts_refused
            .as_deref()
            .is_some_and(|w| w.starts_with("DANE: the backup MX backup.example.test"))
    })
    .await;
    feed(&handle, Health::Down, Health::Up).await;
    wait_state(&handle, "refused", |s| s.mta_sts_blocked).await;
    assert_eq!(m.dns.mx(), vec![format!("{PRIMARY_MX} 300")]);

    // the backup's TLSA removed: nothing for DANE senders to refuse, the failover is made
    assert!(handle.mta_sts(dane_view(&m, false)).await);
    wait_state(&handle, "failed over", |s| {
        s.phase == Phase::OnBackup && s.in_flight.is_none()
    })
    .await;
    assert_eq!(m.dns.mx(), vec![format!("{BACKUP_MX} 30")]);
    let k = kinds(&m).await;
    assert_eq!(
        k.iter()
            .filter(|k| k.contains("mta_sts"))
            .collect::<Vec<_>>(),
        ["alert.mta_sts", "alert.mta_sts_refused", "mta_sts_restored"],
        "{k:?}"
    );
}

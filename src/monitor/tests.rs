use std::collections::BTreeMap;
use std::sync::Mutex;

use mxguard_core::{FixedJitter, ManualClock};

use super::*;
use crate::health::{AddressResult, Health, ResolverResult, TargetRound};

/// A prober whose answer for a target is a function of the (manual) time since start.
struct Scripted {
    clock: ManualClock,
    /// host → (down from, down until) in seconds since start
    outages: BTreeMap<String, (f64, f64)>,
    calls: Mutex<Vec<(String, f64)>>,
}

#[async_trait]
impl TargetProber for Scripted {
    async fn probe(&self, spec: &TargetSpec, _now: DateTime<Utc>) -> TargetEvidence {
        let t = self.clock.elapsed().as_secs_f64();
        let host = spec.host.to_string();
        self.calls.lock().unwrap().push((host.clone(), t));
        let down = self
            .outages
            .get(&host)
            .is_some_and(|(from, until)| t >= *from && t < *until);
        let address = "192.0.2.1".parse().unwrap();
        TargetEvidence {
            side: spec.side,
            round: TargetRound {
                target: spec.host.clone(),
                resolvers: vec![ResolverResult {
                    resolver: "r".into(),
                    addresses: vec![address],
                    error: None,
                }],
                addresses: vec![AddressResult {
                    address,
                    pass: !down,
                    reason: if down {
                        "554 banner".into()
                    } else {
                        "250 ok".into()
                    },
                }],
            },
            dns: vec![],
            smtp: vec![],
        }
    }
}

fn settings() -> MonitorSettings {
    MonitorSettings {
        interval: Duration::from_secs(5),
        confirm_interval: Duration::from_millis(500),
        jitter: Duration::ZERO,
        thresholds: Thresholds {
            fail_after: 3,
            recover_after: 6,
        },
        resolver_quorum: 1,
    }
}

fn spec(side: Side, host: &str) -> TargetSpec {
    TargetSpec {
        side,
        host: Fqdn::parse(host).unwrap(),
        rcpt: None,
        addresses: Vec::new(),
    }
}

/// Runs the monitor on a manual clock until the primary goes Down; returns (seconds at Down,
/// reports).
async fn detect(
    outage_start: f64,
    first_round_fraction: f64,
) -> (f64, Vec<RoundReport>, Arc<Scripted>) {
    let clock = ManualClock::new();
    let prober = Arc::new(Scripted {
        clock: clock.clone(),
        outages: BTreeMap::from([("mx1.example.test.".to_string(), (outage_start, f64::MAX))]),
        calls: Mutex::new(vec![]),
    });
    let monitor = Monitor::new(
        Fqdn::parse("example.test").unwrap(),
        vec![
            spec(Side::Primary, "mx1.example.test"),
            spec(Side::Backup, "backup.example.net"),
        ],
        settings(),
        prober.clone(),
        Arc::new(clock.clone()),
        Arc::new(FixedJitter(first_round_fraction)),
        Utc::now(),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let task = monitor.run(tx, stop.clone());
    let watch = async {
        let mut seen = Vec::new();
        while let Some(r) = rx.recv().await {
            let down = r.side == Side::Primary && r.health.health == Health::Down;
            seen.push(r);
            if down {
                return (clock.elapsed().as_secs_f64(), seen);
            }
        }
        panic!("monitor stopped before detecting the outage");
    };
    let (at, seen) = clock
        .drive(async {
            tokio::select! {
                r = watch => r,
                _ = task => panic!("monitor ended"),
            }
        })
        .await;
    stop.cancel();
    (at, seen, prober)
}

#[tokio::test]
async fn fast_confirmation_detects_within_half_an_interval_plus_confirmations() {
    // first rounds at 2.5 s, then every 5 s: 2.5, 7.5, 12.5 … The outage starts at 8.0 s.
    let (at, reports, _) = detect(8.0, 0.5).await;
    // scheduled round at 12.5 fails, confirmations at 13.0 and 13.5 → Down at 13.5
    assert!((at - 13.5).abs() < 1e-6, "Down at {at}");
    let primary: Vec<&RoundReport> = reports.iter().filter(|r| r.side == Side::Primary).collect();
    let confirmations = primary.iter().filter(|r| r.confirmation).count();
    assert_eq!(
        confirmations, 2,
        "two confirmation re-probes after the failing round"
    );
    let down = primary.last().unwrap();
    assert_eq!(down.change.as_ref().map(|c| c.to), Some(Health::Down));
    assert_eq!(down.verdicts[0].reason, "192.0.2.1: 554 banner");
}

#[tokio::test]
async fn backup_keeps_its_own_schedule_while_primary_is_confirmed() {
    let (_, _, prober) = detect(8.0, 0.5).await;
    let calls = prober.calls.lock().unwrap();
    let backup: Vec<f64> = calls
        .iter()
        .filter(|(h, _)| h == "backup.example.net.")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(
        backup,
        vec![2.5, 7.5, 12.5],
        "backup probed every interval, not at confirmations"
    );
}

#[tokio::test]
async fn a_single_failed_round_is_forgiven() {
    let clock = ManualClock::new();
    let prober = Arc::new(Scripted {
        clock: clock.clone(),
        // down only between 7 and 8 s: the round at 7.5 fails, the confirmation at 8.0 passes
        outages: BTreeMap::from([("mx1.example.test.".to_string(), (7.0, 8.0))]),
        calls: Mutex::new(vec![]),
    });
    let mut monitor = Monitor::new(
        Fqdn::parse("example.test").unwrap(),
        vec![spec(Side::Primary, "mx1.example.test")],
        settings(),
        prober,
        Arc::new(clock.clone()),
        Arc::new(FixedJitter(0.5)),
        Utc::now(),
    );
    clock.advance(Duration::from_millis(2500));
    assert!(monitor.round(Side::Primary, false).await.pass);
    clock.advance(Duration::from_secs(5));
    let failed = monitor.round(Side::Primary, false).await;
    assert!(!failed.pass);
    assert!(failed.health.confirming());
    assert_eq!(
        monitor.next_delay(Side::Primary),
        (Duration::from_millis(500), true)
    );
    clock.advance(Duration::from_millis(500));
    let ok = monitor.round(Side::Primary, true).await;
    assert!(ok.pass);
    assert_eq!(ok.health.health, Health::Up);
    assert!(
        !monitor.next_delay(Side::Primary).1,
        "back to the normal schedule"
    );
}

#[tokio::test]
async fn a_side_without_targets_is_never_probed() {
    let clock = ManualClock::new();
    let prober = Arc::new(Scripted {
        clock: clock.clone(),
        outages: BTreeMap::new(),
        calls: Mutex::new(vec![]),
    });
    let monitor = Monitor::new(
        Fqdn::parse("example.test").unwrap(),
        vec![spec(Side::Primary, "mx1.example.test")],
        settings(),
        prober,
        Arc::new(clock.clone()),
        Arc::new(FixedJitter(0.5)),
        Utc::now(),
    );
    let (tx, mut rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let task = monitor.run(tx, stop.clone());
    let reports = clock
        .drive(async {
            tokio::select! {
                _ = task => panic!("monitor ended"),
                r = async {
                    let mut seen = vec![];
                    while seen.len() < 10 {
                        seen.push(rx.recv().await.expect("report"));
                    }
                    seen
                } => r,
            }
        })
        .await;
    assert!(
        reports.iter().all(|r| r.side == Side::Primary),
        "only the primary has targets"
    );
    assert!(reports.iter().all(|r| r.health.health == Health::Up));
}

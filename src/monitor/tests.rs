use std::sync::Mutex;

use mxguard_core::{FixedJitter, ManualClock};

use super::*;
use crate::health::{AddressResult, Health, ResolverResult, TargetRound};
use crate::probe::smtp::SmtpReport;

/// A prober whose answer for a target is a function of the (manual) time since start.
struct Scripted {
    clock: ManualClock,
    /// host → (down from, down until) in seconds since start
    outages: BTreeMap<String, (f64, f64)>,
    calls: Mutex<Vec<(String, f64)>>,
    /// The RCPT-checked domains of each probe, in order.
    rcpts: Mutex<Vec<Vec<String>>>,
    /// Domains whose postmaster every host refuses (with a 550); others are accepted.
    refused: Vec<String>,
    /// host → how long its probe takes (seconds of the manual clock), answered as of its start
    slow: BTreeMap<String, f64>,
    /// Hosts whose outage is a 421 (soft) rather than a 554.
    soft: Vec<String>,
    /// host → until when (seconds since start) its resolver is over its query budget
    unasked_until: BTreeMap<String, f64>,
    /// Each probe's host and whether it was asked as a confirmation.
    confirmations: Mutex<Vec<(String, bool)>>,
}

impl Scripted {
    fn new(clock: &ManualClock, outages: &[(&str, f64, f64)]) -> Arc<Scripted> {
        Arc::new(Scripted {
            clock: clock.clone(),
            outages: outages
                .iter()
                .map(|(h, from, until)| (h.to_string(), (*from, *until)))
                .collect(),
            calls: Mutex::new(vec![]),
            rcpts: Mutex::new(vec![]),
            refused: vec![],
            slow: BTreeMap::new(),
            soft: vec![],
            unasked_until: BTreeMap::new(),
            confirmations: Mutex::new(vec![]),
        })
    }

    /// Up everywhere, but every host refuses the postmaster of `domains`.
    fn refusing(clock: &ManualClock, domains: &[&str]) -> Arc<Scripted> {
        let mut s = Arc::into_inner(Scripted::new(clock, &[])).expect("not shared yet");
        s.refused = domains.iter().map(|d| d.to_string()).collect();
        Arc::new(s)
    }

    fn calls_of(&self, host: &str) -> Vec<f64> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(h, _)| h == host)
            .map(|(_, t)| *t)
            .collect()
    }
}

/// The SMTP report of an address that passed, with each RCPT-checked domain's answer.
fn smtp_report(spec: &TargetSpec, refused: &[String]) -> SmtpReport {
    use crate::probe::smtp::{Failure, FailureKind, Phase, Recipient};
    let recipients = spec
        .rcpt
        .iter()
        .flat_map(|r| r.domains.iter())
        .map(|d| {
            let refuse = refused.contains(&d.to_string());
            Recipient {
                domain: d.clone(),
                latency_ms: 1,
                code: if refuse { 550 } else { 250 },
                text: "5.1.1 unknown".into(),
                failure: refuse.then(|| Failure {
                    phase: Phase::RcptPostmaster,
                    kind: FailureKind::PermReject,
                    detail: "550 5.1.1 unknown".into(),
                }),
            }
        })
        .collect();
    SmtpReport {
        host: spec.host.clone(),
        address: "192.0.2.1:25".parse().unwrap(),
        pass: true,
        failure: None,
        warnings: vec![],
        phases: vec![],
        starttls_offered: Some(true),
        certificate: None,
        chain: vec![],
        latency_ms: 1,
        recipients,
    }
}

#[async_trait]
impl TargetProber for Scripted {
    async fn probe(
        &self,
        spec: &TargetSpec,
        _now: DateTime<Utc>,
        confirmation: bool,
    ) -> TargetEvidence {
        let t = self.clock.elapsed().as_secs_f64();
        if let Some(secs) = self.slow.get(&spec.host.to_string()) {
            self.clock.sleep(Duration::from_secs_f64(*secs)).await;
        }
        let host = spec.host.to_string();
        self.calls.lock().unwrap().push((host.clone(), t));
        self.confirmations
            .lock()
            .unwrap()
            .push((host.clone(), confirmation));
        if self
            .unasked_until
            .get(&host)
            .is_some_and(|until| t < *until)
        {
            return TargetEvidence {
                side: spec.side,
                round: TargetRound {
                    target: spec.host.clone(),
                    resolvers: vec![],
                    unasked: vec!["r".into()],
                    addresses: vec![],
                },
                dns: vec![],
                smtp: vec![],
            };
        }
        if let Some(r) = &spec.rcpt {
            let domains = r.domains.iter().map(|d| d.to_string()).collect();
            self.rcpts.lock().unwrap().push(domains);
        }
        let down = self
            .outages
            .get(&host)
            .is_some_and(|(from, until)| t >= *from && t < *until);
        let address = "192.0.2.1".parse().unwrap();
        if spec.rcpt.is_some() && !down {
            let smtp = vec![smtp_report(spec, &self.refused)];
            return TargetEvidence {
                side: spec.side,
                round: TargetRound {
                    target: spec.host.clone(),
                    resolvers: vec![ResolverResult {
                        resolver: "r".into(),
                        addresses: vec![address],
                        error: None,
                    }],
                    unasked: vec![],
                    addresses: vec![AddressResult {
                        address,
                        pass: true,
                        soft: false,
                        reason: "250 ok".into(),
                    }],
                },
                dns: vec![],
                smtp,
            };
        }
        TargetEvidence {
            side: spec.side,
            round: TargetRound {
                target: spec.host.clone(),
                resolvers: vec![ResolverResult {
                    resolver: "r".into(),
                    addresses: vec![address],
                    error: None,
                }],
                unasked: vec![],
                addresses: vec![AddressResult {
                    address,
                    pass: !down,
                    soft: down && self.soft.contains(&host),
                    reason: match (down, self.soft.contains(&host)) {
                        (false, _) => "250 ok".into(),
                        (true, false) => "554 banner".into(),
                        (true, true) => "421 too many connections".into(),
                    },
                }],
            },
            dns: vec![],
            smtp: vec![],
        }
    }
}

/// Monitors on `clock`, first rounds at `first_round` of an interval.
fn monitors_on(clock: &ManualClock, first_round: f64) -> Monitors {
    Monitors::new(
        Arc::new(clock.clone()),
        Arc::new(FixedJitter(first_round)),
        Utc::now(),
    )
}

fn settings() -> MonitorSettings {
    MonitorSettings {
        interval: Duration::from_secs(5),
        confirm_interval: Duration::from_millis(500),
        jitter: Duration::ZERO,
        thresholds: Thresholds {
            fail_after: 3,
            recover_after: 6,
            soft_fail_after: Duration::from_secs(600),
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
    let prober = Scripted::new(&clock, &[("mx1.example.test.", outage_start, f64::MAX)]);
    let (at, seen) = detect_with(&clock, prober.clone(), settings(), first_round_fraction).await;
    (at, seen, prober)
}

/// [`detect`] with a given prober and settings on `clock`.
async fn detect_with(
    clock: &ManualClock,
    prober: Arc<Scripted>,
    settings: MonitorSettings,
    first_round_fraction: f64,
) -> (f64, Vec<RoundReport>) {
    let mut monitors = monitors_on(clock, first_round_fraction);
    let mut rx = monitors.add(
        Fqdn::parse("example.test").unwrap(),
        vec![
            spec(Side::Primary, "mx1.example.test"),
            spec(Side::Backup, "backup.example.net"),
        ],
        settings,
        prober,
    );
    let stop = CancellationToken::new();
    let task = monitors.run(stop.clone());
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
    (at, seen)
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
    assert_eq!(&*down.verdicts[0].reason, "192.0.2.1: 554 banner");
}

#[tokio::test]
async fn a_primary_answering_421_is_probed_at_the_normal_pace_and_down_after_the_soft_window() {
    let clock = ManualClock::new();
    let mut prober = Arc::into_inner(Scripted::new(
        &clock,
        &[("mx1.example.test.", 8.0, f64::MAX)],
    ))
    .expect("not shared yet");
    prober.soft.push("mx1.example.test.".into());
    let prober = Arc::new(prober);
    let mut settings = settings();
    settings.thresholds.soft_fail_after = Duration::from_secs(60);
    let (at, seen) = detect_with(&clock, prober.clone(), settings, 0.5).await;
    let down = seen.last().expect("the Down round").clone();
    // rounds at 2.5, 7.5, 12.5 …: the first 421 at 12.5, Down at the first round 60 s later
    assert!((at - 72.5).abs() < 1e-6, "Down at {at}");
    let change = down.change.expect("a change");
    assert_eq!((change.failures, change.hard_failures), (13, 0));
    // no confirmation re-probes: every probe of the soft host is a scheduled one, 5 s apart
    let calls = prober.calls_of("mx1.example.test.");
    assert!(
        calls.windows(2).all(|w| (w[1] - w[0] - 5.0).abs() < 1e-6),
        "{calls:?}"
    );
}

#[tokio::test]
async fn a_slow_backup_does_not_delay_the_primarys_detection() {
    // The backup takes 15 s to probe (healthy, each reply just under the phase timeout): the
    // primary's rounds and confirmations run on their own loop and never wait for it.
    let clock = ManualClock::new();
    let mut prober = Arc::into_inner(Scripted::new(
        &clock,
        &[("mx1.example.test.", 8.0, f64::MAX)],
    ))
    .expect("not shared yet");
    prober.slow.insert("backup.example.net.".into(), 15.0);
    let prober = Arc::new(prober);
    let mut monitors = monitors_on(&clock, 0.5);
    let rxs = vec![monitors.add(
        Fqdn::parse("example.test").unwrap(),
        vec![
            spec(Side::Primary, "mx1.example.test"),
            spec(Side::Backup, "backup.example.net"),
        ],
        settings(),
        prober.clone(),
    )];
    let seen = run_until(&clock, monitors, rxs, |seen| backups(&seen[0]).len() == 1).await;
    // seconds since start: the first primary round ran at 2.5 s
    let first = seen[0][0].at;
    let secs = |r: &RoundReport| 2.5 + (r.at - first).num_milliseconds() as f64 / 1000.0;
    let down = seen[0]
        .iter()
        .find(|r| r.side == Side::Primary && r.health.health == Health::Down)
        .expect("the primary went Down before the backup's first round ended");
    assert_eq!(secs(down), 13.5, "detected as if the backup were fast");
    assert_eq!(
        &prober.calls_of("mx1.example.test.")[..5],
        [2.5, 7.5, 12.5, 13.0, 13.5]
    );
    // the backup's round is dated when it ended, so its verdict is as fresh as it can be
    assert_eq!(secs(backups(&seen[0])[0]), 17.5);
}

#[tokio::test]
async fn backup_keeps_its_own_schedule_while_primary_is_confirmed() {
    let (_, _, prober) = detect(8.0, 0.5).await;
    let backup = prober.calls_of("backup.example.net.");
    assert_eq!(
        backup,
        vec![2.5, 7.5, 12.5],
        "backup probed every interval, not at confirmations"
    );
}

#[tokio::test]
async fn a_single_failed_round_is_forgiven() {
    let clock = ManualClock::new();
    // down only between 7 and 8 s: the round at 7.5 fails, the confirmation at 8.0 passes
    let prober = Scripted::new(&clock, &[("mx1.example.test.", 7.0, 8.0)]);
    let mut monitors = monitors_on(&clock, 0.5);
    let mut rx = monitors.add(
        Fqdn::parse("example.test").unwrap(),
        vec![spec(Side::Primary, "mx1.example.test")],
        settings(),
        prober,
    );
    clock.advance(Duration::from_millis(2500));
    assert_eq!(monitors.round(0, false).await, (false, true));
    assert!(rx.recv().await.unwrap().pass);
    clock.advance(Duration::from_secs(5));
    let (confirming, _) = monitors.round(0, false).await;
    let failed = rx.recv().await.unwrap();
    assert!(!failed.pass);
    assert!(failed.health.confirming());
    assert!(confirming, "the host is confirmed");
    assert_eq!(
        monitors.next_delay(0, confirming),
        Duration::from_millis(500)
    );
    clock.advance(Duration::from_millis(500));
    let (confirming, _) = monitors.round(0, true).await;
    let ok = rx.recv().await.unwrap();
    assert!(ok.pass && ok.confirmation);
    assert_eq!(ok.health.health, Health::Up);
    assert!(!confirming, "back to the normal schedule");
}

#[tokio::test]
async fn a_side_without_targets_is_never_probed() {
    let clock = ManualClock::new();
    let prober = Scripted::new(&clock, &[]);
    let mut monitors = monitors_on(&clock, 0.5);
    let mut rx = monitors.add(
        Fqdn::parse("example.test").unwrap(),
        vec![spec(Side::Primary, "mx1.example.test")],
        settings(),
        prober,
    );
    let stop = CancellationToken::new();
    let task = monitors.run(stop.clone());
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

const SHARING: [&str; 3] = ["a.example.test.", "b.example.test.", "c.example.test."];

/// Three domains whose primary is mx1.example.test and whose backup (RCPT-checked, relay
/// check) is backup.example.net, on one prober.
fn sharing(monitors: &mut Monitors, prober: Arc<Scripted>) -> Vec<mpsc::Receiver<RoundReport>> {
    SHARING
        .iter()
        .map(|d| {
            let domain = Fqdn::parse(d).unwrap();
            let backup = TargetSpec {
                rcpt: Some(RcptCheck::one(domain.clone(), true)),
                ..spec(Side::Backup, "backup.example.net")
            };
            monitors.add(
                domain,
                vec![spec(Side::Primary, "mx1.example.test"), backup],
                settings(),
                prober.clone(),
            )
        })
        .collect()
}

/// Runs `monitors` on `clock` until `done` holds for the reports each domain received.
async fn run_until(
    clock: &ManualClock,
    monitors: Monitors,
    mut rxs: Vec<mpsc::Receiver<RoundReport>>,
    done: impl Fn(&[Vec<RoundReport>]) -> bool,
) -> Vec<Vec<RoundReport>> {
    let stop = CancellationToken::new();
    let task = monitors.run(stop.clone());
    let watch = async {
        let mut seen: Vec<Vec<RoundReport>> = vec![vec![]; rxs.len()];
        while !done(&seen) {
            let (report, i, _) =
                futures::future::select_all(rxs.iter_mut().map(|rx| Box::pin(rx.recv()))).await;
            seen[i].push(report.expect("report"));
        }
        seen
    };
    let seen = clock
        .drive(async {
            tokio::select! {
                r = watch => r,
                _ = task => panic!("monitors ended"),
            }
        })
        .await;
    stop.cancel();
    seen
}

fn backups(reports: &[RoundReport]) -> Vec<&RoundReport> {
    reports.iter().filter(|r| r.side == Side::Backup).collect()
}

#[tokio::test]
async fn a_host_shared_by_three_domains_is_probed_once_per_round() {
    let clock = ManualClock::new();
    let prober = Scripted::new(&clock, &[]);
    let mut monitors = monitors_on(&clock, 0.5);
    let rxs = sharing(&mut monitors, prober.clone());
    assert_eq!(monitors.hosts(), 2, "two distinct hosts for three domains");
    let seen = run_until(&clock, monitors, rxs, |seen| {
        seen.iter().all(|r| backups(r).len() >= 4)
    })
    .await;
    assert_eq!(
        prober.calls_of("backup.example.net."),
        vec![2.5, 7.5, 12.5, 17.5],
        "one probe per round for all three domains"
    );
    let primary = prober.calls_of("mx1.example.test.");
    assert!(
        (3..=4).contains(&primary.len())
            && primary.iter().all(|t| [2.5, 7.5, 12.5, 17.5].contains(t)),
        "{primary:?}"
    );
    // the one session per round carried every domain's RCPT check
    for rcpts in prober.rcpts.lock().unwrap().iter() {
        assert_eq!(rcpts, &SHARING.map(String::from).to_vec());
    }
    for (domain, reports) in SHARING.iter().zip(&seen) {
        for r in backups(reports) {
            assert_eq!(r.domain.as_str(), *domain);
            assert!(r.pass && r.health.health == Health::Up, "{r:?}");
            let recipients: Vec<String> = r.evidence[0].smtp_for(&r.domain)[0]
                .recipients
                .iter()
                .map(|x| x.domain.to_string())
                .collect();
            assert_eq!(
                recipients,
                [*domain],
                "each domain sees its own answer only"
            );
        }
    }
}

#[tokio::test]
async fn one_domains_refused_rcpt_fails_only_that_domain_while_the_host_is_up() {
    let clock = ManualClock::new();
    let prober = Scripted::refusing(&clock, &["b.example.test."]);
    let mut monitors = monitors_on(&clock, 0.5);
    let rxs = sharing(&mut monitors, prober.clone());
    let seen = run_until(&clock, monitors, rxs, |seen| {
        backups(&seen[1])
            .last()
            .is_some_and(|r| r.health.health == Health::Down)
    })
    .await;
    // b's failing round confirms the shared host (at confirm_interval) until b is Down
    assert_eq!(prober.calls_of("backup.example.net."), vec![2.5, 3.0, 3.5]);
    let b = backups(&seen[1]);
    assert!(b.iter().all(|r| !r.pass), "{b:?}");
    assert_eq!(
        &*b.last().unwrap().verdicts[0].reason,
        "192.0.2.1: permanent rejection (5xx) in rcpt_postmaster: 550 5.1.1 unknown"
    );
    for other in [&seen[0], &seen[2]] {
        let reports = backups(other);
        assert!(!reports.is_empty());
        assert!(
            reports
                .iter()
                .all(|r| r.pass && r.health.health == Health::Up),
            "{reports:?}"
        );
    }
}

#[tokio::test]
async fn rcpt_checks_rotate_a_hundred_a_round_and_each_domain_keeps_its_latest_answer() {
    let clock = ManualClock::new();
    let prober = Scripted::refusing(&clock, &["d7.example.test."]);
    let mut monitors = monitors_on(&clock, 0.5);
    let mut rxs = Vec::new();
    for i in 0..250 {
        let domain = Fqdn::parse(&format!("d{i}.example.test")).unwrap();
        let backup = TargetSpec {
            rcpt: Some(RcptCheck::one(domain.clone(), true)),
            ..spec(Side::Backup, "backup.example.net")
        };
        rxs.push(monitors.add(domain, vec![backup], settings(), prober.clone()));
    }
    assert_eq!(monitors.hosts(), 1);
    let own_answer = |r: &RoundReport| {
        r.evidence[0].smtp_for(&r.domain)[0]
            .recipients
            .iter()
            .map(|x| x.domain.to_string())
            .collect::<Vec<_>>()
    };
    let mut asked = std::collections::BTreeSet::new();
    for round in 0..3 {
        clock.advance(Duration::from_secs(5));
        monitors.round(0, false).await;
        let rcpts = prober.rcpts.lock().unwrap().last().cloned().unwrap();
        assert!(rcpts.len() <= RCPT_PER_ROUND, "{}", rcpts.len());
        asked.extend(rcpts);
        for (i, rx) in rxs.iter_mut().enumerate() {
            let r = rx.try_recv().expect("every domain gets every round");
            let name = format!("d{i}.example.test.");
            let checked = asked.contains(&name);
            // checked once: its answer stands in later rounds; never checked yet: none
            assert_eq!(
                own_answer(&r),
                if checked { vec![name.clone()] } else { vec![] },
                "round {round}"
            );
            assert_eq!(r.pass, i != 7 || !checked, "{name} in round {round}: {r:?}");
        }
    }
    assert_eq!(asked.len(), 250, "every domain checked within three rounds");
    // a confirmation round re-asks only the refused domain
    monitors.round(0, true).await;
    let rcpts = prober.rcpts.lock().unwrap().last().cloned().unwrap();
    assert_eq!(rcpts, ["d7.example.test."]);
}

#[tokio::test]
async fn a_round_without_dns_evidence_for_the_budget_reaches_no_domain() {
    let clock = ManualClock::new();
    let mut scripted = Arc::into_inner(Scripted::new(&clock, &[])).expect("not shared yet");
    scripted
        .unasked_until
        .insert("mx1.example.test.".into(), 10.0);
    let prober = Arc::new(scripted);
    let mut monitors = monitors_on(&clock, 0.0);
    let mut rx = monitors.add(
        Fqdn::parse("example.test").unwrap(),
        vec![spec(Side::Primary, "mx1.example.test")],
        settings(),
        prober.clone(),
    );
    // over the budget: neither a pass nor a failure, and nothing to confirm
    for _ in 0..3 {
        assert_eq!(monitors.round(0, false).await, (false, true));
        assert!(
            rx.try_recv().is_err(),
            "an undecided round reaches no domain"
        );
    }
    clock.advance(Duration::from_secs(10));
    assert_eq!(monitors.round(0, true).await, (false, true));
    let report = rx.try_recv().expect("a decided round reaches the domain");
    assert!(report.pass);
    assert_eq!(report.health.health, Health::Up);
    assert_eq!(
        report.health.failures, 0,
        "the undecided rounds counted nothing"
    );
    let asked = prober.confirmations.lock().unwrap().clone();
    assert_eq!(
        asked.last(),
        Some(&("mx1.example.test.".to_string(), true)),
        "a confirmation round asks its prober as one (the resolvers again): {asked:?}"
    );
}

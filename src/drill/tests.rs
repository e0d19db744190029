//! The drill's rules, one table per step, and the result's rule as a proptest.

use std::net::SocketAddr;

use chrono::TimeZone;
use mxguard_core::{AccessCheck, AccessReport, ChangeSet, Missing, Outcome as AccessOutcome};
use proptest::prelude::*;

use super::*;
use crate::check::auth::{BackupSpf, PolicyRecord};
use crate::health::{ResolverResult, TargetRound};
use crate::model::Fqdn;
use crate::mtasts::fetch::PolicyReport;
use crate::mtasts::watch::MtaStsView;
use crate::mtasts::StsMode;
use crate::mtasts::{evaluate, Hosts, MxPattern, StsPolicy, StsRecord};
use crate::probe::smtp::{Failure, PhaseRecord, Recipient, SmtpReport};
use crate::probe::smtp::{FailureKind, Phase as SmtpPhase};
use crate::probe::target::TargetEvidence;

fn name(s: &str) -> Fqdn {
    Fqdn::parse(s).expect("name")
}

fn domain() -> Fqdn {
    name("example.test")
}

fn ok_step(step: StepKind) -> Step {
    Found::new(Outcome::Pass, "ok", vec![]).step(step, Duration::from_millis(1))
}

/// Every step of a drill passing.
fn passing(live: bool) -> Vec<Step> {
    StepKind::all(live).into_iter().map(ok_step).collect()
}

fn with(mut steps: Vec<Step>, kind: StepKind, outcome: Outcome) -> Vec<Step> {
    for s in steps.iter_mut().filter(|s| s.step == kind) {
        s.outcome = outcome;
    }
    steps
}

#[test]
fn a_drill_passes_only_when_every_required_step_passed() {
    assert_eq!(judge(&passing(false), false), DrillResult::Pass);
    assert_eq!(judge(&passing(true), true), DrillResult::Pass);
    for kind in StepKind::all(true) {
        for outcome in [Outcome::Fail, Outcome::NotChecked] {
            let steps = with(passing(true), kind, outcome);
            assert_eq!(judge(&steps, true), DrillResult::Fail, "{kind} {outcome:?}");
        }
    }
    // a required step missing: the drill did not look
    let mut steps = passing(false);
    steps.retain(|s| s.step != StepKind::MtaSts);
    assert_eq!(judge(&steps, false), DrillResult::Fail);
    // a live drill without its moves did not show them
    assert_eq!(judge(&passing(false), true), DrillResult::Fail);
    // DANE is required like the others
    let mut steps = passing(false);
    steps.retain(|s| s.step != StepKind::Dane);
    assert_eq!(judge(&steps, false), DrillResult::Fail);
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Pass),
        Just(Outcome::Fail),
        Just(Outcome::NotChecked)
    ]
}

proptest! {
    /// Whatever the steps found: the drill passes exactly when no step failed and every
    /// required one passed.
    #[test]
    fn the_result_follows_the_steps(live: bool, outcomes in proptest::collection::vec(outcome(), 9)) {
        let steps: Vec<Step> = StepKind::all(live)
            .into_iter()
            .zip(outcomes)
            .map(|(k, o)| Found::new(o, "x", vec![]).step(k, Duration::ZERO))
            .collect();
        let want = steps.iter().all(|s| s.outcome == Outcome::Pass
            || (!s.step.required(live) && s.outcome == Outcome::NotChecked));
        prop_assert_eq!(judge(&steps, live) == DrillResult::Pass, want);
        let report = DrillReport::new(header(live), steps.clone(), None);
        prop_assert_eq!(report.passed(), want);
        // the failing steps are named in the message, and only then
        for s in report.failing() {
            prop_assert!(report.message().contains(s.step.as_str()));
        }
        prop_assert_eq!(report.failing().is_empty(), want);
    }
}

fn header(live: bool) -> Header {
    Header {
        domain: "example.test".into(),
        trigger: Trigger::Operator,
        by: "ops".into(),
        reason: "quarterly".into(),
        live,
        started_at: Utc
            .with_ymd_and_hms(2026, 1, 5, 10, 0, 0)
            .single()
            .expect("time"),
        duration: Duration::from_millis(412),
    }
}

fn addr() -> SocketAddr {
    "127.0.0.21:25".parse().expect("addr")
}

fn smtp(failure: Option<Failure>, rcpt: Option<(u16, bool)>, relay: Option<u16>) -> SmtpReport {
    let mut phases = Vec::new();
    if let Some(code) = relay {
        phases.push(PhaseRecord {
            phase: SmtpPhase::RcptRelay,
            latency_ms: 7,
            code: Some(code),
            text: "5.7.1 Relay access denied".into(),
        });
    }
    SmtpReport {
        host: name("backup.example.test"),
        address: addr(),
        pass: failure.is_none(),
        failure,
        warnings: vec![],
        phases,
        starttls_offered: Some(true),
        certificate: None,
        chain: vec![],
        latency_ms: 30,
        recipients: rcpt
            .map(|(code, ok)| Recipient {
                domain: domain(),
                latency_ms: 2,
                code,
                text: "ok".into(),
                failure: (!ok).then(|| Failure {
                    phase: SmtpPhase::RcptPostmaster,
                    kind: FailureKind::PermReject,
                    detail: format!("{code} no"),
                }),
            })
            .into_iter()
            .collect(),
    }
}

fn target(resolved: usize, smtp: Vec<SmtpReport>) -> TargetEvidence {
    let resolvers = (0..2)
        .map(|i| ResolverResult {
            resolver: format!("127.0.0.{}:53", i + 1),
            addresses: if i < resolved {
                vec![addr().ip()]
            } else {
                vec![]
            },
            error: (i >= resolved).then(|| "SERVFAIL".to_string()),
        })
        .collect();
    TargetEvidence {
        side: Side::Backup,
        round: TargetRound {
            target: name("backup.example.test"),
            resolvers,
            unasked: vec![],
            addresses: vec![],
        },
        dns: vec![],
        smtp,
    }
}

fn open_relay() -> Failure {
    Failure {
        phase: SmtpPhase::RcptRelay,
        kind: FailureKind::OpenRelay,
        detail: "accepted RCPT TO:<x@relay.invalid> from a stranger: 250 ok".into(),
    }
}

#[test]
fn backup_rcpt_needs_every_backup_host_to_accept_the_postmaster() {
    let d = domain();
    let accepts = target(2, vec![smtp(None, Some((250, true)), Some(554))]);
    assert_eq!(backup_rcpt(&d, &[accepts], 2).outcome, Outcome::Pass);
    let refuses = target(2, vec![smtp(None, Some((550, false)), Some(554))]);
    let f = backup_rcpt(&d, &[refuses], 2);
    assert_eq!(f.outcome, Outcome::Fail);
    assert!(
        f.findings[0].contains("refuses postmaster@example.test"),
        "{f:?}"
    );
    // resolved by one resolver of two, quorum two
    let unresolved = target(1, vec![smtp(None, Some((250, true)), Some(554))]);
    assert_eq!(backup_rcpt(&d, &[unresolved], 2).outcome, Outcome::Fail);
    // down before the RCPT
    let down = Failure {
        phase: SmtpPhase::Connect,
        kind: FailureKind::Network,
        detail: "connection refused".into(),
    };
    let down = target(2, vec![smtp(Some(down), None, None)]);
    assert_eq!(backup_rcpt(&d, &[down], 2).outcome, Outcome::Fail);
    // an open relay still accepted the postmaster: that is backup_relay's failure, not this one's
    let relays = target(
        2,
        vec![smtp(Some(open_relay()), Some((250, true)), Some(250))],
    );
    assert_eq!(backup_rcpt(&d, &[relays], 2).outcome, Outcome::Pass);
    assert_eq!(backup_rcpt(&d, &[], 2).outcome, Outcome::NotChecked);
}

#[test]
fn backup_relay_fails_on_an_open_relay_and_needs_one_refusal() {
    let refused = target(2, vec![smtp(None, Some((250, true)), Some(554))]);
    let f = backup_relay(std::slice::from_ref(&refused));
    assert_eq!(f.outcome, Outcome::Pass, "{f:?}");
    assert_eq!(relay_time(&[refused]), Duration::from_millis(7));
    let open = target(
        2,
        vec![smtp(Some(open_relay()), Some((250, true)), Some(250))],
    );
    let f = backup_relay(&[open]);
    assert_eq!(f.outcome, Outcome::Fail);
    assert!(
        f.summary.starts_with("open relay: backup.example.test."),
        "{f:?}"
    );
    let down = Failure {
        phase: SmtpPhase::Banner,
        kind: FailureKind::PermReject,
        detail: "554".into(),
    };
    let unreached = target(2, vec![smtp(Some(down), None, None)]);
    assert_eq!(backup_relay(&[unreached]).outcome, Outcome::NotChecked);
}

fn record(kind: &'static str, text: Option<&str>, error: Option<&str>) -> PolicyRecord {
    PolicyRecord {
        kind,
        name: "example.test.".into(),
        present: text.is_some(),
        record: text.map(str::to_string),
        error: error.map(str::to_string),
    }
}

fn spf_of(pass: bool) -> BackupSpf {
    BackupSpf {
        host: name("backup.example.test"),
        address: addr().ip(),
        result: if pass { "pass" } else { "fail" }.into(),
        pass,
    }
}

#[test]
fn mail_auth_needs_spf_allowing_the_backup_and_dmarc() {
    let d = domain();
    let spf = record("SPF", Some("v=spf1 ip4:127.0.0.21 -all"), None);
    let dmarc = record("DMARC", Some("v=DMARC1; p=none"), None);
    let f = mail_auth(&d, &spf, &dmarc, &[], &[spf_of(true)]);
    assert_eq!(f.outcome, Outcome::Pass, "{f:?}");
    assert!(
        f.findings.iter().any(|l| l.contains("DKIM not checked")),
        "{f:?}"
    );
    let f = mail_auth(&d, &spf, &dmarc, &[], &[spf_of(false)]);
    assert_eq!(f.outcome, Outcome::Fail);
    assert!(f.summary.contains("not allowed by the SPF"), "{f:?}");
    let none = record("SPF", None, None);
    assert_eq!(
        mail_auth(&d, &none, &dmarc, &[], &[]).outcome,
        Outcome::Fail
    );
    let bad = record("DMARC", Some("v=DMARC1; p=sometimes"), Some("bad policy"));
    assert_eq!(
        mail_auth(&d, &spf, &bad, &[], &[spf_of(true)]).outcome,
        Outcome::Fail
    );
    let missing_key = record("DKIM", None, None);
    assert_eq!(
        mail_auth(&d, &spf, &dmarc, &[missing_key], &[spf_of(true)]).outcome,
        Outcome::Fail
    );
    // SPF fine, but no backup address to evaluate: not shown
    assert_eq!(
        mail_auth(&d, &spf, &dmarc, &[], &[]).outcome,
        Outcome::NotChecked
    );
}

fn view(policy: Option<StsPolicy>, error: Option<&str>) -> MtaStsView {
    let hosts = Hosts::Mx {
        primary: vec![name("mx1.example.test")],
        backup: vec![name("backup.example.test")],
    };
    MtaStsView {
        setting: crate::machine::MtaStsAction::Warn,
        checked_at: Utc::now(),
        evaluation: policy.as_ref().map(|p| evaluate(p, &hosts)),
        report: PolicyReport {
            record: policy.as_ref().map(|_| StsRecord { id: "lab1".into() }),
            policy,
            cached: false,
            error: error.map(str::to_string),
            tlsrpt: None,
            tlsrpt_error: None,
        },
        dane: None,
    }
}

fn policy(mode: StsMode, mx: &[&str]) -> StsPolicy {
    StsPolicy {
        mode,
        mx: mx
            .iter()
            .map(|m| MxPattern::parse(m).expect("pattern"))
            .collect(),
        max_age: 86400,
    }
}

#[test]
fn mta_sts_fails_when_an_enforce_policy_refuses_the_backup_or_cannot_be_read() {
    assert_eq!(mta_sts(&view(None, None)).outcome, Outcome::Pass);
    assert_eq!(
        mta_sts(&view(None, Some("policy fetch: 404"))).outcome,
        Outcome::Fail
    );
    let listed = policy(StsMode::Enforce, &["mx1.example.test", "*.example.test"]);
    assert_eq!(mta_sts(&view(Some(listed), None)).outcome, Outcome::Pass);
    let unlisted = policy(StsMode::Enforce, &["mx1.example.test"]);
    let f = mta_sts(&view(Some(unlisted), None));
    assert_eq!(f.outcome, Outcome::Fail, "{f:?}");
    let testing = policy(StsMode::Testing, &["mx1.example.test"]);
    assert_eq!(mta_sts(&view(Some(testing), None)).outcome, Outcome::Pass);
}

/// A backup whose TLSA matches / does not match / is absent, behind primaries with or without.
#[test]
fn dane_fails_a_backup_dane_senders_would_refuse_and_notes_a_downgrade() {
    use crate::dane::{Evaluation, HostDane, Presented, Tlsa, TlsaFound};
    let leaf = rcgen::generate_simple_self_signed(vec!["backup.example.test".to_string()])
        .expect("cert")
        .cert
        .der()
        .to_vec();
    let spki_hash = crate::dane::spki_sha256(&leaf).expect("spki");
    let data: Vec<u8> = (0..spki_hash.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&spki_hash[i..i + 2], 16).expect("hex"))
        .collect();
    let tlsa = |data: Vec<u8>| TlsaFound::Records {
        records: vec![Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data,
        }],
        authenticated: false,
    };
    let backup = |found: TlsaFound, p: Presented| {
        HostDane::judge(
            name("backup.example.test"),
            Side::Backup,
            found,
            vec![("127.0.0.21:25".into(), p)],
        )
    };
    let primary =
        |found: TlsaFound| HostDane::judge(name("mx1.example.test"), Side::Primary, found, vec![]);
    let chain = Presented::Chain(vec![leaf.clone()]);

    let ok = dane(&Evaluation::new(vec![
        primary(tlsa(data.clone())),
        backup(tlsa(data.clone()), chain.clone()),
    ]));
    assert_eq!(ok.outcome, Outcome::Pass, "{ok:?}");

    let wrong = dane(&Evaluation::new(vec![
        primary(TlsaFound::None),
        backup(tlsa(vec![0; 32]), chain.clone()),
    ]));
    assert_eq!(wrong.outcome, Outcome::Fail, "{wrong:?}");
    assert!(wrong.summary.contains("MISMATCH"), "{wrong:?}");

    let plain = dane(&Evaluation::new(vec![
        primary(TlsaFound::None),
        backup(tlsa(data.clone()), Presented::NoStartTls),
    ]));
    assert_eq!(plain.outcome, Outcome::Fail, "{plain:?}");

    let downgrade = dane(&Evaluation::new(vec![
        primary(tlsa(data.clone())),
        backup(TlsaFound::None, chain.clone()),
    ]));
    assert_eq!(downgrade.outcome, Outcome::Pass, "{downgrade:?}");
    assert!(
        downgrade.findings.iter().any(|f| f.contains("downgrades")),
        "{downgrade:?}"
    );

    let unseen = dane(&Evaluation::new(vec![backup(
        tlsa(data),
        Presented::NotSeen("connection refused".into()),
    )]));
    assert_eq!(unseen.outcome, Outcome::NotChecked, "{unseen:?}");
    assert_eq!(dane(&Evaluation::new(vec![])).outcome, Outcome::NotChecked);
}

fn access(write: AccessOutcome) -> AccessReport {
    AccessReport {
        provider: "lab".into(),
        kind: "rfc2136",
        zone: domain(),
        checks: vec![
            AccessCheck {
                check: "dns_read",
                needs: "AXFR".into(),
                outcome: AccessOutcome::Passed {
                    detail: "read".into(),
                },
            },
            AccessCheck {
                check: "dns_write",
                needs: "UPDATE".into(),
                outcome: write,
            },
        ],
    }
}

#[test]
fn provider_write_needs_the_write_check_to_pass() {
    let passed = AccessOutcome::Passed {
        detail: "UPDATE accepted, nothing changed".into(),
    };
    assert_eq!(provider_write(&access(passed)).outcome, Outcome::Pass);
    let refused = AccessOutcome::Failed {
        missing: Missing::Permission,
        detail: "REFUSED".into(),
    };
    let f = provider_write(&access(refused));
    assert_eq!(f.outcome, Outcome::Fail);
    assert!(f.summary.contains("dns_write"), "{f:?}");
    let skipped = AccessOutcome::Skipped {
        detail: "no probe".into(),
    };
    assert_eq!(
        provider_write(&access(skipped)).outcome,
        Outcome::NotChecked
    );
    assert_eq!(provider_unavailable("no token").outcome, Outcome::Fail);
}

#[test]
fn plan_fails_when_the_machine_would_refuse_or_nothing_can_be_planned() {
    let empty = Plan {
        desired: vec![],
        actual: vec![],
        changes: ChangeSet::default(),
    };
    let ok = Ok(empty);
    assert_eq!(plan(Some(Side::Primary), None, &ok).outcome, Outcome::Pass);
    let f = plan(Some(Side::Primary), Some("the backup is Down"), &ok);
    assert_eq!(f.outcome, Outcome::Fail);
    assert!(f.summary.contains("would be refused: the backup is Down"));
    let err: Result<Plan, String> = Err("provider timeout".into());
    assert_eq!(plan(Some(Side::Primary), None, &err).outcome, Outcome::Fail);
    // already on the backup: a failover writes nothing, whatever the machine says to another
    let f = plan(Some(Side::Backup), Some("already published"), &ok);
    assert_eq!(f.outcome, Outcome::Pass);
}

#[test]
fn live_moves_only_from_a_settled_primary_after_every_check_passed() {
    let settled = DomainState {
        phase: Phase::Primary,
        published: Some(Side::Primary),
        ..DomainState::default()
    };
    assert_eq!(live_may_move(&passing(false), &settled), Ok(()));
    let failing = with(passing(false), StepKind::BackupRelay, Outcome::Fail);
    let why = live_may_move(&failing, &settled).expect_err("refused");
    assert!(why.contains("backup_relay"), "{why}");
    let on_backup = DomainState {
        phase: Phase::OnBackup,
        published: Some(Side::Backup),
        ..DomainState::default()
    };
    assert!(live_may_move(&passing(false), &on_backup).is_err());
    let moving = DomainState {
        in_flight: Some(Side::Backup),
        ..settled.clone()
    };
    assert!(live_may_move(&passing(false), &moving).is_err());
}

#[test]
fn the_first_scheduled_drill_follows_the_last_or_comes_soon_spread() {
    let now = Utc
        .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .expect("time");
    let day = Duration::from_secs(86400);
    let every = 90 * day;
    let last = now - chrono::Duration::days(10);
    assert_eq!(
        first_due(Some(last), every, now, 0.5),
        last + chrono::Duration::days(90)
    );
    // never drilled, or overdue: within an hour, spread
    for last in [None, Some(now - chrono::Duration::days(100))] {
        assert_eq!(first_due(last, every, now, 0.0), now);
        let at = first_due(last, every, now, 0.5);
        assert_eq!(at, now + chrono::Duration::minutes(30));
        assert!(first_due(last, every, now, 0.999) < now + chrono::Duration::hours(1));
    }
    // a short period spreads over itself
    let at = first_due(None, Duration::from_secs(4), now, 0.5);
    assert_eq!(at, now + chrono::Duration::seconds(2));
}

#[test]
fn the_report_reads_as_a_table_and_one_line() {
    let steps = with(passing(false), StepKind::BackupRelay, Outcome::Fail);
    let report = DrillReport::new(header(false), steps, None);
    assert!(!report.passed());
    let text = render(&report);
    assert!(text.contains("drill example.test: FAIL"), "{text}");
    assert!(text.contains("FAIL         backup_relay"), "{text}");
    assert!(
        report.message().starts_with(
            "drill of example.test FAILED in 412 ms (by ops: quarterly): backup_relay failed"
        ),
        "{}",
        report.message()
    );
    let ok = DrillReport::new(header(false), passing(false), None);
    assert!(ok.message().contains("passed") && ok.message().contains("live records unchanged"));
    // the report reads back from its JSON (the CLI renders what the API sends)
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["steps"][1]["step"], "backup_relay");
    assert_eq!(json["result"], "fail");
    let back: DrillReport = serde_json::from_value(json).expect("reads back");
    assert_eq!(back, report);
}

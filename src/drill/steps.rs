//! One rule per step: what a step concludes from what the runner found (`run.rs`), as a
//! [`Found`]. Pure; the rules are listed in the parent module's documentation.

use std::time::Duration;

use mxguard_core::{AccessReport, Outcome as AccessOutcome};

use super::{Found, Outcome};
use crate::check::auth::{BackupSpf, PolicyRecord};
use crate::health::target_verdict;
use crate::model::{Fqdn, Side};
use crate::mtasts::watch::MtaStsView;
use crate::mtasts::StsMode;
use crate::plan::Plan;
use crate::probe::smtp::{FailureKind, Phase as SmtpPhase};
use crate::probe::target::TargetEvidence;

/// `backup_rcpt`: every backup host resolves at the quorum and accepts the domain's postmaster
/// at one address at least. `backups` are the hosts' own reports (not folded per domain).
pub fn backup_rcpt(domain: &Fqdn, backups: &[TargetEvidence], quorum: u32) -> Found {
    if backups.is_empty() {
        return Found::not_checked("no backup host to probe");
    }
    let mut findings = Vec::new();
    let mut bad = Vec::new();
    let who = format!("postmaster@{}", domain.without_dot());
    for ev in backups {
        let host = &ev.round.target;
        let resolved = ev.round.resolvers.iter().filter(|r| r.resolved()).count();
        let mut accepted = false;
        if (resolved as u32) < quorum {
            let verdict = target_verdict(&ev.round, quorum);
            findings.push(format!("{host}: {}", verdict.reason));
            bad.push(host.to_string());
            continue;
        }
        if ev.smtp.is_empty() {
            findings.push(format!("{host}: no address to probe"));
        }
        for r in &ev.smtp {
            let at = format!("{host} at {}", r.address);
            match (&r.failure, r.recipient(domain)) {
                (Some(f), _) if f.kind != FailureKind::OpenRelay => {
                    findings.push(format!("{at}: {f}"));
                }
                (_, Some(rc)) if rc.failure.is_none() => {
                    accepted = true;
                    findings.push(format!("{at} accepts {who}: {} {}", rc.code, rc.text));
                }
                (_, Some(rc)) => {
                    findings.push(format!("{at} refuses {who}: {} {}", rc.code, rc.text));
                }
                (_, None) => findings.push(format!("{at}: {who} was not asked")),
            }
        }
        if !accepted {
            bad.push(host.to_string());
        }
    }
    if bad.is_empty() {
        Found::new(
            Outcome::Pass,
            format!("every backup host ({}) accepts {who}", backups.len()),
            findings,
        )
    } else {
        Found::new(
            Outcome::Fail,
            format!("backup host(s) {} do not accept {who}", bad.join(", ")),
            findings,
        )
    }
}

/// `backup_relay`: no backup address relays for a stranger, and one at least was asked.
pub fn backup_relay(backups: &[TargetEvidence]) -> Found {
    let mut findings = Vec::new();
    let (mut open, mut refused) = (Vec::new(), 0usize);
    for ev in backups {
        for r in &ev.smtp {
            let at = format!("{} at {}", ev.round.target, r.address);
            if let Some(f) = r
                .failure
                .as_ref()
                .filter(|f| f.kind == FailureKind::OpenRelay)
            {
                findings.push(format!("{at} is an open relay: {}", f.detail));
                open.push(at);
            } else if let Some(p) = r.phases.iter().find(|p| p.phase == SmtpPhase::RcptRelay) {
                refused += 1;
                let code = p.code.map(|c| c.to_string()).unwrap_or_default();
                findings.push(format!(
                    "{at} refuses a stranger's recipient: {code} {}",
                    p.text
                ));
            } else {
                findings.push(format!("{at}: the relay check was not reached"));
            }
        }
    }
    if !open.is_empty() {
        Found::new(
            Outcome::Fail,
            format!(
                "open relay: {} accepted a stranger's recipient (an open relay gets blackholed)",
                open.join(", ")
            ),
            findings,
        )
    } else if refused == 0 {
        Found::new(
            Outcome::NotChecked,
            "no backup address reached the relay check (see backup_rcpt)",
            findings,
        )
    } else {
        Found::new(
            Outcome::Pass,
            format!("{refused} backup address(es) refuse to relay for strangers"),
            findings,
        )
    }
}

/// How long the relay check took: the slowest address's `RCPT TO` to a stranger.
pub fn relay_time(backups: &[TargetEvidence]) -> Duration {
    let ms = backups
        .iter()
        .flat_map(|ev| ev.smtp.iter())
        .flat_map(|r| r.phases.iter())
        .filter(|p| p.phase == SmtpPhase::RcptRelay)
        .map(|p| p.latency_ms)
        .max()
        .unwrap_or(0);
    Duration::from_millis(ms)
}

/// `mail_auth`: SPF (present, parses, passes every backup address), DMARC (present, parses),
/// each DKIM selector (present, parses).
pub fn mail_auth(
    domain: &Fqdn,
    spf: &PolicyRecord,
    dmarc: &PolicyRecord,
    dkim: &[PolicyRecord],
    backup_spf: &[BackupSpf],
) -> Found {
    let mut findings = Vec::new();
    let mut failures = Vec::new();
    let mut unchecked = None;
    if policy_record(spf, &mut findings, &mut failures) {
        if backup_spf.is_empty() {
            unchecked = Some("no backup address is known to evaluate against the SPF record");
        }
        for b in backup_spf {
            let line = format!(
                "backup {} at {}: SPF {} for {}",
                b.host,
                b.address,
                b.result,
                domain.without_dot()
            );
            if !b.pass {
                failures.push(format!(
                    "backup {} at {} is not allowed by the SPF ({})",
                    b.host, b.address, b.result
                ));
            }
            findings.push(line);
        }
    }
    policy_record(dmarc, &mut findings, &mut failures);
    if dkim.is_empty() {
        findings.push("DKIM not checked: no dkim_selectors configured for the domain".into());
    }
    for k in dkim {
        policy_record(k, &mut findings, &mut failures);
    }
    if !failures.is_empty() {
        Found::new(Outcome::Fail, failures.join("; "), findings)
    } else if let Some(why) = unchecked {
        Found::new(Outcome::NotChecked, why, findings)
    } else {
        Found::new(
            Outcome::Pass,
            format!(
                "SPF allows every backup address, DMARC{} present and parseable",
                if dkim.is_empty() { "" } else { " and DKIM" }
            ),
            findings,
        )
    }
}

/// One SPF, DMARC or DKIM record: a finding, and a failure unless present and parseable.
fn policy_record(r: &PolicyRecord, findings: &mut Vec<String>, failures: &mut Vec<String>) -> bool {
    match (&r.record, &r.error) {
        (None, _) => {
            let why = format!("no {} record at {}", r.kind, r.name);
            findings.push(why.clone());
            failures.push(why);
            false
        }
        (Some(t), Some(e)) => {
            let why = format!("{} record at {} does not parse: {e}", r.kind, r.name);
            findings.push(format!("{why} ({t})"));
            failures.push(why);
            false
        }
        (Some(t), None) => {
            findings.push(format!("{} at {}: {t}", r.kind, r.name));
            true
        }
    }
}

/// `mta_sts`: would a compliant sender deliver to the backup after a failover?
pub fn mta_sts(view: &MtaStsView) -> Found {
    let r = &view.report;
    let mut findings = Vec::new();
    if let Some(rec) = &r.record {
        findings.push(format!("_mta-sts record id {}", rec.id));
    }
    let Some(policy) = &r.policy else {
        return match &r.error {
            None => Found::new(
                Outcome::Pass,
                "no MTA-STS policy: senders deliver to any MX",
                findings,
            ),
            Some(e) => Found::new(
                Outcome::Fail,
                format!("the MTA-STS policy cannot be read: {e} (senders holding it cached still enforce it)"),
                findings,
            ),
        };
    };
    let mx: Vec<&str> = policy.mx.iter().map(|p| p.as_str()).collect();
    findings.push(format!(
        "policy mode {}, max_age {} s, mx {}",
        policy.mode,
        policy.max_age,
        mx.join(", ")
    ));
    if let Some(e) = &r.error {
        findings.push(format!("refetch failed: {e}"));
    }
    let Some(ev) = &view.evaluation else {
        return Found::new(
            Outcome::NotChecked,
            "the policy was not evaluated",
            findings,
        );
    };
    for h in &ev.backup {
        findings.push(format!(
            "backup {}: {}",
            h.host,
            match &h.pattern {
                Some(p) => format!("listed by {p}"),
                None => "not listed".to_string(),
            }
        ));
    }
    findings.extend(ev.notes.iter().cloned());
    match &ev.backup_refused {
        Some(why) => Found::new(Outcome::Fail, why.clone(), findings),
        None if ev.mode == StsMode::Enforce => Found::new(
            Outcome::Pass,
            "the enforce-mode policy lists the backup",
            findings,
        ),
        None => Found::new(
            Outcome::Pass,
            format!(
                "the policy is in {} mode: compliant senders refuse no MX",
                ev.mode
            ),
            findings,
        ),
    }
}

/// `dane`: fails when DANE senders would defer mail to a backup (its TLSA matches no
/// certificate it presents, or it publishes TLSA without offering STARTTLS); not checked when
/// a backup's TLSA or TLS session could not be seen; passes otherwise, a backup without TLSA
/// behind DANE primaries (a downgrade) noted among the findings.
pub fn dane(ev: &crate::dane::Evaluation) -> Found {
    use crate::dane::Verdict;
    let backups: Vec<&crate::dane::HostDane> = ev.backups().collect();
    if backups.is_empty() {
        return Found::not_checked("no backup host to look up");
    }
    let mut findings: Vec<String> = Vec::new();
    for h in &ev.hosts {
        if h.role == Side::Primary {
            let state = if h.publishes() {
                "publishes TLSA"
            } else {
                "publishes no TLSA"
            };
            findings.push(format!("primary {}: {state}", h.host));
            continue;
        }
        for a in &h.addresses {
            findings.push(format!("backup {} at {}: {}", h.host, a.address, a.verdict));
        }
        if h.addresses.is_empty() {
            findings.push(format!("backup {}: {}", h.host, h.verdict));
        }
    }
    findings.extend(ev.notes.iter().cloned());
    let refused: Vec<String> = backups
        .iter()
        .filter(|h| h.verdict.refused())
        .map(|h| {
            format!(
                "DANE senders would defer mail to backup {}: {}",
                h.host, h.verdict
            )
        })
        .collect();
    if !refused.is_empty() {
        return Found::new(Outcome::Fail, refused.join("; "), findings);
    }
    if let Some(h) = backups
        .iter()
        .find(|h| matches!(h.verdict, Verdict::NotChecked(_)))
    {
        return Found::new(
            Outcome::NotChecked,
            format!("backup {}: {}", h.host, h.verdict),
            findings,
        );
    }
    let summary = if backups.iter().all(|h| !h.publishes()) {
        "no backup publishes TLSA: DANE senders deliver to it with opportunistic TLS"
    } else {
        "DANE senders would deliver to every backup: its TLSA matches (or none is usable)"
    };
    Found::new(Outcome::Pass, summary, findings)
}

/// `provider_write`: the provider's write check that changes nothing.
pub fn provider_write(report: &AccessReport) -> Found {
    let findings: Vec<String> = report
        .checks
        .iter()
        .map(|c| {
            let (mark, detail) = match &c.outcome {
                AccessOutcome::Passed { detail } => ("ok", detail.clone()),
                AccessOutcome::Failed { missing, detail } => {
                    ("MISSING", format!("{missing:?}: {detail}"))
                }
                AccessOutcome::Skipped { detail } => ("skipped", detail.clone()),
            };
            format!("{} {mark} ({}): {detail}", c.check, c.needs)
        })
        .collect();
    let failed: Vec<&str> = report.failures().map(|c| c.check).collect();
    let wrote = report
        .checks
        .iter()
        .any(|c| c.check == "dns_write" && matches!(c.outcome, AccessOutcome::Passed { .. }));
    let whom = format!("provider {} for zone {}", report.provider, report.zone);
    if !failed.is_empty() {
        Found::new(
            Outcome::Fail,
            format!("{whom} fails {}", failed.join(", ")),
            findings,
        )
    } else if !wrote {
        Found::new(
            Outcome::NotChecked,
            format!("{whom}: the write check did not run"),
            findings,
        )
    } else {
        Found::new(
            Outcome::Pass,
            format!("{whom} accepts a write (one that changes nothing)"),
            findings,
        )
    }
}

/// `provider_write` when the provider's client could not be had.
pub fn provider_unavailable(why: &str) -> Found {
    Found::new(
        Outcome::Fail,
        format!("the provider's client cannot be built: {why}"),
        Vec::new(),
    )
}

/// `plan`: the machine's answer to a failover now (`refusal`) and what it would write.
pub fn plan(published: Option<Side>, refusal: Option<&str>, plan: &Result<Plan, String>) -> Found {
    let mut findings = Vec::new();
    if let Ok(p) = plan {
        for a in &p.actual {
            findings.push(format!("live now: {a}"));
        }
        for d in &p.desired {
            findings.push(format!("a failover publishes: {d}"));
        }
    }
    if published == Some(Side::Backup) {
        return Found::new(
            Outcome::Pass,
            "the backup is already published: a failover writes nothing",
            findings,
        );
    }
    if let Some(why) = refusal {
        return Found::new(
            Outcome::Fail,
            format!("a failover now would be refused: {why}"),
            findings,
        );
    }
    match plan {
        Err(e) => Found::new(
            Outcome::Fail,
            format!("the plan cannot be computed: {e}"),
            findings,
        ),
        Ok(p) => {
            let changes: Vec<String> = p
                .desired
                .iter()
                .filter(|d| !p.actual.contains(d))
                .map(|d| d.to_string())
                .collect();
            let summary = if changes.is_empty() {
                "the backup records are already live: a failover writes nothing".to_string()
            } else {
                format!(
                    "a failover would write {} change(s): {}",
                    p.changes.changes.len(),
                    changes.join(" | ")
                )
            };
            Found::new(Outcome::Pass, summary, findings)
        }
    }
}

//! Drills (issue 19, item 3): every check a real failover needs, run on demand
//! (`POST /v1/domains/{domain}/drill`, `mxguard drill`) or on a schedule (`drill_every`),
//! without changing the live records — or, with `live` on a `drillable` domain, a real
//! failover and failback through the state machine. This room is pure: the report, its steps
//! and the rules that judge them from what the runner found (`run`: the probes and reads;
//! `schedule`: `serve`'s timer).
//!
//! Rules:
//! - **A step fails** when it found something a failover would trip on, **passes** when it
//!   looked and found nothing, and is **not checked** when it could not look (it says why).
//! - **The drill passes** only when every required step passed: `backup_rcpt`,
//!   `backup_relay`, `mail_auth`, `mta_sts`, `dane`, `provider_write` and `plan`, and for a live drill
//!   `live_failover` and `live_failback`. A required step that is missing or not checked fails
//!   the drill: a drill that could not look has not shown that the failover would work.
//! - **`dane`**: fails when every DANE sender would defer mail to a backup host: it publishes
//!   TLSA at `_25._tcp.HOST` and no usable record matches the certificate an address
//!   presented, or it does not offer STARTTLS (`src/dane.rs`, RFC 7672); not checked when a
//!   backup's TLSA lookup failed or its TLS session was not seen with TLSA published; passes
//!   otherwise. A backup without TLSA behind primaries that publish it is noted (a downgrade).
//! - **`backup_rcpt`**: every backup host resolves at the resolver quorum and at least one of
//!   its addresses accepts `RCPT TO:<postmaster@DOMAIN>` (stricter than the health verdict,
//!   where one Up host is enough: a drill reports every host that would turn senders away).
//! - **`backup_relay`**: fails when any backup address accepts a stranger's recipient (an open
//!   relay is blackholed); passes when at least one address refused it and none accepted it.
//! - **`mail_auth`**: the domain's SPF is present, parses and gives `pass` for every backup
//!   address; DMARC is present and parses; each configured DKIM selector (`dkim_selectors`)
//!   is present and parses. Without selectors DKIM is noted as not checked, not failed.
//! - **`mta_sts`**: no policy passes; a policy that cannot be read fails (senders holding it
//!   cached still enforce it); an enforce policy that refuses the backup fails.
//! - **`provider_write`**: the provider's write check that changes nothing (`providers check
//!   --write`) passed; a failed check fails; a write check skipped is not checked.
//! - **`plan`**: what a failover would write from the live records, and the machine's answer
//!   to an operator's failover now (a refusal fails the step; already on the backup passes).
//! - **Live moves** run only when every other required step passed and the domain is on its
//!   primary with nothing in flight and no override; otherwise they are not checked and
//!   nothing moves.

pub mod run;
pub mod schedule;
mod steps;

pub use steps::*;

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::machine::{DomainState, Phase};
use crate::model::Side;
use crate::plan::Plan;

/// One step of a drill, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    BackupRcpt,
    BackupRelay,
    MailAuth,
    MtaSts,
    Dane,
    ProviderWrite,
    Plan,
    LiveFailover,
    LiveFailback,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::BackupRcpt => "backup_rcpt",
            StepKind::BackupRelay => "backup_relay",
            StepKind::MailAuth => "mail_auth",
            StepKind::MtaSts => "mta_sts",
            StepKind::Dane => "dane",
            StepKind::ProviderWrite => "provider_write",
            StepKind::Plan => "plan",
            StepKind::LiveFailover => "live_failover",
            StepKind::LiveFailback => "live_failback",
        }
    }

    /// Whether the drill needs this step to pass (see the module's rules).
    pub fn required(self, live: bool) -> bool {
        match self {
            StepKind::LiveFailover | StepKind::LiveFailback => live,
            _ => true,
        }
    }

    /// The steps of a drill, live or not.
    pub fn all(live: bool) -> Vec<StepKind> {
        let mut out = vec![
            StepKind::BackupRcpt,
            StepKind::BackupRelay,
            StepKind::MailAuth,
            StepKind::MtaSts,
            StepKind::Dane,
            StepKind::ProviderWrite,
            StepKind::Plan,
        ];
        if live {
            out.extend([StepKind::LiveFailover, StepKind::LiveFailback]);
        }
        out
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What one step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    NotChecked,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::NotChecked => "NOT CHECKED",
        }
    }
}

/// The drill as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillResult {
    Pass,
    Fail,
}

/// Who asked for the drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// An operator, through the API or `mxguard drill`.
    Operator,
    /// `serve`'s schedule (`drill_every`).
    Schedule,
}

/// One step as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub step: StepKind,
    pub outcome: Outcome,
    pub duration_ms: u64,
    /// One line: what was found.
    pub summary: String,
    /// The evidence, a line each (per host, address, record, check).
    pub findings: Vec<String>,
}

/// What a step's rule concluded, before the runner adds which step and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub outcome: Outcome,
    pub summary: String,
    pub findings: Vec<String>,
}

impl Found {
    pub fn new(outcome: Outcome, summary: impl Into<String>, findings: Vec<String>) -> Found {
        Found {
            outcome,
            summary: summary.into(),
            findings,
        }
    }

    pub fn not_checked(why: impl Into<String>) -> Found {
        Found::new(Outcome::NotChecked, why, Vec::new())
    }

    pub fn step(self, step: StepKind, took: Duration) -> Step {
        Step {
            step,
            outcome: self.outcome,
            duration_ms: took.as_millis().try_into().unwrap_or(u64::MAX),
            summary: self.summary,
            findings: self.findings,
        }
    }
}

/// The drill report: recorded as the evidence of a `drill` event (and of the
/// `alert.drill_failed` of a scheduled drill that failed) and returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillReport {
    /// The domain, without the trailing dot.
    pub domain: String,
    pub trigger: Trigger,
    /// The API token's name, or `automation` for a scheduled drill.
    pub by: String,
    pub reason: String,
    pub live: bool,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub result: DrillResult,
    pub steps: Vec<Step>,
    /// What a failover would write now (`None`: it could not be computed).
    pub plan: Option<Plan>,
}

/// The fields of a report other than its steps, as the runner knows them.
pub struct Header {
    pub domain: String,
    pub trigger: Trigger,
    pub by: String,
    pub reason: String,
    pub live: bool,
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
}

impl DrillReport {
    /// The report of `steps`, judged by [`judge`].
    pub fn new(h: Header, steps: Vec<Step>, plan: Option<Plan>) -> DrillReport {
        DrillReport {
            result: judge(&steps, h.live),
            domain: h.domain,
            trigger: h.trigger,
            by: h.by,
            reason: h.reason,
            live: h.live,
            started_at: h.started_at,
            duration_ms: h.duration.as_millis().try_into().unwrap_or(u64::MAX),
            steps,
            plan,
        }
    }

    pub fn passed(&self) -> bool {
        self.result == DrillResult::Pass
    }

    /// The required steps that did not pass, in order.
    pub fn failing(&self) -> Vec<&Step> {
        self.steps
            .iter()
            .filter(|s| s.step.required(self.live) && s.outcome != Outcome::Pass)
            .collect()
    }

    /// One line a chatops bot can post as is.
    pub fn message(&self) -> String {
        let how = match self.trigger {
            Trigger::Operator => format!("by {}: {}", self.by, self.reason),
            Trigger::Schedule => "scheduled".to_string(),
        };
        if self.passed() {
            let tail = if self.live {
                "failed over to the backup and back, both verified"
            } else {
                "live records unchanged"
            };
            return format!(
                "drill of {} passed in {} ms ({how}): every required step passed; {tail}",
                self.domain, self.duration_ms
            );
        }
        let failing: Vec<String> = self
            .failing()
            .iter()
            .map(|s| format!("{} {}: {}", s.step, outcome_word(s.outcome), s.summary))
            .collect();
        format!(
            "drill of {} FAILED in {} ms ({how}): {}",
            self.domain,
            self.duration_ms,
            failing.join("; ")
        )
    }
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "passed",
        Outcome::Fail => "failed",
        Outcome::NotChecked => "not checked",
    }
}

/// Pass when every required step is there and passed (the module's rules).
pub fn judge(steps: &[Step], live: bool) -> DrillResult {
    let ok = StepKind::all(live)
        .into_iter()
        .filter(|k| k.required(live))
        .all(|k| {
            let mut of_kind = steps.iter().filter(|s| s.step == k).peekable();
            of_kind.peek().is_some() && of_kind.all(|s| s.outcome == Outcome::Pass)
        });
    if ok && !steps.iter().any(|s| s.outcome == Outcome::Fail) {
        DrillResult::Pass
    } else {
        DrillResult::Fail
    }
}

/// The report for a person: a line for the result, a line per step with its findings, and
/// the one-line message.
pub fn render(r: &DrillReport) -> String {
    let mut o = String::new();
    let result = match r.result {
        DrillResult::Pass => "PASS",
        DrillResult::Fail => "FAIL",
    };
    let _ = writeln!(
        o,
        "drill {}{}: {result}  ({} steps, {} ms, {} at {})",
        r.domain,
        if r.live { " (live)" } else { "" },
        r.steps.len(),
        r.duration_ms,
        match r.trigger {
            Trigger::Operator => format!("by {}: {}", r.by, r.reason),
            Trigger::Schedule => "scheduled".into(),
        },
        r.started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    for s in &r.steps {
        let _ = writeln!(
            o,
            "  {:<11}  {:<14} {:>6} ms  {}",
            s.outcome.label(),
            s.step,
            s.duration_ms,
            s.summary
        );
        for f in &s.findings {
            let _ = writeln!(o, "  {:<11}  {:<14} {:>9}  - {f}", "", "", "");
        }
    }
    let _ = writeln!(o, "{}", r.message());
    o
}

/// Whether a live drill may move now: every other required step passed, and the domain is on
/// its primary, settled, with nothing in flight and no override.
pub fn live_may_move(steps: &[Step], state: &DomainState) -> Result<(), String> {
    let failing: Vec<&str> = steps
        .iter()
        .filter(|s| s.step.required(false) && s.outcome != Outcome::Pass)
        .map(|s| s.step.as_str())
        .collect();
    if !failing.is_empty() {
        return Err(format!("{} did not pass", failing.join(", ")));
    }
    if state.phase != Phase::Primary || state.published != Some(Side::Primary) {
        return Err(format!(
            "the domain is not settled on its primary (phase {:?}, published {})",
            state.phase,
            state.published.map_or("neither side", |s| s.as_str())
        ));
    }
    if state.writing().is_some() {
        return Err("a change is in flight".into());
    }
    if state.overrides.is_some() {
        return Err("the domain is paused or pinned".into());
    }
    Ok(())
}

/// When a domain's first scheduled drill is due: a drill `every` after the last one, or —
/// never drilled, or overdue — within `min(every, 1 h)` of `now`, spread by `fraction`
/// (0 ≤ fraction < 1) so that many domains starting together do not drill at once.
pub fn first_due(
    last: Option<DateTime<Utc>>,
    every: Duration,
    now: DateTime<Utc>,
    fraction: f64,
) -> DateTime<Utc> {
    let every_c = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
    if let Some(next) = last.and_then(|t| t.checked_add_signed(every_c)) {
        if next > now {
            return next;
        }
    }
    let spread = every.min(FIRST_SPREAD).mul_f64(fraction.clamp(0.0, 1.0));
    now + chrono::Duration::from_std(spread).unwrap_or_default()
}

/// The window over which overdue domains' first drills are spread after a start.
pub const FIRST_SPREAD: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests;

//! A postmortem draft of one incident, in Markdown: what the timeline knows (the milestones with
//! their times and durations, what mxguard did, who did what and why, the alerts, the evidence)
//! and placeholders for what only people know.

use std::fmt::Write;

use super::{Entry, Incident, Milestone, Status, Step};

/// `19 ms`, `12.3 s`, `4 min 5 s`, `1 h 2 min`: durations people read; milliseconds below a
/// second, where a provider's acceptance and the authoritative servers usually are.
pub fn human(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let s = ms / 1000;
    let text = if ms < 1000 {
        format!("{ms} ms")
    } else if s < 60 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    };
    format!("{sign}{text}")
}

fn time(t: super::Time) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn step_name(m: &Milestone) -> String {
    let base = match m.step {
        Step::Outage => "outage: first sign",
        Step::Decision => "decision: failover",
        Step::Accepted => "accepted by the provider",
        Step::Authoritative => "visible at the authoritative servers",
        Step::Resolver => "visible at resolver",
        Step::Recovery => "recovery: primary Up",
        Step::FailbackDecision => "decision: failback",
        Step::FailbackAccepted => "failback accepted by the provider",
        Step::FailbackAuthoritative => "failback visible at the authoritative servers",
        Step::FailbackVerified => "failback verified",
        Step::FailbackResolver => "failback visible at resolver",
    };
    match &m.server {
        Some(s) => format!("{base} {s}"),
        None => base.to_string(),
    }
}

/// Table cells stay on their line and keep their columns.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn entries(out: &mut String, list: &[Entry], with_reason: bool, none: &str) {
    if list.is_empty() {
        let _ = writeln!(out, "{none}");
    }
    for e in list {
        let reason = match (&e.reason, with_reason) {
            (Some(r), true) => format!(" — reason: {}", cell(r)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "- {} UTC · `{}` by {}: {}{reason} (event {})",
            time(e.at),
            e.kind,
            cell(&e.by),
            cell(&e.message),
            e.event
        );
    }
}

/// The draft for `incident` of `domain`.
pub fn postmortem(domain: &str, incident: &Incident) -> String {
    let i = incident;
    let mut out = String::new();
    let state = match i.status {
        Status::Open => "open",
        Status::Closed => "closed",
    };
    let _ = writeln!(out, "# Postmortem draft: {domain}, incident {}\n", i.id);
    let _ = writeln!(out, "- Status: {state}");
    let _ = writeln!(out, "- Start: {} UTC", time(i.start));
    match (i.end, i.durations.total_ms) {
        (Some(end), Some(total)) => {
            let _ = writeln!(out, "- End: {} UTC (after {})", time(end), human(total));
        }
        _ => {
            let _ = writeln!(out, "- End: still open");
        }
    }
    let _ = writeln!(out, "- First sign: {}", cell(&i.cause));

    let _ = writeln!(out, "\n## Timeline\n");
    let _ = writeln!(
        out,
        "| time (UTC) | step | since start | since previous | event |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let mut previous = None;
    for m in &i.milestones {
        let since_previous = previous.map_or("–".to_string(), |p| human(m.since_start_ms - p));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {since_previous} | {} |",
            time(m.at),
            cell(&step_name(m)),
            human(m.since_start_ms),
            m.event
        );
        previous = Some(m.since_start_ms);
    }
    if !i.not_seen.is_empty() {
        let _ = writeln!(
            out,
            "\nNot seen at: {} (when the propagation was recorded).",
            cell(&i.not_seen.join(", "))
        );
    }

    let _ = writeln!(out, "\n## Durations\n");
    let d = &i.durations;
    for (name, v) in [
        ("outage → decision", d.outage_to_decision_ms),
        (
            "decision → accepted by the provider",
            d.decision_to_accepted_ms,
        ),
        (
            "accepted → visible at the authoritative servers",
            d.accepted_to_authoritative_ms,
        ),
        (
            "authoritative → visible at every resolver",
            d.authoritative_to_resolvers_ms,
        ),
        ("recovery → failback verified", d.recovery_to_failback_ms),
        (
            "failback decision → failback verified",
            d.failback_decision_to_verified_ms,
        ),
        ("whole incident", d.total_ms),
    ] {
        let v = v.map_or("–".to_string(), human);
        let _ = writeln!(out, "- {name}: {v}");
    }

    let _ = writeln!(out, "\n## What mxguard did\n");
    entries(&mut out, &i.steps, false, "Nothing recorded.");
    let _ = writeln!(out, "\n## Operator actions\n");
    entries(&mut out, &i.operator_actions, true, "None.");
    let _ = writeln!(out, "\n## Alerts\n");
    entries(&mut out, &i.alerts, false, "None.");
    let _ = writeln!(out, "\n## Evidence\n");
    let ids: Vec<String> = i.evidence.iter().map(i64::to_string).collect();
    let _ = writeln!(
        out,
        "Events {} (`mxguard events {domain} --after {} --json`).",
        ids.join(", "),
        i.id - 1
    );

    let _ = writeln!(out, "\n## Open questions\n");
    for q in [
        "What caused the outage of the primary MX? _TODO_",
        "What was the impact on mail (deferred, bounced, lost)? _TODO_",
        "Was the failover decision right and fast enough? _TODO_",
        "Did the backup accept and deliver the mail it received? _TODO_",
        "What do we change so it does not happen again (owners, dates)? _TODO_",
    ] {
        let _ = writeln!(out, "- {q}");
    }
    out
}

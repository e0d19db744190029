//! Slack incoming webhook: a `text` fallback (what notifications and old clients show) and
//! Block Kit blocks: what happened, the state, the evidence, and how to pin or unpin.

use serde_json::{json, Value};

use super::classify::{name, time, truncate, Item};
use crate::config::Severity;

/// Slack's `&`, `<` and `>` are control characters in message text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn mrkdwn(text: String) -> Value {
    // A section's text may hold 3000 characters.
    json!({"type": "mrkdwn", "text": truncate(&text, 2900)})
}

pub fn message(item: &Item) -> Value {
    let e = &item.notice.event;
    let s = item.state();
    let domain = item.domain();
    let (tag, icon) = if item.resolves {
        ("RESOLVED", ":white_check_mark:")
    } else {
        match item.severity {
            Severity::Critical => ("CRITICAL", ":rotating_light:"),
            Severity::Warning => ("WARNING", ":warning:"),
            Severity::Info => ("INFO", ":information_source:"),
        }
    };
    let headline = if item.resolves {
        format!("mail is back on the primary; {}", e.message)
    } else {
        e.message.clone()
    };
    let text = format!("[{tag}] {domain}: {headline}");
    let incident = match &item.incident {
        Some(i) if i.until.is_none() => format!("open since {}", time(i.since)),
        Some(i) => format!(
            "resolved at {} (since {})",
            i.until.map(time).unwrap_or_default(),
            time(i.since)
        ),
        None => "none".into(),
    };
    let side = |v: Option<crate::model::Side>| v.map_or("none".to_string(), |s| s.to_string());
    let fields = [
        ("State", item.state_line()),
        ("Published", side(s.published)),
        ("Primary", name(&s.primary)),
        ("Backup", name(&s.backup)),
        ("Change in flight", side(s.in_flight)),
        ("Incident", incident),
    ];
    let mut blocks = vec![
        json!({"type": "section", "text": mrkdwn(format!(
            "{icon} *{}* `{}` _{}_\n{}",
            esc(domain), esc(e.kind.as_str()), item.severity, esc(&headline)
        ))}),
        json!({"type": "section", "fields": fields
            .iter()
            .map(|(k, v)| mrkdwn(format!("*{k}*\n{}", esc(v))))
            .collect::<Vec<_>>()}),
    ];
    let evidence = item.evidence_lines();
    if !evidence.is_empty() {
        let lines: Vec<String> = evidence.iter().map(|l| format!("• {}", esc(l))).collect();
        blocks.push(
            json!({"type": "section", "text": mrkdwn(format!("*Evidence*\n{}", lines.join("\n")))}),
        );
    }
    let who = match &e.reason {
        Some(r) => format!("by {}: {}", e.actor, r),
        None => format!("by {}", e.actor),
    };
    let l = &item.links;
    blocks.push(json!({"type": "context", "elements": [mrkdwn(format!(
        "<{}|Status> · <{}|Timeline> · Pin: `PUT {}` · Unpin: `DELETE {}` · {}",
        l.status, l.events, l.pin, l.pin, esc(&who)
    ))]}));
    json!({"text": truncate(&text, 3000), "blocks": blocks})
}

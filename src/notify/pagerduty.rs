//! PagerDuty Events API v2: `POST {api_url}/v2/enqueue`. A `trigger` for each event of an open
//! incident at or above the target's severity (PagerDuty folds triggers with the same
//! `dedup_key` into one alert), a `resolve` when the incident closes. The `dedup_key` comes from
//! the domain and the incident's persisted start, so it is the same after a restart.
//! Acknowledging is left to the people PagerDuty pages.

use serde_json::{json, Value};

use super::classify::{time, truncate, Item};
use crate::config::Severity;

/// The request body, or `None` when the item carries no incident (nothing to send).
pub fn event(item: &Item, routing_key: &str) -> Option<Value> {
    let incident = item.incident.as_ref()?;
    if item.resolves {
        return Some(json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": incident.key,
        }));
    }
    let e = &item.notice.event;
    let s = item.state();
    let severity = match item.severity {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    };
    let l = &item.links;
    Some(json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": incident.key,
        "payload": {
            "summary": truncate(&format!("{}: {}", item.domain(), e.message), 1024),
            "source": item.domain(),
            "severity": severity,
            "timestamp": time(e.at),
            "component": "mx-records",
            "group": "mxguard",
            "class": e.kind,
            "custom_details": {
                "event_id": e.id,
                "actor": e.actor,
                "reason": e.reason,
                "message": e.message,
                "state": item.state_line(),
                "published": s.published,
                "in_flight": s.in_flight,
                "primary": s.primary,
                "backup": s.backup,
                "incident_since": time(incident.since),
                "evidence": item.evidence_lines(),
                "pin": format!("PUT {}", l.pin),
                "unpin": format!("DELETE {}", l.pin),
            },
        },
        "client": "mxguard",
        "client_url": l.status,
        "links": [
            {"href": l.status, "text": format!("mxguard status of {}", item.domain())},
            {"href": l.events, "text": "mxguard timeline"},
        ],
    }))
}
